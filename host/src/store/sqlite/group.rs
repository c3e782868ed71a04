//! The group-commit writer of the SQLite store: one task takes every ingest
//! and every batch result waiting for the write lock into one transaction,
//! and writes the whole group with a few multi-row statements.
//!
//! The group runs in one trip on the task's own connection: the task steps
//! the group's statements itself, from `BEGIN IMMEDIATE` to `COMMIT`, and
//! keeps them prepared from one group to the next. Through the async driver
//! each statement was a hand-off to the connection's thread and back, and
//! on a busy machine each hand-off waited to be scheduled: a group of eight
//! statements spent most of its time waiting, with the write lock held.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior, params_from_iter};
use tokio::sync::{Notify, mpsc, oneshot};

use super::{BUSY_TIMEOUT, CheckpointPace, WRITER_CHECKPOINT_PAGES, open_own};
use crate::model::{Millis, NewEvent, RecordState};
use crate::store::backend::ReadyHints;
use crate::store::ingest::{EVENT_COLUMNS, RECORD_COLUMNS, insert_events, insert_records};
use crate::store::input::{self, IngestPlan, RecordUpdate, Subscriber, lease_lost};
use crate::store::lanes::{
    ATTEMPT_COLUMNS, FENCE_COLUMNS, RECORD_UPDATE_COLUMNS, attempt_inserts, fence, record_updates,
};
use crate::store::sql::{Dialect, runs};
use crate::store::{
    AttemptDraft, Ingested, IngestedRecord, Lease, RepeaterHealth, StoreError, StoreResult,
};

/// Most events one group commit of ingests takes: enough to absorb a burst
/// of small posts, small enough that a group holds the write lock for
/// milliseconds, not seconds.
const GROUP_EVENTS: usize = 2_000;
/// Least time between the starts of two group commits while jobs keep
/// coming: a busy writer waits out the rest of it before committing a
/// small group, so the next jobs join that group. Each commit writes every
/// page it changed to the log, and under a steady load of small ingests
/// and batch results the same pages (index leaves, the repeaters' rows)
/// were written again in every commit.
const GROUP_SPACING: Duration = Duration::from_millis(1);
/// Most record outcomes one group commit of batch results takes.
const GROUP_OUTCOMES: usize = 2_000;
/// Most domains whose repeaters the writer task keeps; posts to ever new
/// domain names cannot grow its copy without bound.
const MAX_CACHED_DOMAINS: usize = 10_000;
/// Distinct statements a group keeps prepared: each kind of statement at
/// each row count [`runs`] gives.
const STATEMENT_CACHE: usize = 80;

/// One ingest call waiting for the group-commit writer.
pub(super) struct IngestJob {
    pub domain: String,
    pub events: Vec<NewEvent>,
    pub plan: IngestPlan,
    pub now: Millis,
    pub reply: oneshot::Sender<StoreResult<Vec<Ingested>>>,
}

/// One batch's results waiting for the group-commit writer.
pub(super) struct FinishJob {
    pub lease: Lease,
    pub updates: Vec<RecordUpdate>,
    pub attempts: Vec<(i64, AttemptDraft)>,
    pub health: Option<RepeaterHealth>,
    pub release: bool,
    pub now: Millis,
    pub reply: oneshot::Sender<StoreResult<()>>,
}

/// A write waiting for the writer task.
pub(super) enum WriteJob {
    Ingest(IngestJob),
    Finish(FinishJob),
}

/// The writer task's two queues. Batch results have their own, read first:
/// a lane's records hold their in-flight slots until its results are
/// written, so results stuck behind a burst of ingests stalled every
/// tenant's deliveries until the burst was written.
pub(super) struct WriteQueues {
    pub ingests: mpsc::Receiver<IngestJob>,
    pub finishes: mpsc::Receiver<FinishJob>,
    /// Ingests taken off their queue, waiting for their domain's turn.
    line: IngestLine,
}

impl WriteQueues {
    pub fn new(ingests: mpsc::Receiver<IngestJob>, finishes: mpsc::Receiver<FinishJob>) -> Self {
        WriteQueues {
            ingests,
            finishes,
            line: IngestLine::default(),
        }
    }

