//! Loading a component into a [`LoadedPlugin`] ([`PluginEngine::load`]).
//! It sits above both: a loaded plugin holds its engine, and the engine
//! prepares components without knowing of loaded plugins, so neither
//! module imports the other.

use std::sync::Arc;

use super::call::LoadedPlugin;
use super::engine::PluginEngine;
use super::error::PluginError;

impl PluginEngine {
    /// Compiles (or takes from the cache), type-checks and pre-instantiates a
    /// component, then instantiates it once under the call limits so a
    /// component whose start-up code fails is refused here rather than on
    /// the first record. Compilation runs on a blocking thread.
    pub async fn load(&self, name: &str, bytes: Arc<[u8]>) -> Result<LoadedPlugin, PluginError> {
        let engine = self.clone();
        let owned_name = name.to_owned();
        let prepared = tokio::task::spawn_blocking(move || engine.prepare(&owned_name, &bytes))
            .await
            .map_err(|e| {
                PluginError::Engine(format!("plugin {name}: compile task failed: {e}"))
            })??;
        let mut plugin = LoadedPlugin::new(self.clone(), name, prepared);
        plugin.probe().await?;
        Ok(plugin)
    }
}
