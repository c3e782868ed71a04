//! `{{name}}`: a repeaterd plugin. As written by `repeaterd plugin new` it
//! forwards each event's payload as a POST; change `build` to shape the
//! request your endpoint expects.
//!
//! Config (every key optional): `{"path": "hooks/orders"}`, a path appended
//! to the repeater's URL.
//!
//! - `build`: POST the payload byte for byte, with the event's content type
//!   and an `idempotency-key` header carrying the record id, so receivers
//!   can drop the duplicates an at-least-once delivery may send.
//! - replies are judged by the SDK's default rules, which the host applies
//!   itself: 2xx succeeds; 408, 409, 425, 429 and 5xx retry, honouring
//!   `Retry-After`; other statuses reject; transport errors retry.

use repeater_plugin_sdk::{BuildOutcome, Event, Method, Plugin, Request};
use serde::Deserialize;

/// The repeater's plugin config.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Appended to the repeater's URL.
    pub path: Option<String>,
}

/// The plugin.
pub struct Forward;

impl Plugin for Forward {
    type Config = Config;
    // `classify` keeps its default, so the host judges replies itself.
    const DEFAULT_CLASSIFY: bool = true;

    fn build(event: &Event, config: &Config) -> BuildOutcome {
        let mut request = Request::new(Method::Post)
            .with_header("content-type", &event.content_type)
            .with_header("idempotency-key", &event.record_id)
            .with_body(event.payload.clone());
        request.path = config.path.clone();
        BuildOutcome::Send(request)
    }
}

repeater_plugin_sdk::export_plugin!(Forward);

#[cfg(test)]
mod tests {
    use repeater_plugin_sdk::Verdict;
    use repeater_plugin_sdk::testing::{self, event, expect_send, response};

    use super::*;

    #[test]
    fn posts_the_payload_with_its_content_type_and_the_record_id() {
        let event = event()
            .content_type("text/plain")
            .payload("hello")
            .record_id("rec-9")
            .build();
        let request = expect_send(testing::build::<Forward>(&event, r#"{"path": "hooks/a"}"#));
        assert_eq!(request.method, Method::Post);
        assert_eq!(request.path.as_deref(), Some("hooks/a"));
        assert_eq!(request.header("content-type"), Some("text/plain"));
        assert_eq!(request.header("idempotency-key"), Some("rec-9"));
        assert_eq!(request.body, b"hello");
    }

    #[test]
    fn an_unknown_config_key_is_refused_by_name() {
        assert_eq!(testing::validate_config::<Forward>("{}"), Ok(()));
        let err = testing::validate_config::<Forward>(r#"{"pth": "x"}"#).unwrap_err();
        assert!(err.contains("pth"), "{err}");
    }

    #[test]
    fn replies_follow_the_default_rules() {
        let summary = testing::summary("http://127.0.0.1:9/hooks");
        let classify = |reply| testing::classify::<Forward>(&summary, &reply, "{}");
        assert_eq!(classify(response(204).build()), Verdict::Success);
        assert_eq!(
            classify(response(429).header("retry-after", "7").build()),
            Verdict::retry_after(7, "HTTP 429")
        );
        assert!(matches!(classify(response(400).build()), Verdict::Reject(_)));
    }
}
