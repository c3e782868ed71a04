//! repeaterd: forwards events to remote HTTP APIs, reliably and fairly.
//!
//! One module per concern: [`model`] (the product's nouns), [`config`]
//! (TOML schema and validation), [`store`] (durable state behind one trait),
//! [`schedule`] (pure scheduling policy), [`dispatch`] (running a repeater's
//! batch), [`plugin`] (the wasm sandbox), [`outbound`] (HTTP client, SSRF
//! guard, auth, signatures), [`api`] (HTTP API), [`console`] (the operator
//! console at `/ui`), [`telemetry`] and
//! [`daemon`] (the wiring of `repeaterd serve`). `ARCHITECTURE.md` states
//! which may use which; the `layers` tests hold the code to it.

pub mod api;
pub mod config;
pub mod console;
pub mod daemon;
pub mod dispatch;
pub mod model;
pub mod outbound;
pub mod plugin;
pub mod schedule;
pub mod store;
pub mod telemetry;

/// The dependency rule of `ARCHITECTURE.md`, checked against the sources.
#[cfg(test)]
mod layers;
