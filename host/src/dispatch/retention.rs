//! Retention (docs/scheduling.md, "Retention"): a background task deleting terminal records older
//! than `retention`, with their attempts, in bounded batches so no purge
//! holds a long lock or a long transaction; and events older than
//! `retention` that no repeater took, found by a scan that walks the events
//! table once, oldest first, and then only looks at what arrived since.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::model::now_millis;
use crate::store::{EventSweep, RetentionStore};

/// How the purge runs.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// Terminal records last updated longer ago than this go.
    pub retention: Duration,
    /// Records deleted per statement.
    pub batch: u32,
    /// Time between purge rounds.
    pub interval: Duration,
    /// Pause between batches of one round, so the writer is shared.
    pub pause: Duration,
}

/// Purges until `shutdown` turns true. Returns the records deleted.
pub async fn run_retention(
    store: Arc<dyn RetentionStore>,
    settings: RetentionSettings,
    mut shutdown: watch::Receiver<bool>,
) -> u64 {
    let mut total = 0;
    // Where the scan for unrouted events goes on from; after a restart it
    // starts at the beginning once.
    let mut events_after = 0;
    let mut ticks = tokio::time::interval(settings.interval.max(Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => return total,
        }
        if *shutdown.borrow() {
            return total;
        }
        total += purge_round(store.as_ref(), &settings, &mut shutdown).await;
        if !*shutdown.borrow() {
            sweep_unrouted(store.as_ref(), &settings, &mut events_after, &shutdown).await;
        }
    }
}

/// One round: batches until fewer than a full batch is left.
pub async fn purge_round(
    store: &dyn RetentionStore,
    settings: &RetentionSettings,
    shutdown: &mut watch::Receiver<bool>,
) -> u64 {
    let before = now_millis() - settings.retention.as_millis() as i64;
    let round = Instant::now();
    let mut deleted = 0;
    loop {
        match store.purge_terminal(before, settings.batch.max(1)).await {
            Ok(n) => {
                deleted += n;
                if n < u64::from(settings.batch.max(1)) || *shutdown.borrow() {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "retention purge failed; retrying next round");
                break;
            }
        }
        tokio::time::sleep(settings.pause).await;
    }
    if deleted > 0 {
        let took_ms = round.elapsed().as_millis() as u64;
        tracing::info!(deleted, took_ms, "purged terminal records past retention");
    }
    deleted
}

/// One round of the scan for events no repeater took: batches from
/// `after` until the scan catches up, moving `after` along. Returns the
/// events deleted.
pub async fn sweep_unrouted(
    store: &dyn RetentionStore,
    settings: &RetentionSettings,
    after: &mut i64,
    shutdown: &watch::Receiver<bool>,
) -> u64 {
    let before = now_millis() - settings.retention.as_millis() as i64;
    let mut deleted = 0;
    loop {
        match store
            .purge_unrouted_events(before, *after, settings.batch.max(1))
            .await
        {
            Ok(EventSweep {
                deleted: n,
                scanned_to,
                caught_up,
            }) => {
                deleted += n;
                *after = scanned_to;
                if caught_up || *shutdown.borrow() {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "retention sweep of unrouted events failed; retrying next round");
                break;
            }
        }
        tokio::time::sleep(settings.pause).await;
    }
    if deleted > 0 {
        tracing::info!(deleted, "purged events no repeater took, past retention");
    }
    deleted
}
