//! The daemon's wiring (`repeaterd serve`): opens and migrates the store,
//! stores the configured repeaters, loads the plugins (built-ins and the
//! plugin directory, with hot reload), starts the dispatcher and the HTTP
//! API, reloads the config file on SIGHUP and shuts down gracefully on
//! SIGTERM or SIGINT.
//!
//! Repeaters in the config file are upserted at start and on every reload.
//! A repeater removed from the file is left in the store (it may have been
//! created through the API); delete it through the API.
//!
//! What a reload changes: the `[[repeater]]` specs and the `[dispatch]`
//! defaults every repeater inherits. The listener, database, plugin limits
//! and tokens need a restart.

mod catalog;

pub use catalog::RegistryCatalog;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::admission::{self, IngestGate};
use crate::api::{self, ApiAuth, ApiLimits, ApiState, AuthConfigError};
use crate::config::{Config, ConfigError, DatabaseConfig, DispatchConfig};
use crate::console::{self, ConsoleState};
use crate::dispatch::{DispatchDeps, DispatchSettings, Dispatcher, RetentionSettings};
use crate::model::now_millis;
use crate::outbound::{
    AuthConfig, Authenticator, Credentials, EnvSecrets, Outbound, OutboundConfig,
};
use crate::plugin::{PluginEngine, PluginError, PluginLimits, PluginRegistry, RepeaterKey};
use crate::store::{self, AdminStore, Store, StoreError};
use crate::telemetry::Metrics;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config file is wrong, or a secret it names is missing.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database could not be opened, migrated or written.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The plugin engine or a built-in plugin failed to load.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The outbound HTTP client could not be built.
    #[error("outbound client: {0}")]
    Outbound(#[from] crate::outbound::OutboundBuildError),
    /// The API tokens are unusable.
    #[error("API tokens: {0}")]
    Tokens(#[from] AuthConfigError),
    /// The API listener could not bind or failed.
    #[error("API server on {listen}: {source}")]
    Listen {
        /// The configured address.
        listen: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Installing a signal handler failed.
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        /// Which signal.
        signal: &'static str,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Runs the daemon with the config file at `config_path` until SIGTERM or
/// SIGINT; SIGHUP reloads the file. `compiler` is the `repeaterd`
/// executable that compiles plugins in a child process (see
/// [`PluginEngine::compile_in_child`]); `None` compiles in process.
pub async fn serve(config_path: &Path, compiler: Option<PathBuf>) -> Result<(), DaemonError> {
    let config = Config::load(config_path)?;
    serve_config(config, Some(config_path), compiler).await
}

/// Opens the store named by the config and applies the migrations
/// (`repeaterd migrate`).
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, DaemonError> {
    let url = config.database.postgres_url()?;
    let store = store::open_with(
        url.as_ref().map(|secret| secret.expose()),
        &config.database.sqlite_path,
        pool_sizes(&config.database),
    )
    .await?;
    Ok(store)
}

/// The store's pool sizes from the `[database]` table.
fn pool_sizes(database: &DatabaseConfig) -> store::PoolSizes {
    store::PoolSizes {
        postgres: database.max_connections,
        sqlite_readers: database.sqlite_read_connections,
    }
}

/// Runs the daemon with an already loaded config; `reload_from` is the file
/// read again on SIGHUP; `compiler` as for [`serve`].
pub async fn serve_config(
    config: Config,
    reload_from: Option<&Path>,
    compiler: Option<PathBuf>,
) -> Result<(), DaemonError> {
    let signals = Signals::install()?;
    let auth = api_auth(&config)?;
    let store = open_store(&config).await?;
    let plugins = load_plugins(&config, compiler).await?;
    let _watcher = match plugins.dir() {
        Some(dir) if dir.is_dir() => match plugins.watch() {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(%error, "plugin hot reload is off");
                None
            }
        },
        _ => None,
    };
    upsert_repeaters(store.as_ref(), &plugins, &config).await?;
    settle_plugins(store.clone(), plugins.clone());

    let metrics = Arc::new(Metrics::new());
    count_rollouts(&plugins, metrics.clone());
    let outbound = Outbound::new(OutboundConfig {
        allow: config.security.allow_private.clone(),
        // Every request in flight may go to the same receiver; keep them all
        // pooled so batches do not reopen connections.
        pool_max_idle_per_host: (config.dispatch.max_inflight as usize).max(32),
        ..OutboundConfig::default()
    })?;
    let secrets = Arc::new(EnvSecrets);
    let credentials = Credentials {
        auth: Authenticator::new(outbound.clone(), secrets.clone(), AuthConfig::default()),
        secrets,
    };

    let (shutdown_tx, shutdown) = watch::channel(false);
    let (dispatch_config_tx, dispatch_config) = watch::channel(Arc::new(config.dispatch.clone()));
    let settings = dispatch_settings(&config);
    let holder = settings.holder.clone();
    let dispatcher = Dispatcher::new(DispatchDeps {
        store: store.clone(),
        plugins: plugins.clone(),
        outbound,
        credentials,
        metrics: metrics.clone(),
        settings,
        config: dispatch_config,
    })
    .spawn(shutdown.clone());

    let listen = config.server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| DaemonError::Listen {
            listen: listen.to_string(),
            source,
        })?;
    let state = ApiState {
        limits: ApiLimits {
            max_body_bytes: config.server.max_body_bytes,
            ..ApiLimits::default()
        },
        ingest_gate: IngestGate::new(config.server.max_pending_events, admission::DEFAULT_WAIT),
        ..ApiState::new(store.clone(), metrics.clone(), auth)
    }
    .with_plugins(Arc::new(RegistryCatalog::new(plugins.clone())));
    let mut router = api::router(state.clone());
    if config.server.ui {
        router = router.merge(console::router(ConsoleState::new(
            state,
            config.server.ui_session_ttl,
            holder.clone(),
            dispatch_config_tx.subscribe(),
        )));
    }
    let mut api_shutdown = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = api_shutdown.wait_for(|stop| *stop).await;
            })
            .await
    });
    tracing::info!(%listen, config = %config, "repeaterd is serving");

    let result = signals
        .run(store.as_ref(), &plugins, reload_from, &dispatch_config_tx)
        .await;
    tracing::info!(
        grace = ?config.server.shutdown_grace,
        "shutting down: no new batches; running batches may finish"
    );
    let _ = shutdown_tx.send(true);
    match server.await {
        Ok(Err(error)) => tracing::warn!(%error, "API server stopped with an error"),
        Err(error) => tracing::warn!(%error, "API server task failed"),
        Ok(Ok(())) => {}
    }
    let _ = dispatcher.await;
    tracing::info!("stopped");
    result
}

