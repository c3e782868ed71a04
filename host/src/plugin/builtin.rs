//! The plugins compiled from `plugins/` by `host/build.rs` and embedded in
//! the binary.
//!
//! Defines `BUILTIN_PLUGINS: &[(&str, &[u8])]` (plugin name, component
//! bytes).

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));
