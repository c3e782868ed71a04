//! The plugin runtime: WebAssembly components that turn events into HTTP
//! requests (`build`) and judge the replies (`classify`), run in a sandbox
//! with stated limits.
//!
//! - [`PluginEngine`] owns the wasmtime engine, its limits ([`PluginLimits`])
//!   and the compiled-code cache ([`CodeCache`]); [`PluginEngine::load`]
//!   turns component bytes into a [`LoadedPlugin`]. The engine prepares
//!   components and knows nothing of calls; a loaded plugin holds its
//!   engine; loading sits above both, so neither imports the other back.
//! - [`LoadedPlugin`] runs `validate-config`, `build` and `classify`, each in
//!   a fresh instance, returning the WIT types of [`types`] or a
//!   [`PluginError`] naming the cause. A plugin that declares the default
//!   reply rules ([`ClassifyRules::Default`]) is judged by them in the host,
//!   with no instance.
//! - [`PluginRegistry`] maps names to the versions repeaters use, loads
//!   built-ins and a plugin directory, hot-reloads changed files and rolls
//!   a new version out repeater by repeater (ADR 14).
//!
//! The dispatch loop's use is: `registry.resolve(repeater, ..)` once per
//! batch, then `plugin.build(..)` / `plugin.classify(..)` per record.

mod archive;
mod bindings;
mod build_view;
mod builtin;
mod cache;
mod call;
mod default_rules;
mod engine;
mod error;
mod limits;
mod load;
mod output;
mod registry;
mod request_check;
mod sandbox;

pub use bindings::{CLASSIFICATION_INTERFACE, ClassifyRules, PLUGIN_INTERFACE};
pub use builtin::BUILTIN_PLUGINS;
pub use cache::CodeCache;
pub use call::{CallContext, LoadedPlugin};
pub(crate) use default_rules::judge_by_default_rules;
pub use engine::{COMPILE_REFUSED, PluginEngine, compile_into_cache};
pub use error::PluginError;
pub use limits::PluginLimits;
pub use registry::{
    DirWatcher, PluginRegistry, PluginSource, PluginStatus, PluginSwapped, Refusal, RepeaterKey,
    ResolvedVersion, RolloutEvent, VersionStatus, check_name,
};

/// The WIT types plugins exchange with the host (`repeater:plugin/types@0.1.1`).
pub mod types {
    pub use super::bindings::types::{
        BuildOutcome, Event, Header, Method, Reply, Request, RequestSummary, Response, Retry,
        TransportError, TransportErrorKind, Verdict,
    };
}

/// The component bytes of the built-in plugin `name`.
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    BUILTIN_PLUGINS
        .iter()
        .find(|(builtin, _)| *builtin == name)
        .map(|(_, bytes)| *bytes)
}

/// Names of the built-in plugins, in the order they are embedded.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN_PLUGINS.iter().map(|(name, _)| *name).collect()
}
