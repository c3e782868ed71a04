//! Fair choice of the next repeater to run (rules 1 and 7).
//!
//! Deficit round-robin across the domains that have ready work, then
//! round-robin across that domain's ready repeaters: a domain with a
//! thousand ready repeaters gets the same share as a domain with one. The
//! share is counted in records: the caller charges each pick with the
//! records it granted ([`FairQueue::charge`]) and gives back what the claim
//! did not find ([`FairQueue::refund`]), and the next pick goes to the
//! domain served least, turn order breaking ties. Counting picks instead let
//! a domain whose batches happened to be larger (one repeater taking back
//! the slots its own batch had just freed) deliver half as much again as
//! the others. The per-repeater concurrency cap and the batch time budget
//! bound what one pick can cost.
//!
//! The caller says, per candidate, whether it can run now (busy, leased,
//! rate-limited, at its cap, or its whole domain over its rate). A skipped
//! repeater or domain keeps its place in the turn order, so it goes first
//! once it can run again; only the one picked moves to the back.
//!
//! Daemons sharing a database each run this queue over the lanes they
//! hold, so a domain whose repeaters are leased partly by another daemon is
//! served by both, and a domain with one repeater by one. To keep the
//! domains' shares equal across daemons, a pick is charged at the domain's
//! whole size over the part of it ready here ([`FairQueue::set_held_elsewhere`]):
//! a domain with as many repeaters leased elsewhere as ready here costs
//! twice its records, so this daemon gives it half the turns and the other
//! daemon the other half.
//!
//! Heavy repeaters yield: a repeater whose batches exceed the time budget
//! `heavy_after` times in a row is moved to its domain's heavy lane. A heavy
//! repeater runs when no light repeater of its domain can, or once every
//! `heavy_share_rounds` full rounds of the light ones, so it never starves.
//!
//! With a thousand domains the queue is asked for a pick, charged, refunded
//! and told of a finished lane hundreds of times a second, so none of these
//! walks every domain: domains sit in an ordered index by (records served,
//! turn), and each repeater's domain is looked up by its id. A pick walks
//! that index only as far as the first domain with a repeater that can run.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use crate::model::ReadyRepeater;

/// The caller's answer about one candidate in [`FairQueue::next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eligibility {
    /// Run this repeater now.
    Run,
    /// Skip this repeater this time; it keeps its place.
    Skip,
    /// Skip this repeater's whole domain this time (for example, the domain
    /// is over its rate); no other repeater of the domain is asked about.
    SkipDomain,
}

impl From<bool> for Eligibility {
    fn from(run: bool) -> Eligibility {
        if run {
            Eligibility::Run
        } else {
            Eligibility::Skip
        }
    }
}

/// One domain's ready repeaters in turn order.
#[derive(Debug, Clone)]
struct DomainLane {
    light: VecDeque<ReadyRepeater>,
    heavy: VecDeque<ReadyRepeater>,
    /// Light picks since a heavy repeater last ran.
    light_picks: usize,
    /// Records charged to the domain while it has been in the ready set.
    served: u64,
    /// The domain's place in the turn order: higher went later.
    turn: u64,
}

/// How far, in records, a domain may fall behind the one served most and
/// still catch up in full: a domain that could not run for a while (its
/// only repeater busy, rate-limited, leased elsewhere) then takes at most
/// this many records ahead of the others before sharing again.
pub const MAX_CREDIT: u64 = 2_048;

/// Which lane of a domain a candidate sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Light,
    Heavy,
}

impl DomainLane {
    fn new(served: u64, turn: u64) -> DomainLane {
        DomainLane {
            light: VecDeque::new(),
            heavy: VecDeque::new(),
            light_picks: 0,
            served,
            turn,
        }
    }

    fn lane(&mut self, lane: Lane) -> &mut VecDeque<ReadyRepeater> {
        match lane {
            Lane::Light => &mut self.light,
            Lane::Heavy => &mut self.heavy,
        }
    }

    fn is_empty(&self) -> bool {
        self.light.is_empty() && self.heavy.is_empty()
    }

    fn len(&self) -> usize {
        self.light.len() + self.heavy.len()
    }

    /// The domain's key in the pick order.
    fn key(&self) -> (u64, u64) {
        (self.served, self.turn)
    }
}

/// The outcome of asking a domain for a candidate.
enum DomainPick {
    Found(Lane, usize),
    None,
}

