//! The SDK for writing repeaterd plugins in Rust.
//!
//! A plugin is a WebAssembly component implementing the `repeater-full`
//! world of the `repeater:plugin` WIT package (`wit/v0.1/plugin.wit`): the
//! `repeater` world the host requires, plus its optional interfaces. With
//! this crate a plugin author:
//!
//! 1. implements [`Plugin`] on a type (a typed config, `build`, and
//!    optionally `validate_config` and `classify`, which defaults to
//!    [`default_classify`]; a plugin that keeps the default sets
//!    [`Plugin::DEFAULT_CLASSIFY`] so the host applies those rules itself);
//! 2. calls [`export_plugin!`] once with that type;
//! 3. unit-tests the logic natively through [`testing`], with no wasm
//!    runtime involved;
//! 4. builds the component with
//!    `cargo build --target wasm32-wasip2 --profile plugin -p my-plugin`
//!    (the crate needs `crate-type = ["cdylib", "rlib"]`).
//!
//! ```
//! use repeater_plugin_sdk::{BuildOutcome, Event, Method, Plugin, Request};
//!
//! struct Echo;
//!
//! impl Plugin for Echo {
//!     type Config = serde_json::Value;
//!
//!     fn build(event: &Event, _config: &Self::Config) -> BuildOutcome {
//!         BuildOutcome::Send(
//!             Request::new(Method::Post)
//!                 .with_header("content-type", &event.content_type)
//!                 .with_body(event.payload.clone()),
//!         )
//!     }
//! }
//!
//! repeater_plugin_sdk::export_plugin!(Echo);
//! ```

// The generated bindings name this crate by its absolute path so that the
// export macro also works when expanded inside a plugin crate.
extern crate self as repeater_plugin_sdk;

mod classify;
pub mod log;
mod plugin;
pub mod testing;
mod types;

pub use classify::{
    MAX_RETRY_AFTER_SECONDS, classify_at, default_classify, parse_retry_after, retry_after,
};
pub use plugin::Plugin;
pub use types::{
    BuildOutcome, Event, Header, Method, Reply, Request, RequestSummary, Response, Retry,
    TransportError, TransportErrorKind, Verdict, is_json_media_type, validate_header,
};

/// Bindings generated from the WIT contract. Plugin authors use the
/// re-exported types at the crate root instead.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/v0.1",
        world: "repeater-full",
        // The export macro is expanded in plugin crates, not here.
        pub_export_macro: true,
        export_macro_name: "export_repeater_world",
        default_bindings_module: "::repeater_plugin_sdk::bindings",
        runtime_path: "::repeater_plugin_sdk::__private::wit_bindgen::rt",
        additional_derives: [Clone, PartialEq, Eq],
    });
}

/// Items the exported macros refer to; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::plugin::{rules, run_build, run_classify, run_validate_config};
    pub use wit_bindgen;
}
