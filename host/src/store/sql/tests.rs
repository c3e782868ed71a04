//! Tests that pin the SQL seam: how each dialect renders placeholders,
//! `LEAST` and `GREATEST`; that every named query prepares on both
//! databases; and that no record state is spelled out in the store's
//! sources or bound where a partial index needs it literal.

use std::path::{Path, PathBuf};

use sqlx::Executor;
use sqlx::postgres::PgTypeInfo;

use super::*;
use crate::store::admin::{StateSql, records_page_sql};
use crate::store::scratch;
use crate::store::{RecordQuery, ingest, lanes};

#[test]
fn sqlite_numbers_placeholders_with_question_marks_and_postgres_keeps_dollars() {
    let text = "SELECT a FROM t WHERE b = $2 AND c IN ($1, $12) AND d = '$'";
    assert_eq!(Dialect::Postgres.render(text), text);
    assert_eq!(
        Dialect::Sqlite.render(text),
        "SELECT a FROM t WHERE b = ?2 AND c IN (?1, ?12) AND d = '$'"
    );
}

#[test]
fn multi_row_placeholders_are_numbered_on_postgres_and_anonymous_on_sqlite() {
    assert_eq!(
        Dialect::Postgres.values(2, 3),
        "VALUES ($1, $2, $3), ($4, $5, $6)"
    );
    assert_eq!(Dialect::Sqlite.values(2, 3), "VALUES (?, ?, ?), (?, ?, ?)");
    assert_eq!(Dialect::Postgres.list(3), "$1, $2, $3");
    assert_eq!(Dialect::Sqlite.list(2), "?, ?");
}

#[test]
fn every_terminal_state_is_stored_above_every_unfinished_one() {
    for state in RecordState::ALL {
        assert_eq!(
            state.is_terminal(),
            state.as_i16() >= FIRST_TERMINAL.as_i16(),
            "{state}"
        );
    }
}

/// The partial indexes of both schemas, as the migrations spell them, are
/// the predicates the queries are written with: PostgreSQL matches them by
/// the query's text.
#[test]
fn the_state_predicates_are_the_partial_indexes_own() {
    let sources = ["postgres", "sqlite"].map(|dialect| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../migrations")
            .join(dialect);
        std::fs::read_to_string(dir.join("0001_init.sql")).expect("first migration")
    });
    for schema in &sources {
        let ready = format!("WHERE {};", unfinished("state"));
        let terminal = format!("WHERE {};", terminal("state"));
        let line = |index: &str| {
            (schema.lines())
                .find(|line| line.starts_with(&format!("CREATE INDEX {index} ")))
                .unwrap_or_else(|| panic!("no index {index}"))
                .to_owned()
        };
        assert!(line("records_ready").ends_with(&ready), "{ready}");
        assert!(line("records_terminal").ends_with(&terminal), "{terminal}");
    }
}

/// PostgreSQL's generic plan of each hot query (the plan it keeps once a
/// prepared statement has run a few times) reads the ready-set index: the
/// predicate in the text is literal, so the planner matches the partial
/// index without knowing any parameter.
#[tokio::test]
async fn hot_queries_read_the_ready_set_index_in_generic_plans_on_postgresql() {
    let mut db = scratch::postgres().await;
    sqlx::raw_sql("SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off")
        .execute(&mut db)
        .await
        .unwrap();
    let lanes = &Statements::of(Dialect::Postgres).lanes;
    let hot = [
        ("ready", &lanes.ready, "0, 'holder'"),
        ("wakeup", &lanes.wakeup, "'holder'"),
        ("claim_any", &lanes.claim_any, "1, 0, 10"),
        ("claim_key", &lanes.claim_key, "1, 0, 10"),
    ];
    for (name, text, arguments) in hot {
        sqlx::raw_sql(&format!("PREPARE {name} AS {text}"))
            .execute(&mut db)
            .await
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN EXECUTE {name}({arguments})"))
            .fetch_all(&mut db)
            .await
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("using records_ready ")),
            "{name}: {plan:#?}"
        );
    }
}

