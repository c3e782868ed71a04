//! Repeater routes: `GET /v1/repeaters` (every domain the token reaches),
//! `GET /v1/domains/{domain}/repeaters`, `GET/PUT/DELETE
//! .../repeaters/{name}`, and `POST .../{name}/pause|resume|requeue`.
//!
//! A PUT body is the repeater spec without `domain` and `name` (they come
//! from the path). It is checked before it is stored by the same rules as a
//! `[[repeater]]` of the config file ([`check_repeater_spec`]: URL scheme and
//! host, event types, limits, auth and signing references) and, when the
//! daemon has a plugin catalogue, for a plugin that exists and accepts the
//! config.
//! The status answer shows the spec, backlog by state, backoff, lease,
//! pause, last error and success, current concurrency and the plugin's
//! version and last error.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ApiState;
use super::auth::Grant;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiPath, DomainPath, RepeaterPath, from_value, json_body};
use super::plugins::RepeaterVersion;
use super::time::Timestamp;
use crate::config::check_repeater_spec;
use crate::model::{RepeaterSpec, now_millis};
use crate::store::{Backlog, RepeaterRow};

/// The status of one repeater, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RepeaterStatus {
    /// The domain.
    pub domain: String,
    /// The name.
    pub name: String,
    /// The configured spec.
    pub spec: RepeaterSpec,
    /// Paused repeaters are not scheduled.
    pub paused: bool,
    /// Endpoint backoff.
    pub backoff: BackoffStatus,
    /// The lease, if one is recorded.
    #[schema(required)]
    pub lease: Option<LeaseStatus>,
    /// Record counts by state.
    pub backlog: BacklogCounts,
    /// The adaptive concurrency limit the dispatcher last reported.
    #[schema(required)]
    pub concurrency: Option<u32>,
    /// The last failure seen.
    #[schema(required)]
    pub last_error: Option<String>,
    /// When a record last succeeded.
    #[schema(required)]
    pub last_success_at: Option<Timestamp>,
    /// The plugin in use.
    pub plugin: PluginStatus,
    /// When the repeater was first stored.
    pub created_at: Timestamp,
    /// When its spec or status last changed.
    pub updated_at: Timestamp,
}

/// Endpoint backoff of a repeater.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackoffStatus {
    /// True while `until` is in the future.
    pub active: bool,
    /// Backed off until then.
    #[schema(required)]
    pub until: Option<Timestamp>,
    /// Consecutive failed batches.
    pub step: u32,
}

/// Who holds a repeater's lane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeaseStatus {
    /// The holder's name.
    pub holder: String,
    /// The lease epoch.
    pub epoch: i64,
    /// When it expires unless renewed.
    pub expires_at: Timestamp,
    /// True when it has expired (the next claim takes it over).
    pub expired: bool,
}

/// Record counts of a repeater by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BacklogCounts {
    /// Never tried.
    pub pending: i64,
    /// Waiting for their next attempt.
    pub retrying: i64,
    /// Delivered.
    pub succeeded: i64,
    /// Refused as invalid.
    pub rejected: i64,
    /// Nothing to send.
    pub empty: i64,
    /// Given up.
    pub cancelled: i64,
}

impl From<Backlog> for BacklogCounts {
    fn from(backlog: Backlog) -> BacklogCounts {
        BacklogCounts {
            pending: backlog.pending,
            retrying: backlog.retrying,
            succeeded: backlog.succeeded,
            rejected: backlog.rejected,
            empty: backlog.empty,
            cancelled: backlog.cancelled,
        }
    }
}

/// The plugin a repeater uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginStatus {
    /// Its name.
    pub name: String,
    /// The sha256 pin of the spec, if any.
    #[schema(required)]
    pub pinned_sha256: Option<String>,
    /// Whether the catalogue knows it (`null` when the daemon has none).
    #[schema(required)]
    pub known: Option<bool>,
    /// Its version, when the catalogue reports one.
    #[schema(required)]
    pub version: Option<String>,
    /// Content hash of the version this repeater runs (the newest version
    /// until its first batch chose one).
    #[schema(required)]
    pub sha256: Option<String>,
    /// The version this repeater runs, whether it is pinned, and the latest
    /// refusal of its config by a newer version; `null` before its first
    /// batch.
    #[schema(required)]
    pub running: Option<RepeaterVersion>,
    /// Its last load or reload error.
    #[schema(required)]
    pub last_error: Option<String>,
}

