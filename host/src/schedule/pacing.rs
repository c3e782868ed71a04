//! Smooth rate limits (docs/scheduling.md, "Rate limits") with the generic cell rate algorithm: each
//! request pushes a "theoretical arrival time" forward by one emission
//! interval (1 / rate); a request is allowed while that time is at most
//! `burst` intervals ahead of now. This is a token bucket without a refill
//! loop: one number of state, no "push back a whole period".

use crate::model::Millis;

/// A GCRA pacer for one repeater or one domain.
#[derive(Debug, Clone, PartialEq)]
pub struct RatePacer {
    /// Milliseconds between requests at the steady rate.
    interval_ms: f64,
    /// How many requests may go at once above the steady rate (≥ 1).
    burst: u32,
    /// Theoretical arrival time of the next request.
    tat: f64,
}

impl RatePacer {
    /// A pacer allowing `rate_per_second` requests per second on average and
    /// up to `burst` at once. A non-positive or non-finite rate is treated as
    /// one request per hour rather than unlimited; validate rates before.
    pub fn new(rate_per_second: f64, burst: u32) -> RatePacer {
        let mut pacer = RatePacer {
            interval_ms: 0.0,
            burst: 1,
            tat: f64::MIN,
        };
        pacer.reconfigure(rate_per_second, burst);
        pacer
    }

    /// Changes rate and burst (config reload), keeping the pacing state.
    pub fn reconfigure(&mut self, rate_per_second: f64, burst: u32) {
        let rate = if rate_per_second.is_finite() && rate_per_second > 0.0 {
            rate_per_second
        } else {
            1.0 / 3600.0
        };
        self.interval_ms = 1000.0 / rate;
        self.burst = burst.max(1);
    }

    /// Takes `n` requests' worth of budget at `now`, or says the earliest
    /// time they could be taken. A refusal changes nothing. Asking for more
    /// than `burst` at once is allowed when the bucket is full, and repaid
    /// by a longer wait afterwards.
    pub fn try_acquire(&mut self, now: Millis, n: u32) -> Result<(), Millis> {
        let now_f = now as f64;
        let start = self.tat.max(now_f);
        let admitted = n.min(self.burst).max(1) as f64;
        // The newest of the admitted requests must not be more than `burst`
        // intervals ahead of now. Rounding the allowed time down to the
        // millisecond keeps a caller polling at ms resolution from drifting
        // below the rate when the interval is not a whole number of ms.
        let allow_at =
            (start + admitted * self.interval_ms - self.burst as f64 * self.interval_ms).floor();
        if allow_at > now_f {
            return Err(allow_at as Millis);
        }
        self.tat = start + n.max(1) as f64 * self.interval_ms;
        Ok(())
    }

    /// The earliest time one request could be taken, without taking it.
    pub fn next_free(&self, now: Millis) -> Millis {
        let start = self.tat.max(now as f64);
        let allow_at = start - (self.burst as f64 - 1.0) * self.interval_ms;
        (allow_at.floor() as Millis).max(now)
    }

    /// True when one request could be taken at `now`.
    pub fn is_free(&self, now: Millis) -> bool {
        self.next_free(now) <= now
    }

    /// How many requests may go at once above the steady rate.
    pub fn burst(&self) -> u32 {
        self.burst
    }
}

/// Takes up to `want` requests' worth from a repeater's and its domain's
/// pacers together (either may be absent): the most both allow at `now`, at
/// least one. `None`, with nothing taken from either, when not even one is
/// allowed.
pub fn take_together(
    repeater: Option<&mut RatePacer>,
    domain: Option<&mut RatePacer>,
    now: Millis,
    want: u32,
) -> Option<u32> {
    for n in (1..=want.max(1)).rev() {
        let mut r = repeater.as_deref().cloned();
        let mut d = domain.as_deref().cloned();
        let r_ok = r.as_mut().is_none_or(|p| p.try_acquire(now, n).is_ok());
        let d_ok = d.as_mut().is_none_or(|p| p.try_acquire(now, n).is_ok());
        if r_ok && d_ok {
            if let (Some(slot), Some(new)) = (repeater, r) {
                *slot = new;
            }
            if let (Some(slot), Some(new)) = (domain, d) {
                *slot = new;
            }
            return Some(n);
        }
    }
    None
}

