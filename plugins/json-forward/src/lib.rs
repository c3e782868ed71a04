//! `json-forward`: the built-in plugin that sends an event's JSON payload
//! to the repeater's URL.
//!
//! Config (every key optional):
//!
//! ```json
//! {"envelope": false, "method": "POST", "headers": {"x-source": "crm"}}
//! ```
//!
//! - Without `envelope` the body is the payload, byte for byte.
//! - With `envelope` the body is
//!   `{"id", "record_id", "type", "domain", "repeater", "registered_at",
//!   "attempt", "ordering_key", "data"}` where `data` is the payload JSON
//!   (verbatim), `registered_at` is RFC 3339 UTC and `ordering_key` is
//!   `null` when the event has none.
//! - `content-type: application/json` and `idempotency-key: <record id>`
//!   are set; `headers` adds more. A configured `content-type` replaces the
//!   default (e.g. `application/vnd.acme+json`); `idempotency-key`,
//!   `authorization` and the transport's own headers cannot be configured
//!   (authentication belongs to the repeater, where secrets are kept).
//!
//! Payloads: this plugin forwards JSON only. A payload whose bytes are not
//! valid JSON is rejected whatever its content type says; a valid JSON
//! payload labelled otherwise (say `text/plain`) is forwarded as JSON.
//! Replies are judged by the SDK's default rules.

use std::collections::BTreeMap;

use repeater_plugin_sdk::{BuildOutcome, Event, Method, Plugin, Request, validate_header};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The header carrying the record id, so receivers can drop duplicates of
/// an at-least-once delivery.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Headers the config may not set: the idempotency key is ours, credentials
/// belong to the repeater's auth settings, the rest belong to the transport.
const RESERVED_HEADERS: [&str; 7] = [
    IDEMPOTENCY_HEADER,
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
];

/// The plugin config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Wrap the payload in an envelope with the event's metadata.
    pub envelope: bool,
    /// The HTTP method; `POST` by default.
    pub method: Method,
    /// Extra headers, name to value.
    pub headers: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            envelope: false,
            method: Method::Post,
            headers: BTreeMap::new(),
        }
    }
}

/// The envelope body written when `envelope` is on.
#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    record_id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    domain: &'a str,
    repeater: &'a str,
    registered_at: String,
    attempt: u32,
    ordering_key: Option<&'a str>,
    data: &'a RawValue,
}

/// The `json-forward` plugin.
pub struct JsonForward;

impl Plugin for JsonForward {
    type Config = Config;
    // Replies are judged by the SDK's default rules, which the host applies
    // itself: no plugin instance per reply.
    const DEFAULT_CLASSIFY: bool = true;

    fn validate_config(config: &Config) -> Result<(), String> {
        for (name, value) in &config.headers {
            validate_header(name, value).map_err(|err| format!("headers: {err}"))?;
            if RESERVED_HEADERS
                .iter()
                .any(|reserved| name.eq_ignore_ascii_case(reserved))
            {
                return Err(format!(
                    "headers: {name:?} cannot be set in the plugin config"
                ));
            }
        }
        Ok(())
    }

    fn build(event: &Event, config: &Config) -> BuildOutcome {
        let Ok(text) = std::str::from_utf8(&event.payload) else {
            return BuildOutcome::reject(format!(
                "payload is not JSON (not even UTF-8; content type {:?})",
                event.content_type
            ));
        };
        let payload: &RawValue = match serde_json::from_str(text) {
            Ok(payload) => payload,
            Err(err) => {
                return BuildOutcome::reject(format!(
                    "payload is not valid JSON (content type {:?}): {err}",
                    event.content_type
                ));
            }
        };

        let body = if config.envelope {
            let envelope = Envelope {
                id: &event.id,
                record_id: &event.record_id,
                event_type: &event.event_type,
                domain: &event.domain,
                repeater: &event.repeater,
                registered_at: event.registered_at_rfc3339(),
                attempt: event.attempt,
                ordering_key: event.ordering_key.as_deref(),
                data: payload,
            };
            match serde_json::to_vec(&envelope) {
                Ok(body) => body,
                Err(err) => {
                    return BuildOutcome::reject(format!("cannot write the envelope: {err}"));
                }
            }
        } else {
            event.payload.clone()
        };

        let mut request = Request::new(config.method)
            .with_header(IDEMPOTENCY_HEADER, &event.record_id)
            .with_body(body);
        if !config
            .headers
            .keys()
            .any(|name| name.eq_ignore_ascii_case("content-type"))
        {
            request = request.with_header("content-type", "application/json");
        }
        for (name, value) in &config.headers {
            request = request.with_header(name, value);
        }
        BuildOutcome::Send(request)
    }
}

repeater_plugin_sdk::export_plugin!(JsonForward);

