//! The embedded store: one SQLite file, owned by one daemon process.
//!
//! Writes go through two connections: the group-commit writer task's own
//! (ingests and batch results) and a one-connection writer pool for the
//! rest; SQLite's write lock orders them. Each write transaction is `BEGIN
//! IMMEDIATE`, so it takes the write lock up front instead of failing to
//! upgrade a read lock halfway. Lease writes are one statement
//! each, which is its own transaction and takes the write lock at its start:
//! one trip to the writer instead of three. Reads use read-only
//! connections and never open long transactions, so WAL checkpoints keep
//! up: the scheduler's reads (ready set, wake-up time, claims) step their
//! own connections in place (see [`reads`]), the API's reads go through a
//! small pool. The file runs in WAL mode with `synchronous=NORMAL`:
//! a power cut may lose the last commits, a process crash loses nothing.
//!
//! Ingests and batch results are committed in groups: one writer task
//! takes every ingest and every batch result waiting for the write lock
//! into one transaction, and writes the whole group with a few multi-row
//! statements (one per table, in runs of a few fixed sizes). Many
//! producers posting a few events each, and many lanes finishing batches
//! of one or two records, would otherwise cost a transaction and several
//! statements apiece and fill the writer's queue; grouped, the writer's
//! cost per job falls as its queue grows. The group runs in one trip on the
//! task's own connection, whose prepared statements live as long as the
//! store (see [`group`], ADR 7).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{QueryBuilder, Sqlite, Transaction};
use tokio::sync::{Notify, mpsc, oneshot};

use super::input::{self, ROWS_PER_STATEMENT, RecordUpdate, lease_lost, new_token};
use super::rows::{
    ATTEMPT_COLUMNS, AttemptRowRaw, RECORD_COLUMNS, REPEATER_COLUMNS, RecordRowRaw,
    RepeaterRecordRaw, decode_state, records_page_sql,
};
use super::{
    AttemptRow, Backlog, ClaimedRecord, Ingested, Lease, ReadyRepeater, RecordOutcome, RecordQuery,
    RecordRow, RepeaterHealth, RepeaterRow, Store, StoreError, StoreResult,
};
use crate::model::{Millis, NewEvent, RecordState, RepeaterSpec};

mod group;
mod reads;

use group::{FinishJob, IngestJob, SubscriberCache, WriteJob, group_commit};
use reads::LaneReads;

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Read connections by default: enough for the API and the scheduler
/// side by side.
pub(crate) const READ_CONNECTIONS: u32 = 4;
/// How often a connection of its own copies the write-ahead log into the
/// database file, off the writer.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// Log pages after which the writer's own commit checkpoints (SQLite's
/// default is 1,000). The background copy rarely lets the log reach it, but
/// it cannot reset the log while the writer keeps appending: this one
/// does, so the log stays under about 40 MiB.
const WRITER_CHECKPOINT_PAGES: &str = "10000";
/// Settings every connection to the file runs with, the pools' and the
/// group writer's alike, applied in this order when it opens.
///
/// - WAL with `synchronous=NORMAL`: readers never block the writer, and a
///   process crash loses nothing (a power cut may lose the last commits).
/// - Foreign keys enforced.
/// - Temporary storage in memory. A multi-row statement inside a larger
///   transaction keeps the pages it changes in a statement journal, so it
///   can be undone alone; on disk that journal is a new temporary file in
///   nearly every group commit (an `open`, writes and an `unlink`), which
///   cost about 6 % of the daemon's CPU in the latency scenario.
const CONNECTION_PRAGMAS: [(&str, &str); 4] = [
    ("journal_mode", "WAL"),
    ("synchronous", "NORMAL"),
    ("foreign_keys", "ON"),
    ("temp_store", "MEMORY"),
];
/// Ingests and batch results waiting for the writer task before a caller
/// waits for room.
const WRITE_QUEUE: usize = 1_024;

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// The scheduler's reads: the ready set, wake-up times and claims.
    lane_reads: LaneReads,
    wake: Arc<Notify>,
    jobs: mpsc::Sender<WriteJob>,
    /// Bumped by every write that changes the repeaters table, so the
    /// writer task knows its copy of the subscribers is out of date.
    repeaters_changed: Arc<AtomicU64>,
    /// Dropped with the store, which stops the checkpoint task.
    _checkpoints: oneshot::Sender<()>,
    /// The lock file, locked for the store's life: one process owns the
    /// database file.
    _owner: std::fs::File,
}