    /// The next job, results first; `None` once both senders are gone.
    /// While ingests are over their share, only results are taken, until
    /// results stop coming for [`RESULTS_IDLE`].
    async fn next(&mut self, share: &mut WriterShare) -> Option<WriteJob> {
        if !share.ingest_may_run() {
            // Waiting here leaves the writer idle: the time waited is
            // credit for ingests, which hurt no result meanwhile. Without
            // that, ingests costing more writer time than results earn
            // fell ever further behind a steady load on an idle writer.
            let owed = Duration::from_secs_f64(-share.credit.min(0.0)).min(RESULTS_IDLE);
            let from = std::time::Instant::now();
            let finish = tokio::select! {
                biased;
                Some(job) = self.finishes.recv() => Some(job),
                _ = tokio::time::sleep(owed) => None,
            };
            share.idle(from.elapsed());
            if let Some(job) = finish {
                return Some(WriteJob::Finish(job));
            }
        }
        if let Ok(job) = self.finishes.try_recv() {
            return Some(WriteJob::Finish(job));
        }
        if let Some(job) = self.next_ingest() {
            return Some(WriteJob::Ingest(job));
        }
        tokio::select! {
            biased;
            Some(job) = self.finishes.recv() => Some(WriteJob::Finish(job)),
            Some(job) = self.ingests.recv() => {
                self.line.jobs.push(job);
                self.next_ingest().map(WriteJob::Ingest)
            }
            else => None,
        }
    }

    /// The waiting ingest whose domain's turn it is, if any waits.
    fn next_ingest(&mut self) -> Option<IngestJob> {
        self.fill_line();
        self.line.pop()
    }

    /// Events of the waiting ingest whose domain's turn it is.
    fn next_ingest_events(&mut self) -> Option<usize> {
        self.fill_line();
        self.line.next_events()
    }

    fn fill_line(&mut self) {
        while let Ok(job) = self.ingests.try_recv() {
            self.line.jobs.push(job);
        }
    }
}

/// Waiting ingests, handed out by domain in turn, weighted by events
/// (fair queueing by virtual finish time): a job starts where its domain's
/// last job finished, or at the clock (the start of the job handed out
/// last) if that is later, and finishes its events later; the job that
/// would finish first goes next, the oldest on a tie. A domain posting one
/// event now and then is written at the next group even while another
/// domain's bulk import fills the line.
#[derive(Default)]
struct IngestLine {
    /// In arrival order.
    jobs: Vec<IngestJob>,
    /// Per domain, the virtual time its next job starts at; a domain
    /// missing here (or behind `clock`) starts at `clock`.
    finish: HashMap<String, u64>,
    /// The start time of the job handed out last.
    clock: u64,
}

impl IngestLine {
    fn start_of(&self, domain: &str) -> u64 {
        self.finish
            .get(domain)
            .map_or(self.clock, |&at| at.max(self.clock))
    }

    /// Where the next job is in `jobs`.
    fn next_index(&self) -> Option<usize> {
        let finish = |job: &IngestJob| self.start_of(&job.domain) + job.events.len().max(1) as u64;
        (0..self.jobs.len()).min_by_key(|&i| (finish(&self.jobs[i]), i))
    }

    /// The events of the job that goes next.
    fn next_events(&self) -> Option<usize> {
        self.next_index().map(|index| self.jobs[index].events.len())
    }

    fn pop(&mut self) -> Option<IngestJob> {
        let job = self.jobs.remove(self.next_index()?);
        let start = self.start_of(&job.domain);
        self.clock = start;
        self.finish
            .insert(job.domain.clone(), start + job.events.len().max(1) as u64);
        if self.finish.len() > MAX_CACHED_DOMAINS {
            // Domains at or behind the clock start at the clock anyway.
            let clock = self.clock;
            self.finish.retain(|_, at| *at > clock);
        }
        Some(job)
    }
}

/// Writer time that ingests may spend for each second spent on batch
/// results, while both wait for it. Ingest is the cheaper side to slow:
/// its producer is told to wait (and, past `server.max_pending_events`,
/// pushed back), while every delivering lane waits on its results with
/// its in-flight slots held.
const INGEST_SHARE: f64 = 1.0;
/// Most ingest time saved up while ingests did not need it.
const INGEST_CREDIT_CAP: Duration = Duration::from_millis(50);
/// Ingests of at most this many events join groups of results whatever
/// their share.
const SMALL_INGEST: usize = 100;
/// Results not written for this long leave ingest the writer to itself.
const RESULTS_IDLE: Duration = Duration::from_millis(100);

