//! The plugin registry: built-ins, a watched plugin directory with hot
//! reload, uploads, version pins and swap notifications.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::fixtures::{builtin, ctx, engine, event, strict_forward};
use repeaterd::plugin::types::BuildOutcome;
use repeaterd::plugin::{PluginError, PluginRegistry, PluginSource, PluginSwapped, RepeaterKey};
use sha2::{Digest, Sha256};

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Waits for the swap of `name` to `version`, skipping other swaps.
async fn wait_for_swap(
    swaps: &mut tokio::sync::broadcast::Receiver<PluginSwapped>,
    name: &str,
    version: &str,
) {
    let wanted = PluginSwapped {
        name: name.to_owned(),
        version: version.to_owned(),
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if swaps.recv().await.expect("swap channel") == wanted {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no swap of {name} to {version}"));
}

/// Polls until `check` holds, for at most a minute.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..600 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_swapped_in_while_calls_keep_succeeding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.wasm");
    let json_forward = builtin("json-forward");
    let form_xml = builtin("form-xml");
    write(&path, &json_forward);

    let registry = PluginRegistry::new(engine(), Some(dir.path().to_owned()));
    assert!(registry.load_dir().await.is_empty());
    let first = registry
        .get("relay")
        .expect("relay loaded from the directory");
    assert_eq!(first.version(), sha(&json_forward));
    assert_eq!(
        registry.status("relay").unwrap().source,
        Some(PluginSource::File(path.clone()))
    );
    let _watch = registry.watch().unwrap();
    let mut swaps = registry.subscribe();

    // A JSON payload: json-forward sends it, form-xml rejects it as not XML,
    // so each outcome tells which version served the call.
    let stop = Arc::new(AtomicBool::new(false));
    let caller = tokio::spawn({
        let registry = registry.clone();
        let stop = stop.clone();
        async move {
            let event = event("order.created", "application/json", br#"{"order":42}"#);
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let plugin = registry.get("relay").expect("relay stays loaded");
                let outcome = plugin.build(&ctx(), &event, "{}").await;
                outcomes.push((plugin.version().to_owned(), outcome));
                tokio::task::yield_now().await;
            }
            outcomes
        }
    });

    tokio::time::sleep(Duration::from_millis(300)).await;
    // Overwrite in place, as a person copying a file would: the watcher may
    // see a half-written file first, which must not replace the working one.
    write(&path, &form_xml);
    wait_for_swap(&mut swaps, "relay", &sha(&form_xml)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let outcomes = caller.await.unwrap();

    let old = sha(&json_forward);
    let new = sha(&form_xml);
    let mut seen_old = 0;
    let mut seen_new = 0;
    for (version, outcome) in &outcomes {
        let outcome = outcome
            .as_ref()
            .unwrap_or_else(|e| panic!("a call failed: {e}"));
        if *version == old {
            seen_old += 1;
            assert!(matches!(outcome, BuildOutcome::Send(_)), "{outcome:?}");
        } else {
            assert_eq!(*version, new);
            seen_new += 1;
            assert!(matches!(outcome, BuildOutcome::Reject(_)), "{outcome:?}");
        }
    }
    assert!(
        seen_old > 0 && seen_new > 0,
        "old {seen_old}, new {seen_new}"
    );
    // Once the new version is seen, no later call goes back to the old one.
    let first_new = outcomes.iter().position(|(v, _)| *v == new).unwrap();
    assert!(outcomes[first_new..].iter().all(|(v, _)| *v == new));
    let status = registry.status("relay").unwrap();
    assert_eq!(status.version.as_deref(), Some(new.as_str()));
    assert_eq!(status.last_error, None);

    // A broken file never replaces the working version; the error shows.
    write(&path, b"this is not a wasm component at all");
    eventually("the corrupt file's error in the status", || {
        registry.status("relay").unwrap().last_error.is_some()
    })
    .await;
    let status = registry.status("relay").unwrap();
    assert_eq!(status.version.as_deref(), Some(new.as_str()));
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("cannot compile"),
        "{status:?}"
    );
    let still = registry.get("relay").unwrap();
    assert_eq!(still.version(), new);
    let outcome = still
        .build(&ctx(), &event("t", "application/xml", b"<ok/>"), "{}")
        .await
        .unwrap();
    assert!(matches!(outcome, BuildOutcome::Send(_)), "{outcome:?}");
}

#[tokio::test]
async fn builtins_load_and_report_their_source() {
    let registry = PluginRegistry::new(engine(), None);
    registry
        .load_builtins(repeaterd::plugin::BUILTIN_PLUGINS)
        .await
        .unwrap();
    for name in repeaterd::plugin::builtin_names() {
        let status = registry.status(name).unwrap();
        assert_eq!(status.source, Some(PluginSource::Builtin));
        assert_eq!(status.version, Some(sha(&builtin(name))));
        assert!(status.loaded_at.is_some());
    }
    assert_eq!(
        registry.names().len(),
        repeaterd::plugin::builtin_names().len()
    );
    assert!(registry.get("no-such-plugin").is_none());
    assert_eq!(registry.status("no-such-plugin"), None);
}

#[tokio::test]
async fn an_upload_is_checked_before_it_is_written_and_swapped_in() {
    let dir = tempfile::tempdir().unwrap();
    let registry = PluginRegistry::new(engine(), Some(dir.path().to_owned()));
    let mut swaps = registry.subscribe();
    let json_forward = builtin("json-forward");

    let plugin = registry
        .install("uploaded", json_forward.to_vec())
        .await
        .unwrap();
    assert_eq!(plugin.version(), sha(&json_forward));
    let on_disk = dir.path().join("uploaded.wasm");
    assert_eq!(std::fs::read(&on_disk).unwrap(), json_forward.to_vec());
    assert_eq!(
        swaps.recv().await.unwrap(),
        PluginSwapped {
            name: "uploaded".to_owned(),
            version: sha(&json_forward)
        }
    );
    assert_eq!(
        registry.status("uploaded").unwrap().source,
        Some(PluginSource::Upload)
    );

    // A broken upload is refused and leaves both the loaded version and the file alone.
    let error = registry
        .install("uploaded", b"\0asm\x0d\0\x01\0garbage".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(error, PluginError::Compile { .. }), "{error}");
    assert_eq!(
        registry.get("uploaded").unwrap().version(),
        sha(&json_forward)
    );
    assert_eq!(std::fs::read(&on_disk).unwrap(), json_forward.to_vec());
    assert!(registry.status("uploaded").unwrap().last_error.is_some());

    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["uploaded.wasm"]);

    let error = registry
        .install("../escape", json_forward.to_vec())
        .await
        .unwrap_err();
    assert!(matches!(error, PluginError::InvalidName { .. }), "{error}");
}