/// A hot query of either dialect reads the ready set with the predicate
/// spelled out, and no query of the store compares a state with a
/// placeholder: a bound state would hide the partial index from
/// PostgreSQL's generic plans.
#[test]
fn hot_queries_spell_the_ready_set_and_no_query_binds_a_state() {
    for dialect in [Dialect::Postgres, Dialect::Sqlite] {
        let statements = Statements::of(dialect);
        let lanes = &statements.lanes;
        let ready_set = unfinished("r.state");
        for hot in [
            &lanes.ready,
            &lanes.wakeup,
            &lanes.claim_any,
            &lanes.claim_fifo,
        ] {
            assert!(hot.contains(&ready_set), "{dialect:?}: {hot}");
        }
        assert!(lanes.claim_key.contains(&unfinished("o.state")));
        assert!(statements.retention.victims.contains(&terminal("state")));
        for (name, text) in every_query(dialect) {
            assert!(
                !compares_state_with(&text, |c| c == '$' || c == '?'),
                "{dialect:?} {name} binds a state: {text}"
            );
        }
    }
}

/// No string literal in the store's sources compares a state with a
/// number: the numbers come from `RecordState` (the partial indexes of the
/// migrations are the one place they are written).
#[test]
fn no_store_source_spells_a_record_state_in_sql() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() > 10, "{files:?}");
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        for literal in string_literals(&source) {
            assert!(
                !compares_state_with(&literal, |c| c.is_ascii_digit()),
                "{} spells a record state in SQL: {literal:?}",
                file.display()
            );
        }
    }
}

#[test]
fn the_source_check_finds_a_state_spelled_in_sql() {
    let (pending, cancelled) = (
        RecordState::Pending.as_i16(),
        RecordState::Cancelled.as_i16(),
    );
    let spelled = [
        format!("UPDATE records SET x = 1 WHERE r.state IN ({pending}, 1)"),
        format!("WHERE state={cancelled}"),
        format!("WHERE records.state >= {cancelled} AND y"),
        format!("WHERE state <> {pending}"),
    ];
    for text in &spelled {
        let source = format!("let sql = \"{text}\"; // state = {pending}");
        assert_eq!(string_literals(&source), std::slice::from_ref(text));
        assert!(compares_state_with(text, |c| c.is_ascii_digit()), "{text}");
    }
    for fine in [
        "SELECT state, COUNT(*) FROM records GROUP BY state",
        "UPDATE records SET state = v.state",
        "WHERE h.state = {}",
        "WHERE last_state = x",
    ] {
        assert!(!compares_state_with(fine, |c| c.is_ascii_digit()), "{fine}");
    }
    assert!(compares_state_with("WHERE state IN ($1)", |c| c == '$'));
}

#[tokio::test]
async fn every_named_query_prepares_on_postgresql() {
    let mut db = scratch::postgres().await;
    for (name, text) in every_query(Dialect::Postgres) {
        db.prepare(&text)
            .await
            .unwrap_or_else(|error| panic!("{name}: {error}\n{text}"));
    }
    // A multi-row statement's placeholders stand in a VALUES list, where
    // nothing says their types: the driver sends the types it binds.
    for (name, text, row) in multi_row(Dialect::Postgres) {
        let types: Vec<PgTypeInfo> = (row.iter().chain(row))
            .map(|name| PgTypeInfo::with_name(name))
            .collect();
        db.prepare_with(&text, &types)
            .await
            .unwrap_or_else(|error| panic!("{name}: {error}\n{text}"));
    }
}

#[tokio::test]
async fn every_named_query_prepares_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    drop(scratch::sqlite(&dir).await);
    let db = rusqlite::Connection::open(dir.path().join("scratch.db")).unwrap();
    let queries = every_query(Dialect::Sqlite).into_iter();
    let multi_row = (multi_row(Dialect::Sqlite).into_iter()).map(|(name, text, _)| (name, text));
    for (name, text) in queries.chain(multi_row) {
        db.prepare(&text)
            .unwrap_or_else(|error| panic!("{name}: {error}\n{text}"));
    }
}

