//! Burst: a producer's bulk import must not pause every tenant's deliveries.
//!
//! 20 domains × 5 repeaters hold a backlog queued while paused (enough for
//! the whole scenario at the measured maximum rate), and 4 small domains
//! with one repeater each post one event every 100 ms throughout. Once the
//! backlog has been delivering for a second, deliveries are counted for
//! [`STEADY`]; then [`PRODUCERS`] producer tasks post batches of 1,000
//! events round-robin over the 20 domains as fast as the daemon takes them
//! for [`BURST`]. A producer told `503` waits 50 ms and posts the same
//! batch again (an impatient producer: one honouring the whole
//! `Retry-After` would only make the burst gentler).
//!
//! Printed: deliveries in each second of the burst against the steady rate
//! (the worst as `burst_min_ratio`), the small domains' p99 ingest→delivered
//! (from the first post of each event) in both phases, the push-backs and
//! their `Retry-After`, the daemon's RSS before and at its peak, and that
//! every record of a `2xx` answer was delivered exactly as the daemon says.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    Ctx, Fields, latencies_ms, max_rate, prepare, put, repeaters_of, set_paused, verify_succeeded,
};
use crate::api::{Api, PushBackWait};
use crate::database::Backend;
use crate::ingest::{IngestPlan, PostedBatch, ingest};
use crate::payload::{self, BODY_BYTES};
use crate::receiver::Receiver;
use crate::stats::quantile;

/// Domains holding the backlog, and their repeaters each.
const BIG_DOMAINS: usize = 20;
const BIG_REPEATERS: usize = 5;
/// Small domains, one repeater each, posting throughout.
const SMALL_DOMAINS: usize = 4;
/// How often each small domain posts one event.
const SMALL_EVERY: Duration = Duration::from_millis(100);
/// Delivering before the steady window opens.
const WARM_UP: Duration = Duration::from_secs(1);
/// The steady window, just before the burst.
const STEADY: Duration = Duration::from_secs(3);
/// The burst.
const BURST: Duration = Duration::from_secs(5);
/// Backlog left over after the burst, so no second of it runs dry.
const MARGIN: Duration = Duration::from_secs(4);
/// Concurrent producer tasks of the burst, and events per batch.
const PRODUCERS: usize = 16;
const BURST_BATCH: u64 = 1_000;
/// How long a pushed-back producer waits before posting again: shorter
/// than `Retry-After`, so the daemon stays pushed.
const PAUSE: PushBackWait = PushBackWait::Fixed(Duration::from_millis(50));
/// Targets from the issue.
const SECOND_TARGET: f64 = 0.5;
const SMALL_TARGET: f64 = 2.0;

/// What the producers did.
#[derive(Default)]
struct Burst {
    accepted: Vec<PostedBatch>,
    pushed_back: u64,
    retry_after: Option<u64>,
}

