//! The scheduler loop: one per process. It keeps the set of ready repeaters
//! in a [`FairQueue`], hands out batches while the process has free
//! in-flight slots, and sleeps until something can change: an ingest (the
//! store's wake signal), a batch finishing or giving back slots it did not
//! need, the earliest due time, or a rate pacer freeing up. The safety net
//! for leases of crashed peers, peers' retries becoming due and lanes
//! skipped for a lease they could not take is a read of the whole ready set
//! at least once a second (`max_sleep`), however often the loop is woken.
//!
//! A lane's lease is kept between its batches while the lane stays ready
//! (ADR 5): the next batch starts without a lease write, and still waits
//! for its turn in the fair queue. A kept lease is renewed when half its
//! TTL has passed, given up with the batch that ends a TTL of holding (so
//! peers sharing a PostgreSQL database get their chance at the lane), and
//! released once refreshes have found its lane with nothing due for
//! [`IDLE_KEEP_MS`].
//!
//! Lanes are picked in rounds: every lane the free slots allow, then the
//! leases the picks lack are taken in one write, and their batches start
//! as that write answers (ADR 22). The write runs beside the loop, which
//! goes on handing out and taking back batches meanwhile (ADR 23). Idle
//! leases go back in one write too.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::dispatch::DispatchDeps;
use crate::dispatch::lane::{self, BatchDone, BatchGrant, SlotReturn, run_batch};
use crate::dispatch::policy::{self, limits_of};
use crate::model::{Millis, now_millis};
use crate::model::{ReadyRepeater, RepeaterSpec};
use crate::schedule::{
    Aimd, Eligibility, FairQueue, GrantBounds, GrantCap, RatePacer, earliest_free, size_grant,
};
use crate::store::{Lease, StoreError};

/// A lease this process holds, with when it was first taken.
#[derive(Debug, Clone)]
struct Held {
    lease: Lease,
    /// When the lease was acquired; renewals keep this.
    since: Millis,
    /// Since when a refresh has found the lane with nothing due, while kept.
    idle_since: Option<Millis>,
}

/// Leases of running batches by repeater, with the leases a round took for
/// batches about to start: what shutdown releases when it has to abort
/// batches. The rounds' lease writes, which run beside the loop, add to it.
type HeldLeases = Arc<Mutex<HashMap<i64, Held>>>;

/// The leases a round's write took, by repeater, once it has answered.
type RoundLeases = watch::Receiver<Option<Arc<HashMap<i64, Lease>>>>;

/// What a picked lane's kept lease gives its batch.
enum KeptLease {
    /// The lease, renewed if it was due.
    Held(Held),
    /// No lease is kept, or it was lost to another holder: the lane
    /// competes for a new one in the round's write.
    Compete,
    /// The store could not renew it: the lane keeps it and sits this round
    /// out rather than ask for a lease it still holds.
    SitOut,
}

/// Where a picked batch gets its lease.
enum LeaseFrom {
    /// Kept from the lane's last batch; the flag says whether to keep it
    /// again after this batch.
    Kept(Lease, bool),
    /// Taken by its round's write, which may not have answered yet.
    Round(RoundLeases),
}

/// How long the store's next wake-up time is reused while batches run.
/// Each batch finishing wakes the loop, and reading the wake-up time after
/// every one cost the busy loop more than half its time; due times that
/// finishing batches write (retries, seconds away) are seen this much
/// later at most.
const WAKEUP_REUSE_MS: Millis = 50;

/// How long the ready set is reused at least while other daemons hold
/// lanes: its read is what finds a crashed or frozen peer's lanes once
/// their leases run out, and a busy loop does not learn that time from the
/// store.
const PEERS_REUSE_MS: Millis = 200;

/// Most lanes remembered as coming due again at a time of their own
/// ([`BatchDone::due_again`]); beyond it, the whole read at least once a
/// second finds them.
const DUE_AGAIN_MAX: usize = 65_536;

/// The ready set is reused for at least this many times the time its last
/// read took, so reading it takes at most about a fifth of the loop's time.
const READY_READ_SHARE: u32 = 4;

/// How long a kept lease outlives its lane having nothing due: a lane fed
/// a trickle of records keeps its lease between them instead of paying a
/// release and an acquire each time.
const IDLE_KEEP_MS: Millis = 1_000;

/// Most new lanes a refresh reads one repeater at a time; more are read
/// with every repeater in one query.
const ONE_BY_ONE_LANES: usize = 16;

/// How often the leases other daemons hold are counted, per domain, for
/// the fair queue's weights: they move at the pace of leases, not batches.
const ELSEWHERE_REUSE_MS: Millis = 500;

