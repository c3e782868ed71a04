//! The lanes: the scheduler's ready set and wake-up time, leases, claims
//! and batch results. The queries are written here once for both backends;
//! leases run here, through sqlx, on either. The ready set, the wake-up
//! time, the claim and the batch results run in each backend its own way
//! (SQLite steps them on connections of its own, ADR 6, 7 and 9), with
//! these texts.

use async_trait::async_trait;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Type};

use super::backend::{Backend, BatchResults, Hinted, RowsAffected};
use super::input::{lease_lost, new_token, ordering_code};
use super::rows::{CLAIM_COLUMNS, REPEATER_COLUMNS};
use super::sql::{Dialect, named_queries, runs, unfinished};
use super::{
    ClaimedRecord, LaneStore, Lease, ReadyRepeater, RecordOutcome, RepeaterHealth, RepeaterRow,
    StoreError, StoreResult,
};
use crate::model::{Millis, Ordering, RecordState};

named_queries! {
    /// The lanes' fixed queries.
    pub(crate) struct LaneSql(dialect) {
        /// Repeaters not paused, backed off or leased by another holder,
        /// with at least one record due under their ordering. `$1` now,
        /// `$2` the holder asking.
        ready: ready(dialect),
        /// Per domain, how many of its repeaters another holder than `$1`
        /// leases until after `$2`.
        held_elsewhere: "SELECT domain, COUNT(*) FROM repeaters \
             WHERE lease_holder <> $1 AND lease_expires_at > $2 AND NOT paused \
             GROUP BY domain",
        /// The earliest time a repeater has a record due, pushed back by
        /// its backoff and by another holder's lease. `$1` the holder
        /// asking (its own leases delay nothing).
        wakeup: wakeup(dialect),
        /// The leased repeater's row, only while the lease holds. `$1` the
        /// repeater, `$2` the epoch, `$3` the token.
        fenced: format!(
            "SELECT {REPEATER_COLUMNS} FROM repeaters \
             WHERE id = $1 AND lease_epoch = $2 AND lease_token = $3"
        ),
        /// Up to `$3` records of repeater `$1` due at `$2`, oldest due first.
        claim_any: claim("TRUE"),
        /// A fifo lane's claim: only its oldest unfinished record, and only
        /// when that one is due.
        claim_fifo: claim(&format!("r.id = {}", fifo_head(dialect, "$1"))),
        /// A key lane's claim: per ordering key, only its oldest unfinished
        /// record.
        claim_key: claim(&key_head()),
        /// Whether repeater `$1` exists.
        exists: "SELECT id FROM repeaters WHERE id = $1",
        /// Extends a held lease to `$1`. `$2` the repeater, `$3` the epoch,
        /// `$4` the token.
        renew: "UPDATE repeaters SET lease_expires_at = $1 \
                WHERE id = $2 AND lease_epoch = $3 AND lease_token = $4",
    }
}

impl LaneSql {
    /// The claim of a lane with `ordering`.
    pub(crate) fn claim(&self, ordering: Ordering) -> &str {
        match ordering {
            Ordering::None => &self.claim_any,
            Ordering::Fifo => &self.claim_fifo,
            Ordering::Key => &self.claim_key,
        }
    }
}

fn ready(dialect: Dialect) -> String {
    ready_where(dialect, "")
}

/// [`LaneSql::ready`] within `count` domains, `$3` on: after an ingest
/// the scheduler looks at the repeaters of the domains that got records
/// alone, at a cost that grows with them rather than with every repeater.
pub(crate) fn ready_in(dialect: Dialect, count: usize) -> String {
    let domains: Vec<String> = (3..3 + count).map(|n| format!("${n}")).collect();
    let within = format!("AND p.domain IN ({}) ", domains.join(", "));
    dialect.render(&ready_where(dialect, &within))
}

/// The ready set, with `within` narrowing the repeaters asked about.
fn ready_where(dialect: Dialect, within: &str) -> String {
    let (fifo, key) = (ordering_code(Ordering::Fifo), ordering_code(Ordering::Key));
    let head = fifo_head(dialect, "p.id");
    let key_head = key_head();
    let unfinished = unfinished("r.state");
    format!(
        "SELECT p.id, p.domain, p.name FROM repeaters p \
         WHERE NOT p.paused {within}\
           AND (p.backoff_until IS NULL OR p.backoff_until <= $1) \
           AND (p.lease_expires_at IS NULL OR p.lease_expires_at <= $1 OR p.lease_holder = $2) \
           AND CASE p.ordering \
               WHEN {fifo} THEN EXISTS (SELECT 1 FROM records r WHERE r.id = {head} \
                                   AND r.next_attempt_at <= $1) \
               WHEN {key} THEN EXISTS (SELECT 1 FROM records r WHERE r.repeater_id = p.id \
                                   AND {unfinished} AND r.next_attempt_at <= $1 \
                                   AND {key_head}) \
               ELSE EXISTS (SELECT 1 FROM records r WHERE r.repeater_id = p.id \
                            AND {unfinished} AND r.next_attempt_at <= $1) \
               END \
         ORDER BY p.domain, p.name"
    )
}

