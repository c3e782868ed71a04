//! A native test harness: build events and replies, then run a plugin's
//! `validate-config`, `build` and `classify` exactly as the component's
//! exports do (config decoding included), without a wasm runtime.
//!
//! ```
//! use repeater_plugin_sdk::testing::{self, event, response};
//! use repeater_plugin_sdk::{BuildOutcome, Event, Method, Plugin, Request, Verdict};
//!
//! struct Forward;
//! impl Plugin for Forward {
//!     type Config = serde_json::Value;
//!     fn build(event: &Event, _: &Self::Config) -> BuildOutcome {
//!         BuildOutcome::Send(Request::new(Method::Post).with_body(event.payload.clone()))
//!     }
//! }
//!
//! let request = testing::expect_send(testing::build::<Forward>(
//!     &event().json(&serde_json::json!({"a": 1})).build(),
//!     "{}",
//! ));
//! assert_eq!(request.body, br#"{"a":1}"#);
//! let summary = testing::summary_of(&request, "http://127.0.0.1:8080/hook");
//! let verdict = testing::classify::<Forward>(&summary, &response(204).build(), "{}");
//! assert_eq!(verdict, Verdict::Success);
//! ```

use crate::plugin::{Plugin, run_build, run_classify, run_validate_config};
use crate::types::{
    BuildOutcome, Event, Header, Method, Reply, Request, RequestSummary, Response, TransportError,
    TransportErrorKind, Verdict,
};

/// Starts an event with plausible values: ids `evt-1`/`rec-1`, domain
/// `acme`, repeater `crm`, type `case.updated`, an empty JSON object as
/// payload, attempt 1.
pub fn event() -> EventBuilder {
    EventBuilder {
        event: Event {
            id: "evt-1".to_owned(),
            domain: "acme".to_owned(),
            repeater: "crm".to_owned(),
            event_type: "case.updated".to_owned(),
            content_type: "application/json".to_owned(),
            payload: b"{}".to_vec(),
            attempt: 1,
            registered_at: 1_700_000_000_000,
            ordering_key: None,
            record_id: "rec-1".to_owned(),
        },
    }
}

/// Builds an [`Event`] for a test; see [`event`].
#[derive(Debug, Clone)]
pub struct EventBuilder {
    event: Event,
}

impl EventBuilder {
    /// Sets the event id.
    pub fn id(mut self, id: &str) -> Self {
        self.event.id = id.to_owned();
        self
    }

    /// Sets the domain.
    pub fn domain(mut self, domain: &str) -> Self {
        self.event.domain = domain.to_owned();
        self
    }

    /// Sets the repeater name.
    pub fn repeater(mut self, repeater: &str) -> Self {
        self.event.repeater = repeater.to_owned();
        self
    }

    /// Sets the event type.
    pub fn event_type(mut self, event_type: &str) -> Self {
        self.event.event_type = event_type.to_owned();
        self
    }

    /// Sets the content type without touching the payload.
    pub fn content_type(mut self, content_type: &str) -> Self {
        self.event.content_type = content_type.to_owned();
        self
    }

    /// Sets the payload bytes without touching the content type.
    pub fn payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.event.payload = payload.into();
        self
    }

    /// Sets a JSON payload and the `application/json` content type.
    pub fn json(mut self, value: &serde_json::Value) -> Self {
        self.event.payload = value.to_string().into_bytes();
        self.event.content_type = "application/json".to_owned();
        self
    }

    /// Sets which attempt this is.
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.event.attempt = attempt;
        self
    }

    /// Sets the registration time, in milliseconds since the Unix epoch.
    pub fn registered_at(mut self, millis: i64) -> Self {
        self.event.registered_at = millis;
        self
    }

    /// Sets the ordering key.
    pub fn ordering_key(mut self, key: &str) -> Self {
        self.event.ordering_key = Some(key.to_owned());
        self
    }

    /// Sets the record id.
    pub fn record_id(mut self, record_id: &str) -> Self {
        self.event.record_id = record_id.to_owned();
        self
    }

    /// The finished event.
    pub fn build(self) -> Event {
        self.event
    }
}

/// Starts a response with `status`, no headers and an empty body.
pub fn response(status: u16) -> ResponseBuilder {
    ResponseBuilder {
        response: Response {
            status,
            headers: Vec::new(),
            body_excerpt: Vec::new(),
        },
    }
}

/// Builds a [`Reply::Response`] for a test; see [`response`].
#[derive(Debug, Clone)]
pub struct ResponseBuilder {
    response: Response,
}

impl ResponseBuilder {
    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.response.headers.push(Header {
            name: name.to_owned(),
            value: value.to_owned(),
        });
        self
    }

    /// Sets the body excerpt.
    pub fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.response.body_excerpt = body.as_ref().to_vec();
        self
    }

    /// The finished reply.
    pub fn build(self) -> Reply {
        Reply::Response(self.response)
    }
}

/// A reply saying no response came back.
pub fn transport_error(kind: TransportErrorKind, message: &str) -> Reply {
    Reply::TransportError(TransportError {
        kind,
        message: message.to_owned(),
    })
}

/// What the host would report to `classify` after sending `request` to
/// `url` (the repeater URL with the request's path and query applied).
pub fn summary_of(request: &Request, url: &str) -> RequestSummary {
    RequestSummary {
        method: request.method,
        url: url.to_owned(),
        headers: request.headers.clone(),
        body_size: request.body.len() as u64,
    }
}

/// A request summary for a plain `POST` to `url` with no headers or body.
pub fn summary(url: &str) -> RequestSummary {
    summary_of(&Request::new(Method::Post), url)
}