/// Chooses the next repeater to run, fairly across domains and within each
/// domain. Holds the ready set (refreshed from the store with
/// [`FairQueue::set_ready`]) and the turn order.
#[derive(Debug, Clone)]
pub struct FairQueue {
    /// Domains with ready repeaters.
    lanes: HashMap<Arc<str>, DomainLane>,
    /// The same domains by (records served, turn): the order picks look at
    /// them in, least served first and the one that has waited longest
    /// among equals.
    order: BTreeMap<(u64, u64), Arc<str>>,
    /// The domain of every repeater in the ready set.
    domain_of: HashMap<i64, Arc<str>>,
    /// The turn the next domain sent to the back gets.
    next_turn: u64,
    /// Consecutive over-budget batches per repeater id (only non-zero kept).
    over_budget_streaks: HashMap<i64, u32>,
    heavy_after: u32,
    heavy_share_rounds: usize,
    /// Per domain, its repeaters leased by other daemons.
    held_elsewhere: HashMap<String, u64>,
}

impl Default for FairQueue {
    fn default() -> FairQueue {
        FairQueue::new()
    }
}

impl FairQueue {
    /// An empty queue: a repeater turns heavy after 3 over-budget batches in
    /// a row and then runs once per 2 rounds of its domain's light repeaters.
    pub fn new() -> FairQueue {
        FairQueue::with_heavy_policy(3, 2)
    }

    /// An empty queue with an explicit heavy-repeater policy: heavy after
    /// `heavy_after` consecutive over-budget batches (at least 1), then one
    /// turn per `heavy_share_rounds` full rounds of the light repeaters (at
    /// least 1).
    pub fn with_heavy_policy(heavy_after: u32, heavy_share_rounds: usize) -> FairQueue {
        FairQueue {
            lanes: HashMap::new(),
            order: BTreeMap::new(),
            domain_of: HashMap::new(),
            next_turn: 0,
            over_budget_streaks: HashMap::new(),
            heavy_after: heavy_after.max(1),
            heavy_share_rounds: heavy_share_rounds.max(1),
            held_elsewhere: HashMap::new(),
        }
    }

    /// Replaces the count, per domain, of repeaters other daemons lease
    /// (domains left out have none). From then on a pick of such a domain
    /// is charged at its records × (ready here + leased elsewhere) ÷ ready
    /// here.
    pub fn set_held_elsewhere(&mut self, held: impl IntoIterator<Item = (String, u64)>) {
        self.held_elsewhere = held.into_iter().filter(|(_, count)| *count > 0).collect();
    }

    /// A turn later than every turn given so far.
    fn take_turn(&mut self) -> u64 {
        self.next_turn += 1;
        self.next_turn
    }

    /// The least records any domain in the ready set has been served.
    fn least_served(&self) -> u64 {
        self.order.keys().next().map_or(0, |&(served, _)| served)
    }

    /// Moves `domain` to `served` records and turn `turn` in the pick order.
    fn reorder(&mut self, domain: &str, served: u64, turn: u64) {
        let Some(lane) = self.lanes.get_mut(domain) else {
            return;
        };
        let Some(name) = self.order.remove(&lane.key()) else {
            return;
        };
        lane.served = served;
        lane.turn = turn;
        self.order.insert(lane.key(), name);
    }

    /// What `records` of `domain` count against its share here: the
    /// records themselves, or for a domain with repeaters leased elsewhere
    /// records × (ready here + elsewhere) ÷ ready here; with the domain's
    /// served records and turn.
    fn cost_of(&self, domain: &str, records: u32) -> Option<(u64, u64, u64)> {
        let records = u64::from(records);
        let lane = self.lanes.get(domain)?;
        let cost = match self.held_elsewhere.get(domain) {
            Some(&elsewhere) => {
                let here = lane.len().max(1) as u64;
                (records * (here + elsewhere)).div_ceil(here)
            }
            None => records,
        };
        Some((cost, lane.served, lane.turn))
    }

    /// The lane of `domain`, added at the back of the turn order level
    /// with the least served domain if it is new to the ready set: no
    /// credit for the time it had nothing to send.
    fn lane_or_join(&mut self, domain: &str) -> (&mut DomainLane, Arc<str>) {
        let least = self.least_served();
        let name = (self.lanes.get_key_value(domain))
            .map_or_else(|| Arc::from(domain), |(name, _)| name.clone());
        let (order, next_turn) = (&mut self.order, &mut self.next_turn);
        let lane = self.lanes.entry(name.clone()).or_insert_with(|| {
            *next_turn += 1;
            let lane = DomainLane::new(least, *next_turn);
            order.insert(lane.key(), name.clone());
            lane
        });
        (lane, name)
    }

