//! Crash safety (DESIGN rule 10, ADR 3): the real `repeaterd serve` under
//! load is killed with SIGKILL at random moments and restarted each time;
//! the receiver's own log must then show every record delivered, none lost,
//! and no more duplicates than the records that can be in flight at a kill
//! (`dispatch.max_inflight` per kill). Runs on SQLite and on PostgreSQL.
//!
//! The bound is ADR 3's: the records in flight at a kill, at most
//! `dispatch.max_inflight`. ADR 4 keeps it by claiming at most
//! `min(AIMD limit, free global slots)` records per batch, since a batch's
//! results are written only when the whole batch ends.
//!
//! `REPEATERD_CRASH_SEED` repeats a run's kill moments; `REPEATERD_CRASH_EVENTS`
//! changes the events per domain (default 2,500: 4 domains × 2 repeaters ×
//! 2,500 = 20,000 records); `REPEATERD_CRASH_BATCH_SIZE` sets
//! `dispatch.batch_size` (default 50).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use repeaterd_tests::{
    Backend, Daemon, DaemonConfig, Receiver, RepeaterConfig, TestDir, ingest_until_accepted,
    list_records, on_both_stores, seed_from_env,
};

const DOMAINS: [&str; 4] = ["crash-a", "crash-b", "crash-c", "crash-d"];
const REPEATERS: [&str; 2] = ["one", "two"];
const KILLS: usize = 6;
const MAX_INFLIGHT: u32 = 64;
/// Events per ingest call.
const INGEST_BATCH: usize = 250;

fn env_number<T: std::str::FromStr>(var: &str) -> Option<T> {
    std::env::var(var).ok().and_then(|v| v.parse().ok())
}

fn events_per_domain() -> usize {
    env_number("REPEATERD_CRASH_EVENTS").unwrap_or(2_500)
}

