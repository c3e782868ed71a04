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
use crate::model::{Millis, Ordering};
use crate::store::input::lease_lost;
use crate::store::rows::{CLAIM_COLUMNS, ClaimedRecordRaw, REPEATER_COLUMNS, RepeaterRecordRaw};
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
    sql: Texts,
}

/// The reads' statement texts, written once per store.
struct Texts {
    ready: String,
    wakeup: String,
    fenced: String,
    /// The claim of a lane with no ordering, fifo and key.
    claim: [String; 3],
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
            sql: Texts::new(),
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
            let rows = statement.query_map(params![now, holder], |row| {
                Ok(ReadyRepeater {
                    id: row.get(0)?,
                    domain: row.get(1)?,
                    name: row.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
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
            let mut statement = db.prepare_cached(match row.spec.ordering {
                Ordering::None => &self.sql.claim[0],
                Ordering::Fifo => &self.sql.claim[1],
                Ordering::Key => &self.sql.claim[2],
            })?;
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

impl Texts {
    fn new() -> Texts {
        let head = fifo_head("p.id");
        let ready = format!(
            "SELECT p.id, p.domain, p.name FROM repeaters p \
             WHERE NOT p.paused \
               AND (p.backoff_until IS NULL OR p.backoff_until <= ?1) \
               AND (p.lease_expires_at IS NULL OR p.lease_expires_at <= ?1 OR p.lease_holder = ?2) \
               AND CASE p.ordering \
                   WHEN 1 THEN EXISTS (SELECT 1 FROM records r WHERE r.id = {head} \
                                       AND r.next_attempt_at <= ?1) \
                   WHEN 2 THEN EXISTS (SELECT 1 FROM records r WHERE r.repeater_id = p.id \
                                       AND r.state IN (0, 1) AND r.next_attempt_at <= ?1 \
                                       AND {KEY_HEAD}) \
                   ELSE EXISTS (SELECT 1 FROM records r WHERE r.repeater_id = p.id \
                                AND r.state IN (0, 1) AND r.next_attempt_at <= ?1) \
                   END \
             ORDER BY p.domain, p.name"
        );
        // Per repeater: its earliest due record, pushed back by its backoff
        // and another holder's lease; one index probe per repeater on the
        // ready set. A fifo lane waits for its head record, a key lane for
        // the heads of its keys (a scan of that lane's unfinished records).
        let wakeup = format!(
            "SELECT MIN(max(d.due, COALESCE(d.backoff_until, 0), COALESCE(d.lease_expires_at, 0))) \
             FROM (SELECT p.backoff_until, \
                          CASE WHEN p.lease_holder = ?1 THEN NULL ELSE p.lease_expires_at END \
                              AS lease_expires_at, \
                          CASE p.ordering \
                          WHEN 1 THEN (SELECT r.next_attempt_at FROM records r WHERE r.id = {head}) \
                          WHEN 2 THEN (SELECT MIN(r.next_attempt_at) FROM records r \
                                       WHERE r.repeater_id = p.id AND r.state IN (0, 1) AND {KEY_HEAD}) \
                          ELSE (SELECT MIN(r.next_attempt_at) FROM records r \
                                WHERE r.repeater_id = p.id AND r.state IN (0, 1)) \
                          END AS due \
                   FROM repeaters p WHERE NOT p.paused) d \
             WHERE d.due IS NOT NULL"
        );
        let fenced = format!(
            "SELECT {REPEATER_COLUMNS} FROM repeaters \
             WHERE id = ?1 AND lease_epoch = ?2 AND lease_token = ?3"
        );
        let claim = |rule: &str| {
            format!(
                "SELECT {CLAIM_COLUMNS} FROM records r JOIN events e ON e.id = r.event_id \
                 WHERE r.repeater_id = ?1 AND r.state IN (0, 1) AND r.next_attempt_at <= ?2 \
                 AND {rule} ORDER BY r.next_attempt_at, r.id LIMIT ?3"
            )
        };
        Texts {
            ready,
            wakeup,
            fenced,
            claim: [
                claim("TRUE"),
                // fifo: only the oldest unfinished record, and only when it is due.
                claim(&format!("r.id = {}", fifo_head("?1"))),
                // key: per key, only its oldest unfinished record.
                claim(KEY_HEAD),
            ],
        }
    }
}

/// The id of the oldest unfinished record of `repeater`: two index lookups
/// on `records_repeater_state` (a plain `ORDER BY id` would walk terminal
/// records first). NULLs become a sentinel because SQLite's `min(a, b)` is
/// NULL when either is.
fn fifo_head(repeater: &str) -> String {
    format!(
        "min(COALESCE((SELECT MIN(h.id) FROM records h WHERE h.repeater_id = {repeater} AND h.state = 0), 9223372036854775807), \
             COALESCE((SELECT MIN(h.id) FROM records h WHERE h.repeater_id = {repeater} AND h.state = 1), 9223372036854775807))"
    )
}

/// True for a record `r` that has no earlier unfinished record with the same
/// ordering key (records without a key are never held back).
const KEY_HEAD: &str = "(r.ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM records o \
     WHERE o.repeater_id = r.repeater_id AND o.state IN (0, 1) \
     AND o.ordering_key = r.ordering_key AND o.id < r.id))";

/// A read-only connection to `path` with the store's settings.
fn open_reader(path: &Path) -> StoreResult<Connection> {
    open_own(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY,
        BUSY_TIMEOUT,
        STATEMENT_CACHE,
    )
}
