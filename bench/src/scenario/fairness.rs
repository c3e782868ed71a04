//! Fairness, in two parts, with one daemon or (`fairness-two`, on
//! PostgreSQL) two daemons sharing the database, each serving every
//! repeater: fairness must hold across processes too, not only within one.
//!
//! Flood: one big domain with a queued backlog (its repeaters are paused
//! while it is ingested, then resumed) and 50 small domains posting 10
//! records each. The small domains' p99 ingest→delivered while the big
//! domain drains is compared with the same 50×10 posted with nothing else
//! queued, on the same daemon just before.
//!
//! Backlogged: 20 domains with 1 to 5 repeaters each (so that a scheduler
//! sharing by repeater instead of by domain would show), the same number of
//! records each, all queued while paused and then resumed together. Jain's
//! index J = (Σx)²/(n·Σx²) of the per-domain delivered rate x_i, from the
//! last resume until the first domain runs dry (the saturated interval), in
//! 10-second windows when the interval holds at least two, else over the
//! whole interval. Every domain's demand exceeds its fair share throughout,
//! so x_i is the raw delivered rate.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Ctx, Fields, ScenarioDir, latencies_ms, prepare, put, repeaters_of, set_paused};
use crate::api::Api;
use crate::daemon::{Daemon, RepeaterDef};
use crate::database::{Backend, ScenarioDb};
use crate::ingest::{IngestPlan, PostedBatch, ingest};
use crate::payload::{self, BODY_BYTES};
use crate::receiver::Receiver;
use crate::stats::{jain_index, quantile};

/// Small domains in the flood part.
const SMALL_DOMAINS: usize = 50;
/// Records each small domain posts.
const SMALL_RECORDS: u64 = 10;
/// Repeaters of the big domain.
const BIG_REPEATERS: usize = 5;
/// Domains in the backlogged part.
const JAIN_DOMAINS: usize = 20;
/// Window of the fairness metric.
const WINDOW: Duration = Duration::from_secs(10);
/// Targets from the issue.
const RATIO_TARGET: f64 = 2.0;
const JAIN_TARGET: f64 = 0.98;

/// The fairness scenario with `daemons` daemons on one database (more
/// than one only on PostgreSQL, which daemons can share).
pub async fn run(
    ctx: &Ctx,
    backend: Backend,
    fields: &mut Fields,
    daemons: usize,
) -> Result<(), String> {
    fields.insert(
        "target".into(),
        Value::from("small_p99_ratio <= 2 and jain_index >= 0.98"),
    );
    fields.insert("daemons".into(), Value::from(daemons));
    if daemons > 1 && backend != Backend::Postgres {
        fields.insert(
            "skipped".into(),
            Value::from("daemons share only a PostgreSQL database"),
        );
        return Ok(());
    }
    let ratio = flood(ctx, backend, fields, daemons).await?;
    let jain = backlogged(ctx, backend, fields, daemons).await?;
    fields.insert(
        "met".into(),
        Value::from(ratio <= RATIO_TARGET && jain >= JAIN_TARGET),
    );
    Ok(())
}

/// Posts one batch of 10 events to every small domain at once; returns the
/// batches with their send times.
async fn post_small(api: &Api, small: &[String], round: &str) -> Result<Vec<PostedBatch>, String> {
    let mut posts = Vec::new();
    for domain in small {
        let (api, domain) = (api.clone(), domain.clone());
        let body = payload::batch_body(round, 0, SMALL_RECORDS, BODY_BYTES);
        posts.push(tokio::spawn(async move {
            let sent = Instant::now();
            let records = api.ingest_batch(&domain, body).await?;
            Ok::<_, String>(PostedBatch { sent, records })
        }));
    }
    let mut batches = Vec::new();
    for post in posts {
        batches.push(
            post.await
                .map_err(|err| format!("small-domain post failed: {err}"))??,
        );
    }
    Ok(batches)
}

/// Starts `count` daemons serving `repeaters` on `db`, each with its own
/// port, config, log and plugin cache under `dir`.
async fn start_daemons(
    ctx: &Ctx,
    dir: &ScenarioDir,
    db: &ScenarioDb,
    repeaters: &[RepeaterDef],
    count: usize,
) -> Result<Vec<Daemon>, String> {
    let mut daemons = Vec::with_capacity(count);
    for index in 0..count {
        let home = dir.path().join(format!("daemon-{index}"));
        std::fs::create_dir_all(&home)
            .map_err(|err| format!("cannot create {}: {err}", home.display()))?;
        let config = ctx.daemon_config(&home.join("state"), repeaters.to_vec())?;
        let (daemon, _) = ctx.start_daemon(&config, db, &home).await?;
        daemons.push(daemon);
    }
    Ok(daemons)
}

