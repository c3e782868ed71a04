//! One batch of one repeater, run under its lease: claim up to a batch of
//! due records with the repeater's row, pick its plugin, run their attempts
//! within the lane's concurrency limit while a timer renews the lease,
//! judge the results and write them in one `finish_batch` fenced by the
//! lease epoch. The lease is released with the results, or kept for the lane's
//! next batch when the loop asked for that (ADR 5).
//!
//! The batch carries the lane's adaptive concurrency limit while it runs
//! (one batch per lane at a time) and feeds it each answer as it comes,
//! with the number of the batch's requests then in flight: an endpoint that
//! sheds load gets fewer requests from the next attempt on, not from the
//! next batch on (ADR 15).
//!
//! A batch stops starting attempts early when the endpoint, or the
//! repeater's own plugin or credentials, fail a whole window of attempts in
//! a row (so a dead endpoint or a looping plugin costs one window of
//! attempts per backoff step, not one per claimed record) and when the
//! daemon shuts down. Records claimed but not attempted are left as they
//! were: still due, no attempt counted.
//!
//! A lost lease is normal (ADR 2): the results are dropped whole and the new
//! holder sends those records again.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;

use crate::config::EffectiveLimits;
use crate::dispatch::DispatchDeps;
use crate::dispatch::attempt::{AttemptContext, run_attempt};
use crate::dispatch::policy::{self, limits_of};
use crate::model::{
    AttemptOutcome, ClaimedRecord, Millis, ReadyRepeater, RecordOutcome, RecordState,
    RepeaterHealth, now_millis,
};
use crate::plugin::{CallContext, LoadedPlugin, PluginError, RepeaterKey};
use crate::schedule::{Aimd, AttemptReport, JudgePolicy, Overload, Verdict, judge_batch};
use crate::store::{Lease, RepeaterRow, StoreError};

/// What a finished batch tells the scheduler loop.
#[derive(Debug, Clone)]
pub struct BatchDone {
    /// The repeater.
    pub repeater_id: i64,
    /// Global in-flight slots this batch still held when it ended: one per
    /// claimed record, or the whole grant when it claimed nothing. Slots
    /// granted beyond what the claim found were given back through
    /// [`SlotReturn`] as soon as the claim answered.
    pub reserved: u32,
    /// The repeater's limits as of this batch (they follow config reloads).
    pub limits: Option<EffectiveLimits>,
    /// Records the claim found.
    pub claimed: u32,
    /// The claim found every record it asked for and the results were
    /// written with the lane still running (not backed off): the lane may
    /// well have more records due. When false, the loop takes the lane out
    /// of its ready set until it next reads that set from the store.
    pub more_due: bool,
    /// Records attempted.
    pub attempted: usize,
    /// The lane's adaptive concurrency limit as the batch left it.
    pub aimd: Aimd,
    /// True when the batch's results were written.
    pub written: bool,
    /// How long the batch took, lease to write.
    pub elapsed: Duration,
    /// The lease, still held, when the grant asked to keep it and the
    /// results were written under it; the loop reuses it for the lane's
    /// next batch.
    pub lease: Option<Lease>,
    /// The batch never ran: the lease its round asked for went to another
    /// holder (or the store refused the write). The loop skips the lane
    /// until it next reads the ready set.
    pub refused: bool,
    /// When the written results make the lane ready again by themselves:
    /// the end of the backoff they set, or else their earliest retry. The
    /// loop reads the lane's domain then, instead of reading every
    /// repeater often enough to come across it.
    pub due_again: Option<Millis>,
}

impl BatchDone {
    /// A batch that never ran for want of its lease: all `reserved` slots
    /// go back, and the lane's limit is as it was.
    pub fn refused(repeater_id: i64, reserved: u32, aimd: Aimd) -> BatchDone {
        BatchDone {
            refused: true,
            ..BatchDone::nothing_yet(repeater_id, reserved, aimd)
        }
    }

