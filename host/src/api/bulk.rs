//! Bulk routes on one repeater's records: `GET
//! /v1/domains/{domain}/repeaters/{name}/failures` (failed records grouped
//! by last error), `POST .../failures/resend|cancel` (one such group), and
//! `POST .../{name}/resend|cancel` (every record in one state).
//!
//! A group is named by its last error exactly as the listing shows it (the
//! empty string for records with none stored), so a client passes back the
//! `error` it was given. Resend follows the single-record rule: back to
//! `pending`, due now, attempts kept, count and age started again. Cancel
//! reaches only records that are not finished.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiPath, ApiQuery, RepeaterPath, json_body};
use super::repeaters::find;
use super::time::Timestamp;
use crate::model::{RecordState, now_millis};
use crate::store::{FAILURE_SCAN, FailureGroup};

/// Groups answered when `limit` is not given.
pub const DEFAULT_GROUPS: u32 = 20;
/// Most groups one answer holds.
pub const MAX_GROUPS: u32 = 1000;

/// Query of `GET .../failures`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FailureParams {
    /// Most groups to answer, 1 to 1000 (default 20); the largest come first.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
}

impl FailureParams {
    /// The number of groups asked for; the error names the bad value.
    fn limit(&self) -> Result<u32, ApiError> {
        let Some(text) = &self.limit else {
            return Ok(DEFAULT_GROUPS);
        };
        text.parse::<u32>()
            .ok()
            .filter(|limit| (1..=MAX_GROUPS).contains(limit))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("limit: {text:?} is not a whole number from 1 to {MAX_GROUPS}"),
                )
            })
    }
}

/// Failed records of one repeater that share their last error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailureGroupView {
    /// The last error the records share; empty when none was stored. Pass
    /// it unchanged to `.../failures/resend` or `.../failures/cancel`.
    #[schema(example = "HTTP 503")]
    pub error: String,
    /// How many records are in the group, `retrying` and `rejected`.
    pub count: i64,
    /// How many of them are still `retrying` (the ones a cancel reaches).
    pub retrying: i64,
    /// When the earliest of them last changed state.
    pub first_seen_at: Timestamp,
    /// When the latest of them last changed state.
    pub last_seen_at: Timestamp,
    /// The newest record of the group, to open as an example.
    pub sample_record_id: i64,
}

impl From<FailureGroup> for FailureGroupView {
    fn from(group: FailureGroup) -> FailureGroupView {
        FailureGroupView {
            error: group.error,
            count: group.count,
            retrying: group.retrying,
            first_seen_at: Timestamp(group.first_seen),
            last_seen_at: Timestamp(group.last_seen),
            sample_record_id: group.sample_id,
        }
    }
}

/// A repeater's failure groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailureGroupList {
    /// The groups, largest first (then by error).
    pub groups: Vec<FailureGroupView>,
    /// The counts cover at most this many of the newest `retrying` records
    /// and as many of the newest `rejected` ones, so that grouping costs
    /// the same however many failures a repeater has collected.
    pub scan_limit: u32,
}

/// Names a failure group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailureGroupBody {
    /// The group's last error, as `GET .../failures` answers it (empty for
    /// records with no last error).
    #[schema(example = "HTTP 503")]
    pub error: String,
}

/// Names the state whose records a bulk action reaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateBody {
    /// Every record of the repeater in this state is reached.
    #[schema(value_type = RecordState)]
    pub state: String,
}

impl StateBody {
    /// The state named. Read here rather than by serde, whose enum reader
    /// reports a number as malformed JSON; the error names the field.
    fn state(&self) -> Result<RecordState, ApiError> {
        self.state
            .parse()
            .map_err(|err| ApiError::bad_request("invalid_body", format!("state: {err}")))
    }
}

/// The answer of a bulk resend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResendAnswer {
    /// How many records went back to pending.
    pub resent: u64,
}

/// The answer of a bulk cancel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CancelAnswer {
    /// How many records were cancelled.
    pub cancelled: u64,
}

