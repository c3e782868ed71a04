//! The default judgement of a reply, used by plugins that do not override
//! `classify`, and the `Retry-After` parsing it relies on.
//!
//! - 2xx: success.
//! - 408, 409, 425, 429 and 5xx: retry, honouring `Retry-After`.
//! - any other status (other 4xx, 1xx, 3xx): reject; the request as built
//!   will not succeed by being sent again.
//! - transport errors (including the host's SSRF refusal): retry; they say
//!   nothing about the payload, and a fixed destination lets it through.

use std::time::SystemTime;

use crate::types::{Header, Reply, Verdict};

/// The longest delay a `Retry-After` header can ask for, in seconds (6 h).
/// A larger value is clamped: an endpoint must not park a record for days
/// by mistake, and the host applies its own caps on top.
pub const MAX_RETRY_AFTER_SECONDS: u32 = 6 * 60 * 60;

/// How much of a response body a reject or retry reason quotes.
const REASON_EXCERPT_CHARS: usize = 200;

/// Judges `reply` by the rules in this module's documentation, reading the
/// clock for `Retry-After` HTTP-dates.
pub fn default_classify(reply: &Reply) -> Verdict {
    classify_at(reply, SystemTime::now())
}

/// [`default_classify`] with the current time given, for tests and for
/// plugins that want the rules with a clock of their own.
pub fn classify_at(reply: &Reply, now: SystemTime) -> Verdict {
    let response = match reply {
        Reply::Response(response) => response,
        Reply::TransportError(error) => {
            return Verdict::retry(format!(
                "transport error ({}): {}",
                error.kind.as_str(),
                error.message
            ));
        }
    };
    let status = response.status;
    let reason = status_reason(status, &response.body_text());
    match status {
        200..=299 => Verdict::Success,
        408 | 409 | 425 | 429 | 500..=599 => match retry_after(&response.headers, now) {
            Some(seconds) => Verdict::retry_after(seconds, reason),
            None => Verdict::retry(reason),
        },
        _ => Verdict::reject(reason),
    }
}

/// A reason naming the status and quoting the start of the body.
fn status_reason(status: u16, body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return format!("HTTP {status}");
    }
    let mut excerpt: String = body.chars().take(REASON_EXCERPT_CHARS).collect();
    if excerpt.len() < body.len() {
        excerpt.push('…');
    }
    format!("HTTP {status}: {excerpt}")
}

/// The delay asked for by the first `Retry-After` header in `headers`, in
/// seconds from `now`, clamped to [`MAX_RETRY_AFTER_SECONDS`]. `None` when
/// there is no such header or its value is neither form.
pub fn retry_after(headers: &[Header], now: SystemTime) -> Option<u32> {
    let header = headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("retry-after"))?;
    parse_retry_after(&header.value, now)
}

