//! Every built-in plugin, loaded from the bytes embedded in the binary, runs
//! `validate-config`, `build` and `classify` through the real host on
//! realistic events, and its outputs are what the plugin documents.

use crate::fixtures::{ctx, engine, event, load_builtin, response, summary};
use repeaterd::plugin::types::{
    BuildOutcome, Header, Method, Reply, Request, TransportError, TransportErrorKind, Verdict,
};
use repeaterd::plugin::{LoadedPlugin, PluginError};

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn expect_send(outcome: BuildOutcome) -> Request {
    match outcome {
        BuildOutcome::Send(request) => request,
        other => panic!("expected send, got {other:?}"),
    }
}

/// The default reply rules every built-in uses: 2xx success, 429/5xx retry
/// (with Retry-After), other 4xx reject, transport errors retry.
async fn check_default_classification(plugin: &LoadedPlugin, config: &str) {
    let request = summary("https://crm.example/hooks", 120);
    let verdict = |reply: Reply| {
        let request = request.clone();
        async move {
            plugin
                .classify(&ctx(), &request, &reply, config)
                .await
                .unwrap()
        }
    };
    assert!(matches!(verdict(response(200)).await, Verdict::Success));
    assert!(matches!(verdict(response(204)).await, Verdict::Success));
    assert!(matches!(verdict(response(503)).await, Verdict::Retry(_)));
    assert!(matches!(verdict(response(422)).await, Verdict::Reject(_)));
    let throttled = Reply::Response(repeaterd::plugin::types::Response {
        status: 429,
        headers: vec![Header {
            name: "Retry-After".to_owned(),
            value: "120".to_owned(),
        }],
        body_excerpt: b"slow down".to_vec(),
    });
    match verdict(throttled).await {
        Verdict::Retry(retry) => {
            assert_eq!(retry.after_seconds, Some(120));
            assert!(retry.reason.contains("429"), "{}", retry.reason);
        }
        other => panic!("expected retry, got {other:?}"),
    }
    let refused = Reply::TransportError(TransportError {
        kind: TransportErrorKind::Connect,
        message: "connection refused".to_owned(),
    });
    assert!(matches!(verdict(refused).await, Verdict::Retry(_)));
}

#[tokio::test]
async fn json_forward_posts_the_payload_unchanged() {
    let engine = engine();
    let plugin = load_builtin(&engine, "json-forward").await;
    let payload = br#"{"patient":{"id":"p-7","name":"Ada Lovelace"},"tags":["vip"]}"#;
    plugin.validate_config(&ctx(), "{}").await.unwrap();
    let request = expect_send(
        plugin
            .build(
                &ctx(),
                &event("patient.created", "application/json", payload),
                "{}",
            )
            .await
            .unwrap(),
    );
    assert_eq!(request.method, Method::Post);
    assert_eq!(request.body, payload);
    assert_eq!(header(&request, "content-type"), Some("application/json"));
    assert_eq!(header(&request, "idempotency-key"), Some("rec-0001"));
    check_default_classification(&plugin, "{}").await;
}

#[tokio::test]
async fn json_forward_envelope_carries_the_event_metadata() {
    let engine = engine();
    let plugin = load_builtin(&engine, "json-forward").await;
    let config = r#"{"envelope":true,"method":"PUT","headers":{"x-source":"crm"}}"#;
    plugin.validate_config(&ctx(), config).await.unwrap();
    let request = expect_send(
        plugin
            .build(
                &ctx(),
                &event("patient.created", "application/json", br#"{"a":1}"#),
                config,
            )
            .await
            .unwrap(),
    );
    assert_eq!(request.method, Method::Put);
    assert_eq!(header(&request, "x-source"), Some("crm"));
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["id"], "evt-0001");
    assert_eq!(body["record_id"], "rec-0001");
    assert_eq!(body["type"], "patient.created");
    assert_eq!(body["domain"], "acme");
    assert_eq!(body["repeater"], "crm");
    assert_eq!(body["ordering_key"], "patient-7");
    assert_eq!(body["attempt"], 1);
    assert_eq!(body["data"], serde_json::json!({"a": 1}));
}

