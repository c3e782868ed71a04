//! The scheduler's reads of the SQLite store: the ready set, the next
//! wake-up time and each batch's claim. They run on read-only connections
//! of their own, stepped on the calling task's thread from the first
//! statement to the last row, with their statements kept prepared.
//!
//! Through the async driver each of these reads was a hand-off to a pool
//! connection's thread and back, once per statement and again per row
//! fetched; profiled under load, the pool's threads and their context
//! switches cost more than the reads themselves. A read in WAL mode never
//! waits for the writer, so stepping it here holds the thread for as long
//! as SQLite takes, as the group writer does with its commits (ADR 6).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, params};

use super::{BUSY_TIMEOUT, open_own};
use crate::model::Millis;
use crate::store::input::lease_lost;
use crate::store::lanes::{LaneSql, ready_in};
use crate::store::rows::{ClaimedRecordRaw, RepeaterRecordRaw};
use crate::store::sql::{Dialect, Statements, runs};
use crate::store::{ClaimedRecord, Lease, ReadyRepeater, RepeaterRow, StoreResult};

/// Statements each connection keeps prepared: the ready set, the wake-up
/// time, the repeater row and a claim per ordering.
const STATEMENT_CACHE: usize = 8;

/// Read-only connections to one database file, opened as needed and kept
/// (up to `keep`: one per thread that reads at once, the scheduler loop and
/// the batches on the runtime's workers) for the store's life.
pub(super) struct LaneReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    keep: usize,
    sql: &'static LaneSql,
}

impl LaneReads {
    /// Opens the first connection to `path` (which must exist), so a file
    /// that cannot be read fails the store's opening, not its first claim.
    pub(super) fn open(path: &Path, keep: usize) -> StoreResult<LaneReads> {
        let first = open_reader(path)?;
        Ok(LaneReads {
            path: path.to_owned(),
            idle: Mutex::new(vec![first]),
            keep: keep.max(1),
            sql: &Statements::of(Dialect::Sqlite).lanes,
        })
    }

    /// Most connections kept idle between reads.
    #[cfg(test)]
    pub(super) fn keep(&self) -> usize {
        self.keep
    }

    /// Runs `read` on an idle connection, or on a new one when every one is
    /// busy on another thread.
    fn with<T>(&self, read: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let idle = self.lock().pop();
        let db = match idle {
            Some(db) => db,
            None => open_reader(&self.path)?,
        };
        let result = read(&db);
        let mut idle = self.lock();
        if idle.len() < self.keep {
            idle.push(db);
        }
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        // A read that panicked left its connection out of the list, not the
        // list half-changed: the list is still good.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Repeaters not paused, backed off or leased by another holder, with
    /// at least one record due at `now` under their ordering.
    pub(super) fn ready_repeaters(
        &self,
        now: Millis,
        holder: &str,
    ) -> StoreResult<Vec<ReadyRepeater>> {
        self.with(|db| {
            let mut statement = db.prepare_cached(&self.sql.ready)?;
            let rows = statement.query_map(params![now, holder], ready_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// [`LaneReads::ready_repeaters`] within `domains`, a statement per
    /// run of them.
    pub(super) fn ready_in_domains(
        &self,
        now: Millis,
        holder: &str,
        domains: &[String],
    ) -> StoreResult<Vec<ReadyRepeater>> {
        self.with(|db| {
            let mut ready = Vec::new();
            for run in runs(domains) {
                let mut statement = db.prepare_cached(&ready_in(Dialect::Sqlite, run.len()))?;
                let mut values: Vec<&dyn rusqlite::ToSql> = vec![&now, &holder];
                values.extend(run.iter().map(|domain| domain as &dyn rusqlite::ToSql));
                for row in statement.query_map(&*values, ready_row)? {
                    ready.push(row?);
                }
            }
            Ok(ready)
        })
    }

    /// The earliest time a repeater not leased elsewhere has a record due,
    /// pushed back by its backoff and by another holder's lease.
    pub(super) fn next_wakeup(&self, now: Millis, holder: &str) -> StoreResult<Option<Millis>> {
        let at: Option<i64> = self.with(|db| {
            let mut statement = db.prepare_cached(&self.sql.wakeup)?;
            Ok(statement.query_row(params![holder], |row| row.get(0))?)
        })?;
        Ok(at.map(|at| at.max(now)))
    }

    /// The lane's repeater row, read under the lease's fence, and up to
    /// `limit` of its records due at `now`, oldest due first, as its
    /// ordering allows.
    pub(super) fn claim_lane(
        &self,
        lease: &Lease,
        limit: u32,
        now: Millis,
    ) -> StoreResult<(RepeaterRow, Vec<ClaimedRecord>)> {
        self.with(|db| {
            let raw = {
                let mut statement = db.prepare_cached(&self.sql.fenced)?;
                let mut rows =
                    statement.query(params![lease.repeater_id, lease.epoch, lease.token])?;
                match rows.next()? {
                    Some(row) => Some(RepeaterRecordRaw::from_sqlite(row)?),
                    None => None,
                }
            };
            let Some(row) = raw.map(RepeaterRecordRaw::decode).transpose()? else {
                return Err(lease_lost(lease));
            };
            let mut statement = db.prepare_cached(self.sql.claim(row.spec.ordering))?;
            let records = statement
                .query_map(params![lease.repeater_id, now, i64::from(limit)], |row| {
                    ClaimedRecordRaw::from_sqlite(row)
                })?
                .map(|raw| raw.map(ClaimedRecordRaw::decode))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((row, records))
        })
    }
}

/// A row of the ready set: id, domain, name.
fn ready_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ReadyRepeater> {
    Ok(ReadyRepeater {
        id: row.get(0)?,
        domain: row.get(1)?,
        name: row.get(2)?,
    })
}

/// A read-only connection to `path` with the store's settings.
fn open_reader(path: &Path) -> StoreResult<Connection> {
    open_own(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY,
        BUSY_TIMEOUT,
        STATEMENT_CACHE,
    )
}