#[tokio::test]
async fn a_pinned_version_is_served_only_if_it_is_the_loaded_one() {
    let registry = PluginRegistry::new(engine(), None);
    registry
        .load_builtins(repeaterd::plugin::BUILTIN_PLUGINS)
        .await
        .unwrap();
    let version = sha(&builtin("json-forward"));
    let pinned = registry
        .get_pinned("json-forward", &version.to_uppercase())
        .unwrap();
    assert_eq!(pinned.version(), version);
    let error = registry
        .get_pinned("json-forward", &"0".repeat(64))
        .unwrap_err();
    assert!(matches!(error, PluginError::PinMismatch { .. }), "{error}");
    let error = registry.get_pinned("absent", &version).unwrap_err();
    assert!(matches!(error, PluginError::NotLoaded { .. }), "{error}");
}

#[tokio::test]
async fn a_file_that_is_not_a_plugin_is_reported_by_load_dir() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("broken.wasm"), b"garbage");
    write(&dir.path().join("good.wasm"), &builtin("form-xml"));
    write(&dir.path().join("notes.txt"), b"ignored");
    let registry = PluginRegistry::new(engine(), Some(dir.path().to_owned()));
    let errors = registry.load_dir().await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].plugin(), Some("broken"));
    assert!(registry.get("good").is_some());
    assert!(registry.get("broken").is_none());
    let status = registry.status("broken").unwrap();
    assert_eq!(status.version, None);
    assert!(status.last_error.unwrap().contains("broken"));
    assert_eq!(registry.names(), ["broken", "good"]);
}

