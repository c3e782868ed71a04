//! The API over each store (a SQLite file, and a fresh database on the
//! PostgreSQL test server): idempotent ingest, all-or-nothing batches,
//! record pages and repeater status behave the same.

use std::path::Path;

use axum::http::{Method, StatusCode};
use repeaterd::api::ApiLimits;
use repeaterd_tests::{Backend, on_both_stores};
use serde_json::{Value, json};

use crate::support::{ACME, TestApi};

on_both_stores!(
    open = api_over;
    ingest_is_idempotent_and_batches_are_all_or_nothing,
    records_and_repeater_status,
);

/// A router over the store `backend` names, and the backend, which must
/// outlive the test.
async fn api_over(backend: Backend) -> (TestApi, Backend) {
    let api = match &backend {
        Backend::Sqlite => TestApi::new().await,
        Backend::Postgres(database) => {
            let store = repeaterd::store::open(Some(&database.url), Path::new("unused.db"))
                .await
                .expect("open the PostgreSQL store");
            TestApi::over(store, None, crate::support::auth(), ApiLimits::default())
        }
    };
    (api, backend)
}

async fn ingest_is_idempotent_and_batches_are_all_or_nothing(api: TestApi) {
    api.put_repeater("acme", "crm", &[]).await;
    api.put_repeater("acme", "audit", &["audit.*", "case.created"])
        .await;

    let event = json!({"type": "case.created", "payload": {"n": 1}, "id": "pg-1"});
    let first = api.post_event("acme", event.clone()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
    assert_eq!(first.json["records"].as_array().unwrap().len(), 2);
    let again = api.post_event("acme", event).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json["records"], first.json["records"]);
    assert_eq!(api.record_count("acme").await, 2);

    let path = "/v1/domains/acme/events/batch";
    let mut events: Vec<Value> = (0..50)
        .map(|i| json!({"type": "t", "payload": i, "id": format!("pg-b-{i}")}))
        .collect();
    events[37] = json!({"type": "t", "body": "<x/>"});
    let refused = api
        .admin_json(Method::POST, path, json!({"events": events}))
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(refused.message().starts_with("events[37].content_type"));
    assert_eq!(api.record_count("acme").await, 2);
    events.remove(37);
    let stored = api
        .admin_json(Method::POST, path, json!({"events": events}))
        .await;
    assert_eq!(stored.status, StatusCode::ACCEPTED, "{stored:?}");
    assert_eq!(api.record_count("acme").await, 2 + 49);
}

async fn records_and_repeater_status(api: TestApi) {
    api.put_repeater("acme", "crm", &[]).await;
    for i in 0..7 {
        api.post_event("acme", json!({"type": "t", "payload": i}))
            .await;
    }
    let mut ids = Vec::new();
    let mut path = "/v1/domains/acme/records?limit=3".to_string();
    loop {
        let page = api
            .send(Method::GET, &path, Some(ACME), None, Vec::new())
            .await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        ids.extend(
            page.json["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_i64().unwrap()),
        );
        match page.json["next_after"].as_i64() {
            Some(after) => path = format!("/v1/domains/acme/records?limit=3&after={after}"),
            None => break,
        }
    }
    assert_eq!(ids.len(), 7);
    let cancelled = api
        .admin(
            Method::POST,
            &format!("/v1/domains/acme/records/{}/cancel", ids[0]),
        )
        .await;
    assert_eq!(cancelled.json["state"], "cancelled");
    let twice = api
        .admin(
            Method::POST,
            &format!("/v1/domains/acme/records/{}/cancel", ids[0]),
        )
        .await;
    assert_eq!(twice.status, StatusCode::CONFLICT);

    let paused = api
        .admin(Method::POST, "/v1/domains/acme/repeaters/crm/pause")
        .await;
    assert_eq!(paused.json["paused"], true);
    assert_eq!(paused.json["backlog"]["pending"], 6);
    assert_eq!(paused.json["backlog"]["cancelled"], 1);
    let requeued = api
        .admin(Method::POST, "/v1/domains/acme/repeaters/crm/requeue")
        .await;
    assert_eq!(requeued.json["requeued"], 1);

    let metrics = api.admin(Method::GET, "/metrics").await;
    assert!(
        metrics
            .text
            .contains("repeaterd_backlog_records{domain=\"acme\",state=\"pending\"} 7"),
        "{}",
        metrics.text
    );
    let ready = api
        .send(Method::GET, "/readyz", None, None, Vec::new())
        .await;
    assert_eq!(ready.status, StatusCode::OK);
}
