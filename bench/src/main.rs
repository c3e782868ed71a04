//! `bench`: the repeaterd benchmark harness. It starts the real `repeaterd`
//! binary on loopback, drives it through its HTTP API, receives its
//! deliveries on a local HTTP server, and prints one JSON line per scenario.
//! Every run first measures the machine's raw ceiling (a minimal keep-alive
//! client posting the same 1 KiB body to the same receiver, and, where they
//! are installed, wrk posting it to nginx; the stronger of the two) and
//! expresses every throughput as a ratio to it.
//!
//! It never sends traffic anywhere but 127.0.0.1 (and a PostgreSQL server
//! given by a loopback `--pg-url`).

mod api;
mod ceiling;
mod claim;
mod cpu;
mod daemon;
mod database;
mod ingest;
mod payload;
mod receiver;
mod scenario;
mod stats;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use serde_json::Value;

use crate::database::Backend;
use crate::scenario::{Ctx, DispatchTuning, Fields};

/// Which scenarios to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Every scenario below, in this order.
    All,
    /// Only the raw ceiling (always measured first anyway).
    Ceiling,
    /// Deliveries per second, 20 domains × 5 repeaters.
    Throughput,
    /// Ingest→delivered p50/p99 at half the maximum rate.
    Latency,
    /// Small domains under a flood, and Jain's index when all are backlogged.
    Fairness,
    /// Claim cost and start-up time with a million queued records.
    Scale,
    /// Console page times with a million records, and delivery with the
    /// overview refreshing against without.
    Console,
    /// Ready time and idle memory after loading a plugin in Rust, Python
    /// and JavaScript, with a cold and a warm compiled-code cache.
    PluginLoad,
    /// Ten minutes at half the maximum rate with a minute's retention:
    /// memory and database size every 30 s, flat once retention runs.
    Soak,
    /// The fairness scenario with two daemons sharing one PostgreSQL.
    FairnessTwo,
    /// A producer's burst of batches while a backlog delivers: deliveries
    /// per second of the burst against the steady rate, and push-back.
    Burst,
    /// 1,000 domains × 10 repeaters against 20 × 5, and ingest offered at
    /// twice the drain rate.
    Tenants,
    /// One repeater against a receiver that serves 3 requests at a time and
    /// turns the rest away: the share served and of its capacity used.
    Busy,
}

/// Which store the daemon runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DbChoice {
    Sqlite,
    Postgres,
    Both,
}

/// Benchmark harness for repeaterd: one JSON line per scenario on stdout.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The daemon binary [default: repeaterd next to this binary].
    #[arg(long)]
    repeaterd: Option<PathBuf>,
    /// Scenario to run.
    #[arg(long, value_enum, default_value = "all")]
    scenario: Scenario,
    /// Store(s) to run the daemon scenarios on.
    #[arg(long, value_enum, default_value = "sqlite")]
    db: DbChoice,
    /// PostgreSQL server for `--db postgres|both` (loopback only). Each
    /// scenario creates and drops its own database there.
    #[arg(
        long,
        env = "REPEATERD_BENCH_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pg_url: String,
    /// Events of the throughput scenario (before `--quick`).
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Divide every count by 10 and shorten timed phases, for a quick look.
    #[arg(long)]
    quick: bool,
    /// Where the run's temporary directory goes.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    work_dir: PathBuf,
    /// Keep the run's directory (configs, daemon logs, SQLite files).
    #[arg(long)]
    keep: bool,
    /// How long the ceiling client runs, seconds.
    #[arg(long, default_value_t = 3.0)]
    ceiling_seconds: f64,
    /// Connections of the ceiling client [default: 4 × cores].
    #[arg(long)]
    ceiling_connections: Option<usize>,
    /// Events per ingest batch request (the API allows up to 1000).
    #[arg(long, default_value_t = 500)]
    batch: u64,
    /// Concurrent ingest client tasks.
    #[arg(long, default_value_t = 4)]
    ingest_tasks: usize,
    /// Records per claim timed by the scale scenario (the daemon's default
    /// `dispatch.batch_size`).
    #[arg(long, default_value_t = 50)]
    claim_batch: u32,
    /// `dispatch.max_inflight` of the daemon under test: generous, so that
    /// the daemon, not the config, sets the pace.
    #[arg(long, default_value_t = 512)]
    max_inflight: u32,
    /// `dispatch.concurrency` (per-repeater ceiling) of the daemon under test.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// `dispatch.batch_size` of the daemon under test [default: the daemon's].
    #[arg(long)]
    batch_size: Option<u32>,
    /// Time budget per scenario, seconds [default: per scenario].
    #[arg(long)]
    budget_seconds: Option<u64>,
    /// Maximum rate (deliveries/s) the latency and soak scenarios offer
    /// half of, instead of the rate measured in this run: compares
    /// binaries at the same offered load.
    #[arg(long)]
    latency_max_rate: Option<f64>,
}

