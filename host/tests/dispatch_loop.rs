//! The dispatcher in-process, with a real SQLite store, the real
//! `json-forward` plugin and a real receiver on 127.0.0.1: records ingested
//! into the store reach the receiver, retries and rejections end in the
//! right states, and shutdown releases every lease.

use std::sync::Arc;
use std::time::Duration;

use repeaterd::config::DispatchConfig;
use repeaterd::dispatch::{DispatchDeps, DispatchSettings, Dispatcher, RetentionSettings};
use repeaterd::model::{NewEvent, RecordState, RepeaterSpec, now_millis};
use repeaterd::outbound::Credentials;
use repeaterd::outbound::{
    AuthConfig, Authenticator, EnvSecrets, Outbound, OutboundConfig, SecretSource,
};
use repeaterd::plugin::{PluginEngine, PluginLimits, PluginRegistry};
use repeaterd::store::{RecordQuery, RecordRow, Store};
use repeaterd::telemetry::Metrics;
use repeaterd_tests::{PgDatabase, Receiver, Reply};
use tokio::sync::watch;

/// The `hostile` test plugin, staged in `OUT_DIR` by `build.rs`.
const HOSTILE_PLUGIN: &str = concat!(env!("OUT_DIR"), "/hostile.wasm");

struct Harness {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start(specs: &[RepeaterSpec], dispatch: DispatchConfig) -> Harness {
    start_with(specs, dispatch, |_| async {}).await
}

/// Opens a fresh store, stores `specs`, runs `before` (to queue work), then
/// starts the dispatcher.
async fn start_with<F, Fut>(specs: &[RepeaterSpec], dispatch: DispatchConfig, before: F) -> Harness
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (store, dir) = fresh_sqlite().await;
    start_on(store, dir, specs, dispatch, before).await
}

/// A new SQLite store in a temporary folder, which lives as long as the
/// folder is kept.
async fn fresh_sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = repeaterd::store::open(None, &dir.path().join("db.sqlite"))
        .await
        .unwrap();
    (store, dir)
}

async fn start_on<F, Fut>(
    store: Arc<dyn Store>,
    dir: tempfile::TempDir,
    specs: &[RepeaterSpec],
    dispatch: DispatchConfig,
    before: F,
) -> Harness
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    start_full(store, dir, specs, dispatch, None, SAFETY_NET, before).await
}

/// The loop's sleep cap and whole-read interval in most tests.
const SAFETY_NET: Duration = Duration::from_secs(1);

/// Like [`start_on`], with the retention purge on (`retention` old) and
/// the loop's sleep cap and whole-read interval set to `max_sleep`.
async fn start_full<F, Fut>(
    store: Arc<dyn Store>,
    dir: tempfile::TempDir,
    specs: &[RepeaterSpec],
    dispatch: DispatchConfig,
    retention: Option<Duration>,
    max_sleep: Duration,
    before: F,
) -> Harness
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for spec in specs {
        store.upsert_repeater(spec, now_millis()).await.unwrap();
    }
    before(store.clone()).await;
    // Compiled plugins are cached across tests: compiling in a debug build
    // takes seconds, loading a cached artefact milliseconds.
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache");
    let engine = PluginEngine::with_cache_dir(PluginLimits::default(), &cache).unwrap();
    let registry = PluginRegistry::new(engine, None);
    registry
        .load_builtins(repeaterd::plugin::BUILTIN_PLUGINS)
        .await
        .unwrap();
    let hostile = std::fs::read(HOSTILE_PLUGIN).unwrap();
    registry
        .load_builtins(&[("hostile", hostile.as_slice())])
        .await
        .unwrap();
    let outbound = Outbound::new(OutboundConfig {
        allow: vec!["127.0.0.1/32".parse().unwrap()],
        ..OutboundConfig::default()
    })
    .unwrap();
    let secrets: Arc<dyn SecretSource> = Arc::new(EnvSecrets);
    let metrics = Arc::new(Metrics::new());
    let (shutdown, stop) = watch::channel(false);
    let (_config_tx, config) = watch::channel(Arc::new(dispatch.clone()));
    let deps = DispatchDeps {
        store: store.clone(),
        plugins: registry,
        outbound: outbound.clone(),
        credentials: Credentials {
            auth: Authenticator::new(outbound.clone(), secrets.clone(), AuthConfig::default()),
            secrets,
        },
        metrics: metrics.clone(),
        settings: DispatchSettings {
            holder: DispatchSettings::holder_name(),
            max_inflight: dispatch.max_inflight,
            batch_size: dispatch.batch_size,
            default_concurrency: dispatch.concurrency,
            lease_ttl_ms: dispatch.lease_ttl_on(true).as_millis() as i64,
            max_sleep,
            batch_budget: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            retention: retention.map(|retention| RetentionSettings {
                retention,
                batch: 7,
                interval: Duration::from_millis(100),
                pause: Duration::from_millis(1),
            }),
        },
        config,
    };
    let task = Dispatcher::new(deps).spawn(stop);
    Harness {
        store,
        metrics,
        shutdown,
        task,
        _dir: dir,
    }
}