impl SqliteStore {
    /// [`SqliteStore::open_with`] with the default number of readers.
    pub async fn open(path: &Path) -> StoreResult<SqliteStore> {
        Self::open_with(path, READ_CONNECTIONS).await
    }

    /// Opens (creating if needed) the database file at `path`, with up to
    /// `readers` read-only connections for the API and as many kept for the
    /// scheduler's reads. Does not migrate; call [`Store::migrate`] or use
    /// [`super::open`].
    pub async fn open_with(path: &Path, readers: u32) -> StoreResult<SqliteStore> {
        let readers = readers.max(1);
        let owner = own_file(path)?;
        let options = (CONNECTION_PRAGMAS.iter()).fold(
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .busy_timeout(BUSY_TIMEOUT),
            |options, (name, value)| options.pragma(*name, *value),
        );
        // One writer, kept open for the store's life: writes queue here
        // instead of fighting over the file lock.
        // No ping before each use: a SQLite connection is a handle to a
        // file, and the ping is one more hop to its worker thread per
        // statement.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with((options.clone()).pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES))
            .await?;
        // SQLite's own checkpoint runs inside the commit that crosses its
        // threshold, on the thread that runs the commit: the group commit's
        // tokio worker. With the default threshold, several times a second
        // at full load, it copied and synced 4 MiB of log there, and the
        // writer and that worker's tasks waited. A connection of its own
        // copies the log in the background instead.
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await?;
        let (stop_checkpoints, stopped) = oneshot::channel();
        tokio::spawn(checkpoints(checkpointer, stopped));
        let reader = SqlitePoolOptions::new()
            .max_connections(readers)
            .test_before_acquire(false)
            .connect_with(options.create_if_missing(false).read_only(true))
            .await?;
        free_leases_of_the_last_owner(&writer).await?;
        let wake = Arc::new(Notify::new());
        let (jobs, queue) = mpsc::channel(WRITE_QUEUE);
        // The task ends when the store, the only sender, is dropped.
        let repeaters_changed = Arc::new(AtomicU64::new(0));
        let subscribers = SubscriberCache::new(repeaters_changed.clone());
        let group_writer = group::open_writer(path)?;
        let lane_reads = LaneReads::open(path, readers as usize)?;
        tokio::spawn(group_commit(group_writer, wake.clone(), queue, subscribers));
        Ok(SqliteStore {
            writer,
            reader,
            lane_reads,
            wake,
            jobs,
            repeaters_changed,
            _checkpoints: stop_checkpoints,
            _owner: owner,
        })
    }

