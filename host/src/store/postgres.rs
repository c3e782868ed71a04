//! The shared store: a PostgreSQL database that several daemon processes
//! may use at once.
//!
//! Lanes are leased with `FOR NO KEY UPDATE SKIP LOCKED`, so contenders skip a
//! busy repeater instead of queueing behind it, and every lane write is
//! fenced by the lease epoch. Transactions are short: none is held across a
//! plugin call or an HTTP request. After ingest, resend, requeue, resume and
//! lease release a background task sends `NOTIFY repeaterd_wake` (coalesced,
//! at most one per 20 ms); another LISTENs and turns notifications from any
//! process into this store's wake signal.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder, Transaction};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::input::{
    self, IngestPlan, ROWS_PER_STATEMENT, RecordUpdate, Subscriber, lease_lost, new_token,
};
use super::rows::{
    ATTEMPT_COLUMNS, AttemptRowRaw, CLAIM_COLUMNS, ClaimedRecordRaw, RECORD_COLUMNS,
    REPEATER_COLUMNS, RecordRowRaw, RepeaterRecordRaw, decode_state, records_page_sql,
};
use super::{
    AttemptRow, Backlog, ClaimedRecord, Ingested, IngestedRecord, Lease, ReadyRepeater,
    RecordOutcome, RecordQuery, RecordRow, RepeaterHealth, RepeaterRow, Store, StoreError,
    StoreResult,
};
use crate::model::{Millis, NewEvent, Ordering, RecordState, RepeaterSpec};

/// The channel that carries wake-ups between processes.
pub const WAKE_CHANNEL: &str = "repeaterd_wake";
/// Connections in the pool (the listener has its own).
pub(crate) const POOL_CONNECTIONS: u32 = 10;
/// Shortest time between two NOTIFYs from this process.
const ANNOUNCE_WINDOW: Duration = Duration::from_millis(20);
/// How long to wait before listening again after the connection failed.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// The PostgreSQL implementation of [`Store`].
pub struct PostgresStore {
    pool: PgPool,
    wake: Arc<Notify>,
    changes: Arc<Notify>,
    _tasks: BackgroundTasks,
}

/// The LISTEN and NOTIFY tasks; they stop when the store is dropped.
struct BackgroundTasks(Vec<JoinHandle<()>>);

impl Drop for BackgroundTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl PostgresStore {
    /// [`PostgresStore::connect_with`] with the default pool size.
    pub async fn connect(url: &str) -> StoreResult<PostgresStore> {
        Self::connect_with(url, POOL_CONNECTIONS).await
    }

    /// Connects a pool of at most `connections` to `url` and starts
    /// listening for wake-ups from other processes. Does not migrate; call
    /// [`Store::migrate`] or use [`super::open`].
    pub async fn connect_with(url: &str, connections: u32) -> StoreResult<PostgresStore> {
        // No ping before each use: a broken connection fails its statement,
        // which the caller retries like any store error, and a ping per
        // statement doubles the round trips of the dispatch loop.
        let pool = PgPoolOptions::new()
            .max_connections(connections.max(1))
            .test_before_acquire(false)
            .connect(url)
            .await?;
        let wake = Arc::new(Notify::new());
        // Listen before returning, so a NOTIFY sent after `connect` is seen.
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(WAKE_CHANNEL).await?;
        let changes = Arc::new(Notify::new());
        let tasks = vec![
            tokio::spawn(listen(listener, Arc::downgrade(&wake))),
            tokio::spawn(announce(pool.clone(), changes.clone())),
        ];
        Ok(PostgresStore {
            pool,
            wake,
            changes,
            _tasks: BackgroundTasks(tasks),
        })
    }

    /// Something may have become ready: wake this process's scheduler at
    /// once and let the other processes know.
    fn changed(&self) {
        self.wake.notify_one();
        self.changes.notify_one();
    }

