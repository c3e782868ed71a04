//! Typed host bindings for the v0.1 plugin world (`wit/v0.1/plugin.wit`).
//!
//! Each major WIT version gets its own bindings module so components built
//! against an older contract keep loading once a newer one exists. Within
//! 0.1, wasmtime matches names by semver, so these 0.1.1 bindings also run
//! 0.1.0 plugins.

wasmtime::component::bindgen!({
    world: "repeater",
    path: "../wit/v0.1",
    // Exports are called with `call_async` so the epoch callback can yield
    // a long-running plugin back to the tokio scheduler.
    exports: { default: async },
});

/// The export every v0.1 plugin must have, at the version the host speaks.
pub const PLUGIN_INTERFACE: &str = "repeater:plugin/plugin@0.1.1";

/// The optional export (since 0.1.1) that declares how replies are judged.
pub const CLASSIFICATION_INTERFACE: &str = "repeater:plugin/classification@0.1.1";

/// True when `name` is the plugin interface at any 0.1 version: for 0.x
/// packages, versions with the same minor number are compatible.
pub fn is_plugin_interface(name: &str) -> bool {
    name.strip_prefix("repeater:plugin/plugin@0.1.")
        .is_some_and(|patch| patch.starts_with(|c: char| c.is_ascii_digit()))
}

/// The rules a plugin's replies are judged by (the `rules` enum of the
/// optional `classification` interface).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    wasmtime::component::ComponentType,
    wasmtime::component::Lift,
    wasmtime::component::Lower,
)]
#[component(enum)]
#[repr(u8)]
pub enum ClassifyRules {
    /// The SDK's default rules; the host applies them without calling `classify`.
    #[component(name = "default-rules")]
    Default,
    /// The plugin's own `classify`, called for every reply.
    #[component(name = "own-rules")]
    Own,
}

pub use repeater::plugin::log::Level as LogLevel;
pub use repeater::plugin::types;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_0_1_patch_is_the_plugin_interface_and_nothing_else_is() {
        assert!(is_plugin_interface("repeater:plugin/plugin@0.1.0"));
        assert!(is_plugin_interface(PLUGIN_INTERFACE));
        assert!(is_plugin_interface("repeater:plugin/plugin@0.1.7"));
        assert!(!is_plugin_interface("repeater:plugin/plugin@0.2.0"));
        assert!(!is_plugin_interface("repeater:plugin/plugin@0.1."));
        assert!(!is_plugin_interface("repeater:plugin/plugin"));
        assert!(!is_plugin_interface("repeater:plugin/classification@0.1.1"));
        assert!(!is_plugin_interface("acme:plugin/plugin@0.1.0"));
    }
}
