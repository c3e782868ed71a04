//! Dispatch: running repeaters' batches. Owns the scheduler loop (one per
//! process: fair choice of the next repeater, global in-flight cap, AIMD
//! and rate pacing per repeater, prompt wake-up), the lane runner (one batch
//! of one repeater under its lease: plugin → HTTP → plugin → store), the
//! URL a built request goes to, and the retention purge. What to decide
//! about a batch (its grant, its pacing, the judgement of its outcomes) is
//! [`crate::schedule`]'s; this module does the I/O around those decisions.
//!
//! - [`scheduler`]: the loop ([`Dispatcher::spawn`] starts it).
//! - [`lane`]: one batch, fenced by the lease epoch, lease renewed at ttl/3.
//! - [`attempt`]: one record's attempt; plugin errors become outcomes.
//! - [`policy`]: a repeater's resolved limits as the schedule's policies.
//! - [`target`]: repeater URL + plugin path/query, refusing `..`.
//! - [`retention`]: bounded purges of old terminal records.
//!
//! After every batch the repeater takes its turn again behind the other
//! ready repeaters, which keeps fairness across domains first. Its lease is
//! kept for its next batch while it stays ready (ADR 5), so a turn costs no
//! lease write.

pub mod attempt;
pub mod lane;
pub mod policy;
pub mod retention;
pub(crate) mod scheduler;
pub mod target;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::DispatchConfig;
use crate::outbound::{Credentials, Outbound};
use crate::plugin::PluginRegistry;
use crate::store::Store;
use crate::telemetry::{Metrics, cpu_counted};

pub use retention::RetentionSettings;

/// Process-level dispatch settings (not per repeater).
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// This process's lease holder name (process id and host).
    pub holder: String,
    /// Global cap on requests in flight in this process.
    pub max_inflight: u32,
    /// Most records claimed per batch (`dispatch.batch_size`).
    pub batch_size: u32,
    /// AIMD ceiling used before a repeater's own limits are read.
    pub default_concurrency: u32,
    /// Lease time to live; renewed every third of it while a batch runs.
    pub lease_ttl_ms: i64,
    /// Longest sleep of the loop, and how long the whole ready set is
    /// reused at least: the safety net for expired leases of crashed peers
    /// and for work made due by other processes.
    pub max_sleep: Duration,
    /// Batch time budget: repeaters whose batches keep exceeding it yield
    /// their turns to the others of their domain (docs/scheduling.md, "Heavy repeaters yield").
    pub batch_budget: Duration,
    /// How long running batches may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// The retention purge, if any.
    pub retention: Option<RetentionSettings>,
}

impl DispatchSettings {
    /// A lease holder name unique to this process.
    pub fn holder_name() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned());
        format!(
            "{host}:{}:{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        )
    }
}

/// Everything a batch needs, shared by the loop and its batch tasks.
pub struct DispatchDeps {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Plugins by name.
    pub plugins: PluginRegistry,
    /// The guarded HTTP client.
    pub outbound: Outbound,
    /// Authentication and signing added after `build`.
    pub credentials: Credentials,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Process-level settings.
    pub settings: DispatchSettings,
    /// Global dispatch defaults; replaced on config reload.
    pub config: watch::Receiver<Arc<DispatchConfig>>,
}

/// The dispatcher of one process.
pub struct Dispatcher {
    deps: Arc<DispatchDeps>,
}

impl Dispatcher {
    /// A dispatcher over these parts.
    pub fn new(deps: DispatchDeps) -> Dispatcher {
        Dispatcher {
            deps: Arc::new(deps),
        }
    }

    /// Starts the scheduler loop and the retention purge. The returned task
    /// ends after `shutdown` turns true and running batches finished (or
    /// the grace period ran out and their leases were released).
    pub fn spawn(self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let deps = self.deps;
        tokio::spawn(async move {
            let retention = deps.settings.retention.clone().map(|settings| {
                tokio::spawn(retention::run_retention(
                    deps.store.clone(),
                    settings,
                    shutdown.clone(),
                ))
            });
            let metrics = deps.metrics.clone();
            let scheduler = scheduler::Scheduler::new(deps.clone()).run(shutdown);
            cpu_counted(scheduler, |cpu| metrics.scheduler_cpu(cpu)).await;
            if let Some(task) = retention {
                let _ = task.await;
            }
        })
    }
}
