//! Repeater backoff (docs/scheduling.md, "Endpoint backoff"): when every attempt of a batch fails retryably
//! the repeater, not each record, waits: doubling from `min_ms` to `max_ms`
//! with jitter; any success resets it. A dead endpoint then costs one probe
//! batch per step instead of one request per queued record.

use crate::model::{AttemptOutcome, Millis};

/// Doubling backoff of a repeater between failed batches.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// The first step (default 30 s).
    pub min_ms: i64,
    /// The largest step (default 1 h); jitter never goes above it.
    pub max_ms: i64,
    /// Fractional jitter applied to each step: 0.2 spreads it by ±20 %.
    pub jitter: f64,
    /// Longest `Retry-After` honoured as a minimum step.
    pub max_retry_after_ms: i64,
}

impl Backoff {
    /// The un-jittered step after `failed_batches` consecutive failed batches
    /// (1 gives `min_ms`, 2 gives twice that, ..., capped at `max_ms`).
    pub fn base_delay_ms(&self, failed_batches: u32) -> i64 {
        let doublings = failed_batches.max(1) - 1;
        let min = self.min_ms.max(1);
        // 2^62 already exceeds any sane max; stop doubling before overflow.
        let factor = 1i64 << doublings.min(62);
        min.saturating_mul(factor).min(self.max_ms.max(min))
    }

    /// After a failed batch: given the repeater's current `step` (consecutive
    /// failed batches before this one, 0 when healthy), returns when it may
    /// run again and its new step. `retry_after_ms` (from a 429/503 or the
    /// plugin) is honoured as a minimum, clamped to `max_retry_after_ms`.
    pub fn after_failure(
        &self,
        step: u32,
        now: Millis,
        retry_after_ms: Option<i64>,
        rng: &mut impl rand::Rng,
    ) -> (Millis, u32) {
        let next_step = step.saturating_add(1);
        let cap = self.max_ms.max(self.min_ms.max(1));
        let mut delay = super::jittered(self.base_delay_ms(next_step), self.jitter, rng).min(cap);
        if let Some(asked) = retry_after_ms {
            delay = delay.max(super::clamp_retry_after(asked, self.max_retry_after_ms));
        }
        (now.saturating_add(delay), next_step)
    }
}

/// How one attempt of a batch ended, as far as repeater health goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// The endpoint took it.
    Success,
    /// Failed retryably (transport error, timeout, 429, 5xx, plugin retry).
    RetryableFailure,
    /// The payload was refused: says nothing about the endpoint's health.
    Rejected,
    /// Nothing to send: says nothing about the endpoint's health.
    Empty,
}

impl From<AttemptOutcome> for AttemptResult {
    /// A stored attempt outcome, as repeater health sees it.
    fn from(outcome: AttemptOutcome) -> AttemptResult {
        match outcome {
            AttemptOutcome::Success => AttemptResult::Success,
            AttemptOutcome::Retry => AttemptResult::RetryableFailure,
            AttemptOutcome::Reject => AttemptResult::Rejected,
            AttemptOutcome::Skip => AttemptResult::Empty,
        }
    }
}

/// What a batch does to its repeater's backoff. On [`BatchVerdict::Reset`]
/// the repeater's step goes back to 0 and its backoff is cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchVerdict {
    /// Every attempt that speaks about the endpoint failed retryably: back off.
    BackOff,
    /// At least one success: clear the backoff.
    Reset,
    /// Only payload-blaming outcomes (or none): leave the backoff as it is.
    Stay,
}

/// Decides from a batch's attempt results whether the repeater backs off,
/// resets or stays. Rejected and empty outcomes blame the payload, so they
/// neither back off nor reset and do not dilute a run of failures.
pub fn batch_verdict(results: impl IntoIterator<Item = AttemptResult>) -> BatchVerdict {
    let mut failed = false;
    for result in results {
        match result {
            AttemptResult::Success => return BatchVerdict::Reset,
            AttemptResult::RetryableFailure => failed = true,
            AttemptResult::Rejected | AttemptResult::Empty => {}
        }
    }
    if failed {
        BatchVerdict::BackOff
    } else {
        BatchVerdict::Stay
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::AttemptResult::*;
    use super::*;

    fn backoff() -> Backoff {
        Backoff {
            min_ms: 30_000,
            max_ms: 3_600_000,
            jitter: 0.2,
            max_retry_after_ms: 3_600_000,
        }
    }

    #[test]
    fn doubles_from_min_and_caps_at_max() {
        let b = backoff();
        let steps: Vec<i64> = (1..=10).map(|n| b.base_delay_ms(n)).collect();
        assert_eq!(
            steps,
            [
                30_000, 60_000, 120_000, 240_000, 480_000, 960_000, 1_920_000, 3_600_000,
                3_600_000, 3_600_000
            ]
        );
        assert_eq!(b.base_delay_ms(u32::MAX), 3_600_000);
    }

    #[test]
    fn consecutive_failures_walk_up_the_steps_with_bounded_jitter() {
        let b = backoff();
        let mut rng = StdRng::seed_from_u64(11);
        let mut step = 0;
        let now = 10_000_000;
        for expected_base in [30_000i64, 60_000, 120_000, 240_000] {
            let (until, next) = b.after_failure(step, now, None, &mut rng);
            assert_eq!(next, step + 1);
            let delay = until - now;
            assert!(
                (expected_base * 8 / 10..=expected_base * 12 / 10).contains(&delay),
                "step {next}: {delay}"
            );
            step = next;
        }
        // At the cap, jitter never pushes the wait past max.
        for _ in 0..1000 {
            let (until, _) = b.after_failure(20, now, None, &mut rng);
            assert!(until - now <= 3_600_000 && until - now >= 2_880_000);
        }
    }

    #[test]
    fn retry_after_lengthens_a_step_up_to_its_clamp() {
        let b = Backoff {
            max_retry_after_ms: 600_000,
            ..backoff()
        };
        let mut rng = StdRng::seed_from_u64(12);
        let (until, _) = b.after_failure(0, 0, Some(300_000), &mut rng);
        assert_eq!(until, 300_000);
        let (until, _) = b.after_failure(0, 0, Some(86_400_000), &mut rng);
        assert_eq!(until, 600_000);
    }

    #[test]
    fn any_success_resets_and_only_all_failures_back_off() {
        assert_eq!(
            batch_verdict([RetryableFailure, RetryableFailure]),
            BatchVerdict::BackOff
        );
        assert_eq!(
            batch_verdict([RetryableFailure, Success, RetryableFailure]),
            BatchVerdict::Reset
        );
        assert_eq!(batch_verdict([Rejected, Success]), BatchVerdict::Reset);
        assert_eq!(batch_verdict([Rejected, Empty]), BatchVerdict::Stay);
        assert_eq!(batch_verdict([]), BatchVerdict::Stay);
        assert_eq!(
            batch_verdict([AttemptOutcome::Retry, AttemptOutcome::Skip].map(AttemptResult::from)),
            BatchVerdict::BackOff
        );
        // Payload-blaming outcomes do not hide a dead endpoint.
        assert_eq!(
            batch_verdict([Rejected, RetryableFailure, Empty]),
            BatchVerdict::BackOff
        );
    }
}
