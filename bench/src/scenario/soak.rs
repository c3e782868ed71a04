//! Soak: the throughput layout fed at half the measured maximum rate for
//! ten minutes (four with `--quick`), with `retention` set to a minute, and
//! one batch in ten posted to a domain no repeater serves, so its events
//! are ones that no repeater takes. Every 30 s the daemon's resident
//! memory (VmRSS) and the database's size are read; once the first
//! retention passes have run, both must stay within 10 % of their least
//! value: the purge keeps up, and nothing else grows.
//!
//! The retention task runs every 60 s, so the records kept swing between
//! one and two minutes' worth; the database file holds the larger set and
//! reuses its pages after that.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::throughput::{DOMAINS, REPEATERS_PER_DOMAIN, domain_names};
use super::{Ctx, Fields, max_rate, prepare, put, repeaters_of};
use crate::database::{Backend, ScenarioDb, psql_value};
use crate::payload::{self, BODY_BYTES};
use crate::receiver::Receiver;

/// How long records are kept.
const RETENTION: Duration = Duration::from_secs(60);
/// How often memory and database size are read.
const SAMPLE_EVERY: Duration = Duration::from_secs(30);
/// The settling time before the curves must be flat: retention, then two
/// rounds of the purge, which runs every 60 s.
const SETTLE: Duration = Duration::from_secs(180);
/// Most growth allowed after settling, as a fraction of the least value.
const FLAT_WITHIN: f64 = 0.10;
/// Every this many batches, one goes to the domain no repeater serves.
const UNROUTED_EVERY: u64 = 10;
/// How often the pacer looks at the clock.
const TICK: Duration = Duration::from_millis(10);

/// One reading of the run.
struct Sample {
    /// Seconds since the pace started.
    at_s: f64,
    /// The daemon's VmRSS, MiB.
    rss_mb: f64,
    /// The database's size on disk, MiB.
    db_mb: f64,
}

