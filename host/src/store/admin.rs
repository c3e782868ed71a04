//! Administration, status and listings: repeater changes, pause and
//! requeue, backlog counts, record pages and details, resend and cancel of
//! one record, of a failure group, or of every record in a state.
//! Written once for both backends, as a generic over the backend's sqlx
//! database: the bounds below are what its statements bind and read.

use async_trait::async_trait;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Type};

use super::backend::{Backend, RowsAffected};
use super::input;
use super::rows::{
    ATTEMPT_COLUMNS, AttemptRowRaw, RECORD_COLUMNS, REPEATER_COLUMNS, RecordRowRaw,
    RepeaterRecordRaw, decode_state,
};
use super::sql::{Dialect, named_queries, state_in, unfinished};
use super::{
    AdminStore, AttemptRow, BULK_BATCH, Backlog, FAILURE_SCAN, FailureGroup, PayloadPreview,
    RecordQuery, RecordRow, RepeaterRow, StoreError, StoreResult, UnfinishedCount,
};
use crate::model::{Millis, RecordState, RepeaterSpec};

named_queries! {
    /// The fixed queries of administration, status and listings.
    pub(crate) struct AdminSql(dialect) {
        /// Creates or replaces repeater `$1`/`$2` with spec `$3` and
        /// ordering `$4` at `$5`, keeping its status.
        upsert_repeater: format!(
            "INSERT INTO repeaters (domain, name, spec, ordering, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (domain, name) DO UPDATE SET spec = excluded.spec, \
             ordering = excluded.ordering, updated_at = excluded.updated_at \
             RETURNING {REPEATER_COLUMNS}"
        ),
        /// Cancels the unfinished records of deleted repeater `$2` at `$1`.
        cancel_orphans: format!(
            "UPDATE records SET {}, last_error = 'repeater deleted' \
             WHERE repeater_id = $2 AND {}",
            cancelled(),
            unfinished("state")
        ),
        /// Deletes repeater `$1`/`$2`, returning its id.
        delete_repeater: "DELETE FROM repeaters WHERE domain = $1 AND name = $2 RETURNING id",
        /// Repeater `$1`/`$2`.
        repeater: format!(
            "SELECT {REPEATER_COLUMNS} FROM repeaters WHERE domain = $1 AND name = $2"
        ),
        /// Every repeater, or those of domain `$1`.
        repeaters: format!(
            "SELECT {REPEATER_COLUMNS} FROM repeaters \
             WHERE domain = $1 OR $1 IS NULL ORDER BY domain, name"
        ),
        /// Record counts of repeater `$1` by state.
        backlog: "SELECT state, COUNT(*) FROM records WHERE repeater_id = $1 GROUP BY state",
        /// Unfinished record counts of every repeater, or domain `$1`'s:
        /// counted on the `(repeater_id, state, id)` index, one range each.
        unfinished_counts: format!(
            "SELECT p.domain, p.name, \
             (SELECT COUNT(*) FROM records WHERE repeater_id = p.id AND state = {}), \
             (SELECT COUNT(*) FROM records WHERE repeater_id = p.id AND state = {}) \
             FROM repeaters p WHERE p.domain = $1 OR $1 IS NULL ORDER BY p.domain, p.name",
            RecordState::Pending.as_i16(),
            RecordState::Retrying.as_i16()
        ),
        /// Unfinished record counts by domain and state.
        backlog_by_domain: format!(
            "SELECT domain, state, COUNT(*) FROM records WHERE {} \
             GROUP BY domain, state ORDER BY domain, state",
            unfinished("state")
        ),
        /// Pauses (`$1` true) or resumes repeater `$3`/`$4` at `$2`.
        set_paused: "UPDATE repeaters SET paused = $1, updated_at = $2 \
                     WHERE domain = $3 AND name = $4",
        /// Puts repeater `$2`'s retrying and cancelled records back to
        /// pending at `$1`.
        requeue: format!(
            "UPDATE records SET {} WHERE repeater_id = $2 AND {}",
            back_to_pending(),
            state_in("state", &[RecordState::Retrying, RecordState::Cancelled])
        ),
        /// Clears repeater `$2`/`$3`'s backoff at `$1`, returning its id.
        clear_backoff: "UPDATE repeaters SET backoff_until = NULL, backoff_step = 0, \
                        updated_at = $1 WHERE domain = $2 AND name = $3 RETURNING id",
        /// Record `$2` of domain `$1`, with its event.
        record: format!(
            "SELECT {RECORD_COLUMNS} FROM records r JOIN events e ON e.id = r.event_id \
             WHERE r.domain = $1 AND r.id = $2"
        ),
        /// The attempts of record `$1`, oldest first.
        attempts: format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE record_id = $1 ORDER BY id"
        ),
        /// Whether record `$2` of domain `$1` exists, and its repeater still does.
        resend_check: "SELECT r.repeater_id, \
                       EXISTS (SELECT 1 FROM repeaters p WHERE p.id = r.repeater_id) \
                       FROM records r WHERE r.domain = $1 AND r.id = $2",
        /// Puts record `$2` back to pending at `$1`.
        resend: format!("UPDATE records SET {} WHERE id = $2", back_to_pending()),
        /// The state of record `$2` of domain `$1`.
        record_state: "SELECT state FROM records WHERE domain = $1 AND id = $2",
        /// The payload preview of record `$2` of domain `$1`.
        payload: format!(
            "SELECT e.content_type, substr(e.payload, 1, {}), CAST(length(e.payload) AS BIGINT), e.ordering_key \
             FROM records r JOIN events e ON e.id = r.event_id WHERE r.domain = $1 AND r.id = $2",
            PayloadPreview::MAX_BYTES
        ),
        /// The failure groups of repeater `$1`/`$2`, at most `$3`: the
        /// newest failures of each failed state, grouped by last error.
        failure_groups: {
            let branch = |state: RecordState| format!(
                "SELECT * FROM (SELECT last_error, state, updated_at, id FROM records \
                 WHERE repeater_id = (SELECT id FROM repeaters WHERE domain = $1 AND name = $2) \
                 AND state = {} ORDER BY id DESC LIMIT {FAILURE_SCAN}) AS s{}",
                state.as_i16(), state.as_i16()
            );
            format!(
                "SELECT COALESCE(last_error, '') AS error, COUNT(*), \
                 SUM(CASE WHEN state = {} THEN 1 ELSE 0 END), MIN(updated_at), MAX(updated_at), MAX(id) \
                 FROM ({} UNION ALL {}) AS failed \
                 GROUP BY COALESCE(last_error, '') ORDER BY COUNT(*) DESC, error LIMIT $3",
                RecordState::Retrying.as_i16(),
                branch(RecordState::Retrying),
                branch(RecordState::Rejected)
            )
        },
        /// Puts the failed records of repeater `$2`/`$3` whose last error
        /// is `$4` back to pending at `$1`.
        resend_failures: format!(
            "UPDATE records SET {} WHERE repeater_id = \
             (SELECT id FROM repeaters WHERE domain = $2 AND name = $3) \
             AND {} AND COALESCE(last_error, '') = $4",
            back_to_pending(),
            state_in("state", &[RecordState::Retrying, RecordState::Rejected])
        ),
        /// Cancels the retrying records of repeater `$2`/`$3` whose last
        /// error is `$4`, at `$1`.
        cancel_failures: format!(
            "UPDATE records SET {} \
             WHERE repeater_id = (SELECT id FROM repeaters WHERE domain = $2 AND name = $3) \
             AND state = {} AND COALESCE(last_error, '') = $4",
            cancelled(),
            RecordState::Retrying.as_i16()
        ),
        /// Cancels record `$2` at `$1`.
        cancel: format!("UPDATE records SET {} WHERE id = $2", cancelled()),
        /// The id of repeater `$1`/`$2`.
        repeater_id: "SELECT id FROM repeaters WHERE domain = $1 AND name = $2",
    }
}

