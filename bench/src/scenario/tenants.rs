//! Tenants: many small tenants must cost about what a few big ones do.
//!
//! Layouts: the same 100,000 records (before `--quick`) in two layouts,
//! each on a fresh daemon: 20 domains × 5 repeaters with 1,000 events per
//! domain, and 1,000 domains × 10 repeaters with 10 events per domain.
//! Printed per layout: start-up time, RSS once ready, deliveries per second
//! (first ingest to last delivery), peak RSS, the daemon's CPU per
//! delivery, and the scheduler's time per batch handed out (from its
//! `/metrics`: `scheduler_busy_seconds_total ÷ scheduler_picks_total`).
//!
//! Overload: on the 1,000 × 10 daemon, events are then offered for
//! [`OVERLOAD`] at twice the deliveries per second the layout measured, in
//! batches of 10 events to the domains in turn. A pushed-back batch is
//! posted again after its `Retry-After`. Printed: the offered and stored
//! rates, push-backs, deliveries per second while offered, the daemon's RSS
//! every second (its largest and last), and that every record of a `2xx`
//! answer was delivered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{CpuSpan, Ctx, Fields, prepare, put, repeaters_of};
use crate::api::{Api, PushBackWait};
use crate::daemon::Daemon;
use crate::database::{Backend, ScenarioDb};
use crate::ingest::{IngestPlan, ingest};
use crate::payload::{self, BODY_BYTES};
use crate::receiver::Receiver;

/// Records each layout delivers, before `--quick`.
const RECORDS: u64 = 100_000;
/// How long events are offered at twice the drain rate, before `--quick`.
const OVERLOAD: Duration = Duration::from_secs(60);
/// Events per batch of the overload producer.
const OVERLOAD_BATCH: u64 = 10;
/// Most batches the overload producer has in flight.
const OVERLOAD_INFLIGHT: usize = 64;
/// Targets from the issue.
const RATE_TARGET: f64 = 0.5;
const COST_TARGET: f64 = 2.0;

/// The scheduler loop's own CPU time.
const LOOP_CPU: &str = "repeaterd_scheduler_cpu_seconds_total";
/// The scheduler's reads of every ready repeater, summed over their reasons.
const READS: &str = "repeaterd_scheduler_ready_reads_total";
/// The time those reads took.
const READ_SECONDS: &str = "repeaterd_scheduler_ready_read_seconds_total";
/// What asks for those reads, as the daemon labels them.
const READ_REASONS: [&str; 5] = ["start", "timer", "batches", "change", "deferred"];

/// One layout's figures.
struct LayoutRun {
    deliveries_per_s: f64,
    startup_s: f64,
    ready_rss_mb: f64,
    peak_rss_mb: f64,
    cpu_us_per_delivery: Option<f64>,
    /// The loop's wall-clock time per pick, waits for a core included.
    scheduler_us_per_pick: f64,
    /// The loop's own CPU time per pick.
    scheduler_cpu_us_per_pick: f64,
    picks: f64,
    /// Reads of every ready repeater per second of the run.
    ready_reads_per_s: f64,
    /// Milliseconds per second of the run those reads took.
    ready_read_ms_per_s: f64,
    /// Those reads per second by reason, in [`READ_REASONS`] order.
    ready_reads_by_reason: Vec<f64>,
}