    /// A batch that has done nothing yet, holding `reserved` slots.
    fn nothing_yet(repeater_id: i64, reserved: u32, aimd: Aimd) -> BatchDone {
        BatchDone {
            repeater_id,
            reserved,
            limits: None,
            claimed: 0,
            more_due: false,
            attempted: 0,
            aimd,
            written: false,
            elapsed: Duration::ZERO,
            lease: None,
            refused: false,
            due_again: None,
        }
    }
}

/// Gives in-flight slots back to the scheduler loop before a batch ends.
/// A grant is sized before the claim, from `batch_size` and the free slots;
/// a lane with fewer records due would otherwise keep the slots of records
/// it never claimed until its last attempt, and starve the other ready
/// repeaters of slots.
#[derive(Debug, Clone)]
pub struct SlotReturn(tokio::sync::mpsc::UnboundedSender<u32>);

impl SlotReturn {
    /// A handle that sends returned slot counts to `to`.
    pub fn new(to: tokio::sync::mpsc::UnboundedSender<u32>) -> Self {
        Self(to)
    }

    fn give_back(&self, slots: u32) {
        // The loop has stopped listening only when it is shutting down,
        // and then the count no longer matters.
        let _ = self.0.send(slots);
    }
}

/// How much work one batch may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchGrant {
    /// Most records to claim; the batch holds one global slot for each.
    pub records: u32,
    /// Requests open at once as the batch starts: the lane's limit then.
    /// The batch follows the limit as its answers move it; this many
    /// failures in a row still make a window of probes.
    pub concurrency: u32,
    /// Keep the lease after writing the results instead of releasing it.
    pub keep_lease: bool,
}

/// Runs one batch of `repeater` under `lease` within `grant`. Never panics
/// on bad input; store errors are logged. Stops starting attempts once
/// `shutdown` turns true.
pub async fn run_batch(
    deps: Arc<DispatchDeps>,
    repeater: ReadyRepeater,
    lease: Lease,
    grant: BatchGrant,
    aimd: Aimd,
    slots: SlotReturn,
    shutdown: watch::Receiver<bool>,
) -> BatchDone {
    let mut done = BatchDone::nothing_yet(repeater.id, grant.records, aimd);
    let clock = std::time::Instant::now();
    run_lane(&deps, &repeater, &lease, grant, &slots, shutdown, &mut done).await;
    done.elapsed = clock.elapsed();
    done
}