/// A list of repeaters, ordered by domain and name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RepeaterList {
    /// The repeaters with their status.
    pub repeaters: Vec<RepeaterStatus>,
}

/// The answer of a requeue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RequeueAnswer {
    /// How many records went back to pending.
    pub requeued: u64,
}

/// The body of a repeater PUT: a [`RepeaterSpec`] without `domain` and
/// `name`, which come from the path. Its schema is the spec's own, with
/// those two fields taken out.
pub struct RepeaterSpecBody;

impl utoipa::PartialSchema for RepeaterSpecBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::Schema;
        let mut schema = <RepeaterSpec as utoipa::PartialSchema>::schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            for field in ["domain", "name"] {
                object.properties.shift_remove(field);
                object.required.retain(|required| required != field);
            }
            object.description =
                Some("A repeater's spec; its domain and name come from the path.".into());
        }
        schema
    }
}

impl utoipa::ToSchema for RepeaterSpecBody {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <RepeaterSpec as utoipa::ToSchema>::schemas(schemas);
    }
}

async fn status_of(state: &ApiState, row: RepeaterRow) -> Result<RepeaterStatus, ApiError> {
    let backlog = state
        .store
        .backlog(row.id)
        .await
        .map_err(|err| ApiError::from_store("reading a repeater's backlog", err))?;
    let now = now_millis();
    let info = state
        .plugins
        .as_ref()
        .map(|catalog| catalog.info(&row.spec.plugin));
    let running = (state.plugins.as_ref())
        .and_then(|catalog| catalog.repeater_version(&row.spec.domain, &row.spec.name));
    let plugin = PluginStatus {
        name: row.spec.plugin.clone(),
        pinned_sha256: row.spec.plugin_sha256.clone(),
        known: info.as_ref().map(Option::is_some),
        version: info.as_ref().and_then(|i| i.as_ref()?.version.clone()),
        sha256: match &running {
            Some(running) => Some(running.sha256.clone()),
            None => info.as_ref().and_then(|i| i.as_ref()?.sha256.clone()),
        },
        running,
        last_error: info.as_ref().and_then(|i| i.as_ref()?.last_error.clone()),
    };
    Ok(RepeaterStatus {
        domain: row.spec.domain.clone(),
        name: row.spec.name.clone(),
        concurrency: state
            .metrics
            .repeater_concurrency(&row.spec.domain, &row.spec.name),
        paused: row.paused,
        backoff: BackoffStatus {
            active: row.backoff_until.is_some_and(|until| until > now),
            until: row.backoff_until.map(Timestamp),
            step: row.backoff_step,
        },
        lease: row.lease.map(|lease| LeaseStatus {
            expired: lease.expires_at <= now,
            holder: lease.holder,
            epoch: lease.epoch,
            expires_at: Timestamp(lease.expires_at),
        }),
        backlog: BacklogCounts::from(backlog),
        last_error: row.last_error,
        last_success_at: row.last_success_at.map(Timestamp),
        plugin,
        created_at: Timestamp(row.created_at),
        updated_at: Timestamp(row.updated_at),
        spec: row.spec,
    })
}

async fn statuses_of(state: &ApiState, rows: Vec<RepeaterRow>) -> Result<RepeaterList, ApiError> {
    let mut repeaters = Vec::with_capacity(rows.len());
    for row in rows {
        repeaters.push(status_of(state, row).await?);
    }
    Ok(RepeaterList { repeaters })
}

fn not_found(path: &RepeaterPath) -> ApiError {
    ApiError::not_found(format!("repeater {}/{} not found", path.domain, path.name))
}

/// The repeater the path names; 404 naming it when there is none.
pub(crate) async fn find(state: &ApiState, path: &RepeaterPath) -> Result<RepeaterRow, ApiError> {
    path.check()?;
    state
        .store
        .repeater(&path.domain, &path.name)
        .await
        .map_err(|err| ApiError::from_store("reading a repeater", err))?
        .ok_or_else(|| not_found(path))
}