/// The SQL of a bulk action on the records of one repeater in one state
/// ([`AdminStore::resend_in_state`], [`AdminStore::cancel_in_state`]). The
/// state is written into the text, as every state in the store's SQL is
/// (see the `sql` module), so each state has its own texts; each reads
/// the `(repeater_id, state, id)` index by range.
///
/// An action walks the state's ids in batches: `last` fixes where it
/// stops, then each batch, in its own write transaction, finds its end
/// with `batch_end` and changes that id range with `resend` or `cancel`.
pub(crate) struct StateSql {
    /// The newest id of repeater `$1`'s records in the state.
    pub last: String,
    /// The last id of the next batch of repeater `$1`'s records in the
    /// state: at most `$4` ids above `$2` and up to `$3`. NULL when none
    /// is left.
    pub batch_end: String,
    /// Puts repeater `$2`'s records in the state with ids above `$3` and
    /// up to `$4` back to pending at `$1`.
    pub resend: String,
    /// Cancels repeater `$2`'s records in the state with ids above `$3`
    /// and up to `$4`, at `$1`.
    pub cancel: String,
}

impl StateSql {
    /// The texts for the records in `state`, written for `dialect`.
    pub(crate) fn new(dialect: Dialect, state: RecordState) -> StateSql {
        let code = state.as_i16();
        let range = format!("repeater_id = $2 AND state = {code} AND id > $3 AND id <= $4");
        StateSql {
            last: dialect.render(&format!(
                "SELECT id FROM records WHERE repeater_id = $1 AND state = {code} \
                 ORDER BY id DESC LIMIT 1"
            )),
            batch_end: dialect.render(&format!(
                "SELECT MAX(id) FROM (SELECT id FROM records WHERE repeater_id = $1 \
                 AND state = {code} AND id > $2 AND id <= $3 ORDER BY id LIMIT $4) AS batch"
            )),
            resend: dialect.render(&format!(
                "UPDATE records SET {} WHERE {range}",
                back_to_pending()
            )),
            cancel: dialect.render(&format!("UPDATE records SET {} WHERE {range}", cancelled())),
        }
    }
}

