//! The `[dispatch]` table: global work bounds and the defaults every
//! repeater inherits, and their resolution against a repeater's overrides.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::duration;
use super::sections::nonzero;
use crate::model::RepeaterLimits;

/// serde: a finite rate greater than zero.
pub(crate) fn rate_opt<'de, D: Deserializer<'de>>(de: D) -> Result<Option<f64>, D::Error> {
    let rate = f64::deserialize(de)?;
    if rate.is_finite() && rate > 0.0 {
        Ok(Some(rate))
    } else {
        Err(serde::de::Error::custom(format!(
            "rate must be a number greater than zero, got {rate}"
        )))
    }
}

fn jitter<'de, D: Deserializer<'de>>(de: D) -> Result<f64, D::Error> {
    let jitter = f64::deserialize(de)?;
    if (0.0..1.0).contains(&jitter) {
        Ok(jitter)
    } else {
        Err(serde::de::Error::custom(format!(
            "jitter is a fraction in [0, 1) (0.2 means ±20 %), got {jitter}"
        )))
    }
}

/// `[dispatch]`: global bounds and per-repeater defaults (DESIGN, rules 2–6
/// and 11). Every per-repeater default can be overridden in `[[repeater]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    /// Most requests in flight across the process. Default 256.
    #[serde(deserialize_with = "nonzero")]
    pub max_inflight: u32,
    /// How long a repeater's lease lasts unless renewed; renewed every third
    /// of it while a batch runs, so a crashed daemon's repeaters move to
    /// another daemon within about this long. Unset: 3 s on PostgreSQL,
    /// where daemons share the database, and 60 s on SQLite, which one
    /// process owns and frees at restart (ADR 16); see
    /// [`DispatchConfig::lease_ttl_on`].
    #[serde(deserialize_with = "duration::positive_opt")]
    pub lease_ttl: Option<Duration>,
    /// Most records claimed per batch. Default 50.
    #[serde(deserialize_with = "nonzero")]
    pub batch_size: u32,
    /// A batch taking longer than this counts towards making its repeater
    /// yield to the others of its domain (docs/scheduling.md, "Heavy repeaters yield"). Default 30 s.
    #[serde(deserialize_with = "duration::positive")]
    pub batch_time_budget: Duration,
    /// Default per-repeater concurrency ceiling (AIMD adapts below it). Default 7.
    #[serde(deserialize_with = "nonzero")]
    pub concurrency: u32,
    /// Default per-repeater rate, requests per second. Default unlimited.
    #[serde(deserialize_with = "rate_opt")]
    pub rate_per_second: Option<f64>,
    /// Default per-repeater burst above the rate. Default 1 (strict pacing).
    #[serde(deserialize_with = "nonzero")]
    pub burst: u32,
    /// Rate limit of each domain as a whole, requests per second. Default unlimited.
    #[serde(deserialize_with = "rate_opt")]
    pub domain_rate_per_second: Option<f64>,
    /// Burst of each domain's rate limit. Default 10.
    #[serde(deserialize_with = "nonzero")]
    pub domain_burst: u32,
    /// Default request timeout. Default 30 s.
    #[serde(deserialize_with = "duration::positive")]
    pub timeout: Duration,
    /// Default bytes of each response kept with its attempt. Default 16 KiB.
    pub response_excerpt_bytes: usize,
    /// Default record retry schedule; the last step repeats.
    /// Default 5s, 5m, 30m, 2h, 5h, 10h, 10h.
    #[serde(deserialize_with = "duration::positive_list")]
    pub retry_schedule: Vec<Duration>,
    /// Jitter of retry and backoff delays, a fraction. Default 0.2 (±20 %).
    #[serde(deserialize_with = "jitter")]
    pub jitter: f64,
    /// Default attempts before a record is cancelled. Default 8 (the first
    /// try and one per step of the default schedule).
    #[serde(deserialize_with = "nonzero")]
    pub max_attempts: u32,
    /// Default age after which a record is cancelled. Default 3 days.
    #[serde(deserialize_with = "duration::positive")]
    pub max_age: Duration,
    /// Default first repeater backoff step. Default 30 s.
    #[serde(deserialize_with = "duration::positive")]
    pub backoff_min: Duration,
    /// Default largest repeater backoff step. Default 1 h.
    #[serde(deserialize_with = "duration::positive")]
    pub backoff_max: Duration,
    /// Longest `Retry-After` honoured; longer ones are clamped. Default 1 h.
    #[serde(deserialize_with = "duration::positive")]
    pub retry_after_max: Duration,
    /// Terminal records are deleted this long after they finished. Default 7 days.
    #[serde(deserialize_with = "duration::positive")]
    pub retention: Duration,
    /// Most records deleted per retention pass, to keep locks short. Default 1000.
    #[serde(deserialize_with = "nonzero")]
    pub retention_batch: u32,
}

