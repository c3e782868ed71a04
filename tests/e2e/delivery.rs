//! End to end, with the real `repeaterd` binary, a real receiver on
//! 127.0.0.1 and each store: events posted through the API reach the
//! receiver as the plugin built them; retries, rejections, idempotent
//! ingest and the admin actions behave as documented.

use std::sync::Arc;
use std::time::Duration;

use repeaterd_tests::{
    Backend, Daemon, DaemonConfig, Receiver, RepeaterConfig, Reply, TestDir, ingested_ids,
    on_both_stores, record_attempts, record_state,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn one_repeater(url: &str) -> DaemonConfig {
    DaemonConfig {
        repeaters: vec![RepeaterConfig::json_forward("acme", "crm", url)],
        ..DaemonConfig::default()
    }
}

async fn events_reach_the_receiver_transformed_by_the_plugin(backend: Backend) {
    let receiver = Receiver::start().await;
    let dir = TestDir::new();
    let daemon = Daemon::start(
        &dir,
        &one_repeater(&format!("{}/hooks", receiver.url())),
        &backend,
    )
    .await;

    let answer = daemon
        .ingest(
            "acme",
            json!({"type": "case.created", "id": "evt-1", "payload": {"case": 42, "name": "Ada"}}),
        )
        .await;
    let ids = ingested_ids(&answer);
    assert_eq!(
        ids.len(),
        1,
        "one subscribed repeater, one record: {answer}"
    );

    let got = receiver.wait_for(1, WAIT).await;
    let request = &got[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks");
    assert_eq!(request.record_id().as_deref(), Some(ids[0].as_str()));
    assert_eq!(
        request.header("content-type").as_deref(),
        Some("application/json")
    );
    // json-forward with `envelope = true` wraps the payload with the event's metadata.
    let body = request.json();
    assert_eq!(body["data"], json!({"case": 42, "name": "Ada"}));
    assert_eq!(body["type"], "case.created");
    assert_eq!(body["id"], "evt-1");
    assert_eq!(body["domain"], "acme");
    assert_eq!(body["repeater"], "crm");
    assert_eq!(body["attempt"], 1);
    assert_eq!(body["record_id"].as_str(), Some(ids[0].as_str()));

    let record = daemon
        .wait_record_state("acme", &ids[0], "succeeded", WAIT)
        .await;
    let attempts = record_attempts(&record);
    assert_eq!(attempts.len(), 1, "{record}");
    assert_eq!(attempts[0]["status"], 200);
    assert_eq!(attempts[0]["outcome"], "success");

    // Nothing else is sent for a delivered record.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 1);

    // SIGTERM stops the daemon cleanly.
    let mut daemon = daemon;
    assert!(
        daemon.stop().await,
        "repeaterd did not exit cleanly:\n{}",
        daemon.log()
    );
    // Its log went to a file, not a terminal: plain text, no colour codes.
    let log = daemon.log();
    assert!(log.contains("INFO"), "the daemon logged: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log:?}"
    );
}

/// Every attempt keeps what it sent, and nothing secret in it: the host's
/// bearer token and signature reach the receiver but are redacted in the
/// stored summary the API (and the console) shows.
async fn attempts_show_what_was_sent_with_credentials_redacted(backend: Backend) {
    const TOKEN: &str = "tok-e2e-0123456789-secret";
    const SIGNING: &str = "whsec_c2VjcmV0LWtleS1mb3ItZTJlLXRlc3RzLTAxMjM=";
    let receiver = Receiver::start().await;
    let dir = TestDir::new();
    let repeater =
        RepeaterConfig::json_forward("acme", "crm", &format!("{}/hooks", receiver.url()))
            .extra(r#"auth = { type = "bearer", token_env = "E2E_CRM_TOKEN" }"#)
            .extra(r#"signing = { secret_envs = ["E2E_CRM_SIGNING"] }"#);
    let config = DaemonConfig {
        repeaters: vec![repeater],
        env: vec![
            ("E2E_CRM_TOKEN".into(), TOKEN.into()),
            ("E2E_CRM_SIGNING".into(), SIGNING.into()),
        ],
        ..DaemonConfig::default()
    };
    let daemon = Daemon::start(&dir, &config, &backend).await;

    let answer = daemon
        .ingest(
            "acme",
            json!({"type": "case.created", "id": "evt-1", "payload": {"case": 42}}),
        )
        .await;
    let ids = ingested_ids(&answer);
    let got = receiver.wait_for(1, WAIT).await;
    let sent_signature = got[0].header("webhook-signature").expect("a signature");
    assert_eq!(
        got[0].header("authorization").as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );

    let record = daemon
        .wait_record_state("acme", &ids[0], "succeeded", WAIT)
        .await;
    let attempts = record_attempts(&record);
    let request = &attempts[0]["request"];
    assert_eq!(request["method"], "POST", "{record}");
    assert_eq!(request["url"], format!("{}/hooks", receiver.url()));
    assert_eq!(request["body_bytes"], got[0].body.len());
    let header = |name: &str| {
        (request["headers"].as_array().expect("headers").iter())
            .find(|h| h["name"] == name)
            .map(|h| h["value"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    assert_eq!(header("webhook-id").as_deref(), Some(ids[0].as_str()));
    assert_eq!(header("authorization").as_deref(), Some("redacted"));
    assert_eq!(header("webhook-signature").as_deref(), Some("redacted"));
    let shown = record.to_string();
    assert!(!shown.contains(TOKEN), "the token leaked: {shown}");
    assert!(
        !shown.contains(&sent_signature),
        "the signature leaked: {shown}"
    );
}

async fn a_503_then_200_is_retried_then_succeeds(backend: Backend) {
    let receiver = Receiver::with_script(Arc::new(|_, seen| {
        if seen < 2 {
            Reply::Status(503, Vec::new(), "busy".into())
        } else {
            Reply::status(200)
        }
    }))
    .await;
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &one_repeater(&receiver.url()), &backend).await;

    let answer = daemon
        .ingest("acme", json!({"type": "t", "payload": {"n": 1}}))
        .await;
    let id = ingested_ids(&answer).remove(0);
    let record = daemon
        .wait_record_state("acme", &id, "succeeded", WAIT)
        .await;

    let attempts = record_attempts(&record);
    let outcomes: Vec<&str> = attempts
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "success"], "{record}");
    let statuses: Vec<Value> = attempts.iter().map(|a| a["status"].clone()).collect();
    assert_eq!(statuses, [json!(503), json!(503), json!(200)]);
    // The response excerpt is kept with the attempt.
    assert_eq!(attempts[0]["response_excerpt"], "busy");

    let got = receiver.received();
    assert_eq!(got.len(), 3);
    let numbers: Vec<Value> = got.iter().map(|r| r.json()["attempt"].clone()).collect();
    assert_eq!(
        numbers,
        [json!(1), json!(2), json!(3)],
        "each try says which attempt it is"
    );
    assert!(
        got.iter()
            .all(|r| r.record_id().as_deref() == Some(id.as_str()))
    );
}

async fn a_400_is_rejected_without_retrying(backend: Backend) {
    let receiver = Receiver::with_script(Arc::new(|_, _| {
        Reply::Status(400, Vec::new(), r#"{"error":"bad case"}"#.into())
    }))
    .await;
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &one_repeater(&receiver.url()), &backend).await;

    let answer = daemon
        .ingest("acme", json!({"type": "t", "payload": {"n": 1}}))
        .await;
    let id = ingested_ids(&answer).remove(0);
    let record = daemon
        .wait_record_state("acme", &id, "rejected", WAIT)
        .await;
    let attempts = record_attempts(&record);
    assert_eq!(attempts.len(), 1, "{record}");
    assert_eq!(attempts[0]["status"], 400);
    assert_eq!(attempts[0]["outcome"], "reject");

    // A payload the plugin refuses is rejected without being sent.
    let answer = daemon
        .ingest(
            "acme",
            json!({"type": "t", "body": "not json", "content_type": "text/plain"}),
        )
        .await;
    let bad = ingested_ids(&answer).remove(0);
    let record = daemon
        .wait_record_state("acme", &bad, "rejected", WAIT)
        .await;
    assert_eq!(record_attempts(&record)[0]["outcome"], "reject");

    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.count(), 1, "a rejected record is not sent again");
}

async fn a_duplicate_event_id_creates_nothing_new(backend: Backend) {
    let receiver = Receiver::start().await;
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &one_repeater(&receiver.url()), &backend).await;

    let event = json!({"type": "t", "id": "same-id", "payload": {"n": 1}});
    let first = daemon.ingest("acme", event.clone()).await;
    let (status, second) = daemon.post("/v1/domains/acme/events", &event).await;
    assert!(
        status == 200 || status == 202,
        "the repeat answered {status}: {second}"
    );
    assert_eq!(second["created"], false, "{second}");
    assert_eq!(ingested_ids(&first), ingested_ids(&second));
    assert_eq!(first["event_id"], second["event_id"]);

    receiver.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.count(), 1, "the duplicate was not delivered again");
    let (status, list) = daemon.get("/v1/domains/acme/records").await;
    assert_eq!(status, 200);
    assert_eq!(list_items(&list).len(), 1, "{list}");
}

async fn pause_resume_resend_cancel_and_requeue_work_through_the_api(backend: Backend) {
    let receiver = Receiver::start().await;
    let dir = TestDir::new();
    let config = DaemonConfig {
        max_attempts: 2,
        ..one_repeater(&receiver.url())
    };
    let daemon = Daemon::start(&dir, &config, &backend).await;

    // Paused: records wait, nothing is sent.
    daemon.repeater_action("acme", "crm", "pause").await;
    let a = ingested_ids(
        &daemon
            .ingest("acme", json!({"type": "t", "payload": {"n": 1}}))
            .await,
    )
    .remove(0);
    let b = ingested_ids(
        &daemon
            .ingest("acme", json!({"type": "t", "payload": {"n": 2}}))
            .await,
    )
    .remove(0);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.count(), 0, "a paused repeater sends nothing");
    assert_eq!(
        record_state(&daemon.record("acme", &a).await).as_deref(),
        Some("pending")
    );

    // Cancel one while paused; resume delivers only the other.
    let (status, body) = daemon.record_action("acme", &b, "cancel").await;
    assert!(
        (200..300).contains(&status),
        "cancel answered {status}: {body}"
    );
    daemon.repeater_action("acme", "crm", "resume").await;
    daemon
        .wait_record_state("acme", &a, "succeeded", WAIT)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 1);
    assert_eq!(
        record_state(&daemon.record("acme", &b).await).as_deref(),
        Some("cancelled")
    );
    // A terminal record cannot be cancelled again.
    let (status, _) = daemon.record_action("acme", &a, "cancel").await;
    assert!(
        status >= 400,
        "cancelling a succeeded record answered {status}"
    );

    // Resend sends a delivered record again, keeping its attempt history.
    let (status, body) = daemon.record_action("acme", &a, "resend").await;
    assert!(
        (200..300).contains(&status),
        "resend answered {status}: {body}"
    );
    receiver.wait_for(2, WAIT).await;
    let record = daemon
        .wait_record_state("acme", &a, "succeeded", WAIT)
        .await;
    assert_eq!(record_attempts(&record).len(), 2, "{record}");

    // Requeue brings cancelled records back.
    daemon.repeater_action("acme", "crm", "requeue").await;
    daemon
        .wait_record_state("acme", &b, "succeeded", WAIT)
        .await;
    let got = receiver.wait_for(3, WAIT).await;
    assert_eq!(got[2].record_id().as_deref(), Some(b.as_str()));

    // The repeater's status is readable.
    let (status, repeater) = daemon.get("/v1/domains/acme/repeaters/crm").await;
    assert_eq!(status, 200, "{repeater}");
    assert!(repeater.to_string().contains("crm"));
}

