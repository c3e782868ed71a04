//! Record routes: `GET /v1/domains/{domain}/records` (filtered, keyset
//! paginated), `GET .../records/{id}` (with its attempts), and
//! `POST .../records/{id}/resend` and `.../cancel`.
//!
//! `since` needs no index on `created_at`: record ids grow with time, so it
//! is turned into an id to list after by a search over the listing itself,
//! a few one-record pages read from the listing indexes ([`first_page_after`]).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiPath, ApiQuery, DomainPath, RecordPath};
use super::time::Timestamp;
use crate::model::{AttemptOutcome, Millis, RecordState, SentRequest, now_millis};
use crate::store::{AttemptRow, RecordQuery, RecordRow, StoreError};

/// Page size when `limit` is not given.
pub const DEFAULT_PAGE: u32 = 100;
/// Largest page size.
pub const MAX_PAGE: u32 = 1000;

/// Query of `GET .../records`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this repeater's records.
    #[param(example = "crm")]
    pub repeater: Option<String>,
    /// Only records in this state.
    #[param(value_type = Option<RecordState>)]
    pub state: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only ids after this one: the `next_after` of the previous page.
    pub after: Option<i64>,
    /// Only records registered at or after this time (RFC 3339, UTC).
    pub since: Option<Timestamp>,
}

/// A record's fields, shared by the listing and the detail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordFields {
    /// The record's id; ids grow with registration time.
    pub id: i64,
    /// Its domain.
    pub domain: String,
    /// The repeater it is for.
    pub repeater: String,
    /// The event's id (the producer's, or the one the host made).
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// Where the record is in its life.
    pub state: RecordState,
    /// When its next attempt is due (`retrying` records).
    #[schema(required)]
    pub next_attempt_at: Option<Timestamp>,
    /// When it was registered.
    pub created_at: Timestamp,
    /// When its state last changed.
    pub updated_at: Timestamp,
    /// The last failure seen.
    #[schema(required)]
    pub last_error: Option<String>,
}

/// A record as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordView {
    /// The record's fields.
    #[serde(flatten)]
    pub record: RecordFields,
    /// Attempts made since registration or the last resend.
    pub attempts: u32,
}

impl From<RecordRow> for RecordView {
    fn from(row: RecordRow) -> RecordView {
        let attempts = row.attempts;
        RecordView {
            record: RecordFields::from(row),
            attempts,
        }
    }
}

impl From<RecordRow> for RecordFields {
    fn from(row: RecordRow) -> RecordFields {
        RecordFields {
            id: row.id,
            domain: row.domain,
            repeater: row.repeater,
            event_id: row.event_id,
            event_type: row.event_type,
            state: row.state,
            next_attempt_at: row.next_attempt_at.map(Timestamp),
            created_at: Timestamp(row.created_at),
            updated_at: Timestamp(row.updated_at),
            last_error: row.last_error,
        }
    }
}

/// One attempt of a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// The attempt's id.
    pub id: i64,
    /// When it started.
    pub started_at: Timestamp,
    /// How long it took, milliseconds.
    pub duration_ms: i64,
    /// The HTTP status, when a response came back.
    #[schema(required)]
    pub status: Option<u16>,
    /// The transport, plugin or policy error, when there was one.
    #[schema(required)]
    pub error: Option<String>,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// The start of the response body, decoded as UTF-8 for display.
    #[schema(required)]
    pub response_excerpt: Option<String>,
    /// The sha256 (hex) of the plugin version that built the request
    /// (`null` for attempts stored before versions were recorded).
    #[schema(required)]
    pub plugin_sha256: Option<String>,
    /// What was sent: method, URL, headers (credentials and signatures
    /// redacted) and body size; `null` when no request was built or for
    /// attempts stored before requests were recorded.
    #[schema(required)]
    pub request: Option<SentRequest>,
}