    /// Replaces the ready set with `ready` (as read from the store). Domains
    /// and repeaters that stay keep their place in the turn order; new ones
    /// join at the back in the order given; missing ones are dropped.
    /// Duplicate ids are kept once.
    pub fn set_ready(&mut self, ready: &[ReadyRepeater]) {
        let mut fresh: HashMap<&str, HashMap<i64, &ReadyRepeater>> = HashMap::new();
        let mut domain_order: Vec<&str> = Vec::new();
        let mut arrivals: Vec<&ReadyRepeater> = Vec::new();
        for repeater in ready {
            let domain = repeater.domain.as_str();
            let ids = fresh.entry(domain).or_insert_with(|| {
                domain_order.push(domain);
                HashMap::new()
            });
            if let Entry::Vacant(slot) = ids.entry(repeater.id) {
                slot.insert(repeater);
                arrivals.push(repeater);
            }
        }

        // Domains that stay keep their lanes, with the repeaters that stay
        // in their places (the store's copy wins: a rename keeps the id).
        self.lanes.retain(|domain, _| fresh.contains_key(&**domain));
        self.order.retain(|_, domain| fresh.contains_key(&**domain));
        self.domain_of.clear();
        for (domain, lane) in &mut self.lanes {
            let ids = &fresh[&**domain];
            for queue in [&mut lane.light, &mut lane.heavy] {
                queue.retain_mut(|r| match ids.get(&r.id) {
                    Some(new) => {
                        // Unchanged in nearly every read: cloning them
                        // anyway cost two allocations per ready repeater.
                        if r != *new {
                            *r = (*new).clone();
                        }
                        self.domain_of.insert(r.id, domain.clone());
                        true
                    }
                    None => false,
                });
            }
        }
        // The new domains join in the order given; the new repeaters join
        // the back of their domain's lane in that order too.
        for domain in domain_order {
            self.lane_or_join(domain);
        }
        for repeater in arrivals {
            if !self.domain_of.contains_key(&repeater.id) {
                self.push_repeater(repeater);
            }
        }
        self.drop_empty_domains();
    }

    /// Puts `repeater` at the back of its domain's lane (light or heavy).
    fn push_repeater(&mut self, repeater: &ReadyRepeater) {
        let heavy = self.is_heavy(repeater.id);
        let (lane, name) = self.lane_or_join(&repeater.domain);
        lane.lane(if heavy { Lane::Heavy } else { Lane::Light })
            .push_back(repeater.clone());
        self.domain_of.insert(repeater.id, name);
    }

    /// Drops domains left without repeaters from the ready set.
    fn drop_empty_domains(&mut self) {
        let empty: Vec<(u64, u64)> = (self.lanes.values())
            .filter(|lane| lane.is_empty())
            .map(DomainLane::key)
            .collect();
        for key in empty {
            if let Some(domain) = self.order.remove(&key) {
                self.lanes.remove(&domain);
            }
        }
    }

    /// Adds `ready` repeaters (found ready in a few domains) to the ready
    /// set, keeping everything already in it and its turn order. Those not
    /// yet in the set join the back of their domain's lane; a domain new to
    /// the set joins at the back, level with the least served one, as in
    /// [`FairQueue::set_ready`].
    pub fn add_ready(&mut self, ready: &[ReadyRepeater]) {
        for repeater in ready {
            match self.domain_of.get(&repeater.id) {
                Some(domain) if **domain == *repeater.domain => {}
                // Moved to another domain since it was queued.
                Some(_) => {
                    self.remove(repeater.id);
                    self.push_repeater(repeater);
                }
                None => self.push_repeater(repeater),
            }
        }
    }

    /// Picks the next repeater to run: of the domains with a repeater the
    /// caller accepts, the one served least (the first in turn order among
    /// equals), and within it the first accepted repeater in turn order.
    /// The picked repeater and its domain move to the back; everything
    /// skipped keeps its place. Charge the pick with [`FairQueue::charge`].
    /// The repeater stays in the ready set until [`FairQueue::remove`] or
    /// the next [`FairQueue::set_ready`]; report it busy through `eligible`
    /// meanwhile.
    ///
    /// `eligible` may return a `bool` or an [`Eligibility`].
    pub fn next<R: Into<Eligibility>>(
        &mut self,
        mut eligible: impl FnMut(&ReadyRepeater) -> R,
    ) -> Option<ReadyRepeater> {
        let mut found = None;
        for domain in self.order.values() {
            let Some(lane) = self.lanes.get_mut(&**domain) else {
                continue;
            };
            let DomainPick::Found(which, index) =
                Self::pick_in_domain(lane, self.heavy_share_rounds, &mut eligible)
            else {
                continue;
            };
            let queue = lane.lane(which);
            let picked = queue.remove(index)?;
            queue.push_back(picked.clone());
            match which {
                Lane::Light => lane.light_picks += 1,
                Lane::Heavy => lane.light_picks = 0,
            }
            found = Some((domain.clone(), lane.served, picked));
            break;
        }
        let (domain, served, picked) = found?;
        let turn = self.take_turn();
        self.reorder(&domain, served, turn);
        Some(picked)
    }

    /// Charges `records` to `domain`, the grant of the batch just picked
    /// from it. A domain more than [`MAX_CREDIT`] records behind the most
    /// served one is first brought up to that distance.
    pub fn charge(&mut self, domain: &str, records: u32) {
        let most = self.order.keys().next_back().map(|&(served, _)| served);
        let Some((cost, served, turn)) = self.cost_of(domain, records) else {
            return;
        };
        let floor = most.unwrap_or(0).saturating_sub(MAX_CREDIT);
        self.reorder(domain, served.max(floor) + cost, turn);
    }