/// The burst scenario.
pub async fn run(ctx: &Ctx, backend: Backend, fields: &mut Fields) -> Result<(), String> {
    fields.insert(
        "target".into(),
        Value::from(
            "every burst second >= 0.5 x steady deliveries/s, small p99 <= 2 x steady, every 2xx delivered",
        ),
    );
    let rate = max_rate(ctx, backend, fields, "burst-probe").await?;
    let (dir, db) = prepare(ctx, "burst", backend)?;
    let big: Vec<String> = (0..BIG_DOMAINS).map(|i| format!("bu-{i:02}")).collect();
    let small: Vec<String> = (0..SMALL_DOMAINS).map(|i| format!("sm-{i}")).collect();
    let domains: Vec<String> = big.iter().chain(&small).cloned().collect();
    let receiver = Receiver::start(&domains).await?;
    let mut backlogged = Vec::new();
    for domain in &big {
        backlogged.extend(repeaters_of(&receiver, domain, BIG_REPEATERS));
    }
    let mut repeaters = backlogged.clone();
    for domain in &small {
        repeaters.extend(repeaters_of(&receiver, domain, 1));
    }
    let config = ctx.daemon_config(&dir.path().join("state"), repeaters.clone())?;
    let (mut daemon, _) = ctx.start_daemon(&config, &db, dir.path()).await?;
    let api = daemon.api().clone();

    // The backlog, queued while paused: enough for the whole scenario.
    let span = WARM_UP + STEADY + BURST + MARGIN;
    let lanes = (BIG_DOMAINS * BIG_REPEATERS) as f64;
    let per_domain = ((rate * span.as_secs_f64() / lanes) as u64).max(1);
    set_paused(&api, &backlogged, true).await?;
    let plan = IngestPlan {
        domains: big.iter().map(|d| (d.clone(), per_domain)).collect(),
        batch: ctx.batch,
        tasks: ctx.ingest_tasks,
        payload_bytes: BODY_BYTES,
        prefix: "backlog".into(),
    };
    let backlog = ingest(&api, &plan).await?.records();
    set_paused(&api, &backlogged, false).await?;
    daemon.sample_rss();
    daemon.reset_peak_rss()?;
    let rss_before = daemon.memory_mb().0;

    let stop = Arc::new(AtomicBool::new(false));
    let probe = tokio::spawn(small_posts(api.clone(), small.clone(), stop.clone()));
    tokio::time::sleep(WARM_UP + STEADY).await;
    let burst_start = Instant::now();
    let burst = burst(&api, &big, &mut daemon).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let small_batches = probe
        .await
        .map_err(|err| format!("small-domain posts failed: {err}"))??;
    let (_, peak_rss) = daemon.memory_mb();

    let burst_records: usize = burst.accepted.iter().map(|b| b.records.len()).sum();
    let small_records: usize = small_batches.iter().map(|(b, _)| b.records.len()).sum();
    let total = backlog + burst_records + small_records;
    let limit = Duration::from_secs(120 + (total as f64 / (rate / 2.0).max(1.0)) as u64);
    receiver.wait_for(total, limit).await?;
    verify_succeeded(&api, &repeaters, total).await?;
    daemon.stop().await?;

    // Deliveries per second, steady and in each second of the burst.
    let arrivals = receiver.arrivals();
    let count_in = |from: Instant, to: Instant| {
        arrivals
            .iter()
            .filter(|a| a.at >= from && a.at < to)
            .count()
    };
    let steady_from = burst_start - STEADY;
    let steady_rate = count_in(steady_from, burst_start) as f64 / STEADY.as_secs_f64();
    let seconds: Vec<f64> = (0..BURST.as_secs() as u32)
        .map(|i| {
            let from = burst_start + Duration::from_secs(u64::from(i));
            count_in(from, from + Duration::from_secs(1)) as f64
        })
        .collect();
    let worst = seconds.iter().copied().fold(f64::INFINITY, f64::min);
    let min_ratio = worst / steady_rate.max(1e-9);

    // The small domains' latency, by the phase their event was posted in.
    let times = receiver.arrival_times();
    let posted_in = |from: Instant, to: Instant| -> Vec<PostedBatch> {
        (small_batches.iter())
            .filter(|(b, _)| b.sent >= from && b.sent < to)
            .map(|(b, _)| b.clone())
            .collect()
    };
    let mut answered: Vec<f64> = (small_batches.iter())
        .filter(|(b, _)| b.sent >= burst_start && b.sent < burst_start + BURST)
        .map(|(_, took)| took.as_secs_f64() * 1000.0)
        .collect();
    let small_ingest_p99 = quantile(&mut answered, 0.99).unwrap_or(f64::NAN);
    let p99_of = |batches: &[PostedBatch]| {
        let (mut samples, _) = latencies_ms(batches, &times);
        quantile(&mut samples, 0.99).unwrap_or(f64::NAN)
    };
    let small_steady = p99_of(&posted_in(steady_from, burst_start));
    let small_burst = p99_of(&posted_in(burst_start, burst_start + BURST));
    let small_ratio = small_burst / small_steady.max(1e-3);

    fields.insert(
        "layout".into(),
        Value::from(format!(
            "{BIG_DOMAINS} domains x {BIG_REPEATERS} repeaters backlogged, {SMALL_DOMAINS} small domains posting every {} ms, {PRODUCERS} producers x {BURST_BATCH}-event batches for {} s",
            SMALL_EVERY.as_millis(),
            BURST.as_secs()
        )),
    );
    fields.insert("events".into(), Value::from(total / BIG_REPEATERS));
    fields.insert("backlog_records".into(), Value::from(backlog));
    fields.insert("burst_records".into(), Value::from(burst_records));
    put(
        fields,
        "burst_ingest_records_per_s",
        burst_records as f64 / BURST.as_secs_f64(),
    );
    fields.insert("pushed_back".into(), Value::from(burst.pushed_back));
    fields.insert(
        "retry_after_s".into(),
        burst.retry_after.map_or(Value::Null, Value::from),
    );
    put(fields, "steady_deliveries_per_s", steady_rate);
    put(fields, "deliveries_per_s", steady_rate);
    fields.insert(
        "burst_deliveries_per_second".into(),
        Value::from(seconds.clone()),
    );
    put(fields, "burst_min_ratio", min_ratio);
    put(fields, "small_p99_steady_ms", small_steady);
    put(fields, "small_p99_burst_ms", small_burst);
    put(fields, "p99_ms", small_burst);
    put(fields, "small_p99_ratio", small_ratio);
    put(fields, "small_ingest_p99_burst_ms", small_ingest_p99);
    put(fields, "rss_before_burst_mb", rss_before);
    // The kernel's peak since the backlog was queued (the backlog's own
    // ingest comes before it).
    put(fields, "peak_rss_mb", peak_rss);
    fields.insert("all_delivered".into(), Value::from(true));
    fields.insert(
        "met".into(),
        Value::from(min_ratio >= SECOND_TARGET && small_ratio <= SMALL_TARGET),
    );
    Ok(())
}