/// Per repeater: its earliest due record, pushed back by its backoff and
/// another holder's lease; one index probe per repeater on the ready set.
/// A fifo lane waits for its head record, a key lane for the heads of its
/// keys (a scan of that lane's unfinished records).
fn wakeup(dialect: Dialect) -> String {
    let (fifo, key) = (ordering_code(Ordering::Fifo), ordering_code(Ordering::Key));
    let head = fifo_head(dialect, "p.id");
    let key_head = key_head();
    let unfinished = unfinished("r.state");
    let latest = dialect.greatest(&[
        "d.due",
        "COALESCE(d.backoff_until, 0)",
        "COALESCE(d.lease_expires_at, 0)",
    ]);
    format!(
        "SELECT MIN({latest}) \
         FROM (SELECT p.backoff_until, \
                      CASE WHEN p.lease_holder = $1 THEN NULL ELSE p.lease_expires_at END \
                          AS lease_expires_at, \
                      CASE p.ordering \
                      WHEN {fifo} THEN (SELECT r.next_attempt_at FROM records r WHERE r.id = {head}) \
                      WHEN {key} THEN (SELECT MIN(r.next_attempt_at) FROM records r \
                                   WHERE r.repeater_id = p.id AND {unfinished} AND {key_head}) \
                      ELSE (SELECT MIN(r.next_attempt_at) FROM records r \
                            WHERE r.repeater_id = p.id AND {unfinished}) \
                      END AS due \
               FROM repeaters p WHERE NOT p.paused) d \
         WHERE d.due IS NOT NULL"
    )
}

/// A claim whose records also meet `rule`.
fn claim(rule: &str) -> String {
    let unfinished = unfinished("r.state");
    format!(
        "SELECT {CLAIM_COLUMNS} FROM records r JOIN events e ON e.id = r.event_id \
         WHERE r.repeater_id = $1 AND {unfinished} AND r.next_attempt_at <= $2 \
         AND {rule} ORDER BY r.next_attempt_at, r.id LIMIT $3"
    )
}

/// Takes the leases of `count` repeaters, `$5` onwards, that are free,
/// expired at `$4`, or held by the same holder `$2`: bumps each one's epoch
/// and returns it with the id. `$1` the token, `$3` the expiry. On
/// PostgreSQL a row another process is taking at the same moment is
/// skipped, not waited for.
///
/// A process asks for a lease only for a lane none of its batches holds,
/// so a lease already under its name is one it lost track of: a lease
/// write that committed while its answer was lost to a database restart,
/// or a release that failed. Waiting for that lease to expire held the
/// lane back a whole TTL after the database came back; taking it again
/// bumps the epoch, which fences out whatever the lost token could write.
pub(crate) fn acquire(dialect: Dialect, count: usize) -> String {
    let ids: Vec<String> = (5..5 + count).map(|n| format!("${n}")).collect();
    dialect.render(&format!(
        "UPDATE repeaters SET lease_epoch = lease_epoch + 1, lease_token = $1, \
         lease_holder = $2, lease_expires_at = $3 \
         WHERE id IN (SELECT id FROM repeaters WHERE id IN ({}) \
                      AND (lease_expires_at IS NULL OR lease_expires_at <= $4 \
                           OR lease_holder = $2){}) \
         RETURNING id, lease_epoch",
        ids.join(", "),
        dialect.skip_locked()
    ))
}

/// Columns of a row of [`release`].
const RELEASE_COLUMNS: usize = 3;

/// Gives `count` held leases up. A row: `(repeater, epoch, token)`; a
/// lease taken over since is left alone.
pub(crate) fn release(dialect: Dialect, count: usize) -> String {
    format!(
        "WITH v (id, epoch, token) AS ({}) UPDATE repeaters SET lease_holder = NULL, \
         lease_token = NULL, lease_expires_at = NULL \
         FROM v WHERE repeaters.id = v.id AND repeaters.lease_epoch = v.epoch \
         AND repeaters.lease_token = v.token",
        dialect.values(count, RELEASE_COLUMNS)
    )
}

