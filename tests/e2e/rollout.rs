//! Plugin versions roll out repeater by repeater (ADR 14), on the real
//! binary with real components and a real receiver, under steady load.
//!
//! Plugin `relay` is a file in the plugin directory. Repeater `a` sends
//! with config `{}`, repeater `b` with an `x-legacy-id` header. The
//! versions that arrive:
//!
//! 1. v1: `json-forward` — both run it.
//! 2. v2: `strict-forward`, whose `validate-config` refuses `x-legacy`
//!    headers: `a` moves to it within a second; `b` stays on v1 with the
//!    refusal in its status and the refusal counted in the metrics.
//! 3. `a` is pinned to v1 (a rollback), then v3 (`json-forward` again,
//!    with a custom section so its sha256 differs) arrives: `b` moves to
//!    it, pinned `a` stays; v2 is dropped. Unpinned, `a` moves to v3.
//! 4. A file that is not a component, then a component that is not a
//!    plugin: nothing changes and the error is in the plugin's detail.
//!
//! Meanwhile a config change the running version refuses is answered 422
//! with the plugin's message and changes nothing. At the end every record
//! was delivered exactly once, and each attempt names the version that
//! built it.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use repeaterd_tests::binary::plugin_component;
use repeaterd_tests::{
    Backend, Daemon, DaemonConfig, Receiver, RepeaterConfig, TestDir, list_records,
    record_attempts, record_id,
};

const DOMAIN: &str = "rollout";
/// How long a new version may take to reach an accepting repeater's
/// attempts once it is loaded.
const ROLLOUT_LIMIT_MS: i64 = 1_000;
/// How long the steps below wait for the daemon to act.
const WAIT: Duration = Duration::from_secs(30);

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `component` with a custom section appended: the same plugin, another
/// sha256 (what a rebuild that changed nothing of substance looks like).
fn with_custom_section(component: &[u8], note: &str) -> Vec<u8> {
    let name = b"repeaterd-test-note";
    let mut content = vec![name.len() as u8];
    content.extend_from_slice(name);
    content.extend_from_slice(note.as_bytes());
    assert!(content.len() < 128, "one LEB128 byte of size");
    let mut bytes = component.to_vec();
    bytes.push(0); // custom section id
    bytes.push(content.len() as u8);
    bytes.extend_from_slice(&content);
    bytes
}

/// Writes the plugin file whole (temporary file and rename), as a deploy
/// would, so the watcher never reads half a file.
fn deploy(dir: &Path, bytes: &[u8]) {
    let temp = dir.join(".relay.partial");
    std::fs::write(&temp, bytes).expect("write the plugin file");
    std::fs::rename(&temp, dir.join("relay.wasm")).expect("rename the plugin file");
}

/// Milliseconds since the Unix epoch of an RFC 3339 UTC time such as
/// `2026-12-05T07:10:28.123Z`, as the API writes them.
fn millis(text: &str) -> i64 {
    let field = |range: std::ops::Range<usize>| -> i64 {
        text.get(range)
            .and_then(|part| part.parse().ok())
            .unwrap_or_else(|| panic!("{text:?} is not an RFC 3339 time with milliseconds"))
    };
    let (year, month, day) = (field(0..4), field(5..7), field(8..10));
    let (hour, minute, second, milli) =
        (field(11..13), field(14..16), field(17..19), field(20..23));
    // Days from the civil date (proleptic Gregorian), 1970-01-01 = 0.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + milli
}

async fn plugin_detail(daemon: &Daemon) -> Value {
    let (status, body) = daemon.get("/v1/plugins/relay").await;
    assert_eq!(status, 200, "plugin detail answered {status}: {body}");
    body
}

async fn repeater(daemon: &Daemon, name: &str) -> Value {
    let (status, body) = daemon
        .get(&format!("/v1/domains/{DOMAIN}/repeaters/{name}"))
        .await;
    assert_eq!(status, 200, "repeater {name} answered {status}: {body}");
    body
}

/// The version repeater `name` runs, by its status.
async fn running(daemon: &Daemon, name: &str) -> Option<String> {
    repeater(daemon, name).await["plugin"]["running"]["sha256"]
        .as_str()
        .map(str::to_owned)
}