/// Lists a repeater's failures grouped by last error.
///
/// Its `retrying` and `rejected` records, grouped by the last error they
/// share, largest group first. Each group's `error` names it for
/// `.../failures/resend` and `.../failures/cancel`.
#[utoipa::path(
    get,
    path = "/v1/domains/{domain}/repeaters/{name}/failures",
    operation_id = "list_failure_groups",
    tag = "records",
    params(RepeaterPath, FailureParams),
    responses(
        (status = 200, description = "The failure groups, largest first", body = FailureGroupList),
        (status = 400, description = "A bad domain or repeater name, or a bad `limit` (the message names it)", body = ErrorBody),
        (status = 404, description = "No such repeater", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn failures(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<RepeaterPath>,
    ApiQuery(params): ApiQuery<FailureParams>,
) -> Result<Json<FailureGroupList>, ApiError> {
    path.check()?;
    let limit = params.limit()?;
    find(&state, &path).await?;
    let groups = state
        .store
        .failure_groups(&path.domain, &path.name, limit)
        .await
        .map_err(|err| ApiError::from_store("grouping failures", err))?;
    Ok(Json(FailureGroupList {
        groups: groups.into_iter().map(FailureGroupView::from).collect(),
        scan_limit: FAILURE_SCAN,
    }))
}

/// Sends a failure group again.
///
/// Every `retrying` or `rejected` record of the repeater whose last error
/// is `error` goes back to `pending`, due now; attempts are kept, the
/// attempt count and age start again.
#[utoipa::path(
    post,
    path = "/v1/domains/{domain}/repeaters/{name}/failures/resend",
    operation_id = "resend_failure_group",
    tag = "records",
    params(RepeaterPath),
    request_body(content = FailureGroupBody, content_type = "application/json"),
    responses(
        (status = 200, description = "How many records went back to pending (0 when no record has this last error)", body = ResendAnswer),
        (status = 400, description = "Malformed JSON, a missing or mistyped `error`, an unknown field, or a bad name", body = ErrorBody),
        (status = 404, description = "No such repeater", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn resend_failures(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<RepeaterPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ResendAnswer>, ApiError> {
    path.check()?;
    let FailureGroupBody { error } = json_body(&headers, body, state.limits.max_body_bytes)?;
    find(&state, &path).await?;
    let RepeaterPath { domain, name } = path;
    let resent = state
        .store
        .resend_failures(&domain, &name, &error, now_millis())
        .await
        .map_err(|err| ApiError::from_store("resending a failure group", err))?;
    tracing::info!(%domain, repeater = %name, %error, resent, "failure group resent");
    Ok(Json(ResendAnswer { resent }))
}

/// Cancels a failure group.
///
/// Every `retrying` record of the repeater whose last error is `error` is
/// cancelled; `rejected` ones are finished already and stay as they are.
#[utoipa::path(
    post,
    path = "/v1/domains/{domain}/repeaters/{name}/failures/cancel",
    operation_id = "cancel_failure_group",
    tag = "records",
    params(RepeaterPath),
    request_body(content = FailureGroupBody, content_type = "application/json"),
    responses(
        (status = 200, description = "How many records were cancelled (0 when no retrying record has this last error)", body = CancelAnswer),
        (status = 400, description = "Malformed JSON, a missing or mistyped `error`, an unknown field, or a bad name", body = ErrorBody),
        (status = 404, description = "No such repeater", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn cancel_failures(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<RepeaterPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CancelAnswer>, ApiError> {
    path.check()?;
    let FailureGroupBody { error } = json_body(&headers, body, state.limits.max_body_bytes)?;
    find(&state, &path).await?;
    let RepeaterPath { domain, name } = path;
    let cancelled = state
        .store
        .cancel_failures(&domain, &name, &error, now_millis())
        .await
        .map_err(|err| ApiError::from_store("cancelling a failure group", err))?;
    tracing::info!(%domain, repeater = %name, %error, cancelled, "failure group cancelled");
    Ok(Json(CancelAnswer { cancelled }))
}

/// Sends every record of a repeater in one state again.
///
/// Every record of the repeater in `state` (any state) goes back to
/// `pending`, due now; attempts are kept, the attempt count and age start
/// again. Records newer than the newest in `state` when the call begins
/// are left alone, even if they reach the state while it runs.
#[utoipa::path(
    post,
    path = "/v1/domains/{domain}/repeaters/{name}/resend",
    operation_id = "resend_repeater_records",
    tag = "records",
    params(RepeaterPath),
    request_body(content = StateBody, content_type = "application/json"),
    responses(
        (status = 200, description = "How many records went back to pending", body = ResendAnswer),
        (status = 400, description = "Malformed JSON, a missing or unknown `state`, an unknown field, or a bad name", body = ErrorBody),
        (status = 404, description = "No such repeater", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn resend_state(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<RepeaterPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ResendAnswer>, ApiError> {
    path.check()?;
    let records = json_body::<StateBody>(&headers, body, state.limits.max_body_bytes)?.state()?;
    let RepeaterPath { domain, name } = path;
    let resent = state
        .store
        .resend_in_state(&domain, &name, records, now_millis())
        .await
        .map_err(|err| ApiError::from_store("resending records by state", err))?;
    tracing::info!(%domain, repeater = %name, state = %records, resent, "records resent by state");
    Ok(Json(ResendAnswer { resent }))
}

/// Cancels every record of a repeater in one unfinished state.
///
/// Every record of the repeater in `state`, `pending` or `retrying`, is
/// cancelled. Records newer than the newest in `state` when the call
/// begins are left alone, even if they reach the state while it runs.
#[utoipa::path(
    post,
    path = "/v1/domains/{domain}/repeaters/{name}/cancel",
    operation_id = "cancel_repeater_records",
    tag = "records",
    params(RepeaterPath),
    request_body(content = StateBody, content_type = "application/json"),
    responses(
        (status = 200, description = "How many records were cancelled", body = CancelAnswer),
        (status = 400, description = "Malformed JSON, a missing or unknown `state`, an unknown field, or a bad name", body = ErrorBody),
        (status = 404, description = "No such repeater", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "`state` is a finished state: only `pending` and `retrying` records can be cancelled", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn cancel_state(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<RepeaterPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CancelAnswer>, ApiError> {
    path.check()?;
    let records = json_body::<StateBody>(&headers, body, state.limits.max_body_bytes)?.state()?;
    if records.is_terminal() {
        return Err(ApiError::invalid(format!(
            "state: {records} records are already finished and cannot be cancelled; \
             only pending or retrying records can"
        )));
    }
    let RepeaterPath { domain, name } = path;
    let cancelled = state
        .store
        .cancel_in_state(&domain, &name, records, now_millis())
        .await
        .map_err(|err| ApiError::from_store("cancelling records by state", err))?;
    tracing::info!(%domain, repeater = %name, state = %records, cancelled, "records cancelled by state");
    Ok(Json(CancelAnswer { cancelled }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(text: Option<&str>) -> Result<u32, ApiError> {
        FailureParams {
            limit: text.map(str::to_owned),
        }
        .limit()
    }

    #[test]
    fn limit_defaults_and_refuses_bad_values_by_name() {
        assert_eq!(limit(None).unwrap(), DEFAULT_GROUPS);
        assert_eq!(limit(Some("1")).unwrap(), 1);
        assert_eq!(limit(Some("1000")).unwrap(), MAX_GROUPS);
        for bad in ["0", "1001", "-3", "ten", ""] {
            let err = limit(Some(bad)).unwrap_err();
            assert_eq!(err.code, "invalid_query", "{bad}");
            assert!(err.message.starts_with("limit: "), "{err}");
            assert!(err.message.contains(&format!("{bad:?}")), "{err}");
        }
    }
}
