//! Ingest admission: a bound on the events posted and not yet stored.
//!
//! Without it, a producer posting faster than the store can write queued
//! its events in memory without limit, and every waiting request held its
//! body. Each ingest call takes one permit per event before it reaches the
//! store and gives them back when the store has answered. A call that finds
//! no room waits, in arrival order, up to [`IngestGate::wait`]; then it is
//! answered `503 overloaded` with `Retry-After`, having stored nothing, so
//! the producer knows to post again later and nothing it was told is
//! stored can be lost.
//!
//! The line is first come, first served, so a tenant posting a few events
//! would wait behind another tenant's bulk import. A post that leaves its
//! domain with at most [`SMALL_POST`] events pending skips the line
//! instead, taking its room from a reserve of half the bound kept for such
//! posts (so the bound on memory holds: one and a half times the setting).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::telemetry::Metrics;

/// Default bound on the events posted and not yet stored.
pub const DEFAULT_PENDING_EVENTS: usize = crate::config::DEFAULT_MAX_PENDING_EVENTS;
/// Default longest wait for room before a post is pushed back.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(1);
/// Most events of a post that may skip the line.
pub const SMALL_POST: usize = 100;

/// The bound itself, shared by every ingest route.
#[derive(Clone)]
pub struct IngestGate {
    permits: Arc<Semaphore>,
    /// Room for small posts of quiet domains, outside the line.
    reserve: Arc<Semaphore>,
    capacity: usize,
    reserve_capacity: usize,
    wait: Duration,
    /// Events pending per domain.
    domains: Arc<Mutex<HashMap<String, usize>>>,
}

/// Room for one call's events; given back when dropped.
pub struct Admitted {
    permit: OwnedSemaphorePermit,
    domain: String,
    gate: IngestGate,
    metrics: Arc<Metrics>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let events = self.permit.num_permits();
        self.gate.leave(&self.domain, events);
        // The permit is still held here: count without it.
        let pending = self.gate.pending().saturating_sub(events);
        self.metrics.set_ingest_pending(pending);
    }
}

