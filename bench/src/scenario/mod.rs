//! The scenarios and what they share: the run's settings ([`Ctx`]), each
//! scenario's own directory and database, the repeater layout, and checks
//! against the daemon's own view of its records.

pub mod burst;
pub mod busy;
pub mod console;
pub mod fairness;
pub mod latency;
pub mod plugin_load;
pub mod scale;
pub mod soak;
pub mod tenants;
pub mod throughput;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::api::Api;
use crate::daemon::{Daemon, DaemonConfig, RepeaterDef};
use crate::database::{Backend, ScenarioDb};
use crate::ingest::PostedBatch;
use crate::receiver::Receiver;

/// A scenario's output fields; the JSON line printed for it.
pub type Fields = Map<String, Value>;

/// `[dispatch]` settings of the daemon under test, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct DispatchTuning {
    /// `dispatch.max_inflight`.
    pub max_inflight: u32,
    /// `dispatch.concurrency`.
    pub concurrency: u32,
    /// `dispatch.batch_size`, or the daemon's default.
    pub batch_size: Option<u32>,
}

/// Settings shared by every scenario of one harness run.
pub struct Ctx {
    /// The daemon binary.
    pub repeaterd: PathBuf,
    /// This run's working directory.
    pub root: PathBuf,
    /// Keep scenario directories after the run.
    pub keep: bool,
    /// PostgreSQL server (loopback only).
    pub pg_url: String,
    /// Counts are divided by this (10 with `--quick`).
    pub divisor: u64,
    /// Events of the throughput scenario, before the divisor.
    pub events: u64,
    /// Events per batch request.
    pub batch: u64,
    /// Concurrent ingest tasks.
    pub ingest_tasks: usize,
    /// Records per claim in the scale scenario.
    pub claim_batch: u32,
    /// The `[dispatch]` settings every scenario's daemon runs with.
    pub dispatch: DispatchTuning,
    /// The admin token given to the daemon.
    pub token: String,
    /// The measured ceiling, requests per second.
    pub ceiling: Option<f64>,
    /// Throughput measured per backend in this run, deliveries per second.
    pub max_rate: Mutex<HashMap<&'static str, f64>>,
    /// A maximum rate given on the command line for the latency scenario.
    pub latency_max_rate: Option<f64>,
}

impl Ctx {
    /// The daemon config of a scenario: `repeaters`, state under
    /// `state_dir`, and this run's `[dispatch]` settings.
    pub fn daemon_config(
        &self,
        state_dir: &std::path::Path,
        repeaters: Vec<RepeaterDef>,
    ) -> Result<DaemonConfig, String> {
        DaemonConfig::new(state_dir, repeaters, self.dispatch)
    }

    /// `count` scaled down by the run's divisor, at least 1.
    pub fn scaled(&self, count: u64) -> u64 {
        (count / self.divisor).max(1)
    }

    /// True for a `--quick` run.
    pub fn quick(&self) -> bool {
        self.divisor > 1
    }

    /// `rate` as a fraction of the ceiling, when the ceiling is known.
    pub fn ratio_to_ceiling(&self, rate: f64) -> Value {
        match self.ceiling {
            Some(ceiling) if ceiling > 0.0 => Value::from(crate::stats::round3(rate / ceiling)),
            _ => Value::Null,
        }
    }

    /// Starts the daemon for a scenario, with its log and config in `dir`.
    pub async fn start_daemon(
        &self,
        config: &DaemonConfig,
        db: &ScenarioDb,
        dir: &Path,
    ) -> Result<(Daemon, Duration), String> {
        Daemon::start(
            &self.repeaterd,
            config,
            db,
            dir,
            &self.token,
            Duration::from_secs(120),
        )
        .await
    }
}

/// A scenario's working directory (config, log, SQLite file); removed
/// when dropped unless the run keeps its files.
pub struct ScenarioDir {
    path: PathBuf,
    keep: bool,
}