/// Polls `check` every 20 ms until it returns something, for at most [`WAIT`].
async fn eventually<T, F, Fut>(daemon: &Daemon, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    repeaterd_tests::eventually(what, WAIT, || daemon.log(), check).await
}

/// The kept versions of `relay` in the plugin detail.
fn versions(detail: &Value) -> Vec<String> {
    detail["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("plugin detail without versions: {detail}"))
        .iter()
        .map(|v| v["sha256"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn version<'a>(detail: &'a Value, sha256: &str) -> &'a Value {
    detail["versions"]
        .as_array()
        .and_then(|all| all.iter().find(|v| v["sha256"] == sha256))
        .unwrap_or_else(|| panic!("version {sha256} is not in the detail: {detail}"))
}

/// Puts repeater `name`'s spec with `plugin_config` and pin.
async fn put_repeater(
    daemon: &Daemon,
    receiver: &Receiver,
    name: &str,
    plugin_config: Value,
    pin: Option<&str>,
) -> (u16, Value) {
    let mut body = json!({
        "url": format!("{}/{name}", receiver.url()),
        "plugin": "relay",
        "plugin_config": plugin_config,
    });
    if let Some(pin) = pin {
        body["plugin_sha256"] = json!(pin);
    }
    daemon
        .put(&format!("/v1/domains/{DOMAIN}/repeaters/{name}"), &body)
        .await
}

/// One attempt as the record detail shows it.
struct Attempt {
    repeater: String,
    started_at: i64,
    sha256: String,
}

async fn all_attempts(daemon: &Daemon) -> Vec<Attempt> {
    let mut out = Vec::new();
    for record in list_records(daemon, DOMAIN, None).await {
        let id = record_id(&record);
        let detail = daemon.record(DOMAIN, &id).await;
        let repeater = detail["repeater"].as_str().unwrap_or_default().to_owned();
        for attempt in record_attempts(&detail) {
            out.push(Attempt {
                repeater: repeater.clone(),
                started_at: millis(attempt["started_at"].as_str().unwrap_or_default()),
                sha256: attempt["plugin_sha256"]
                    .as_str()
                    .unwrap_or_else(|| panic!("attempt without plugin_sha256: {detail}"))
                    .to_owned(),
            });
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_rolls_out_per_repeater_and_a_pin_rolls_back() {
    let receiver = Receiver::start().await;
    let dir = TestDir::new();
    let plugins = dir.path().join("plugins");
    let v1_bytes = std::fs::read(plugin_component("json-forward")).expect("json-forward");
    let v2_bytes = std::fs::read(plugin_component("strict-forward")).expect("strict-forward");
    let v3_bytes = with_custom_section(&v1_bytes, "v3");
    let (v1, v2, v3) = (sha(&v1_bytes), sha(&v2_bytes), sha(&v3_bytes));
    deploy(&plugins, &v1_bytes);

    let mut config = DaemonConfig {
        batch_size: 10,
        ..DaemonConfig::default()
    };
    for (name, plugin_config) in [("a", "{}"), ("b", r#"{ headers = { x-legacy-id = "b" } }"#)] {
        config.repeaters.push(RepeaterConfig::with_plugin(
            DOMAIN,
            name,
            &format!("{}/{name}", receiver.url()),
            "relay",
            plugin_config,
        ));
    }
    let daemon = Arc::new(Daemon::start(&dir, &config, &Backend::Sqlite).await);

    // Steady load: one event every 20 ms until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn({
        let daemon = daemon.clone();
        let stop = stop.clone();
        async move {
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                daemon
                    .ingest(
                        DOMAIN,
                        json!({"id": format!("e{sent}"), "type": "tick", "payload": {"n": sent}}),
                    )
                    .await;
                sent += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        }
    });

    // v1: both repeaters run it.
    for name in ["a", "b"] {
        let wanted = v1.clone();
        eventually(&daemon, &format!("{name} on v1"), || {
            let (daemon, wanted) = (daemon.clone(), wanted.clone());
            async move { (running(&daemon, name).await == Some(wanted)).then_some(()) }
        })
        .await;
    }

    // v2 arrives: a moves, b is refused and stays on v1.
    deploy(&plugins, &v2_bytes);
    let detail = eventually(&daemon, "b's refusal by v2", || {
        let (daemon, v2) = (daemon.clone(), v2.clone());
        async move {
            let detail = plugin_detail(&daemon).await;
            let refused = detail["versions"]
                .as_array()?
                .iter()
                .find(|v| v["sha256"] == v2.as_str())?["refusals"]
                .as_array()?
                .iter()
                .any(|r| r["repeater"] == "rollout/b");
            refused.then_some(detail)
        }
    })
    .await;
    assert_eq!(detail["sha256"], v2.as_str(), "v2 is the newest: {detail}");
    assert_eq!(
        version(&detail, &v2)["repeaters"],
        json!(["rollout/a"]),
        "{detail}"
    );
    assert_eq!(
        version(&detail, &v1)["repeaters"],
        json!(["rollout/b"]),
        "{detail}"
    );
    let v2_loaded_at = millis(version(&detail, &v2)["loaded_at"].as_str().unwrap());
    let b = repeater(&daemon, "b").await;
    let running_b = &b["plugin"]["running"];
    assert_eq!(running_b["sha256"], v1.as_str(), "{b}");
    assert_eq!(running_b["refusal"]["sha256"], v2.as_str(), "{b}");
    let message = running_b["refusal"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("x-legacy-id") && message.contains("no longer supported"),
        "the refusal carries the plugin's message: {b}"
    );
    let (_, metrics) = daemon.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("repeaterd_plugin_rollouts_total")
                && l.contains("plugin=\"relay\"")
                && l.contains("result=\"refused\"")
                && !l.ends_with(" 0")),
        "the refusal is counted:\n{metrics}"
    );

    // A config change that a's running version (v2) refuses: 422 with the
    // plugin's message, nothing stored.
    let (status, body) = put_repeater(
        &daemon,
        &receiver,
        "a",
        json!({"headers": {"x-legacy-id": "a"}}),
        None,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let said = body["error"]["message"].as_str().unwrap_or_default();
    assert!(said.contains("no longer supported"), "{body}");
    let a = repeater(&daemon, "a").await;
    assert_eq!(
        a["spec"]["plugin_config"],
        json!({}),
        "nothing changed: {a}"
    );

    // Let both deliver on their versions for a while.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // Pin a to v1: a rollback.
    let pinned_at = now_millis();
    let (status, body) = put_repeater(&daemon, &receiver, "a", json!({}), Some(&v1)).await;
    assert_eq!(status, 200, "{body}");
    eventually(&daemon, "a back on v1", || {
        let (daemon, v1) = (daemon.clone(), v1.clone());
        async move { (running(&daemon, "a").await == Some(v1)).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // v3 arrives: b moves to it, pinned a stays, v2 is dropped.
    let v3_deployed_at = now_millis();
    deploy(&plugins, &v3_bytes);
    eventually(&daemon, "b on v3", || {
        let (daemon, v3) = (daemon.clone(), v3.clone());
        async move { (running(&daemon, "b").await == Some(v3)).then_some(()) }
    })
    .await;
    let a = repeater(&daemon, "a").await;
    assert_eq!(a["plugin"]["running"]["sha256"], v1.as_str(), "{a}");
    assert_eq!(a["plugin"]["running"]["pinned"], true, "{a}");
    let detail = plugin_detail(&daemon).await;
    assert_eq!(versions(&detail), vec![v1.clone(), v3.clone()], "{detail}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Unpinned, a moves to the newest version; v1 is dropped.
    let (status, body) = put_repeater(&daemon, &receiver, "a", json!({}), None).await;
    assert_eq!(status, 200, "{body}");
    eventually(&daemon, "a on v3", || {
        let (daemon, v3) = (daemon.clone(), v3.clone());
        async move { (running(&daemon, "a").await == Some(v3)).then_some(()) }
    })
    .await;
    eventually(&daemon, "v1 dropped", || {
        let (daemon, v3) = (daemon.clone(), v3.clone());
        async move { (versions(&plugin_detail(&daemon).await) == vec![v3]).then_some(()) }
    })
    .await;

    // Broken files change nothing; their error is visible.
    let empty_component = b"\0asm\x0d\0\x01\0".to_vec();
    for (broken, words) in [
        (b"this is not wasm".to_vec(), "cannot compile"),
        (empty_component, "not a repeater plugin"),
    ] {
        deploy(&plugins, &broken);
        let detail = eventually(&daemon, "the broken file's error", || {
            let daemon = daemon.clone();
            async move {
                let detail = plugin_detail(&daemon).await;
                detail["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains(words))
                    .then_some(detail)
            }
        })
        .await;
        assert_eq!(versions(&detail), vec![v3.clone()], "{detail}");
        assert_eq!(detail["sha256"], v3.as_str(), "{detail}");
        for name in ["a", "b"] {
            assert_eq!(running(&daemon, name).await, Some(v3.clone()));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Stop the load and let everything be delivered.
    stop.store(true, Ordering::Relaxed);
    let events = producer.await.expect("the producer");
    let received = receiver
        .wait_until("every record delivered", WAIT, |all| {
            all.len() >= 2 * events
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = if receiver.count() > received.len() {
        receiver.received()
    } else {
        received
    };

    // Nothing lost, nothing sent twice.
    let mut per_record: HashMap<String, usize> = HashMap::new();
    let mut per_path: HashMap<String, usize> = HashMap::new();
    for request in &received {
        *per_record
            .entry(request.record_id().expect("an idempotency key"))
            .or_default() += 1;
        *per_path.entry(request.path.clone()).or_default() += 1;
    }
    let twice: Vec<_> = per_record.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "records sent more than once: {twice:?}");
    assert_eq!(per_record.len(), 2 * events, "every record delivered once");
    assert_eq!(per_path.get("/a"), Some(&events), "{per_path:?}");
    assert_eq!(per_path.get("/b"), Some(&events), "{per_path:?}");

    // Each attempt names the version that built it.
    let attempts = all_attempts(&daemon).await;
    assert_eq!(attempts.len(), 2 * events, "one attempt per record");
    let shas_of = |name: &str| -> HashSet<&str> {
        (attempts.iter())
            .filter(|a| a.repeater == name)
            .map(|a| a.sha256.as_str())
            .collect()
    };
    assert_eq!(
        shas_of("b"),
        HashSet::from([v1.as_str(), v3.as_str()]),
        "b never ran v2, which refused its config"
    );
    assert_eq!(
        shas_of("a"),
        HashSet::from([v1.as_str(), v2.as_str(), v3.as_str()])
    );
    // a's attempts between v2's load (plus the rollout limit) and the pin
    // all ran v2; its first v2 attempt came within the limit.
    let a_between: Vec<&Attempt> = (attempts.iter())
        .filter(|at| at.repeater == "a")
        .filter(|at| at.started_at >= v2_loaded_at + ROLLOUT_LIMIT_MS && at.started_at < pinned_at)
        .collect();
    assert!(!a_between.is_empty(), "a sent while on v2");
    assert!(
        a_between.iter().all(|at| at.sha256 == v2),
        "a ran v2 from {ROLLOUT_LIMIT_MS} ms after it loaded until the pin"
    );
    let first_v2 = (attempts.iter())
        .filter(|at| at.repeater == "a" && at.sha256 == v2)
        .map(|at| at.started_at)
        .min()
        .expect("a ran v2");
    assert!(
        first_v2 - v2_loaded_at <= ROLLOUT_LIMIT_MS,
        "a's first v2 attempt came {} ms after v2 loaded",
        first_v2 - v2_loaded_at
    );
    // b ran v1 until v3 was deployed.
    assert!(
        (attempts.iter())
            .filter(|at| at.repeater == "b" && at.started_at < v3_deployed_at)
            .all(|at| at.sha256 == v1),
        "b stayed on v1 until v3"
    );
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// A changed repeater config in the file that its running version refuses
/// is not stored on SIGHUP: the repeater keeps its spec and keeps sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_config_change_in_the_file_is_not_stored() {
    let receiver = Receiver::start().await;
    let dir = TestDir::new();
    let strict = std::fs::read(plugin_component("strict-forward")).expect("strict-forward");
    deploy(&dir.path().join("plugins"), &strict);
    let repeater_with = |plugin_config: &str| {
        RepeaterConfig::with_plugin(
            DOMAIN,
            "a",
            &format!("{}/a", receiver.url()),
            "relay",
            plugin_config,
        )
    };
    let mut config = DaemonConfig::default();
    config
        .repeaters
        .push(repeater_with(r#"{ headers = { x-source = "one" } }"#));
    let daemon = Daemon::start(&dir, &config, &Backend::Sqlite).await;
    daemon
        .ingest(
            DOMAIN,
            json!({"id": "first", "type": "tick", "payload": {}}),
        )
        .await;
    receiver.wait_for(1, WAIT).await;

    config.repeaters = vec![repeater_with(r#"{ headers = { x-legacy-id = "one" } }"#)];
    daemon.reload(&config);
    let deadline = Instant::now() + WAIT;
    while !daemon.log().contains("refused by its plugin") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, a) = daemon
        .get(&format!("/v1/domains/{DOMAIN}/repeaters/a"))
        .await;
    assert_eq!(
        a["spec"]["plugin_config"],
        json!({"headers": {"x-source": "one"}}),
        "the stored spec stays: {a}"
    );
    daemon
        .ingest(
            DOMAIN,
            json!({"id": "second", "type": "tick", "payload": {}}),
        )
        .await;
    let received = receiver.wait_for(2, WAIT).await;
    assert_eq!(received[1].header("x-source").as_deref(), Some("one"));
    assert!(
        daemon.log().contains("no longer supported"),
        "the log names the plugin's reason:\n{}",
        daemon.log()
    );
}

/// `component` with every `from` replaced by `to` (same length): a real
/// component whose interface names differ, as one built against another
/// WIT package or version would.
fn renamed(component: &[u8], from: &str, to: &str) -> Vec<u8> {
    let (from, to) = (from.as_bytes(), to.as_bytes());
    assert_eq!(from.len(), to.len(), "a rename keeps every length");
    let mut bytes = component.to_vec();
    let mut replaced = 0;
    let mut at = 0;
    while let Some(found) = bytes[at..].windows(from.len()).position(|w| w == from) {
        let start = at + found;
        bytes[start..start + to.len()].copy_from_slice(to);
        at = start + to.len();
        replaced += 1;
    }
    assert!(replaced > 0, "nothing to rename");
    bytes
}

/// The sha256 of the plugin version that built the last attempt of the
/// record of event `event_id` on repeater `name`.
async fn attempt_sha(daemon: &Daemon, event_id: &str, name: &str) -> Option<String> {
    for record in list_records(daemon, DOMAIN, None).await {
        if record["event_id"] == event_id && record["repeater"] == name {
            let detail = daemon.record(DOMAIN, &record_id(&record)).await;
            return record_attempts(&detail)
                .last()
                .and_then(|a| a["plugin_sha256"].as_str().map(str::to_owned));
        }
    }
    None
}

/// Kept versions survive a restart: v2 arrives by an API upload and `a`
/// moves to it while `b`, refused, stays on v1. After a restart v1 comes
/// back from `plugins.versions_dir`: `b` keeps delivering on it with its
/// refusal shown, and `a` can still be pinned back to it. Then files built
/// against another major version or for another world change nothing, and
/// their errors say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_versions_survive_a_restart() {
    let receiver = Receiver::start().await;
    let dir = TestDir::new();
    let plugins = dir.path().join("plugins");
    let v1_bytes = std::fs::read(plugin_component("json-forward")).expect("json-forward");
    let v2_bytes = std::fs::read(plugin_component("strict-forward")).expect("strict-forward");
    let (v1, v2) = (sha(&v1_bytes), sha(&v2_bytes));
    let (v1s, v2s) = (v1.as_str(), v2.as_str());
    deploy(&plugins, &v1_bytes);
    let config = DaemonConfig::default();
    let mut daemon = Daemon::start(&dir, &config, &Backend::Sqlite).await;
    let legacy = json!({"headers": {"x-legacy-id": "7"}});
    for (name, plugin_config) in [("a", json!({})), ("b", legacy.clone())] {
        let (status, body) = put_repeater(&daemon, &receiver, name, plugin_config, None).await;
        assert_eq!(status, 201, "{body}");
    }
    daemon
        .ingest(
            DOMAIN,
            json!({"id": "before", "type": "tick", "payload": {}}),
        )
        .await;
    receiver.wait_for(2, WAIT).await;

    // v2 arrives as an upload: a moves to it, b stays on v1.
    let (status, body) = daemon
        .put_bytes("/v1/plugins/relay", "application/wasm", v2_bytes.clone())
        .await;
    assert!(
        status == 200 || status == 201,
        "upload answered {status}: {body}"
    );
    let d = &daemon;
    eventually(d, "a on v2 and b refused by it", || async move {
        let b = repeater(d, "b").await;
        (running(d, "a").await.as_deref() == Some(v2s)
            && b["plugin"]["running"]["sha256"] == v1s
            && b["plugin"]["running"]["refusal"]["sha256"] == v2s)
            .then_some(())
    })
    .await;
    assert!(
        daemon.stop().await,
        "the daemon stops cleanly:\n{}",
        daemon.log()
    );

    // Restarted on the same files: both versions are back.
    let daemon = Daemon::start(&dir, &config, &Backend::Sqlite).await;
    let detail = plugin_detail(&daemon).await;
    assert_eq!(versions(&detail), vec![v1.clone(), v2.clone()], "{detail}");
    assert_eq!(version(&detail, &v1)["source"], "kept", "{detail}");
    assert_eq!(version(&detail, &v2)["newest"], true, "{detail}");
    daemon
        .ingest(
            DOMAIN,
            json!({"id": "after", "type": "tick", "payload": {}}),
        )
        .await;
    receiver.wait_for(4, WAIT).await;
    let d = &daemon;
    let b = eventually(d, "b back on v1 with v2's refusal", || async move {
        let b = repeater(d, "b").await;
        (b["plugin"]["running"]["refusal"]["sha256"] == v2s).then_some(b)
    })
    .await;
    assert_eq!(b["plugin"]["running"]["sha256"], v1.as_str(), "{b}");
    assert_eq!(attempt_sha(d, "after", "b").await, Some(v1.clone()));
    assert_eq!(attempt_sha(d, "after", "a").await, Some(v2.clone()));

    // A pin to the version kept across the restart rolls a back.
    let (status, body) = put_repeater(&daemon, &receiver, "a", json!({}), Some(&v1)).await;
    assert_eq!(status, 200, "{body}");
    daemon
        .ingest(
            DOMAIN,
            json!({"id": "pinned", "type": "tick", "payload": {}}),
        )
        .await;
    receiver.wait_for(6, WAIT).await;
    assert_eq!(attempt_sha(d, "pinned", "a").await, Some(v1.clone()));
    assert_eq!(running(d, "a").await, Some(v1.clone()));

    // Files that are components but not for this daemon change nothing.
    let newer_major = renamed(
        &v1_bytes,
        "repeater:plugin/plugin@0.1.",
        "repeater:plugin/plugin@9.1.",
    );
    let other_world = renamed(&v1_bytes, "repeater:plugin", "acmehook:plugin");
    for (broken, words) in [
        (newer_major, "built against repeater:plugin/plugin@9.1"),
        (other_world, "not a repeater plugin"),
    ] {
        deploy(&plugins, &broken);
        let detail = eventually(d, "the broken file's error", || async move {
            let detail = plugin_detail(d).await;
            detail["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(words))
                .then_some(detail)
        })
        .await;
        assert_eq!(versions(&detail), vec![v1.clone(), v2.clone()], "{detail}");
        assert_eq!(detail["sha256"], v2.as_str(), "{detail}");
        assert_eq!(running(d, "a").await, Some(v1.clone()));
        assert_eq!(running(d, "b").await, Some(v1.clone()));
    }
    let (_, plugins_list) = daemon.get("/v1/plugins").await;
    assert!(
        plugins_list
            .to_string()
            .contains("acmehook:plugin/plugin@0.1"),
        "the list names what the file exports instead: {plugins_list}"
    );
}
