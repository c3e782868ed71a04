//! The SQLite database's disk fills under a producer while the daemon
//! delivers: the database lives on a 16 MiB tmpfs of the daemon's own
//! ([`SmallDisk`]), 4 MiB of which a ballast file holds. Ingest must refuse
//! with 507 (or 503) and a message that says what is wrong, never 500 and
//! never a 2xx for an event it did not store; when the ballast is removed
//! the same daemon process takes events again; every acknowledged event is
//! delivered; the file passes `PRAGMA integrity_check`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use repeaterd_tests::{
    Daemon, DaemonConfig, Receiver, RepeaterConfig, SmallDisk, TestDir, batch_record_ids,
    eventually,
};
use serde_json::{Value, json};
use sqlx::Connection;

const DOMAIN: &str = "acme";
/// The tmpfs the database lives on, MiB.
const DISK_MIB: u32 = 16;
/// The ballast taking part of it until the test frees it, bytes.
const BALLAST_BYTES: usize = 4 << 20;
/// Events per batch, and the size of each payload.
const BATCH: usize = 20;
const PAYLOAD_BYTES: usize = 8 << 10;
/// Most batches posted before the disk must have filled (6.4 MiB of
/// payloads more than the disk holds).
const MAX_BATCHES: usize = 140;
/// How long after space is freed ingest must accept again.
const RECOVERY_LIMIT: Duration = Duration::from_secs(10);

/// A batch of events `first..first + BATCH`.
fn batch(first: usize) -> Value {
    let pad = "x".repeat(PAYLOAD_BYTES);
    let events: Vec<Value> = (first..first + BATCH)
        .map(|n| json!({"id": format!("e{n}"), "type": "disk.test", "payload": {"n": n, "pad": pad}}))
        .collect();
    json!({ "events": events })
}

