//! The route table, and the OpenAPI 3.1 description built from it.
//!
//! Every route is listed once, in [`routes`], by its handler; the handler's
//! `#[utoipa::path]` attribute carries its path, method, parameters, body
//! and answers, and its types give the schemas. The router and the
//! description are both folded from that one list, so a route cannot be
//! served without being described. Which token an operation needs is not
//! written per handler: [`secure`] derives it from [`auth::scope_of`], the
//! function the token check itself uses.

use std::sync::OnceLock;

use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Ref, RefOr, ResponseBuilder};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::auth::{self, Scope};
use super::error::ErrorBody;
use super::{ApiLimits, ApiState, bulk, health, ingest, plugins, records, repeaters};

/// The name of the bearer-token security scheme in the description.
pub const BEARER: &str = "bearer";

/// What the description says before any route is added.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "repeaterd",
        description = "The HTTP API of repeaterd, a daemon that forwards events to remote HTTP \
            APIs, reliably and fairly. Every answer is JSON (metrics aside); every error is \
            `{\"error\": {\"code\", \"message\"}}`. Times are RFC 3339 UTC strings with \
            milliseconds; durations are integers in fields ending `_ms`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "events", description = "Posting events: each becomes one record per subscribed repeater"),
        (name = "repeaters", description = "Destinations inside a domain, and their live status"),
        (name = "records", description = "One event to be delivered to one repeater, with its attempts"),
        (name = "plugins", description = "The WebAssembly components that build requests and judge answers"),
        (name = "health", description = "Probes and metrics"),
        (name = "description", description = "This description")
    )
)]
struct Preamble;

/// Every route of the API: its handler, its description, and the layers a
/// single route needs. [`super::router`] serves exactly these.
pub fn routes(limits: &ApiLimits) -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(Preamble::openapi())
        .routes(routes!(ingest::post_event))
        .routes(routes!(ingest::post_batch))
        .routes(routes!(repeaters::list_all))
        .routes(routes!(repeaters::list))
        .routes(routes!(repeaters::show, repeaters::put, repeaters::delete))
        .routes(routes!(repeaters::pause))
        .routes(routes!(repeaters::resume))
        .routes(routes!(repeaters::requeue))
        .routes(routes!(bulk::failures))
        .routes(routes!(bulk::resend_failures))
        .routes(routes!(bulk::cancel_failures))
        .routes(routes!(bulk::resend_state))
        .routes(routes!(bulk::cancel_state))
        .routes(routes!(records::list))
        .routes(routes!(records::show))
        .routes(routes!(records::resend))
        .routes(routes!(records::cancel))
        .routes(routes!(plugins::list))
        // Components are larger than events: uploads have their own limit.
        .routes(
            routes!(plugins::show, plugins::put)
                .layer(DefaultBodyLimit::max(limits.max_plugin_bytes)),
        )
        .routes(routes!(describe))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
}

/// The API's description, with its security derived from the token rules.
pub fn description() -> utoipa::openapi::OpenApi {
    let mut description = routes(&ApiLimits::default()).into_openapi();
    secure(&mut description);
    description
}

/// The description as JSON text, made once.
pub fn description_json() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        description()
            .to_pretty_json()
            .expect("the OpenAPI description serialises to JSON")
    })
}

/// Serves this description.
///
/// OpenAPI 3.1, generated from the handlers' own types. Needs no token: it
/// holds nothing about this daemon's data.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "describe_api",
    tag = "description",
    responses((status = 200, description = "The OpenAPI 3.1 description", body = serde_json::Value))
)]
pub async fn describe() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        description_json(),
    )
}