/// Rollout per repeater, in process: a new version is offered to each
/// repeater through its `validate-config`; one refused stays on its version
/// with the refusal kept; a pin holds a version; versions nobody runs are
/// dropped while a call holding one finishes on it.
#[tokio::test]
async fn a_new_version_rolls_out_repeater_by_repeater() {
    let registry = PluginRegistry::new(engine(), None);
    let mut rollouts = registry.subscribe_rollouts();
    let v1_bytes = builtin("json-forward");
    let v2_bytes = strict_forward();
    let (v1, v2) = (sha(&v1_bytes), sha(&v2_bytes));
    registry.install("relay", v1_bytes.to_vec()).await.unwrap();

    let a = RepeaterKey::new("acme", "a");
    let b = RepeaterKey::new("acme", "b");
    let (a_config, b_config) = ("{}", r#"{"headers": {"x-legacy-id": "b"}}"#);
    let resolve = |key: RepeaterKey, config: &'static str, pin: Option<String>| {
        let registry = registry.clone();
        async move {
            registry
                .resolve(&key, "relay", pin.as_deref(), config)
                .await
                .map(|plugin| plugin.version().to_owned())
        }
    };
    assert_eq!(resolve(a.clone(), a_config, None).await.unwrap(), v1);
    let held_by_b = registry.resolve(&b, "relay", None, b_config).await.unwrap();
    assert_eq!(held_by_b.version(), v1);

    registry.install("relay", v2_bytes.to_vec()).await.unwrap();
    let mut events = Vec::new();
    while let Ok(event) = rollouts.try_recv() {
        events.push(event);
    }
    events.sort_by(|x, y| x.repeater.cmp(&y.repeater));
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        (events[0].repeater.clone(), events[0].refused.clone()),
        (a.clone(), None)
    );
    assert_eq!(events[1].repeater, b);
    assert!(
        events[1]
            .refused
            .as_deref()
            .is_some_and(|m| m.contains("x-legacy-id")),
        "{events:?}"
    );

    assert_eq!(resolve(a.clone(), a_config, None).await.unwrap(), v2);
    assert_eq!(resolve(b.clone(), b_config, None).await.unwrap(), v1);
    let b_version = registry.resolved(&b).unwrap();
    let refusal = b_version.refusal.expect("b's refusal is kept");
    assert_eq!(refusal.version, v2);
    assert!(
        refusal.message.contains("no longer supported"),
        "{refusal:?}"
    );

    let versions = registry.versions("relay");
    assert_eq!(versions.len(), 2);
    assert_eq!(
        (versions[0].version.as_str(), versions[0].newest),
        (v1.as_str(), false)
    );
    assert_eq!(versions[0].repeaters, vec![b.clone()]);
    assert_eq!(
        (versions[1].version.as_str(), versions[1].newest),
        (v2.as_str(), true)
    );
    assert_eq!(versions[1].repeaters, vec![a.clone()]);
    assert_eq!(versions[1].refusals.len(), 1);

    // A config change is checked against the version the repeater runs.
    let error = registry
        .check_config(&a, "relay", None, r#"{"headers": {"x-legacy-id": "a"}}"#)
        .await
        .unwrap_err();
    assert!(matches!(error, PluginError::Config { .. }), "{error}");
    // A new repeater takes the newest version that accepts its config.
    let c = RepeaterKey::new("acme", "c");
    assert_eq!(
        registry
            .check_config(&c, "relay", None, b_config)
            .await
            .unwrap(),
        v1
    );

    // A pin rolls a back; an unknown pin names the versions loaded.
    assert_eq!(
        resolve(a.clone(), a_config, Some(v1.clone()))
            .await
            .unwrap(),
        v1
    );
    let error = resolve(a.clone(), a_config, Some("0".repeat(64)))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, PluginError::PinMismatch { loaded, .. } if loaded.contains(&v1)),
        "{error}"
    );
    assert_eq!(
        resolve(a.clone(), a_config, Some(v1.clone()))
            .await
            .unwrap(),
        v1
    );

    // Forgetting b leaves v1 to a's pin; unpinning a drops v1 from the
    // registry while the call b still holds keeps running on it.
    registry.forget(&b);
    assert_eq!(registry.versions("relay").len(), 2);
    assert_eq!(resolve(a.clone(), a_config, None).await.unwrap(), v2);
    let kept: Vec<_> = registry
        .versions("relay")
        .into_iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(kept, vec![v2.clone()]);
    let outcome = held_by_b
        .build(&ctx(), &event("t", "application/json", b"{}"), b_config)
        .await
        .unwrap();
    assert!(matches!(outcome, BuildOutcome::Send(_)), "{outcome:?}");
}

