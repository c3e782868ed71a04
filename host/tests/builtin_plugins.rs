//! Checks the components `host/build.rs` embeds: each built-in plugin is a
//! WebAssembly component exporting the plugin interface, and the hostile
//! fixture is built beside them but not embedded.

#[path = "../src/plugin/builtin.rs"]
mod builtin;

use builtin::{BUILTIN_PLUGINS, HOSTILE_PLUGIN_PATH};

/// `\0asm`, then the component-model version and layer.
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[test]
fn builtin_plugins_are_components_exporting_the_plugin_interface() {
    let names: Vec<&str> = BUILTIN_PLUGINS.iter().map(|(name, _)| *name).collect();
    assert!(names.contains(&"json-forward"), "built-ins are {names:?}");
    assert!(names.contains(&"form-xml"), "built-ins are {names:?}");
    assert!(names.contains(&"fhir-r4"), "built-ins are {names:?}");
    for (name, bytes) in BUILTIN_PLUGINS {
        assert!(
            bytes.starts_with(&COMPONENT_HEADER),
            "{name} is not a component"
        );
        assert!(
            contains(bytes, b"repeater:plugin/plugin@0.1.1"),
            "{name} does not name the plugin interface"
        );
    }
}

#[test]
fn hostile_fixture_is_built_but_not_embedded() {
    assert!(BUILTIN_PLUGINS.iter().all(|(name, _)| *name != "hostile"));
    let bytes = std::fs::read(HOSTILE_PLUGIN_PATH).expect("hostile.wasm is readable");
    assert!(
        bytes.starts_with(&COMPONENT_HEADER),
        "{HOSTILE_PLUGIN_PATH} is not a component"
    );
}
