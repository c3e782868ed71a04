//! The access matrix, route by route: no token and a wrong token are 401; a
//! domain token reaches its own domain's routes and nothing else (403); the
//! admin token reaches everything; `/healthz` and `/readyz` are open;
//! `/metrics` and `/v1/plugins` are admin routes. With no token configured
//! the API is open.

use crate::support::{ACME, ADMIN, GLOBEX, TestApi};
use axum::http::{Method, StatusCode, header};
use repeaterd::api::{ApiAuth, ApiLimits};
use serde_json::json;

/// Which token a route needs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Needs {
    Nothing,
    Domain,
    Admin,
}

struct Route {
    method: Method,
    /// `{d}` stands for the domain.
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    needs: Needs,
}

fn routes(record_id: i64) -> Vec<Route> {
    let json_body = |value: serde_json::Value| value.to_string().into_bytes();
    let spec = json_body(json!({"url": "http://127.0.0.1:9/", "plugin": "json-forward"}));
    let event = json_body(json!({"type": "t", "payload": 1}));
    let batch = json_body(json!({"events": [{"type": "t", "payload": 1}]}));
    let mut component = vec![0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
    component.extend_from_slice(&[0u8; 8]);
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let j = Some("application/json");
    let route = |method: Method, path: &'static str, content_type, body: Vec<u8>, needs| Route {
        method,
        path,
        content_type,
        body,
        needs,
    };
    vec![
        route(
            Method::POST,
            "/v1/domains/{d}/events",
            j,
            event,
            Needs::Domain,
        ),
        route(
            Method::POST,
            "/v1/domains/{d}/events/batch",
            j,
            batch,
            Needs::Domain,
        ),
        route(
            Method::GET,
            "/v1/domains/{d}/repeaters",
            None,
            vec![],
            Needs::Domain,
        ),
        route(
            Method::PUT,
            "/v1/domains/{d}/repeaters/crm",
            j,
            spec,
            Needs::Domain,
        ),
        route(
            Method::GET,
            "/v1/domains/{d}/repeaters/crm",
            None,
            vec![],
            Needs::Domain,
        ),
        route(
            Method::POST,
            "/v1/domains/{d}/repeaters/crm/pause",
            None,
            vec![],
            Needs::Domain,
        ),
        route(
            Method::POST,
            "/v1/domains/{d}/repeaters/crm/resume",
            None,
            vec![],
            Needs::Domain,
        ),
        route(
            Method::POST,
            "/v1/domains/{d}/repeaters/crm/requeue",
            None,
            vec![],
            Needs::Domain,
        ),
        route(
            Method::GET,
            "/v1/domains/{d}/records",
            None,
            vec![],
            Needs::Domain,
        ),
        route(
            Method::GET,
            leak(format!("/v1/domains/{{d}}/records/{record_id}")),
            None,
            vec![],
            Needs::Domain,
        ),
        route(
            Method::POST,
            leak(format!("/v1/domains/{{d}}/records/{record_id}/resend")),
            None,
            vec![],
            Needs::Domain,
        ),
        route(
            Method::POST,
            leak(format!("/v1/domains/{{d}}/records/{record_id}/cancel")),
            None,
            vec![],
            Needs::Domain,
        ),
        route(
            Method::DELETE,
            "/v1/domains/{d}/repeaters/crm",
            None,
            vec![],
            Needs::Domain,
        ),
        route(Method::GET, "/v1/plugins", None, vec![], Needs::Admin),
        route(
            Method::PUT,
            "/v1/plugins/mine",
            Some("application/wasm"),
            component,
            Needs::Admin,
        ),
        route(Method::GET, "/metrics", None, vec![], Needs::Admin),
        route(Method::GET, "/healthz", None, vec![], Needs::Nothing),
        route(Method::GET, "/readyz", None, vec![], Needs::Nothing),
    ]
}

/// Sets up both domains with a repeater and one record each; returns the
/// acme record's id and the globex record's id.
async fn seed(api: &TestApi) -> (i64, i64) {
    let mut ids = Vec::new();
    for domain in ["acme", "globex"] {
        api.put_repeater(domain, "crm", &[]).await;
        let answer = api
            .post_event(domain, json!({"type": "t", "payload": 1}))
            .await;
        ids.push(answer.json["records"][0]["id"].as_i64().unwrap());
    }
    (ids[0], ids[1])
}

