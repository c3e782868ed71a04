//! Durable state: the store traits are the one seam between scheduling and
//! SQL. Each caller sees the part it uses: [`IngestStore`] (the ingest API),
//! [`LaneStore`] (the scheduler and the lanes), [`AdminStore`] (the admin
//! API, the config loader, metrics) and [`RetentionStore`] (the purge);
//! [`Store`] is all four, as the daemon opens it. Two backends implement
//! them: [`sqlite`] (the embedded default, one daemon per file) and
//! [`postgres`] (several daemons sharing a database).
//!
//! The SQL is written once for both. Each query is a named query beside the
//! code that runs it (`lanes`, `ingest`, `admin`, `retention`), rendered
//! for a backend by the `sql` module's dialect seam; what differs between
//! the backends is only how they run the hot steps (the `backend` module's
//! driver seam). Errors carry an [`ErrorKind`] for callers to act on.
//!
//! Invariants every implementation keeps:
//! - A repeater is the lane: work on its records happens only under its lease.
//!   A lease carries an epoch bumped on every acquisition; every write made on
//!   behalf of a lease is fenced by that epoch, so a stale holder changes
//!   nothing once another process has taken the lane over.
//! - Claiming reads due records of a leased repeater; it does not mark them.
//!   If the holder dies, the lease expires and the next holder reads the same
//!   records again: delivery is at-least-once and nothing is lost.
//! - Batches are read and written in one statement or transaction each.
//! - Ingest is all or nothing and idempotent by `(domain, event id)`.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

pub use crate::model::{AttemptDraft, ClaimedRecord, ReadyRepeater, RecordOutcome, RepeaterHealth};
use crate::model::{AttemptOutcome, Millis, NewEvent, RecordState, RepeaterSpec, SentRequest};

mod admin;
mod backend;
mod error;
mod ingest;
mod input;
mod lanes;
pub mod postgres;
mod retention;
mod rows;
#[cfg(test)]
mod scratch;
mod sql;
pub mod sqlite;

pub use backend::Hinted;

/// Free room on a SQLite file's filesystem under which the daemon counts
/// its disk as nearly full: the log is also copied after every group commit
/// (ADR 27), and the console says so. Copying the log into the file grows
/// the file by the new pages the log holds, so once the disk is full, ingest
/// and lease writes come back only when the room freed covers what the log
/// has not yet copied. At full load the log gains several MiB between two
/// timed checkpoints; near a full disk it is kept to one commit's worth, and
/// the writer pays the more frequent copies only when room is short.
pub const LOW_DISK_BYTES: u64 = 256 << 20;
pub use error::{ErrorKind, StoreError, StoreResult};

/// How many connections a store opens to its database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSizes {
    /// Most PostgreSQL connections in the pool.
    pub postgres: u32,
    /// SQLite read-only connections: the API's pool, and most kept for the
    /// scheduler's reads. Writes always go through the one writer.
    pub sqlite_readers: u32,
}

impl Default for PoolSizes {
    fn default() -> PoolSizes {
        PoolSizes {
            postgres: postgres::POOL_CONNECTIONS,
            sqlite_readers: sqlite::READ_CONNECTIONS,
        }
    }
}

/// [`open_with`] with the default pool sizes.
pub async fn open(database_url: Option<&str>, sqlite_path: &Path) -> StoreResult<Arc<dyn Store>> {
    open_with(database_url, sqlite_path, PoolSizes::default()).await
}

/// Opens the configured store and applies its migrations: PostgreSQL when
/// `database_url` starts with `postgres://` or `postgresql://`, otherwise a
/// SQLite file (`sqlite_path`, or the path of a `sqlite:` URL).
pub async fn open_with(
    database_url: Option<&str>,
    sqlite_path: &Path,
    pools: PoolSizes,
) -> StoreResult<Arc<dyn Store>> {
    let store: Arc<dyn Store> = match database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Arc::new(postgres::PostgresStore::connect_with(url, pools.postgres).await?)
        }
        Some(url) if url.starts_with("sqlite:") => {
            let path = url.trim_start_matches("sqlite:");
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.contains(":memory:") || path.contains("mode=memory") {
                return Err(StoreError::Invalid(format!(
                    "database url {url:?}: an in-memory SQLite database cannot be shared by the store's connections; name a file"
                )));
            }
            let path = path.split('?').next().unwrap_or(path);
            let path = if path.is_empty() {
                sqlite_path
            } else {
                Path::new(path)
            };
            Arc::new(sqlite::SqliteStore::open_with(path, pools.sqlite_readers).await?)
        }
        Some(url) => {
            return Err(StoreError::Invalid(format!(
                "database url {url:?}: expected postgres://, postgresql:// or sqlite:"
            )));
        }
        None => Arc::new(sqlite::SqliteStore::open_with(sqlite_path, pools.sqlite_readers).await?),
    };
    store.migrate().await?;
    Ok(store)
}

