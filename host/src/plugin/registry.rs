//! The plugins the daemon can use, by name, with every version some
//! repeater still runs, and their rollout repeater by repeater.
//!
//! Each name maps to the versions kept in memory, content-addressed by
//! sha256; the last one to arrive is the newest. A version is kept while it
//! is the newest or some repeater resolves to it; otherwise it is dropped
//! from the registry, and freed once the batches holding its `Arc` end.
//! Built-in plugins come from the binary; user plugins are the `*.wasm`
//! files of a directory (name = file stem), watched for changes, or uploads
//! written into that directory. A new version is compiled off the hot path
//! and type-checked first; a version that fails is never added, and its
//! error is kept for the plugin's status.
//!
//! Each repeater resolves to exactly one version ([`PluginRegistry::resolve`]):
//! its pin, or the newest version that accepted its config. When a new
//! version arrives, its `validate-config` runs with the config of every
//! unpinned repeater already resolved to an older one ([`RolloutEvent`]):
//! accepted, the repeater's next batch uses it; refused (or trapped, timed
//! out, hit a cap), the repeater stays where it was and the refusal is kept
//! for its status. A batch in flight finishes on the version it started
//! with. ADR 14 records the rules.
//!
//! A file that disappears from the directory is not unloaded: repeaters that
//! use it keep working until the daemon restarts or a new file appears.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use notify::Watcher;
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, mpsc};

use super::archive;
use super::call::{CallContext, LoadedPlugin};
use super::engine::PluginEngine;
use super::error::PluginError;

/// How long the directory must be quiet before changed files are loaded;
/// copying a file produces several events.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Where a version of a plugin came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// Shipped inside the binary.
    Builtin,
    /// A `.wasm` file in the plugin directory.
    File(PathBuf),
    /// Uploaded through the API (and written to the directory, if any).
    Upload,
    /// Kept from before the daemon restarted (see [`super::archive`]).
    Kept,
}

/// What the registry knows about one plugin name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginStatus {
    /// The sha256 (hex) of the newest version, if one loaded.
    pub version: Option<String>,
    /// When the newest version arrived.
    pub loaded_at: Option<SystemTime>,
    /// Where the newest version came from.
    pub source: Option<PluginSource>,
    /// Why the latest attempt to load a new version failed, if it did.
    /// Cleared by the next successful load.
    pub last_error: Option<String>,
}

/// Broadcast when a new version of a plugin becomes the newest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSwapped {
    /// The plugin's name.
    pub name: String,
    /// The new version's sha256 (hex).
    pub version: String,
}

/// A repeater, as the registry knows it: by domain and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepeaterKey {
    /// The repeater's domain.
    pub domain: String,
    /// The repeater's name.
    pub name: String,
}

impl RepeaterKey {
    /// The key of repeater `domain`/`name`.
    pub fn new(domain: &str, name: &str) -> RepeaterKey {
        RepeaterKey {
            domain: domain.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl std::fmt::Display for RepeaterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.domain, self.name)
    }
}

/// A version of a plugin that refused a repeater's config (or failed
/// running its `validate-config`), so the repeater stayed where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The refusing version's sha256 (hex).
    pub version: String,
    /// The plugin's message, or the failure (trap, timeout, memory cap).
    pub message: String,
    /// When it refused.
    pub at: SystemTime,
}

/// The version a repeater resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedVersion {
    /// The plugin's name.
    pub plugin: String,
    /// The version's sha256 (hex).
    pub version: String,
    /// True when the repeater pins this version.
    pub pinned: bool,
    /// The latest refusal by a newer version, while the repeater stays on
    /// this one.
    pub refusal: Option<Refusal>,
}

/// One kept version of a plugin, for the plugin's detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionStatus {
    /// The sha256 (hex).
    pub version: String,
    /// When it arrived.
    pub loaded_at: SystemTime,
    /// Where it came from.
    pub source: PluginSource,
    /// True for the newest version.
    pub newest: bool,
    /// The repeaters resolved to it, sorted.
    pub repeaters: Vec<RepeaterKey>,
    /// The repeaters whose config it refused, with the refusal.
    pub refusals: Vec<(RepeaterKey, Refusal)>,
}