/// Shares the writer between ingests and batch results while both wait
/// for it: each group's time is split between the two by the rows each
/// wrote, results earn ingests [`INGEST_SHARE`] times their own time, time
/// the writer spends idle earns them as much, and an ingest joins a group
/// only while that credit lasts.
struct WriterShare {
    /// Seconds of writer time ingests may still spend.
    credit: f64,
    /// When results were last written.
    results_at: Option<std::time::Instant>,
}

impl WriterShare {
    fn new() -> WriterShare {
        WriterShare {
            credit: INGEST_CREDIT_CAP.as_secs_f64(),
            results_at: None,
        }
    }

    fn results_idle_at(&self) -> std::time::Instant {
        let now = std::time::Instant::now();
        self.results_at.map_or(now, |at| at + RESULTS_IDLE)
    }

    /// The writer waited `idle` with nothing it was allowed to write.
    fn idle(&mut self, idle: Duration) {
        let cap = INGEST_CREDIT_CAP.as_secs_f64();
        self.credit = (self.credit + idle.as_secs_f64()).min(cap);
    }

    /// Results are being written: ingests share the writer with them.
    fn contended(&self) -> bool {
        self.results_idle_at() > std::time::Instant::now()
    }

    /// Ingests may run: they have credit, or no results are being written.
    fn ingest_may_run(&self) -> bool {
        self.credit > 0.0 || !self.contended()
    }

    /// Accounts a group that took `elapsed` writing `ingest_rows` rows of
    /// ingests and `result_rows` rows of results.
    /// `results_waiting` says whether results queued meanwhile.
    fn record(
        &mut self,
        elapsed: Duration,
        ingest_rows: usize,
        result_rows: usize,
        results_waiting: bool,
    ) {
        let rows = (ingest_rows + result_rows).max(1) as f64;
        let seconds = elapsed.as_secs_f64();
        let ingest = seconds * ingest_rows as f64 / rows;
        let results = seconds - ingest;
        if result_rows > 0 || results_waiting {
            self.results_at = Some(std::time::Instant::now());
        }
        let cap = INGEST_CREDIT_CAP.as_secs_f64();
        self.credit = (self.credit + INGEST_SHARE * results - ingest).min(cap);
        if self.results_idle_at() <= std::time::Instant::now() {
            // Nothing to share with: start the next contest with full credit.
            self.credit = cap;
        }
    }
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
    fn results_full(&self) -> bool {
        self.outcomes >= GROUP_OUTCOMES
    }

    /// Whether another ingest may join: alone, ingests fill a group up to
    /// [`GROUP_EVENTS`] events; while results are being written too, up to
    /// as many events as the group has outcomes (at least [`SMALL_INGEST`]),
    /// so no group holds results back for long and the share is kept in
    /// small steps. The first ingest always may, however large.
    fn takes_ingest(&self, share: &WriterShare) -> bool {
        if self.ingests.is_empty() {
            return true;
        }
        let budget = if share.contended() {
            self.outcomes.max(SMALL_INGEST)
        } else {
            GROUP_EVENTS
        };
        self.events < budget.min(GROUP_EVENTS)
    }

    fn is_full(&self) -> bool {
        self.events >= GROUP_EVENTS || self.results_full()
    }