    /// Gives `records` back to `domain`: the part of a charged grant that
    /// its claim did not find.
    pub fn refund(&mut self, domain: &str, records: u32) {
        if let Some((cost, served, turn)) = self.cost_of(domain, records) {
            self.reorder(domain, served.saturating_sub(cost), turn);
        }
    }

    fn pick_in_domain<R: Into<Eligibility>>(
        lane: &DomainLane,
        heavy_share_rounds: usize,
        eligible: &mut impl FnMut(&ReadyRepeater) -> R,
    ) -> DomainPick {
        let heavy_due = !lane.heavy.is_empty()
            && lane.light_picks >= lane.light.len().saturating_mul(heavy_share_rounds);
        let order = if heavy_due {
            [Lane::Heavy, Lane::Light]
        } else {
            [Lane::Light, Lane::Heavy]
        };
        for which in order {
            let queue = match which {
                Lane::Light => &lane.light,
                Lane::Heavy => &lane.heavy,
            };
            for (index, repeater) in queue.iter().enumerate() {
                match eligible(repeater).into() {
                    Eligibility::Run => return DomainPick::Found(which, index),
                    Eligibility::Skip => {}
                    Eligibility::SkipDomain => return DomainPick::None,
                }
            }
        }
        DomainPick::None
    }

    /// Drops a repeater from the ready set (its claim came back empty, it was
    /// paused or deleted). Its domain keeps its place if it has others.
    pub fn remove(&mut self, repeater_id: i64) -> Option<ReadyRepeater> {
        let domain = self.domain_of.remove(&repeater_id)?;
        let lane = self.lanes.get_mut(&domain)?;
        let mut removed = None;
        for which in [Lane::Light, Lane::Heavy] {
            let queue = lane.lane(which);
            if let Some(index) = queue.iter().position(|r| r.id == repeater_id) {
                removed = queue.remove(index);
                break;
            }
        }
        if lane.is_empty() {
            let key = lane.key();
            self.order.remove(&key);
            self.lanes.remove(&domain);
        }
        removed
    }

    /// Reports how long a repeater's batch took against the batch time
    /// budget. `heavy_after` over-budget batches in a row make it heavy; one
    /// batch within budget makes it light again.
    pub fn record_batch(&mut self, repeater_id: i64, over_budget: bool) {
        let was_heavy = self.is_heavy(repeater_id);
        if over_budget {
            *self.over_budget_streaks.entry(repeater_id).or_insert(0) += 1;
        } else {
            self.over_budget_streaks.remove(&repeater_id);
        }
        let heavy = self.is_heavy(repeater_id);
        if heavy == was_heavy {
            return;
        }
        let (from, to) = if heavy {
            (Lane::Light, Lane::Heavy)
        } else {
            (Lane::Heavy, Lane::Light)
        };
        let Some(lane) = (self.domain_of.get(&repeater_id)).and_then(|d| self.lanes.get_mut(d))
        else {
            return;
        };
        if let Some(index) = lane.lane(from).iter().position(|r| r.id == repeater_id)
            && let Some(repeater) = lane.lane(from).remove(index)
        {
            // A repeater turning heavy goes behind everyone; one turning
            // light joins the back of the light round.
            lane.lane(to).push_back(repeater);
        }
    }

    /// True when the repeater currently yields to its domain's others.
    pub fn is_heavy(&self, repeater_id: i64) -> bool {
        self.over_budget_streaks
            .get(&repeater_id)
            .is_some_and(|streak| *streak >= self.heavy_after)
    }

    /// Ready repeaters held.
    pub fn len(&self) -> usize {
        self.domain_of.len()
    }

    /// True when no repeater is ready.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Domains with ready repeaters, in turn order.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        let mut domains: Vec<(u64, &str)> = (self.lanes.iter())
            .map(|(domain, lane)| (lane.turn, &**domain))
            .collect();
        domains.sort_unstable();
        domains.into_iter().map(|(_, domain)| domain)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn repeater(id: i64, domain: &str) -> ReadyRepeater {
        ReadyRepeater {
            id,
            domain: domain.to_owned(),
            name: format!("r{id}"),
        }
    }

    fn jain(xs: &[f64]) -> f64 {
        let sum: f64 = xs.iter().sum();
        let sum_sq: f64 = xs.iter().map(|x| x * x).sum();
        sum * sum / (xs.len() as f64 * sum_sq)
    }

