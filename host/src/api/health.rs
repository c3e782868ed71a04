//! Probes and metrics: `GET /healthz` (the process answers), `GET /readyz`
//! (the store answers a cheap query within two seconds) and `GET /metrics`
//! (Prometheus/OpenMetrics text, with the backlog read from the store).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;
use crate::telemetry::Metrics;

/// How long a readiness or backlog query may take before it counts as failed.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: 200 while the process serves requests.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when the store answers, 503 otherwise.
pub async fn readyz(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    // A lookup of a name that cannot exist (not a valid slug) reads an index
    // and returns nothing: the cheapest query the Store trait offers.
    let probe = state.store.repeaters(Some("__readyz"));
    match tokio::time::timeout(STORE_PROBE_TIMEOUT, probe).await {
        Ok(Ok(_)) => Ok(Json(json!({"status": "ready"}))),
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

/// `GET /metrics`: the metrics, after refreshing the backlog gauge. A
/// failing store does not fail the scrape: the other metrics still matter
/// most then, and `repeaterd_backlog_refresh_errors_total` shows it.
pub async fn metrics(State(state): State<ApiState>) -> Response {
    let refresh = state
        .metrics
        .refresh_backlog(state.store.backlog_by_domain());
    match tokio::time::timeout(STORE_PROBE_TIMEOUT, refresh).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "metrics: backlog query failed"),
        Err(_) => tracing::warn!("metrics: backlog query timed out"),
    }
    let mut response = state.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(Metrics::CONTENT_TYPE),
    );
    response
}