impl ScenarioDir {
    /// Creates `<root>/<label>`.
    pub fn create(ctx: &Ctx, label: &str) -> Result<ScenarioDir, String> {
        let path = ctx.root.join(label);
        std::fs::create_dir_all(&path)
            .map_err(|err| format!("cannot create {}: {err}", path.display()))?;
        Ok(ScenarioDir {
            path,
            keep: ctx.keep,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScenarioDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A directory and a fresh database for one scenario run on `backend`.
pub fn prepare(
    ctx: &Ctx,
    label: &str,
    backend: Backend,
) -> Result<(ScenarioDir, ScenarioDb), String> {
    let label = format!("{label}-{}", backend.as_str());
    let dir = ScenarioDir::create(ctx, &label)?;
    let db = ScenarioDb::create(backend, dir.path(), &ctx.pg_url, &label)?;
    Ok((dir, db))
}

/// Repeaters `r0..r{count-1}` of `domain`, all posting to the receiver.
pub fn repeaters_of(receiver: &Receiver, domain: &str, count: usize) -> Vec<RepeaterDef> {
    (0..count)
        .map(|index| {
            let name = format!("r{index}");
            RepeaterDef {
                url: receiver.url_for(domain, &name),
                domain: domain.to_owned(),
                name,
            }
        })
        .collect()
}

/// Checks through the API that exactly `expected` records of `repeaters`
/// ended `succeeded`.
pub async fn verify_succeeded(
    api: &Api,
    repeaters: &[RepeaterDef],
    expected: usize,
) -> Result<(), String> {
    let mut succeeded = 0i64;
    for repeater in repeaters {
        succeeded += api
            .backlog_count(&repeater.domain, &repeater.name, "succeeded")
            .await?;
    }
    if succeeded as usize == expected {
        Ok(())
    } else {
        Err(format!(
            "the daemon reports {succeeded} succeeded records, expected {expected}"
        ))
    }
}

/// Pauses or resumes every repeater in `repeaters`.
pub async fn set_paused(api: &Api, repeaters: &[RepeaterDef], paused: bool) -> Result<(), String> {
    for repeater in repeaters {
        api.set_paused(&repeater.domain, &repeater.name, paused)
            .await?;
    }
    Ok(())
}

/// Ingest→delivered latencies in milliseconds of every record of
/// `batches`, from the moment its batch was sent to its first arrival.
/// Records that never arrived are counted in the second value.
pub fn latencies_ms(
    batches: &[PostedBatch],
    arrivals: &HashMap<u64, Instant>,
) -> (Vec<f64>, usize) {
    let mut samples = Vec::new();
    let mut missing = 0;
    for batch in batches {
        for key in &batch.records {
            match arrivals.get(key) {
                Some(at) => {
                    samples.push(at.saturating_duration_since(batch.sent).as_secs_f64() * 1000.0)
                }
                None => missing += 1,
            }
        }
    }
    (samples, missing)
}

/// The maximum rate of `backend`, deliveries per second, that the latency
/// and soak scenarios offer half of: given with `--latency-max-rate`,
/// measured by the throughput scenario earlier in the run, or found by a
/// smaller throughput run named `probe` (saying so in `max_rate_from`).
pub async fn max_rate(
    ctx: &Ctx,
    backend: Backend,
    fields: &mut Fields,
    probe: &str,
) -> Result<f64, String> {
    if let Some(rate) = ctx.latency_max_rate {
        fields.insert("max_rate_from".into(), Value::from("--latency-max-rate"));
        return Ok(rate);
    }
    let known = ctx
        .max_rate
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .get(backend.as_str())
        .copied();
    if let Some(rate) = known {
        return Ok(rate);
    }
    fields.insert(
        "max_rate_from".into(),
        Value::from("probe run of 20000/divisor events"),
    );
    Ok(throughput::measure(ctx, backend, ctx.scaled(20_000), probe)
        .await?
        .deliveries_per_s)
}

/// Puts a number into the fields, rounded to three decimals.
pub fn put(fields: &mut Fields, key: &str, value: f64) {
    fields.insert(key.to_owned(), Value::from(crate::stats::round3(value)));
}

/// CPU readings of the daemon and of this harness at the start of a
/// measured span.
pub struct CpuSpan {
    daemon: Option<Duration>,
    harness: Option<Duration>,
    from: Instant,
}

/// Where the cores went over a measured span.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    /// The daemon's CPU time over the span.
    pub daemon: Duration,
    /// The daemon's CPU time per delivery.
    pub daemon_per_delivery: Duration,
    /// The daemon's CPU time as cores kept busy for the span.
    pub daemon_cores: f64,
    /// The harness's (receiver, ingest client) CPU time as cores.
    pub harness_cores: f64,
}

impl CpuSpan {
    /// Reads both processes' CPU time now.
    pub fn start(daemon: &Daemon) -> CpuSpan {
        CpuSpan {
            daemon: daemon.cpu(),
            harness: crate::cpu::of_self(),
            from: Instant::now(),
        }
    }

    /// What the span used up to now, spread over `deliveries`; `None` where
    /// `/proc` cannot tell.
    pub fn end(&self, daemon: &Daemon, deliveries: usize) -> Option<CpuUse> {
        let wall = self.from.elapsed();
        let used = daemon.cpu()?.saturating_sub(self.daemon?);
        let harness = crate::cpu::of_self()?.saturating_sub(self.harness?);
        Some(CpuUse {
            daemon: used,
            daemon_per_delivery: used / u32::try_from(deliveries.max(1)).unwrap_or(u32::MAX),
            daemon_cores: crate::cpu::cores(used, wall),
            harness_cores: crate::cpu::cores(harness, wall),
        })
    }
}

impl CpuUse {
    /// Puts the figures into a scenario's JSON line (nulls when unknown).
    pub fn put(used: Option<CpuUse>, fields: &mut Fields) {
        let figures = [
            ("daemon_cpu_s", used.map(|u| u.daemon.as_secs_f64())),
            (
                "daemon_cpu_us_per_delivery",
                used.map(|u| u.daemon_per_delivery.as_secs_f64() * 1e6),
            ),
            ("daemon_cores", used.map(|u| u.daemon_cores)),
            ("harness_cores", used.map(|u| u.harness_cores)),
        ];
        for (key, value) in figures {
            match value {
                Some(value) => put(fields, key, value),
                None => {
                    fields.insert(key.to_owned(), Value::Null);
                }
            }
        }
    }
}
