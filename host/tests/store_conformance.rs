//! One conformance suite for every `Store`: each test body below runs against
//! a fresh SQLite file and a fresh PostgreSQL database (set
//! `REPEATERD_TEST_PG_URL`; default `postgres://postgres@127.0.0.1:5432/test`).
//! A few tests at the end need two processes sharing one database and run on
//! PostgreSQL only.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use repeaterd::model::{
    AttemptOutcome, NewEvent, Ordering, RecordState, RepeaterSpec, SentHeader, SentRequest,
};
use repeaterd::store::postgres::PostgresStore;
use repeaterd::store::{
    AdminStore, AttemptDraft, BULK_BATCH, ErrorKind, EventSweep, IngestStore, LaneStore, Lease,
    PayloadPreview, RecordOutcome, RecordQuery, RepeaterHealth, Store, StoreError,
};
use repeaterd_tests::{Backend, PgDatabase, on_both_stores};
use sqlx::Connection;

const T0: i64 = 1_700_000_000_000;
const TTL: i64 = 30_000;
/// The plugin version attempts are recorded as built by.
const PLUGIN_SHA: &str = "5f0e3c7a9b1d2e4f60718293a4b5c6d7e8f90112233445566778899aabbccdde";
/// The lease holder the tests take leases as.
const HOLDER: &str = "test-holder";
/// A holder that holds no lease: sees every held lease as taken.
const OTHER: &str = "other-holder";

// --- harness -------------------------------------------------------------

/// A store under test and what must be cleaned up after it.
struct Harness {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    _database: Option<PgDatabase>,
}

/// The file name of the harness's SQLite store in its directory.
const SQLITE_FILE: &str = "repeaterd.db";

impl Harness {
    /// The SQLite file of a [`sqlite_harness`].
    fn sqlite_path(&self) -> std::path::PathBuf {
        let dir = self
            ._dir
            .as_ref()
            .expect("a SQLite harness has a directory");
        dir.path().join(SQLITE_FILE)
    }

    /// A connection of its own to the file of a [`sqlite_harness`], beside
    /// the store's.
    async fn sqlite_connection(&self) -> sqlx::SqliteConnection {
        let url = format!("sqlite://{}", self.sqlite_path().display());
        sqlx::SqliteConnection::connect(&url)
            .await
            .expect("a second connection to the file")
    }
}

async fn sqlite_harness() -> Harness {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = repeaterd::store::open(None, &dir.path().join(SQLITE_FILE))
        .await
        .expect("open SQLite store");
    Harness {
        store,
        _dir: Some(dir),
        _database: None,
    }
}

async fn pg_harness() -> Harness {
    pg_harness_on(PgDatabase::create().await).await
}

async fn pg_harness_on(database: PgDatabase) -> Harness {
    let store = repeaterd::store::open(Some(&database.url), std::path::Path::new("unused.db"))
        .await
        .expect("open PostgreSQL store");
    Harness {
        store,
        _dir: None,
        _database: Some(database),
    }
}

/// The store a conformance test runs on, and the harness that keeps it.
async fn open_store(backend: Backend) -> (Arc<dyn Store>, Harness) {
    let harness = match backend {
        Backend::Sqlite => sqlite_harness().await,
        Backend::Postgres(database) => pg_harness_on(database).await,
    };
    (harness.store.clone(), harness)
}

on_both_stores!(
    open = open_store;
    ingest_makes_one_record_per_subscribed_repeater,
    ingest_is_idempotent_by_event_id,
    concurrent_ingests_of_one_id_create_records_once,
    concurrent_ingests_keep_event_ids_and_subscribers_per_domain,
    ingest_is_all_or_nothing,
    ingest_follows_repeater_changes_between_posts,
    ready_repeaters_exclude_paused_backed_off_leased_and_not_due,
    wake_ups_say_which_domains_got_records,
    leases_bump_the_epoch_renew_and_are_taken_over_after_expiry,
    a_holder_takes_a_lease_it_lost_track_of_again_at_once,
    leases_taken_together_skip_held_lanes_and_are_given_up_together,
    lanes_held_elsewhere_counts_other_holders_live_leases_by_domain,
    finish_batch_with_a_stale_epoch_writes_nothing,
    concurrent_batch_results_are_fenced_each_by_its_own_lease,
    claim_returns_due_records_oldest_first_with_their_events,
    outcomes_update_records_and_write_attempts,
    resend_and_cancel_follow_the_record_rules,
    failures_are_grouped_by_last_error_and_acted_on_by_group,
    records_in_a_state_are_resent_or_cancelled_in_bulk,
    payload_previews_show_the_event_and_its_size,
    requeue_and_pause_act_on_the_repeater,
    delete_repeater_cancels_unfinished_records,
    purge_terminal_deletes_only_old_terminal_records_in_batches,
    purge_unrouted_events_deletes_old_events_no_repeater_took,
    next_wakeup_reports_the_earliest_due_time,
    backlog_counts_records_by_state,
    records_listing_filters_and_pages_by_id,
    upsert_replaces_the_spec_and_keeps_the_status,
    ingest_wakes_the_scheduler,
    fifo_lanes_hold_the_line_behind_their_oldest_record,
    key_lanes_keep_order_within_each_key,
    ingest_and_batches_running_together_lose_nothing,
);

// --- fixtures ------------------------------------------------------------

fn spec(domain: &str, name: &str, event_types: &[&str]) -> RepeaterSpec {
    serde_json::from_value(serde_json::json!({
        "domain": domain,
        "name": name,
        "url": "http://127.0.0.1:9/hook",
        "plugin": "json-forward",
        "event_types": event_types,
    }))
    .expect("valid spec")
}

fn event(id: Option<&str>, event_type: &str) -> NewEvent {
    NewEvent {
        id: id.map(str::to_owned),
        event_type: event_type.to_owned(),
        content_type: "application/json".to_owned(),
        payload: format!("{{\"type\":\"{event_type}\"}}").into_bytes(),
        ordering_key: None,
    }
}

async fn lease(store: &Arc<dyn Store>, repeater_id: i64, now: i64) -> Lease {
    store
        .acquire_lease(repeater_id, HOLDER, now, TTL)
        .await
        .expect("acquire")
        .expect("lease is free")
}

/// Asserts that a renewal of `lease` was refused as lost, naming its lane
/// and epoch.
fn assert_renewal_lost(renewal: Result<Lease, StoreError>, lease: &Lease) {
    match renewal {
        Err(StoreError::LeaseLost { repeater_id, epoch }) => {
            assert_eq!((repeater_id, epoch), (lease.repeater_id, lease.epoch));
        }
        other => panic!("expected the renewal of a lost lease refused, got {other:?}"),
    }
}

fn attempt(outcome: AttemptOutcome, status: Option<u16>, error: Option<&str>) -> AttemptDraft {
    AttemptDraft {
        started_at: T0 + 10,
        duration_ms: 42,
        status,
        error: error.map(str::to_owned),
        outcome,
        response_excerpt: status.map(|s| format!("reply {s}").into_bytes()),
        plugin_sha256: Some(PLUGIN_SHA.to_owned()),
        request: Some(serde_json::to_string(&sent_request()).unwrap()),
    }
}

/// Record `record_id` delivered: it succeeded on a 200.
fn succeeded_on_200(record_id: i64) -> RecordOutcome {
    RecordOutcome {
        record_id,
        state: RecordState::Succeeded,
        next_attempt_at: None,
        attempt: Some(attempt(AttemptOutcome::Success, Some(200), None)),
    }
}

/// What the attempts of [`attempt`] sent.
fn sent_request() -> SentRequest {
    SentRequest {
        method: "POST".into(),
        url: "https://api.example.com/hooks?page=2".into(),
        headers: vec![SentHeader {
            name: "content-type".into(),
            value: "application/json".into(),
        }],
        body_bytes: 17,
    }
}

async fn state_of(store: &Arc<dyn Store>, domain: &str, id: i64) -> RecordState {
    store
        .record(domain, id)
        .await
        .expect("record")
        .expect("record exists")
        .0
        .state
}

async fn all_records(store: &Arc<dyn Store>, domain: &str) -> Vec<repeaterd::store::RecordRow> {
    store
        .records(
            domain,
            &RecordQuery {
                limit: 10_000,
                ..RecordQuery::default()
            },
        )
        .await
        .expect("records")
}

// --- ingest --------------------------------------------------------------

async fn ingest_makes_one_record_per_subscribed_repeater(store: Arc<dyn Store>) {
    store
        .upsert_repeater(&spec("acme", "all", &[]), T0)
        .await
        .unwrap();
    store
        .upsert_repeater(&spec("acme", "closer", &["case.closed"]), T0)
        .await
        .unwrap();
    store
        .upsert_repeater(&spec("other", "all", &[]), T0)
        .await
        .unwrap();

    let answers = store
        .ingest(
            "acme",
            &[
                event(Some("e1"), "case.created"),
                event(None, "case.closed"),
            ],
            T0,
        )
        .await
        .unwrap();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].event_id, "e1");
    assert!(answers[0].created && answers[1].created);
    let names = |i: usize| -> Vec<String> {
        answers[i]
            .records
            .iter()
            .map(|r| r.repeater.clone())
            .collect()
    };
    assert_eq!(names(0), vec!["all"]);
    let mut second = names(1);
    second.sort();
    assert_eq!(second, vec!["all", "closer"]);
    // A host-made id is a UUID.
    assert!(uuid::Uuid::parse_str(&answers[1].event_id).is_ok());

    let listed = all_records(&store, "acme").await;
    assert_eq!(listed.len(), 3);
    assert!(
        listed
            .iter()
            .all(|r| r.state == RecordState::Pending && r.attempts == 0)
    );
    assert!(all_records(&store, "other").await.is_empty());
}

async fn ingest_is_idempotent_by_event_id(store: Arc<dyn Store>) {
    store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap();
    store
        .upsert_repeater(&spec("acme", "b", &[]), T0)
        .await
        .unwrap();
    store
        .upsert_repeater(&spec("beta", "a", &[]), T0)
        .await
        .unwrap();
    let first = store
        .ingest("acme", &[event(Some("x"), "t")], T0)
        .await
        .unwrap();
    assert!(first[0].created);
    assert_eq!(first[0].records.len(), 2);

    // Same id again, even with another type and payload: the first answer.
    let again = store
        .ingest("acme", &[event(Some("x"), "other.type")], T0 + 5)
        .await
        .unwrap();
    assert!(!again[0].created);
    assert_eq!(again[0].records, first[0].records);
    assert_eq!(all_records(&store, "acme").await.len(), 2);

    // Within one batch, the second copy reports the first one's records.
    let batch = store
        .ingest("acme", &[event(Some("y"), "t"), event(Some("y"), "t")], T0)
        .await
        .unwrap();
    assert!(batch[0].created);
    assert!(!batch[1].created);
    assert_eq!(batch[0].records, batch[1].records);
    assert_eq!(all_records(&store, "acme").await.len(), 4);

    // Ids are per domain.
    let other = store
        .ingest("beta", &[event(Some("x"), "t")], T0)
        .await
        .unwrap();
    assert!(other[0].created);
    assert_eq!(other[0].records.len(), 1);
}

async fn concurrent_ingests_of_one_id_create_records_once(store: Arc<dyn Store>) {
    store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap();
    store
        .upsert_repeater(&spec("acme", "b", &[]), T0)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            // Every task sends the shared id, half of them inside a batch
            // with ids of their own, in differing order.
            let mut events = vec![event(Some("shared"), "t")];
            if i % 2 == 0 {
                events.push(event(Some(&format!("own-{i}")), "t"));
                events.reverse();
            }
            store.ingest("acme", &events, T0).await
        }));
    }
    let mut created = 0;
    let mut answers = HashSet::new();
    for task in tasks {
        let result = task.await.unwrap().expect("concurrent ingest succeeds");
        let shared = result.iter().find(|a| a.event_id == "shared").unwrap();
        created += usize::from(shared.created);
        let ids: Vec<i64> = shared.records.iter().map(|r| r.id).collect();
        answers.insert(ids);
    }
    assert_eq!(created, 1, "exactly one ingest creates the event");
    assert_eq!(answers.len(), 1, "every ingest reports the same records");
    assert_eq!(answers.iter().next().unwrap().len(), 2);
    // 2 records for the shared id, 2 for each of the 4 own ids.
    assert_eq!(all_records(&store, "acme").await.len(), 2 + 4 * 2);
}