/// The id of the oldest unfinished record of `repeater`: two index lookups
/// on `records_repeater_state` (a plain `ORDER BY id` would walk terminal
/// records first).
fn fifo_head(dialect: Dialect, repeater: &str) -> String {
    let oldest = |state: RecordState| {
        format!(
            "(SELECT MIN(h.id) FROM records h WHERE h.repeater_id = {repeater} AND h.state = {})",
            state.as_i16()
        )
    };
    dialect.least(
        &oldest(RecordState::Pending),
        &oldest(RecordState::Retrying),
    )
}

/// True for a record `r` that has no earlier unfinished record with the same
/// ordering key (records without a key are never held back).
fn key_head() -> String {
    format!(
        "(r.ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM records o \
         WHERE o.repeater_id = r.repeater_id AND {} \
         AND o.ordering_key = r.ordering_key AND o.id < r.id))",
        unfinished("o.state")
    )
}

/// Columns of a row of [`fence`].
pub(crate) const FENCE_COLUMNS: usize = 10;

/// The fence of `rows` batch results: a repeater's row matches only while
/// its batch's epoch and token hold the lane, and carries that batch's
/// health (when `health` is true) and release with it. Returns the ids of
/// the repeaters whose lease held. A row: `(id, epoch, token, health,
/// backoff_until, backoff_step, last_error, last_success_at, release, now)`.
pub(crate) fn fence(dialect: Dialect, rows: usize) -> String {
    format!(
        "WITH v (id, epoch, token, health, backoff_until, backoff_step, last_error, \
         last_success_at, release, now) AS ({}) UPDATE{} repeaters SET \
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
        dialect.values(rows, FENCE_COLUMNS),
        dialect.or_fail()
    )
}

/// Columns of a row of [`record_updates`].
pub(crate) const RECORD_UPDATE_COLUMNS: usize = 7;

/// The new state of `rows` records after their batches. Only records of
/// the batch's own lane change. A row: `(record_id, repeater_id, state,
/// next_attempt_at, counted, error, now)`; `counted` is 1 when the outcome
/// was an attempt, whose error then becomes the record's last error.
pub(crate) fn record_updates(dialect: Dialect, rows: usize) -> String {
    format!(
        "WITH v (record_id, repeater_id, state, next_attempt_at, counted, error, now) AS ({}) \
         UPDATE{} records SET state = v.state, next_attempt_at = v.next_attempt_at, \
         attempts = records.attempts + v.counted, \
         last_error = CASE WHEN v.counted = 1 THEN v.error ELSE records.last_error END, \
         updated_at = v.now \
         FROM v WHERE records.id = v.record_id AND records.repeater_id = v.repeater_id",
        dialect.values(rows, RECORD_UPDATE_COLUMNS),
        dialect.or_fail()
    )
}

/// Columns of a row of [`attempt_inserts`].
pub(crate) const ATTEMPT_COLUMNS: usize = 10;

/// Stores `rows` attempts. Only records of the batch's own lane get one: a
/// stray id is skipped rather than failing the whole batch, and the join
/// keeps the reference whole where foreign keys are not checked (ADR 9). A
/// row: `(record_id, repeater_id, started_at, duration_ms, status, error,
/// outcome, response_excerpt, plugin_sha256, request)`.
pub(crate) fn attempt_inserts(dialect: Dialect, rows: usize) -> String {
    format!(
        "WITH v (record_id, repeater_id, started_at, duration_ms, status, error, outcome, \
         response_excerpt, plugin_sha256, request) AS ({}) INSERT{} INTO attempts \
         (record_id, started_at, duration_ms, status, error, outcome, response_excerpt, \
         plugin_sha256, request) \
         SELECT v.record_id, v.started_at, v.duration_ms, v.status, v.error, v.outcome, \
         v.response_excerpt, v.plugin_sha256, v.request FROM v JOIN records r ON r.id = v.record_id \
         WHERE r.repeater_id = v.repeater_id",
        dialect.values(rows, ATTEMPT_COLUMNS),
        dialect.or_fail()
    )
}

