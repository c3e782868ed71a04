//! Adaptive per-repeater concurrency (docs/scheduling.md, "Bounded work"): additive increase on success,
//! multiplicative decrease on overload (timeouts, 429, 5xx), never above the
//! configured ceiling nor below 1. A slow endpoint thus shrinks its own share
//! of the workers instead of holding all of them.

/// True when an attempt's result means the endpoint is overloaded: a
/// timeout, `429 Too Many Requests` or any 5xx.
pub fn is_overload(status: Option<u16>, timed_out: bool) -> bool {
    timed_out || matches!(status, Some(429) | Some(500..=599))
}

/// The AIMD state of one repeater's concurrency cap.
#[derive(Debug, Clone, PartialEq)]
pub struct Aimd {
    ceiling: u32,
    current: f64,
    /// Results still to be seen before another decrease counts: requests
    /// already in flight when the cap was cut report the same overload, and
    /// one overload episode must cut the cap once, not once per request.
    decrease_hold: u32,
}

impl Aimd {
    /// Starts at the ceiling: a healthy endpoint gets its configured
    /// concurrency at once, an unhealthy one loses it within a few results.
    pub fn new(ceiling: u32) -> Aimd {
        let ceiling = ceiling.max(1);
        Aimd {
            ceiling,
            current: ceiling as f64,
            decrease_hold: 0,
        }
    }

    /// The configured ceiling.
    pub fn ceiling(&self) -> u32 {
        self.ceiling
    }

    /// Changes the ceiling (config reload), pulling the current cap under it.
    pub fn set_ceiling(&mut self, ceiling: u32) {
        self.ceiling = ceiling.max(1);
        self.current = self.current.min(self.ceiling as f64);
    }

    /// How many requests may be in flight now: in `1..=ceiling`.
    pub fn limit(&self) -> u32 {
        (self.current.floor() as u32).clamp(1, self.ceiling)
    }

    /// A success: grow by about one request per window of successes.
    pub fn on_success(&mut self) {
        self.decrease_hold = self.decrease_hold.saturating_sub(1);
        self.current = (self.current + 1.0 / self.current.max(1.0)).min(self.ceiling as f64);
    }

    /// An overload signal: halve the cap, at most once per window.
    pub fn on_overload(&mut self) {
        if self.decrease_hold > 0 {
            self.decrease_hold -= 1;
            return;
        }
        self.decrease_hold = self.limit().saturating_sub(1);
        self.current = (self.current / 2.0).max(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_leaves_one_to_ceiling() {
        let mut aimd = Aimd::new(7);
        assert_eq!(aimd.limit(), 7);
        for _ in 0..100 {
            aimd.on_overload();
            assert!((1..=7).contains(&aimd.limit()));
        }
        assert_eq!(aimd.limit(), 1);
        for _ in 0..10_000 {
            aimd.on_success();
            assert!((1..=7).contains(&aimd.limit()));
        }
        assert_eq!(aimd.limit(), 7);
        assert_eq!(Aimd::new(0).limit(), 1);
    }

    #[test]
    fn one_overload_episode_halves_once() {
        let mut aimd = Aimd::new(8);
        // Eight requests in flight all time out together.
        for _ in 0..8 {
            aimd.on_overload();
        }
        assert_eq!(aimd.limit(), 4);
        // Once the in-flight window has drained, a new overload cuts again.
        aimd.on_overload();
        assert_eq!(aimd.limit(), 2);
    }

    #[test]
    fn grows_additively_back_to_the_ceiling() {
        let mut aimd = Aimd::new(16);
        for _ in 0..40 {
            aimd.on_overload();
        }
        assert_eq!(aimd.limit(), 1);
        // About one step per window: from 1 to 4 takes 1 + 2 + 3 successes or so.
        let mut successes = 0;
        while aimd.limit() < 4 {
            aimd.on_success();
            successes += 1;
        }
        assert!((5..=8).contains(&successes), "{successes}");
        aimd.set_ceiling(2);
        assert_eq!(aimd.limit(), 2);
    }

    #[test]
    fn overload_means_timeouts_429_and_5xx() {
        assert!(is_overload(None, true));
        assert!(is_overload(Some(429), false));
        assert!(is_overload(Some(503), false));
        assert!(!is_overload(Some(400), false));
        assert!(!is_overload(Some(200), false));
        assert!(!is_overload(None, false));
    }
}