/// The API's tokens, read from the environment variables the config names.
fn api_auth(config: &Config) -> Result<ApiAuth, DaemonError> {
    let admin = match &config.security.admin_token_env {
        Some(var) => Some(var.resolve()?.expose().to_owned()),
        None => None,
    };
    let mut domains = Vec::new();
    for (domain, var) in &config.security.domain_tokens {
        domains.push((domain.clone(), var.resolve()?.expose().to_owned()));
    }
    Ok(ApiAuth::new(admin, domains)?)
}

/// The signals the daemon answers, registered before anything is served:
/// until a handler is registered, SIGHUP's default action ends the
/// process, so a reload sent as soon as the API answers must already be
/// caught.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, DaemonError> {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind, name| {
            signal(kind).map_err(|source| DaemonError::Signal {
                signal: name,
                source,
            })
        };
        Ok(Signals {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Waits for SIGTERM or SIGINT; reloads the config on SIGHUP meanwhile.
    async fn run(
        mut self,
        store: &dyn AdminStore,
        plugins: &PluginRegistry,
        reload_from: Option<&Path>,
        dispatch_config: &watch::Sender<Arc<DispatchConfig>>,
    ) -> Result<(), DaemonError> {
        loop {
            tokio::select! {
                _ = self.term.recv() => return Ok(()),
                _ = self.int.recv() => return Ok(()),
                _ = self.hup.recv() => {
                    let Some(path) = reload_from else { continue };
                    reload(store, plugins, path, dispatch_config).await;
                }
            }
        }
    }
}

/// Reads the config file again and applies what can change while running.
/// A bad file is logged and the running config stays.
async fn reload(
    store: &dyn AdminStore,
    plugins: &PluginRegistry,
    path: &Path,
    dispatch_config: &watch::Sender<Arc<DispatchConfig>>,
) {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "config reload refused; the running config stays");
            return;
        }
    };
    match upsert_repeaters(store, plugins, &config).await {
        Ok(()) => {
            let _ = dispatch_config.send(Arc::new(config.dispatch.clone()));
            tracing::info!(path = %path.display(), repeaters = config.repeaters.len(), "config reloaded");
        }
        Err(error) => tracing::error!(%error, "config reload could not store the repeaters"),
    }
}

/// The plugin limits of the `[plugins]` table.
pub fn plugin_limits(config: &Config) -> PluginLimits {
    let plugins = &config.plugins;
    PluginLimits {
        memory_bytes: (plugins.memory_mb as usize).saturating_mul(1 << 20),
        cpu_time: Duration::from_millis(plugins.cpu_ms),
        max_body_bytes: plugins.max_body_bytes,
        max_header_bytes: plugins.max_header_bytes,
        ..PluginLimits::default()
    }
}

/// The plugin registry: built-ins first, then the plugin directory.
/// Components missing from the compiled-code cache are compiled by
/// `compiler` in a child process when given.
pub async fn load_plugins(
    config: &Config,
    compiler: Option<PathBuf>,
) -> Result<PluginRegistry, DaemonError> {
    let engine = PluginEngine::with_cache_dir(plugin_limits(config), &config.plugins.cache_dir)?;
    if let Some(exe) = compiler {
        engine.compile_in_child(exe);
    }
    let registry = PluginRegistry::keeping_versions(
        engine,
        config.plugins.dir.clone(),
        Some(config.plugins.versions_dir.clone()),
    );
    registry
        .load_builtins(crate::plugin::BUILTIN_PLUGINS)
        .await?;
    let kept = registry.load_kept().await;
    if kept > 0 {
        tracing::info!(
            versions = kept,
            "plugin versions kept from before the restart loaded"
        );
    }
    for error in registry.load_dir().await {
        tracing::warn!(%error, "a plugin in the plugin directory was not loaded");
    }
    Ok(registry)
}

