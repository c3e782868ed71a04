//! `repeaterd plugin run` (dry-run a plugin's `build`, optionally
//! `classify`) and `repeaterd plugin check` (compile and type-check a
//! component), both with the same engine and limits as the daemon; and
//! `repeaterd plugin new`, which writes a plugin project (`scaffold`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use repeaterd::plugin::types::{
    BuildOutcome, Event, Header, Method, Reply, Request, RequestSummary, Response, Verdict,
};
use repeaterd::plugin::{
    COMPILE_REFUSED, CallContext, ClassifyRules, LoadedPlugin, PLUGIN_INTERFACE, PluginEngine,
    PluginError, PluginLimits, compile_into_cache,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::scaffold::Language;

/// Plugin verbs.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Run a plugin's `build` on an event and print the request it would send.
    #[command(after_long_help = EVENT_HELP)]
    Run(RunArgs),
    /// Compile and type-check a component; print its interface, sha256 and size.
    Check {
        /// A built-in plugin's name or a path to a `.wasm` component.
        plugin: String,
        #[command(flatten)]
        caps: CapArgs,
    },
    /// Write a new plugin project that builds with one command and passes its own tests.
    New {
        /// The language to write the plugin in.
        #[arg(long, value_enum)]
        lang: Language,
        /// The plugin's name, a slug such as `crm-forward`.
        name: String,
        /// Where to write it (default: `./NAME`); must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Compile the component on standard input into the daemon's
    /// compiled-code cache. The daemon runs this as a child process, so
    /// the compiler's memory goes back to the system when it exits.
    #[command(hide = true)]
    CompileCache {
        /// The plugin's name, for messages.
        #[arg(long)]
        name: String,
        /// The compiled-code cache directory (`plugins.cache_dir`).
        #[arg(long)]
        cache_dir: PathBuf,
        /// The daemon's memory cap per call, bytes.
        #[arg(long)]
        memory_bytes: usize,
        /// The daemon's instance pool size.
        #[arg(long)]
        max_instances: u32,
    },
}

/// The sandbox caps a dry run uses, named after the config keys they stand
/// for, so an author can find the values a plugin needs before deploying it.
#[derive(Debug, Args)]
pub struct CapArgs {
    /// Memory cap per call, MiB (the daemon's `plugins.memory_mb`).
    #[arg(long, default_value_t = 64)]
    memory_mb: u32,
    /// CPU cap per call, milliseconds (the daemon's `plugins.cpu_ms`).
    #[arg(long, default_value_t = 100)]
    cpu_ms: u64,
}

const EVENT_HELP: &str = "\
EVENT FILE (JSON):
  {
    \"type\": \"patient.created\",            required: the event type
    \"payload\": {\"any\": \"json\"},          the payload as JSON, or
    \"body\": \"raw text\",                    the payload as text (one of the two)
    \"content_type\": \"application/json\",   default: application/json for payload,
                                             text/plain for body
    \"id\": \"evt-1\",                         default: evt-dry-run
    \"domain\": \"acme\",                      default: dry-run
    \"repeater\": \"crm\",                     default: dry-run
    \"ordering_key\": \"patient-7\",           default: none
    \"record_id\": \"rec-1\",                  default: rec-dry-run
    \"registered_at\": 1700000000000         ms since the Unix epoch; default: now
  }

OUTPUT (JSON on stdout):
  {\"outcome\": \"send\", \"request\": {\"method\", \"path\", \"query\", \"headers\": [{\"name\", \"value\"}],
   \"body\", \"body_encoding\": \"utf-8\" | \"base64\"}}
  or {\"outcome\": \"skip\"}, {\"outcome\": \"reject\", \"reason\"}, {\"outcome\": \"retry-later\", \"reason\"};
  with --status, also \"verdict\": {\"verdict\": \"success\" | \"retry\" | \"reject\", ...}.
Plugin failures (trap, timeout, limits, refused config) exit with status 1.";

/// Arguments of `plugin run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A built-in plugin's name or a path to a `.wasm` component.
    #[arg(long)]
    plugin: String,
    /// The repeater's plugin config, as JSON text.
    #[arg(long, default_value = "{}")]
    config: String,
    /// A JSON file describing the event (see below).
    #[arg(long)]
    event: PathBuf,
    /// The attempt number the plugin sees.
    #[arg(long, default_value_t = 1)]
    attempt: u32,
    /// Also run `classify` as if the endpoint answered with this HTTP status.
    #[arg(long)]
    status: Option<u16>,
    /// The base URL the request would go to (shown in the output and given to `classify`).
    #[arg(long, default_value = "https://receiver.example")]
    url: String,
    #[command(flatten)]
    caps: CapArgs,
}

/// Runs one plugin verb.
pub fn run(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::Run(args) => block_on(run_plugin(args)),
        PluginCommand::Check { plugin, caps } => block_on(check_plugin(&plugin, &caps)),
        PluginCommand::New { lang, name, dir } => super::scaffold::new_project(lang, &name, dir),
        PluginCommand::CompileCache {
            name,
            cache_dir,
            memory_bytes,
            max_instances,
        } => compile_cache(&name, &cache_dir, memory_bytes, max_instances),
    }
}

/// `plugin compile-cache`: exits with [`COMPILE_REFUSED`] and the
/// compiler's words when the bytes do not compile.
fn compile_cache(
    name: &str,
    cache_dir: &Path,
    memory_bytes: usize,
    max_instances: u32,
) -> anyhow::Result<()> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("cannot read the component from standard input")?;
    let limits = PluginLimits {
        memory_bytes,
        max_instances,
        ..PluginLimits::default()
    };
    match compile_into_cache(&limits, cache_dir, name, &bytes) {
        Ok(()) => Ok(()),
        Err(PluginError::Compile { message, .. }) => {
            eprintln!("{message}");
            std::process::exit(COMPILE_REFUSED);
        }
        Err(error) => Err(error.into()),
    }
}

