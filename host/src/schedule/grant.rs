//! How much work one batch of a repeater gets: its grant. Every claimed
//! record holds one of the process's in-flight slots until the batch's
//! results are written, so a kill can resend at most `max_inflight` records
//! (ADR 3), however large the batch. A grant is therefore sized before the
//! claim, from the batch size, the free slots, what the lane's last claim
//! found ([`GrantCap`]) and, for rate-limited repeaters and domains, what
//! their pacers allow right now.

use super::pacing::{RatePacer, take_together};
use crate::model::Millis;

/// The smallest cap a lane's grant gets, whatever its last claim found.
pub const MIN_GRANT: u32 = 4;

/// A lane's cap on the records of its next batch: none before its first
/// claim, then twice what its last claim found and at least [`MIN_GRANT`].
/// Slots are held from the grant until the claim answers, so a lane that
/// found few records due last time gets a grant near that, and slots do not
/// sit idle under claims that will give most of them back; doubling lets a
/// lane whose backlog grows reach the batch size in a few batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantCap(u32);

impl Default for GrantCap {
    fn default() -> GrantCap {
        GrantCap(u32::MAX)
    }
}

impl GrantCap {
    /// The cap after a claim that found `claimed` records.
    pub fn after_claim(claimed: u32) -> GrantCap {
        GrantCap(claimed.saturating_mul(2).max(MIN_GRANT))
    }

    /// The most records the cap allows.
    pub fn records(self) -> u32 {
        self.0
    }
}

/// What bounds one batch of a lane when it is handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantBounds {
    /// Most records claimed per batch (`dispatch.batch_size`).
    pub batch_size: u32,
    /// In-flight slots free in the process; at least one when a batch is
    /// handed out.
    pub free_slots: u32,
    /// The lane's cap from its last claim.
    pub cap: GrantCap,
    /// The lane's current concurrency limit (AIMD).
    pub concurrency: u32,
}

/// What one batch may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Most records to claim; each holds an in-flight slot.
    pub records: u32,
    /// Most requests open at once.
    pub concurrency: u32,
}

/// Sizes a lane's next batch. A paced repeater or domain gets as many
/// records as its pacers allow now, never more than its concurrency or
/// either pacer's burst at once (so requests never bunch above the
/// configured burst), and at least one; what is granted is taken from both
/// pacers. `None`, with nothing taken, when the pacers allow not even one:
/// the lane's turn is skipped.
pub fn size_grant(
    bounds: GrantBounds,
    repeater: Option<&mut RatePacer>,
    domain: Option<&mut RatePacer>,
    now: Millis,
) -> Option<Grant> {
    let mut records = bounds
        .batch_size
        .max(1)
        .min(bounds.free_slots)
        .min(bounds.cap.records());
    records = whole_waves(records, bounds.concurrency);
    if repeater.is_some() || domain.is_some() {
        let mut want = records.min(bounds.concurrency.max(1));
        for pacer in [repeater.as_deref(), domain.as_deref()]
            .into_iter()
            .flatten()
        {
            want = want.min(pacer.burst());
        }
        records = take_together(repeater, domain, now, want)?;
    }
    Some(Grant {
        records,
        concurrency: bounds.concurrency.min(records).max(1),
    })
}

