//! Adaptive per-repeater concurrency (docs/scheduling.md, "Bounded work";
//! ADR 15): the limit on a repeater's requests in flight, never above the
//! configured ceiling nor below 1.
//!
//! An overload answer (timeout, 429, 5xx) seen while `k` of the repeater's
//! requests were in flight, itself included, says the endpoint could not
//! take `k`, unless it has lately served `k` at once (a success came back
//! with `k` or more in flight, and the limit has not fallen below `k`
//! since). Then:
//!
//! - Not served lately: the limit drops to `k - 1` at most. A wave of such
//!   answers walks it down to what the endpoint served alongside them, so
//!   a receiver that sheds load at once is found out by its first wave.
//!   The level `k` is then probed slowly: growth toward it takes
//!   [`PROBE_WINDOWS`] windows per step instead of one, so the lane sits at
//!   the endpoint's capacity and tries one more request now and then,
//!   instead of oscillating above it.
//! - Served lately: an answered 429 or 5xx is an error more than a sign of
//!   too many requests (a flaky endpoint's odd 500): the limit drops by
//!   one. A timeout is the endpoint holding requests it served a moment
//!   ago (it is stalling): the limit halves. Either at most once per window
//!   of answers, and the limit grows back at the usual pace.
//!
//! Otherwise the limit grows by one per window of successes (a window is
//! `limit` successes). Successes seen with fewer requests in flight than the
//! limit do not count: they say nothing about more.

/// True when an attempt's result means the endpoint is overloaded: a
/// timeout, `429 Too Many Requests` or any 5xx.
pub fn is_overload(status: Option<u16>, timed_out: bool) -> bool {
    timed_out || matches!(status, Some(429) | Some(500..=599))
}

/// Windows of successes one step of growth takes next to the level that
/// last overloaded. Each probe of that level costs about one overload
/// answer, so a lane at an endpoint's capacity `c` wastes about one
/// request in `16 c + 1` (6 % at `c = 1`, 2 % at `c = 3`).
pub const PROBE_WINDOWS: u32 = 16;

/// How an endpoint showed overload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    /// It answered `429` or a 5xx.
    Answered,
    /// It did not answer within the request timeout.
    TimedOut,
}

/// The adaptive concurrency limit of one repeater.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aimd {
    ceiling: u32,
    limit: u32,
    /// Successes counted toward the next step of growth.
    credit: u32,
    /// How many requests were in flight when the endpoint last showed
    /// overload at a level it had not served; forgotten once the limit has
    /// grown past it.
    overloaded_at: Option<u32>,
    /// Most requests in flight with which a success came back, never above
    /// the limit: the level the endpoint has lately been seen to serve.
    served: u32,
    /// Answers still to come before an overload at a served level cuts
    /// again: the requests in flight at a cut report the same trouble.
    error_hold: u32,
}

impl Aimd {
    /// Starts at the ceiling: a healthy endpoint gets its configured
    /// concurrency at once, an overloaded one loses the excess with its
    /// first wave of answers.
    pub fn new(ceiling: u32) -> Aimd {
        let ceiling = ceiling.max(1);
        Aimd {
            ceiling,
            limit: ceiling,
            credit: 0,
            overloaded_at: None,
            served: 0,
            error_hold: 0,
        }
    }

    /// The configured ceiling.
    pub fn ceiling(&self) -> u32 {
        self.ceiling
    }

    /// Changes the ceiling (config reload), pulling the limit under it.
    pub fn set_ceiling(&mut self, ceiling: u32) {
        self.ceiling = ceiling.max(1);
        self.limit = self.limit.min(self.ceiling);
    }

    /// How many requests may be in flight now: in `1..=ceiling`.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// A success answered while `in_flight` of the repeater's requests,
    /// this one included, were open.
    pub fn on_success(&mut self, in_flight: u32) {
        self.error_hold = self.error_hold.saturating_sub(1);
        self.served = self.served.max(in_flight.min(self.limit));
        if in_flight < self.limit || self.limit >= self.ceiling {
            return;
        }
        let windows = match self.overloaded_at {
            Some(overloaded) if self.limit + 1 >= overloaded => PROBE_WINDOWS,
            _ => 1,
        };
        self.credit += 1;
        if self.credit >= windows * self.limit {
            self.credit = 0;
            self.limit += 1;
            if self.overloaded_at.is_some_and(|at| self.limit > at) {
                self.overloaded_at = None;
            }
        }
    }