/// Lists every repeater the token reaches, with its status.
///
/// The admin token (or an API without tokens) sees every domain's
/// repeaters; a domain token sees its own domain's.
#[utoipa::path(
    get,
    path = "/v1/repeaters",
    operation_id = "list_repeaters",
    tag = "repeaters",
    responses(
        (status = 200, description = "The repeaters, ordered by domain and name", body = RepeaterList),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn list_all(
    State(state): State<ApiState>,
    Extension(grant): Extension<Grant>,
) -> Result<Json<RepeaterList>, ApiError> {
    let listing = |err| ApiError::from_store("listing repeaters", err);
    let rows = match grant {
        Grant::Admin => state.store.repeaters(None).await.map_err(listing)?,
        Grant::Domains(mut domains) => {
            domains.sort();
            domains.dedup();
            let mut rows = Vec::new();
            for domain in domains {
                rows.extend(
                    state
                        .store
                        .repeaters(Some(&domain))
                        .await
                        .map_err(listing)?,
                );
            }
            rows
        }
    };
    Ok(Json(statuses_of(&state, rows).await?))
}

/// Lists a domain's repeaters with their status.
#[utoipa::path(
    get,
    path = "/v1/domains/{domain}/repeaters",
    operation_id = "list_domain_repeaters",
    tag = "repeaters",
    params(DomainPath),
    responses(
        (status = 200, description = "The domain's repeaters, ordered by name", body = RepeaterList),
        (status = 400, description = "A bad domain name", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<DomainPath>,
) -> Result<Json<RepeaterList>, ApiError> {
    path.check()?;
    let rows = state
        .store
        .repeaters(Some(&path.domain))
        .await
        .map_err(|err| ApiError::from_store("listing repeaters", err))?;
    Ok(Json(statuses_of(&state, rows).await?))
}

/// Shows one repeater's status.
///
/// Backlog by state, backoff, lease, pause, last error and success, current
/// concurrency, and the plugin's version and last error.
#[utoipa::path(
    get,
    path = "/v1/domains/{domain}/repeaters/{name}",
    operation_id = "show_repeater",
    tag = "repeaters",
    params(RepeaterPath),
    responses(
        (status = 200, description = "The repeater's status", body = RepeaterStatus),
        (status = 400, description = "A bad domain or repeater name", body = ErrorBody),
        (status = 404, description = "No such repeater", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<RepeaterPath>,
) -> Result<Json<RepeaterStatus>, ApiError> {
    let row = find(&state, &path).await?;
    Ok(Json(status_of(&state, row).await?))
}

/// Creates or replaces a repeater.
///
/// The spec is checked by the same rules as a `[[repeater]]` of the config
/// file, and by its plugin's `validate-config`. Replacing keeps the
/// repeater's status and records.
#[utoipa::path(
    put,
    path = "/v1/domains/{domain}/repeaters/{name}",
    operation_id = "put_repeater",
    tag = "repeaters",
    params(RepeaterPath),
    request_body(content = RepeaterSpecBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = RepeaterStatus),
        (status = 200, description = "Replaced", body = RepeaterStatus),
        (status = 400, description = "Malformed JSON, a field of the wrong type, an unknown field or a bad name", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "The spec is refused: a bad URL, limit or reference, an unknown plugin, or a config the plugin refuses", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn put(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<RepeaterPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<RepeaterStatus>), ApiError> {
    path.check()?;
    let RepeaterPath { domain, name } = path;
    let value: Value = json_body(&headers, body, state.limits.max_body_bytes)?;
    let Value::Object(mut fields) = value else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the repeater spec must be a JSON object",
        ));
    };
    for key in ["domain", "name"] {
        if fields.contains_key(key) {
            return Err(ApiError::invalid(format!(
                "{key}: comes from the path; leave it out of the body"
            )));
        }
    }
    fields.insert("domain".into(), Value::String(domain.clone()));
    fields.insert("name".into(), Value::String(name.clone()));
    let spec: RepeaterSpec = from_value(Value::Object(fields))?;
    // The same rules as repeaters in the config file.
    check_repeater_spec(&spec).map_err(|err| ApiError::invalid(err.to_string()))?;
    if let Some(catalog) = &state.plugins {
        if !catalog.exists(&spec.plugin) {
            return Err(ApiError::invalid(format!(
                "plugin: no plugin named {:?} is installed",
                spec.plugin
            )));
        }
        // Against the version the repeater would run: its pin, or the
        // newest that accepts the config.
        catalog
            .validate_repeater(
                &domain,
                &name,
                &spec.plugin,
                spec.plugin_sha256.as_deref(),
                &spec.plugin_config,
            )
            .await
            .map_err(|why| {
                ApiError::invalid(format!(
                    "plugin_config: refused by plugin {:?}: {why}",
                    spec.plugin
                ))
            })?;
    }
    let existed = state
        .store
        .repeater(&domain, &name)
        .await
        .map_err(|err| ApiError::from_store("reading a repeater", err))?
        .is_some();
    let row = state
        .store
        .upsert_repeater(&spec, now_millis())
        .await
        .map_err(|err| ApiError::from_store("storing a repeater", err))?;
    tracing::info!(%domain, repeater = %name, plugin = %spec.plugin, "repeater stored");
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(status_of(&state, row).await?)))
}

