//! Turning a batch's attempts into what the store writes: each record's new
//! state and next attempt time, and the repeater's health, with
//! `Retry-After` honoured (docs/scheduling.md: "Record retry", "Endpoint
//! backoff", "Rate limits"). Pure: the caller passes `now` and the random
//! source, so every decision here is unit-tested.

use super::{
    AttemptResult, Backoff, BatchVerdict, RetryDecision, RetryPolicy, batch_verdict,
    clamp_retry_after, is_overload,
};
use crate::model::{
    AttemptDraft, AttemptOutcome, ClaimedRecord, Millis, RecordOutcome, RecordState, RepeaterHealth,
};

/// How one attempt ended, as the dispatcher saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The plugin classified the response as success.
    Success,
    /// Failed retryably: transport error, retryable response, plugin error
    /// or the plugin's retry-later. `after_ms` is a delay asked for by the
    /// endpoint (`Retry-After`) or the plugin.
    Retry {
        /// Why, for the attempt's error and the repeater's status.
        reason: String,
        /// The smallest wait asked for, if any.
        after_ms: Option<i64>,
    },
    /// The payload can never be sent.
    Reject(String),
    /// Nothing to send for this event.
    Skip,
}

/// One attempt of one record, ready to be judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptReport {
    /// The record.
    pub record_id: i64,
    /// When the attempt started.
    pub started_at: Millis,
    /// How long it took, build to classify.
    pub duration_ms: i64,
    /// HTTP status, when a response came back.
    pub status: Option<u16>,
    /// The start of the response body.
    pub response_excerpt: Option<Vec<u8>>,
    /// What was sent, redacted, as JSON text (none when nothing was built).
    pub request: Option<String>,
    /// True when a request went out on the network (so the result speaks
    /// about the endpoint, not only about the payload or the plugin).
    pub sent: bool,
    /// True when the request timed out (an overload signal for AIMD).
    pub timed_out: bool,
    /// True when the failure is the repeater's, not the payload's, though
    /// nothing was sent (its credentials could not be added, its plugin ran
    /// out of CPU time or memory or built oversized output): it backs the
    /// repeater off like a failed request.
    pub repeater_fault: bool,
    /// How it ended.
    pub verdict: Verdict,
}

impl AttemptReport {
    /// True when the endpoint showed overload (timeout, 429, 5xx): AIMD halves.
    pub fn is_overload(&self) -> bool {
        self.sent && is_overload(self.status, self.timed_out)
    }

    /// True when the attempt failed in a way that speaks against the
    /// repeater rather than the payload: the endpoint failed retryably, or
    /// the repeater itself was at fault (whatever became of the record).
    pub fn blames_repeater(&self) -> bool {
        match &self.verdict {
            Verdict::Success | Verdict::Skip => false,
            Verdict::Retry { .. } => self.sent || self.repeater_fault,
            Verdict::Reject(_) => self.repeater_fault,
        }
    }

    fn health_result(&self) -> AttemptResult {
        match &self.verdict {
            Verdict::Success => AttemptResult::Success,
            _ if self.blames_repeater() => AttemptResult::RetryableFailure,
            // Anything else that failed blames the payload, or never
            // reached the endpoint without being the repeater's fault (a
            // plugin trap, retry-later): it says nothing about the
            // repeater's health.
            Verdict::Retry { .. } | Verdict::Reject(_) => AttemptResult::Rejected,
            Verdict::Skip => AttemptResult::Empty,
        }
    }
}

/// What a finished batch writes.
#[derive(Debug, Clone)]
pub struct BatchJudgement {
    /// One outcome per reported record.
    pub outcomes: Vec<RecordOutcome>,
    /// The repeater's new health, or `None` to leave it as it is.
    pub health: Option<RepeaterHealth>,
    /// What the batch did to the repeater's backoff.
    pub verdict: BatchVerdict,
}

/// The policies a batch is judged by.
#[derive(Debug, Clone)]
pub struct JudgePolicy<'a> {
    /// Record retry schedule and limits.
    pub retry: &'a RetryPolicy,
    /// Repeater backoff.
    pub backoff: &'a Backoff,
}

