//! Ingest pushes back when the store cannot keep up. The test holds the
//! SQLite file's write lock from outside, so nothing the daemon is given
//! can be stored; with `server.max_pending_events = 300`, two posts of 150
//! events fill the bound and wait, and the next ones must be answered
//! `503 overloaded` with `Retry-After`, having stored nothing. A small post
//! to a quiet domain skips the line and is stored once the lock goes, as
//! are the admitted posts; the pushed-back posts are posted again, and
//! every event of every 2xx answer is delivered exactly once.

use std::collections::HashSet;
use std::time::Duration;

use repeaterd_tests::{
    Backend, Daemon, DaemonConfig, Receiver, RepeaterConfig, TestDir, batch_record_ids,
};
use serde_json::{Value, json};
use sqlx::Connection;

/// The bound on posted events not yet stored.
const PENDING: usize = 300;
/// Events per bulk post (more than a small post, which may skip the line),
/// and bulk posts made while the lock is held.
const BULK: usize = 150;
const BULK_POSTS: usize = 5;

fn batch(prefix: &str, count: usize) -> Value {
    let events: Vec<Value> = (0..count)
        .map(|n| json!({"id": format!("{prefix}-{n}"), "type": "load.test", "payload": {"n": n}}))
        .collect();
    json!({ "events": events })
}

/// Posts `body` to `domain`'s batch route; status, `Retry-After` and body.
async fn post(base: &str, domain: &str, body: &Value) -> (u16, Option<String>, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/domains/{domain}/events/batch"))
        .bearer_auth(repeaterd_tests::ADMIN_TOKEN)
        .json(body)
        .send()
        .await
        .expect("the daemon answers");
    let status = response.status().as_u16();
    let retry_after = (response.headers().get("retry-after"))
        .map(|value| value.to_str().unwrap_or_default().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_faster_than_the_store_is_pushed_back_and_loses_nothing() {
    let receiver = Receiver::start().await;
    let dir = TestDir::new();
    let mut config = DaemonConfig::default();
    config
        .server_extra
        .push(format!("max_pending_events = {PENDING}"));
    for domain in ["bulk", "quiet"] {
        config.repeaters.push(RepeaterConfig::json_forward(
            domain,
            "fwd",
            &format!("{}/{domain}", receiver.url()),
        ));
    }
    let daemon = Daemon::start(&dir, &config, &Backend::Sqlite).await;

    // Hold the write lock: the daemon's writes wait for it (up to 5 s).
    let file = dir.path().join("repeaterd.sqlite");
    let mut lock = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
        .await
        .expect("open the daemon's database");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .expect("take the write lock");

    let mut posts = tokio::task::JoinSet::new();
    for index in 0..BULK_POSTS {
        let (base, body) = (daemon.base.clone(), batch(&format!("b{index}"), BULK));
        posts.spawn(async move {
            let answer = post(&base, "bulk", &body).await;
            (body, answer)
        });
        // In order, so the first two take the room.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let quiet = {
        let base = daemon.base.clone();
        tokio::spawn(async move { post(&base, "quiet", &batch("q", 1)).await })
    };

    // The waiting posts give up after 1 s; the admitted ones wait on the lock.
    let mut pushed_back = Vec::new();
    while pushed_back.len() < BULK_POSTS - PENDING / BULK {
        let (body, (status, retry_after, answer)) =
            tokio::time::timeout(Duration::from_secs(4), posts.join_next())
                .await
                .expect("the posts beyond the bound are answered within the wait")
                .expect("a post is left")
                .expect("the post task ran");
        assert_eq!(status, 503, "a post beyond the bound: {answer}");
        assert_eq!(retry_after.as_deref(), Some("1"), "{answer}");
        assert_eq!(answer["error"]["code"], "overloaded", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("server.max_pending_events") && message.contains("nothing"),
            "the message says what happened and what to do: {message}"
        );
        pushed_back.push(body);
    }
    assert!(
        !quiet.is_finished(),
        "the quiet post was admitted and waits for the lock"
    );
    let (_, metrics) = daemon.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.contains(&format!("repeaterd_ingest_pending_events {}", PENDING + 1)),
        "the admitted events are counted: {metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "repeaterd_ingest_pushed_back_total {}",
            pushed_back.len()
        )),
        "{metrics}"
    );

    sqlx::query("ROLLBACK")
        .execute(&mut lock)
        .await
        .expect("let the lock go");
    let mut stored: HashSet<String> = HashSet::new();
    while let Some(joined) = posts.join_next().await {
        let (_, (status, _, answer)) = joined.expect("the post task ran");
        assert_eq!(
            status, 202,
            "an admitted post is stored once the lock goes: {answer}"
        );
        stored.extend(batch_record_ids(&answer));
    }
    let (status, _, answer) = quiet.await.expect("the quiet post ran");
    assert_eq!(status, 202, "{answer}");
    stored.extend(batch_record_ids(&answer));
    for body in &pushed_back {
        let (status, _, answer) = post(&daemon.base, "bulk", body).await;
        assert_eq!(status, 202, "posted again after Retry-After: {answer}");
        stored.extend(batch_record_ids(&answer));
    }
    assert_eq!(stored.len(), BULK_POSTS * BULK + 1);

    receiver
        .wait_for(stored.len(), Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered = receiver.distinct_records();
    assert_eq!(delivered, stored.len(), "every acknowledged event, once");
    assert_eq!(receiver.count(), stored.len(), "no repeats");
}