    /// A transaction; PostgreSQL's row locks and `ON CONFLICT` do the rest.
    async fn write(&self) -> StoreResult<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    async fn repeater_id(
        tx: &mut Transaction<'static, Postgres>,
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

    /// Answers of events seen before: their records, by event id.
    ///
    /// Two indexed lookups with one array parameter each, rather than a join
    /// with a list of parameters: the join's plan depended on the list's
    /// length and on table statistics, and with a growing `records` table
    /// PostgreSQL chose a sequential scan of it for every ingest batch. A
    /// batch of new events (the common case) costs only the first lookup.
    async fn existing_records(
        tx: &mut Transaction<'static, Postgres>,
        domain: &str,
        keys: &[&str],
        into: &mut HashMap<String, Vec<IngestedRecord>>,
    ) -> StoreResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let seen: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, event_key FROM events WHERE domain = $1 AND event_key = ANY($2)",
        )
        .bind(domain)
        .bind(keys)
        .fetch_all(&mut **tx)
        .await?;
        if seen.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = seen.iter().map(|(id, _)| *id).collect();
        let mut key_of: HashMap<i64, String> = HashMap::with_capacity(seen.len());
        for (id, key) in seen {
            into.entry(key.clone()).or_default();
            key_of.insert(id, key);
        }
        let rows: Vec<(i64, i64, String)> = sqlx::query_as(
            "SELECT event_id, id, repeater_name FROM records WHERE event_id = ANY($1) ORDER BY id",
        )
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await?;
        for (event_id, id, repeater) in rows {
            if let Some(key) = key_of.get(&event_id) {
                into.entry(key.clone())
                    .or_default()
                    .push(IngestedRecord { id, repeater });
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("../migrations/postgres")
            .run(&self.pool)
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
        tx.commit().await?;
        Ok(true)
    }

    async fn repeater(&self, domain: &str, name: &str) -> StoreResult<Option<RepeaterRow>> {
        let raw: Option<RepeaterRecordRaw> = sqlx::query_as(&format!(
            "SELECT {REPEATER_COLUMNS} FROM repeaters WHERE domain = $1 AND name = $2"
        ))
        .bind(domain)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        raw.map(RepeaterRecordRaw::decode).transpose()
    }

    async fn repeaters(&self, domain: Option<&str>) -> StoreResult<Vec<RepeaterRow>> {
        let raws: Vec<RepeaterRecordRaw> = sqlx::query_as(&format!(
            "SELECT {REPEATER_COLUMNS} FROM repeaters \
             WHERE $1 IS NULL OR domain = $1 ORDER BY domain, name"
        ))
        .bind(domain)
        .fetch_all(&self.pool)
        .await?;
        raws.into_iter().map(RepeaterRecordRaw::decode).collect()
    }

    async fn backlog(&self, repeater_id: i64) -> StoreResult<Backlog> {
        let rows: Vec<(i16, i64)> = sqlx::query_as(
            "SELECT state, COUNT(*) FROM records WHERE repeater_id = $1 GROUP BY state",
        )
        .bind(repeater_id)
        .fetch_all(&self.pool)
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
        .fetch_all(&self.pool)
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
            self.changed();
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
        self.changed();
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
        let mut tx = self.write().await?;
        let answers = ingest_in(&mut tx, domain, events, &plan, now).await?;
        tx.commit().await?;
        if answers.iter().any(|a| a.created && !a.records.is_empty()) {
            self.changed();
        }
        Ok(answers)
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
        .fetch_all(&self.pool)
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
            "SELECT MIN(GREATEST(d.due, COALESCE(d.backoff_until, 0), COALESCE(d.lease_expires_at, 0))) \
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
        .fetch_one(&self.pool)
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
        // One statement: lock the row if nobody else is locking it and the
        // lease is free or expired, bump the epoch, hand back the new epoch.
        let epoch: Option<i64> = sqlx::query_scalar(
            "UPDATE repeaters SET lease_epoch = lease_epoch + 1, lease_token = $1, \
             lease_holder = $2, lease_expires_at = $3 \
             WHERE id = (SELECT id FROM repeaters WHERE id = $4 \
                         AND (lease_expires_at IS NULL OR lease_expires_at <= $5) \
                         FOR NO KEY UPDATE SKIP LOCKED) \
             RETURNING lease_epoch",
        )
        .bind(&token)
        .bind(holder)
        .bind(expires_at)
        .bind(repeater_id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(epoch) = epoch else {
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM repeaters WHERE id = $1")
                .bind(repeater_id)
                .fetch_optional(&self.pool)
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
        let mut tx = self.write().await?;
        let renewed = sqlx::query(
            "UPDATE repeaters SET lease_expires_at = $1 \
             WHERE id = $2 AND lease_epoch = $3 AND lease_token = $4",
        )
        .bind(expires_at)
        .bind(lease.repeater_id)
        .bind(lease.epoch)
        .bind(&lease.token)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if renewed != 1 {
            return Err(lease_lost(lease));
        }
        tx.commit().await?;
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
        .fetch_optional(&self.pool)
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
        .fetch_all(&self.pool)
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
        let mut tx = self.write().await?;
        // The fence: this statement matches only while our epoch holds the
        // lane, and it carries the health and release writes with it.
        let mut fence =
            QueryBuilder::<Postgres>::new("UPDATE repeaters SET lease_epoch = lease_epoch");
        if let Some(health) = health {
            fence
                .push(", backoff_until = ")
                .push_bind(health.backoff_until)
                .push(", backoff_step = ")
                .push_bind(i32::try_from(health.backoff_step).unwrap_or(i32::MAX))
                .push(", last_error = COALESCE(")
                .push_bind(health.last_error.as_deref())
                .push(", last_error), last_success_at = COALESCE(")
                .push_bind(health.last_success_at)
                .push(", last_success_at), updated_at = ")
                .push_bind(now);
        }
        if release {
            fence.push(", lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL");
        }
        fence
            .push(" WHERE id = ")
            .push_bind(lease.repeater_id)
            .push(" AND lease_epoch = ")
            .push_bind(lease.epoch)
            .push(" AND lease_token = ")
            .push_bind(&lease.token);
        if fence.build().execute(&mut *tx).await?.rows_affected() != 1 {
            return Err(lease_lost(lease));
        }

        let updates: Vec<RecordUpdate> = outcomes
            .iter()
            .map(|outcome| RecordUpdate::from_outcome(outcome, now))
            .collect();
        for chunk in updates.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Postgres>::new(
                "WITH v (record_id, state, next_attempt_at, counted, error) AS (",
            );
            query.push_values(chunk, |mut row, update| {
                row.push_bind(update.record_id)
                    .push_bind(update.state)
                    .push_bind(update.next_attempt_at)
                    .push_bind(update.counted)
                    .push_bind(update.error.as_deref());
            });
            query
                .push(
                    ") UPDATE records SET state = v.state, next_attempt_at = v.next_attempt_at, \
                     attempts = records.attempts + v.counted, \
                     last_error = CASE WHEN v.counted = 1 THEN v.error ELSE records.last_error END, \
                     updated_at = ",
                )
                .push_bind(now)
                .push(" FROM v WHERE records.id = v.record_id AND records.repeater_id = ")
                .push_bind(lease.repeater_id);
            query.build().execute(&mut *tx).await?;
        }

        let attempts: Vec<(i64, &super::AttemptDraft)> = outcomes
            .iter()
            .filter_map(|o| o.attempt.as_ref().map(|a| (o.record_id, a)))
            .collect();
        for chunk in attempts.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Postgres>::new(
                "WITH v (record_id, started_at, duration_ms, status, error, outcome, response_excerpt) AS (",
            );
            query.push_values(chunk, |mut row, (record_id, attempt)| {
                row.push_bind(*record_id)
                    .push_bind(attempt.started_at)
                    .push_bind(attempt.duration_ms)
                    .push_bind(attempt.status.map(i32::from))
                    .push_bind(attempt.error.as_deref())
                    .push_bind(attempt.outcome.as_i16())
                    .push_bind(attempt.response_excerpt.as_deref());
            });
            // Only records of this lane get attempts: a stray id is skipped
            // rather than failing the whole batch.
            query
                .push(
                    ") INSERT INTO attempts \
                     (record_id, started_at, duration_ms, status, error, outcome, response_excerpt) \
                     SELECT v.record_id, v.started_at, v.duration_ms, v.status, v.error, v.outcome, \
                     v.response_excerpt FROM v JOIN records r ON r.id = v.record_id \
                     WHERE r.repeater_id = ",
                )
                .push_bind(lease.repeater_id);
            query.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        if release {
            // The lane is free again; the scheduler may want it back at once.
            self.changed();
        }
        Ok(())
    }

    async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
        let mut tx = self.write().await?;
        let released = sqlx::query(
            "UPDATE repeaters SET lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND lease_epoch = $2 AND lease_token = $3",
        )
        .bind(lease.repeater_id)
        .bind(lease.epoch)
        .bind(&lease.token)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if released > 0 {
            self.changed();
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
        let raws = page.fetch_all(&self.pool).await?;
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
        .fetch_optional(&self.pool)
        .await?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let attempts: Vec<AttemptRowRaw> = sqlx::query_as(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE record_id = $1 ORDER BY id"
        ))
        .bind(id)
        .fetch_all(&self.pool)
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
        self.changed();
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
/// records first).
fn fifo_head(repeater: &str) -> String {
    format!(
        "LEAST((SELECT MIN(h.id) FROM records h WHERE h.repeater_id = {repeater} AND h.state = 0), \
               (SELECT MIN(h.id) FROM records h WHERE h.repeater_id = {repeater} AND h.state = 1))"
    )
}

/// True for a record `r` that has no earlier unfinished record with the same
/// ordering key (records without a key are never held back).
const KEY_HEAD: &str = "(r.ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM records o \
     WHERE o.repeater_id = r.repeater_id AND o.state IN (0, 1) \
     AND o.ordering_key = r.ordering_key AND o.id < r.id))";

/// Runs `head <ids> tail` with the ids as a bound list.
async fn delete_in(
    tx: &mut Transaction<'static, Postgres>,
    head: &str,
    ids: &[i64],
    tail: &str,
) -> StoreResult<()> {
    let mut query = QueryBuilder::<Postgres>::new(head);
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    query.push(tail);
    query.build().execute(&mut **tx).await?;
    Ok(())
}

/// Tells other processes about local changes: one NOTIFY per change burst,
/// at most one per [`ANNOUNCE_WINDOW`]. NOTIFY serialises committing
/// transactions on a server-wide lock, so one per ingest would cap ingest
/// throughput. No change goes unannounced: a change during a send or a
/// window leaves a permit, which causes one more NOTIFY after the window.
async fn announce(pool: PgPool, changes: Arc<Notify>) {
    loop {
        changes.notified().await;
        if let Err(err) = sqlx::query("SELECT pg_notify($1, '')")
            .bind(WAKE_CHANNEL)
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %err, "announcing a change to other processes failed");
        }
        tokio::time::sleep(ANNOUNCE_WINDOW).await;
    }
}

/// Turns notifications into wake-ups until the store is gone. A lost
/// connection is re-established by the listener; since notifications sent
/// meanwhile are lost, every reconnect counts as a wake-up.
async fn listen(mut listener: PgListener, wake: Weak<Notify>) {
    loop {
        let received = listener.try_recv().await;
        let Some(wake) = wake.upgrade() else {
            return;
        };
        match received {
            Ok(Some(_)) => wake.notify_one(),
            Ok(None) => {
                tracing::warn!("lost the PostgreSQL wake-up connection; reconnecting");
                wake.notify_one();
            }
            Err(err) => {
                tracing::warn!(error = %err, "listening for PostgreSQL wake-ups failed; retrying");
                wake.notify_one();
                drop(wake);
                tokio::time::sleep(LISTEN_RETRY).await;
            }
        }
    }
}

/// The body of [`Store::ingest`], inside the caller's transaction.
async fn ingest_in(
    tx: &mut Transaction<'static, Postgres>,
    domain: &str,
    events: &[NewEvent],
    plan: &IngestPlan,
    now: Millis,
) -> StoreResult<Vec<Ingested>> {
    let subscribers = sqlx::query_as::<_, (i64, String, String)>(
        "SELECT id, name, spec FROM repeaters WHERE domain = $1 ORDER BY name",
    )
    .bind(domain)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .map(Subscriber::decode)
    .collect::<StoreResult<Vec<_>>>()?;

    // Ids seen before answer with their first records and create nothing.
    let keys: Vec<&str> = plan.firsts.iter().map(|&i| plan.keys[i].as_str()).collect();
    let mut records: HashMap<String, Vec<IngestedRecord>> = HashMap::new();
    PostgresStore::existing_records(tx, domain, &keys, &mut records).await?;
    let fresh: Vec<usize> = plan
        .firsts
        .iter()
        .copied()
        .filter(|&i| !records.contains_key(&plan.keys[i]))
        .collect();

    // Insert in id order, so two batches sharing ids wait on each other in
    // the same order instead of deadlocking. An id another transaction stored
    // meanwhile is skipped here and answered from its records below.
    let mut fresh = fresh;
    fresh.sort_by(|&a, &b| plan.keys[a].cmp(&plan.keys[b]));
    let mut event_ids: HashMap<String, i64> = HashMap::with_capacity(fresh.len());
    for chunk in fresh.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Postgres>::new(
            "INSERT INTO events (domain, event_key, event_type, content_type, payload, ordering_key, created_at) ",
        );
        query.push_values(chunk, |mut row, &i| {
            let event = &events[i];
            row.push_bind(domain)
                .push_bind(plan.keys[i].as_str())
                .push_bind(event.event_type.as_str())
                .push_bind(event.content_type.as_str())
                .push_bind(event.payload.as_slice())
                .push_bind(event.ordering_key.as_deref())
                .push_bind(now);
        });
        query.push(" ON CONFLICT (domain, event_key) DO NOTHING RETURNING id, event_key");
        let rows: Vec<(i64, String)> = query.build_query_as().fetch_all(&mut **tx).await?;
        event_ids.extend(rows.into_iter().map(|(id, key)| (key, id)));
    }