/// A stored repeater with its live status.
#[derive(Debug, Clone, Serialize)]
pub struct RepeaterRow {
    /// Internal id.
    pub id: i64,
    /// The configured spec.
    pub spec: RepeaterSpec,
    /// Paused repeaters are not scheduled; their records keep their state.
    pub paused: bool,
    /// While in the future, the repeater is backed off.
    pub backoff_until: Option<Millis>,
    /// How many consecutive failed batches led to the current backoff.
    pub backoff_step: u32,
    /// The current lease, if one is held (it may have expired).
    pub lease: Option<LeaseInfo>,
    /// The last failure seen, for status.
    pub last_error: Option<String>,
    /// When a record of this repeater last succeeded.
    pub last_success_at: Option<Millis>,
    /// When the repeater was first stored.
    pub created_at: Millis,
    /// When the spec or status last changed.
    pub updated_at: Millis,
}

/// Who holds a repeater's lane, for status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseInfo {
    /// The holder's name (process id and host).
    pub holder: String,
    /// The lease epoch.
    pub epoch: i64,
    /// When it expires unless renewed.
    pub expires_at: Millis,
}

/// Record counts of one repeater or domain by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Backlog {
    pub pending: i64,
    pub retrying: i64,
    pub succeeded: i64,
    pub rejected: i64,
    pub empty: i64,
    pub cancelled: i64,
}

impl Backlog {
    /// Adds `count` records in `state`.
    pub fn add(&mut self, state: RecordState, count: i64) {
        let slot = match state {
            RecordState::Pending => &mut self.pending,
            RecordState::Retrying => &mut self.retrying,
            RecordState::Succeeded => &mut self.succeeded,
            RecordState::Rejected => &mut self.rejected,
            RecordState::Empty => &mut self.empty,
            RecordState::Cancelled => &mut self.cancelled,
        };
        *slot += count;
    }
}

/// What ingest did with one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ingested {
    /// The event id (the producer's, or the one the host made).
    pub event_id: String,
    /// False when the id was seen before and nothing new was created.
    pub created: bool,
    /// The records of this event, one per subscribed repeater.
    pub records: Vec<IngestedRecord>,
}

/// One record made by ingest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngestedRecord {
    /// The record id.
    pub id: i64,
    /// The repeater's name.
    pub repeater: String,
}

/// A held lease: the right to work a repeater's lane until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The repeater leased.
    pub repeater_id: i64,
    /// Bumped on every acquisition; fences every write.
    pub epoch: i64,
    /// Random token of this acquisition.
    pub token: String,
    /// When the lease expires unless renewed.
    pub expires_at: Millis,
}

/// A stored record, as listed by the API.
#[derive(Debug, Clone, Serialize)]
pub struct RecordRow {
    pub id: i64,
    pub domain: String,
    pub repeater: String,
    pub event_id: String,
    pub event_type: String,
    pub state: RecordState,
    pub attempts: u32,
    pub next_attempt_at: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub last_error: Option<String>,
}

/// A stored attempt.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRow {
    pub id: i64,
    pub record_id: i64,
    pub started_at: Millis,
    pub duration_ms: i64,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub outcome: AttemptOutcome,
    /// Response body start, lossily decoded as UTF-8 for display.
    pub response_excerpt: Option<String>,
    /// The sha256 (hex) of the plugin version that built the request
    /// (none for attempts stored before versions were recorded).
    pub plugin_sha256: Option<String>,
    /// What was sent, redacted (none when nothing was built, or for
    /// attempts stored before requests were recorded).
    pub request: Option<SentRequest>,
}

/// How many unfinished records one repeater has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnfinishedCount {
    /// Its domain.
    pub domain: String,
    /// Its name.
    pub name: String,
    /// Records waiting for their first attempt (or a resend).
    pub pending: i64,
    /// Records waiting for a retry.
    pub retrying: i64,
}

/// Failed records of one repeater that share their last error, as the
/// console groups them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureGroup {
    /// The last error they share (empty when none was stored).
    pub error: String,
    /// How many records are in the group, retrying and rejected.
    pub count: i64,
    /// How many of them are still `retrying` (the ones a cancel reaches).
    pub retrying: i64,
    /// When the earliest of them last changed state.
    pub first_seen: Millis,
    /// When the latest of them last changed state.
    pub last_seen: Millis,
    /// The newest record of the group, as a sample to open.
    pub sample_id: i64,
}

