//! `form-xml`: the built-in plugin that forwards an XML payload (a form
//! submission, typically) unchanged as `application/xml`.
//!
//! Config (every key optional): `{"method": "POST", "content_type":
//! "application/xml"}`; `content_type` must be an XML media type
//! (`application/xml`, `text/xml` or a `+xml` type).
//!
//! The plugin checks the payload looks like XML rather than parsing it
//! fully: UTF-8 (a UTF-8 byte-order mark is allowed), and after optional
//! whitespace it starts with `<` and ends with `>`. Anything else is
//! rejected. The body is sent byte for byte, with `idempotency-key: <record
//! id>`. Replies are judged by the SDK's default rules.

use repeater_plugin_sdk::{BuildOutcome, Event, Method, Plugin, Request};
use serde::Deserialize;

/// The UTF-8 byte-order mark some form tools put before the document.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The plugin config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The HTTP method; `POST` by default.
    pub method: Method,
    /// The content type sent; `application/xml` by default.
    pub content_type: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            method: Method::Post,
            content_type: "application/xml".to_owned(),
        }
    }
}

/// Whether `media_type` names XML: `application/xml`, `text/xml` or a
/// `+xml` structured syntax suffix (parameters allowed).
fn is_xml_media_type(media_type: &str) -> bool {
    let essence = media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/xml" || essence == "text/xml" || essence.ends_with("+xml")
}

/// Checks the payload looks like an XML document; the error says why not.
fn check_xml(payload: &[u8]) -> Result<(), String> {
    let payload = payload.strip_prefix(UTF8_BOM).unwrap_or(payload);
    let text =
        std::str::from_utf8(payload).map_err(|err| format!("payload is not UTF-8 XML: {err}"))?;
    let text = text.trim();
    if text.is_empty() {
        return Err("payload is empty, expected an XML document".to_owned());
    }
    if !text.starts_with('<') {
        let start: String = text.chars().take(20).collect();
        return Err(format!(
            "payload is not XML: it starts with {start:?} instead of `<`"
        ));
    }
    if !text.ends_with('>') {
        return Err("payload is not XML: it does not end with `>`".to_owned());
    }
    Ok(())
}

/// The `form-xml` plugin.
pub struct FormXml;

impl Plugin for FormXml {
    type Config = Config;
    // Replies are judged by the SDK's default rules, which the host applies
    // itself: no plugin instance per reply.
    const DEFAULT_CLASSIFY: bool = true;

    fn validate_config(config: &Config) -> Result<(), String> {
        if is_xml_media_type(&config.content_type) {
            Ok(())
        } else {
            Err(format!(
                "content_type {:?} is not an XML media type",
                config.content_type
            ))
        }
    }

    fn build(event: &Event, config: &Config) -> BuildOutcome {
        if let Err(reason) = check_xml(&event.payload) {
            return BuildOutcome::reject(reason);
        }
        BuildOutcome::Send(
            Request::new(config.method)
                .with_header("content-type", &config.content_type)
                .with_header("idempotency-key", &event.record_id)
                .with_body(event.payload.clone()),
        )
    }
}

repeater_plugin_sdk::export_plugin!(FormXml);

#[cfg(test)]
mod tests {
    use repeater_plugin_sdk::Verdict;
    use repeater_plugin_sdk::testing::{self, event, expect_reject, expect_send, response};

    use super::*;

    const FORM: &str = "<?xml version=\"1.0\"?>\n<data id=\"f1\"><name>Ada</name></data>\n";

    fn xml_event(payload: impl Into<Vec<u8>>) -> Event {
        event()
            .content_type("application/xml")
            .payload(payload)
            .record_id("rec-3")
            .build()
    }

    #[test]
    fn xml_is_forwarded_byte_for_byte() {
        let request = expect_send(testing::build::<FormXml>(&xml_event(FORM), "{}"));
        assert_eq!(request.method, Method::Post);
        assert_eq!(request.body, FORM.as_bytes());
        assert_eq!(request.header("content-type"), Some("application/xml"));
        assert_eq!(request.header("idempotency-key"), Some("rec-3"));
    }

    #[test]
    fn a_byte_order_mark_and_whitespace_are_allowed() {
        let mut payload = UTF8_BOM.to_vec();
        payload.extend_from_slice(b"  \n<a/>\n");
        let request = expect_send(testing::build::<FormXml>(&xml_event(payload.clone()), "{}"));
        assert_eq!(request.body, payload, "the body must not be rewritten");
    }

    #[test]
    fn payloads_that_are_not_xml_are_rejected_with_the_reason() {
        let reason = expect_reject(testing::build::<FormXml>(&xml_event(r#"{"a":1}"#), "{}"));
        assert!(reason.contains("starts with"), "{reason}");
        let reason = expect_reject(testing::build::<FormXml>(&xml_event("  "), "{}"));
        assert!(reason.contains("empty"), "{reason}");
        let reason = expect_reject(testing::build::<FormXml>(&xml_event("<a>unfinished"), "{}"));
        assert!(reason.contains("end"), "{reason}");
        let reason = expect_reject(testing::build::<FormXml>(
            &xml_event(vec![b'<', 0xff, b'>']),
            "{}",
        ));
        assert!(reason.contains("UTF-8"), "{reason}");
    }

    #[test]
    fn method_and_content_type_come_from_config() {
        let config = r#"{"method": "PUT", "content_type": "application/atom+xml"}"#;
        assert_eq!(testing::validate_config::<FormXml>(config), Ok(()));
        let request = expect_send(testing::build::<FormXml>(&xml_event(FORM), config));
        assert_eq!(request.method, Method::Put);
        assert_eq!(request.header("content-type"), Some("application/atom+xml"));
    }

    #[test]
    fn config_refuses_non_xml_content_types_and_unknown_keys() {
        let err = testing::validate_config::<FormXml>(r#"{"content_type": "application/json"}"#)
            .unwrap_err();
        assert!(err.contains("content_type"), "{err}");
        let err = testing::validate_config::<FormXml>(r#"{"verb": "PUT"}"#).unwrap_err();
        assert!(err.contains("verb"), "{err}");
    }

    #[test]
    fn replies_follow_the_default_rules() {
        let summary = testing::summary("http://127.0.0.1:9/forms");
        let classify = |reply| testing::classify::<FormXml>(&summary, &reply, "{}");
        assert_eq!(classify(response(201).build()), Verdict::Success);
        assert!(matches!(classify(response(503).build()), Verdict::Retry(_)));
        assert!(matches!(
            classify(response(415).build()),
            Verdict::Reject(_)
        ));
    }
}
