//! PostgreSQL goes away under a running daemon and comes back: restarted
//! with `pg_ctl restart -m fast`, then stopped for a few seconds and started
//! again, while a producer posts events and the daemon delivers them. The
//! server is the test's own ([`PgServer`]), so no other test notices.
//!
//! While the database is down, ingest answers 503 with `Retry-After` (never
//! 500, never a 2xx for an event it did not store) and `/readyz` says not
//! ready; within 5 s of the database accepting connections again delivery
//! resumes; every event that was acknowledged is delivered; the daemon
//! keeps running throughout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use repeaterd_tests::{
    ADMIN_TOKEN, Backend, Daemon, DaemonConfig, PgServer, Receiver, RepeaterConfig, TestDir,
    ingested_ids,
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const DOMAIN: &str = "acme";
/// How soon after the database accepts connections delivery must resume.
const RECOVERY_LIMIT: Duration = Duration::from_secs(5);
/// How long the database stays stopped in the second outage.
const DOWN_FOR: Duration = Duration::from_secs(3);
/// Longest an ingest may take to answer, outage or not: a client must learn
/// quickly that it should retry, not hang on a pool that cannot connect.
const ANSWER_LIMIT: Duration = Duration::from_secs(5);

/// What one ingest request got.
#[derive(Debug)]
struct Posted {
    event: String,
    /// The HTTP status, or `None` when no answer came (transport error).
    status: Option<u16>,
    retry_after: Option<String>,
    /// The record ids of a 2xx answer.
    records: Vec<String>,
    took: Duration,
    /// The answer's body, or the transport error, for messages.
    detail: String,
}

/// Posts one event after another until `stop` is set; returns every answer.
fn producer(base: String, stop: Arc<AtomicBool>) -> JoinHandle<Vec<Posted>> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(40))
            .build()
            .expect("an HTTP client");
        let mut posted = Vec::new();
        let mut n = 0_u64;
        while !stop.load(Ordering::Relaxed) {
            let event = format!("e{n}");
            n += 1;
            let started = Instant::now();
            let sent = http
                .post(format!("{base}/v1/domains/{DOMAIN}/events"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"type": "case.created", "id": event, "payload": {"n": n}}))
                .send()
                .await;
            let answer = match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let text = resp.text().await.unwrap_or_default();
                    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    let records = if (200..300).contains(&status) {
                        ingested_ids(&body)
                    } else {
                        Vec::new()
                    };
                    Posted {
                        event,
                        status: Some(status),
                        retry_after,
                        records,
                        took: started.elapsed(),
                        detail: body.to_string(),
                    }
                }
                Err(err) => Posted {
                    event,
                    status: None,
                    retry_after: None,
                    records: Vec::new(),
                    took: started.elapsed(),
                    detail: err.to_string(),
                },
            };
            posted.push(answer);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        posted
    })
}

/// Polls `/readyz` every 100 ms until `stop` is set; returns when each
/// answer came and its status (`None`: no answer).
fn readiness(base: String, stop: Arc<AtomicBool>) -> JoinHandle<Vec<(Instant, Option<u16>)>> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client");
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let status = http
                .get(format!("{base}/readyz"))
                .send()
                .await
                .ok()
                .map(|resp| resp.status().as_u16());
            seen.push((Instant::now(), status));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    })
}