/// Deletes the run's directory when the harness ends, unless kept.
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn default_repeaterd() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("repeaterd")))
        .unwrap_or_else(|| PathBuf::from("target/release/repeaterd"))
}

/// A token that only this run knows.
fn fresh_token() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("bench-{}-{nanos:x}", std::process::id())
}

/// Keys printed first, in this order; the rest follow alphabetically.
const LEADING_KEYS: [&str; 11] = [
    "scenario",
    "db",
    "events",
    "deliveries_per_s",
    "ratio_to_ceiling",
    "p50_ms",
    "p99_ms",
    "peak_rss_mb",
    "target",
    "met",
    "error",
];

/// One JSON object on one line, with [`LEADING_KEYS`] first so the lines
/// read alike whatever the scenario.
fn json_line(fields: &Fields) -> String {
    let mut keys: Vec<&String> = fields.keys().collect();
    keys.sort_by_key(|key| {
        LEADING_KEYS
            .iter()
            .position(|leading| leading == key)
            .unwrap_or(LEADING_KEYS.len())
    });
    let members: Vec<String> = keys
        .into_iter()
        .map(|key| format!("{}:{}", Value::from(key.as_str()), fields[key]))
        .collect();
    format!("{{{}}}", members.join(","))
}

/// Prints one JSON line and flushes, so partial runs still leave results.
fn emit(fields: Fields) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", json_line(&fields));
    let _ = stdout.flush();
}

/// The fields every line carries, with nulls where a scenario has nothing.
fn base_fields(scenario: &str, db: Option<Backend>) -> Fields {
    let mut fields = Fields::new();
    fields.insert("scenario".into(), Value::from(scenario));
    fields.insert(
        "db".into(),
        db.map_or(Value::Null, |db| Value::from(db.as_str())),
    );
    for key in [
        "events",
        "deliveries_per_s",
        "ratio_to_ceiling",
        "p50_ms",
        "p99_ms",
        "peak_rss_mb",
        "target",
    ] {
        fields.insert(key.into(), Value::Null);
    }
    fields.insert("met".into(), Value::from(false));
    fields
}

