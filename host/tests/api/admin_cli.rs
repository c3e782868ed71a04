//! `repeaterd records|repeaters|plugins ...`, run as the real binary against
//! the real API (in process, on a loopback socket, over a real SQLite store):
//! tables for people, JSON for scripts, and JSON by default when piped.

use std::process::Output;

use crate::support::{ACME, ADMIN, TestApi};
use repeaterd::api::time::Timestamp;
use repeaterd::model::now_millis;
use serde_json::{Value, json};

/// The API served on a loopback port, with acme's `crm` (every event type)
/// and `audit` (`case.closed`) and globex's `ledger`; acme has four events,
/// so five records, and one crm record has failed once, leaving crm backed
/// off.
struct Daemon {
    api: TestApi,
    base: String,
    server: tokio::task::JoinHandle<()>,
    failed_record: i64,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn daemon() -> Daemon {
    let api = TestApi::new().await;
    api.put_repeater("acme", "crm", &[]).await;
    api.put_repeater("acme", "audit", &["case.closed"]).await;
    api.put_repeater("globex", "ledger", &[]).await;
    for i in 0..3 {
        let answer = api
            .post_event("acme", json!({"type": "case.created", "payload": i}))
            .await;
        assert_eq!(answer.status, 202, "{answer:?}");
    }
    let answer = api
        .post_event("acme", json!({"type": "case.closed", "payload": 9}))
        .await;
    assert_eq!(answer.status, 202, "{answer:?}");

    let now = now_millis();
    let (lease, claimed) = api.claim("acme", "crm", 1, now).await;
    let failed_record = claimed[0].id;
    let outcome =
        crate::support::answered_503(failed_record, now - 3 * 60_000, 41, now + 25 * 60_000);
    let health = crate::support::backed_off(now + 10 * 60_000);
    api.store
        .finish_batch(&lease, &[outcome], Some(&health), true, now)
        .await
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = repeaterd::api::router(api.state.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    Daemon {
        api,
        base,
        server,
        failed_record,
    }
}

impl Daemon {
    /// Runs `repeaterd ARGS --url ... --token TOKEN` with stdout piped.
    async fn run(&self, token: &str, args: &[&str]) -> Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_repeaterd"))
            .args(args)
            .args(["--url", &self.base, "--token", token])
            .env("REPEATERD_LOG", "warn")
            .env_remove("REPEATERD_URL")
            .env_remove("REPEATERD_TOKEN")
            .output()
            .await
            .expect("running repeaterd")
    }

    /// Runs a verb that must succeed; returns its stdout.
    async fn stdout(&self, token: &str, args: &[&str]) -> String {
        let output = self.run(token, args).await;
        assert!(
            output.status.success(),
            "{args:?}: exit {:?}, stderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    async fn json(&self, token: &str, args: &[&str]) -> Value {
        let text = self.stdout(token, args).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {text}"))
    }
}

/// The character column where a header title starts.
fn column(table: &str, title: &str) -> usize {
    let header = table.lines().next().unwrap();
    header
        .find(title)
        .unwrap_or_else(|| panic!("no {title} column in {header}"))
}

/// Checks that every row has a value starting exactly under `title`.
fn assert_aligned(table: &str, title: &str) {
    let at = column(table, title);
    for line in table.lines().skip(1).filter(|l| !l.starts_with("more:")) {
        let before: String = line.chars().take(at).collect();
        let cell: String = line.chars().skip(at).collect();
        assert!(
            before.ends_with("  ") && !cell.starts_with(' '),
            "{title} is not aligned in {line:?} of\n{table}"
        );
    }
}

#[tokio::test]
async fn records_print_as_a_table_for_people_and_as_the_api_s_json_for_scripts() {
    let daemon = daemon().await;
    let table = daemon
        .stdout(ADMIN, &["records", "list", "acme", "--output", "table"])
        .await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 1 + 5, "{table}");
    for title in [
        "REPEATER",
        "EVENT TYPE",
        "STATE",
        "ATTEMPTS",
        "CREATED",
        "NEXT ATTEMPT",
        "LAST ERROR",
    ] {
        assert_aligned(&table, title);
    }
    let failed = lines
        .iter()
        .find(|line| line.starts_with(&format!("{} ", daemon.failed_record)))
        .unwrap_or_else(|| panic!("no row for the failed record in\n{table}"));
    assert!(failed.contains("retrying"), "{failed}");
    assert!(
        failed.contains("in 2"),
        "next attempt in about 25 min: {failed}"
    );
    assert!(failed.contains("HTTP 503"), "{failed}");
    assert!(
        lines[1..]
            .iter()
            .filter(|line| line.contains("pending"))
            .all(|line| line.contains(" due ")),
        "pending records are due now:\n{table}"
    );
    assert!(
        lines[1..]
            .iter()
            .all(|line| line.contains("just now") || line.contains(" s ago")),
        "creation times are relative:\n{table}"
    );

    // Piped without --output: the API's JSON answer, times in RFC 3339.
    let piped = daemon.json(ADMIN, &["records", "list", "acme"]).await;
    let explicit = daemon
        .json(ADMIN, &["records", "list", "acme", "--output", "json"])
        .await;
    assert_eq!(piped, explicit);
    let records = piped["records"].as_array().unwrap();
    assert_eq!(records.len(), 5);
    for record in records {
        let created_at = record["created_at"].as_str().unwrap();
        Timestamp::parse(created_at).unwrap();
        assert!(
            !table.contains(created_at),
            "the table shows times relative to now"
        );
    }

    // Filters, and paging hints in the table.
    let crm = daemon
        .json(
            ADMIN,
            &[
                "records",
                "list",
                "acme",
                "--repeater",
                "crm",
                "--state",
                "retrying",
            ],
        )
        .await;
    assert_eq!(crm["records"].as_array().unwrap().len(), 1);
    assert_eq!(crm["records"][0]["id"], daemon.failed_record);
    let recent = daemon
        .json(ADMIN, &["records", "list", "acme", "--since", "1h"])
        .await;
    assert_eq!(recent["records"].as_array().unwrap().len(), 5);
    let future = Timestamp(now_millis() + 3_600_000).to_rfc3339();
    let none = daemon
        .json(ADMIN, &["records", "list", "acme", "--since", &future])
        .await;
    assert_eq!(none["records"], json!([]));
    let paged = daemon
        .stdout(
            ADMIN,
            &["records", "list", "acme", "--limit", "2", "-o", "table"],
        )
        .await;
    assert!(
        paged
            .lines()
            .last()
            .unwrap()
            .starts_with("more: add --after "),
        "{paged}"
    );
    let empty = daemon
        .stdout(
            ADMIN,
            &["records", "list", "acme", "--since", &future, "-o", "table"],
        )
        .await;
    assert_eq!(empty, "no records\n");

    // One record with its attempts.
    let id = daemon.failed_record.to_string();
    let shown = daemon
        .stdout(ADMIN, &["records", "show", "acme", &id, "-o", "table"])
        .await;
    assert!(
        shown.contains("state         retrying, 1 attempts"),
        "{shown}"
    );
    assert!(shown.contains("next attempt"), "{shown}");
    assert!(
        shown.contains("3 min ago"),
        "the attempt started 3 min ago:\n{shown}"
    );
    assert_aligned(&shown[shown.find("ATTEMPT ").unwrap()..], "OUTCOME");
    assert!(
        shown.contains("41 ms") && shown.contains("503") && shown.contains("retry"),
        "{shown}"
    );
    assert!(
        shown.contains("POST https://crm.example.com/hooks"),
        "the attempt shows what it sent:\n{shown}"
    );
    let cancelled = daemon
        .json(ADMIN, &["records", "cancel", "acme", &id])
        .await;
    assert_eq!(cancelled["state"], "cancelled");
    let resent = daemon
        .stdout(ADMIN, &["records", "resend", "acme", &id, "-o", "table"])
        .await;
    assert!(resent.contains("pending, 0 attempts"), "{resent}");
}

#[tokio::test]
async fn repeaters_of_every_reachable_domain_are_listed_without_a_domain() {
    let daemon = daemon().await;
    let table = daemon
        .stdout(ADMIN, &["repeaters", "list", "--output", "table"])
        .await;
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows[0].starts_with("acme    audit"), "{table}");
    assert!(rows[1].starts_with("acme    crm"), "{table}");
    assert!(rows[2].starts_with("globex  ledger"), "{table}");
    for title in [
        "STATE",
        "PENDING",
        "RETRYING",
        "CONCURRENCY",
        "PLUGIN",
        "LAST SUCCESS",
        "LAST ERROR",
    ] {
        assert_aligned(&table, title);
    }
    assert!(
        rows[1].contains("backoff, in 9 min") || rows[1].contains("backoff, in 10 min"),
        "{}",
        rows[1]
    );
    assert!(rows[0].contains("active"), "{}", rows[0]);

