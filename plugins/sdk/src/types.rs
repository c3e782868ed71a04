//! The typed shapes a plugin works with: events, requests, replies and
//! verdicts. They are the types generated from the WIT contract, with
//! constructors and accessors that make plugin code short.

use serde::de::DeserializeOwned;

pub use crate::bindings::repeater::plugin::types::{
    BuildOutcome, Event, Header, Method, Reply, Request, RequestSummary, Response, Retry,
    TransportError, TransportErrorKind, Verdict,
};

/// Finds the first header called `name`, compared case-insensitively.
fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case(name))
        .map(|header| header.value.as_str())
}

/// Whether `media_type` (a `Content-Type` value, parameters allowed) names
/// JSON: `application/json` or any `+json` structured syntax suffix.
pub fn is_json_media_type(media_type: &str) -> bool {
    let essence = media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Checks that a header is safe to put on the wire: the name is an HTTP
/// token and the value has no control characters (no header injection).
/// The error names the header.
pub fn validate_header(name: &str, value: &str) -> Result<(), String> {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(is_token_char) {
        return Err(format!("header name {name:?} is not a valid HTTP token"));
    }
    if value
        .chars()
        .any(|c| (c.is_control() && c != '\t') || c == '\u{7f}')
    {
        return Err(format!(
            "header {name:?} has a control character in its value"
        ));
    }
    Ok(())
}

impl Event {
    /// The payload as UTF-8 text, or an error saying it is not.
    pub fn payload_text(&self) -> Result<&str, String> {
        std::str::from_utf8(&self.payload)
            .map_err(|err| format!("payload is not UTF-8 text: {err}"))
    }

    /// Decodes the JSON payload into `T`; the error says what did not fit.
    pub fn payload_json<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.payload)
            .map_err(|err| format!("payload is not the expected JSON: {err}"))
    }

    /// Whether the producer labelled the payload as JSON.
    pub fn is_json(&self) -> bool {
        is_json_media_type(&self.content_type)
    }

    /// `registered-at` as an RFC 3339 UTC timestamp with milliseconds,
    /// e.g. `2026-11-23T11:24:03.123Z`.
    pub fn registered_at_rfc3339(&self) -> String {
        chrono::DateTime::from_timestamp_millis(self.registered_at)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }
}

impl Method {
    /// Parses an HTTP method name, case-insensitively.
    pub fn parse(name: &str) -> Option<Method> {
        const ALL: [Method; 5] = [
            Method::Get,
            Method::Post,
            Method::Put,
            Method::Patch,
            Method::Delete,
        ];
        ALL.into_iter()
            .find(|method| method.as_str().eq_ignore_ascii_case(name))
    }

    /// The method's name as sent on the wire, e.g. `POST`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// Plugin configs name methods as strings: `"POST"`, `"put"`, ...
impl<'de> serde::Deserialize<'de> for Method {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Method::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown HTTP method {name:?}, expected one of GET, POST, PUT, PATCH, DELETE"
            ))
        })
    }
}

impl serde::Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl Request {
    /// A request with no path suffix, query, headers or body.
    pub fn new(method: Method) -> Request {
        Request {
            method,
            path: None,
            query: None,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Appends a header (an existing one of the same name is kept).
    pub fn with_header(mut self, name: &str, value: &str) -> Request {
        self.headers.push(Header {
            name: name.to_owned(),
            value: value.to_owned(),
        });
        self
    }

    /// Sets the path appended to the repeater URL's path.
    pub fn with_path(mut self, path: impl Into<String>) -> Request {
        self.path = Some(path.into());
        self
    }

    /// Sets the query string (without the leading `?`).
    pub fn with_query(mut self, query: impl Into<String>) -> Request {
        self.query = Some(query.into());
        self
    }

    /// Sets the body bytes.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// The first header called `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

impl RequestSummary {
    /// The first header called `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

impl Response {
    /// The first header called `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body excerpt as text, with invalid UTF-8 replaced.
    pub fn body_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body_excerpt)
    }
}

impl Reply {
    /// The response status, or `None` for a transport error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Reply::Response(response) => Some(response.status),
            Reply::TransportError(_) => None,
        }
    }
}

impl TransportErrorKind {
    /// A short lowercase name for messages, e.g. `timeout`.
    pub fn as_str(&self) -> &'static str {
        match self {
            TransportErrorKind::Dns => "dns",
            TransportErrorKind::Connect => "connect",
            TransportErrorKind::Timeout => "timeout",
            TransportErrorKind::Tls => "tls",
            TransportErrorKind::Protocol => "protocol",
            TransportErrorKind::Refused => "refused",
            TransportErrorKind::Other => "other",
        }
    }
}

impl Verdict {
    /// Retry with no particular delay (the host's schedule decides).
    pub fn retry(reason: impl Into<String>) -> Verdict {
        Verdict::Retry(Retry {
            after_seconds: None,
            reason: reason.into(),
        })
    }

    /// Retry no sooner than `seconds` from now.
    pub fn retry_after(seconds: u32, reason: impl Into<String>) -> Verdict {
        Verdict::Retry(Retry {
            after_seconds: Some(seconds),
            reason: reason.into(),
        })
    }

    /// The payload can never succeed: the record ends `rejected`.
    pub fn reject(reason: impl Into<String>) -> Verdict {
        Verdict::Reject(reason.into())
    }
}

impl BuildOutcome {
    /// The event can never be sent: the record ends `rejected`.
    pub fn reject(reason: impl Into<String>) -> BuildOutcome {
        BuildOutcome::Reject(reason.into())
    }

    /// Try again later, e.g. while a dependency is not ready.
    pub fn retry_later(reason: impl Into<String>) -> BuildOutcome {
        BuildOutcome::RetryLater(reason.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types_include_structured_suffixes_and_parameters() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("Application/JSON; charset=utf-8"));
        assert!(is_json_media_type("application/fhir+json"));
        assert!(!is_json_media_type("text/plain"));
        assert!(!is_json_media_type("application/xml"));
        assert!(!is_json_media_type("text/json+xml"));
    }

    #[test]
    fn header_validation_refuses_injection_and_bad_names() {
        assert!(validate_header("x-source", "crm").is_ok());
        let err = validate_header("x-source", "a\r\nset-cookie: x").unwrap_err();
        assert!(err.contains("x-source"), "{err}");
        let err = validate_header("bad name", "v").unwrap_err();
        assert!(err.contains("bad name"), "{err}");
        assert!(validate_header("", "v").is_err());
    }

    #[test]
    fn methods_parse_case_insensitively_from_config() {
        assert_eq!(Method::parse("put"), Some(Method::Put));
        assert_eq!(Method::parse("TRACE"), None);
        let method: Method = serde_json::from_str("\"Patch\"").unwrap();
        assert_eq!(method, Method::Patch);
        let err = serde_json::from_str::<Method>("\"TRACE\"").unwrap_err();
        assert!(err.to_string().contains("TRACE"), "{err}");
    }

    #[test]
    fn headers_are_found_case_insensitively() {
        let request = Request::new(Method::Post).with_header("Content-Type", "application/json");
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("accept"), None);
    }

    #[test]
    fn registered_at_renders_as_rfc3339_utc() {
        let event = crate::testing::event()
            .registered_at(1_700_000_000_123)
            .build();
        assert_eq!(event.registered_at_rfc3339(), "2023-11-14T22:13:20.123Z");
    }
}
