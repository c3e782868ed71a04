//! Typed host bindings for the v0.1 plugin world (`wit/v0.1/plugin.wit`).
//!
//! Each major WIT version gets its own bindings module so components built
//! against an older contract keep loading once a newer one exists.

wasmtime::component::bindgen!({
    world: "repeater",
    path: "../wit/v0.1",
    // Exports are called with `call_async` so the epoch callback can yield
    // a long-running plugin back to the tokio scheduler.
    exports: { default: async },
});

/// The export name every v0.1 plugin must have.
pub const PLUGIN_INTERFACE: &str = "repeater:plugin/plugin@0.1.0";

pub use repeater::plugin::log::Level as LogLevel;
pub use repeater::plugin::types;
