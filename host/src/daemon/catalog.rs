//! The plugin registry as the API sees it ([`PluginCatalog`]): listing,
//! uploads and config validation, on the same registry the dispatcher uses.

use async_trait::async_trait;
use serde_json::Value;

use crate::api::{PluginCatalog, PluginInfo, PluginInstallError};
use crate::plugin::{CallContext, PluginError, PluginRegistry, PluginSource, PluginStatus};

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
        match loaded.validate_config(&ctx, &config.to_string()).await {
            Ok(()) => Ok(()),
            Err(PluginError::Config { message, .. }) => Err(message),
            Err(error) => Err(error.to_string()),
        }
    }
}
