//! The `repeaterd` binary under test, and the `hostile` test plugin beside
//! it, as cargo builds them.
//!
//! Cargo tells only the `repeaterd` package's own tests where its binary is
//! (`CARGO_BIN_EXE_repeaterd`), so the first test of a process that needs it
//! asks cargo: `cargo build --workspace --bin repeaterd --test e2e`, into the
//! target directory and profile this test executable was built in. Naming a
//! test target makes cargo resolve features as `cargo test --workspace`
//! does, so after that command the build is fresh and answers at once;
//! after `cargo test -p repeaterd-tests` alone, or from a clean target
//! directory, it builds what is missing.
//!
//! The `hostile` plugin misbehaves on purpose and never ships in the binary:
//! `host/build.rs` compiles it with the built-in plugins and stages it as
//! `hostile.wasm` in the package's `OUT_DIR`, which the same build reports.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// The test target named in the build: any test target would do; this one
/// is built already whenever these tests run.
const TEST_TARGET: &str = "e2e";

/// What the build produced.
struct Built {
    repeaterd: PathBuf,
    hostile: PathBuf,
    plugin_cache: PathBuf,
    /// The build script's `OUT_DIR`, where every plugin is staged.
    components: PathBuf,
}

/// Where this test executable lives in cargo's layout:
/// `<target dir>/[<triple>/]<profile dir>/deps/<test>-<hash>`.
struct Layout {
    target_dir: PathBuf,
    triple: Option<String>,
    profile_dir: String,
}

impl Layout {
    fn of_this_executable() -> Option<Layout> {
        let exe = std::env::current_exe().ok()?;
        let deps = exe.parent()?;
        if deps.file_name()? != "deps" {
            return None;
        }
        let profile = deps.parent()?;
        let profile_dir = profile.file_name()?.to_str()?.to_owned();
        let above = profile.parent()?;
        // Cargo marks the root of a target directory with CACHEDIR.TAG;
        // anything else between it and the profile is a target triple.
        if above.join("CACHEDIR.TAG").exists() {
            return Some(Layout {
                target_dir: above.to_owned(),
                triple: None,
                profile_dir,
            });
        }
        Some(Layout {
            target_dir: above.parent()?.to_owned(),
            triple: Some(above.file_name()?.to_str()?.to_owned()),
            profile_dir,
        })
    }

    /// The cargo arguments that build into this layout.
    fn cargo_args(&self) -> Vec<String> {
        let mut args = vec![
            "--target-dir".to_owned(),
            self.target_dir.display().to_string(),
        ];
        if let Some(triple) = &self.triple {
            args.extend(["--target".to_owned(), triple.clone()]);
        }
        match self.profile_dir.as_str() {
            "debug" => {}
            "release" => args.push("--release".to_owned()),
            custom => args.extend(["--profile".to_owned(), custom.to_owned()]),
        }
        args
    }
}

/// The `repeaterd` executable, built (or found fresh) once per process.
pub fn repeaterd() -> &'static Path {
    &built().repeaterd
}

/// The `hostile` test plugin component (`plugins/hostile`).
pub fn hostile_plugin() -> &'static Path {
    &built().hostile
}

/// A plugin component as `host/build.rs` staged it: a built-in
/// (`json-forward`, ...) or a test fixture (`hostile`, `strict-forward`).
pub fn plugin_component(name: &str) -> PathBuf {
    let file = format!("{}.wasm", name.replace('-', "_"));
    let path = built().components.join(file);
    assert!(
        path.is_file(),
        "host/build.rs staged no plugin {name} at {}",
        path.display()
    );
    path
}

/// A compiled-plugin cache shared by every test daemon: loading a cached
/// plugin takes milliseconds, compiling it much longer.
pub fn plugin_cache_dir() -> &'static Path {
    &built().plugin_cache
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(build)
}

fn build() -> Built {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace root");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let layout = Layout::of_this_executable();
    let mut command = Command::new(&cargo);
    command
        .current_dir(workspace)
        .args([
            "build",
            "--workspace",
            "--bin",
            "repeaterd",
            "--test",
            TEST_TARGET,
        ])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .args([
            "--message-format",
            "json-render-diagnostics",
            "--color",
            "never",
        ]);
    if let Some(layout) = &layout {
        command.args(layout.cargo_args());
    }
    let shown = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {shown}: {err}"));
    if !output.status.success() {
        panic!(
            "building repeaterd for the tests failed ({}): {shown}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut repeaterd = None;
    let mut out_dir = None;
    for line in output.stdout.split(|&byte| byte == b'\n') {
        let Ok(message) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        match message["reason"].as_str() {
            Some("compiler-artifact")
                if message["target"]["name"] == "repeaterd"
                    && message["profile"]["test"] == false =>
            {
                if let Some(path) = message["executable"].as_str() {
                    repeaterd = Some(PathBuf::from(path));
                }
            }
            Some("build-script-executed") if is_repeaterd(&message["package_id"]) => {
                out_dir = message["out_dir"].as_str().map(PathBuf::from);
            }
            _ => {}
        }
    }
    let repeaterd = repeaterd.unwrap_or_else(|| panic!("{shown} reported no repeaterd executable"));
    let out_dir =
        out_dir.unwrap_or_else(|| panic!("{shown} reported no build script output of repeaterd"));
    let hostile = out_dir.join("hostile.wasm");
    let components = out_dir.clone();
    assert!(
        hostile.is_file(),
        "host/build.rs did not stage the hostile plugin at {}",
        hostile.display()
    );
    let plugin_cache = match &layout {
        Some(layout) => layout.target_dir.join("tmp").join("plugin-cache"),
        None => std::env::temp_dir().join("repeaterd-tests-plugin-cache"),
    };
    Built {
        repeaterd,
        hostile,
        plugin_cache,
        components,
    }
}

/// Whether a cargo package id names the `repeaterd` package: either
/// `path+file:///…/host#repeaterd@0.1.0` or `repeaterd 0.1.0 (path+file://…)`.
fn is_repeaterd(id: &Value) -> bool {
    id.as_str()
        .is_some_and(|id| id.contains("#repeaterd@") || id.starts_with("repeaterd "))
}
