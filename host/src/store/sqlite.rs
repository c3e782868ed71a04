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
//! own connections in place (the `reads` module), the API's reads go through a
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
//! store (the `group` module, ADR 7).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use tokio::sync::{Notify, mpsc, oneshot};

use super::backend::{Backend, BatchResults, Connections, Ingest, LaneClaim};
use super::input::RecordUpdate;
use super::{Ingested, LOW_DISK_BYTES, Lease, ReadyRepeater, StoreError, StoreResult};
use crate::model::Millis;

mod group;
mod reads;

use group::{FinishJob, IngestJob, SubscriberCache, WriteJob, WriteQueues, group_commit};
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
/// Ingests, and batch results, waiting for the writer task before a caller
/// waits for room (each has a queue of this length).
const WRITE_QUEUE: usize = 1_024;

/// The SQLite implementation of [`Store`](super::Store).
pub struct SqliteStore {
    /// The one-connection writer pool, the API's read pool, and the wake-up.
    connections: Connections<Sqlite>,
    /// The scheduler's reads: the ready set, wake-up times and claims.
    lane_reads: LaneReads,
    ingests: mpsc::Sender<IngestJob>,
    finishes: mpsc::Sender<FinishJob>,
    /// Bumped by every write that changes the repeaters table, so the
    /// writer task knows its copy of the subscribers is out of date.
    repeaters_changed: Arc<AtomicU64>,
    /// The folder of the database file, whose filesystem's room is reported.
    folder: std::path::PathBuf,
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
    /// scheduler's reads. Does not migrate; call
    /// [`Store::migrate`](super::Store::migrate) or use
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
        let pace = Arc::new(CheckpointPace::default());
        let folder = folder_of(path);
        tokio::spawn(checkpoints(
            checkpointer,
            folder.clone(),
            pace.clone(),
            stopped,
        ));
        let reader = SqlitePoolOptions::new()
            .max_connections(readers)
            .test_before_acquire(false)
            .connect_with(options.create_if_missing(false).read_only(true))
            .await?;
        free_leases_of_the_last_owner(&writer).await?;
        let connections = Connections::new(reader, writer);
        let (ingests, ingest_queue) = mpsc::channel(WRITE_QUEUE);
        let (finishes, finish_queue) = mpsc::channel(WRITE_QUEUE);
        let queues = WriteQueues::new(ingest_queue, finish_queue);
        // The task ends when the store, the only sender, is dropped.
        let repeaters_changed = Arc::new(AtomicU64::new(0));
        let subscribers = SubscriberCache::new(repeaters_changed.clone());
        let group_writer = group::open_writer(path)?;
        let lane_reads = LaneReads::open(path, readers as usize)?;
        tokio::spawn(group_commit(
            group_writer,
            connections.wake.clone(),
            connections.hints.clone(),
            queues,
            subscribers,
            pace,
        ));
        Ok(SqliteStore {
            connections,
            lane_reads,
            ingests,
            finishes,
            repeaters_changed,
            folder,
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
        let gone = || StoreError::Stopped("group-commit writer");
        let sent = match job {
            WriteJob::Ingest(job) => self.ingests.send(job).await.is_ok(),
            WriteJob::Finish(job) => self.finishes.send(job).await.is_ok(),
        };
        if !sent {
            return Err(gone());
        }
        answer.await.map_err(|_| gone())?
    }
}

#[async_trait]
impl Backend for SqliteStore {
    type Db = Sqlite;

    async fn write_events(&self, ingest: Ingest<'_>) -> StoreResult<Vec<Ingested>> {
        let (reply, answer) = oneshot::channel();
        let job = IngestJob {
            domain: ingest.domain.to_owned(),
            events: ingest.events.to_vec(),
            plan: ingest.plan,
            now: ingest.now,
            reply,
        };
        self.send(WriteJob::Ingest(job), answer).await
    }

    async fn ready_set(&self, now: Millis, holder: &str) -> StoreResult<Vec<ReadyRepeater>> {
        self.lane_reads.ready_repeaters(now, holder)
    }

    async fn ready_within(
        &self,
        now: Millis,
        holder: &str,
        domains: &[String],
    ) -> StoreResult<Vec<ReadyRepeater>> {
        self.lane_reads.ready_in_domains(now, holder, domains)
    }

    async fn earliest_due(&self, now: Millis, holder: &str) -> StoreResult<Option<Millis>> {
        self.lane_reads.next_wakeup(now, holder)
    }

