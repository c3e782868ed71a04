//! Record retry (docs/scheduling.md, "Record retry"): after a retryable failure a record waits for the
//! next step of the retry schedule (with jitter), or for the delay the
//! endpoint or plugin asked for when that is longer; past `max_attempts` or
//! `max_age` it is given up (cancelled) instead.

use std::fmt;

use crate::model::Millis;

/// When a record is tried again, and when it is given up.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delays between attempts: entry `i` follows the `i+1`-th attempt; the
    /// last entry repeats. Default 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    pub schedule_ms: Vec<i64>,
    /// Fractional jitter applied to each delay: 0.2 spreads it by ±20 %.
    pub jitter: f64,
    /// Attempts after which the record is cancelled.
    pub max_attempts: u32,
    /// Age (since registration or resend) after which the record is cancelled.
    pub max_age_ms: i64,
    /// Longest `Retry-After` (or plugin retry delay) honoured; longer asks
    /// are clamped to this.
    pub max_retry_after_ms: i64,
}

/// What to do with a record after a retryable failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again at this time.
    At(Millis),
    /// Cancel the record; the reason names the limit that was reached.
    GiveUp(GiveUpReason),
}

/// Which limit made a record be given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GiveUpReason {
    /// `max_attempts` attempts were made.
    Attempts {
        /// Attempts made.
        made: u32,
        /// The configured limit.
        max: u32,
    },
    /// The next attempt would fall past `max_age`.
    Age {
        /// The record's age at its next attempt, had there been one.
        age_ms: i64,
        /// The configured limit.
        max_ms: i64,
    },
}

impl fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUpReason::Attempts { made, max } => {
                write!(f, "gave up after {made} attempts (max_attempts = {max})")
            }
            GiveUpReason::Age { age_ms, max_ms } => write!(
                f,
                "gave up: the next attempt would be at age {}s, past max_age = {}s",
                age_ms / 1000,
                max_ms / 1000
            ),
        }
    }
}

/// Clamps a requested delay (`Retry-After` or a plugin's retry-later) to
/// `0..=max_ms`.
pub fn clamp_retry_after(requested_ms: i64, max_ms: i64) -> i64 {
    requested_ms.clamp(0, max_ms.max(0))
}

impl RetryPolicy {
    /// The un-jittered delay after the `attempts_done`-th attempt.
    pub fn base_delay_ms(&self, attempts_done: u32) -> i64 {
        let index = (attempts_done.max(1) - 1) as usize;
        self.schedule_ms
            .get(index)
            .or(self.schedule_ms.last())
            .copied()
            .unwrap_or(0)
    }

    /// Decides a record's fate after its `attempts_done`-th attempt failed
    /// retryably at `now`. `age_origin` is when its age started counting;
    /// `retry_after_ms` is a delay asked for by the endpoint or plugin, taken
    /// as a minimum (clamped to `max_retry_after_ms`).
    ///
    /// A record whose next attempt would fall past `max_age` is given up now:
    /// waiting for an attempt that may not happen helps nobody.
    pub fn next_attempt(
        &self,
        attempts_done: u32,
        age_origin: Millis,
        now: Millis,
        retry_after_ms: Option<i64>,
        rng: &mut impl rand::Rng,
    ) -> RetryDecision {
        if attempts_done >= self.max_attempts {
            return RetryDecision::GiveUp(GiveUpReason::Attempts {
                made: attempts_done,
                max: self.max_attempts,
            });
        }
        let mut delay = super::jittered(self.base_delay_ms(attempts_done), self.jitter, rng);
        if let Some(asked) = retry_after_ms {
            delay = delay.max(clamp_retry_after(asked, self.max_retry_after_ms));
        }
        let at = now.saturating_add(delay);
        let age_at = at.saturating_sub(age_origin);
        if age_at > self.max_age_ms {
            return RetryDecision::GiveUp(GiveUpReason::Age {
                age_ms: age_at,
                max_ms: self.max_age_ms,
            });
        }
        RetryDecision::At(at)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const S: i64 = 1000;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            schedule_ms: vec![5 * S, 300 * S, 1800 * S],
            jitter: 0.2,
            max_attempts: 10,
            max_age_ms: 86_400 * S,
            max_retry_after_ms: 3600 * S,
        }
    }

    fn at(decision: RetryDecision) -> Millis {
        match decision {
            RetryDecision::At(t) => t,
            other => panic!("expected a retry time, got {other:?}"),
        }
    }

    #[test]
    fn follows_the_schedule_with_jitter_and_repeats_the_last_step() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(3);
        let now = 1_000_000;
        for (attempts, base) in [(1, 5 * S), (2, 300 * S), (3, 1800 * S), (7, 1800 * S)] {
            for _ in 0..200 {
                let delay = at(p.next_attempt(attempts, now, now, None, &mut rng)) - now;
                let (lo, hi) = (base * 8 / 10, base * 12 / 10);
                assert!((lo..=hi).contains(&delay), "attempt {attempts}: {delay}");
            }
        }
    }

    #[test]
    fn retry_after_is_a_minimum_and_is_clamped() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(4);
        let now = 50_000;
        // Longer than the schedule step: honoured.
        let t = at(p.next_attempt(1, now, now, Some(120 * S), &mut rng));
        assert_eq!(t - now, 120 * S);
        // Shorter than the step: the schedule wins.
        let t = at(p.next_attempt(1, now, now, Some(1), &mut rng));
        assert!(t - now >= 4 * S);
        // Absurdly long: clamped to the configured maximum.
        let t = at(p.next_attempt(1, now, now, Some(30 * 86_400 * S), &mut rng));
        assert_eq!(t - now, 3600 * S);
        assert_eq!(clamp_retry_after(-5, 10), 0);
        assert_eq!(clamp_retry_after(50, 10), 10);
    }

    #[test]
    fn gives_up_by_attempts() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(5);
        assert!(matches!(
            p.next_attempt(9, 0, 0, None, &mut rng),
            RetryDecision::At(_)
        ));
        let decision = p.next_attempt(10, 0, 0, None, &mut rng);
        assert_eq!(
            decision,
            RetryDecision::GiveUp(GiveUpReason::Attempts { made: 10, max: 10 })
        );
        if let RetryDecision::GiveUp(reason) = decision {
            assert!(reason.to_string().contains("max_attempts"));
        }
    }

    #[test]
    fn gives_up_by_age_when_the_next_attempt_would_be_too_old() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(6);
        let origin = 0;
        // 23h30m old, next step ~30 min ±20 %: may or may not fit; 23h50m cannot.
        let now = 86_400 * S - 600 * S;
        match p.next_attempt(3, origin, now, None, &mut rng) {
            RetryDecision::GiveUp(GiveUpReason::Age { age_ms, max_ms }) => {
                assert!(age_ms > max_ms);
                assert_eq!(max_ms, 86_400 * S);
            }
            other => panic!("expected give-up by age, got {other:?}"),
        }
        // Young record: retried.
        assert!(matches!(
            p.next_attempt(3, origin, 3600 * S, None, &mut rng),
            RetryDecision::At(_)
        ));
        let reason = GiveUpReason::Age {
            age_ms: 90_000 * S,
            max_ms: 86_400 * S,
        };
        assert!(reason.to_string().contains("max_age"));
    }
}