#[cfg(test)]
mod tests {
    use repeater_plugin_sdk::Verdict;
    use repeater_plugin_sdk::testing::{self, event, expect_reject, expect_send, response};
    use serde_json::{Value, json};

    use super::*;

    fn build(event: &Event, config: &str) -> BuildOutcome {
        testing::build::<JsonForward>(event, config)
    }

    #[test]
    fn payload_is_posted_unchanged_by_default() {
        let payload = br#"{ "n": 1.000000000000000001, "s": "x" }"#;
        let request = expect_send(build(
            &event().payload(&payload[..]).record_id("rec-9").build(),
            "{}",
        ));
        assert_eq!(request.method, Method::Post);
        assert_eq!(request.body, payload);
        assert_eq!(request.path, None);
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("idempotency-key"), Some("rec-9"));
    }

    #[test]
    fn envelope_wraps_the_payload_with_event_metadata() {
        let event = event()
            .id("evt-7")
            .record_id("rec-7")
            .domain("acme")
            .repeater("billing")
            .event_type("invoice.paid")
            .attempt(3)
            .registered_at(1_700_000_000_123)
            .ordering_key("customer-42")
            .json(&json!({"amount": 10, "tags": ["a"]}))
            .build();
        let request = expect_send(build(&event, r#"{"envelope": true}"#));
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            body,
            json!({
                "id": "evt-7",
                "record_id": "rec-7",
                "type": "invoice.paid",
                "domain": "acme",
                "repeater": "billing",
                "registered_at": "2023-11-14T22:13:20.123Z",
                "attempt": 3,
                "ordering_key": "customer-42",
                "data": {"amount": 10, "tags": ["a"]},
            })
        );
    }

    #[test]
    fn envelope_without_ordering_key_has_null() {
        let request = expect_send(build(&event().build(), r#"{"envelope": true}"#));
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["ordering_key"], Value::Null);
    }

    #[test]
    fn method_and_headers_come_from_config() {
        let config = r#"{"method": "put", "headers": {"x-source": "crm", "Content-Type": "application/vnd.acme+json"}}"#;
        assert_eq!(testing::validate_config::<JsonForward>(config), Ok(()));
        let request = expect_send(build(&event().build(), config));
        assert_eq!(request.method, Method::Put);
        assert_eq!(request.header("x-source"), Some("crm"));
        assert_eq!(
            request.header("content-type"),
            Some("application/vnd.acme+json")
        );
        let content_types = request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-type"))
            .count();
        assert_eq!(content_types, 1);
    }

    #[test]
    fn invalid_json_is_rejected_naming_the_content_type() {
        let reason = expect_reject(build(&event().payload("{\"a\": ").build(), "{}"));
        assert!(reason.contains("not valid JSON"), "{reason}");
        assert!(reason.contains("application/json"), "{reason}");
        let reason = expect_reject(build(&event().payload(vec![0xff, 0xfe]).build(), "{}"));
        assert!(reason.contains("UTF-8"), "{reason}");
    }

    #[test]
    fn non_json_content_type_is_rejected_unless_the_bytes_are_json() {
        let xml = event()
            .content_type("application/xml")
            .payload("<a/>")
            .build();
        let reason = expect_reject(build(&xml, "{}"));
        assert!(reason.contains("application/xml"), "{reason}");

        let labelled_text = event().content_type("text/plain").payload("[1,2]").build();
        let request = expect_send(build(&labelled_text, "{}"));
        assert_eq!(request.body, b"[1,2]");
        assert_eq!(request.header("content-type"), Some("application/json"));
    }

    #[test]
    fn config_refuses_unknown_keys_methods_and_reserved_headers() {
        let err = testing::validate_config::<JsonForward>(r#"{"envelop": true}"#).unwrap_err();
        assert!(err.contains("envelop"), "{err}");
        let err = testing::validate_config::<JsonForward>(r#"{"method": "TRACE"}"#).unwrap_err();
        assert!(err.contains("TRACE"), "{err}");
        let err = testing::validate_config::<JsonForward>(
            r#"{"headers": {"Authorization": "Bearer x"}}"#,
        )
        .unwrap_err();
        assert!(err.contains("Authorization"), "{err}");
        let err = testing::validate_config::<JsonForward>(r#"{"headers": {"x-a": "1\r\nx-b: 2"}}"#)
            .unwrap_err();
        assert!(err.contains("x-a"), "{err}");
    }

    #[test]
    fn replies_follow_the_default_rules() {
        let summary = testing::summary("http://127.0.0.1:9/hook");
        let classify = |reply| testing::classify::<JsonForward>(&summary, &reply, "{}");
        assert_eq!(classify(response(200).build()), Verdict::Success);
        assert_eq!(
            classify(response(429).header("retry-after", "7").build()),
            Verdict::retry_after(7, "HTTP 429")
        );
        assert!(matches!(
            classify(response(400).build()),
            Verdict::Reject(_)
        ));
    }
}
