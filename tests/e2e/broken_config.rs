//! Bad config loses nothing: the real binary refuses to start on a broken
//! config with a message naming the key and line and a non-zero exit code,
//! and a broken config given to a running daemon by SIGHUP leaves the old
//! repeaters serving.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use repeaterd_tests::{
    ADMIN_TOKEN, ADMIN_TOKEN_ENV, Backend, Daemon, DaemonConfig, Receiver, RepeaterConfig, TestDir,
    binary, ingested_ids,
};

/// Runs `repeaterd serve` on `text`; returns its exit code and stderr.
async fn serve_exit(dir: &TestDir, text: &str) -> (Option<i32>, String) {
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, text).unwrap();
    let child = tokio::process::Command::new(binary::repeaterd())
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env(ADMIN_TOKEN_ENV, ADMIN_TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start repeaterd");
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("repeaterd serve with a broken config did not exit within 60 s")
        .unwrap();
    let mut said = String::from_utf8_lossy(&output.stderr).into_owned();
    said.push_str(&String::from_utf8_lossy(&output.stdout));
    (output.status.code(), said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_broken_config_naming_key_and_line() {
    let dir = TestDir::new();
    let cases = [
        // (config text, what the message must show)
        (
            "[dispatch]\nmax_inflight = \"many\"\n",
            vec!["dispatch.max_inflight", ":2:"],
        ),
        ("[dispatch]\nconcurency = 3\n", vec!["concurency", ":2:"]),
        (
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[[repeater]]\ndomain = \"Not A Slug\"\nname = \"crm\"\nurl = \"http://127.0.0.1:9/\"\nplugin = \"json-forward\"\n",
            vec!["domain", ":5:"],
        ),
        ("[dispatch\nmax_inflight = 3\n", vec![":1:"]),
        (
            "[dispatch]\nretry_schedule = [\"5 parsecs\"]\n",
            vec!["retry_schedule", ":2:"],
        ),
    ];
    for (text, wanted) in cases {
        let (code, said) = serve_exit(&dir, text).await;
        assert!(
            code.is_some_and(|code| code != 0),
            "repeaterd serve exited with {code:?} on a broken config:\n{text}\n--- it said:\n{said}"
        );
        for part in wanted {
            assert!(
                said.contains(part),
                "the refusal of\n{text}\ndoes not show {part:?}; it said:\n{said}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_keeps_the_old_repeaters_serving() {
    let receiver = Receiver::start().await;
    let dir = TestDir::new();
    let config = DaemonConfig {
        repeaters: vec![RepeaterConfig::json_forward(
            "reload",
            "sink",
            &format!("{}/reload/sink", receiver.url()),
        )],
        ..DaemonConfig::default()
    };
    let mut daemon = Daemon::start(&dir, &config, &Backend::Sqlite).await;
    daemon
        .ingest("reload", json!({"type": "t", "payload": {"n": 1}}))
        .await;
    receiver.wait_for(1, Duration::from_secs(30)).await;

    // Break the file the daemon was started from, then ask it to reload.
    let config_path = daemon.config_path().to_owned();
    let good = std::fs::read_to_string(&config_path).unwrap();
    let line = format!("max_inflight = {}", config.max_inflight);
    let broken = good.replace(&line, "max_inflight = \"oops\"");
    assert_ne!(broken, good, "the test config has no `{line}` line");
    std::fs::write(&config_path, broken).unwrap();
    daemon.signal(libc::SIGHUP);

    // The daemon says why it kept the old config...
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon.log().contains("max_inflight") {
        assert!(
            daemon.exited().is_none(),
            "repeaterd exited on a broken reload:\n{}",
            daemon.log()
        );
        assert!(
            Instant::now() < deadline,
            "no log line names the broken key after SIGHUP:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and goes on delivering with the old repeater.
    let answer = daemon
        .ingest("reload", json!({"type": "t", "payload": {"n": 2}}))
        .await;
    let id = ingested_ids(&answer).pop().expect("a record");
    daemon
        .wait_record_state("reload", &id, "succeeded", Duration::from_secs(30))
        .await;
    assert_eq!(receiver.count(), 2, "the receiver got both events");
    assert!(
        daemon.exited().is_none(),
        "repeaterd exited:\n{}",
        daemon.log()
    );
    assert!(daemon.stop().await, "repeaterd did not stop cleanly");
}