/// Runs one daemon scenario within its budget and prints its line.
async fn run_scenario(ctx: &Ctx, scenario: Scenario, backend: Backend, budget: Duration) {
    let name = scenario
        .to_possible_value()
        .map_or_else(|| format!("{scenario:?}"), |v| v.get_name().to_owned());
    let mut fields = base_fields(&name, Some(backend));
    let started = Instant::now();
    let outcome = {
        let work = async {
            match scenario {
                Scenario::Throughput => scenario::throughput::run(ctx, backend, &mut fields).await,
                Scenario::Latency => scenario::latency::run(ctx, backend, &mut fields).await,
                Scenario::Fairness => scenario::fairness::run(ctx, backend, &mut fields, 1).await,
                Scenario::FairnessTwo => {
                    scenario::fairness::run(ctx, backend, &mut fields, 2).await
                }
                Scenario::Scale => scenario::scale::run(ctx, backend, &mut fields).await,
                Scenario::Console => scenario::console::run(ctx, backend, &mut fields).await,
                Scenario::PluginLoad => scenario::plugin_load::run(ctx, backend, &mut fields).await,
                Scenario::Soak => scenario::soak::run(ctx, backend, &mut fields).await,
                Scenario::Burst => scenario::burst::run(ctx, backend, &mut fields).await,
                Scenario::Tenants => scenario::tenants::run(ctx, backend, &mut fields).await,
                Scenario::Busy => scenario::busy::run(ctx, backend, &mut fields).await,
                Scenario::All | Scenario::Ceiling => Ok(()),
            }
        };
        // A scenario that runs out of time is dropped here, which kills the
        // daemon it started and removes its directory and database.
        match tokio::time::timeout(budget, work).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "did not finish within its {} s budget",
                budget.as_secs()
            )),
        }
    };
    if let Err(err) = outcome {
        fields.insert("met".into(), Value::from(false));
        fields.insert("error".into(), Value::from(err));
    }
    scenario::put(&mut fields, "elapsed_s", started.elapsed().as_secs_f64());
    emit(fields);
}

/// Default budget of a scenario, seconds.
fn default_budget(scenario: Scenario, quick: bool) -> u64 {
    let full = match scenario {
        Scenario::Throughput => 900,
        Scenario::Latency => 600,
        Scenario::Fairness => 900,
        Scenario::Scale => 2400,
        Scenario::Console => 1200,
        Scenario::PluginLoad => 600,
        Scenario::Soak => 1600,
        Scenario::FairnessTwo => 900,
        Scenario::Burst => 900,
        Scenario::Tenants => 1200,
        Scenario::Busy => 300,
        Scenario::All | Scenario::Ceiling => 60,
    };
    if quick { full / 4 } else { full }
}