/// What a bulk action by state does to each record it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BulkAction {
    /// Back to pending, due now.
    Resend,
    /// Cancelled.
    Cancel,
}

/// Runs `action` on every record of repeater `domain`/`name` in `state`,
/// up to the newest such record at the start, [`BULK_BATCH`] records per
/// write transaction so no batch holds the writer long. Returns how many
/// records changed.
async fn in_batches<S>(
    store: &S,
    domain: &str,
    name: &str,
    state: RecordState,
    action: BulkAction,
    now: Millis,
) -> StoreResult<u64>
where
    S: Backend,
    for<'c> &'c mut <S::Db as Database>::Connection: Executor<'c, Database = S::Db>,
    for<'q> <S::Db as Database>::Arguments<'q>: IntoArguments<'q, S::Db>,
    for<'q> &'q str: Encode<'q, S::Db> + Type<S::Db>,
    for<'q> i64: Encode<'q, S::Db> + Decode<'q, S::Db> + Type<S::Db>,
    usize: ColumnIndex<<S::Db as Database>::Row>,
{
    let id: Option<i64> = sqlx::query_scalar(&store.statements().admin.repeater_id)
        .bind(domain)
        .bind(name)
        .fetch_optional(store.writes())
        .await?;
    let Some(id) = id else {
        return Err(StoreError::NotFound(format!("repeater {domain}/{name}")));
    };
    let sql = StateSql::new(S::DIALECT, state);
    let change = match action {
        BulkAction::Resend => &sql.resend,
        BulkAction::Cancel => &sql.cancel,
    };
    // Records that enter the state meanwhile (new ingests, fresh failures)
    // lie above this id and are left alone, so the walk ends.
    let last: Option<i64> = sqlx::query_scalar(&sql.last)
        .bind(id)
        .fetch_optional(store.writes())
        .await?;
    let Some(last) = last else {
        return Ok(0);
    };
    let mut after = 0;
    let mut changed = 0;
    loop {
        let mut tx = store.writes().begin_with(S::DIALECT.begin_write()).await?;
        let end: Option<i64> = sqlx::query_scalar(&sql.batch_end)
            .bind(id)
            .bind(after)
            .bind(last)
            .bind(i64::from(BULK_BATCH))
            .fetch_one(&mut *tx)
            .await?;
        let Some(end) = end else {
            break;
        };
        changed += sqlx::query(change)
            .bind(now)
            .bind(id)
            .bind(after)
            .bind(end)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        after = end;
    }
    Ok(changed)
}

/// The assignments that put a record back to pending, due at `$1`, its
/// attempt count and age starting again.
fn back_to_pending() -> String {
    format!(
        "state = {}, attempts = 0, age_origin = $1, next_attempt_at = $1, updated_at = $1",
        RecordState::Pending.as_i16()
    )
}

