//! The last quarter hour of deliveries, per repeater and minute, kept in
//! memory for the console: successes and failures per minute and the
//! attempt latency distribution. Prometheus keeps the long history; this
//! ring answers "what happened in the last few minutes" without a store
//! query or a scrape, and costs one lock per batch.
//!
//! A repeater's ring holds only the minutes in which it had attempts, so an
//! idle repeater costs a map entry and nothing more.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::model::{AttemptOutcome, Millis};

/// How many minutes the window spans.
pub const WINDOW_MINUTES: usize = 15;
const MINUTE_MS: Millis = 60_000;
/// Latency buckets: 4 per doubling from 1 ms, up to about 2^16 ms (65 s);
/// the last one takes everything slower. A quantile is read as its
/// bucket's upper bound, so it is at most ~19 % high.
const SUBSTEPS: usize = 4;
const BUCKETS: usize = 16 * SUBSTEPS + 1;

/// One minute of one repeater.
#[derive(Debug, Clone)]
struct Minute {
    /// Minutes since the epoch.
    index: i64,
    successes: u64,
    failures: u64,
    latency: [u32; BUCKETS],
}

impl Minute {
    fn new(index: i64) -> Minute {
        Minute {
            index,
            successes: 0,
            failures: 0,
            latency: [0; BUCKETS],
        }
    }
}

/// The bucket of an attempt that took `ms` milliseconds.
fn bucket_of(ms: i64) -> usize {
    if ms <= 1 {
        return 0;
    }
    // log2(ms) in quarter steps, rounded up so the bound is an upper one.
    let steps = ((ms as f64).log2() * SUBSTEPS as f64).ceil() as usize;
    steps.min(BUCKETS - 1)
}

/// The upper bound of bucket `bucket`, milliseconds.
fn bucket_bound(bucket: usize) -> f64 {
    2f64.powf(bucket as f64 / SUBSTEPS as f64)
}

/// What a repeater, a domain or the whole daemon did over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowStats {
    /// Successes and failures per minute, oldest first, one entry per
    /// minute of the window (zeros where nothing happened); the last entry
    /// is the current, unfinished minute.
    pub per_minute: Vec<(u64, u64)>,
    /// Successful attempts in the window.
    pub successes: u64,
    /// Failed attempts (retry or reject) in the window.
    pub failures: u64,
    /// Median attempt latency, milliseconds, when there were attempts.
    pub p50_ms: Option<f64>,
    /// 99th percentile attempt latency, milliseconds.
    pub p99_ms: Option<f64>,
}

impl WindowStats {
    /// The share of attempts that succeeded, when there were any.
    pub fn success_rate(&self) -> Option<f64> {
        let total = self.successes + self.failures;
        (total > 0).then(|| self.successes as f64 / total as f64)
    }
}

/// Sums minutes into a [`WindowStats`] for the window ending at `now`.
#[derive(Default)]
struct Summer {
    per_minute: Vec<(u64, u64)>,
    latency: Vec<u64>,
}

impl Summer {
    fn new() -> Summer {
        Summer {
            per_minute: vec![(0, 0); WINDOW_MINUTES],
            latency: vec![0; BUCKETS],
        }
    }

    fn add(&mut self, minutes: &VecDeque<Minute>, current: i64) {
        for minute in minutes {
            let age = current - minute.index;
            if !(0..WINDOW_MINUTES as i64).contains(&age) {
                continue;
            }
            let slot = &mut self.per_minute[WINDOW_MINUTES - 1 - age as usize];
            slot.0 += minute.successes;
            slot.1 += minute.failures;
            for (sum, count) in self.latency.iter_mut().zip(minute.latency) {
                *sum += u64::from(count);
            }
        }
    }

    fn finish(self) -> WindowStats {
        let successes = self.per_minute.iter().map(|m| m.0).sum();
        let failures = self.per_minute.iter().map(|m| m.1).sum();
        let quantile = |q: f64| {
            let total: u64 = self.latency.iter().sum();
            if total == 0 {
                return None;
            }
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (bucket, count) in self.latency.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    return Some(bucket_bound(bucket));
                }
            }
            Some(bucket_bound(BUCKETS - 1))
        };
        WindowStats {
            p50_ms: quantile(0.5),
            p99_ms: quantile(0.99),
            per_minute: self.per_minute,
            successes,
            failures,
        }
    }
}

/// The rings of every repeater, keyed by domain then repeater name.
#[derive(Debug, Default)]
pub struct History {
    repeaters: Mutex<HashMap<String, HashMap<String, VecDeque<Minute>>>>,
}

impl History {
    /// Counts one batch of `repeater`'s attempts that ended at `now`:
    /// `(outcome, duration in milliseconds)` each. Skipped records are not
    /// attempts on the wire and are not counted.
    pub fn record_batch(
        &self,
        domain: &str,
        repeater: &str,
        now: Millis,
        attempts: impl IntoIterator<Item = (AttemptOutcome, i64)>,
    ) {
        let index = now.div_euclid(MINUTE_MS);
        let mut all = self.repeaters.lock().unwrap_or_else(|e| e.into_inner());
        let by_name = match all.get_mut(domain) {
            Some(by_name) => by_name,
            None => all.entry(domain.to_owned()).or_default(),
        };
        let minutes = match by_name.get_mut(repeater) {
            Some(minutes) => minutes,
            None => by_name.entry(repeater.to_owned()).or_default(),
        };
        if minutes.back().is_none_or(|last| last.index < index) {
            minutes.push_back(Minute::new(index));
        }
        while minutes
            .front()
            .is_some_and(|first| index - first.index >= WINDOW_MINUTES as i64)
        {
            minutes.pop_front();
        }
        // A clock step backwards lands in the newest minute.
        let Some(minute) = minutes.back_mut() else {
            return;
        };
        for (outcome, duration_ms) in attempts {
            match outcome {
                AttemptOutcome::Success => minute.successes += 1,
                AttemptOutcome::Retry | AttemptOutcome::Reject => minute.failures += 1,
                AttemptOutcome::Skip => continue,
            }
            let slot = &mut minute.latency[bucket_of(duration_ms)];
            *slot = slot.saturating_add(1);
        }
    }

