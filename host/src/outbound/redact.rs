//! What an attempt sent, made safe to store and show. The summary is taken
//! after the host added authentication and the signature, so it shows what
//! really went out; every value that can carry a credential is replaced by
//! [`REDACTED`] before the summary leaves this module: secret-looking
//! header values (the host's own `authorization` and `webhook-signature`
//! among them), the user information of the URL, and secret-looking query
//! values. Names are judged, not values, so a plugin that puts a token in
//! a header called `x-api-key` or a query parameter called `access_token`
//! is covered too.

use crate::model::{SentHeader, SentRequest};

/// What a redacted value reads as.
pub const REDACTED: &str = "redacted";

/// Names that carry credentials whole.
const SECRET_NAMES: &[&str] = &[
    "key",
    "sig",
    "code",
    "pass",
    "pwd",
    "cookie",
    "set-cookie",
    "jwt",
];

/// Parts of names that carry credentials (names are compared in lower case).
const SECRET_PARTS: &[&str] = &[
    "auth",
    "token",
    "secret",
    "signature",
    "password",
    "passwd",
    "api-key",
    "api_key",
    "apikey",
    "session",
    "credential",
    "private",
];

/// True when a header or query parameter of this name may carry a secret.
/// Runs for every header of every attempt, so it compares without
/// allocating.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.as_bytes();
    SECRET_NAMES
        .iter()
        .any(|secret| name.eq_ignore_ascii_case(secret.as_bytes()))
        || SECRET_PARTS.iter().any(|part| {
            name.windows(part.len())
                .any(|window| window.eq_ignore_ascii_case(part.as_bytes()))
        })
}

/// The summary of a request as sent, redacted.
pub fn sent_request(
    method: &http::Method,
    url: &str,
    headers: &http::HeaderMap,
    body_bytes: usize,
) -> SentRequest {
    SentRequest {
        method: method.as_str().to_owned(),
        url: redact_url(url),
        headers: headers
            .iter()
            .map(|(name, value)| SentHeader {
                name: name.as_str().to_owned(),
                value: if is_secret_name(name.as_str()) {
                    REDACTED.to_owned()
                } else {
                    String::from_utf8_lossy(value.as_bytes()).into_owned()
                },
            })
            .collect(),
        body_bytes: body_bytes as u64,
    }
}

/// `url` with its user information and secret-looking query values
/// replaced. Pure string work on the URL the host built (absolute, with a
/// scheme), so it never fails: what it does not recognise it leaves alone.
pub fn redact_url(url: &str) -> String {
    let (before_fragment, fragment) = match url.split_once('#') {
        Some((head, fragment)) => (head, Some(fragment)),
        None => (url, None),
    };
    let (base, query) = match before_fragment.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (before_fragment, None),
    };

    let mut out = String::with_capacity(url.len());
    match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            out.push_str(scheme);
            out.push_str("://");
            match authority.rsplit_once('@') {
                Some((_, host)) => {
                    out.push_str(REDACTED);
                    out.push('@');
                    out.push_str(host);
                }
                None => out.push_str(authority),
            }
            out.push_str(path);
        }
        None => out.push_str(base),
    }
    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) if is_secret_name(&decoded(name)) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                _ => out.push_str(pair),
            }
        }
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// A query parameter's name as the receiver reads it, so `api%5Fkey`
/// is judged like `api_key`.
fn decoded(name: &str) -> String {
    form_urlencoded::parse(name.as_bytes())
        .next()
        .map(|(name, _)| name.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn credentials_and_signatures_are_redacted_and_the_rest_is_kept() {
        let sent = sent_request(
            &http::Method::POST,
            "https://api.example.com/v1/hooks",
            &headers(&[
                ("content-type", "application/json"),
                ("authorization", "Bearer s3cr3t"),
                ("webhook-id", "42"),
                ("webhook-timestamp", "1700000000"),
                ("webhook-signature", "v1,abc="),
                ("x-api-key", "k"),
                ("X-Hub-Signature-256", "sha256=ff"),
                ("cookie", "sid=1"),
                ("idempotency-id", "evt-1"),
            ]),
            1234,
        );
        let shown: Vec<(&str, &str)> = (sent.headers.iter())
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                ("content-type", "application/json"),
                ("authorization", REDACTED),
                ("webhook-id", "42"),
                ("webhook-timestamp", "1700000000"),
                ("webhook-signature", REDACTED),
                ("x-api-key", REDACTED),
                ("x-hub-signature-256", REDACTED),
                ("cookie", REDACTED),
                ("idempotency-id", "evt-1"),
            ]
        );
        assert_eq!(sent.method, "POST");
        assert_eq!(sent.body_bytes, 1234);
        assert!(!format!("{sent:?}").contains("s3cr3t"));
    }

    #[test]
    fn url_user_information_and_secret_query_values_are_redacted() {
        assert_eq!(
            redact_url(
                "https://user:pw@api.example.com:8443/a/b?page=2&access_token=t0k&Key=k#frag"
            ),
            "https://redacted@api.example.com:8443/a/b?page=2&access_token=redacted&Key=redacted#frag"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:9/x?api%5Fkey=1&sig=2&q=a%3Db"),
            "http://127.0.0.1:9/x?api%5Fkey=redacted&sig=redacted&q=a%3Db"
        );
    }

    #[test]
    fn urls_without_secrets_are_unchanged() {
        for url in [
            "https://api.example.com",
            "https://api.example.com/",
            "http://[::1]:8080/a?b=c&d",
            "https://example.com/path@with-at?x=1",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }
}