/// Judges a batch: `records` as claimed, `reports` one per attempted record,
/// `backoff_step` the repeater's consecutive failed batches before this one.
pub fn judge_batch(
    records: &[ClaimedRecord],
    reports: &[AttemptReport],
    backoff_step: u32,
    policy: &JudgePolicy<'_>,
    now: Millis,
    rng: &mut impl rand::Rng,
) -> BatchJudgement {
    let mut outcomes = Vec::with_capacity(reports.len());
    for report in reports {
        let Some(record) = records.iter().find(|r| r.id == report.record_id) else {
            continue;
        };
        outcomes.push(record_outcome(record, report, policy.retry, now, rng));
    }

    let verdict = batch_verdict(reports.iter().map(AttemptReport::health_result));
    // The longest wait the endpoint asked for delays the whole repeater.
    let asked = reports
        .iter()
        .filter(|r| r.sent)
        .filter_map(|r| match &r.verdict {
            Verdict::Retry { after_ms, .. } => *after_ms,
            _ => None,
        })
        .max()
        .map(|ms| clamp_retry_after(ms, policy.backoff.max_retry_after_ms));
    let first_error = reports.iter().find_map(|r| match &r.verdict {
        Verdict::Retry { reason, .. } | Verdict::Reject(reason) if r.blames_repeater() => {
            Some(reason.clone())
        }
        _ => None,
    });
    let health = match verdict {
        BatchVerdict::BackOff => {
            let (until, step) = policy.backoff.after_failure(backoff_step, now, asked, rng);
            Some(RepeaterHealth {
                backoff_until: Some(until),
                backoff_step: step,
                last_error: first_error,
                last_success_at: None,
            })
        }
        BatchVerdict::Reset => Some(RepeaterHealth {
            backoff_until: asked.filter(|ms| *ms > 0).map(|ms| now.saturating_add(ms)),
            backoff_step: 0,
            last_error: first_error,
            last_success_at: Some(now),
        }),
        BatchVerdict::Stay => None,
    };
    BatchJudgement {
        outcomes,
        health,
        verdict,
    }
}

