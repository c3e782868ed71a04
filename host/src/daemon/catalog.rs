//! The plugin registry as the API sees it ([`PluginCatalog`]): listing,
//! uploads and config validation, on the same registry the dispatcher uses.

use async_trait::async_trait;
use serde_json::Value;

use crate::api::time::Timestamp;
use crate::api::{
    PluginCatalog, PluginDetail, PluginInfo, PluginInstallError, PluginVersionView, RefusalView,
    RepeaterRefusal, RepeaterVersion,
};
use crate::plugin::{
    CallContext, PluginError, PluginRegistry, PluginSource, PluginStatus, Refusal, RepeaterKey,
};

/// The daemon's plugin registry behind the API's catalogue trait.
pub struct RegistryCatalog {
    registry: PluginRegistry,
}

impl RegistryCatalog {
    /// Wraps `registry`.
    pub fn new(registry: PluginRegistry) -> RegistryCatalog {
        RegistryCatalog { registry }
    }
}

fn info(name: String, status: PluginStatus) -> PluginInfo {
    PluginInfo {
        builtin: status.source == Some(PluginSource::Builtin),
        version: status.version.clone(),
        sha256: status.version,
        last_error: status.last_error,
        name,
    }
}

fn source_name(source: &PluginSource) -> &'static str {
    match source {
        PluginSource::Builtin => "builtin",
        PluginSource::File(_) => "file",
        PluginSource::Upload => "upload",
        PluginSource::Kept => "kept",
    }
}

fn refusal_view(refusal: Refusal) -> RefusalView {
    RefusalView {
        sha256: refusal.version,
        message: refusal.message,
        at: Timestamp::from_system_time(refusal.at),
    }
}

/// The message a refused repeater config answers with: the plugin's own
/// words when it refused, the whole error otherwise.
fn refusal_reason(error: PluginError) -> String {
    match error {
        PluginError::Config { message, .. } => message,
        error => error.to_string(),
    }
}

#[async_trait]
impl PluginCatalog for RegistryCatalog {
    fn list(&self) -> Vec<PluginInfo> {
        self.registry
            .list()
            .into_iter()
            .filter(|(_, status)| status.version.is_some() || status.last_error.is_some())
            .map(|(name, status)| info(name, status))
            .collect()
    }

    fn exists(&self, name: &str) -> bool {
        self.registry.get(name).is_some()
    }

    async fn install(&self, name: &str, bytes: Vec<u8>) -> Result<PluginInfo, PluginInstallError> {
        if self
            .registry
            .status(name)
            .is_some_and(|status| status.source == Some(PluginSource::Builtin))
        {
            return Err(PluginInstallError::Conflict(format!(
                "plugin {name} is built in and cannot be replaced; upload it under another name"
            )));
        }
        match self.registry.install(name, bytes).await {
            Ok(_) => {
                let status = self.registry.status(name).unwrap_or(PluginStatus {
                    version: None,
                    loaded_at: None,
                    source: None,
                    last_error: None,
                });
                Ok(info(name.to_owned(), status))
            }
            Err(error @ (PluginError::Io { .. } | PluginError::Engine(_))) => {
                Err(PluginInstallError::Internal(error.to_string()))
            }
            Err(error) => Err(PluginInstallError::Invalid(error.to_string())),
        }
    }

    async fn validate(&self, plugin: &str, config: &Value) -> Result<(), String> {
        let Some(loaded) = self.registry.get(plugin) else {
            return Err(format!("plugin {plugin} is not loaded"));
        };
        let ctx = CallContext::new("api", "validate");
        (loaded.validate_config(&ctx, &config.to_string()).await).map_err(refusal_reason)
    }

    async fn validate_repeater(
        &self,
        domain: &str,
        name: &str,
        plugin: &str,
        pin: Option<&str>,
        config: &Value,
    ) -> Result<(), String> {
        let repeater = RepeaterKey::new(domain, name);
        self.registry
            .check_config(&repeater, plugin, pin, &config.to_string())
            .await
            .map(drop)
            .map_err(refusal_reason)
    }

    fn repeater_version(&self, domain: &str, name: &str) -> Option<RepeaterVersion> {
        let resolved = self.registry.resolved(&RepeaterKey::new(domain, name))?;
        Some(RepeaterVersion {
            sha256: resolved.version,
            pinned: resolved.pinned,
            refusal: resolved.refusal.map(refusal_view),
        })
    }

    fn detail(&self, name: &str) -> Option<PluginDetail> {
        let status = self.registry.status(name)?;
        let versions = self
            .registry
            .versions(name)
            .into_iter()
            .map(|version| PluginVersionView {
                sha256: version.version,
                loaded_at: Timestamp::from_system_time(version.loaded_at),
                source: source_name(&version.source).to_owned(),
                newest: version.newest,
                repeaters: version.repeaters.iter().map(|r| r.to_string()).collect(),
                refusals: version
                    .refusals
                    .into_iter()
                    .map(|(repeater, refusal)| RepeaterRefusal {
                        repeater: repeater.to_string(),
                        message: refusal.message,
                        at: Timestamp::from_system_time(refusal.at),
                    })
                    .collect(),
            })
            .collect();
        Some(PluginDetail {
            plugin: info(name.to_owned(), status),
            versions,
        })
    }

    fn forget_repeater(&self, domain: &str, name: &str) {
        self.registry.forget(&RepeaterKey::new(domain, name));
    }
}
