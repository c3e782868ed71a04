//! Plugin routes (`GET /v1/plugins`, `PUT /v1/plugins/{name}`) and the
//! [`PluginCatalog`] seam: what the API needs from the plugin registry,
//! without depending on its internals. The daemon implements it for the
//! real registry.

use async_trait::async_trait;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use serde::Serialize;
use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiPath, path_slug};

/// One plugin as the catalogue sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginInfo {
    /// The name repeaters refer to.
    pub name: String,
    /// True for plugins shipped inside the binary.
    pub builtin: bool,
    /// The version in use, when the plugin reports one.
    pub version: Option<String>,
    /// Content hash (hex) of the component in use.
    pub sha256: Option<String>,
    /// The last load or reload error, when a newer file failed to replace
    /// the version in use.
    pub last_error: Option<String>,
}

/// Why an upload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginInstallError {
    /// The bytes are not a usable component for the plugin world (422).
    #[error("invalid plugin component: {0}")]
    Invalid(String),
    /// The name cannot be replaced, for example a built-in plugin (409).
    #[error("{0}")]
    Conflict(String),
    /// Storing or compiling failed for reasons of the host (500).
    #[error("installing the plugin failed: {0}")]
    Internal(String),
}

/// The plugins known to the daemon, as the API needs them.
#[async_trait]
pub trait PluginCatalog: Send + Sync + 'static {
    /// Every plugin, ordered by name.
    fn list(&self) -> Vec<PluginInfo>;

    /// True when a plugin of this name can be used by a repeater.
    fn exists(&self, name: &str) -> bool;

    /// One plugin's information.
    fn info(&self, name: &str) -> Option<PluginInfo> {
        self.list().into_iter().find(|plugin| plugin.name == name)
    }

    /// Installs (or replaces) a user plugin from component bytes. A broken
    /// component never replaces a working one.
    async fn install(&self, name: &str, bytes: Vec<u8>) -> Result<PluginInfo, PluginInstallError>;

    /// Runs the plugin's `validate-config` on a repeater's plugin config;
    /// `Err` carries the plugin's reason.
    async fn validate(&self, plugin: &str, config: &Value) -> Result<(), String>;
}

fn catalog(state: &ApiState) -> Result<&dyn PluginCatalog, ApiError> {
    state.plugins.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_configured",
            "this daemon has no plugin catalogue",
        )
    })
}

/// `GET /v1/plugins`
pub async fn list(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let plugins = catalog(&state)?.list();
    Ok(Json(json!({ "plugins": plugins })))
}

/// True for the media types a component upload may declare.
fn is_component_media_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/wasm")
        || essence.eq_ignore_ascii_case("application/octet-stream")
}

/// `PUT /v1/plugins/{name}` with the component's bytes as the body
/// (`Content-Type: application/wasm` or `application/octet-stream`).
/// 201 when the name is new, 200 when it replaced a plugin.
pub async fn put(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<PluginInfo>), ApiError> {
    path_slug("plugin", &name)?;
    let catalog = catalog(&state)?;
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok());
    if !declared.is_some_and(is_component_media_type) {
        return Err(ApiError::unsupported_media_type(
            "a plugin upload must be sent as application/wasm or application/octet-stream",
        ));
    }
    let bytes =
        body.map_err(|rejection| ApiError::from_body(rejection, state.limits.max_plugin_bytes))?;
    if bytes.is_empty() {
        return Err(ApiError::invalid("the plugin upload is empty"));
    }
    let existed = catalog.exists(&name);
    match catalog.install(&name, bytes.to_vec()).await {
        Ok(info) => {
            tracing::info!(plugin = %name, sha256 = ?info.sha256, "plugin installed");
            let status = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((status, Json(info)))
        }
        Err(PluginInstallError::Invalid(why)) => Err(ApiError::invalid(format!(
            "plugin {name:?} is not a usable component: {why}"
        ))),
        Err(PluginInstallError::Conflict(why)) => Err(ApiError::conflict(why)),
        Err(err @ PluginInstallError::Internal(_)) => {
            Err(ApiError::internal("installing a plugin", &err))
        }
    }
}
