//! Reply rules (WIT 0.1.1): a plugin that declares the default rules is
//! judged by them in the host without a plugin instance; a plugin with its
//! own `classify` still runs it; and a plugin built against 0.1.0, before
//! the declaration existed, still loads and runs on its own `classify`.

use std::sync::Arc;

use crate::fixtures::{ctx, engine, event, load_builtin, summary};
use repeaterd::plugin::types::{BuildOutcome, Header, Reply, Response, Verdict};
use repeaterd::plugin::{ClassifyRules, LoadedPlugin, PluginEngine};

/// The `json-forward` component as built before 0.1.1 (its bytes are kept
/// in the repository so this stays a test of an old plugin).
const JSON_FORWARD_0_1_0: &[u8] = include_bytes!("fixtures/json-forward-0.1.0.wasm");

fn throttled() -> Reply {
    Reply::Response(Response {
        status: 429,
        headers: vec![Header {
            name: "Retry-After".to_owned(),
            value: "90".to_owned(),
        }],
        body_excerpt: b"slow down".to_vec(),
    })
}

/// Classifies `reply` and returns the verdict with the number of plugin
/// instances the call started.
async fn classify_counting(
    engine: &PluginEngine,
    plugin: &LoadedPlugin,
    reply: &Reply,
) -> (Verdict, u64) {
    let before = engine.instances_started();
    let verdict = plugin
        .classify(
            &ctx(),
            &summary("https://crm.example/hooks", 64),
            reply,
            "{}",
        )
        .await
        .expect("classify");
    (verdict, engine.instances_started() - before)
}

fn retry_after(verdict: &Verdict) -> Option<u32> {
    match verdict {
        Verdict::Retry(retry) => retry.after_seconds,
        other => panic!("expected retry, got {other:?}"),
    }
}

#[tokio::test]
async fn builtins_declare_the_rules_they_use() {
    let engine = engine();
    for (name, rules) in [
        ("json-forward", ClassifyRules::Default),
        ("form-xml", ClassifyRules::Default),
        ("fhir-r4", ClassifyRules::Own),
    ] {
        let plugin = load_builtin(&engine, name).await;
        assert_eq!(plugin.classify_rules(), rules, "{name}");
        assert_eq!(plugin.interface(), "repeater:plugin/plugin@0.1.1", "{name}");
    }
}

#[tokio::test]
async fn declared_default_rules_judge_replies_without_an_instance() {
    let engine = engine();
    let plugin = load_builtin(&engine, "json-forward").await;

    let (verdict, started) = classify_counting(&engine, &plugin, &throttled()).await;
    assert_eq!(started, 0, "the host judged the reply itself");
    assert_eq!(retry_after(&verdict), Some(90));

    let (verdict, started) = classify_counting(
        &engine,
        &plugin,
        &Reply::Response(Response {
            status: 404,
            headers: Vec::new(),
            body_excerpt: b"no such hook".to_vec(),
        }),
    )
    .await;
    assert_eq!(started, 0);
    match verdict {
        Verdict::Reject(reason) => assert_eq!(reason, "HTTP 404: no such hook"),
        other => panic!("expected reject, got {other:?}"),
    }

    // `build` still runs the plugin.
    let before = engine.instances_started();
    let outcome = plugin
        .build(&ctx(), &event("a", "application/json", b"{}"), "{}")
        .await
        .expect("build");
    assert!(matches!(outcome, BuildOutcome::Send(_)), "{outcome:?}");
    assert_eq!(engine.instances_started() - before, 1);
}

#[tokio::test]
async fn own_rules_run_the_plugin_for_every_reply() {
    let engine = engine();
    let plugin = load_builtin(&engine, "fhir-r4").await;
    let (verdict, started) = classify_counting(&engine, &plugin, &throttled()).await;
    assert_eq!(started, 1, "fhir-r4's own classify ran in an instance");
    assert_eq!(retry_after(&verdict), Some(90));
}

#[tokio::test]
async fn a_plugin_built_against_0_1_0_loads_and_runs_its_own_classify() {
    let engine = engine();
    let plugin = engine
        .load("json-forward-old", Arc::from(JSON_FORWARD_0_1_0))
        .await
        .expect("a 0.1.0 plugin loads on the 0.1.1 host");
    assert_eq!(plugin.interface(), "repeater:plugin/plugin@0.1.0");
    assert_eq!(plugin.classify_rules(), ClassifyRules::Own);

    let outcome = plugin
        .build(
            &ctx(),
            &event("order.created", "application/json", br#"{"n":1}"#),
            "{}",
        )
        .await
        .expect("build");
    match outcome {
        BuildOutcome::Send(request) => assert_eq!(request.body, br#"{"n":1}"#),
        other => panic!("expected send, got {other:?}"),
    }

    // Judged by the same rules, but by the plugin's own export.
    let (verdict, started) = classify_counting(&engine, &plugin, &throttled()).await;
    assert_eq!(started, 1);
    assert_eq!(retry_after(&verdict), Some(90));
}