/// In-process state of one repeater.
struct LaneState {
    domain: String,
    name: String,
    aimd: Aimd,
    pacer: Option<RatePacer>,
    /// A batch of this repeater runs in this process.
    busy: bool,
    /// Most records to grant the lane's next batch, from its last claim.
    cap: GrantCap,
    /// Records granted to the running batch and charged to the domain's
    /// fair share; what its claim does not find is refunded.
    granted: u32,
    /// Ingest found the lane ready while its batch ran.
    fed: bool,
    /// The concurrency limit last put in the metrics from here: looking
    /// up the labelled gauge after every batch was 6 % of the loop's
    /// profile samples with ten thousand lanes, and the limit seldom moves
    /// between batches.
    reported: Option<u32>,
}

/// A lane picked for a batch, before its lease is taken.
struct Pick {
    repeater: ReadyRepeater,
    /// Records granted, charged to the domain and holding their slots.
    records: u32,
    /// Requests the batch opens at once as it starts.
    concurrency: u32,
    /// The lane's adaptive concurrency limit, which the batch carries.
    aimd: Aimd,
}

/// The loop's state.
pub(crate) struct Scheduler {
    deps: Arc<DispatchDeps>,
    fair: FairQueue,
    lanes: HashMap<i64, LaneState>,
    /// Repeaters whose lease another process holds, skipped until the next refresh.
    taken: HashSet<i64>,
    inflight: u32,
    batches: JoinSet<BatchDone>,
    /// Slots running batches give back after claiming fewer records than
    /// they were granted.
    returned: mpsc::UnboundedReceiver<u32>,
    returns: SlotReturn,
    /// Leases of running batches, released if shutdown has to abort them.
    held: HeldLeases,
    /// Rounds' lease writes still running.
    acquiring: JoinSet<()>,
    /// Leases kept between a lane's batches, by repeater.
    kept: HashMap<i64, Held>,
    /// Rate pacers of whole domains, when `dispatch.domain_rate_per_second` is set.
    domain_pacers: HashMap<String, RatePacer>,
    /// Lanes with a rate pacer: asking every lane for its pacer each turn
    /// cost 3 % of the daemon's CPU with 10,000 lanes and no rate set.
    paced_lanes: HashSet<i64>,
    /// Told to running batches so they stop starting attempts.
    shutdown: Option<watch::Receiver<bool>>,
    /// The store's next wake-up time as last read, with when it was read.
    wakeup: Option<(Millis, Option<Millis>)>,
    /// When the ready set was last read from the store.
    ready_read_at: std::time::Instant,
    /// An ingest asked for the ready set while it was too fresh to read
    /// again: it is read once its share of the loop's time allows.
    refresh_pending: bool,
    /// Domains this process added records to since the loop last looked:
    /// their repeaters are read alone, at once (ADR 24).
    fed_domains: Vec<String>,
    /// When lanes come due again by their own batches' results (a retry,
    /// the end of a backoff), by time: their domains are read alone then.
    due_again: BTreeSet<(Millis, i64)>,
    /// How long that read took.
    ready_read_cost: Duration,
    /// When the leases held elsewhere were last counted.
    elsewhere_read_at: Millis,
    /// Other daemons held leases at that count.
    peers_hold_lanes: bool,
}

impl Scheduler {
    pub(crate) fn new(deps: Arc<DispatchDeps>) -> Scheduler {
        let (give_back, returned) = mpsc::unbounded_channel();
        Scheduler {
            deps,
            fair: FairQueue::new(),
            lanes: HashMap::new(),
            taken: HashSet::new(),
            inflight: 0,
            batches: JoinSet::new(),
            returned,
            returns: SlotReturn::new(give_back),
            held: HeldLeases::default(),
            acquiring: JoinSet::new(),
            kept: HashMap::new(),
            domain_pacers: HashMap::new(),
            paced_lanes: HashSet::new(),
            shutdown: None,
            wakeup: None,
            ready_read_at: std::time::Instant::now(),
            refresh_pending: false,
            fed_domains: Vec::new(),
            due_again: BTreeSet::new(),
            ready_read_cost: Duration::ZERO,
            elsewhere_read_at: 0,
            peers_hold_lanes: false,
        }
    }