/// Every small domain posts one event every [`SMALL_EVERY`] until `stop`;
/// each accepted batch keeps the time of its first post, and how long
/// the post took to be answered.
async fn small_posts(
    api: Api,
    small: Vec<String>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<(PostedBatch, Duration)>, String> {
    let mut tick = tokio::time::interval(SMALL_EVERY);
    let mut posts: tokio::task::JoinSet<Result<(PostedBatch, Duration), String>> =
        tokio::task::JoinSet::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        for domain in &small {
            let (api, domain) = (api.clone(), domain.clone());
            let body = hyper::body::Bytes::from(payload::batch_body("small", seq, 1, BODY_BYTES));
            posts.spawn(async move {
                let sent = Instant::now();
                let posted = (api.post_until_stored(&domain, body, PAUSE, None).await?).records;
                let records = posted.ok_or("stored without a deadline")?;
                Ok((PostedBatch { sent, records }, sent.elapsed()))
            });
        }
        seq += 1;
    }
    let mut batches = Vec::new();
    while let Some(joined) = posts.join_next().await {
        batches.push(joined.map_err(|err| format!("a small post failed: {err}"))??);
    }
    Ok(batches)
}

/// Batches each producer has built before the burst starts, so that
/// building them does not take the machine's cores from the daemon
/// during the burst (a real producer runs elsewhere). A producer that
/// posts them all builds more as it goes.
const PREBUILT: u64 = 12;

/// The body of a producer's `index`th batch.
fn burst_body(task: usize, index: u64) -> hyper::body::Bytes {
    let prefix = format!("burst-{task}");
    hyper::body::Bytes::from(payload::batch_body(
        &prefix,
        index * BURST_BATCH,
        BURST_BATCH,
        BODY_BYTES,
    ))
}

/// Runs the producers for [`BURST`], sampling the daemon's memory.
async fn burst(
    api: &Api,
    big: &[String],
    daemon: &mut crate::daemon::Daemon,
) -> Result<Burst, String> {
    let prebuilt: Vec<Vec<hyper::body::Bytes>> = (0..PRODUCERS)
        .map(|task| (0..PREBUILT).map(|index| burst_body(task, index)).collect())
        .collect();
    let until = Instant::now() + BURST;
    let cursor = Arc::new(AtomicUsize::new(0));
    let mut producers = tokio::task::JoinSet::new();
    for (task, bodies) in prebuilt.into_iter().enumerate() {
        let (api, big, cursor) = (api.clone(), big.to_vec(), cursor.clone());
        producers.spawn(async move {
            let mut done = Burst::default();
            let mut bodies = bodies.into_iter();
            let mut index = 0u64;
            while Instant::now() < until {
                let domain = &big[cursor.fetch_add(1, Ordering::Relaxed) % big.len()];
                let body = bodies.next().unwrap_or_else(|| burst_body(task, index));
                index += 1;
                let sent = Instant::now();
                let posted = api
                    .post_until_stored(domain, body, PAUSE, Some(until))
                    .await?;
                done.pushed_back += posted.pushed_back;
                done.retry_after = done.retry_after.or(posted.retry_after);
                if let Some(records) = posted.records {
                    done.accepted.push(PostedBatch { sent, records });
                }
            }
            Ok::<_, String>(done)
        });
    }
    while Instant::now() < until {
        daemon.sample_rss();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut all = Burst::default();
    while let Some(joined) = producers.join_next().await {
        daemon.sample_rss();
        let done = joined.map_err(|err| format!("a producer failed: {err}"))??;
        all.accepted.extend(done.accepted);
        all.pushed_back += done.pushed_back;
        all.retry_after = all.retry_after.or(done.retry_after);
    }
    Ok(all)
}