async fn run_lane(
    deps: &Arc<DispatchDeps>,
    repeater: &ReadyRepeater,
    lease: &Lease,
    grant: BatchGrant,
    slots: &SlotReturn,
    shutdown: watch::Receiver<bool>,
    done: &mut BatchDone,
) {
    // The claim reads the repeater's row too, under the lease's fence: one
    // trip to the store less per batch than reading it first.
    let take = grant.records.max(1);
    let (row, records) = match deps.store.claim_lane(lease, take, now_millis()).await {
        Ok(claim) => claim,
        Err(StoreError::LeaseLost { .. }) => {
            // Deleted (or taken over) since it was found ready.
            return;
        }
        Err(error) => {
            tracing::warn!(repeater = %label(repeater), %error, "claim failed; releasing the lease");
            release(deps, lease).await;
            return;
        }
    };
    done.claimed = records.len() as u32;
    if row.paused {
        release(deps, lease).await;
        return;
    }
    let limits = limits_of(deps, &row.spec);
    done.limits = Some(limits.clone());

    let plugin_config = row.spec.plugin_config.to_string();
    let plugin = match plugin_for(deps, &row, &plugin_config).await {
        Ok(plugin) => plugin,
        Err(error) => {
            // Without its plugin the repeater cannot send anything: back it
            // off with the reason in its status, without touching records.
            tracing::warn!(repeater = %label(repeater), %error, "plugin unavailable; backing the repeater off");
            let now = now_millis();
            let backoff = policy::backoff(&limits);
            let (until, step) =
                backoff.after_failure(row.backoff_step, now, None, &mut rand::rng());
            let health = RepeaterHealth {
                backoff_until: Some(until),
                backoff_step: step,
                last_error: Some(error.to_string()),
                last_success_at: row.last_success_at,
            };
            finish(deps, repeater, lease, &[], Some(&health), true, done).await;
            return;
        }
    };

    let concurrency = grant.concurrency.clamp(1, limits.concurrency.max(1)) as usize;
    if records.is_empty() {
        release_idle(deps, lease).await;
        return;
    }
    let unclaimed = take.saturating_sub(done.claimed);
    if unclaimed > 0 {
        slots.give_back(unclaimed);
        done.reserved -= unclaimed;
    }

    let ctx = AttemptContext {
        plugin,
        call: CallContext::new(&row.spec.domain, &row.spec.name),
        plugin_config,
        spec: row.spec.clone(),
        timeout: limits.timeout,
        excerpt_limit: limits.response_excerpt_bytes,
        outbound: deps.outbound.clone(),
        credentials: deps.credentials.clone(),
        metrics: deps.metrics.clone(),
    };
    // A reload may have moved the ceiling since the lane's last batch.
    done.aimd.set_ceiling(limits.concurrency);
    let attempts = run_window(&ctx, &records, concurrency, &mut done.aimd, shutdown);
    let Some((reports, lease)) = with_renewal(deps, lease, attempts).await else {
        // The lease was taken over while the batch ran: drop the results.
        deps.metrics.lease_lost();
        tracing::warn!(repeater = %label(repeater), epoch = lease.epoch, "lease lost while a batch ran; its results are dropped");
        return;
    };

    done.attempted = reports.len();
    let now = now_millis();
    let retry = policy::retry_policy(&limits);
    let backoff = policy::backoff(&limits);
    let policy = JudgePolicy {
        retry: &retry,
        backoff: &backoff,
    };
    let mut judgement = judge_batch(
        &records,
        &reports,
        row.backoff_step,
        &policy,
        now,
        &mut rand::rng(),
    );
    // Every attempt records the plugin version that built it.
    let version = ctx.plugin.version();
    for outcome in &mut judgement.outcomes {
        if let Some(attempt) = &mut outcome.attempt {
            attempt.plugin_sha256 = Some(version.to_owned());
        }
    }
    // A backed-off lane is not ready again before its backoff ends: let
    // its lease go with the results.
    let backed_off = (judgement.health.as_ref()).is_some_and(|h| h.backoff_until.is_some());
    let keep = grant.keep_lease && !backed_off;
    finish(
        deps,
        repeater,
        &lease,
        &judgement.outcomes,
        judgement.health.as_ref(),
        !keep,
        done,
    )
    .await;
    if keep && done.written {
        done.lease = Some(lease);
    }
    done.more_due = done.written && !backed_off && done.claimed >= take;
    if done.written {
        count_outcomes(deps, repeater, &reports, &judgement.outcomes);
    }
}

/// Runs attempts of `records` in claim order with at most the lane's
/// adaptive limit in flight; every answer feeds `aimd`, and the next
/// attempt starts under the limit as it then stands. Stops starting new
/// ones while an attempt has failed in a way that blames the repeater
/// ([`AttemptReport::blames_repeater`]) and the endpoint answered nothing
/// yet (a dead endpoint or broken plugin gets one window of probes, then
/// the repeater backs off), after `concurrency` (the grant's) such
/// failures in a row, or when shutdown begins; attempts already started
/// finish.
async fn run_window(
    ctx: &AttemptContext,
    records: &[ClaimedRecord],
    concurrency: usize,
    aimd: &mut Aimd,
    shutdown: watch::Receiver<bool>,
) -> Vec<AttemptReport> {
    let mut reports = Vec::with_capacity(records.len());
    let mut pending = records.iter();
    let mut running = FuturesUnordered::new();
    let mut failed_in_a_row = 0usize;
    // `answered`: the endpoint took or judged an attempt (success or reject).
    let (mut failed, mut answered) = (false, false);
    loop {
        let stop = (failed && !answered) || failed_in_a_row >= concurrency || *shutdown.borrow();
        while !stop && running.len() < aimd.limit() as usize {
            match pending.next() {
                Some(record) => running.push(run_attempt(ctx, record)),
                None => break,
            }
        }
        let Some(report) = running.next().await else {
            break;
        };
        adapt(ctx, aimd, &report, running.len() + 1);
        if report.blames_repeater() {
            failed = true;
            failed_in_a_row += 1;
        } else if report.sent {
            answered = true;
            failed_in_a_row = 0;
        }
        reports.push(report);
    }
    reports
}