    #[test]
    fn a_domain_with_a_thousand_repeaters_gets_the_share_of_a_domain_with_one() {
        let mut ready: Vec<ReadyRepeater> = (0..1000).map(|i| repeater(i, "big")).collect();
        ready.push(repeater(5000, "small"));
        let mut queue = FairQueue::new();
        queue.set_ready(&ready);
        let mut per_domain: HashMap<String, u32> = HashMap::new();
        let mut per_repeater: HashMap<i64, u32> = HashMap::new();
        for _ in 0..10_000 {
            let picked = queue.next(|_| true).expect("work is ready");
            *per_domain.entry(picked.domain).or_default() += 1;
            *per_repeater.entry(picked.id).or_default() += 1;
        }
        assert_eq!(per_domain["big"], 5000);
        assert_eq!(per_domain["small"], 5000);
        // Within the big domain, plain round-robin: five turns each.
        assert!((0..1000).all(|id| per_repeater[&id] == 5));
    }

    #[test]
    fn jains_index_over_twenty_backlogged_domains_is_near_one() {
        let mut rng = StdRng::seed_from_u64(2026);
        let mut ready = Vec::new();
        let mut id = 0;
        for d in 0..20 {
            // Sizes from 1 to several hundred repeaters per domain.
            let size = if d % 5 == 0 {
                1
            } else {
                rng.random_range(2..400)
            };
            for _ in 0..size {
                ready.push(repeater(id, &format!("d{d}")));
                id += 1;
            }
        }
        let mut queue = FairQueue::new();
        queue.set_ready(&ready);
        // Eight workers; a picked repeater is busy for 1..=6 ticks.
        let mut busy_until: HashMap<i64, u64> = HashMap::new();
        let mut picks: HashMap<String, f64> = HashMap::new();
        for tick in 0..20_000u64 {
            let running = busy_until.values().filter(|&&t| t > tick).count();
            for _ in running..8 {
                let Some(picked) = queue.next(|r| busy_until.get(&r.id).is_none_or(|&t| t <= tick))
                else {
                    break;
                };
                busy_until.insert(picked.id, tick + rng.random_range(1..=6));
                *picks.entry(picked.domain).or_default() += 1.0;
            }
        }
        assert_eq!(picks.len(), 20);
        let counts: Vec<f64> = picks.values().copied().collect();
        let index = jain(&counts);
        assert!(index >= 0.99, "Jain's index {index}: {picks:?}");
    }

    #[test]
    fn shares_are_counted_in_records_not_in_batches() {
        // The shape the fairness benchmark showed: the one-repeater domain's
        // batches carried 36 records, the five-repeater domain's 22.
        let mut ready = vec![repeater(0, "one")];
        ready.extend((1..=5).map(|id| repeater(id, "five")));
        let mut queue = FairQueue::new();
        queue.set_ready(&ready);
        let mut records: HashMap<String, u64> = HashMap::new();
        for _ in 0..1_000 {
            let picked = queue.next(|_| true).expect("work is ready");
            let batch = if picked.domain == "one" { 36 } else { 22 };
            queue.charge(&picked.domain, batch);
            *records.entry(picked.domain).or_default() += u64::from(batch);
        }
        let (one, five) = (records["one"], records["five"]);
        assert!(one.abs_diff(five) <= 36, "one {one}, five {five}");
    }

    #[test]
    fn two_daemons_sharing_domains_serve_each_domain_equally() {
        // "one" and "two" have a repeater each, leased by daemon A and
        // daemon B; "split" has four, two leased by each daemon. Each
        // daemon delivers the same number of records. Unweighted, each
        // daemon gives "split" half its turns: twice what "one" and "two"
        // get overall.
        let a_ready = [
            repeater(0, "one"),
            repeater(1, "split"),
            repeater(2, "split"),
        ];
        let b_ready = [
            repeater(3, "two"),
            repeater(4, "split"),
            repeater(5, "split"),
        ];
        let serve =
            |ready: &[ReadyRepeater], elsewhere: u64, records: &mut HashMap<String, u64>| {
                let mut queue = FairQueue::new();
                queue.set_ready(ready);
                queue.set_held_elsewhere([("split".to_owned(), elsewhere)]);
                for _ in 0..3_000 {
                    let picked = queue.next(|_| true).expect("work is ready");
                    queue.charge(&picked.domain, 10);
                    *records.entry(picked.domain).or_default() += 10;
                }
            };
        let mut weighted = HashMap::new();
        serve(&a_ready, 2, &mut weighted);
        serve(&b_ready, 2, &mut weighted);
        for domain in ["one", "two"] {
            assert!(
                weighted[domain].abs_diff(weighted["split"]) <= 20,
                "{weighted:?}"
            );
        }
        // The same without the counts of leases elsewhere: 1 : 1 : 2.
        let mut unweighted = HashMap::new();
        serve(&a_ready, 0, &mut unweighted);
        serve(&b_ready, 0, &mut unweighted);
        assert_eq!(unweighted["split"], 2 * unweighted["one"], "{unweighted:?}");
    }

