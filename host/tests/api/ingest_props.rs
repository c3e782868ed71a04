//! Property tests of ingest: whatever bytes or JSON a producer sends, the
//! answer is a 2xx or a 4xx JSON error, never a 5xx or a panic, and a
//! refused request stores nothing.

use crate::support::{ADMIN, TestApi};
use axum::http::{Method, StatusCode};
use proptest::prelude::*;
use serde_json::{Value, json};

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("type"),
            Just("payload"),
            Just("body"),
            Just("content_type"),
            Just("id"),
            Just("ordering_key"),
            Just("events"),
            Just("application/json"),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("type".to_owned()),
                    Just("payload".to_owned()),
                    Just("body".to_owned()),
                    Just("content_type".to_owned()),
                    Just("id".to_owned()),
                    Just("ordering_key".to_owned()),
                    Just("events".to_owned()),
                    ".{0,6}",
                ],
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Something shaped like an event, with arbitrary values in its fields.
fn event_like() -> impl Strategy<Value = Value> {
    // Mostly plausible values, so that accepted batches are common too.
    let text = || prop_oneof![3 => "[a-z./]{1,12}".prop_map(Value::String), 1 => arbitrary_json()];
    (
        text(),
        prop::option::weighted(0.7, arbitrary_json()),
        prop::option::weighted(0.3, text()),
        prop::option::weighted(0.3, text()),
        prop::option::weighted(
            0.5,
            prop_oneof!["[a-c]{1,2}".prop_map(Value::String), arbitrary_json()],
        ),
    )
        .prop_map(|(event_type, payload, body, content_type, id)| {
            let mut event = serde_json::Map::new();
            event.insert("type".into(), event_type);
            for (key, value) in [
                ("payload", payload),
                ("body", body),
                ("content_type", content_type),
                ("id", id),
            ] {
                if let Some(value) = value {
                    event.insert(key.into(), value);
                }
            }
            Value::Object(event)
        })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Posts `body` and checks the answer; returns whether it was accepted.
async fn post_and_check(api: &TestApi, path: &str, body: Vec<u8>) -> Result<bool, TestCaseError> {
    let before = api.record_count("acme").await;
    let answer = api
        .send(
            Method::POST,
            path,
            Some(ADMIN),
            Some("application/json"),
            body,
        )
        .await;
    prop_assert!(!answer.status.is_server_error(), "server error: {answer:?}");
    let after = api.record_count("acme").await;
    if answer.status.is_success() {
        prop_assert!(
            answer.status == StatusCode::ACCEPTED || answer.status == StatusCode::OK,
            "{answer:?}"
        );
        Ok(true)
    } else {
        prop_assert!(answer.status.is_client_error(), "{answer:?}");
        prop_assert!(
            answer.json["error"]["code"].is_string(),
            "not JSON: {answer:?}"
        );
        prop_assert!(
            answer.json["error"]["message"].is_string(),
            "not JSON: {answer:?}"
        );
        prop_assert_eq!(before, after, "a refused request stored records");
        Ok(false)
    }
}

fn setup(rt: &tokio::runtime::Runtime) -> TestApi {
    rt.block_on(async {
        let api = TestApi::new().await;
        api.put_repeater("acme", "crm", &[]).await;
        api
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_refused_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let rt = runtime();
        let api = setup(&rt);
        rt.block_on(async {
            for path in ["/v1/domains/acme/events", "/v1/domains/acme/events/batch"] {
                post_and_check(&api, path, bytes.clone()).await?;
            }
            Ok::<(), TestCaseError>(())
        })?;
    }

    #[test]
    fn arbitrary_json_never_fails_the_server(value in arbitrary_json()) {
        let rt = runtime();
        let api = setup(&rt);
        rt.block_on(async {
            let body = value.to_string().into_bytes();
            for path in ["/v1/domains/acme/events", "/v1/domains/acme/events/batch"] {
                post_and_check(&api, path, body.clone()).await?;
            }
            Ok::<(), TestCaseError>(())
        })?;
    }

    #[test]
    fn event_shaped_json_is_stored_whole_or_not_at_all(
        events in prop::collection::vec(event_like(), 1..6),
    ) {
        let rt = runtime();
        let api = setup(&rt);
        rt.block_on(async {
            let single = events[0].to_string().into_bytes();
            post_and_check(&api, "/v1/domains/acme/events", single).await?;
            let before = api.record_count("acme").await;
            let batch = json!({"events": events}).to_string().into_bytes();
            let accepted = post_and_check(&api, "/v1/domains/acme/events/batch", batch).await?;
            let after = api.record_count("acme").await;
            if accepted {
                // Every event got its record, or was a repeat of an earlier id.
                prop_assert!(after >= before && after <= before + events.len());
            } else {
                prop_assert_eq!(before, after);
            }
            Ok::<(), TestCaseError>(())
        })?;
    }

    #[test]
    fn one_bad_event_refuses_the_whole_batch_and_is_named(
        n in 2usize..40,
        bad_at in any::<prop::sample::Index>(),
        poison in prop_oneof![
            Just(json!({"type": 1, "payload": 1})),
            Just(json!({"type": "t"})),
            Just(json!({"type": "t", "body": "x"})),
            Just(json!({"type": "", "payload": 1})),
            Just(json!({"type": "t", "payload": 1, "unknown": 1})),
            Just(json!({"type": "t", "payload": 1, "id": "e-0"})),
            arbitrary_json().prop_filter("not an object", |v| !v.is_object()),
        ],
    ) {
        let rt = runtime();
        let api = setup(&rt);
        rt.block_on(async {
            // e-0 is always among the good events, so the poison's repeated
            // id is refused too; a poison at index 0 repeats nothing, so it
            // goes at 1 or later.
            let bad_at = 1 + bad_at.index(n - 1);
            let mut events: Vec<Value> = (0..n)
                .map(|i| json!({"type": "t", "payload": {"i": i}, "id": format!("e-{i}")}))
                .collect();
            events[bad_at] = poison;
            let answer = api
                .send(
                    Method::POST,
                    "/v1/domains/acme/events/batch",
                    Some(ADMIN),
                    Some("application/json"),
                    json!({"events": events}).to_string(),
                )
                .await;
            prop_assert!(answer.status.is_client_error(), "{answer:?}");
            let prefix = format!("events[{bad_at}]");
            prop_assert!(answer.message().starts_with(&prefix), "{}", answer.message());
            prop_assert_eq!(api.record_count("acme").await, 0);
            // Without the poison, every event is stored.
            events.remove(bad_at);
            let answer = api
                .send(
                    Method::POST,
                    "/v1/domains/acme/events/batch",
                    Some(ADMIN),
                    Some("application/json"),
                    json!({"events": events}).to_string(),
                )
                .await;
            prop_assert_eq!(answer.status, StatusCode::ACCEPTED);
            prop_assert_eq!(api.record_count("acme").await, n - 1);
            Ok::<(), TestCaseError>(())
        })?;
    }
}