/// Feeds one answer to the lane's limit: `in_flight` of the batch's
/// requests were open when it came, itself included (the batch's requests
/// are all of the repeater's: one batch per lane at a time). Publishes the
/// limit when it moves, so the metrics follow it within a batch.
fn adapt(ctx: &AttemptContext, aimd: &mut Aimd, report: &AttemptReport, in_flight: usize) {
    let before = aimd.limit();
    let in_flight = u32::try_from(in_flight).unwrap_or(u32::MAX);
    if report.is_overload() {
        let how = match report.timed_out {
            true => Overload::TimedOut,
            false => Overload::Answered,
        };
        aimd.on_overload(in_flight, how);
    } else if matches!(report.verdict, Verdict::Success) {
        aimd.on_success(in_flight);
    }
    if aimd.limit() != before {
        ctx.metrics
            .set_repeater_concurrency(&ctx.spec.domain, &ctx.spec.name, aimd.limit());
    }
}

/// The plugin version this batch runs on: the repeater's pin, or the
/// newest version that accepted its config (the registry remembers the
/// choice, so this is a map lookup unless something changed).
async fn plugin_for(
    deps: &DispatchDeps,
    row: &RepeaterRow,
    plugin_config: &str,
) -> Result<Arc<LoadedPlugin>, PluginError> {
    let spec = &row.spec;
    deps.plugins
        .resolve(
            &RepeaterKey::new(&spec.domain, &spec.name),
            &spec.plugin,
            spec.plugin_sha256.as_deref(),
            plugin_config,
        )
        .await
}

/// Awaits `work` while renewing the lease every third of its TTL. Returns
/// the result with the lease as last renewed; `None` when the lease was
/// lost.
async fn with_renewal<T>(
    deps: &DispatchDeps,
    lease: &Lease,
    work: impl std::future::Future<Output = T>,
) -> Option<(T, Lease)> {
    let ttl = deps.settings.lease_ttl_ms.max(300);
    let period = Duration::from_millis((ttl / 3) as u64);
    let mut renewals = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut held = lease.clone();
    tokio::pin!(work);
    loop {
        tokio::select! {
            result = &mut work => return Some((result, held)),
            _ = renewals.tick() => {
                match deps.store.renew_lease(&held, now_millis(), ttl).await {
                    Ok(renewed) => held = renewed,
                    Err(StoreError::LeaseLost { .. }) => return None,
                    Err(error) => {
                        // A failed renewal is retried at the next tick; the
                        // epoch fence keeps results safe if it expires meanwhile.
                        tracing::warn!(repeater_id = lease.repeater_id, %error, "lease renewal failed");
                    }
                }
            }
        }
    }
}

async fn finish(
    deps: &DispatchDeps,
    repeater: &ReadyRepeater,
    lease: &Lease,
    outcomes: &[RecordOutcome],
    health: Option<&RepeaterHealth>,
    release_lease: bool,
    done: &mut BatchDone,
) {
    match deps
        .store
        .finish_batch(lease, outcomes, health, release_lease, now_millis())
        .await
    {
        Ok(()) => {
            done.written = true;
            done.due_again = due_again(outcomes, health);
        }
        Err(StoreError::LeaseLost { .. }) => {
            deps.metrics.lease_lost();
            tracing::warn!(repeater = %label(repeater), epoch = lease.epoch, "lease lost before the batch was written; its results are dropped");
        }
        Err(error) => {
            tracing::error!(repeater = %label(repeater), %error, "writing a batch failed; its records stay due");
            release(deps, lease).await;
        }
    }
}

/// When written `outcomes` and `health` make their lane ready again by
/// themselves (see [`BatchDone::due_again`]).
fn due_again(outcomes: &[RecordOutcome], health: Option<&RepeaterHealth>) -> Option<Millis> {
    if let Some(until) = health.and_then(|health| health.backoff_until) {
        return Some(until);
    }
    (outcomes.iter())
        .filter(|outcome| !outcome.state.is_terminal())
        .filter_map(|outcome| outcome.next_attempt_at)
        .min()
}

