//! Busy receiver: one repeater allowed 16 requests at once, with a backlog,
//! against a receiver that serves 3 at a time (50 ms each) and answers
//! `503` at once to any more (ADR 15). After a warm-up the lane's adaptive
//! limit should sit at the receiver's capacity: nearly every request
//! served, and the receiver kept busy. The end-to-end test of the same
//! shape proves the limit settles; this measures, on the release binary,
//! how much of the capacity the lane uses.
//!
//! Then the same repeater against a slow receiver with room for every
//! request ([`SLOW`]): its limit climbs to its ceiling of 16, and the
//! share of those 16 requests at once that the lane keeps open shows what
//! its batches' last waves cost (ADR 29).
//!
//! The steady part runs from [`WARM_UP`] after the repeater is resumed
//! until 90 % of the records were served, so the backlog keeps the lane
//! busy all along it. The capacity is the receiver's as it really served:
//! its slots over the mean time a request held one.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    Ctx, DispatchTuning, Fields, prepare, put, repeaters_of, set_paused, verify_succeeded,
};
use crate::database::Backend;
use crate::ingest::{IngestPlan, ingest};
use crate::receiver::{Capacity, Receiver};

/// The receiver's slots and service time.
const CAPACITY: Capacity = Capacity {
    limit: 3,
    service: Duration::from_millis(50),
};
/// A slow receiver with room for every request: each answered after 200 ms.
const SLOW: Capacity = Capacity {
    limit: 1_000,
    service: Duration::from_millis(200),
};
/// The repeater's ceiling on requests at once.
const CONCURRENCY: u32 = 16;
/// Records queued: about 25 s at the receiver's capacity.
const RECORDS: u64 = 1_500;
/// The first wave finds the capacity; then the lane settles.
const WARM_UP: Duration = Duration::from_secs(2);
/// How often the limit is read from the daemon's metrics.
const SAMPLE: Duration = Duration::from_millis(100);
/// The shares of requests served and of the capacity used that the
/// scenario asks for (issue 25, item 5).
const TARGET: f64 = 0.9;

/// The busy-receiver scenario.
pub async fn run(ctx: &Ctx, backend: Backend, fields: &mut Fields) -> Result<(), String> {
    // A quick run still needs a steady part well past the warm-up.
    let records = ctx.scaled(RECORDS).max(600);
    fields.insert("events".into(), Value::from(records));
    fields.insert("receiver_slots".into(), Value::from(CAPACITY.limit));
    put(
        fields,
        "receiver_service_ms",
        CAPACITY.service.as_secs_f64() * 1000.0,
    );
    fields.insert("concurrency".into(), Value::from(CONCURRENCY));
    fields.insert(
        "target".into(),
        Value::from(format!(
            "steady_success >= {TARGET} and steady_capacity_used >= {TARGET}"
        )),
    );
    let busy = measure(ctx, backend, "busy", CAPACITY, records).await?;
    let capacity_per_s = CAPACITY.limit as f64 / busy.mean_held;
    let used = busy.throughput / capacity_per_s;
    fields.insert("requests".into(), Value::from(busy.requests));
    fields.insert("shed".into(), Value::from(busy.shed));
    put(fields, "drain_s", busy.drain.as_secs_f64());
    put(fields, "steady_s", busy.window);
    put(fields, "steady_success", busy.success);
    put(fields, "capacity_per_s", capacity_per_s);
    put(fields, "steady_deliveries_per_s", busy.throughput);
    put(fields, "steady_capacity_used", used);
    if let Some(median) = busy.limit_median {
        put(fields, "steady_limit_median", median);
    }
    fields.insert("limit_over_time".into(), Value::from(busy.limit_changes));

    let slow = measure(ctx, backend, "slow", SLOW, records).await?;
    let allowed = CONCURRENCY as f64 / slow.mean_held;
    put(
        fields,
        "slow_service_ms",
        SLOW.service.as_secs_f64() * 1000.0,
    );
    put(fields, "slow_deliveries_per_s", slow.throughput);
    put(fields, "slow_concurrency_used", slow.throughput / allowed);
    if let Some(median) = slow.limit_median {
        put(fields, "slow_limit_median", median);
    }

    put(
        fields,
        "peak_rss_mb",
        busy.peak_rss_mb.max(slow.peak_rss_mb),
    );
    fields.insert(
        "met".into(),
        Value::from(busy.success >= TARGET && used >= TARGET),
    );
    Ok(())
}

/// What one run against a receiver measured.
struct Measured {
    requests: usize,
    shed: usize,
    /// From the resume until the receiver had served every record.
    drain: Duration,
    /// The steady part's length, seconds.
    window: f64,
    /// The steady part's served requests ÷ all its requests.
    success: f64,
    /// The mean time a served request held its slot, seconds.
    mean_held: f64,
    /// Answers served per second in the steady part.
    throughput: f64,
    limit_median: Option<f64>,
    limit_changes: String,
    peak_rss_mb: f64,
}

