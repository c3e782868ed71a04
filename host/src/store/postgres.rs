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
use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::backend::{Backend, BatchResults, Connections, Ingest, LaneClaim, ReadyHints};
use super::ingest::{insert_events, insert_records};
use super::input::{ROWS_PER_STATEMENT, RecordUpdate, Subscriber, answers, lease_lost, new_token};
use super::lanes::{attempt_inserts, fence, ready_in, record_updates};
use super::rows::{ClaimedRecordRaw, RepeaterRecordRaw};
use super::sql::{Dialect, runs};
use super::{
    AttemptDraft, ErrorKind, Ingested, IngestedRecord, Lease, ReadyRepeater, StoreError,
    StoreResult,
};
use crate::model::{Millis, RecordState};

/// The channel that carries wake-ups between processes.
pub const WAKE_CHANNEL: &str = "repeaterd_wake";
/// Connections in the pool (the listener has its own).
pub(crate) const POOL_CONNECTIONS: u32 = 10;
/// Shortest time between two NOTIFYs from this process.
const ANNOUNCE_WINDOW: Duration = Duration::from_millis(20);
/// How long to wait before listening again after the connection failed.
const LISTEN_RETRY: Duration = Duration::from_secs(1);
/// How long a statement waits for a pool connection before failing as
/// `Unavailable`. sqlx's default, 30 s, keeps retrying the connect while
/// the server is down, so an ingest hung for seconds past the server's
/// return instead of answering 503 at once, and a lease renewal outlived
/// the 3 s lease it renewed. Store transactions last milliseconds, so a
/// healthy pool never makes a caller wait this long; ingest (503 with
/// `Retry-After`) and the dispatch loop (its next turn) retry.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long opening the store waits for the server to accept connections:
/// a daemon started with its database still starting up waits for it, as
/// it did before [`ACQUIRE_TIMEOUT`] was shortened.
const STARTUP_WAIT: Duration = Duration::from_secs(30);
/// Between two tries of the first connection while the server starts.
const STARTUP_RETRY: Duration = Duration::from_millis(200);
/// How long the server keeps a session that sits idle inside a transaction
/// before ending it. Store transactions last milliseconds; a session idle
/// in one belongs to a process that is frozen (SIGSTOP, a paused VM) or
/// stuck, and its row locks would make every other daemon's
/// `SKIP LOCKED` claim pass over that lane until it woke. Shorter than the
/// shared lease (3 s), so a frozen holder's lanes fail over on time.
pub(crate) const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(2);

/// The PostgreSQL implementation of [`Store`](super::Store).
pub struct PostgresStore {
    connections: Connections<Postgres>,
    /// Notified after local changes; the announcing task sends a NOTIFY.
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

/// The options of every store connection to `url`: the URL's own, and the
/// server ending sessions left idle inside a transaction.
fn connect_options(url: &str) -> StoreResult<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)?.options([(
        "idle_in_transaction_session_timeout",
        IDLE_IN_TRANSACTION_TIMEOUT.as_millis().to_string(),
    )]))
}

/// Says so in the log when the server does not vacuum by itself: every
/// state change of a record leaves a dead row version and dead index
/// entries behind, and without autovacuum they pile up until the backlog
/// counts, listings and claims read millions of them (migration 0006 tunes
/// it for these tables; it cannot turn it on).
async fn warn_if_autovacuum_is_off(pool: &PgPool) {
    match sqlx::query_scalar::<_, String>("SHOW autovacuum")
        .fetch_one(pool)
        .await
    {
        Ok(setting) if setting == "off" => tracing::warn!(
            "autovacuum is off on this PostgreSQL server: dead rows of delivered records \
             will pile up and slow the store down; turn it on, or run VACUUM on records, \
             attempts and events regularly"
        ),
        Ok(_) => {}
        Err(error) => tracing::debug!(%error, "could not read the autovacuum setting"),
    }
}

impl PostgresStore {
    /// [`PostgresStore::connect_with`] with the default pool size.
    pub async fn connect(url: &str) -> StoreResult<PostgresStore> {
        Self::connect_with(url, POOL_CONNECTIONS).await
    }