impl LayoutRun {
    fn put(&self, fields: &mut Fields, prefix: &str) {
        put(
            fields,
            &format!("{prefix}_deliveries_per_s"),
            self.deliveries_per_s,
        );
        put(fields, &format!("{prefix}_startup_s"), self.startup_s);
        put(fields, &format!("{prefix}_ready_rss_mb"), self.ready_rss_mb);
        put(fields, &format!("{prefix}_peak_rss_mb"), self.peak_rss_mb);
        if let Some(cpu) = self.cpu_us_per_delivery {
            put(fields, &format!("{prefix}_cpu_us_per_delivery"), cpu);
        }
        put(
            fields,
            &format!("{prefix}_scheduler_us_per_pick"),
            self.scheduler_us_per_pick,
        );
        put(
            fields,
            &format!("{prefix}_scheduler_cpu_us_per_pick"),
            self.scheduler_cpu_us_per_pick,
        );
        put(fields, &format!("{prefix}_picks"), self.picks);
        put(
            fields,
            &format!("{prefix}_ready_reads_per_s"),
            self.ready_reads_per_s,
        );
        put(
            fields,
            &format!("{prefix}_ready_read_ms_per_s"),
            self.ready_read_ms_per_s,
        );
        for (reason, per_s) in READ_REASONS.iter().zip(&self.ready_reads_by_reason) {
            put(
                fields,
                &format!("{prefix}_ready_reads_{reason}_per_s"),
                *per_s,
            );
        }
    }
}

/// A running layout.
struct Layout {
    daemon: Daemon,
    receiver: Receiver,
    domains: Vec<String>,
    repeaters_per_domain: usize,
    _db: ScenarioDb,
    _dir: super::ScenarioDir,
}

/// The tenants scenario.
pub async fn run(ctx: &Ctx, backend: Backend, fields: &mut Fields) -> Result<(), String> {
    fields.insert(
        "target".into(),
        Value::from(
            "1000x10 deliveries/s >= 0.5 x 20x5, scheduler cost per pick and memory within 2x; overload: bounded memory, every 2xx delivered",
        ),
    );
    let records = ctx.scaled(RECORDS);
    let (few, _) = measure(ctx, backend, "tenants-few", 20, 5, records).await?;
    let (many, mut layout) = measure(ctx, backend, "tenants-many", 1_000, 10, records).await?;
    few.put(fields, "few");
    many.put(fields, "many");
    let rate_ratio = many.deliveries_per_s / few.deliveries_per_s.max(1e-9);
    // The cost of a pick is the loop's CPU time. Its wall-clock time also
    // counts the waits for a core, which grow with whatever else keeps the
    // machine's cores busy; that ratio is printed beside it.
    let pick_ratio = many.scheduler_cpu_us_per_pick / few.scheduler_cpu_us_per_pick.max(1e-9);
    let wall_ratio = many.scheduler_us_per_pick / few.scheduler_us_per_pick.max(1e-9);
    let memory_ratio = many.peak_rss_mb / few.peak_rss_mb.max(1e-9);
    put(fields, "deliveries_per_s", many.deliveries_per_s);
    put(fields, "rate_ratio", rate_ratio);
    put(fields, "scheduler_cost_ratio", pick_ratio);
    put(fields, "scheduler_wall_ratio", wall_ratio);
    put(fields, "memory_ratio", memory_ratio);
    fields.insert("events".into(), Value::from(2 * records / 10));

    let overload = if ctx.quick() { OVERLOAD / 10 } else { OVERLOAD };
    let flat = overload_run(&mut layout, 2.0 * many.deliveries_per_s, overload, fields).await?;
    put(fields, "peak_rss_mb", layout.daemon.memory_mb().1);
    layout.daemon.stop().await?;
    fields.insert(
        "met".into(),
        Value::from(
            rate_ratio >= RATE_TARGET
                && pick_ratio <= COST_TARGET
                && memory_ratio <= COST_TARGET
                && flat,
        ),
    );
    Ok(())
}