/// Runs a verb that calls plugins on a runtime of its own.
fn block_on(verb: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(verb)
}

/// Loads a plugin named on the command line: a built-in name or a file.
async fn load(engine: &PluginEngine, plugin: &str) -> anyhow::Result<LoadedPlugin> {
    let path = Path::new(plugin);
    let looks_like_file = plugin.ends_with(".wasm") || plugin.contains(std::path::MAIN_SEPARATOR);
    let (name, bytes): (String, Vec<u8>) = if looks_like_file || path.is_file() {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read plugin file {}", path.display()))?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin")
            .to_owned();
        (name, bytes)
    } else {
        match repeaterd::plugin::builtin(plugin) {
            Some(bytes) => (plugin.to_owned(), bytes.to_vec()),
            None => bail!(
                "no built-in plugin named {plugin:?} and no such file (built-ins: {})",
                repeaterd::plugin::builtin_names().join(", ")
            ),
        }
    };
    Ok(engine.load(&name, Arc::from(bytes)).await?)
}

async fn check_plugin(plugin: &str, caps: &CapArgs) -> anyhow::Result<()> {
    let engine = PluginEngine::new(cli_limits(caps))?;
    let loaded = load(&engine, plugin).await?;
    let interface = loaded.interface();
    let package_version = interface
        .rsplit_once('@')
        .map_or("unknown", |(_, version)| version);
    let rules = match loaded.classify_rules() {
        ClassifyRules::Default => "default rules, applied by the host (no classify call)",
        ClassifyRules::Own => "the plugin's own classify",
    };
    println!("plugin: {}", loaded.name());
    println!("world: repeater:plugin/repeater (exports {interface})");
    println!("package version: {package_version} (host speaks {PLUGIN_INTERFACE})");
    println!("replies judged by: {rules}");
    println!("sha256: {}", loaded.version());
    println!("size: {} bytes", loaded.size());
    Ok(())
}

async fn run_plugin(args: RunArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.event)
        .with_context(|| format!("cannot read event file {}", args.event.display()))?;
    let file: EventFile = serde_json::from_str(&text)
        .with_context(|| format!("event file {} is not a valid event", args.event.display()))?;
    let event = file
        .into_event(args.attempt)
        .with_context(|| format!("event file {} is not a valid event", args.event.display()))?;
    serde_json::from_str::<Value>(&args.config).context("--config is not valid JSON")?;

    let engine = PluginEngine::new(cli_limits(&args.caps))?;
    let plugin = load(&engine, &args.plugin).await?;
    let ctx = CallContext::new(&event.domain, &event.repeater);
    plugin.validate_config(&ctx, &args.config).await?;
    let outcome = plugin.build(&ctx, &event, &args.config).await?;
    let mut output = outcome_json(&outcome, &args.url);
    if let (Some(status), BuildOutcome::Send(request)) = (args.status, &outcome) {
        let summary = summary(request, &args.url);
        let reply = Reply::Response(Response {
            status,
            headers: Vec::new(),
            body_excerpt: Vec::new(),
        });
        let verdict = plugin
            .classify(&ctx, &summary, &reply, &args.config)
            .await?;
        output["verdict"] = verdict_json(&verdict);
    }
    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(())
}

