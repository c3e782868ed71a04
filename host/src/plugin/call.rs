//! Calling a loaded plugin: a fresh instance per call from the
//! pre-instantiated component, run under the CPU and memory limits, its
//! store dropped afterwards (a trapped instance is never reused), and every
//! failure turned into a [`PluginError`] that names the cause.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::OwnedSemaphorePermit;
use wasmtime::component::ComponentExportIndex;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::types::{BuildOutcome, Event, Reply, RequestSummary, Verdict};
use super::bindings::{CLASSIFICATION_INTERFACE, ClassifyRules, Repeater, RepeaterPre};
use super::build_view::BuildOutcomeView;
use super::default_rules::judge_by_default_rules;
use super::engine::{PluginEngine, Prepared};
use super::error::PluginError;
use super::request_check::check_build_outcome;
use super::sandbox::CallState;

/// Who a call is made for. Used to label the plugin's log output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallContext {
    /// The repeater the call serves, as `domain/name`.
    pub repeater: String,
}

impl CallContext {
    /// A context for the repeater `name` of `domain`.
    pub fn new(domain: &str, name: &str) -> Self {
        Self {
            repeater: format!("{domain}/{name}"),
        }
    }
}

/// A compiled, type-checked plugin, ready to be called. Immutable: a new
/// version of a plugin is a new `LoadedPlugin`, so holding an `Arc` to one
/// keeps a call on the version it started with.
pub struct LoadedPlugin {
    engine: PluginEngine,
    name: Arc<str>,
    version: String,
    size: usize,
    from_cache: bool,
    pre: RepeaterPre<CallState>,
    interface: String,
    rules_export: Option<ComponentExportIndex>,
    build_export: ComponentExportIndex,
    rules: ClassifyRules,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("size", &self.size)
            .field("from_cache", &self.from_cache)
            .field("interface", &self.interface)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

/// One live instance, with the instance slot it occupies.
struct Running {
    store: Store<CallState>,
    bindings: Repeater,
    _slot: OwnedSemaphorePermit,
}

impl LoadedPlugin {
    pub(crate) fn new(engine: PluginEngine, name: &str, prepared: Prepared) -> Self {
        let Prepared {
            checked,
            version,
            size,
            from_cache,
        } = prepared;
        Self {
            engine,
            name: name.into(),
            version,
            size,
            from_cache,
            pre: checked.pre,
            interface: checked.interface,
            rules_export: checked.rules,
            build_export: checked.build,
            // Until the plugin says otherwise (see `probe`).
            rules: ClassifyRules::Own,
        }
    }

    /// The plugin's name (a built-in's name or the file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin's version: the sha256 of the component bytes, in hex.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Size of the component in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The plugin interface the component exports, with the WIT package
    /// version it was built for, e.g. `repeater:plugin/plugin@0.1.0`.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The rules the plugin's replies are judged by: [`ClassifyRules::Default`]
    /// when it declared the default rules, so [`classify`](Self::classify)
    /// runs no plugin code.
    pub fn classify_rules(&self) -> ClassifyRules {
        self.rules
    }

    /// Runs `validate-config` on a repeater's plugin config (a JSON document).
    /// A refusal is [`PluginError::Config`] with the plugin's explanation.
    pub async fn validate_config(
        &self,
        ctx: &CallContext,
        config: &str,
    ) -> Result<(), PluginError> {
        const CALL: &str = "validate-config";
        let mut run = self.start(ctx, CALL).await?;
        let result = run
            .bindings
            .repeater_plugin_plugin()
            .call_validate_config(&mut run.store, config)
            .await;
        match self.finish(run, CALL, result)? {
            Ok(()) => Ok(()),
            Err(message) => Err(PluginError::Config {
                plugin: self.name.to_string(),
                message,
            }),
        }
    }

    /// Runs `build` for one record. A `send` outcome has passed the host's
    /// checks: body and header limits, header names and values valid for
    /// HTTP, no headers the host owns, a clean path and query. A body past
    /// the limit is refused without being copied out of the plugin.
    pub async fn build(
        &self,
        ctx: &CallContext,
        event: &Event,
        config: &str,
    ) -> Result<BuildOutcome, PluginError> {
        let (mut store, _slot) = self.new_store(ctx).await?;
        let view = self.call_build(&mut store, event, config).await;
        // One flush for every way out, so the plugin's logs are never lost.
        store.data().output.flush();
        let limits = self.engine.limits();
        let outcome = view?.into_outcome(&self.name, limits)?;
        check_build_outcome(&self.name, limits, &outcome)?;
        Ok(outcome)
    }

    /// Instantiates in `store` and calls `build`, lifting its outcome as a
    /// [`BuildOutcomeView`] rather than through the generated bindings.
    async fn call_build(
        &self,
        store: &mut Store<CallState>,
        event: &Event,
        config: &str,
    ) -> Result<BuildOutcomeView, PluginError> {
        const CALL: &str = "build";
        let instance = self
            .pre
            .instance_pre()
            .instantiate_async(&mut *store)
            .await
            .map_err(|error| self.failure(store.data(), CALL, &error))?;
        let build = instance
            .get_typed_func::<(&Event, &str), (BuildOutcomeView,)>(&mut *store, &self.build_export)
            .map_err(|error| PluginError::WrongWorld {
                plugin: self.name.to_string(),
                message: format!("{}: `build` has the wrong type: {error:#}", self.interface),
            })?;
        let (view,) = build
            .call_async(&mut *store, (event, config))
            .await
            .map_err(|error| self.failure(store.data(), CALL, &error))?;
        Ok(view)
    }

