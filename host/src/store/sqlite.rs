//! The embedded store: one SQLite file, owned by one daemon process.
//!
//! All writes go through a single writer connection, each in `BEGIN
//! IMMEDIATE` so a transaction takes the write lock up front instead of
//! failing to upgrade a read lock halfway. Lease writes are one statement
//! each, which is its own transaction and takes the write lock at its start:
//! one trip to the writer instead of three. Reads use a small pool of
//! read-only connections and never open long transactions, so WAL
//! checkpoints keep up. The file runs in WAL mode with `synchronous=NORMAL`:
//! a power cut may lose the last commits, a process crash loses nothing.
//!
//! Ingests and batch results are committed in groups: one writer task
//! takes every ingest and every batch result waiting for the write lock
//! into one transaction, and writes the whole group with a few multi-row
//! statements (three for the ingests, three for the batch results). Many
//! producers posting a few events each, and many lanes finishing batches
//! of one or two records, would otherwise cost a transaction and several
//! statements apiece (each statement a trip to the connection's thread)
//! and fill the writer's queue; grouped, the writer's cost per job falls
//! as its queue grows.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite, Transaction};
use tokio::sync::{Notify, mpsc, oneshot};

use super::input::{
    self, IngestPlan, ROWS_PER_STATEMENT, RecordUpdate, Subscriber, lease_lost, new_token,
};
use super::rows::{
    ATTEMPT_COLUMNS, AttemptRowRaw, CLAIM_COLUMNS, ClaimedRecordRaw, RECORD_COLUMNS,
    REPEATER_COLUMNS, RecordRowRaw, RepeaterRecordRaw, decode_state,
};
use super::{
    AttemptDraft, AttemptRow, Backlog, ClaimedRecord, Ingested, IngestedRecord, Lease,
    ReadyRepeater, RecordOutcome, RecordQuery, RecordRow, RepeaterHealth, RepeaterRow, Store,
    StoreError, StoreResult,
};
use crate::model::{Millis, NewEvent, Ordering, RecordState, RepeaterSpec};

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Read connections: enough for the API and the scheduler side by side.
const READ_CONNECTIONS: u32 = 4;
/// Most events one group commit of ingests takes: enough to absorb a burst
/// of small posts, small enough that a group holds the write lock for
/// milliseconds, not seconds.
const GROUP_EVENTS: usize = 2_000;
/// Most record outcomes one group commit of batch results takes.
const GROUP_OUTCOMES: usize = 2_000;
/// Ingests and batch results waiting for the writer task before a caller
/// waits for room.
const WRITE_QUEUE: usize = 1_024;

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    wake: Arc<Notify>,
    jobs: mpsc::Sender<WriteJob>,
    /// Bumped by every write that changes the repeaters table, so the
    /// writer task knows its copy of the subscribers is out of date.
    repeaters_changed: Arc<AtomicU64>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`. Does not
    /// migrate; call [`Store::migrate`] or use [`super::open`].
    pub async fn open(path: &Path) -> StoreResult<SqliteStore> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
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
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .test_before_acquire(false)
            .connect_with(options.create_if_missing(false).read_only(true))
            .await?;
        let wake = Arc::new(Notify::new());
        let (jobs, queue) = mpsc::channel(WRITE_QUEUE);
        // The task ends when the store, the only sender, is dropped.
        let repeaters_changed = Arc::new(AtomicU64::new(0));
        let subscribers = SubscriberCache::new(repeaters_changed.clone());
        tokio::spawn(group_commit(
            writer.clone(),
            wake.clone(),
            queue,
            subscribers,
        ));
        Ok(SqliteStore {
            writer,
            reader,
            wake,
            jobs,
            repeaters_changed,
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
    /// transaction holds the only writer connection, so the next group
    /// commit starts after it committed and reads the new rows.
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
        let rows: Vec<(i64, String, String)> = sqlx::query_as(&format!(
            "SELECT p.id, p.domain, p.name FROM repeaters p \
             WHERE NOT p.paused \
               AND (p.backoff_until IS NULL OR p.backoff_until <= $1) \
               AND (p.lease_expires_at IS NULL OR p.lease_expires_at <= $1 OR p.lease_holder = $2) \
               AND CASE p.ordering \
                   WHEN 1 THEN EXISTS (SELECT 1 FROM records r WHERE r.id = {head} \
                                       AND r.next_attempt_at <= $1) \
                   WHEN 2 THEN EXISTS (SELECT 1 FROM records r WHERE r.repeater_id = p.id \
                                       AND r.state IN (0, 1) AND r.next_attempt_at <= $1 \
                                       AND {KEY_HEAD}) \
                   ELSE EXISTS (SELECT 1 FROM records r WHERE r.repeater_id = p.id \
                                AND r.state IN (0, 1) AND r.next_attempt_at <= $1) \
                   END \
             ORDER BY p.domain, p.name",
            head = fifo_head("p.id"),
        ))
        .bind(now)
        .bind(holder)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, domain, name)| ReadyRepeater { id, domain, name })
            .collect())
    }

    async fn next_wakeup(&self, now: Millis, holder: &str) -> StoreResult<Option<Millis>> {
        // Per repeater: its earliest due record, pushed back by its backoff
        // and another holder's lease; one index probe per repeater on the
        // ready set.
        // A fifo lane waits for its head record, a key lane for the heads
        // of its keys (a scan of that lane's unfinished records).
        let at: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT MIN(max(d.due, COALESCE(d.backoff_until, 0), COALESCE(d.lease_expires_at, 0))) \
             FROM (SELECT p.backoff_until, \
                          CASE WHEN p.lease_holder = $1 THEN NULL ELSE p.lease_expires_at END \
                              AS lease_expires_at, \
                          CASE p.ordering \
                          WHEN 1 THEN (SELECT r.next_attempt_at FROM records r WHERE r.id = {head}) \
                          WHEN 2 THEN (SELECT MIN(r.next_attempt_at) FROM records r \
                                       WHERE r.repeater_id = p.id AND r.state IN (0, 1) AND {KEY_HEAD}) \
                          ELSE (SELECT MIN(r.next_attempt_at) FROM records r \
                                WHERE r.repeater_id = p.id AND r.state IN (0, 1)) \
                          END AS due \
                   FROM repeaters p WHERE NOT p.paused) d \
             WHERE d.due IS NOT NULL",
            head = fifo_head("p.id"),
        ))
        .bind(holder)
        .fetch_one(&self.reader)
        .await?;
        Ok(at.map(|at| at.max(now)))
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
        let raw: Option<RepeaterRecordRaw> = sqlx::query_as(&format!(
            "SELECT {REPEATER_COLUMNS} FROM repeaters \
             WHERE id = $1 AND lease_epoch = $2 AND lease_token = $3"
        ))
        .bind(lease.repeater_id)
        .bind(lease.epoch)
        .bind(&lease.token)
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = raw.map(RepeaterRecordRaw::decode).transpose()? else {
            return Err(lease_lost(lease));
        };
        let rule = match row.spec.ordering {
            // fifo: only the oldest unfinished record, and only when it is due.
            Ordering::Fifo => format!("r.id = {}", fifo_head("$1")),
            // key: per key, only its oldest unfinished record.
            Ordering::Key => KEY_HEAD.to_owned(),
            Ordering::None => "TRUE".to_owned(),
        };
        let raws: Vec<ClaimedRecordRaw> = sqlx::query_as(&format!(
            "SELECT {CLAIM_COLUMNS} FROM records r JOIN events e ON e.id = r.event_id \
             WHERE r.repeater_id = $1 AND r.state IN (0, 1) AND r.next_attempt_at <= $2 AND {rule} \
             ORDER BY r.next_attempt_at, r.id LIMIT $3"
        ))
        .bind(lease.repeater_id)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        Ok((
            row,
            raws.into_iter().map(ClaimedRecordRaw::decode).collect(),
        ))
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
        let mut sql = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {RECORD_COLUMNS} FROM records r JOIN events e ON e.id = r.event_id WHERE r.domain = "
        ));
        sql.push_bind(domain);
        if let Some(repeater) = &query.repeater {
            sql.push(" AND r.repeater_id = (SELECT id FROM repeaters WHERE domain = ")
                .push_bind(domain)
                .push(" AND name = ")
                .push_bind(repeater.as_str())
                .push(")");
        }
        if let Some(state) = query.state {
            sql.push(" AND r.state = ").push_bind(state.as_i16());
        }
        if let Some(after) = query.after {
            sql.push(" AND r.id > ").push_bind(after);
        }
        sql.push(" ORDER BY r.id LIMIT ")
            .push_bind(i64::from(query.limit));
        let raws: Vec<RecordRowRaw> = sql.build_query_as().fetch_all(&self.reader).await?;
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

/// One ingest call waiting for the group-commit writer.
struct IngestJob {
    domain: String,
    events: Vec<NewEvent>,
    plan: IngestPlan,
    now: Millis,
    reply: oneshot::Sender<StoreResult<Vec<Ingested>>>,
}

/// One batch's results waiting for the group-commit writer.
struct FinishJob {
    lease: Lease,
    updates: Vec<RecordUpdate>,
    attempts: Vec<(i64, AttemptDraft)>,
    health: Option<RepeaterHealth>,
    release: bool,
    now: Millis,
    reply: oneshot::Sender<StoreResult<()>>,
}

/// A write waiting for the writer task.
enum WriteJob {
    Ingest(IngestJob),
    Finish(FinishJob),
}

/// The jobs of one group commit.
#[derive(Default)]
struct Group {
    ingests: Vec<IngestJob>,
    finishes: Vec<FinishJob>,
    events: usize,
    outcomes: usize,
}

impl Group {
    fn is_full(&self) -> bool {
        self.events >= GROUP_EVENTS || self.outcomes >= GROUP_OUTCOMES
    }

    /// Takes `job`, or hands it back when it must wait for the next group:
    /// two results of one lane are never written by one statement.
    fn take(&mut self, job: WriteJob) -> Option<WriteJob> {
        match job {
            WriteJob::Ingest(job) => {
                self.events += job.events.len();
                self.ingests.push(job);
            }
            WriteJob::Finish(job) => {
                let lane = job.lease.repeater_id;
                if self.finishes.iter().any(|f| f.lease.repeater_id == lane) {
                    return Some(WriteJob::Finish(job));
                }
                self.outcomes += job.updates.len().max(1);
                self.finishes.push(job);
            }
        }
        None
    }
}

/// What a group commit answers: each ingest's records, and for each batch
/// result whether its lease still held (written) or not (nothing written).
type GroupAnswers = (Vec<Vec<Ingested>>, Vec<bool>);

/// The writer task: takes the first waiting job and every other one already
/// queued (up to [`GROUP_EVENTS`] events and [`GROUP_OUTCOMES`] outcomes)
/// into one transaction. Ingests and batch results queue here together, so
/// under load each commit carries many of both, and the writer's cost per
/// job falls as its queue grows instead of the queue growing.
///
/// Each ingest sees the ingests before it in the group, exactly as if they
/// had committed one by one, so a repeated event id inside a group is
/// answered as a repeat. Each batch result is fenced by its own lease: one
/// whose lease was taken over writes nothing and is answered
/// [`StoreError::LeaseLost`], the others are written. If the group fails,
/// each of its jobs is tried again in a transaction of its own, so one bad
/// job cannot fail its neighbours. A job whose caller went away is still
/// committed: an ingest's producer may post again (the event ids make that
/// a repeat), and a batch's requests were sent.
async fn group_commit(
    writer: SqlitePool,
    wake: Arc<Notify>,
    mut jobs: mpsc::Receiver<WriteJob>,
    mut subscribers: SubscriberCache,
) {
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match jobs.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut group = Group::default();
        group.take(first);
        while !group.is_full() {
            match jobs.try_recv() {
                Ok(job) => {
                    carried = group.take(job);
                    if carried.is_some() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let Group {
            ingests, finishes, ..
        } = group;
        let (ingested, written) = match commit_group(&writer, &mut subscribers, &ingests, &finishes)
            .await
        {
            Ok((answers, held)) => (
                answers.into_iter().map(Ok).collect(),
                held.into_iter().map(Ok).collect(),
            ),
            Err(error) if ingests.len() + finishes.len() == 1 => {
                if ingests.is_empty() {
                    (Vec::new(), vec![Err(error)])
                } else {
                    (vec![Err(error)], Vec::new())
                }
            }
            Err(error) => {
                tracing::debug!(%error, jobs = ingests.len() + finishes.len(), "group commit failed; committing its jobs one by one");
                let mut ingested = Vec::with_capacity(ingests.len());
                for job in &ingests {
                    let alone =
                        commit_group(&writer, &mut subscribers, std::slice::from_ref(job), &[])
                            .await;
                    ingested.push(alone.map(|(mut answers, _)| answers.remove(0)));
                }
                let mut written = Vec::with_capacity(finishes.len());
                for job in &finishes {
                    let alone =
                        commit_group(&writer, &mut subscribers, &[], std::slice::from_ref(job))
                            .await;
                    written.push(alone.map(|(_, held)| held[0]));
                }
                (ingested, written)
            }
        };
        let created = ingested.iter().any(|result: &StoreResult<Vec<Ingested>>| {
            result
                .as_ref()
                .is_ok_and(|answers| answers.iter().any(|a| a.created && !a.records.is_empty()))
        });
        let released = (finishes.iter().zip(&written))
            .any(|(job, result)| job.release && matches!(result, Ok(true)));
        if created || released {
            // New records, or a lane free again: the scheduler may want it.
            wake.notify_one();
        }
        for (job, result) in ingests.into_iter().zip(ingested) {
            // A caller that went away no longer needs its answer.
            let _ = job.reply.send(result);
        }
        for (job, result) in finishes.into_iter().zip(written) {
            let answer = match result {
                Ok(true) => Ok(()),
                Ok(false) => Err(lease_lost(&job.lease)),
                Err(error) => Err(error),
            };
            let _ = job.reply.send(answer);
        }
    }
}

/// Runs `ingests` and `finishes` in one write transaction: the ingests'
/// answers in order and whether each finish's lease held, or the first
/// error with nothing written.
async fn commit_group(
    writer: &SqlitePool,
    subscribers: &mut SubscriberCache,
    ingests: &[IngestJob],
    finishes: &[FinishJob],
) -> StoreResult<GroupAnswers> {
    let mut tx = begin_write(writer).await?;
    let answers = if ingests.is_empty() {
        Vec::new()
    } else {
        ingest_group(&mut tx, subscribers, ingests).await?
    };
    let held = if finishes.is_empty() {
        Vec::new()
    } else {
        finish_group(&mut tx, finishes).await?
    };
    tx.commit().await?;
    Ok((answers, held))
}

/// The results of several batches, inside the group's write transaction:
/// whether each batch's lease still held. One statement fences every batch
/// by its lease and writes its health and release; the records and
/// attempts of the batches that held are then written with one multi-row
/// statement each, whatever the number of batches.
async fn finish_group(
    tx: &mut Transaction<'static, Sqlite>,
    jobs: &[FinishJob],
) -> StoreResult<Vec<bool>> {
    let mut held = HashSet::new();
    for chunk in jobs.chunks(ROWS_PER_STATEMENT) {
        let mut fence = QueryBuilder::<Sqlite>::new(
            "WITH v (id, epoch, token, health, backoff_until, backoff_step, last_error, \
             last_success_at, release, now) AS (",
        );
        fence.push_values(chunk, |mut row, job| {
            let health = job.health.as_ref();
            row.push_bind(job.lease.repeater_id)
                .push_bind(job.lease.epoch)
                .push_bind(&job.lease.token)
                .push_bind(health.is_some())
                .push_bind(health.and_then(|h| h.backoff_until))
                .push_bind(health.map(|h| i32::try_from(h.backoff_step).unwrap_or(i32::MAX)))
                .push_bind(health.and_then(|h| h.last_error.as_deref()))
                .push_bind(health.and_then(|h| h.last_success_at))
                .push_bind(job.release)
                .push_bind(job.now);
        });
        // The fence: a row matches only while its batch's epoch holds the
        // lane, and it carries that batch's health and release with it.
        fence.push(
            ") UPDATE repeaters SET \
             backoff_until = CASE WHEN v.health THEN v.backoff_until ELSE repeaters.backoff_until END, \
             backoff_step = CASE WHEN v.health THEN v.backoff_step ELSE repeaters.backoff_step END, \
             last_error = CASE WHEN v.health THEN COALESCE(v.last_error, repeaters.last_error) \
                          ELSE repeaters.last_error END, \
             last_success_at = CASE WHEN v.health THEN COALESCE(v.last_success_at, repeaters.last_success_at) \
                               ELSE repeaters.last_success_at END, \
             updated_at = CASE WHEN v.health THEN v.now ELSE repeaters.updated_at END, \
             lease_holder = CASE WHEN v.release THEN NULL ELSE repeaters.lease_holder END, \
             lease_token = CASE WHEN v.release THEN NULL ELSE repeaters.lease_token END, \
             lease_expires_at = CASE WHEN v.release THEN NULL ELSE repeaters.lease_expires_at END \
             FROM v WHERE repeaters.id = v.id AND repeaters.lease_epoch = v.epoch \
             AND repeaters.lease_token = v.token RETURNING repeaters.id",
        );
        let ids: Vec<i64> = fence.build_query_scalar().fetch_all(&mut **tx).await?;
        held.extend(ids);
    }
    let written: Vec<&FinishJob> = (jobs.iter())
        .filter(|job| held.contains(&job.lease.repeater_id))
        .collect();

    let updates: Vec<(i64, &RecordUpdate, Millis)> = (written.iter())
        .flat_map(|job| (job.updates.iter()).map(|u| (job.lease.repeater_id, u, job.now)))
        .collect();
    for chunk in updates.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "WITH v (record_id, repeater_id, state, next_attempt_at, counted, error, now) AS (",
        );
        query.push_values(chunk, |mut row, (repeater_id, update, now)| {
            row.push_bind(update.record_id)
                .push_bind(*repeater_id)
                .push_bind(update.state)
                .push_bind(update.next_attempt_at)
                .push_bind(update.counted)
                .push_bind(update.error.as_deref())
                .push_bind(*now);
        });
        // Only records of the batch's own lane change.
        query.push(
            ") UPDATE records SET state = v.state, next_attempt_at = v.next_attempt_at, \
             attempts = records.attempts + v.counted, \
             last_error = CASE WHEN v.counted = 1 THEN v.error ELSE records.last_error END, \
             updated_at = v.now \
             FROM v WHERE records.id = v.record_id AND records.repeater_id = v.repeater_id",
        );
        query.build().execute(&mut **tx).await?;
    }

    let attempts: Vec<(i64, &(i64, AttemptDraft))> = (written.iter())
        .flat_map(|job| job.attempts.iter().map(|a| (job.lease.repeater_id, a)))
        .collect();
    for chunk in attempts.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "WITH v (record_id, repeater_id, started_at, duration_ms, status, error, outcome, \
             response_excerpt) AS (",
        );
        query.push_values(chunk, |mut row, (repeater_id, (record_id, attempt))| {
            row.push_bind(*record_id)
                .push_bind(*repeater_id)
                .push_bind(attempt.started_at)
                .push_bind(attempt.duration_ms)
                .push_bind(attempt.status.map(i32::from))
                .push_bind(attempt.error.as_deref())
                .push_bind(attempt.outcome.as_i16())
                .push_bind(attempt.response_excerpt.as_deref());
        });
        // Only records of the batch's own lane get attempts: a stray id is
        // skipped rather than failing the whole batch.
        query.push(
            ") INSERT INTO attempts \
             (record_id, started_at, duration_ms, status, error, outcome, response_excerpt) \
             SELECT v.record_id, v.started_at, v.duration_ms, v.status, v.error, v.outcome, \
             v.response_excerpt FROM v JOIN records r ON r.id = v.record_id \
             WHERE r.repeater_id = v.repeater_id",
        );
        query.build().execute(&mut **tx).await?;
    }
    Ok((jobs.iter())
        .map(|job| held.contains(&job.lease.repeater_id))
        .collect())
}

/// An event of a group, by domain and event id.
type EventRef<'a> = (&'a str, &'a str);

/// The body of a group commit, inside its write transaction: the same
/// answers as committing `jobs` one after another, in three multi-row
/// statements for the whole group (events seen before, new events, new
/// records; a fourth reads the repeaters of domains the writer task does
/// not know yet) instead of four per job. Each statement is a trip
/// to the writer's thread, and a group of small posts used to spend most
/// of its time, and of the lease and batch writes queued behind it, on
/// those trips.
async fn ingest_group(
    tx: &mut Transaction<'static, Sqlite>,
    subscribers: &mut SubscriberCache,
    jobs: &[IngestJob],
) -> StoreResult<Vec<Vec<Ingested>>> {
    let subscribers = subscribers.of(tx, jobs).await?;

    // Ids seen before answer with their first records and create nothing;
    // so does an id an earlier job of the group creates.
    let asked: Vec<EventRef> = jobs
        .iter()
        .flat_map(|job| {
            job.plan
                .firsts
                .iter()
                .map(|&i| (job.domain.as_str(), job.plan.keys[i].as_str()))
        })
        .collect();
    let mut records = existing_records(tx, &asked).await?;
    let mut fresh: Vec<(usize, usize)> = Vec::new();
    let mut first_job: HashMap<EventRef, usize> = HashMap::new();
    for (j, job) in jobs.iter().enumerate() {
        for &i in &job.plan.firsts {
            let event = (job.domain.as_str(), job.plan.keys[i].as_str());
            if !records.contains_key(&event) && !first_job.contains_key(&event) {
                first_job.insert(event, j);
                fresh.push((j, i));
            }
        }
    }

    // The writer lock is held, so no other insert of these ids can race us.
    let mut event_ids: HashMap<EventRef, i64> = HashMap::with_capacity(fresh.len());
    for chunk in fresh.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO events (domain, event_key, event_type, content_type, payload, ordering_key, created_at) ",
        );
        query.push_values(chunk, |mut row, &(j, i)| {
            let (job, event) = (&jobs[j], &jobs[j].events[i]);
            row.push_bind(job.domain.as_str())
                .push_bind(job.plan.keys[i].as_str())
                .push_bind(event.event_type.as_str())
                .push_bind(event.content_type.as_str())
                .push_bind(event.payload.as_slice())
                .push_bind(event.ordering_key.as_deref())
                .push_bind(job.now);
        });
        let ids = inserted_ids(tx, query, chunk.len(), "events").await?;
        for (&(j, i), id) in chunk.iter().zip(ids) {
            event_ids.insert((jobs[j].domain.as_str(), jobs[j].plan.keys[i].as_str()), id);
        }
    }

    // One record per subscribed repeater of each new event.
    let no_subscribers = Vec::new();
    let mut wanted: Vec<(i64, &Subscriber, usize, usize)> = Vec::new();
    for &(j, i) in &fresh {
        let job = &jobs[j];
        let event_id = event_ids[&(job.domain.as_str(), job.plan.keys[i].as_str())];
        let of_domain = subscribers
            .get(job.domain.as_str())
            .unwrap_or(&no_subscribers);
        for subscriber in of_domain.iter().filter(|s| s.takes(&job.events[i])) {
            wanted.push((event_id, subscriber, j, i));
        }
    }
    for chunk in wanted.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO records (event_id, repeater_id, repeater_name, domain, state, attempts, \
             age_origin, next_attempt_at, created_at, updated_at, ordering_key) ",
        );
        query.push_values(chunk, |mut row, &(event_id, subscriber, j, i)| {
            let job = &jobs[j];
            row.push_bind(event_id)
                .push_bind(subscriber.id)
                .push_bind(subscriber.name.as_str())
                .push_bind(job.domain.as_str())
                .push_bind(RecordState::Pending.as_i16())
                .push_bind(0_i32)
                .push_bind(job.now)
                .push_bind(job.now)
                .push_bind(job.now)
                .push_bind(job.now)
                .push_bind(job.events[i].ordering_key.as_deref());
        });
        let ids = inserted_ids(tx, query, chunk.len(), "records").await?;
        for (&(_, subscriber, j, i), id) in chunk.iter().zip(ids) {
            records
                .entry((jobs[j].domain.as_str(), jobs[j].plan.keys[i].as_str()))
                .or_default()
                .push(IngestedRecord {
                    id,
                    repeater: subscriber.name.clone(),
                });
        }
    }

    // Each job's answers, as if it had committed alone after the ones before.
    Ok(jobs
        .iter()
        .enumerate()
        .map(|(j, job)| {
            let mut created = HashSet::new();
            let mut of_job: HashMap<String, Vec<IngestedRecord>> = HashMap::new();
            for &i in &job.plan.firsts {
                let key = job.plan.keys[i].as_str();
                let event = (job.domain.as_str(), key);
                if first_job.get(&event) == Some(&j) {
                    created.insert(key.to_owned());
                }
                if let Some(list) = records.get(&event) {
                    of_job.insert(key.to_owned(), list.clone());
                }
            }
            input::answers(&job.plan, &created, of_job)
        })
        .collect())
}

/// Runs a multi-row `INSERT` of `rows` rows into `table` and returns the
/// new ids in the order the rows were given (`RETURNING` keeps it).
async fn inserted_ids(
    tx: &mut Transaction<'static, Sqlite>,
    mut insert: QueryBuilder<'_, Sqlite>,
    rows: usize,
    table: &'static str,
) -> StoreResult<Vec<i64>> {
    insert.push(" RETURNING id");
    let ids: Vec<i64> = insert.build_query_scalar().fetch_all(&mut **tx).await?;
    if ids.len() != rows {
        return Err(StoreError::Corrupt {
            what: table,
            detail: format!("{rows} {table} inserted, {} ids returned", ids.len()),
        });
    }
    Ok(ids)
}

/// Most domains whose repeaters the writer task keeps; posts to ever new
/// domain names cannot grow its copy without bound.
const MAX_CACHED_DOMAINS: usize = 10_000;

/// The writer task's copy of the repeaters of the domains it has written
/// to, by domain. A group of small posts would otherwise spend one of its
/// few statements, a trip to the writer's thread, reading the same rows
/// again. Writes to the repeaters table bump `changed` inside their
/// transaction, and the next group reads the rows afresh.
struct SubscriberCache {
    changed: Arc<AtomicU64>,
    /// The `changed` count the copy was read at.
    seen: u64,
    by_domain: HashMap<String, Vec<Subscriber>>,
}

impl SubscriberCache {
    fn new(changed: Arc<AtomicU64>) -> Self {
        let seen = changed.load(AtomicOrdering::SeqCst);
        Self {
            changed,
            seen,
            by_domain: HashMap::new(),
        }
    }

    /// The repeaters of every domain the group posts to, by domain; reads
    /// the domains not known yet (or all, after a change to the table)
    /// inside the group's transaction.
    async fn of(
        &mut self,
        tx: &mut Transaction<'static, Sqlite>,
        jobs: &[IngestJob],
    ) -> StoreResult<&HashMap<String, Vec<Subscriber>>> {
        let now = self.changed.load(AtomicOrdering::SeqCst);
        if now != self.seen || self.by_domain.len() > MAX_CACHED_DOMAINS {
            self.by_domain.clear();
            self.seen = now;
        }
        let mut missing: Vec<&str> = (jobs.iter())
            .map(|job| job.domain.as_str())
            .filter(|domain| !self.by_domain.contains_key(*domain))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        for chunk in missing.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT domain, id, name, spec FROM repeaters WHERE domain IN (",
            );
            let mut list = query.separated(", ");
            for domain in chunk {
                list.push_bind(*domain);
            }
            query.push(") ORDER BY domain, name");
            let rows: Vec<(String, i64, String, String)> =
                query.build_query_as().fetch_all(&mut **tx).await?;
            // A domain with no repeaters is known too: its events make no records.
            let mut read: HashMap<String, Vec<Subscriber>> = (chunk.iter())
                .map(|domain| ((*domain).to_owned(), Vec::new()))
                .collect();
            for (domain, id, name, spec) in rows {
                if let Some(list) = read.get_mut(&domain) {
                    list.push(Subscriber::decode((id, name, spec))?);
                }
            }
            self.by_domain.extend(read);
        }
        Ok(&self.by_domain)
    }
}

/// The events of `asked` stored before, each with its records (an event
/// whose repeaters were all deleted has none).
async fn existing_records<'a>(
    tx: &mut Transaction<'static, Sqlite>,
    asked: &[EventRef<'a>],
) -> StoreResult<HashMap<EventRef<'a>, Vec<IngestedRecord>>> {
    // Each event once: a repeated one would list its records twice. Keyed
    // so a returned row's text finds it; the value keeps the caller's
    // borrow for the answer.
    let mut wanted: HashMap<(&str, &str), EventRef<'a>> = HashMap::with_capacity(asked.len());
    let mut unique = Vec::with_capacity(asked.len());
    for &event in asked {
        if wanted.insert(event, event).is_none() {
            unique.push(event);
        }
    }
    let mut found: HashMap<EventRef<'a>, Vec<IngestedRecord>> = HashMap::new();
    for chunk in unique.chunks(ROWS_PER_STATEMENT) {
        // CROSS JOIN keeps the asked ids as the outer loop, so each is one
        // probe of the (domain, event_key) index; a row-value `IN` would
        // scan every event.
        let mut query = QueryBuilder::<Sqlite>::new("WITH v (domain, event_key) AS (");
        query.push_values(chunk, |mut row, (domain, key)| {
            row.push_bind(*domain).push_bind(*key);
        });
        query.push(
            ") SELECT e.domain, e.event_key, r.id, r.repeater_name FROM v \
             CROSS JOIN events e ON e.domain = v.domain AND e.event_key = v.event_key \
             LEFT JOIN records r ON r.event_id = e.id",
        );
        let rows: Vec<(String, String, Option<i64>, Option<String>)> =
            query.build_query_as().fetch_all(&mut **tx).await?;
        for (domain, key, id, repeater) in rows {
            let Some(&event) = wanted.get(&(domain.as_str(), key.as_str())) else {
                continue;
            };
            let list = found.entry(event).or_default();
            if let (Some(id), Some(repeater)) = (id, repeater) {
                list.push(IngestedRecord { id, repeater });
            }
        }
    }
    Ok(found)
}
