//! Retention: terminal records, their attempts and the events left without
//! records are deleted in bounded batches, one short write transaction
//! each, on every backend; so are events that no repeater took, which never
//! had a record to leave.

use async_trait::async_trait;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Type};

use super::backend::{Backend, RowsAffected};
use super::input::ROWS_PER_STATEMENT;
use super::sql::{named_queries, terminal};
use super::{EventSweep, RetentionStore, StoreResult};
use crate::model::Millis;

named_queries! {
    /// The fixed queries of the purge.
    pub(crate) struct RetentionSql(dialect) {
        /// Up to `$2` terminal records last updated before `$1`, oldest
        /// first, with their events; reads the terminal records' index.
        victims: format!(
            "SELECT id, event_id FROM records WHERE {} AND updated_at < $1 \
             ORDER BY updated_at LIMIT $2",
            terminal("state")
        ),
        /// Up to `$2` events after id `$1`, oldest first, with their
        /// creation time and whether any record refers to them.
        events_after: "SELECT id, created_at, \
             (SELECT COUNT(*) FROM records r WHERE r.event_id = events.id) \
             FROM events WHERE id > $1 ORDER BY id LIMIT $2",
    }
}

/// A delete of the rows whose ids are in `ids` (a list of placeholders).
type DeleteByIds = fn(&str) -> String;

/// Deletes the events in `ids` that no record refers to: a purged
/// record's event once its last record went, or an event no repeater took.
const DELETE_UNREFERENCED_EVENTS: DeleteByIds = |ids| {
    format!(
        "DELETE FROM events WHERE id IN ({ids}) \
         AND NOT EXISTS (SELECT 1 FROM records r WHERE r.event_id = events.id)"
    )
};

/// The deletes of the purge: the attempts and the records of the victims,
/// then their events that no record refers to any more.
const DELETES: [DeleteByIds; 3] = [
    |ids| format!("DELETE FROM attempts WHERE record_id IN ({ids})"),
    |ids| format!("DELETE FROM records WHERE id IN ({ids})"),
    DELETE_UNREFERENCED_EVENTS,
];

/// Runs `delete` on `conn` for every id of `ids`, at most
/// [`ROWS_PER_STATEMENT`] per statement; returns the rows deleted.
async fn delete_ids<S>(
    conn: &mut <S::Db as Database>::Connection,
    delete: DeleteByIds,
    ids: &[i64],
) -> StoreResult<u64>
where
    S: Backend,
    for<'c> &'c mut <S::Db as Database>::Connection: Executor<'c, Database = S::Db>,
    for<'q> <S::Db as Database>::Arguments<'q>: IntoArguments<'q, S::Db>,
    for<'q> i64: Encode<'q, S::Db> + Type<S::Db>,
{
    let mut deleted = 0;
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let sql = delete(&S::DIALECT.list(chunk.len()));
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(*id);
        }
        deleted += query.execute(&mut *conn).await?.rows_affected();
    }
    Ok(deleted)
}

#[async_trait]
impl<S> RetentionStore for S
where
    S: Backend,
    for<'c> &'c mut <S::Db as Database>::Connection: Executor<'c, Database = S::Db>,
    for<'q> <S::Db as Database>::Arguments<'q>: IntoArguments<'q, S::Db>,
    for<'q> i64: Encode<'q, S::Db> + Decode<'q, S::Db> + Type<S::Db>,
    usize: ColumnIndex<<S::Db as Database>::Row>,
{
    async fn purge_terminal(&self, before: Millis, limit: u32) -> StoreResult<u64> {
        let mut tx = self.writes().begin_with(S::DIALECT.begin_write()).await?;
        let victims: Vec<(i64, i64)> = sqlx::query_as(&self.statements().retention.victims)
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        let record_ids: Vec<i64> = victims.iter().map(|(id, _)| *id).collect();
        let mut event_ids: Vec<i64> = victims.iter().map(|(_, event)| *event).collect();
        event_ids.sort_unstable();
        event_ids.dedup();
        let lists = [&record_ids, &record_ids, &event_ids];
        for (delete, ids) in DELETES.into_iter().zip(lists) {
            delete_ids::<S>(&mut tx, delete, ids).await?;
        }
        tx.commit().await?;
        Ok(record_ids.len() as u64)
    }

    async fn purge_unrouted_events(
        &self,
        before: Millis,
        after: i64,
        limit: u32,
    ) -> StoreResult<EventSweep> {
        let mut tx = self.writes().begin_with(S::DIALECT.begin_write()).await?;
        let scanned: Vec<(i64, i64, i64)> =
            sqlx::query_as(&self.statements().retention.events_after)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
        // Ids grow with time, so the scan stops at the first event still
        // within retention; it is looked at again next time.
        let old: Vec<(i64, i64)> = scanned
            .iter()
            .take_while(|(_, created_at, _)| *created_at < before)
            .map(|(id, _, records)| (*id, *records))
            .collect();
        let unrouted: Vec<i64> = old
            .iter()
            .filter(|(_, records)| *records == 0)
            .map(|(id, _)| *id)
            .collect();
        let deleted = delete_ids::<S>(&mut tx, DELETE_UNREFERENCED_EVENTS, &unrouted).await?;
        tx.commit().await?;
        Ok(EventSweep {
            deleted,
            scanned_to: old.last().map_or(after, |(id, _)| *id),
            caught_up: old.len() < scanned.len() || scanned.len() < limit as usize,
        })
    }
}
