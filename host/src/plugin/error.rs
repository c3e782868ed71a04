//! Everything that can go wrong when loading or calling a plugin, as one enum
//! whose variants name the cause. A plugin's misbehaviour becomes one of these
//! values (an attempt outcome for the dispatcher), never a host panic.

use std::time::Duration;

/// Why a plugin could not be loaded or a call to it did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The bytes are not a valid WebAssembly component, or wasmtime could not compile them.
    #[error("plugin {plugin}: cannot compile component: {message}{hint}", hint = compile_hint(message))]
    Compile {
        /// The plugin's name.
        plugin: String,
        /// What the compiler said.
        message: String,
    },
    /// The component does not export the plugin interface at all.
    #[error(
        "plugin {plugin}: not a repeater plugin: it does not export {expected} (exports: {found})"
    )]
    NotAPlugin {
        /// The plugin's name.
        plugin: String,
        /// The export the host looks for.
        expected: &'static str,
        /// What the component exports instead, comma-separated.
        found: String,
    },
    /// The component was built against another major version of the
    /// plugin interface than this daemon runs.
    #[error(
        "plugin {plugin}: built against {found}, but this daemon runs plugins of repeater:plugin@0.1.x: rebuild it against wit/v0.1, or run a daemon that supports that version"
    )]
    WrongVersion {
        /// The plugin's name.
        plugin: String,
        /// The plugin interface the component exports.
        found: String,
    },
    /// The component exports the plugin interface with the wrong shape, or
    /// imports something the host does not provide.
    #[error("plugin {plugin}: does not match world repeater:plugin/repeater@0.1.0: {message}")]
    WrongWorld {
        /// The plugin's name.
        plugin: String,
        /// What did not match.
        message: String,
    },
    /// The call used more than its CPU time budget.
    #[error(
        "plugin {plugin}: {call} ran past its CPU time limit of {limit:?} (the cap is plugins.cpu_ms in the config)"
    )]
    Timeout {
        /// The plugin's name.
        plugin: String,
        /// The export being called (`instantiate` when it was the start-up code).
        call: &'static str,
        /// The configured limit.
        limit: Duration,
    },
    /// The call tried to grow memory past the per-call cap.
    #[error(
        "plugin {plugin}: {call} tried to grow memory to {requested} bytes, limit {limit} (the cap is plugins.memory_mb in the config)"
    )]
    MemoryLimit {
        /// The plugin's name.
        plugin: String,
        /// The export being called.
        call: &'static str,
        /// The size the plugin asked for.
        requested: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The plugin trapped (panic, unreachable, out-of-bounds access, ...).
    #[error("plugin {plugin}: {call} trapped: {message}")]
    Trap {
        /// The plugin's name.
        plugin: String,
        /// The export being called.
        call: &'static str,
        /// The trap and, when known, where it happened.
        message: String,
    },
    /// Something the plugin returned is larger than the host accepts.
    #[error("plugin {plugin}: {what} is {size} bytes, limit {limit}")]
    OutputTooLarge {
        /// The plugin's name.
        plugin: String,
        /// Which part of the output (`request body`, `header count`, ...).
        what: &'static str,
        /// Its size (a count for `header count`).
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The request `build` returned cannot be sent as HTTP (bad header name, `..` in the path, ...).
    #[error("plugin {plugin}: built an invalid request: {message}")]
    InvalidRequest {
        /// The plugin's name.
        plugin: String,
        /// What is wrong with the request.
        message: String,
    },
    /// `validate-config` refused the repeater's plugin config.
    #[error("plugin {plugin}: config refused: {message}")]
    Config {
        /// The plugin's name.
        plugin: String,
        /// The plugin's explanation.
        message: String,
    },
    /// Reading or writing a plugin file or the compiled-code cache failed.
    #[error("plugin {plugin}: {action} {path}: {source}")]
    Io {
        /// The plugin's name (or the directory's role when no plugin is involved).
        plugin: String,
        /// What the host was doing (`reading`, `writing`, ...).
        action: &'static str,
        /// The file or directory involved.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// No version of the plugin is loaded.
    #[error("plugin {plugin} is not loaded")]
    NotLoaded {
        /// The plugin's name.
        plugin: String,
    },
    /// The repeater pins a version of the plugin that is not loaded.
    #[error(
        "plugin {plugin}: pinned sha256 {pinned} is not loaded (loaded versions: {loaded}); load that version again (a file in plugins.dir or an upload) or change plugin_sha256"
    )]
    PinMismatch {
        /// The plugin's name.
        plugin: String,
        /// The sha256 the repeater asks for.
        pinned: String,
        /// The sha256 of every version kept, comma-separated.
        loaded: String,
    },
    /// The plugin name is not usable (empty, has a path separator, ...).
    #[error("plugin name {name:?} is invalid: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The engine itself could not be set up or a call could not be started
    /// for a reason that is not the plugin's fault.
    #[error("plugin engine: {0}")]
    Engine(String),
}

/// What to do about a compile error that is really the memory cap: the
/// pooling allocator refuses, at compile time, a component whose starting
/// memory is larger than `plugins.memory_mb`, and wasmtime's own words do
/// not say which setting that is.
fn compile_hint(message: &str) -> &'static str {
    if message.contains("pooling allocator") && message.contains("exceeds the limit") {
        " (its starting memory is larger than the memory cap: raise plugins.memory_mb in the config)"
    } else {
        ""
    }
}

impl PluginError {
    /// The plugin this error is about, if any.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            Self::Compile { plugin, .. }
            | Self::NotAPlugin { plugin, .. }
            | Self::WrongWorld { plugin, .. }
            | Self::WrongVersion { plugin, .. }
            | Self::Timeout { plugin, .. }
            | Self::MemoryLimit { plugin, .. }
            | Self::Trap { plugin, .. }
            | Self::OutputTooLarge { plugin, .. }
            | Self::InvalidRequest { plugin, .. }
            | Self::Config { plugin, .. }
            | Self::Io { plugin, .. }
            | Self::NotLoaded { plugin }
            | Self::PinMismatch { plugin, .. } => Some(plugin),
            Self::InvalidName { .. } | Self::Engine(_) => None,
        }
    }
}