/// Parses a `Retry-After` value: delta-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, also the obsolete RFC 850 and asctime
/// forms). A date in the past means "now" (0). The result is clamped to
/// [`MAX_RETRY_AFTER_SECONDS`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<u32> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for u64 is still "a very long time": clamp it.
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(clamp_seconds(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    let seconds = match when.duration_since(now) {
        // Round up so "at 12:00:00.5" is not retried at 12:00:00.
        Ok(wait) => wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        Err(_) => 0,
    };
    Some(clamp_seconds(seconds))
}

fn clamp_seconds(seconds: u64) -> u32 {
    u32::try_from(seconds.min(u64::from(MAX_RETRY_AFTER_SECONDS)))
        .unwrap_or(MAX_RETRY_AFTER_SECONDS)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing::{response, transport_error};
    use crate::types::{Retry, TransportErrorKind};

    /// 2015-10-21T07:28:00Z, the date used in RFC 9110's examples.
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480)
    }

    fn retry_seconds(verdict: &Verdict) -> Option<u32> {
        match verdict {
            Verdict::Retry(Retry { after_seconds, .. }) => *after_seconds,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn every_2xx_status_is_success() {
        for status in [200, 201, 202, 204, 299] {
            assert_eq!(
                classify_at(&response(status).build(), now()),
                Verdict::Success
            );
        }
    }

    #[test]
    fn transient_statuses_retry() {
        for status in [408, 409, 425, 429, 500, 502, 503, 504, 599] {
            let verdict = classify_at(&response(status).build(), now());
            assert_eq!(retry_seconds(&verdict), None, "status {status}");
        }
    }

    #[test]
    fn other_statuses_reject_and_quote_the_body() {
        for status in [100, 301, 304, 400, 401, 403, 404, 410, 413, 422] {
            let verdict = classify_at(&response(status).body("no such field: x").build(), now());
            match verdict {
                Verdict::Reject(reason) => {
                    assert!(reason.contains(&status.to_string()), "{reason}");
                    assert!(reason.contains("no such field: x"), "{reason}");
                }
                other => panic!("status {status}: expected reject, got {other:?}"),
            }
        }
    }

    #[test]
    fn long_bodies_are_cut_in_reasons() {
        let body = "x".repeat(5000);
        let Verdict::Reject(reason) = classify_at(&response(400).body(&body).build(), now()) else {
            panic!("400 must reject");
        };
        assert!(reason.len() < 300, "reason is {} bytes", reason.len());
        assert!(reason.ends_with('…'));
    }

    #[test]
    fn transport_errors_retry_and_name_their_kind() {
        let reply = transport_error(TransportErrorKind::Timeout, "no answer in 30 s");
        let verdict = classify_at(&reply, now());
        match verdict {
            Verdict::Retry(retry) => {
                assert_eq!(retry.after_seconds, None);
                assert!(retry.reason.contains("timeout"), "{}", retry.reason);
                assert!(
                    retry.reason.contains("no answer in 30 s"),
                    "{}",
                    retry.reason
                );
            }
            other => panic!("expected retry, got {other:?}"),
        }
    }

    #[test]
    fn retry_after_delta_seconds_is_honoured() {
        let reply = response(429).header("Retry-After", "120").build();
        assert_eq!(retry_seconds(&classify_at(&reply, now())), Some(120));
        let reply = response(503).header("retry-after", " 0 ").build();
        assert_eq!(retry_seconds(&classify_at(&reply, now())), Some(0));
    }

    #[test]
    fn retry_after_http_date_becomes_a_delay_from_now() {
        let reply = response(503)
            .header("Retry-After", "Wed, 21 Oct 2015 07:30:00 GMT")
            .build();
        assert_eq!(retry_seconds(&classify_at(&reply, now())), Some(120));
    }

    #[test]
    fn retry_after_obsolete_date_forms_parse() {
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now()),
            Some(60)
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:28:30 2015", now()),
            Some(30)
        );
    }

    #[test]
    fn retry_after_in_the_past_means_now() {
        assert_eq!(
            parse_retry_after("Tue, 20 Oct 2015 07:28:00 GMT", now()),
            Some(0)
        );
    }

    #[test]
    fn retry_after_is_clamped() {
        assert_eq!(
            parse_retry_after("999999999", now()),
            Some(MAX_RETRY_AFTER_SECONDS)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999999", now()),
            Some(MAX_RETRY_AFTER_SECONDS)
        );
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 2100 23:59:59 GMT", now()),
            Some(MAX_RETRY_AFTER_SECONDS)
        );
    }

    #[test]
    fn malformed_retry_after_is_ignored() {
        for value in [
            "",
            "soon",
            "-5",
            "1.5",
            "12 s",
            "Wed, 99 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(parse_retry_after(value, now()), None, "value {value:?}");
        }
        let reply = response(503).header("Retry-After", "soon").build();
        assert_eq!(retry_seconds(&classify_at(&reply, now())), None);
    }

    #[test]
    fn retry_after_on_a_rejected_status_does_not_make_it_retry() {
        let reply = response(400).header("Retry-After", "10").build();
        assert!(matches!(classify_at(&reply, now()), Verdict::Reject(_)));
    }
}
