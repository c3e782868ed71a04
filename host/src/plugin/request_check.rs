//! The host's checks on a request a plugin built, before anything is sent:
//! size limits, HTTP-valid header names and values, no headers the host
//! owns, and a path and query that cannot escape the repeater's URL.

use super::bindings::types::{BuildOutcome, Request};
use super::error::PluginError;
use super::limits::PluginLimits;

/// Longest path plus query a plugin may add to the repeater's URL.
const MAX_PATH_AND_QUERY: usize = 8 << 10;

/// Headers the host sets itself (framing, routing, connection handling); a
/// plugin setting them could smuggle requests or redirect them.
const HOST_OWNED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Checks a `build` outcome; only `send` carries anything to check.
pub(crate) fn check_build_outcome(
    plugin: &str,
    limits: &PluginLimits,
    outcome: &BuildOutcome,
) -> Result<(), PluginError> {
    match outcome {
        BuildOutcome::Send(request) => check_request(plugin, limits, request),
        BuildOutcome::Skip | BuildOutcome::Reject(_) | BuildOutcome::RetryLater(_) => Ok(()),
    }
}

fn check_request(
    plugin: &str,
    limits: &PluginLimits,
    request: &Request,
) -> Result<(), PluginError> {
    let too_large = |what, size, limit| PluginError::OutputTooLarge {
        plugin: plugin.to_owned(),
        what,
        size,
        limit,
    };
    let invalid = |message: String| PluginError::InvalidRequest {
        plugin: plugin.to_owned(),
        message,
    };
    if request.body.len() > limits.max_body_bytes {
        return Err(too_large(
            "request body",
            request.body.len(),
            limits.max_body_bytes,
        ));
    }
    if request.headers.len() > limits.max_header_count {
        return Err(too_large(
            "header count",
            request.headers.len(),
            limits.max_header_count,
        ));
    }
    let header_bytes: usize = request
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(too_large("headers", header_bytes, limits.max_header_bytes));
    }
    for header in &request.headers {
        let name = http::HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| {
            invalid(format!(
                "header name {:?} is not a valid HTTP token",
                header.name
            ))
        })?;
        if HOST_OWNED_HEADERS.contains(&name.as_str()) {
            return Err(invalid(format!(
                "header {name} is set by the host, not by plugins"
            )));
        }
        http::HeaderValue::from_str(&header.value).map_err(|_| {
            invalid(format!(
                "value of header {name} has characters not allowed in HTTP (control characters or line breaks)"
            ))
        })?;
    }
    let path = request.path.as_deref().unwrap_or("");
    let query = request.query.as_deref().unwrap_or("");
    if path.len() + query.len() > MAX_PATH_AND_QUERY {
        return Err(too_large(
            "path and query",
            path.len() + query.len(),
            MAX_PATH_AND_QUERY,
        ));
    }
    check_path(path).map_err(|why| invalid(format!("path {path:?} {why}")))?;
    check_query(query).map_err(|why| invalid(format!("query {query:?} {why}")))?;
    Ok(())
}

/// Characters allowed unescaped in a path segment (RFC 3986 `pchar` minus `%`).
fn is_pchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte)
}

/// Checks that every `%` starts a two-digit hex escape.
fn check_escapes(text: &str) -> Result<(), &'static str> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or("ends inside a %-escape")?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err("has a % not followed by two hex digits");
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), &'static str> {
    if let Some(byte) = path
        .bytes()
        .find(|&b| !(is_pchar(b) || b == b'/' || b == b'%'))
    {
        return Err(if byte == b'?' || byte == b'#' {
            "contains ? or #; put the query in `query`"
        } else {
            "contains a character that must be %-escaped"
        });
    }
    check_escapes(path)?;
    for segment in path.split('/') {
        // `%2e%2e` is `..` to most servers, so it is refused as well.
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        if decoded == ".." {
            return Err("has a .. segment");
        }
    }
    Ok(())
}

fn check_query(query: &str) -> Result<(), &'static str> {
    if query
        .bytes()
        .any(|b| !(is_pchar(b) || b == b'/' || b == b'?' || b == b'%'))
    {
        return Err("contains a character that must be %-escaped (or a #)");
    }
    check_escapes(query)
}

#[cfg(test)]
mod tests {
    use super::super::bindings::types::{Header, Method};
    use super::*;

    fn request(path: Option<&str>, headers: &[(&str, &str)], body: usize) -> BuildOutcome {
        BuildOutcome::Send(Request {
            method: Method::Post,
            path: path.map(str::to_owned),
            query: Some("a=1&b=%20x".to_owned()),
            headers: headers
                .iter()
                .map(|(n, v)| Header {
                    name: (*n).to_owned(),
                    value: (*v).to_owned(),
                })
                .collect(),
            body: vec![b'x'; body],
        })
    }

    fn check(outcome: &BuildOutcome) -> Result<(), PluginError> {
        let limits = PluginLimits {
            max_body_bytes: 100,
            max_header_count: 2,
            max_header_bytes: 40,
            ..PluginLimits::default()
        };
        check_build_outcome("p", &limits, outcome)
    }

    #[test]
    fn a_plain_request_passes() {
        let ok = request(
            Some("/Patient/123"),
            &[("content-type", "application/json")],
            100,
        );
        check(&ok).unwrap();
        check(&BuildOutcome::Skip).unwrap();
    }

    #[test]
    fn sizes_over_the_limits_are_named() {
        let cases = [
            (request(None, &[], 101), "request body"),
            (
                request(None, &[("a", "1"), ("b", "2"), ("c", "3")], 0),
                "header count",
            ),
            (request(None, &[("x-long", &"v".repeat(40))], 0), "headers"),
        ];
        for (outcome, expected) in cases {
            match check(&outcome) {
                Err(PluginError::OutputTooLarge { what, .. }) => assert_eq!(what, expected),
                other => panic!("expected OutputTooLarge({expected}), got {other:?}"),
            }
        }
    }

    #[test]
    fn bad_headers_and_paths_are_refused() {
        let cases = [
            request(None, &[("bad name", "v")], 0),
            request(None, &[("x-a", "line\r\nbreak")], 0),
            request(None, &[("Host", "evil.example")], 0),
            request(None, &[("Transfer-Encoding", "chunked")], 0),
            request(Some("a/../../admin"), &[], 0),
            request(Some("a/%2E%2e/admin"), &[], 0),
            request(Some("a b"), &[], 0),
            request(Some("a?x=1"), &[], 0),
            request(Some("a%zz"), &[], 0),
        ];
        for outcome in cases {
            assert!(
                matches!(check(&outcome), Err(PluginError::InvalidRequest { .. })),
                "{outcome:?} should be refused"
            );
        }
    }
}