/// The lanes of every backend: the backend's own ready set, wake-up time,
/// claim and batch results, and the leases in between, which are the same
/// statements on both.
#[async_trait]
impl<S> LaneStore for S
where
    S: Backend,
    for<'c> &'c mut <S::Db as Database>::Connection: Executor<'c, Database = S::Db>,
    for<'q> <S::Db as Database>::Arguments<'q>: IntoArguments<'q, S::Db>,
    for<'q> &'q str: Encode<'q, S::Db> + Type<S::Db>,
    for<'q> i64: Encode<'q, S::Db> + Decode<'q, S::Db> + Type<S::Db>,
    for<'q> String: Decode<'q, S::Db> + Type<S::Db>,
    usize: ColumnIndex<<S::Db as Database>::Row>,
{
    fn wake_signal(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.wake().clone()
    }

    fn take_hints(&self) -> Hinted {
        self.connections().hints.take()
    }

    async fn ready_repeaters(&self, now: Millis, holder: &str) -> StoreResult<Vec<ReadyRepeater>> {
        self.ready_set(now, holder).await
    }

    async fn ready_in_domains(
        &self,
        now: Millis,
        holder: &str,
        domains: &[String],
    ) -> StoreResult<Vec<ReadyRepeater>> {
        self.ready_within(now, holder, domains).await
    }

    async fn lanes_held_elsewhere(
        &self,
        now: Millis,
        holder: &str,
    ) -> StoreResult<Vec<(String, i64)>> {
        Ok(sqlx::query_as(&self.statements().lanes.held_elsewhere)
            .bind(holder)
            .bind(now)
            .fetch_all(self.reads())
            .await?)
    }

    async fn next_wakeup(&self, now: Millis, holder: &str) -> StoreResult<Option<Millis>> {
        self.earliest_due(now, holder).await
    }

    async fn acquire_lease(
        &self,
        repeater_id: i64,
        holder: &str,
        now: Millis,
        ttl_ms: i64,
    ) -> StoreResult<Option<Lease>> {
        let taken = self
            .acquire_leases(&[repeater_id], holder, now, ttl_ms)
            .await?;
        if let Some(lease) = taken.into_iter().next() {
            return Ok(Some(lease));
        }
        let exists: Option<i64> = sqlx::query_scalar(&self.statements().lanes.exists)
            .bind(repeater_id)
            .fetch_optional(self.reads())
            .await?;
        match exists {
            Some(_) => Ok(None),
            None => Err(StoreError::NotFound(format!("repeater {repeater_id}"))),
        }
    }

    async fn acquire_leases(
        &self,
        repeater_ids: &[i64],
        holder: &str,
        now: Millis,
        ttl_ms: i64,
    ) -> StoreResult<Vec<Lease>> {
        // One token for the leases taken together: each lease is still
        // told apart by its repeater and its epoch, which every taking bumps.
        let token = new_token();
        let expires_at = now.saturating_add(ttl_ms);
        let mut leases = Vec::with_capacity(repeater_ids.len());
        for run in runs(repeater_ids) {
            let sql = acquire(Self::DIALECT, run.len());
            let mut query = sqlx::query_as::<_, (i64, i64)>(&sql)
                .bind(token.as_str())
                .bind(holder)
                .bind(expires_at)
                .bind(now);
            for &id in run {
                query = query.bind(id);
            }
            // Stepped to the end, so the statement has finished (and
            // committed) before the connection goes back to the pool.
            let taken = query.fetch_all(self.writes()).await?;
            leases.extend(taken.into_iter().map(|(repeater_id, epoch)| Lease {
                repeater_id,
                epoch,
                token: token.clone(),
                expires_at,
            }));
        }
        Ok(leases)
    }

    async fn renew_lease(&self, lease: &Lease, now: Millis, ttl_ms: i64) -> StoreResult<Lease> {
        let expires_at = now.saturating_add(ttl_ms);
        let renewed = sqlx::query(&self.statements().lanes.renew)
            .bind(expires_at)
            .bind(lease.repeater_id)
            .bind(lease.epoch)
            .bind(lease.token.as_str())
            .execute(self.writes())
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
        self.read_lane(lease, limit, now).await
    }

    async fn finish_batch(
        &self,
        lease: &Lease,
        outcomes: &[RecordOutcome],
        health: Option<&RepeaterHealth>,
        release: bool,
        now: Millis,
    ) -> StoreResult<()> {
        let results = BatchResults {
            lease,
            outcomes,
            health,
            release,
            now,
        };
        self.write_results(results).await
    }

    async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
        if release_all(self, std::slice::from_ref(lease)).await? > 0 {
            // The lane is free again; its records may be due.
            self.work_may_be_ready();
        }
        Ok(())
    }

    async fn release_leases(&self, leases: &[Lease]) -> StoreResult<()> {
        if release_all(self, leases).await? > 0 {
            self.idle_lanes_released();
        }
        Ok(())
    }
}

/// Gives `leases` up, a statement per 256; how many were still held.
async fn release_all<B>(store: &B, leases: &[Lease]) -> StoreResult<u64>
where
    B: Backend,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> i64: Encode<'q, B::Db> + Type<B::Db>,
{
    let mut released = 0;
    for run in runs(leases) {
        let sql = release(B::DIALECT, run.len());
        let mut query = sqlx::query(&sql);
        for lease in run {
            query = query
                .bind(lease.repeater_id)
                .bind(lease.epoch)
                .bind(lease.token.as_str());
        }
        released += query.execute(store.writes()).await?.rows_affected();
    }
    Ok(released)
}
