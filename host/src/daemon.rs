//! The daemon's wiring (`repeaterd serve`): opens and migrates the store,
//! stores the configured repeaters, loads the plugins (built-ins and the
//! plugin directory, with hot reload), starts the dispatcher and the HTTP
//! API, reloads the config file on SIGHUP and shuts down gracefully on
//! SIGTERM or SIGINT.
//!
//! Repeaters in the config file are upserted at start and on every reload.
//! A repeater removed from the file is left in the store (it may have been
//! created through the API); delete it through the API.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::{self, ApiState};
use crate::config::{Config, ConfigError};
use crate::dispatch::{DispatchDeps, DispatchSettings, Dispatcher, RetentionSettings};
use crate::model::now_millis;
use crate::outbound::Outbound;
use crate::plugin::{CallContext, PluginEngine, PluginError, PluginRegistry};
use crate::store::{self, Store, StoreError};
use crate::telemetry::Metrics;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config file is wrong.
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
    Outbound(String),
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

/// How long running batches may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Runs the daemon with the config file at `config_path` until SIGTERM or
/// SIGINT.
pub async fn serve(config_path: &Path) -> Result<(), DaemonError> {
    let config = Config::load(config_path)?;
    serve_config(config, Some(config_path.to_owned())).await
}

/// Opens the store named by the config and applies the migrations
/// (`repeaterd migrate`).
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, DaemonError> {
    let store = store::open(
        config.database.url.as_deref(),
        &config.database.sqlite_path,
    )
    .await?;
    store.migrate().await?;
    Ok(store)
}

/// Runs the daemon with an already loaded config; `reload_from` is the file
/// read again on SIGHUP.
pub async fn serve_config(config: Config, reload_from: Option<PathBuf>) -> Result<(), DaemonError> {
    let store = open_store(&config).await?;
    let plugins = load_plugins(&config).await?;
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

    let metrics = Arc::new(Metrics::new());
    let outbound = Outbound::new(config.outbound_config())
        .map_err(|e| DaemonError::Outbound(e.to_string()))?;

    let (shutdown_tx, shutdown) = watch::channel(false);
    let (dispatch_config_tx, dispatch_config) = watch::channel(Arc::new(config.dispatch.clone()));
    let settings = dispatch_settings(&config);
    let dispatcher = Dispatcher::new(DispatchDeps {
        store: store.clone(),
        plugins: plugins.clone(),
        outbound,
        metrics: metrics.clone(),
        settings,
        config: dispatch_config,
    })
    .spawn(shutdown.clone());

    let listener = tokio::net::TcpListener::bind(&config.server.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            listen: config.server.listen.clone(),
            source,
        })?;
    let local = listener.local_addr().ok();
    let state = ApiState::new(store.clone(), plugins.clone(), metrics.clone(), &config);
    let router = api::router(state);
    let mut api_shutdown = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = api_shutdown.wait_for(|stop| *stop).await;
            })
            .await
    });
    tracing::info!(listen = ?local, "repeaterd is serving");

    signals(
        store.as_ref(),
        &plugins,
        reload_from.as_deref(),
        &dispatch_config_tx,
    )
    .await?;
    tracing::info!("shutting down: no new batches; running batches get {SHUTDOWN_GRACE:?}");
    let _ = shutdown_tx.send(true);
    if let Ok(Err(source)) = server.await {
        tracing::warn!(%source, "API server stopped with an error");
    }
    let _ = dispatcher.await;
    tracing::info!("stopped");
    Ok(())
}

/// Waits for SIGTERM or SIGINT; reloads the config on SIGHUP meanwhile.
async fn signals(
    store: &dyn Store,
    plugins: &PluginRegistry,
    reload_from: Option<&Path>,
    dispatch_config: &watch::Sender<Arc<crate::config::DispatchConfig>>,
) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind, name| {
        signal(kind).map_err(|source| DaemonError::Signal {
            signal: name,
            source,
        })
    };
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    let mut hup = install(SignalKind::hangup(), "SIGHUP")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                let Some(path) = reload_from else { continue };
                match Config::load(path) {
                    Ok(config) => {
                        match upsert_repeaters(store, plugins, &config).await {
                            Ok(()) => {
                                let _ = dispatch_config.send(Arc::new(config.dispatch.clone()));
                                tracing::info!(path = %path.display(), repeaters = config.repeaters.len(), "config reloaded");
                            }
                            Err(error) => tracing::error!(%error, "config reload failed to store repeaters"),
                        }
                    }
                    Err(error) => tracing::error!(%error, "config reload refused; the running config stays"),
                }
            }
        }
    }
}

/// The plugin registry: built-ins first, then the plugin directory.
pub async fn load_plugins(config: &Config) -> Result<PluginRegistry, DaemonError> {
    let limits = config.plugins.limits();
    let engine = match &config.plugins.cache_dir {
        Some(dir) => PluginEngine::with_cache_dir(limits, dir)?,
        None => PluginEngine::new(limits)?,
    };
    let registry = PluginRegistry::new(engine, config.plugins.dir.clone());
    registry
        .load_builtins(crate::plugin::BUILTIN_PLUGINS)
        .await?;
    for error in registry.load_dir().await {
        tracing::warn!(%error, "a plugin in the plugin directory was not loaded");
    }
    Ok(registry)
}

/// Stores the config's repeaters, checking each plugin config first: a
/// repeater whose plugin refuses its config is still stored (its status
/// shows the error) so a bad entry never stops the daemon.
pub async fn upsert_repeaters(
    store: &dyn Store,
    plugins: &PluginRegistry,
    config: &Config,
) -> Result<(), DaemonError> {
    let now = now_millis();
    for spec in &config.repeaters {
        if let Some(plugin) = plugins.get(&spec.plugin) {
            let ctx = CallContext::new(&spec.domain, &spec.name);
            if let Err(error) = plugin
                .validate_config(&ctx, &spec.plugin_config.to_string())
                .await
            {
                tracing::warn!(repeater = %format!("{}/{}", spec.domain, spec.name), %error, "plugin refused the repeater's config");
            }
        } else {
            tracing::warn!(repeater = %format!("{}/{}", spec.domain, spec.name), plugin = %spec.plugin, "plugin is not loaded");
        }
        store.upsert_repeater(spec, now).await?;
    }
    Ok(())
}

fn dispatch_settings(config: &Config) -> DispatchSettings {
    let dispatch = &config.dispatch;
    DispatchSettings {
        holder: DispatchSettings::holder_name(),
        max_inflight: dispatch.max_inflight,
        default_concurrency: dispatch.effective(&Default::default()).concurrency,
        lease_ttl_ms: dispatch.lease_ttl_ms,
        max_sleep: Duration::from_secs(1),
        busy_poll_ms: 50,
        batch_budget: Duration::from_millis(dispatch.batch_budget_ms),
        shutdown_grace: SHUTDOWN_GRACE,
        retention: Some(RetentionSettings {
            retention: Duration::from_secs(dispatch.retention_seconds),
            batch: 500,
            interval: Duration::from_secs(60),
            pause: Duration::from_millis(50),
        }),
    }
}