/// Broadcast for every repeater a new version was offered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutEvent {
    /// The plugin's name.
    pub plugin: String,
    /// The new version's sha256 (hex).
    pub version: String,
    /// The repeater.
    pub repeater: RepeaterKey,
    /// `None` when the repeater moved to the version; the refusal's message
    /// when it stayed where it was.
    pub refused: Option<String>,
}

#[derive(Debug)]
struct Version {
    plugin: Arc<LoadedPlugin>,
    loaded_at: SystemTime,
    source: PluginSource,
}

#[derive(Debug, Default)]
struct Slot {
    /// The kept versions in order of arrival: the last is the newest.
    versions: Vec<Version>,
    last_error: Option<String>,
}

impl Slot {
    fn newest(&self) -> Option<&Version> {
        self.versions.last()
    }

    fn find(&self, sha256_hex: &str) -> Option<&Version> {
        self.versions
            .iter()
            .find(|v| v.plugin.version().eq_ignore_ascii_case(sha256_hex))
    }
}

/// The version a repeater runs and what it was resolved with.
#[derive(Debug, Clone)]
struct Assignment {
    plugin: String,
    version: String,
    /// The repeater's pin, as its spec spells it.
    pin: Option<String>,
    /// The plugin config (JSON text) the version accepted.
    config: String,
    refusal: Option<Refusal>,
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<String, Slot>,
    assignments: HashMap<RepeaterKey, Assignment>,
}

impl State {
    /// Drops the versions of `plugin` that are not the newest and that no
    /// repeater resolves to, and returns them. Calls in flight keep their
    /// own `Arc`.
    fn prune(&mut self, plugin: &str) -> Vec<Version> {
        let in_use: BTreeSet<&str> = self
            .assignments
            .values()
            .filter(|a| a.plugin == plugin)
            .map(|a| a.version.as_str())
            .collect();
        let Some(slot) = self.slots.get_mut(plugin) else {
            return Vec::new();
        };
        let newest = slot.versions.len().saturating_sub(1);
        let (kept, dropped) = std::mem::take(&mut slot.versions)
            .into_iter()
            .enumerate()
            .partition::<Vec<_>, _>(|(index, version)| {
                *index == newest || in_use.contains(version.plugin.version())
            });
        slot.versions = kept.into_iter().map(|(_, version)| version).collect();
        dropped.into_iter().map(|(_, version)| version).collect()
    }
}

struct RegistryInner {
    engine: PluginEngine,
    dir: Option<PathBuf>,
    /// Where the component files of kept versions are written, so they
    /// survive a restart.
    archive: Option<PathBuf>,
    /// True from loading the kept versions until every stored repeater
    /// resolved again ([`PluginRegistry::settle`]): nothing is dropped
    /// before the repeaters that ran an older version found it.
    settling: AtomicBool,
    state: RwLock<State>,
    swaps: broadcast::Sender<PluginSwapped>,
    rollouts: broadcast::Sender<RolloutEvent>,
    /// Loads are rare; running them one at a time keeps an older file that
    /// finished compiling late from replacing a newer one.
    loading: tokio::sync::Mutex<()>,
}

/// Name → kept plugin versions, with hot reload and rollout per repeater.
/// Cheap to clone.
#[derive(Clone)]
pub struct PluginRegistry {
    inner: Arc<RegistryInner>,
}

impl std::fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRegistry")
            .field("dir", &self.inner.dir)
            .field("plugins", &self.names())
            .finish_non_exhaustive()
    }
}

impl PluginRegistry {
    /// An empty registry on `engine`; `dir` is where user plugins live and
    /// uploads are written (none: uploads stay in memory only). Kept
    /// versions live in memory only.
    pub fn new(engine: PluginEngine, dir: Option<PathBuf>) -> Self {
        Self::keeping_versions(engine, dir, None)
    }