/// `records` cut down to a whole number of waves of `limit` requests when
/// that leaves at least two (ADR 29). A batch's requests go out in waves:
/// its last one, when partly filled, holds the batch open for a whole
/// answer's time while the rest of the lane's limit idles. Against a
/// receiver taking 200 ms, batches of 50 at a limit of 16 are four waves
/// for 50 records where three carry 48. With fewer than two whole waves
/// the cut would take up to half of the batch, and every batch costs a
/// claim and a write of its results, so the batch is kept.
fn whole_waves(records: u32, limit: u32) -> u32 {
    let limit = limit.max(1);
    match records / limit {
        waves if waves >= 2 => waves * limit,
        _ => records,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(batch_size: u32, free_slots: u32, cap: GrantCap, concurrency: u32) -> GrantBounds {
        GrantBounds {
            batch_size,
            free_slots,
            cap,
            concurrency,
        }
    }

    #[test]
    fn an_unpaced_grant_is_the_least_of_batch_size_free_slots_and_cap() {
        let first = GrantCap::default();
        let grant = size_grant(bounds(50, 256, first, 30), None, None, 0).unwrap();
        assert_eq!(
            grant,
            Grant {
                records: 50,
                concurrency: 30
            }
        );
        let grant = size_grant(bounds(50, 3, first, 7), None, None, 0).unwrap();
        assert_eq!(
            grant,
            Grant {
                records: 3,
                concurrency: 3
            }
        );
        let cap = GrantCap::after_claim(5);
        let grant = size_grant(bounds(50, 256, cap, 7), None, None, 0).unwrap();
        assert_eq!(
            grant,
            Grant {
                records: 10,
                concurrency: 7
            }
        );
    }

    #[test]
    fn a_grant_of_two_waves_or_more_is_cut_to_whole_waves() {
        let first = GrantCap::default();
        let records = |batch, slots, limit| {
            size_grant(bounds(batch, slots, first, limit), None, None, 0)
                .unwrap()
                .records
        };
        // Seven waves of 7 instead of eight with one request in the last.
        assert_eq!(records(50, 256, 7), 49);
        assert_eq!(records(50, 256, 16), 48);
        assert_eq!(records(50, 256, 25), 50);
        // Fewer than two whole waves: the batch is kept.
        assert_eq!(records(50, 256, 26), 50);
        assert_eq!(records(50, 256, 64), 50);
        // Free slots bound the batch first; the waves are cut from what is left.
        assert_eq!(records(50, 37, 7), 35);
        assert_eq!(records(50, 13, 7), 13);
    }

    #[test]
    fn the_cap_doubles_the_last_claim_and_never_falls_below_the_minimum() {
        assert_eq!(GrantCap::default().records(), u32::MAX);
        assert_eq!(GrantCap::after_claim(0).records(), MIN_GRANT);
        assert_eq!(GrantCap::after_claim(1).records(), MIN_GRANT);
        assert_eq!(GrantCap::after_claim(20).records(), 40);
        assert_eq!(GrantCap::after_claim(u32::MAX).records(), u32::MAX);
    }

    #[test]
    fn a_paced_grant_takes_what_the_pacer_allows_up_to_its_burst() {
        let mut pacer = RatePacer::new(10.0, 5);
        let at = bounds(50, 256, GrantCap::default(), 7);
        let grant = size_grant(at, Some(&mut pacer), None, 0).unwrap();
        assert_eq!(
            grant,
            Grant {
                records: 5,
                concurrency: 5
            }
        );
        // The burst is spent: nothing until the next interval, nothing taken.
        assert_eq!(size_grant(at, Some(&mut pacer), None, 0), None);
        assert_eq!(size_grant(at, Some(&mut pacer), None, 99), None);
        let grant = size_grant(at, Some(&mut pacer), None, 100).unwrap();
        assert_eq!(grant.records, 1);
    }

    #[test]
    fn a_paced_grant_is_held_to_the_lanes_concurrency() {
        let mut pacer = RatePacer::new(1_000.0, 100);
        let grant = size_grant(
            bounds(50, 256, GrantCap::default(), 3),
            Some(&mut pacer),
            None,
            0,
        );
        assert_eq!(
            grant,
            Some(Grant {
                records: 3,
                concurrency: 3
            })
        );
    }

    #[test]
    fn the_domains_pacer_bounds_a_grant_and_is_charged_with_it() {
        let mut repeater = RatePacer::new(100.0, 20);
        let mut domain = RatePacer::new(10.0, 4);
        let at = bounds(50, 256, GrantCap::default(), 50);
        let grant = size_grant(at, Some(&mut repeater), Some(&mut domain), 0).unwrap();
        assert_eq!(grant.records, 4);
        // The domain is spent; the repeater's own pacer still has room but
        // was charged only the four granted.
        assert_eq!(size_grant(at, None, Some(&mut domain), 0), None);
        assert_eq!(
            size_grant(at, Some(&mut repeater), None, 0)
                .unwrap()
                .records,
            16
        );
    }
}
