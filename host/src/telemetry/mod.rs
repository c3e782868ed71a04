//! Telemetry: what the daemon tells operators about itself. It owns the
//! Prometheus metrics ([`Metrics`], exposed by the API at `GET /metrics`) and
//! the process-wide `tracing` subscriber ([`init_tracing`]).
//!
//! Label values stay bounded: domains come from stored repeaters or
//! authorised requests, outcomes and states from closed enums, plugin names
//! from the plugin registry and failure kinds from a fixed list chosen by the
//! caller. Nothing request-specific (event ids, URLs, record ids) becomes a
//! label.

mod metrics;

pub use metrics::{Metrics, PluginCall};

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines, for terminals.
    #[default]
    Text,
}

impl FromStr for LogFormat {
    type Err = TelemetryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            other => Err(TelemetryError::UnknownFormat(other.to_owned())),
        }
    }
}

/// Errors from setting up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log format name is not `json` or `text`.
    #[error("unknown log format {0:?}: expected \"json\" or \"text\"")]
    UnknownFormat(String),
    /// The filter directive could not be parsed.
    #[error("invalid log filter {filter:?}: {reason}")]
    InvalidFilter {
        /// The refused directive.
        filter: String,
        /// Why it was refused.
        reason: String,
    },
    /// A global subscriber was already installed.
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInstalled(String),
}

/// Installs the process-wide `tracing` subscriber writing to stderr.
///
/// `filter` uses the `RUST_LOG` directive syntax (for example
/// `info,repeaterd=debug`). Call once, from `main`.
pub fn init_tracing(format: LogFormat, filter: &str) -> Result<(), TelemetryError> {
    let env_filter = EnvFilter::try_new(filter).map_err(|err| TelemetryError::InvalidFilter {
        filter: filter.to_owned(),
        reason: err.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|err| TelemetryError::AlreadyInstalled(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_formats_parse_by_name() {
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!("text".parse::<LogFormat>().unwrap(), LogFormat::Text);
        let err = "yaml".parse::<LogFormat>().unwrap_err();
        assert!(err.to_string().contains("yaml"), "{err}");
    }

    #[test]
    fn a_bad_filter_is_refused_with_its_text() {
        let err = init_tracing(LogFormat::Text, "info,[[[").unwrap_err();
        assert!(err.to_string().contains("[[["), "{err}");
    }
}
