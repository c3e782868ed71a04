//! Ingest: the checks and planning of [`input`](super::input) for every
//! backend, then the backend's own writes. The statements that insert
//! events and records are written here once; each backend runs them its
//! own way (SQLite in its group commits, PostgreSQL in one transaction per
//! call), and each finds events seen before with a query of its own, as the
//! two planners need different shapes to stay on their indexes.

use async_trait::async_trait;

use super::backend::{Backend, Ingest};
use super::sql::Dialect;
use super::{IngestStore, Ingested, StoreResult, input};
use crate::model::{Millis, NewEvent};

#[async_trait]
impl<S: Backend> IngestStore for S {
    async fn ingest(
        &self,
        domain: &str,
        events: &[NewEvent],
        now: Millis,
    ) -> StoreResult<Vec<Ingested>> {
        let plan = input::plan_ingest(domain, events)?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let ingest = Ingest {
            domain,
            events,
            plan,
            now,
        };
        self.write_events(ingest).await
    }
}

/// Columns of a row of [`insert_events`].
pub(crate) const EVENT_COLUMNS: usize = 7;

/// Stores `rows` events: `(domain, event_key, event_type, content_type,
/// payload, ordering_key, created_at)`, returning each new row's id.
///
/// On PostgreSQL another process may store the same event id at the same
/// moment: its row is skipped here (and answered from its records), so each
/// id comes back with its key. SQLite's one writer holds the lock while it
/// looks ids up and inserts them, so every row is new, a clash fails the
/// group, and the ids come back in the rows' order.
pub(crate) fn insert_events(dialect: Dialect, rows: usize) -> String {
    let (conflict, returning) = match dialect {
        Dialect::Postgres => (
            " ON CONFLICT (domain, event_key) DO NOTHING",
            "id, event_key",
        ),
        Dialect::Sqlite => ("", "id"),
    };
    format!(
        "INSERT{} INTO events (domain, event_key, event_type, content_type, payload, \
         ordering_key, created_at) {}{conflict} RETURNING {returning}",
        dialect.or_fail(),
        dialect.values(rows, EVENT_COLUMNS),
    )
}

/// Columns of a row of [`insert_records`].
pub(crate) const RECORD_COLUMNS: usize = 11;

/// Stores `rows` records: `(event_id, repeater_id, repeater_name, domain,
/// state, attempts, age_origin, next_attempt_at, created_at, updated_at,
/// ordering_key)`, returning each new row's id: on PostgreSQL with its event
/// id and repeater name, as its documentation does not promise the rows'
/// order; SQLite returns them in the rows' order.
pub(crate) fn insert_records(dialect: Dialect, rows: usize) -> String {
    let returning = match dialect {
        Dialect::Postgres => "id, event_id, repeater_name",
        Dialect::Sqlite => "id",
    };
    format!(
        "INSERT{} INTO records (event_id, repeater_id, repeater_name, domain, state, attempts, \
         age_origin, next_attempt_at, created_at, updated_at, ordering_key) {} \
         RETURNING {returning}",
        dialect.or_fail(),
        dialect.values(rows, RECORD_COLUMNS),
    )
}