/// `LEAST` skips NULLs and is NULL only when both are, on both databases;
/// `GREATEST` of values without NULLs is the largest.
#[tokio::test]
async fn least_and_greatest_mean_the_same_on_both_databases() {
    let dir = tempfile::tempdir().unwrap();
    let mut sqlite = scratch::sqlite(&dir).await;
    let mut postgres = scratch::postgres().await;
    let (null, two, three) = (
        "CAST(NULL AS BIGINT)",
        "CAST(2 AS BIGINT)",
        "CAST(3 AS BIGINT)",
    );
    let cases = [
        (null, three, Some(3)),
        (three, null, Some(3)),
        (two, three, Some(2)),
        (three, two, Some(2)),
        (null, null, None),
    ];
    for (a, b, want) in cases {
        let pg: Option<i64> =
            sqlx::query_scalar(&format!("SELECT {}", Dialect::Postgres.least(a, b)))
                .fetch_one(&mut postgres)
                .await
                .unwrap();
        let lite: Option<i64> =
            sqlx::query_scalar(&format!("SELECT {}", Dialect::Sqlite.least(a, b)))
                .fetch_one(&mut sqlite)
                .await
                .unwrap();
        assert_eq!((pg, lite), (want, want), "least({a}, {b})");
    }
    let values = [two, "CAST(5 AS BIGINT)", three];
    let pg: i64 = sqlx::query_scalar(&format!("SELECT {}", Dialect::Postgres.greatest(&values)))
        .fetch_one(&mut postgres)
        .await
        .unwrap();
    let lite: i64 = sqlx::query_scalar(&format!("SELECT {}", Dialect::Sqlite.greatest(&values)))
        .fetch_one(&mut sqlite)
        .await
        .unwrap();
    assert_eq!((pg, lite), (5, 5));
}

/// Every fixed query of `dialect`, and every shape of the records listing.
fn every_query(dialect: Dialect) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = (Statements::of(dialect).named().into_iter())
        .map(|(name, text)| (name, text.to_owned()))
        .collect();
    for repeater in [None, Some("a".to_owned())] {
        for state in [None, Some(RecordState::Rejected)] {
            let query = RecordQuery {
                repeater: repeater.clone(),
                state,
                after: None,
                limit: 10,
            };
            let text = records_page_sql(dialect, &query);
            all.push((format!("admin.records_page {query:?}"), text));
        }
    }
    for count in [1, 2] {
        let text = lanes::acquire(dialect, count);
        all.push((format!("lanes.acquire of {count}"), text));
        let text = lanes::ready_in(dialect, count);
        all.push((format!("lanes.ready_in of {count}"), text));
    }
    for state in RecordState::ALL {
        let sql = StateSql::new(dialect, state);
        for (name, text) in [
            ("last", sql.last),
            ("batch_end", sql.batch_end),
            ("resend", sql.resend),
            ("cancel", sql.cancel),
        ] {
            all.push((format!("admin.state_{name} {state}"), text));
        }
    }
    all
}