/// The start of an event's payload, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadPreview {
    /// The event's content type.
    pub content_type: String,
    /// The payload's first bytes, at most [`PayloadPreview::MAX_BYTES`].
    pub bytes: Vec<u8>,
    /// The payload's whole length, bytes.
    pub total_bytes: i64,
    /// The event's ordering key, if it has one.
    pub ordering_key: Option<String>,
}

impl PayloadPreview {
    /// The most bytes of a payload a preview holds.
    pub const MAX_BYTES: usize = 64 * 1024;
}

/// Filter for [`AdminStore::records`].
#[derive(Debug, Clone, Default)]
pub struct RecordQuery {
    /// Only this repeater.
    pub repeater: Option<String>,
    /// Only this state.
    pub state: Option<RecordState>,
    /// Only ids greater than this (keyset pagination).
    pub after: Option<i64>,
    /// At most this many (the caller clamps it).
    pub limit: u32,
}

/// The durable state of the daemon, whole: what the daemon opens and hands
/// to its parts. Each part takes the narrower trait it uses. See the module
/// docs for the invariants.
#[async_trait]
pub trait Store: IngestStore + LaneStore + AdminStore + RetentionStore + 'static {
    /// Applies the embedded migrations.
    async fn migrate(&self) -> StoreResult<()>;
}

/// What the ingest API needs: storing events.
#[async_trait]
pub trait IngestStore: Send + Sync {
    /// Stores events of one domain and makes one record per subscribed
    /// repeater, all or nothing. An event whose id was seen before in the
    /// domain creates nothing and reports the first answer.
    async fn ingest(
        &self,
        domain: &str,
        events: &[NewEvent],
        now: Millis,
    ) -> StoreResult<Vec<Ingested>>;
}

/// What the scheduler and the lanes need: the ready set, the wake-up time,
/// leases, claims and batch results.
#[async_trait]
pub trait LaneStore: Send + Sync {
    /// A signal notified when new work may be ready: after every ingest in
    /// this process, and (PostgreSQL) when another process ingests. Both
    /// implementations also notify after resend, requeue, resume and the
    /// release of a lease (a freed lane may still have due records).
    fn wake_signal(&self) -> Arc<tokio::sync::Notify>;
    /// What the wake-ups since the last call were about, leaving none:
    /// the domains this process added records to, and whether anything
    /// else (a resend, a resume, a released lease, another process's
    /// change) may have made work ready. Each wake-up leaves its hint
    /// before it notifies.
    fn take_hints(&self) -> Hinted;
    /// Repeaters that are not paused, not backed off, not leased by another
    /// holder than `holder` (or whose lease expired) and have at least one
    /// record due at `now`. A lease `holder` itself keeps between batches
    /// does not hide its lane from it.
    async fn ready_repeaters(&self, now: Millis, holder: &str) -> StoreResult<Vec<ReadyRepeater>>;
    /// [`LaneStore::ready_repeaters`] of `domains` alone, in no set order.
    async fn ready_in_domains(
        &self,
        now: Millis,
        holder: &str,
        domains: &[String],
    ) -> StoreResult<Vec<ReadyRepeater>>;
    /// Per domain, how many of its repeaters (not paused) are leased by
    /// holders other than `holder` at `now`: the lanes other daemons on a
    /// shared database are serving. Domains with none are left out.
    async fn lanes_held_elsewhere(
        &self,
        now: Millis,
        holder: &str,
    ) -> StoreResult<Vec<(String, i64)>>;
    /// The earliest time something becomes due (a record's next attempt or
    /// a backoff or another holder's lease ending), for the scheduler's
    /// sleep. Leases of `holder` delay nothing.
    async fn next_wakeup(&self, now: Millis, holder: &str) -> StoreResult<Option<Millis>>;
    /// Takes the repeater's lease if it is free or expired. `None` when
    /// another holder has it.
    async fn acquire_lease(
        &self,
        repeater_id: i64,
        holder: &str,
        now: Millis,
        ttl_ms: i64,
    ) -> StoreResult<Option<Lease>>;
    /// Takes the leases of those of `repeater_ids` that are free or expired,
    /// in one write per 256: the scheduler takes the lanes it picks in one
    /// round together. The leases taken, in no particular order; ids another
    /// holder has, or that no longer exist, are left out.
    async fn acquire_leases(
        &self,
        repeater_ids: &[i64],
        holder: &str,
        now: Millis,
        ttl_ms: i64,
    ) -> StoreResult<Vec<Lease>>;
    /// Extends a held lease. Fails with [`StoreError::LeaseLost`] when taken over.
    async fn renew_lease(&self, lease: &Lease, now: Millis, ttl_ms: i64) -> StoreResult<Lease>;
    /// Reads up to `limit` due records of the leased repeater, oldest due
    /// first, with their events.
    async fn claim(
        &self,
        lease: &Lease,
        limit: u32,
        now: Millis,
    ) -> StoreResult<Vec<ClaimedRecord>> {
        Ok(self.claim_lane(lease, limit, now).await?.1)
    }
    /// [`LaneStore::claim`], with the leased repeater's row as it is now
    /// (its spec, pause and health), read under the same fence: a batch
    /// needs both and gets them in two statements.
    async fn claim_lane(
        &self,
        lease: &Lease,
        limit: u32,
        now: Millis,
    ) -> StoreResult<(RepeaterRow, Vec<ClaimedRecord>)>;
    /// Writes a batch's outcomes and attempts, and the repeater's health
    /// when given, in one transaction fenced by the lease; releases the lease
    /// when `release` is true. Fails with [`StoreError::LeaseLost`] (and
    /// writes nothing) when the lease was taken over.
    async fn finish_batch(
        &self,
        lease: &Lease,
        outcomes: &[RecordOutcome],
        health: Option<&RepeaterHealth>,
        release: bool,
        now: Millis,
    ) -> StoreResult<()>;
    /// Gives the lease up without writing anything else.
    async fn release_lease(&self, lease: &Lease) -> StoreResult<()>;
    /// Gives several leases up in one write per 256; one taken over since
    /// is left alone. For the scheduler's idle lanes: unlike
    /// [`LaneStore::release_lease`], it does not wake this process's
    /// scheduler (other processes sharing the database are told).
    async fn release_leases(&self, leases: &[Lease]) -> StoreResult<()>;
}