    /// Connects a pool of at most `connections` to `url` and starts
    /// listening for wake-ups from other processes. Does not migrate; call
    /// [`Store::migrate`](super::Store::migrate) or use [`super::open`].
    pub async fn connect_with(url: &str, connections: u32) -> StoreResult<PostgresStore> {
        // No ping before each use: a broken connection fails its statement,
        // which the caller retries like any store error, and a ping per
        // statement doubles the round trips of the dispatch loop.
        let pool = PgPoolOptions::new()
            .max_connections(connections.max(1))
            .test_before_acquire(false)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(connect_options(url)?);
        first_connection(&pool).await?;
        warn_if_autovacuum_is_off(&pool).await;
        let connections = Connections::new(pool.clone(), pool.clone());
        // Listen before returning, so a NOTIFY sent after `connect` is seen.
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(WAKE_CHANNEL).await?;
        let changes = Arc::new(Notify::new());
        // Tells this store's notifications from other processes'.
        let instance = new_token();
        let tasks = vec![
            tokio::spawn(listen(
                listener,
                Arc::downgrade(&connections.wake),
                Arc::downgrade(&connections.hints),
                instance.clone(),
            )),
            tokio::spawn(announce(pool.clone(), changes.clone(), instance)),
        ];
        Ok(PostgresStore {
            connections,
            changes,
            _tasks: BackgroundTasks(tasks),
        })
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
        let seen: Vec<(i64, String)> = sqlx::query_as(SEEN_EVENTS)
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
        let rows: Vec<(i64, i64, String)> = sqlx::query_as(RECORDS_OF_EVENTS)
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
impl Backend for PostgresStore {
    type Db = Postgres;

    async fn write_events(&self, ingest: Ingest<'_>) -> StoreResult<Vec<Ingested>> {
        let mut tx = self.connections.writes.begin().await?;
        let answers = ingest_in(&mut tx, &ingest).await?;
        tx.commit().await?;
        if answers.iter().any(|a| a.created && !a.records.is_empty()) {
            self.records_added(ingest.domain);
        }
        Ok(answers)
    }

    async fn ready_set(&self, now: Millis, holder: &str) -> StoreResult<Vec<ReadyRepeater>> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(&self.statements().lanes.ready)
            .bind(now)
            .bind(holder)
            .fetch_all(self.reads())
            .await?;
        Ok(rows.into_iter().map(ready_repeater).collect())
    }

    async fn ready_within(
        &self,
        now: Millis,
        holder: &str,
        domains: &[String],
    ) -> StoreResult<Vec<ReadyRepeater>> {
        let mut ready = Vec::new();
        for run in runs(domains) {
            let sql = ready_in(Dialect::Postgres, run.len());
            let mut query = sqlx::query_as::<_, (i64, String, String)>(&sql)
                .bind(now)
                .bind(holder);
            for domain in run {
                query = query.bind(domain.as_str());
            }
            let rows = query.fetch_all(self.reads()).await?;
            ready.extend(rows.into_iter().map(ready_repeater));
        }
        Ok(ready)
    }

    async fn earliest_due(&self, now: Millis, holder: &str) -> StoreResult<Option<Millis>> {
        let at: Option<i64> = sqlx::query_scalar(&self.statements().lanes.wakeup)
            .bind(holder)
            .fetch_one(self.reads())
            .await?;
        Ok(at.map(|at| at.max(now)))
    }

    async fn read_lane(&self, lease: &Lease, limit: u32, now: Millis) -> StoreResult<LaneClaim> {
        let sql = &self.statements().lanes;
        let raw: Option<RepeaterRecordRaw> = sqlx::query_as(&sql.fenced)
            .bind(lease.repeater_id)
            .bind(lease.epoch)
            .bind(&lease.token)
            .fetch_optional(self.reads())
            .await?;
        let Some(row) = raw.map(RepeaterRecordRaw::decode).transpose()? else {
            return Err(lease_lost(lease));
        };
        let raws: Vec<ClaimedRecordRaw> = sqlx::query_as(sql.claim(row.spec.ordering))
            .bind(lease.repeater_id)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(self.reads())
            .await?;
        Ok((
            row,
            raws.into_iter().map(ClaimedRecordRaw::decode).collect(),
        ))
    }

    async fn write_results(&self, results: BatchResults<'_>) -> StoreResult<()> {
        let BatchResults {
            lease,
            outcomes,
            health,
            release,
            now,
        } = results;
        let mut tx = self.connections.writes.begin().await?;
        // The fence: it matches only while this epoch holds the lane, and it
        // carries the health and release writes with it.
        let held: Vec<i64> = sqlx::query_scalar(&fence(Dialect::Postgres, 1))
            .bind(lease.repeater_id)
            .bind(lease.epoch)
            .bind(&lease.token)
            .bind(health.is_some())
            .bind(health.and_then(|h| h.backoff_until))
            .bind(health.map(|h| i32::try_from(h.backoff_step).unwrap_or(i32::MAX)))
            .bind(health.and_then(|h| h.last_error.as_deref()))
            .bind(health.and_then(|h| h.last_success_at))
            .bind(release)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        if held.len() != 1 {
            return Err(lease_lost(lease));
        }

        let updates: Vec<RecordUpdate> = outcomes
            .iter()
            .map(|outcome| RecordUpdate::from_outcome(outcome, now))
            .collect();
        for chunk in updates.chunks(ROWS_PER_STATEMENT) {
            let sql = record_updates(Dialect::Postgres, chunk.len());
            let mut query = sqlx::query(&sql);
            for update in chunk {
                query = query
                    .bind(update.record_id)
                    .bind(lease.repeater_id)
                    .bind(update.state)
                    .bind(update.next_attempt_at)
                    .bind(update.counted)
                    .bind(update.error.as_deref())
                    .bind(now);
            }
            query.execute(&mut *tx).await?;
        }

        let attempts: Vec<(i64, &AttemptDraft)> = outcomes
            .iter()
            .filter_map(|o| o.attempt.as_ref().map(|a| (o.record_id, a)))
            .collect();
        for chunk in attempts.chunks(ROWS_PER_STATEMENT) {
            let sql = attempt_inserts(Dialect::Postgres, chunk.len());
            let mut query = sqlx::query(&sql);
            for (record_id, attempt) in chunk {
                query = query
                    .bind(*record_id)
                    .bind(lease.repeater_id)
                    .bind(attempt.started_at)
                    .bind(attempt.duration_ms)
                    .bind(attempt.status.map(i32::from))
                    .bind(attempt.error.as_deref())
                    .bind(attempt.outcome.as_i16())
                    .bind(attempt.response_excerpt.as_deref())
                    .bind(attempt.plugin_sha256.as_deref())
                    .bind(attempt.request.as_deref());
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        if release {
            // The lane is free again; the scheduler may want it back at once.
            self.work_may_be_ready();
        }
        Ok(())
    }

    fn connections(&self) -> &Connections<Postgres> {
        &self.connections
    }

    /// Wakes this process's scheduler at once and lets the other processes
    /// know.
    fn work_may_be_ready(&self) {
        self.connections.hints.anything();
        self.wake().notify_one();
        self.changes.notify_one();
    }

    /// Lets the other processes know; this one's scheduler let them go.
    fn idle_lanes_released(&self) {
        self.changes.notify_one();
    }

    /// Wakes this process's scheduler for `domain` at once and lets the
    /// other processes know.
    fn records_added(&self, domain: &str) {
        self.connections.hints.domain(domain);
        self.wake().notify_one();
        self.changes.notify_one();
    }
}

/// Events of domain `$1` among the event ids `$2`, with their ids.
const SEEN_EVENTS: &str =
    "SELECT id, event_key FROM events WHERE domain = $1 AND event_key = ANY($2)";
/// The records of the events `$1`, oldest first.
const RECORDS_OF_EVENTS: &str =
    "SELECT event_id, id, repeater_name FROM records WHERE event_id = ANY($1) ORDER BY id";
/// The repeaters of domain `$1`, with their specs.
const SUBSCRIBERS: &str = "SELECT id, name, spec FROM repeaters WHERE domain = $1 ORDER BY name";

/// A row of the ready set: id, domain, name.
fn ready_repeater((id, domain, name): (i64, String, String)) -> ReadyRepeater {
    ReadyRepeater { id, domain, name }
}

/// Waits until `pool` has a connection, trying again while the server
/// cannot answer for up to [`STARTUP_WAIT`]; any other failure (a refused
/// password, an unknown database) fails at once.
async fn first_connection(pool: &PgPool) -> StoreResult<()> {
    let started = tokio::time::Instant::now();
    loop {
        match pool.acquire().await {
            Ok(_) => return Ok(()),
            Err(error) => {
                let error = StoreError::from(error);
                if error.kind() != ErrorKind::Unavailable || started.elapsed() >= STARTUP_WAIT {
                    return Err(error);
                }
            }
        }
        tokio::time::sleep(STARTUP_RETRY).await;
    }
}

/// Tells other processes about local changes: one NOTIFY per change burst,
/// at most one per [`ANNOUNCE_WINDOW`]. NOTIFY serialises committing
/// transactions on a server-wide lock, so one per ingest would cap ingest
/// throughput. No change goes unannounced: a change during a send or a
/// window leaves a permit, which causes one more NOTIFY after the window.
async fn announce(pool: PgPool, changes: Arc<Notify>, instance: String) {
    loop {
        changes.notified().await;
        if let Err(err) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(WAKE_CHANNEL)
            .bind(instance.as_str())
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
///
/// A notification carries the announcing store's `instance`: this store's
/// own come back to it too, and it already woke its scheduler with better
/// hints when it made the change.
async fn listen(
    mut listener: PgListener,
    wake: Weak<Notify>,
    hints: Weak<ReadyHints>,
    instance: String,
) {
    loop {
        let received = listener.try_recv().await;
        let (Some(wake), Some(hints)) = (wake.upgrade(), hints.upgrade()) else {
            return;
        };
        if let Ok(Some(notification)) = &received
            && notification.payload() == instance
        {
            continue;
        }
        // Another process's change may concern any repeater.
        hints.anything();
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

/// The writes of an ingest, inside the caller's transaction.
async fn ingest_in(
    tx: &mut Transaction<'static, Postgres>,
    ingest: &Ingest<'_>,
) -> StoreResult<Vec<Ingested>> {
    let Ingest {
        domain,
        events,
        ref plan,
        now,
    } = *ingest;
    let subscribers = sqlx::query_as::<_, (i64, String, String)>(SUBSCRIBERS)
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
        let sql = insert_events(Dialect::Postgres, chunk.len());
        let mut query = sqlx::query_as::<_, (i64, String)>(&sql);
        for &i in chunk {
            let event = &events[i];
            query = query
                .bind(domain)
                .bind(plan.keys[i].as_str())
                .bind(event.event_type.as_str())
                .bind(event.content_type.as_str())
                .bind(event.payload.as_slice())
                .bind(event.ordering_key.as_deref())
                .bind(now);
        }
        let rows = query.fetch_all(&mut **tx).await?;
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
        let sql = insert_records(Dialect::Postgres, chunk.len());
        let mut query = sqlx::query_as::<_, (i64, i64, String)>(&sql);
        for (event_id, subscriber, i) in chunk {
            query = query
                .bind(*event_id)
                .bind(subscriber.id)
                .bind(subscriber.name.as_str())
                .bind(domain)
                .bind(RecordState::Pending.as_i16())
                .bind(0_i32)
                .bind(now)
                .bind(now)
                .bind(now)
                .bind(now)
                .bind(events[*i].ordering_key.as_deref());
        }
        let rows = query.fetch_all(&mut **tx).await?;
        for (id, event_id, repeater) in rows {
            let key = key_of[&event_id];
            records
                .entry(key.to_owned())
                .or_default()
                .push(IngestedRecord { id, repeater });
        }
    }
    let created: HashSet<String> = event_ids.into_keys().collect();
    Ok(answers(plan, &created, records))
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, PgConnection};

    use super::*;

    /// A store session frozen inside a transaction is ended by the server,
    /// which frees the lane rows it locked for the other daemons.
    #[tokio::test]
    async fn the_server_ends_a_session_left_idle_in_a_transaction() {
        let url = super::super::scratch::pg_url();
        let mut session = PgConnection::connect_with(&connect_options(&url).unwrap())
            .await
            .unwrap_or_else(|error| panic!("PostgreSQL at {url} is unreachable: {error}"));
        sqlx::raw_sql("BEGIN").execute(&mut session).await.unwrap();
        tokio::time::sleep(IDLE_IN_TRANSACTION_TIMEOUT + Duration::from_millis(500)).await;
        let after = sqlx::query("SELECT 1").execute(&mut session).await;
        assert!(
            after.is_err(),
            "a session idle in a transaction for longer than {IDLE_IN_TRANSACTION_TIMEOUT:?} still answers"
        );
    }
}