async fn sighup_reloads_the_repeaters_of_the_config_file(backend: Backend) {
    let receiver = Receiver::start().await;
    let dir = TestDir::new();
    let mut config = one_repeater(&format!("{}/crm", receiver.url()));
    let daemon = Daemon::start(&dir, &config, &backend).await;

    config.repeaters.push(RepeaterConfig::json_forward(
        "acme",
        "audit",
        &format!("{}/audit", receiver.url()),
    ));
    daemon.reload(&config);
    let deadline = std::time::Instant::now() + WAIT;
    while daemon.get("/v1/domains/acme/repeaters/audit").await.0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not add the repeater:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = daemon
        .ingest("acme", json!({"type": "t", "payload": {"n": 1}}))
        .await;
    assert_eq!(ingested_ids(&answer).len(), 2, "{answer}");
    let got = receiver.wait_for(2, WAIT).await;
    let mut paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["/audit", "/crm"]);
}

/// The items of a list answer, wherever the API put them.
fn list_items(list: &Value) -> Vec<Value> {
    list.as_array()
        .or_else(|| list.get("records").and_then(Value::as_array))
        .or_else(|| list.get("items").and_then(Value::as_array))
        .cloned()
        .unwrap_or_default()
}

on_both_stores!(
    events_reach_the_receiver_transformed_by_the_plugin,
    attempts_show_what_was_sent_with_credentials_redacted,
    a_503_then_200_is_retried_then_succeeds,
    a_400_is_rejected_without_retrying,
    a_duplicate_event_id_creates_nothing_new,
    pause_resume_resend_cancel_and_requeue_work_through_the_api,
    sighup_reloads_the_repeaters_of_the_config_file,
);