    /// Hands `job` to the writer task and waits for its answer.
    async fn send<T>(
        &self,
        job: WriteJob,
        answer: oneshot::Receiver<StoreResult<T>>,
    ) -> StoreResult<T> {
        // The writer task stops only with a closed pool or a panic.
        let gone = || StoreError::Database(sqlx::Error::PoolClosed);
        self.jobs.send(job).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Marks the writer task's copy of the subscribers out of date. Called
    /// inside the write transaction that changes the repeaters table: that
    /// transaction holds the write lock, so the next group commit starts
    /// after it committed and reads the new rows.
    fn repeaters_changed(&self) {
        self.repeaters_changed.fetch_add(1, AtomicOrdering::SeqCst);
    }

    /// [`begin_write`] on this store's writer.
    async fn write(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        begin_write(&self.writer).await
    }

    async fn repeater_id(
        tx: &mut Transaction<'static, Sqlite>,
        domain: &str,
        name: &str,
    ) -> StoreResult<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM repeaters WHERE domain = $1 AND name = $2")
                .bind(domain)
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?,
        )
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("../migrations/sqlite")
            .run(&self.writer)
            .await?;
        Ok(())
    }

    fn wake_signal(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    async fn upsert_repeater(&self, spec: &RepeaterSpec, now: Millis) -> StoreResult<RepeaterRow> {
        let json = input::spec_json(spec)?;
        let mut tx = self.write().await?;
        let raw: RepeaterRecordRaw = sqlx::query_as(&format!(
            "INSERT INTO repeaters (domain, name, spec, ordering, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (domain, name) DO UPDATE SET spec = excluded.spec, \
             ordering = excluded.ordering, updated_at = excluded.updated_at \
             RETURNING {REPEATER_COLUMNS}"
        ))
        .bind(&spec.domain)
        .bind(&spec.name)
        .bind(&json)
        .bind(input::ordering_code(spec.ordering))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        self.repeaters_changed();
        tx.commit().await?;
        raw.decode()
    }

    async fn delete_repeater(&self, domain: &str, name: &str, now: Millis) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let Some(id) = Self::repeater_id(&mut tx, domain, name).await? else {
            return Ok(false);
        };
        sqlx::query(
            "UPDATE records SET state = 5, next_attempt_at = NULL, updated_at = $1, \
             last_error = 'repeater deleted' WHERE repeater_id = $2 AND state IN (0, 1)",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM repeaters WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.repeaters_changed();
        tx.commit().await?;
        Ok(true)
    }

    async fn repeater(&self, domain: &str, name: &str) -> StoreResult<Option<RepeaterRow>> {
        let raw: Option<RepeaterRecordRaw> = sqlx::query_as(&format!(
            "SELECT {REPEATER_COLUMNS} FROM repeaters WHERE domain = $1 AND name = $2"
        ))
        .bind(domain)
        .bind(name)
        .fetch_optional(&self.reader)
        .await?;
        raw.map(RepeaterRecordRaw::decode).transpose()
    }

    async fn repeaters(&self, domain: Option<&str>) -> StoreResult<Vec<RepeaterRow>> {
        let raws: Vec<RepeaterRecordRaw> = sqlx::query_as(&format!(
            "SELECT {REPEATER_COLUMNS} FROM repeaters \
             WHERE $1 IS NULL OR domain = $1 ORDER BY domain, name"
        ))
        .bind(domain)
        .fetch_all(&self.reader)
        .await?;
        raws.into_iter().map(RepeaterRecordRaw::decode).collect()
    }

    async fn backlog(&self, repeater_id: i64) -> StoreResult<Backlog> {
        let rows: Vec<(i16, i64)> = sqlx::query_as(
            "SELECT state, COUNT(*) FROM records WHERE repeater_id = $1 GROUP BY state",
        )
        .bind(repeater_id)
        .fetch_all(&self.reader)
        .await?;
        let mut backlog = Backlog::default();
        for (state, count) in rows {
            backlog.add(decode_state(state)?, count);
        }
        Ok(backlog)
    }

    async fn backlog_by_domain(&self) -> StoreResult<Vec<(String, RecordState, i64)>> {
        let rows: Vec<(String, i16, i64)> = sqlx::query_as(
            "SELECT domain, state, COUNT(*) FROM records WHERE state IN (0, 1) \
             GROUP BY domain, state ORDER BY domain, state",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|(domain, state, count)| Ok((domain, decode_state(state)?, count)))
            .collect()
    }

    async fn set_paused(
        &self,
        domain: &str,
        name: &str,
        paused: bool,
        now: Millis,
    ) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let changed = sqlx::query(
            "UPDATE repeaters SET paused = $1, updated_at = $2 WHERE domain = $3 AND name = $4",
        )
        .bind(paused)
        .bind(now)
        .bind(domain)
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if changed > 0 && !paused {
            self.wake.notify_one();
        }
        Ok(changed > 0)
    }

    async fn requeue(&self, domain: &str, name: &str, now: Millis) -> StoreResult<u64> {
        let mut tx = self.write().await?;
        let Some(id) = Self::repeater_id(&mut tx, domain, name).await? else {
            return Err(StoreError::NotFound(format!("repeater {domain}/{name}")));
        };
        let moved = sqlx::query(
            "UPDATE records SET state = 0, attempts = 0, age_origin = $1, next_attempt_at = $1, \
             updated_at = $1 WHERE repeater_id = $2 AND state IN (1, 5)",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE repeaters SET backoff_until = NULL, backoff_step = 0, updated_at = $1 \
             WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.wake.notify_one();
        Ok(moved)
    }

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
        let (reply, answer) = oneshot::channel();
        let job = IngestJob {
            domain: domain.to_owned(),
            events: events.to_vec(),
            plan,
            now,
            reply,
        };
        self.send(WriteJob::Ingest(job), answer).await
    }

    async fn ready_repeaters(&self, now: Millis, holder: &str) -> StoreResult<Vec<ReadyRepeater>> {
        self.lane_reads.ready_repeaters(now, holder)
    }

    async fn next_wakeup(&self, now: Millis, holder: &str) -> StoreResult<Option<Millis>> {
        self.lane_reads.next_wakeup(now, holder)
    }

    async fn acquire_lease(
        &self,
        repeater_id: i64,
        holder: &str,
        now: Millis,
        ttl_ms: i64,
    ) -> StoreResult<Option<Lease>> {
        let token = new_token();
        let expires_at = now.saturating_add(ttl_ms);
        let epochs: Vec<i64> = sqlx::query_scalar(
            "UPDATE repeaters SET lease_epoch = lease_epoch + 1, lease_token = $1, \
             lease_holder = $2, lease_expires_at = $3 \
             WHERE id = $4 AND (lease_expires_at IS NULL OR lease_expires_at <= $5) \
             RETURNING lease_epoch",
        )
        .bind(&token)
        .bind(holder)
        .bind(expires_at)
        .bind(repeater_id)
        .bind(now)
        // Stepped to the end, so the statement has finished (and committed)
        // before the connection goes back to the pool.
        .fetch_all(&self.writer)
        .await?;
        let Some(&epoch) = epochs.first() else {
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM repeaters WHERE id = $1")
                .bind(repeater_id)
                .fetch_optional(&self.reader)
                .await?;
            return match exists {
                Some(_) => Ok(None),
                None => Err(StoreError::NotFound(format!("repeater {repeater_id}"))),
            };
        };
        Ok(Some(Lease {
            repeater_id,
            epoch,
            token,
            expires_at,
        }))
    }

    async fn renew_lease(&self, lease: &Lease, now: Millis, ttl_ms: i64) -> StoreResult<Lease> {
        let expires_at = now.saturating_add(ttl_ms);
        let renewed = sqlx::query(
            "UPDATE repeaters SET lease_expires_at = $1 \
             WHERE id = $2 AND lease_epoch = $3 AND lease_token = $4",
        )
        .bind(expires_at)
        .bind(lease.repeater_id)
        .bind(lease.epoch)
        .bind(&lease.token)
        .execute(&self.writer)
        .await?
        .rows_affected();
        if renewed != 1 {
            return Err(lease_lost(lease));
        }
        Ok(Lease {
            expires_at,
            ..lease.clone()
        })
    }

    async fn claim_lane(
        &self,
        lease: &Lease,
        limit: u32,
        now: Millis,
    ) -> StoreResult<(RepeaterRow, Vec<ClaimedRecord>)> {
        self.lane_reads.claim_lane(lease, limit, now)
    }

    async fn finish_batch(
        &self,
        lease: &Lease,
        outcomes: &[RecordOutcome],
        health: Option<&RepeaterHealth>,
        release: bool,
        now: Millis,
    ) -> StoreResult<()> {
        let (reply, answer) = oneshot::channel();
        let job = FinishJob {
            lease: lease.clone(),
            updates: (outcomes.iter())
                .map(|outcome| RecordUpdate::from_outcome(outcome, now))
                .collect(),
            attempts: (outcomes.iter())
                .filter_map(|o| o.attempt.clone().map(|a| (o.record_id, a)))
                .collect(),
            health: health.cloned(),
            release,
            now,
            reply,
        };
        self.send(WriteJob::Finish(job), answer).await
    }

    async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
        let released = sqlx::query(
            "UPDATE repeaters SET lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND lease_epoch = $2 AND lease_token = $3",
        )
        .bind(lease.repeater_id)
        .bind(lease.epoch)
        .bind(&lease.token)
        .execute(&self.writer)
        .await?
        .rows_affected();
        if released > 0 {
            self.wake.notify_one();
        }
        Ok(())
    }

    async fn records(&self, domain: &str, query: &RecordQuery) -> StoreResult<Vec<RecordRow>> {
        let sql = records_page_sql(query);
        let mut page = sqlx::query_as::<_, RecordRowRaw>(&sql)
            .bind(domain)
            .bind(i64::from(query.limit))
            .bind(query.after.unwrap_or(0));
        if let Some(repeater) = &query.repeater {
            page = page.bind(repeater.as_str());
        }
        let raws = page.fetch_all(&self.reader).await?;
        raws.into_iter().map(RecordRowRaw::decode).collect()
    }

    async fn record(
        &self,
        domain: &str,
        id: i64,
    ) -> StoreResult<Option<(RecordRow, Vec<AttemptRow>)>> {
        let raw: Option<RecordRowRaw> = sqlx::query_as(&format!(
            "SELECT {RECORD_COLUMNS} FROM records r JOIN events e ON e.id = r.event_id \
             WHERE r.domain = $1 AND r.id = $2"
        ))
        .bind(domain)
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let attempts: Vec<AttemptRowRaw> = sqlx::query_as(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE record_id = $1 ORDER BY id"
        ))
        .bind(id)
        .fetch_all(&self.reader)
        .await?;
        let attempts = attempts
            .into_iter()
            .map(AttemptRowRaw::decode)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Some((raw.decode()?, attempts)))
    }

    async fn resend(&self, domain: &str, id: i64, now: Millis) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let found: Option<(i64, bool)> = sqlx::query_as(
            "SELECT r.repeater_id, EXISTS (SELECT 1 FROM repeaters p WHERE p.id = r.repeater_id) \
             FROM records r WHERE r.domain = $1 AND r.id = $2",
        )
        .bind(domain)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        match found {
            None => return Ok(false),
            Some((_, false)) => {
                return Err(StoreError::Invalid(format!(
                    "record {id} cannot be resent: its repeater was deleted"
                )));
            }
            Some((_, true)) => {}
        }
        sqlx::query(
            "UPDATE records SET state = 0, attempts = 0, age_origin = $1, next_attempt_at = $1, \
             updated_at = $1 WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.wake.notify_one();
        Ok(true)
    }

    async fn cancel(&self, domain: &str, id: i64, now: Millis) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let state: Option<i16> =
            sqlx::query_scalar("SELECT state FROM records WHERE domain = $1 AND id = $2")
                .bind(domain)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(state) = state else {
            return Ok(false);
        };
        let state = decode_state(state)?;
        if state.is_terminal() {
            return Err(StoreError::Invalid(format!(
                "record {id} is already {state} and cannot be cancelled"
            )));
        }
        sqlx::query(
            "UPDATE records SET state = 5, next_attempt_at = NULL, updated_at = $1 WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn purge_terminal(&self, before: Millis, limit: u32) -> StoreResult<u64> {
        let mut tx = self.write().await?;
        let victims: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT id, event_id FROM records WHERE state >= 2 AND updated_at < $1 \
             ORDER BY updated_at LIMIT $2",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let record_ids: Vec<i64> = victims.iter().map(|(id, _)| *id).collect();
        let mut event_ids: Vec<i64> = victims.iter().map(|(_, event)| *event).collect();
        event_ids.sort_unstable();
        event_ids.dedup();
        for chunk in record_ids.chunks(ROWS_PER_STATEMENT) {
            delete_in(
                &mut tx,
                "DELETE FROM attempts WHERE record_id IN (",
                chunk,
                ")",
            )
            .await?;
            delete_in(&mut tx, "DELETE FROM records WHERE id IN (", chunk, ")").await?;
        }
        for chunk in event_ids.chunks(ROWS_PER_STATEMENT) {
            delete_in(
                &mut tx,
                "DELETE FROM events WHERE id IN (",
                chunk,
                ") AND NOT EXISTS (SELECT 1 FROM records r WHERE r.event_id = events.id)",
            )
            .await?;
        }
        tx.commit().await?;
        Ok(record_ids.len() as u64)
    }
}