/// The lease TTL when the config leaves it unset and the database is
/// shared by daemons (PostgreSQL): a crashed daemon's repeaters move within
/// it and one scheduler sleep.
pub const SHARED_LEASE_TTL: Duration = Duration::from_secs(3);

/// The lease TTL when the config leaves it unset and one process owns the
/// database (SQLite): no other daemon can take over, and a restart frees
/// the dead process's leases at once, so a long TTL saves lease writes.
pub const OWNED_LEASE_TTL: Duration = Duration::from_secs(60);

impl DispatchConfig {
    /// The lease TTL in force: the configured one, or the default for a
    /// database shared by daemons (`shared`, PostgreSQL) or owned by one
    /// (SQLite).
    pub fn lease_ttl_on(&self, shared: bool) -> Duration {
        self.lease_ttl.unwrap_or(if shared {
            SHARED_LEASE_TTL
        } else {
            OWNED_LEASE_TTL
        })
    }
}

impl Default for DispatchConfig {
    fn default() -> DispatchConfig {
        const MIN: u64 = 60;
        const HOUR: u64 = 3600;
        DispatchConfig {
            max_inflight: 256,
            lease_ttl: None,
            batch_size: 50,
            batch_time_budget: Duration::from_secs(30),
            concurrency: 7,
            rate_per_second: None,
            burst: 1,
            domain_rate_per_second: None,
            domain_burst: 10,
            timeout: Duration::from_secs(30),
            response_excerpt_bytes: 16 * 1024,
            retry_schedule: [
                5,
                5 * MIN,
                30 * MIN,
                2 * HOUR,
                5 * HOUR,
                10 * HOUR,
                10 * HOUR,
            ]
            .map(Duration::from_secs)
            .to_vec(),
            jitter: 0.2,
            max_attempts: 8,
            max_age: Duration::from_secs(3 * 24 * HOUR),
            backoff_min: Duration::from_secs(30),
            backoff_max: Duration::from_secs(HOUR),
            retry_after_max: Duration::from_secs(HOUR),
            retention: Duration::from_secs(7 * 24 * HOUR),
            retention_batch: 1000,
        }
    }
}

/// A repeater's limits with every default resolved. The dispatcher turns
/// them into the scheduling policies (`dispatch::policy`).
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveLimits {
    /// Concurrency ceiling (the AIMD cap).
    pub concurrency: u32,
    /// Steady rate, requests per second; `None` is unlimited.
    pub rate_per_second: Option<f64>,
    /// Burst above the rate.
    pub burst: u32,
    /// Request timeout.
    pub timeout: Duration,
    /// Attempts before a record is cancelled.
    pub max_attempts: u32,
    /// Age after which a record is cancelled.
    pub max_age: Duration,
    /// Retry schedule; the last step repeats.
    pub retry_schedule: Vec<Duration>,
    /// Jitter of retry and backoff delays.
    pub jitter: f64,
    /// First backoff step.
    pub backoff_min: Duration,
    /// Largest backoff step.
    pub backoff_max: Duration,
    /// Longest `Retry-After` honoured.
    pub retry_after_max: Duration,
    /// Bytes of each response kept.
    pub response_excerpt_bytes: usize,
}

impl DispatchConfig {
    /// Resolves a repeater's overrides against these defaults.
    pub fn effective(&self, limits: &RepeaterLimits) -> EffectiveLimits {
        let secs =
            |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_secs);
        let backoff_min = secs(limits.backoff_min_seconds, self.backoff_min);
        // An override of one end alone must not invert the range.
        let backoff_max = secs(limits.backoff_max_seconds, self.backoff_max).max(backoff_min);
        EffectiveLimits {
            concurrency: limits.concurrency.unwrap_or(self.concurrency).max(1),
            rate_per_second: limits.rate_per_second.or(self.rate_per_second),
            burst: limits.burst.unwrap_or(self.burst).max(1),
            timeout: limits
                .timeout_ms
                .map_or(self.timeout, Duration::from_millis),
            max_attempts: limits.max_attempts.unwrap_or(self.max_attempts).max(1),
            max_age: secs(limits.max_age_seconds, self.max_age),
            retry_schedule: match &limits.retry_schedule_seconds {
                Some(steps) if !steps.is_empty() => {
                    steps.iter().copied().map(Duration::from_secs).collect()
                }
                _ => self.retry_schedule.clone(),
            },
            jitter: self.jitter,
            backoff_min,
            backoff_max,
            retry_after_max: self.retry_after_max,
            response_excerpt_bytes: limits
                .response_excerpt_bytes
                .unwrap_or(self.response_excerpt_bytes),
        }
    }
}
