//! Repeater routes: `GET /v1/domains/{domain}/repeaters`, `GET/PUT/DELETE
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

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiPath, from_value, parse_json, path_slug, require_json};
use crate::config::check_repeater_spec;
use crate::model::{Millis, RepeaterSpec, now_millis};
use crate::store::{Backlog, RepeaterRow};

/// The status of one repeater, as the API shows it.
#[derive(Debug, Serialize)]
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
    pub lease: Option<LeaseStatus>,
    /// Record counts by state.
    pub backlog: Backlog,
    /// The adaptive concurrency limit the dispatcher last reported.
    pub concurrency: Option<u32>,
    /// The last failure seen.
    pub last_error: Option<String>,
    /// When a record last succeeded.
    pub last_success_at: Option<Millis>,
    /// The plugin in use.
    pub plugin: PluginStatus,
    /// When the repeater was first stored.
    pub created_at: Millis,
    /// When its spec or status last changed.
    pub updated_at: Millis,
}

/// Endpoint backoff of a repeater.
#[derive(Debug, Serialize)]
pub struct BackoffStatus {
    /// True while `until` is in the future.
    pub active: bool,
    /// Backed off until then.
    pub until: Option<Millis>,
    /// Consecutive failed batches.
    pub step: u32,
}

/// Who holds a repeater's lane.
#[derive(Debug, Serialize)]
pub struct LeaseStatus {
    /// The holder's name.
    pub holder: String,
    /// The lease epoch.
    pub epoch: i64,
    /// When it expires unless renewed.
    pub expires_at: Millis,
    /// True when it has expired (the next claim takes it over).
    pub expired: bool,
}

/// The plugin a repeater uses.
#[derive(Debug, Serialize)]
pub struct PluginStatus {
    /// Its name.
    pub name: String,
    /// The sha256 pin of the spec, if any.
    pub pinned_sha256: Option<String>,
    /// Whether the catalogue knows it (`None` without a catalogue).
    pub known: Option<bool>,
    /// Its version, when the catalogue reports one.
    pub version: Option<String>,
    /// Content hash of the version in use.
    pub sha256: Option<String>,
    /// Its last load or reload error.
    pub last_error: Option<String>,
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
    let plugin = PluginStatus {
        name: row.spec.plugin.clone(),
        pinned_sha256: row.spec.plugin_sha256.clone(),
        known: info.as_ref().map(Option::is_some),
        version: info.as_ref().and_then(|i| i.as_ref()?.version.clone()),
        sha256: info.as_ref().and_then(|i| i.as_ref()?.sha256.clone()),
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
            until: row.backoff_until,
            step: row.backoff_step,
        },
        lease: row.lease.map(|lease| LeaseStatus {
            expired: lease.expires_at <= now,
            holder: lease.holder,
            epoch: lease.epoch,
            expires_at: lease.expires_at,
        }),
        backlog,
        last_error: row.last_error,
        last_success_at: row.last_success_at,
        plugin,
        created_at: row.created_at,
        updated_at: row.updated_at,
        spec: row.spec,
    })
}

async fn find(state: &ApiState, domain: &str, name: &str) -> Result<RepeaterRow, ApiError> {
    path_slug("domain", domain)?;
    path_slug("repeater", name)?;
    state
        .store
        .repeater(domain, name)
        .await
        .map_err(|err| ApiError::from_store("reading a repeater", err))?
        .ok_or_else(|| ApiError::not_found(format!("repeater {domain}/{name} not found")))
}

/// `GET /v1/domains/{domain}/repeaters`
pub async fn list(
    State(state): State<ApiState>,
    ApiPath(domain): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    path_slug("domain", &domain)?;
    let rows = state
        .store
        .repeaters(Some(&domain))
        .await
        .map_err(|err| ApiError::from_store("listing repeaters", err))?;
    let mut repeaters = Vec::with_capacity(rows.len());
    for row in rows {
        repeaters.push(status_of(&state, row).await?);
    }
    Ok(Json(json!({ "repeaters": repeaters })))
}

/// `GET /v1/domains/{domain}/repeaters/{name}`
pub async fn show(
    State(state): State<ApiState>,
    ApiPath((domain, name)): ApiPath<(String, String)>,
) -> Result<Json<RepeaterStatus>, ApiError> {
    let row = find(&state, &domain, &name).await?;
    Ok(Json(status_of(&state, row).await?))
}

/// `PUT /v1/domains/{domain}/repeaters/{name}`: 201 when created, 200 when
/// replaced (status and records are kept).
pub async fn put(
    State(state): State<ApiState>,
    ApiPath((domain, name)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<RepeaterStatus>), ApiError> {
    path_slug("domain", &domain)?;
    path_slug("repeater", &name)?;
    require_json(&headers)?;
    let bytes =
        body.map_err(|rejection| ApiError::from_body(rejection, state.limits.max_body_bytes))?;
    let value: Value = parse_json(&bytes)?;
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
        catalog
            .validate(&spec.plugin, &spec.plugin_config)
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

/// `DELETE /v1/domains/{domain}/repeaters/{name}`: 204; its unfinished
/// records are cancelled.
pub async fn delete(
    State(state): State<ApiState>,
    ApiPath((domain, name)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    path_slug("domain", &domain)?;
    path_slug("repeater", &name)?;
    let deleted = state
        .store
        .delete_repeater(&domain, &name, now_millis())
        .await
        .map_err(|err| ApiError::from_store("deleting a repeater", err))?;
    if !deleted {
        return Err(ApiError::not_found(format!(
            "repeater {domain}/{name} not found"
        )));
    }
    state.metrics.forget_repeater(&domain, &name);
    tracing::info!(%domain, repeater = %name, "repeater deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn set_paused(
    state: ApiState,
    domain: String,
    name: String,
    paused: bool,
) -> Result<Json<RepeaterStatus>, ApiError> {
    path_slug("domain", &domain)?;
    path_slug("repeater", &name)?;
    let found = state
        .store
        .set_paused(&domain, &name, paused, now_millis())
        .await
        .map_err(|err| ApiError::from_store("pausing or resuming a repeater", err))?;
    if !found {
        return Err(ApiError::not_found(format!(
            "repeater {domain}/{name} not found"
        )));
    }
    let row = find(&state, &domain, &name).await?;
    Ok(Json(status_of(&state, row).await?))
}

/// `POST .../repeaters/{name}/pause`: the repeater's status, paused.
pub async fn pause(
    State(state): State<ApiState>,
    ApiPath((domain, name)): ApiPath<(String, String)>,
) -> Result<Json<RepeaterStatus>, ApiError> {
    set_paused(state, domain, name, true).await
}

/// `POST .../repeaters/{name}/resume`: the repeater's status, running.
pub async fn resume(
    State(state): State<ApiState>,
    ApiPath((domain, name)): ApiPath<(String, String)>,
) -> Result<Json<RepeaterStatus>, ApiError> {
    set_paused(state, domain, name, false).await
}

/// `POST .../repeaters/{name}/requeue`: puts retrying and cancelled records
/// back to pending and clears the backoff; answers `{"requeued": n}`.
pub async fn requeue(
    State(state): State<ApiState>,
    ApiPath((domain, name)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    find(&state, &domain, &name).await?;
    let moved = state
        .store
        .requeue(&domain, &name, now_millis())
        .await
        .map_err(|err| ApiError::from_store("requeueing a repeater", err))?;
    Ok(Json(json!({ "requeued": moved })))
}