    async fn read_lane(&self, lease: &Lease, limit: u32, now: Millis) -> StoreResult<LaneClaim> {
        self.lane_reads.claim_lane(lease, limit, now)
    }

    async fn write_results(&self, results: BatchResults<'_>) -> StoreResult<()> {
        let (reply, answer) = oneshot::channel();
        let now = results.now;
        let job = FinishJob {
            lease: results.lease.clone(),
            updates: (results.outcomes.iter())
                .map(|outcome| RecordUpdate::from_outcome(outcome, now))
                .collect(),
            attempts: (results.outcomes.iter())
                .filter_map(|o| o.attempt.clone().map(|a| (o.record_id, a)))
                .collect(),
            health: results.health.cloned(),
            release: results.release,
            now,
            reply,
        };
        self.send(WriteJob::Finish(job), answer).await
    }

    fn connections(&self) -> &Connections<Sqlite> {
        &self.connections
    }

    fn free_disk_bytes(&self) -> Option<u64> {
        free_bytes(&self.folder)
    }

    /// The writer task's copy of the subscribers is out of date. Called
    /// inside the write transaction that changes the repeaters table: that
    /// transaction holds the write lock, so the next group commit starts
    /// after it committed and reads the new rows.
    fn repeaters_changing(&self) {
        self.repeaters_changed.fetch_add(1, AtomicOrdering::SeqCst);
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
    let cannot = |source: std::io::Error| StoreError::LockFile {
        lock: lock.display().to_string(),
        source,
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

/// When the write-ahead log is copied into the database file: every
/// [`CHECKPOINT_EVERY`], and after every group commit while the database's
/// filesystem has less than [`LOW_DISK_BYTES`] free.
#[derive(Default)]
pub(super) struct CheckpointPace {
    /// The last look at the filesystem found less than [`LOW_DISK_BYTES`] free.
    low_room: AtomicBool,
    /// Asks the checkpoint task for a copy now.
    now: Notify,
}

impl CheckpointPace {
    /// Called after each group commit that wrote: asks for a checkpoint when
    /// room is short.
    pub(super) fn committed(&self) {
        if self.low_room.load(AtomicOrdering::Relaxed) {
            self.now.notify_one();
        }
    }
}

/// The folder holding the database file at `path`, whose filesystem it
/// lives on.
fn folder_of(path: &Path) -> std::path::PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => std::path::PathBuf::from("."),
    }
}

/// Room left for this process on the filesystem holding `folder`; `None`
/// when it cannot tell.
fn free_bytes(folder: &Path) -> Option<u64> {
    match rustix::fs::statvfs(folder) {
        Ok(fs) => Some(fs.f_bavail.saturating_mul(fs.f_frsize)),
        Err(error) => {
            tracing::debug!(%error, folder = %folder.display(), "cannot read the free room of the database's filesystem");
            None
        }
    }
}

/// Whether the filesystem holding `folder` has less than `bytes` free for
/// this process; `false` when it cannot tell.
fn room_below(folder: &Path, bytes: u64) -> bool {
    free_bytes(folder).is_some_and(|free| free < bytes)
}

/// Copies the write-ahead log into the database file as `pace` says until
/// `stop` ends (its sender, held by the store, is dropped); it looks at the
/// room left in `folder` every [`CHECKPOINT_EVERY`]. Passive: a checkpoint
/// copies what it can without waiting for the writer or a reader, and the
/// writer goes on appending meanwhile.
async fn checkpoints(
    pool: SqlitePool,
    folder: std::path::PathBuf,
    pace: Arc<CheckpointPace>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A failing checkpoint (a full disk) is logged when it starts failing
    // and when it works again, not at every try.
    let mut failing = false;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = every.tick() => {
                let low = room_below(&folder, LOW_DISK_BYTES);
                if pace.low_room.swap(low, AtomicOrdering::Relaxed) != low {
                    tracing::info!(
                        low_room = low,
                        folder = %folder.display(),
                        "the database's filesystem {} {} MiB free; the log is copied {}",
                        if low { "has less than" } else { "has again at least" },
                        LOW_DISK_BYTES >> 20,
                        if low { "after every commit" } else { "on the timer alone" },
                    );
                }
            }
            _ = pace.now.notified() => {}
        }
        match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("WAL checkpoints work again");
            }
            Ok(_) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "WAL checkpoint failed; trying again after the next commit or tick");
            }
            Err(_) => {}
        }
    }
    pool.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RecordState;
    use crate::store::admin::records_page_sql;
    use crate::store::sql::{Dialect, Statements};
    use crate::store::{RecordQuery, Store};

    #[test]
    fn the_room_of_the_databases_filesystem_is_read_where_the_file_lives() {
        let dir = tempfile::tempdir().unwrap();
        let folder = folder_of(&dir.path().join("repeaterd.sqlite"));
        assert_eq!(folder, dir.path());
        assert_eq!(folder_of(Path::new("repeaterd.sqlite")), Path::new("."));
        assert!(
            room_below(&folder, u64::MAX),
            "no filesystem has 16 EiB free"
        );
        assert!(!room_below(&folder, 0));
        // A folder that is not there cannot tell, and counts as roomy.
        assert!(!room_below(&dir.path().join("gone"), u64::MAX));
    }

    #[tokio::test]
    async fn the_configured_number_of_readers_sizes_both_read_paths() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_with(&dir.path().join("readers.db"), 2)
            .await
            .unwrap();
        assert_eq!(store.connections.reads.options().get_max_connections(), 2);
        assert_eq!(store.lane_reads.keep(), 2);
        drop(store);
        let store = SqliteStore::open(&dir.path().join("default.db"))
            .await
            .unwrap();
        assert_eq!(
            store.connections.reads.options().get_max_connections(),
            READ_CONNECTIONS
        );
        assert_eq!(store.lane_reads.keep(), READ_CONNECTIONS as usize);
    }

    /// A migrated store in a temporary folder, to read query plans from.
    async fn plan_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("plans.db"))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        (dir, store)
    }

    /// The steps of `plan`, an `EXPLAIN QUERY PLAN` with its values bound.
    async fn steps_of<'q>(
        plan: sqlx::query::QueryAs<
            'q,
            Sqlite,
            (i64, i64, i64, String),
            sqlx::sqlite::SqliteArguments<'q>,
        >,
        store: &SqliteStore,
    ) -> Vec<String> {
        (plan.fetch_all(&store.connections.reads).await.unwrap())
            .into_iter()
            .map(|(_, _, _, detail)| detail)
            .collect()
    }

    /// Every shape of the records listing reads `records` only through
    /// ranges of the per-state indexes, one per listed state, and never scans
    /// the table: a page must cost the same in a domain of ten records and
    /// in one of ten million.
    #[tokio::test]
    async fn record_listings_read_only_index_ranges() {
        let (_dir, store) = plan_store().await;
        for repeater in [None, Some("a".to_owned())] {
            for state in [None, Some(RecordState::Rejected)] {
                let query = RecordQuery {
                    repeater: repeater.clone(),
                    state,
                    after: Some(7),
                    limit: 10,
                };
                let sql = format!(
                    "EXPLAIN QUERY PLAN {}",
                    records_page_sql(Dialect::Sqlite, &query)
                );
                let mut plan = sqlx::query_as::<_, (i64, i64, i64, String)>(&sql)
                    .bind("acme")
                    .bind(10_i64)
                    .bind(7_i64);
                if let Some(name) = &repeater {
                    plan = plan.bind(name.as_str());
                }
                let steps = steps_of(plan, &store).await;
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

    /// The scheduler's reads of every repeater read the narrow index of
    /// migration 0007, never the table with its specs (ADR 28).
    #[tokio::test]
    async fn the_lanes_reads_of_every_repeater_never_open_the_table() {
        let (_dir, store) = plan_store().await;
        let lanes = &Statements::of(Dialect::Sqlite).lanes;
        // Each read with the number of values it takes.
        let reads = [
            ("ready", lanes.ready.clone(), 2),
            ("wakeup", lanes.wakeup.clone(), 1),
            ("held_elsewhere", lanes.held_elsewhere.clone(), 2),
            (
                "ready_in",
                crate::store::lanes::ready_in(Dialect::Sqlite, 3),
                5,
            ),
        ];
        for (name, sql, values) in reads {
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let plan = (0..values).fold(
                sqlx::query_as::<_, (i64, i64, i64, String)>(&explain),
                |plan, _| plan.bind(0_i64),
            );
            let steps = steps_of(plan, &store).await;
            let repeaters: Vec<&String> = (steps.iter())
                .filter(|step| {
                    step.contains(" p ") || step.ends_with(" p") || step.contains(" repeaters ")
                })
                .collect();
            assert!(
                !repeaters.is_empty(),
                "{name}: no step reads the repeaters: {steps:#?}"
            );
            for step in repeaters {
                assert!(
                    step.contains("USING COVERING INDEX repeaters_lanes"),
                    "{name} reads the repeaters' table: {step} in {steps:#?}"
                );
            }
        }
    }
}
