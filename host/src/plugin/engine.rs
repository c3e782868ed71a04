//! The wasmtime engine every plugin runs on: its configuration (component
//! model, epoch interruption, pooling allocator sized from [`PluginLimits`]),
//! the background epoch ticker, the WASI linker, and preparing a component
//! (compile or take from the disk cache, type-check, pre-instantiate). The
//! `load` module turns a prepared component into a `LoadedPlugin`; the
//! engine itself knows nothing of calls.
//!
//! Calls run as async wasmtime calls on the tokio runtime rather than on
//! blocking threads: the epoch callback yields to the scheduler every tick,
//! so a busy plugin shares a worker instead of holding one, the CPU cap is
//! counted in ticks of guest execution, and the dispatch loop awaits a call
//! like any other future without a thread hop per record.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, ComponentExportIndex, Linker, types::ComponentItem};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::{
    CLASSIFICATION_INTERFACE, PLUGIN_INTERFACE, Repeater, RepeaterPre, is_plugin_interface,
};
use super::build_view::allow_bodies_up_to;
use super::cache::CodeCache;
use super::error::PluginError;
use super::limits::PluginLimits;
use super::sandbox::CallState;

/// Bytes of each linear memory kept mapped between instances. A Rust plugin
/// starts near 1.1 MiB of memory; covering that lets a new instance reuse
/// warm pages instead of faulting them in again (several times faster).
const KEEP_RESIDENT_BYTES: usize = 2 << 20;

/// The plugin engine: compiles, caches and runs plugins. Cheap to clone;
/// clones share the engine, the epoch ticker and the instance slots.
#[derive(Clone)]
pub struct PluginEngine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub(crate) engine: Engine,
    linker: Linker<CallState>,
    pub(crate) limits: PluginLimits,
    cache: Option<CodeCache>,
    /// One permit per pooled instance slot, so calls past the pool's size
    /// wait for a slot instead of failing.
    pub(crate) slots: Arc<Semaphore>,
    /// Plugin instances created so far, for [`PluginEngine::instances_started`].
    pub(crate) instances_started: AtomicU64,
    /// The executable that compiles components in a child process, if set
    /// ([`PluginEngine::compile_in_child`]).
    compiler: OnceLock<PathBuf>,
}

/// What type-checking a component found.
pub(crate) struct Checked {
    /// The component, pre-instantiated against the host's linker.
    pub(crate) pre: RepeaterPre<CallState>,
    /// The plugin interface's export name, with the version the plugin was built for.
    pub(crate) interface: String,
    /// The `rules` function of the optional `classification` export.
    pub(crate) rules: Option<ComponentExportIndex>,
    /// The plugin interface's `build` function, called through
    /// [`BuildOutcomeView`](super::build_view::BuildOutcomeView).
    pub(crate) build: ComponentExportIndex,
}

/// A compiled, type-checked component, ready to be instantiated.
pub(crate) struct Prepared {
    /// What type-checking found.
    pub(crate) checked: Checked,
    /// The sha256 of the component bytes, in hex.
    pub(crate) version: String,
    /// Size of the component in bytes.
    pub(crate) size: usize,
    /// Whether the compiled code came from the on-disk cache.
    pub(crate) from_cache: bool,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine")
            .field("limits", &self.inner.limits)
            .field("cache", &self.inner.cache)
            .finish_non_exhaustive()
    }
}

impl PluginEngine {
    /// An engine with these limits and no compiled-code cache.
    pub fn new(limits: PluginLimits) -> Result<Self, PluginError> {
        Self::build(limits, None)
    }

    /// An engine with these limits that keeps compiled code in `cache_dir`
    /// (created if missing), e.g. `<data_dir>/plugin-cache`.
    pub fn with_cache_dir(limits: PluginLimits, cache_dir: &Path) -> Result<Self, PluginError> {
        let cache = CodeCache::open(cache_dir)?;
        Self::build(limits, Some(cache))
    }

