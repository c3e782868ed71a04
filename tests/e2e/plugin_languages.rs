//! The example plugins written in Python and JavaScript
//! (`examples/plugins/{python,javascript}`), built by their own build
//! scripts, run through the real daemon end to end: events posted through
//! the API reach a real receiver as the plugin built them, and the
//! plugin's own `classify` decides success, retry (honouring Retry-After)
//! and rejection.
//!
//! The components are not built by cargo: `.ci/run` runs the build
//! scripts first. Without them these tests fail, naming the script.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use repeaterd_tests::{
    Backend, Daemon, DaemonConfig, Received, Receiver, RepeaterConfig, Reply, Script, TestDir,
    ingested_ids, record_attempts,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// The component an example's build script writes, or a failure saying
/// how to build it.
fn example_component(language: &str) -> PathBuf {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/plugins")
        .join(language);
    let component = example.join("plugin.wasm");
    assert!(
        component.is_file(),
        "{} is missing: build it with {} (.ci/run does this before the tests)",
        component.display(),
        example.join("build.sh").display()
    );
    component
}

/// Answers 503 with `Retry-After: 1` to the first copy of a body that says
/// `fail-once`, 400 to one that says `reject`, and 200 otherwise.
fn receiver_script() -> Script {
    Arc::new(|request: &Received, seen: usize| {
        let body = String::from_utf8_lossy(&request.body);
        if body.contains("fail-once") && seen == 0 {
            Reply::Status(503, vec![("retry-after".into(), "1".into())], "busy".into())
        } else if body.contains("reject") {
            Reply::Status(400, Vec::new(), "bad sku".into())
        } else {
            Reply::status(200)
        }
    })
}

async fn delivers_through_the_daemon(language: &str) {
    let component = example_component(language);
    let plugin = format!("forward-{language}");
    let receiver = Receiver::with_script(receiver_script()).await;
    let dir = TestDir::new();
    std::fs::copy(
        &component,
        dir.path().join(format!("plugins/{plugin}.wasm")),
    )
    .unwrap();
    let repeater = RepeaterConfig {
        plugin: plugin.clone(),
        plugin_config: r#"{ path = "hooks" }"#.to_owned(),
        ..RepeaterConfig::json_forward("acme", "crm", &format!("{}/base", receiver.url()))
    };
    let config = DaemonConfig {
        repeaters: vec![repeater],
        ..DaemonConfig::default()
    };
    let mut daemon = Daemon::start(&dir, &config, &Backend::Sqlite).await;

    let events = [
        json!({"type": "order.created", "payload": {"order": 1}}),
        json!({"type": "note", "body": "fail-once", "content_type": "text/plain; charset=utf-8"}),
        json!({"type": "order.created", "payload": {"reject": true}}),
    ];
    let mut ids = Vec::new();
    for event in &events {
        let answer = daemon.ingest("acme", event.clone()).await;
        ids.push(ingested_ids(&answer).remove(0));
    }

    let delivered = daemon
        .wait_record_state("acme", &ids[0], "succeeded", WAIT)
        .await;
    assert_eq!(record_attempts(&delivered).len(), 1, "{delivered}");
    let retried = daemon
        .wait_record_state("acme", &ids[1], "succeeded", WAIT)
        .await;
    let outcomes: Vec<_> = record_attempts(&retried)
        .iter()
        .map(|a| a["outcome"].clone())
        .collect();
    assert_eq!(outcomes, [json!("retry"), json!("success")], "{retried}");
    let rejected = daemon
        .wait_record_state("acme", &ids[2], "rejected", WAIT)
        .await;
    let attempts = record_attempts(&rejected);
    assert_eq!(attempts.len(), 1, "{rejected}");
    assert!(
        rejected.to_string().contains("HTTP 400: bad sku"),
        "the plugin's reason is kept: {rejected}"
    );

    let got = receiver.received();
    assert_eq!(got.len(), 4, "one request per attempt: {got:?}");
    for request in &got {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/base/hooks");
    }
    let copies = |id: &str| -> Vec<&Received> {
        got.iter()
            .filter(|r| r.record_id().as_deref() == Some(id))
            .collect()
    };
    let first = copies(&ids[0]);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].body.as_ref(), br#"{"order":1}"#);
    assert_eq!(
        first[0].header("content-type").as_deref(),
        Some("application/json")
    );
    let text = copies(&ids[1]);
    assert_eq!(text.len(), 2);
    assert_eq!(text[0].body.as_ref(), b"fail-once");
    assert_eq!(
        text[0].header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    // The retry schedule says 100 ms; the plugin passed on Retry-After: 1.
    assert!(
        text[1].at - text[0].at >= Duration::from_secs(1),
        "retried after {:?}, before the 1 s the receiver asked for",
        text[1].at - text[0].at
    );

    assert!(
        daemon.stop().await,
        "repeaterd did not exit cleanly:\n{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_plugin_delivers_through_the_daemon() {
    delivers_through_the_daemon("python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_plugin_delivers_through_the_daemon() {
    delivers_through_the_daemon("javascript").await;
}