/// Starts a fresh daemon with `domains` × `per_domain` repeaters, delivers
/// `records` records through it and measures; hands back the running
/// layout too.
async fn measure(
    ctx: &Ctx,
    backend: Backend,
    label: &str,
    domains: usize,
    per_domain: usize,
    records: u64,
) -> Result<(LayoutRun, Layout), String> {
    let (dir, db) = prepare(ctx, label, backend)?;
    let names: Vec<String> = (0..domains).map(|i| format!("t{i:04}")).collect();
    let receiver = Receiver::start(&names).await?;
    let repeaters: Vec<_> = (names.iter())
        .flat_map(|domain| repeaters_of(&receiver, domain, per_domain))
        .collect();
    let config = ctx.daemon_config(&dir.path().join("state"), repeaters)?;
    let (daemon, startup) = ctx.start_daemon(&config, &db, dir.path()).await?;
    let ready_rss_mb = daemon.memory_mb().0;
    let layout = Layout {
        daemon,
        receiver,
        domains: names,
        repeaters_per_domain: per_domain,
        _db: db,
        _dir: dir,
    };
    let api = layout.daemon.api().clone();
    let events_per_domain = (records / (domains * per_domain) as u64).max(1);
    let plan = IngestPlan {
        domains: (layout.domains.iter())
            .map(|d| (d.clone(), events_per_domain))
            .collect(),
        batch: ctx.batch,
        tasks: ctx.ingest_tasks,
        payload_bytes: BODY_BYTES,
        prefix: "ev".into(),
    };
    let picks = api.metric("repeaterd_scheduler_picks_total").await?;
    let busy = api.metric("repeaterd_scheduler_busy_seconds_total").await?;
    let loop_cpu = api.metric(LOOP_CPU).await?;
    let reads = api.metric(READS).await?;
    let read_seconds = api.metric(READ_SECONDS).await?;
    let by_reason = reads_by_reason(&api).await?;
    let cpu = CpuSpan::start(&layout.daemon);
    let ingested = ingest(&api, &plan).await?;
    let made = ingested.records();
    let limit = Duration::from_secs(120 + made as u64 / 500);
    layout.receiver.wait_for(made, limit).await?;
    let cpu = cpu.end(&layout.daemon, made);
    let picks = api.metric("repeaterd_scheduler_picks_total").await? - picks;
    let busy = api.metric("repeaterd_scheduler_busy_seconds_total").await? - busy;
    let loop_cpu = api.metric(LOOP_CPU).await? - loop_cpu;
    let reads = api.metric(READS).await? - reads;
    let read_seconds = api.metric(READ_SECONDS).await? - read_seconds;
    let by_reason = (reads_by_reason(&api).await?.into_iter())
        .zip(by_reason)
        .map(|(after, before)| after - before);
    let last = layout.receiver.last_arrival().unwrap_or(ingested.finished);
    let seconds = last
        .saturating_duration_since(ingested.started)
        .as_secs_f64();
    if layout.receiver.distinct() != made {
        return Err(format!(
            "{label}: the receiver saw {} distinct records, ingest made {made}",
            layout.receiver.distinct()
        ));
    }
    let run = LayoutRun {
        deliveries_per_s: made as f64 / seconds.max(1e-9),
        startup_s: startup.as_secs_f64(),
        ready_rss_mb,
        peak_rss_mb: layout.daemon.memory_mb().1,
        cpu_us_per_delivery: cpu.map(|c| c.daemon_per_delivery.as_secs_f64() * 1e6),
        scheduler_us_per_pick: busy * 1e6 / picks.max(1.0),
        scheduler_cpu_us_per_pick: loop_cpu * 1e6 / picks.max(1.0),
        picks,
        ready_reads_per_s: reads / seconds.max(1e-9),
        ready_read_ms_per_s: read_seconds * 1e3 / seconds.max(1e-9),
        ready_reads_by_reason: by_reason.map(|n| n / seconds.max(1e-9)).collect(),
    };
    Ok((run, layout))
}

/// The daemon's reads of every ready repeater so far, by reason, in
/// [`READ_REASONS`] order.
async fn reads_by_reason(api: &Api) -> Result<Vec<f64>, String> {
    let mut counts = Vec::with_capacity(READ_REASONS.len());
    for reason in READ_REASONS {
        counts.push(
            api.metric(&format!("{READS}{{reason=\"{reason}\"}}"))
                .await?,
        );
    }
    Ok(counts)
}