    #[test]
    fn a_refund_gives_back_what_a_claim_did_not_find() {
        let mut queue = FairQueue::new();
        queue.set_ready(&[repeater(1, "a"), repeater(2, "b")]);
        assert_eq!(queue.next(|_| true).unwrap().domain, "a");
        queue.charge("a", 50);
        assert_eq!(queue.next(|_| true).unwrap().domain, "b");
        queue.charge("b", 20);
        // a found only 5 of its 50: it is now behind b and goes first.
        queue.refund("a", 45);
        assert_eq!(queue.next(|_| true).unwrap().domain, "a");
    }

    #[test]
    fn a_domain_that_could_not_run_catches_up_by_at_most_the_credit() {
        let mut queue = FairQueue::new();
        queue.set_ready(&[repeater(1, "idle"), repeater(2, "busy")]);
        // "idle" cannot run while "busy" is served 100 batches of 50.
        for _ in 0..100 {
            let picked = queue.next(|r| r.domain == "busy").unwrap();
            queue.charge(&picked.domain, 50);
        }
        // Without the bound it would take 100 batches in a row.
        let mut in_a_row: u64 = 0;
        while queue.next(|_| true).unwrap().domain == "idle" {
            queue.charge("idle", 50);
            in_a_row += 1;
        }
        let credit = MAX_CREDIT / 50;
        assert!(
            (credit..=credit + 2).contains(&in_a_row),
            "{in_a_row} batches in a row"
        );
    }

    #[test]
    fn a_domain_joining_the_ready_set_gets_no_credit_for_its_absence() {
        let mut queue = FairQueue::new();
        queue.set_ready(&[repeater(1, "old")]);
        for _ in 0..10 {
            queue.next(|_| true).unwrap();
            queue.charge("old", 50);
        }
        queue.set_ready(&[repeater(1, "old"), repeater(2, "new")]);
        let mut picks = Vec::new();
        for _ in 0..6 {
            let picked = queue.next(|_| true).unwrap();
            queue.charge(&picked.domain, 50);
            picks.push(picked.domain);
        }
        assert_eq!(picks, ["old", "new", "old", "new", "old", "new"]);
    }

    #[test]
    fn skipped_domains_and_repeaters_keep_their_turn() {
        let mut queue = FairQueue::new();
        queue.set_ready(&[
            repeater(1, "a"),
            repeater(2, "b"),
            repeater(3, "c"),
            repeater(4, "a"),
        ]);
        // Domain a is over its rate: b goes, a keeps the front.
        let mut asked = Vec::new();
        let picked = queue.next(|r| {
            asked.push(r.id);
            if r.domain == "a" {
                Eligibility::SkipDomain
            } else {
                Eligibility::Run
            }
        });
        assert_eq!(picked.map(|r| r.id), Some(2));
        assert_eq!(asked, [1, 2], "a skipped domain is not asked about twice");
        // Repeater 1 is busy: 4 runs, and a moves to the back behind c.
        assert_eq!(queue.next(|r| r.id != 1).map(|r| r.id), Some(4));
        assert_eq!(queue.domains().collect::<Vec<_>>(), ["c", "b", "a"]);
        // Repeater 1 skipped earlier still goes before 4 in a's next turn.
        assert_eq!(queue.next(|_| true).map(|r| r.id), Some(3));
        assert_eq!(queue.next(|_| true).map(|r| r.id), Some(2));
        assert_eq!(queue.next(|_| true).map(|r| r.id), Some(1));
        assert_eq!(queue.next(|_| false), None);
    }

    #[test]
    fn refreshing_the_ready_set_keeps_positions_of_those_that_stay() {
        let mut queue = FairQueue::new();
        queue.set_ready(&[repeater(1, "a"), repeater(2, "b"), repeater(3, "c")]);
        assert_eq!(queue.next(|_| true).map(|r| r.id), Some(1));
        // b leaves, d arrives, a gets a second repeater.
        queue.set_ready(&[
            repeater(4, "d"),
            repeater(1, "a"),
            repeater(3, "c"),
            repeater(5, "a"),
            repeater(3, "c"),
        ]);
        assert_eq!(queue.len(), 4);
        assert_eq!(queue.domains().collect::<Vec<_>>(), ["c", "a", "d"]);
        let order: Vec<i64> = (0..4)
            .filter_map(|_| queue.next(|_| true))
            .map(|r| r.id)
            .collect();
        // Repeater 1 was alone in a's lane; 5 joins behind it.
        assert_eq!(order, [3, 1, 4, 3]);
        assert_eq!(queue.remove(3).map(|r| r.id), Some(3));
        assert_eq!(queue.remove(3), None);
        assert_eq!(queue.domains().collect::<Vec<_>>(), ["a", "d"]);
        queue.set_ready(&[]);
        assert!(queue.is_empty());
    }