/// What the admin API, the config loader and the metrics need: repeaters,
/// their status and backlog, and records.
#[async_trait]
pub trait AdminStore: Send + Sync {
    /// Creates or replaces a repeater's spec, keeping its status and records.
    async fn upsert_repeater(&self, spec: &RepeaterSpec, now: Millis) -> StoreResult<RepeaterRow>;
    /// Deletes a repeater; its unfinished records become `cancelled`.
    /// Returns false when there was no such repeater.
    async fn delete_repeater(&self, domain: &str, name: &str, now: Millis) -> StoreResult<bool>;
    /// One repeater.
    async fn repeater(&self, domain: &str, name: &str) -> StoreResult<Option<RepeaterRow>>;
    /// Every repeater, or those of one domain, ordered by domain and name.
    async fn repeaters(&self, domain: Option<&str>) -> StoreResult<Vec<RepeaterRow>>;
    /// Record counts of one repeater by state.
    async fn backlog(&self, repeater_id: i64) -> StoreResult<Backlog>;
    /// The unfinished records of every repeater, or of one domain's,
    /// ordered by domain and name: one index range count per repeater and
    /// state, so the cost follows the backlog, never the finished records.
    async fn unfinished_counts(&self, domain: Option<&str>) -> StoreResult<Vec<UnfinishedCount>>;
    /// Record counts of unfinished records by domain and state (for metrics).
    async fn backlog_by_domain(&self) -> StoreResult<Vec<(String, RecordState, i64)>>;
    /// Room left on the filesystem of a SQLite file (for metrics); `None`
    /// on PostgreSQL, whose server keeps its own disk.
    fn database_free_bytes(&self) -> Option<u64>;
    /// Pauses or resumes a repeater. Returns false when there is no such repeater.
    async fn set_paused(
        &self,
        domain: &str,
        name: &str,
        paused: bool,
        now: Millis,
    ) -> StoreResult<bool>;
    /// Puts the repeater's `retrying` and `cancelled` records back to
    /// `pending`, due now, and clears its backoff. Returns how many moved;
    /// [`StoreError::NotFound`] when there is no such repeater.
    async fn requeue(&self, domain: &str, name: &str, now: Millis) -> StoreResult<u64>;
    /// Records of a domain, ordered by id.
    async fn records(&self, domain: &str, query: &RecordQuery) -> StoreResult<Vec<RecordRow>>;
    /// One record with its attempts, oldest first.
    async fn record(
        &self,
        domain: &str,
        id: i64,
    ) -> StoreResult<Option<(RecordRow, Vec<AttemptRow>)>>;
    /// Moves any record back to `pending`, due now, keeping its attempts;
    /// its attempt count and age start again. False when there is no such
    /// record; [`StoreError::Conflict`] when its repeater was deleted.
    async fn resend(&self, domain: &str, id: i64, now: Millis) -> StoreResult<bool>;
    /// Cancels a record that is not yet terminal. False when there is no
    /// such record; [`StoreError::Conflict`] when it is already terminal.
    async fn cancel(&self, domain: &str, id: i64, now: Millis) -> StoreResult<bool>;
    /// The start of the payload of a record's event; `None` when there is
    /// no such record.
    async fn payload(&self, domain: &str, id: i64) -> StoreResult<Option<PayloadPreview>>;
    /// A repeater's `retrying` and `rejected` records grouped by last
    /// error, largest group first, at most `limit` groups. Only the newest
    /// [`FAILURE_SCAN`] records of each of the two states are read, so the
    /// cost is bounded however many failures a repeater has collected.
    async fn failure_groups(
        &self,
        domain: &str,
        name: &str,
        limit: u32,
    ) -> StoreResult<Vec<FailureGroup>>;
    /// Puts every `retrying` or `rejected` record of a repeater whose last
    /// error is `error` (empty: none) back to `pending`, due now. Returns
    /// how many moved.
    async fn resend_failures(
        &self,
        domain: &str,
        name: &str,
        error: &str,
        now: Millis,
    ) -> StoreResult<u64>;
    /// Cancels every `retrying` record of a repeater whose last error is
    /// `error` (empty: none). Returns how many were cancelled.
    async fn cancel_failures(
        &self,
        domain: &str,
        name: &str,
        error: &str,
        now: Millis,
    ) -> StoreResult<u64>;
    /// Puts every record of a repeater that is in `state` back to
    /// `pending`, due now, keeping its attempts; its attempt count and age
    /// start again, as [`AdminStore::resend`] does for one record. It
    /// reaches up to the newest record in `state` when the call begins, so
    /// it ends however fast records enter the state meanwhile. Moves at
    /// most [`BULK_BATCH`] records per write transaction. Returns how many
    /// moved; [`StoreError::NotFound`] when there is no such repeater.
    async fn resend_in_state(
        &self,
        domain: &str,
        name: &str,
        state: RecordState,
        now: Millis,
    ) -> StoreResult<u64>;
    /// Cancels every record of a repeater that is in `state`, which must
    /// be unfinished (`pending` or `retrying`; a terminal state is
    /// [`StoreError::Invalid`]). It reaches up to the newest record in
    /// `state` when the call begins. Cancels at most [`BULK_BATCH`] records
    /// per write transaction. Returns how many were cancelled;
    /// [`StoreError::NotFound`] when there is no such repeater.
    async fn cancel_in_state(
        &self,
        domain: &str,
        name: &str,
        state: RecordState,
        now: Millis,
    ) -> StoreResult<u64>;
}