/// The assignments that cancel a record at `$1`.
fn cancelled() -> String {
    format!(
        "state = {}, next_attempt_at = NULL, updated_at = $1",
        RecordState::Cancelled.as_i16()
    )
}

/// The SQL of one page of [`AdminStore::records`], the same text for both
/// backends. Its placeholders: `$1` the domain, `$2` the page size, `$3` the
/// id to list after (0 for the first page) and, only when the query names a
/// repeater, `$4` its name.
///
/// The records table has listing indexes by state only, `(domain, state,
/// id)` and `(repeater_id, state, id)`, because every index on it costs each
/// ingest and each delivery (ADR 10). A page over every state is therefore a
/// merge: one branch per state reads at most a page of ids from its index,
/// the merged ids are cut to a page, and only then are the page's rows read
/// and joined with their events. That keeps a page's cost bounded by the
/// number of states times the page size, however many records the domain
/// holds.
pub(crate) fn records_page_sql(dialect: Dialect, query: &RecordQuery) -> String {
    // A repeater's id belongs to one domain, so its branch needs no domain
    // term, and the planner has only one index to choose.
    let owner = if query.repeater.is_some() {
        "repeater_id = (SELECT id FROM repeaters WHERE domain = $1 AND name = $4)"
    } else {
        "domain = $1"
    };
    let states: &[RecordState] = match &query.state {
        Some(state) => std::slice::from_ref(state),
        None => &RecordState::ALL,
    };
    let branches: Vec<String> = states
        .iter()
        .map(|state| {
            format!(
                "SELECT id FROM (SELECT id FROM records WHERE {owner} AND state = {code} \
                 AND id > $3 ORDER BY id LIMIT $2) AS s{code}",
                code = state.as_i16()
            )
        })
        .collect();
    dialect.render(&format!(
        "SELECT {RECORD_COLUMNS} FROM records r JOIN events e ON e.id = r.event_id \
         WHERE r.id IN ({} ORDER BY id LIMIT $2) ORDER BY r.id",
        branches.join(" UNION ALL ")
    ))
}