/// Waits for the receiver's next request after `count` requests; returns
/// how long it took.
async fn next_delivery(receiver: &Receiver, count: usize, daemon: &Daemon) -> Duration {
    let started = Instant::now();
    while receiver.count() <= count {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no delivery within 60 s of the database returning:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_rides_out_a_database_restart() {
    let server = PgServer::start().await;
    let backend = Backend::Postgres(server.database().await);
    let receiver = Receiver::start().await;
    let dir = TestDir::new();
    let config = DaemonConfig {
        repeaters: vec![RepeaterConfig::json_forward(
            DOMAIN,
            "sink",
            &format!("{}/sink", receiver.url()),
        )],
        // The PostgreSQL default (ADR 16).
        lease_ttl: "3s".to_owned(),
        ..DaemonConfig::default()
    };
    let mut daemon = Daemon::start(&dir, &config, &backend).await;

    let stop = Arc::new(AtomicBool::new(false));
    let producing = producer(daemon.base.clone(), stop.clone());
    let probing = readiness(daemon.base.clone(), stop.clone());
    receiver.wait_for(20, Duration::from_secs(30)).await;

    // A fast restart: sessions end, the server is back within a second.
    server.restart_fast().await;
    let after_restart = next_delivery(&receiver, receiver.count(), &daemon).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A real outage.
    let down_from = Instant::now();
    server.stop().await;
    tokio::time::sleep(DOWN_FOR).await;
    server.start_again().await;
    let up_at = Instant::now();
    let down_window = up_at - down_from;
    let after_outage = next_delivery(&receiver, receiver.count(), &daemon).await;

    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let posted = producing.await.expect("the producer");
    let probes = probing.await.expect("the readiness probe");

    // Every answer was a 2xx or a 503 with Retry-After, and came promptly.
    let odd: Vec<&Posted> = posted
        .iter()
        .filter(|p| !matches!(p.status, Some(200..=299 | 503)))
        .collect();
    let unavailable: Vec<&Posted> = posted.iter().filter(|p| p.status == Some(503)).collect();
    let without_retry_after = unavailable
        .iter()
        .filter(|p| p.retry_after.is_none())
        .count();
    let slowest = posted.iter().map(|p| p.took).max().unwrap_or_default();
    let acknowledged: Vec<&Posted> = posted
        .iter()
        .filter(|p| matches!(p.status, Some(200..=299)))
        .collect();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for p in &posted {
        let key = p.status.map_or("no answer".to_owned(), |s| s.to_string());
        *statuses.entry(key).or_default() += 1;
    }

    // Every acknowledged event's records reach the receiver.
    let wanted: Vec<&String> = acknowledged.iter().flat_map(|p| &p.records).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let per_record = receiver.per_record();
        let missing: Vec<&String> = wanted
            .iter()
            .copied()
            .filter(|id| !per_record.contains_key(*id))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let duplicates = receiver
        .per_record()
        .values()
        .filter(|count| **count > 1)
        .count();

    let not_ready_during_outage = probes
        .iter()
        .any(|(at, status)| *at > down_from && *at < up_at && *status != Some(200));
    let ready_after = probes
        .iter()
        .any(|(at, status)| *at > up_at && *status == Some(200));
    let unanswered_probes = probes.iter().filter(|(_, status)| status.is_none()).count();

    eprintln!(
        "database restart: down window {:.2}s; delivery resumed {:.2}s after the fast restart \
         and {:.2}s after the outage; ingest answers {statuses:?} ({} with Retry-After {:?}), \
         slowest {:.2}s; {} acknowledged records, {} duplicates, {} missing; /readyz polled {} \
         times, {unanswered_probes} unanswered",
        down_window.as_secs_f64(),
        after_restart.as_secs_f64(),
        after_outage.as_secs_f64(),
        unavailable.len(),
        unavailable.first().and_then(|p| p.retry_after.clone()),
        slowest.as_secs_f64(),
        wanted.len(),
        duplicates,
        missing.len(),
        probes.len(),
    );

    assert!(
        daemon.exited().is_none(),
        "the daemon exited:\n{}",
        daemon.log()
    );
    assert!(
        odd.is_empty(),
        "ingest answered other than 2xx or 503 ({} such), e.g. event {} got {:?} after {:?}: {}\n{}",
        odd.len(),
        odd[0].event,
        odd[0].status,
        odd[0].took,
        odd[0].detail,
        daemon.log()
    );
    assert!(
        !unavailable.is_empty(),
        "no ingest was refused while the database was down"
    );
    assert_eq!(
        without_retry_after,
        0,
        "503 answers without Retry-After, e.g. event {:?}",
        unavailable
            .iter()
            .find(|p| p.retry_after.is_none())
            .map(|p| &p.event)
    );
    assert!(
        slowest <= ANSWER_LIMIT,
        "an ingest took {slowest:?} to answer, more than {ANSWER_LIMIT:?}"
    );
    assert!(
        not_ready_during_outage,
        "/readyz never said not ready while the database was down: {:?}",
        probes
            .iter()
            .filter(|(at, _)| *at > down_from && *at < up_at)
            .map(|(_, status)| status)
            .collect::<Vec<_>>()
    );
    assert!(ready_after, "/readyz never said ready after the outage");
    assert_eq!(unanswered_probes, 0, "/readyz did not always answer");
    assert!(
        after_restart <= RECOVERY_LIMIT && after_outage <= RECOVERY_LIMIT,
        "delivery resumed {after_restart:?} after the fast restart and {after_outage:?} after \
         the outage, more than {RECOVERY_LIMIT:?}:\n{}",
        daemon.log()
    );
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged records never arrived, e.g. {}:\n{}",
        missing.len(),
        wanted.len(),
        missing[0],
        daemon.log()
    );
    assert!(daemon.stop().await, "the daemon did not stop cleanly");
    drop(backend);
    drop(server);
}
