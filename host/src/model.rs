//! The product's nouns as plain data: domains, repeaters, events, records and
//! attempts, and what the scheduling policy reads and decides about them (a
//! ready repeater, a claimed record, a record's outcome, a repeater's health),
//! which the store then reads and writes. Everything here is shared by the
//! config loader, the store, the scheduler, the dispatcher and the API;
//! nothing here does I/O.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch. Every stored time uses this unit so the
/// SQLite and PostgreSQL schemas stay identical and comparisons stay cheap.
pub type Millis = i64;

/// The current wall-clock time in [`Millis`].
pub fn now_millis() -> Millis {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    since.as_millis() as Millis
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {what} {value:?}: expected 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit"
)]
pub struct InvalidName {
    /// What kind of name it was ("domain", "repeater", "plugin").
    pub what: &'static str,
    /// The refused value.
    pub value: String,
}

/// Checks a slug of the form `[a-z0-9][a-z0-9-]{0,62}`, the shape of domain,
/// repeater and plugin names.
pub fn check_slug(what: &'static str, value: &str) -> Result<(), InvalidName> {
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if ok {
        Ok(())
    } else {
        Err(InvalidName {
            what,
            value: value.to_owned(),
        })
    }
}

/// Where a record is in its life. The numeric values are stored in the
/// database and must never change.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[schema(
    description = "Where a record is in its life: `pending` (never tried), `retrying` (tried, \
    failed retryably, waits for its `next_attempt_at`), `succeeded`, `rejected` (the payload is \
    invalid), `empty` (nothing to send) or `cancelled` (given up, or cancelled by a person). \
    All but `pending` and `retrying` are final until a resend."
)]
#[repr(i16)]
pub enum RecordState {
    /// Never tried.
    Pending = 0,
    /// Tried, failed retryably; waits for its `next_attempt_at`.
    Retrying = 1,
    /// The plugin classified a response as success.
    Succeeded = 2,
    /// The payload is invalid: retrying cannot help.
    Rejected = 3,
    /// The plugin said there is nothing to send.
    Empty = 4,
    /// Given up: attempts or age exhausted, repeater deleted, or cancelled by a person.
    Cancelled = 5,
}

impl RecordState {
    /// Every state, in stored order.
    pub const ALL: [RecordState; 6] = [
        RecordState::Pending,
        RecordState::Retrying,
        RecordState::Succeeded,
        RecordState::Rejected,
        RecordState::Empty,
        RecordState::Cancelled,
    ];

    /// True for states a record never leaves by itself.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RecordState::Pending | RecordState::Retrying)
    }

    /// The stored number.
    pub fn as_i16(self) -> i16 {
        self as i16
    }

    /// The state for a stored number, if it is one.
    pub fn from_i16(value: i16) -> Option<RecordState> {
        RecordState::ALL.get(usize::try_from(value).ok()?).copied()
    }

    /// The lowercase name used in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordState::Pending => "pending",
            RecordState::Retrying => "retrying",
            RecordState::Succeeded => "succeeded",
            RecordState::Rejected => "rejected",
            RecordState::Empty => "empty",
            RecordState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for RecordState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RecordState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RecordState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                format!("unknown record state {s:?}: expected pending, retrying, succeeded, rejected, empty or cancelled")
            })
    }
}

/// How one attempt ended. Stored as a number; values must never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(
    description = "How one attempt ended: `success`, `retry` (failed retryably: a reply, a \
    transport or plugin error, or retry-later), `reject` (the payload is invalid) or `skip` \
    (nothing to send)."
)]
#[repr(i16)]
pub enum AttemptOutcome {
    /// The plugin classified the response as success.
    Success = 0,
    /// Failed retryably (response, transport error, plugin error or retry-later).
    Retry = 1,
    /// The plugin rejected the payload.
    Reject = 2,
    /// The plugin said there was nothing to send.
    Skip = 3,
}

impl AttemptOutcome {
    /// The stored number.
    pub fn as_i16(self) -> i16 {
        self as i16
    }

    /// The outcome for a stored number, if it is one.
    pub fn from_i16(value: i16) -> Option<AttemptOutcome> {
        match value {
            0 => Some(AttemptOutcome::Success),
            1 => Some(AttemptOutcome::Retry),
            2 => Some(AttemptOutcome::Reject),
            3 => Some(AttemptOutcome::Skip),
            _ => None,
        }
    }