    /// One repeater's window ending at `now`.
    pub fn repeater(&self, domain: &str, repeater: &str, now: Millis) -> WindowStats {
        let all = self.repeaters.lock().unwrap_or_else(|e| e.into_inner());
        let mut sum = Summer::new();
        if let Some(minutes) = all.get(domain).and_then(|by_name| by_name.get(repeater)) {
            sum.add(minutes, now.div_euclid(MINUTE_MS));
        }
        sum.finish()
    }

    /// The window of every repeater of `domain`, summed.
    pub fn domain(&self, domain: &str, now: Millis) -> WindowStats {
        let all = self.repeaters.lock().unwrap_or_else(|e| e.into_inner());
        let mut sum = Summer::new();
        for minutes in all.get(domain).into_iter().flat_map(HashMap::values) {
            sum.add(minutes, now.div_euclid(MINUTE_MS));
        }
        sum.finish()
    }

    /// The window of every domain in `domains` (all when `None`), summed.
    pub fn total(&self, domains: Option<&[String]>, now: Millis) -> WindowStats {
        let all = self.repeaters.lock().unwrap_or_else(|e| e.into_inner());
        let mut sum = Summer::new();
        for (domain, by_name) in all.iter() {
            if domains.is_some_and(|only| !only.contains(domain)) {
                continue;
            }
            for minutes in by_name.values() {
                sum.add(minutes, now.div_euclid(MINUTE_MS));
            }
        }
        sum.finish()
    }

    /// Drops a deleted repeater's ring.
    pub fn forget(&self, domain: &str, repeater: &str) {
        let mut all = self.repeaters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(by_name) = all.get_mut(domain) {
            by_name.remove(repeater);
            if by_name.is_empty() {
                all.remove(domain);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = 1_800_000_000_000 - 1_800_000_000_000 % MINUTE_MS;

    #[test]
    fn a_batch_counts_successes_and_failures_in_its_minute() {
        let history = History::default();
        history.record_batch(
            "acme",
            "crm",
            T0 + 10,
            [
                (AttemptOutcome::Success, 5),
                (AttemptOutcome::Retry, 30),
                (AttemptOutcome::Reject, 30),
                (AttemptOutcome::Skip, 0),
            ],
        );
        let stats = history.repeater("acme", "crm", T0 + 20);
        assert_eq!(stats.per_minute.len(), WINDOW_MINUTES);
        assert_eq!(stats.per_minute[WINDOW_MINUTES - 1], (1, 2));
        assert_eq!((stats.successes, stats.failures), (1, 2));
        assert_eq!(stats.success_rate(), Some(1.0 / 3.0));
    }

    #[test]
    fn minutes_older_than_the_window_fall_out() {
        let history = History::default();
        history.record_batch("acme", "crm", T0, [(AttemptOutcome::Success, 1)]);
        history.record_batch(
            "acme",
            "crm",
            T0 + 3 * MINUTE_MS,
            [(AttemptOutcome::Success, 1), (AttemptOutcome::Success, 1)],
        );
        let stats = history.repeater("acme", "crm", T0 + 3 * MINUTE_MS);
        assert_eq!(stats.per_minute[WINDOW_MINUTES - 4], (1, 0));
        assert_eq!(stats.per_minute[WINDOW_MINUTES - 1], (2, 0));
        let later = history.repeater("acme", "crm", T0 + WINDOW_MINUTES as i64 * MINUTE_MS);
        assert_eq!(later.successes, 2, "the first minute left the window");
        let gone = history.repeater("acme", "crm", T0 + 40 * MINUTE_MS);
        assert_eq!(gone.successes, 0);
        assert_eq!(gone.p50_ms, None);
    }

    #[test]
    fn quantiles_are_upper_bounds_within_a_fifth() {
        let history = History::default();
        let attempts = (0..99)
            .map(|_| (AttemptOutcome::Success, 10))
            .chain([(AttemptOutcome::Success, 2_000)]);
        history.record_batch("acme", "crm", T0, attempts);
        let stats = history.repeater("acme", "crm", T0);
        let p50 = stats.p50_ms.unwrap();
        assert!((10.0..=12.0).contains(&p50), "p50 {p50}");
        let p99 = stats.p99_ms.unwrap();
        assert!(
            (10.0..=12.0).contains(&p99),
            "p99 {p99}: 99 of 100 took 10 ms"
        );
        history.record_batch("acme", "crm", T0, [(AttemptOutcome::Success, 2_000)]);
        let p99 = history.repeater("acme", "crm", T0).p99_ms.unwrap();
        assert!((2_000.0..=2_400.0).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn domains_and_totals_sum_their_repeaters() {
        let history = History::default();
        history.record_batch("acme", "a", T0, [(AttemptOutcome::Success, 1)]);
        history.record_batch("acme", "b", T0, [(AttemptOutcome::Retry, 1)]);
        history.record_batch("globex", "a", T0, [(AttemptOutcome::Success, 1)]);
        let acme = history.domain("acme", T0);
        assert_eq!((acme.successes, acme.failures), (1, 1));
        assert_eq!(history.total(None, T0).successes, 2);
        let only = ["globex".to_string()];
        assert_eq!(history.total(Some(&only), T0).failures, 0);
        history.forget("acme", "b");
        assert_eq!(history.domain("acme", T0).failures, 0);
    }
}