    /// Takes the jobs already queued, results first, while the group has
    /// room (ingests only while `share` lets them run); hands back a
    /// result that must wait for the next group.
    fn take_queued(&mut self, queues: &mut WriteQueues, share: &WriterShare) -> Option<WriteJob> {
        let mut carried = None;
        while !self.results_full() {
            let Ok(job) = queues.finishes.try_recv() else {
                break;
            };
            carried = self.take(WriteJob::Finish(job));
            if carried.is_some() {
                break;
            }
        }
        while self.takes_ingest(share) {
            let Some(events) = queues.next_ingest_events() else {
                break;
            };
            // Beside results, an ingest over its share waits, unless it is
            // a few events: those cost the results next to nothing.
            let small = events <= SMALL_INGEST && self.events + events <= SMALL_INGEST;
            if !self.finishes.is_empty() && !share.ingest_may_run() && !small {
                break;
            }
            let Some(job) = queues.next_ingest() else {
                break;
            };
            self.take(WriteJob::Ingest(job));
        }
        carried
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
pub(super) async fn group_commit(
    mut writer: Connection,
    wake: Arc<Notify>,
    hints: Arc<ReadyHints>,
    mut queues: WriteQueues,
    mut subscribers: SubscriberCache,
    checkpoints: Arc<CheckpointPace>,
) {
    let mut carried = None;
    let mut last_commit: Option<std::time::Instant> = None;
    let mut share = WriterShare::new();
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match queues.next(&mut share).await {
                Some(job) => job,
                None => return,
            },
        };
        let mut group = Group::default();
        group.take(first);
        carried = group.take_queued(&mut queues, &share);
        // A writer that committed less than GROUP_SPACING ago is busy: wait
        // out the rest of that spacing, so jobs arriving meanwhile share this
        // commit instead of each paying one.
        if let Some(last) = last_commit
            && carried.is_none()
            && !group.is_full()
            && last.elapsed() < GROUP_SPACING
        {
            tokio::time::sleep_until((last + GROUP_SPACING).into()).await;
            carried = group.take_queued(&mut queues, &share);
        }
        let Group {
            ingests, finishes, ..
        } = group;
        let started = std::time::Instant::now();
        last_commit = Some(started);
        let (ingested, written) = match commit_group(
            &mut writer,
            &mut subscribers,
            &ingests,
            &finishes,
        )
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
                    let alone = commit_group(
                        &mut writer,
                        &mut subscribers,
                        std::slice::from_ref(job),
                        &[],
                    )
                    .await;
                    ingested.push(alone.map(|(mut answers, _)| answers.remove(0)));
                }
                let mut written = Vec::with_capacity(finishes.len());
                for job in &finishes {
                    let alone = commit_group(
                        &mut writer,
                        &mut subscribers,
                        &[],
                        std::slice::from_ref(job),
                    )
                    .await;
                    written.push(alone.map(|(_, held)| held[0]));
                }
                (ingested, written)
            }
        };
        let ingest_rows: usize = (ingested.iter().flatten().flatten())
            .map(|answer| 1 + answer.records.len())
            .sum();
        let result_rows: usize = (finishes.iter())
            .map(|job| job.updates.len() + job.attempts.len())
            .sum();
        if ingest_rows + result_rows > 0 {
            checkpoints.committed();
        }
        let results_waiting = !queues.finishes.is_empty();
        share.record(started.elapsed(), ingest_rows, result_rows, results_waiting);
        let mut created = false;
        for (job, result) in ingests.iter().zip(&ingested) {
            let made = result
                .as_ref()
                .is_ok_and(|answers| answers.iter().any(|a| a.created && !a.records.is_empty()));
            if made {
                hints.domain(&job.domain);
                created = true;
            }
        }
        let released = (finishes.iter().zip(&written))
            .any(|(job, result)| job.release && matches!(result, Ok(true)));
        if released {
            hints.anything();
        }
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

/// Opens the writer task's own connection to the database file at `path`.
///
/// The task keeps it for the store's life, and with it every statement it
/// has prepared: a group's statements are parsed and planned once per
/// daemon, not once per group. (Borrowing the pool's writer connection for
/// each group meant a fresh statement cache each time, and preparing the
/// statements cost about as much as running them.) The other writes (leases,
/// repeaters, admin actions) keep the pool's writer; SQLite's write lock
/// orders the two, and [`commit_group`] waits for that lock without
/// blocking its thread.
pub(super) fn open_writer(path: &Path) -> StoreResult<Connection> {
    // A busy lock answers at once; `commit_group` waits for it with a timer.
    let db = open_own(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE,
        Duration::ZERO,
        STATEMENT_CACHE,
    )?;
    db.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
    // No statement journals: a multi-row statement that can fail part-way
    // (a foreign key, a NOT NULL) inside a transaction makes SQLite copy
    // every page it changes into a journal first, so that the statement
    // alone can be undone. A group never needs that: when any statement
    // fails, the whole transaction is rolled back and each job is tried
    // alone. The group's statements are `OR FAIL` for the same reason, and
    // foreign keys are not checked on this connection: its statements keep
    // them whole by construction (records take the ids of events inserted
    // or found in the same transaction; attempts join the lane's records).
    // The journal copies cost about 3 % of the daemon's CPU at 7,000
    // deliveries/s.
    db.pragma_update(None, "foreign_keys", false)?;
    Ok(db)
}

