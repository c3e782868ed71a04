//! Receiver faults: a receiver that answers 500, 503 with `Retry-After: 1`,
//! 429 with `Retry-After: 2`, drops connections and stalls past the
//! repeater's 300 ms timeout, at random (seeded) for each record's first
//! tries. Every record must still end `succeeded` (seen through the API),
//! and no record may be tried again sooner than the `Retry-After` its last
//! answer asked for. Runs on SQLite and on PostgreSQL.
//!
//! `REPEATERD_FAULTS_SEED` repeats a run's fault choices.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use repeaterd_tests::{
    Backend, Daemon, DaemonConfig, Received, Receiver, RepeaterConfig, Reply, TestDir,
    list_records, on_both_stores, record_attempts, record_id, seed_from_env,
};

const DOMAINS: [&str; 2] = ["faults-a", "faults-b"];
const REPEATERS: [&str; 4] = ["one", "two", "three", "four"];
const EVENTS_PER_DOMAIN: usize = 10;
/// After this many faulty answers a record is answered 200.
const FAULTS_PER_RECORD: usize = 3;
/// Slack for clocks and millisecond rounding when checking Retry-After.
const TOLERANCE: Duration = Duration::from_millis(50);

/// What the receiver does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    ServerError,
    Unavailable,
    TooMany,
    Reset,
    Stall,
    Ok,
}

impl Fault {
    /// The delay this answer asked for, if any.
    fn retry_after(self) -> Option<Duration> {
        match self {
            Fault::Unavailable => Some(Duration::from_secs(1)),
            Fault::TooMany => Some(Duration::from_secs(2)),
            _ => None,
        }
    }

    fn reply(self) -> Reply {
        let after = |secs: u64| vec![("retry-after".to_owned(), secs.to_string())];
        match self {
            Fault::ServerError => Reply::Status(500, Vec::new(), "boom".into()),
            Fault::Unavailable => Reply::Status(503, after(1), "later".into()),
            Fault::TooMany => Reply::Status(429, after(2), "slow down".into()),
            Fault::Reset => Reply::Reset,
            // Answers long after the 300 ms timeout gave up.
            Fault::Stall => {
                Reply::Delayed(Duration::from_millis(1_500), Box::new(Reply::status(200)))
            }
            Fault::Ok => Reply::status(200),
        }
    }
}

