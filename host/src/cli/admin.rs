//! The admin verbs: `repeaterd records ...`, `repeaterd repeaters ...` and
//! `repeaterd plugins ...` call a running daemon's HTTP API. For people
//! (stdout is a terminal) they print aligned tables with times relative to
//! now; for scripts (stdout piped or redirected) the API's JSON answer,
//! unchanged. `--output table|json` chooses explicitly. Answers are read
//! into the API's own answer types, so the tables follow the API.
//!
//! `records resend|cancel` act on one record by id, or on a repeater's
//! records in bulk: `--repeater` with `--state` (every record in that
//! state) or `--error` (a failure group, as `records failures` lists them).
//! clap refuses any other mix before a request is sent.

use std::io::IsTerminal;

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use repeaterd::api::bulk::{CancelAnswer, FailureGroupList, ResendAnswer};
use repeaterd::api::plugins::PluginList;
use repeaterd::api::records::{RecordDetail, RecordPage};
use repeaterd::api::repeaters::{RepeaterList, RepeaterStatus, RequeueAnswer};
use repeaterd::api::time::Timestamp;
use repeaterd::model::{Millis, now_millis};

use super::table::{Fields, Table, absolute_and_relative, relative, relative_or_dash};

/// How the answer is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns and relative times, for people.
    Table,
    /// The API's JSON answer, for scripts.
    Json,
}

/// Where the daemon's API is, how to authenticate and how to print.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Base URL of the daemon's API.
    #[arg(long, env = "REPEATERD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token (admin, or the domain's token).
    #[arg(long, env = "REPEATERD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How to print: `table` (for people) or `json` (the API's answer, for
    /// scripts). Default: table when stdout is a terminal, json when it is
    /// piped or redirected.
    #[arg(long, short = 'o', value_enum)]
    pub output: Option<Output>,
}

impl ApiArgs {
    fn output(&self) -> Output {
        self.output.unwrap_or_else(|| {
            if std::io::stdout().is_terminal() {
                Output::Table
            } else {
                Output::Json
            }
        })
    }
}

/// `repeaterd records ...`
#[derive(Debug, Subcommand)]
pub enum RecordsCommand {
    /// List a domain's records, oldest first.
    List {
        /// The domain.
        domain: String,
        /// Only this repeater's records.
        #[arg(long)]
        repeater: Option<String>,
        /// Only records in this state (pending, retrying, succeeded,
        /// rejected, empty, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only records registered since then: a duration back from now
        /// (`90s`, `30min`, `1h`, `2d`) or an RFC 3339 UTC time
        /// (`2026-12-05T07:10:28Z`).
        #[arg(long)]
        since: Option<String>,
        /// At most this many (1 to 1000; the API's default is 100).
        #[arg(long)]
        limit: Option<u32>,
        /// Only ids after this one (the next page starts after the last id shown).
        #[arg(long)]
        after: Option<i64>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show one record with its attempts.
    Show {
        /// The domain.
        domain: String,
        /// The record's id.
        id: i64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show a repeater's failed records grouped by last error, largest first.
    ///
    /// A group's error, passed whole to `records resend|cancel DOMAIN
    /// --repeater NAME --error ERROR`, acts on the group (`--output json`
    /// shows errors uncut).
    Failures {
        /// The domain.
        domain: String,
        /// The repeater's name.
        repeater: String,
        /// At most this many groups (1 to 1000; the API's default is 20).
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Send records again (back to pending, due now, history kept): one
    /// record by id, or with `--repeater` every record of that repeater in
    /// one `--state` or with one last `--error`.
    #[command(
        override_usage = "repeaterd records resend [OPTIONS] <DOMAIN> <ID>\n       \
            repeaterd records resend [OPTIONS] <DOMAIN> --repeater <REPEATER> \
            (--state <STATE> | --error <ERROR>)"
    )]
    #[command(after_help = "Examples:\n  \
        repeaterd records resend acme 42\n  \
        repeaterd records resend acme --repeater crm --state rejected\n  \
        repeaterd records resend acme --repeater crm --error 'HTTP 503'")]
    Resend {
        /// The domain.
        domain: String,
        #[command(flatten)]
        which: Selection,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Cancel records that are not finished yet: one record by id, or with
    /// `--repeater` every record of that repeater in one `--state` (pending
    /// or retrying) or every retrying one with one last `--error`.
    #[command(
        override_usage = "repeaterd records cancel [OPTIONS] <DOMAIN> <ID>\n       \
            repeaterd records cancel [OPTIONS] <DOMAIN> --repeater <REPEATER> \
            (--state <STATE> | --error <ERROR>)"
    )]
    #[command(after_help = "Examples:\n  \
        repeaterd records cancel acme 42\n  \
        repeaterd records cancel acme --repeater crm --state retrying\n  \
        repeaterd records cancel acme --repeater crm --error 'HTTP 503'")]
    Cancel {
        /// The domain.
        domain: String,
        #[command(flatten)]
        which: Selection,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Which records `records resend` and `records cancel` act on: a record
/// id, or a repeater with exactly one of a state or a last error.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("match").args(["state", "error"])))]
pub struct Selection {
    /// The record's id.
    #[arg(
        required_unless_present_any = ["repeater", "state", "error"],
        conflicts_with_all = ["repeater", "state", "error"]
    )]
    id: Option<i64>,
    /// Act on this repeater's records instead, chosen by `--state` or `--error`.
    #[arg(long, requires = "match")]
    repeater: Option<String>,
    /// With `--repeater`: its records in this state (pending, retrying,
    /// succeeded, rejected, empty, cancelled; cancel takes pending or retrying).
    #[arg(long, requires = "repeater")]
    state: Option<String>,
    /// With `--repeater`: its failed records whose last error is exactly
    /// this, as `records failures` shows it ("" for none).
    #[arg(long, requires = "repeater")]
    error: Option<String>,
}