    // A domain token sees its own domain only; a domain narrows the list.
    let acme = daemon.json(ACME, &["repeaters", "list"]).await;
    let names: Vec<&str> = acme["repeaters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["audit", "crm"]);
    let globex = daemon.json(ADMIN, &["repeaters", "list", "globex"]).await;
    assert_eq!(globex["repeaters"][0]["name"], "ledger");

    let shown = daemon
        .stdout(ADMIN, &["repeaters", "show", "acme", "crm", "-o", "table"])
        .await;
    for expected in [
        "repeater      acme/crm",
        "state         backoff, in ",
        "plugin        json-forward 0.1.0",
        "backlog       3 pending, 1 retrying",
        "backoff       step 1, until 20",
        "last error    HTTP 503",
    ] {
        assert!(shown.contains(expected), "missing {expected:?} in\n{shown}");
    }
    let paused = daemon
        .stdout(ADMIN, &["repeaters", "pause", "acme", "crm", "-o", "table"])
        .await;
    assert!(paused.contains("state         paused"), "{paused}");
    let requeued = daemon
        .stdout(
            ADMIN,
            &["repeaters", "requeue", "acme", "crm", "-o", "table"],
        )
        .await;
    assert_eq!(requeued, "requeued 1 records of acme/crm\n");
    let resumed = daemon
        .json(ADMIN, &["repeaters", "resume", "acme", "crm"])
        .await;
    assert_eq!(resumed["paused"], false);
    assert_eq!(resumed["backlog"]["pending"], 4);
}

#[tokio::test]
async fn plugins_are_listed_and_errors_name_what_was_wrong() {
    let daemon = daemon().await;
    let table = daemon
        .stdout(ADMIN, &["plugins", "list", "--output", "table"])
        .await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert!(
        lines.iter().any(|line| line.starts_with("json-forward")
            && line.contains("built-in")
            && line.contains("0.1.0")),
        "{table}"
    );
    assert_aligned(&table, "KIND");
    let json = daemon.json(ADMIN, &["plugins", "list"]).await;
    assert_eq!(json["plugins"].as_array().unwrap().len(), 3);

    let missing = daemon
        .run(ADMIN, &["records", "show", "acme", "999999"])
        .await;
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("404") && stderr.contains("record 999999 not found"),
        "{stderr}"
    );
    let refused = daemon.run(ACME, &["plugins", "list"]).await;
    assert!(String::from_utf8_lossy(&refused.stderr).contains("403"));
    // Without any token the answer says how to give one.
    let anonymous = tokio::process::Command::new(env!("CARGO_BIN_EXE_repeaterd"))
        .args(["repeaters", "list", "--url", &daemon.base])
        .env("REPEATERD_LOG", "warn")
        .env_remove("REPEATERD_TOKEN")
        .output()
        .await
        .expect("running repeaterd");
    assert!(!anonymous.status.success());
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("pass --token or set REPEATERD_TOKEN"),
        "{stderr}"
    );
    let bad_since = daemon
        .run(
            ADMIN,
            &["records", "list", "acme", "--since", "last tuesday"],
        )
        .await;
    assert!(!bad_since.status.success());
    assert!(String::from_utf8_lossy(&bad_since.stderr).contains("--since \"last tuesday\""));
    let bad_output = daemon
        .run(ADMIN, &["records", "list", "acme", "--output", "yaml"])
        .await;
    assert!(!bad_output.status.success());
    assert!(String::from_utf8_lossy(&bad_output.stderr).contains("yaml"));
    // The records are untouched by the refused calls.
    assert_eq!(daemon.api.record_count("acme").await, 5);
}

