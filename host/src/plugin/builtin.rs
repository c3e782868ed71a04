//! The plugins compiled from `plugins/` by `host/build.rs`: the built-in
//! ones embedded in the binary, and the path of the `hostile` test fixture.
//!
//! Defines `BUILTIN_PLUGINS: &[(&str, &[u8])]` (plugin name, component
//! bytes) and `HOSTILE_PLUGIN_PATH: &str` (for tests only).

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));
