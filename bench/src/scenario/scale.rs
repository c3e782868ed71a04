//! Scale: does the cost of the hot path stay flat as the queue grows?
//!
//! One repeater is paused so that its records stay queued, and its backlog
//! is filled through the batch API (small payloads, so that a million
//! records fit on disk quickly) first to the small size, then to the large
//! one. At each size the daemon is stopped and one claim is timed through
//! the library (`Store::acquire_lease` then `Store::claim`, median of many
//! repetitions: the HTTP API cannot show the cost of a single claim), and
//! the daemon's start-up time until `/readyz` is measured with the records
//! stored.

use serde_json::Value;

use super::{Ctx, Fields, prepare, put, repeaters_of, set_paused};
use crate::claim;
use crate::database::Backend;
use crate::ingest::{IngestPlan, ingest};
use crate::receiver::Receiver;

/// Payload size of the scale scenario's events.
const PAYLOAD_BYTES: usize = 128;
/// Claims timed at each size.
const CLAIM_REPETITIONS: usize = 200;
/// The target for claim(large) / claim(small).
const RATIO_TARGET: f64 = 1.5;

/// The scale scenario.
pub async fn run(ctx: &Ctx, backend: Backend, fields: &mut Fields) -> Result<(), String> {
    let small = ctx.scaled(10_000);
    let large = ctx.scaled(1_000_000);
    fields.insert("events".into(), Value::from(large));
    fields.insert("small_queue".into(), Value::from(small));
    fields.insert("large_queue".into(), Value::from(large));
    fields.insert("payload_bytes".into(), Value::from(PAYLOAD_BYTES));
    fields.insert("claim_batch".into(), Value::from(ctx.claim_batch));
    fields.insert(
        "target".into(),
        Value::from("claim_ratio <= 1.5 (claim at large queue / claim at small queue)"),
    );
    let (dir, db) = prepare(ctx, "scale", backend)?;
    let domains = vec!["scale".to_owned()];
    let receiver = Receiver::start(&domains).await?;
    let repeaters = repeaters_of(&receiver, "scale", 1);
    let config = ctx.daemon_config(&dir.path().join("state"), repeaters.clone())?;
    let mut peak = 0f64;

    // Fill to the small size, time a claim, restart, fill to the large
    // size, time a claim, restart once more for the start-up time.
    let fills = [("s1", small), ("s2", large.saturating_sub(small))];
    let mut claims_us = Vec::new();
    let mut startups_ms = Vec::new();
    for (prefix, events) in fills {
        let (daemon, ready) = ctx.start_daemon(&config, &db, dir.path()).await?;
        startups_ms.push(ready.as_secs_f64() * 1000.0);
        set_paused(daemon.api(), &repeaters, true).await?;
        let plan = IngestPlan {
            domains: vec![("scale".into(), events)],
            batch: 1000,
            tasks: ctx.ingest_tasks,
            payload_bytes: PAYLOAD_BYTES,
            prefix: prefix.into(),
        };
        let ingested = ingest(daemon.api(), &plan).await?;
        put(
            fields,
            &format!("ingest_{prefix}_records_per_s"),
            ingested.records() as f64
                / ingested
                    .finished
                    .saturating_duration_since(ingested.started)
                    .as_secs_f64()
                    .max(1e-9),
        );
        peak = peak.max(daemon.stop().await?);
        let cost =
            claim::median_claim_us(&db, "scale", "r0", ctx.claim_batch, CLAIM_REPETITIONS).await?;
        claims_us.push(cost);
    }
    let (daemon, ready) = ctx.start_daemon(&config, &db, dir.path()).await?;
    startups_ms.push(ready.as_secs_f64() * 1000.0);
    peak = peak.max(daemon.stop().await?);

    let ratio = claims_us[1] / claims_us[0].max(1e-9);
    put(fields, "claim_small_us", claims_us[0]);
    put(fields, "claim_large_us", claims_us[1]);
    put(fields, "claim_ratio", ratio);
    put(fields, "startup_empty_ms", startups_ms[0]);
    put(fields, "startup_small_ms", startups_ms[1]);
    put(fields, "startup_large_ms", startups_ms[2]);
    fields.insert(
        "delivered_while_paused".into(),
        Value::from(receiver.distinct()),
    );
    put(fields, "peak_rss_mb", peak);
    fields.insert("met".into(), Value::from(ratio <= RATIO_TARGET));
    // Leave the disk as we found it before the next scenario.
    drop(db);
    drop(dir);
    Ok(())
}
