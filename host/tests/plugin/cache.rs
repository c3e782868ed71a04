//! The compiled-code cache: a second load of the same component comes from
//! disk, and a damaged artefact is discarded and rebuilt, never trusted.

use std::path::PathBuf;

use crate::fixtures::{builtin, ctx, event, test_limits};
use repeaterd::plugin::types::BuildOutcome;
use repeaterd::plugin::{LoadedPlugin, PluginEngine};

fn artefacts(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

async fn load(engine: &PluginEngine) -> LoadedPlugin {
    engine
        .load("json-forward", builtin("json-forward"))
        .await
        .unwrap()
}

async fn assert_serves(plugin: &LoadedPlugin) {
    let outcome = plugin
        .build(&ctx(), &event("t", "application/json", br#"{"x":1}"#), "{}")
        .await
        .unwrap();
    assert!(matches!(outcome, BuildOutcome::Send(_)), "{outcome:?}");
}

#[tokio::test]
async fn second_load_comes_from_the_disk_cache() {
    let dir = tempfile::tempdir().unwrap();
    let engine = PluginEngine::with_cache_dir(test_limits(), dir.path()).unwrap();
    let first = load(&engine).await;
    let cache = engine.cache().unwrap();
    assert_eq!((cache.hits(), cache.misses()), (0, 1));
    let files = artefacts(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].extension().unwrap(), "cwasm");

    // A new engine with the same settings, as after a daemon restart.
    let restarted = PluginEngine::with_cache_dir(test_limits(), dir.path()).unwrap();
    let second = load(&restarted).await;
    assert_eq!(second.version(), first.version());
    let cache = restarted.cache().unwrap();
    assert_eq!((cache.hits(), cache.misses()), (1, 0));
    assert_serves(&second).await;
}

#[tokio::test]
async fn a_corrupt_artefact_is_deleted_and_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let engine = PluginEngine::with_cache_dir(test_limits(), dir.path()).unwrap();
    load(&engine).await;
    let artefact = artefacts(dir.path()).pop().unwrap();
    let good = std::fs::read(&artefact).unwrap();

    let damaged: [Vec<u8>; 3] = [
        // truncated
        good[..good.len() / 2].to_vec(),
        // one flipped bit deep in the compiled code
        {
            let mut bytes = good.clone();
            let at = bytes.len() - 100;
            bytes[at] ^= 0x40;
            bytes
        },
        // not an artefact at all
        b"garbage".to_vec(),
    ];
    for bytes in damaged {
        std::fs::write(&artefact, &bytes).unwrap();
        let engine = PluginEngine::with_cache_dir(test_limits(), dir.path()).unwrap();
        let plugin = load(&engine).await;
        let cache = engine.cache().unwrap();
        assert_eq!((cache.hits(), cache.misses()), (0, 1));
        assert_serves(&plugin).await;
        // Rewritten whole, so the next start is served from the cache again.
        assert_eq!(std::fs::read(&artefact).unwrap(), good);
        load(&engine).await;
        assert_eq!((cache.hits(), cache.misses()), (1, 1));
    }
}
