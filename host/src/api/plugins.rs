//! Plugin routes (`GET /v1/plugins`, `GET/PUT /v1/plugins/{name}`) and the
//! [`PluginCatalog`] seam: what the API needs from the plugin registry,
//! without depending on its internals. The daemon implements it for the
//! real registry.

use async_trait::async_trait;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ApiState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiPath, PluginPath};
use super::time::Timestamp;

/// One plugin as the catalogue sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginInfo {
    /// The name repeaters refer to.
    pub name: String,
    /// True for plugins shipped inside the binary.
    pub builtin: bool,
    /// The version in use, when the plugin reports one.
    #[schema(required)]
    pub version: Option<String>,
    /// Content hash (hex) of the component in use.
    #[schema(required)]
    pub sha256: Option<String>,
    /// The last load or reload error, when a newer file failed to replace
    /// the version in use.
    #[schema(required)]
    pub last_error: Option<String>,
}

/// A version of a plugin that refused a repeater's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefusalView {
    /// The refusing version's sha256 (hex).
    pub sha256: String,
    /// The plugin's message, or the failure (trap, timeout, memory cap).
    pub message: String,
    /// When it refused.
    pub at: Timestamp,
}

/// The plugin version a repeater runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RepeaterVersion {
    /// The version's sha256 (hex).
    pub sha256: String,
    /// True when the repeater pins it (`plugin_sha256`).
    pub pinned: bool,
    /// The latest refusal by a newer version while the repeater stays on
    /// this one.
    #[schema(required)]
    pub refusal: Option<RefusalView>,
}

/// A repeater's refusal, as a version's detail lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RepeaterRefusal {
    /// The repeater, as `domain/name`.
    pub repeater: String,
    /// The plugin's message, or the failure.
    pub message: String,
    /// When it refused.
    pub at: Timestamp,
}

/// One version of a plugin kept in memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginVersionView {
    /// The component's sha256 (hex).
    pub sha256: String,
    /// When it was loaded.
    pub loaded_at: Timestamp,
    /// `builtin`, `file`, `upload`, or `kept` (kept from before a restart).
    pub source: String,
    /// True for the newest version, the one new repeaters are offered.
    pub newest: bool,
    /// The repeaters that run it, as `domain/name`.
    pub repeaters: Vec<String>,
    /// The repeaters whose config it refused; they stay on an older version.
    pub refusals: Vec<RepeaterRefusal>,
}

/// One plugin with every version kept in memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginDetail {
    /// The plugin as the list shows it (its newest version).
    #[serde(flatten)]
    pub plugin: PluginInfo,
    /// The versions, oldest first; one repeater runs on exactly one.
    pub versions: Vec<PluginVersionView>,
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

    /// Checks repeater `domain`/`name`'s new plugin, pin and config against
    /// the version it would run (its pin, or the newest that accepts it);
    /// `Err` carries the plugin's reason. Nothing changes either way.
    async fn validate_repeater(
        &self,
        _domain: &str,
        _name: &str,
        plugin: &str,
        _pin: Option<&str>,
        config: &Value,
    ) -> Result<(), String> {
        self.validate(plugin, config).await
    }

    /// The version repeater `domain`/`name` runs, once it has run a batch.
    fn repeater_version(&self, _domain: &str, _name: &str) -> Option<RepeaterVersion> {
        None
    }

    /// One plugin with its versions; `None` for an unknown name.
    fn detail(&self, name: &str) -> Option<PluginDetail> {
        self.info(name).map(|plugin| PluginDetail {
            plugin,
            versions: Vec::new(),
        })
    }

    /// Forgets a deleted repeater, so versions only it ran can be dropped.
    fn forget_repeater(&self, _domain: &str, _name: &str) {}
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

/// Every plugin the daemon knows, ordered by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginList {
    /// The plugins, built-in and uploaded.
    pub plugins: Vec<PluginInfo>,
}

/// A WebAssembly component's bytes, as a plugin upload's body.
#[derive(Debug, utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct ComponentBytes(pub Vec<u8>);

/// Lists the plugins repeaters may use.
#[utoipa::path(
    get,
    path = "/v1/plugins",
    operation_id = "list_plugins",
    tag = "plugins",
    responses(
        (status = 200, description = "Every plugin, ordered by name", body = PluginList),
        (status = 501, description = "This daemon has no plugin catalogue", body = ErrorBody),
    )
)]
pub async fn list(State(state): State<ApiState>) -> Result<Json<PluginList>, ApiError> {
    let plugins = catalog(&state)?.list();
    Ok(Json(PluginList { plugins }))
}

/// Shows one plugin with every version kept in memory.
///
/// For each version: when it was loaded, the repeaters that run it and the
/// repeaters whose config it refused (they stay on an older version).
#[utoipa::path(
    get,
    path = "/v1/plugins/{name}",
    operation_id = "show_plugin",
    tag = "plugins",
    params(PluginPath),
    responses(
        (status = 200, description = "The plugin and its versions", body = PluginDetail),
        (status = 400, description = "A bad plugin name", body = ErrorBody),
        (status = 404, description = "No such plugin", body = ErrorBody),
        (status = 501, description = "This daemon has no plugin catalogue", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<PluginPath>,
) -> Result<Json<PluginDetail>, ApiError> {
    path.check()?;
    catalog(&state)?
        .detail(&path.name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("plugin {} not found", path.name)))
}

/// True for the media types a component upload may declare.
fn is_component_media_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/wasm")
        || essence.eq_ignore_ascii_case("application/octet-stream")
}

/// Uploads a plugin component.
///
/// The body is the component's bytes (`Content-Type: application/wasm` or
/// `application/octet-stream`). It is compiled and checked before it
/// replaces anything: a broken component never replaces a working one.
#[utoipa::path(
    put,
    path = "/v1/plugins/{name}",
    operation_id = "put_plugin",
    tag = "plugins",
    params(PluginPath),
    request_body(content = ComponentBytes, content_type = "application/wasm", description = "The WebAssembly component (`application/octet-stream` is taken too)"),
    responses(
        (status = 201, description = "Installed under a new name", body = PluginInfo),
        (status = 200, description = "Replaced the plugin of this name", body = PluginInfo),
        (status = 400, description = "A bad plugin name", body = ErrorBody),
        (status = 409, description = "The name cannot be replaced (a built-in plugin)", body = ErrorBody),
        (status = 413, description = "The component is larger than the upload limit", body = ErrorBody),
        (status = 415, description = "The body is not declared as a component", body = ErrorBody),
        (status = 422, description = "The bytes are not a usable component of the plugin world", body = ErrorBody),
        (status = 500, description = "Storing or compiling failed on the host", body = ErrorBody),
        (status = 501, description = "This daemon has no plugin catalogue", body = ErrorBody),
    )
)]
pub async fn put(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<PluginPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<PluginInfo>), ApiError> {
    path.check()?;
    let name = path.name;
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
        Err(error) => Err(install_error(&name, error)),
    }
}

/// The answer to a refused install of plugin `name`: 422 for bytes that
/// are not a usable component, 409 for a name that cannot be replaced, 500
/// (logged) for the host's own failures.
pub(crate) fn install_error(name: &str, error: PluginInstallError) -> ApiError {
    match error {
        PluginInstallError::Invalid(why) => {
            ApiError::invalid(format!("plugin {name:?} is not a usable component: {why}"))
        }
        PluginInstallError::Conflict(why) => ApiError::conflict(why),
        error @ PluginInstallError::Internal(_) => {
            ApiError::internal("installing a plugin", &error)
        }
    }
}