/// Dispatch defaults with test-sized timings.
fn fast() -> DispatchConfig {
    DispatchConfig {
        max_inflight: 32,
        retry_schedule: vec![Duration::from_millis(100)],
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        max_attempts: 10,
        lease_ttl: Some(Duration::from_secs(5)),
        ..DispatchConfig::default()
    }
}

fn spec(domain: &str, name: &str, url: &str) -> RepeaterSpec {
    serde_json::from_value(serde_json::json!({
        "domain": domain, "name": name, "url": url, "plugin": "json-forward",
        "plugin_config": {"envelope": true}
    }))
    .unwrap()
}

fn event(n: u32) -> NewEvent {
    NewEvent {
        id: None,
        event_type: "t".into(),
        content_type: "application/json".into(),
        payload: format!("{{\"n\":{n}}}").into_bytes(),
        ordering_key: None,
    }
}

/// Every record of `domain` (the tests keep far fewer than the limit).
async fn records_of(store: &dyn Store, domain: &str) -> Vec<RecordRow> {
    store
        .records(
            domain,
            &RecordQuery {
                limit: 10_000,
                ..RecordQuery::default()
            },
        )
        .await
        .unwrap()
}

/// Waits until repeater `domain`/`name` holds a lease: its batch started.
async fn wait_for_lease(store: &dyn Store, domain: &str, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while (store.repeater(domain, name).await.unwrap())
        .unwrap()
        .lease
        .is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the batch of {domain}/{name} never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_states(store: &dyn Store, domain: &str, want: RecordState, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows = store
            .records(
                domain,
                &RecordQuery {
                    state: Some(want),
                    limit: 10_000,
                    ..RecordQuery::default()
                },
            )
            .await
            .unwrap();
        if rows.len() >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} records of {domain} reached {want}",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingested_records_are_delivered_and_marked_succeeded() {
    let receiver = Receiver::start().await;
    let h = start(&[spec("acme", "crm", &receiver.url())], fast()).await;
    let events: Vec<NewEvent> = (0..50).map(event).collect();
    h.store.ingest("acme", &events, now_millis()).await.unwrap();
    wait_states(h.store.as_ref(), "acme", RecordState::Succeeded, 50).await;
    let got = receiver.received();
    assert_eq!(got.len(), 50);
    let mut ns: Vec<i64> = got
        .iter()
        .map(|r| r.json()["data"]["n"].as_i64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, (0..50).collect::<Vec<_>>());

    h.shutdown.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), h.task)
        .await
        .expect("the dispatcher stops after shutdown")
        .unwrap();
    let row = h.store.repeater("acme", "crm").await.unwrap().unwrap();
    assert!(row.last_success_at.is_some());
    assert_eq!(row.backoff_step, 0);
}