/// How many records one write transaction of
/// [`AdminStore::resend_in_state`] or [`AdminStore::cancel_in_state`]
/// changes: small enough that ingest and the lanes, which share the one
/// SQLite writer, wait no longer than a batch.
pub const BULK_BATCH: u32 = 500;

/// How many of the newest records per failed state
/// [`AdminStore::failure_groups`] reads.
pub const FAILURE_SCAN: u32 = 10_000;

/// What the retention task needs: deleting old terminal records, and old
/// events that no repeater took.
#[async_trait]
pub trait RetentionStore: Send + Sync {
    /// Deletes up to `limit` terminal records last updated before `before`,
    /// with their attempts and any events left without records. Returns how
    /// many records went.
    async fn purge_terminal(&self, before: Millis, limit: u32) -> StoreResult<u64>;

    /// Looks at up to `limit` events with ids above `after`, oldest first,
    /// and deletes those created before `before` that no record refers to:
    /// events that matched no repeater when they arrived. The scan stops at
    /// the first event created at or after `before`.
    async fn purge_unrouted_events(
        &self,
        before: Millis,
        after: i64,
        limit: u32,
    ) -> StoreResult<EventSweep>;
}

/// What one [`RetentionStore::purge_unrouted_events`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSweep {
    /// Events deleted.
    pub deleted: u64,
    /// The last event id looked at: the next call's `after`.
    pub scanned_to: i64,
    /// No old event is left past `scanned_to`: the scan reached the end of
    /// the table or an event still within retention.
    pub caught_up: bool,
}