/// The earliest time after `now` that one of `pacers` frees up, if any is
/// paced out now: when a loop waiting on them should look again.
pub fn earliest_free<'a>(
    pacers: impl IntoIterator<Item = &'a RatePacer>,
    now: Millis,
) -> Option<Millis> {
    pacers
        .into_iter()
        .map(|pacer| pacer.next_free(now))
        .filter(|free| *free > now)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tries to take one request every millisecond from `from` to `to`,
    /// returning the times it succeeded.
    fn drain(pacer: &mut RatePacer, from: Millis, to: Millis) -> Vec<Millis> {
        (from..to)
            .filter(|&t| pacer.try_acquire(t, 1).is_ok())
            .collect()
    }

    #[test]
    fn saturated_pacing_gives_the_configured_rate() {
        for (rate, burst) in [(10.0, 5), (3.0, 1), (250.0, 20), (0.5, 2)] {
            let mut pacer = RatePacer::new(rate, burst);
            let granted = drain(&mut pacer, 0, 60_000);
            // Over the first minute: the burst, then the steady rate.
            let expected = burst as f64 + rate * 60.0;
            assert!(
                (granted.len() as f64 - expected).abs() <= 1.0,
                "rate {rate} burst {burst}: {} granted, expected {expected}",
                granted.len()
            );
            // After the burst is spent, any 10 s window holds rate*10 ± 1.
            let in_window = granted
                .iter()
                .filter(|&&t| (30_000..40_000).contains(&t))
                .count() as f64;
            assert!((in_window - rate * 10.0).abs() <= 1.0, "{in_window}");
        }
    }

    #[test]
    fn bursts_never_exceed_burst() {
        let mut pacer = RatePacer::new(10.0, 5);
        let at_once = (0..100).filter(|_| pacer.try_acquire(0, 1).is_ok()).count();
        assert_eq!(at_once, 5);
        // Idle for a long time: the bucket refills to burst, not beyond.
        let at_once = (0..100)
            .filter(|_| pacer.try_acquire(1_000_000, 1).is_ok())
            .count();
        assert_eq!(at_once, 5);
    }

    #[test]
    fn refusal_names_the_earliest_time_and_it_is_exact() {
        let mut pacer = RatePacer::new(4.0, 1);
        assert_eq!(pacer.try_acquire(1_000, 1), Ok(()));
        let earliest = pacer.try_acquire(1_010, 1).unwrap_err();
        assert_eq!(earliest, 1_250);
        assert_eq!(pacer.next_free(1_010), 1_250);
        // A refusal spends nothing: the request fits exactly at that time.
        assert!(pacer.try_acquire(earliest - 1, 1).is_err());
        assert_eq!(pacer.try_acquire(earliest, 1), Ok(()));
    }

    #[test]
    fn oversized_requests_are_repaid_by_waiting() {
        let mut pacer = RatePacer::new(1.0, 2);
        assert_eq!(pacer.try_acquire(0, 5), Ok(()));
        // Five taken at rate 1/s with burst 2: the next is free at 4 s.
        assert_eq!(pacer.try_acquire(1, 1), Err(4_000));
        assert_eq!(pacer.next_free(0), 4_000);
    }

    #[test]
    fn taking_together_takes_what_both_allow_or_nothing() {
        let mut repeater = RatePacer::new(10.0, 5);
        let mut domain = RatePacer::new(10.0, 2);
        // The domain's burst is spent at 0 ms; at 100 ms it has room for one.
        assert_eq!(take_together(None, Some(&mut domain), 0, 2), Some(2));
        assert_eq!(
            take_together(Some(&mut repeater), Some(&mut domain), 100, 5),
            Some(1)
        );
        // Now the domain has none: the repeater loses nothing by asking.
        let before = repeater.clone();
        assert_eq!(
            take_together(Some(&mut repeater), Some(&mut domain), 100, 5),
            None
        );
        assert_eq!(repeater, before);
        assert_eq!(take_together(Some(&mut repeater), None, 100, 4), Some(4));
        // Without pacers every request asked for is allowed, at least one.
        assert_eq!(take_together(None, None, 0, 0), Some(1));
        assert_eq!(take_together(None, None, 0, 9), Some(9));
    }

    #[test]
    fn the_earliest_free_pacer_is_the_next_time_to_look() {
        let mut slow = RatePacer::new(1.0, 1);
        let mut fast = RatePacer::new(4.0, 1);
        let idle = RatePacer::new(1.0, 1);
        assert_eq!(earliest_free([&slow, &fast, &idle], 0), None);
        assert!(slow.is_free(0) && fast.is_free(0));
        slow.try_acquire(0, 1).unwrap();
        fast.try_acquire(0, 1).unwrap();
        assert!(!fast.is_free(0) && idle.is_free(0));
        assert_eq!(earliest_free([&slow, &fast, &idle], 0), Some(250));
        assert_eq!(earliest_free([&slow, &fast, &idle], 300), Some(1_000));
        assert_eq!(fast.burst(), 1);
    }

    #[test]
    fn nonsense_rates_do_not_mean_unlimited() {
        let mut pacer = RatePacer::new(f64::NAN, 1);
        assert!(pacer.try_acquire(0, 1).is_ok());
        assert!(pacer.try_acquire(1_000, 1).is_err());
    }
}