/// A connection of the store's own to the file at `path` (not one of the
/// pools'), stepped with rusqlite: opened with `flags`, waiting up to
/// `busy_timeout` for another connection's lock, with
/// [`CONNECTION_PRAGMAS`] applied and room for `statements` prepared
/// statements.
fn open_own(
    path: &Path,
    flags: rusqlite::OpenFlags,
    busy_timeout: Duration,
    statements: usize,
) -> StoreResult<rusqlite::Connection> {
    let db = rusqlite::Connection::open_with_flags(
        path,
        flags | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    db.busy_timeout(busy_timeout)?;
    for (name, value) in CONNECTION_PRAGMAS {
        db.pragma_update(None, name, value)?;
    }
    db.set_prepared_statement_cache_capacity(statements);
    Ok(db)
}

/// Locks `<path>.lock` for this process, or says which file is in use. The
/// kernel drops the lock when the process ends, however it ends. A file of
/// its own, because closing any descriptor of the database file itself
/// would drop SQLite's own locks on it.
fn own_file(path: &Path) -> StoreResult<std::fs::File> {
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    let lock = std::path::PathBuf::from(lock);
    let cannot = |error: std::io::Error| {
        StoreError::Invalid(format!("cannot lock {}: {error}", lock.display()))
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(cannot)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse {
            path: path.display().to_string(),
            lock: lock.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(error)) => Err(cannot(error)),
    }
}

/// Frees every lease stored in the file. Only one process at a time opens
/// it ([`own_file`]), so a lease found at opening belongs to a process that
/// has ended: its lanes can start at once instead of after the lease's TTL.
/// The epochs stay, so a result written under one of those leases would
/// still be refused. A file not migrated yet has nothing to free.
async fn free_leases_of_the_last_owner(writer: &SqlitePool) -> StoreResult<()> {
    let migrated: Option<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'repeaters'",
    )
    .fetch_optional(writer)
    .await?;
    if migrated.is_some() {
        let freed = sqlx::query(
            "UPDATE repeaters SET lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL \
             WHERE lease_holder IS NOT NULL",
        )
        .execute(writer)
        .await?
        .rows_affected();
        if freed > 0 {
            tracing::info!(
                leases = freed,
                "freed the leases of the process that used the database before"
            );
        }
    }
    Ok(())
}

