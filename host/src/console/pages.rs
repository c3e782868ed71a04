//! The console's pages: overview, domain, repeater, record and plugins.
//! Each checks that the visitor reaches what the URL names before reading
//! anything, and answers a 404 page for names that do not exist.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use maud::{Markup, html};
use serde::Deserialize;

use super::view::{
    ago, bytes, count, millis, minute_bars, rate, sent_request, state_chip, this_minute, when,
    when_opt,
};
use super::{ConsoleError, ConsoleState, Page, Viewer};
use crate::api::records::first_page_after;
use crate::api::time::Timestamp;
use crate::model::{Millis, RecordState, check_slug, now_millis};
use crate::store::{FAILURE_SCAN, LOW_DISK_BYTES, RecordQuery, RepeaterRow, UnfinishedCount};
use crate::telemetry::WindowStats;

/// Records per page on the repeater page.
const PAGE: u32 = 50;
/// Failure groups shown on the repeater page.
const GROUPS: u32 = 20;
/// Response excerpt shown per attempt, bytes.
const EXCERPT_SHOWN: usize = 2048;

/// Refuses names that cannot exist (404) and domains the visitor does not
/// reach (403), before any read.
pub(super) fn check_domain(viewer: &Viewer, domain: &str) -> Result<(), ConsoleError> {
    if check_slug("domain", domain).is_err() {
        return Err(ConsoleError::not_found(format!(
            "There is no domain named {domain:?}."
        )));
    }
    if !viewer.reaches(domain) {
        return Err(ConsoleError::forbidden(format!(
            "This session does not reach domain {domain:?}. Log in with its token or the admin token."
        )));
    }
    Ok(())
}

pub(super) async fn find_repeater(
    state: &ConsoleState,
    viewer: &Viewer,
    domain: &str,
    name: &str,
) -> Result<RepeaterRow, ConsoleError> {
    check_domain(viewer, domain)?;
    let missing = || ConsoleError::not_found(format!("There is no repeater {domain}/{name}."));
    if check_slug("repeater", name).is_err() {
        return Err(missing());
    }
    state
        .api
        .store
        .repeater(domain, name)
        .await
        .map_err(|e| ConsoleError::store("reading the repeater", e))?
        .ok_or_else(missing)
}

fn domain_href(domain: &str) -> String {
    format!("/ui/domains/{domain}")
}

fn repeater_href(domain: &str, name: &str) -> String {
    format!("/ui/domains/{domain}/repeaters/{name}")
}

fn record_href(domain: &str, id: i64) -> String {
    format!("/ui/domains/{domain}/records/{id}")
}

fn latency(stats: &WindowStats) -> Markup {
    match (stats.p50_ms, stats.p99_ms) {
        (Some(p50), Some(p99)) => html! { (millis(p50)) " / " (millis(p99)) },
        _ => html! { span.muted { "–" } },
    }
}

/// What a repeater is doing now, in a word or two.
fn activity(row: &RepeaterRow, now: Millis) -> Markup {
    if row.paused {
        return html! { span.chip.warn { "paused" } };
    }
    match row.backoff_until {
        Some(until) if until > now => {
            html! { span.chip.bad { "backoff " (ago(until, now)) } }
        }
        _ => html! { span.chip.ok { "active" } },
    }
}

#[derive(Default)]
struct DomainSummary {
    repeaters: usize,
    pending: i64,
    retrying: i64,
    paused: usize,
    backing_off: usize,
}

