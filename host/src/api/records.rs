//! Record routes: `GET /v1/domains/{domain}/records` (filtered, keyset
//! paginated), `GET .../records/{id}` (with its attempts), and
//! `POST .../records/{id}/resend` and `.../cancel`.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, path_slug};
use crate::model::{RecordState, now_millis};
use crate::store::{AttemptRow, RecordQuery, RecordRow};

/// Page size when `limit` is not given.
pub const DEFAULT_PAGE: u32 = 100;
/// Largest page size.
pub const MAX_PAGE: u32 = 1000;

/// Query of `GET .../records`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only this repeater.
    pub repeater: Option<String>,
    /// Only this state (`pending`, `retrying`, ...).
    pub state: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// Only ids after this one: the `next_after` of the previous page.
    pub after: Option<i64>,
}

/// A page of records.
#[derive(Debug, Serialize)]
pub struct RecordPage {
    /// The records, by id.
    pub records: Vec<RecordRow>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_after: Option<i64>,
}

/// A record with its attempts. In JSON, the record's fields with `attempts`
/// holding the attempt list (oldest first) instead of the record's count,
/// and the count under `attempt_count`.
#[derive(Debug)]
pub struct RecordDetail {
    /// The record's fields.
    pub record: RecordRow,
    /// Its attempts, oldest first.
    pub attempts: Vec<AttemptRow>,
}

impl Serialize for RecordDetail {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        // Flattening both would write the key `attempts` twice.
        let record = serde_json::to_value(&self.record).map_err(S::Error::custom)?;
        let serde_json::Value::Object(fields) = record else {
            return Err(S::Error::custom("a record serialises to a JSON object"));
        };
        let mut map = serializer.serialize_map(Some(fields.len() + 1))?;
        for (key, value) in &fields {
            if key == "attempts" {
                map.serialize_entry("attempt_count", value)?;
            } else {
                map.serialize_entry(key, value)?;
            }
        }
        map.serialize_entry("attempts", &self.attempts)?;
        map.end()
    }
}

fn query_error(message: String) -> ApiError {
    ApiError::bad_request("invalid_query", message)
}

/// `GET /v1/domains/{domain}/records?repeater=&state=&limit=&after=`
pub async fn list(
    State(state): State<ApiState>,
    ApiPath(domain): ApiPath<String>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<RecordPage>, ApiError> {
    path_slug("domain", &domain)?;
    if let Some(repeater) = &params.repeater {
        crate::model::check_slug("repeater", repeater)
            .map_err(|err| query_error(format!("repeater: {err}")))?;
    }
    let record_state = params
        .state
        .as_deref()
        .map(str::parse::<RecordState>)
        .transpose()
        .map_err(|err| query_error(format!("state: {err}")))?;
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(query_error(format!(
            "limit: {limit} is outside 1..={MAX_PAGE}"
        )));
    }
    let query = RecordQuery {
        repeater: params.repeater,
        state: record_state,
        after: params.after,
        limit,
    };
    let records = state
        .store
        .records(&domain, &query)
        .await
        .map_err(|err| ApiError::from_store("listing records", err))?;
    // A full page may have a successor; a short page is the last one.
    let next_after = if records.len() == limit as usize {
        records.last().map(|record| record.id)
    } else {
        None
    };
    Ok(Json(RecordPage {
        records,
        next_after,
    }))
}

async fn detail(state: &ApiState, domain: &str, id: i64) -> Result<RecordDetail, ApiError> {
    let (record, attempts) = state
        .store
        .record(domain, id)
        .await
        .map_err(|err| ApiError::from_store("reading a record", err))?
        .ok_or_else(|| ApiError::not_found(format!("record {id} not found in domain {domain}")))?;
    Ok(RecordDetail { record, attempts })
}

/// `GET /v1/domains/{domain}/records/{id}`
pub async fn show(
    State(state): State<ApiState>,
    ApiPath((domain, id)): ApiPath<(String, i64)>,
) -> Result<Json<RecordDetail>, ApiError> {
    path_slug("domain", &domain)?;
    Ok(Json(detail(&state, &domain, id).await?))
}

/// `POST .../records/{id}/resend`: back to pending, due now, attempts
/// kept; answers the record. 409 when its repeater was deleted.
pub async fn resend(
    State(state): State<ApiState>,
    ApiPath((domain, id)): ApiPath<(String, i64)>,
) -> Result<Json<RecordDetail>, ApiError> {
    path_slug("domain", &domain)?;
    // The store refuses a record whose repeater was deleted as a conflict:
    // that is the record's state, not the request's shape, hence 409.
    let found = (state.store.resend(&domain, id, now_millis()).await)
        .map_err(|err| ApiError::from_store("resending a record", err))?;
    if !found {
        return Err(ApiError::not_found(format!(
            "record {id} not found in domain {domain}"
        )));
    }
    tracing::info!(%domain, record = id, "record resent");
    Ok(Json(detail(&state, &domain, id).await?))
}

/// `POST .../records/{id}/cancel`: cancels an unfinished record; 409 when
/// it is already terminal.
pub async fn cancel(
    State(state): State<ApiState>,
    ApiPath((domain, id)): ApiPath<(String, i64)>,
) -> Result<Json<RecordDetail>, ApiError> {
    path_slug("domain", &domain)?;
    let found = (state.store.cancel(&domain, id, now_millis()).await)
        .map_err(|err| ApiError::from_store("cancelling a record", err))?;
    if !found {
        return Err(ApiError::not_found(format!(
            "record {id} not found in domain {domain}"
        )));
    }
    tracing::info!(%domain, record = id, "record cancelled");
    Ok(Json(detail(&state, &domain, id).await?))
}
