//! End to end, with the real `repeaterd` binary and each store: a dead
//! endpoint costs one probe batch per backoff step (rule 4), small domains
//! are served while one domain floods (rule 1), two daemons sharing one
//! PostgreSQL database never both send a record (rule 3), and a busy
//! receiver that sheds load gets requests at its capacity, not beyond it
//! (rule 2, ADR 15).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use repeaterd_tests::{
    Backend, Capacity, Daemon, DaemonConfig, Receiver, RepeaterConfig, ResettingEndpoint, Served,
    TestDir, eventually, list_records, on_both_stores,
};
use serde_json::json;

async fn a_dead_endpoint_costs_one_batch_per_backoff_step(backend: Backend) {
    let endpoint = ResettingEndpoint::start().await;
    let dir = TestDir::new();
    let concurrency = 5;
    let config = DaemonConfig {
        repeaters: vec![RepeaterConfig::json_forward(
            "acme",
            "dead",
            &endpoint.url(),
        )],
        concurrency,
        max_attempts: 1000,
        backoff_min: "200ms".to_owned(),
        backoff_max: "1600ms".to_owned(),
        ..DaemonConfig::default()
    };
    let daemon = Daemon::start(&dir, &config, &backend).await;
    daemon.repeater_action("acme", "dead", "pause").await;
    let events: Vec<_> = (0..1000)
        .map(|i| json!({"type": "t", "payload": {"n": i}}))
        .collect();
    daemon.ingest_many("acme", events).await;
    daemon.repeater_action("acme", "dead", "resume").await;

    // Watch for four seconds after the first probe.
    let started = Instant::now();
    while endpoint.connections() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the endpoint was never tried"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = endpoint.arrivals()[0];
    let window = Duration::from_secs(4);
    tokio::time::sleep(window).await;
    let arrivals: Vec<Duration> = endpoint
        .arrivals()
        .into_iter()
        .filter(|at| *at <= first + window)
        .collect();

    // Probes of one batch arrive together; batches are a backoff step apart
    // (at least 160 ms: 200 ms minus 20 % jitter).
    let mut batches = 1;
    for pair in arrivals.windows(2) {
        if pair[1] - pair[0] > Duration::from_millis(100) {
            batches += 1;
        }
    }
    // Steps of 200, 400, 800, 1600, 1600 ms, each at least 80 % of that,
    // fit at most 6 batches into 4 s; each batch is at most `concurrency`.
    let most_batches = 6;
    println!(
        "dead endpoint: {} connections in {} batches over {window:?} with 1000 queued records",
        arrivals.len(),
        batches
    );
    assert!(batches >= 3, "the repeater kept probing: {batches} batches");
    assert!(
        batches <= most_batches,
        "{batches} batches in {window:?}: {arrivals:?}"
    );
    assert!(
        arrivals.len() <= most_batches * concurrency as usize,
        "{} connections for {batches} batches",
        arrivals.len()
    );

    // The repeater shows its backoff and the error.
    let (status, repeater) = daemon.get("/v1/domains/acme/repeaters/dead").await;
    assert_eq!(status, 200);
    let text = repeater.to_string();
    assert!(text.contains("backoff"), "{repeater}");
}