/// Runs `ingests` and `finishes` in one write transaction: the ingests'
/// answers in order and whether each finish's lease held, or the first
/// error with nothing written.
///
/// While another connection holds the write lock, waits for it with a
/// timer (1 ms, doubling to 16 ms, [`BUSY_TIMEOUT`] in all) so this thread
/// goes on running other tasks. Once the lock is taken the group runs
/// without an await: it holds the lock for as long as the statements take,
/// not for as long as this task waits to be scheduled after each one.
async fn commit_group(
    db: &mut Connection,
    subscribers: &mut SubscriberCache,
    ingests: &[IngestJob],
    finishes: &[FinishJob],
) -> StoreResult<GroupAnswers> {
    let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    loop {
        match db.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => return write_group(tx, subscribers, ingests, finishes),
            Err(error) if is_busy(&error) && tokio::time::Instant::now() < deadline => {}
            Err(error) => return Err(error.into()),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(16));
    }
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(failure, _)
        if failure.code == rusqlite::ErrorCode::DatabaseBusy)
}

/// The body of [`commit_group`], in its transaction `tx` (rolled back if
/// dropped uncommitted).
fn write_group(
    tx: Transaction<'_>,
    subscribers: &mut SubscriberCache,
    ingests: &[IngestJob],
    finishes: &[FinishJob],
) -> StoreResult<GroupAnswers> {
    let answers = if ingests.is_empty() {
        Vec::new()
    } else {
        ingest_group(&tx, subscribers, ingests)?
    };
    let held = if finishes.is_empty() {
        Vec::new()
    } else {
        finish_group(&tx, finishes)?
    };
    tx.commit()?;
    Ok((answers, held))
}

/// One bound value of a multi-row statement: text and blobs are borrowed
/// from the job, not copied.
type Bind<'a> = ToSqlOutput<'a>;

fn int(value: impl Into<i64>) -> Bind<'static> {
    ToSqlOutput::Owned(Value::Integer(value.into()))
}

fn opt_int(value: Option<impl Into<i64>>) -> Bind<'static> {
    value.map_or(ToSqlOutput::Owned(Value::Null), int)
}

fn text(value: &str) -> Bind<'_> {
    ToSqlOutput::Borrowed(ValueRef::Text(value.as_bytes()))
}

fn opt_text(value: Option<&str>) -> Bind<'_> {
    value.map_or(ToSqlOutput::Owned(Value::Null), text)
}

fn blob(value: &[u8]) -> Bind<'_> {
    ToSqlOutput::Borrowed(ValueRef::Blob(value))
}

fn opt_blob(value: Option<&[u8]>) -> Bind<'_> {
    value.map_or(ToSqlOutput::Owned(Value::Null), blob)
}

