//! Plugin load: what loading a plugin costs the daemon, per language. For
//! the Rust `json-forward` component and the Python and JavaScript example
//! forwarders (`examples/plugins/`, built by their `build.sh`), a daemon
//! starts with the component alone in `plugins.dir`: first with an empty
//! compiled-code cache (the component is compiled, in a child process),
//! then again on that cache. Each time: seconds until ready, and after a
//! quiet spell the resident memory (VmRSS) and its peak (VmHWM).
//!
//! The compiler's memory must end with the compile: the daemon's idle RSS
//! after a cold start may exceed a warm start's by at most
//! [`COLD_EXTRA_MB`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use super::{Ctx, Fields, prepare, put};
use crate::database::Backend;

/// How much more a cold start may leave resident than a warm one, MiB.
const COLD_EXTRA_MB: f64 = 32.0;
/// How long the daemon idles before its memory is read.
const QUIET: Duration = Duration::from_secs(12);

/// The components measured: (language, its bytes or why they are missing).
fn components() -> Vec<(&'static str, Result<Vec<u8>, String>)> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins");
    let read = |dir: &str| -> Result<Vec<u8>, String> {
        let path: PathBuf = examples.join(dir).join("plugin.wasm");
        std::fs::read(&path).map_err(|err| {
            format!(
                "{}: {err}; build it with examples/plugins/{dir}/build.sh",
                path.display()
            )
        })
    };
    vec![
        (
            "rust",
            repeaterd::plugin::builtin("json-forward")
                .map(<[u8]>::to_vec)
                .ok_or_else(|| "the daemon has no json-forward built-in".to_owned()),
        ),
        ("python", read("python")),
        ("javascript", read("javascript")),
    ]
}

/// The plugin-load scenario.
pub async fn run(ctx: &Ctx, backend: Backend, fields: &mut Fields) -> Result<(), String> {
    fields.insert(
        "target".into(),
        Value::from(format!(
            "idle RSS after a cold start <= warm idle RSS + {COLD_EXTRA_MB} MiB, each language"
        )),
    );
    let mut met = true;
    let mut peak = 0f64;
    let mut languages = Map::new();
    for (language, component) in components() {
        let component = component?;
        let (dir, db) = prepare(ctx, &format!("plugin-load-{language}"), backend)?;
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins)
            .and_then(|()| std::fs::write(plugins.join("forwarder.wasm"), &component))
            .map_err(|err| format!("cannot stage the {language} component: {err}"))?;
        let mut config = ctx.daemon_config(&dir.path().join("state"), Vec::new())?;
        config.plugins_dir = Some(plugins);
        let mut figures = Map::new();
        figures.insert("component_bytes".into(), Value::from(component.len()));
        let mut idle = Vec::new();
        for start in ["cold", "warm"] {
            let (daemon, ready) = ctx.start_daemon(&config, &db, dir.path()).await?;
            let listed = daemon.api().get_json("/v1/plugins/forwarder").await?;
            if listed["sha256"].is_null() {
                return Err(format!(
                    "the {language} component did not load: {listed}; log: {}",
                    daemon.log_tail()
                ));
            }
            tokio::time::sleep(QUIET).await;
            let (rss, hwm) = daemon.memory_mb();
            daemon.stop().await?;
            peak = peak.max(hwm);
            idle.push(rss);
            let round = |v: f64| Value::from(crate::stats::round3(v));
            figures.insert(format!("{start}_ready_s"), round(ready.as_secs_f64()));
            figures.insert(format!("{start}_idle_rss_mb"), round(rss));
            figures.insert(format!("{start}_peak_rss_mb"), round(hwm));
        }
        met &= idle[0] <= idle[1] + COLD_EXTRA_MB;
        languages.insert(language.into(), Value::Object(figures));
    }
    fields.insert("languages".into(), Value::Object(languages));
    put(fields, "peak_rss_mb", peak);
    fields.insert("met".into(), Value::from(met));
    Ok(())
}