async fn run(args: Args) -> i32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let connections = args.ceiling_connections.unwrap_or(4 * cores).max(1);
    let repeaterd = args.repeaterd.clone().unwrap_or_else(default_repeaterd);
    let root = args.work_dir.join(format!(
        "repeaterd-bench-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    ));
    if let Err(err) = std::fs::create_dir_all(&root) {
        eprintln!("bench: cannot create {}: {err}", root.display());
        return 2;
    }
    let _run_dir = RunDir {
        path: root.clone(),
        keep: args.keep,
    };

    // The ceiling, always first.
    let mut fields = base_fields("ceiling", None);
    let mut ceiling = None;
    let ceiling_time = Duration::from_secs_f64(args.ceiling_seconds.clamp(0.5, 60.0));
    match tokio::time::timeout(
        ceiling_time + Duration::from_secs(30),
        ceiling::measure(ceiling_time, connections),
    )
    .await
    {
        Ok(Ok(measured)) => {
            scenario::put(&mut fields, "hyper_requests_per_s", measured.requests_per_s);
            let mut strongest = (measured, "hyper");
            // The same body from wrk to nginx, where both are installed:
            // the stronger pair is the ceiling every ratio uses.
            match tokio::time::timeout(
                ceiling_time + Duration::from_secs(30),
                ceiling::measure_nginx_wrk(ceiling_time, &root),
            )
            .await
            {
                Ok(Ok(Some(wrk))) => {
                    scenario::put(&mut fields, "nginx_wrk_requests_per_s", wrk.requests_per_s);
                    if wrk.requests_per_s > strongest.0.requests_per_s {
                        strongest = (wrk, "nginx+wrk");
                    }
                }
                Ok(Ok(None)) => {
                    fields.insert(
                        "nginx_wrk".into(),
                        Value::from("not installed (apt-get install nginx wrk)"),
                    );
                }
                Ok(Err(err)) => {
                    fields.insert("nginx_wrk".into(), Value::from(err));
                }
                Err(_) => {
                    fields.insert("nginx_wrk".into(), Value::from("did not finish in time"));
                }
            }
            let (measured, from) = strongest;
            ceiling = Some(measured.requests_per_s);
            fields.insert("ceiling_from".into(), Value::from(from));
            scenario::put(&mut fields, "requests_per_s", measured.requests_per_s);
            fields.insert("requests".into(), Value::from(measured.requests));
            fields.insert("connections".into(), Value::from(measured.connections));
            scenario::put(&mut fields, "seconds", measured.seconds);
            fields.insert("body_bytes".into(), Value::from(payload::BODY_BYTES));
            fields.insert("met".into(), Value::Null);
        }
        Ok(Err(err)) => {
            fields.insert("error".into(), Value::from(err));
        }
        Err(_) => {
            fields.insert(
                "error".into(),
                Value::from("ceiling run did not finish in time"),
            );
        }
    }
    emit(fields);
    if args.scenario == Scenario::Ceiling {
        return 0;
    }

    if !repeaterd.is_file() {
        eprintln!(
            "bench: no repeaterd binary at {} (build it with `cargo build --release -p repeaterd` or pass --repeaterd)",
            repeaterd.display()
        );
        return 2;
    }
    let ctx = Ctx {
        repeaterd,
        root,
        keep: args.keep,
        pg_url: args.pg_url.clone(),
        divisor: if args.quick { 10 } else { 1 },
        events: args.events,
        batch: args.batch.clamp(1, 1000),
        ingest_tasks: args.ingest_tasks.max(1),
        claim_batch: args.claim_batch.max(1),
        dispatch: DispatchTuning {
            max_inflight: args.max_inflight.max(1),
            concurrency: args.concurrency.max(1),
            batch_size: args.batch_size.map(|n| n.max(1)),
        },
        token: fresh_token(),
        ceiling,
        max_rate: Mutex::new(HashMap::new()),
        latency_max_rate: args.latency_max_rate.filter(|rate| *rate > 0.0),
    };
    let backends: Vec<Backend> = match args.db {
        DbChoice::Sqlite => vec![Backend::Sqlite],
        DbChoice::Postgres => vec![Backend::Postgres],
        DbChoice::Both => vec![Backend::Sqlite, Backend::Postgres],
    };
    let scenarios: Vec<Scenario> = match args.scenario {
        Scenario::All => vec![
            Scenario::Throughput,
            Scenario::Latency,
            Scenario::Fairness,
            Scenario::FairnessTwo,
            Scenario::Burst,
            Scenario::Tenants,
            Scenario::Busy,
            Scenario::Scale,
            Scenario::Console,
            Scenario::PluginLoad,
        ],
        one => vec![one],
    };
    for backend in backends {
        for &scenario in &scenarios {
            let budget = Duration::from_secs(
                args.budget_seconds
                    .unwrap_or_else(|| default_budget(scenario, args.quick)),
            );
            run_scenario(&ctx, scenario, backend, budget).await;
        }
    }
    0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // Ctrl-C or SIGTERM (e.g. from `timeout`) drops the run: daemons are
    // killed and directories and databases removed by their guards before
    // the harness exits.
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(err) => {
                eprintln!("bench: cannot watch SIGTERM: {err}");
                std::process::exit(2);
            }
        };
    let code = tokio::select! {
        code = run(args) => code,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("bench: interrupted");
            130
        }
        _ = terminate.recv() => {
            eprintln!("bench: terminated");
            143
        }
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_lead_with_the_common_keys_and_stay_valid_json() {
        let mut fields = base_fields("throughput", Some(Backend::Sqlite));
        fields.insert("a_extra".into(), Value::from(1));
        fields.insert("error".into(), Value::from("x \"quoted\""));
        let line = json_line(&fields);
        assert!(
            line.starts_with(r#"{"scenario":"throughput","db":"sqlite","events":null"#),
            "{line}"
        );
        assert!(
            line.ends_with(r#""error":"x \"quoted\"","a_extra":1}"#),
            "{line}"
        );
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed, Value::Object(fields));
    }
}