/// Offers `records_per_s` for `span` to `layout` and waits until every
/// stored record is delivered; true when memory stayed bounded (the last
/// reading within 1.5× of the first).
async fn overload_run(
    layout: &mut Layout,
    records_per_s: f64,
    span: Duration,
    fields: &mut Fields,
) -> Result<bool, String> {
    let api = layout.daemon.api().clone();
    let records_per_batch = OVERLOAD_BATCH as f64 * layout.repeaters_per_domain as f64;
    let batches_per_s = (records_per_s / records_per_batch).max(1.0);
    let before = layout.receiver.distinct();
    let stored = Arc::new(AtomicUsize::new(0));
    let pushed_back = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn(offer(
        api.clone(),
        layout.domains.clone(),
        batches_per_s,
        stored.clone(),
        pushed_back.clone(),
        stop.clone(),
    ));
    let started = Instant::now();
    let mut rss = Vec::new();
    while started.elapsed() < span {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss.push(layout.daemon.memory_mb().0);
    }
    stop.store(true, Ordering::Relaxed);
    let offered = producer
        .await
        .map_err(|err| format!("the overload producer failed: {err}"))??;
    let delivered_while_offered = layout.receiver.distinct() - before;
    let stored_records = stored.load(Ordering::Relaxed);
    let total = before + stored_records;
    let limit = Duration::from_secs(180 + stored_records as u64 / 500);
    layout.receiver.wait_for(total, limit).await?;
    let seconds = span.as_secs_f64();
    put(fields, "overload_offered_records_per_s", records_per_s);
    put(
        fields,
        "overload_posted_records_per_s",
        offered as f64 * records_per_batch / seconds,
    );
    put(
        fields,
        "overload_stored_records_per_s",
        stored_records as f64 / seconds,
    );
    put(
        fields,
        "overload_deliveries_per_s",
        delivered_while_offered as f64 / seconds,
    );
    fields.insert(
        "overload_pushed_back".into(),
        Value::from(pushed_back.load(Ordering::Relaxed)),
    );
    let first = rss.first().copied().unwrap_or(0.0);
    let last = rss.last().copied().unwrap_or(0.0);
    let largest = rss.iter().copied().fold(0.0, f64::max);
    put(fields, "overload_rss_first_mb", first);
    put(fields, "overload_rss_max_mb", largest);
    put(fields, "overload_rss_last_mb", last);
    fields.insert("overload_all_delivered".into(), Value::from(true));
    Ok(last <= 1.5 * first.max(1.0))
}

/// Posts batches of [`OVERLOAD_BATCH`] events to the domains in turn at
/// `batches_per_s` until `stop`, at most [`OVERLOAD_INFLIGHT`] at once;
/// returns how many batches were posted (first posts only).
async fn offer(
    api: Api,
    domains: Vec<String>,
    batches_per_s: f64,
    stored: Arc<AtomicUsize>,
    pushed_back: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Result<u64, String> {
    let slots = Arc::new(tokio::sync::Semaphore::new(OVERLOAD_INFLIGHT));
    let mut posts = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut posted = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * batches_per_s) as u64;
        if posted >= due {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let domain = domains[posted as usize % domains.len()].clone();
        let body = hyper::body::Bytes::from(payload::batch_body(
            "over",
            posted * OVERLOAD_BATCH,
            OVERLOAD_BATCH,
            BODY_BYTES,
        ));
        let (api, stored, pushed_back) = (api.clone(), stored.clone(), pushed_back.clone());
        posts.spawn(async move {
            let _slot = slot;
            let wait = PushBackWait::RetryAfter;
            let posted = api.post_until_stored(&domain, body, wait, None).await?;
            pushed_back.fetch_add(posted.pushed_back as usize, Ordering::Relaxed);
            let records = posted.records.ok_or("stored without a deadline")?;
            stored.fetch_add(records.len(), Ordering::Relaxed);
            Ok::<_, String>(())
        });
        posted += 1;
        while let Some(done) = posts.try_join_next() {
            done.map_err(|err| format!("an overload post failed: {err}"))??;
        }
    }
    while let Some(done) = posts.join_next().await {
        done.map_err(|err| format!("an overload post failed: {err}"))??;
    }
    Ok(posted)
}