#[tokio::test]
async fn json_forward_rejects_a_payload_that_is_not_json() {
    let engine = engine();
    let plugin = load_builtin(&engine, "json-forward").await;
    let outcome = plugin
        .build(
            &ctx(),
            &event("note", "application/json", b"not json {"),
            "{}",
        )
        .await
        .unwrap();
    assert!(matches!(outcome, BuildOutcome::Reject(_)), "{outcome:?}");
    let error = plugin
        .validate_config(&ctx(), r#"{"headers":{"authorization":"Bearer x"}}"#)
        .await
        .unwrap_err();
    assert!(matches!(error, PluginError::Config { .. }), "{error}");
}

#[tokio::test]
async fn form_xml_posts_the_document_as_xml() {
    let engine = engine();
    let plugin = load_builtin(&engine, "form-xml").await;
    let document = "\u{feff}<?xml version=\"1.0\"?>\n<form id=\"f-12\"><field name=\"email\">ada@example.org</field></form>\n";
    plugin.validate_config(&ctx(), "{}").await.unwrap();
    let request = expect_send(
        plugin
            .build(
                &ctx(),
                &event("form.submitted", "application/xml", document.as_bytes()),
                "{}",
            )
            .await
            .unwrap(),
    );
    assert_eq!(request.method, Method::Post);
    assert_eq!(request.body, document.as_bytes());
    assert_eq!(header(&request, "content-type"), Some("application/xml"));
    assert_eq!(header(&request, "idempotency-key"), Some("rec-0001"));
    check_default_classification(&plugin, "{}").await;

    let config = r#"{"content_type":"application/atom+xml"}"#;
    plugin.validate_config(&ctx(), config).await.unwrap();
    let request = expect_send(
        plugin
            .build(
                &ctx(),
                &event("form.submitted", "text/xml", b"<a/>"),
                config,
            )
            .await
            .unwrap(),
    );
    assert_eq!(
        header(&request, "content-type"),
        Some("application/atom+xml")
    );
}

#[tokio::test]
async fn form_xml_rejects_what_is_not_xml() {
    let engine = engine();
    let plugin = load_builtin(&engine, "form-xml").await;
    let outcome = plugin
        .build(
            &ctx(),
            &event("form.submitted", "application/json", br#"{"a":1}"#),
            "{}",
        )
        .await
        .unwrap();
    assert!(matches!(outcome, BuildOutcome::Reject(_)), "{outcome:?}");
    let error = plugin
        .validate_config(&ctx(), r#"{"content_type":"application/json"}"#)
        .await
        .unwrap_err();
    assert!(matches!(error, PluginError::Config { .. }), "{error}");
}

#[tokio::test]
async fn fhir_r4_puts_a_patient_resource() {
    let engine = engine();
    let plugin = load_builtin(&engine, "fhir-r4").await;
    let config = r#"{"identifier_system":"https://hospital.example/patients"}"#;
    plugin.validate_config(&ctx(), config).await.unwrap();
    let payload = serde_json::json!({
        "id": "p-123",
        "given_name": "Ada",
        "family_name": "Lovelace",
        "birth_date": "1815-12-10",
        "gender": "f",
        "email": "ada@example.org",
        "address": {"line": "12 St James's Square", "city": "London", "country": "GB"}
    });
    let payload = serde_json::to_vec(&payload).unwrap();
    let request = expect_send(
        plugin
            .build(
                &ctx(),
                &event("patient.updated", "application/json", &payload),
                config,
            )
            .await
            .unwrap(),
    );
    assert_eq!(request.method, Method::Put);
    assert_eq!(request.path.as_deref(), Some("Patient/p-123"));
    assert_eq!(
        header(&request, "content-type"),
        Some("application/fhir+json")
    );
    assert_eq!(header(&request, "idempotency-key"), Some("rec-0001"));
    let patient: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(patient["resourceType"], "Patient");
    assert_eq!(patient["id"], "p-123");
    assert_eq!(patient["gender"], "female");
    assert_eq!(patient["birthDate"], "1815-12-10");
    assert_eq!(patient["name"][0]["family"], "Lovelace");
    assert_eq!(patient["name"][0]["given"][0], "Ada");
    assert_eq!(
        patient["identifier"][0]["system"],
        "https://hospital.example/patients"
    );
    check_default_classification(&plugin, config).await;

    // A 422 quotes the server's OperationOutcome.
    let outcome = Reply::Response(repeaterd::plugin::types::Response {
        status: 422,
        headers: Vec::new(),
        body_excerpt: br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid","diagnostics":"birthDate is in the future"}]}"#.to_vec(),
    });
    let verdict = plugin
        .classify(
            &ctx(),
            &summary("https://fhir.example/Patient/p-123", 300),
            &outcome,
            config,
        )
        .await
        .unwrap();
    match verdict {
        Verdict::Reject(reason) => {
            assert!(reason.contains("birthDate is in the future"), "{reason}")
        }
        other => panic!("expected reject, got {other:?}"),
    }
}

#[tokio::test]
async fn fhir_r4_rejects_a_patient_without_an_id_or_with_a_bad_date() {
    let engine = engine();
    let plugin = load_builtin(&engine, "fhir-r4").await;
    for payload in [
        serde_json::json!({"given_name": "Ada"}),
        serde_json::json!({"id": "p-1", "birth_date": "1815-02-30"}),
    ] {
        let payload = serde_json::to_vec(&payload).unwrap();
        let outcome = plugin
            .build(
                &ctx(),
                &event("patient.updated", "application/json", &payload),
                "{}",
            )
            .await
            .unwrap();
        assert!(matches!(outcome, BuildOutcome::Reject(_)), "{outcome:?}");
    }
}

#[test]
fn every_builtin_plugin_has_a_test_here() {
    let tested = ["json-forward", "form-xml", "fhir-r4"];
    for name in repeaterd::plugin::builtin_names() {
        assert!(
            tested.contains(&name),
            "built-in plugin {name} has no test in this file"
        );
    }
    for name in tested {
        assert!(
            repeaterd::plugin::builtin(name).is_some(),
            "{name} is not built in"
        );
    }
}