/// The soak scenario.
pub async fn run(ctx: &Ctx, backend: Backend, fields: &mut Fields) -> Result<(), String> {
    let duration = if ctx.quick() {
        Duration::from_secs(240)
    } else {
        Duration::from_secs(600)
    };
    let max_rate = max_rate(ctx, backend, fields, "soak-probe").await?;
    let delivery_rate = max_rate / 2.0;
    let event_rate = delivery_rate / REPEATERS_PER_DOMAIN as f64;
    put(fields, "max_deliveries_per_s", max_rate);
    put(fields, "offered_deliveries_per_s", delivery_rate);
    put(fields, "duration_s", duration.as_secs_f64());
    put(fields, "retention_s", RETENTION.as_secs_f64());

    let (dir, db) = prepare(ctx, "soak", backend)?;
    let domains = domain_names("sk");
    let receiver = Receiver::start(&domains).await?;
    let repeaters: Vec<_> = domains
        .iter()
        .flat_map(|domain| repeaters_of(&receiver, domain, REPEATERS_PER_DOMAIN))
        .collect();
    let mut config = ctx.daemon_config(&dir.path().join("state"), repeaters)?;
    config.retention = Some(RETENTION);
    let (mut daemon, _) = ctx.start_daemon(&config, &db, dir.path()).await?;

    let records = Arc::new(AtomicU64::new(0));
    let unrouted = Arc::new(AtomicU64::new(0));
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut posted_events = 0u64;
    let mut batches = 0u64;
    let mut posts = Vec::new();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while started.elapsed() < duration {
        ticker.tick().await;
        if started.elapsed() >= next_sample {
            daemon.sample_rss();
            samples.push(Sample {
                at_s: started.elapsed().as_secs_f64(),
                rss_mb: daemon.memory_mb().0,
                db_mb: db_mb(&db)?,
            });
            next_sample += SAMPLE_EVERY;
        }
        let due = (started.elapsed().as_secs_f64() * event_rate) as u64;
        let count = due.saturating_sub(posted_events).min(1000);
        if count == 0 {
            continue;
        }
        batches += 1;
        let is_unrouted = batches.is_multiple_of(UNROUTED_EVERY);
        let domain = if is_unrouted {
            "sk-unrouted".to_owned()
        } else {
            domains[batches as usize % DOMAINS].clone()
        };
        let body = payload::batch_body("sk", posted_events, count, BODY_BYTES);
        posted_events += count;
        let api = daemon.api().clone();
        let (records, unrouted) = (records.clone(), unrouted.clone());
        posts.push(tokio::spawn(async move {
            let keys = api.ingest_batch(&domain, body).await?;
            records.fetch_add(keys.len() as u64, Ordering::Relaxed);
            if is_unrouted {
                unrouted.fetch_add(count, Ordering::Relaxed);
            }
            Ok::<_, String>(())
        }));
    }
    for post in posts {
        post.await
            .map_err(|err| format!("ingest task failed: {err}"))??;
    }
    let records = records.load(Ordering::Relaxed) as usize;
    fields.insert("events".into(), Value::from(posted_events));
    fields.insert(
        "unrouted_events".into(),
        Value::from(unrouted.load(Ordering::Relaxed)),
    );
    fields.insert("records".into(), Value::from(records));
    // Retention deletes delivered records, so the receiver is the witness
    // that every acknowledged one arrived.
    receiver.wait_for(records, Duration::from_secs(300)).await?;
    put(
        fields,
        "achieved_deliveries_per_s",
        records as f64 / started.elapsed().as_secs_f64(),
    );

    let settled: Vec<_> = samples
        .iter()
        .filter(|s| s.at_s >= SETTLE.as_secs_f64())
        .collect();
    let rss_growth = growth(&settled, |s| s.rss_mb);
    let db_growth = growth(&settled, |s| s.db_mb);
    // The same over the run's second half, to tell a slow warm-up (caches
    // filling to their caps) from growth that goes on.
    let second_half: Vec<_> = samples
        .iter()
        .filter(|s| s.at_s >= duration.as_secs_f64() / 2.0)
        .collect();
    put(
        fields,
        "second_half_rss_growth",
        growth(&second_half, |s| s.rss_mb),
    );
    put(
        fields,
        "second_half_db_growth",
        growth(&second_half, |s| s.db_mb),
    );
    let round = |v: f64| Value::from(crate::stats::round3(v));
    fields.insert(
        "sample_s".into(),
        Value::from(samples.iter().map(|s| round(s.at_s)).collect::<Vec<_>>()),
    );
    fields.insert(
        "rss_mb_each_30s".into(),
        Value::from(samples.iter().map(|s| round(s.rss_mb)).collect::<Vec<_>>()),
    );
    fields.insert(
        "db_mb_each_30s".into(),
        Value::from(samples.iter().map(|s| round(s.db_mb)).collect::<Vec<_>>()),
    );
    put(fields, "settled_rss_growth", rss_growth);
    put(fields, "settled_db_growth", db_growth);
    let peak = daemon.stop().await?;
    put(fields, "peak_rss_mb", peak);
    fields.insert(
        "target".into(),
        Value::from("after the first retention passes, RSS and database size within 10 %"),
    );
    fields.insert(
        "met".into(),
        Value::from(settled.len() >= 2 && rss_growth <= FLAT_WITHIN && db_growth <= FLAT_WITHIN),
    );
    Ok(())
}

/// The largest `value` of `samples` over the least, minus one.
fn growth(samples: &[&Sample], value: fn(&Sample) -> f64) -> f64 {
    let least = samples
        .iter()
        .map(|s| value(s))
        .fold(f64::INFINITY, f64::min);
    let most = samples.iter().map(|s| value(s)).fold(0.0, f64::max);
    if least > 0.0 && least.is_finite() {
        most / least - 1.0
    } else {
        f64::NAN
    }
}

/// The database's size on disk, MiB: the SQLite file with its WAL, or the
/// PostgreSQL database as the server counts it.
fn db_mb(db: &ScenarioDb) -> Result<f64, String> {
    if let Some(path) = db.sqlite_path() {
        let mut bytes = 0;
        for suffix in ["", "-wal"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            bytes += std::fs::metadata(&file).map_or(0, |meta| meta.len());
        }
        return Ok(bytes as f64 / (1024.0 * 1024.0));
    }
    let url = db
        .postgres_url()
        .ok_or("the scenario database is neither SQLite nor PostgreSQL")?;
    let bytes = psql_value(url, "SELECT pg_database_size(current_database())")?;
    bytes
        .trim()
        .parse::<f64>()
        .map(|bytes| bytes / (1024.0 * 1024.0))
        .map_err(|err| format!("pg_database_size said {bytes:?}: {err}"))
}
