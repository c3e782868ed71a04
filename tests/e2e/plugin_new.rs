//! `repeaterd plugin new`, run as the real binary: each language's project
//! is written into a temporary directory, built to a component with its
//! one documented command, passes its own tests, and is accepted by
//! `repeaterd plugin check`.
//!
//! The Python and JavaScript projects reuse the tools the examples'
//! build scripts installed (`.venv`, `node_modules`): `.ci/run` runs those
//! scripts first, and without them these tests fail, naming the script.
//! The Rust project resolves its crates from crates.io and builds into
//! `target/plugin-new`, kept between runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::plugin_cli::repeaterd;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Runs `command` in `dir`, failing with its output when it fails.
fn run(dir: &Path, program: &str, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut command = Command::new(program);
    command.args(args).current_dir(dir);
    // The outer build's flags and wrappers describe the host crate's
    // build, not the project's.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
    ] {
        command.env_remove(var);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{program} {args:?} in {} failed ({}):\n{text}",
        dir.display(),
        output.status
    );
    text
}

/// Writes a project with `plugin new`; returns its directory.
fn new_project(parent: &Path, lang: &str, name: &str) -> PathBuf {
    let dir = parent.join(name);
    let output = repeaterd(&[
        "plugin",
        "new",
        "--lang",
        lang,
        name,
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "plugin new --lang {lang} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    dir
}

/// Links the tool install of an example into a project, so its build
/// script finds the pinned tool in place.
fn reuse_tools(project: &Path, example: &str, tools: &str) {
    let example = workspace().join("examples/plugins").join(example);
    let installed = example.join(tools);
    assert!(
        installed.is_dir(),
        "{} is missing: run {} first (.ci/run does this before the tests)",
        installed.display(),
        example.join("build.sh").display()
    );
    std::os::unix::fs::symlink(&installed, project.join(tools)).unwrap();
}

/// `plugin check` accepts the component and names the plugin interface.
fn check(component: &Path) {
    let output = repeaterd(&["plugin", "check", component.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "plugin check {}: {}",
        component.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("exports repeater:plugin/plugin@0.1.1"),
        "{stdout}"
    );
}

#[test]
fn a_rust_project_builds_passes_its_tests_and_checks() {
    let temp = tempfile::tempdir().unwrap();
    let project = new_project(temp.path(), "rust", "crm-forward");
    let target = workspace().join("target/plugin-new");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let env = [("CARGO_TARGET_DIR", target.as_path())];
    run(
        &project,
        &cargo,
        &["build", "--release", "--target", "wasm32-wasip2"],
        &env,
    );
    let tests = run(&project, &cargo, &["test"], &env);
    assert!(tests.contains("test result: ok. 3 passed"), "{tests}");
    check(&target.join("wasm32-wasip2/release/crm_forward.wasm"));
}

#[test]
fn a_python_project_builds_passes_its_tests_and_checks() {
    let temp = tempfile::tempdir().unwrap();
    let project = new_project(temp.path(), "python", "crm-forward");
    reuse_tools(&project, "python", ".venv");
    run(&project, "./build.sh", &[], &[]);
    let tests = run(&project, "python3", &["-m", "unittest"], &[]);
    assert!(tests.contains("OK"), "{tests}");
    check(&project.join("plugin.wasm"));
}

#[test]
fn a_javascript_project_builds_passes_its_tests_and_checks() {
    let temp = tempfile::tempdir().unwrap();
    let project = new_project(temp.path(), "js", "crm-forward");
    reuse_tools(&project, "javascript", "node_modules");
    run(&project, "./build.sh", &[], &[]);
    let tests = run(&project, "node", &["--test"], &[]);
    assert!(tests.contains("# fail 0"), "{tests}");
    check(&project.join("plugin.wasm"));
}

#[test]
fn a_bad_name_or_a_used_directory_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let output = repeaterd(&["plugin", "new", "--lang", "rust", "Bad_Name"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("\"Bad_Name\" is not a slug"), "{stderr}");

    std::fs::write(temp.path().join("notes.txt"), "mine").unwrap();
    let dir = temp.path().to_str().unwrap();
    let output = repeaterd(&["plugin", "new", "--lang", "js", "ok", "--dir", dir]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("already exists and is not empty"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(temp.path()).unwrap().count(), 1);
}