/// Gives a lease up; a failure only leaves it to expire.
pub(crate) async fn release(deps: &DispatchDeps, lease: &Lease) {
    released(lease, deps.store.release_lease(lease).await);
}

/// Gives up the lease of a lane with nothing due, as the scheduler gives
/// up idle lanes: it wakes no scheduler here (a wake-up made the loop read
/// every repeater again). A failure only leaves it to expire.
async fn release_idle(deps: &DispatchDeps, lease: &Lease) {
    let leases = std::slice::from_ref(lease);
    released(lease, deps.store.release_leases(leases).await);
}

/// Logs a release that failed for another reason than a lost lease.
fn released(lease: &Lease, result: Result<(), StoreError>) {
    match result {
        Ok(()) | Err(StoreError::LeaseLost { .. }) => {}
        Err(error) => {
            tracing::warn!(repeater_id = lease.repeater_id, %error, "releasing a lease failed; it will expire");
        }
    }
}

fn count_outcomes(
    deps: &DispatchDeps,
    repeater: &ReadyRepeater,
    reports: &[AttemptReport],
    outcomes: &[RecordOutcome],
) {
    let domain = repeater.domain.as_str();
    let mut attempts = Vec::with_capacity(reports.len());
    for report in reports {
        let outcome = match report.verdict {
            Verdict::Success => AttemptOutcome::Success,
            Verdict::Retry { .. } => AttemptOutcome::Retry,
            Verdict::Reject(_) => AttemptOutcome::Reject,
            Verdict::Skip => AttemptOutcome::Skip,
        };
        deps.metrics
            .record_attempt(domain, outcome, report.duration_ms as f64 / 1000.0);
        attempts.push((outcome, report.duration_ms));
    }
    deps.metrics
        .history()
        .record_batch(domain, &repeater.name, now_millis(), attempts);
    for outcome in outcomes {
        if outcome.state != RecordState::Retrying {
            deps.metrics.record_finished(domain, outcome.state);
        }
    }
}

fn label(repeater: &ReadyRepeater) -> String {
    format!("{}/{}", repeater.domain, repeater.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(
        record_id: i64,
        state: RecordState,
        next_attempt_at: Option<Millis>,
    ) -> RecordOutcome {
        RecordOutcome {
            record_id,
            state,
            next_attempt_at,
            attempt: None,
        }
    }

    fn health(backoff_until: Option<Millis>) -> RepeaterHealth {
        RepeaterHealth {
            backoff_until,
            backoff_step: 1,
            last_error: None,
            last_success_at: None,
        }
    }

    #[test]
    fn a_lane_comes_due_again_at_its_earliest_retry() {
        let outcomes = [
            outcome(1, RecordState::Succeeded, None),
            outcome(2, RecordState::Retrying, Some(5_000)),
            outcome(3, RecordState::Retrying, Some(3_000)),
            outcome(4, RecordState::Rejected, None),
        ];
        assert_eq!(due_again(&outcomes, None), Some(3_000));
        // Health without a backoff leaves the retries to decide.
        assert_eq!(due_again(&outcomes, Some(&health(None))), Some(3_000));
    }

    #[test]
    fn a_backoff_decides_when_the_lane_comes_due_again() {
        let outcomes = [outcome(1, RecordState::Retrying, Some(3_000))];
        assert_eq!(
            due_again(&outcomes, Some(&health(Some(9_000)))),
            Some(9_000)
        );
        // Backed off with nothing left to retry: the lane may still hold
        // records it did not claim.
        assert_eq!(due_again(&[], Some(&health(Some(9_000)))), Some(9_000));
    }

    #[test]
    fn a_lane_whose_records_all_finished_does_not_come_due_by_itself() {
        let outcomes = [
            outcome(1, RecordState::Succeeded, None),
            outcome(2, RecordState::Cancelled, None),
        ];
        assert_eq!(due_again(&outcomes, None), None);
        assert_eq!(due_again(&[], None), None);
    }
}
