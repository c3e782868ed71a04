//! A repeater's limits, as the config resolved them, turned into the
//! scheduling policies that run on them. The config only reads the file and
//! the schedule only decides; this is where the two meet, in the layer that
//! uses both.

use std::time::Duration;

use crate::config::{DispatchConfig, EffectiveLimits};
use crate::model::{Millis, RepeaterSpec};
use crate::schedule::{Backoff, RatePacer, RetryPolicy};

use super::DispatchDeps;

fn ms(duration: Duration) -> Millis {
    Millis::try_from(duration.as_millis()).unwrap_or(Millis::MAX)
}

/// A repeater's limits with every default resolved, as the config stands now
/// (it follows reloads).
pub(crate) fn limits_of(deps: &DispatchDeps, spec: &RepeaterSpec) -> EffectiveLimits {
    deps.config.borrow().effective(&spec.limits)
}

/// The record retry policy of a repeater's limits.
pub fn retry_policy(limits: &EffectiveLimits) -> RetryPolicy {
    RetryPolicy {
        schedule_ms: limits.retry_schedule.iter().copied().map(ms).collect(),
        jitter: limits.jitter,
        max_attempts: limits.max_attempts,
        max_age_ms: ms(limits.max_age),
        max_retry_after_ms: ms(limits.retry_after_max),
    }
}

/// The repeater backoff policy of a repeater's limits.
pub fn backoff(limits: &EffectiveLimits) -> Backoff {
    Backoff {
        min_ms: ms(limits.backoff_min),
        max_ms: ms(limits.backoff_max),
        jitter: limits.jitter,
        max_retry_after_ms: ms(limits.retry_after_max),
    }
}

/// A fresh rate pacer for a repeater, or `None` when it is not rate-limited.
pub fn rate_pacer(limits: &EffectiveLimits) -> Option<RatePacer> {
    limits
        .rate_per_second
        .map(|rate| RatePacer::new(rate, limits.burst))
}

/// A fresh pacer for one domain, or `None` when domains are not rate-limited.
pub fn domain_pacer(config: &DispatchConfig) -> Option<RatePacer> {
    config
        .domain_rate_per_second
        .map(|rate| RatePacer::new(rate, config.domain_burst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RepeaterLimits;

    #[test]
    fn limits_become_policies_in_milliseconds() {
        let config = DispatchConfig {
            domain_rate_per_second: Some(50.0),
            ..DispatchConfig::default()
        };
        let limits = config.effective(&RepeaterLimits {
            rate_per_second: Some(1.5),
            retry_schedule_seconds: Some(vec![30, 300]),
            max_age_seconds: Some(86_400),
            backoff_max_seconds: Some(1_800),
            ..RepeaterLimits::default()
        });
        let retry = retry_policy(&limits);
        assert_eq!(retry.schedule_ms, [30_000, 300_000]);
        assert_eq!(retry.max_age_ms, 86_400_000);
        assert_eq!(retry.max_retry_after_ms, 3_600_000);
        assert_eq!(retry.jitter, 0.2);
        let backoff = backoff(&limits);
        assert_eq!((backoff.min_ms, backoff.max_ms), (30_000, 1_800_000));
        assert_eq!(rate_pacer(&limits).map(|p| p.burst()), Some(1));
        assert_eq!(domain_pacer(&config).map(|p| p.burst()), Some(10));
    }

    #[test]
    fn no_rate_means_no_pacer() {
        let config = DispatchConfig::default();
        let limits = config.effective(&RepeaterLimits::default());
        assert!(rate_pacer(&limits).is_none());
        assert!(domain_pacer(&config).is_none());
    }
}
