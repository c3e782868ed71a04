//! Checks and planning done before any write, shared by both backends: what
//! input is refused with [`StoreError::Invalid`], how ingest assigns event ids
//! and answers duplicates, and how an outcome turns into a record update.

use std::collections::{HashMap, HashSet};

use crate::model::{AttemptOutcome, Millis, NewEvent, Ordering, RepeaterSpec, check_slug};

use super::{
    AttemptDraft, Ingested, IngestedRecord, Lease, RecordOutcome, StoreError, StoreResult,
};

/// Longest event id, event type, content type or ordering key, in bytes.
pub(crate) const MAX_KEY_BYTES: usize = 255;

/// Rows per multi-row statement: well under SQLite's 32766 and PostgreSQL's
/// 65535 bind parameters for our widest row (10 columns).
pub(crate) const ROWS_PER_STATEMENT: usize = 500;

/// Refuses a domain that is not a slug.
pub(crate) fn check_domain(domain: &str) -> StoreResult<()> {
    check_slug("domain", domain).map_err(|err| StoreError::Invalid(err.to_string()))
}

/// Refuses a spec whose domain or name is not a slug; returns its stored JSON.
pub(crate) fn spec_json(spec: &RepeaterSpec) -> StoreResult<String> {
    check_domain(&spec.domain)?;
    check_slug("repeater", &spec.name).map_err(|err| StoreError::Invalid(err.to_string()))?;
    serde_json::to_string(spec).map_err(|err| {
        StoreError::Invalid(format!(
            "repeater {:?} spec cannot be stored: {err}",
            spec.name
        ))
    })
}

fn check_text(index: usize, field: &str, value: &str, may_be_empty: bool) -> StoreResult<()> {
    if !may_be_empty && value.is_empty() {
        return Err(StoreError::Invalid(format!(
            "event {index}: {field} is empty"
        )));
    }
    if value.len() > MAX_KEY_BYTES {
        return Err(StoreError::Invalid(format!(
            "event {index}: {field} is {} bytes, longer than {MAX_KEY_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

/// How one ingest call maps onto stored events.
pub(crate) struct IngestPlan {
    /// The event id of each input event, in input order.
    pub keys: Vec<String>,
    /// Index of the first input event of each distinct id, in input order.
    pub firsts: Vec<usize>,
}

/// Checks every event before anything is written and assigns ids (UUID v7,
/// so host-made ids sort by time) to events that came without one.
pub(crate) fn plan_ingest(domain: &str, events: &[NewEvent]) -> StoreResult<IngestPlan> {
    check_domain(domain)?;
    let mut keys = Vec::with_capacity(events.len());
    let mut seen = HashSet::with_capacity(events.len());
    let mut firsts = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        check_text(index, "type", &event.event_type, false)?;
        check_text(index, "content type", &event.content_type, false)?;
        if let Some(key) = &event.ordering_key {
            check_text(index, "ordering key", key, true)?;
        }
        let key = match &event.id {
            Some(id) => {
                check_text(index, "id", id, false)?;
                id.clone()
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        if seen.insert(key.clone()) {
            firsts.push(index);
        }
        keys.push(key);
    }
    Ok(IngestPlan { keys, firsts })
}

/// A repeater of the ingesting domain and what it subscribes to.
pub(crate) struct Subscriber {
    pub id: i64,
    pub name: String,
    spec: RepeaterSpec,
}

impl Subscriber {
    /// Decodes a `(id, name, spec)` row.
    pub(crate) fn decode((id, name, spec): (i64, String, String)) -> StoreResult<Subscriber> {
        Ok(Subscriber {
            id,
            name,
            spec: super::rows::decode_spec(&spec)?,
        })
    }

    /// True when this repeater takes the event.
    pub(crate) fn takes(&self, event: &NewEvent) -> bool {
        self.spec.subscribes_to(&event.event_type)
    }
}

/// Builds the answer of each input event from what was stored: `created`
/// holds the ids this call stored, `records` the records of every id.
pub(crate) fn answers(
    plan: &IngestPlan,
    created: &HashSet<String>,
    mut records: HashMap<String, Vec<IngestedRecord>>,
) -> Vec<Ingested> {
    let firsts: HashSet<usize> = plan.firsts.iter().copied().collect();
    for list in records.values_mut() {
        list.sort_by_key(|r| r.id);
    }
    plan.keys
        .iter()
        .enumerate()
        .map(|(index, key)| Ingested {
            event_id: key.clone(),
            created: firsts.contains(&index) && created.contains(key),
            records: records.get(key).cloned().unwrap_or_default(),
        })
        .collect()
}

/// One record's update after a batch, in stored form.
pub(crate) struct RecordUpdate {
    pub record_id: i64,
    pub state: i16,
    pub next_attempt_at: Option<Millis>,
    /// 1 when the outcome counts as an attempt, else 0.
    pub counted: i32,
    /// The record's new last error, when the outcome counts as an attempt.
    pub error: Option<String>,
}

impl RecordUpdate {
    /// Terminal records have no next attempt; unfinished ones without a time
    /// are due at once.
    pub(crate) fn from_outcome(outcome: &RecordOutcome, now: Millis) -> RecordUpdate {
        let next_attempt_at = if outcome.state.is_terminal() {
            None
        } else {
            Some(outcome.next_attempt_at.unwrap_or(now))
        };
        RecordUpdate {
            record_id: outcome.record_id,
            state: outcome.state.as_i16(),
            next_attempt_at,
            counted: i32::from(outcome.attempt.is_some()),
            error: outcome.attempt.as_ref().and_then(attempt_error),
        }
    }
}

/// The error a record shows after an attempt: the attempt's own error, or
/// the HTTP status of a failed response.
fn attempt_error(attempt: &AttemptDraft) -> Option<String> {
    attempt
        .error
        .clone()
        .or_else(|| match (attempt.outcome, attempt.status) {
            (AttemptOutcome::Retry | AttemptOutcome::Reject, Some(status)) => {
                Some(format!("HTTP status {status}"))
            }
            _ => None,
        })
}

/// A fresh random lease token.
pub(crate) fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The error for a write whose lease was taken over or released.
pub(crate) fn lease_lost(lease: &Lease) -> StoreError {
    StoreError::LeaseLost {
        repeater_id: lease.repeater_id,
        epoch: lease.epoch,
    }
}

/// The stored number of a repeater's ordering (`repeaters.ordering`).
pub(crate) fn ordering_code(ordering: Ordering) -> i16 {
    match ordering {
        Ordering::None => 0,
        Ordering::Fifo => 1,
        Ordering::Key => 2,
    }
}