    let raced: Vec<&str> = fresh
        .iter()
        .map(|&i| plan.keys[i].as_str())
        .filter(|key| !event_ids.contains_key(*key))
        .collect();
    if !raced.is_empty() {
        // The other transaction has committed (ON CONFLICT waited for it),
        // so its event and records are visible to this statement.
        PostgresStore::existing_records(tx, domain, &raced, &mut records).await?;
    }
    let fresh: Vec<usize> = fresh
        .into_iter()
        .filter(|&i| event_ids.contains_key(&plan.keys[i]))
        .collect();

    // One record per subscribed repeater of each new event.
    let mut wanted: Vec<(i64, &Subscriber, usize)> = Vec::new();
    for &i in &fresh {
        let event_id = event_ids[&plan.keys[i]];
        for subscriber in subscribers.iter().filter(|s| s.takes(&events[i])) {
            wanted.push((event_id, subscriber, i));
        }
    }
    let key_of: HashMap<i64, &str> = fresh
        .iter()
        .map(|&i| (event_ids[&plan.keys[i]], plan.keys[i].as_str()))
        .collect();
    for chunk in wanted.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Postgres>::new(
            "INSERT INTO records (event_id, repeater_id, repeater_name, domain, state, attempts, \
             age_origin, next_attempt_at, created_at, updated_at, ordering_key) ",
        );
        query.push_values(chunk, |mut row, (event_id, subscriber, i)| {
            row.push_bind(*event_id)
                .push_bind(subscriber.id)
                .push_bind(subscriber.name.as_str())
                .push_bind(domain)
                .push_bind(RecordState::Pending.as_i16())
                .push_bind(0_i32)
                .push_bind(now)
                .push_bind(now)
                .push_bind(now)
                .push_bind(now)
                .push_bind(events[*i].ordering_key.as_deref());
        });
        query.push(" RETURNING id, event_id, repeater_name");
        let rows: Vec<(i64, i64, String)> = query.build_query_as().fetch_all(&mut **tx).await?;
        for (id, event_id, repeater) in rows {
            let key = key_of[&event_id];
            records
                .entry(key.to_owned())
                .or_default()
                .push(IngestedRecord { id, repeater });
        }
    }
    let created: HashSet<String> = event_ids.into_keys().collect();
    Ok(input::answers(plan, &created, records))
}