#[tokio::test]
async fn every_route_follows_the_access_matrix() {
    let api = TestApi::new().await;
    let (acme_record, _) = seed(&api).await;
    for route in routes(acme_record) {
        let path = route.path.replace("{d}", "acme");
        let call = |token: Option<&'static str>| {
            let (method, path, ct, body) = (
                route.method.clone(),
                path.clone(),
                route.content_type,
                route.body.clone(),
            );
            let api = &api;
            async move { api.send(method, &path, token, ct, body).await }
        };
        let label = format!("{} {}", route.method, path);

        for token in [None, Some("not-a-token")] {
            let answer = call(token).await;
            if route.needs == Needs::Nothing {
                assert!(answer.status.is_success(), "{label} {token:?}: {answer:?}");
                continue;
            }
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{label} {token:?}");
            assert_eq!(answer.code(), "unauthorized", "{label}");
            assert_eq!(
                answer.headers[header::WWW_AUTHENTICATE],
                "Bearer",
                "{label}"
            );
        }

        // A domain token on another domain, or on an admin route.
        let globex = call(Some(GLOBEX)).await;
        match route.needs {
            Needs::Nothing => assert!(globex.status.is_success(), "{label}"),
            Needs::Domain | Needs::Admin => {
                assert_eq!(globex.status, StatusCode::FORBIDDEN, "{label}: {globex:?}");
                assert_eq!(globex.code(), "forbidden", "{label}");
            }
        }

        // The domain's own token.
        let acme = call(Some(ACME)).await;
        match route.needs {
            Needs::Nothing | Needs::Domain => {
                assert!(
                    acme.status.is_success(),
                    "{label} with the acme token: {acme:?}"
                )
            }
            Needs::Admin => assert_eq!(acme.status, StatusCode::FORBIDDEN, "{label}"),
        }

        // The admin token reaches everything (the route's own answer).
        let admin = call(Some(ADMIN)).await;
        match (route.method.clone(), route.path) {
            (Method::DELETE, _) => {
                // Deleted just above with the acme token.
                assert_eq!(admin.status, StatusCode::NOT_FOUND, "{label}: {admin:?}");
            }
            (_, p) if p.ends_with("/cancel") => {
                // Cancelled just above with the acme token.
                assert_eq!(admin.status, StatusCode::CONFLICT, "{label}: {admin:?}");
            }
            _ => assert!(admin.status.is_success(), "{label} as admin: {admin:?}"),
        }
    }
}

#[tokio::test]
async fn a_domain_token_cannot_reach_another_domains_records_by_id() {
    let api = TestApi::new().await;
    let (_, globex_record) = seed(&api).await;
    // The acme token on the acme path with a globex record id: not found,
    // since records are looked up within the path's domain.
    let answer = api
        .send(
            Method::GET,
            &format!("/v1/domains/acme/records/{globex_record}"),
            Some(ACME),
            None,
            vec![],
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    // A percent-encoded domain segment is not taken for the token's domain.
    let answer = api
        .send(
            Method::GET,
            "/v1/domains/acm%65/repeaters",
            Some(ACME),
            None,
            vec![],
        )
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    // Dot segments are not resolved into an admin route.
    for path in [
        "/v1/domains/acme/../../v1/plugins",
        "/v1/domains/acme/%2e%2e/%2e%2e/v1/plugins",
    ] {
        let answer = api.send(Method::GET, path, Some(ACME), None, vec![]).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}: {answer:?}");
        assert!(answer.json.get("plugins").is_none());
    }
}

#[tokio::test]
async fn unknown_paths_need_a_token_too() {
    let api = TestApi::new().await;
    let answer = api
        .send(Method::GET, "/v1/secret", None, None, vec![])
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let answer = api
        .send(Method::GET, "/v1/secret", Some(ACME), None, vec![])
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    let answer = api
        .send(Method::GET, "/v1/secret", Some(ADMIN), None, vec![])
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn with_no_tokens_configured_every_route_is_open() {
    let api = TestApi::with(ApiAuth::open(), ApiLimits::default()).await;
    let (record, _) = seed(&api).await;
    for route in routes(record) {
        let path = route.path.replace("{d}", "acme");
        let answer = api
            .send(
                route.method.clone(),
                &path,
                None,
                route.content_type,
                route.body,
            )
            .await;
        assert!(
            answer.status.is_success(),
            "{} {path}: {answer:?}",
            route.method
        );
    }
}
