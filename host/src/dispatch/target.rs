//! Where a built request goes: the repeater's URL fixes scheme, host and
//! port; the plugin may only append a path and a query. Pure string work,
//! tested without a network.

/// Why a plugin's path or query cannot be appended to the repeater's URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The repeater's own URL is not an absolute http(s) URL.
    #[error("repeater url {url:?} is not an absolute http or https URL")]
    BadBase {
        /// The configured URL.
        url: String,
    },
    /// The plugin's path tries to leave the repeater's path or is not a path.
    #[error("plugin path {path:?} refused: {reason}")]
    BadPath {
        /// The path the plugin returned.
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The plugin's query is not a query string.
    #[error("plugin query {query:?} refused: {reason}")]
    BadQuery {
        /// The query the plugin returned.
        query: String,
        /// Why it was refused.
        reason: &'static str,
    },
}

/// Joins the repeater's `base` URL with the plugin's `path` and `query`.
///
/// The path is appended below the base path (a leading `/` is ignored) and
/// the query is appended to the base's own query. `.` and `..` segments,
/// also percent-encoded, are refused so a plugin cannot climb out of the
/// repeater's path; so are characters that would end the path early
/// (`?`, `#`) or are not allowed in a URL at all.
pub fn request_url(
    base: &str,
    path: Option<&str>,
    query: Option<&str>,
) -> Result<String, TargetError> {
    let bad_base = || TargetError::BadBase {
        url: base.to_owned(),
    };
    let uri: http::Uri = base.parse().map_err(|_| bad_base())?;
    let scheme = uri.scheme_str().ok_or_else(bad_base)?;
    if scheme != "http" && scheme != "https" {
        return Err(bad_base());
    }
    let authority = uri.authority().ok_or_else(bad_base)?;

    let mut full_path = uri.path().to_owned();
    if let Some(path) = path.map(|p| p.trim_start_matches('/'))
        && !path.is_empty()
    {
        check_path(path)?;
        if !full_path.ends_with('/') {
            full_path.push('/');
        }
        full_path.push_str(path);
    }

    let mut url = format!("{scheme}://{authority}{full_path}");
    let base_query = uri.query().filter(|q| !q.is_empty());
    let extra_query = query
        .map(|q| q.trim_start_matches('?'))
        .filter(|q| !q.is_empty());
    if let Some(q) = extra_query {
        check_query(q)?;
    }
    match (base_query, extra_query) {
        (Some(a), Some(b)) => url.push_str(&format!("?{a}&{b}")),
        (Some(q), None) | (None, Some(q)) => url.push_str(&format!("?{q}")),
        (None, None) => {}
    }
    // The result must still parse and still point at the same authority.
    let joined: http::Uri = url.parse().map_err(|_| TargetError::BadPath {
        path: path.unwrap_or_default().to_owned(),
        reason: "the joined URL does not parse",
    })?;
    if joined.authority() != Some(authority) {
        return Err(TargetError::BadPath {
            path: path.unwrap_or_default().to_owned(),
            reason: "it changes the host",
        });
    }
    Ok(url)
}

fn check_path(path: &str) -> Result<(), TargetError> {
    let refuse = |reason| TargetError::BadPath {
        path: path.to_owned(),
        reason,
    };
    if !path.bytes().all(url_byte_allowed) {
        return Err(refuse("it contains a character not allowed in a URL path"));
    }
    if path.contains(['?', '#']) {
        return Err(refuse("it contains '?' or '#'"));
    }
    if path.contains('\\') {
        return Err(refuse("it contains a backslash"));
    }
    for segment in path.split('/') {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        if decoded == "." || decoded == ".." {
            return Err(refuse("'.' and '..' segments are not allowed"));
        }
        if segment.to_ascii_lowercase().contains("%2f")
            || segment.to_ascii_lowercase().contains("%5c")
        {
            return Err(refuse("encoded path separators are not allowed"));
        }
    }
    Ok(())
}

fn check_query(query: &str) -> Result<(), TargetError> {
    if !query.bytes().all(url_byte_allowed) || query.contains('#') {
        return Err(TargetError::BadQuery {
            query: query.to_owned(),
            reason: "it contains a character not allowed in a URL query",
        });
    }
    Ok(())
}

/// Printable ASCII other than space, quotes and angle brackets.
fn url_byte_allowed(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'"' | b'<' | b'>' | b'`' | b'{' | b'}' | b'|' | b'^')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_the_plugin_path_below_the_repeater_path() {
        let url = request_url("http://127.0.0.1:8080/fhir", Some("Patient/123"), None).unwrap();
        assert_eq!(url, "http://127.0.0.1:8080/fhir/Patient/123");
        let url = request_url("http://127.0.0.1:8080/fhir/", Some("/Patient"), None).unwrap();
        assert_eq!(url, "http://127.0.0.1:8080/fhir/Patient");
        let url = request_url("https://example.test", Some("a"), None).unwrap();
        assert_eq!(url, "https://example.test/a");
    }

    #[test]
    fn without_path_or_query_the_repeater_url_is_used_as_is() {
        let url = request_url("http://127.0.0.1:1/hook?k=v", None, None).unwrap();
        assert_eq!(url, "http://127.0.0.1:1/hook?k=v");
        let url = request_url("http://127.0.0.1:1/hook", Some(""), Some("")).unwrap();
        assert_eq!(url, "http://127.0.0.1:1/hook");
    }

    #[test]
    fn queries_are_appended_to_the_repeater_query() {
        let url = request_url("http://h/x?a=1", None, Some("b=2")).unwrap();
        assert_eq!(url, "http://h/x?a=1&b=2");
        let url = request_url("http://h/x", Some("y"), Some("?b=2")).unwrap();
        assert_eq!(url, "http://h/x/y?b=2");
    }

    #[test]
    fn dot_segments_are_refused_even_encoded() {
        for path in [
            "..",
            "a/../b",
            "./a",
            "%2e%2E/admin",
            "a/%2e",
            "a%2fb",
            "a\\b",
        ] {
            let err = request_url("http://h/base", Some(path), None).unwrap_err();
            assert!(matches!(err, TargetError::BadPath { .. }), "{path}: {err}");
        }
    }

    #[test]
    fn paths_that_would_change_the_url_shape_are_refused() {
        for path in ["a?x=1", "a#frag", "a b", "a\nb", "@evil.test/x"] {
            let result = request_url("http://h/base", Some(path), None);
            // '@' inside a path is legal and stays in the path; the host must not move.
            match result {
                Ok(url) => assert!(url.starts_with("http://h/base/"), "{path} -> {url}"),
                Err(err) => assert!(matches!(err, TargetError::BadPath { .. }), "{path}: {err}"),
            }
        }
        assert!(request_url("http://h/base", Some("a?x=1"), None).is_err());
        assert!(request_url("http://h/base", Some("a b"), None).is_err());
        assert!(request_url("http://h/base", None, Some("a=1#x")).is_err());
    }

    #[test]
    fn the_repeater_url_must_be_absolute_http() {
        for base in ["/relative", "ftp://h/x", "not a url", ""] {
            assert!(matches!(
                request_url(base, None, None),
                Err(TargetError::BadBase { .. })
            ));
        }
    }
}