/// Runs `sql` with `binds` and returns the first column of each row.
fn query_ids(db: &Connection, sql: &str, binds: &[Bind<'_>]) -> StoreResult<Vec<i64>> {
    let mut statement = db.prepare_cached(sql)?;
    let ids = statement
        .query_map(params_from_iter(binds), |row| row.get::<_, i64>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ids)
}

/// The results of several batches, inside the group's write transaction:
/// whether each batch's lease still held. One statement fences every batch
/// by its lease and writes its health and release; the records and
/// attempts of the batches that held are then written with one multi-row
/// statement each, whatever the number of batches.
fn finish_group(db: &Connection, jobs: &[FinishJob]) -> StoreResult<Vec<bool>> {
    let mut held = HashSet::new();
    for chunk in runs(jobs) {
        let sql = fence(Dialect::Sqlite, chunk.len());
        let mut binds = Vec::with_capacity(chunk.len() * FENCE_COLUMNS);
        for job in chunk {
            let health = job.health.as_ref();
            binds.extend([
                int(job.lease.repeater_id),
                int(job.lease.epoch),
                text(&job.lease.token),
                int(health.is_some()),
                opt_int(health.and_then(|h| h.backoff_until)),
                opt_int(health.map(|h| i32::try_from(h.backoff_step).unwrap_or(i32::MAX))),
                opt_text(health.and_then(|h| h.last_error.as_deref())),
                opt_int(health.and_then(|h| h.last_success_at)),
                int(job.release),
                int(job.now),
            ]);
        }
        held.extend(query_ids(db, &sql, &binds)?);
    }
    let written: Vec<&FinishJob> = (jobs.iter())
        .filter(|job| held.contains(&job.lease.repeater_id))
        .collect();

    let updates: Vec<(i64, &RecordUpdate, Millis)> = (written.iter())
        .flat_map(|job| (job.updates.iter()).map(|u| (job.lease.repeater_id, u, job.now)))
        .collect();
    for chunk in runs(&updates) {
        let sql = record_updates(Dialect::Sqlite, chunk.len());
        let mut binds = Vec::with_capacity(chunk.len() * RECORD_UPDATE_COLUMNS);
        for (repeater_id, update, now) in chunk {
            binds.extend([
                int(update.record_id),
                int(*repeater_id),
                int(update.state),
                opt_int(update.next_attempt_at),
                int(update.counted),
                opt_text(update.error.as_deref()),
                int(*now),
            ]);
        }
        db.prepare_cached(&sql)?.execute(params_from_iter(&binds))?;
    }

    let attempts: Vec<(i64, &(i64, AttemptDraft))> = (written.iter())
        .flat_map(|job| job.attempts.iter().map(|a| (job.lease.repeater_id, a)))
        .collect();
    for chunk in runs(&attempts) {
        let sql = attempt_inserts(Dialect::Sqlite, chunk.len());
        let mut binds = Vec::with_capacity(chunk.len() * ATTEMPT_COLUMNS);
        for (repeater_id, (record_id, attempt)) in chunk {
            binds.extend([
                int(*record_id),
                int(*repeater_id),
                int(attempt.started_at),
                int(attempt.duration_ms),
                opt_int(attempt.status),
                opt_text(attempt.error.as_deref()),
                int(attempt.outcome.as_i16()),
                opt_blob(attempt.response_excerpt.as_deref()),
                opt_text(attempt.plugin_sha256.as_deref()),
                opt_text(attempt.request.as_deref()),
            ]);
        }
        db.prepare_cached(&sql)?.execute(params_from_iter(&binds))?;
    }
    Ok((jobs.iter())
        .map(|job| held.contains(&job.lease.repeater_id))
        .collect())
}

/// An event of a group, by domain and event id.
type EventRef<'a> = (&'a str, &'a str);

/// The body of a group commit's ingests, inside its write transaction: the
/// same answers as committing `jobs` one after another, in three multi-row
/// statements for the whole group (events seen before, new events, new
/// records; a fourth reads the repeaters of domains the writer task does
/// not know yet) instead of four per job.
fn ingest_group(
    db: &Connection,
    subscribers: &mut SubscriberCache,
    jobs: &[IngestJob],
) -> StoreResult<Vec<Vec<Ingested>>> {
    let subscribers = subscribers.of(db, jobs)?;

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
    let mut records = existing_records(db, &asked)?;
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
    for chunk in runs(&fresh) {
        let sql = insert_events(Dialect::Sqlite, chunk.len());
        let mut binds = Vec::with_capacity(chunk.len() * EVENT_COLUMNS);
        for &(j, i) in chunk {
            let (job, event) = (&jobs[j], &jobs[j].events[i]);
            binds.extend([
                text(&job.domain),
                text(&job.plan.keys[i]),
                text(&event.event_type),
                text(&event.content_type),
                blob(&event.payload),
                opt_text(event.ordering_key.as_deref()),
                int(job.now),
            ]);
        }
        let ids = inserted_ids(db, &sql, &binds, chunk.len(), "events")?;
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
    for chunk in runs(&wanted) {
        let sql = insert_records(Dialect::Sqlite, chunk.len());
        let mut binds = Vec::with_capacity(chunk.len() * RECORD_COLUMNS);
        for &(event_id, subscriber, j, i) in chunk {
            let job = &jobs[j];
            binds.extend([
                int(event_id),
                int(subscriber.id),
                text(&subscriber.name),
                text(&job.domain),
                int(RecordState::Pending.as_i16()),
                int(0),
                int(job.now),
                int(job.now),
                int(job.now),
                int(job.now),
                opt_text(job.events[i].ordering_key.as_deref()),
            ]);
        }
        let ids = inserted_ids(db, &sql, &binds, chunk.len(), "records")?;
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

/// Runs a multi-row `INSERT .. RETURNING id` of `rows` rows into `table`
/// and returns the new ids in the order the rows were given (`RETURNING`
/// keeps it).
fn inserted_ids(
    db: &Connection,
    sql: &str,
    binds: &[Bind<'_>],
    rows: usize,
    table: &'static str,
) -> StoreResult<Vec<i64>> {
    let ids = query_ids(db, sql, binds)?;
    if ids.len() != rows {
        return Err(StoreError::Corrupt {
            what: table,
            detail: format!("{rows} {table} inserted, {} ids returned", ids.len()),
        });
    }
    Ok(ids)
}

/// The writer task's copy of the repeaters of the domains it has written
/// to, by domain. A group of small posts would otherwise spend one of its
/// few statements reading the same rows again. Writes to the repeaters
/// table bump `changed` inside their transaction, and the next group reads
/// the rows afresh.
pub(super) struct SubscriberCache {
    changed: Arc<AtomicU64>,
    /// The `changed` count the copy was read at.
    seen: u64,
    by_domain: HashMap<String, Vec<Subscriber>>,
}

impl SubscriberCache {
    pub(super) fn new(changed: Arc<AtomicU64>) -> Self {
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
    fn of(
        &mut self,
        db: &Connection,
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
        for chunk in runs(&missing) {
            let sql = format!(
                "SELECT domain, id, name, spec FROM repeaters WHERE domain IN ({}) \
                 ORDER BY domain, name",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut statement = db.prepare_cached(&sql)?;
            let rows = statement
                .query_map(params_from_iter(chunk), |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
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
fn existing_records<'a>(
    db: &Connection,
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
    for chunk in runs(&unique) {
        // CROSS JOIN keeps the asked ids as the outer loop, so each is one
        // probe of the (domain, event_key) index; a row-value `IN` would
        // scan every event.
        let sql = format!(
            "WITH v (domain, event_key) AS ({}) \
             SELECT e.domain, e.event_key, r.id, r.repeater_name FROM v \
             CROSS JOIN events e ON e.domain = v.domain AND e.event_key = v.event_key \
             LEFT JOIN records r ON r.event_id = e.id",
            Dialect::Sqlite.values(chunk.len(), 2)
        );
        let binds: Vec<Bind> = (chunk.iter())
            .flat_map(|(domain, key)| [text(domain), text(key)])
            .collect();
        let mut statement = db.prepare_cached(&sql)?;
        let mut rows = statement.query(params_from_iter(&binds))?;
        while let Some(row) = rows.next()? {
            let domain = row.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
            let key = row.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
            let Some(&event) = wanted.get(&(domain, key)) else {
                continue;
            };
            let list = found.entry(event).or_default();
            let id: Option<i64> = row.get(2)?;
            let repeater: Option<String> = row.get(3)?;
            if let (Some(id), Some(repeater)) = (id, repeater) {
                list.push(IngestedRecord { id, repeater });
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ingest job of `events` events for `domain`, its answer dropped.
    fn job(domain: &str, events: usize) -> IngestJob {
        let events: Vec<NewEvent> = (0..events)
            .map(|_| NewEvent {
                id: None,
                event_type: "t".into(),
                content_type: "application/json".into(),
                payload: b"{}".to_vec(),
                ordering_key: None,
            })
            .collect();
        let plan = input::plan_ingest(domain, &events).unwrap();
        IngestJob {
            domain: domain.into(),
            events,
            plan,
            now: 0,
            reply: oneshot::channel().0,
        }
    }

    fn order(line: &mut IngestLine) -> Vec<(String, usize)> {
        std::iter::from_fn(|| line.pop())
            .map(|job| (job.domain, job.events.len()))
            .collect()
    }

    #[test]
    fn a_small_post_goes_before_a_bulk_import_that_came_first() {
        let mut line = IngestLine::default();
        for domain in ["bulk-a", "bulk-b", "bulk-a", "bulk-b"] {
            line.jobs.push(job(domain, 1_000));
        }
        line.jobs.push(job("small", 1));
        let order = order(&mut line);
        assert_eq!(order[0], ("small".to_owned(), 1), "{order:?}");
        // The two bulk domains take turns, each in its own arrival order.
        let domains: Vec<&str> = order[1..].iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(domains, ["bulk-a", "bulk-b", "bulk-a", "bulk-b"]);
    }

    #[test]
    fn a_domain_served_lately_waits_for_one_that_was_not() {
        let mut line = IngestLine::default();
        line.jobs.push(job("busy", 500));
        assert_eq!(order(&mut line), [("busy".to_owned(), 500)]);
        // "busy" finished at 500 on the clock; a newcomer starts at the
        // clock (0), so its 400 events finish first.
        line.jobs.push(job("busy", 10));
        line.jobs.push(job("new", 400));
        let domains: Vec<String> = order(&mut line).into_iter().map(|(d, _)| d).collect();
        assert_eq!(domains, ["new", "busy"]);
    }

    #[test]
    fn ingests_spend_the_writer_time_results_earn_them() {
        let mut share = WriterShare::new();
        assert!(share.ingest_may_run(), "no results yet: ingest runs");
        // A group of results only, with more waiting: ingests are contended.
        share.record(Duration::from_millis(10), 0, 100, true);
        assert!(share.contended());
        // An ingest group far larger than the credit: ingests must wait.
        share.record(Duration::from_millis(200), 1_000, 0, true);
        assert!(!share.ingest_may_run(), "credit {}", share.credit);
        // Results earn it back, INGEST_SHARE seconds per second.
        let mut groups = 0;
        while !share.ingest_may_run() {
            share.record(Duration::from_millis(10), 0, 100, true);
            groups += 1;
            assert!(groups < 1_000, "credit never came back");
        }
        let earned = groups as f64 * 0.010 * INGEST_SHARE;
        assert!(earned >= 0.150, "{groups} groups earned {earned} s");
    }

    #[test]
    fn a_writer_left_idle_earns_ingests_their_time_back() {
        let mut share = WriterShare::new();
        share.record(Duration::from_millis(10), 0, 100, true);
        share.record(Duration::from_millis(100), 1_000, 0, true);
        assert!(!share.ingest_may_run(), "credit {}", share.credit);
        share.idle(Duration::from_millis(80));
        assert!(share.ingest_may_run(), "credit {}", share.credit);
    }

    #[tokio::test]
    async fn results_stopping_leave_the_writer_to_ingests() {
        let mut share = WriterShare::new();
        share.record(Duration::from_millis(10), 0, 100, true);
        share.record(Duration::from_millis(500), 1_000, 0, false);
        assert!(!share.ingest_may_run());
        tokio::time::sleep(RESULTS_IDLE + Duration::from_millis(20)).await;
        assert!(!share.contended());
        assert!(share.ingest_may_run(), "no results for {RESULTS_IDLE:?}");
    }

    #[test]
    fn the_writer_connection_runs_with_the_shared_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.db");
        drop(Connection::open(&path).unwrap());
        let db = open_writer(&path).unwrap();
        let read = |name: &str| -> String {
            match db.pragma_query_value(None, name, |row| row.get(0)).unwrap() {
                Value::Integer(n) => n.to_string(),
                Value::Text(text) => text,
                other => format!("{other:?}"),
            }
        };
        assert_eq!(read("journal_mode"), "wal");
        // NORMAL is 1; FULL, SQLite's default, is 2.
        assert_eq!(read("synchronous"), "1");
        // Off on this connection only (see `open_writer`).
        assert_eq!(read("foreign_keys"), "0");
        // MEMORY is 2; the default, 0, keeps statement journals in files.
        assert_eq!(read("temp_store"), "2");
        assert_eq!(read("wal_autocheckpoint"), WRITER_CHECKPOINT_PAGES);
    }
}