/// Stops every daemon; returns the largest peak RSS, MiB.
async fn stop_all(daemons: Vec<Daemon>) -> Result<f64, String> {
    let mut peak = 0f64;
    for mut daemon in daemons {
        daemon.sample_rss();
        peak = peak.max(daemon.stop().await?);
    }
    Ok(peak)
}

/// p99 in ms of the small domains' records in `batches`.
fn small_p99(receiver: &Receiver, batches: &[PostedBatch]) -> Result<f64, String> {
    let (mut samples, missing) = latencies_ms(batches, &receiver.arrival_times());
    if missing > 0 {
        return Err(format!("{missing} small-domain records never arrived"));
    }
    quantile(&mut samples, 0.99).ok_or_else(|| "no small-domain samples".to_owned())
}

/// The flood part; returns the p99 ratio.
async fn flood(
    ctx: &Ctx,
    backend: Backend,
    fields: &mut Fields,
    daemons: usize,
) -> Result<f64, String> {
    let (dir, db) = prepare(ctx, "fairness-flood", backend)?;
    let small: Vec<String> = (0..SMALL_DOMAINS)
        .map(|index| format!("small-{index:02}"))
        .collect();
    let mut domains = vec!["big".to_owned()];
    domains.extend(small.iter().cloned());
    let receiver = Receiver::start(&domains).await?;
    let big = repeaters_of(&receiver, "big", BIG_REPEATERS);
    let mut repeaters = big.clone();
    for domain in &small {
        repeaters.extend(repeaters_of(&receiver, domain, 1));
    }
    let running = start_daemons(ctx, &dir, &db, &repeaters, daemons).await?;
    let api = running[0].api().clone();
    let small_total = || {
        (1..domains.len())
            .map(|index| receiver.domain_count(index))
            .sum::<usize>()
    };
    let small_round = SMALL_DOMAINS * SMALL_RECORDS as usize;

    // Alone.
    let alone = post_small(&api, &small, "alone").await?;
    receiver
        .wait_until("small domains alone", Duration::from_secs(60), |_| {
            small_total() >= small_round
        })
        .await?;
    let p99_alone = small_p99(&receiver, &alone)?;

    // Under a flood: queue the big backlog while paused, then let it go.
    let big_events = ctx.scaled(100_000) / BIG_REPEATERS as u64;
    let big_records = (big_events as usize) * BIG_REPEATERS;
    set_paused(&api, &big, true).await?;
    let plan = IngestPlan {
        domains: vec![("big".into(), big_events)],
        batch: ctx.batch,
        tasks: ctx.ingest_tasks,
        payload_bytes: BODY_BYTES,
        prefix: "big".into(),
    };
    ingest(&api, &plan).await?;
    set_paused(&api, &big, false).await?;
    // Post the small records once the big domain is visibly draining.
    let started_draining = (big_records / 100).max(1);
    receiver
        .wait_until("big domain draining", Duration::from_secs(60), |receiver| {
            receiver.domain_count(0) >= started_draining
        })
        .await?;
    let flooded = post_small(&api, &small, "flood").await?;
    receiver
        .wait_until(
            "small domains under flood",
            Duration::from_secs(120),
            |_| small_total() >= 2 * small_round,
        )
        .await?;
    let big_left = big_records.saturating_sub(receiver.domain_count(0));
    let p99_flood = small_p99(&receiver, &flooded)?;
    let peak = stop_all(running).await?;

    let ratio = p99_flood / p99_alone.max(1e-3);
    fields.insert("big_domain_records".into(), Value::from(big_records));
    fields.insert("big_backlog_when_small_done".into(), Value::from(big_left));
    put(fields, "small_p99_alone_ms", p99_alone);
    put(fields, "small_p99_flood_ms", p99_flood);
    put(fields, "p99_ms", p99_flood);
    put(fields, "small_p99_ratio", ratio);
    put(fields, "peak_rss_mb", peak);
    if big_left == 0 {
        // The flood was over before the small domains were done: the ratio
        // then says nothing about fairness.
        fields.insert(
            "flood_note".into(),
            Value::from("big domain drained before the small domains finished"),
        );
    }
    Ok(ratio)
}

