//! Two daemons on one PostgreSQL database under steady load: when one is
//! killed, its repeaters deliver again from the other within the default
//! lease's time to live; when one is frozen past its leases and resumed,
//! the lease epoch fences it out and it gives its lanes up. Nothing is
//! lost, and duplicates stay within what the dead daemon had in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use repeaterd_tests::{
    Backend, Daemon, DaemonConfig, Receiver, RepeaterConfig, Reply, TestDir, eventually,
};
use serde_json::{Value, json};

const DOMAINS: usize = 6;
const EVENTS_PER_DOMAIN: usize = 600;
/// The daemon's default `lease_ttl` (config/dispatch.rs), which this test
/// proves: failover happens within it and one scheduler sleep.
const DEFAULT_LEASE_TTL: &str = "3s";
const FAILOVER_LIMIT: Duration = Duration::from_secs(5);

fn domain(i: usize) -> String {
    format!("tenant{i}")
}

fn config(receiver: &Receiver) -> DaemonConfig {
    DaemonConfig {
        repeaters: (0..DOMAINS)
            .map(|i| {
                RepeaterConfig::json_forward(
                    &domain(i),
                    "sink",
                    &format!("{}/{}", receiver.url(), domain(i)),
                )
            })
            .collect(),
        lease_ttl: DEFAULT_LEASE_TTL.to_owned(),
        max_inflight: 24,
        concurrency: 2,
        batch_size: 10,
        ..DaemonConfig::default()
    }
}

/// A receiver that takes 20 ms per request, so the backlog drains over
/// several seconds while the test acts.
async fn slow_receiver() -> Receiver {
    Receiver::with_script(Arc::new(|_, _| {
        Reply::Delayed(Duration::from_millis(20), Box::new(Reply::status(200)))
    }))
    .await
}

async fn ingest_backlog(daemon: &Daemon) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for i in 0..DOMAINS {
        let events: Vec<Value> = (0..EVENTS_PER_DOMAIN)
            .map(|n| json!({"type": "case.created", "id": format!("e{n}"), "payload": {"n": n}}))
            .collect();
        let (status, answer) = daemon
            .post(
                &format!("/v1/domains/{}/events/batch", domain(i)),
                &json!({ "events": events }),
            )
            .await;
        assert!(
            (200..300).contains(&status),
            "ingest answered {status}: {answer}"
        );
        ids.extend(repeaterd_tests::batch_record_ids(&answer));
    }
    ids
}