    /// An overload seen while `in_flight` of the repeater's requests, this
    /// one included, were open.
    pub fn on_overload(&mut self, in_flight: u32, how: Overload) {
        let in_flight = in_flight.max(1);
        let held = self.error_hold > 0;
        self.error_hold = self.error_hold.saturating_sub(1);
        if in_flight <= self.served {
            if held {
                return;
            }
            self.error_hold = in_flight - 1;
            self.limit = match how {
                Overload::Answered => self.limit - 1,
                Overload::TimedOut => self.limit / 2,
            }
            .max(1);
        } else {
            self.limit = self.limit.min(in_flight - 1).max(1);
            self.credit = 0;
            self.overloaded_at = Some(in_flight);
        }
        self.served = self.served.min(self.limit);
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// A lane sending to a receiver that serves `capacity` requests at once
    /// for 50 ms each and answers 503 after 0.5 ms beyond that, with as
    /// many requests in flight as the limit allows (as a batch's window
    /// keeps them). Time is in microseconds.
    struct Simulation {
        capacity: u32,
        aimd: Aimd,
        now: u64,
        /// Open requests: when each answers and whether it succeeds.
        open: Vec<(u64, bool)>,
        /// Share of the requests within capacity answered 500 at once.
        errors: f64,
        rng: StdRng,
    }

    /// What a simulation saw after its warm-up.
    #[derive(Debug, Default)]
    struct Seen {
        successes: u64,
        /// Answers 503 (shed) or 500.
        failures: u64,
        /// Microseconds of receiver slots in use.
        busy_us: u64,
        /// Microseconds spent at each limit, by limit.
        at_limit: std::collections::BTreeMap<u32, u64>,
        elapsed_us: u64,
    }

    impl Seen {
        fn success_share(&self) -> f64 {
            self.successes as f64 / (self.successes + self.failures) as f64
        }

        /// The limit, averaged over time.
        fn mean_limit(&self) -> f64 {
            let weighted: u64 = self.at_limit.iter().map(|(l, us)| u64::from(*l) * us).sum();
            weighted as f64 / self.elapsed_us as f64
        }

        /// Share of the receiver's capacity used.
        fn utilisation(&self, capacity: u32) -> f64 {
            self.busy_us as f64 / (capacity as f64 * self.elapsed_us as f64)
        }

        /// Share of the time the limit was `limit`.
        fn time_at(&self, limit: u32) -> f64 {
            *self.at_limit.get(&limit).unwrap_or(&0) as f64 / self.elapsed_us as f64
        }
    }

    const SERVICE_US: u64 = 50_000;
    const SHED_US: u64 = 500;

    impl Simulation {
        fn new(capacity: u32, aimd: Aimd) -> Simulation {
            Simulation {
                capacity,
                aimd,
                now: 0,
                open: Vec::new(),
                errors: 0.0,
                rng: StdRng::seed_from_u64(15),
            }
        }

        /// A receiver with room for anything that answers `share` of its
        /// requests 500 at once, whatever the load: a flaky endpoint.
        fn flaky(share: f64, aimd: Aimd) -> Simulation {
            Simulation {
                errors: share,
                ..Simulation::new(u32::MAX, aimd)
            }
        }

        /// Slots of the receiver in use now: a slot is free as soon as its
        /// answer is ready, before the lane has read it.
        fn serving(&self) -> u32 {
            let held = self
                .open
                .iter()
                .filter(|(at, served)| *served && *at > self.now);
            held.count() as u32
        }

        /// Runs until `until_us`, counting what happens after `warm_up_us`.
        fn run(&mut self, warm_up_us: u64, until_us: u64) -> Seen {
            let mut seen = Seen::default();
            loop {
                while self.open.len() < self.aimd.limit() as usize {
                    let served = self.serving() < self.capacity
                        && (self.errors == 0.0 || !self.rng.random_bool(self.errors));
                    let answer = self.now + if served { SERVICE_US } else { SHED_US };
                    self.open.push((answer, served));
                }
                let next = (0..self.open.len())
                    .min_by_key(|&i| self.open[i].0)
                    .expect("the limit is at least one");
                let (at, served) = self.open[next];
                if at >= until_us {
                    return seen;
                }
                if self.now >= warm_up_us {
                    let span = at - self.now;
                    seen.elapsed_us += span;
                    seen.busy_us += span * u64::from(self.serving());
                    *seen.at_limit.entry(self.aimd.limit()).or_default() += span;
                }
                self.now = at;
                let in_flight = self.open.len() as u32;
                self.open.swap_remove(next);
                if served {
                    self.aimd.on_success(in_flight);
                } else {
                    self.aimd.on_overload(in_flight, Overload::Answered);
                }
                if self.now >= warm_up_us {
                    match served {
                        true => seen.successes += 1,
                        false => seen.failures += 1,
                    }
                }
            }
        }
    }

    #[test]
    fn a_receiver_that_sheds_load_is_used_at_its_capacity() {
        for capacity in [1, 2, 3, 5, 10] {
            let mut lane = Simulation::new(capacity, Aimd::new(16));
            // Two seconds of warm-up, then a minute.
            let seen = lane.run(2_000_000, 62_000_000);
            let (share, used) = (seen.success_share(), seen.utilisation(capacity));
            assert!(
                share >= 0.93,
                "capacity {capacity}: {share:.3} success, {seen:?}"
            );
            assert!(
                used >= 0.99,
                "capacity {capacity}: {used:.3} used, {seen:?}"
            );
            assert!(
                seen.time_at(capacity) >= 0.9,
                "capacity {capacity}: the limit was elsewhere: {seen:?}"
            );
        }
    }

    #[test]
    fn the_first_wave_finds_the_capacity() {
        let mut lane = Simulation::new(3, Aimd::new(16));
        let seen = lane.run(0, 100_000);
        // 16 sent at once, 13 shed, and the limit stands at 3 before the
        // first success.
        assert_eq!(seen.failures, 13, "{seen:?}");
        assert_eq!(lane.aimd.limit(), 3);
    }

    #[test]
    fn a_receiver_that_never_overloads_keeps_the_ceiling() {
        let mut lane = Simulation::new(u32::MAX, Aimd::new(16));
        let seen = lane.run(0, 10_000_000);
        assert_eq!(seen.failures, 0);
        assert_eq!(seen.time_at(16), 1.0, "{seen:?}");
    }

    #[test]
    fn a_flaky_receiver_keeps_most_of_the_limit() {
        // One request in a hundred answered 500, at any load: the limit
        // stays near the ceiling. (Halving once per window, the limiter
        // before ADR 15, kept about 12 of 16 in this setting; cutting to
        // `k - 1` on every error kept 8.)
        let mut lane = Simulation::flaky(0.01, Aimd::new(16));
        let seen = lane.run(2_000_000, 62_000_000);
        let mean = seen.mean_limit();
        assert!(mean >= 13.0, "{mean:.2}: {seen:?}");
        // One in twenty: halving kept about 5, cutting on every error 2.
        let mut lane = Simulation::flaky(0.05, Aimd::new(16));
        let seen = lane.run(2_000_000, 62_000_000);
        let mean = seen.mean_limit();
        assert!(mean >= 7.0, "{mean:.2}: {seen:?}");
    }

    #[test]
    fn an_error_at_a_served_level_cuts_by_one_per_window() {
        let mut aimd = Aimd::new(16);
        aimd.on_overload(9, Overload::Answered);
        assert_eq!(aimd.limit(), 8);
        // The endpoint served 8 at once.
        aimd.on_success(8);
        // A 500 with 8 in flight, and the 7 others still in flight
        // answering the same: one step down.
        for in_flight in (1..=8).rev() {
            aimd.on_overload(in_flight, Overload::Answered);
        }
        assert_eq!(aimd.limit(), 7);
        // Back at the usual pace, a window of successes: no slow probing
        // of a level the endpoint has served.
        for _ in 0..7 {
            aimd.on_success(7);
        }
        assert_eq!(aimd.limit(), 8);
        // The answers of that cut are in: the next error at a served level
        // counts.
        aimd.on_success(8);
        aimd.on_overload(8, Overload::Answered);
        assert_eq!(aimd.limit(), 7);
    }

    #[test]
    fn a_stalling_endpoint_halves_the_limit_per_window() {
        let mut aimd = Aimd::new(16);
        aimd.on_success(16);
        // Every request in flight times out together.
        for in_flight in (1..=16).rev() {
            aimd.on_overload(in_flight, Overload::TimedOut);
        }
        assert_eq!(aimd.limit(), 8);
        for in_flight in (1..=8).rev() {
            aimd.on_overload(in_flight, Overload::TimedOut);
        }
        assert_eq!(aimd.limit(), 4);
    }

    #[test]
    fn a_recovered_receiver_gets_the_ceiling_back_quickly() {
        let mut aimd = Aimd::new(16);
        // A total outage: every request in flight overloaded.
        for in_flight in (1..=16).rev() {
            aimd.on_overload(in_flight, Overload::Answered);
        }
        assert_eq!(aimd.limit(), 1);
        // Then the receiver takes anything: a few seconds of 50 ms requests.
        let mut successes = 0;
        while aimd.limit() < 16 {
            aimd.on_success(aimd.limit());
            successes += 1;
        }
        // The last overload came with one in flight: 16 windows of one
        // success to reach 2, then a window per step.
        assert_eq!(successes, PROBE_WINDOWS + (2..16).sum::<u32>());
    }

    #[test]
    fn never_leaves_one_to_ceiling() {
        let mut aimd = Aimd::new(7);
        assert_eq!(aimd.limit(), 7);
        for in_flight in [0, 1, 7, 100] {
            aimd.on_overload(in_flight, Overload::Answered);
            assert!((1..=7).contains(&aimd.limit()));
        }
        assert_eq!(aimd.limit(), 1);
        for _ in 0..10_000 {
            aimd.on_success(100);
            assert!((1..=7).contains(&aimd.limit()));
        }
        assert_eq!(aimd.limit(), 7);
        assert_eq!(Aimd::new(0).limit(), 1);
    }

    #[test]
    fn an_overload_cuts_the_limit_below_what_was_in_flight() {
        let mut aimd = Aimd::new(16);
        aimd.on_overload(16, Overload::Answered);
        assert_eq!(aimd.limit(), 15);
        aimd.on_overload(5, Overload::Answered);
        assert_eq!(aimd.limit(), 4);
        // Never raised by an overload seen with more in flight.
        aimd.on_overload(12, Overload::Answered);
        assert_eq!(aimd.limit(), 4);
    }

    #[test]
    fn growth_next_to_the_level_that_overloaded_is_slow() {
        let mut aimd = Aimd::new(16);
        aimd.on_overload(4, Overload::Answered);
        assert_eq!(aimd.limit(), 3);
        let mut successes = 0;
        while aimd.limit() < 4 {
            aimd.on_success(3);
            successes += 1;
        }
        assert_eq!(successes, PROBE_WINDOWS * 3);
        // Holding the level that overloaded proves it; past it, growth is
        // back to one step per window.
        while aimd.limit() < 5 {
            aimd.on_success(aimd.limit());
        }
        let mut successes = 0;
        while aimd.limit() < 6 {
            aimd.on_success(5);
            successes += 1;
        }
        assert_eq!(successes, 5);
    }

    #[test]
    fn successes_below_the_limit_do_not_grow_it() {
        let mut aimd = Aimd::new(16);
        aimd.on_overload(9, Overload::Answered);
        assert_eq!(aimd.limit(), 8);
        for _ in 0..1_000 {
            aimd.on_success(7);
        }
        assert_eq!(aimd.limit(), 8);
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
