//! The plugins the daemon can use, by name, and their hot reload.
//!
//! Each name maps to the current [`LoadedPlugin`] behind an `Arc`: a call
//! takes a clone and finishes on that version even if a new one is swapped
//! in meanwhile. Built-in plugins come from the binary; user plugins are the
//! `*.wasm` files of a directory (name = file stem), watched for changes, or
//! uploads written into that directory. A new version is compiled off the
//! hot path and type-checked before the swap; a version that fails never
//! replaces a working one, and its error is kept for the plugin's status.
//! Every swap is broadcast so the daemon can re-run `validate-config` for
//! the repeaters that use the plugin.
//!
//! A file that disappears from the directory is not unloaded: repeaters that
//! use it keep working until the daemon restarts or a new file appears.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use notify::Watcher;
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, mpsc};

use super::call::LoadedPlugin;
use super::engine::PluginEngine;
use super::error::PluginError;

/// How long the directory must be quiet before changed files are loaded;
/// copying a file produces several events.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Where the current version of a plugin came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// Shipped inside the binary.
    Builtin,
    /// A `.wasm` file in the plugin directory.
    File(PathBuf),
    /// Uploaded through the API (and written to the directory, if any).
    Upload,
}

/// What the registry knows about one plugin name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginStatus {
    /// The sha256 (hex) of the version in use, if one loaded.
    pub version: Option<String>,
    /// When the version in use was swapped in.
    pub loaded_at: Option<SystemTime>,
    /// Where the version in use came from.
    pub source: Option<PluginSource>,
    /// Why the latest attempt to load a new version failed, if it did.
    /// Cleared by the next successful load.
    pub last_error: Option<String>,
}

/// Broadcast when a new version of a plugin is in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSwapped {
    /// The plugin's name.
    pub name: String,
    /// The new version's sha256 (hex).
    pub version: String,
}

#[derive(Debug, Default)]
struct Slot {
    current: Option<Current>,
    last_error: Option<String>,
}

#[derive(Debug)]
struct Current {
    plugin: Arc<LoadedPlugin>,
    loaded_at: SystemTime,
    source: PluginSource,
}

struct RegistryInner {
    engine: PluginEngine,
    dir: Option<PathBuf>,
    slots: RwLock<HashMap<String, Slot>>,
    swaps: broadcast::Sender<PluginSwapped>,
    /// Loads are rare; running them one at a time keeps an older file that
    /// finished compiling late from replacing a newer one.
    loading: tokio::sync::Mutex<()>,
}

/// Name → current plugin version, with hot reload. Cheap to clone.
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
    /// uploads are written (none: uploads stay in memory only).
    pub fn new(engine: PluginEngine, dir: Option<PathBuf>) -> Self {
        let (swaps, _) = broadcast::channel(64);
        Self {
            inner: Arc::new(RegistryInner {
                engine,
                dir,
                slots: RwLock::new(HashMap::new()),
                swaps,
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

    /// The current version of `name`, if one is loaded. This is the call the
    /// dispatch loop makes per batch: a read lock held for a map lookup.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.read()
            .get(name)
            .and_then(|slot| slot.current.as_ref())
            .map(|current| current.plugin.clone())
    }

    /// The current version of `name`, only if its sha256 is `sha256_hex`
    /// (case-insensitive), for repeaters that pin a plugin version.
    pub fn get_pinned(
        &self,
        name: &str,
        sha256_hex: &str,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let plugin = self.get(name).ok_or_else(|| PluginError::NotLoaded {
            plugin: name.to_owned(),
        })?;
        if plugin.version().eq_ignore_ascii_case(sha256_hex) {
            Ok(plugin)
        } else {
            Err(PluginError::PinMismatch {
                plugin: name.to_owned(),
                pinned: sha256_hex.to_owned(),
                loaded: plugin.version().to_owned(),
            })
        }
    }

    /// What the registry knows about `name`: the version in use and the
    /// error of the latest failed load. `None` if the name was never seen.
    pub fn status(&self, name: &str) -> Option<PluginStatus> {
        self.read().get(name).map(slot_status)
    }

    /// Status of every known plugin, sorted by name.
    pub fn list(&self) -> Vec<(String, PluginStatus)> {
        let mut all: Vec<_> = self
            .read()
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

    /// Receives a message each time a new plugin version is swapped in.
    pub fn subscribe(&self) -> broadcast::Receiver<PluginSwapped> {
        self.inner.swaps.subscribe()
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
    /// directory (temporary file + rename) and swapped in.
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
    /// version in use. Errors are also kept in the plugin's status.
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
        if let Some(current) = self.get(&name) {
            // Our own uploads land here too: same bytes, nothing to do.
            if current.version() == hex::encode(Sha256::digest(&bytes)) {
                return Ok(());
            }
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
        match self.inner.engine.load(name, bytes).await {
            Ok(plugin) => {
                let plugin = Arc::new(plugin);
                self.swap(name, plugin.clone(), source);
                Ok(plugin)
            }
            Err(error) => {
                self.record_error(name, &error);
                Err(error)
            }
        }
    }

    fn swap(&self, name: &str, plugin: Arc<LoadedPlugin>, source: PluginSource) {
        let version = plugin.version().to_owned();
        {
            let mut slots = self.write();
            let slot = slots.entry(name.to_owned()).or_default();
            slot.current = Some(Current {
                plugin,
                loaded_at: SystemTime::now(),
                source,
            });
            slot.last_error = None;
        }
        tracing::info!(plugin = name, version, "plugin version in use");
        // No subscriber is fine: nobody needs to re-validate.
        let _ = self.inner.swaps.send(PluginSwapped {
            name: name.to_owned(),
            version,
        });
    }

    fn record_error(&self, name: &str, error: &PluginError) {
        self.write().entry(name.to_owned()).or_default().last_error = Some(error.to_string());
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Slot>> {
        // Nothing panics while holding the lock; recover rather than spread a poison.
        self.inner.slots.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Slot>> {
        self.inner.slots.write().unwrap_or_else(|e| e.into_inner())
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
    PluginStatus {
        version: slot.current.as_ref().map(|c| c.plugin.version().to_owned()),
        loaded_at: slot.current.as_ref().map(|c| c.loaded_at),
        source: slot.current.as_ref().map(|c| c.source.clone()),
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