/// The states of a repeater's records, by id.
async fn states(daemon: &Daemon, repeater: &str) -> Vec<(i64, String)> {
    let query = repeaterd::store::RecordQuery {
        repeater: Some(repeater.to_owned()),
        limit: 1000,
        ..Default::default()
    };
    let records = daemon.api.store.records("acme", &query).await.unwrap();
    records
        .into_iter()
        .map(|record| (record.id, record.state.to_string()))
        .collect()
}

#[tokio::test]
async fn failures_are_listed_and_records_are_resent_or_cancelled_in_bulk() {
    let daemon = daemon().await;
    let table = daemon
        .stdout(
            ADMIN,
            &["records", "failures", "acme", "crm", "--output", "table"],
        )
        .await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 1 + 1 + 1, "{table}");
    let rows = lines[..2].join("\n");
    for title in ["RETRYING", "FIRST SEEN", "LAST SEEN", "SAMPLE", "ERROR"] {
        assert_aligned(&rows, title);
    }
    let row = lines[1];
    assert!(row.starts_with("1 "), "one record in the group: {row}");
    assert!(row.contains("just now") || row.contains(" s ago"), "{row}");
    assert!(row.contains(&daemon.failed_record.to_string()), "{row}");
    assert!(row.ends_with("HTTP 503"), "{row}");
    assert!(
        lines[2].contains("records resend|cancel acme --repeater crm --error"),
        "{table}"
    );
    let json = daemon
        .json(ADMIN, &["records", "failures", "acme", "crm"])
        .await;
    assert_eq!(json["groups"][0]["error"], "HTTP 503");
    assert_eq!(json["groups"][0]["sample_record_id"], daemon.failed_record);
    let none = daemon
        .stdout(
            ACME,
            &["records", "failures", "acme", "audit", "-o", "table"],
        )
        .await;
    assert_eq!(none, "no failures for acme/audit\n");

    // A failure group, by its last error.
    let resent = daemon
        .stdout(
            ACME,
            &[
                "records",
                "resend",
                "acme",
                "--repeater",
                "crm",
                "--error",
                "HTTP 503",
                "-o",
                "table",
            ],
        )
        .await;
    assert_eq!(
        resent,
        "resent 1 records of acme/crm whose last error is \"HTTP 503\"\n"
    );
    let crm = states(&daemon, "crm").await;
    assert_eq!(crm.len(), 4);
    assert!(crm.iter().all(|(_, state)| state == "pending"), "{crm:?}");

    // Every record in a state, the answer as JSON when piped.
    let cancelled = daemon
        .json(
            ACME,
            &[
                "records",
                "cancel",
                "acme",
                "--repeater",
                "crm",
                "--state",
                "pending",
            ],
        )
        .await;
    assert_eq!(cancelled, json!({"cancelled": 4}));
    assert!(
        states(&daemon, "crm")
            .await
            .iter()
            .all(|(_, state)| state == "cancelled")
    );
    assert_eq!(
        states(&daemon, "audit").await[0].1,
        "pending",
        "another repeater's records stay"
    );
    let resent = daemon
        .stdout(
            ACME,
            &[
                "records",
                "resend",
                "acme",
                "--repeater",
                "crm",
                "--state",
                "cancelled",
                "-o",
                "table",
            ],
        )
        .await;
    assert_eq!(resent, "resent 4 cancelled records of acme/crm\n");
    assert!(
        states(&daemon, "crm")
            .await
            .iter()
            .all(|(_, state)| state == "pending")
    );

    // The API's refusals, and clap's, are errors naming what was wrong.
    let finished = daemon
        .run(
            ACME,
            &[
                "records",
                "cancel",
                "acme",
                "--repeater",
                "crm",
                "--state",
                "succeeded",
            ],
        )
        .await;
    assert!(!finished.status.success());
    let stderr = String::from_utf8_lossy(&finished.stderr);
    assert!(
        stderr.contains("422") && stderr.contains("state: succeeded records"),
        "{stderr}"
    );
    let id = daemon.failed_record.to_string();
    let refusals: [(&[&str], &str); 3] = [
        (
            &["records", "resend", "acme", &id, "--repeater", "crm"],
            "cannot be used with",
        ),
        (
            &["records", "cancel", "acme", "--state", "pending"],
            "--repeater <REPEATER>",
        ),
        (
            &[
                "records",
                "resend",
                "acme",
                "--repeater",
                "crm",
                "--state",
                "pending",
                "--error",
                "x",
            ],
            "cannot be used with",
        ),
    ];
    for (args, says) in refusals {
        let refused = daemon.run(ADMIN, args).await;
        assert!(!refused.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert!(
        states(&daemon, "crm")
            .await
            .iter()
            .all(|(_, state)| state == "pending"),
        "refused calls change nothing"
    );
}