/// Every multi-row statement of `dialect` at two rows, with the PostgreSQL
/// types of one row's values as the backends bind them.
fn multi_row(dialect: Dialect) -> Vec<(String, String, &'static [&'static str])> {
    const TEXT: &str = "TEXT";
    const INT8: &str = "INT8";
    const INT4: &str = "INT4";
    const INT2: &str = "INT2";
    const BOOL: &str = "BOOL";
    const BYTEA: &str = "BYTEA";
    vec![
        (
            "lanes.fence".to_owned(),
            lanes::fence(dialect, 2),
            &[INT8, INT8, TEXT, BOOL, INT8, INT4, TEXT, INT8, BOOL, INT8][..],
        ),
        (
            "lanes.release".to_owned(),
            lanes::release(dialect, 2),
            &[INT8, INT8, TEXT][..],
        ),
        (
            "lanes.record_updates".to_owned(),
            lanes::record_updates(dialect, 2),
            &[INT8, INT8, INT2, INT8, INT4, TEXT, INT8][..],
        ),
        (
            "lanes.attempt_inserts".to_owned(),
            lanes::attempt_inserts(dialect, 2),
            &[INT8, INT8, INT8, INT8, INT4, TEXT, INT2, BYTEA, TEXT, TEXT][..],
        ),
        (
            "ingest.insert_events".to_owned(),
            ingest::insert_events(dialect, 2),
            &[TEXT, TEXT, TEXT, TEXT, BYTEA, TEXT, INT8][..],
        ),
        (
            "ingest.insert_records".to_owned(),
            ingest::insert_records(dialect, 2),
            &[
                INT8, INT8, TEXT, TEXT, INT2, INT4, INT8, INT8, INT8, INT8, TEXT,
            ][..],
        ),
    ]
}

/// True when `text` compares a `state` column (`state`, `r.state`) with
/// `=`, `<>`, `!=`, `<`, `>`, `<=`, `>=` or `IN` and the first thing after
/// the operator (and an opening parenthesis) is a character `value` accepts.
fn compares_state_with(text: &str, value: impl Fn(char) -> bool) -> bool {
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find("state") {
        let start = from + at;
        from = start + "state".len();
        let before = lower[..start].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = lower[from..].trim_start();
        let symbolic = ["<=", ">=", "<>", "!=", "=", "<", ">"]
            .iter()
            .find_map(|op| rest.strip_prefix(op));
        let listed = (rest.strip_prefix("in"))
            .filter(|operand| operand.starts_with(|c: char| c.is_whitespace() || c == '('));
        let Some(operand) = symbolic.or(listed) else {
            continue;
        };
        let operand = operand.trim_start();
        let operand = operand.strip_prefix('(').unwrap_or(operand).trim_start();
        if operand.chars().next().is_some_and(&value) {
            return true;
        }
    }
    false
}

/// The contents of the string literals of Rust `source`, comments skipped.
fn string_literals(source: &str) -> Vec<String> {
    let mut literals = Vec::new();
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '\'' => {
                // A character literal ('"', '\''), or a lifetime: skip the
                // literal so a quote inside it opens no string.
                let mut ahead = chars.clone();
                match (ahead.next(), ahead.next(), ahead.next()) {
                    (Some('\\'), Some(_), Some('\'')) => {
                        chars.nth(2);
                    }
                    (Some(_), Some('\''), _) => {
                        chars.nth(1);
                    }
                    _ => {}
                }
            }
            '"' => {
                let mut literal = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        // A line continuation drops the line break and the
                        // indentation after it, as the compiler does.
                        '\\' if chars.peek() == Some(&'\n') => {
                            while chars.next_if(|c| c.is_whitespace()).is_some() {}
                        }
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                literal.push('\\');
                                literal.push(escaped);
                            }
                        }
                        '"' => break,
                        c => literal.push(c),
                    }
                }
                literals.push(literal);
            }
            _ => {}
        }
    }
    literals
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            into.push(path);
        }
    }
}

#[test]
fn runs_cover_every_item_in_order_with_few_distinct_lengths() {
    let mut lengths = std::collections::HashSet::new();
    for total in 0..=1_100usize {
        let items: Vec<usize> = (0..total).collect();
        let runs: Vec<&[usize]> = runs(&items).collect();
        assert_eq!(runs.concat(), items, "{total} items");
        for run in &runs {
            assert!(run.len().is_power_of_two() && run.len() <= MOST_ROWS);
            lengths.insert(run.len());
        }
    }
    assert_eq!(lengths.len(), MOST_ROWS.ilog2() as usize + 1);
    let ninety_five: Vec<usize> = runs(&[0u8; 95]).map(<[u8]>::len).collect();
    assert_eq!(ninety_five, [64, 16, 8, 4, 2, 1]);
}