/// Posts to several domains at once (which SQLite commits together in one
/// group): the same event id in two domains is two events, each domain's
/// records go to its own subscribed repeaters, and every post of an id gets
/// the answer of the one that created it.
async fn concurrent_ingests_keep_event_ids_and_subscribers_per_domain(store: Arc<dyn Store>) {
    for (domain, name, types) in [
        ("acme", "a", &[][..]),
        ("acme", "b", &["t"][..]),
        ("acme", "only-x", &["x"][..]),
        ("beta", "c", &[][..]),
    ] {
        store
            .upsert_repeater(&spec(domain, name, types), T0)
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let domain = if i % 2 == 0 { "acme" } else { "beta" };
            let events = [
                event(Some("shared"), "t"),
                event(Some(&format!("own-{i}")), "t"),
            ];
            (domain, store.ingest(domain, &events, T0).await)
        }));
    }
    let mut created: HashMap<&str, usize> = HashMap::new();
    let mut answers: HashMap<&str, HashSet<Vec<i64>>> = HashMap::new();
    for task in tasks {
        let (domain, result) = task.await.unwrap();
        let result = result.expect("concurrent ingest succeeds");
        assert_eq!(result.len(), 2);
        for answer in &result {
            let mut repeaters: Vec<&str> =
                answer.records.iter().map(|r| r.repeater.as_str()).collect();
            repeaters.sort_unstable();
            let expected: &[&str] = if domain == "acme" {
                &["a", "b"]
            } else {
                &["c"]
            };
            assert_eq!(repeaters, expected, "{domain}/{}", answer.event_id);
        }
        let shared = result.iter().find(|a| a.event_id == "shared").unwrap();
        *created.entry(domain).or_default() += usize::from(shared.created);
        answers
            .entry(domain)
            .or_default()
            .insert(shared.records.iter().map(|r| r.id).collect());
        let own = result.iter().find(|a| a.event_id != "shared").unwrap();
        assert!(own.created, "{domain}/{} is new", own.event_id);
    }
    assert_eq!(created["acme"], 1, "one post creates acme's shared event");
    assert_eq!(created["beta"], 1, "one post creates beta's shared event");
    for domain in ["acme", "beta"] {
        assert_eq!(
            answers[domain].len(),
            1,
            "{domain}: every post reports the same records"
        );
    }
    let acme: HashSet<i64> = answers["acme"].iter().flatten().copied().collect();
    assert!(
        answers["beta"]
            .iter()
            .flatten()
            .all(|id| !acme.contains(id)),
        "the two domains' shared events have records of their own"
    );
    // acme: 2 records for shared and for each of 8 own ids; beta: 1 each.
    assert_eq!(all_records(&store, "acme").await.len(), 2 + 8 * 2);
    assert_eq!(all_records(&store, "beta").await.len(), 1 + 8);
}

/// SQLite commits concurrent ingests in groups, one transaction each. A
/// job that fails in the database (here: its domain's repeater row is
/// corrupt) must fail alone, not take the jobs it was grouped with along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_failing_ingest_does_not_fail_the_ingests_grouped_with_it() {
    let harness = sqlite_harness().await;
    let store = harness.store.clone();
    for domain in ["good", "bad"] {
        store
            .upsert_repeater(&spec(domain, "a", &[]), T0)
            .await
            .unwrap();
    }
    let mut raw = harness.sqlite_connection().await;
    sqlx::query("UPDATE repeaters SET spec = 'not json' WHERE domain = 'bad'")
        .execute(&mut raw)
        .await
        .unwrap();
    raw.close().await.unwrap();

    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            let domain = if i % 2 == 0 { "good" } else { "bad" };
            tokio::spawn(async move {
                let events = [event(Some(&format!("e-{i}")), "t")];
                (domain, store.ingest(domain, &events, T0).await)
            })
        })
        .collect();
    for task in tasks {
        match task.await.unwrap() {
            ("good", result) => assert!(result.expect("a good ingest succeeds")[0].created),
            (_, result) => assert!(
                matches!(result, Err(StoreError::Corrupt { .. })),
                "an ingest into the corrupt domain: {result:?}"
            ),
        }
    }
    assert_eq!(all_records(&store, "good").await.len(), 20);
}

/// The group writer runs without foreign-key checks (they made SQLite copy
/// every changed page into a statement journal): its statements must keep
/// every reference whole themselves. A batch's outcomes for a record of
/// another lane and for an id that does not exist write nothing, and the
/// file passes SQLite's own foreign-key check afterwards.
#[tokio::test]
async fn sqlite_group_writes_leave_no_dangling_reference() {
    let harness = sqlite_harness().await;
    let store = harness.store.clone();
    let mut ids = Vec::new();
    for name in ["a", "b"] {
        let row = store.upsert_repeater(&spec("acme", name, &[]), T0).await;
        ids.push(row.unwrap().id);
    }
    let events: Vec<NewEvent> = ["e0", "e1", "e2"].map(|id| event(Some(id), "t")).into();
    let ingested = store.ingest("acme", &events, T0).await.unwrap();
    let of_b: Vec<i64> = (ingested.iter())
        .flat_map(|answer| &answer.records)
        .filter(|record| record.repeater == "b")
        .map(|record| record.id)
        .collect();
    assert_eq!(of_b.len(), 3);
    let held = lease(&store, ids[0], T0).await;
    let claimed = store.claim(&held, 10, T0).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let mut outcomes: Vec<RecordOutcome> = claimed.iter().map(|r| succeeded_on_200(r.id)).collect();
    outcomes.push(succeeded_on_200(of_b[0]));
    outcomes.push(succeeded_on_200(999_999));
    store
        .finish_batch(&held, &outcomes, None, true, T0 + 10)
        .await
        .unwrap();

    let mut raw = harness.sqlite_connection().await;
    let dangling: Vec<(String, i64)> =
        sqlx::query_as("SELECT \"table\", rowid FROM pragma_foreign_key_check")
            .fetch_all(&mut raw)
            .await
            .unwrap();
    assert_eq!(dangling, Vec::<(String, i64)>::new());
    let attempts: Vec<i64> =
        sqlx::query_scalar("SELECT record_id FROM attempts ORDER BY record_id")
            .fetch_all(&mut raw)
            .await
            .unwrap();
    let mut of_a: Vec<i64> = claimed.iter().map(|r| r.id).collect();
    of_a.sort_unstable();
    assert_eq!(attempts, of_a, "attempts only for the lane's own records");
    raw.close().await.unwrap();
    assert_eq!(
        state_of(&store, "acme", of_b[0]).await,
        RecordState::Pending
    );
}

/// The SQLite writer checkpoints only past a large log, so that the copy
/// into the database file runs beside it, not inside its commits. Without
/// the background copy, a few hundred KiB of writes would stay in the log
/// and the database file would not grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_copies_the_log_into_the_database_file_in_the_background() {
    let harness = sqlite_harness().await;
    let store = harness.store.clone();
    store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap();
    let path = harness.sqlite_path();
    let size = || std::fs::metadata(&path).expect("database file").len();
    let before = size();
    let payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(1_000)).into_bytes();
    let events: Vec<NewEvent> = (0..400)
        .map(|i| NewEvent {
            payload: payload.clone(),
            ..event(Some(&format!("e-{i}")), "t")
        })
        .collect();
    store.ingest("acme", &events, T0).await.unwrap();

    // 400 KiB of payloads: the file must take most of them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while size() < before + 300 * 1024 {
        assert!(
            std::time::Instant::now() < deadline,
            "database file still {} bytes (was {before}) 10 s after the ingest",
            size()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Group commits have a connection of their own beside the writer pool's:
/// a group that finds the write lock held by another connection waits for
/// it (on a timer) instead of failing, and commits once it is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_ingest_waits_for_a_write_lock_held_elsewhere() {
    let harness = sqlite_harness().await;
    let store = harness.store.clone();
    store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap();
    let mut other = harness.sqlite_connection().await;
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .expect("the write lock");

    let ingest = tokio::spawn({
        let store = store.clone();
        async move { store.ingest("acme", &[event(Some("e-1"), "t")], T0).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !ingest.is_finished(),
        "the ingest finished while another connection held the write lock: {:?}",
        ingest.await.unwrap().map(|_| ())
    );
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    let answers = ingest
        .await
        .unwrap()
        .expect("the ingest commits once the lock is free");
    assert_eq!(answers.len(), 1);
    assert_eq!(all_records(&store, "acme").await.len(), 1);
}

/// One process owns a SQLite file: a second store on it is refused with
/// the file named, and the file is free again once the first store is gone.
#[tokio::test]
async fn sqlite_a_second_store_on_one_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repeaterd.db");
    let first = repeaterd::store::open(None, &path).await.unwrap();
    match repeaterd::store::open(None, &path).await {
        Err(error @ StoreError::InUse { .. }) => {
            let message = error.to_string();
            assert!(message.contains("repeaterd.db"), "{message}");
            assert!(message.contains("another repeaterd process"), "{message}");
        }
        other => panic!("a second store on the file: {:?}", other.map(|_| ())),
    }
    drop(first);
    repeaterd::store::open(None, &path)
        .await
        .expect("the file is free once its store is dropped");
}

/// A lease left in a SQLite file belongs to a process that has ended (only
/// one opens the file at a time): reopening frees it at once, not after its
/// TTL, and the old lease's results are still refused.
#[tokio::test]
async fn sqlite_reopening_frees_the_leases_left_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repeaterd.db");
    let store = repeaterd::store::open(None, &path).await.unwrap();
    let row = store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap();
    let old = lease(&store, row.id, T0).await;
    assert!(
        store
            .acquire_lease(row.id, OTHER, T0 + 1, TTL)
            .await
            .unwrap()
            .is_none(),
        "held while its store is open"
    );
    drop(store);

    let store = repeaterd::store::open(None, &path).await.unwrap();
    let new = store
        .acquire_lease(row.id, OTHER, T0 + 1, TTL)
        .await
        .unwrap()
        .expect("the lease left in the file is free at once");
    assert!(new.epoch > old.epoch);
    assert!(matches!(
        store.renew_lease(&old, T0 + 2, TTL).await,
        Err(StoreError::LeaseLost { .. })
    ));
}

