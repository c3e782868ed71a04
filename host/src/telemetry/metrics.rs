//! The Prometheus metrics of the daemon, built on `prometheus-client`.
//!
//! The dispatcher, the plugin host and the API call the `record_*`/`set_*`
//! methods; `GET /metrics` calls [`Metrics::refresh_backlog`] and then
//! [`Metrics::encode`]. Every method is cheap (atomic updates behind a
//! read-mostly lock) so it can sit on the delivery hot path.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::history::History;
use crate::model::{AttemptOutcome, RecordState};

/// Which plugin export was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginCall {
    /// `build`: event to request.
    Build,
    /// `classify`: response to verdict.
    Classify,
    /// `validate-config`.
    ValidateConfig,
}

impl PluginCall {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginCall::Build => "build",
            PluginCall::Classify => "classify",
            PluginCall::ValidateConfig => "validate_config",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainOutcome {
    domain: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainState {
    domain: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginCallLabels {
    plugin: String,
    call: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginFailureLabels {
    plugin: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginRolloutLabels {
    plugin: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainLabel {
    domain: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiRequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepeaterLabels {
    domain: String,
    repeater: String,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// Attempt latencies run from a few milliseconds to the 30 s default
/// timeout and beyond: 5 ms doubling up to ~82 s.
fn attempt_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// Plugin calls are budgeted at 100 ms of CPU: 10 µs doubling up to ~0.33 s.
fn plugin_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 16))
}

/// Every metric the daemon exports, registered once in its own registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    attempts: Family<DomainOutcome, Counter>,
    attempt_duration: HistogramFamily<Outcome>,
    records_finished: Family<DomainState, Counter>,
    backlog: Family<DomainState, Gauge>,
    backlog_refresh_errors: Counter,
    plugin_call_duration: HistogramFamily<PluginCallLabels>,
    plugin_failures: Family<PluginFailureLabels, Counter>,
    plugin_rollouts: Family<PluginRolloutLabels, Counter>,
    leases_acquired: Counter,
    leases_lost: Counter,
    inflight: Gauge,
    repeater_concurrency: Family<RepeaterLabels, Gauge>,
    events_ingested: Family<DomainLabel, Counter>,
    records_created: Family<DomainLabel, Counter>,
    ingest_refused: Counter,
    scheduler_picks: Counter,
    scheduler_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    scheduler_cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    ready_reads: Family<Reason, Counter>,
    ready_read_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    ingest_pushed_back: Counter,
    ingest_pending: Gauge,
    database_free: Family<Vec<(String, String)>, Gauge>,
    api_requests: Family<ApiRequestLabels, Counter>,
    /// Serialises backlog refreshes so two scrapes do not interleave their
    /// clear-and-fill of the gauge.
    backlog_refresh: tokio::sync::Mutex<()>,
    /// The last quarter hour per repeater, for the console.
    history: History,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates the metrics, all at zero, under the `repeaterd` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("repeaterd");
        let attempts = Family::<DomainOutcome, Counter>::default();
        registry.register(
            "delivery_attempts",
            "Delivery attempts by domain and outcome (success, retry, reject, skip)",
            attempts.clone(),
        );
        let attempt_duration: HistogramFamily<Outcome> =
            Family::new_with_constructor(attempt_histogram);
        registry.register_with_unit(
            "attempt_duration",
            "Duration of delivery attempts by outcome, from build to classify",
            Unit::Seconds,
            attempt_duration.clone(),
        );
        let records_finished = Family::<DomainState, Counter>::default();
        registry.register(
            "records_finished",
            "Records that reached a terminal state, by domain and state",
            records_finished.clone(),
        );
        let backlog = Family::<DomainState, Gauge>::default();
        registry.register(
            "backlog_records",
            "Unfinished records by domain and state, read from the store at scrape time",
            backlog.clone(),
        );
        let backlog_refresh_errors = Counter::default();
        registry.register(
            "backlog_refresh_errors",
            "Scrapes whose backlog query failed (the backlog gauge then keeps its last values)",
            backlog_refresh_errors.clone(),
        );
        let plugin_call_duration: HistogramFamily<PluginCallLabels> =
            Family::new_with_constructor(plugin_histogram);
        registry.register_with_unit(
            "plugin_call_duration",
            "Duration of plugin calls by plugin and call (build, classify, validate_config)",
            Unit::Seconds,
            plugin_call_duration.clone(),
        );
        let plugin_failures = Family::<PluginFailureLabels, Counter>::default();
        registry.register(
            "plugin_failures",
            "Plugin calls that failed (trap, timeout, memory limit, bad output...) by plugin and kind",
            plugin_failures.clone(),
        );
        let plugin_rollouts = Family::<PluginRolloutLabels, Counter>::default();
        registry.register(
            "plugin_rollouts",
            "New plugin versions offered to a repeater, by plugin and result (accepted: the \
             repeater moved; refused: its config was refused and it stayed on its version)",
            plugin_rollouts.clone(),
        );
        let leases_acquired = Counter::default();
        registry.register(
            "leases_acquired",
            "Repeater leases taken by this process",
            leases_acquired.clone(),
        );
        let leases_lost = Counter::default();
        registry.register(
            "leases_lost",
            "Repeater leases this process lost to another holder before releasing them",
            leases_lost.clone(),
        );
        let inflight = Gauge::default();
        registry.register(
            "inflight_requests",
            "Outgoing requests in flight in this process",
            inflight.clone(),
        );
        let repeater_concurrency = Family::<RepeaterLabels, Gauge>::default();
        registry.register(
            "repeater_concurrency_limit",
            "Current adaptive (AIMD) concurrency limit of each repeater",
            repeater_concurrency.clone(),
        );
        let events_ingested = Family::<DomainLabel, Counter>::default();
        registry.register(
            "events_ingested",
            "Events stored by ingest, by domain (domain \"\" when no repeater subscribed)",
            events_ingested.clone(),
        );
        let records_created = Family::<DomainLabel, Counter>::default();
        registry.register(
            "records_created",
            "Records created by ingest, by domain",
            records_created.clone(),
        );
        let ingest_refused = Counter::default();
        registry.register(
            "ingest_refused",
            "Ingest requests refused as invalid (4xx)",
            ingest_refused.clone(),
        );
        let scheduler_picks = Counter::default();
        registry.register(
            "scheduler_picks",
            "Batches the scheduler handed out",
            scheduler_picks.clone(),
        );
        let scheduler_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register_with_unit(
            "scheduler_busy",
            "Time the scheduler loop spent reading the ready set and handing out batches \
             (divide by scheduler_picks for its cost per pick)",
            Unit::Seconds,
            scheduler_seconds.clone(),
        );
        let scheduler_cpu_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register_with_unit(
            "scheduler_cpu",
            "CPU time of the scheduler loop on its own thread (divide by scheduler_picks for \
             its cost per pick); unlike scheduler_busy it leaves out time spent waiting for a \
             core, and work the loop awaited on other threads",
            Unit::Seconds,
            scheduler_cpu_seconds.clone(),
        );
        let ready_reads = Family::<Reason, Counter>::default();
        registry.register(
            "scheduler_ready_reads",
            "Reads of every ready repeater by the scheduler, by what asked for them: start, \
             timer (a due time, a pacer or the sleep cap), batches (finished batches after \
             the set's reuse interval), change (a resend, a resume, a released lane, another \
             process), deferred (a change read once the read share allowed)",
            ready_reads.clone(),
        );
        let ready_read_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register_with_unit(
            "scheduler_ready_read",
            "Time those reads took, lanes and fair queue updated (part of scheduler_busy)",
            Unit::Seconds,
            ready_read_seconds.clone(),
        );
        let ingest_pushed_back = Counter::default();
        registry.register(
            "ingest_pushed_back",
            "Ingest requests answered 503 because too many posted events were waiting to be stored",
            ingest_pushed_back.clone(),
        );
        let ingest_pending = Gauge::default();
        registry.register(
            "ingest_pending_events",
            "Posted events admitted and not yet stored",
            ingest_pending.clone(),
        );
        let database_free = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register_with_unit(
            "database_disk_free",
            "Room left for this process on the filesystem of the SQLite file, read at scrape time (absent on PostgreSQL)",
            Unit::Bytes,
            database_free.clone(),
        );
        let api_requests = Family::<ApiRequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "HTTP API requests by method, route template and status",
            api_requests.clone(),
        );
        Metrics {
            registry,
            attempts,
            attempt_duration,
            records_finished,
            backlog,
            backlog_refresh_errors,
            plugin_call_duration,
            plugin_failures,
            plugin_rollouts,
            leases_acquired,
            leases_lost,
            inflight,
            repeater_concurrency,
            events_ingested,
            records_created,
            ingest_refused,
            scheduler_picks,
            scheduler_seconds,
            scheduler_cpu_seconds,
            ready_reads,
            ready_read_seconds,
            ingest_pushed_back,
            ingest_pending,
            database_free,
            api_requests,
            backlog_refresh: tokio::sync::Mutex::new(()),
            history: History::default(),
        }
    }

    /// One delivery attempt of a record of `domain` ended with `outcome`
    /// after `seconds`.
    pub fn record_attempt(&self, domain: &str, outcome: AttemptOutcome, seconds: f64) {
        self.attempts
            .get_or_create(&DomainOutcome {
                domain: domain.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
        self.attempt_duration
            .get_or_create(&Outcome {
                outcome: outcome.as_str(),
            })
            .observe(seconds);
    }

    /// A record of `domain` reached `state`. Non-terminal states are ignored,
    /// so callers may pass every outcome's new state.
    pub fn record_finished(&self, domain: &str, state: RecordState) {
        if !state.is_terminal() {
            return;
        }
        self.records_finished
            .get_or_create(&DomainState {
                domain: domain.to_owned(),
                state: state.as_str(),
            })
            .inc();
    }

    /// A plugin call took `seconds` (whether it succeeded or not).
    pub fn plugin_call(&self, plugin: &str, call: PluginCall, seconds: f64) {
        self.plugin_call_duration
            .get_or_create(&PluginCallLabels {
                plugin: plugin.to_owned(),
                call: call.as_str(),
            })
            .observe(seconds);
    }

    /// A plugin call failed; `kind` must come from a fixed list (for example
    /// `trap`, `timeout`, `memory`, `invalid_output`) to keep labels bounded.
    pub fn plugin_failure(&self, plugin: &str, kind: &str) {
        self.plugin_failures
            .get_or_create(&PluginFailureLabels {
                plugin: plugin.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// A new version of `plugin` was offered to a repeater, which moved to
    /// it or, `refused`, stayed on its version.
    pub fn plugin_rollout(&self, plugin: &str, refused: bool) {
        self.plugin_rollouts
            .get_or_create(&PluginRolloutLabels {
                plugin: plugin.to_owned(),
                result: if refused { "refused" } else { "accepted" },
            })
            .inc();
    }

    /// This process took a repeater's lease.
    pub fn lease_acquired(&self) {
        self.leases_acquired.inc();
    }

    /// This process found its lease taken over.
    pub fn lease_lost(&self) {
        self.leases_lost.inc();
    }

    /// The number of outgoing requests in flight now.
    pub fn set_inflight(&self, n: usize) {
        self.inflight.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Requests in flight now, across every repeater.
    pub fn inflight(&self) -> i64 {
        self.inflight.get()
    }

    /// The current adaptive concurrency limit of a repeater, also shown in
    /// its status by the API.
    pub fn set_repeater_concurrency(&self, domain: &str, repeater: &str, limit: u32) {
        self.repeater_concurrency
            .get_or_create(&RepeaterLabels {
                domain: domain.to_owned(),
                repeater: repeater.to_owned(),
            })
            .set(i64::from(limit));
    }

    /// The concurrency limit last reported for a repeater, if any.
    pub fn repeater_concurrency(&self, domain: &str, repeater: &str) -> Option<u32> {
        self.repeater_concurrency
            .get(&RepeaterLabels {
                domain: domain.to_owned(),
                repeater: repeater.to_owned(),
            })
            .and_then(|gauge| u32::try_from(gauge.get()).ok())
    }

    /// The last quarter hour of deliveries per repeater.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Drops a deleted repeater's series.
    pub fn forget_repeater(&self, domain: &str, repeater: &str) {
        self.history.forget(domain, repeater);
        self.repeater_concurrency.remove(&RepeaterLabels {
            domain: domain.to_owned(),
            repeater: repeater.to_owned(),
        });
    }

    /// Ingest stored `events` events of `domain` and created `records`
    /// records. Domains without subscribers are counted under `""`, so a
    /// producer posting to made-up domains cannot grow the label set.
    pub fn ingested(&self, domain: &str, events: usize, records: usize) {
        let label = DomainLabel {
            domain: if records == 0 {
                String::new()
            } else {
                domain.to_owned()
            },
        };
        self.events_ingested
            .get_or_create(&label)
            .inc_by(events as u64);
        if records > 0 {
            self.records_created
                .get_or_create(&label)
                .inc_by(records as u64);
        }
    }

    /// An ingest request was refused as invalid.
    pub fn ingest_refused(&self) {
        self.ingest_refused.inc();
    }

    /// The scheduler handed out `picks` batches in a turn of its loop that
    /// took `seconds`.
    pub fn scheduler_turn(&self, picks: u64, seconds: f64) {
        self.scheduler_picks.inc_by(picks);
        self.scheduler_seconds.inc_by(seconds);
    }

    /// The scheduler loop used `cpu` of its thread's time in one poll.
    pub fn scheduler_cpu(&self, cpu: std::time::Duration) {
        self.scheduler_cpu_seconds.inc_by(cpu.as_secs_f64());
    }

    /// The scheduler read every ready repeater, for `reason`, in `seconds`.
    pub fn scheduler_ready_read(&self, reason: &'static str, seconds: f64) {
        self.ready_reads.get_or_create(&Reason { reason }).inc();
        self.ready_read_seconds.inc_by(seconds);
    }

    /// An ingest request was pushed back: too many events were waiting to
    /// be stored.
    pub fn ingest_pushed_back(&self) {
        self.ingest_pushed_back.inc();
    }

    /// Posted events admitted and not yet stored.
    pub fn set_ingest_pending(&self, events: usize) {
        self.ingest_pending
            .set(i64::try_from(events).unwrap_or(i64::MAX));
    }

    /// Room left on the database's filesystem, when the store can tell.
    pub fn set_database_free_bytes(&self, bytes: Option<u64>) {
        match bytes {
            Some(bytes) => {
                (self.database_free.get_or_create(&Vec::new()))
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
            None => self.database_free.clear(),
        }
    }

    /// The API answered a request. `route` must be a route template (for
    /// example `/v1/domains/{domain}/events`) or `unmatched`, never a raw
    /// path; methods outside the standard ones count as `OTHER`.
    pub fn api_request(&self, method: &http::Method, route: &str, status: u16) {
        let method = match *method {
            http::Method::GET => "GET",
            http::Method::HEAD => "HEAD",
            http::Method::POST => "POST",
            http::Method::PUT => "PUT",
            http::Method::DELETE => "DELETE",
            http::Method::PATCH => "PATCH",
            http::Method::OPTIONS => "OPTIONS",
            _ => "OTHER",
        };
        self.api_requests
            .get_or_create(&ApiRequestLabels {
                method,
                route: route.to_owned(),
                status,
            })
            .inc();
    }

    /// Replaces the backlog gauge with the counts `read` yields, unfinished
    /// records as `(domain, state, count)` (the store's
    /// `backlog_by_domain`). On an error the gauge keeps its last values,
    /// the error counter goes up and the error is returned for the caller
    /// to log.
    pub async fn refresh_backlog<E>(
        &self,
        read: impl Future<Output = Result<Vec<(String, RecordState, i64)>, E>>,
    ) -> Result<(), E> {
        let _guard = self.backlog_refresh.lock().await;
        match read.await {
            Ok(rows) => {
                self.backlog.clear();
                for (domain, state, count) in rows {
                    self.backlog
                        .get_or_create(&DomainState {
                            domain,
                            state: state.as_str(),
                        })
                        .set(count);
                }
                Ok(())
            }
            Err(err) => {
                self.backlog_refresh_errors.inc();
                Err(err)
            }
        }
    }

    /// The metrics in the OpenMetrics text format (which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The media type of [`Metrics::encode`]'s output.
    pub const CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn attempts_are_counted_by_domain_and_outcome() {
        let m = Metrics::new();
        m.record_attempt("acme", AttemptOutcome::Success, 0.02);
        m.record_attempt("acme", AttemptOutcome::Success, 0.04);
        m.record_attempt("acme", AttemptOutcome::Retry, 1.5);
        let text = m.encode();
        assert_eq!(
            line(
                &text,
                "repeaterd_delivery_attempts_total{domain=\"acme\",outcome=\"success\"}"
            ),
            Some("repeaterd_delivery_attempts_total{domain=\"acme\",outcome=\"success\"} 2")
        );
        assert!(
            text.contains("repeaterd_attempt_duration_seconds_count{outcome=\"retry\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn a_failed_backlog_read_keeps_the_last_counts_and_is_counted() {
        let m = Metrics::new();
        let counts = vec![("acme".to_owned(), RecordState::Pending, 7)];
        m.refresh_backlog(async { Ok::<_, String>(counts) })
            .await
            .unwrap();
        let err = m
            .refresh_backlog(async { Err::<Vec<_>, _>("store down".to_owned()) })
            .await
            .unwrap_err();
        assert_eq!(err, "store down");
        let text = m.encode();
        assert!(
            text.contains("repeaterd_backlog_records{domain=\"acme\",state=\"pending\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("repeaterd_backlog_refresh_errors_total 1"),
            "{text}"
        );
    }

    #[test]
    fn the_databases_free_room_is_exported_only_when_known() {
        let m = Metrics::new();
        let has_room = |m: &Metrics| {
            (m.encode().lines()).any(|line| line.starts_with("repeaterd_database_disk_free_bytes{"))
        };
        assert!(!has_room(&m));
        m.set_database_free_bytes(Some(4 << 20));
        assert!(
            m.encode()
                .lines()
                .any(|line| line == "repeaterd_database_disk_free_bytes{} 4194304"),
            "{}",
            m.encode()
        );
        m.set_database_free_bytes(None);
        assert!(!has_room(&m));
    }

    #[test]
    fn only_terminal_states_count_as_finished() {
        let m = Metrics::new();
        m.record_finished("acme", RecordState::Retrying);
        m.record_finished("acme", RecordState::Cancelled);
        let text = m.encode();
        assert!(!text.contains("state=\"retrying\""), "{text}");
        assert!(
            text.contains(
                "repeaterd_records_finished_total{domain=\"acme\",state=\"cancelled\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn plugin_leases_and_inflight_are_exported() {
        let m = Metrics::new();
        m.plugin_call("json-forward", PluginCall::Build, 0.0001);
        m.plugin_failure("json-forward", "timeout");
        m.lease_acquired();
        m.lease_acquired();
        m.lease_lost();
        m.set_inflight(7);
        let text = m.encode();
        for expected in [
            "repeaterd_plugin_call_duration_seconds_count{plugin=\"json-forward\",call=\"build\"} 1",
            "repeaterd_plugin_failures_total{plugin=\"json-forward\",kind=\"timeout\"} 1",
            "repeaterd_leases_acquired_total 2",
            "repeaterd_leases_lost_total 1",
            "repeaterd_inflight_requests 7",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }

    #[test]
    fn repeater_concurrency_is_readable_and_forgettable() {
        let m = Metrics::new();
        assert_eq!(m.repeater_concurrency("acme", "crm"), None);
        m.set_repeater_concurrency("acme", "crm", 5);
        assert_eq!(m.repeater_concurrency("acme", "crm"), Some(5));
        m.forget_repeater("acme", "crm");
        assert_eq!(m.repeater_concurrency("acme", "crm"), None);
    }

    #[test]
    fn ingest_without_subscribers_does_not_add_a_domain_label() {
        let m = Metrics::new();
        m.ingested("made-up-1", 1, 0);
        m.ingested("made-up-2", 1, 0);
        m.ingested("acme", 2, 3);
        let text = m.encode();
        assert!(!text.contains("made-up"), "{text}");
        assert!(
            text.contains("repeaterd_events_ingested_total{domain=\"\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("repeaterd_records_created_total{domain=\"acme\"} 3"),
            "{text}"
        );
    }
}
