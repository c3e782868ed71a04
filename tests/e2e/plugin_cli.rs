//! `repeaterd plugin run` and `repeaterd plugin check`, run as the real
//! binary against the real built-in and fixture components.

use std::process::{Command, Output};

use repeaterd_tests::binary;

/// A component built against WIT 0.1.0, kept beside the plugin tests.
const JSON_FORWARD_0_1_0: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../host/tests/plugin/fixtures/json-forward-0.1.0.wasm"
);

/// Runs the real binary with `args`, its logs cut to warnings.
pub(crate) fn repeaterd(args: &[&str]) -> Output {
    Command::new(binary::repeaterd())
        .args(args)
        .env("REPEATERD_LOG", "warn")
        .output()
        .expect("running repeaterd")
}

fn stdout_json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "exit {:?}, stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn event_file(dir: &tempfile::TempDir, json: &str) -> String {
    let path = dir.path().join("event.json");
    std::fs::write(&path, json).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Runs the `hostile` fixture in `mode` on `event`, with `caps` flags;
/// returns its stderr, after checking that the run failed.
fn run_hostile(event: &str, mode: &str, caps: &[&str]) -> String {
    let config = format!(r#"{{"mode":"{mode}"}}"#);
    let hostile = binary::hostile_plugin().to_str().unwrap();
    let mut args = vec![
        "plugin", "run", "--plugin", hostile, "--config", &config, "--event", event,
    ];
    args.extend_from_slice(caps);
    let output = repeaterd(&args);
    assert!(!output.status.success(), "{mode} succeeded");
    assert!(output.stdout.is_empty());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn plugin_run_prints_the_request_a_builtin_builds() {
    let dir = tempfile::tempdir().unwrap();
    let event = event_file(
        &dir,
        r#"{"type":"patient.created","payload":{"name":"Ada"},"domain":"acme","repeater":"crm","id":"evt-9","record_id":"rec-9"}"#,
    );
    let output = repeaterd(&[
        "plugin",
        "run",
        "--plugin",
        "json-forward",
        "--config",
        r#"{"envelope":true}"#,
        "--event",
        &event,
        "--attempt",
        "3",
        "--status",
        "503",
    ]);
    let json = stdout_json(&output);
    assert_eq!(json["outcome"], "send");
    let request = &json["request"];
    assert_eq!(request["method"], "POST");
    assert_eq!(request["body_encoding"], "utf-8");
    let body: serde_json::Value = serde_json::from_str(request["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["attempt"], 3);
    assert_eq!(body["id"], "evt-9");
    assert_eq!(body["data"], serde_json::json!({"name": "Ada"}));
    assert!(
        request["headers"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"name": "idempotency-key", "value": "rec-9"})),
        "{request}"
    );
    assert_eq!(json["verdict"]["verdict"], "retry");
}

#[test]
fn plugin_run_prints_a_reject_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let event = event_file(
        &dir,
        r#"{"type":"form.submitted","body":"not xml","content_type":"text/plain"}"#,
    );
    let json = stdout_json(&repeaterd(&[
        "plugin", "run", "--plugin", "form-xml", "--event", &event,
    ]));
    assert_eq!(json["outcome"], "reject");
    assert!(json["reason"].as_str().unwrap().contains("XML"), "{json}");
}

#[test]
fn plugin_run_fails_clearly_when_the_plugin_misbehaves() {
    let dir = tempfile::tempdir().unwrap();
    let event = event_file(&dir, r#"{"type":"t","payload":{}}"#);
    let stderr = run_hostile(&event, "loop", &[]);
    assert!(stderr.contains("CPU time limit"), "{stderr}");
    assert!(stderr.contains("plugins.cpu_ms"), "{stderr}");

    let output = repeaterd(&[
        "plugin",
        "run",
        "--plugin",
        "json-forward",
        "--config",
        r#"{"bogus":1}"#,
        "--event",
        &event,
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("config refused"), "{stderr}");

    let output = repeaterd(&[
        "plugin",
        "run",
        "--plugin",
        "no-such-plugin",
        "--event",
        &event,
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no built-in plugin named"), "{stderr}");
}

#[test]
fn the_caps_can_be_set_and_their_errors_name_the_config_keys() {
    let dir = tempfile::tempdir().unwrap();
    let event = event_file(&dir, r#"{"type":"t","payload":{}}"#);

    // A plugin whose starting memory is above the cap is refused at load.
    let output = repeaterd(&["plugin", "check", "json-forward", "--memory-mb", "1"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("raise plugins.memory_mb"), "{stderr}");
    let json = stdout_json(&repeaterd(&[
        "plugin",
        "run",
        "--plugin",
        "json-forward",
        "--event",
        &event,
        "--memory-mb",
        "2",
    ]));
    assert_eq!(json["outcome"], "send");

    // One that grows past it while running names the cap too.
    let stderr = run_hostile(&event, "memory-bomb", &["--memory-mb", "8"]);
    assert!(stderr.contains("limit 8388608"), "{stderr}");
    assert!(stderr.contains("plugins.memory_mb"), "{stderr}");

    // A looping plugin stops at the CPU cap given.
    let stderr = run_hostile(&event, "loop", &["--cpu-ms", "20"]);
    assert!(stderr.contains("limit of 20ms"), "{stderr}");
}

#[test]
fn plugin_check_prints_world_version_sha_and_size() {
    let hostile = binary::hostile_plugin().to_str().unwrap();
    let bytes = std::fs::read(hostile).unwrap();
    let output = repeaterd(&["plugin", "check", hostile]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("repeater:plugin/plugin@0.1.1"), "{stdout}");
    assert!(stdout.contains("package version: 0.1.1"), "{stdout}");
    assert!(
        stdout.contains("replies judged by: the plugin's own classify"),
        "{stdout}"
    );
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    assert!(stdout.contains(&format!("sha256: {sha}")), "{stdout}");
    assert!(
        stdout.contains(&format!("size: {} bytes", bytes.len())),
        "{stdout}"
    );
}

#[test]
fn plugin_check_refuses_a_file_that_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.wasm");
    std::fs::write(&path, b"definitely not wasm").unwrap();
    let output = repeaterd(&["plugin", "check", path.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("plugin broken: cannot compile component"),
        "{stderr}"
    );
}

#[test]
fn plugin_check_names_the_version_a_plugin_was_built_for_and_its_reply_rules() {
    let output = repeaterd(&["plugin", "check", "json-forward"]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("package version: 0.1.1"), "{stdout}");
    assert!(
        stdout.contains("replies judged by: default rules, applied by the host"),
        "{stdout}"
    );

    // A plugin built against 0.1.0, before the `classification` interface.
    let output = repeaterd(&["plugin", "check", JSON_FORWARD_0_1_0]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("exports repeater:plugin/plugin@0.1.0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("package version: 0.1.0 (host speaks repeater:plugin/plugin@0.1.1)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("replies judged by: the plugin's own classify"),
        "{stdout}"
    );
}

#[test]
fn the_binary_ships_the_builtin_plugins_and_never_the_hostile_fixture() {
    // Run where no file named `hostile` exists, so the name can only mean a
    // built-in plugin.
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(binary::repeaterd())
        .args(["plugin", "check", "hostile"])
        .current_dir(dir.path())
        .env("REPEATERD_LOG", "warn")
        .output()
        .expect("running repeaterd");
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "no built-in plugin named \"hostile\" and no such file \
             (built-ins: json-forward, form-xml, fhir-r4)"
        ),
        "{stderr}"
    );
}