/// The backlogged part; returns Jain's index (mean over windows).
async fn backlogged(
    ctx: &Ctx,
    backend: Backend,
    fields: &mut Fields,
    daemons: usize,
) -> Result<f64, String> {
    let (dir, db) = prepare(ctx, "fairness-jain", backend)?;
    let domains: Vec<String> = (0..JAIN_DOMAINS)
        .map(|index| format!("jn-{index:02}"))
        .collect();
    let receiver = Receiver::start(&domains).await?;
    let per_domain_records = ctx.scaled(10_000);
    let mut repeaters: Vec<RepeaterDef> = Vec::new();
    let mut plan_domains = Vec::new();
    for (index, domain) in domains.iter().enumerate() {
        let count = index % 5 + 1;
        repeaters.extend(repeaters_of(&receiver, domain, count));
        plan_domains.push((domain.clone(), (per_domain_records / count as u64).max(1)));
    }
    let demand: Vec<usize> = domains
        .iter()
        .enumerate()
        .map(|(index, _)| plan_domains[index].1 as usize * (index % 5 + 1))
        .collect();
    let total: usize = demand.iter().sum();
    let running = start_daemons(ctx, &dir, &db, &repeaters, daemons).await?;
    let api = running[0].api().clone();
    set_paused(&api, &repeaters, true).await?;
    let plan = IngestPlan {
        domains: plan_domains,
        batch: ctx.batch,
        tasks: ctx.ingest_tasks,
        payload_bytes: BODY_BYTES,
        prefix: "jn".into(),
    };
    let ingested = ingest(&api, &plan).await?;
    if ingested.records() != total {
        return Err(format!(
            "ingest made {} records, expected {total}",
            ingested.records()
        ));
    }
    set_paused(&api, &repeaters, false).await?;
    let resumed = Instant::now();
    receiver
        .wait_for(total, Duration::from_secs(60 + total as u64 / 500))
        .await?;
    let peak = stop_all(running).await?;

    // The saturated interval ends when the first domain has nothing left.
    let arrivals = receiver.arrivals();
    let mut last_by_domain: HashMap<u32, Instant> = HashMap::new();
    for arrival in &arrivals {
        last_by_domain.insert(arrival.domain, arrival.at);
    }
    let saturated_end = last_by_domain
        .values()
        .min()
        .copied()
        .ok_or_else(|| "no deliveries".to_owned())?;
    let saturated = saturated_end.saturating_duration_since(resumed);
    let windows: Vec<(Instant, Instant)> = if saturated >= 2 * WINDOW {
        let count = (saturated.as_secs_f64() / WINDOW.as_secs_f64()) as u32;
        (0..count)
            .map(|index| (resumed + WINDOW * index, resumed + WINDOW * (index + 1)))
            .collect()
    } else {
        vec![(resumed, saturated_end)]
    };
    let mut indexes = Vec::new();
    for (from, to) in &windows {
        let seconds = to.saturating_duration_since(*from).as_secs_f64().max(1e-9);
        let mut counts = [0usize; JAIN_DOMAINS];
        for arrival in &arrivals {
            if arrival.at >= *from
                && arrival.at <= *to
                && let Some(count) = counts.get_mut(arrival.domain as usize)
            {
                *count += 1;
            }
        }
        let rates: Vec<f64> = counts.iter().map(|&count| count as f64 / seconds).collect();
        if let Some(index) = jain_index(&rates) {
            indexes.push(index);
        }
    }
    if indexes.is_empty() {
        return Err("no deliveries inside the saturated interval".to_owned());
    }
    let mean = indexes.iter().sum::<f64>() / indexes.len() as f64;
    let min = indexes.iter().copied().fold(f64::INFINITY, f64::min);
    fields.insert("jain_records".into(), Value::from(total));
    put(fields, "jain_saturated_s", saturated.as_secs_f64());
    put(
        fields,
        "jain_window_s",
        windows[0]
            .1
            .saturating_duration_since(windows[0].0)
            .as_secs_f64(),
    );
    fields.insert("jain_windows".into(), Value::from(indexes.len()));
    put(fields, "jain_index", mean);
    put(fields, "jain_index_min", min);
    put(
        fields,
        "jain_deliveries_per_s",
        total as f64
            / arrivals.last().map_or(1e-9, |last| {
                last.at.saturating_duration_since(resumed).as_secs_f64()
            }),
    );
    let previous = fields
        .get("peak_rss_mb")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    put(fields, "peak_rss_mb", previous.max(peak));
    Ok(mean)
}