    /// Judges the reply to a request this plugin built: by the default
    /// rules in the host when the plugin declared them, otherwise by running
    /// its `classify`.
    pub async fn classify(
        &self,
        ctx: &CallContext,
        request: &RequestSummary,
        reply: &Reply,
        config: &str,
    ) -> Result<Verdict, PluginError> {
        const CALL: &str = "classify";
        if self.rules == ClassifyRules::Default {
            return Ok(judge_by_default_rules(reply));
        }
        let mut run = self.start(ctx, CALL).await?;
        let result = run
            .bindings
            .repeater_plugin_plugin()
            .call_classify(&mut run.store, request, reply, config)
            .await;
        self.finish(run, CALL, result)
    }

    /// Instantiates once, to refuse at load time a component whose start-up
    /// code fails or breaks the limits, and asks a plugin that exports the
    /// `classification` interface which rules judge its replies.
    pub(crate) async fn probe(&mut self) -> Result<(), PluginError> {
        let ctx = CallContext {
            repeater: "(load check)".to_owned(),
        };
        let (mut store, _slot) = self.new_store(&ctx).await?;
        let rules = self.ask_rules(&mut store).await;
        // One flush for every way out, so start-up logs are never lost.
        store.data().output.flush();
        self.rules = rules?;
        Ok(())
    }

    /// Instantiates in `store` and calls the `classification` export's
    /// `rules`; a plugin without the export has rules of its own.
    async fn ask_rules(&self, store: &mut Store<CallState>) -> Result<ClassifyRules, PluginError> {
        let instance = self
            .pre
            .instance_pre()
            .instantiate_async(&mut *store)
            .await
            .map_err(|error| self.failure(store.data(), "instantiate", &error))?;
        let Some(index) = &self.rules_export else {
            return Ok(ClassifyRules::Own);
        };
        let rules = instance
            .get_typed_func::<(), (ClassifyRules,)>(&mut *store, index)
            .map_err(|error| PluginError::WrongWorld {
                plugin: self.name.to_string(),
                message: format!(
                    "{CLASSIFICATION_INTERFACE}: `rules` has the wrong type: {error:#}"
                ),
            })?;
        let (rules,) = rules
            .call_async(&mut *store, ())
            .await
            .map_err(|error| self.failure(store.data(), "rules", &error))?;
        Ok(rules)
    }

    /// Takes an instance slot, makes a fresh store and instantiates.
    async fn start(&self, ctx: &CallContext, call: &'static str) -> Result<Running, PluginError> {
        let (mut store, slot) = self.new_store(ctx).await?;
        match self.pre.instantiate_async(&mut store).await {
            Ok(bindings) => Ok(Running {
                store,
                bindings,
                _slot: slot,
            }),
            Err(error) => {
                let state = store.data();
                state.output.flush();
                Err(self.failure(state, call, &error))
            }
        }
    }

    /// Takes an instance slot and makes a fresh store under the call limits,
    /// ready for one instantiation.
    async fn new_store(
        &self,
        ctx: &CallContext,
    ) -> Result<(Store<CallState>, OwnedSemaphorePermit), PluginError> {
        let inner = &self.engine.inner;
        let slot = inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PluginError::Engine("the instance slots were closed".to_owned()))?;
        inner.instances_started.fetch_add(1, Ordering::Relaxed);
        let limits = &inner.limits;
        let state = CallState::new(
            limits.memory_bytes,
            limits.deadline_ticks(),
            limits.max_log_bytes,
            ctx.repeater.as_str().into(),
            self.name.clone(),
        );
        let mut store = Store::new(&inner.engine, state);
        store.limiter(|state| &mut state.limiter);
        // The deadline must be armed before instantiation, which runs the
        // component's start-up code. Each tick spent in the guest costs one
        // unit of the budget and yields to the scheduler.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut cx| {
            let state = cx.data_mut();
            if state.ticks_left <= 1 {
                state.timed_out = true;
                return Err(wasmtime::format_err!("plugin CPU time limit reached"));
            }
            state.ticks_left -= 1;
            Ok(UpdateDeadline::Yield(1))
        });
        Ok((store, slot))
    }

    /// Ends a call: flushes its output and maps a wasmtime error. The store
    /// is dropped here, so a trapped instance is never reused.
    fn finish<R>(
        &self,
        run: Running,
        call: &'static str,
        result: wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let state = run.store.data();
        state.output.flush();
        result.map_err(|error| self.failure(state, call, &error))
    }

    /// Names the cause of a failed call: the limiter's and the epoch
    /// callback's flags come first, since both surface as plain traps.
    fn failure(
        &self,
        state: &CallState,
        call: &'static str,
        error: &wasmtime::Error,
    ) -> PluginError {
        let plugin = self.name.to_string();
        let limits = self.engine.limits();
        if state.timed_out {
            return PluginError::Timeout {
                plugin,
                call,
                limit: limits.cpu_time,
            };
        }
        if let Some(requested) = state.limiter.memory_breach {
            return PluginError::MemoryLimit {
                plugin,
                call,
                requested,
                limit: limits.memory_bytes,
            };
        }
        let message = match error.downcast_ref::<Trap>() {
            Some(trap) => match error.downcast_ref::<wasmtime::WasmBacktrace>() {
                Some(backtrace) => match backtrace.frames().first().and_then(|f| f.func_name()) {
                    Some(func) => format!("{trap} in {func}"),
                    None => trap.to_string(),
                },
                None => trap.to_string(),
            },
            None => format!("{error:#}"),
        };
        PluginError::Trap {
            plugin,
            call,
            message,
        }
    }
}