fn record_outcome(
    record: &ClaimedRecord,
    report: &AttemptReport,
    retry: &RetryPolicy,
    now: Millis,
    rng: &mut impl rand::Rng,
) -> RecordOutcome {
    let attempts_done = record.attempts.saturating_add(1);
    let (state, next_attempt_at, outcome, error) = match &report.verdict {
        Verdict::Success => (RecordState::Succeeded, None, AttemptOutcome::Success, None),
        Verdict::Reject(reason) => (
            RecordState::Rejected,
            None,
            AttemptOutcome::Reject,
            Some(reason.clone()),
        ),
        Verdict::Skip => (RecordState::Empty, None, AttemptOutcome::Skip, None),
        Verdict::Retry { reason, after_ms } => {
            match retry.next_attempt(attempts_done, record.age_origin, now, *after_ms, rng) {
                RetryDecision::At(at) => (
                    RecordState::Retrying,
                    Some(at),
                    AttemptOutcome::Retry,
                    Some(reason.clone()),
                ),
                RetryDecision::GiveUp(why) => (
                    RecordState::Cancelled,
                    None,
                    AttemptOutcome::Retry,
                    Some(format!("{reason}; {why}")),
                ),
            }
        }
    };
    RecordOutcome {
        record_id: record.id,
        state,
        next_attempt_at,
        attempt: Some(AttemptDraft {
            started_at: report.started_at,
            duration_ms: report.duration_ms,
            status: report.status,
            error,
            outcome,
            response_excerpt: report.response_excerpt.clone(),
            request: report.request.clone(),
            // The lane knows the plugin version; it fills this in.
            plugin_sha256: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const NOW: Millis = 1_000_000;

    fn record(id: i64, attempts: u32) -> ClaimedRecord {
        ClaimedRecord {
            id,
            attempts,
            age_origin: NOW - 1000,
            event_id: format!("e{id}"),
            event_type: "t".into(),
            content_type: "application/json".into(),
            payload: b"{}".to_vec(),
            ordering_key: None,
            registered_at: NOW - 1000,
        }
    }

    fn report(id: i64, sent: bool, status: Option<u16>, verdict: Verdict) -> AttemptReport {
        AttemptReport {
            record_id: id,
            started_at: NOW - 10,
            duration_ms: 10,
            status,
            response_excerpt: None,
            request: None,
            sent,
            timed_out: false,
            repeater_fault: false,
            verdict,
        }
    }

    /// An attempt that sent nothing and failed through the repeater's own
    /// fault (its credentials, its plugin's limits).
    fn repeaters_fault(id: i64, verdict: Verdict) -> AttemptReport {
        AttemptReport {
            repeater_fault: true,
            ..report(id, false, None, verdict)
        }
    }

    fn retry(reason: &str, after_ms: Option<i64>) -> Verdict {
        Verdict::Retry {
            reason: reason.into(),
            after_ms,
        }
    }

    fn policies() -> (RetryPolicy, Backoff) {
        (
            RetryPolicy {
                schedule_ms: vec![5_000, 60_000],
                jitter: 0.0,
                max_attempts: 3,
                max_age_ms: 86_400_000,
                max_retry_after_ms: 600_000,
            },
            Backoff {
                min_ms: 30_000,
                max_ms: 3_600_000,
                jitter: 0.0,
                max_retry_after_ms: 600_000,
            },
        )
    }

    fn judge(records: &[ClaimedRecord], reports: &[AttemptReport], step: u32) -> BatchJudgement {
        let (retry, backoff) = policies();
        let policy = JudgePolicy {
            retry: &retry,
            backoff: &backoff,
        };
        judge_batch(
            records,
            reports,
            step,
            &policy,
            NOW,
            &mut StdRng::seed_from_u64(1),
        )
    }

    #[test]
    fn all_sent_attempts_failing_backs_the_repeater_off() {
        let records = [record(1, 0), record(2, 1)];
        let reports = [
            report(1, true, Some(503), retry("503", None)),
            report(2, true, None, retry("connect refused", None)),
        ];
        let j = judge(&records, &reports, 2);
        assert_eq!(j.verdict, BatchVerdict::BackOff);
        let health = j.health.unwrap();
        assert_eq!(health.backoff_step, 3);
        assert_eq!(health.backoff_until, Some(NOW + 120_000));
        assert_eq!(health.last_error.as_deref(), Some("503"));
        assert_eq!(j.outcomes[0].state, RecordState::Retrying);
        assert_eq!(j.outcomes[0].next_attempt_at, Some(NOW + 5_000));
        assert_eq!(j.outcomes[1].next_attempt_at, Some(NOW + 60_000));
    }

    #[test]
    fn any_success_resets_and_marks_last_success() {
        let records = [record(1, 0), record(2, 0)];
        let reports = [
            report(1, true, Some(503), retry("503", None)),
            report(2, true, Some(200), Verdict::Success),
        ];
        let j = judge(&records, &reports, 4);
        let health = j.health.unwrap();
        assert_eq!(health.backoff_step, 0);
        assert_eq!(health.backoff_until, None);
        assert_eq!(health.last_success_at, Some(NOW));
        assert_eq!(j.outcomes[1].state, RecordState::Succeeded);
    }

    #[test]
    fn payload_blaming_outcomes_leave_health_alone() {
        let records = [record(1, 0), record(2, 0), record(3, 0)];
        let reports = [
            report(1, true, Some(400), Verdict::Reject("400".into())),
            report(2, false, None, Verdict::Skip),
            // A plugin error never reached the endpoint.
            report(3, false, None, retry("plugin trapped", None)),
        ];
        let j = judge(&records, &reports, 1);
        assert_eq!(j.verdict, BatchVerdict::Stay);
        assert!(j.health.is_none());
        let states: Vec<_> = j.outcomes.iter().map(|o| o.state).collect();
        assert_eq!(
            states,
            [
                RecordState::Rejected,
                RecordState::Empty,
                RecordState::Retrying
            ]
        );
        let attempt = j.outcomes[0].attempt.as_ref().unwrap();
        assert_eq!(attempt.outcome, AttemptOutcome::Reject);
        assert_eq!(attempt.error.as_deref(), Some("400"));
    }

    #[test]
    fn records_past_max_attempts_are_cancelled_with_both_reasons() {
        let records = [record(1, 2)];
        let reports = [report(1, true, Some(500), retry("HTTP 500", None))];
        let j = judge(&records, &reports, 0);
        assert_eq!(j.outcomes[0].state, RecordState::Cancelled);
        let error = j.outcomes[0]
            .attempt
            .as_ref()
            .unwrap()
            .error
            .clone()
            .unwrap();
        assert!(
            error.contains("HTTP 500") && error.contains("3 attempts"),
            "{error}"
        );
    }

    #[test]
    fn retry_after_delays_the_record_and_the_repeater_clamped() {
        let records = [record(1, 0), record(2, 0)];
        let reports = [
            report(1, true, Some(429), retry("429", Some(90_000))),
            report(2, true, Some(200), Verdict::Success),
        ];
        let j = judge(&records, &reports, 0);
        assert_eq!(j.outcomes[0].next_attempt_at, Some(NOW + 90_000));
        assert_eq!(j.health.unwrap().backoff_until, Some(NOW + 90_000));

        let reports = [report(1, true, Some(503), retry("503", Some(86_400_000)))];
        let j = judge(&records[..1], &reports, 0);
        assert_eq!(j.health.unwrap().backoff_until, Some(NOW + 600_000));
    }

    #[test]
    fn missing_credentials_back_the_repeater_off_without_sending() {
        let records = [record(1, 0)];
        let r = repeaters_fault(1, retry("signing: REPEATERD_KEY is not set", None));
        let j = judge(&records, &[r], 0);
        assert_eq!(j.verdict, BatchVerdict::BackOff);
        let health = j.health.unwrap();
        assert!(health.last_error.unwrap().contains("REPEATERD_KEY"));
        assert_eq!(j.outcomes[0].state, RecordState::Retrying);
    }

    #[test]
    fn a_rejection_that_is_the_repeaters_fault_backs_it_off() {
        let records = [record(1, 0)];
        let r = repeaters_fault(
            1,
            Verdict::Reject("plugin p: request body is 67108864 bytes".into()),
        );
        let j = judge(&records, &[r], 0);
        assert_eq!(j.verdict, BatchVerdict::BackOff);
        assert!(
            j.health
                .unwrap()
                .last_error
                .unwrap()
                .contains("request body")
        );
        // The record's own outcome is unchanged.
        assert_eq!(j.outcomes[0].state, RecordState::Rejected);
    }

    #[test]
    fn overload_means_a_sent_timeout_429_or_5xx() {
        let mut r = report(1, true, Some(503), retry("x", None));
        assert!(r.is_overload());
        r.status = Some(400);
        assert!(!r.is_overload());
        r.status = None;
        r.timed_out = true;
        assert!(r.is_overload());
        r.sent = false;
        assert!(!r.is_overload());
    }
}