async fn ingest_is_all_or_nothing(store: Arc<dyn Store>) {
    store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap();
    let mut bad = event(Some("third"), "t");
    bad.ordering_key = Some("k".repeat(300));
    let result = store
        .ingest(
            "acme",
            &[event(Some("first"), "t"), event(Some("second"), "t"), bad],
            T0,
        )
        .await;
    match result {
        Err(StoreError::Invalid(message)) => assert!(message.contains("ordering key"), "{message}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(all_records(&store, "acme").await.is_empty());
    // Nothing of the batch was kept: the first id is new again.
    let retry = store
        .ingest("acme", &[event(Some("first"), "t")], T0)
        .await
        .unwrap();
    assert!(retry[0].created);

    for (domain, event) in [
        ("Not A Domain", event(Some("z"), "t")),
        ("acme", event(Some(""), "t")),
        ("acme", event(Some("z"), "")),
    ] {
        let result = store.ingest(domain, &[event], T0).await;
        assert!(matches!(result, Err(StoreError::Invalid(_))), "{result:?}");
    }
    assert_eq!(all_records(&store, "acme").await.len(), 1);
}

// --- scheduling ----------------------------------------------------------

async fn ready_repeaters_exclude_paused_backed_off_leased_and_not_due(store: Arc<dyn Store>) {
    let mut ids = std::collections::HashMap::new();
    for name in ["ok", "paused", "backed", "leased", "later", "idle"] {
        let row = store
            .upsert_repeater(&spec("acme", name, &[]), T0)
            .await
            .unwrap();
        ids.insert(name, row.id);
    }
    // "idle" subscribes to nothing that will be sent.
    store
        .upsert_repeater(&spec("acme", "idle", &["never"]), T0)
        .await
        .unwrap();
    store
        .ingest("acme", &[event(Some("e"), "t")], T0)
        .await
        .unwrap();
    store.set_paused("acme", "paused", true, T0).await.unwrap();

    // "backed": a failed batch backs it off until T0 + 5000.
    let backed = lease(&store, ids["backed"], T0).await;
    store
        .finish_batch(
            &backed,
            &[],
            Some(&RepeaterHealth {
                backoff_until: Some(T0 + 5_000),
                backoff_step: 1,
                last_error: Some("HTTP status 503".into()),
                last_success_at: None,
            }),
            true,
            T0,
        )
        .await
        .unwrap();
    // "later": its record is retrying, due at T0 + 10000.
    let later = lease(&store, ids["later"], T0).await;
    let claimed = store.claim(&later, 10, T0).await.unwrap();
    let outcomes: Vec<RecordOutcome> = claimed
        .iter()
        .map(|r| RecordOutcome {
            record_id: r.id,
            state: RecordState::Retrying,
            next_attempt_at: Some(T0 + 10_000),
            attempt: Some(attempt(AttemptOutcome::Retry, Some(500), None)),
        })
        .collect();
    store
        .finish_batch(&later, &outcomes, None, true, T0)
        .await
        .unwrap();
    // "leased": held until T0 + TTL.
    lease(&store, ids["leased"], T0).await;

    let names = |ready: Vec<repeaterd::store::ReadyRepeater>| -> Vec<String> {
        ready.into_iter().map(|r| r.name).collect()
    };
    assert_eq!(
        names(store.ready_repeaters(T0 + 1, OTHER).await.unwrap()),
        vec!["ok"]
    );
    // The holder of a lease still sees its lane as ready (a lease kept
    // between batches).
    assert_eq!(
        names(store.ready_repeaters(T0 + 1, HOLDER).await.unwrap()),
        vec!["leased", "ok"]
    );
    assert_eq!(
        names(store.ready_repeaters(T0 + 5_000, OTHER).await.unwrap()),
        vec!["backed", "ok"]
    );
    assert_eq!(
        names(store.ready_repeaters(T0 + 10_000, OTHER).await.unwrap()),
        vec!["backed", "later", "ok"]
    );
    assert_eq!(
        names(store.ready_repeaters(T0 + TTL, OTHER).await.unwrap()),
        vec!["backed", "later", "leased", "ok"]
    );
    store.set_paused("acme", "paused", false, T0).await.unwrap();
    assert_eq!(
        names(store.ready_repeaters(T0 + TTL, OTHER).await.unwrap()),
        vec!["backed", "later", "leased", "ok", "paused"]
    );

    // The same rules within named domains: another domain's ready
    // repeater is left out, and so is every repeater of a domain not named.
    store
        .upsert_repeater(&spec("beta", "other", &[]), T0)
        .await
        .unwrap();
    store
        .ingest("beta", &[event(Some("b"), "t")], T0)
        .await
        .unwrap();
    store.set_paused("acme", "paused", true, T0).await.unwrap();
    let within =
        |domains: &[&str]| -> Vec<String> { domains.iter().map(|d| d.to_string()).collect() };
    for (now, holder) in [
        (T0 + 1, OTHER),
        (T0 + 1, HOLDER),
        (T0 + 10_000, OTHER),
        (T0 + TTL, OTHER),
    ] {
        let whole = store.ready_repeaters(now, holder).await.unwrap();
        let acme = store
            .ready_in_domains(now, holder, &within(&["acme"]))
            .await
            .unwrap();
        let mut acme = names(acme);
        acme.sort();
        let expected: Vec<String> = (whole.iter())
            .filter(|r| r.domain == "acme")
            .map(|r| r.name.clone())
            .collect();
        assert_eq!(acme, expected, "at {now} for {holder}");
        let both = store
            .ready_in_domains(now, holder, &within(&["beta", "acme"]))
            .await
            .unwrap();
        assert_eq!(both.len(), whole.len(), "at {now} for {holder}");
    }
    let beta = store
        .ready_in_domains(T0 + 1, OTHER, &within(&["beta", "nowhere"]))
        .await
        .unwrap();
    assert_eq!(names(beta), vec!["other"]);
    let none = store
        .ready_in_domains(T0 + 1, OTHER, &within(&["nowhere"]))
        .await
        .unwrap();
    assert!(none.is_empty());
}

async fn wake_ups_say_which_domains_got_records(store: Arc<dyn Store>) {
    for domain in ["acme", "beta"] {
        store
            .upsert_repeater(&spec(domain, "hook", &[]), T0)
            .await
            .unwrap();
    }
    store.take_hints();
    store
        .ingest("acme", &[event(Some("a"), "t")], T0)
        .await
        .unwrap();
    let hinted = store.take_hints();
    assert_eq!(
        hinted.domains.iter().collect::<Vec<_>>(),
        ["acme"],
        "an ingest names its domain"
    );
    assert!(!hinted.anything, "an ingest alone concerns its domain");
    assert_eq!(
        store.take_hints(),
        Default::default(),
        "hints are taken once"
    );
    // A repeat of a seen event makes no record, and no wake-up.
    store
        .ingest("acme", &[event(Some("a"), "t")], T0)
        .await
        .unwrap();
    assert_eq!(store.take_hints(), Default::default());
    // A resume may make any lane ready.
    store.set_paused("beta", "hook", true, T0).await.unwrap();
    store.take_hints();
    store.set_paused("beta", "hook", false, T0).await.unwrap();
    assert!(store.take_hints().anything, "a resume concerns anything");
}

async fn lanes_held_elsewhere_counts_other_holders_live_leases_by_domain(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for (domain, name) in [("acme", "a"), ("acme", "b"), ("acme", "c"), ("beta", "x")] {
        ids.push(
            store
                .upsert_repeater(&spec(domain, name, &[]), T0)
                .await
                .unwrap()
                .id,
        );
    }
    assert!(
        store
            .lanes_held_elsewhere(T0, HOLDER)
            .await
            .unwrap()
            .is_empty()
    );
    for (id, holder) in [
        (ids[0], "other"),
        (ids[1], "other"),
        (ids[2], HOLDER),
        (ids[3], "third"),
    ] {
        store
            .acquire_lease(id, holder, T0, TTL)
            .await
            .unwrap()
            .expect("the lease is free");
    }
    let mut held = store.lanes_held_elsewhere(T0 + 1, HOLDER).await.unwrap();
    held.sort();
    assert_eq!(held, vec![("acme".to_owned(), 2), ("beta".to_owned(), 1)]);
    // The other holders' view counts this holder's lease.
    let mut seen_by_other = store.lanes_held_elsewhere(T0 + 1, "other").await.unwrap();
    seen_by_other.sort();
    assert_eq!(
        seen_by_other,
        vec![("acme".to_owned(), 1), ("beta".to_owned(), 1)]
    );
    // Expired leases and paused repeaters do not count.
    store.set_paused("beta", "x", true, T0 + 2).await.unwrap();
    let held = store.lanes_held_elsewhere(T0 + 3, HOLDER).await.unwrap();
    assert_eq!(held, vec![("acme".to_owned(), 2)]);
    assert!(
        store
            .lanes_held_elsewhere(T0 + TTL + 1, HOLDER)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A lease under this holder's own name that it no longer knows (a lease
/// write that committed while its answer was lost to a database restart)
/// is taken again at once, with a new epoch and token that fence the old
/// one out; other holders still wait for it to expire.
async fn a_holder_takes_a_lease_it_lost_track_of_again_at_once(store: Arc<dyn Store>) {
    let id = store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap()
        .id;
    let lost = lease(&store, id, T0).await;
    assert!(
        store
            .acquire_lease(id, "other", T0 + 1, TTL)
            .await
            .unwrap()
            .is_none(),
        "another holder took a live lease"
    );
    let again = store
        .acquire_lease(id, HOLDER, T0 + 1, TTL)
        .await
        .unwrap()
        .expect("the holder takes its own lost lease again");
    assert!(again.epoch > lost.epoch);
    assert_ne!(again.token, lost.token);
    assert_renewal_lost(store.renew_lease(&lost, T0 + 2, TTL).await, &lost);
    // Giving the lost one up leaves the new one alone.
    store.release_lease(&lost).await.unwrap();
    let status = store.repeater("acme", "a").await.unwrap().unwrap();
    let held = status.lease.expect("the new lease is still held");
    assert_eq!(held.epoch, again.epoch);
}

async fn leases_bump_the_epoch_renew_and_are_taken_over_after_expiry(store: Arc<dyn Store>) {
    let id = store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap()
        .id;
    let first = lease(&store, id, T0).await;
    assert_eq!(first.expires_at, T0 + TTL);
    let status = store
        .repeater("acme", "a")
        .await
        .unwrap()
        .unwrap()
        .lease
        .unwrap();
    assert_eq!(status.holder, "test-holder");
    assert_eq!(status.epoch, first.epoch);

    // Held: nobody else gets it, not even at the last millisecond.
    assert!(
        store
            .acquire_lease(id, "other", T0 + TTL - 1, TTL)
            .await
            .unwrap()
            .is_none()
    );
    let renewed = store.renew_lease(&first, T0 + 20_000, TTL).await.unwrap();
    assert_eq!(renewed.expires_at, T0 + 20_000 + TTL);
    assert_eq!(renewed.epoch, first.epoch);
    assert!(
        store
            .acquire_lease(id, "other", T0 + TTL + 1, TTL)
            .await
            .unwrap()
            .is_none()
    );

    // Expired: taken over with a higher epoch; the old holder is fenced out.
    let takeover_at = T0 + 20_000 + TTL;
    let second = store
        .acquire_lease(id, "other", takeover_at, TTL)
        .await
        .unwrap()
        .expect("expired lease is taken over");
    assert!(second.epoch > first.epoch);
    assert_ne!(second.token, first.token);
    // A renewal keeps the epoch, so the renewed lease is the first one.
    assert_eq!((renewed.repeater_id, renewed.epoch), (id, first.epoch));
    assert_renewal_lost(
        store.renew_lease(&renewed, takeover_at, TTL).await,
        &renewed,
    );
    // Releasing a lost lease changes nothing.
    store.release_lease(&renewed).await.unwrap();
    assert!(
        store
            .acquire_lease(id, "third", takeover_at, TTL)
            .await
            .unwrap()
            .is_none()
    );
    // Releasing the held one frees the lane at once, and wakes the
    // scheduler for anything: its records may be due.
    store.take_hints();
    store.release_lease(&second).await.unwrap();
    assert!(store.take_hints().anything, "a released lane may be due");
    assert!(
        store
            .repeater("acme", "a")
            .await
            .unwrap()
            .unwrap()
            .lease
            .is_none()
    );
    let third = lease(&store, id, takeover_at).await;
    assert!(third.epoch > second.epoch);
    assert!(matches!(
        store.renew_lease(&second, takeover_at, TTL).await,
        Err(StoreError::LeaseLost { .. })
    ));

    assert!(matches!(
        store.acquire_lease(id + 1000, "x", T0, TTL).await,
        Err(StoreError::NotFound(_))
    ));
}

/// The scheduler takes the leases of a round's picks in one call, and
/// gives idle ones up in one call: lanes another holder has (or that do
/// not exist) are left out, every lease taken fences like one taken alone,
/// giving up a lease taken over since leaves the new holder's alone, and
/// giving idle ones up does not wake the scheduler that did it.
async fn leases_taken_together_skip_held_lanes_and_are_given_up_together(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    // More than one statement's worth (256), in runs of unequal sizes.
    for n in 0..300 {
        let row = store
            .upsert_repeater(&spec("acme", &format!("r{n:03}"), &[]), T0)
            .await
            .unwrap();
        ids.push(row.id);
    }
    let held_elsewhere = store
        .acquire_lease(ids[7], "other", T0, TTL)
        .await
        .unwrap()
        .expect("free lane");
    let mut wanted = ids.clone();
    wanted.push(ids.iter().max().unwrap() + 1_000);
    let leases = store
        .acquire_leases(&wanted, HOLDER, T0 + 1, TTL)
        .await
        .unwrap();
    let mut taken: Vec<i64> = leases.iter().map(|l| l.repeater_id).collect();
    taken.sort_unstable();
    let mut expected: Vec<i64> = ids.iter().copied().filter(|&id| id != ids[7]).collect();
    expected.sort_unstable();
    assert_eq!(taken, expected, "every free lane, and only those");
    let rows = store.repeaters(Some("acme")).await.unwrap();
    for lease in &leases {
        assert_eq!(lease.expires_at, T0 + 1 + TTL);
        let row = rows.iter().find(|row| row.id == lease.repeater_id).unwrap();
        let status = row.lease.as_ref().expect("leased");
        assert_eq!(
            (status.holder.as_str(), status.epoch),
            (HOLDER, lease.epoch)
        );
    }
    // Taken together, each lease still fences on its own.
    let first = leases[0].clone();
    store.renew_lease(&first, T0 + 2, TTL).await.unwrap();

    // One lease expires and is taken over; giving them all up leaves the
    // new holder's alone and frees the rest at once.
    let lost = leases[1].clone();
    let takeover_at = T0 + 1 + TTL;
    let new_holder = store
        .acquire_lease(lost.repeater_id, "other", takeover_at, TTL)
        .await
        .unwrap()
        .expect("expired lease is taken over");
    store.take_hints();
    store.release_leases(&leases).await.unwrap();
    // Idle lanes given up wake nothing here: the scheduler that gave them
    // up knows they had nothing due.
    assert_eq!(store.take_hints(), Default::default());
    let rows = store.repeaters(Some("acme")).await.unwrap();
    for row in &rows {
        let lease = row.lease.as_ref();
        if row.id == lost.repeater_id {
            let lease = lease.expect("the new holder keeps its lease");
            assert_eq!(
                (lease.holder.as_str(), lease.epoch),
                ("other", new_holder.epoch)
            );
        } else if row.id == ids[7] {
            assert_eq!(lease.expect("held elsewhere").epoch, held_elsewhere.epoch);
        } else {
            assert!(lease.is_none(), "{} still leased: {lease:?}", row.spec.name);
        }
    }
    assert!(
        store
            .acquire_leases(&[], HOLDER, takeover_at, TTL)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Many batches finishing at once (SQLite writes them in one transaction):
/// each is fenced by its own lease, a lost one writes nothing and does not
/// stop the others, each writes its own health, and a lease kept after
/// its results (`release` false) still holds for the lane's next claim.
async fn concurrent_batch_results_are_fenced_each_by_its_own_lease(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for i in 0..8 {
        let name = format!("r{i}");
        ids.push(
            store
                .upsert_repeater(&spec("acme", &name, &[]), T0)
                .await
                .unwrap()
                .id,
        );
    }
    for e in ["e0", "e1", "e2"] {
        store
            .ingest("acme", &[event(Some(e), "t")], T0)
            .await
            .unwrap();
    }
    let mut leases = Vec::new();
    let mut claims = Vec::new();
    for &id in &ids {
        let held = lease(&store, id, T0).await;
        let claimed = store.claim(&held, 10, T0).await.unwrap();
        assert_eq!(claimed.len(), 3);
        leases.push(held);
        claims.push(claimed);
    }
    // r0..r2 lose their lanes to a new holder before they write.
    let now = T0 + TTL;
    let mut fresh = Vec::new();
    for &id in &ids[..3] {
        fresh.push(lease(&store, id, now).await);
    }
    let done = |records: &[repeaterd::store::ClaimedRecord]| -> Vec<RecordOutcome> {
        (records.iter()).map(|r| succeeded_on_200(r.id)).collect()
    };
    let health = |i: usize| RepeaterHealth {
        backoff_until: None,
        backoff_step: 0,
        last_error: Some(format!("note of r{i}")),
        last_success_at: Some(now),
    };
    let mut tasks = Vec::new();
    for i in 0..8 {
        // r4 writes its results in two parts at once under one kept lease.
        let parts: Vec<Vec<RecordOutcome>> = if i == 4 {
            vec![done(&claims[i][..1]), done(&claims[i][1..])]
        } else {
            vec![done(&claims[i])]
        };
        for outcomes in parts {
            let (store, held) = (store.clone(), leases[i].clone());
            let health = (i % 2 == 0).then(|| health(i));
            // Odd lanes and r4 keep their leases.
            let release = i % 2 == 0 && i != 4;
            tasks.push(tokio::spawn(async move {
                let result = store
                    .finish_batch(&held, &outcomes, health.as_ref(), release, now)
                    .await;
                (i, result)
            }));
        }
    }
    for task in tasks {
        let (i, result) = task.await.unwrap();
        if i < 3 {
            assert!(
                matches!(result, Err(StoreError::LeaseLost { .. })),
                "r{i}: {result:?}"
            );
        } else {
            result.unwrap_or_else(|error| panic!("r{i} writes its results: {error}"));
        }
    }
    for i in 0..8 {
        let name = format!("r{i}");
        let row = store.repeater("acme", &name).await.unwrap().unwrap();
        for record in &claims[i] {
            let (record, attempts) = store.record("acme", record.id).await.unwrap().unwrap();
            if i < 3 {
                assert_eq!(record.state, RecordState::Pending, "{name}");
                assert!(attempts.is_empty(), "{name}");
            } else {
                assert_eq!(record.state, RecordState::Succeeded, "{name}");
                assert_eq!(attempts.len(), 1, "{name}");
            }
        }
        let wrote_health = i >= 3 && i % 2 == 0;
        let note = wrote_health.then(|| format!("note of r{i}"));
        assert_eq!(row.last_error, note, "{name}");
        let lease = row.lease.as_ref();
        match i {
            0..3 => assert_eq!(lease.map(|l| l.epoch), Some(fresh[i].epoch), "{name}"),
            3..=5 | 7 => {
                assert_eq!(lease.map(|l| l.epoch), Some(leases[i].epoch), "{name} kept");
                // The kept lease still fences the lane's next claim.
                let again = store.claim(&leases[i], 10, now).await.unwrap();
                assert!(again.is_empty(), "{name}: everything was delivered");
            }
            _ => assert!(lease.is_none(), "{name} released"),
        }
    }
}

async fn finish_batch_with_a_stale_epoch_writes_nothing(store: Arc<dyn Store>) {
    let id = store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap()
        .id;
    store
        .ingest("acme", &[event(Some("e"), "t")], T0)
        .await
        .unwrap();
    let stale = lease(&store, id, T0).await;
    let claimed = store.claim(&stale, 10, T0).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let fresh = lease(&store, id, T0 + TTL).await;

    let outcome = succeeded_on_200(claimed[0].id);
    let health = RepeaterHealth {
        backoff_until: Some(T0 + 99_999),
        backoff_step: 3,
        last_error: Some("stale".into()),
        last_success_at: Some(T0),
    };
    let result = store
        .finish_batch(
            &stale,
            std::slice::from_ref(&outcome),
            Some(&health),
            true,
            T0 + TTL,
        )
        .await;
    assert!(
        matches!(result, Err(StoreError::LeaseLost { .. })),
        "{result:?}"
    );
    let (row, attempts) = store.record("acme", claimed[0].id).await.unwrap().unwrap();
    assert_eq!(row.state, RecordState::Pending);
    assert_eq!(row.attempts, 0);
    assert!(attempts.is_empty());
    let repeater = store.repeater("acme", "a").await.unwrap().unwrap();
    assert_eq!(repeater.backoff_step, 0);
    assert_eq!(repeater.last_error, None);
    assert_eq!(repeater.lease.unwrap().epoch, fresh.epoch);

    // The new holder reads the same record again and its write lands.
    let again = store.claim(&fresh, 10, T0 + TTL).await.unwrap();
    assert_eq!(again[0].id, claimed[0].id);
    store
        .finish_batch(&fresh, &[outcome], None, true, T0 + TTL)
        .await
        .unwrap();
    assert_eq!(
        state_of(&store, "acme", claimed[0].id).await,
        RecordState::Succeeded
    );
    // A claim under a lost lease says so.
    assert!(matches!(
        store.claim(&stale, 10, T0 + TTL).await,
        Err(StoreError::LeaseLost { .. })
    ));
}

async fn claim_returns_due_records_oldest_first_with_their_events(store: Arc<dyn Store>) {
    let id = store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap()
        .id;
    let mut keyed = event(Some("e0"), "case.created");
    keyed.ordering_key = Some("case-7".into());
    keyed.payload = b"\x00binary\xff".to_vec();
    keyed.content_type = "application/octet-stream".into();
    store.ingest("acme", &[keyed], T0).await.unwrap();
    store
        .ingest("acme", &[event(Some("e1"), "t")], T0 + 1)
        .await
        .unwrap();
    store
        .ingest("acme", &[event(Some("e2"), "t")], T0 + 2)
        .await
        .unwrap();
    store
        .ingest("acme", &[event(Some("e3"), "t")], T0 + 50)
        .await
        .unwrap();

    let held = lease(&store, id, T0 + 10).await;
    let claimed = store.claim(&held, 2, T0 + 10).await.unwrap();
    let keys: Vec<&str> = claimed.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(keys, vec!["e0", "e1"]);
    let first = &claimed[0];
    assert_eq!(first.payload, b"\x00binary\xff");
    assert_eq!(first.content_type, "application/octet-stream");
    assert_eq!(first.event_type, "case.created");
    assert_eq!(first.ordering_key.as_deref(), Some("case-7"));
    assert_eq!(first.registered_at, T0);
    assert_eq!(first.age_origin, T0);
    assert_eq!(first.attempts, 0);

    // Claiming marks nothing: the same records come back; e3 is not yet due.
    let all = store.claim(&held, 10, T0 + 10).await.unwrap();
    let keys: Vec<&str> = all.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(keys, vec!["e0", "e1", "e2"]);

    // A retry pushed into the future goes behind records due earlier.
    store
        .finish_batch(
            &held,
            &[RecordOutcome {
                record_id: all[0].id,
                state: RecordState::Retrying,
                next_attempt_at: Some(T0 + 60),
                attempt: Some(attempt(
                    AttemptOutcome::Retry,
                    None,
                    Some("connection refused"),
                )),
            }],
            None,
            false,
            T0 + 10,
        )
        .await
        .unwrap();
    let later = store.claim(&held, 10, T0 + 100).await.unwrap();
    let keys: Vec<&str> = later.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(keys, vec!["e1", "e2", "e3", "e0"]);
    assert_eq!(later[3].attempts, 1);
}

async fn outcomes_update_records_and_write_attempts(store: Arc<dyn Store>) {
    let id = store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap()
        .id;
    let events: Vec<NewEvent> = (0..5).map(|i| event(Some(&format!("e{i}")), "t")).collect();
    store.ingest("acme", &events, T0).await.unwrap();
    let held = lease(&store, id, T0).await;
    let claimed = store.claim(&held, 10, T0).await.unwrap();
    assert_eq!(claimed.len(), 5);
    let now = T0 + 100;
    let outcomes = vec![
        succeeded_on_200(claimed[0].id),
        RecordOutcome {
            record_id: claimed[1].id,
            state: RecordState::Retrying,
            next_attempt_at: Some(now + 5_000),
            attempt: Some(attempt(AttemptOutcome::Retry, Some(503), None)),
        },
        RecordOutcome {
            record_id: claimed[2].id,
            state: RecordState::Rejected,
            next_attempt_at: None,
            attempt: Some(attempt(
                AttemptOutcome::Reject,
                None,
                Some("plugin rejected: no email"),
            )),
        },
        RecordOutcome {
            record_id: claimed[3].id,
            state: RecordState::Empty,
            next_attempt_at: None,
            attempt: Some(attempt(AttemptOutcome::Skip, None, None)),
        },
        // A skipped turn: not an attempt, the record stays due.
        RecordOutcome {
            record_id: claimed[4].id,
            state: RecordState::Pending,
            next_attempt_at: Some(now + 1),
            attempt: None,
        },
    ];
    let health = RepeaterHealth {
        backoff_until: None,
        backoff_step: 0,
        last_error: None,
        last_success_at: Some(now),
    };
    store
        .finish_batch(&held, &outcomes, Some(&health), true, now)
        .await
        .unwrap();

    let (row, attempts) = store.record("acme", claimed[0].id).await.unwrap().unwrap();
    assert_eq!(
        (row.state, row.attempts, row.next_attempt_at),
        (RecordState::Succeeded, 1, None)
    );
    assert_eq!(row.updated_at, now);
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status, Some(200));
    assert_eq!(attempts[0].outcome, AttemptOutcome::Success);
    assert_eq!(attempts[0].duration_ms, 42);
    assert_eq!(attempts[0].started_at, T0 + 10);
    assert_eq!(attempts[0].response_excerpt.as_deref(), Some("reply 200"));
    assert_eq!(attempts[0].plugin_sha256.as_deref(), Some(PLUGIN_SHA));
    assert_eq!(attempts[0].request, Some(sent_request()));

    let (row, attempts) = store.record("acme", claimed[1].id).await.unwrap().unwrap();
    assert_eq!(row.state, RecordState::Retrying);
    assert_eq!(row.attempts, 1);
    assert_eq!(row.next_attempt_at, Some(now + 5_000));
    assert_eq!(row.last_error.as_deref(), Some("HTTP status 503"));
    assert_eq!(attempts[0].outcome, AttemptOutcome::Retry);

    let (row, attempts) = store.record("acme", claimed[2].id).await.unwrap().unwrap();
    assert_eq!(row.state, RecordState::Rejected);
    assert_eq!(row.last_error.as_deref(), Some("plugin rejected: no email"));
    assert_eq!(
        attempts[0].error.as_deref(),
        Some("plugin rejected: no email")
    );
    assert_eq!(attempts[0].status, None);

    assert_eq!(
        state_of(&store, "acme", claimed[3].id).await,
        RecordState::Empty
    );
    let (row, attempts) = store.record("acme", claimed[4].id).await.unwrap().unwrap();
    assert_eq!((row.state, row.attempts), (RecordState::Pending, 0));
    assert_eq!(row.next_attempt_at, Some(now + 1));
    assert!(attempts.is_empty());

    let repeater = store.repeater("acme", "a").await.unwrap().unwrap();
    assert_eq!(repeater.last_success_at, Some(now));
    assert!(repeater.lease.is_none(), "release = true frees the lane");

    // A second attempt of the retrying record is appended, oldest first.
    let held = lease(&store, id, now + 5_000).await;
    store
        .finish_batch(
            &held,
            &[RecordOutcome {
                record_id: claimed[1].id,
                state: RecordState::Cancelled,
                next_attempt_at: None,
                attempt: Some(attempt(AttemptOutcome::Retry, None, Some("timed out"))),
            }],
            Some(&RepeaterHealth {
                backoff_until: Some(now + 35_000),
                backoff_step: 1,
                last_error: Some("timed out".into()),
                last_success_at: None,
            }),
            false,
            now + 5_000,
        )
        .await
        .unwrap();
    let (row, attempts) = store.record("acme", claimed[1].id).await.unwrap().unwrap();
    assert_eq!((row.state, row.attempts), (RecordState::Cancelled, 2));
    assert_eq!(attempts.len(), 2);
    assert!(attempts[0].id < attempts[1].id);
    assert_eq!(attempts[1].error.as_deref(), Some("timed out"));
    let repeater = store.repeater("acme", "a").await.unwrap().unwrap();
    assert_eq!(repeater.backoff_until, Some(now + 35_000));
    assert_eq!(repeater.backoff_step, 1);
    assert_eq!(repeater.last_error.as_deref(), Some("timed out"));
    assert_eq!(
        repeater.last_success_at,
        Some(now),
        "kept when the batch had none"
    );
    assert!(repeater.lease.is_some(), "release = false keeps the lane");
}

// --- records -------------------------------------------------------------

async fn resend_and_cancel_follow_the_record_rules(store: Arc<dyn Store>) {
    let id = store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap()
        .id;
    store
        .ingest(
            "acme",
            &[event(Some("e0"), "t"), event(Some("e1"), "t")],
            T0,
        )
        .await
        .unwrap();
    let held = lease(&store, id, T0).await;
    let claimed = store.claim(&held, 10, T0).await.unwrap();
    store
        .finish_batch(&held, &[succeeded_on_200(claimed[0].id)], None, true, T0)
        .await
        .unwrap();

    // Resend: back to pending, due now, count and age restart, history kept.
    assert!(
        store
            .resend("acme", claimed[0].id, T0 + 1_000)
            .await
            .unwrap()
    );
    let (row, attempts) = store.record("acme", claimed[0].id).await.unwrap().unwrap();
    assert_eq!((row.state, row.attempts), (RecordState::Pending, 0));
    assert_eq!(row.next_attempt_at, Some(T0 + 1_000));
    assert_eq!(attempts.len(), 1);
    let held = lease(&store, id, T0 + 1_000).await;
    let again = store.claim(&held, 10, T0 + 1_000).await.unwrap();
    let resent = again.iter().find(|r| r.id == claimed[0].id).unwrap();
    assert_eq!(resent.age_origin, T0 + 1_000);
    store.release_lease(&held).await.unwrap();

    // Cancel: only unfinished records; a second cancel is refused.
    assert!(
        store
            .cancel("acme", claimed[1].id, T0 + 2_000)
            .await
            .unwrap()
    );
    assert_eq!(
        state_of(&store, "acme", claimed[1].id).await,
        RecordState::Cancelled
    );
    assert_eq!(
        (store.cancel("acme", claimed[1].id, T0 + 2_000).await)
            .unwrap_err()
            .kind(),
        ErrorKind::Conflict
    );
    // Unknown ids, and ids of another domain, are not found.
    assert!(!store.cancel("acme", 999_999, T0).await.unwrap());
    assert!(!store.resend("acme", 999_999, T0).await.unwrap());
    assert!(!store.resend("other", claimed[0].id, T0).await.unwrap());
    assert!(
        store
            .record("other", claimed[0].id)
            .await
            .unwrap()
            .is_none()
    );
}

async fn failures_are_grouped_by_last_error_and_acted_on_by_group(store: Arc<dyn Store>) {
    let id = store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap()
        .id;
    let events: Vec<NewEvent> = (0..6).map(|i| event(Some(&format!("f{i}")), "t")).collect();
    store.ingest("acme", &events, T0).await.unwrap();
    let held = lease(&store, id, T0).await;
    let claimed = store.claim(&held, 10, T0).await.unwrap();
    let failed = |i: usize, state, error: &str, at: i64| RecordOutcome {
        record_id: claimed[i].id,
        state,
        next_attempt_at: (state == RecordState::Retrying).then_some(at + 60_000),
        attempt: Some(attempt(AttemptOutcome::Retry, None, Some(error))),
    };
    let outcomes = vec![
        failed(0, RecordState::Retrying, "HTTP status 503", T0),
        failed(1, RecordState::Retrying, "HTTP status 503", T0),
        failed(2, RecordState::Rejected, "HTTP status 503", T0),
        failed(3, RecordState::Rejected, "plugin rejected: no email", T0),
        failed(4, RecordState::Retrying, "timed out", T0),
        succeeded_on_200(claimed[5].id),
    ];
    store
        .finish_batch(&held, &outcomes, None, true, T0 + 100)
        .await
        .unwrap();

    let counts = store.unfinished_counts(Some("acme")).await.unwrap();
    assert_eq!(
        counts
            .iter()
            .map(|c| (c.name.as_str(), c.pending, c.retrying))
            .collect::<Vec<_>>(),
        [("a", 0, 3)]
    );
    store
        .upsert_repeater(&spec("globex", "b", &[]), T0)
        .await
        .unwrap();
    store
        .ingest("globex", &[event(Some("g"), "t")], T0)
        .await
        .unwrap();
    let all = store.unfinished_counts(None).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|c| (c.domain.as_str(), c.pending, c.retrying))
            .collect::<Vec<_>>(),
        [("acme", 0, 3), ("globex", 1, 0)]
    );

    let groups = store.failure_groups("acme", "a", 10).await.unwrap();
    let summary: Vec<(&str, i64, i64)> = groups
        .iter()
        .map(|g| (g.error.as_str(), g.count, g.retrying))
        .collect();
    assert_eq!(
        summary,
        [
            ("HTTP status 503", 3, 2),
            ("plugin rejected: no email", 1, 0),
            ("timed out", 1, 1)
        ],
        "largest group first, then by error"
    );
    assert_eq!(groups[0].sample_id, claimed[2].id, "the newest as sample");
    assert_eq!(
        (groups[0].first_seen, groups[0].last_seen),
        (T0 + 100, T0 + 100)
    );
    assert_eq!(store.failure_groups("acme", "a", 1).await.unwrap().len(), 1);
    assert!(
        store
            .failure_groups("acme", "nope", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .failure_groups("other", "a", 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Cancel reaches only the group's retrying records; resend reaches
    // retrying and rejected ones, and only this group's.
    let cancelled = store
        .cancel_failures("acme", "a", "HTTP status 503", T0 + 200)
        .await
        .unwrap();
    assert_eq!(cancelled, 2);
    assert_eq!(
        state_of(&store, "acme", claimed[0].id).await,
        RecordState::Cancelled
    );
    assert_eq!(
        state_of(&store, "acme", claimed[2].id).await,
        RecordState::Rejected
    );
    let resent = store
        .resend_failures("acme", "a", "plugin rejected: no email", T0 + 300)
        .await
        .unwrap();
    assert_eq!(resent, 1);
    let (row, attempts) = store.record("acme", claimed[3].id).await.unwrap().unwrap();
    assert_eq!((row.state, row.attempts), (RecordState::Pending, 0));
    assert_eq!(row.next_attempt_at, Some(T0 + 300));
    assert_eq!(attempts.len(), 1, "the history is kept");
    assert_eq!(
        state_of(&store, "acme", claimed[4].id).await,
        RecordState::Retrying
    );
    assert_eq!(
        store
            .resend_failures("other", "a", "timed out", T0 + 300)
            .await
            .unwrap(),
        0,
        "another domain's name reaches nothing"
    );
    assert_eq!(
        state_of(&store, "acme", claimed[5].id).await,
        RecordState::Succeeded
    );
}

async fn records_in_a_state_are_resent_or_cancelled_in_bulk(store: Arc<dyn Store>) {
    let a = store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap()
        .id;
    let b = store
        .upsert_repeater(&spec("acme", "b", &["b.only"]), T0)
        .await
        .unwrap()
        .id;
    let elsewhere = store
        .upsert_repeater(&spec("globex", "a", &[]), T0)
        .await
        .unwrap()
        .id;
    // More than two batches' worth, so the walk crosses batch boundaries.
    let many = 2 * BULK_BATCH as usize + 1;
    let events: Vec<NewEvent> = (0..many)
        .map(|i| event(Some(&format!("e{i}")), "t"))
        .collect();
    for chunk in events.chunks(250) {
        store.ingest("acme", chunk, T0).await.unwrap();
    }
    store
        .ingest("acme", &[event(Some("both"), "b.only")], T0)
        .await
        .unwrap();
    store
        .ingest("globex", &[event(Some("g"), "t")], T0)
        .await
        .unwrap();
    let total = many as i64 + 1;
    let backlog = |id: i64| {
        let store = store.clone();
        async move { store.backlog(id).await.unwrap() }
    };

    // Cancel every pending record of acme/a: no other repeater's.
    let cancelled = store
        .cancel_in_state("acme", "a", RecordState::Pending, T0 + 100)
        .await
        .unwrap();
    assert_eq!(cancelled, total as u64);
    let counts = backlog(a).await;
    assert_eq!((counts.pending, counts.cancelled), (0, total));
    assert_eq!(
        backlog(b).await.pending,
        1,
        "another repeater's records stay"
    );
    assert_eq!(backlog(elsewhere).await.pending, 1, "another domain's stay");
    let rows = all_records(&store, "acme").await;
    let of_a: Vec<_> = rows.iter().filter(|r| r.repeater == "a").collect();
    assert!(of_a.iter().all(|r| r.state == RecordState::Cancelled
        && r.next_attempt_at.is_none()
        && r.updated_at == T0 + 100));
    assert!(
        store
            .ready_repeaters(T0 + 100, OTHER)
            .await
            .unwrap()
            .iter()
            .all(|r| r.id != a),
        "a has nothing left to send"
    );

    // Resend every cancelled one: pending again, due now.
    let resent = store
        .resend_in_state("acme", "a", RecordState::Cancelled, T0 + 200)
        .await
        .unwrap();
    assert_eq!(resent, total as u64);
    assert_eq!(backlog(a).await.pending, total);
    let rows = all_records(&store, "acme").await;
    assert!(
        rows.iter()
            .filter(|r| r.repeater == "a")
            .all(|r| r.state == RecordState::Pending
                && r.attempts == 0
                && r.next_attempt_at == Some(T0 + 200))
    );
    assert!(
        store
            .ready_repeaters(T0 + 200, OTHER)
            .await
            .unwrap()
            .iter()
            .any(|r| r.id == a)
    );

    // Failed records: resend keeps the attempt history and restarts the
    // count, as a single resend does; cancel reaches only its state.
    let held = lease(&store, a, T0 + 200).await;
    let c = store.claim(&held, 3, T0 + 200).await.unwrap();
    let outcome = |i: usize, state, next| RecordOutcome {
        record_id: c[i].id,
        state,
        next_attempt_at: next,
        attempt: Some(attempt(AttemptOutcome::Retry, Some(500), Some("HTTP 500"))),
    };
    store
        .finish_batch(
            &held,
            &[
                outcome(0, RecordState::Retrying, Some(T0 + 60_000)),
                outcome(1, RecordState::Rejected, None),
                succeeded_on_200(c[2].id),
            ],
            None,
            true,
            T0 + 300,
        )
        .await
        .unwrap();
    let resent = store
        .resend_in_state("acme", "a", RecordState::Rejected, T0 + 400)
        .await
        .unwrap();
    assert_eq!(resent, 1);
    let (row, attempts) = store.record("acme", c[1].id).await.unwrap().unwrap();
    assert_eq!((row.state, row.attempts), (RecordState::Pending, 0));
    assert_eq!(row.next_attempt_at, Some(T0 + 400));
    assert_eq!(attempts.len(), 1, "the history is kept");
    assert_eq!(
        store
            .cancel_in_state("acme", "a", RecordState::Retrying, T0 + 500)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        state_of(&store, "acme", c[0].id).await,
        RecordState::Cancelled
    );

    // Finished records cannot be cancelled; nothing changes.
    for state in [
        RecordState::Succeeded,
        RecordState::Rejected,
        RecordState::Empty,
        RecordState::Cancelled,
    ] {
        let refused = store
            .cancel_in_state("acme", "a", state, T0 + 600)
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::InvalidInput, "{state}");
        assert!(refused.to_string().contains(state.as_str()), "{refused}");
    }
    assert_eq!(
        state_of(&store, "acme", c[2].id).await,
        RecordState::Succeeded
    );
    // Any state can be resent, succeeded ones included; an empty state
    // moves nothing.
    assert_eq!(
        store
            .resend_in_state("acme", "a", RecordState::Succeeded, T0 + 700)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .resend_in_state("acme", "a", RecordState::Empty, T0 + 700)
            .await
            .unwrap(),
        0
    );

    // Unknown repeaters, and names of another domain, are not found.
    for (domain, name) in [("acme", "nope"), ("globex", "b")] {
        let missing = store
            .resend_in_state(domain, name, RecordState::Pending, T0)
            .await
            .unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound, "{domain}/{name}");
        assert!(missing.to_string().contains(&format!("{domain}/{name}")));
        let missing = store
            .cancel_in_state(domain, name, RecordState::Pending, T0)
            .await
            .unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound, "{domain}/{name}");
    }
    assert_eq!(backlog(b).await.pending, 1);
    assert_eq!(backlog(elsewhere).await.pending, 1);
}

async fn payload_previews_show_the_event_and_its_size(store: Arc<dyn Store>) {
    store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap();
    let big = "x".repeat(PayloadPreview::MAX_BYTES + 10);
    let events = [
        NewEvent {
            ordering_key: Some("patient-7".into()),
            ..event(Some("small"), "t")
        },
        NewEvent {
            payload: big.clone().into_bytes(),
            content_type: "text/plain".into(),
            ..event(Some("big"), "t")
        },
    ];
    let ingested = store.ingest("acme", &events, T0).await.unwrap();
    let small = store
        .payload("acme", ingested[0].records[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(small.bytes, br#"{"type":"t"}"#);
    assert_eq!(small.total_bytes, small.bytes.len() as i64);
    assert_eq!(small.content_type, "application/json");
    assert_eq!(small.ordering_key.as_deref(), Some("patient-7"));
    let large = store
        .payload("acme", ingested[1].records[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(large.bytes.len(), PayloadPreview::MAX_BYTES);
    assert_eq!(large.total_bytes, big.len() as i64);
    assert!(
        store
            .payload("other", ingested[0].records[0].id)
            .await
            .unwrap()
            .is_none()
    );
}

async fn requeue_and_pause_act_on_the_repeater(store: Arc<dyn Store>) {
    let id = store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap()
        .id;
    let events: Vec<NewEvent> = (0..4).map(|i| event(Some(&format!("e{i}")), "t")).collect();
    store.ingest("acme", &events, T0).await.unwrap();
    let held = lease(&store, id, T0).await;
    let c = store.claim(&held, 10, T0).await.unwrap();
    let outcome = |i: usize, state, next| RecordOutcome {
        record_id: c[i].id,
        state,
        next_attempt_at: next,
        attempt: Some(attempt(AttemptOutcome::Retry, Some(500), None)),
    };
    store
        .finish_batch(
            &held,
            &[
                outcome(0, RecordState::Retrying, Some(T0 + 60_000)),
                outcome(1, RecordState::Cancelled, None),
                outcome(2, RecordState::Succeeded, None),
            ],
            Some(&RepeaterHealth {
                backoff_until: Some(T0 + 60_000),
                backoff_step: 2,
                last_error: Some("HTTP status 500".into()),
                last_success_at: None,
            }),
            true,
            T0,
        )
        .await
        .unwrap();
    assert!(
        store
            .ready_repeaters(T0 + 1, OTHER)
            .await
            .unwrap()
            .is_empty()
    );

    assert_eq!(store.requeue("acme", "a", T0 + 1).await.unwrap(), 2);
    for i in [0, 1] {
        let (row, _) = store.record("acme", c[i].id).await.unwrap().unwrap();
        assert_eq!((row.state, row.attempts), (RecordState::Pending, 0));
        assert_eq!(row.next_attempt_at, Some(T0 + 1));
    }
    assert_eq!(
        state_of(&store, "acme", c[2].id).await,
        RecordState::Succeeded
    );
    assert_eq!(
        state_of(&store, "acme", c[3].id).await,
        RecordState::Pending
    );
    let repeater = store.repeater("acme", "a").await.unwrap().unwrap();
    assert_eq!((repeater.backoff_until, repeater.backoff_step), (None, 0));
    assert_eq!(store.ready_repeaters(T0 + 1, OTHER).await.unwrap().len(), 1);
    assert!(matches!(
        store.requeue("acme", "missing", T0).await,
        Err(StoreError::NotFound(_))
    ));

    // Pause keeps records as they are and takes the repeater off the schedule.
    assert!(store.set_paused("acme", "a", true, T0 + 2).await.unwrap());
    assert!(store.repeater("acme", "a").await.unwrap().unwrap().paused);
    assert!(
        store
            .ready_repeaters(T0 + 2, OTHER)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        state_of(&store, "acme", c[3].id).await,
        RecordState::Pending
    );
    assert!(store.set_paused("acme", "a", false, T0 + 3).await.unwrap());
    assert_eq!(store.ready_repeaters(T0 + 3, OTHER).await.unwrap().len(), 1);
    assert!(!store.set_paused("acme", "missing", true, T0).await.unwrap());
}

/// Each post sees the repeaters as they are when it is stored: added,
/// changed and deleted ones between two posts to one domain.
async fn ingest_follows_repeater_changes_between_posts(store: Arc<dyn Store>) {
    let repeaters_of = |answers: Vec<repeaterd::store::Ingested>| -> Vec<String> {
        let mut names: Vec<String> = (answers.into_iter())
            .flat_map(|answer| answer.records.into_iter().map(|r| r.repeater))
            .collect();
        names.sort();
        names
    };
    let post = |id: &'static str, event_type: &'static str| {
        let store = store.clone();
        async move {
            let answers = store
                .ingest("acme", &[event(Some(id), event_type)], T0)
                .await
                .unwrap();
            repeaters_of(answers)
        }
    };
    assert!(post("e0", "t").await.is_empty(), "no repeater yet");
    store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap();
    assert_eq!(post("e1", "t").await, ["a"]);
    store
        .upsert_repeater(&spec("acme", "b", &["x"]), T0)
        .await
        .unwrap();
    assert_eq!(post("e2", "x").await, ["a", "b"]);
    assert_eq!(post("e3", "y").await, ["a"]);
    // A changed subscription counts from the next post.
    store
        .upsert_repeater(&spec("acme", "b", &[]), T0)
        .await
        .unwrap();
    assert_eq!(post("e4", "y").await, ["a", "b"]);
    assert!(store.delete_repeater("acme", "a", T0).await.unwrap());
    assert_eq!(post("e5", "y").await, ["b"]);
    // Another domain's repeaters are its own.
    store
        .upsert_repeater(&spec("other", "c", &[]), T0)
        .await
        .unwrap();
    assert_eq!(post("e6", "y").await, ["b"]);
}

async fn delete_repeater_cancels_unfinished_records(store: Arc<dyn Store>) {
    let id = store
        .upsert_repeater(&spec("acme", "gone", &[]), T0)
        .await
        .unwrap()
        .id;
    store
        .upsert_repeater(&spec("acme", "stays", &[]), T0)
        .await
        .unwrap();
    store
        .ingest(
            "acme",
            &[event(Some("e0"), "t"), event(Some("e1"), "t")],
            T0,
        )
        .await
        .unwrap();
    let held = lease(&store, id, T0).await;
    let claimed = store.claim(&held, 10, T0).await.unwrap();
    store
        .finish_batch(&held, &[succeeded_on_200(claimed[0].id)], None, true, T0)
        .await
        .unwrap();

    assert!(store.delete_repeater("acme", "gone", T0 + 1).await.unwrap());
    assert!(store.repeater("acme", "gone").await.unwrap().is_none());
    assert!(!store.delete_repeater("acme", "gone", T0 + 1).await.unwrap());
    let (succeeded, _) = store.record("acme", claimed[0].id).await.unwrap().unwrap();
    assert_eq!(succeeded.state, RecordState::Succeeded);
    let (cancelled, _) = store.record("acme", claimed[1].id).await.unwrap().unwrap();
    assert_eq!(cancelled.state, RecordState::Cancelled);
    assert_eq!(
        cancelled.repeater, "gone",
        "listing keeps the deleted repeater's name"
    );
    assert_eq!(cancelled.next_attempt_at, None);
    assert_eq!(
        (store.resend("acme", claimed[1].id, T0 + 2).await)
            .unwrap_err()
            .kind(),
        ErrorKind::Conflict
    );
    // The other repeater's records are untouched, and only it is ready.
    let ready = store.ready_repeaters(T0 + 2, OTHER).await.unwrap();
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].name, "stays");
    assert_eq!(store.backlog(ready[0].id).await.unwrap().pending, 2);

    // A new repeater of the same name starts empty.
    let again = store
        .upsert_repeater(&spec("acme", "gone", &[]), T0 + 3)
        .await
        .unwrap();
    assert_ne!(again.id, id);
    assert_eq!(store.backlog(again.id).await.unwrap(), Default::default());
}

async fn purge_terminal_deletes_only_old_terminal_records_in_batches(store: Arc<dyn Store>) {
    let id = store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap()
        .id;
    let events: Vec<NewEvent> = (0..6).map(|i| event(Some(&format!("e{i}")), "t")).collect();
    store.ingest("acme", &events, T0).await.unwrap();
    let held = lease(&store, id, T0).await;
    let c = store.claim(&held, 10, T0).await.unwrap();
    let done = |i: usize| succeeded_on_200(c[i].id);
    // Records 0-2 finish at T0 + 1000, record 3 at T0 + 9000; 4 retries; 5 waits.
    store
        .finish_batch(&held, &[done(0), done(1), done(2)], None, false, T0 + 1_000)
        .await
        .unwrap();
    store
        .finish_batch(&held, &[done(3)], None, false, T0 + 9_000)
        .await
        .unwrap();
    store
        .finish_batch(
            &held,
            &[RecordOutcome {
                record_id: c[4].id,
                state: RecordState::Retrying,
                next_attempt_at: Some(T0 + 99_000),
                attempt: Some(attempt(AttemptOutcome::Retry, Some(500), None)),
            }],
            None,
            true,
            T0 + 1_000,
        )
        .await
        .unwrap();

    assert_eq!(store.purge_terminal(T0 + 5_000, 2).await.unwrap(), 2);
    assert_eq!(store.purge_terminal(T0 + 5_000, 2).await.unwrap(), 1);
    assert_eq!(store.purge_terminal(T0 + 5_000, 2).await.unwrap(), 0);
    for purged in &c[..3] {
        assert!(store.record("acme", purged.id).await.unwrap().is_none());
    }
    let left: Vec<i64> = all_records(&store, "acme")
        .await
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, vec![c[3].id, c[4].id, c[5].id]);
    let (_, attempts) = store.record("acme", c[4].id).await.unwrap().unwrap();
    assert_eq!(attempts.len(), 1, "unfinished records keep their attempts");

    // The purged events went with their records: their ids are new again,
    // and new record ids never reuse purged ones.
    let again = store
        .ingest("acme", &[event(Some("e0"), "t")], T0 + 10_000)
        .await
        .unwrap();
    assert!(again[0].created);
    assert!(again[0].records[0].id > c[5].id);
    let kept = store
        .ingest("acme", &[event(Some("e3"), "t")], T0 + 10_000)
        .await
        .unwrap();
    assert!(!kept[0].created);
}

async fn purge_unrouted_events_deletes_old_events_no_repeater_took(store: Arc<dyn Store>) {
    store
        .upsert_repeater(&spec("acme", "a", &["t"]), T0)
        .await
        .unwrap();
    // In id order: one routed event, three that no repeater takes, and a
    // fourth unrouted one that is still within retention.
    let routed = store
        .ingest("acme", &[event(Some("r0"), "t")], T0)
        .await
        .unwrap();
    assert_eq!(routed[0].records.len(), 1);
    for key in ["n0", "n1", "n2"] {
        let unrouted = store
            .ingest("acme", &[event(Some(key), "other")], T0)
            .await
            .unwrap();
        assert!(unrouted[0].records.is_empty());
    }
    store
        .ingest("acme", &[event(Some("n3"), "other")], T0 + 10_000)
        .await
        .unwrap();

    let before = T0 + 5_000;
    let first = store.purge_unrouted_events(before, 0, 2).await.unwrap();
    assert_eq!(first.deleted, 1, "r0 has a record and stays; n0 goes");
    assert!(!first.caught_up);
    let second = store
        .purge_unrouted_events(before, first.scanned_to, 2)
        .await
        .unwrap();
    assert_eq!(second.deleted, 2, "n1 and n2 go");
    assert!(second.scanned_to > first.scanned_to);
    let third = store
        .purge_unrouted_events(before, second.scanned_to, 2)
        .await
        .unwrap();
    assert_eq!(
        third,
        EventSweep {
            deleted: 0,
            scanned_to: second.scanned_to,
            caught_up: true
        },
        "the scan stops at n3, which is within retention"
    );

    // The purged ids are new again; the routed event and the recent one stay.
    let created = |key: &'static str| {
        let store = store.clone();
        async move {
            store
                .ingest("acme", &[event(Some(key), "other")], T0 + 20_000)
                .await
                .unwrap()[0]
                .created
        }
    };
    for key in ["n0", "n1", "n2"] {
        assert!(created(key).await, "{key} was purged");
    }
    assert!(!created("r0").await, "r0 has a record");
    assert!(!created("n3").await, "n3 is within retention");
}

async fn next_wakeup_reports_the_earliest_due_time(store: Arc<dyn Store>) {
    assert_eq!(store.next_wakeup(T0, OTHER).await.unwrap(), None);
    let a = store
        .upsert_repeater(&spec("acme", "a", &["t"]), T0)
        .await
        .unwrap()
        .id;
    let b = store
        .upsert_repeater(&spec("acme", "b", &["only-b"]), T0)
        .await
        .unwrap()
        .id;
    assert_eq!(
        store.next_wakeup(T0, OTHER).await.unwrap(),
        None,
        "no records, nothing to wait for"
    );
    store
        .ingest("acme", &[event(Some("e0"), "t")], T0)
        .await
        .unwrap();
    store
        .ingest("acme", &[event(Some("e1"), "only-b")], T0)
        .await
        .unwrap();

    // a: retry at T0 + 7000.  b: backed off until T0 + 4000.
    let held = lease(&store, a, T0).await;
    let claimed = store.claim(&held, 10, T0).await.unwrap();
    store
        .finish_batch(
            &held,
            &[RecordOutcome {
                record_id: claimed[0].id,
                state: RecordState::Retrying,
                next_attempt_at: Some(T0 + 7_000),
                attempt: Some(attempt(AttemptOutcome::Retry, Some(500), None)),
            }],
            None,
            true,
            T0,
        )
        .await
        .unwrap();
    let held = lease(&store, b, T0).await;
    store
        .finish_batch(
            &held,
            &[],
            Some(&RepeaterHealth {
                backoff_until: Some(T0 + 4_000),
                backoff_step: 1,
                last_error: None,
                last_success_at: None,
            }),
            true,
            T0,
        )
        .await
        .unwrap();
    assert_eq!(
        store.next_wakeup(T0, OTHER).await.unwrap(),
        Some(T0 + 4_000)
    );
    store.set_paused("acme", "b", true, T0).await.unwrap();
    assert_eq!(
        store.next_wakeup(T0, OTHER).await.unwrap(),
        Some(T0 + 7_000)
    );
    // A held lease delays its repeater until it expires.
    lease(&store, a, T0).await;
    assert_eq!(store.next_wakeup(T0, OTHER).await.unwrap(), Some(T0 + TTL));
    // ... except for its own holder.
    assert_eq!(
        store.next_wakeup(T0, HOLDER).await.unwrap(),
        Some(T0 + 7_000)
    );
    // Something already due reports "now", never a time in the past.
    assert_eq!(
        store.next_wakeup(T0 + 40_000, OTHER).await.unwrap(),
        Some(T0 + 40_000)
    );
}

async fn backlog_counts_records_by_state(store: Arc<dyn Store>) {
    let a = store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap()
        .id;
    store
        .upsert_repeater(&spec("beta", "b", &[]), T0)
        .await
        .unwrap();
    let events: Vec<NewEvent> = (0..3).map(|i| event(Some(&format!("e{i}")), "t")).collect();
    store.ingest("acme", &events, T0).await.unwrap();
    store.ingest("beta", &events[..1], T0).await.unwrap();
    let held = lease(&store, a, T0).await;
    let c = store.claim(&held, 10, T0).await.unwrap();
    store
        .finish_batch(
            &held,
            &[
                succeeded_on_200(c[0].id),
                RecordOutcome {
                    record_id: c[1].id,
                    state: RecordState::Retrying,
                    next_attempt_at: Some(T0 + 5),
                    attempt: Some(attempt(AttemptOutcome::Retry, Some(500), None)),
                },
            ],
            None,
            true,
            T0,
        )
        .await
        .unwrap();
    let backlog = store.backlog(a).await.unwrap();
    assert_eq!(
        (
            backlog.pending,
            backlog.retrying,
            backlog.succeeded,
            backlog.cancelled
        ),
        (1, 1, 1, 0)
    );
    let by_domain = store.backlog_by_domain().await.unwrap();
    assert_eq!(
        by_domain,
        vec![
            ("acme".to_owned(), RecordState::Pending, 1),
            ("acme".to_owned(), RecordState::Retrying, 1),
            ("beta".to_owned(), RecordState::Pending, 1),
        ]
    );
}

/// The ids of every page of `query` in domain `acme`, walked by keyset
/// pagination from its `after`; no page may exceed `query.limit`.
async fn paged_ids(store: &Arc<dyn Store>, mut query: RecordQuery) -> Vec<i64> {
    let mut ids = Vec::new();
    loop {
        let page = store.records("acme", &query).await.unwrap();
        let Some(last) = page.last() else {
            return ids;
        };
        assert!(page.len() <= query.limit as usize);
        query.after = Some(last.id);
        ids.extend(page.iter().map(|r| r.id));
    }
}

async fn records_listing_filters_and_pages_by_id(store: Arc<dyn Store>) {
    let a = store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap()
        .id;
    store
        .upsert_repeater(&spec("acme", "b", &[]), T0)
        .await
        .unwrap();
    let events: Vec<NewEvent> = (0..5).map(|i| event(Some(&format!("e{i}")), "t")).collect();
    store.ingest("acme", &events, T0).await.unwrap();
    let held = lease(&store, a, T0).await;
    let c = store.claim(&held, 1, T0).await.unwrap();
    store
        .finish_batch(
            &held,
            &[RecordOutcome {
                record_id: c[0].id,
                state: RecordState::Rejected,
                next_attempt_at: None,
                attempt: Some(attempt(AttemptOutcome::Reject, Some(422), None)),
            }],
            None,
            true,
            T0,
        )
        .await
        .unwrap();

    let query = |repeater: Option<&str>, state, after, limit| RecordQuery {
        repeater: repeater.map(str::to_owned),
        state,
        after,
        limit,
    };
    // Pages of 4 over 10 records, in id order, without gaps or repeats.
    let seen = paged_ids(&store, query(None, None, None, 4)).await;
    assert_eq!(seen.len(), 10);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));

    let of_a = store
        .records("acme", &query(Some("a"), None, None, 100))
        .await
        .unwrap();
    assert_eq!(of_a.len(), 5);
    assert!(of_a.iter().all(|r| r.repeater == "a" && r.domain == "acme"));
    // Pages of 2 over one repeater's records in two states (the rejected
    // one first, then pending ones) merge the states in id order.
    let paged = paged_ids(&store, query(Some("a"), None, None, 2)).await;
    assert_eq!(paged, of_a.iter().map(|r| r.id).collect::<Vec<_>>());
    assert_eq!(of_a[0].state, RecordState::Rejected);
    let rejected = store
        .records("acme", &query(None, Some(RecordState::Rejected), None, 100))
        .await
        .unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].id, c[0].id);
    assert_eq!(rejected[0].event_id, "e0");
    assert_eq!(rejected[0].event_type, "t");
    assert_eq!(rejected[0].last_error.as_deref(), Some("HTTP status 422"));
    let pending_b = store
        .records(
            "acme",
            &query(Some("b"), Some(RecordState::Pending), None, 100),
        )
        .await
        .unwrap();
    assert_eq!(pending_b.len(), 5);
    assert!(
        store
            .records("acme", &query(Some("nope"), None, None, 100))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .records("beta", &query(None, None, None, 100))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn upsert_replaces_the_spec_and_keeps_the_status(store: Arc<dyn Store>) {
    let first = store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap();
    assert_eq!(first.created_at, T0);
    store.set_paused("acme", "a", true, T0 + 1).await.unwrap();
    let mut changed = spec("acme", "a", &["case.closed"]);
    changed.url = "http://127.0.0.1:9/other".into();
    let second = store.upsert_repeater(&changed, T0 + 2).await.unwrap();
    assert_eq!(second.id, first.id);
    assert_eq!(second.spec, changed);
    assert!(second.paused);
    assert_eq!((second.created_at, second.updated_at), (T0, T0 + 2));
    let listed = store.repeaters(Some("acme")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].spec.url, "http://127.0.0.1:9/other");
    store
        .upsert_repeater(&spec("beta", "z", &[]), T0)
        .await
        .unwrap();
    let everything: Vec<String> = store
        .repeaters(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| format!("{}/{}", r.spec.domain, r.spec.name))
        .collect();
    assert_eq!(everything, vec!["acme/a", "beta/z"]);
    assert!(matches!(
        store
            .upsert_repeater(&spec("acme", "Bad Name", &[]), T0)
            .await,
        Err(StoreError::Invalid(_))
    ));
}

async fn ingest_wakes_the_scheduler(store: Arc<dyn Store>) {
    store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap();
    let wake = store.wake_signal();
    let woken = wake.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    store
        .ingest("acme", &[event(Some("e"), "t")], T0)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), woken)
        .await
        .expect("ingest notifies the wake signal");
}