/// The versions a registry keeps come back in a new registry on the same
/// `versions_dir` (a restart), and stay until the repeaters have resolved:
/// then only the ones some repeater runs, and the newest, are kept, on disk
/// as in memory.
#[tokio::test]
async fn kept_versions_come_back_after_a_restart_until_nobody_runs_them() {
    let dir = tempfile::tempdir().unwrap();
    let (plugins, kept) = (dir.path().join("plugins"), dir.path().join("versions"));
    std::fs::create_dir(&plugins).unwrap();
    let v1_bytes = builtin("json-forward");
    let v2_bytes = strict_forward();
    let (v1, v2) = (sha(&v1_bytes), sha(&v2_bytes));
    let (a, b) = (RepeaterKey::new("acme", "a"), RepeaterKey::new("acme", "b"));
    let (a_config, b_config) = ("{}", r#"{"headers": {"x-legacy-id": "b"}}"#);

    let first =
        PluginRegistry::keeping_versions(engine(), Some(plugins.clone()), Some(kept.clone()));
    first.install("relay", v1_bytes.to_vec()).await.unwrap();
    for (key, config) in [(&a, a_config), (&b, b_config)] {
        first.resolve(key, "relay", None, config).await.unwrap();
    }
    first.install("relay", v2_bytes.to_vec()).await.unwrap();
    let on_disk = |expected: &[&String]| {
        let mut files: Vec<String> = std::fs::read_dir(kept.join("relay"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let mut wanted: Vec<String> = expected.iter().map(|s| format!("{s}.wasm")).collect();
        wanted.sort();
        assert_eq!(files, wanted);
    };
    on_disk(&[&v1, &v2]);
    drop(first);

    // Restarted: v1 comes back from the kept files, the file in the plugin
    // directory (v2, written by the upload) is the newest.
    let second =
        PluginRegistry::keeping_versions(engine(), Some(plugins.clone()), Some(kept.clone()));
    assert_eq!(second.load_kept().await, 2);
    assert!(second.load_dir().await.is_empty());
    let versions = second.versions("relay");
    assert_eq!(
        versions
            .iter()
            .map(|v| (v.version.clone(), v.source.clone(), v.newest))
            .collect::<Vec<_>>(),
        vec![
            (v1.clone(), PluginSource::Kept, false),
            (
                v2.clone(),
                PluginSource::File(plugins.join("relay.wasm")),
                true
            ),
        ]
    );
    // Before settling, resolving one repeater drops nothing.
    assert_eq!(
        second
            .resolve(&a, "relay", None, a_config)
            .await
            .unwrap()
            .version(),
        v2
    );
    assert_eq!(second.versions("relay").len(), 2);
    second
        .settle(vec![
            (a.clone(), "relay".into(), None, a_config.into()),
            (b.clone(), "relay".into(), None, b_config.into()),
        ])
        .await;
    let b_runs = second.resolved(&b).unwrap();
    assert_eq!(b_runs.version, v1);
    assert_eq!(b_runs.refusal.map(|r| r.version), Some(v2.clone()));
    on_disk(&[&v1, &v2]);

    // Once b is gone, v1 is dropped from memory and from disk.
    second.forget(&b);
    assert_eq!(second.versions("relay").len(), 1);
    on_disk(&[&v2]);
    drop(second);

    // A restart with no repeater keeps only the newest after settling.
    let third = PluginRegistry::keeping_versions(engine(), Some(plugins), Some(kept.clone()));
    assert_eq!(third.load_kept().await, 1);
    third.load_dir().await;
    third.settle(Vec::new()).await;
    assert_eq!(third.versions("relay").len(), 1);
    on_disk(&[&v2]);
}