    fn build(limits: PluginLimits, cache: Option<CodeCache>) -> Result<Self, PluginError> {
        let engine = Engine::new(&engine_config(&limits))
            .map_err(|e| PluginError::Engine(format!("cannot create wasmtime engine: {e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| PluginError::Engine(format!("cannot link WASI p2: {e:#}")))?;
        Repeater::add_to_linker::<CallState, wasmtime::component::HasSelf<CallState>>(
            &mut linker,
            |state| state,
        )
        .map_err(|e| PluginError::Engine(format!("cannot link the plugin log import: {e:#}")))?;
        spawn_epoch_ticker(&engine, limits.epoch_tick)?;
        allow_bodies_up_to(limits.max_body_bytes);
        let slots = Arc::new(Semaphore::new(limits.max_instances as usize));
        Ok(Self {
            inner: Arc::new(EngineInner {
                engine,
                linker,
                limits,
                cache,
                slots,
                instances_started: AtomicU64::new(0),
                compiler: OnceLock::new(),
            }),
        })
    }

    /// The limits calls run under.
    pub fn limits(&self) -> &PluginLimits {
        &self.inner.limits
    }

    /// How many plugin instances this engine has created: one per call that
    /// ran plugin code, plus one per load.
    pub fn instances_started(&self) -> u64 {
        self.inner.instances_started.load(Ordering::Relaxed)
    }

    /// The compiled-code cache, if the engine has one.
    pub fn cache(&self) -> Option<&CodeCache> {
        self.inner.cache.as_ref()
    }

    /// Compiles components that are not in the cache in a child process,
    /// `exe plugin compile-cache ...` (see [`compile_into_cache`]), which
    /// writes the compiled code into the cache; this process then loads it
    /// from there. Compiling a large component takes hundreds of megabytes
    /// that the allocator keeps after the compiler returns them; in a child
    /// they go back to the system when it exits. Needs a cache directory;
    /// without one (or if the child cannot start) compilation stays in
    /// process. Set once; later calls are ignored.
    pub fn compile_in_child(&self, exe: PathBuf) {
        let _ = self.inner.compiler.set(exe);
    }

    /// Hashes, compiles or fetches from the cache, type-checks and
    /// pre-instantiates a component. Blocking: compilation takes a while.
    pub(crate) fn prepare(&self, name: &str, bytes: &[u8]) -> Result<Prepared, PluginError> {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let engine = &self.inner.engine;
        let (component, from_cache) = match &self.inner.cache {
            Some(cache) => {
                let key = cache.key(engine, &digest);
                match cache.load(engine, &key) {
                    Some(component) => (component, true),
                    None => match self.compile_by_child(cache, &key, name, bytes) {
                        Some(compiled) => (compiled?, false),
                        None => {
                            let component = compile(engine, name, bytes)?;
                            // A cache that cannot be written only costs a recompile later.
                            if let Err(error) = cache.store(&key, &component) {
                                tracing::warn!(plugin = name, %error, "cannot cache compiled plugin");
                            }
                            (component, false)
                        }
                    },
                }
            }
            None => (compile(engine, name, bytes)?, false),
        };
        Ok(Prepared {
            checked: self.type_check(name, &component)?,
            version: hex::encode(digest),
            size: bytes.len(),
            from_cache,
        })
    }

    /// Compiles `bytes` in the child process into the cache and loads the
    /// result. `None` when there is no child compiler or it could not do
    /// its work for reasons of its own (the caller compiles in process).
    fn compile_by_child(
        &self,
        cache: &CodeCache,
        key: &str,
        name: &str,
        bytes: &[u8],
    ) -> Option<Result<Component, PluginError>> {
        let exe = self.inner.compiler.get()?;
        let limits = &self.inner.limits;
        let child = Command::new(exe)
            .args(["plugin", "compile-cache", "--name", name, "--cache-dir"])
            .arg(cache.dir())
            .arg("--memory-bytes")
            .arg(limits.memory_bytes.to_string())
            .arg("--max-instances")
            .arg(limits.max_instances.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(error) => {
                tracing::warn!(plugin = name, exe = %exe.display(), %error,
                    "cannot start the plugin compiler process; compiling in process");
                return None;
            }
        };
        let fed = child
            .stdin
            .take()
            .map(|mut stdin| stdin.write_all(bytes))
            .unwrap_or(Ok(()));
        let output = match child.wait_with_output() {
            Ok(output) => output,
            Err(error) => {
                tracing::warn!(plugin = name, %error, "the plugin compiler process failed; compiling in process");
                return None;
            }
        };
        let said = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        match output.status.code() {
            Some(0) if fed.is_ok() => {}
            Some(COMPILE_REFUSED) => {
                return Some(Err(PluginError::Compile {
                    plugin: name.to_owned(),
                    message: said,
                }));
            }
            _ => {
                tracing::warn!(plugin = name, status = %output.status, stderr = said,
                    "the plugin compiler process failed; compiling in process");
                return None;
            }
        }
        match cache.load(&self.inner.engine, key) {
            Some(component) => Some(Ok(component)),
            None => {
                tracing::warn!(
                    plugin = name,
                    "the plugin compiler process left nothing usable in the cache; compiling in process"
                );
                None
            }
        }
    }

    /// Checks that the component exports the v0.1 plugin interface (any
    /// 0.1.x) with the right types and imports nothing the host does not
    /// provide, and finds the optional `classification` export.
    fn type_check(&self, name: &str, component: &Component) -> Result<Checked, PluginError> {
        let engine = &self.inner.engine;
        let ty = component.component_type();
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
        let interface = match ty.exports(engine).find(|(n, _)| is_plugin_interface(n)) {
            Some((export, item)) if matches!(item.ty, ComponentItem::ComponentInstance(_)) => {
                export.to_owned()
            }
            Some((export, _)) => {
                return Err(PluginError::WrongWorld {
                    plugin: name.to_owned(),
                    message: format!("{export} is exported but is not an interface"),
                });
            }
            None => {
                if let Some(other) = exports
                    .iter()
                    .find(|n| n.starts_with("repeater:plugin/plugin@"))
                {
                    return Err(PluginError::WrongVersion {
                        plugin: name.to_owned(),
                        found: other.clone(),
                    });
                }
                return Err(PluginError::NotAPlugin {
                    plugin: name.to_owned(),
                    expected: PLUGIN_INTERFACE,
                    found: if exports.is_empty() {
                        "nothing".to_owned()
                    } else {
                        exports.join(", ")
                    },
                });
            }
        };
        let instance_pre =
            self.inner
                .linker
                .instantiate_pre(component)
                .map_err(|e| PluginError::WrongWorld {
                    plugin: name.to_owned(),
                    message: format!("{e:#}"),
                })?;
        let pre = RepeaterPre::new(instance_pre).map_err(|e| PluginError::WrongWorld {
            plugin: name.to_owned(),
            message: format!("{e:#}"),
        })?;
        // Looked up by semver, so a later 0.1.x plugin's export is found too.
        let rules = component
            .get_export_index(None, CLASSIFICATION_INTERFACE)
            .map(|interface| {
                component
                    .get_export_index(Some(&interface), "rules")
                    .ok_or_else(|| PluginError::WrongWorld {
                        plugin: name.to_owned(),
                        message: format!("{CLASSIFICATION_INTERFACE} does not export `rules`"),
                    })
            })
            .transpose()?;
        // `instantiate_pre` above has type-checked the interface, so both
        // lookups succeed for any component that got this far.
        let build = component
            .get_export_index(None, &interface)
            .and_then(|plugin| component.get_export_index(Some(&plugin), "build"))
            .ok_or_else(|| PluginError::WrongWorld {
                plugin: name.to_owned(),
                message: format!("{interface} does not export `build`"),
            })?;
        Ok(Checked {
            pre,
            interface,
            rules,
            build,
        })
    }
}

/// The exit status of `plugin compile-cache` when the bytes do not compile
/// (its standard error then holds the compiler's words).
pub const COMPILE_REFUSED: i32 = 3;

/// The work of the compiler child process (`repeaterd plugin compile-cache`):
/// compiles a component on an engine configured from `limits` exactly as
/// the daemon's, and writes the code into the cache at `cache_dir` under
/// the key the daemon looks for.
pub fn compile_into_cache(
    limits: &PluginLimits,
    cache_dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), PluginError> {
    let engine = Engine::new(&engine_config(limits))
        .map_err(|e| PluginError::Engine(format!("cannot create wasmtime engine: {e:#}")))?;
    let cache = CodeCache::open(cache_dir)?;
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    let component = compile(&engine, name, bytes)?;
    cache.store(&cache.key(&engine, &digest), &component)
}

fn compile(engine: &Engine, name: &str, bytes: &[u8]) -> Result<Component, PluginError> {
    Component::from_binary(engine, bytes).map_err(|e| PluginError::Compile {
        plugin: name.to_owned(),
        message: format!("{e:#}"),
    })
}

/// The wasmtime configuration. Everything that affects generated code is set
/// here, so the cache key's engine hash covers it.
fn engine_config(limits: &PluginLimits) -> Config {
    let instances = limits.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    // A component instance of a Rust plugin holds a handful of core
    // instances (the plugin, the WASI adapter and shims), one or two
    // memories and a few tables; size the pool for that.
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(8))
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(4))
        .total_stacks(instances)
        .max_memories_per_component(2)
        .max_memory_size(limits.memory_bytes)
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(64 << 10)
        // Uses PAGEMAP_SCAN (Linux 6.7+) to reset only the pages a call
        // touched; `Auto` falls back silently where the kernel lacks it.
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Advances the engine's epoch every `tick` on a background thread until
/// the engine (and every component compiled with it) is dropped.
fn spawn_epoch_ticker(engine: &Engine, tick: Duration) -> Result<(), PluginError> {
    let weak = engine.weak();
    let tick = tick.max(Duration::from_micros(100));
    std::thread::Builder::new()
        .name("plugin-epoch".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .map(drop)
        // Without the ticker no CPU deadline would ever fire.
        .map_err(|e| PluginError::Engine(format!("cannot start the epoch ticker thread: {e}")))
}