async fn ingest_and_batches_running_together_lose_nothing(store: Arc<dyn Store>) {
    let a = store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap()
        .id;
    let b = store
        .upsert_repeater(&spec("acme", "b", &[]), T0)
        .await
        .unwrap()
        .id;
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let store = store.clone();
            tokio::spawn(async move {
                for batch in 0..10 {
                    let events: Vec<NewEvent> = (0..5)
                        .map(|i| event(Some(&format!("p{p}-b{batch}-{i}")), "t"))
                        .collect();
                    store.ingest("acme", &events, T0).await.unwrap();
                }
            })
        })
        .collect();
    // Workers drain both lanes while the producers write, and stop once the
    // producers are done and the lane is empty.
    let producing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let workers: Vec<_> = [a, b]
        .into_iter()
        .map(|id| {
            let store = store.clone();
            let producing = producing.clone();
            tokio::spawn(async move {
                let mut delivered = 0;
                loop {
                    // Read the flag before claiming: an empty claim after the
                    // producers finished means the lane is drained.
                    let still_producing = producing.load(std::sync::atomic::Ordering::SeqCst);
                    let held = lease(&store, id, T0).await;
                    let claimed = store.claim(&held, 7, T0).await.unwrap();
                    if claimed.is_empty() {
                        store.release_lease(&held).await.unwrap();
                        if !still_producing {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    delivered += claimed.len();
                    let outcomes: Vec<RecordOutcome> =
                        claimed.iter().map(|r| succeeded_on_200(r.id)).collect();
                    store
                        .finish_batch(&held, &outcomes, None, true, T0)
                        .await
                        .unwrap();
                }
                delivered
            })
        })
        .collect();
    for producer in producers {
        producer.await.unwrap();
    }
    producing.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut delivered = 0;
    for worker in workers {
        delivered += worker.await.unwrap();
    }
    assert_eq!(
        delivered,
        2 * 4 * 10 * 5,
        "every record delivered exactly once"
    );
    for id in [a, b] {
        let backlog = store.backlog(id).await.unwrap();
        assert_eq!((backlog.pending, backlog.succeeded), (0, 200));
    }
}

// --- ordering --------------------------------------------------------------

fn ordered(name: &str, ordering: Ordering) -> RepeaterSpec {
    RepeaterSpec {
        ordering,
        ..spec("acme", name, &[])
    }
}

fn keyed(id: &str, key: Option<&str>) -> NewEvent {
    NewEvent {
        ordering_key: key.map(str::to_owned),
        ..event(Some(id), "t")
    }
}

fn retry_at(record_id: i64, at: i64) -> RecordOutcome {
    RecordOutcome {
        record_id,
        state: RecordState::Retrying,
        next_attempt_at: Some(at),
        attempt: Some(attempt(AttemptOutcome::Retry, Some(503), None)),
    }
}

fn event_ids(claimed: &[repeaterd::store::ClaimedRecord]) -> Vec<&str> {
    claimed.iter().map(|r| r.event_id.as_str()).collect()
}

async fn fifo_lanes_hold_the_line_behind_their_oldest_record(store: Arc<dyn Store>) {
    let id = store
        .upsert_repeater(&ordered("f", Ordering::Fifo), T0)
        .await
        .unwrap()
        .id;
    let events: Vec<NewEvent> = (0..3).map(|i| event(Some(&format!("e{i}")), "t")).collect();
    store.ingest("acme", &events, T0).await.unwrap();
    let held = lease(&store, id, T0).await;
    let head = store.claim(&held, 10, T0).await.unwrap();
    assert_eq!(event_ids(&head), vec!["e0"], "one at a time, oldest first");

    // The head retries later: nothing behind it may go first.
    store
        .finish_batch(&held, &[retry_at(head[0].id, T0 + 1_000)], None, true, T0)
        .await
        .unwrap();
    assert!(
        store
            .ready_repeaters(T0 + 10, OTHER)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.next_wakeup(T0 + 10, OTHER).await.unwrap(),
        Some(T0 + 1_000)
    );
    let held = lease(&store, id, T0 + 10).await;
    assert!(store.claim(&held, 10, T0 + 10).await.unwrap().is_empty());
    assert_eq!(
        event_ids(&store.claim(&held, 10, T0 + 1_000).await.unwrap()),
        vec!["e0"]
    );

    // Once the head is done, the next one is the head.
    store
        .finish_batch(
            &held,
            &[succeeded_on_200(head[0].id)],
            None,
            false,
            T0 + 1_000,
        )
        .await
        .unwrap();
    assert_eq!(
        event_ids(&store.claim(&held, 10, T0 + 1_000).await.unwrap()),
        vec!["e1"]
    );
}

async fn key_lanes_keep_order_within_each_key(store: Arc<dyn Store>) {
    let id = store
        .upsert_repeater(&ordered("k", Ordering::Key), T0)
        .await
        .unwrap()
        .id;
    store
        .ingest(
            "acme",
            &[
                keyed("a1", Some("a")),
                keyed("a2", Some("a")),
                keyed("b1", Some("b")),
                keyed("n1", None),
                keyed("n2", None),
            ],
            T0,
        )
        .await
        .unwrap();
    let held = lease(&store, id, T0).await;
    let claimed = store.claim(&held, 10, T0).await.unwrap();
    assert_eq!(event_ids(&claimed), vec!["a1", "b1", "n1", "n2"]);

    // Key "a" waits for its first record; "b" and unkeyed records go on.
    store
        .finish_batch(
            &held,
            &[retry_at(claimed[0].id, T0 + 1_000)],
            None,
            true,
            T0,
        )
        .await
        .unwrap();
    let held = lease(&store, id, T0 + 10).await;
    assert_eq!(
        event_ids(&store.claim(&held, 10, T0 + 10).await.unwrap()),
        vec!["b1", "n1", "n2"]
    );
    let done: Vec<RecordOutcome> = claimed[1..]
        .iter()
        .map(|r| succeeded_on_200(r.id))
        .collect();
    store
        .finish_batch(&held, &done, None, true, T0 + 10)
        .await
        .unwrap();
    // Only a2 is left due, behind a1: not ready until a1 is due.
    assert!(
        store
            .ready_repeaters(T0 + 20, OTHER)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.next_wakeup(T0 + 20, OTHER).await.unwrap(),
        Some(T0 + 1_000)
    );
    assert_eq!(
        store
            .ready_repeaters(T0 + 1_000, OTHER)
            .await
            .unwrap()
            .len(),
        1
    );
}

// --- PostgreSQL: several processes on one database -------------------------

// --- both backends side by side ---------------------------------------------

/// Runs one scenario of every ordering, a paused and a backed-off lane,
/// retries and successes on `store`, and writes down what the scheduler
/// would see at several moments: the ready set, the wake-up time and each
/// ready lane's claim. Record ids may differ between databases; event ids
/// may not.
async fn lane_transcript(store: &Arc<dyn Store>) -> Vec<String> {
    let specs = [
        ordered("any", Ordering::None),
        ordered("fifo", Ordering::Fifo),
        ordered("key", Ordering::Key),
        ordered("paused", Ordering::None),
        spec("zeta", "backed", &[]),
    ];
    for spec in &specs {
        store.upsert_repeater(spec, T0).await.unwrap();
    }
    let keys = [
        Some("k1"),
        Some("k2"),
        Some("k1"),
        None,
        Some("k2"),
        Some("k1"),
    ];
    let events: Vec<NewEvent> = (keys.iter().enumerate())
        .map(|(i, key)| keyed(&format!("e{i}"), *key))
        .collect();
    store.ingest("acme", &events, T0).await.unwrap();
    let events = [event(Some("z0"), "t"), event(Some("z1"), "t")];
    store.ingest("zeta", &events, T0).await.unwrap();
    store.set_paused("acme", "paused", true, T0).await.unwrap();

    let mut seen = Vec::new();
    // A first round: each lane retries the first record it claims, later,
    // and delivers the second; the zeta lane backs off as well.
    for repeater in store.ready_repeaters(T0, OTHER).await.unwrap() {
        let held = lease(store, repeater.id, T0).await;
        let claimed = store.claim(&held, 2, T0).await.unwrap();
        seen.push(format!(
            "{}: first claim {:?}",
            repeater.name,
            event_ids(&claimed)
        ));
        let mut outcomes = vec![retry_at(claimed[0].id, T0 + 5_000)];
        outcomes.extend(claimed.get(1).map(|record| succeeded_on_200(record.id)));
        let backoff = (repeater.domain == "zeta").then(|| RepeaterHealth {
            backoff_until: Some(T0 + 7_000),
            backoff_step: 1,
            last_error: Some("HTTP status 503".into()),
            last_success_at: None,
        });
        store
            .finish_batch(&held, &outcomes, backoff.as_ref(), true, T0)
            .await
            .unwrap();
    }
    for now in [T0, T0 + 4_999, T0 + 5_000, T0 + 7_000] {
        let ready = store.ready_repeaters(now, OTHER).await.unwrap();
        let names: Vec<String> = (ready.iter())
            .map(|r| format!("{}/{}", r.domain, r.name))
            .collect();
        let wakeup = store.next_wakeup(now, OTHER).await.unwrap();
        seen.push(format!(
            "at {}: ready {names:?}, wake-up {:?}",
            now - T0,
            wakeup.map(|at| at - T0)
        ));
        for repeater in ready {
            let held = lease(store, repeater.id, now).await;
            let claimed = store.claim(&held, 10, now).await.unwrap();
            seen.push(format!(
                "at {}: {} claims {:?}",
                now - T0,
                repeater.name,
                event_ids(&claimed)
            ));
            store.release_lease(&held).await.unwrap();
        }
    }
    seen
}

/// The ready set, the wake-up time and the claims are one SQL text per
/// dialect: for the same data, both backends see the same lanes, times and
/// records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_see_the_same_lanes_wakeups_and_claims() {
    let (sqlite, postgres) = (sqlite_harness().await, pg_harness().await);
    let on_sqlite = lane_transcript(&sqlite.store).await;
    let on_postgres = lane_transcript(&postgres.store).await;
    assert_eq!(on_sqlite, on_postgres);
    // The scenario exercises what it means to: every ordering holds
    // records back somewhere, and the backoff outlasts the retries.
    let expected = [
        "any: first claim [\"e0\", \"e1\"]",
        "fifo: first claim [\"e0\"]",
        "key: first claim [\"e0\", \"e1\"]",
        "backed: first claim [\"z0\", \"z1\"]",
        "at 0: ready [\"acme/any\", \"acme/key\"], wake-up Some(0)",
        "at 0: key claims [\"e3\", \"e4\"]",
        "at 4999: ready [\"acme/any\", \"acme/key\"], wake-up Some(4999)",
        "at 5000: ready [\"acme/any\", \"acme/fifo\", \"acme/key\"], wake-up Some(5000)",
        "at 5000: fifo claims [\"e0\"]",
        "at 7000: ready [\"acme/any\", \"acme/fifo\", \"acme/key\", \"zeta/backed\"], wake-up Some(7000)",
    ];
    for line in expected {
        assert!(
            on_sqlite.iter().any(|seen| seen == line),
            "{line} not in {on_sqlite:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_stores_racing_for_one_lease_exactly_one_wins() {
    let harness = pg_harness().await;
    let url = harness._database.as_ref().unwrap().url.clone();
    let first: Arc<dyn Store> = Arc::new(PostgresStore::connect(&url).await.unwrap());
    let second: Arc<dyn Store> = Arc::new(PostgresStore::connect(&url).await.unwrap());
    let id = first
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap()
        .id;
    let mut last_epoch = 0;
    for round in 0..20 {
        let now = T0 + round * 10 * TTL;
        let (a, b) = tokio::join!(
            first.acquire_lease(id, "first", now, TTL),
            second.acquire_lease(id, "second", now, TTL)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(
            a.is_some() ^ b.is_some(),
            "round {round}: exactly one wins ({a:?}, {b:?})"
        );
        let won = a.or(b).unwrap();
        assert!(won.epoch > last_epoch);
        last_epoch = won.epoch;
        // Every other round the winner lets the lease expire instead of releasing.
        if round % 2 == 0 {
            first.release_lease(&won).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_ingest_in_one_store_wakes_another() {
    let harness = pg_harness().await;
    let url = harness._database.as_ref().unwrap().url.clone();
    let producer = PostgresStore::connect(&url).await.unwrap();
    let scheduler = PostgresStore::connect(&url).await.unwrap();
    producer
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap();
    let wake = scheduler.wake_signal();
    let woken = wake.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    producer
        .ingest("acme", &[event(Some("e"), "t")], T0)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), woken)
        .await
        .expect("a NOTIFY from another store wakes this one");
}

/// Backends of `database` waiting in LISTEN.
async fn listeners(admin: &mut sqlx::PgConnection, database: &str) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(database)
    .fetch_all(admin)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wake_ups_survive_a_lost_listen_connection() {
    let harness = pg_harness().await;
    let database = harness._database.as_ref().unwrap();
    let producer = PostgresStore::connect(&database.url).await.unwrap();
    let scheduler = PostgresStore::connect(&database.url).await.unwrap();
    producer
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap();
    let mut admin = sqlx::PgConnection::connect(&database.admin_url)
        .await
        .unwrap();
    let before = listeners(&mut admin, &database.name).await;
    // The harness's store, the producer and the scheduler each listen.
    assert_eq!(before.len(), 3, "each store listens on its own connection");
    for pid in &before {
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&mut admin)
            .await
            .unwrap();
    }
    // Every listener comes back on a new connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = listeners(&mut admin, &database.name).await;
        if now.len() == before.len() && now.iter().all(|pid| !before.contains(pid)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "listeners did not reconnect: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Drain the wake-up the reconnect itself caused, then a fresh NOTIFY
    // must still arrive.
    let wake = scheduler.wake_signal();
    let _ = tokio::time::timeout(Duration::from_millis(200), wake.notified()).await;
    let woken = wake.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    producer
        .ingest("acme", &[event(Some("e"), "t")], T0)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), woken)
        .await
        .expect("a NOTIFY after reconnecting wakes the store");
}

#[tokio::test]
async fn open_chooses_the_backend_by_url() {
    let dir = tempfile::tempdir().unwrap();
    let default_path = dir.path().join("default.db");
    let named = dir.path().join("named.db");
    let store = repeaterd::store::open(None, &default_path).await.unwrap();
    store
        .upsert_repeater(&spec("acme", "a", &[]), T0)
        .await
        .unwrap();
    assert!(default_path.exists());
    let url = format!("sqlite://{}", named.display());
    let store = repeaterd::store::open(Some(&url), &default_path)
        .await
        .unwrap();
    assert!(store.repeaters(None).await.unwrap().is_empty());
    assert!(named.exists());
    for bad in ["mysql://localhost/x", "sqlite::memory:"] {
        assert!(matches!(
            repeaterd::store::open(Some(bad), &default_path).await,
            Err(StoreError::Invalid(_))
        ));
    }
}