    /// As [`PluginRegistry::new`], and the component of every kept version
    /// of a user plugin is also written under `archive`, so
    /// [`PluginRegistry::load_kept`] finds them after a restart.
    pub fn keeping_versions(
        engine: PluginEngine,
        dir: Option<PathBuf>,
        archive: Option<PathBuf>,
    ) -> Self {
        let (swaps, _) = broadcast::channel(64);
        let (rollouts, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(RegistryInner {
                engine,
                dir,
                archive,
                settling: AtomicBool::new(false),
                state: RwLock::new(State::default()),
                swaps,
                rollouts,
                loading: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The engine plugins run on.
    pub fn engine(&self) -> &PluginEngine {
        &self.inner.engine
    }

    /// The user plugin directory, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }

    /// The newest version of `name`, if one is loaded.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.read()
            .slots
            .get(name)
            .and_then(Slot::newest)
            .map(|version| version.plugin.clone())
    }

    /// The kept version of `name` whose sha256 is `sha256_hex`
    /// (case-insensitive), for repeaters that pin a plugin version.
    pub fn get_pinned(
        &self,
        name: &str,
        sha256_hex: &str,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let state = self.read();
        let slot = state
            .slots
            .get(name)
            .filter(|slot| !slot.versions.is_empty())
            .ok_or_else(|| PluginError::NotLoaded {
                plugin: name.to_owned(),
            })?;
        match slot.find(sha256_hex) {
            Some(version) => Ok(version.plugin.clone()),
            None => Err(PluginError::PinMismatch {
                plugin: name.to_owned(),
                pinned: sha256_hex.to_owned(),
                loaded: slot
                    .versions
                    .iter()
                    .map(|v| v.plugin.version())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The version `repeater` runs, given its plugin, pin and plugin config
    /// (JSON text). This is the call the dispatch loop makes per batch: a
    /// read lock and a map lookup while nothing changed. Otherwise (a new
    /// repeater, a changed config or pin, a dropped version) the version is
    /// chosen again: the pin, or the newest version whose `validate-config`
    /// accepts the config; the error of the newest version when none does.
    pub async fn resolve(
        &self,
        repeater: &RepeaterKey,
        plugin: &str,
        pin: Option<&str>,
        config: &str,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        {
            let state = self.read();
            if let Some(assigned) = state.assignments.get(repeater)
                && assigned.plugin == plugin
                && assigned.pin.as_deref() == pin
                && assigned.config == config
                && let Some(version) = state
                    .slots
                    .get(plugin)
                    .and_then(|s| s.find(&assigned.version))
            {
                return Ok(version.plugin.clone());
            }
        }
        let (chosen, refusal) = self.choose(repeater, plugin, pin, config).await?;
        let mut state = self.write();
        let previous = state.assignments.insert(
            repeater.clone(),
            Assignment {
                plugin: plugin.to_owned(),
                version: chosen.version().to_owned(),
                pin: pin.map(str::to_owned),
                config: config.to_owned(),
                refusal,
            },
        );
        drop(state);
        if let Some(previous) = previous {
            tracing::info!(%repeater, plugin, version = chosen.version(), "repeater resolved to a plugin version");
            self.prune(&previous.plugin);
        }
        Ok(chosen)
    }

    /// Checks a repeater's new plugin, pin and config before they are
    /// stored, changing nothing: against its pin; else against the version
    /// it runs now, when it stays unpinned on the same plugin; else (a new
    /// repeater, another plugin) against the newest version that accepts
    /// it. Returns the sha256 of the version that accepted, or its error.
    pub async fn check_config(
        &self,
        repeater: &RepeaterKey,
        plugin: &str,
        pin: Option<&str>,
        config: &str,
    ) -> Result<String, PluginError> {
        let running = match pin {
            Some(_) => None,
            None => {
                let state = self.read();
                (state.assignments.get(repeater))
                    .filter(|assigned| assigned.plugin == plugin && assigned.pin.is_none())
                    .and_then(|assigned| state.slots.get(plugin)?.find(&assigned.version))
                    .map(|version| version.plugin.clone())
            }
        };
        let chosen = match running {
            Some(running) => {
                let ctx = CallContext::new(&repeater.domain, &repeater.name);
                running.validate_config(&ctx, config).await?;
                running
            }
            None => self.choose(repeater, plugin, pin, config).await?.0,
        };
        Ok(chosen.version().to_owned())
    }

    /// Forgets a deleted repeater; versions only it used are dropped.
    pub fn forget(&self, repeater: &RepeaterKey) {
        let assigned = self.write().assignments.remove(repeater);
        if let Some(assigned) = assigned {
            self.prune(&assigned.plugin);
        }
    }

    /// The version `repeater` resolved to, if it resolved yet.
    pub fn resolved(&self, repeater: &RepeaterKey) -> Option<ResolvedVersion> {
        self.read()
            .assignments
            .get(repeater)
            .map(|assigned| ResolvedVersion {
                plugin: assigned.plugin.clone(),
                version: assigned.version.clone(),
                pinned: assigned.pin.is_some(),
                refusal: assigned.refusal.clone(),
            })
    }

    /// The kept versions of `name`, oldest first, with the repeaters on
    /// each and the refusals each gave. Empty when none is loaded.
    pub fn versions(&self, name: &str) -> Vec<VersionStatus> {
        let state = self.read();
        let Some(slot) = state.slots.get(name) else {
            return Vec::new();
        };
        let newest = slot.newest().map(|v| v.plugin.version());
        let mut versions: Vec<VersionStatus> = slot
            .versions
            .iter()
            .map(|v| VersionStatus {
                version: v.plugin.version().to_owned(),
                loaded_at: v.loaded_at,
                source: v.source.clone(),
                newest: Some(v.plugin.version()) == newest,
                repeaters: Vec::new(),
                refusals: Vec::new(),
            })
            .collect();
        for (repeater, assigned) in &state.assignments {
            if assigned.plugin != name {
                continue;
            }
            for version in &mut versions {
                if version.version == assigned.version {
                    version.repeaters.push(repeater.clone());
                }
                if let Some(refusal) = &assigned.refusal
                    && refusal.version == version.version
                {
                    version.refusals.push((repeater.clone(), refusal.clone()));
                }
            }
        }
        for version in &mut versions {
            version.repeaters.sort();
            version.refusals.sort_by(|a, b| a.0.cmp(&b.0));
        }
        versions
    }

    /// What the registry knows about `name`: the newest version and the
    /// error of the latest failed load. `None` if the name was never seen.
    pub fn status(&self, name: &str) -> Option<PluginStatus> {
        self.read().slots.get(name).map(slot_status)
    }

    /// Status of every known plugin, sorted by name.
    pub fn list(&self) -> Vec<(String, PluginStatus)> {
        let mut all: Vec<_> = self
            .read()
            .slots
            .iter()
            .map(|(name, slot)| (name.clone(), slot_status(slot)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Names of every known plugin, sorted.
    pub fn names(&self) -> Vec<String> {
        self.list().into_iter().map(|(name, _)| name).collect()
    }

    /// Receives a message each time a new plugin version becomes the newest.
    pub fn subscribe(&self) -> broadcast::Receiver<PluginSwapped> {
        self.inner.swaps.subscribe()
    }

    /// Receives a message for every repeater a new version was offered to,
    /// accepted or refused.
    pub fn subscribe_rollouts(&self) -> broadcast::Receiver<RolloutEvent> {
        self.inner.rollouts.subscribe()
    }

    /// Loads built-in plugins given as (name, component bytes).
    pub async fn load_builtins(&self, builtins: &[(&str, &[u8])]) -> Result<(), PluginError> {
        for (name, bytes) in builtins {
            self.load_bytes(name, Arc::from(*bytes), PluginSource::Builtin)
                .await?;
        }
        Ok(())
    }

    /// Loads every `*.wasm` file of the plugin directory. A file that fails
    /// is skipped (its error kept in its status) and returned.
    pub async fn load_dir(&self) -> Vec<PluginError> {
        let Some(dir) = self.inner.dir.clone() else {
            return Vec::new();
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(source) => {
                return vec![PluginError::Io {
                    plugin: "(plugin directory)".to_owned(),
                    action: "listing",
                    path: dir.display().to_string(),
                    source,
                }];
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| plugin_name_of(path).is_some())
            .collect();
        paths.sort();
        let mut errors = Vec::new();
        for path in paths {
            if let Err(error) = self.reload_file(&path).await {
                errors.push(error);
            }
        }
        errors
    }

    /// Installs an uploaded component as `name`. It is compiled and
    /// type-checked first, so a broken upload neither replaces the working
    /// version nor overwrites its file; then it is written into the plugin
    /// directory (temporary file + rename), becomes the newest version and
    /// is rolled out to the repeaters that use `name`.
    pub async fn install(
        &self,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        check_name(name)?;
        let _loading = self.inner.loading.lock().await;
        let bytes: Arc<[u8]> = bytes.into();
        let plugin = match self.inner.engine.load(name, bytes.clone()).await {
            Ok(plugin) => Arc::new(plugin),
            Err(error) => {
                self.record_error(name, &error);
                return Err(error);
            }
        };
        self.keep_file(name, plugin.version(), bytes.clone()).await;
        if let Some(dir) = &self.inner.dir {
            let dir = dir.clone();
            let file_name = format!("{name}.wasm");
            let written =
                tokio::task::spawn_blocking(move || write_atomically(&dir, &file_name, &bytes))
                    .await
                    .map_err(|e| {
                        PluginError::Engine(format!("plugin {name}: write task failed: {e}"))
                    })
                    .and_then(|r| {
                        r.map_err(|(path, source)| PluginError::Io {
                            plugin: name.to_owned(),
                            action: "writing",
                            path,
                            source,
                        })
                    });
            if let Err(error) = written {
                self.record_error(name, &error);
                return Err(error);
            }
        }
        self.swap(name, plugin.clone(), PluginSource::Upload);
        self.roll_out(name).await;
        Ok(plugin)
    }

    /// Watches the plugin directory and reloads changed `*.wasm` files until
    /// the returned guard is dropped. Must be called inside a tokio runtime.
    pub fn watch(&self) -> Result<DirWatcher, PluginError> {
        let dir = self.inner.dir.clone().ok_or_else(|| {
            PluginError::Engine("cannot watch plugins: no plugin directory configured".to_owned())
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                match event {
                    Ok(event) => {
                        for path in event.paths {
                            // The receiver is gone only when the watcher is being dropped.
                            let _ = tx.send(path);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "plugin directory watch error"),
                }
            })
            .map_err(|e| watch_error(&dir, e))?;
        watcher
            .watch(&dir, notify::RecursiveMode::NonRecursive)
            .map_err(|e| watch_error(&dir, e))?;
        let task = tokio::spawn(self.clone().watch_loop(rx));
        Ok(DirWatcher {
            _watcher: watcher,
            task,
        })
    }

    async fn watch_loop(self, mut changes: mpsc::UnboundedReceiver<PathBuf>) {
        while let Some(first) = changes.recv().await {
            let mut paths = BTreeSet::from([first]);
            loop {
                match tokio::time::timeout(DEBOUNCE, changes.recv()).await {
                    Ok(Some(path)) => {
                        paths.insert(path);
                    }
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            for path in paths {
                if plugin_name_of(&path).is_none() {
                    continue;
                }
                if let Err(error) = self.reload_file(&path).await {
                    tracing::warn!(%error, "plugin file not loaded; the previous version stays in use");
                }
            }
        }
    }

    /// Loads the plugin file at `path` if it exists and differs from the
    /// newest version. Errors are also kept in the plugin's status.
    pub async fn reload_file(&self, path: &Path) -> Result<(), PluginError> {
        let Some(name) = plugin_name_of(path) else {
            return Ok(());
        };
        let bytes = match tokio::fs::read(path).await {
            Ok(bytes) => bytes,
            Err(source) if source.kind() == std::io::ErrorKind::NotFound => {
                if self.get(&name).is_some() {
                    tracing::info!(plugin = name, path = %path.display(),
                        "plugin file removed; the loaded version stays in use until restart");
                }
                return Ok(());
            }
            Err(source) => {
                let error = PluginError::Io {
                    plugin: name.clone(),
                    action: "reading",
                    path: path.display().to_string(),
                    source,
                };
                self.record_error(&name, &error);
                return Err(error);
            }
        };
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let kept = {
            let state = self.read();
            state.slots.get(&name).and_then(|slot| {
                let newest = slot.newest()?;
                if newest.plugin.version() == sha256 && newest.source != PluginSource::Kept {
                    // Our own uploads land here too: same bytes, nothing to do.
                    return Some(None);
                }
                slot.find(&sha256).map(|v| Some(v.plugin.clone()))
            })
        };
        match kept {
            Some(None) => return Ok(()),
            Some(Some(plugin)) => {
                // A kept version comes back (a file put back, or the file
                // a restart found kept): no need to compile it again.
                let _loading = self.inner.loading.lock().await;
                self.keep_file(&name, &sha256, bytes.into()).await;
                self.swap(&name, plugin, PluginSource::File(path.to_owned()));
                self.roll_out(&name).await;
                return Ok(());
            }
            None => {}
        }
        self.load_bytes(&name, bytes.into(), PluginSource::File(path.to_owned()))
            .await
            .map(drop)
    }

    async fn load_bytes(
        &self,
        name: &str,
        bytes: Arc<[u8]>,
        source: PluginSource,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        check_name(name)?;
        let _loading = self.inner.loading.lock().await;
        match self.inner.engine.load(name, bytes.clone()).await {
            Ok(plugin) => {
                let plugin = Arc::new(plugin);
                if source != PluginSource::Builtin {
                    self.keep_file(name, plugin.version(), bytes).await;
                }
                self.swap(name, plugin.clone(), source);
                self.roll_out(name).await;
                Ok(plugin)
            }
            Err(error) => {
                self.record_error(name, &error);
                Err(error)
            }
        }
    }

    /// Makes `plugin` the newest version of `name` (moving it to the end
    /// when that version is kept already).
    fn swap(&self, name: &str, plugin: Arc<LoadedPlugin>, source: PluginSource) {
        let version = plugin.version().to_owned();
        {
            let mut state = self.write();
            let slot = state.slots.entry(name.to_owned()).or_default();
            let kept = slot
                .versions
                .iter()
                .position(|v| v.plugin.version() == version);
            let plugin = match kept {
                Some(index) => slot.versions.remove(index).plugin,
                None => plugin,
            };
            slot.versions.push(Version {
                plugin,
                loaded_at: SystemTime::now(),
                source,
            });
            slot.last_error = None;
        }
        tracing::info!(
            plugin = name,
            version,
            "plugin version loaded as the newest"
        );
        // No subscriber is fine: nobody needs to hear of it.
        let _ = self.inner.swaps.send(PluginSwapped {
            name: name.to_owned(),
            version,
        });
    }

    /// Offers the newest version of `name` to every unpinned repeater that
    /// resolved to another version of it, one `validate-config` each, then
    /// drops the versions nobody uses any more.
    async fn roll_out(&self, name: &str) {
        let (newest, offers) = {
            let state = self.read();
            let Some(newest) = state.slots.get(name).and_then(Slot::newest) else {
                return;
            };
            let newest = newest.plugin.clone();
            let offers: Vec<(RepeaterKey, String)> = state
                .assignments
                .iter()
                .filter(|(_, a)| {
                    a.plugin == name && a.pin.is_none() && a.version != newest.version()
                })
                .map(|(key, a)| (key.clone(), a.config.clone()))
                .collect();
            (newest, offers)
        };
        for (repeater, config) in offers {
            let ctx = CallContext::new(&repeater.domain, &repeater.name);
            let refused = newest
                .validate_config(&ctx, &config)
                .await
                .err()
                .map(|error| refusal_message(&error));
            let mut state = self.write();
            let Some(assigned) = state.assignments.get_mut(&repeater) else {
                continue;
            };
            if assigned.plugin != name || assigned.pin.is_some() || assigned.config != config {
                // Changed meanwhile: its next batch resolves it again.
                continue;
            }
            match &refused {
                None => {
                    tracing::info!(%repeater, plugin = name, version = newest.version(), "repeater moves to the new plugin version");
                    assigned.version = newest.version().to_owned();
                    assigned.refusal = None;
                }
                Some(message) => {
                    tracing::warn!(%repeater, plugin = name, version = newest.version(), %message,
                        "the new plugin version refused the repeater's config; it stays on its version");
                    assigned.refusal = Some(Refusal {
                        version: newest.version().to_owned(),
                        message: message.clone(),
                        at: SystemTime::now(),
                    });
                }
            }
            drop(state);
            let _ = self.inner.rollouts.send(RolloutEvent {
                plugin: name.to_owned(),
                version: newest.version().to_owned(),
                repeater,
                refused,
            });
        }
        self.prune(name);
    }

    /// Drops the versions of `plugin` nobody uses (none while settling) and
    /// forgets their kept files.
    fn prune(&self, plugin: &str) {
        if self.inner.settling.load(Ordering::Acquire) {
            return;
        }
        let dropped = self.write().prune(plugin);
        for version in dropped {
            let sha256 = version.plugin.version();
            tracing::info!(
                plugin,
                version = sha256,
                "plugin version no longer used; dropped once its calls end"
            );
            if let Some(archive) = &self.inner.archive
                && version.source != PluginSource::Builtin
                && let Err(error) = archive::discard(archive, plugin, sha256)
            {
                tracing::warn!(plugin, version = sha256, %error, "could not remove a dropped plugin version's file");
            }
        }
    }

    /// Writes a new version's component under the archive, so it is found
    /// again after a restart. A failure is logged: the version works, it
    /// only would not survive a restart.
    async fn keep_file(&self, name: &str, version: &str, bytes: Arc<[u8]>) {
        let Some(archive) = self.inner.archive.clone() else {
            return;
        };
        let (plugin, sha256) = (name.to_owned(), version.to_owned());
        let kept =
            tokio::task::spawn_blocking(move || archive::keep(&archive, &plugin, &sha256, &bytes))
                .await;
        match kept {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(plugin = name, version, %error,
                "could not keep the plugin version's file; it will not be loaded after a restart"),
            Err(error) => tracing::warn!(plugin = name, version, %error,
                "the task keeping the plugin version's file failed"),
        }
    }

    /// Loads the versions kept before a restart, oldest arrival first, each
    /// with the time it arrived; call before [`PluginRegistry::load_dir`],
    /// whose files then become the newest. Until [`PluginRegistry::settle`]
    /// no version is dropped. A kept file that fails to load is logged and
    /// skipped.
    pub async fn load_kept(&self) -> usize {
        let Some(archive) = self.inner.archive.clone() else {
            return 0;
        };
        let files = tokio::task::spawn_blocking(move || archive::read_all(&archive))
            .await
            .unwrap_or_default();
        let _loading = self.inner.loading.lock().await;
        let mut loaded = 0;
        for file in files {
            match self.inner.engine.load(&file.name, file.bytes.into()).await {
                Ok(plugin) => {
                    self.inner.settling.store(true, Ordering::Release);
                    let mut state = self.write();
                    let slot = state.slots.entry(file.name.clone()).or_default();
                    slot.versions.push(Version {
                        plugin: Arc::new(plugin),
                        loaded_at: file.arrived,
                        source: PluginSource::Kept,
                    });
                    loaded += 1;
                }
                Err(error) => tracing::warn!(plugin = file.name, version = file.sha256, %error,
                    "a kept plugin version did not load; repeaters that ran it choose again"),
            }
        }
        loaded
    }

    /// Resolves every given repeater (domain/name, plugin, pin, plugin
    /// config as JSON text) once, then drops the versions none of them
    /// runs. The daemon calls it with its stored repeaters after start, so
    /// kept versions stay exactly for the repeaters that still need them.
    pub async fn settle(&self, repeaters: Vec<(RepeaterKey, String, Option<String>, String)>) {
        for (key, plugin, pin, config) in repeaters {
            if let Err(error) = self.resolve(&key, &plugin, pin.as_deref(), &config).await {
                tracing::debug!(repeater = %key, %error, "repeater resolved to no plugin version at start");
            }
        }
        self.inner.settling.store(false, Ordering::Release);
        for name in self.names() {
            self.prune(&name);
        }
    }

    /// Chooses the version a repeater would run: its pin, or the newest
    /// that accepts `config`; with the refusal of the newest version when
    /// an older one was chosen.
    async fn choose(
        &self,
        repeater: &RepeaterKey,
        plugin: &str,
        pin: Option<&str>,
        config: &str,
    ) -> Result<(Arc<LoadedPlugin>, Option<Refusal>), PluginError> {
        let ctx = CallContext::new(&repeater.domain, &repeater.name);
        if let Some(pin) = pin {
            let pinned = self.get_pinned(plugin, pin)?;
            pinned.validate_config(&ctx, config).await?;
            return Ok((pinned, None));
        }
        let candidates: Vec<Arc<LoadedPlugin>> = {
            let state = self.read();
            let slot = state.slots.get(plugin);
            let mut candidates: Vec<_> = slot
                .map(|s| s.versions.iter().rev().map(|v| v.plugin.clone()).collect())
                .unwrap_or_default();
            // The version the repeater runs now is tried right after the
            // newest, so a config an old version takes does not pull it
            // further back than it was.
            if let Some(current) = state.assignments.get(repeater)
                && current.plugin == plugin
                && let Some(at) = candidates
                    .iter()
                    .position(|c| c.version() == current.version)
                && at > 1
            {
                let current = candidates.remove(at);
                candidates.insert(1, current);
            }
            candidates
        };
        let mut first_error = None;
        let mut refusal = None;
        for candidate in candidates {
            match candidate.validate_config(&ctx, config).await {
                Ok(()) => return Ok((candidate, refusal)),
                Err(error) => {
                    if refusal.is_none() {
                        refusal = Some(Refusal {
                            version: candidate.version().to_owned(),
                            message: refusal_message(&error),
                            at: SystemTime::now(),
                        });
                    }
                    first_error.get_or_insert(error);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| PluginError::NotLoaded {
            plugin: plugin.to_owned(),
        }))
    }

    fn record_error(&self, name: &str, error: &PluginError) {
        self.write()
            .slots
            .entry(name.to_owned())
            .or_default()
            .last_error = Some(error.to_string());
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // Nothing panics while holding the lock; recover rather than spread a poison.
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a refusal shows: the plugin's own message for a refused config,
/// the whole error for a trap, timeout or cap.
fn refusal_message(error: &PluginError) -> String {
    match error {
        PluginError::Config { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Keeps the plugin directory watched; dropping it stops the watch.
pub struct DirWatcher {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for DirWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatcher").finish_non_exhaustive()
    }
}

fn slot_status(slot: &Slot) -> PluginStatus {
    let newest = slot.newest();
    PluginStatus {
        version: newest.map(|v| v.plugin.version().to_owned()),
        loaded_at: newest.map(|v| v.loaded_at),
        source: newest.map(|v| v.source.clone()),
        last_error: slot.last_error.clone(),
    }
}

fn watch_error(dir: &Path, error: notify::Error) -> PluginError {
    PluginError::Engine(format!(
        "cannot watch plugin directory {}: {error}",
        dir.display()
    ))
}

/// The plugin name for a directory entry: the stem of a `*.wasm` file that
/// is a valid name (so temporary and hidden files are ignored).
fn plugin_name_of(path: &Path) -> Option<String> {
    if path.extension()? != "wasm" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    check_name(stem).ok()?;
    Some(stem.to_owned())
}

/// Plugin names: 1 to 64 ASCII letters, digits, `-` or `_`, starting with a
/// letter or digit, so a name is always a safe file stem.
pub fn check_name(name: &str) -> Result<(), PluginError> {
    let invalid = |reason| PluginError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > 64 {
        return Err(invalid("must be 1 to 64 characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid("must start with a letter or digit"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid("may only contain ASCII letters, digits, - and _"));
    }
    Ok(())
}

/// Writes `dir/file_name` via a hidden temporary file and a rename, so the
/// watcher and readers only ever see a whole file.
fn write_atomically(
    dir: &Path,
    file_name: &str,
    bytes: &[u8],
) -> Result<(), (String, std::io::Error)> {
    use std::io::Write;
    let path = dir.join(file_name);
    let at = |e| (path.display().to_string(), e);
    let mut temp = tempfile::Builder::new()
        .prefix(".upload-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(at)?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(at)?;
    temp.persist(&path).map_err(|e| at(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_file_stems() {
        for good in ["json-forward", "fhir_r4", "a", "X9"] {
            check_name(good).unwrap();
        }
        for bad in ["", ".hidden", "-x", "a/b", "a.b", "ü", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn only_wasm_files_with_valid_stems_are_plugins() {
        assert_eq!(
            plugin_name_of(Path::new("/p/json-forward.wasm")).as_deref(),
            Some("json-forward")
        );
        assert_eq!(plugin_name_of(Path::new("/p/.upload-x.tmp")), None);
        assert_eq!(plugin_name_of(Path::new("/p/.hidden.wasm")), None);
        assert_eq!(plugin_name_of(Path::new("/p/readme.txt")), None);
    }
}
