//! The driver seam: what a database backend supplies so that the store's
//! traits ([`Store`], [`IngestStore`](super::IngestStore),
//! [`LaneStore`](super::LaneStore), [`AdminStore`](super::AdminStore),
//! [`RetentionStore`](super::RetentionStore)) can be written once for every
//! backend. A backend gives its sqlx pools and wake-up signal, its dialect
//! and migrations, and the four steps it runs its own way for speed:
//! ingest's writes, the ready set (whole or within domains) with the
//! wake-up time, the claim, and the batch results.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sqlx::migrate::Migrate;
use sqlx::{Database, Pool};
use tokio::sync::Notify;

use super::input::IngestPlan;
use super::sql::{Dialect, SqlDatabase, Statements};
use super::{
    ClaimedRecord, Ingested, Lease, ReadyRepeater, RecordOutcome, RepeaterHealth, RepeaterRow,
    Store, StoreResult,
};
use crate::model::{Millis, NewEvent};

/// A database backend of the store. Implemented by
/// [`SqliteStore`](super::sqlite::SqliteStore) and
/// [`PostgresStore`](super::postgres::PostgresStore); every public store
/// trait follows from it.
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    /// The database its sqlx pools speak to, with its dialect.
    type Db: SqlDatabase<QueryResult: RowsAffected, Connection: Migrate>;
    /// The dialect of its SQL.
    const DIALECT: Dialect = <Self::Db as SqlDatabase>::DIALECT;

    /// Its pools and wake-up signal.
    fn connections(&self) -> &Connections<Self::Db>;

    /// Something may have become ready (a resend, a requeue, a resume, a
    /// released lease): wake the scheduler. A backend shared by several
    /// processes tells the others too.
    fn work_may_be_ready(&self) {
        self.connections().hints.anything();
        self.wake().notify_one();
    }
    /// This process added records to `domain`: wake the scheduler, which
    /// can look at that domain's repeaters alone. A backend shared by
    /// several processes tells the others too.
    fn records_added(&self, domain: &str) {
        self.connections().hints.domain(domain);
        self.wake().notify_one();
    }
    /// This process gave up the leases of lanes that had nothing due. Its
    /// own scheduler knows and is not woken: waking it made it read every
    /// repeater, which gave up more idle leases, which woke it again. A
    /// backend shared by several processes tells the others, whose
    /// ingests may have found those lanes leased.
    fn idle_lanes_released(&self) {}
    /// Room left for this process on the filesystem holding the database,
    /// where the backend can tell (a file it writes itself).
    fn free_disk_bytes(&self) -> Option<u64> {
        None
    }
    /// Called inside a write transaction that changes the repeaters table,
    /// before it commits.
    fn repeaters_changing(&self) {}

    /// Ingest's writes, once every event has been checked and given its id.
    async fn write_events(&self, ingest: Ingest<'_>) -> StoreResult<Vec<Ingested>>;
    /// See [`LaneStore::ready_repeaters`](super::LaneStore::ready_repeaters).
    async fn ready_set(&self, now: Millis, holder: &str) -> StoreResult<Vec<ReadyRepeater>>;
    /// See [`LaneStore::ready_in_domains`](super::LaneStore::ready_in_domains).
    async fn ready_within(
        &self,
        now: Millis,
        holder: &str,
        domains: &[String],
    ) -> StoreResult<Vec<ReadyRepeater>>;
    /// See [`LaneStore::next_wakeup`](super::LaneStore::next_wakeup).
    async fn earliest_due(&self, now: Millis, holder: &str) -> StoreResult<Option<Millis>>;
    /// See [`LaneStore::claim_lane`](super::LaneStore::claim_lane).
    async fn read_lane(&self, lease: &Lease, limit: u32, now: Millis) -> StoreResult<LaneClaim>;
    /// See [`LaneStore::finish_batch`](super::LaneStore::finish_batch).
    async fn write_results(&self, results: BatchResults<'_>) -> StoreResult<()>;

    /// The named queries rendered for [`Backend::DIALECT`].
    fn statements(&self) -> &'static Statements {
        Statements::of(Self::DIALECT)
    }
    /// The pool that serves reads outside the lanes: status, listings.
    fn reads(&self) -> &Pool<Self::Db> {
        &self.connections().reads
    }
    /// The pool that serves writes other than ingest and batch results:
    /// leases, repeaters, admin actions, the purge.
    fn writes(&self) -> &Pool<Self::Db> {
        &self.connections().writes
    }
    /// The signal the scheduler waits on.
    fn wake(&self) -> &Arc<Notify> {
        &self.connections().wake
    }
}