    /// The lowercase name used in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Success => "success",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Reject => "reject",
            AttemptOutcome::Skip => "skip",
        }
    }
}

/// How records of one repeater are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Any order, full concurrency.
    #[default]
    None,
    /// One at a time in registration order; a retry holds the line.
    Fifo,
    /// Ordered among records with the same ordering key.
    Key,
}

/// Authentication the host adds to a repeater's requests after `build`.
/// Secrets are named by environment variable, never written inline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthSpec {
    /// HTTP Basic.
    Basic {
        /// The user name.
        username: String,
        /// Environment variable holding the password.
        password_env: String,
    },
    /// A static bearer token.
    Bearer {
        /// Environment variable holding the token.
        token_env: String,
    },
    /// OAuth2 client credentials; the token is cached until it expires.
    Oauth2 {
        /// The token endpoint.
        token_url: String,
        /// The client id.
        client_id: String,
        /// Environment variable holding the client secret.
        client_secret_env: String,
        /// Space-separated scopes, if any.
        #[serde(default)]
        scope: Option<String>,
    },
}

/// Standard Webhooks signing of a repeater's requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SigningSpec {
    /// Environment variables holding the signing secrets (`whsec_...` or raw
    /// base64). The request is signed with every one, so receivers can rotate.
    pub secret_envs: Vec<String>,
}

/// Per-repeater settings that override `[dispatch]` defaults. A setting
/// left out (or `null`) takes the global default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepeaterLimits {
    /// Most requests in flight at once for this repeater (the AIMD ceiling).
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Steady request rate, per second.
    #[serde(default)]
    pub rate_per_second: Option<f64>,
    /// How many requests may go at once above the steady rate.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Request timeout, milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Attempts before a record is cancelled.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Age (since registration or resend) after which a record is cancelled, seconds.
    #[serde(default)]
    pub max_age_seconds: Option<u64>,
    /// Delays between attempts, seconds; the last one repeats.
    #[serde(default)]
    pub retry_schedule_seconds: Option<Vec<u64>>,
    /// First repeater backoff step, seconds.
    #[serde(default)]
    pub backoff_min_seconds: Option<u64>,
    /// Largest repeater backoff step, seconds.
    #[serde(default)]
    pub backoff_max_seconds: Option<u64>,
    /// Bytes of each response kept with the attempt.
    #[serde(default)]
    pub response_excerpt_bytes: Option<usize>,
}

/// A repeater as configured: a destination inside a domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepeaterSpec {
    /// The domain (tenant) the repeater belongs to.
    pub domain: String,
    /// The repeater's name, unique within its domain.
    pub name: String,
    /// Base URL; the plugin may append a path and query, never change the host.
    pub url: String,
    /// Plugin name (built-in or user plugin).
    pub plugin: String,
    /// Optional sha256 pin (hex) of the plugin version to use.
    #[serde(default)]
    pub plugin_sha256: Option<String>,
    /// Plugin config, passed to the plugin as JSON.
    #[serde(default = "empty_object")]
    pub plugin_config: serde_json::Value,
    /// Event types this repeater subscribes to; empty means every type.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Record ordering.
    #[serde(default)]
    pub ordering: Ordering,
    /// Overrides of the global dispatch defaults.
    #[serde(default)]
    pub limits: RepeaterLimits,
    /// Authentication the host adds.
    #[serde(default)]
    pub auth: Option<AuthSpec>,
    /// Standard Webhooks signing.
    #[serde(default)]
    pub signing: Option<SigningSpec>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl RepeaterSpec {
    /// True when the repeater takes events of this type.
    pub fn subscribes_to(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == "*" || t == event_type)
    }
}

/// An event as posted by a producer, before it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The producer's idempotency key; the host makes one when absent.
    pub id: Option<String>,
    /// The event's type.
    pub event_type: String,
    /// Media type of `payload`.
    pub content_type: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Ordering key, if any.
    pub ordering_key: Option<String>,
}

/// A repeater with records due now, as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyRepeater {
    /// Internal id.
    pub id: i64,
    /// Its domain.
    pub domain: String,
    /// Its name.
    pub name: String,
}