/// Resolves every stored repeater to its plugin version in the
/// background, then lets the registry drop the kept versions none of them
/// runs (ADR 14).
fn settle_plugins(store: Arc<dyn Store>, plugins: PluginRegistry) {
    tokio::spawn(async move {
        let repeaters = match store.repeaters(None).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "could not list the repeaters; unused plugin versions stay loaded");
                return;
            }
        };
        let repeaters = repeaters
            .into_iter()
            .map(|row| {
                let spec = row.spec;
                (
                    RepeaterKey::new(&spec.domain, &spec.name),
                    spec.plugin,
                    spec.plugin_sha256,
                    spec.plugin_config.to_string(),
                )
            })
            .collect();
        plugins.settle(repeaters).await;
    });
}

/// Stores the config's repeaters, checking each plugin config first
/// against the version the repeater would run (its pin, or the newest
/// version that accepts it). A changed repeater whose config is refused is
/// not stored: it keeps its stored spec and the error is logged. A new
/// repeater whose plugin refuses its config or is missing is still stored
/// (the dispatcher backs it off with the reason in its status), so one bad
/// entry never stops the daemon.
pub async fn upsert_repeaters(
    store: &dyn AdminStore,
    plugins: &PluginRegistry,
    config: &Config,
) -> Result<(), DaemonError> {
    let now = now_millis();
    for spec in &config.repeaters {
        let repeater = RepeaterKey::new(&spec.domain, &spec.name);
        let stored = store.repeater(&spec.domain, &spec.name).await?;
        if stored.as_ref().is_some_and(|row| row.spec == *spec) {
            continue;
        }
        let checked = plugins
            .check_config(
                &repeater,
                &spec.plugin,
                spec.plugin_sha256.as_deref(),
                &spec.plugin_config.to_string(),
            )
            .await;
        match (checked, stored) {
            (Ok(_), _) => {}
            (Err(error), Some(_)) => {
                tracing::error!(%repeater, %error,
                    "the repeater's changed config is refused by its plugin; its stored spec stays");
                continue;
            }
            (Err(error), None) => {
                tracing::warn!(%repeater, %error, "plugin refused the repeater's config");
            }
        }
        store.upsert_repeater(spec, now).await?;
    }
    Ok(())
}

/// Counts every rollout of a new plugin version to a repeater, accepted or
/// refused, until the registry is dropped.
fn count_rollouts(plugins: &PluginRegistry, metrics: Arc<Metrics>) {
    let mut rollouts = plugins.subscribe_rollouts();
    tokio::spawn(async move {
        loop {
            match rollouts.recv().await {
                Ok(event) => metrics.plugin_rollout(&event.plugin, event.refused.is_some()),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "plugin rollout events were not counted");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Process-level dispatch settings from the config.
pub fn dispatch_settings(config: &Config) -> DispatchSettings {
    let dispatch = &config.dispatch;
    DispatchSettings {
        holder: DispatchSettings::holder_name(),
        max_inflight: dispatch.max_inflight,
        batch_size: dispatch.batch_size,
        default_concurrency: dispatch.concurrency,
        lease_ttl_ms: millis(
            dispatch
                .lease_ttl_on(config.database.url.is_some() || config.database.url_env.is_some()),
        ),
        max_sleep: Duration::from_secs(1),
        batch_budget: dispatch.batch_time_budget,
        shutdown_grace: config.server.shutdown_grace,
        retention: Some(RetentionSettings {
            retention: dispatch.retention,
            batch: dispatch.retention_batch,
            interval: Duration::from_secs(60),
            pause: Duration::from_millis(50),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::Grant;
    use crate::config::SecretRef;

    #[test]
    fn the_configs_pool_defaults_are_the_stores() {
        let config = Config::default();
        assert_eq!(pool_sizes(&config.database), store::PoolSizes::default());
    }

    #[test]
    fn api_tokens_are_read_from_the_environment_naming_a_missing_one() {
        let mut config = Config::default();
        assert!(api_auth(&config).unwrap().is_open());
        // PATH is set in every test environment; it stands in for a token
        // variable without mutating the process environment.
        let path = std::env::var("PATH").unwrap();
        config.security.admin_token_env = Some(SecretRef::new("PATH").unwrap());
        let auth = api_auth(&config).unwrap();
        assert_eq!(auth.grant(&path), Some(Grant::Admin));
        config.security.domain_tokens.insert(
            "acme".into(),
            SecretRef::new("REPEATERD_TEST_SURELY_UNSET_7F3A").unwrap(),
        );
        let err = api_auth(&config).unwrap_err();
        assert!(
            err.to_string().contains("REPEATERD_TEST_SURELY_UNSET_7F3A"),
            "{err}"
        );
    }
}