/// The sqlx pools of a backend and the signal that wakes its scheduler.
pub(crate) struct Connections<DB: Database> {
    /// Reads outside the lanes.
    pub reads: Pool<DB>,
    /// Writes outside ingest and batch results (the same pool as `reads`
    /// where the database has no single writer).
    pub writes: Pool<DB>,
    /// Notified when work may be ready.
    pub wake: Arc<Notify>,
    /// What the notifications since the scheduler last looked were about.
    pub hints: Arc<ReadyHints>,
}

impl<DB: Database> Connections<DB> {
    /// `reads` and `writes`, with a new wake-up signal and its hints.
    pub fn new(reads: Pool<DB>, writes: Pool<DB>) -> Connections<DB> {
        Connections {
            reads,
            writes,
            wake: Arc::new(Notify::new()),
            hints: Arc::new(ReadyHints::default()),
        }
    }
}

/// Most domains a wake-up names before it counts as about anything: a
/// look at that many domains' repeaters costs about as much as the whole
/// ready set.
const MOST_HINTED_DOMAINS: usize = 256;

/// What the wake-ups since the scheduler last took them were about: new
/// records in some domains (ingest in this process), or anything (a
/// resend, a resume, a released lease, another process's change). The
/// scheduler reads the ready set of the named domains at once, and the
/// whole ready set for anything else. Every wake-up leaves its hint before
/// it notifies, so hints taken empty mean an earlier take had them.
#[derive(Debug, Default)]
pub struct ReadyHints(Mutex<Hinted>);

/// Hints taken by the scheduler.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Hinted {
    /// Domains that got new records.
    pub domains: HashSet<String>,
    /// Something else may have become ready anywhere.
    pub anything: bool,
}

impl ReadyHints {
    /// Records were added to `domain`.
    pub fn domain(&self, domain: &str) {
        let mut hinted = self.lock();
        if hinted.domains.contains(domain) {
            return;
        }
        if hinted.domains.len() >= MOST_HINTED_DOMAINS {
            hinted.anything = true;
            return;
        }
        hinted.domains.insert(domain.to_owned());
    }

    /// Something may have become ready anywhere.
    pub fn anything(&self) {
        self.lock().anything = true;
    }

    /// The hints so far, leaving none.
    pub fn take(&self) -> Hinted {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hinted> {
        // Each change leaves the hints whole: a poisoned lock is still good.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An ingest whose events have all been checked and given their ids.
pub(crate) struct Ingest<'a> {
    /// The domain posted to.
    pub domain: &'a str,
    /// The events, in the order posted.
    pub events: &'a [NewEvent],
    /// Their ids and which of them come first.
    pub plan: IngestPlan,
    /// When they were posted.
    pub now: Millis,
}

/// A lane's repeater row and its claimed records.
pub(crate) type LaneClaim = (RepeaterRow, Vec<ClaimedRecord>);

/// One batch's results, to be written under its lease.
pub(crate) struct BatchResults<'a> {
    /// The lease the batch ran under; fences every write.
    pub lease: &'a Lease,
    /// Each record's outcome.
    pub outcomes: &'a [RecordOutcome],
    /// The repeater's health, or `None` to leave it as it is.
    pub health: Option<&'a RepeaterHealth>,
    /// Whether the lease ends with this write.
    pub release: bool,
    /// When the batch ended.
    pub now: Millis,
}

/// How many rows a statement changed, as both drivers report it.
pub(crate) trait RowsAffected {
    /// Rows inserted, updated or deleted.
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

#[async_trait]
impl<S> Store for S
where
    S: Backend + super::LaneStore + super::AdminStore + super::RetentionStore,
{
    async fn migrate(&self) -> StoreResult<()> {
        <S::Db as SqlDatabase>::MIGRATIONS
            .run(self.writes())
            .await?;
        Ok(())
    }
}
