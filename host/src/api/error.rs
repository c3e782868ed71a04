//! The API's one error shape, `{"error": {"code": "...", "message": "..."}}`,
//! and the mapping of store errors and axum's rejections onto it, so that no
//! answer of the API is ever plain text.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::store::{ErrorKind, StoreError};

/// An error answer: an HTTP status, a stable machine-readable code and a
/// message for people that names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable code clients can match on (`invalid_json`, `not_found`, ...).
    pub code: &'static str,
    /// What was wrong, naming the field or thing.
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// An error with any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: the request cannot be read (syntax, types, path or query).
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401: no token or an unknown token.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: a valid token that does not reach this route.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404: the named thing does not exist.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 413: the body is larger than the configured limit.
    pub fn body_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than the limit of {limit} bytes"),
        )
    }

    /// 415: the body is not of the media type the route takes.
    pub fn unsupported_media_type(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    /// 422: well-formed but semantically invalid.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        )
    }

    /// 500: a real internal failure. It is logged here, with its detail;
    /// the client gets a message without database internals.
    pub fn internal(context: &str, err: &dyn std::error::Error) -> ApiError {
        tracing::error!(error = %err, "{context} failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{context} failed because of an internal error; see the daemon log"),
        )
    }

    /// 503: the database cannot answer now; the answer carries
    /// `Retry-After` (see [`ApiError::into_response`]).
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 503: too many posted events are waiting to be stored; the answer
    /// carries `Retry-After` and nothing of the request was stored.
    pub fn overloaded(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
    }

    /// Maps a store error met while doing `context` (for example
    /// "ingest") by its kind: missing things are 404, clashes with the
    /// stored state 409, refused input 422, a database that cannot answer
    /// now 503, one without room 507, the rest 500. Driver errors are
    /// logged here and never shown to the client.
    pub fn from_store(context: &str, err: StoreError) -> ApiError {
        match err.kind() {
            ErrorKind::NotFound => ApiError::not_found(store_message(context, &err)),
            ErrorKind::Conflict | ErrorKind::LeaseLost => {
                ApiError::conflict(store_message(context, &err))
            }
            ErrorKind::InvalidInput => ApiError::invalid(store_message(context, &err)),
            ErrorKind::Unavailable => {
                tracing::warn!(error = %err, "{context} failed: the database is unavailable");
                ApiError::unavailable(format!(
                    "{context} failed because the database is unavailable; try again shortly"
                ))
            }
            ErrorKind::StorageFull => {
                tracing::error!(error = %err, "{context} failed: the database is full");
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "storage_full",
                    format!(
                        "{context} failed because the database has no room left on its disk; \
                         free space there and try again (repeaterd goes on by itself)"
                    ),
                )
            }
            ErrorKind::Internal => ApiError::internal(context, &err),
        }
    }

    /// Maps a failure to read the body: too large is 413, anything else
    /// (client went away, bad chunking) is 400.
    pub fn from_body(rejection: BytesRejection, limit: usize) -> ApiError {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::body_too_large(limit)
        } else {
            ApiError::bad_request("invalid_body", rejection.body_text())
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::bad_request("invalid_path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::bad_request("invalid_query", rejection.body_text())
    }
}

/// Seconds a client is asked to wait after a 503.
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// The message of a store error the client may see: the store's own words
/// for what it refused, or, for a driver's error, only what was being done
/// (the detail goes to the log).
fn store_message(context: &str, err: &StoreError) -> String {
    match err {
        StoreError::NotFound(_) | StoreError::LeaseLost { .. } => err.to_string(),
        StoreError::Invalid(why) | StoreError::Conflict(why) => why.clone(),
        other => {
            tracing::info!(error = %other, "{context} refused by the database");
            format!("{context} conflicts with what is stored or cannot be stored as given")
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}

/// An error answer's body as it is written, and as the OpenAPI description
/// names it: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of an error answer's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// A stable code clients can match on (`invalid_json`, `not_found`, ...).
    #[schema(example = "not_found")]
    pub code: String,
    /// What was wrong, for people, naming the field or thing.
    pub message: String,
}

/// The answer for paths no route matches.
pub(crate) async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

/// The answer for a known path with a method it does not take.
pub(crate) async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(err: StoreError) -> (ApiError, Response) {
        let api = ApiError::from_store("listing records", err);
        (api.clone(), api.into_response())
    }

    #[test]
    fn store_errors_map_to_statuses_by_kind() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let cases = [
            (
                StoreError::NotFound("repeater acme/a".into()),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                StoreError::Conflict("record 7 is already succeeded".into()),
                StatusCode::CONFLICT,
                "conflict",
            ),
            (
                StoreError::LeaseLost {
                    repeater_id: 1,
                    epoch: 2,
                },
                StatusCode::CONFLICT,
                "conflict",
            ),
            (
                StoreError::Invalid("domain \"A\" is not a slug".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            (
                StoreError::Database(sqlx::Error::PoolTimedOut),
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
            ),
            (
                StoreError::Sqlite(full),
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_full",
            ),
            (
                StoreError::Corrupt {
                    what: "records.state",
                    detail: "unknown state 9".into(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
        ];
        for (err, status, code) in cases {
            let label = err.to_string();
            let (api, response) = answer(err);
            assert_eq!((api.status, api.code), (status, code), "{label}");
            assert_eq!(response.status(), status, "{label}");
            let retry_after = response.headers().get(header::RETRY_AFTER);
            assert_eq!(
                retry_after.is_some(),
                status == StatusCode::SERVICE_UNAVAILABLE,
                "{label}: {retry_after:?}"
            );
        }
    }

    #[test]
    fn the_store_s_own_words_reach_the_client_and_driver_detail_does_not() {
        let (api, _) = answer(StoreError::Conflict("record 7 is already succeeded".into()));
        assert_eq!(api.message, "record 7 is already succeeded");
        let (api, _) = answer(StoreError::NotFound("repeater acme/a".into()));
        assert_eq!(api.message, "repeater acme/a not found");
        let (api, response) = answer(StoreError::Database(sqlx::Error::PoolTimedOut));
        assert!(!api.message.contains("pool"), "{}", api.message);
        assert_eq!(
            response.headers()[header::RETRY_AFTER],
            RETRY_AFTER_SECONDS.to_string()
        );
    }
}
