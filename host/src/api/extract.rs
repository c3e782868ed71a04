//! Reading requests: path and query extractors whose rejections use the
//! API's error shape, and JSON body parsing that tells a syntax error (400
//! `invalid_json`) from a wrong type or missing field (400 `invalid_body`),
//! naming the field by its path (`events[3].type`). The path parameters of
//! the routes are typed here, once, for the handlers and the OpenAPI
//! description alike.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::model::check_slug;

/// Like [`axum::extract::Path`], rejecting with [`ApiError`].
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(value) = Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(value))
    }
}

/// Like [`axum::extract::Query`], rejecting with [`ApiError`].
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(value))
    }
}

/// The path of a domain's routes.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DomainPath {
    /// The domain (tenant).
    #[param(pattern = "^[a-z0-9][a-z0-9-]{0,62}$", example = "acme")]
    pub domain: String,
}

impl DomainPath {
    /// Checks the domain's name.
    pub fn check(&self) -> Result<(), ApiError> {
        path_slug("domain", &self.domain)
    }
}

/// The path of one repeater's routes.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RepeaterPath {
    /// The domain (tenant).
    #[param(pattern = "^[a-z0-9][a-z0-9-]{0,62}$", example = "acme")]
    pub domain: String,
    /// The repeater's name within the domain.
    #[param(pattern = "^[a-z0-9][a-z0-9-]{0,62}$", example = "crm")]
    pub name: String,
}

impl RepeaterPath {
    /// Checks the domain's and the repeater's names.
    pub fn check(&self) -> Result<(), ApiError> {
        path_slug("domain", &self.domain)?;
        path_slug("repeater", &self.name)
    }
}

/// The path of one record's routes.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RecordPath {
    /// The domain (tenant).
    #[param(pattern = "^[a-z0-9][a-z0-9-]{0,62}$", example = "acme")]
    pub domain: String,
    /// The record's id.
    #[param(example = 42)]
    pub id: i64,
}

impl RecordPath {
    /// Checks the domain's name.
    pub fn check(&self) -> Result<(), ApiError> {
        path_slug("domain", &self.domain)
    }
}

/// The path of one plugin's routes.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PluginPath {
    /// The plugin's name.
    #[param(pattern = "^[a-z0-9][a-z0-9-]{0,62}$", example = "my-plugin")]
    pub name: String,
}

impl PluginPath {
    /// Checks the plugin's name.
    pub fn check(&self) -> Result<(), ApiError> {
        path_slug("plugin", &self.name)
    }
}

/// Checks a domain, repeater or plugin name taken from the path.
pub fn path_slug(what: &'static str, value: &str) -> Result<(), ApiError> {
    check_slug(what, value).map_err(|err| ApiError::bad_request("invalid_name", err.to_string()))
}

/// True for `application/json` and `application/<anything>+json`, with or
/// without parameters.
pub fn is_json_media_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Refuses a body that is not declared as JSON.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(header::CONTENT_TYPE) {
        None => Err(ApiError::unsupported_media_type(
            "the body must be JSON: set Content-Type: application/json",
        )),
        Some(value) => match value.to_str() {
            Ok(text) if is_json_media_type(text) => Ok(()),
            _ => Err(ApiError::unsupported_media_type(format!(
                "the body must be JSON, not {:?}",
                String::from_utf8_lossy(value.as_bytes())
            ))),
        },
    }
}

/// Reads a JSON body into `T`: declared as JSON, within `limit` bytes,
/// well formed and of the right shape (errors name the field's path).
pub fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    require_json(headers)?;
    let bytes = body.map_err(|rejection| ApiError::from_body(rejection, limit))?;
    parse_json(&bytes)
}

/// Parses a JSON body into `T`; errors name the field's path.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    decode_object_at(bytes, "")
}

/// Decodes JSON text found at `at` (for example `events[3]`, or `""` for
/// the whole body) into `T`, naming the field's path in errors. An array is
/// refused where a struct is expected, since serde would otherwise read a
/// struct from an array's elements in order.
pub fn decode_object_at<T: DeserializeOwned>(bytes: &[u8], at: &str) -> Result<T, ApiError> {
    let what = if at.is_empty() { "the body" } else { at };
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        // Report broken syntax as such before refusing the shape.
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(malformed)?;
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("{what}: expected a JSON object, found an array"),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if matches!(
            inner.classify(),
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof
        ) {
            return malformed(inner);
        }
        let located = match (at.is_empty(), path == ".") {
            (true, true) => inner.to_string(),
            (true, false) => format!("{path}: {inner}"),
            (false, true) => format!("{at}: {inner}"),
            (false, false) => format!("{at}.{path}: {inner}"),
        };
        ApiError::bad_request("invalid_body", located)
    })?;
    deserializer.end().map_err(malformed)?;
    Ok(value)
}

/// Decodes an already-parsed JSON value into `T`; errors name the field's path.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." {
            ApiError::bad_request("invalid_body", inner.to_string())
        } else {
            ApiError::bad_request("invalid_body", format!("{path}: {inner}"))
        }
    })
}

fn malformed(err: serde_json::Error) -> ApiError {
    ApiError::bad_request("invalid_json", format!("malformed JSON body: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        items: Vec<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[test]
    fn json_media_types_are_recognised() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("Application/JSON; charset=utf-8"));
        assert!(is_json_media_type("application/fhir+json"));
        assert!(!is_json_media_type("text/json-ish"));
        assert!(!is_json_media_type("application/xml"));
    }

    #[test]
    fn a_wrong_type_names_the_field_path() {
        let err = parse_json::<Outer>(br#"{"items": [{"n": 1}, {"n": "x"}]}"#).unwrap_err();
        assert_eq!(err.code, "invalid_body");
        assert!(err.message.starts_with("items[1].n: invalid type"), "{err}");
    }

    #[test]
    fn only_objects_decode_into_structs() {
        let err = decode_object_at::<Inner>(b" [1]", "events[2]").unwrap_err();
        assert_eq!(err.code, "invalid_body");
        assert_eq!(
            err.message,
            "events[2]: expected a JSON object, found an array"
        );
        let err = decode_object_at::<Inner>(b"[1,", "").unwrap_err();
        assert_eq!(err.code, "invalid_json");
        let err = decode_object_at::<Inner>(br#"{"n": -1}"#, "events[2]").unwrap_err();
        assert!(
            err.message.starts_with("events[2].n: invalid value"),
            "{err}"
        );
        let ok: Inner = decode_object_at(br#"{"n": 1}"#, "").unwrap();
        assert_eq!(ok.n, 1);
    }

    #[test]
    fn broken_syntax_and_trailing_bytes_are_malformed_json() {
        for body in [&br#"{"items": ["#[..], &br#"{"items": []} x"#[..], b"\xff"] {
            let err = parse_json::<Outer>(body).unwrap_err();
            assert_eq!(err.code, "invalid_json", "{err}");
        }
    }
}