/// Deletes a repeater; its unfinished records are cancelled.
#[utoipa::path(
    delete,
    path = "/v1/domains/{domain}/repeaters/{name}",
    operation_id = "delete_repeater",
    tag = "repeaters",
    params(RepeaterPath),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A bad domain or repeater name", body = ErrorBody),
        (status = 404, description = "No such repeater", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<RepeaterPath>,
) -> Result<StatusCode, ApiError> {
    path.check()?;
    let deleted = state
        .store
        .delete_repeater(&path.domain, &path.name, now_millis())
        .await
        .map_err(|err| ApiError::from_store("deleting a repeater", err))?;
    if !deleted {
        return Err(not_found(&path));
    }
    let RepeaterPath { domain, name } = path;
    state.metrics.forget_repeater(&domain, &name);
    if let Some(catalog) = &state.plugins {
        catalog.forget_repeater(&domain, &name);
    }
    tracing::info!(%domain, repeater = %name, "repeater deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn set_paused(
    state: ApiState,
    path: RepeaterPath,
    paused: bool,
) -> Result<Json<RepeaterStatus>, ApiError> {
    path.check()?;
    let found = state
        .store
        .set_paused(&path.domain, &path.name, paused, now_millis())
        .await
        .map_err(|err| ApiError::from_store("pausing or resuming a repeater", err))?;
    if !found {
        return Err(not_found(&path));
    }
    let row = find(&state, &path).await?;
    Ok(Json(status_of(&state, row).await?))
}

/// Pauses a repeater: it is not scheduled, its records wait.
#[utoipa::path(
    post,
    path = "/v1/domains/{domain}/repeaters/{name}/pause",
    operation_id = "pause_repeater",
    tag = "repeaters",
    params(RepeaterPath),
    responses(
        (status = 200, description = "The repeater's status, paused", body = RepeaterStatus),
        (status = 400, description = "A bad domain or repeater name", body = ErrorBody),
        (status = 404, description = "No such repeater", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn pause(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<RepeaterPath>,
) -> Result<Json<RepeaterStatus>, ApiError> {
    set_paused(state, path, true).await
}

/// Resumes a paused repeater.
#[utoipa::path(
    post,
    path = "/v1/domains/{domain}/repeaters/{name}/resume",
    operation_id = "resume_repeater",
    tag = "repeaters",
    params(RepeaterPath),
    responses(
        (status = 200, description = "The repeater's status, running", body = RepeaterStatus),
        (status = 400, description = "A bad domain or repeater name", body = ErrorBody),
        (status = 404, description = "No such repeater", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn resume(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<RepeaterPath>,
) -> Result<Json<RepeaterStatus>, ApiError> {
    set_paused(state, path, false).await
}

/// Requeues a repeater's failures.
///
/// Puts its `retrying` and `cancelled` records back to `pending`, due now,
/// and clears its backoff.
#[utoipa::path(
    post,
    path = "/v1/domains/{domain}/repeaters/{name}/requeue",
    operation_id = "requeue_repeater",
    tag = "repeaters",
    params(RepeaterPath),
    responses(
        (status = 200, description = "How many records went back to pending", body = RequeueAnswer),
        (status = 400, description = "A bad domain or repeater name", body = ErrorBody),
        (status = 404, description = "No such repeater", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    )
)]
pub async fn requeue(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<RepeaterPath>,
) -> Result<Json<RequeueAnswer>, ApiError> {
    find(&state, &path).await?;
    let requeued = state
        .store
        .requeue(&path.domain, &path.name, now_millis())
        .await
        .map_err(|err| ApiError::from_store("requeueing a repeater", err))?;
    Ok(Json(RequeueAnswer { requeued }))
}
