//! Every API route's happy path and errors, through the real router over a
//! real SQLite store. The harness checks every answer against the API's
//! OpenAPI description (status listed, body valid against its schema).

use crate::support::{ACME, ADMIN, GLOBEX, TestApi};
use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use repeaterd::api::ApiLimits;
use repeaterd::api::time::Timestamp;
use repeaterd::model::{NewEvent, now_millis};
use serde_json::{Value, json};

#[tokio::test]
async fn ingest_creates_one_record_per_subscribed_repeater_and_repeats_the_first_answer() {
    let api = TestApi::new().await;
    api.put_repeater("acme", "crm", &["case.created"]).await;
    api.put_repeater("acme", "audit", &[]).await;
    api.put_repeater("acme", "closed-only", &["case.closed"])
        .await;

    let event = json!({"type": "case.created", "payload": {"case": 7}, "id": "evt-1", "ordering_key": "case-7"});
    let first = api.post_event("acme", event.clone()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
    assert_eq!(first.json["event_id"], "evt-1");
    assert_eq!(first.json["created"], true);
    let mut repeaters: Vec<&str> = first.json["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["repeater"].as_str().unwrap())
        .collect();
    repeaters.sort();
    assert_eq!(repeaters, ["audit", "crm"]);

    let again = api.post_event("acme", event).await;
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
    assert_eq!(again.json["created"], false);
    assert_eq!(again.json["event_id"], "evt-1");
    assert_eq!(again.json["records"], first.json["records"]);
    assert_eq!(api.record_count("acme").await, 2);

    // Without an id the host makes one, and every post is new.
    let anonymous = api
        .post_event("acme", json!({"type": "case.created", "payload": null}))
        .await;
    assert_eq!(anonymous.status, StatusCode::ACCEPTED);
    assert!(!anonymous.json["event_id"].as_str().unwrap().is_empty());
    assert_eq!(api.record_count("acme").await, 4);

    // A text body with its content type.
    let xml = api
        .post_event(
            "acme",
            json!({"type": "case.created", "body": "<case/>", "content_type": "application/xml"}),
        )
        .await;
    assert_eq!(xml.status, StatusCode::ACCEPTED, "{xml:?}");
    let record_id = xml.json["records"][0]["id"].as_i64().unwrap();
    let shown = api
        .admin(
            Method::GET,
            &format!("/v1/domains/acme/records/{record_id}"),
        )
        .await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.json["event_type"], "case.created");
    assert_eq!(shown.json["state"], "pending");
}

#[tokio::test]
async fn ingest_refuses_bad_events_with_the_field_named() {
    let api = TestApi::new().await;
    api.put_repeater("acme", "crm", &[]).await;
    let cases: Vec<(Value, StatusCode, &str, &str)> = vec![
        (
            json!({"payload": 1}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "type",
        ),
        (
            json!({"type": 5, "payload": 1}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "type",
        ),
        (
            json!({"type": "t", "payload": 1, "extra": true}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "extra",
        ),
        (
            json!({"type": "t"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "payload",
        ),
        (
            json!({"type": "t", "body": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "content_type",
        ),
        (
            json!({"type": "t", "payload": 1, "body": "x", "content_type": "a/b"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "body",
        ),
        (
            json!({"type": "", "payload": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "type",
        ),
        (
            json!(["t", 1]),
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "expected a JSON object",
        ),
    ];
    for (body, status, code, mention) in cases {
        let answer = api.post_event("acme", body.clone()).await;
        assert_eq!(answer.status, status, "{body}: {answer:?}");
        assert_eq!(answer.code(), code, "{body}");
        assert!(
            answer.message().contains(mention),
            "{body}: {}",
            answer.message()
        );
    }
    assert_eq!(api.record_count("acme").await, 0);
}

#[tokio::test]
async fn malformed_json_wrong_media_type_and_bad_domains_are_json_errors() {
    let api = TestApi::new().await;
    let path = "/v1/domains/acme/events";
    let broken = api
        .send(
            Method::POST,
            path,
            Some(ADMIN),
            Some("application/json"),
            "{\"type\": ",
        )
        .await;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST);
    assert_eq!(broken.code(), "invalid_json");
    assert_eq!(
        broken.headers[header::CONTENT_TYPE],
        "application/json",
        "{broken:?}"
    );

    let text = api
        .send(Method::POST, path, Some(ADMIN), Some("text/plain"), "{}")
        .await;
    assert_eq!(text.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(text.code(), "unsupported_media_type");
    let none = api.send(Method::POST, path, Some(ADMIN), None, "{}").await;
    assert_eq!(none.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let bad_domain = api
        .post_event("Not_A_Slug", json!({"type": "t", "payload": 1}))
        .await;
    assert_eq!(bad_domain.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_domain.code(), "invalid_name");
    assert!(bad_domain.message().contains("Not_A_Slug"));
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_json_and_stores_nothing() {
    let limits = ApiLimits {
        max_body_bytes: 4096,
        ..ApiLimits::default()
    };
    let api = TestApi::with(crate::support::auth(), limits).await;
    api.put_repeater("acme", "crm", &[]).await;
    let big = json!({"type": "t", "payload": "x".repeat(5000)}).to_string();
    let answer = api
        .send(
            Method::POST,
            "/v1/domains/acme/events",
            Some(ADMIN),
            Some("application/json"),
            big.clone(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{answer:?}");
    assert_eq!(answer.code(), "body_too_large");
    assert!(answer.message().contains("4096"));

    // Also without a Content-Length: a streamed body is cut at the limit.
    let chunks: Vec<Result<String, std::io::Error>> = big
        .as_bytes()
        .chunks(1000)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    let streamed = api
        .send(
            Method::POST,
            "/v1/domains/acme/events/batch",
            Some(ADMIN),
            Some("application/json"),
            Body::from_stream(futures::stream::iter(chunks)),
        )
        .await;
    assert_eq!(
        streamed.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{streamed:?}"
    );
    assert_eq!(streamed.code(), "body_too_large");
    assert_eq!(api.record_count("acme").await, 0);
}

#[tokio::test]
async fn a_batch_is_all_or_nothing() {
    let api = TestApi::new().await;
    api.put_repeater("acme", "crm", &[]).await;
    let path = "/v1/domains/acme/events/batch";
    let good = |i: usize| json!({"type": "t", "payload": {"i": i}, "id": format!("b-{i}")});

    // One event with a wrong type: 400 naming its index and field.
    let mut events: Vec<Value> = (0..5).map(good).collect();
    events[3]["ordering_key"] = json!(42);
    let answer = api
        .admin_json(Method::POST, path, json!({"events": events}))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{answer:?}");
    assert!(
        answer.message().starts_with("events[3].ordering_key"),
        "{}",
        answer.message()
    );
    // An event that is not an object.
    let mut events: Vec<Value> = (0..5).map(good).collect();
    events[2] = json!(["t", 1]);
    let answer = api
        .admin_json(Method::POST, path, json!({"events": events}))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{answer:?}");
    assert!(
        answer
            .message()
            .starts_with("events[2]: expected a JSON object"),
        "{}",
        answer.message()
    );
    // One semantically invalid event: 422 naming its index and field.
    let mut events: Vec<Value> = (0..5).map(good).collect();
    events[4] = json!({"type": "t", "body": "x"});
    let answer = api
        .admin_json(Method::POST, path, json!({"events": events}))
        .await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{answer:?}"
    );
    assert!(
        answer.message().starts_with("events[4].content_type"),
        "{}",
        answer.message()
    );
    // A repeated id inside the batch.
    let events = vec![good(1), good(2), good(1)];
    let answer = api
        .admin_json(Method::POST, path, json!({"events": events}))
        .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        answer.message().starts_with("events[2].id"),
        "{}",
        answer.message()
    );
    // Empty and oversized batches.
    let answer = api
        .admin_json(Method::POST, path, json!({"events": []}))
        .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"type": "t", "payload": i}))
        .collect();
    let answer = api
        .admin_json(Method::POST, path, json!({"events": many}))
        .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(answer.message().contains("1000"), "{}", answer.message());
    assert_eq!(api.record_count("acme").await, 0);

    // Nothing of the refused batches was stored: the same ids are new now.
    let events: Vec<Value> = (0..1000).map(good).collect();
    let answer = api
        .admin_json(Method::POST, path, json!({"events": events.clone()}))
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
    let answers = answer.json["events"].as_array().unwrap();
    assert_eq!(answers.len(), 1000);
    assert!(answers.iter().all(|a| a["created"] == true));
    assert_eq!(answers[999]["event_id"], "b-999");
    assert_eq!(api.record_count("acme").await, 1000);

    // The whole batch again: the first answers, nothing new.
    let again = api
        .admin_json(Method::POST, path, json!({"events": events}))
        .await;
    assert_eq!(again.status, StatusCode::OK);
    let repeats = again.json["events"].as_array().unwrap();
    assert_eq!(repeats.len(), 1000);
    for (first, repeat) in answers.iter().zip(repeats) {
        assert_eq!(repeat["created"], false);
        assert_eq!(repeat["event_id"], first["event_id"]);
        assert_eq!(repeat["records"], first["records"]);
    }
    assert_eq!(api.record_count("acme").await, 1000);
}

#[tokio::test]
async fn repeaters_are_stored_validated_listed_and_deleted() {
    let api = TestApi::new().await;
    let path = "/v1/domains/acme/repeaters/crm";
    let spec = json!({
        "url": "https://crm.example/hooks",
        "plugin": "json-forward",
        "plugin_config": {"envelope": true},
        "event_types": ["case.created"],
        "limits": {"concurrency": 3},
        "auth": {"type": "bearer", "token_env": "CRM_TOKEN"}
    });
    let created = api.admin_json(Method::PUT, path, spec.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.json["domain"], "acme");
    assert_eq!(created.json["name"], "crm");
    assert_eq!(created.json["spec"]["limits"]["concurrency"], 3);
    assert_eq!(created.json["paused"], false);
    assert_eq!(created.json["plugin"]["name"], "json-forward");
    assert_eq!(created.json["plugin"]["known"], true);
    assert_eq!(created.json["plugin"]["version"], "0.1.0");
    assert_eq!(created.json["backlog"]["pending"], 0);

    let mut changed = spec.clone();
    changed["url"] = json!("https://crm.example/v2");
    let replaced = api.admin_json(Method::PUT, path, changed).await;
    assert_eq!(replaced.status, StatusCode::OK);
    assert_eq!(replaced.json["spec"]["url"], "https://crm.example/v2");

    let shown = api.admin(Method::GET, path).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.json["spec"]["url"], "https://crm.example/v2");
    api.put_repeater("acme", "audit", &[]).await;
    api.put_repeater("globex", "other", &[]).await;
    let listed = api.admin(Method::GET, "/v1/domains/acme/repeaters").await;
    let names: Vec<&str> = listed.json["repeaters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["audit", "crm"]);

    let refused: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({"url": "ftp://x.example/", "plugin": "json-forward"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "url",
        ),
        (
            json!({"url": "https://x.example/", "plugin": "no-such-plugin"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no-such-plugin",
        ),
        (
            json!({"url": "https://x.example/", "plugin": "json-forward", "plugin_config": {"bogus": 1}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "bogus",
        ),
        (
            json!({"url": "https://x.example/", "plugin": "json-forward", "name": "other"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            json!({"url": "https://x.example/", "plugin": "json-forward", "limits": {"concurrency": "many"}}),
            StatusCode::BAD_REQUEST,
            "limits.concurrency",
        ),
        (
            json!({"url": "https://x.example/", "plugin": "json-forward", "colour": "red"}),
            StatusCode::BAD_REQUEST,
            "colour",
        ),
        (
            json!({"plugin": "json-forward"}),
            StatusCode::BAD_REQUEST,
            "url",
        ),
        (json!("just a string"), StatusCode::BAD_REQUEST, "object"),
    ];
    for (body, status, mention) in refused {
        let answer = api
            .admin_json(Method::PUT, "/v1/domains/acme/repeaters/new", body.clone())
            .await;
        assert_eq!(answer.status, status, "{body}: {answer:?}");
        assert!(
            answer.message().contains(mention),
            "{body}: {}",
            answer.message()
        );
    }
    let bad_name = api
        .admin_json(
            Method::PUT,
            "/v1/domains/acme/repeaters/Bad_Name",
            spec.clone(),
        )
        .await;
    assert_eq!(bad_name.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_name.code(), "invalid_name");
    let missing = api
        .admin(Method::GET, "/v1/domains/acme/repeaters/new")
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.code(), "not_found");

    let deleted = api.admin(Method::DELETE, path).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{deleted:?}");
    let gone = api.admin(Method::GET, path).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let again = api.admin(Method::DELETE, path).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.code(), "not_found");
}

#[tokio::test]
async fn pause_resume_requeue_and_status_show_the_live_state() {
    let api = TestApi::new().await;
    let base = "/v1/domains/acme/repeaters/crm";
    api.put_repeater("acme", "crm", &[]).await;
    for i in 0..3 {
        let answer = api
            .post_event("acme", json!({"type": "t", "payload": i}))
            .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED);
    }
    let paused = api.admin(Method::POST, &format!("{base}/pause")).await;
    assert_eq!(paused.status, StatusCode::OK, "{paused:?}");
    assert_eq!(paused.json["paused"], true);
    assert_eq!(paused.json["backlog"]["pending"], 3);
    let resumed = api.admin(Method::POST, &format!("{base}/resume")).await;
    assert_eq!(resumed.json["paused"], false);

    // Work one batch under a lease: one record fails retryably and the
    // repeater backs off; status shows it.
    let now = now_millis();
    let (lease, claimed) = api.claim("acme", "crm", 10, now).await;
    assert_eq!(claimed.len(), 3);
    let outcome = crate::support::answered_503(claimed[0].id, now, 12, now + 3_600_000);
    let health = crate::support::backed_off(now + 600_000);
    api.store
        .finish_batch(&lease, &[outcome], Some(&health), false, now)
        .await
        .unwrap();
    api.metrics.set_repeater_concurrency("acme", "crm", 4);

    let status = api.admin(Method::GET, base).await;
    assert_eq!(status.json["backoff"]["active"], true, "{}", status.text);
    assert_eq!(status.json["backoff"]["step"], 1);
    assert_eq!(
        status.json["backoff"]["until"],
        Timestamp(now + 600_000).to_rfc3339()
    );
    assert_eq!(status.json["lease"]["holder"], "worker-a");
    assert_eq!(status.json["lease"]["expired"], false);
    assert_eq!(
        status.json["lease"]["expires_at"],
        Timestamp(lease.expires_at).to_rfc3339()
    );
    assert_eq!(status.json["last_success_at"], Value::Null);
    let created_at = status.json["created_at"].as_str().unwrap();
    assert!(
        Timestamp::parse(created_at).unwrap().0 <= now,
        "{created_at}"
    );
    assert_eq!(status.json["last_error"], "HTTP 503");
    assert_eq!(status.json["backlog"]["retrying"], 1);
    assert_eq!(status.json["backlog"]["pending"], 2);
    assert_eq!(status.json["concurrency"], 4);

    // The record shows its attempt.
    let record = api
        .admin(
            Method::GET,
            &format!("/v1/domains/acme/records/{}", claimed[0].id),
        )
        .await;
    assert_eq!(record.json["state"], "retrying");
    assert_eq!(
        record.json["next_attempt_at"],
        Timestamp(now + 3_600_000).to_rfc3339()
    );
    assert_eq!(
        record.json["attempts"][0]["started_at"],
        Timestamp(now).to_rfc3339()
    );
    assert_eq!(record.json["attempts"][0]["duration_ms"], 12);
    assert_eq!(record.json["attempts"][0]["status"], 503);
    assert_eq!(record.json["attempts"][0]["outcome"], "retry");
    assert_eq!(record.json["attempts"][0]["response_excerpt"], "busy");
    assert_eq!(record.json["attempt_count"], 1);
    assert_eq!(
        record.text.matches("\"attempts\"").count(),
        1,
        "one `attempts` key: {}",
        record.text
    );

    api.store.release_lease(&lease).await.unwrap();
    let requeued = api.admin(Method::POST, &format!("{base}/requeue")).await;
    assert_eq!(requeued.status, StatusCode::OK, "{requeued:?}");
    assert_eq!(requeued.json["requeued"], 1);
    let status = api.admin(Method::GET, base).await;
    assert_eq!(status.json["backlog"]["pending"], 3);
    assert_eq!(status.json["backoff"]["active"], false);

    for action in ["pause", "resume", "requeue"] {
        let answer = api
            .admin(
                Method::POST,
                &format!("/v1/domains/acme/repeaters/ghost/{action}"),
            )
            .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{action}");
        assert_eq!(answer.code(), "not_found");
    }
}

#[tokio::test]
async fn records_are_filtered_paginated_resent_and_cancelled() {
    let api = TestApi::new().await;
    api.put_repeater("acme", "crm", &[]).await;
    api.put_repeater("acme", "audit", &[]).await;
    let events: Vec<Value> = (0..5).map(|i| json!({"type": "t", "payload": i})).collect();
    let batch = api
        .admin_json(
            Method::POST,
            "/v1/domains/acme/events/batch",
            json!({"events": events}),
        )
        .await;
    assert_eq!(batch.status, StatusCode::ACCEPTED);

    // Pages of 3 over the 10 records.
    let mut seen = Vec::new();
    let mut after: Option<i64> = None;
    loop {
        let path = match after {
            Some(a) => format!("/v1/domains/acme/records?limit=3&after={a}"),
            None => "/v1/domains/acme/records?limit=3".to_string(),
        };
        let page = api.admin(Method::GET, &path).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        let ids: Vec<i64> = page.json["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        assert!(ids.len() <= 3);
        seen.extend(ids);
        match page.json["next_after"].as_i64() {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 10);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");

    let crm = api
        .admin(Method::GET, "/v1/domains/acme/records?repeater=crm")
        .await;
    let crm_records = crm.json["records"].as_array().unwrap();
    assert_eq!(crm_records.len(), 5);
    assert!(crm_records.iter().all(|r| r["repeater"] == "crm"));
    assert_eq!(crm.json["next_after"], Value::Null);

    let id = crm_records[0]["id"].as_i64().unwrap();
    let cancelled = api
        .admin(
            Method::POST,
            &format!("/v1/domains/acme/records/{id}/cancel"),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:?}");
    assert_eq!(cancelled.json["state"], "cancelled");
    let twice = api
        .admin(
            Method::POST,
            &format!("/v1/domains/acme/records/{id}/cancel"),
        )
        .await;
    assert_eq!(twice.status, StatusCode::CONFLICT, "{twice:?}");
    assert_eq!(twice.code(), "conflict");
    let only_cancelled = api
        .admin(Method::GET, "/v1/domains/acme/records?state=cancelled")
        .await;
    assert_eq!(only_cancelled.json["records"].as_array().unwrap().len(), 1);

    let resent = api
        .admin(
            Method::POST,
            &format!("/v1/domains/acme/records/{id}/resend"),
        )
        .await;
    assert_eq!(resent.status, StatusCode::OK, "{resent:?}");
    assert_eq!(resent.json["state"], "pending");

    // A record whose repeater was deleted cannot be resent: 409.
    let audit_id = api
        .admin(
            Method::GET,
            "/v1/domains/acme/records?repeater=audit&limit=1",
        )
        .await
        .json["records"][0]["id"]
        .as_i64()
        .unwrap();
    let deleted = api
        .admin(Method::DELETE, "/v1/domains/acme/repeaters/audit")
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let orphan = api
        .admin(Method::GET, &format!("/v1/domains/acme/records/{audit_id}"))
        .await;
    assert_eq!(orphan.json["state"], "cancelled", "{orphan:?}");
    let resend = api
        .admin(
            Method::POST,
            &format!("/v1/domains/acme/records/{audit_id}/resend"),
        )
        .await;
    assert_eq!(resend.status, StatusCode::CONFLICT, "{resend:?}");
    assert_eq!(resend.code(), "conflict");

    // Another domain's record is not found here.
    let elsewhere = api
        .admin(Method::GET, &format!("/v1/domains/globex/records/{id}"))
        .await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    for action in ["resend", "cancel"] {
        let answer = api
            .admin(
                Method::POST,
                &format!("/v1/domains/acme/records/999999/{action}"),
            )
            .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{action}");
    }
    for bad in [
        "/v1/domains/acme/records?limit=0",
        "/v1/domains/acme/records?limit=1001",
        "/v1/domains/acme/records?limit=ten",
        "/v1/domains/acme/records?state=done",
        "/v1/domains/acme/records?repeater=Bad_Name",
        "/v1/domains/acme/records?colour=red",
    ] {
        let answer = api.admin(Method::GET, bad).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}: {answer:?}");
        assert_eq!(answer.code(), "invalid_query", "{bad}");
    }
    let bad_id = api.admin(Method::GET, "/v1/domains/acme/records/abc").await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_id.code(), "invalid_path");
}

#[tokio::test]
async fn plugins_are_listed_and_uploaded() {
    let api = TestApi::new().await;
    let listed = api.admin(Method::GET, "/v1/plugins").await;
    assert_eq!(listed.status, StatusCode::OK);
    let names: Vec<&str> = listed.json["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fhir-r4", "form-xml", "json-forward"]);

    let mut component = vec![0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
    component.extend_from_slice(&[0u8; 64]);
    let put = |body: Vec<u8>, content_type: Option<&'static str>, name: &'static str| {
        let api = &api;
        async move {
            api.send(
                Method::PUT,
                &format!("/v1/plugins/{name}"),
                Some(ADMIN),
                content_type,
                body,
            )
            .await
        }
    };
    let created = put(component.clone(), Some("application/wasm"), "mine").await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.json["name"], "mine");
    assert_eq!(created.json["sha256"].as_str().unwrap().len(), 64);
    let replaced = put(component.clone(), Some("application/octet-stream"), "mine").await;
    assert_eq!(replaced.status, StatusCode::OK);

    // Usable by a repeater once installed.
    let answer = api
        .admin_json(
            Method::PUT,
            "/v1/domains/acme/repeaters/custom",
            json!({"url": "http://127.0.0.1:9/", "plugin": "mine"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");

    let not_wasm = put(b"hello".to_vec(), Some("application/wasm"), "other").await;
    assert_eq!(not_wasm.status, StatusCode::UNPROCESSABLE_ENTITY);
    let builtin = put(component.clone(), Some("application/wasm"), "json-forward").await;
    assert_eq!(builtin.status, StatusCode::CONFLICT);
    let wrong_type = put(component.clone(), Some("application/json"), "other").await;
    assert_eq!(wrong_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let empty = put(Vec::new(), Some("application/wasm"), "other").await;
    assert_eq!(empty.status, StatusCode::UNPROCESSABLE_ENTITY);
    let bad_name = put(component.clone(), Some("application/wasm"), "Bad_Name").await;
    assert_eq!(bad_name.status, StatusCode::BAD_REQUEST);

    // Uploads have their own, larger limit than ingest bodies.
    let limits = ApiLimits {
        max_body_bytes: 16,
        max_plugin_bytes: 1024,
        ..ApiLimits::default()
    };
    let small = TestApi::with(crate::support::auth(), limits).await;
    let fits = small
        .send(
            Method::PUT,
            "/v1/plugins/mine",
            Some(ADMIN),
            Some("application/wasm"),
            component.clone(),
        )
        .await;
    assert_eq!(fits.status, StatusCode::CREATED, "{fits:?}");
    let mut too_big = component.clone();
    too_big.resize(2048, 0);
    let answer = small
        .send(
            Method::PUT,
            "/v1/plugins/big",
            Some(ADMIN),
            Some("application/wasm"),
            too_big,
        )
        .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{answer:?}");
    assert!(answer.message().contains("1024"));
}

#[tokio::test]
async fn plugin_routes_without_a_catalogue_say_so() {
    let api = TestApi::new().await;
    let mut state = api.state.clone();
    state.plugins = None;
    let request = axum::http::Request::get("/v1/plugins")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    use tower::ServiceExt;
    let response = repeaterd::api::router(state)
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED);
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let api = TestApi::new().await;
    let health = api
        .send(Method::GET, "/healthz", None, None, Body::empty())
        .await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json["status"], "ok");
    let ready = api
        .send(Method::GET, "/readyz", None, None, Body::empty())
        .await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");

    api.put_repeater("acme", "crm", &[]).await;
    api.post_event("acme", json!({"type": "t", "payload": 1}))
        .await;
    let bad = api.post_event("acme", json!({"type": 1})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    api.metrics.lease_acquired();
    let metrics = api.admin(Method::GET, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    for expected in [
        "repeaterd_backlog_records{domain=\"acme\",state=\"pending\"} 1",
        "repeaterd_events_ingested_total{domain=\"acme\"} 1",
        "repeaterd_records_created_total{domain=\"acme\"} 1",
        "repeaterd_ingest_refused_total 1",
        "repeaterd_leases_acquired_total 1",
        "repeaterd_api_requests_total{method=\"POST\",route=\"/v1/domains/{domain}/events\",status=\"202\"} 1",
        "repeaterd_api_requests_total{method=\"POST\",route=\"/v1/domains/{domain}/events\",status=\"400\"} 1",
        "repeaterd_api_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1",
    ] {
        assert!(
            metrics.text.contains(expected),
            "missing {expected} in\n{}",
            metrics.text
        );
    }
}

#[tokio::test]
async fn readiness_fails_with_503_when_the_database_is_gone() {
    let api = TestApi::new().await;
    // A real store failure: another connection drops every table, so the
    // store's next queries fail inside SQLite.
    let path = api.dir.as_ref().unwrap().path().join("repeaterd.db");
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query("PRAGMA foreign_keys = OFF")
            .execute(&mut conn)
            .await
            .unwrap();
        let tables: Vec<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert!(tables.iter().any(|(t,)| t == "repeaters"), "{tables:?}");
        for (table,) in tables {
            sqlx::query(&format!("DROP TABLE \"{table}\""))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
    let ready = api
        .send(Method::GET, "/readyz", None, None, Body::empty())
        .await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{ready:?}");
    assert_eq!(ready.code(), "unavailable");
    // An ingest now fails inside the store: 500 JSON, without database detail.
    let ingest = api
        .post_event("acme", json!({"type": "t", "payload": 1}))
        .await;
    assert_eq!(
        ingest.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{ingest:?}"
    );
    assert_eq!(ingest.code(), "internal");
    assert!(
        !ingest.message().contains("no such table"),
        "{}",
        ingest.message()
    );
    // Metrics still answer; the failed backlog refresh is counted.
    let metrics = api.admin(Method::GET, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics
            .text
            .contains("repeaterd_backlog_refresh_errors_total 1"),
        "{}",
        metrics.text
    );
    // Health does not depend on the store.
    let health = api
        .send(Method::GET, "/healthz", None, None, Body::empty())
        .await;
    assert_eq!(health.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_json_errors() {
    let api = TestApi::new().await;
    let unknown = api.admin(Method::GET, "/v2/nothing").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "not_found");
    let domain_unknown = api.admin(Method::GET, "/v1/domains/acme/nothing").await;
    assert_eq!(domain_unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(domain_unknown.code(), "not_found");
    let wrong = api.admin(Method::DELETE, "/v1/domains/acme/events").await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED, "{wrong:?}");
    assert_eq!(wrong.code(), "method_not_allowed");
    let wrong_top = api.admin(Method::POST, "/healthz").await;
    assert_eq!(wrong_top.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_top.code(), "method_not_allowed");
}

#[tokio::test]
async fn the_api_serves_over_a_real_socket() {
    let api = TestApi::new().await;
    api.put_repeater("acme", "crm", &[]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = repeaterd::api::router(api.state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    let base = format!("http://{address}");

    let answer = client
        .post(format!("{base}/v1/domains/acme/events"))
        .bearer_auth(ACME)
        .json(&json!({"type": "t", "payload": {"over": "tcp"}, "id": "tcp-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["event_id"], "tcp-1");
    assert_eq!(body["records"][0]["repeater"], "crm");

    let refused = client
        .get(format!("{base}/v1/domains/globex/records"))
        .bearer_auth(ACME)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");

    // A declared Content-Length over the limit is refused before the body
    // is read.
    let huge = client
        .post(format!("{base}/v1/domains/acme/events"))
        .bearer_auth(ACME)
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    let body: Value = huge.json().await.unwrap();
    assert_eq!(body["error"]["code"], "body_too_large");
    server.abort();
}

#[tokio::test]
async fn payloads_are_stored_byte_for_byte_as_posted() {
    let api = TestApi::new().await;
    api.put_repeater("acme", "crm", &[]).await;
    let payload =
        r#"{"zeta": 1, "alpha": 12345678901234567890123, "ratio": 1.10, "nested": [ true ,null ]}"#;
    let body = format!(r#"{{"type": "t", "payload": {payload}, "id": "exact"}}"#);
    let answer = api
        .send(
            Method::POST,
            "/v1/domains/acme/events",
            Some(ADMIN),
            Some("application/json"),
            body,
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
    let batch = r#"{"events": [{"type": "t", "body": "a=1&b=2", "content_type": "application/x-www-form-urlencoded"}, {"type": "t", "payload": null}]}"#;
    let answer = api
        .send(
            Method::POST,
            "/v1/domains/acme/events/batch",
            Some(ADMIN),
            Some("application/json"),
            batch,
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");

    let now = now_millis();
    let (_, claimed) = api.claim("acme", "crm", 10, now).await;
    let stored: Vec<(String, Vec<u8>)> = claimed
        .into_iter()
        .map(|record| (record.content_type, record.payload))
        .collect();
    assert_eq!(
        stored,
        vec![
            ("application/json".to_string(), payload.as_bytes().to_vec()),
            (
                "application/x-www-form-urlencoded".to_string(),
                b"a=1&b=2".to_vec()
            ),
            ("application/json".to_string(), b"null".to_vec()),
        ]
    );
}

/// A sample value for each path parameter of the description.
fn sample_path(template: &str) -> String {
    template
        .replace("{domain}", "acme")
        .replace("{name}", "crm")
        .replace("{id}", "1")
}

#[tokio::test]
async fn the_description_is_served_without_a_token_and_every_route_is_in_it() {
    let api = TestApi::new().await;
    let served = api
        .send(Method::GET, "/v1/openapi.json", None, None, Body::empty())
        .await;
    assert_eq!(served.status, StatusCode::OK, "{served:?}");
    assert_eq!(served.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(&served.json, crate::support::description());
    assert_eq!(served.json["openapi"], "3.1.0");

    // The router is built from the description's route table; prove the two
    // agree both ways on every described path: each described method is
    // served (not 404 "no route", not 405), every other method is 405.
    let paths = served.json["paths"].as_object().unwrap();
    assert!(paths.contains_key("/v1/repeaters"), "{:?}", paths.keys());
    for (template, item) in paths {
        let path = sample_path(template);
        for method in [
            Method::GET,
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::PATCH,
        ] {
            let described = item.get(method.as_str().to_ascii_lowercase()).is_some();
            let answer = api.admin(method.clone(), &path).await;
            if described {
                assert_ne!(
                    answer.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {template} is described but not served"
                );
                assert!(
                    !answer.message().starts_with("no route"),
                    "{method} {template} is described but not served: {answer:?}"
                );
            } else {
                assert_eq!(
                    answer.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {template} is served but not described: {answer:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn every_domain_s_repeaters_are_listed_to_the_tokens_that_reach_them() {
    let api = TestApi::new().await;
    api.put_repeater("globex", "ledger", &[]).await;
    api.put_repeater("acme", "crm", &[]).await;
    api.put_repeater("acme", "audit", &[]).await;
    let names = |answer: &crate::support::Answer| -> Vec<String> {
        answer.json["repeaters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{}/{}",
                    r["domain"].as_str().unwrap(),
                    r["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    let all = api.admin(Method::GET, "/v1/repeaters").await;
    assert_eq!(all.status, StatusCode::OK, "{all:?}");
    assert_eq!(names(&all), ["acme/audit", "acme/crm", "globex/ledger"]);
    let acme = api
        .send(
            Method::GET,
            "/v1/repeaters",
            Some(ACME),
            None,
            Body::empty(),
        )
        .await;
    assert_eq!(names(&acme), ["acme/audit", "acme/crm"]);
    let globex = api
        .send(
            Method::GET,
            "/v1/repeaters",
            Some(GLOBEX),
            None,
            Body::empty(),
        )
        .await;
    assert_eq!(names(&globex), ["globex/ledger"]);
    for token in [None, Some("not-a-token")] {
        let refused = api
            .send(Method::GET, "/v1/repeaters", token, None, Body::empty())
            .await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{refused:?}");
    }

    // An API without tokens shows everything to everyone.
    let open = TestApi::with(repeaterd::api::ApiAuth::open(), ApiLimits::default()).await;
    open.put_repeater("acme", "crm", &[]).await;
    open.put_repeater("globex", "ledger", &[]).await;
    let listed = open
        .send(Method::GET, "/v1/repeaters", None, None, Body::empty())
        .await;
    assert_eq!(names(&listed), ["acme/crm", "globex/ledger"]);
}

#[tokio::test]
async fn records_since_a_time_are_those_registered_from_then_on() {
    let api = TestApi::new().await;
    api.put_repeater("acme", "crm", &[]).await;
    api.put_repeater("acme", "audit", &[]).await;
    api.put_repeater("globex", "ledger", &[]).await;
    let start = Timestamp::parse("2026-01-01T00:00:00Z").unwrap().0;
    let hour = 3_600_000;
    let event = |i: usize| NewEvent {
        id: Some(format!("evt-{i}")),
        event_type: "t".into(),
        content_type: "application/json".into(),
        payload: i.to_string().into_bytes(),
        ordering_key: None,
    };
    // Three hours of events in acme (two records each), with globex's
    // records between them.
    for (hour_index, count) in [(0, 4), (1, 3), (2, 2)] {
        let at = start + hour_index * hour;
        let events: Vec<NewEvent> = (0..count)
            .map(|i| event(hour_index as usize * 10 + i))
            .collect();
        api.store.ingest("acme", &events, at).await.unwrap();
        api.store.ingest("globex", &events, at).await.unwrap();
    }
    let list = |query: String| {
        let api = &api;
        async move {
            let mut ids = Vec::new();
            let mut after: Option<i64> = None;
            loop {
                let path = match after {
                    Some(a) => format!("/v1/domains/acme/records?{query}&after={a}"),
                    None => format!("/v1/domains/acme/records?{query}"),
                };
                let page = api.admin(Method::GET, &path).await;
                assert_eq!(page.status, StatusCode::OK, "{path}: {page:?}");
                for record in page.json["records"].as_array().unwrap() {
                    let created = Timestamp::parse(record["created_at"].as_str().unwrap()).unwrap();
                    ids.push((record["id"].as_i64().unwrap(), created.0));
                }
                match page.json["next_after"].as_i64() {
                    Some(next) => after = Some(next),
                    None => return ids,
                }
            }
        }
    };
    let since = |at: i64| Timestamp(at).to_rfc3339();

    let everything = list("limit=100".into()).await;
    assert_eq!(everything.len(), 18);
    let from_second_hour = list(format!("since={}", since(start + hour))).await;
    assert_eq!(from_second_hour.len(), 10, "{from_second_hour:?}");
    assert!(from_second_hour.iter().all(|(_, at)| *at >= start + hour));
    assert_eq!(from_second_hour[..], everything[8..]);
    // Page by page, the same records, in order, each once.
    let paged = list(format!("since={}&limit=3", since(start + hour))).await;
    assert_eq!(paged, from_second_hour);
    // Between two registrations, and combined with the other filters.
    let last_hour = list(format!("since={}&limit=1", since(start + hour + 1))).await;
    assert_eq!(last_hour[..], everything[14..]);
    let crm = list(format!("since={}&repeater=crm", since(start + hour))).await;
    assert_eq!(crm.len(), 5);
    let pending = list(format!(
        "since={}&state=pending&limit=4",
        since(start + hour)
    ))
    .await;
    assert_eq!(pending, from_second_hour);
    let cancelled = list(format!("since={}&state=cancelled", since(start))).await;
    assert!(cancelled.is_empty());
    assert_eq!(
        list(format!("since={}", since(start - 1))).await,
        everything
    );
    assert!(
        list(format!("since={}", since(start + 3 * hour)))
            .await
            .is_empty()
    );

    for bad in ["yesterday", "2026-01-01T00:00:00+02:00", "1767225600000"] {
        let answer = api
            .admin(
                Method::GET,
                &format!("/v1/domains/acme/records?since={bad}"),
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}: {answer:?}");
        assert_eq!(answer.code(), "invalid_query");
        assert!(answer.message().contains("since"), "{}", answer.message());
    }
}

#[test]
fn the_description_check_refuses_answers_that_break_the_contract() {
    let schema = &crate::support::description()["paths"]["/v1/domains/{domain}/records"]["get"]["responses"]
        ["200"]["content"]["application/json"]["schema"];
    let page = |created_at: Value| {
        json!({"records": [{
            "id": 1, "domain": "acme", "repeater": "crm", "event_id": "e", "event_type": "t",
            "state": "pending", "attempts": 0, "next_attempt_at": null,
            "created_at": created_at, "updated_at": "2026-01-01T00:00:00.000Z", "last_error": null
        }], "next_after": null})
    };
    crate::support::assert_valid(
        "good page",
        schema,
        &page(json!("2026-01-01T00:00:00.000Z")),
    );
    let mut without_last_error = page(json!("2026-01-01T00:00:00.000Z"));
    without_last_error["records"][0]
        .as_object_mut()
        .unwrap()
        .remove("last_error");
    for (broken, why) in [
        (page(json!(1_767_225_600_000_i64)), "epoch milliseconds"),
        (page(json!("yesterday")), "not a date-time"),
        (json!({"records": []}), "next_after missing"),
        (without_last_error, "a nullable field left out"),
        (
            json!({"records": [{"id": 1}], "next_after": null}),
            "fields missing",
        ),
    ] {
        let refused = std::panic::catch_unwind(|| {
            crate::support::assert_valid(why, schema, &broken);
        });
        assert!(refused.is_err(), "{why}: {broken} was accepted");
    }
}
