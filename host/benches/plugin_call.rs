//! Cost of one plugin call pair as the dispatcher makes it: `build` then
//! `classify` of json-forward on a 1 KiB JSON payload, `build` in a fresh
//! instance. Two versions of the same plugin:
//!
//! - the built-in one, which declares the default reply rules (WIT 0.1.1),
//!   so the host judges the reply with no second instance;
//! - the 0.1.0 build kept as a test fixture, which predates the declaration,
//!   so its `classify` runs in an instance of its own.
//!
//! Prints each median also as one JSON line:
//! `{"scenario":"plugin_call","plugin":...,"classify":...,"median_ns":...}`.
//!
//! Then `build` alone, in a fresh instance, for json-forward and for every
//! component named in `REPEATERD_BENCH_PLUGINS` (paths separated by `:`,
//! e.g. the Python and JavaScript examples), so plugins written in any
//! language are measured the same way:
//! `{"scenario":"plugin_build","plugin":...,"median_ns":...,"p99_ns":...}`.
//! A named component must accept the config `{}` and send the event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use repeaterd::plugin::types::{BuildOutcome, Event, Reply, Request, RequestSummary, Response};
use repeaterd::plugin::{CallContext, ClassifyRules, LoadedPlugin, PluginEngine, PluginLimits};

/// The daemon's allocator (see `src/main.rs`), so the figure is the cost
/// the daemon pays.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn payload_1kib() -> Vec<u8> {
    let mut items = Vec::new();
    let mut size = 0;
    let mut i = 0;
    while size < 1000 {
        let item = format!(
            r#"{{"sku":"SKU-{i:05}","qty":{},"price":"{}.99"}}"#,
            i % 7 + 1,
            i * 3
        );
        size += item.len() + 1;
        items.push(item);
        i += 1;
    }
    let payload = format!(r#"{{"order":"o-12345","items":[{}]}}"#, items.join(","));
    payload.into_bytes()
}

fn event() -> Event {
    Event {
        id: "evt-1".to_owned(),
        domain: "acme".to_owned(),
        repeater: "crm".to_owned(),
        event_type: "order.created".to_owned(),
        content_type: "application/json".to_owned(),
        payload: payload_1kib(),
        attempt: 1,
        registered_at: 1_763_900_000_000,
        ordering_key: None,
        record_id: "rec-1".to_owned(),
    }
}

/// `build` in a fresh instance; the request it sent.
async fn build(plugin: &LoadedPlugin, ctx: &CallContext, event: &Event) -> Request {
    let outcome = plugin.build(ctx, event, "{}").await.expect("build");
    let BuildOutcome::Send(request) = outcome else {
        panic!("{} did not send: {outcome:?}", plugin.name());
    };
    request
}

async fn call_pair(plugin: &LoadedPlugin, ctx: &CallContext, event: &Event) {
    let request = build(plugin, ctx, event).await;
    let summary = RequestSummary {
        method: request.method,
        url: "https://crm.example/hooks".to_owned(),
        headers: request.headers,
        body_size: request.body.len() as u64,
    };
    let reply = Reply::Response(Response {
        status: 200,
        headers: Vec::new(),
        body_excerpt: Vec::new(),
    });
    plugin
        .classify(ctx, &summary, &reply, "{}")
        .await
        .expect("classify");
}

/// The json-forward component as built against WIT 0.1.0.
const JSON_FORWARD_0_1_0: &[u8] =
    include_bytes!("../tests/plugin/fixtures/json-forward-0.1.0.wasm");

fn plugin_call(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = PluginEngine::new(PluginLimits::default()).unwrap();
    let builtin = repeaterd::plugin::builtin("json-forward").expect("json-forward is built in");
    let ctx = CallContext::new("acme", "crm");
    let event = event();
    assert!(event.payload.len() >= 1024 && event.payload.len() < 1200);

    for (label, bytes, rules, classify) in [
        (
            "json-forward",
            builtin,
            ClassifyRules::Default,
            "host default rules",
        ),
        (
            "json-forward-0.1.0",
            JSON_FORWARD_0_1_0,
            ClassifyRules::Own,
            "plugin instance",
        ),
    ] {
        let plugin = runtime
            .block_on(engine.load(label, Arc::from(bytes)))
            .unwrap();
        assert_eq!(plugin.classify_rules(), rules, "{label}");

        c.bench_function(&format!("plugin_call/{label} build+classify 1KiB"), |b| {
            b.iter(|| runtime.block_on(call_pair(&plugin, &ctx, &event)))
        });

        // Criterion's own report has the full distribution; this is the
        // comparable one-line figure.
        let (median, p99) = median_and_p99(|| runtime.block_on(call_pair(&plugin, &ctx, &event)));
        println!(
            "{{\"scenario\":\"plugin_call\",\"plugin\":\"{label}\",\"classify\":\"{classify}\",\"median_ns\":{},\"p99_ns\":{},\"payload_bytes\":{}}}",
            median.as_nanos(),
            p99.as_nanos(),
            event.payload.len()
        );
    }

    let mut plugins = vec![("json-forward".to_owned(), builtin.to_vec())];
    let named = std::env::var("REPEATERD_BENCH_PLUGINS").unwrap_or_default();
    for path in named.split(':').filter(|path| !path.is_empty()) {
        let bytes = std::fs::read(path)
            .unwrap_or_else(|e| panic!("REPEATERD_BENCH_PLUGINS: cannot read {path}: {e}"));
        plugins.push((path.to_owned(), bytes));
    }
    for (label, bytes) in plugins {
        let plugin = runtime
            .block_on(engine.load("bench", Arc::from(bytes)))
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        c.bench_function(&format!("plugin_build/{label} 1KiB"), |b| {
            b.iter(|| runtime.block_on(build(&plugin, &ctx, &event)))
        });
        let (median, p99) = median_and_p99(|| {
            runtime.block_on(build(&plugin, &ctx, &event));
        });
        println!(
            "{{\"scenario\":\"plugin_build\",\"plugin\":{label:?},\"median_ns\":{},\"p99_ns\":{},\"payload_bytes\":{}}}",
            median.as_nanos(),
            p99.as_nanos(),
            event.payload.len()
        );
    }
}

/// Median and 99th percentile of 2000 runs of `call`.
fn median_and_p99(mut call: impl FnMut()) -> (Duration, Duration) {
    let mut samples: Vec<Duration> = (0..2000)
        .map(|_| {
            let started = Instant::now();
            call();
            started.elapsed()
        })
        .collect();
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

criterion_group!(benches, plugin_call);
criterion_main!(benches);