/// A due record with the event it carries, ready for the plugin.
#[derive(Debug, Clone)]
pub struct ClaimedRecord {
    /// Record id.
    pub id: i64,
    /// Attempts made so far since registration or resend.
    pub attempts: u32,
    /// When the record's age started counting (registration or resend).
    pub age_origin: Millis,
    /// The event's id (producer key or host-made).
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// Payload media type.
    pub content_type: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Ordering key, if any.
    pub ordering_key: Option<String>,
    /// When the event was registered.
    pub registered_at: Millis,
}

/// One finished attempt of a record, and where it leaves the record.
#[derive(Debug, Clone)]
pub struct RecordOutcome {
    /// The record.
    pub record_id: i64,
    /// The record's new state.
    pub state: RecordState,
    /// When to try again (for `retrying`).
    pub next_attempt_at: Option<Millis>,
    /// Whether this outcome counts as an attempt (a skipped turn does not).
    pub attempt: Option<AttemptDraft>,
}

/// An attempt to be written.
#[derive(Debug, Clone)]
pub struct AttemptDraft {
    /// When the attempt started.
    pub started_at: Millis,
    /// How long it took.
    pub duration_ms: i64,
    /// HTTP status, when a response came back.
    pub status: Option<u16>,
    /// Transport, plugin or policy error, when there was one.
    pub error: Option<String>,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// The start of the response body (at most the configured excerpt size).
    pub response_excerpt: Option<Vec<u8>>,
    /// The sha256 (hex) of the plugin version that built the request.
    pub plugin_sha256: Option<String>,
    /// What was sent, redacted, as the JSON text of a [`SentRequest`]
    /// (serialized by the lane, so the store's writer only copies bytes).
    pub request: Option<String>,
}

/// What an attempt sent, kept for people reading a record's history:
/// method, final URL, headers as sent (credentials and signatures
/// redacted before anything is stored) and the body's size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SentRequest {
    /// HTTP method.
    pub method: String,
    /// The URL the request went to; a password or secret-looking query
    /// value in it is redacted.
    pub url: String,
    /// Headers in the order sent; secret values are replaced by
    /// `redacted`.
    pub headers: Vec<SentHeader>,
    /// Size of the body in bytes.
    pub body_bytes: u64,
}

/// One header of a [`SentRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SentHeader {
    /// Header name, lower case.
    pub name: String,
    /// Its value, or `redacted`.
    pub value: String,
}

/// The repeater's health after a batch. `None` in the store's
/// `finish_batch` leaves it untouched (outcomes that blame the payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepeaterHealth {
    /// Backed off until then, or not backed off.
    pub backoff_until: Option<Millis>,
    /// Consecutive failed batches.
    pub backoff_step: u32,
    /// Last failure seen.
    pub last_error: Option<String>,
    /// Last success, if this batch had one.
    pub last_success_at: Option<Millis>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_the_domain_name_rule() {
        assert!(check_slug("domain", "acme").is_ok());
        assert!(check_slug("domain", "0-a-b").is_ok());
        assert!(check_slug("domain", &"a".repeat(63)).is_ok());
        for bad in ["", "-a", "A", "a_b", "a.b", "é", &"a".repeat(64)] {
            let err = check_slug("domain", bad).unwrap_err();
            assert_eq!(err.value, bad);
        }
    }

    #[test]
    fn record_states_round_trip_through_storage_and_text() {
        for state in RecordState::ALL {
            assert_eq!(RecordState::from_i16(state.as_i16()), Some(state));
            assert_eq!(state.as_str().parse::<RecordState>(), Ok(state));
        }
        assert_eq!(RecordState::from_i16(6), None);
        assert!("done".parse::<RecordState>().is_err());
        assert!(!RecordState::Retrying.is_terminal());
        assert!(RecordState::Empty.is_terminal());
    }

    #[test]
    fn empty_event_type_filter_takes_everything() {
        let mut spec: RepeaterSpec = serde_json::from_value(serde_json::json!({
            "domain": "d", "name": "r", "url": "http://127.0.0.1:1/", "plugin": "json-forward"
        }))
        .unwrap();
        assert!(spec.subscribes_to("case.created"));
        spec.event_types = vec!["case.closed".into()];
        assert!(!spec.subscribes_to("case.created"));
        assert!(spec.subscribes_to("case.closed"));
    }
}