/// The room left on the database's disk, as `/metrics` reports it.
fn free_room(metrics: &str) -> Option<u64> {
    (metrics.lines())
        .find_map(|line| line.strip_prefix("repeaterd_database_disk_free_bytes{} "))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_ingest_loses_nothing_and_recovers_without_a_restart() {
    let receiver = Receiver::start().await;
    let dir = TestDir::new();
    let disk = SmallDisk {
        path: dir.path().join("disk"),
        mib: DISK_MIB,
    };
    std::fs::create_dir_all(&disk.path).expect("the disk's mount point");
    let mut config = DaemonConfig::default();
    config.repeaters.push(RepeaterConfig::json_forward(
        DOMAIN,
        "fwd",
        &format!("{}/fwd", receiver.url()),
    ));
    let mut daemon = Daemon::start_on_small_disk(&dir, &config, &disk).await;
    let pid = daemon.pid().expect("repeaterd runs");
    let ballast = daemon.path_as_seen_by_daemon(&disk.path.join("ballast"));
    std::fs::write(&ballast, vec![1u8; BALLAST_BYTES]).expect("write the ballast");

    // Fill the disk.
    let path = format!("/v1/domains/{DOMAIN}/events/batch");
    let mut acknowledged: Vec<String> = Vec::new();
    let mut refusals = Vec::new();
    let mut next = 0;
    for _ in 0..MAX_BATCHES {
        let (status, answer) = daemon.post(&path, &batch(next)).await;
        next += BATCH;
        match status {
            200..=299 => acknowledged.extend(batch_record_ids(&answer)),
            503 | 507 => {
                refusals.push((status, answer));
                if refusals.len() == 3 {
                    break;
                }
            }
            other => panic!(
                "ingest on a filling disk answered {other}: {answer}\n{}",
                daemon.log()
            ),
        }
    }
    assert!(
        !refusals.is_empty(),
        "{MAX_BATCHES} batches of {BATCH} × {PAYLOAD_BYTES} bytes all fitted on a {DISK_MIB} MiB disk"
    );
    assert!(!acknowledged.is_empty(), "nothing fitted on the disk");
    let (status, answer) = &refusals[0];
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        *status == 507 && message.contains("no room"),
        "a full disk is named as such: {status} {answer}"
    );
    // Near a full disk the log is copied into the file after every commit,
    // so freeing a little room is enough to go on: copying pages the log
    // still held grew the file into the room just freed, and ingest and
    // lease writes kept failing.
    let wal = daemon.path_as_seen_by_daemon(&disk.path.join("repeaterd.sqlite-wal"));
    let wal_bytes = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    println!(
        "disk full after {} acknowledged records, write-ahead log {} KiB; refused with {status}: {message}",
        acknowledged.len(),
        wal_bytes >> 10
    );
    assert!(
        daemon
            .log()
            .contains("the log is copied after every commit"),
        "the daemon says that room is short:\n{}",
        daemon.log()
    );
    assert!(
        wal_bytes < (BALLAST_BYTES / 2) as u64,
        "the write-ahead log ({wal_bytes} bytes) fits twice in the room the test frees"
    );

    // An operator sees the refusals in the metrics.
    let (_, metrics) = daemon.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("repeaterd_api_requests_total{")
                && line.contains("status=\"507\"")),
        "/metrics counts the 507 answers:\n{metrics}"
    );
    let free = free_room(&metrics).expect("/metrics reports the room left on the disk");
    assert!(
        free < BALLAST_BYTES as u64,
        "a full disk reports less room than the ballast: {free} bytes"
    );
    // And the console's overview says so.
    let (status, overview) = daemon.console_page("/ui").await;
    assert_eq!(status, 200, "{overview}");
    assert!(
        overview.contains("disk nearly full:"),
        "the overview names the full disk:\n{overview}"
    );

    // Free space: the same process takes events again.
    std::fs::remove_file(&ballast).expect("remove the ballast");
    let freed = Instant::now();
    let recovered = loop {
        let (status, answer) = daemon.post(&path, &batch(next)).await;
        if (200..300).contains(&status) {
            acknowledged.extend(batch_record_ids(&answer));
            break freed.elapsed();
        }
        assert!(
            status == 503 || status == 507,
            "ingest after freeing space answered {status}: {answer}"
        );
        assert!(
            freed.elapsed() < RECOVERY_LIMIT,
            "ingest still refused {:?} after space was freed: {status} {answer}\n{}",
            RECOVERY_LIMIT,
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    next += BATCH;
    let (_, metrics) = daemon.get("/metrics").await;
    let after = free_room(metrics.as_str().unwrap_or_default()).expect("the room left, again");
    assert!(
        after > free,
        "the freed ballast shows in the room reported: {free} bytes before, {after} after"
    );
    assert!(
        daemon.exited().is_none(),
        "repeaterd exited:\n{}",
        daemon.log()
    );
    assert_eq!(daemon.pid(), Some(pid), "the daemon was not restarted");

    // Every acknowledged record is delivered.
    let wanted: HashSet<String> = acknowledged.iter().cloned().collect();
    eventually(
        &format!("all {} acknowledged records delivered", wanted.len()),
        Duration::from_secs(90),
        || daemon.log(),
        || async {
            let seen: HashSet<String> = receiver.per_record().into_keys().collect();
            wanted.is_subset(&seen).then_some(())
        },
    )
    .await;
    println!(
        "disk full: ingest accepted again {:.2} s after space was freed; all {} acknowledged records delivered ({} batches posted)",
        recovered.as_secs_f64(),
        wanted.len(),
        next / BATCH
    );

    // The file is sound. SQLite resolves `/proc/<pid>/root` back to this
    // namespace's `/`, where the tmpfs is not mounted, so the check runs on
    // a copy of the database and its WAL, taken with the daemon stopped
    // (SIGSTOP): the state a crash at that moment would leave.
    let copy = dir.path().join("copy.sqlite");
    daemon.signal(libc::SIGSTOP);
    for suffix in ["", "-wal"] {
        let from =
            daemon.path_as_seen_by_daemon(&disk.path.join(format!("repeaterd.sqlite{suffix}")));
        let to = dir.path().join(format!("copy.sqlite{suffix}"));
        if from.exists() {
            std::fs::copy(&from, &to).expect("copy the database");
        }
    }
    daemon.signal(libc::SIGCONT);
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&copy);
    let mut db = sqlx::SqliteConnection::connect_with(&options)
        .await
        .expect("open the copy of the daemon's database");
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut db)
        .await
        .expect("run integrity_check");
    assert_eq!(check, "ok", "PRAGMA integrity_check");
    db.close().await.expect("close the database");
    assert!(daemon.stop().await, "repeaterd did not stop cleanly");
}
