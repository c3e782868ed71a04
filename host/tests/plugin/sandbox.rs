//! The sandbox holds against the `hostile` fixture plugin: each way of
//! misbehaving ends as the error that names it, and the same engine keeps
//! serving other plugins afterwards.

use std::time::{Duration, Instant};

use crate::fixtures::{build_hostile, ctx, engine, event, hostile, load_builtin, test_limits};
use repeaterd::plugin::types::BuildOutcome;
use repeaterd::plugin::{PluginEngine, PluginError, PluginLimits};

/// After a hostile call, a json-forward call on the same engine still works.
async fn engine_still_serves(engine: &PluginEngine) {
    let plugin = load_builtin(engine, "json-forward").await;
    let outcome = plugin
        .build(
            &ctx(),
            &event("order.created", "application/json", br#"{"ok":true}"#),
            "{}",
        )
        .await
        .expect("json-forward after a hostile call");
    match outcome {
        BuildOutcome::Send(request) => assert_eq!(request.body, br#"{"ok":true}"#),
        other => panic!("expected send, got {other:?}"),
    }
}

#[tokio::test]
async fn endless_loop_is_stopped_by_the_cpu_deadline() {
    let engine = engine();
    let plugin = engine.load("hostile", hostile()).await.unwrap();
    let started = Instant::now();
    let error = build_hostile(&plugin, "loop").await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(error, PluginError::Timeout { call: "build", limit, .. } if limit == Duration::from_millis(100)),
        "{error}"
    );
    assert!(error.to_string().contains("CPU time limit"), "{error}");
    // The deadline stops it promptly: well under a second, not never.
    assert!(took < Duration::from_secs(2), "took {took:?}");
    engine_still_serves(&engine).await;
}

#[tokio::test]
async fn memory_bomb_is_stopped_by_the_memory_cap() {
    // Touching 64 MiB takes tens of milliseconds, more on a loaded machine:
    // with the default 100 ms CPU cap the deadline sometimes fired first.
    // A generous CPU cap leaves the memory cap as the only limit in play.
    let engine = PluginEngine::new(PluginLimits {
        cpu_time: Duration::from_secs(5),
        ..test_limits()
    })
    .expect("plugin engine");
    let plugin = engine.load("hostile", hostile()).await.unwrap();
    let error = build_hostile(&plugin, "memory-bomb").await.unwrap_err();
    match &error {
        PluginError::MemoryLimit {
            requested, limit, ..
        } => {
            assert_eq!(*limit, 64 << 20);
            assert!(*requested > *limit, "{error}");
        }
        other => panic!("expected MemoryLimit, got {other}"),
    }
    engine_still_serves(&engine).await;
}

#[tokio::test]
async fn panic_in_the_plugin_is_a_trap() {
    let engine = engine();
    let plugin = engine.load("hostile", hostile()).await.unwrap();
    let error = build_hostile(&plugin, "trap").await.unwrap_err();
    match &error {
        PluginError::Trap { call, message, .. } => {
            assert_eq!(*call, "build");
            assert!(message.contains("unreachable"), "{message}");
        }
        other => panic!("expected Trap, got {other}"),
    }
    engine_still_serves(&engine).await;
}

#[tokio::test]
async fn oversized_body_is_refused_by_the_body_limit() {
    // The fixture builds a 64 MiB body, so it needs more than the default
    // 64 MiB of memory to get as far as returning it.
    let engine = PluginEngine::new(PluginLimits {
        memory_bytes: 256 << 20,
        ..test_limits()
    })
    .unwrap();
    let plugin = engine.load("hostile", hostile()).await.unwrap();
    let error = build_hostile(&plugin, "oversized-body").await.unwrap_err();
    match &error {
        PluginError::OutputTooLarge {
            what, size, limit, ..
        } => {
            assert_eq!(*what, "request body");
            assert_eq!(*size, 64 << 20);
            assert_eq!(*limit, 10 << 20);
        }
        other => panic!("expected OutputTooLarge, got {other}"),
    }
    engine_still_serves(&engine).await;
}

#[tokio::test]
async fn oversized_body_under_the_default_memory_cap_is_a_memory_limit() {
    let engine = engine();
    let plugin = engine.load("hostile", hostile()).await.unwrap();
    let error = build_hostile(&plugin, "oversized-body").await.unwrap_err();
    assert!(matches!(error, PluginError::MemoryLimit { .. }), "{error}");
    engine_still_serves(&engine).await;
}

#[tokio::test]
async fn thousands_of_headers_are_refused_by_the_header_limit() {
    let engine = engine();
    let plugin = engine.load("hostile", hostile()).await.unwrap();
    let error = build_hostile(&plugin, "oversized-headers")
        .await
        .unwrap_err();
    match &error {
        PluginError::OutputTooLarge {
            what, size, limit, ..
        } => {
            assert_eq!(*what, "header count");
            assert_eq!(*size, 10_000);
            assert_eq!(*limit, 64);
        }
        other => panic!("expected OutputTooLarge, got {other}"),
    }
    engine_still_serves(&engine).await;
}

#[tokio::test]
async fn well_behaved_mode_of_the_hostile_plugin_sends() {
    let engine = engine();
    let plugin = engine.load("hostile", hostile()).await.unwrap();
    match build_hostile(&plugin, "ok").await.unwrap() {
        BuildOutcome::Send(request) => assert_eq!(request.body, br#"{"n":1}"#),
        other => panic!("expected send, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_mode_is_a_config_error() {
    let engine = engine();
    let plugin = engine.load("hostile", hostile()).await.unwrap();
    let error = plugin
        .validate_config(&ctx(), r#"{"mode":"nice"}"#)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, PluginError::Config { message, .. } if message.contains("nice")),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_plugin_does_not_block_other_calls() {
    let engine = engine();
    let hostile = std::sync::Arc::new(engine.load("hostile", hostile()).await.unwrap());
    let forward = load_builtin(&engine, "json-forward").await;
    // Two looping calls occupy both worker threads' worth of guest time;
    // because calls yield every epoch tick, other calls still complete.
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let hostile = hostile.clone();
            tokio::spawn(async move { build_hostile(&hostile, "loop").await })
        })
        .collect();
    for _ in 0..20 {
        forward
            .build(&ctx(), &event("t", "application/json", b"{}"), "{}")
            .await
            .unwrap();
    }
    for handle in loops {
        let error = handle.await.unwrap().unwrap_err();
        assert!(matches!(error, PluginError::Timeout { .. }), "{error}");
    }
}

#[tokio::test]
async fn a_component_that_is_not_a_plugin_is_refused_at_load() {
    let engine = engine();
    let error = engine
        .load("garbage", std::sync::Arc::from(&b"\0asm not really"[..]))
        .await
        .unwrap_err();
    assert!(matches!(error, PluginError::Compile { .. }), "{error}");
}
