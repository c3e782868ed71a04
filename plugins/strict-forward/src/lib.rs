//! `strict-forward`: a test fixture standing for a new version of a plugin
//! whose `validate-config` refuses a config the previous version took. It
//! is never embedded in the daemon.
//!
//! It reads the same config as `json-forward`'s `headers` key and forwards
//! the payload the same way (`content-type: application/json`,
//! `idempotency-key: <record id>`, the configured headers), but refuses any
//! header named `x-legacy` or starting with `x-legacy-`. Tests load it in
//! place of `json-forward` under one plugin name to watch a new version
//! roll out repeater by repeater.

use std::collections::BTreeMap;

use repeater_plugin_sdk::{BuildOutcome, Event, Method, Plugin, Request};
use serde::Deserialize;

/// The header prefix this version no longer accepts.
pub const REFUSED_HEADER: &str = "x-legacy";

/// The plugin config: `json-forward`'s `headers`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Extra headers, name to value.
    pub headers: BTreeMap<String, String>,
}

/// The `strict-forward` plugin.
pub struct StrictForward;

fn is_refused(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == REFUSED_HEADER || name.starts_with(&format!("{REFUSED_HEADER}-"))
}

impl Plugin for StrictForward {
    type Config = Config;
    const DEFAULT_CLASSIFY: bool = true;

    fn validate_config(config: &Config) -> Result<(), String> {
        match config.headers.keys().find(|name| is_refused(name)) {
            Some(name) => Err(format!(
                "headers: {name:?} is no longer supported by this version; remove it"
            )),
            None => Ok(()),
        }
    }

    fn build(event: &Event, config: &Config) -> BuildOutcome {
        let request = Request::new(Method::Post)
            .with_header("content-type", "application/json")
            .with_header("idempotency-key", &event.record_id);
        let request = config
            .headers
            .iter()
            .fold(request, |request, (name, value)| {
                request.with_header(name, value)
            });
        BuildOutcome::Send(request.with_body(event.payload.clone()))
    }
}

repeater_plugin_sdk::export_plugin!(StrictForward);

#[cfg(test)]
mod tests {
    use repeater_plugin_sdk::testing::{self, event, expect_send};

    use super::*;

    #[test]
    fn legacy_headers_are_refused_and_others_taken() {
        let err = testing::validate_config::<StrictForward>(r#"{"headers": {"X-Legacy-Id": "1"}}"#)
            .unwrap_err();
        assert!(err.contains("X-Legacy-Id"), "{err}");
        assert_eq!(
            testing::validate_config::<StrictForward>(r#"{"headers": {"x-source": "crm"}}"#),
            Ok(())
        );
        assert_eq!(testing::validate_config::<StrictForward>("{}"), Ok(()));
    }

    #[test]
    fn the_payload_is_forwarded_with_the_record_id() {
        let event = event().payload(br#"{"n": 1}"#.to_vec()).build();
        let request = expect_send(testing::build::<StrictForward>(&event, "{}"));
        assert_eq!(request.body, br#"{"n": 1}"#);
        assert!(
            request
                .headers
                .iter()
                .any(|h| h.name == "idempotency-key" && h.value == event.record_id)
        );
    }
}