impl From<AttemptRow> for AttemptView {
    fn from(row: AttemptRow) -> AttemptView {
        AttemptView {
            id: row.id,
            started_at: Timestamp(row.started_at),
            duration_ms: row.duration_ms,
            status: row.status,
            error: row.error,
            outcome: row.outcome,
            response_excerpt: row.response_excerpt,
            plugin_sha256: row.plugin_sha256,
            request: row.request,
        }
    }
}

/// A page of records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordPage {
    /// The records, by id.
    pub records: Vec<RecordView>,
    /// Pass as `after` for the next page; `null` on the last page.
    #[schema(required)]
    pub next_after: Option<i64>,
}

/// A record with its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordDetail {
    /// The record's fields.
    #[serde(flatten)]
    pub record: RecordFields,
    /// Attempts made since registration or the last resend.
    pub attempt_count: u32,
    /// Every attempt, oldest first (those before a resend included).
    pub attempts: Vec<AttemptView>,
}

fn query_error(message: String) -> ApiError {
    ApiError::bad_request("invalid_query", message)
}

/// Lists a domain's records, oldest first, a page at a time.
///
/// Pages are keyed by id: pass a page's `next_after` as `after` to read the
/// next one. Filters combine.
#[utoipa::path(
    get,
    path = "/v1/domains/{domain}/records",
    operation_id = "list_records",
    tag = "records",
    params(DomainPath, ListParams),
    responses(
        (status = 200, description = "A page of records", body = RecordPage),
        (status = 400, description = "A bad domain name or query parameter (the message names it)", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<DomainPath>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<RecordPage>, ApiError> {
    path.check()?;
    let domain = path.domain;
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
    let mut query = RecordQuery {
        repeater: params.repeater,
        state: record_state,
        after: params.after,
        limit,
    };
    let listing = |err| ApiError::from_store("listing records", err);
    if let Some(since) = params.since {
        query.after = Some(
            first_page_after(&state, &domain, &query, since.0)
                .await
                .map_err(listing)?,
        );
    }
    let mut records = state
        .store
        .records(&domain, &query)
        .await
        .map_err(listing)?;
    // A full page may have a successor; a short page is the last one.
    let next_after = if records.len() == limit as usize {
        records.last().map(|record| record.id)
    } else {
        None
    };
    if let Some(since) = params.since {
        // Ids follow registration order only as closely as the clocks of
        // the registering processes agree: drop any stragglers.
        records.retain(|record| record.created_at >= since.0);
    }
    Ok(Json(RecordPage {
        records: records.into_iter().map(RecordView::from).collect(),
        next_after,
    }))
}

/// The `after` from which `query`'s listing holds only records registered
/// at or after `since`: the id of the last record registered before it, or
/// `query.after` when there is none.
///
/// Ids grow with registration time, so "the first record after x is older
/// than `since`" holds for every x below that id and for none above. The
/// search reads one-record pages of the same listing: it gallops from
/// `query.after` with doubling steps and halves back, each probe a bounded
/// read of the listing indexes, about 2·log2(records skipped) probes in all
/// and one when nothing needs skipping (every page after the first).
pub(crate) async fn first_page_after(
    state: &ApiState,
    domain: &str,
    query: &RecordQuery,
    since: Millis,
) -> Result<i64, StoreError> {
    // The first listed record after `after`, if it was registered before `since`.
    let older_after = |after: i64| {
        let probe = RecordQuery {
            after: Some(after),
            limit: 1,
            ..query.clone()
        };
        async move {
            let first = state.store.records(domain, &probe).await?;
            Ok::<_, StoreError>(
                first
                    .into_iter()
                    .next()
                    .filter(|record| record.created_at < since)
                    .map(|record| record.id),
            )
        }
    };
    // `low` is always the id of a record registered before `since` (or the
    // start); `high` an `after` past every such record.
    let Some(mut low) = older_after(query.after.unwrap_or(0)).await? else {
        return Ok(query.after.unwrap_or(0));
    };
    let mut step: i64 = 1;
    let mut high = loop {
        let probe = low.saturating_add(step);
        match older_after(probe).await? {
            Some(older) => low = older,
            None => break probe,
        }
        step = step.saturating_mul(2);
    };
    while low < high {
        let middle = low + (high - low) / 2;
        match older_after(middle).await? {
            Some(older) => low = older,
            None => high = middle,
        }
    }
    Ok(high)
}

async fn detail(state: &ApiState, domain: &str, id: i64) -> Result<RecordDetail, ApiError> {
    let (record, attempts) = state
        .store
        .record(domain, id)
        .await
        .map_err(|err| ApiError::from_store("reading a record", err))?
        .ok_or_else(|| not_found(domain, id))?;
    Ok(RecordDetail {
        attempt_count: record.attempts,
        record: RecordFields::from(record),
        attempts: attempts.into_iter().map(AttemptView::from).collect(),
    })
}

fn not_found(domain: &str, id: i64) -> ApiError {
    ApiError::not_found(format!("record {id} not found in domain {domain}"))
}

/// Shows one record with its attempts.
#[utoipa::path(
    get,
    path = "/v1/domains/{domain}/records/{id}",
    operation_id = "show_record",
    tag = "records",
    params(RecordPath),
    responses(
        (status = 200, description = "The record and its attempts, oldest first", body = RecordDetail),
        (status = 400, description = "A bad domain name or record id", body = ErrorBody),
        (status = 404, description = "No such record in this domain", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<RecordPath>,
) -> Result<Json<RecordDetail>, ApiError> {
    path.check()?;
    Ok(Json(detail(&state, &path.domain, path.id).await?))
}

/// Sends a record again.
///
/// Any record goes back to `pending`, due now; its attempts are kept, its
/// attempt count and age start again. Answers the record.
#[utoipa::path(
    post,
    path = "/v1/domains/{domain}/records/{id}/resend",
    operation_id = "resend_record",
    tag = "records",
    params(RecordPath),
    responses(
        (status = 200, description = "The record, pending again", body = RecordDetail),
        (status = 400, description = "A bad domain name or record id", body = ErrorBody),
        (status = 404, description = "No such record in this domain", body = ErrorBody),
        (status = 409, description = "The record's repeater was deleted", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn resend(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<RecordPath>,
) -> Result<Json<RecordDetail>, ApiError> {
    path.check()?;
    let RecordPath { domain, id } = path;
    // The store refuses a record whose repeater was deleted as a conflict:
    // that is the record's state, not the request's shape, hence 409.
    let found = (state.store.resend(&domain, id, now_millis()).await)
        .map_err(|err| ApiError::from_store("resending a record", err))?;
    if !found {
        return Err(not_found(&domain, id));
    }
    tracing::info!(%domain, record = id, "record resent");
    Ok(Json(detail(&state, &domain, id).await?))
}

/// Cancels a record that is not finished yet.
#[utoipa::path(
    post,
    path = "/v1/domains/{domain}/records/{id}/cancel",
    operation_id = "cancel_record",
    tag = "records",
    params(RecordPath),
    responses(
        (status = 200, description = "The record, cancelled", body = RecordDetail),
        (status = 400, description = "A bad domain name or record id", body = ErrorBody),
        (status = 404, description = "No such record in this domain", body = ErrorBody),
        (status = 409, description = "The record is already finished", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<RecordPath>,
) -> Result<Json<RecordDetail>, ApiError> {
    path.check()?;
    let RecordPath { domain, id } = path;
    let found = (state.store.cancel(&domain, id, now_millis()).await)
        .map_err(|err| ApiError::from_store("cancelling a record", err))?;
    if !found {
        return Err(not_found(&domain, id));
    }
    tracing::info!(%domain, record = id, "record cancelled");
    Ok(Json(detail(&state, &domain, id).await?))
}