/// Administration for every backend: reads on its read pool, writes in
/// short transactions on its write pool.
#[async_trait]
impl<S> AdminStore for S
where
    S: Backend,
    for<'c> &'c mut <S::Db as Database>::Connection: Executor<'c, Database = S::Db>,
    for<'q> <S::Db as Database>::Arguments<'q>: IntoArguments<'q, S::Db>,
    for<'q> &'q str: Encode<'q, S::Db> + Type<S::Db>,
    for<'q> Option<&'q str>: Encode<'q, S::Db> + Type<S::Db>,
    for<'q> i64: Encode<'q, S::Db> + Decode<'q, S::Db> + Type<S::Db>,
    for<'q> i16: Encode<'q, S::Db> + Decode<'q, S::Db> + Type<S::Db>,
    for<'q> bool: Encode<'q, S::Db> + Decode<'q, S::Db> + Type<S::Db>,
    for<'r> i32: Decode<'r, S::Db> + Type<S::Db>,
    for<'r> String: Decode<'r, S::Db> + Type<S::Db>,
    for<'r> Vec<u8>: Decode<'r, S::Db> + Type<S::Db>,
    usize: ColumnIndex<<S::Db as Database>::Row>,
    for<'n> &'n str: ColumnIndex<<S::Db as Database>::Row>,
{
    async fn upsert_repeater(&self, spec: &RepeaterSpec, now: Millis) -> StoreResult<RepeaterRow> {
        let json = input::spec_json(spec)?;
        let mut tx = self.writes().begin_with(S::DIALECT.begin_write()).await?;
        let raw: RepeaterRecordRaw = sqlx::query_as(&self.statements().admin.upsert_repeater)
            .bind(spec.domain.as_str())
            .bind(spec.name.as_str())
            .bind(json.as_str())
            .bind(input::ordering_code(spec.ordering))
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
        self.repeaters_changing();
        tx.commit().await?;
        raw.decode()
    }

    async fn delete_repeater(&self, domain: &str, name: &str, now: Millis) -> StoreResult<bool> {
        let sql = &self.statements().admin;
        let mut tx = self.writes().begin_with(S::DIALECT.begin_write()).await?;
        let id: Option<i64> = sqlx::query_scalar(&sql.delete_repeater)
            .bind(domain)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(id) = id else {
            return Ok(false);
        };
        sqlx::query(&sql.cancel_orphans)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.repeaters_changing();
        tx.commit().await?;
        Ok(true)
    }

    async fn repeater(&self, domain: &str, name: &str) -> StoreResult<Option<RepeaterRow>> {
        let raw: Option<RepeaterRecordRaw> = sqlx::query_as(&self.statements().admin.repeater)
            .bind(domain)
            .bind(name)
            .fetch_optional(self.reads())
            .await?;
        raw.map(RepeaterRecordRaw::decode).transpose()
    }

    async fn repeaters(&self, domain: Option<&str>) -> StoreResult<Vec<RepeaterRow>> {
        let raws: Vec<RepeaterRecordRaw> = sqlx::query_as(&self.statements().admin.repeaters)
            .bind(domain)
            .fetch_all(self.reads())
            .await?;
        raws.into_iter().map(RepeaterRecordRaw::decode).collect()
    }

    async fn backlog(&self, repeater_id: i64) -> StoreResult<Backlog> {
        let rows: Vec<(i16, i64)> = sqlx::query_as(&self.statements().admin.backlog)
            .bind(repeater_id)
            .fetch_all(self.reads())
            .await?;
        let mut backlog = Backlog::default();
        for (state, count) in rows {
            backlog.add(decode_state(state)?, count);
        }
        Ok(backlog)
    }

    async fn unfinished_counts(&self, domain: Option<&str>) -> StoreResult<Vec<UnfinishedCount>> {
        let rows: Vec<(String, String, i64, i64)> =
            sqlx::query_as(&self.statements().admin.unfinished_counts)
                .bind(domain)
                .fetch_all(self.reads())
                .await?;
        Ok(rows
            .into_iter()
            .map(|(domain, name, pending, retrying)| UnfinishedCount {
                domain,
                name,
                pending,
                retrying,
            })
            .collect())
    }

    fn database_free_bytes(&self) -> Option<u64> {
        self.free_disk_bytes()
    }

    async fn backlog_by_domain(&self) -> StoreResult<Vec<(String, RecordState, i64)>> {
        let rows: Vec<(String, i16, i64)> =
            sqlx::query_as(&self.statements().admin.backlog_by_domain)
                .fetch_all(self.reads())
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
        let changed = sqlx::query(&self.statements().admin.set_paused)
            .bind(paused)
            .bind(now)
            .bind(domain)
            .bind(name)
            .execute(self.writes())
            .await?
            .rows_affected();
        if changed > 0 && !paused {
            self.work_may_be_ready();
        }
        Ok(changed > 0)
    }

    async fn requeue(&self, domain: &str, name: &str, now: Millis) -> StoreResult<u64> {
        let sql = &self.statements().admin;
        let mut tx = self.writes().begin_with(S::DIALECT.begin_write()).await?;
        let id: Option<i64> = sqlx::query_scalar(&sql.clear_backoff)
            .bind(now)
            .bind(domain)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(id) = id else {
            return Err(StoreError::NotFound(format!("repeater {domain}/{name}")));
        };
        let moved = sqlx::query(&sql.requeue)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        self.work_may_be_ready();
        Ok(moved)
    }

    async fn records(&self, domain: &str, query: &RecordQuery) -> StoreResult<Vec<RecordRow>> {
        let sql = records_page_sql(S::DIALECT, query);
        let mut page = sqlx::query_as::<_, RecordRowRaw>(&sql)
            .bind(domain)
            .bind(i64::from(query.limit))
            .bind(query.after.unwrap_or(0));
        if let Some(repeater) = &query.repeater {
            page = page.bind(repeater.as_str());
        }
        let raws = page.fetch_all(self.reads()).await?;
        raws.into_iter().map(RecordRowRaw::decode).collect()
    }

    async fn record(
        &self,
        domain: &str,
        id: i64,
    ) -> StoreResult<Option<(RecordRow, Vec<AttemptRow>)>> {
        let sql = &self.statements().admin;
        let raw: Option<RecordRowRaw> = sqlx::query_as(&sql.record)
            .bind(domain)
            .bind(id)
            .fetch_optional(self.reads())
            .await?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let attempts: Vec<AttemptRowRaw> = sqlx::query_as(&sql.attempts)
            .bind(id)
            .fetch_all(self.reads())
            .await?;
        let attempts = attempts
            .into_iter()
            .map(AttemptRowRaw::decode)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Some((raw.decode()?, attempts)))
    }

    async fn resend(&self, domain: &str, id: i64, now: Millis) -> StoreResult<bool> {
        let sql = &self.statements().admin;
        let mut tx = self.writes().begin_with(S::DIALECT.begin_write()).await?;
        let found: Option<(i64, bool)> = sqlx::query_as(&sql.resend_check)
            .bind(domain)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        match found {
            None => return Ok(false),
            Some((_, false)) => {
                return Err(StoreError::Conflict(format!(
                    "record {id} cannot be resent: its repeater was deleted"
                )));
            }
            Some((_, true)) => {}
        }
        sqlx::query(&sql.resend)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.work_may_be_ready();
        Ok(true)
    }

    async fn cancel(&self, domain: &str, id: i64, now: Millis) -> StoreResult<bool> {
        let sql = &self.statements().admin;
        let mut tx = self.writes().begin_with(S::DIALECT.begin_write()).await?;
        let state: Option<i16> = sqlx::query_scalar(&sql.record_state)
            .bind(domain)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(state) = state else {
            return Ok(false);
        };
        let state = decode_state(state)?;
        if state.is_terminal() {
            return Err(StoreError::Conflict(format!(
                "record {id} is already {state} and cannot be cancelled"
            )));
        }
        sqlx::query(&sql.cancel)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn payload(&self, domain: &str, id: i64) -> StoreResult<Option<PayloadPreview>> {
        let row: Option<(String, Vec<u8>, i64, Option<String>)> =
            sqlx::query_as(&self.statements().admin.payload)
                .bind(domain)
                .bind(id)
                .fetch_optional(self.reads())
                .await?;
        Ok(row.map(
            |(content_type, bytes, total_bytes, ordering_key)| PayloadPreview {
                content_type,
                bytes,
                total_bytes,
                ordering_key,
            },
        ))
    }

    async fn failure_groups(
        &self,
        domain: &str,
        name: &str,
        limit: u32,
    ) -> StoreResult<Vec<FailureGroup>> {
        let rows: Vec<(String, i64, i64, i64, i64, i64)> =
            sqlx::query_as(&self.statements().admin.failure_groups)
                .bind(domain)
                .bind(name)
                .bind(i64::from(limit))
                .fetch_all(self.reads())
                .await?;
        Ok(rows
            .into_iter()
            .map(
                |(error, count, retrying, first_seen, last_seen, sample_id)| FailureGroup {
                    error,
                    count,
                    retrying,
                    first_seen,
                    last_seen,
                    sample_id,
                },
            )
            .collect())
    }

    async fn resend_failures(
        &self,
        domain: &str,
        name: &str,
        error: &str,
        now: Millis,
    ) -> StoreResult<u64> {
        let moved = sqlx::query(&self.statements().admin.resend_failures)
            .bind(now)
            .bind(domain)
            .bind(name)
            .bind(error)
            .execute(self.writes())
            .await?
            .rows_affected();
        if moved > 0 {
            self.work_may_be_ready();
        }
        Ok(moved)
    }

    async fn cancel_failures(
        &self,
        domain: &str,
        name: &str,
        error: &str,
        now: Millis,
    ) -> StoreResult<u64> {
        Ok(sqlx::query(&self.statements().admin.cancel_failures)
            .bind(now)
            .bind(domain)
            .bind(name)
            .bind(error)
            .execute(self.writes())
            .await?
            .rows_affected())
    }

    async fn resend_in_state(
        &self,
        domain: &str,
        name: &str,
        state: RecordState,
        now: Millis,
    ) -> StoreResult<u64> {
        let moved = in_batches(self, domain, name, state, BulkAction::Resend, now).await?;
        if moved > 0 {
            self.work_may_be_ready();
        }
        Ok(moved)
    }

    async fn cancel_in_state(
        &self,
        domain: &str,
        name: &str,
        state: RecordState,
        now: Millis,
    ) -> StoreResult<u64> {
        if state.is_terminal() {
            return Err(StoreError::Invalid(format!(
                "{state} records are already finished and cannot be cancelled; only pending or retrying records can"
            )));
        }
        in_batches(self, domain, name, state, BulkAction::Cancel, now).await
    }
}