/// Adds the bearer scheme, and to every operation the token it needs (as
/// [`auth::scope_of`] decides for its path) with the 401 and 403 answers
/// that follow from it.
fn secure(description: &mut utoipa::openapi::OpenApi) {
    let components = description
        .components
        .get_or_insert_with(utoipa::openapi::Components::new);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The admin token reaches every route; a domain token reaches only \
                     `/v1/domains/{its domain}/...` and its own repeaters in `/v1/repeaters`. \
                     With no token configured the API is open.",
                ))
                .build(),
        ),
    );
    let error = || {
        ResponseBuilder::new().content(
            "application/json",
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(RefOr::<utoipa::openapi::schema::Schema>::Ref(
                    Ref::from_schema_name("ErrorBody"),
                )))
                .build(),
        )
    };
    for (path, item) in description.paths.paths.iter_mut() {
        let (needs, forbidden) = match auth::scope_of(path) {
            Scope::Open => continue,
            Scope::Domain(_) => (
                "the admin token or a token of the domain",
                Some("The token does not reach this domain"),
            ),
            Scope::AnyToken => ("any valid token", None),
            Scope::Admin => (
                "the admin token",
                Some("A domain token: this route needs the admin token"),
            ),
        };
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            operation.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
            let line = format!("Token: {needs}.");
            operation.description = Some(match operation.description.take() {
                Some(text) => format!("{text}\n\n{line}"),
                None => line,
            });
            let responses = &mut operation.responses.responses;
            responses.insert(
                "401".into(),
                RefOr::T(
                    error()
                        .description("No token, or a token that is not valid")
                        .build(),
                ),
            );
            if let Some(why) = forbidden {
                responses.insert("403".into(), RefOr::T(error().description(why).build()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operations(description: &serde_json::Value) -> Vec<(String, String, serde_json::Value)> {
        let mut all = Vec::new();
        for (path, item) in description["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                all.push((path.clone(), method.clone(), operation.clone()));
            }
        }
        all
    }

    #[test]
    fn the_description_is_openapi_3_1_and_parses_back() {
        let json: serde_json::Value = serde_json::from_str(description_json()).unwrap();
        assert_eq!(json["openapi"], "3.1.0");
        assert_eq!(json["info"]["title"], "repeaterd");
        assert_eq!(
            json["components"]["securitySchemes"][BEARER]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn operation_ids_are_unique_and_every_operation_says_what_it_does() {
        let json: serde_json::Value = serde_json::from_str(description_json()).unwrap();
        let mut ids = std::collections::BTreeSet::new();
        for (path, method, operation) in operations(&json) {
            let id = operation["operationId"].as_str().unwrap().to_owned();
            assert!(ids.insert(id.clone()), "{method} {path}: {id} twice");
            assert!(
                operation["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{method} {path} has no summary"
            );
            assert!(
                operation["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{method} {path} has no tag"
            );
        }
    }

    #[test]
    fn security_follows_the_token_rules_of_each_path() {
        let json: serde_json::Value = serde_json::from_str(description_json()).unwrap();
        for (path, method, operation) in operations(&json) {
            let secured = operation.get("security").is_some();
            let responses = &operation["responses"];
            match auth::scope_of(&path) {
                Scope::Open => assert!(!secured, "{method} {path}"),
                scope => {
                    assert!(secured, "{method} {path}");
                    assert!(responses.get("401").is_some(), "{method} {path}");
                    assert_eq!(
                        responses.get("403").is_some(),
                        scope != Scope::AnyToken,
                        "{method} {path}"
                    );
                }
            }
        }
        assert!(json["paths"]["/healthz"]["get"].get("security").is_none());
        assert!(
            json["paths"]["/v1/domains/{domain}/events"]["post"]
                .get("security")
                .is_some()
        );
    }

    #[test]
    fn every_answer_names_a_body_or_says_it_has_none() {
        let json: serde_json::Value = serde_json::from_str(description_json()).unwrap();
        for (path, method, operation) in operations(&json) {
            for (status, response) in operation["responses"].as_object().unwrap() {
                let content = response.get("content");
                if status == "204" {
                    assert!(content.is_none(), "{method} {path} {status}");
                } else {
                    assert!(content.is_some(), "{method} {path} {status} has no body");
                }
                if !status.starts_with('2') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }

    #[test]
    fn times_are_described_as_date_time_strings() {
        let json: serde_json::Value = serde_json::from_str(description_json()).unwrap();
        let schemas = &json["components"]["schemas"];
        let timestamp = &schemas["Timestamp"];
        assert_eq!(timestamp["type"], "string", "{timestamp}");
        assert_eq!(timestamp["format"], "date-time", "{timestamp}");
        // Every field named like a time refers to it; every duration ends `_ms`
        // and is an integer.
        for (name, schema) in schemas.as_object().unwrap() {
            let Some(properties) = schema["properties"].as_object() else {
                continue;
            };
            for (field, property) in properties {
                let text = property.to_string();
                if field.ends_with("_at") || field == "until" || field == "since" {
                    assert!(
                        text.contains("#/components/schemas/Timestamp"),
                        "{name}.{field}: {text}"
                    );
                }
                if field.ends_with("_ms") {
                    assert!(text.contains("integer"), "{name}.{field}: {text}");
                }
            }
        }
    }
}