/// Copies the write-ahead log into the database file every
/// [`CHECKPOINT_EVERY`] until `stop` ends (its sender, held by the store,
/// is dropped). Passive: a checkpoint copies what it can without waiting
/// for the writer or a reader, and the writer goes on appending meanwhile.
async fn checkpoints(pool: SqlitePool, mut stop: oneshot::Receiver<()>) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = every.tick() => {
                if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
                    tracing::warn!(%error, "WAL checkpoint failed; trying again at the next tick");
                }
            }
        }
    }
    pool.close().await;
}

/// Runs `head <ids> tail` with the ids as a bound list.
async fn delete_in(
    tx: &mut Transaction<'static, Sqlite>,
    head: &str,
    ids: &[i64],
    tail: &str,
) -> StoreResult<()> {
    let mut query = QueryBuilder::<Sqlite>::new(head);
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    query.push(tail);
    query.build().execute(&mut **tx).await?;
    Ok(())
}

/// A write transaction holding the write lock from its first statement.
async fn begin_write(writer: &SqlitePool) -> StoreResult<Transaction<'static, Sqlite>> {
    Ok(writer.begin_with("BEGIN IMMEDIATE").await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_configured_number_of_readers_sizes_both_read_paths() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_with(&dir.path().join("readers.db"), 2)
            .await
            .unwrap();
        assert_eq!(store.reader.options().get_max_connections(), 2);
        assert_eq!(store.lane_reads.keep(), 2);
        drop(store);
        let store = SqliteStore::open(&dir.path().join("default.db"))
            .await
            .unwrap();
        assert_eq!(
            store.reader.options().get_max_connections(),
            READ_CONNECTIONS
        );
        assert_eq!(store.lane_reads.keep(), READ_CONNECTIONS as usize);
    }

    /// Every shape of the records listing reads `records` only through
    /// ranges of the per-state indexes, one per listed state, and never scans
    /// the table: a page must cost the same in a domain of ten records and
    /// in one of ten million.
    #[tokio::test]
    async fn record_listings_read_only_index_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("plans.db"))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        for repeater in [None, Some("a".to_owned())] {
            for state in [None, Some(RecordState::Rejected)] {
                let query = RecordQuery {
                    repeater: repeater.clone(),
                    state,
                    after: Some(7),
                    limit: 10,
                };
                let sql = format!("EXPLAIN QUERY PLAN {}", records_page_sql(&query));
                let mut plan = sqlx::query_as::<_, (i64, i64, i64, String)>(&sql)
                    .bind("acme")
                    .bind(10_i64)
                    .bind(7_i64);
                if let Some(name) = &repeater {
                    plan = plan.bind(name.as_str());
                }
                let steps: Vec<String> = plan
                    .fetch_all(&store.reader)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|(_, _, _, detail)| detail)
                    .collect();
                let index = if repeater.is_some() {
                    "records_repeater_state"
                } else {
                    "records_domain_state"
                };
                let ranges = steps
                    .iter()
                    .filter(|step| {
                        step.starts_with(&format!("SEARCH records USING COVERING INDEX {index} ("))
                            && step.ends_with("state=? AND id>?)")
                    })
                    .count();
                let listed = if state.is_some() {
                    1
                } else {
                    RecordState::ALL.len()
                };
                assert_eq!(ranges, listed, "{query:?}: {steps:#?}");
                assert!(
                    !steps.iter().any(|step| step.starts_with("SCAN records")
                        || step.starts_with("SCAN r ")
                        || step == "SCAN r"),
                    "{query:?} scans the records table: {steps:#?}"
                );
            }
        }
    }
}