async fn small_domains_are_served_while_one_domain_floods(backend: Backend) {
    let receiver = Receiver::start().await;
    let dir = TestDir::new();
    // The flooding domain has five repeaters, so without fairness across
    // domains it could fill every slot of the process by itself.
    let mut repeaters: Vec<RepeaterConfig> = (0..5)
        .map(|i| {
            RepeaterConfig::json_forward(
                "big",
                &format!("sink-{i}"),
                &format!("{}/big", receiver.url()),
            )
        })
        .collect();
    for i in 0..10 {
        repeaters.push(RepeaterConfig::json_forward(
            &format!("small-{i}"),
            "sink",
            &format!("{}/small-{i}", receiver.url()),
        ));
    }
    let config = DaemonConfig {
        repeaters,
        max_inflight: 8,
        concurrency: 4,
        ..DaemonConfig::default()
    };
    let daemon = Daemon::start(&dir, &config, &backend).await;
    for r in &config.repeaters {
        daemon.repeater_action(&r.domain, &r.name, "pause").await;
    }
    // 2,000 events, each recorded for the domain's five repeaters: 10,000 records.
    let flood: Vec<_> = (0..2_000)
        .map(|i| json!({"type": "t", "payload": {"n": i}}))
        .collect();
    daemon.ingest_many("big", flood).await;
    for i in 0..10 {
        let events: Vec<_> = (0..10)
            .map(|n| json!({"type": "t", "payload": {"n": n}}))
            .collect();
        daemon.ingest_many(&format!("small-{i}"), events).await;
    }
    // The flooding domain gets its head start.
    for r in &config.repeaters {
        daemon.repeater_action(&r.domain, &r.name, "resume").await;
    }

    let got = receiver
        .wait_until(
            "every small domain's records delivered",
            Duration::from_secs(120),
            |got| got.iter().filter(|r| r.path.starts_with("/small-")).count() >= 100,
        )
        .await;
    let last_small = got
        .iter()
        .rposition(|r| r.path.starts_with("/small-"))
        .unwrap();
    let big_before = got[..last_small]
        .iter()
        .filter(|r| r.path == "/big")
        .count();
    let mut per_domain: HashMap<&str, usize> = HashMap::new();
    for r in &got[..=last_small] {
        *per_domain.entry(r.path.as_str()).or_default() += 1;
    }
    println!(
        "fairness: {big_before} of 10000 flood records went before the last small-domain record; {per_domain:?}"
    );
    for i in 0..10 {
        assert_eq!(per_domain.get(format!("/small-{i}").as_str()), Some(&10));
    }
    assert!(
        big_before < 5_000,
        "the small domains waited for {big_before} flood records"
    );
}