/// Runs `validate-config` for plugin `P` on a JSON config document.
pub fn validate_config<P: Plugin>(config: &str) -> Result<(), String> {
    run_validate_config::<P>(config)
}

/// Runs `build` for plugin `P` on an event and a JSON config document.
pub fn build<P: Plugin>(event: &Event, config: &str) -> BuildOutcome {
    run_build::<P>(event, config)
}

/// Runs `classify` for plugin `P`.
pub fn classify<P: Plugin>(request: &RequestSummary, reply: &Reply, config: &str) -> Verdict {
    run_classify::<P>(request, reply, config)
}

/// The request of a `send` outcome; panics with the outcome otherwise, so
/// a failing test shows what the plugin decided instead.
pub fn expect_send(outcome: BuildOutcome) -> Request {
    match outcome {
        BuildOutcome::Send(request) => request,
        other => panic!("expected the plugin to send a request, it decided {other:?}"),
    }
}

/// The reason of a `reject` outcome; panics with the outcome otherwise.
pub fn expect_reject(outcome: BuildOutcome) -> String {
    match outcome {
        BuildOutcome::Reject(reason) => reason,
        other => panic!("expected the plugin to reject the event, it decided {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin with a typed config, to prove the harness decodes configs
    /// the way the exports do.
    struct Strict;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct StrictConfig {
        #[serde(default)]
        path: Option<String>,
    }

    impl Plugin for Strict {
        type Config = StrictConfig;

        fn validate_config(config: &StrictConfig) -> Result<(), String> {
            match &config.path {
                Some(path) if path.contains("..") => Err(format!("path {path:?} has `..`")),
                _ => Ok(()),
            }
        }

        fn build(event: &Event, config: &StrictConfig) -> BuildOutcome {
            let mut request = Request::new(Method::Put).with_body(event.payload.clone());
            request.path = config.path.clone();
            BuildOutcome::Send(request)
        }
    }

    #[test]
    fn empty_and_null_configs_decode_as_an_empty_object() {
        assert_eq!(validate_config::<Strict>(""), Ok(()));
        assert_eq!(validate_config::<Strict>(" null "), Ok(()));
        assert_eq!(validate_config::<Strict>("{}"), Ok(()));
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = validate_config::<Strict>(r#"{"paht": "x"}"#).unwrap_err();
        assert!(err.contains("paht"), "{err}");
        let err = validate_config::<Strict>(r#"{"path": "../x"}"#).unwrap_err();
        assert!(err.starts_with("invalid plugin config"), "{err}");
        assert!(err.contains("../x"), "{err}");
    }

    #[test]
    fn build_with_an_undecodable_config_waits_instead_of_rejecting() {
        let outcome = build::<Strict>(&event().build(), "{not json");
        assert!(
            matches!(outcome, BuildOutcome::RetryLater(_)),
            "{outcome:?}"
        );
    }

    #[test]
    fn build_runs_with_the_decoded_config() {
        let request = expect_send(build::<Strict>(
            &event().payload("hello").build(),
            r#"{"path": "items/1"}"#,
        ));
        assert_eq!(request.method, Method::Put);
        assert_eq!(request.path.as_deref(), Some("items/1"));
        assert_eq!(request.body, b"hello");
    }

    #[test]
    fn classify_defaults_to_the_default_rules() {
        let target = summary("http://127.0.0.1:9/hook");
        assert_eq!(
            classify::<Strict>(&target, &response(201).build(), "{}"),
            Verdict::Success
        );
        assert!(matches!(
            classify::<Strict>(&target, &response(404).build(), "{}"),
            Verdict::Reject(_)
        ));
        assert!(matches!(
            classify::<Strict>(&target, &response(200).build(), "{oops"),
            Verdict::Retry(_)
        ));
    }

    /// A plugin that declares the default rules but overrides `classify`
    /// anyway: the declaration wins, as it does in the host.
    struct Declared;

    impl Plugin for Declared {
        type Config = serde_json::Value;
        const DEFAULT_CLASSIFY: bool = true;

        fn build(_event: &Event, _config: &serde_json::Value) -> BuildOutcome {
            BuildOutcome::Skip
        }

        fn classify(
            _request: &RequestSummary,
            _reply: &Reply,
            _config: &serde_json::Value,
        ) -> Verdict {
            Verdict::reject("never called")
        }
    }

    #[test]
    fn a_declared_default_is_judged_by_the_default_rules_whatever_classify_says() {
        let target = summary("http://127.0.0.1:9/hook");
        assert_eq!(
            classify::<Declared>(&target, &response(202).build(), "{}"),
            Verdict::Success
        );
        // The declared rules need no config, so a broken one changes nothing.
        assert_eq!(
            classify::<Declared>(&target, &response(202).build(), "{oops"),
            Verdict::Success
        );
        let throttled = response(429).header("Retry-After", "30").build();
        assert_eq!(
            classify::<Declared>(&target, &throttled, "{}"),
            crate::default_classify(&throttled)
        );
        assert_eq!(
            crate::plugin::rules::<Declared>(),
            crate::bindings::exports::repeater::plugin::classification::ReplyRules::DefaultRules
        );
        assert_eq!(
            crate::plugin::rules::<Strict>(),
            crate::bindings::exports::repeater::plugin::classification::ReplyRules::OwnRules
        );
    }

    #[test]
    fn summaries_report_what_was_built() {
        let request = Request::new(Method::Patch)
            .with_header("content-type", "text/plain")
            .with_body("12345");
        let summary = summary_of(&request, "http://127.0.0.1:9/x");
        assert_eq!(summary.method, Method::Patch);
        assert_eq!(summary.body_size, 5);
        assert_eq!(summary.header("Content-Type"), Some("text/plain"));
    }
}