/// The records a [`Selection`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// One record.
    Record(i64),
    /// A repeater's records in a state.
    State { repeater: String, state: String },
    /// A repeater's failed records with this last error.
    Error { repeater: String, error: String },
}

impl Selection {
    /// The records named; clap has already refused every other mix.
    fn target(self) -> anyhow::Result<Target> {
        match self {
            Selection {
                id: Some(id),
                repeater: None,
                state: None,
                error: None,
            } => Ok(Target::Record(id)),
            Selection {
                id: None,
                repeater: Some(repeater),
                state: Some(state),
                error: None,
            } => Ok(Target::State { repeater, state }),
            Selection {
                id: None,
                repeater: Some(repeater),
                state: None,
                error: Some(error),
            } => Ok(Target::Error { repeater, error }),
            _ => bail!("give a record id, or --repeater with exactly one of --state or --error"),
        }
    }
}

/// `repeaterd repeaters ...`
#[derive(Debug, Subcommand)]
pub enum RepeatersCommand {
    /// List repeaters with their status: one domain's, or without a domain
    /// those of every domain the token reaches.
    List {
        /// Only this domain.
        domain: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show one repeater's status.
    Show {
        /// The domain.
        domain: String,
        /// The repeater's name.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop scheduling a repeater; its records wait.
    Pause {
        /// The domain.
        domain: String,
        /// The repeater's name.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Schedule a paused repeater again.
    Resume {
        /// The domain.
        domain: String,
        /// The repeater's name.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Put retrying and cancelled records back to pending, clear the backoff.
    Requeue {
        /// The domain.
        domain: String,
        /// The repeater's name.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `repeaterd plugins ...`
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// List the plugins the daemon knows (admin token).
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Runs a `records` verb.
pub fn records(command: RecordsCommand) -> anyhow::Result<()> {
    match command {
        RecordsCommand::List {
            domain,
            repeater,
            state,
            since,
            limit,
            after,
            api,
        } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            if let Some(repeater) = &repeater {
                query.append_pair("repeater", repeater);
            }
            if let Some(state) = &state {
                query.append_pair("state", state);
            }
            if let Some(since) = &since {
                query.append_pair("since", &since_time(since, now_millis())?.to_rfc3339());
            }
            if let Some(limit) = limit {
                query.append_pair("limit", &limit.to_string());
            }
            if let Some(after) = after {
                query.append_pair("after", &after.to_string());
            }
            let query = query.finish();
            let mut path = format!("/v1/domains/{}/records", segment(&domain));
            if !query.is_empty() {
                path = format!("{path}?{query}");
            }
            show(&api, "GET", &path, print_record_page)
        }
        RecordsCommand::Show { domain, id, api } => {
            let path = format!("/v1/domains/{}/records/{id}", segment(&domain));
            show(&api, "GET", &path, print_record)
        }
        RecordsCommand::Failures {
            domain,
            repeater,
            limit,
            api,
        } => {
            let mut path = format!(
                "/v1/domains/{}/repeaters/{}/failures",
                segment(&domain),
                segment(&repeater)
            );
            if let Some(limit) = limit {
                path = format!("{path}?limit={limit}");
            }
            show(&api, "GET", &path, |list: FailureGroupList, now| {
                print_failure_groups(list, &domain, &repeater, now)
            })
        }
        RecordsCommand::Resend { domain, which, api } => {
            act(&api, &domain, which.target()?, BulkVerb::Resend)
        }
        RecordsCommand::Cancel { domain, which, api } => {
            act(&api, &domain, which.target()?, BulkVerb::Cancel)
        }
    }
}

/// What `records resend` and `records cancel` do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BulkVerb {
    Resend,
    Cancel,
}

impl BulkVerb {
    /// The last segment of the API's path.
    fn segment(self) -> &'static str {
        match self {
            BulkVerb::Resend => "resend",
            BulkVerb::Cancel => "cancel",
        }
    }

    /// The past tense, for the summary line.
    fn done(self) -> &'static str {
        match self {
            BulkVerb::Resend => "resent",
            BulkVerb::Cancel => "cancelled",
        }
    }
}

/// Runs `records resend|cancel` on the records `target` names: one record
/// (printed as `records show` prints it), or a repeater's records by state
/// or by last error (a line saying how many moved).
fn act(api: &ApiArgs, domain: &str, target: Target, verb: BulkVerb) -> anyhow::Result<()> {
    let (repeater, rest, body, which) = match target {
        Target::Record(id) => {
            let path = format!(
                "/v1/domains/{}/records/{id}/{}",
                segment(domain),
                verb.segment()
            );
            return show(api, "POST", &path, print_record);
        }
        Target::State { repeater, state } => (
            repeater,
            "",
            serde_json::json!({ "state": state }),
            (format!("{state} "), String::new()),
        ),
        Target::Error { repeater, error } => (
            repeater,
            "/failures",
            serde_json::json!({ "error": error }),
            (String::new(), format!(" whose last error is {error:?}")),
        ),
    };
    let path = format!(
        "/v1/domains/{}/repeaters/{}{rest}/{}",
        segment(domain),
        segment(&repeater),
        verb.segment()
    );
    let (kind, condition) = which;
    let summary = |count: u64| {
        format!(
            "{} {count} {kind}records of {domain}/{repeater}{condition}\n",
            verb.done()
        )
    };
    match verb {
        BulkVerb::Resend => show_posting(api, &path, &body, |answer: ResendAnswer, _now| {
            summary(answer.resent)
        }),
        BulkVerb::Cancel => show_posting(api, &path, &body, |answer: CancelAnswer, _now| {
            summary(answer.cancelled)
        }),
    }
}

/// Runs a `repeaters` verb.
pub fn repeaters(command: RepeatersCommand) -> anyhow::Result<()> {
    let one = |domain: &str, name: &str, action: &str| {
        format!(
            "/v1/domains/{}/repeaters/{}{action}",
            segment(domain),
            segment(name)
        )
    };
    match command {
        RepeatersCommand::List { domain: None, api } => {
            show(&api, "GET", "/v1/repeaters", print_repeaters)
        }
        RepeatersCommand::List {
            domain: Some(domain),
            api,
        } => {
            let path = format!("/v1/domains/{}/repeaters", segment(&domain));
            show(&api, "GET", &path, print_repeaters)
        }
        RepeatersCommand::Show { domain, name, api } => {
            show(&api, "GET", &one(&domain, &name, ""), print_repeater)
        }
        RepeatersCommand::Pause { domain, name, api } => {
            show(&api, "POST", &one(&domain, &name, "/pause"), print_repeater)
        }
        RepeatersCommand::Resume { domain, name, api } => show(
            &api,
            "POST",
            &one(&domain, &name, "/resume"),
            print_repeater,
        ),
        RepeatersCommand::Requeue { domain, name, api } => show(
            &api,
            "POST",
            &one(&domain, &name, "/requeue"),
            |answer: RequeueAnswer, _now| {
                format!("requeued {} records of {domain}/{name}\n", answer.requeued)
            },
        ),
    }
}

/// Runs a `plugins` verb.
pub fn plugins(command: PluginsCommand) -> anyhow::Result<()> {
    match command {
        PluginsCommand::List { api } => show(&api, "GET", "/v1/plugins", print_plugins),
    }
}

/// Reads `--since`: a duration back from `now`, or an RFC 3339 UTC time.
fn since_time(text: &str, now: Millis) -> anyhow::Result<Timestamp> {
    if let Ok(back) = humantime::parse_duration(text) {
        let back = Millis::try_from(back.as_millis()).unwrap_or(Millis::MAX);
        return Ok(Timestamp(now.saturating_sub(back).max(0)));
    }
    Timestamp::parse(text).map_err(|_| {
        anyhow::anyhow!(
            "--since {text:?}: give a duration back from now (90s, 30min, 1h, 2d) or an RFC 3339 UTC time (2026-12-05T07:10:28Z)"
        )
    })
}

/// A name as one URL path segment: anything outside the slug alphabet is
/// percent-encoded, so the daemon refuses it by name instead of routing it
/// elsewhere.
fn segment(name: &str) -> String {
    let mut encoded = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Calls the API and prints its answer: the JSON as answered, or `table`'s
/// rendering of it read as `T`. A non-2xx answer is an error naming the
/// API's message.
fn show<T: DeserializeOwned>(
    api: &ApiArgs,
    method: &str,
    path: &str,
    table: impl FnOnce(T, Millis) -> String,
) -> anyhow::Result<()> {
    let body = call(api, method, path, None)?;
    print_answer(api, method, path, &body, table)
}

/// [`show`] for a POST with a JSON body.
fn show_posting<T: DeserializeOwned>(
    api: &ApiArgs,
    path: &str,
    request: &serde_json::Value,
    table: impl FnOnce(T, Millis) -> String,
) -> anyhow::Result<()> {
    let body = call(api, "POST", path, Some(request))?;
    print_answer(api, "POST", path, &body, table)
}

/// Prints an API answer's `body` as [`show`] describes.
fn print_answer<T: DeserializeOwned>(
    api: &ApiArgs,
    method: &str,
    path: &str,
    body: &[u8],
    table: impl FnOnce(T, Millis) -> String,
) -> anyhow::Result<()> {
    match api.output() {
        Output::Json => {
            let pretty = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|value| serde_json::to_string_pretty(&value).ok())
                .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
            println!("{pretty}");
        }
        Output::Table => {
            let answer: T = serde_json::from_slice(body).with_context(|| {
                format!(
                    "the answer of {method} {path} is not what this repeaterd expects (another version?)"
                )
            })?;
            print!("{}", table(answer, now_millis()));
        }
    }
    Ok(())
}

/// Sends one request; returns the body of a 2xx answer. A POST carries
/// `body` as JSON, or `{}` without one.
fn call(
    api: &ApiArgs,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<Bytes> {
    let request_body = match body {
        Some(body) => Bytes::from(body.to_string()),
        None => Bytes::from_static(b"{}"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let url = format!("{}{path}", api.url.trim_end_matches('/'));
    let (status, body) = runtime.block_on(async {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(&url)
            .header("accept", "application/json");
        if let Some(token) = &api.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = if method == "POST" {
            request = request.header("content-type", "application/json");
            Full::new(request_body)
        } else {
            Full::new(Bytes::new())
        };
        let request = request
            .body(body)
            .with_context(|| format!("invalid request URL {url}"))?;
        let response = client
            .request(request)
            .await
            .with_context(|| format!("cannot reach repeaterd at {url}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the answer of {url}"))?
            .to_bytes();
        anyhow::Ok((status, body))
    })?;
    if status.is_success() {
        return Ok(body);
    }
    let error = serde_json::from_slice::<repeaterd::api::error::ErrorBody>(&body)
        .map(|answer| format!("{}: {}", answer.error.code, answer.error.message))
        .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
    if status == hyper::StatusCode::UNAUTHORIZED && api.token.is_none() {
        // The daemon reads its tokens from variables the config names
        // (`REPEATERD_ADMIN_TOKEN` in the quick start); the verbs read
        // theirs from `--token` or `REPEATERD_TOKEN` only.
        bail!(
            "{method} {url} answered {status}: {error}\n\
             no token was given: pass --token or set REPEATERD_TOKEN to the admin token \
             or the domain's token"
        )
    }
    bail!("{method} {url} answered {status}: {error}")
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

fn print_record_page(page: RecordPage, now: Millis) -> String {
    if page.records.is_empty() {
        return "no records\n".to_owned();
    }
    let mut table = Table::new([
        "ID",
        "REPEATER",
        "EVENT TYPE",
        "STATE",
        "ATTEMPTS",
        "CREATED",
        "NEXT ATTEMPT",
        "LAST ERROR",
    ]);
    for view in &page.records {
        let record = &view.record;
        table.row([
            record.id.to_string(),
            record.repeater.clone(),
            record.event_type.clone(),
            record.state.to_string(),
            view.attempts.to_string(),
            relative(record.created_at.0, now),
            next_attempt(record.next_attempt_at, now),
            or_dash(record.last_error.as_deref()),
        ]);
    }
    let mut text = table.to_string();
    if let Some(next) = page.next_after {
        text.push_str(&format!("more: add --after {next}\n"));
    }
    text
}

fn print_record(detail: RecordDetail, now: Millis) -> String {
    let record = &detail.record;
    let mut fields = Fields::default();
    fields.add(
        "record",
        format!("{} ({}/{})", record.id, record.domain, record.repeater),
    );
    fields.add(
        "event",
        format!("{} ({})", record.event_id, record.event_type),
    );
    fields.add(
        "state",
        format!("{}, {} attempts", record.state, detail.attempt_count),
    );
    fields.add("created", absolute_and_relative(record.created_at, now));
    fields.add("updated", absolute_and_relative(record.updated_at, now));
    if let Some(next) = record.next_attempt_at {
        fields.add(
            "next attempt",
            format!("{next} ({})", next_attempt(Some(next), now)),
        );
    }
    fields.add("last error", or_dash(record.last_error.as_deref()));
    let mut text = fields.to_string();
    if detail.attempts.is_empty() {
        text.push_str("\nno attempts yet\n");
        return text;
    }
    let mut attempts = Table::new([
        "ATTEMPT",
        "STARTED",
        "DURATION",
        "REQUEST",
        "STATUS",
        "OUTCOME",
        "ERROR OR RESPONSE",
    ]);
    for attempt in &detail.attempts {
        attempts.row([
            attempt.id.to_string(),
            relative(attempt.started_at.0, now),
            format!("{} ms", attempt.duration_ms),
            attempt
                .request
                .as_ref()
                .map(|sent| format!("{} {}", sent.method, sent.url))
                .unwrap_or_else(|| "-".to_owned()),
            attempt
                .status
                .map(|status| status.to_string())
                .unwrap_or_else(|| "-".to_owned()),
            attempt.outcome.as_str().to_owned(),
            or_dash(
                attempt
                    .error
                    .as_deref()
                    .or(attempt.response_excerpt.as_deref()),
            ),
        ]);
    }
    text.push('\n');
    text.push_str(&attempts.to_string());
    text
}

fn print_failure_groups(
    list: FailureGroupList,
    domain: &str,
    repeater: &str,
    now: Millis,
) -> String {
    if list.groups.is_empty() {
        return format!("no failures for {domain}/{repeater}\n");
    }
    let mut table = Table::new([
        "COUNT",
        "RETRYING",
        "FIRST SEEN",
        "LAST SEEN",
        "SAMPLE",
        "ERROR",
    ]);
    for group in &list.groups {
        table.row([
            group.count.to_string(),
            group.retrying.to_string(),
            relative(group.first_seen_at.0, now),
            relative(group.last_seen_at.0, now),
            group.sample_record_id.to_string(),
            if group.error.is_empty() {
                "(none)".to_owned()
            } else {
                group.error.clone()
            },
        ]);
    }
    let mut text = table.to_string();
    text.push_str(&format!(
        "act on a group: repeaterd records resend|cancel {domain} --repeater {repeater} --error ERROR\n"
    ));
    text
}

/// When a record is tried next: "due" once its time has come.
fn next_attempt(at: Option<Timestamp>, now: Millis) -> String {
    match at {
        Some(at) if at.0 <= now => "due".to_owned(),
        other => relative_or_dash(other, now),
    }
}

/// A repeater's state in a word or three: paused, backing off, or active.
fn repeater_state(status: &RepeaterStatus, now: Millis) -> String {
    if status.paused {
        return "paused".to_owned();
    }
    match status.backoff.until {
        Some(until) if status.backoff.active => format!("backoff, {}", relative(until.0, now)),
        _ => "active".to_owned(),
    }
}

/// Current concurrency against its cap, as far as they are known.
fn concurrency(status: &RepeaterStatus) -> String {
    match (status.concurrency, status.spec.limits.concurrency) {
        (Some(now), Some(cap)) => format!("{now}/{cap}"),
        (Some(now), None) => now.to_string(),
        (None, Some(cap)) => format!("-/{cap}"),
        (None, None) => "-".to_owned(),
    }
}

fn print_repeaters(list: RepeaterList, now: Millis) -> String {
    if list.repeaters.is_empty() {
        return "no repeaters\n".to_owned();
    }
    let mut table = Table::new([
        "DOMAIN",
        "NAME",
        "STATE",
        "PENDING",
        "RETRYING",
        "SUCCEEDED",
        "FAILED",
        "CONCURRENCY",
        "PLUGIN",
        "LAST SUCCESS",
        "LAST ERROR",
    ]);
    for status in &list.repeaters {
        let backlog = &status.backlog;
        table.row([
            status.domain.clone(),
            status.name.clone(),
            repeater_state(status, now),
            backlog.pending.to_string(),
            backlog.retrying.to_string(),
            backlog.succeeded.to_string(),
            (backlog.rejected + backlog.cancelled).to_string(),
            concurrency(status),
            status.plugin.name.clone(),
            relative_or_dash(status.last_success_at, now),
            or_dash(status.last_error.as_deref()),
        ]);
    }
    table.to_string()
}

fn print_repeater(status: RepeaterStatus, now: Millis) -> String {
    let mut fields = Fields::default();
    fields.add("repeater", format!("{}/{}", status.domain, status.name));
    fields.add("url", status.spec.url.clone());
    fields.add("state", repeater_state(&status, now));
    let plugin = &status.plugin;
    let mut plugin_text = plugin.name.clone();
    if let Some(version) = &plugin.version {
        plugin_text.push_str(&format!(" {version}"));
    }
    if plugin.known == Some(false) {
        plugin_text.push_str(" (not installed)");
    }
    fields.add("plugin", plugin_text);
    if let Some(error) = &plugin.last_error {
        fields.add("plugin error", error.clone());
    }
    let backlog = &status.backlog;
    fields.add(
        "backlog",
        format!(
            "{} pending, {} retrying, {} succeeded, {} rejected, {} empty, {} cancelled",
            backlog.pending,
            backlog.retrying,
            backlog.succeeded,
            backlog.rejected,
            backlog.empty,
            backlog.cancelled
        ),
    );
    fields.add("concurrency", concurrency(&status));
    if let Some(until) = status.backoff.until {
        fields.add(
            "backoff",
            format!(
                "step {}, until {}",
                status.backoff.step,
                absolute_and_relative(until, now)
            ),
        );
    }
    match &status.lease {
        Some(lease) => fields.add(
            "lease",
            format!(
                "{} (epoch {}), {} {}",
                lease.holder,
                lease.epoch,
                if lease.expired { "expired" } else { "expires" },
                relative(lease.expires_at.0, now)
            ),
        ),
        None => fields.add("lease", "-"),
    }
    fields.add(
        "last success",
        status
            .last_success_at
            .map(|at| absolute_and_relative(at, now))
            .unwrap_or_else(|| "-".to_owned()),
    );
    fields.add("last error", or_dash(status.last_error.as_deref()));
    fields.add("updated", absolute_and_relative(status.updated_at, now));
    fields.to_string()
}

fn print_plugins(list: PluginList, _now: Millis) -> String {
    let mut table = Table::new(["NAME", "KIND", "VERSION", "SHA256", "LAST ERROR"]);
    for plugin in &list.plugins {
        table.row([
            plugin.name.clone(),
            if plugin.builtin {
                "built-in"
            } else {
                "uploaded"
            }
            .to_owned(),
            or_dash(plugin.version.as_deref()),
            plugin
                .sha256
                .as_deref()
                .map(|hash| hash.chars().take(12).collect())
                .unwrap_or_else(|| "-".to_owned()),
            or_dash(plugin.last_error.as_deref()),
        ]);
    }
    table.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_back_or_a_time() {
        let now = Timestamp::parse("2026-12-05T07:10:28.123Z").unwrap().0;
        assert_eq!(
            since_time("1h", now).unwrap().to_rfc3339(),
            "2026-12-05T06:10:28.123Z"
        );
        assert_eq!(
            since_time("30min", now).unwrap().to_rfc3339(),
            "2026-12-05T06:40:28.123Z"
        );
        assert_eq!(
            since_time("2026-12-01T00:00:00Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-12-01T00:00:00.000Z"
        );
        let err = since_time("last tuesday", now).unwrap_err().to_string();
        assert!(err.contains("last tuesday") && err.contains("1h"), "{err}");
    }

    /// `records ...` as the binary parses it.
    #[derive(Debug, clap::Parser)]
    struct RecordsCli {
        #[command(subcommand)]
        command: RecordsCommand,
    }

    fn parse(args: &str) -> Result<RecordsCommand, String> {
        use clap::Parser;
        let words = std::iter::once("records").chain(args.split_whitespace());
        RecordsCli::try_parse_from(words)
            .map(|cli| cli.command)
            .map_err(|err| err.to_string())
    }

    fn target(args: &str) -> Target {
        match parse(args).unwrap() {
            RecordsCommand::Resend { which, .. } | RecordsCommand::Cancel { which, .. } => {
                which.target().unwrap()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resend_and_cancel_take_an_id_or_a_repeater_with_a_state_or_an_error() {
        assert_eq!(target("resend acme 42"), Target::Record(42));
        assert_eq!(
            target("cancel acme --repeater crm --state retrying"),
            Target::State {
                repeater: "crm".into(),
                state: "retrying".into()
            }
        );
        assert_eq!(
            target("resend acme --repeater crm --error HTTP-503"),
            Target::Error {
                repeater: "crm".into(),
                error: "HTTP-503".into()
            }
        );
        let refusals = [
            (
                "resend acme 42 --repeater crm --state pending",
                "cannot be used with",
            ),
            ("resend acme 42 --state pending", "cannot be used with"),
            ("cancel acme --state pending", "--repeater"),
            ("cancel acme --error x", "--repeater"),
            ("resend acme --repeater crm", "--state"),
            (
                "resend acme --repeater crm --state pending --error x",
                "cannot be used with",
            ),
            ("resend acme", "<ID>"),
        ];
        for (args, says) in refusals {
            let err = parse(args).unwrap_err();
            assert!(err.contains(says), "{args}: {err}");
        }
    }

    #[test]
    fn names_stay_one_path_segment() {
        assert_eq!(segment("acme-1"), "acme-1");
        assert_eq!(segment("a/../b"), "a%2F..%2Fb");
        assert_eq!(segment("x y?z"), "x%20y%3Fz");
    }
}