/// The fault for the `seen`-th request of a record: a pure function of the
/// seed, so the checks below can tell what each request was answered.
fn fault_for(seed: u64, record: &str, seen: usize) -> Fault {
    if seen >= FAULTS_PER_RECORD {
        return Fault::Ok;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (seed, record, seen).hash(&mut hasher);
    match hasher.finish() % 6 {
        0 => Fault::ServerError,
        1 => Fault::Unavailable,
        2 => Fault::TooMany,
        3 => Fault::Reset,
        4 => Fault::Stall,
        _ => Fault::Ok,
    }
}

async fn every_record_survives_a_faulty_receiver(backend: Backend) {
    let started = Instant::now();
    let seed = seed_from_env("REPEATERD_FAULTS_SEED");
    println!("faults: seed {seed} (set REPEATERD_FAULTS_SEED={seed} to repeat)");
    let receiver = Arc::new(
        Receiver::with_script(Arc::new(move |request: &Received, seen| {
            let id = request.record_id().unwrap_or_default();
            fault_for(seed, &id, seen).reply()
        }))
        .await,
    );
    let dir = TestDir::new();
    let mut config = DaemonConfig {
        timeout: "300ms".to_owned(),
        retry_schedule: vec!["200ms".to_owned(), "500ms".to_owned()],
        max_attempts: 30,
        backoff_min: "100ms".to_owned(),
        backoff_max: "1s".to_owned(),
        concurrency: 10,
        ..DaemonConfig::default()
    };
    for domain in DOMAINS {
        for name in REPEATERS {
            config.repeaters.push(RepeaterConfig::json_forward(
                domain,
                name,
                &format!("{}/{domain}/{name}", receiver.url()),
            ));
        }
    }
    let daemon = Daemon::start(&dir, &config, &backend).await;
    for domain in DOMAINS {
        let events = (0..EVENTS_PER_DOMAIN)
            .map(|i| json!({"type": "faults.test", "payload": {"n": i}}))
            .collect();
        daemon.ingest_many(domain, events).await;
    }
    let total = DOMAINS.len() * REPEATERS.len() * EVENTS_PER_DOMAIN;

    // Every record ends succeeded, as the API reports it.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut succeeded = 0;
        let mut stuck = Vec::new();
        for domain in DOMAINS {
            for record in list_records(&daemon, domain, None).await {
                match record["state"].as_str() {
                    Some("succeeded") => succeeded += 1,
                    Some("pending" | "retrying") => {}
                    other => stuck.push(format!(
                        "{domain}/{}: {other:?} {record}",
                        record_id(&record)
                    )),
                }
            }
        }
        assert!(
            stuck.is_empty(),
            "records ended outside succeeded: {stuck:?}"
        );
        if succeeded == total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{succeeded} of {total} records succeeded within 120 s\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Replay the script over the receiver's log: what each request was
    // answered, and whether the next try of the record waited long enough.
    let log = receiver.received();
    let mut by_record: HashMap<String, Vec<&Received>> = HashMap::new();
    for request in &log {
        by_record
            .entry(
                request
                    .record_id()
                    .expect("json-forward sets the idempotency key"),
            )
            .or_default()
            .push(request);
    }
    assert_eq!(
        by_record.len(),
        total,
        "the receiver saw a different number of records"
    );
    let mut answered: HashMap<Fault, usize> = HashMap::new();
    let mut early = Vec::new();
    let mut tightest: Option<(Duration, Duration)> = None;
    for (id, requests) in &by_record {
        for (seen, pair) in requests.windows(2).enumerate() {
            let fault = fault_for(seed, id, seen);
            let Some(asked) = fault.retry_after() else {
                continue;
            };
            let gap = pair[1].at.saturating_sub(pair[0].at);
            if gap + TOLERANCE < asked {
                early.push(format!(
                    "record {id}: tried again {gap:?} after a {fault:?} asking {asked:?}"
                ));
            }
            if tightest.is_none_or(|(g, a)| {
                gap.as_secs_f64() / a.as_secs_f64() < g.as_secs_f64() / a.as_secs_f64()
            }) {
                tightest = Some((gap, asked));
            }
        }
        for seen in 0..requests.len() {
            *answered.entry(fault_for(seed, id, seen)).or_default() += 1;
        }
        // The try that made the record succeed was answered 200 in time.
        let last = fault_for(seed, id, requests.len() - 1);
        assert!(
            last == Fault::Ok,
            "record {id}: the last request was answered {last:?}, yet the record succeeded"
        );
    }
    let mut answered: Vec<_> = answered.into_iter().collect();
    answered.sort();
    println!(
        "faults: {total} records succeeded after {} requests; answers {answered:?}; \
         tightest retry after Retry-After: {tightest:?}; {:.1} s",
        log.len(),
        started.elapsed().as_secs_f64()
    );
    for fault in [
        Fault::ServerError,
        Fault::Unavailable,
        Fault::TooMany,
        Fault::Reset,
        Fault::Stall,
    ] {
        assert!(
            answered.iter().any(|(f, n)| *f == fault && *n > 0),
            "the run never answered {fault:?}; the seed covers too little"
        );
    }
    assert!(
        early.is_empty(),
        "retries ignored Retry-After:\n{}",
        early.join("\n")
    );

    // A stalled request is recorded as a timeout attempt.
    let stalled = by_record
        .iter()
        .find(|(id, requests)| requests.len() > 1 && fault_for(seed, id, 0) == Fault::Stall)
        .map(|(id, _)| id.clone())
        .expect("some record was stalled on its first try");
    let domain = DOMAINS
        .iter()
        .find(|domain| {
            log.iter().any(|r| {
                r.record_id().as_deref() == Some(stalled.as_str())
                    && r.path.starts_with(&format!("/{domain}/"))
            })
        })
        .unwrap();
    let record = daemon.record(domain, &stalled).await;
    let first = &record_attempts(&record)[0];
    let error = first["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        error.contains("timeout") || error.contains("timed out"),
        "the stalled attempt of {domain}/{stalled} does not name the timeout: {first}"
    );
}

on_both_stores!(every_record_survives_a_faulty_receiver);