async fn survives_sigkill_under_load(backend: Backend) {
    let started = Instant::now();
    let label = backend.name();
    let seed = seed_from_env("REPEATERD_CRASH_SEED");
    println!("crash[{label}]: seed {seed} (set REPEATERD_CRASH_SEED={seed} to repeat)");
    let mut rng = StdRng::seed_from_u64(seed);

    let receiver = Arc::new(Receiver::start().await);
    let dir = TestDir::new();
    let mut config = DaemonConfig {
        max_inflight: MAX_INFLIGHT,
        lease_ttl: "2s".to_owned(),
        batch_size: env_number("REPEATERD_CRASH_BATCH_SIZE").unwrap_or(50),
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
    let mut daemon = Daemon::start(&dir, &config, &backend).await;
    let (base_tx, base_rx) = tokio::sync::watch::channel(daemon.base.clone());

    // Producers: one task per domain, each posting its events in batches
    // while the daemon delivers and gets killed.
    let per_domain = events_per_domain();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let producers: Vec<_> = DOMAINS
        .iter()
        .map(|&domain| {
            let (http, base) = (http.clone(), base_rx.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for start in (0..per_domain).step_by(INGEST_BATCH) {
                    let events: Vec<_> = (start..(start + INGEST_BATCH).min(per_domain))
                        .map(|i| json!({"id": format!("{domain}-{i}"), "type": "crash.test", "payload": {"n": i}}))
                        .collect();
                    ids.extend(
                        ingest_until_accepted(&http, &base, domain, &events, Duration::from_secs(120))
                            .await,
                    );
                }
                ids
            })
        })
        .collect();

    // Kill at random moments; `marks[k]` is the receiver's log length at kill k.
    let mut marks = Vec::new();
    for kill in 0..KILLS {
        let wait = Duration::from_millis(rng.random_range(400..2_500));
        tokio::time::sleep(wait).await;
        let pid = daemon.pid();
        daemon.kill_hard().await;
        marks.push(receiver.count());
        println!(
            "crash[{label}]: kill {} of pid {pid:?} after {wait:?}; receiver has {} requests, {} records",
            kill + 1,
            receiver.count(),
            receiver.distinct_records()
        );
        daemon = Daemon::start(&dir, &config, &backend).await;
        base_tx.send(daemon.base.clone()).unwrap();
    }

    let mut expected: HashSet<String> = HashSet::new();
    for producer in producers {
        expected.extend(producer.await.expect("producer task"));
    }
    let total = DOMAINS.len() * REPEATERS.len() * per_domain;
    assert_eq!(
        expected.len(),
        total,
        "ingest answered a different number of records"
    );

    // Everything must arrive after the last restart.
    let deadline = Instant::now() + Duration::from_secs(240);
    while receiver.distinct_records() < total {
        assert!(
            daemon.exited().is_none(),
            "repeaterd exited during delivery:\n{}",
            daemon.log()
        );
        assert!(
            Instant::now() < deadline,
            "only {} of {total} records reached the receiver within 240 s after the last restart\n{}",
            receiver.distinct_records(),
            tail(&daemon.log(), 60)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A short settle so a late duplicate would be counted too.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let log = receiver.received();
    let per_record = receiver.per_record();
    let delivered: HashSet<&String> = per_record.keys().collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !delivered.contains(id))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "records never delivered (first 5): {missing:?}"
    );
    let strays: Vec<_> = delivered
        .iter()
        .filter(|id| !expected.contains(**id))
        .take(5)
        .collect();
    assert!(
        strays.is_empty(),
        "the receiver got unknown record ids: {strays:?}"
    );
    let unkeyed = log.iter().filter(|r| r.record_id().is_none()).count();
    assert_eq!(unkeyed, 0, "requests without an idempotency key");

    // Duplicates, and which kill each one follows: a copy is charged to the
    // kill that ended the window in which the record's previous copy was
    // received, because that copy was in flight at that kill. A record in
    // flight at kill 2 whose resend is again in flight at kill 3 is charged
    // once to each kill, not twice to kill 2.
    let duplicates = log.len() - per_record.len();
    let mut last_window: HashMap<String, usize> = HashMap::new();
    let mut per_kill = vec![0usize; KILLS + 1];
    for (index, request) in log.iter().enumerate() {
        let id = request.record_id().unwrap();
        let window = marks.iter().take_while(|&&mark| mark <= index).count();
        if let Some(previous) = last_window.insert(id, window) {
            per_kill[previous] += 1;
        }
    }
    println!(
        "crash[{label}]: {KILLS} kills survived; {total} records delivered; {} requests; \
         {duplicates} duplicates (bound {} = kills × max_inflight); per kill window {:?}; {:.1} s",
        log.len(),
        KILLS as u32 * MAX_INFLIGHT,
        per_kill,
        started.elapsed().as_secs_f64()
    );
    assert!(
        duplicates <= KILLS * MAX_INFLIGHT as usize,
        "{duplicates} duplicates exceed {KILLS} kills × max_inflight {MAX_INFLIGHT}"
    );
    for (window, &count) in per_kill.iter().enumerate().take(KILLS) {
        assert!(
            count <= MAX_INFLIGHT as usize,
            "kill {} was followed by {count} duplicates, more than max_inflight {MAX_INFLIGHT}",
            window + 1
        );
    }
    assert_eq!(
        per_kill[KILLS], 0,
        "records were sent twice after the last restart, with no kill to explain it"
    );

    // The store agrees: every record succeeded, none is left behind.
    for domain in DOMAINS {
        let succeeded = list_records(&daemon, domain, Some("succeeded")).await.len();
        assert_eq!(
            succeeded,
            REPEATERS.len() * per_domain,
            "{domain}: the API shows {succeeded} succeeded records"
        );
    }
    assert!(
        daemon.stop().await,
        "repeaterd did not stop cleanly after the run"
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

on_both_stores!(survives_sigkill_under_load);
