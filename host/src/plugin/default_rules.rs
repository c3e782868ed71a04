//! The default reply rules, applied by the host for plugins that declare
//! them (`classification.rules` answers `default-rules`), so no plugin
//! instance starts for their replies.
//!
//! The rules are the SDK's own `classify_at`, called natively: a plugin that
//! declares them is judged exactly as its `classify` export would judge it,
//! with no second copy of the rules to drift.

use std::time::SystemTime;

use repeater_plugin_sdk as sdk;

use super::bindings::types::{
    Header, Reply, Response, Retry, TransportError, TransportErrorKind, Verdict,
};

/// Judges `reply` by the SDK's default rules, at the current time.
pub(crate) fn judge_by_default_rules(reply: &Reply) -> Verdict {
    match sdk::classify_at(&to_sdk(reply), SystemTime::now()) {
        sdk::Verdict::Success => Verdict::Success,
        sdk::Verdict::Retry(retry) => Verdict::Retry(Retry {
            after_seconds: retry.after_seconds,
            reason: retry.reason,
        }),
        sdk::Verdict::Reject(reason) => Verdict::Reject(reason),
    }
}

/// The same reply in the SDK's types (generated from the same WIT).
fn to_sdk(reply: &Reply) -> sdk::Reply {
    match reply {
        Reply::Response(Response {
            status,
            headers,
            body_excerpt,
        }) => sdk::Reply::Response(sdk::Response {
            status: *status,
            headers: headers
                .iter()
                .map(|Header { name, value }| sdk::Header {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            body_excerpt: body_excerpt.clone(),
        }),
        Reply::TransportError(TransportError { kind, message }) => {
            sdk::Reply::TransportError(sdk::TransportError {
                kind: match kind {
                    TransportErrorKind::Dns => sdk::TransportErrorKind::Dns,
                    TransportErrorKind::Connect => sdk::TransportErrorKind::Connect,
                    TransportErrorKind::Timeout => sdk::TransportErrorKind::Timeout,
                    TransportErrorKind::Tls => sdk::TransportErrorKind::Tls,
                    TransportErrorKind::Protocol => sdk::TransportErrorKind::Protocol,
                    TransportErrorKind::Refused => sdk::TransportErrorKind::Refused,
                    TransportErrorKind::Other => sdk::TransportErrorKind::Other,
                },
                message: message.clone(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
        Reply::Response(Response {
            status,
            headers: headers
                .iter()
                .map(|(name, value)| Header {
                    name: (*name).to_owned(),
                    value: (*value).to_owned(),
                })
                .collect(),
            body_excerpt: body.as_bytes().to_vec(),
        })
    }

    #[test]
    fn statuses_are_judged_as_the_sdk_documents() {
        assert!(matches!(
            judge_by_default_rules(&response(204, &[], "")),
            Verdict::Success
        ));
        for status in [408, 409, 425, 429, 500, 503] {
            assert!(
                matches!(
                    judge_by_default_rules(&response(status, &[], "")),
                    Verdict::Retry(_)
                ),
                "{status}"
            );
        }
        match judge_by_default_rules(&response(422, &[], "missing field `name`")) {
            Verdict::Reject(reason) => {
                assert_eq!(reason, "HTTP 422: missing field `name`");
            }
            other => panic!("expected reject, got {other:?}"),
        }
    }

    #[test]
    fn retry_after_is_honoured_and_clamped() {
        let asked = |value: &str| match judge_by_default_rules(&response(
            503,
            &[("Retry-After", value)],
            "busy",
        )) {
            Verdict::Retry(retry) => retry.after_seconds,
            other => panic!("expected retry, got {other:?}"),
        };
        assert_eq!(asked("120"), Some(120));
        assert_eq!(asked("99999999"), Some(sdk::MAX_RETRY_AFTER_SECONDS));
        assert_eq!(asked("soon"), None);
    }

    #[test]
    fn transport_errors_retry_and_name_their_kind() {
        let reply = Reply::TransportError(TransportError {
            kind: TransportErrorKind::Connect,
            message: "connection refused".to_owned(),
        });
        match judge_by_default_rules(&reply) {
            Verdict::Retry(retry) => {
                assert_eq!(retry.after_seconds, None);
                assert!(retry.reason.contains("connect"), "{}", retry.reason);
                assert!(
                    retry.reason.contains("connection refused"),
                    "{}",
                    retry.reason
                );
            }
            other => panic!("expected retry, got {other:?}"),
        }
    }
}