async fn two_daemons_on_one_database_never_both_send_a_record(backend: Backend) {
    let receiver = Receiver::start().await;
    let dir = TestDir::new();
    let mut repeaters = Vec::new();
    for d in 0..5 {
        for r in 0..2 {
            repeaters.push(RepeaterConfig::json_forward(
                &format!("d{d}"),
                &format!("r{r}"),
                &receiver.url(),
            ));
        }
    }
    let config = DaemonConfig {
        repeaters,
        max_inflight: 16,
        concurrency: 7,
        ..DaemonConfig::default()
    };
    let a = Daemon::start_named(&dir, "a", &config, &backend).await;
    let b = Daemon::start_named(&dir, "b", &config, &backend).await;
    for d in 0..5 {
        let events: Vec<_> = (0..500)
            .map(|i| json!({"type": "t", "payload": {"n": i}}))
            .collect();
        // Half the domains are posted to each daemon.
        let via = if d % 2 == 0 { &a } else { &b };
        via.ingest_many(&format!("d{d}"), events).await;
    }
    let got = receiver
        .wait_until(
            "5000 distinct records delivered",
            Duration::from_secs(180),
            |got| {
                let mut ids: Vec<_> = got.iter().filter_map(|r| r.record_id()).collect();
                ids.sort();
                ids.dedup();
                ids.len() >= 5_000
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got_after = receiver.received();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in &got_after {
        *counts
            .entry(r.record_id().expect("record id header"))
            .or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "two daemons: {} requests for {} records ({} at the 5000 mark)",
        got_after.len(),
        counts.len(),
        got.len()
    );
    assert_eq!(counts.len(), 5_000);
    assert!(twice.is_empty(), "records sent more than once: {twice:?}");

    // Both processes did part of the work.
    let (sent_a, sent_b) = (attempts_counted(&a).await, attempts_counted(&b).await);
    println!("two daemons: attempts by process: {sent_a} and {sent_b}");
    assert!(sent_a > 0.0, "daemon a sent nothing:\n{}", a.log());
    assert!(sent_b > 0.0, "daemon b sent nothing:\n{}", b.log());
    assert_eq!(sent_a + sent_b, 5_000.0, "attempts beyond one per record");
}

/// A receiver that serves three requests at a time, 50 ms each, and answers
/// `503` at once to any more, and one repeater allowed 16 with 600 records
/// queued: after the first wave of `503`s its adaptive limit sits at the
/// receiver's capacity, so nearly every request succeeds and the receiver
/// is kept busy. Figures and the behaviour before are in ADR 15.
async fn a_busy_receiver_gets_requests_at_its_capacity(backend: Backend) {
    const RECORDS: usize = 600;
    // The first wave finds the capacity; then the lane settles.
    const WARM_UP: Duration = Duration::from_secs(2);
    let capacity = Capacity {
        limit: 3,
        service: Duration::from_millis(50),
    };
    let receiver = Receiver::with_capacity(capacity).await;
    let dir = TestDir::new();
    let config = DaemonConfig {
        repeaters: vec![RepeaterConfig::json_forward(
            "acme",
            "busy",
            &receiver.url(),
        )],
        concurrency: 16,
        // Shed requests are retried; none may be cancelled for that.
        max_attempts: 1000,
        ..DaemonConfig::default()
    };
    let daemon = Daemon::start(&dir, &config, &backend).await;
    daemon.repeater_action("acme", "busy", "pause").await;
    let events: Vec<_> = (0..RECORDS)
        .map(|i| json!({"type": "t", "payload": {"n": i}}))
        .collect();
    daemon.ingest_many("acme", events).await;
    daemon.repeater_action("acme", "busy", "resume").await;

    // The limit as the metrics show it, sampled while the records go out.
    let limits = Mutex::new(Vec::new());
    eventually(
        "every record served",
        Duration::from_secs(120),
        || daemon.log(),
        || {
            let (daemon, receiver, limits) = (&daemon, &receiver, &limits);
            async move {
                if let Some(limit) = concurrency_limit(daemon, "acme", "busy").await {
                    limits.lock().unwrap().push((receiver.now(), limit));
                }
                let served: HashSet<String> = (receiver.received().iter())
                    .filter(|r| !r.shed)
                    .filter_map(|r| r.record_id())
                    .collect();
                (served.len() >= RECORDS).then_some(())
            }
        },
    )
    .await;
    eventually(
        "every record succeeded",
        Duration::from_secs(30),
        || daemon.log(),
        || async {
            let succeeded = list_records(&daemon, "acme", Some("succeeded")).await;
            (succeeded.len() == RECORDS).then_some(())
        },
    )
    .await;

    let received = receiver.received();
    let served = receiver.served();
    let shed = received.iter().filter(|r| r.shed).count();
    // The steady part: from the end of the warm-up until 90 % of the records
    // were delivered; the backlog keeps the lane busy all along it.
    let mut ends: Vec<Duration> = served.iter().map(|s| s.to).collect();
    ends.sort();
    let (from, to) = (received[0].at + WARM_UP, ends[RECORDS * 9 / 10 - 1]);
    assert!(
        to > from + Duration::from_secs(3),
        "no steady part: {from:?}..{to:?}"
    );
    let window = (to - from).as_secs_f64();
    let steady: Vec<_> = (received.iter())
        .filter(|r| r.at >= from && r.at < to)
        .collect();
    let steady_shed = steady.iter().filter(|r| r.shed).count();
    let steady_success = 1.0 - steady_shed as f64 / steady.len() as f64;
    // Capacity as this receiver really served it: slots over the mean time
    // a request held one (a sleep of 50 ms takes longer on a busy machine).
    let held: f64 = served.iter().map(|s| (s.to - s.from).as_secs_f64()).sum();
    let capacity_per_s = capacity.limit as f64 / (held / served.len() as f64);
    let throughput = ends.iter().filter(|at| **at >= from && **at < to).count() as f64 / window;
    let mut steady_limits: Vec<u32> = (limits.lock().unwrap().iter())
        .filter(|(at, _)| *at >= from && *at < to)
        .map(|(_, limit)| *limit)
        .collect();
    steady_limits.sort();
    let limit_changes = changes(&limits.lock().unwrap());
    println!(
        "busy receiver: {} requests, {} served, {shed} shed ({:.1} % success); \
         steady {from:.1?}..{to:.1?}: {} requests, {steady_shed} shed ({:.1} % success), \
         {throughput:.1}/s of {capacity_per_s:.1}/s capacity ({:.1} %); \
         limit over time: {limit_changes}",
        received.len(),
        served.len(),
        100.0 * served.len() as f64 / received.len() as f64,
        steady.len(),
        100.0 * steady_success,
        100.0 * throughput / capacity_per_s,
    );
    assert!(
        served.len() as f64 >= 0.9 * received.len() as f64,
        "{shed} of {} requests shed",
        received.len()
    );
    assert!(
        steady_success >= 0.9,
        "{steady_shed} of {} requests shed in the steady part",
        steady.len()
    );
    // A limit at the capacity keeps the receiver full: during nearly every
    // request's service the other slots were all held at some moment, and
    // a limit one below never fills them (0 % with the repeater's ceiling
    // set to 2). Unlike the share of the capacity used, this holds on a
    // machine too busy for the lane to turn answers into requests quickly:
    // beside a Rust build and the crash tests, 99.5 % full while 88 % of
    // the capacity was used, and a CI run once used only 77 %. The rate is
    // measured by the bench's busy scenario on the release binary (ADR 15).
    let full = full_share(&served, from, to, capacity.limit);
    println!(
        "busy receiver: {:.1} % of the steady part's served requests saw every slot held",
        100.0 * full
    );
    assert!(
        full >= 0.75,
        "the receiver was full during only {:.1} % of the steady part's requests",
        100.0 * full
    );
    let median = steady_limits[steady_limits.len() / 2];
    assert_eq!(
        median, capacity.limit as u32,
        "the limit did not settle at the capacity: {limit_changes}"
    );
}

/// The share of the requests that took a slot from `from` to `to` during
/// whose service, at some moment, all `limit` slots were held. The most
/// slots are held at a request's own start or at another's start within it.
fn full_share(served: &[Served], from: Duration, to: Duration, limit: usize) -> f64 {
    let held_at = |t: Duration| (served.iter()).filter(|s| s.from <= t && t < s.to).count();
    let steady: Vec<&Served> = (served.iter())
        .filter(|s| s.from >= from && s.from < to)
        .collect();
    let full = (steady.iter())
        .filter(|s| {
            let starts_within = (served.iter())
                .map(|other| other.from)
                .filter(|t| *t > s.from && *t < s.to);
            std::iter::once(s.from)
                .chain(starts_within)
                .any(|t| held_at(t) >= limit)
        })
        .count();
    full as f64 / steady.len().max(1) as f64
}

/// A repeater's adaptive concurrency limit, from the daemon's metrics.
async fn concurrency_limit(daemon: &Daemon, domain: &str, repeater: &str) -> Option<u32> {
    let (status, text) = daemon.get("/metrics").await;
    assert_eq!(status, 200);
    let labels = [
        format!("domain=\"{domain}\""),
        format!("repeater=\"{repeater}\""),
    ];
    (text.as_str()?.lines())
        .filter(|line| line.starts_with("repeaterd_repeater_concurrency_limit{"))
        .find(|line| labels.iter().all(|label| line.contains(label.as_str())))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// Samples of a value over time, written as the times it changed.
fn changes(samples: &[(Duration, u32)]) -> String {
    let mut out = Vec::new();
    let mut last = None;
    for (at, value) in samples {
        if last != Some(*value) {
            out.push(format!("{:.1}s={value}", at.as_secs_f64()));
            last = Some(*value);
        }
    }
    out.join(" ")
}

/// Attempts this daemon made, summed from its Prometheus metrics.
async fn attempts_counted(daemon: &Daemon) -> f64 {
    let (status, text) = daemon.get("/metrics").await;
    assert_eq!(status, 200);
    let text = text.as_str().unwrap_or_default().to_owned();
    text.lines()
        .filter(|line| line.starts_with("repeaterd_delivery_attempts_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

on_both_stores!(
    a_dead_endpoint_costs_one_batch_per_backoff_step,
    small_domains_are_served_while_one_domain_floods,
);

// The limiter is the same whichever store runs, and this test measures
// rates on a machine shared with other work: once, on SQLite.
mod a_busy_receiver_gets_requests_at_its_capacity {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let backend = repeaterd_tests::Backend::Sqlite;
        super::a_busy_receiver_gets_requests_at_its_capacity(backend).await
    }
}

mod two_daemons_on_one_database_never_both_send_a_record {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let backend = repeaterd_tests::Backend::postgres().await;
        super::two_daemons_on_one_database_never_both_send_a_record(backend).await
    }
}
