//! Stored rows as both backends return them, and their decoding into the
//! trait's types. Column names and types are the same in the SQLite and
//! PostgreSQL schemas, so one set of `FromRow` structs serves both.

use crate::model::{AttemptOutcome, RecordState, RepeaterSpec};

use super::{
    AttemptRow, ClaimedRecord, LeaseInfo, RecordRow, RepeaterRow, StoreError, StoreResult,
};

/// Every column of `repeaters` that status needs.
pub(crate) const REPEATER_COLUMNS: &str = "id, spec, paused, backoff_until, backoff_step, \
     lease_holder, lease_epoch, lease_expires_at, last_error, last_success_at, created_at, updated_at";

/// A `repeaters` row.
#[derive(sqlx::FromRow)]
pub(crate) struct RepeaterRecordRaw {
    id: i64,
    spec: String,
    paused: bool,
    backoff_until: Option<i64>,
    backoff_step: i32,
    lease_holder: Option<String>,
    lease_epoch: i64,
    lease_expires_at: Option<i64>,
    last_error: Option<String>,
    last_success_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl RepeaterRecordRaw {
    /// Reads a row of [`REPEATER_COLUMNS`] stepped by rusqlite (the SQLite
    /// store's own connections).
    pub(crate) fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get("id")?,
            spec: row.get("spec")?,
            paused: row.get("paused")?,
            backoff_until: row.get("backoff_until")?,
            backoff_step: row.get("backoff_step")?,
            lease_holder: row.get("lease_holder")?,
            lease_epoch: row.get("lease_epoch")?,
            lease_expires_at: row.get("lease_expires_at")?,
            last_error: row.get("last_error")?,
            last_success_at: row.get("last_success_at")?,
            created_at: row.get("created_at")?,
            updated_at: row.get("updated_at")?,
        })
    }

    pub(crate) fn decode(self) -> StoreResult<RepeaterRow> {
        let spec = decode_spec(&self.spec)?;
        let lease = match (self.lease_holder, self.lease_expires_at) {
            (Some(holder), Some(expires_at)) => Some(LeaseInfo {
                holder,
                epoch: self.lease_epoch,
                expires_at,
            }),
            _ => None,
        };
        Ok(RepeaterRow {
            id: self.id,
            spec,
            paused: self.paused,
            backoff_until: self.backoff_until,
            backoff_step: u32::try_from(self.backoff_step).unwrap_or(0),
            lease,
            last_error: self.last_error,
            last_success_at: self.last_success_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// Parses a stored repeater spec.
pub(crate) fn decode_spec(text: &str) -> StoreResult<RepeaterSpec> {
    serde_json::from_str(text).map_err(|err| StoreError::Corrupt {
        what: "repeaters.spec",
        detail: err.to_string(),
    })
}

/// The select list for [`RecordRowRaw`]; expects `records r JOIN events e`.
pub(crate) const RECORD_COLUMNS: &str = "r.id, r.domain, r.repeater_name, e.event_key, e.event_type, \
     r.state, r.attempts, r.next_attempt_at, r.created_at, r.updated_at, r.last_error";

/// A `records` row joined with its event.
#[derive(sqlx::FromRow)]
pub(crate) struct RecordRowRaw {
    id: i64,
    domain: String,
    repeater_name: String,
    event_key: String,
    event_type: String,
    state: i16,
    attempts: i32,
    next_attempt_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    last_error: Option<String>,
}

impl RecordRowRaw {
    pub(crate) fn decode(self) -> StoreResult<RecordRow> {
        Ok(RecordRow {
            id: self.id,
            domain: self.domain,
            repeater: self.repeater_name,
            event_id: self.event_key,
            event_type: self.event_type,
            state: decode_state(self.state)?,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            next_attempt_at: self.next_attempt_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_error: self.last_error,
        })
    }
}

/// Decodes a stored record state.
pub(crate) fn decode_state(value: i16) -> StoreResult<RecordState> {
    RecordState::from_i16(value).ok_or_else(|| StoreError::Corrupt {
        what: "records.state",
        detail: format!("unknown state {value}"),
    })
}

/// The select list for [`AttemptRowRaw`].
pub(crate) const ATTEMPT_COLUMNS: &str = "id, record_id, started_at, duration_ms, status, error, outcome, response_excerpt, plugin_sha256, request";

/// An `attempts` row.
#[derive(sqlx::FromRow)]
pub(crate) struct AttemptRowRaw {
    id: i64,
    record_id: i64,
    started_at: i64,
    duration_ms: i64,
    status: Option<i32>,
    error: Option<String>,
    outcome: i16,
    response_excerpt: Option<Vec<u8>>,
    plugin_sha256: Option<String>,
    request: Option<String>,
}

impl AttemptRowRaw {
    pub(crate) fn decode(self) -> StoreResult<AttemptRow> {
        let outcome =
            AttemptOutcome::from_i16(self.outcome).ok_or_else(|| StoreError::Corrupt {
                what: "attempts.outcome",
                detail: format!("unknown outcome {}", self.outcome),
            })?;
        Ok(AttemptRow {
            id: self.id,
            record_id: self.record_id,
            started_at: self.started_at,
            duration_ms: self.duration_ms,
            status: self.status.and_then(|s| u16::try_from(s).ok()),
            error: self.error,
            outcome,
            response_excerpt: self
                .response_excerpt
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
            plugin_sha256: self.plugin_sha256,
            request: match self.request {
                Some(json) => {
                    Some(
                        serde_json::from_str(&json).map_err(|error| StoreError::Corrupt {
                            what: "attempts.request",
                            detail: format!("attempt {}: {error}", self.id),
                        })?,
                    )
                }
                None => None,
            },
        })
    }
}

/// The select list for [`ClaimedRecordRaw`]; expects `records r JOIN events e`.
pub(crate) const CLAIM_COLUMNS: &str = "r.id, r.attempts, r.age_origin, e.event_key, e.event_type, \
     e.content_type, e.payload, e.ordering_key, e.created_at";

/// A due record with its event.
#[derive(sqlx::FromRow)]
pub(crate) struct ClaimedRecordRaw {
    id: i64,
    attempts: i32,
    age_origin: i64,
    event_key: String,
    event_type: String,
    content_type: String,
    payload: Vec<u8>,
    ordering_key: Option<String>,
    created_at: i64,
}

impl ClaimedRecordRaw {
    /// Reads a row of [`CLAIM_COLUMNS`] stepped by rusqlite.
    pub(crate) fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get("id")?,
            attempts: row.get("attempts")?,
            age_origin: row.get("age_origin")?,
            event_key: row.get("event_key")?,
            event_type: row.get("event_type")?,
            content_type: row.get("content_type")?,
            payload: row.get("payload")?,
            ordering_key: row.get("ordering_key")?,
            created_at: row.get("created_at")?,
        })
    }

    pub(crate) fn decode(self) -> ClaimedRecord {
        ClaimedRecord {
            id: self.id,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            age_origin: self.age_origin,
            event_id: self.event_key,
            event_type: self.event_type,
            content_type: self.content_type,
            payload: self.payload,
            ordering_key: self.ordering_key,
            registered_at: self.created_at,
        }
    }
}
