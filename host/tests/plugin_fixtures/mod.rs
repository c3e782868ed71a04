//! Shared fixtures of the plugin tests: engines with small pools, the real
//! components built by `host/build.rs`, and realistic events.

#![allow(dead_code)] // each test crate uses a different subset

use std::sync::Arc;

use repeaterd::plugin::types::{BuildOutcome, Event, Method, Reply, RequestSummary, Response};
use repeaterd::plugin::{CallContext, LoadedPlugin, PluginEngine, PluginError, PluginLimits};

/// Limits of the tests: the defaults, with a pool small enough that many
/// test engines fit in one process.
pub fn test_limits() -> PluginLimits {
    PluginLimits {
        max_instances: 16,
        ..PluginLimits::default()
    }
}

pub fn engine() -> PluginEngine {
    PluginEngine::new(test_limits()).expect("plugin engine")
}

/// The bytes of a built-in plugin.
pub fn builtin(name: &str) -> Arc<[u8]> {
    Arc::from(
        repeaterd::plugin::builtin(name).unwrap_or_else(|| panic!("no built-in plugin {name}")),
    )
}

/// The bytes of the `hostile` fixture plugin.
pub fn hostile() -> Arc<[u8]> {
    let path = repeaterd::plugin::HOSTILE_PLUGIN_PATH;
    Arc::from(std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}")))
}

pub async fn load_builtin(engine: &PluginEngine, name: &str) -> LoadedPlugin {
    engine
        .load(name, builtin(name))
        .await
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

pub fn ctx() -> CallContext {
    CallContext::new("acme", "crm")
}

/// An event as the dispatcher would hand it to a plugin.
pub fn event(event_type: &str, content_type: &str, payload: &[u8]) -> Event {
    Event {
        id: "evt-0001".to_owned(),
        domain: "acme".to_owned(),
        repeater: "crm".to_owned(),
        event_type: event_type.to_owned(),
        content_type: content_type.to_owned(),
        payload: payload.to_vec(),
        attempt: 1,
        registered_at: 1_763_900_000_000,
        ordering_key: Some("patient-7".to_owned()),
        record_id: "rec-0001".to_owned(),
    }
}

pub fn summary(url: &str, body_size: u64) -> RequestSummary {
    RequestSummary {
        method: Method::Post,
        url: url.to_owned(),
        headers: Vec::new(),
        body_size,
    }
}

pub fn response(status: u16) -> Reply {
    Reply::Response(Response {
        status,
        headers: Vec::new(),
        body_excerpt: Vec::new(),
    })
}

/// Validates `{"mode": mode}` and runs the hostile plugin's `build` once.
pub async fn build_hostile(plugin: &LoadedPlugin, mode: &str) -> Result<BuildOutcome, PluginError> {
    let config = format!(r#"{{"mode":"{mode}"}}"#);
    plugin.validate_config(&ctx(), &config).await?;
    plugin
        .build(
            &ctx(),
            &event("order.created", "application/json", br#"{"n":1}"#),
            &config,
        )
        .await
}