/// `GET /ui`: every domain the visitor reaches at a glance.
pub(super) async fn overview(
    State(state): State<ConsoleState>,
    viewer: Viewer,
) -> Result<Page, ConsoleError> {
    let now = now_millis();
    let store = &state.api.store;
    let rows: Vec<RepeaterRow> = store
        .repeaters(None)
        .await
        .map_err(|e| ConsoleError::store("listing repeaters", e))?
        .into_iter()
        .filter(|row| viewer.reaches(&row.spec.domain))
        .collect();
    let counts: Vec<UnfinishedCount> = store
        .unfinished_counts(None)
        .await
        .map_err(|e| ConsoleError::store("counting the backlog", e))?
        .into_iter()
        .filter(|c| viewer.reaches(&c.domain))
        .collect();
    let mut domains: BTreeMap<&str, DomainSummary> = BTreeMap::new();
    if let Some(own) = viewer.domains() {
        for domain in own {
            domains.entry(domain).or_default();
        }
    }
    for row in &rows {
        let summary = domains.entry(&row.spec.domain).or_default();
        summary.repeaters += 1;
        summary.paused += usize::from(row.paused);
        summary.backing_off += usize::from(row.backoff_until.is_some_and(|u| u > now));
    }
    for c in &counts {
        let summary = domains.entry(&c.domain).or_default();
        summary.pending += c.pending;
        summary.retrying += c.retrying;
    }
    let history = state.api.metrics.history();
    let total = history.total(viewer.domains(), now);
    let backlog: i64 = counts.iter().map(|c| c.pending + c.retrying).sum();
    let leases = rows
        .iter()
        .filter(|row| {
            row.lease
                .as_ref()
                .is_some_and(|l| l.holder == state.holder && l.expires_at > now)
        })
        .count();
    let attention: Vec<&RepeaterRow> = rows
        .iter()
        .filter(|row| row.paused || row.backoff_until.is_some_and(|u| u > now))
        .collect();
    let plugin_errors: Vec<(String, String)> = match (&state.api.plugins, viewer.is_admin()) {
        (Some(catalog), true) => catalog
            .list()
            .into_iter()
            .filter_map(|p| Some((p.name, p.last_error?)))
            .collect(),
        _ => Vec::new(),
    };
    // The daemon's disk is the admin's to free, not a domain's.
    let disk_free = (viewer.is_admin())
        .then(|| store.database_free_bytes())
        .flatten();

    let body = html! {
        div id="overview-live" data-live {
            div.cards {
                div.card { div.label { "Delivered this minute" } div.value id="deliveries-per-minute" { (count(this_minute(&total).0 as i64)) } }
                div.card { div.label { "Failed attempts this minute" } div.value { (count(this_minute(&total).1 as i64)) } }
                div.card { div.label { "Success, 15 min" } div.value { (rate(&total)) } }
                div.card { div.label { "Backlog (pending + retrying)" } div.value id="backlog-total" { (count(backlog)) } }
                div.card { div.label { "Requests in flight" } div.value { (count(state.api.metrics.inflight())) } }
                div.card { div.label { "Leases held by this daemon" } div.value { (leases) } }
                div.card {
                    div.label { "Store" }
                    div.value { span.chip.ok { "reachable" } }
                    @if let Some(free) = disk_free {
                        div.detail {
                            @if free < LOW_DISK_BYTES {
                                span.chip.bad id="disk-free" title="Free room on the database's disk: ingest is refused when it runs out" { "disk nearly full: " (bytes(free)) " free" }
                            } @else {
                                span.muted id="disk-free" { (bytes(free)) " free on disk" }
                            }
                        }
                    }
                }
            }
            div.legend { "Last 15 minutes: successes above the line, failures below. Refreshed " span id="refreshed" { "now" } "." }
            h2 { "Domains" }
            @if domains.is_empty() {
                p.muted { "No repeaters yet. Add [[repeater]] tables to the config file or PUT one through the API." }
            } @else {
                div.scroll {
                    table id="domains" {
                        thead { tr {
                            th { "Domain" } th.num { "Repeaters" } th.num { "Pending" } th.num { "Retrying" }
                            th { "Last 15 min" } th.num { "Success" } th { "p50 / p99" } th { "Attention" }
                        } }
                        tbody {
                            @for (domain, summary) in &domains {
                                @let stats = history.domain(domain, now);
                                tr data-domain=(domain) {
                                    td { a href=(domain_href(domain)) { (domain) } }
                                    td.num { (summary.repeaters) }
                                    td.num.pending { (count(summary.pending)) }
                                    td.num.retrying { (count(summary.retrying)) }
                                    td { (minute_bars(&stats, 150, 28)) }
                                    td.num { (rate(&stats)) }
                                    td { (latency(&stats)) }
                                    td {
                                        @if summary.paused > 0 { span.chip.warn { (summary.paused) " paused" } " " }
                                        @if summary.backing_off > 0 { span.chip.bad { (summary.backing_off) " in backoff" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if !attention.is_empty() {
                h2 { "Paused or backing off" }
                div.scroll {
                    table {
                        thead { tr { th { "Repeater" } th { "State" } th { "Last error" } } }
                        tbody {
                            @for row in &attention {
                                tr {
                                    td { a href=(repeater_href(&row.spec.domain, &row.spec.name)) { (row.spec.domain) "/" (row.spec.name) } }
                                    td { (activity(row, now)) }
                                    td.err { (row.last_error.as_deref().unwrap_or("–")) }
                                }
                            }
                        }
                    }
                }
            }
            @if !plugin_errors.is_empty() {
                h2 { "Plugin load errors" }
                div.scroll {
                    table {
                        thead { tr { th { "Plugin" } th { "Error" } } }
                        tbody {
                            @for (name, error) in &plugin_errors {
                                tr { td { a href="/ui/plugins" { (name) } } td.err { (error) } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(Page::new(viewer, "Overview", body).live())
}

/// `GET /ui/domains/{domain}`: a domain's repeaters.
pub(super) async fn domain(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Path(domain): Path<String>,
) -> Result<Page, ConsoleError> {
    check_domain(&viewer, &domain)?;
    let now = now_millis();
    let store = &state.api.store;
    let rows = store
        .repeaters(Some(&domain))
        .await
        .map_err(|e| ConsoleError::store("listing repeaters", e))?;
    if rows.is_empty() {
        return Err(ConsoleError::not_found(format!(
            "Domain {domain:?} has no repeaters."
        )));
    }
    let counts: BTreeMap<String, UnfinishedCount> = store
        .unfinished_counts(Some(&domain))
        .await
        .map_err(|e| ConsoleError::store("counting the backlog", e))?
        .into_iter()
        .map(|c| (c.name.clone(), c))
        .collect();
    let defaults = state.dispatch.borrow().clone();
    let history = state.api.metrics.history();
    let stats = history.domain(&domain, now);
    let body = html! {
        div id="domain-live" data-live {
            div.cards {
                div.card { div.label { "Success, 15 min" } div.value { (rate(&stats)) } }
                div.card { div.label { "Attempts, 15 min" } div.value { (count((stats.successes + stats.failures) as i64)) } }
                div.card { div.label { "p50 / p99" } div.value { (latency(&stats)) } }
                div.card { div.label { "Last 15 min" } (minute_bars(&stats, 190, 40)) }
            }
            h2 { "Repeaters" }
            div.scroll {
                table id="repeaters" {
                    thead { tr {
                        th { "Repeater" } th { "State" } th.num { "Pending" } th.num { "Retrying" }
                        th { "Concurrency" } th { "Rate" } th.num { "Success" } th { "p50 / p99" }
                        th { "Lease" } th { "Last error" } th { "Actions" }
                    } }
                    tbody {
                        @for row in &rows {
                            @let name = &row.spec.name;
                            @let limits = defaults.effective(&row.spec.limits);
                            @let stats = history.repeater(&domain, name, now);
                            @let backlog = counts.get(name.as_str());
                            @let href = repeater_href(&domain, name);
                            tr data-repeater=(name) {
                                td { a href=(href) { (name) } }
                                td { (activity(row, now)) }
                                td.num { (count(backlog.map_or(0, |c| c.pending))) }
                                td.num { (count(backlog.map_or(0, |c| c.retrying))) }
                                td { (state.api.metrics.repeater_concurrency(&domain, name).map_or("–".to_string(), |n| n.to_string())) " of " (limits.concurrency) }
                                td { @match limits.rate_per_second { Some(r) => { (r) "/s" }, None => span.muted { "none" } } }
                                td.num { (rate(&stats)) }
                                td { (latency(&stats)) }
                                td {
                                    @match &row.lease {
                                        Some(lease) if lease.expires_at > now => {
                                            span title=(lease.holder) { @if lease.holder == state.holder { "this daemon" } @else { (lease.holder) } }
                                        }
                                        _ => span.muted { "free" },
                                    }
                                }
                                td.err { (row.last_error.as_deref().unwrap_or("–")) }
                                td { (repeater_actions(&viewer, &domain, name, row.paused)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(Page::new(viewer, domain.clone(), body)
        .crumbs(vec![("Overview".into(), "/ui".into())])
        .live())
}

fn repeater_actions(viewer: &Viewer, domain: &str, name: &str, paused: bool) -> Markup {
    let base = repeater_href(domain, name);
    html! {
        div.actions {
            @let toggle = if paused { "resume" } else { "pause" };
            form.inline method="post" action={ (base) "/" (toggle) } {
                input type="hidden" name="csrf" value=(viewer.csrf);
                button type="submit" { (if paused { "Resume" } else { "Pause" }) }
            }
            form.inline method="post" action={ (base) "/requeue" } {
                input type="hidden" name="csrf" value=(viewer.csrf);
                button type="submit" title="Put retrying and cancelled records back to pending and clear the backoff" { "Requeue" }
            }
        }
    }
}

/// The repeater's plugin versions: which one it runs, the refusal that
/// keeps it there, and a form to pin another kept version or follow the
/// newest again (ADR 14).
fn plugin_versions(state: &ConsoleState, viewer: &Viewer, row: &RepeaterRow) -> Markup {
    let Some(catalog) = &state.api.plugins else {
        return html! {};
    };
    let spec = &row.spec;
    let running = catalog.repeater_version(&spec.domain, &spec.name);
    let versions = catalog
        .detail(&spec.plugin)
        .map(|detail| detail.versions)
        .unwrap_or_default();
    let action = format!("{}/plugin", repeater_href(&spec.domain, &spec.name));
    let now = now_millis();
    let short = |sha: &str| sha[..sha.len().min(12)].to_owned();
    html! {
        h2 { "Plugin versions" }
        p.muted {
            @match &spec.plugin_sha256 {
                Some(pin) => { "Pinned to " code title=(pin) { (short(pin)) } ": new versions of " (spec.plugin) " do not reach it." }
                None => { "Follows the newest version of " (spec.plugin) " that accepts its config." }
            }
            @if let Some(refusal) = running.as_ref().and_then(|r| r.refusal.as_ref()) {
                " " span.err { "Version " code title=(refusal.sha256) { (short(&refusal.sha256)) } " refused its config " (when(refusal.at.0, now)) ": " (refusal.message) }
            }
        }
        div.scroll {
            table id="plugin-versions" {
                thead { tr { th { "Version" } th { "Loaded" } th { "Source" } th { "" } th { "Actions" } } }
                tbody {
                    @for version in &versions {
                        @let runs = running.as_ref().is_some_and(|r| r.sha256 == version.sha256);
                        @let pinned = spec.plugin_sha256.as_deref().is_some_and(|p| p.eq_ignore_ascii_case(&version.sha256));
                        tr {
                            td.mono { span title=(version.sha256) { (short(&version.sha256)) } }
                            td { (when(version.loaded_at.0, now)) }
                            td { (version.source) }
                            td {
                                @if version.newest { span.chip.ok { "newest" } " " }
                                @if runs { span.chip { "runs here" } }
                            }
                            td {
                                @if !pinned {
                                    form.inline method="post" action=(action) {
                                        input type="hidden" name="csrf" value=(viewer.csrf);
                                        input type="hidden" name="sha256" value=(version.sha256);
                                        button type="submit" title="Run this version and no other until unpinned" { "Pin" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if spec.plugin_sha256.is_some() {
            form.inline method="post" action=(action) {
                input type="hidden" name="csrf" value=(viewer.csrf);
                input type="hidden" name="sha256" value="";
                button type="submit" { "Unpin: follow the newest version" }
            }
        }
    }
}

/// Query of the repeater page.
#[derive(Debug, Deserialize)]
pub(super) struct RecordFilter {
    state: Option<String>,
    since: Option<String>,
    after: Option<i64>,
}

/// Reads `since`: an RFC 3339 time, or a span back from now ("15m", "2h").
fn since_of(text: &str, now: Millis) -> Result<Millis, ConsoleError> {
    if let Ok(at) = Timestamp::parse(text) {
        return Ok(at.0);
    }
    humantime::parse_duration(text)
        .map(|back| now - back.as_millis() as Millis)
        .map_err(|_| {
            ConsoleError::bad_request(format!(
                "since: {text:?} is neither an RFC 3339 time like \"2026-12-05T07:10:28Z\" nor a span like \"15m\""
            ))
        })
}

/// `GET /ui/domains/{domain}/repeaters/{name}`: records and failure groups.
pub(super) async fn repeater(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Path((domain, name)): Path<(String, String)>,
    Query(filter): Query<RecordFilter>,
) -> Result<Page, ConsoleError> {
    let row = find_repeater(&state, &viewer, &domain, &name).await?;
    let now = now_millis();
    let state_filter = match filter.state.as_deref().filter(|s| !s.is_empty()) {
        Some(text) => Some(
            text.parse::<RecordState>()
                .map_err(|e| ConsoleError::bad_request(format!("state: {e}")))?,
        ),
        None => None,
    };
    let since = match filter.since.as_deref().filter(|s| !s.is_empty()) {
        Some(text) => Some(since_of(text, now)?),
        None => None,
    };
    let mut query = RecordQuery {
        repeater: Some(name.clone()),
        state: state_filter,
        after: filter.after,
        limit: PAGE,
    };
    if let Some(since) = since {
        query.after = Some(
            first_page_after(&state.api, &domain, &query, since)
                .await
                .map_err(|e| ConsoleError::store("finding the first record since", e))?,
        );
    }
    let mut records = state
        .api
        .store
        .records(&domain, &query)
        .await
        .map_err(|e| ConsoleError::store("listing records", e))?;
    let next_after = (records.len() == PAGE as usize)
        .then(|| records.last().map(|r| r.id))
        .flatten();
    if let Some(since) = since {
        records.retain(|r| r.created_at >= since);
    }
    let groups = state
        .api
        .store
        .failure_groups(&domain, &name, GROUPS)
        .await
        .map_err(|e| ConsoleError::store("grouping failures", e))?;
    let stats = state.api.metrics.history().repeater(&domain, &name, now);
    let base = repeater_href(&domain, &name);
    let keep = |after: Option<i64>| {
        let mut pairs = form_urlencoded::Serializer::new(String::new());
        if let Some(s) = &filter.state {
            pairs.append_pair("state", s);
        }
        if let Some(s) = &filter.since {
            pairs.append_pair("since", s);
        }
        if let Some(after) = after {
            pairs.append_pair("after", &after.to_string());
        }
        let query = pairs.finish();
        if query.is_empty() {
            base.clone()
        } else {
            format!("{base}?{query}")
        }
    };
    let body = html! {
        (repeater_actions(&viewer, &domain, &name, row.paused))
        div id="repeater-live" data-live {
            dl.fields {
                dt { "State" } dd { (activity(&row, now)) }
                dt { "Sends to" } dd.mono { (row.spec.url) }
                dt { "Plugin" } dd { (row.spec.plugin) @if let Some(pin) = &row.spec.plugin_sha256 { " pinned to " code { (pin[..pin.len().min(12)]) } } }
                dt { "Last success" } dd { (when_opt(row.last_success_at, now)) }
                dt { "Last error" } dd { (row.last_error.as_deref().unwrap_or("–")) }
                dt { "Last 15 min" } dd { (minute_bars(&stats, 190, 36)) " " (rate(&stats)) " success, " (latency(&stats)) }
            }
            h2 { "Failures by last error" }
            @if groups.is_empty() {
                p.muted { "No retrying or rejected records." }
            } @else {
                div.scroll {
                    table id="failure-groups" {
                        thead { tr {
                            th { "Last error" } th.num { "Records" } th.num { "Retrying" } th { "First seen" } th { "Last seen" } th { "Sample" } th { "Actions" }
                        } }
                        tbody {
                            @for group in &groups {
                                @let error_q: String = form_urlencoded::byte_serialize(group.error.as_bytes()).collect();
                                tr {
                                    td.err { @if group.error.is_empty() { span.muted { "(none)" } } @else { (group.error) } }
                                    td.num { (count(group.count)) }
                                    td.num { (count(group.retrying)) }
                                    td { (when(group.first_seen, now)) }
                                    td { (when(group.last_seen, now)) }
                                    td { a href=(record_href(&domain, group.sample_id)) { "#" (group.sample_id) } }
                                    td {
                                        div.actions {
                                            a.button href={ (base) "/failures/resend?error=" (error_q) } { "Resend group…" }
                                            @if group.retrying > 0 {
                                                a.button.danger href={ (base) "/failures/cancel?error=" (error_q) } { "Cancel group…" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if groups.iter().any(|g| g.count >= i64::from(FAILURE_SCAN)) {
                    p.muted { "Counts cover the newest " (count(i64::from(FAILURE_SCAN))) " failures of each state." }
                }
            }
        }
        (plugin_versions(&state, &viewer, &row))
        h2 { "Records" }
        form.filters method="get" action=(base) {
            label { "State"
                select name="state" {
                    option value="" { "any" }
                    @for s in RecordState::ALL {
                        option value=(s.as_str()) selected[state_filter == Some(s)] { (s.as_str()) }
                    }
                }
            }
            label { "Since (RFC 3339 or 15m, 2h)"
                input type="text" name="since" value=(filter.since.as_deref().unwrap_or("")) placeholder="15m";
            }
            button type="submit" { "Filter" }
        }
        @if records.is_empty() {
            p.muted { "No records match." }
        } @else {
            div.scroll {
                table id="records" {
                    thead { tr {
                        th { "Record" } th { "Event" } th { "Type" } th { "State" } th.num { "Attempts" } th { "Registered" } th { "Next attempt" } th { "Last error" }
                    } }
                    tbody {
                        @for record in &records {
                            tr {
                                td { a href=(record_href(&domain, record.id)) { "#" (record.id) } }
                                td.mono.err { (record.event_id) }
                                td { (record.event_type) }
                                td { (state_chip(record.state)) }
                                td.num { (record.attempts) }
                                td { (when(record.created_at, now)) }
                                td { (when_opt(record.next_attempt_at, now)) }
                                td.err { (record.last_error.as_deref().unwrap_or("–")) }
                            }
                        }
                    }
                }
            }
        }
        div.pager {
            @if filter.after.is_some() { a href=(keep(None)) { "First page" } }
            @if let Some(after) = next_after { a href=(keep(Some(after))) id="next-page" { "Next page" } }
        }
    };
    Ok(Page::new(viewer, format!("{domain}/{name}"), body)
        .crumbs(vec![
            ("Overview".into(), "/ui".into()),
            (domain.clone(), domain_href(&domain)),
        ])
        .live())
}

/// The payload for display: pretty JSON when it parses, text otherwise.
fn payload_text(content_type: &str, bytes: &[u8], whole: bool) -> String {
    if whole
        && content_type.contains("json")
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes)
        && let Ok(pretty) = serde_json::to_string_pretty(&value)
    {
        return pretty;
    }
    String::from_utf8_lossy(bytes).into_owned()
}

/// `GET /ui/domains/{domain}/records/{id}`: a record, its event and attempts.
pub(super) async fn record(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Path((domain, id)): Path<(String, String)>,
) -> Result<Page, ConsoleError> {
    check_domain(&viewer, &domain)?;
    let missing =
        || ConsoleError::not_found(format!("There is no record {id} in domain {domain}."));
    let id: i64 = id.parse().map_err(|_| missing())?;
    let store = &state.api.store;
    let (record, attempts) = store
        .record(&domain, id)
        .await
        .map_err(|e| ConsoleError::store("reading the record", e))?
        .ok_or_else(missing)?;
    let payload = store
        .payload(&domain, id)
        .await
        .map_err(|e| ConsoleError::store("reading the payload", e))?;
    let target = store
        .repeater(&domain, &record.repeater)
        .await
        .map_err(|e| ConsoleError::store("reading the repeater", e))?;
    let now = now_millis();
    let base = record_href(&domain, id);
    let body = html! {
        div.actions {
            form.inline method="post" action={ (base) "/resend" } {
                input type="hidden" name="csrf" value=(viewer.csrf);
                button type="submit" id="resend" { "Resend" }
            }
            @if !record.state.is_terminal() {
                form.inline method="post" action={ (base) "/cancel" } {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    button.danger type="submit" id="cancel" { "Cancel" }
                }
            }
        }
        div id="record-live" data-live {
            dl.fields {
                dt { "State" } dd id="record-state" { (state_chip(record.state)) }
                dt { "Repeater" } dd { a href=(repeater_href(&domain, &record.repeater)) { (record.repeater) } }
                dt { "Target" } dd.mono { @match &target { Some(t) => { (t.spec.url) " " span.muted { "(the plugin builds each request against it)" } }, None => span.muted { "the repeater was deleted" } } }
                dt { "Event id" } dd.mono { (record.event_id) }
                dt { "Event type" } dd { (record.event_type) }
                dt { "Registered" } dd { (when(record.created_at, now)) }
                dt { "Updated" } dd { (when(record.updated_at, now)) }
                dt { "Next attempt" } dd { (when_opt(record.next_attempt_at, now)) }
                dt { "Attempts since registration or resend" } dd { (record.attempts) }
                dt { "Last error" } dd { (record.last_error.as_deref().unwrap_or("–")) }
            }
            h2 { "Attempts" }
            @if attempts.is_empty() {
                p.muted { "No attempts yet." }
            } @else {
                div.scroll {
                    table id="attempts" {
                        thead { tr {
                            th { "#" } th { "Started" } th.num { "Took" } th { "Request" } th { "Status" } th { "Outcome" } th { "Error" } th { "Plugin version" } th { "Response" }
                        } }
                        tbody {
                            @for (n, attempt) in attempts.iter().enumerate() {
                                tr {
                                    td { (n + 1) }
                                    td { (when(attempt.started_at, now)) }
                                    td.num { (millis(attempt.duration_ms as f64)) }
                                    td.req { (sent_request(attempt.id, attempt.request.as_ref())) }
                                    td { @match attempt.status { Some(s) => (s), None => span.muted { "–" } } }
                                    td { span.chip { (attempt.outcome.as_str()) } }
                                    td.err { (attempt.error.as_deref().unwrap_or("–")) }
                                    td.mono { @match &attempt.plugin_sha256 { Some(sha) => span title=(sha) { (sha[..sha.len().min(12)]) }, None => span.muted { "–" } } }
                                    td.err {
                                        @match &attempt.response_excerpt {
                                            Some(text) if !text.is_empty() => {
                                                @let shown: String = text.chars().take(EXCERPT_SHOWN).collect();
                                                pre { (shown) }
                                            }
                                            _ => span.muted { "–" },
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Event payload" }
        @match &payload {
            Some(payload) => {
                @let whole = payload.bytes.len() as i64 == payload.total_bytes;
                p.muted {
                    (payload.content_type) ", " (count(payload.total_bytes)) " bytes"
                    @if let Some(key) = &payload.ordering_key { ", ordering key " code { (key) } }
                    @if !whole { " (the first " (count(payload.bytes.len() as i64)) " shown)" }
                }
                pre id="payload" { (payload_text(&payload.content_type, &payload.bytes, whole)) }
            }
            None => p.muted { "The event is gone." },
        }
    };
    Ok(Page::new(viewer, format!("Record #{id}"), body)
        .crumbs(vec![
            ("Overview".into(), "/ui".into()),
            (domain.clone(), domain_href(&domain)),
            (
                record.repeater.clone(),
                repeater_href(&domain, &record.repeater),
            ),
        ])
        .live())
}

/// `GET /ui/plugins`: plugins, their versions and who runs them (admin).
pub(super) async fn plugins(
    State(state): State<ConsoleState>,
    viewer: Viewer,
) -> Result<Page, ConsoleError> {
    if !viewer.is_admin() {
        return Err(ConsoleError::forbidden(
            "The plugins page spans every domain; it needs the admin token.",
        ));
    }
    let Some(catalog) = &state.api.plugins else {
        return Err(ConsoleError::not_found(
            "This daemon has no plugin catalogue.",
        ));
    };
    let now = now_millis();
    let details: Vec<_> = catalog
        .list()
        .into_iter()
        .map(|info| {
            let detail = catalog.detail(&info.name);
            (info, detail)
        })
        .collect();
    let body = html! {
        div.scroll {
            table id="plugins" {
                thead { tr {
                    th { "Plugin" } th { "Version" } th { "sha256" } th { "Versions in memory" } th { "Repeaters" } th { "Load error" }
                } }
                tbody {
                    @for (info, detail) in &details {
                        tr {
                            td { (info.name) @if info.builtin { " " span.chip { "built in" } } }
                            td { (info.version.as_deref().unwrap_or("–")) }
                            td.mono { @match &info.sha256 { Some(sha) => span title=(sha) { (sha[..sha.len().min(12)]) }, None => "–" } }
                            td {
                                @if let Some(detail) = detail {
                                    @for version in &detail.versions {
                                        div {
                                            code title=(version.sha256) { (version.sha256[..version.sha256.len().min(12)]) }
                                            " " span.muted { (version.source) ", loaded " (when(version.loaded_at.0, now)) }
                                            @if version.newest { " " span.chip.ok { "newest" } }
                                            @for refusal in &version.refusals {
                                                div.err.muted { "refused " (refusal.repeater) ": " (refusal.message) }
                                            }
                                        }
                                    }
                                }
                            }
                            td {
                                @if let Some(detail) = detail {
                                    @for version in &detail.versions {
                                        @for repeater in &version.repeaters {
                                            @let (d, n) = repeater.split_once('/').unwrap_or(("", repeater.as_str()));
                                            div { a href=(repeater_href(d, n)) { (repeater) } }
                                        }
                                    }
                                }
                            }
                            td.err { (info.last_error.as_deref().unwrap_or("–")) }
                        }
                    }
                }
            }
        }
        h2 { "Upload a plugin" }
        p.muted { "A wasm32-wasip2 component for the repeater world. A new version of an existing plugin rolls out repeater by repeater: each repeater moves once the new version accepts its config." }
        form.filters method="post" action="/ui/plugins" enctype="multipart/form-data" {
            input type="hidden" name="csrf" value=(viewer.csrf);
            label { "Name" input type="text" name="name" required pattern="[a-z0-9][a-z0-9-]*"; }
            label { "Component (.wasm)" input type="file" name="component" accept=".wasm,application/wasm" required; }
            button type="submit" { "Upload" }
        }
    };
    Ok(Page::new(viewer, "Plugins", body).crumbs(vec![("Overview".into(), "/ui".into())]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_times_and_spans() {
        let now = 1_800_000_000_000;
        assert_eq!(since_of("15m", now).unwrap(), now - 900_000);
        assert_eq!(
            since_of("2027-01-15T08:00:00Z", now).unwrap(),
            Timestamp::parse("2027-01-15T08:00:00Z").unwrap().0
        );
        let err = since_of("yesterday", now).unwrap_err();
        assert!(err.message.contains("yesterday"), "{}", err.message);
    }

    #[test]
    fn json_payloads_are_pretty_and_others_are_text() {
        assert_eq!(
            payload_text("application/json", br#"{"a":1}"#, true),
            "{\n  \"a\": 1\n}"
        );
        assert_eq!(
            payload_text("application/json", br#"{"a":"#, false),
            "{\"a\":"
        );
        assert_eq!(payload_text("text/plain", b"hi \xff", true), "hi \u{fffd}");
    }
}