/// The lease holder of each repeater, by domain.
async fn holders(daemon: &Daemon) -> BTreeMap<String, String> {
    let (status, body) = daemon.get("/v1/repeaters").await;
    assert_eq!(status, 200, "{body}");
    body["repeaters"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|repeater| {
            let lease = repeater.get("lease")?;
            if lease["expired"].as_bool() == Some(true) {
                return None;
            }
            Some((
                repeater["domain"].as_str()?.to_owned(),
                lease["holder"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// The domains whose lease `pid`'s daemon holds.
async fn held_by(observer: &Daemon, pid: u32) -> BTreeSet<String> {
    let marker = format!(":{pid}:");
    holders(observer)
        .await
        .into_iter()
        .filter(|(_, holder)| holder.contains(&marker))
        .map(|(domain, _)| domain)
        .collect()
}

/// Requests per domain (the receiver's path) so far.
fn per_domain(receiver: &Receiver) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for request in receiver.received() {
        let domain = request.path.trim_start_matches('/').to_owned();
        *counts.entry(domain).or_insert(0) += 1;
    }
    counts
}

/// Waits until each of `domains` that still had records to deliver got a
/// request beyond its count in `before`; returns the longest wait.
async fn wait_each_delivers(
    receiver: &Receiver,
    domains: &BTreeSet<String>,
    before: &BTreeMap<String, usize>,
    limit: Duration,
    log: impl Fn() -> String,
) -> Duration {
    let started = Instant::now();
    // A domain whose backlog had drained has nothing left to deliver.
    let mut pending: BTreeSet<String> = domains
        .iter()
        .filter(|domain| before.get(*domain).copied().unwrap_or(0) < EVENTS_PER_DOMAIN)
        .cloned()
        .collect();
    assert!(
        !pending.is_empty(),
        "the test needs a backlog left on the stopped daemon's repeaters {domains:?}: {before:?}"
    );
    let mut longest = Duration::ZERO;
    while !pending.is_empty() {
        let now = per_domain(receiver);
        pending.retain(|domain| {
            let moved =
                now.get(domain).copied().unwrap_or(0) > before.get(domain).copied().unwrap_or(0);
            if moved {
                longest = longest.max(started.elapsed());
            }
            !moved
        });
        assert!(
            started.elapsed() < limit,
            "{pending:?} delivered nothing within {limit:?}:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    longest
}

/// Waits until every id reached the receiver; returns how many arrived more
/// than once.
async fn wait_all(receiver: &Receiver, ids: &BTreeSet<String>, limit: Duration) -> usize {
    let started = Instant::now();
    loop {
        let per_record = receiver.per_record();
        let missing = ids
            .iter()
            .filter(|id| !per_record.contains_key(*id))
            .count();
        if missing == 0 {
            return per_record.values().filter(|count| **count > 1).count();
        }
        assert!(
            started.elapsed() < limit,
            "{missing} of {} records never arrived within {limit:?}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the daemon with `pid` holds at least one lease.
async fn wait_holds_some(observer: &Daemon, pid: u32) -> BTreeSet<String> {
    let what = format!("daemon {pid} to take a lease");
    eventually(
        &what,
        Duration::from_secs(30),
        || observer.log(),
        || async {
            let held = held_by(observer, pid).await;
            (!held.is_empty()).then_some(held)
        },
    )
    .await
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemons_repeaters_deliver_again_within_five_seconds() {
    let backend = Backend::postgres().await;
    let receiver = slow_receiver().await;
    let dir = TestDir::new();
    let config = config(&receiver);
    let mut doomed = Daemon::start_named(&dir, "doomed", &config, &backend).await;
    let survivor = Daemon::start_named(&dir, "survivor", &config, &backend).await;
    let ids = ingest_backlog(&survivor).await;
    receiver.wait_for(50, Duration::from_secs(30)).await;

    let pid = doomed.pid().expect("running");
    let held = wait_holds_some(&survivor, pid).await;
    doomed.kill_hard().await;
    // A request already on the wire when the process died may still land.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = per_domain(&receiver);
    let failover = wait_each_delivers(&receiver, &held, &before, Duration::from_secs(30), || {
        survivor.log()
    })
    .await
        + Duration::from_millis(100);

    let duplicates = wait_all(&receiver, &ids, Duration::from_secs(120)).await;
    eprintln!(
        "failover: {} repeaters of the killed daemon delivered again after {:.2}s; \
         {duplicates} of {} records delivered twice",
        held.len(),
        failover.as_secs_f64(),
        ids.len()
    );
    assert!(
        failover <= FAILOVER_LIMIT,
        "the killed daemon's repeaters {held:?} delivered again after {failover:?}, \
         more than {FAILOVER_LIMIT:?}"
    );
    assert!(
        duplicates <= config.max_inflight as usize,
        "{duplicates} duplicates, more than the killed daemon could have had in flight ({})",
        config.max_inflight
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_daemon_is_fenced_out_and_gives_its_lanes_up() {
    let backend = Backend::postgres().await;
    let receiver = slow_receiver().await;
    let dir = TestDir::new();
    let config = config(&receiver);
    let frozen = Daemon::start_named(&dir, "frozen", &config, &backend).await;
    let other = Daemon::start_named(&dir, "other", &config, &backend).await;
    let ids = ingest_backlog(&other).await;
    receiver.wait_for(50, Duration::from_secs(30)).await;

    let pid = frozen.pid().expect("running");
    let held = wait_holds_some(&other, pid).await;
    frozen.signal(libc::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = per_domain(&receiver);
    let taken_over = wait_each_delivers(&receiver, &held, &before, Duration::from_secs(30), || {
        other.log()
    })
    .await;
    // Frozen well past its leases, then resumed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    frozen.signal(libc::SIGCONT);

    let duplicates = wait_all(&receiver, &ids, Duration::from_secs(120)).await;
    let (_, metrics) = frozen.get("/metrics").await;
    let lost = metric(
        metrics.as_str().unwrap_or_default(),
        "repeaterd_leases_lost",
    );
    eprintln!(
        "freeze: {} repeaters taken over after {:.2}s; the resumed daemon lost {lost} leases; \
         {duplicates} of {} records delivered twice",
        held.len(),
        taken_over.as_secs_f64(),
        ids.len()
    );
    assert!(
        lost >= 1.0,
        "the resumed daemon noticed its leases were lost (repeaterd_leases_lost = {lost}):\n{}",
        frozen.log()
    );
    assert!(
        duplicates <= config.max_inflight as usize,
        "{duplicates} duplicates, more than the frozen daemon had in flight ({})",
        config.max_inflight
    );
    // Every record ends delivered, whatever the frozen daemon had claimed:
    // its stale results were fenced out rather than written over the new
    // holder's.
    for i in 0..DOMAINS {
        let listed = repeaterd_tests::list_records(&other, &domain(i), None).await;
        let undelivered: Vec<&Value> = listed
            .iter()
            .filter(|record| record["state"] != "succeeded")
            .collect();
        assert!(
            undelivered.is_empty(),
            "{} records of {} did not succeed, e.g. {}",
            undelivered.len(),
            domain(i),
            undelivered[0]
        );
    }
}
