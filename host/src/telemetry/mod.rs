//! Telemetry: what the daemon tells operators about itself, as Prometheus
//! metrics ([`Metrics`], exposed by the API at `GET /metrics`) and the last
//! quarter hour per repeater ([`History`], shown by the console). Log lines go
//! through `tracing`, whose subscriber the binary installs (`main.rs`).
//!
//! Label values stay bounded: domains come from stored repeaters or
//! authorised requests, outcomes and states from closed enums, plugin names
//! from the plugin registry and failure kinds from a fixed list chosen by the
//! caller. Nothing request-specific (event ids, URLs, record ids) becomes a
//! label.

mod cpu;
mod history;
mod metrics;

pub(crate) use cpu::cpu_counted;
pub use history::{History, WINDOW_MINUTES, WindowStats};
pub use metrics::{Metrics, PluginCall};