/// A lane drained for a second gives its kept lease back. The release
/// must not wake the loop to read every repeater again for a change: it
/// did, and with thousands of lanes each such read gave up more idle
/// leases, several times a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_leases_given_back_do_not_make_the_loop_read_everything_again() {
    let receiver = Receiver::start().await;
    let domains: Vec<String> = (0..30).map(|n| format!("d{n:02}")).collect();
    let specs: Vec<RepeaterSpec> = (domains.iter())
        .map(|domain| spec(domain, "hook", &receiver.url()))
        .collect();
    let h = start(&specs, fast()).await;
    for (n, domain) in domains.iter().enumerate() {
        h.store
            .ingest(domain, &[event(n as u32)], now_millis())
            .await
            .unwrap();
    }
    for domain in &domains {
        wait_states(h.store.as_ref(), domain, RecordState::Succeeded, 1).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reads_for_changes = |metrics: &str| -> Vec<String> {
        (metrics.lines())
            .filter(|line| {
                line.starts_with(r#"repeaterd_scheduler_ready_reads_total{reason="change"}"#)
            })
            .map(str::to_owned)
            .collect()
    };
    let before = reads_for_changes(&h.metrics.encode());
    // Every lane kept its lease after its batch; a refresh gives them back
    // once they have had nothing due for a second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let rows = h.store.repeaters(None).await.unwrap();
        let leased = rows.iter().filter(|row| row.lease.is_some()).count();
        if leased == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{leased} of 30 idle lanes still hold their lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for a wake-up the releases might have sent to be acted on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = h.metrics.encode();
    assert!(
        metrics.contains(r#"repeaterd_scheduler_ready_reads_total{reason="start"} 1"#),
        "the first read is counted as the start:\n{metrics}"
    );
    // The idle lanes were found idle by reads for the timer, a second apart.
    assert!(
        metrics.contains(r#"repeaterd_scheduler_ready_reads_total{reason="timer"}"#),
        "reads for the timer are counted:\n{metrics}"
    );
    assert!(
        metrics.contains("repeaterd_scheduler_ready_read_seconds_total"),
        "the reads' time is counted:\n{metrics}"
    );
    assert_eq!(
        reads_for_changes(&metrics),
        before,
        "nothing but idle releases happened, yet the loop read the set for a change"
    );
    // The loop's own CPU is counted: some, and far less than the seconds
    // the test ran, most of which the loop slept.
    let sample = |name: &str| -> f64 {
        (metrics.lines())
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} is not in the metrics:\n{metrics}"))
    };
    let cpu = sample("repeaterd_scheduler_cpu_seconds_total");
    let picks = sample("repeaterd_scheduler_picks_total");
    assert!(
        picks >= 30.0,
        "30 lanes were handed out, {picks} picks counted"
    );
    assert!(cpu > 0.0, "the loop's CPU is counted:\n{metrics}");
    assert!(
        cpu < 2.0,
        "{cpu} s of CPU counted for a loop that mostly slept"
    );
}

/// The loop reads the whole ready set at least once a second, however
/// often it is woken: that read is the safety net for changes nobody told
/// it about (on PostgreSQL, a notification lost while the database
/// restarted). Here a plain SQLite connection resumes a paused repeater
/// with records due behind the store's back, so the loop is not told,
/// while a producer posts every few milliseconds to a tenant whose
/// only repeater is paused: each post wakes the loop and hands nothing out.
/// Each wake-up used to start the loop's short poll over, and the resumed
/// repeater waited for as long as the producer went on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_nobody_announced_is_found_while_ingest_keeps_waking_the_loop() {
    let receiver = Receiver::start().await;
    let specs = [
        spec("acme", "crm", &receiver.url()),
        spec("quiet", "hook", &receiver.url()),
    ];
    let h = start_with(&specs, fast(), |store| async move {
        for (domain, name) in [("acme", "crm"), ("quiet", "hook")] {
            (store.set_paused(domain, name, true, now_millis()).await).unwrap();
        }
        (store.ingest("acme", &[event(0)], now_millis()).await).unwrap();
    })
    .await;
    let elsewhere = rusqlite::Connection::open(h._dir.path().join("db.sqlite")).unwrap();
    elsewhere.busy_timeout(Duration::from_secs(5)).unwrap();
    let started = std::time::Instant::now();
    let producing = {
        let store = h.store.clone();
        tokio::spawn(async move {
            let mut n = 1;
            while started.elapsed() < Duration::from_secs(6) {
                (store.ingest("quiet", &[event(n)], now_millis()).await).unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 0, "a paused repeater delivered");
    let resumed = elsewhere
        .execute(
            "UPDATE repeaters SET paused = 0 WHERE domain = 'acme' AND name = 'crm'",
            [],
        )
        .unwrap();
    assert_eq!(resumed, 1, "the repeater was not resumed");
    let resumed = std::time::Instant::now();
    // A whole read within a second, and a second more for a debug build.
    let limit = Duration::from_secs(2);
    while receiver.count() == 0 {
        assert!(
            resumed.elapsed() < limit,
            "nothing delivered {limit:?} after a resume this process was not told of, \
             while another tenant's ingest went on"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "an unannounced resume delivered {:?} later, beside a busy producer",
        resumed.elapsed()
    );
    producing.await.unwrap();
    let _ = h.shutdown.send(true);
}

/// Ingest tells the loop which domains it fed and wakes it. While batches
/// keep finishing, a wake-up can come between two turns and be used up as
/// the next turn starts, with another branch winning that turn's wait: the
/// fed domains were then left to the safety net's whole read, in the
/// benchmarks a second later (here it is set to 30 s). Each round feeds
/// twenty quiet domains at once and must be delivered within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fed_domain_is_served_while_batches_keep_finishing() {
    const SMALL: usize = 20;
    const ROUNDS: u32 = 150;
    const FLOOD: u32 = 10_000;
    let flood = Receiver::start().await;
    let quiet = Receiver::start().await;
    let mut specs: Vec<RepeaterSpec> = (0..5)
        .map(|i| spec("big", &format!("sink-{i}"), &flood.url()))
        .collect();
    specs.extend((0..SMALL).map(|i| spec(&format!("small-{i}"), "sink", &quiet.url())));
    let (store, dir) = fresh_sqlite().await;
    let safety_net = Duration::from_secs(30);
    let h = start_full(
        store,
        dir,
        &specs,
        fast(),
        None,
        safety_net,
        |store| async move {
            for chunk in 0..FLOOD / 1000 {
                let events: Vec<NewEvent> = (0..1000).map(|n| event(chunk * 1000 + n)).collect();
                store.ingest("big", &events, now_millis()).await.unwrap();
            }
        },
    )
    .await;
    let mut slowest = Duration::ZERO;
    for round in 0..ROUNDS {
        let posted = std::time::Instant::now();
        let posts: Vec<_> = (0..SMALL)
            .map(|i| {
                let store = h.store.clone();
                tokio::spawn(async move {
                    let domain = format!("small-{i}");
                    store.ingest(&domain, &[event(round)], now_millis()).await
                })
            })
            .collect();
        for post in posts {
            post.await.unwrap().unwrap();
        }
        let want = (round as usize + 1) * SMALL;
        let limit = Duration::from_secs(2);
        while quiet.count() < want {
            assert!(
                posted.elapsed() < limit,
                "round {round}: {} of {SMALL} fed domains delivered within {limit:?}; \
                 the rest waited for the safety net",
                quiet.count() + SMALL - want
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        slowest = slowest.max(posted.elapsed());
    }
    let flooded = flood.count();
    println!(
        "{ROUNDS} rounds of {SMALL} fed domains, slowest {slowest:?}, {flooded} flood deliveries meanwhile"
    );
    assert!(
        flooded < FLOOD as usize * 5,
        "the flood ran dry before the rounds ended: batches were not finishing throughout"
    );
    let _ = h.shutdown.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_retry_and_rejections_stop() {
    let receiver = Receiver::with_script(Arc::new(|r, seen| {
        let n = r.json()["data"]["n"].as_i64().unwrap();
        match n {
            0 if seen < 2 => Reply::status(503),
            1 => Reply::status(422),
            _ => Reply::status(200),
        }
    }))
    .await;
    let h = start(&[spec("acme", "crm", &receiver.url())], fast()).await;
    h.store
        .ingest("acme", &[event(0), event(1)], now_millis())
        .await
        .unwrap();
    wait_states(h.store.as_ref(), "acme", RecordState::Succeeded, 1).await;
    wait_states(h.store.as_ref(), "acme", RecordState::Rejected, 1).await;
    let rows = records_of(h.store.as_ref(), "acme").await;
    let first = rows
        .iter()
        .find(|r| r.state == RecordState::Succeeded)
        .unwrap();
    let (_, attempts) = h.store.record("acme", first.id).await.unwrap().unwrap();
    let statuses: Vec<_> = attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(503), Some(503), Some(200)]);
    let _ = h.shutdown.send(true);
}

/// A retry is found when it comes due because the batch that wrote it
/// said when, not by reading every repeater: here that read comes only
/// every 30 s, and another lane's batch hangs with records due, so the
/// store's next due time is "now" and cannot time the retry either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_sent_when_it_comes_due_without_reading_every_repeater() {
    let hung = Receiver::start().await;
    hung.set_open(false);
    let flaky = Receiver::with_script(Arc::new(|_, seen| {
        if seen == 0 {
            Reply::status(503)
        } else {
            Reply::status(200)
        }
    }))
    .await;
    let specs = [
        spec("hung", "sink", &hung.url()),
        spec("acme", "crm", &flaky.url()),
    ];
    let dispatch = DispatchConfig {
        timeout: Duration::from_secs(30),
        ..fast()
    };
    let (store, dir) = fresh_sqlite().await;
    let h = start_full(
        store,
        dir,
        &specs,
        dispatch,
        None,
        Duration::from_secs(30),
        |store| async move {
            let events: Vec<NewEvent> = (0..5).map(event).collect();
            (store.ingest("hung", &events, now_millis()).await).unwrap();
        },
    )
    .await;
    wait_for_lease(h.store.as_ref(), "hung", "sink").await;
    h.store
        .ingest("acme", &[event(0)], now_millis())
        .await
        .unwrap();
    flaky.wait_for(1, Duration::from_secs(10)).await;
    let refused = std::time::Instant::now();
    // The retry (100 ms) and the backoff (200 ms to 2 s, `fast`) are due
    // within 2 s; the next whole read is 30 s away.
    flaky.wait_for(2, Duration::from_secs(5)).await;
    println!(
        "retry: sent {:?} after the refusal, with the whole read 30 s apart",
        refused.elapsed()
    );
    assert_eq!(hung.count(), 0, "the hung lane was answered");
    hung.set_open(true);
    hung.wait_for(5, Duration::from_secs(10)).await;
    let _ = h.shutdown.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_probed_once_per_backoff_step() {
    let endpoint = repeaterd_tests::ResettingEndpoint::start().await;
    let dispatch = DispatchConfig {
        concurrency: 4,
        max_attempts: 1000,
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_millis(1600),
        ..fast()
    };
    let h = start_with(
        &[spec("acme", "dead", &endpoint.url())],
        dispatch,
        |store| async move {
            let events: Vec<NewEvent> = (0..300).map(event).collect();
            store.ingest("acme", &events, now_millis()).await.unwrap();
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let arrivals = endpoint.arrivals();
    let mut batches = usize::from(!arrivals.is_empty());
    for pair in arrivals.windows(2) {
        if pair[1] - pair[0] > Duration::from_millis(100) {
            batches += 1;
        }
    }
    // 0, >=160, >=480, >=1120, >=2400 ms: at most 5 batches in 2.5 s.
    println!(
        "dead endpoint: {batches} batches, {} connections",
        arrivals.len()
    );
    assert!(
        (3..=5).contains(&batches),
        "{batches} batches: {arrivals:?}"
    );
    assert!(arrivals.len() <= 5 * 4, "{} connections", arrivals.len());
    let row = h.store.repeater("acme", "dead").await.unwrap().unwrap();
    assert!(row.backoff_step >= 2, "backoff step {}", row.backoff_step);
    assert!(row.backoff_until.is_some());
    assert!(row.last_error.is_some());
    let _ = h.shutdown.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_domains_go_first_while_a_big_domain_floods() {
    let receiver = Receiver::start().await;
    let mut specs: Vec<RepeaterSpec> = (0..5)
        .map(|i| {
            spec(
                "big",
                &format!("sink-{i}"),
                &format!("{}/big", receiver.url()),
            )
        })
        .collect();
    for i in 0..10 {
        specs.push(spec(
            &format!("small-{i}"),
            "sink",
            &format!("{}/small", receiver.url()),
        ));
    }
    let dispatch = DispatchConfig {
        max_inflight: 8,
        concurrency: 4,
        ..fast()
    };
    let h = start_with(&specs, dispatch, |store| async move {
        let flood: Vec<NewEvent> = (0..1000).map(event).collect();
        store.ingest("big", &flood, now_millis()).await.unwrap();
        for i in 0..10 {
            let events: Vec<NewEvent> = (0..10).map(event).collect();
            store
                .ingest(&format!("small-{i}"), &events, now_millis())
                .await
                .unwrap();
        }
    })
    .await;
    let got = receiver
        .wait_until("small domains delivered", Duration::from_secs(60), |got| {
            got.iter().filter(|r| r.path == "/small").count() >= 100
        })
        .await;
    let last_small = got.iter().rposition(|r| r.path == "/small").unwrap();
    let big_before = got[..last_small]
        .iter()
        .filter(|r| r.path == "/big")
        .count();
    println!("fairness: {big_before} flood records before the last small one");
    // Eleven domains share 8 slots round-robin: the small ones need three
    // turns each, the big one gets about one turn in eleven meanwhile.
    assert!(big_before <= 100, "{big_before} flood records went first");
    let _ = h.shutdown.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_gives_back_the_slots_of_records_it_did_not_claim() {
    // One slot per claimed record is held until a batch ends. A batch is
    // granted `batch_size` slots before its claim; one that finds a single
    // record due must give the other slots back at once, or a hung endpoint
    // with one record would hold every slot of the process.
    let hung = Receiver::start().await;
    hung.set_open(false);
    let quick = Receiver::start().await;
    let specs = [
        spec("hung", "sink", &hung.url()),
        spec("quick", "sink", &quick.url()),
    ];
    let dispatch = DispatchConfig {
        max_inflight: 10,
        batch_size: 10,
        timeout: Duration::from_secs(20),
        ..fast()
    };
    let h = start_with(&specs, dispatch, |store| async move {
        store
            .ingest("hung", &[event(0)], now_millis())
            .await
            .unwrap();
    })
    .await;
    // The hung receiver logs a request only once it answers: wait for the
    // hung repeater's lease instead, then for its request to be on the wire.
    wait_for_lease(h.store.as_ref(), "hung", "sink").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let events: Vec<NewEvent> = (1..=10).map(event).collect();
    h.store
        .ingest("quick", &events, now_millis())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    quick.wait_for(10, Duration::from_secs(10)).await;
    println!(
        "slots: 10 records delivered {:?} after ingest beside a hung batch",
        started.elapsed()
    );
    // The hung request is still open: the quick records got slots it had
    // given back, not slots freed by its end.
    let hung_record = records_of(h.store.as_ref(), "hung").await;
    assert_eq!(hung_record[0].state, RecordState::Pending);
    assert_eq!(hung.count(), 0, "the hung request was answered");
    hung.set_open(true);
    hung.wait_for(1, Duration::from_secs(10)).await;
    let _ = h.shutdown.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_on_one_postgres_database_never_both_send_a_record() {
    let receiver = Receiver::start().await;
    let database = PgDatabase::create().await;
    let url = database.url.clone();
    let mut specs = Vec::new();
    for d in 0..4 {
        for r in 0..2 {
            specs.push(spec(&format!("d{d}"), &format!("r{r}"), &receiver.url()));
        }
    }
    let open = || async {
        repeaterd::store::open(Some(&url), std::path::Path::new("unused"))
            .await
            .unwrap()
    };
    let a = start_on(
        open().await,
        tempfile::tempdir().unwrap(),
        &specs,
        fast(),
        |_| async {},
    )
    .await;
    let b = start_on(
        open().await,
        tempfile::tempdir().unwrap(),
        &specs,
        fast(),
        |_| async {},
    )
    .await;
    let t0 = std::time::Instant::now();
    for d in 0..4 {
        let events: Vec<NewEvent> = (0..250).map(event).collect();
        let via = if d % 2 == 0 { &a } else { &b };
        via.store
            .ingest(&format!("d{d}"), &events, now_millis())
            .await
            .unwrap();
    }
    receiver
        .wait_until("2000 records delivered", Duration::from_secs(60), |got| {
            got.len() >= 2000
        })
        .await;
    println!("two dispatchers: 2000 records in {:?}", t0.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.received();
    let mut ids: Vec<String> = got.iter().filter_map(|r| r.record_id()).collect();
    ids.sort();
    let total = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), 2000);
    assert_eq!(total, 2000, "some records were sent twice");
    let _ = a.shutdown.send(true);
    let _ = b.shutdown.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_batch_keeps_its_lease_so_a_peer_never_sends_its_records() {
    // Two dispatchers on one PostgreSQL database, a lease of 600 ms and a
    // receiver that holds every request for 2 s: without renewal the peer
    // would take the lane over and send the same records again.
    let receiver = Receiver::start().await;
    receiver.set_open(false);
    let database = PgDatabase::create().await;
    let url = database.url.clone();
    let specs = [spec("acme", "slow", &receiver.url())];
    let dispatch = DispatchConfig {
        lease_ttl: Some(Duration::from_millis(600)),
        ..fast()
    };
    let open = || async {
        repeaterd::store::open(Some(&url), std::path::Path::new("unused"))
            .await
            .unwrap()
    };
    let a = start_on(
        open().await,
        tempfile::tempdir().unwrap(),
        &specs,
        dispatch.clone(),
        |store| async move {
            let events: Vec<NewEvent> = (0..5).map(event).collect();
            store.ingest("acme", &events, now_millis()).await.unwrap();
        },
    )
    .await;
    let b = start_on(
        open().await,
        tempfile::tempdir().unwrap(),
        &specs,
        dispatch,
        |_| async {},
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    receiver.set_open(true);
    wait_states(a.store.as_ref(), "acme", RecordState::Succeeded, 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 5, "records were sent by both dispatchers");
    let _ = a.shutdown.send(true);
    let _ = b.shutdown.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_finished_records_in_bounded_batches() {
    let receiver = Receiver::start().await;
    let (store, dir) = fresh_sqlite().await;
    let h = start_full(
        store,
        dir,
        &[spec("acme", "crm", &receiver.url())],
        fast(),
        Some(Duration::from_millis(300)),
        SAFETY_NET,
        |store| async move {
            let events: Vec<NewEvent> = (0..20).map(event).collect();
            store.ingest("acme", &events, now_millis()).await.unwrap();
        },
    )
    .await;
    receiver.wait_for(20, Duration::from_secs(30)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = records_of(h.store.as_ref(), "acme").await;
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} records left",
            left.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The repeater itself stays.
    assert!(h.store.repeater("acme", "crm").await.unwrap().is_some());
    let _ = h.shutdown.send(true);
}

fn hostile(domain: &str, mode: &str, url: &str) -> RepeaterSpec {
    serde_json::from_value(serde_json::json!({
        "domain": domain, "name": mode, "url": url, "plugin": "hostile",
        "plugin_config": {"mode": mode}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_failures_are_attempt_outcomes_and_other_repeaters_carry_on() {
    let receiver = Receiver::start().await;
    let url = receiver.url();
    let specs = [
        hostile("bad", "trap", &url),
        hostile("bad", "loop", &url),
        hostile("bad", "oversized-headers", &url),
        spec("good", "crm", &url),
    ];
    let h = start_with(&specs, fast(), |store| async move {
        for domain in ["bad", "good"] {
            let events: Vec<NewEvent> = (0..3).map(event).collect();
            store.ingest(domain, &events, now_millis()).await.unwrap();
        }
    })
    .await;
    wait_states(h.store.as_ref(), "good", RecordState::Succeeded, 3).await;
    // Output over a limit is the plugin's deterministic answer: rejected.
    wait_states(h.store.as_ref(), "bad", RecordState::Rejected, 3).await;
    // A trap and a CPU-limit hit are retried with the reason kept.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for (name, reason) in [("trap", "trapped"), ("loop", "CPU time limit")] {
        loop {
            let rows = h
                .store
                .records(
                    "bad",
                    &RecordQuery {
                        repeater: Some(name.into()),
                        limit: 10,
                        ..RecordQuery::default()
                    },
                )
                .await
                .unwrap();
            let tried = rows.iter().filter(|r| r.attempts >= 1).count();
            if tried == 3 {
                for row in &rows {
                    assert!(
                        matches!(row.state, RecordState::Retrying | RecordState::Cancelled),
                        "{row:?}"
                    );
                    let (_, attempts) = h.store.record("bad", row.id).await.unwrap().unwrap();
                    let error = attempts[0].error.clone().unwrap_or_default();
                    assert!(error.contains(reason), "{name}: {error}");
                    assert_eq!(attempts[0].status, None, "nothing was sent");
                }
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: {tried} of 3 tried"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let row = h.store.repeater("bad", name).await.unwrap().unwrap();
        if name == "trap" {
            // A trap is the payload's problem as far as the host knows.
            assert_eq!(row.backoff_step, 0, "{name} backed off");
        } else {
            // Hitting the CPU limit burns host time on every attempt: the
            // repeater backs off like one whose endpoint is down.
            assert!(row.backoff_step >= 1, "{name} did not back off");
            let error = row.last_error.clone().unwrap_or_default();
            assert!(error.contains("CPU time limit"), "{name}: {error}");
        }
    }
    // Only the healthy repeater reached the receiver.
    assert_eq!(receiver.count(), 3);
    let _ = h.shutdown.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_repeater_is_paced_smoothly() {
    let receiver = Receiver::start().await;
    let mut paced = spec("acme", "paced", &receiver.url());
    paced.limits.rate_per_second = Some(20.0);
    paced.limits.burst = Some(2);
    let h = start_with(&[paced], fast(), |store| async move {
        let events: Vec<NewEvent> = (0..30).map(event).collect();
        store.ingest("acme", &events, now_millis()).await.unwrap();
    })
    .await;
    let got = receiver.wait_for(30, Duration::from_secs(30)).await;
    let span = got.last().unwrap().at - got.first().unwrap().at;
    // 30 requests at 20/s with a burst of 2: at least 28 intervals of 50 ms.
    println!("rate: 30 requests over {span:?}");
    assert!(
        span >= Duration::from_millis(1300),
        "30 requests in {span:?}"
    );
    // Smooth, not bunched: no second holds more than rate + burst.
    for window in got.windows(23) {
        assert!(
            window[22].at - window[0].at >= Duration::from_millis(900),
            "bunched requests"
        );
    }
    let _ = h.shutdown.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_delays_the_record_and_its_repeater() {
    let receiver = Receiver::with_script(Arc::new(|_, seen| {
        if seen == 0 {
            Reply::Status(429, vec![("retry-after".into(), "2".into())], String::new())
        } else {
            Reply::status(200)
        }
    }))
    .await;
    let h = start_with(
        &[spec("acme", "crm", &receiver.url())],
        fast(),
        |store| async move {
            store
                .ingest("acme", &[event(0)], now_millis())
                .await
                .unwrap();
        },
    )
    .await;
    let got = receiver.wait_for(2, Duration::from_secs(30)).await;
    let waited = got[1].at - got[0].at;
    // The retry schedule says 100 ms; Retry-After says 2 s.
    assert!(
        waited >= Duration::from_millis(1900),
        "retried after {waited:?}"
    );
    wait_states(h.store.as_ref(), "acme", RecordState::Succeeded, 1).await;
    let _ = h.shutdown.send(true);
}
