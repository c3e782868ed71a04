//! The HTTP API: event ingest, repeater and record administration, plugin
//! upload, health probes and metrics, as axum routes over the [`Store`].
//!
//! Every answer is JSON (metrics aside); every error has the shape
//! `{"error": {"code": "...", "message": "..."}}` (see [`ApiError`]),
//! including axum's own rejections, unknown routes and wrong methods.
//! Statuses: 400 unreadable request (malformed JSON, wrong types, bad path
//! or query; the message names the field), 401 missing or unknown token,
//! 403 token that does not reach the route, 404, 405, 409 conflict with the
//! current state, 413 body over the limit, 415 wrong content type, 422
//! semantically invalid, 500 internal (logged), 501 plugin routes without a
//! plugin catalogue, 503 store unreachable (`/readyz`).
//!
//! Times are RFC 3339 UTC strings with milliseconds ([`time`]); durations
//! are integers in fields ending `_ms`.
//!
//! Access rules are in [`auth`]; the route table and the OpenAPI
//! description built from it in [`openapi`] (served at
//! `GET /v1/openapi.json`, rendered for people as `docs/api.md` by
//! [`reference`]); the routes themselves in [`ingest`],
//! [`repeaters`], [`records`], [`bulk`] (a repeater's failure groups, and
//! resend or cancel by group or by state), [`plugins`] and [`health`].

pub mod admission;
pub mod auth;
pub mod bulk;
pub mod error;
pub mod extract;
pub mod health;
pub mod ingest;
pub mod openapi;
pub mod plugins;
pub mod records;
pub mod reference;
pub mod repeaters;
pub mod time;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tower_http::trace::TraceLayer;

pub use auth::{ApiAuth, AuthConfigError};
pub use error::ApiError;
pub use plugins::{
    PluginCatalog, PluginDetail, PluginInfo, PluginInstallError, PluginVersionView, RefusalView,
    RepeaterRefusal, RepeaterVersion,
};

use crate::store::Store;
use crate::telemetry::Metrics;
use admission::IngestGate;

/// Size and count limits of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Largest request body, bytes (plugin uploads aside). Default 1 MiB.
    pub max_body_bytes: usize,
    /// Most events in one batch. Default 1000.
    pub max_batch_events: usize,
    /// Largest plugin component upload, bytes. Default 32 MiB.
    pub max_plugin_bytes: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_body_bytes: 1024 * 1024,
            max_batch_events: 1000,
            max_plugin_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Everything the routes need. Cheap to clone (every field is shared).
#[derive(Clone)]
pub struct ApiState {
    /// The durable state.
    pub store: Arc<dyn Store>,
    /// The daemon's metrics, exported at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The resolved API tokens.
    pub auth: ApiAuth,
    /// Body and batch limits.
    pub limits: ApiLimits,
    /// The plugins repeaters may use. Without it, plugin routes answer 501
    /// and repeater specs are accepted with any well-formed plugin name.
    pub plugins: Option<Arc<dyn PluginCatalog>>,
    /// The bound on posted events not yet stored.
    pub ingest_gate: IngestGate,
}

impl ApiState {
    /// State with default limits and no plugin catalogue.
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>, auth: ApiAuth) -> ApiState {
        ApiState {
            store,
            metrics,
            auth,
            limits: ApiLimits::default(),
            plugins: None,
            ingest_gate: IngestGate::new(
                admission::DEFAULT_PENDING_EVENTS,
                admission::DEFAULT_WAIT,
            ),
        }
    }

    /// Sets the plugin catalogue.
    pub fn with_plugins(mut self, plugins: Arc<dyn PluginCatalog>) -> ApiState {
        self.plugins = Some(plugins);
        self
    }
}

/// The API's router, ready to serve (`axum::serve(listener, router(state))`).
/// Its routes are those of [`openapi::routes`], and no others.
pub fn router(state: ApiState) -> Router {
    let (routes, _description) = openapi::routes(&state.limits).split_for_parts();
    routes
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::wrong_method)
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_request,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Middleware: counts every answer by method, route template and status
/// (refusals by the token check included).
async fn count_request(
    axum::extract::State(state): axum::extract::State<ApiState>,
    matched: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = matched
        .as_ref()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().clone();
    let response = next.run(request).await;
    state
        .metrics
        .api_request(&method, &route, response.status().as_u16());
    response
}