    #[test]
    fn adding_ready_repeaters_keeps_the_set_and_its_turns() {
        let mut queue = FairQueue::new();
        queue.set_ready(&[repeater(1, "a"), repeater(2, "b")]);
        assert_eq!(queue.next(|_| true).map(|r| r.id), Some(1));
        queue.charge("a", 100);
        queue.charge("b", 40);
        // a gets a second repeater, b's repeater is found again, c is new.
        queue.add_ready(&[repeater(3, "a"), repeater(2, "b"), repeater(4, "c")]);
        assert_eq!(queue.len(), 4);
        assert_eq!(queue.domains().collect::<Vec<_>>(), ["b", "a", "c"]);
        // c joins level with b, the least served, and goes after it: b is
        // first in turn order among equals.
        let order: Vec<i64> = (0..3)
            .filter_map(|_| {
                let picked = queue.next(|_| true)?;
                queue.charge(&picked.domain, 100);
                Some(picked.id)
            })
            .collect();
        assert_eq!(order, [2, 4, 1]);
        // Repeater 1 went last in a's lane when it was picked; 3 joined
        // behind it, so a's next turn is 3's.
        assert_eq!(queue.next(|r| r.domain == "a").map(|r| r.id), Some(3));
    }

    #[test]
    fn heavy_repeaters_yield_but_never_starve() {
        let mut queue = FairQueue::with_heavy_policy(3, 2);
        queue.set_ready(&[
            repeater(1, "a"),
            repeater(2, "a"),
            repeater(3, "a"),
            repeater(4, "a"),
        ]);
        for _ in 0..2 {
            queue.record_batch(1, true);
        }
        assert!(!queue.is_heavy(1), "two slow batches are not yet a habit");
        queue.record_batch(1, true);
        assert!(queue.is_heavy(1));

        let mut picks: HashMap<i64, u32> = HashMap::new();
        let mut since_heavy = 0;
        for _ in 0..7_000 {
            let picked = queue.next(|_| true).unwrap();
            *picks.entry(picked.id).or_default() += 1;
            if picked.id == 1 {
                since_heavy = 0;
            } else {
                since_heavy += 1;
                assert!(since_heavy <= 6, "heavy repeater starved");
            }
        }
        // One heavy turn per two rounds of the three light repeaters.
        assert_eq!(picks[&1], 1000);
        assert_eq!(picks[&2], 2000);

        // When the light ones cannot run, the heavy one does (work-conserving).
        assert_eq!(queue.next(|r| r.id == 1).map(|r| r.id), Some(1));
        // A batch within budget makes it light again; heaviness survives refreshes.
        queue.record_batch(4, true);
        queue.record_batch(4, true);
        queue.record_batch(4, true);
        queue.set_ready(&[repeater(4, "a")]);
        queue.set_ready(&[repeater(4, "a"), repeater(2, "a")]);
        assert!(queue.is_heavy(4));
        assert_eq!(queue.next(|_| true).map(|r| r.id), Some(2));
        queue.record_batch(1, false);
        assert!(!queue.is_heavy(1));
    }

    /// The queue's rules written plainly, walking every domain: what the
    /// indexed queue must agree with.
    #[derive(Default)]
    struct PlainQueue {
        /// (domain, records served, repeaters) in turn order.
        domains: Vec<(String, u64, VecDeque<i64>)>,
    }

    impl PlainQueue {
        fn add(&mut self, id: i64, domain: &str) {
            let least = self.domains.iter().map(|d| d.1).min().unwrap_or(0);
            match self.domains.iter_mut().find(|d| d.0 == domain) {
                Some(lane) if lane.2.contains(&id) => {}
                Some(lane) => lane.2.push_back(id),
                None => (self.domains).push((domain.to_owned(), least, VecDeque::from([id]))),
            }
        }

        fn next(&mut self, eligible: impl Fn(i64) -> bool) -> Option<i64> {
            let mut order: Vec<usize> = (0..self.domains.len()).collect();
            order.sort_by_key(|&index| self.domains[index].1);
            for index in order {
                let lane = &mut self.domains[index].2;
                if let Some(at) = lane.iter().position(|&id| eligible(id)) {
                    let id = lane.remove(at)?;
                    lane.push_back(id);
                    let domain = self.domains.remove(index);
                    self.domains.push(domain);
                    return Some(id);
                }
            }
            None
        }

        fn charge(&mut self, domain: &str, records: u64) {
            let most = self.domains.iter().map(|d| d.1).max().unwrap_or(0);
            if let Some(lane) = self.domains.iter_mut().find(|d| d.0 == domain) {
                lane.1 = lane.1.max(most.saturating_sub(MAX_CREDIT)) + records;
            }
        }

        fn refund(&mut self, domain: &str, records: u64) {
            if let Some(lane) = self.domains.iter_mut().find(|d| d.0 == domain) {
                lane.1 = lane.1.saturating_sub(records);
            }
        }