    /// Runs until `shutdown` turns true, then stops claiming, lets running
    /// batches finish within the grace period and releases what is left.
    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.shutdown = Some(shutdown.clone());
        let wake = self.deps.store.wake_signal();
        let mut refresh = true;
        // What asked for the next read of the whole set, for the metrics.
        let mut reason = "start";
        loop {
            if *shutdown.borrow() {
                break;
            }
            // Register interest before reading the store, so an ingest that
            // lands during the refresh still wakes the next sleep.
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Then take the hints, every turn. A hint left after this comes
            // with a wake-up that `notified` receives. One left before was
            // announced by a wake-up that `enable` may just have used up:
            // if another branch wins the wait below, `notified` is dropped
            // with it, and its hints were left until the safety net's read
            // a second later.
            // A read already asked for (at start, after batches) keeps its
            // reason.
            if self.take_hints() && !refresh {
                refresh = true;
                reason = "change";
            }

            while self.acquiring.try_join_next().is_some() {}
            let turn = std::time::Instant::now();
            let picks = self.batches.len();
            // The safety net counts from the last whole read, not from the
            // last wake-up: a producer posting every few milliseconds woke
            // the loop before any sleep ran out, and a lane skipped for a
            // lease it could not take was never tried again while it did
            // (ADR 25).
            let overdue = self.ready_age() >= self.ready_reuse();
            self.take_due_again(now_millis());
            if refresh || overdue || (self.refresh_pending && self.ready_read_allowed()) {
                if overdue && !refresh {
                    reason = "timer";
                } else if !refresh {
                    reason = "deferred";
                }
                // The whole set covers the fed domains too.
                self.fed_domains.clear();
                let reading = std::time::Instant::now();
                self.refresh().await;
                (self.deps.metrics).scheduler_ready_read(reason, reading.elapsed().as_secs_f64());
            } else if !self.fed_domains.is_empty() {
                self.refresh_fed().await;
            }
            let paced_until = self.hand_out().await;
            let (due_sleep, read_when_due) = self.sleep_deadline(paced_until).await;
            let picked = self.batches.len().saturating_sub(picks) as u64;
            self.deps
                .metrics
                .scheduler_turn(picked, turn.elapsed().as_secs_f64());
            let sleep_until = due_sleep.min(self.ready_reuse().saturating_sub(self.ready_age()));
            let sleep_until = match self.due_again.first() {
                Some((at, _)) => {
                    let wait = at.saturating_sub(now_millis()).max(0) as u64;
                    sleep_until.min(Duration::from_millis(wait))
                }
                None => sleep_until,
            };
            let sleep_until = if self.refresh_pending {
                sleep_until.min(self.ready_read_wait())
            } else {
                sleep_until
            };
            // The store's due time came first: what comes due then may be
            // something only the whole read finds.
            let read_on_waking = read_when_due && due_sleep <= sleep_until;
            let sleep = tokio::time::sleep(sleep_until);

            refresh = tokio::select! {
                // Its hints are taken at the top of the next turn.
                _ = &mut notified => false,
                Some(joined) = self.batches.join_next(), if !self.batches.is_empty() => {
                    self.joined(joined);
                    // Take every other batch that finished meanwhile before
                    // reading the ready set again.
                    while let Some(joined) = self.batches.try_join_next() {
                        self.joined(joined);
                    }
                    reason = "batches";
                    self.ready_age() >= self.ready_reuse()
                }
                Some(slots) = self.returned.recv() => {
                    self.give_back(slots);
                    while let Ok(slots) = self.returned.try_recv() {
                        self.give_back(slots);
                    }
                    // The ready set is as fresh as before: only hand out.
                    false
                }
                _ = sleep => {
                    reason = "timer";
                    read_on_waking
                }
                _ = shutdown.changed() => false,
            };
        }
        self.drain().await;
    }

    /// Takes the store's hints: an ingest's domains are read alone at the
    /// next turn. Anything else (a resend, a resume, a released lease,
    /// another process's change) asks for the whole ready set again,
    /// at once (true) unless it was read so recently that reading it again
    /// would take more than its share of the loop's time; then it is read
    /// as soon as that share allows, while batches go on being handed out
    /// and taken back meanwhile.
    fn take_hints(&mut self) -> bool {
        let hinted = self.deps.store.take_hints();
        self.fed_domains.extend(hinted.domains);
        if !hinted.anything {
            return false;
        }
        let now = self.ready_read_allowed();
        self.refresh_pending |= !now;
        now
    }

    /// How long ago the ready set was read.
    fn ready_age(&self) -> Duration {
        self.ready_read_at.elapsed()
    }

    /// Whether reading the ready set now keeps its reads within their
    /// share of the loop's time: [`READY_READ_SHARE`] times the last read's
    /// cost have passed since it. With a few dozen repeaters that is a
    /// millisecond or two; with ten thousand, each read costs milliseconds,
    /// and reading after every ingest left the loop little time for picks.
    fn ready_read_allowed(&self) -> bool {
        self.ready_read_wait().is_zero()
    }

    /// How long until [`Scheduler::ready_read_allowed`].
    fn ready_read_wait(&self) -> Duration {
        (self.ready_read_cost * READY_READ_SHARE).saturating_sub(self.ready_age())
    }

    /// How long the ready set as last read is reused: `max_sleep` (1 s;
    /// [`PEERS_REUSE_MS`] while other daemons hold lanes), or
    /// [`READY_READ_SHARE`] times what reading it took, whichever is
    /// longer. Between these reads the loop learns of new records from
    /// ingest's hints, of drained lanes from their batches, of retries and
    /// backoffs coming due from the batches that wrote them
    /// ([`BatchDone::due_again`]), and of other changes from the store's
    /// wake-ups. What the read still finds is what nobody announced: a
    /// peer's lease running out, a lane skipped for a lease it could not
    /// take. Reading it every 200 ms while batches ran took two thirds of
    /// the loop's time with ten thousand repeaters.
    fn ready_reuse(&self) -> Duration {
        let floor = if self.peers_hold_lanes {
            Duration::from_millis(PEERS_REUSE_MS as u64)
        } else {
            self.deps.settings.max_sleep
        };
        (self.ready_read_cost * READY_READ_SHARE).max(floor)
    }

    /// Moves the lanes whose own results make them due by `now` to the
    /// domains read alone this turn.
    fn take_due_again(&mut self, now: Millis) {
        while let Some(&(at, id)) = self.due_again.first()
            && at <= now
        {
            self.due_again.pop_first();
            let Some(lane) = self.lanes.get(&id) else {
                continue;
            };
            if !self.fed_domains.contains(&lane.domain) {
                self.fed_domains.push(lane.domain.clone());
            }
        }
    }

    /// Tells the fair queue how many repeaters of each domain other
    /// daemons lease (none on SQLite, which one daemon owns), at most every
    /// [`ELSEWHERE_REUSE_MS`]. On an error the last counts stay.
    async fn count_held_elsewhere(&mut self) {
        let now = now_millis();
        if now - self.elsewhere_read_at < ELSEWHERE_REUSE_MS {
            return;
        }
        self.elsewhere_read_at = now;
        let holder = &self.deps.settings.holder;
        match self.deps.store.lanes_held_elsewhere(now, holder).await {
            Ok(held) => {
                self.peers_hold_lanes = !held.is_empty();
                self.fair.set_held_elsewhere(
                    held.into_iter()
                        .map(|(domain, count)| (domain, u64::try_from(count).unwrap_or(0))),
                );
            }
            Err(error) => {
                tracing::warn!(%error, "cannot count the lanes other daemons hold");
            }
        }
    }

    /// Reads the ready repeaters into the fair queue.
    async fn refresh(&mut self) {
        self.taken.clear();
        self.refresh_pending = false;
        self.ready_read_at = std::time::Instant::now();
        let holder = &self.deps.settings.holder;
        let reading = std::time::Instant::now();
        let read = self.deps.store.ready_repeaters(now_millis(), holder).await;
        // A failed read's time is the store's timeout, not the read's
        // cost: reusing the set for four times that held delivery back
        // seconds after a database came back.
        self.ready_read_cost = match &read {
            Ok(_) => reading.elapsed(),
            Err(_) => Duration::ZERO,
        };
        match read {
            Ok(ready) => {
                self.add_lanes(&ready).await;
                self.fair.set_ready(&ready);
                self.count_held_elsewhere().await;
                // A kept lease whose lane has had nothing due (drained,
                // paused, deleted) for IDLE_KEEP_MS goes back.
                let now = now_millis();
                let ready: HashSet<i64> = ready.iter().map(|r| r.id).collect();
                let mut idle = Vec::new();
                for (id, kept) in &mut self.kept {
                    if ready.contains(id) {
                        kept.idle_since = None;
                        continue;
                    }
                    let since = *kept.idle_since.get_or_insert(now);
                    if now - since >= IDLE_KEEP_MS {
                        idle.push(*id);
                    }
                }
                let leases: Vec<Lease> = (idle.into_iter())
                    .filter_map(|id| self.kept.remove(&id))
                    .map(|kept| kept.lease)
                    .collect();
                if !leases.is_empty() {
                    // Off the loop, in one write: with thousands of lanes
                    // drained at once, releasing them one write after
                    // another held up every pick meanwhile. A lane that
                    // turns ready again before the release is written
                    // finds its lease still taken in the store, is
                    // skipped, and is tried again at the next refresh.
                    // The release does not wake this loop: the lanes had
                    // nothing due, and the whole-set read such a wake-up
                    // asked for gave up more idle leases, which woke it
                    // again, several times a second with ten thousand
                    // lanes.
                    let deps = self.deps.clone();
                    tokio::spawn(async move {
                        if let Err(error) = deps.store.release_leases(&leases).await {
                            // They expire by their TTL instead.
                            tracing::warn!(leases = leases.len(), %error, "cannot release idle leases");
                        }
                    });
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read ready repeaters"),
        }
    }

    /// Reads the ready repeaters of the domains ingest fed since the loop
    /// last looked, and adds them to the fair queue. A busy lane among them
    /// stays in the queue after its batch, even if that batch's claim ran
    /// short: its new records may have come after the claim.
    async fn refresh_fed(&mut self) {
        let domains = std::mem::take(&mut self.fed_domains);
        let holder = &self.deps.settings.holder;
        let read = (self.deps.store)
            .ready_in_domains(now_millis(), holder, &domains)
            .await;
        let ready = match read {
            Ok(ready) => ready,
            Err(error) => {
                // The whole set, read when the store answers again, has them.
                tracing::warn!(%error, "cannot read the ready repeaters of fed domains");
                self.refresh_pending = true;
                return;
            }
        };
        self.add_lanes(&ready).await;
        for repeater in &ready {
            if let Some(lane) = self.lanes.get_mut(&repeater.id)
                && lane.busy
            {
                lane.fed = true;
            }
            if let Some(kept) = self.kept.get_mut(&repeater.id) {
                kept.idle_since = None;
            }
        }
        self.fair.add_ready(&ready);
    }

    /// Sets up the lanes of `ready` repeaters this loop has not seen, with
    /// their limits. A few are read one by one; many (a daemon's first
    /// refresh, a config with thousands of repeaters) in one read of every
    /// repeater, which sets up the lane of every repeater it finds, ready
    /// or not: one awaited read per lane took seconds before the first
    /// batch of ten thousand lanes, and an ingest spread over a thousand
    /// domains, found in a few domains at a time, needed the read of every
    /// repeater again for each of them (1.8 s of the loop's first 3 s).
    async fn add_lanes(&mut self, ready: &[ReadyRepeater]) {
        let new: Vec<&ReadyRepeater> = (ready.iter())
            .filter(|repeater| !self.lanes.contains_key(&repeater.id))
            .collect();
        if new.is_empty() {
            return;
        }
        if new.len() > ONE_BY_ONE_LANES {
            match self.deps.store.repeaters(None).await {
                Ok(rows) => {
                    for row in rows {
                        let label = (row.spec.domain.as_str(), row.spec.name.as_str());
                        self.add_lane(row.id, label, Some(&row.spec));
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot read the repeaters"),
            }
        } else {
            for repeater in &new {
                let read = (self.deps.store)
                    .repeater(&repeater.domain, &repeater.name)
                    .await;
                match read {
                    Ok(Some(row)) if row.id == repeater.id => {
                        let label = (row.spec.domain.as_str(), row.spec.name.as_str());
                        self.add_lane(row.id, label, Some(&row.spec));
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "cannot read a repeater"),
                }
            }
        }
        for repeater in new {
            // Without its row (deleted meanwhile, or the read failed) the
            // lane starts from the daemon's defaults; its first batch
            // brings the repeater's limits.
            self.add_lane(repeater.id, (&repeater.domain, &repeater.name), None);
        }
    }

    /// Sets up lane `id` of repeater `domain`/`name`, unless it is set up
    /// already: with the limits of `spec`, or the daemon's defaults without
    /// one.
    fn add_lane(&mut self, id: i64, (domain, name): (&str, &str), spec: Option<&RepeaterSpec>) {
        if self.lanes.contains_key(&id) {
            return;
        }
        let (ceiling, pacer) = match spec {
            Some(spec) => {
                let limits = limits_of(&self.deps, spec);
                (limits.concurrency, policy::rate_pacer(&limits))
            }
            None => (self.deps.settings.default_concurrency, None),
        };
        if pacer.is_some() {
            self.paced_lanes.insert(id);
        }
        let lane = LaneState {
            domain: domain.to_owned(),
            name: name.to_owned(),
            aimd: Aimd::new(ceiling),
            pacer,
            busy: false,
            cap: GrantCap::default(),
            granted: 0,
            fed: false,
            reported: None,
        };
        self.lanes.insert(id, lane);
    }

    /// Starts batches while there are free slots and eligible repeaters.
    /// Returns the earliest time a rate-limited repeater or domain frees up,
    /// if any.
    ///
    /// Works in rounds: pick every lane the free slots allow, then take the
    /// leases the picks lack in one write, and start each batch as that
    /// write answers. A lane whose lease another holder has is skipped
    /// until the next refresh, its grant given back when its batch reports
    /// it never ran; the loop then picks again with the slots it left. With
    /// thousands of small lanes, one lease write per pick awaited in this
    /// loop held up every pick behind it (ADR 22), and then one write per
    /// round awaited here still held up the loop for most of its time
    /// (ADR 23).
    async fn hand_out(&mut self) -> Option<Millis> {
        let max = self.deps.settings.max_inflight.max(1);
        let domain_pacer = policy::domain_pacer(&self.deps.config.borrow());
        while self.inflight < max {
            let picks = self.pick_round(max, domain_pacer.as_ref());
            if picks.is_empty() {
                break;
            }
            self.start_round(picks).await;
        }
        self.paced_until(now_millis())
    }

    /// Picks lanes in fair order while slots are free and sizes their
    /// grants: each pick is marked busy and charged to its domain, and its
    /// records hold their slots.
    fn pick_round(&mut self, max: u32, domain_pacer: Option<&RatePacer>) -> Vec<Pick> {
        let mut picks = Vec::new();
        while self.inflight < max {
            let now = now_millis();
            let (lanes, taken, domains) = (&self.lanes, &self.taken, &self.domain_pacers);
            let picked = self.fair.next(|r: &ReadyRepeater| {
                if domains
                    .get(&r.domain)
                    .is_some_and(|pacer| !pacer.is_free(now))
                {
                    return Eligibility::SkipDomain;
                }
                if taken.contains(&r.id) {
                    return Eligibility::Skip;
                }
                match lanes.get(&r.id) {
                    Some(lane) if lane.busy => Eligibility::Skip,
                    Some(lane) => match &lane.pacer {
                        Some(pacer) if !pacer.is_free(now) => Eligibility::Skip,
                        _ => Eligibility::Run,
                    },
                    None => Eligibility::Run,
                }
            });
            let Some(repeater) = picked else { break };
            let free = max - self.inflight;
            let Some(lane) = self.lanes.get_mut(&repeater.id) else {
                self.taken.insert(repeater.id);
                continue;
            };
            let domain = match domain_pacer {
                Some(template) => Some(
                    self.domain_pacers
                        .entry(repeater.domain.clone())
                        .or_insert_with(|| template.clone()),
                ),
                None => None,
            };
            // Every claimed record holds a slot until the batch's results
            // are written (ADR 3); `size_grant` says why and how many.
            let bounds = GrantBounds {
                batch_size: self.deps.settings.batch_size,
                free_slots: free,
                cap: lane.cap,
                concurrency: lane.aimd.limit(),
            };
            let Some(grant) = size_grant(bounds, lane.pacer.as_mut(), domain, now) else {
                // Paced out for now; a kept lease stays kept for the turn
                // the pacer allows.
                self.taken.insert(repeater.id);
                continue;
            };
            lane.busy = true;
            lane.granted = grant.records;
            self.fair.charge(&repeater.domain, grant.records);
            self.inflight += grant.records;
            picks.push(Pick {
                repeater,
                records: grant.records,
                concurrency: grant.concurrency,
                aimd: lane.aimd.clone(),
            });
        }
        picks
    }

    /// Starts a batch for each of `picks`: with the lane's kept lease, or
    /// with the lease the round's one write takes, which runs beside the
    /// loop. A batch whose lease the write did not get reports back that it
    /// never ran, and its pick is undone then ([`Scheduler::unpick`]).
    async fn start_round(&mut self, picks: Vec<Pick>) {
        let now = now_millis();
        let ttl = self.deps.settings.lease_ttl_ms;
        let mut kept: HashMap<i64, Held> = HashMap::with_capacity(picks.len());
        let mut wanted = Vec::new();
        let mut sitting_out = HashSet::new();
        for pick in &picks {
            match self.kept_lease(&pick.repeater, now).await {
                KeptLease::Held(held) => {
                    kept.insert(pick.repeater.id, held);
                }
                KeptLease::Compete => wanted.push(pick.repeater.id),
                KeptLease::SitOut => {
                    sitting_out.insert(pick.repeater.id);
                }
            }
        }
        let round = (!wanted.is_empty()).then(|| self.acquire_leases(wanted, now));
        self.deps.metrics.set_inflight(self.inflight as usize);

        for pick in picks {
            if sitting_out.contains(&pick.repeater.id) {
                self.unpick(pick.repeater.id, pick.records);
                continue;
            }
            let from = match kept.remove(&pick.repeater.id) {
                Some(held) => {
                    // Held for a whole TTL: let it go with this batch's results.
                    let keep_lease = now < held.since.saturating_add(ttl);
                    let lease = held.lease.clone();
                    self.held().insert(pick.repeater.id, held);
                    LeaseFrom::Kept(lease, keep_lease)
                }
                None => match &round {
                    Some(round) => LeaseFrom::Round(round.clone()),
                    // Every pick without a kept lease is in the round's write.
                    None => {
                        self.unpick(pick.repeater.id, pick.records);
                        continue;
                    }
                },
            };
            let shutdown = self
                .shutdown
                .clone()
                .unwrap_or_else(|| watch::channel(false).1);
            let deps = self.deps.clone();
            let returns = self.returns.clone();
            // A lease taken now has been held less than a TTL: keep it.
            let keep_fresh = ttl > 0;
            self.batches.spawn(async move {
                let id = pick.repeater.id;
                let (lease, keep_lease) = match from {
                    LeaseFrom::Kept(lease, keep) => (Some(lease), keep),
                    LeaseFrom::Round(round) => (lease_of(round, id).await, keep_fresh),
                };
                let Some(lease) = lease else {
                    return BatchDone::refused(id, pick.records, pick.aimd);
                };
                let grant = BatchGrant {
                    records: pick.records,
                    concurrency: pick.concurrency,
                    keep_lease,
                };
                run_batch(
                    deps,
                    pick.repeater,
                    lease,
                    grant,
                    pick.aimd,
                    returns,
                    shutdown,
                )
                .await
            });
        }
    }

    /// Undoes the pick of a lane whose batch never ran for want of its
    /// lease: the lane is skipped until the next refresh, and its grant
    /// goes back to its domain and the slots.
    fn unpick(&mut self, repeater_id: i64, records: u32) {
        self.taken.insert(repeater_id);
        if let Some(lane) = self.lanes.get_mut(&repeater_id) {
            lane.busy = false;
            lane.granted = 0;
            self.fair.refund(&lane.domain, records);
        }
        self.give_back(records);
    }

    /// The leases of running batches.
    fn held(&self) -> MutexGuard<'_, HashMap<i64, Held>> {
        lock_held(&self.held)
    }

    /// The lease kept from the lane's last batch, renewed once half its TTL
    /// has passed (see [`KeptLease`]).
    async fn kept_lease(&mut self, repeater: &ReadyRepeater, now: Millis) -> KeptLease {
        let ttl = self.deps.settings.lease_ttl_ms;
        let Some(kept) = self.kept.remove(&repeater.id) else {
            return KeptLease::Compete;
        };
        if kept.lease.expires_at.saturating_sub(now) >= ttl / 2 {
            return KeptLease::Held(kept);
        }
        match self.deps.store.renew_lease(&kept.lease, now, ttl).await {
            Ok(lease) => KeptLease::Held(Held {
                lease,
                since: kept.since,
                idle_since: None,
            }),
            // Expired and taken over (the process was frozen, say): count
            // it lost, and compete for the lane with the others.
            Err(StoreError::LeaseLost { .. }) => {
                self.deps.metrics.lease_lost();
                KeptLease::Compete
            }
            Err(error) => {
                tracing::warn!(repeater = %format!("{}/{}", repeater.domain, repeater.name), %error, "cannot renew a kept lease");
                // Kept as it was, and tried again after the next refresh.
                self.kept.insert(repeater.id, kept);
                KeptLease::SitOut
            }
        }
    }

    /// Takes new leases for `repeater_ids` in one write, beside the loop.
    /// The answer says which it took: lanes another holder has are left
    /// out; on a store error, all are. Leases taken count as held from the
    /// moment they are, so shutdown releases them even if their batches
    /// never start.
    fn acquire_leases(&mut self, repeater_ids: Vec<i64>, now: Millis) -> RoundLeases {
        let (answer, round) = watch::channel(None);
        let deps = self.deps.clone();
        let held = self.held.clone();
        self.acquiring.spawn(async move {
            let ttl = deps.settings.lease_ttl_ms;
            let holder = &deps.settings.holder;
            let leases = match (deps.store)
                .acquire_leases(&repeater_ids, holder, now, ttl)
                .await
            {
                Ok(leases) => leases,
                Err(error) => {
                    tracing::warn!(lanes = repeater_ids.len(), %error, "cannot acquire leases");
                    Vec::new()
                }
            };
            let mut taken = HashMap::with_capacity(leases.len());
            {
                let mut held = lock_held(&held);
                for lease in leases {
                    deps.metrics.lease_acquired();
                    let id = lease.repeater_id;
                    taken.insert(id, lease.clone());
                    let held_since_now = Held {
                        lease,
                        since: now,
                        idle_since: None,
                    };
                    held.insert(id, held_since_now);
                }
            }
            // Every batch of the round may have been aborted at shutdown.
            let _ = answer.send(Some(Arc::new(taken)));
        });
        round
    }

    /// The earliest time a rate-limited repeater or domain frees up.
    fn paced_until(&self, now: Millis) -> Option<Millis> {
        let repeaters =
            (self.paced_lanes.iter()).filter_map(|id| self.lanes.get(id)?.pacer.as_ref());
        earliest_free(repeaters.chain(self.domain_pacers.values()), now)
    }

    /// How long to sleep: until the earliest due time or paced repeater, at
    /// most the safety-net cap; the cap while every slot is taken (a slot
    /// coming back wakes the loop) or when work is due now but was not
    /// handed out here (its lane is busy here, and its batch finishing
    /// wakes the loop; or the lane is skipped until the next whole read).
    /// The flag says whether to read every ready repeater when the sleep
    /// runs out: only when it ran until the store's next due time, which
    /// may be a peer's lease or retry that nobody announces.
    async fn sleep_deadline(&mut self, paced_until: Option<Millis>) -> (Duration, bool) {
        let cap = self.deps.settings.max_sleep;
        if self.inflight >= self.deps.settings.max_inflight.max(1) {
            // Nothing can be handed out before a slot comes back, and a
            // slot coming back wakes the loop: no need to ask the store.
            return (cap, false);
        }
        let now = now_millis();
        let due = match self.wakeup {
            Some((read, at)) if !self.batches.is_empty() && now - read < WAKEUP_REUSE_MS => at,
            _ => {
                let holder = &self.deps.settings.holder;
                match self.deps.store.next_wakeup(now, holder).await {
                    Ok(at) => {
                        self.wakeup = Some((now, at));
                        at
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the next wake-up time");
                        None
                    }
                }
            }
        };
        match (due, paced_until) {
            (Some(at), paced) if at > now && paced.is_none_or(|paced| at <= paced) => {
                (Duration::from_millis((at - now) as u64).min(cap), true)
            }
            (_, Some(paced)) if paced > now => {
                (Duration::from_millis((paced - now) as u64).min(cap), false)
            }
            (_, Some(_)) => (Duration::ZERO, false),
            _ => (cap, false),
        }
    }

    /// Frees in-flight slots: a batch's unclaimed grant, or what it still
    /// held when it ended.
    fn give_back(&mut self, slots: u32) {
        self.inflight = self.inflight.saturating_sub(slots);
        self.deps.metrics.set_inflight(self.inflight as usize);
    }

    fn joined(&mut self, joined: Result<BatchDone, tokio::task::JoinError>) {
        match joined {
            Ok(done) => self.batch_done(done),
            Err(error) => tracing::error!(%error, "a batch task failed"),
        }
    }

    fn batch_done(&mut self, done: BatchDone) {
        if done.refused {
            self.unpick(done.repeater_id, done.reserved);
            return;
        }
        // Rule 7: repeaters whose batches keep overrunning the budget yield.
        if done.attempted > 0 {
            let over_budget = done.elapsed > self.deps.settings.batch_budget;
            self.fair.record_batch(done.repeater_id, over_budget);
        }
        self.give_back(done.reserved);
        if let Some(at) = done.due_again
            && self.due_again.len() < DUE_AGAIN_MAX
        {
            self.due_again.insert((at, done.repeater_id));
        }
        let held = self.held().remove(&done.repeater_id);
        if let (Some(lease), Some(held)) = (done.lease, held) {
            let held = Held {
                lease,
                since: held.since,
                idle_since: None,
            };
            self.kept.insert(done.repeater_id, held);
        }
        if let Some(lane) = self.lanes.get(&done.repeater_id) {
            self.fair
                .refund(&lane.domain, lane.granted.saturating_sub(done.claimed));
        }
        let fed = (self.lanes.get_mut(&done.repeater_id))
            .is_some_and(|lane| std::mem::take(&mut lane.fed));
        if !done.more_due && !fed {
            self.fair.remove(done.repeater_id);
        }
        if let Some(lane) = self.lanes.get_mut(&done.repeater_id) {
            lane.busy = false;
            lane.cap = GrantCap::after_claim(done.claimed);
            // The batch fed its answers to the limit as they came.
            lane.aimd = done.aimd;
            if let Some(limits) = &done.limits {
                lane.aimd.set_ceiling(limits.concurrency);
                match (&mut lane.pacer, limits.rate_per_second) {
                    (Some(pacer), Some(rate)) => pacer.reconfigure(rate, limits.burst),
                    (slot @ None, Some(rate)) => *slot = Some(RatePacer::new(rate, limits.burst)),
                    (slot, None) => *slot = None,
                }
                if lane.pacer.is_some() {
                    self.paced_lanes.insert(done.repeater_id);
                } else {
                    self.paced_lanes.remove(&done.repeater_id);
                }
            }
            let limit = lane.aimd.limit();
            if lane.reported != Some(limit) {
                lane.reported = Some(limit);
                (self.deps.metrics).set_repeater_concurrency(&lane.domain, &lane.name, limit);
            }
        }
    }

    /// Stops: lets running batches finish within the grace period, then
    /// aborts the rest and releases their leases (their records stay due).
    async fn drain(&mut self) {
        let grace = self.deps.settings.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        while !self.batches.is_empty() {
            match tokio::time::timeout_at(deadline, self.batches.join_next()).await {
                Ok(Some(Ok(done))) => self.batch_done(done),
                Ok(Some(Err(error))) => tracing::error!(%error, "a batch task failed"),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        batches = self.batches.len(),
                        "shutdown grace period over; aborting running batches"
                    );
                    self.batches.abort_all();
                    while self.batches.join_next().await.is_some() {}
                    break;
                }
            }
        }
        // A round's lease write still running would add leases no batch
        // will use; wait for it within the grace period, then stop it.
        let writes = async { while self.acquiring.join_next().await.is_some() {} };
        if tokio::time::timeout_at(deadline, writes).await.is_err() {
            self.acquiring.abort_all();
        }
        let running: Vec<Held> = self.held().drain().map(|(_, h)| h).collect();
        let held: Vec<Held> = (running.into_iter())
            .chain(self.kept.drain().map(|(_, h)| h))
            .collect();
        for held in held {
            lane::release(&self.deps, &held.lease).await;
        }
    }
}

/// The held leases (a batch that panicked left the map whole, so a
/// poisoned lock is still good).
fn lock_held(held: &HeldLeases) -> MutexGuard<'_, HashMap<i64, Held>> {
    held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The lease `repeater_id` got from its round's write, once the write has
/// answered; `None` when another holder has the lane, the write failed, or
/// the loop is gone.
async fn lease_of(mut round: RoundLeases, repeater_id: i64) -> Option<Lease> {
    let answered = round.wait_for(Option::is_some).await.ok()?;
    answered.as_ref()?.get(&repeater_id).cloned()
}