/// Queues `records` for one repeater allowed [`CONCURRENCY`] against a
/// receiver of `capacity`, resumes it, and measures until every record
/// succeeded, on a daemon of its own.
async fn measure(
    ctx: &Ctx,
    backend: Backend,
    label: &str,
    capacity: Capacity,
    records: u64,
) -> Result<Measured, String> {
    let (dir, db) = prepare(ctx, label, backend)?;
    let domains = vec![label.to_owned()];
    let receiver = Receiver::with_capacity(&domains, capacity).await?;
    let repeaters = repeaters_of(&receiver, label, 1);
    let mut config = ctx.daemon_config(&dir.path().join("state"), repeaters.clone())?;
    config.dispatch = DispatchTuning {
        concurrency: CONCURRENCY,
        ..ctx.dispatch
    };
    // A turned-away record is due again after a second, not the default
    // 5 s and then 5 min: its retry is claimed after the whole backlog, in
    // the last batches, where the lane's probe may turn it away once more.
    config.retries = Some((Duration::from_secs(1), 100));
    let (daemon, _) = ctx.start_daemon(&config, &db, dir.path()).await?;
    set_paused(daemon.api(), &repeaters, true).await?;
    let plan = IngestPlan {
        domains: vec![(label.into(), records)],
        batch: 500,
        tasks: 1,
        payload_bytes: 256,
        prefix: label.into(),
    };
    ingest(daemon.api(), &plan).await?;

    set_paused(daemon.api(), &repeaters, false).await?;
    let resumed = Instant::now();
    // Three times the drain at the capacity, and a minute more.
    let deadline = resumed + Duration::from_secs(60 + records / 20);
    let mut limits: Vec<(Instant, f64)> = Vec::new();
    while receiver.distinct() < records as usize {
        if Instant::now() >= deadline {
            return Err(format!(
                "{label}: the receiver served {} of {records} records in {:.0} s; log: {}",
                receiver.distinct(),
                resumed.elapsed().as_secs_f64(),
                daemon.log_tail()
            ));
        }
        let limit = daemon
            .api()
            .metric("repeaterd_repeater_concurrency_limit")
            .await?;
        // The gauge is missing (read as 0) until the lane first runs.
        if limit >= 1.0 {
            limits.push((Instant::now(), limit));
        }
        tokio::time::sleep(SAMPLE).await;
    }
    let drain = resumed.elapsed();
    // The last answers may still be on their way to the store.
    let settle = Instant::now() + Duration::from_secs(30);
    while verify_succeeded(daemon.api(), &repeaters, records as usize)
        .await
        .is_err()
        && Instant::now() < settle
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    verify_succeeded(daemon.api(), &repeaters, records as usize).await?;
    let peak_rss_mb = daemon.stop().await?;

    let (held, shed) = receiver.busy();
    let mut ends: Vec<Instant> = held.iter().map(|h| h.to).collect();
    ends.sort();
    let (from, to) = (resumed + WARM_UP, ends[ends.len() * 9 / 10 - 1]);
    if to <= from + Duration::from_secs(3) {
        return Err(format!(
            "{label}: no steady part: the backlog was 90 % served {:.1} s after the resume",
            (to - resumed).as_secs_f64()
        ));
    }
    let within = |at: &Instant| *at >= from && *at < to;
    let window = (to - from).as_secs_f64();
    let steady_served = held.iter().filter(|h| within(&h.from)).count();
    let steady_shed = shed.iter().filter(|at| within(at)).count();
    let mean_held = held
        .iter()
        .map(|h| (h.to - h.from).as_secs_f64())
        .sum::<f64>()
        / held.len() as f64;
    let mut steady_limits: Vec<f64> = (limits.iter())
        .filter(|(at, _)| within(at))
        .map(|(_, limit)| *limit)
        .collect();
    steady_limits.sort_by(f64::total_cmp);
    Ok(Measured {
        requests: held.len() + shed.len(),
        shed: shed.len(),
        drain,
        window,
        success: steady_served as f64 / (steady_served + steady_shed).max(1) as f64,
        mean_held,
        throughput: ends.iter().filter(|at| within(at)).count() as f64 / window,
        limit_median: steady_limits.get(steady_limits.len() / 2).copied(),
        limit_changes: changes(&limits, resumed),
        peak_rss_mb,
    })
}

/// Samples of the limit written as the times it changed, seconds after
/// `start`: `0.4s=3 2.3s=4 …`.
fn changes(samples: &[(Instant, f64)], start: Instant) -> String {
    let mut out = Vec::new();
    let mut last = None;
    for (at, limit) in samples {
        if last != Some(*limit) {
            out.push(format!(
                "{:.1}s={limit}",
                at.saturating_duration_since(start).as_secs_f64()
            ));
            last = Some(*limit);
        }
    }
    out.join(" ")
}
