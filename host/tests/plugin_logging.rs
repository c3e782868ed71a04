//! A plugin's stderr reaches the daemon's log, labelled with the repeater
//! and the plugin. This test installs a tracing subscriber, so it runs in a
//! binary of its own: tracing caches per call site whether anything listens,
//! and another test hitting the same call site on a thread with no
//! subscriber could race it into caching "nobody" (seen as a rare empty log
//! when it shared `plugin_sandbox` with tests that trap the same plugin).

#[path = "plugin/fixtures/mod.rs"]
mod plugin_fixtures;

use plugin_fixtures::{build_hostile, engine, hostile};

/// Collects formatted tracing output in memory.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn plugin_stderr_reaches_tracing_with_the_repeater_name() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // Output is flushed on the calling thread, which this guard covers.
    let _guard = tracing::subscriber::set_default(subscriber);
    let engine = engine();
    let plugin = engine.load("hostile", hostile()).await.unwrap();
    build_hostile(&plugin, "trap").await.unwrap_err();
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|line| line.contains("trapping on purpose"))
        .unwrap_or_else(|| panic!("the panic message was not logged: {text}"));
    assert!(line.contains("repeater=\"acme/crm\""), "{line}");
    assert!(line.contains("plugin=\"hostile\""), "{line}");
    assert!(line.contains("stderr"), "{line}");
}