        fn remove(&mut self, id: i64) {
            for lane in &mut self.domains {
                lane.2.retain(|&other| other != id);
            }
            self.domains.retain(|d| !d.2.is_empty());
        }
    }

    /// One step of the comparison between the two queues.
    #[derive(Debug, Clone)]
    enum Step {
        Pick(u64),
        Charge(u8, u16),
        Refund(u8, u16),
        Remove(i64),
        Add(Vec<i64>),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            4 => any::<u64>().prop_map(Step::Pick),
            3 => (0u8..9, 0u16..3000).prop_map(|(d, n)| Step::Charge(d, n)),
            1 => (0u8..9, 0u16..3000).prop_map(|(d, n)| Step::Refund(d, n)),
            1 => (0i64..60).prop_map(Step::Remove),
            1 => proptest::collection::vec(0i64..60, 1..6).prop_map(Step::Add),
        ]
    }

    /// Repeater `id` belongs to this domain in the comparison.
    fn domain_of(id: i64) -> String {
        format!("d{}", id % 9)
    }

    proptest::proptest! {
        /// Whatever the mix of picks, charges, refunds, removals and
        /// additions, the indexed queue picks what the plain rules pick and
        /// keeps the same domains in the same turn order.
        #[test]
        fn the_indexed_queue_agrees_with_the_plain_rules(
            start in proptest::collection::vec(0i64..60, 0..40),
            steps in proptest::collection::vec(step(), 1..200),
        ) {
            let ready: Vec<ReadyRepeater> =
                start.iter().map(|&id| repeater(id, &domain_of(id))).collect();
            let mut queue = FairQueue::new();
            queue.set_ready(&ready);
            let mut plain = PlainQueue::default();
            for &id in &start {
                plain.add(id, &domain_of(id));
            }
            for step in steps {
                match step {
                    Step::Pick(seed) => {
                        let eligible = |id: i64| {
                            !(id as u64).wrapping_mul(seed | 1).rotate_left(7).is_multiple_of(3)
                        };
                        let picked = queue.next(|r| eligible(r.id)).map(|r| r.id);
                        proptest::prop_assert_eq!(picked, plain.next(eligible));
                    }
                    Step::Charge(d, records) => {
                        queue.charge(&format!("d{d}"), records.into());
                        plain.charge(&format!("d{d}"), records.into());
                    }
                    Step::Refund(d, records) => {
                        queue.refund(&format!("d{d}"), records.into());
                        plain.refund(&format!("d{d}"), records.into());
                    }
                    Step::Remove(id) => {
                        queue.remove(id);
                        plain.remove(id);
                    }
                    Step::Add(ids) => {
                        let added: Vec<ReadyRepeater> =
                            ids.iter().map(|&id| repeater(id, &domain_of(id))).collect();
                        queue.add_ready(&added);
                        for id in ids {
                            plain.add(id, &domain_of(id));
                        }
                    }
                }
                let turns: Vec<&str> = plain.domains.iter().map(|d| d.0.as_str()).collect();
                proptest::prop_assert_eq!(queue.domains().collect::<Vec<_>>(), turns);
                let held: usize = plain.domains.iter().map(|d| d.2.len()).sum();
                proptest::prop_assert_eq!(queue.len(), held);
            }
        }

        /// Whatever else is busy, a repeater that can always run is picked
        /// within one full round: every domain once, and within its own
        /// domain every repeater once.
        #[test]
        fn an_always_eligible_repeater_is_never_starved(
            sizes in proptest::collection::vec(1usize..20, 1..12),
            busy_seed in 0u64..1000,
            target_pick in 0usize..1000,
        ) {
            let mut ready = Vec::new();
            for (d, size) in sizes.iter().enumerate() {
                for _ in 0..*size {
                    let id = ready.len() as i64;
                    ready.push(repeater(id, &format!("d{d}")));
                }
            }
            let target = ready[target_pick % ready.len()].clone();
            let own_domain = ready.iter().filter(|r| r.domain == target.domain).count();
            let bound = sizes.len() * own_domain;
            let mut queue = FairQueue::new();
            queue.set_ready(&ready);
            let mut rng = StdRng::seed_from_u64(busy_seed);
            let mut since = 0;
            for _ in 0..(4 * bound) {
                let busy_draw: Vec<bool> = (0..ready.len()).map(|_| rng.random_bool(0.5)).collect();
                let picked = queue.next(|r| r.id == target.id || !busy_draw[r.id as usize]);
                let picked = picked.expect("the target can always run");
                proptest::prop_assert!(picked.id == target.id || !busy_draw[picked.id as usize]);
                if picked.id == target.id {
                    since = 0;
                } else {
                    since += 1;
                    proptest::prop_assert!(since < bound, "starved for {} picks (bound {})", since, bound);
                }
            }
        }
    }
}