impl IngestGate {
    /// A gate admitting at most `capacity` events at once (at least one),
    /// letting a call wait up to `wait` for room.
    pub fn new(capacity: usize, wait: Duration) -> IngestGate {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS / 2);
        let reserve_capacity = (capacity / 2).max(1);
        IngestGate {
            permits: Arc::new(Semaphore::new(capacity)),
            reserve: Arc::new(Semaphore::new(reserve_capacity)),
            capacity,
            reserve_capacity,
            wait,
            domains: Arc::default(),
        }
    }

    /// Events admitted and not yet stored.
    pub fn pending(&self) -> usize {
        (self.capacity - self.permits.available_permits())
            + (self.reserve_capacity - self.reserve.available_permits())
    }

    fn domains(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // The map is changed in one step under the lock: a panic elsewhere
        // cannot leave it half-changed.
        self.domains
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts `events` pending for `domain`; true when they and what the
    /// domain had pending before make a small post.
    fn enter(&self, domain: &str, events: usize) -> bool {
        let mut domains = self.domains();
        let pending = domains.entry(domain.to_owned()).or_insert(0);
        *pending += events;
        *pending <= SMALL_POST
    }

    fn leave(&self, domain: &str, events: usize) {
        let mut domains = self.domains();
        if let Some(pending) = domains.get_mut(domain) {
            *pending = pending.saturating_sub(events);
            if *pending == 0 {
                domains.remove(domain);
            }
        }
    }

    fn admitted(
        &self,
        permit: OwnedSemaphorePermit,
        domain: &str,
        metrics: &Arc<Metrics>,
    ) -> Admitted {
        metrics.set_ingest_pending(self.pending());
        Admitted {
            permit,
            domain: domain.to_owned(),
            gate: self.clone(),
            metrics: metrics.clone(),
        }
    }

    /// Room for `events` events posted to `domain`, waiting up to the
    /// gate's wait; a call larger than the whole bound takes all of it.
    /// Pushed back with `503 overloaded` when the room does not come in
    /// time.
    pub async fn admit(
        &self,
        domain: &str,
        events: usize,
        metrics: &Arc<Metrics>,
    ) -> Result<Admitted, ApiError> {
        let wanted = events.clamp(1, self.capacity);
        let wanted_permits = u32::try_from(wanted).unwrap_or(u32::MAX);
        if self.enter(domain, wanted)
            && let Ok(permit) = self.reserve.clone().try_acquire_many_owned(wanted_permits)
        {
            return Ok(self.admitted(permit, domain, metrics));
        }
        let acquire = self.permits.clone().acquire_many_owned(wanted_permits);
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => Ok(self.admitted(permit, domain, metrics)),
            // The semaphore is never closed; treat it like a full gate.
            Ok(Err(_)) | Err(_) => {
                self.leave(domain, wanted);
                metrics.ingest_pushed_back();
                Err(ApiError::overloaded(format!(
                    "{} posted events are waiting to be stored, the limit \
                     (server.max_pending_events); nothing of this request was \
                     stored: post it again after Retry-After",
                    self.pending()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new())
    }

    // Posts of more than SMALL_POST events wait in the line; the smaller
    // ones of quiet domains are the last test's subject.

    #[tokio::test]
    async fn room_comes_back_when_a_call_ends() {
        let (gate, metrics) = (IngestGate::new(1_000, Duration::from_millis(50)), metrics());
        let first = gate
            .admit("d", 600, &metrics)
            .await
            .expect("room for 600 of 1000");
        assert_eq!(gate.pending(), 600);
        let refused = gate
            .admit("d", 500, &metrics)
            .await
            .err()
            .expect("500 more do not fit");
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.code, "overloaded");
        assert!(
            refused.message.contains("server.max_pending_events"),
            "{}",
            refused.message
        );
        drop(first);
        assert_eq!(gate.pending(), 0);
        let _again = gate
            .admit("d", 500, &metrics)
            .await
            .expect("room once the first ended");
    }

    #[tokio::test]
    async fn a_waiting_call_gets_room_freed_within_its_wait() {
        let (gate, metrics) = (IngestGate::new(400, Duration::from_secs(5)), metrics());
        let held = gate.admit("d", 400, &metrics).await.expect("all of it");
        let waiter = {
            let (gate, metrics) = (gate.clone(), metrics.clone());
            tokio::spawn(async move { gate.admit("d", 300, &metrics).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "waits while the gate is full");
        drop(held);
        waiter
            .await
            .expect("joins")
            .expect("admitted once room came back");
    }

    #[tokio::test]
    async fn a_call_larger_than_the_bound_takes_all_of_it() {
        let (gate, metrics) = (IngestGate::new(300, Duration::from_millis(50)), metrics());
        let all = gate
            .admit("d", 1_000, &metrics)
            .await
            .expect("takes the whole bound");
        assert_eq!(gate.pending(), 300);
        assert!(
            gate.admit("e", 101, &metrics).await.is_err(),
            "nothing left"
        );
        drop(all);
    }

    #[tokio::test]
    async fn a_quiet_domains_small_post_skips_the_line() {
        let (gate, metrics) = (IngestGate::new(200, Duration::from_millis(50)), metrics());
        let bulk = gate
            .admit("bulk", 200, &metrics)
            .await
            .expect("the whole line");
        assert!(
            gate.admit("bulk", 10, &metrics).await.is_err(),
            "the bulk domain waits in the line"
        );
        let small = gate
            .admit("small", 10, &metrics)
            .await
            .expect("skips the line");
        assert_eq!(gate.pending(), 210);
        let more = gate
            .admit("small", SMALL_POST - 10, &metrics)
            .await
            .expect("still small");
        assert!(
            gate.admit("small", 1, &metrics).await.is_err(),
            "only a domain with few events pending skips the line"
        );
        assert!(
            gate.admit("other", SMALL_POST + 1, &metrics).await.is_err(),
            "only a small post skips the line"
        );
        drop((bulk, small, more));
        assert_eq!(gate.pending(), 0);
        assert!(gate.domains().is_empty(), "{:?}", gate.domains());
    }
}