/// The daemon's limits with the caps given: a dry run should fail where
/// the daemon would.
fn cli_limits(caps: &CapArgs) -> PluginLimits {
    PluginLimits {
        memory_bytes: (caps.memory_mb as usize).saturating_mul(1 << 20),
        cpu_time: std::time::Duration::from_millis(caps.cpu_ms),
        max_instances: 4,
        ..PluginLimits::default()
    }
}

/// The event file's shape (documented in `EVENT_HELP`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFile {
    #[serde(rename = "type")]
    event_type: String,
    payload: Option<Value>,
    body: Option<String>,
    content_type: Option<String>,
    id: Option<String>,
    domain: Option<String>,
    repeater: Option<String>,
    ordering_key: Option<String>,
    record_id: Option<String>,
    registered_at: Option<i64>,
}

impl EventFile {
    fn into_event(self, attempt: u32) -> anyhow::Result<Event> {
        let (payload, default_type) = match (self.payload, self.body) {
            (Some(json), None) => (serde_json::to_vec(&json)?, "application/json"),
            (None, Some(text)) => (text.into_bytes(), "text/plain"),
            (Some(_), Some(_)) => bail!("give either \"payload\" or \"body\", not both"),
            (None, None) => bail!("missing \"payload\" (JSON) or \"body\" (text)"),
        };
        let registered_at = match self.registered_at {
            Some(ms) => ms,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        };
        Ok(Event {
            id: self.id.unwrap_or_else(|| "evt-dry-run".to_owned()),
            domain: self.domain.unwrap_or_else(|| "dry-run".to_owned()),
            repeater: self.repeater.unwrap_or_else(|| "dry-run".to_owned()),
            event_type: self.event_type,
            content_type: self.content_type.unwrap_or_else(|| default_type.to_owned()),
            payload,
            attempt,
            registered_at,
            ordering_key: self.ordering_key,
            record_id: self.record_id.unwrap_or_else(|| "rec-dry-run".to_owned()),
        })
    }
}

fn method_name(method: Method) -> &'static str {
    match method {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Patch => "PATCH",
        Method::Delete => "DELETE",
    }
}

/// The URL the request would go to: the base URL plus the plugin's path and query.
fn full_url(request: &Request, base: &str) -> String {
    let mut url = base.trim_end_matches('/').to_owned();
    if let Some(path) = &request.path {
        url.push('/');
        url.push_str(path.trim_start_matches('/'));
    }
    if let Some(query) = &request.query {
        url.push('?');
        url.push_str(query);
    }
    url
}

fn headers_json(headers: &[Header]) -> Value {
    headers
        .iter()
        .map(|h| json!({"name": h.name, "value": h.value}))
        .collect()
}

fn outcome_json(outcome: &BuildOutcome, base_url: &str) -> Value {
    match outcome {
        BuildOutcome::Send(request) => {
            let (body, encoding) = match std::str::from_utf8(&request.body) {
                Ok(text) => (text.to_owned(), "utf-8"),
                Err(_) => (
                    base64::engine::general_purpose::STANDARD.encode(&request.body),
                    "base64",
                ),
            };
            json!({
                "outcome": "send",
                "request": {
                    "method": method_name(request.method),
                    "url": full_url(request, base_url),
                    "path": request.path,
                    "query": request.query,
                    "headers": headers_json(&request.headers),
                    "body": body,
                    "body_encoding": encoding,
                }
            })
        }
        BuildOutcome::Skip => json!({"outcome": "skip"}),
        BuildOutcome::Reject(reason) => json!({"outcome": "reject", "reason": reason}),
        BuildOutcome::RetryLater(reason) => json!({"outcome": "retry-later", "reason": reason}),
    }
}

fn summary(request: &Request, base_url: &str) -> RequestSummary {
    RequestSummary {
        method: request.method,
        url: full_url(request, base_url),
        headers: request.headers.clone(),
        body_size: request.body.len() as u64,
    }
}

fn verdict_json(verdict: &Verdict) -> Value {
    match verdict {
        Verdict::Success => json!({"verdict": "success"}),
        Verdict::Retry(retry) => json!({
            "verdict": "retry",
            "after_seconds": retry.after_seconds,
            "reason": retry.reason,
        }),
        Verdict::Reject(reason) => json!({"verdict": "reject", "reason": reason}),
    }
}
