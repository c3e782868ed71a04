//! Probes and metrics: `GET /healthz` (the process answers), `GET /readyz`
//! (the store answers a cheap query within two seconds) and `GET /metrics`
//! (Prometheus/OpenMetrics text, with the backlog read from the store).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::error::{ApiError, ErrorBody};
use crate::telemetry::Metrics;

/// How long a readiness or backlog query may take before it counts as failed.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The answer of a probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProbeAnswer {
    /// `ok` (alive) or `ready` (the store answers).
    #[schema(example = "ok")]
    pub status: String,
}

fn probe_answer(status: &str) -> Json<ProbeAnswer> {
    Json(ProbeAnswer {
        status: status.to_owned(),
    })
}

/// Liveness: answers while the process serves requests.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "The process answers", body = ProbeAnswer))
)]
pub async fn healthz() -> Json<ProbeAnswer> {
    probe_answer("ok")
}

/// Readiness: the store answers a cheap query within two seconds.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "The store answers", body = ProbeAnswer),
        (status = 503, description = "The store failed or did not answer in time", body = ErrorBody),
    )
)]
pub async fn readyz(State(state): State<ApiState>) -> Result<Json<ProbeAnswer>, ApiError> {
    // A lookup of a name that cannot exist (not a valid slug) reads an index
    // and returns nothing: the cheapest query the Store trait offers.
    let probe = state.store.repeaters(Some("__readyz"));
    match tokio::time::timeout(STORE_PROBE_TIMEOUT, probe).await {
        Ok(Ok(_)) => Ok(probe_answer("ready")),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readiness probe: store query failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the store is not reachable; see the daemon log",
            ))
        }
        Err(_) => {
            tracing::warn!("readiness probe: store query timed out");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the store did not answer within 2 seconds",
            ))
        }
    }
}

/// Prometheus metrics, in the OpenMetrics text format.
///
/// The backlog gauge, and the room left on a SQLite file's filesystem, are
/// refreshed from the store first. A failing store
/// does not fail the scrape: the other metrics still matter most then, and
/// `repeaterd_backlog_refresh_errors_total` shows it.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses(
        (status = 200, description = "The metrics", body = String, content_type = "application/openmetrics-text"),
    )
)]
pub async fn metrics(State(state): State<ApiState>) -> Response {
    let refresh = state
        .metrics
        .refresh_backlog(state.store.backlog_by_domain());
    match tokio::time::timeout(STORE_PROBE_TIMEOUT, refresh).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "metrics: backlog query failed"),
        Err(_) => tracing::warn!("metrics: backlog query timed out"),
    }
    (state.metrics).set_database_free_bytes(state.store.database_free_bytes());
    let mut response = state.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(Metrics::CONTENT_TYPE),
    );
    response
}
