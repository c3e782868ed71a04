//! The bulk routes of one repeater: failure groups by last error, resend
//! and cancel by group and by state, through the real router over a real
//! SQLite store whose records failed through the store's own lane writes.
//! The harness checks every answer against the OpenAPI description.

use axum::http::{Method, StatusCode};
use repeaterd::model::{AttemptOutcome, RecordState, now_millis};
use repeaterd::store::{AttemptDraft, RecordOutcome};
use serde_json::{Value, json};

use crate::support::{ACME, GLOBEX, TestApi};

/// The last errors the fixture's failures carry.
const BUSY: &str = "HTTP 503";
const NO_EMAIL: &str = "plugin rejected: no email";

/// acme's `crm` with six records: two retrying after a 503, one rejected
/// after a 503, one rejected by the plugin, two still pending; and acme's
/// `audit` with six pending records. Answers the ids of crm's records in
/// that order.
async fn failed_records(api: &TestApi) -> Vec<i64> {
    api.put_repeater("acme", "crm", &[]).await;
    api.put_repeater("acme", "audit", &[]).await;
    let events: Vec<Value> = (0..6).map(|i| json!({"type": "t", "payload": i})).collect();
    let batch = api
        .admin_json(
            Method::POST,
            "/v1/domains/acme/events/batch",
            json!({"events": events}),
        )
        .await;
    assert_eq!(batch.status, StatusCode::ACCEPTED, "{batch:?}");

    let now = now_millis();
    let (lease, claimed) = api.claim("acme", "crm", 4, now).await;
    let failed = |i: usize, state: RecordState, error: &str| RecordOutcome {
        record_id: claimed[i].id,
        state,
        next_attempt_at: (state == RecordState::Retrying).then_some(now + 600_000),
        attempt: Some(AttemptDraft {
            started_at: now - 1_000,
            duration_ms: 12,
            status: (error == BUSY).then_some(503),
            error: Some(error.to_owned()),
            outcome: if state == RecordState::Retrying {
                AttemptOutcome::Retry
            } else {
                AttemptOutcome::Reject
            },
            response_excerpt: None,
            plugin_sha256: None,
            request: None,
        }),
    };
    let outcomes = [
        failed(0, RecordState::Retrying, BUSY),
        failed(1, RecordState::Retrying, BUSY),
        failed(2, RecordState::Rejected, BUSY),
        failed(3, RecordState::Rejected, NO_EMAIL),
    ];
    api.store
        .finish_batch(&lease, &outcomes, None, true, now)
        .await
        .unwrap();
    let page = api
        .admin(Method::GET, "/v1/domains/acme/records?repeater=crm")
        .await;
    let ids: Vec<i64> = page.json["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 6);
    assert_eq!(
        ids[..4],
        claimed.iter().map(|r| r.id).collect::<Vec<_>>()[..]
    );
    ids
}

/// A record's state and attempt count, as the API shows it.
async fn record(api: &TestApi, id: i64) -> Value {
    let answer = api
        .admin(Method::GET, &format!("/v1/domains/acme/records/{id}"))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer.json
}

/// A repeater's backlog, as its status shows it.
async fn backlog(api: &TestApi, name: &str) -> Value {
    let answer = api
        .admin(Method::GET, &format!("/v1/domains/acme/repeaters/{name}"))
        .await;
    answer.json["backlog"].clone()
}

/// Posts `body` as JSON with `token`.
async fn post(api: &TestApi, token: &str, path: &str, body: Value) -> crate::support::Answer {
    api.send(
        Method::POST,
        path,
        Some(token),
        Some("application/json"),
        body.to_string(),
    )
    .await
}

#[tokio::test]
async fn failures_are_grouped_by_last_error_largest_first() {
    let api = TestApi::new().await;
    let ids = failed_records(&api).await;
    let path = "/v1/domains/acme/repeaters/crm/failures";
    let listed = api
        .send(Method::GET, path, Some(ACME), None, Vec::new())
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{listed:?}");
    let groups = listed.json["groups"].as_array().unwrap();
    let summary: Vec<(&str, i64, i64, i64)> = groups
        .iter()
        .map(|g| {
            (
                g["error"].as_str().unwrap(),
                g["count"].as_i64().unwrap(),
                g["retrying"].as_i64().unwrap(),
                g["sample_record_id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(summary, [(BUSY, 3, 2, ids[2]), (NO_EMAIL, 1, 0, ids[3])]);
    assert!(groups[0]["first_seen_at"].as_str().unwrap().ends_with('Z'));
    assert!(groups[0]["last_seen_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(listed.json["scan_limit"], repeaterd::store::FAILURE_SCAN);

    let one = api.admin(Method::GET, &format!("{path}?limit=1")).await;
    assert_eq!(one.json["groups"].as_array().unwrap().len(), 1);
    assert_eq!(one.json["groups"][0]["error"], BUSY);
    let none = api
        .admin(Method::GET, "/v1/domains/acme/repeaters/audit/failures")
        .await;
    assert_eq!(none.json["groups"], json!([]));

    for bad in ["0", "1001", "ten", "-1"] {
        let answer = api.admin(Method::GET, &format!("{path}?limit={bad}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}: {answer:?}");
        assert_eq!(answer.code(), "invalid_query");
        assert!(
            answer.message().starts_with("limit: ") && answer.message().contains(bad),
            "{bad}: {}",
            answer.message()
        );
    }
    let unknown = api.admin(Method::GET, &format!("{path}?colour=red")).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);

    let missing = api
        .admin(Method::GET, "/v1/domains/acme/repeaters/nope/failures")
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.message(), "repeater acme/nope not found");
    let foreign = api
        .send(Method::GET, path, Some(GLOBEX), None, Vec::new())
        .await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN, "{foreign:?}");
}

#[tokio::test]
async fn a_failure_group_is_resent_or_cancelled_by_its_last_error() {
    let api = TestApi::new().await;
    let ids = failed_records(&api).await;
    let base = "/v1/domains/acme/repeaters/crm/failures";

    // Cancel reaches the group's retrying records only.
    let cancelled = post(
        &api,
        ACME,
        &format!("{base}/cancel"),
        json!({"error": BUSY}),
    )
    .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:?}");
    assert_eq!(cancelled.json, json!({"cancelled": 2}));
    for id in &ids[..2] {
        assert_eq!(record(&api, *id).await["state"], "cancelled");
    }
    assert_eq!(record(&api, ids[2]).await["state"], "rejected");

    // Resend reaches the group's retrying and rejected records: back to
    // pending, due now, the attempt history kept.
    let resent = post(
        &api,
        ACME,
        &format!("{base}/resend"),
        json!({"error": BUSY}),
    )
    .await;
    assert_eq!(resent.json, json!({"resent": 1}), "{resent:?}");
    let again = record(&api, ids[2]).await;
    assert_eq!(again["state"], "pending");
    assert_eq!(again["attempt_count"], 0);
    assert_eq!(again["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(record(&api, ids[3]).await["state"], "rejected");
    let other = post(
        &api,
        ACME,
        &format!("{base}/resend"),
        json!({"error": NO_EMAIL}),
    )
    .await;
    assert_eq!(other.json, json!({"resent": 1}));
    assert_eq!(record(&api, ids[3]).await["state"], "pending");
    // A group that no longer exists moves nothing.
    let gone = post(
        &api,
        ACME,
        &format!("{base}/resend"),
        json!({"error": BUSY}),
    )
    .await;
    assert_eq!(gone.json, json!({"resent": 0}));
    assert_eq!(backlog(&api, "audit").await["pending"], 6);
}

#[tokio::test]
async fn records_in_a_state_are_resent_or_cancelled_in_bulk() {
    let api = TestApi::new().await;
    let ids = failed_records(&api).await;
    let base = "/v1/domains/acme/repeaters/crm";

    let cancelled = post(
        &api,
        ACME,
        &format!("{base}/cancel"),
        json!({"state": "pending"}),
    )
    .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:?}");
    assert_eq!(cancelled.json, json!({"cancelled": 2}));
    let cancelled = post(
        &api,
        ACME,
        &format!("{base}/cancel"),
        json!({"state": "retrying"}),
    )
    .await;
    assert_eq!(cancelled.json, json!({"cancelled": 2}));
    let counts = backlog(&api, "crm").await;
    assert_eq!(
        (&counts["cancelled"], &counts["rejected"]),
        (&json!(4), &json!(2))
    );
    assert_eq!(
        backlog(&api, "audit").await["pending"],
        6,
        "audit is untouched"
    );

    let resent = post(
        &api,
        ACME,
        &format!("{base}/resend"),
        json!({"state": "rejected"}),
    )
    .await;
    assert_eq!(resent.json, json!({"resent": 2}), "{resent:?}");
    for id in &ids[2..4] {
        let again = record(&api, *id).await;
        assert_eq!(
            (&again["state"], &again["attempt_count"]),
            (&json!("pending"), &json!(0))
        );
        assert_eq!(
            again["attempts"].as_array().unwrap().len(),
            1,
            "history kept"
        );
    }
    let resent = post(
        &api,
        ACME,
        &format!("{base}/resend"),
        json!({"state": "cancelled"}),
    )
    .await;
    assert_eq!(resent.json, json!({"resent": 4}));
    let counts = backlog(&api, "crm").await;
    assert_eq!(counts["pending"], 6, "{counts}");

    // Finished records cannot be cancelled: 422 naming the state.
    for finished in ["succeeded", "rejected", "empty", "cancelled"] {
        let refused = post(
            &api,
            ACME,
            &format!("{base}/cancel"),
            json!({"state": finished}),
        )
        .await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{refused:?}"
        );
        assert_eq!(refused.code(), "validation_failed");
        assert!(
            refused.message().starts_with("state: ") && refused.message().contains(finished),
            "{}",
            refused.message()
        );
    }
    assert_eq!(backlog(&api, "crm").await["pending"], 6);
}

#[tokio::test]
async fn bulk_routes_refuse_unknown_repeaters_other_domains_and_bad_bodies() {
    let api = TestApi::new().await;
    failed_records(&api).await;
    let routes = [
        ("failures/resend", json!({"error": BUSY})),
        ("failures/cancel", json!({"error": BUSY})),
        ("resend", json!({"state": "retrying"})),
        ("cancel", json!({"state": "retrying"})),
    ];
    for (action, body) in &routes {
        let missing = post(
            &api,
            ACME,
            &format!("/v1/domains/acme/repeaters/nope/{action}"),
            body.clone(),
        )
        .await;
        assert_eq!(
            missing.status,
            StatusCode::NOT_FOUND,
            "{action}: {missing:?}"
        );
        assert_eq!(
            missing.message(),
            "repeater acme/nope not found",
            "{action}"
        );

        let path = format!("/v1/domains/acme/repeaters/crm/{action}");
        let foreign = post(&api, GLOBEX, &path, body.clone()).await;
        assert_eq!(
            foreign.status,
            StatusCode::FORBIDDEN,
            "{action}: {foreign:?}"
        );

        let unlabelled = api
            .send(Method::POST, &path, Some(ACME), None, body.to_string())
            .await;
        assert_eq!(
            unlabelled.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{action}"
        );
        let malformed = api
            .send(
                Method::POST,
                &path,
                Some(ACME),
                Some("application/json"),
                "{\"",
            )
            .await;
        assert_eq!(malformed.status, StatusCode::BAD_REQUEST, "{action}");
        assert_eq!(malformed.code(), "invalid_json", "{action}");
        let field = if action.starts_with("failures") {
            "error"
        } else {
            "state"
        };
        for bad in [
            json!({}),
            json!({ field: 5 }),
            json!({ field: "x", "colour": "red" }),
        ] {
            let refused = post(&api, ACME, &path, bad.clone()).await;
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{action} {bad}");
            assert_eq!(refused.code(), "invalid_body", "{action} {bad}");
        }
        let empty = post(&api, ACME, &path, json!({})).await;
        assert!(
            empty
                .message()
                .contains(&format!("missing field `{field}`")),
            "{action}: {}",
            empty.message()
        );
    }
    for action in ["resend", "cancel"] {
        let unknown = post(
            &api,
            ACME,
            &format!("/v1/domains/acme/repeaters/crm/{action}"),
            json!({"state": "done"}),
        )
        .await;
        assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{unknown:?}");
        assert!(
            unknown
                .message()
                .starts_with("state: unknown record state \"done\""),
            "{}",
            unknown.message()
        );
    }
    // Nothing was changed by any refused request.
    let counts = backlog(&api, "crm").await;
    assert_eq!(
        (&counts["pending"], &counts["retrying"], &counts["rejected"]),
        (&json!(2), &json!(2), &json!(2)),
        "{counts}"
    );
}
