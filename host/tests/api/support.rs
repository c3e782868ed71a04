//! Shared harness of the API tests: the real router over a real SQLite store
//! in a temporary directory, and a real plugin catalogue of the built-in
//! plugin names. Every answer the harness receives is checked against the
//! API's own OpenAPI description: its status must be one the operation
//! lists, and its body must validate against that answer's JSON Schema.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use repeaterd::api::{
    self, ApiAuth, ApiLimits, ApiState, PluginCatalog, PluginInfo, PluginInstallError,
};
use repeaterd::model::{
    AttemptOutcome, ClaimedRecord, Millis, RecordState, SentHeader, SentRequest,
};
use repeaterd::store::sqlite::SqliteStore;
use repeaterd::store::{AttemptDraft, Lease, RecordOutcome, RepeaterHealth, Store};
use repeaterd::telemetry::Metrics;
use serde_json::Value;
use tower::ServiceExt;

pub const ADMIN: &str = "admin-token-0123456789";
pub const ACME: &str = "acme-token-0123456789";
pub const GLOBEX: &str = "globex-token-0123456789";

/// The built-in plugins and the top-level keys of their configs (each
/// refuses unknown keys).
const BUILTINS: [(&str, &[&str]); 3] = [
    ("json-forward", &["envelope", "method", "headers"]),
    ("form-xml", &["method", "content_type"]),
    ("fhir-r4", &["identifier_system"]),
];

/// The component-model preamble: `\0asm`, layer version 0x0d, layer 1.
const COMPONENT_PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// A catalogue of the built-in plugins plus uploaded components, which it
/// accepts only when they carry the component preamble.
#[derive(Default)]
pub struct BuiltinCatalog {
    uploaded: Mutex<BTreeMap<String, PluginInfo>>,
}

#[async_trait]
impl PluginCatalog for BuiltinCatalog {
    fn list(&self) -> Vec<PluginInfo> {
        let mut all: BTreeMap<String, PluginInfo> = BUILTINS
            .iter()
            .map(|(name, _)| {
                (
                    name.to_string(),
                    PluginInfo {
                        name: name.to_string(),
                        builtin: true,
                        version: Some("0.1.0".into()),
                        sha256: None,
                        last_error: None,
                    },
                )
            })
            .collect();
        all.extend(self.uploaded.lock().unwrap().clone());
        all.into_values().collect()
    }

    fn exists(&self, name: &str) -> bool {
        BUILTINS.iter().any(|(builtin, _)| *builtin == name)
            || self.uploaded.lock().unwrap().contains_key(name)
    }

    async fn install(&self, name: &str, bytes: Vec<u8>) -> Result<PluginInfo, PluginInstallError> {
        if BUILTINS.iter().any(|(builtin, _)| *builtin == name) {
            return Err(PluginInstallError::Conflict(format!(
                "{name:?} is a built-in plugin and cannot be replaced"
            )));
        }
        if !bytes.starts_with(&COMPONENT_PREAMBLE) {
            return Err(PluginInstallError::Invalid(
                "not a WebAssembly component (bad preamble)".into(),
            ));
        }
        use sha2::Digest;
        let info = PluginInfo {
            name: name.to_owned(),
            builtin: false,
            version: None,
            sha256: Some(hex::encode(sha2::Sha256::digest(&bytes))),
            last_error: None,
        };
        self.uploaded
            .lock()
            .unwrap()
            .insert(name.to_owned(), info.clone());
        Ok(info)
    }

    async fn validate(&self, plugin: &str, config: &Value) -> Result<(), String> {
        let known: &[&str] = BUILTINS
            .iter()
            .find(|(name, _)| *name == plugin)
            .map(|(_, keys)| *keys)
            .unwrap_or(&[]);
        let Some(object) = config.as_object() else {
            return Err("config must be an object".into());
        };
        for key in object.keys() {
            if !known.contains(&key.as_str()) {
                return Err(format!("unknown field `{key}`, expected one of {known:?}"));
            }
        }
        Ok(())
    }
}

/// A router over a fresh SQLite store.
pub struct TestApi {
    /// The SQLite file's directory (`None` over PostgreSQL).
    pub dir: Option<tempfile::TempDir>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub state: ApiState,
}

/// An answer: status, headers and the body as JSON (or a string for text).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Answer {
    /// The error code of an error answer.
    pub fn code(&self) -> &str {
        self.json["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }
    /// The error message of an error answer.
    pub fn message(&self) -> &str {
        self.json["error"]["message"]
            .as_str()
            .unwrap_or("<no error message>")
    }
}

/// The tokens every test uses: admin, acme and globex.
pub fn auth() -> ApiAuth {
    ApiAuth::new(
        Some(ADMIN.into()),
        [
            ("acme".to_string(), ACME.to_string()),
            ("globex".to_string(), GLOBEX.to_string()),
        ],
    )
    .unwrap()
}

impl TestApi {
    pub async fn new() -> TestApi {
        TestApi::with(auth(), ApiLimits::default()).await
    }

    pub async fn with(auth: ApiAuth, limits: ApiLimits) -> TestApi {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("repeaterd.db"))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        TestApi::over(Arc::new(store), Some(dir), auth, limits)
    }

    /// A router over an already-migrated store.
    pub fn over(
        store: Arc<dyn Store>,
        dir: Option<tempfile::TempDir>,
        auth: ApiAuth,
        limits: ApiLimits,
    ) -> TestApi {
        let metrics = Arc::new(Metrics::new());
        let state = ApiState {
            limits,
            ..ApiState::new(store.clone(), metrics.clone(), auth)
        }
        .with_plugins(Arc::new(BuiltinCatalog::default()));
        TestApi {
            dir,
            store,
            metrics,
            state,
        }
    }

    /// Sends one request through the router.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> Answer {
        let sent = method.clone();
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let request = request.body(body.into()).unwrap();
        let response = api::router(self.state.clone())
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let answer = Answer {
            status,
            headers,
            json,
            text,
        };
        check_against_description(&sent, path, &answer);
        answer
    }

    /// An admin request with a JSON body.
    pub async fn admin_json(&self, method: Method, path: &str, body: Value) -> Answer {
        self.send(
            method,
            path,
            Some(ADMIN),
            Some("application/json"),
            body.to_string(),
        )
        .await
    }

    /// An admin request without a body.
    pub async fn admin(&self, method: Method, path: &str) -> Answer {
        self.send(method, path, Some(ADMIN), None, Body::empty())
            .await
    }

    /// Stores a json-forward repeater through the API.
    pub async fn put_repeater(&self, domain: &str, name: &str, event_types: &[&str]) -> Answer {
        let answer = self
            .admin_json(
                Method::PUT,
                &format!("/v1/domains/{domain}/repeaters/{name}"),
                serde_json::json!({
                    "url": "http://127.0.0.1:9/hook",
                    "plugin": "json-forward",
                    "event_types": event_types,
                }),
            )
            .await;
        assert!(answer.status.is_success(), "{answer:?}");
        answer
    }

    /// Posts one event as admin.
    /// Takes repeater `domain`/`name`'s lease as a worker would and claims
    /// up to `limit` of its due records.
    pub async fn claim(
        &self,
        domain: &str,
        name: &str,
        limit: u32,
        now: Millis,
    ) -> (Lease, Vec<ClaimedRecord>) {
        let row = self.store.repeater(domain, name).await.unwrap().unwrap();
        let lease = self
            .store
            .acquire_lease(row.id, "worker-a", now, 60_000)
            .await
            .unwrap()
            .expect("the lease is free");
        let claimed = self.store.claim(&lease, limit, now).await.unwrap();
        (lease, claimed)
    }

    pub async fn post_event(&self, domain: &str, event: Value) -> Answer {
        self.admin_json(Method::POST, &format!("/v1/domains/{domain}/events"), event)
            .await
    }

    /// How many records the domain holds.
    pub async fn record_count(&self, domain: &str) -> usize {
        let query = repeaterd::store::RecordQuery {
            limit: 100_000,
            ..Default::default()
        };
        self.store.records(domain, &query).await.unwrap().len()
    }
}

/// The outcome of an attempt the remote answered 503 ("busy"): the record
/// retries at `next_attempt_at`.
pub fn answered_503(
    record_id: i64,
    started_at: Millis,
    duration_ms: i64,
    next_attempt_at: Millis,
) -> RecordOutcome {
    RecordOutcome {
        record_id,
        state: RecordState::Retrying,
        next_attempt_at: Some(next_attempt_at),
        attempt: Some(AttemptDraft {
            started_at,
            duration_ms,
            status: Some(503),
            error: Some("HTTP 503".into()),
            outcome: AttemptOutcome::Retry,
            response_excerpt: Some(b"busy".to_vec()),
            plugin_sha256: Some("ab".repeat(32)),
            request: Some(
                serde_json::to_string(&SentRequest {
                    method: "POST".into(),
                    url: "https://crm.example.com/hooks".into(),
                    headers: vec![
                        SentHeader {
                            name: "content-type".into(),
                            value: "application/json".into(),
                        },
                        SentHeader {
                            name: "authorization".into(),
                            value: "redacted".into(),
                        },
                    ],
                    body_bytes: 12,
                })
                .expect("a request summary as JSON"),
            ),
        }),
    }
}

/// A repeater's health after a batch that failed with 503: backed off
/// until `until`.
pub fn backed_off(until: Millis) -> RepeaterHealth {
    RepeaterHealth {
        backoff_until: Some(until),
        backoff_step: 1,
        last_error: Some("HTTP 503".into()),
        last_success_at: None,
    }
}

/// The API's OpenAPI description as JSON, as `GET /v1/openapi.json` serves it.
pub fn description() -> &'static Value {
    static DESCRIPTION: OnceLock<Value> = OnceLock::new();
    DESCRIPTION.get_or_init(|| {
        serde_json::from_str(api::openapi::description_json()).expect("the description is JSON")
    })
}

/// The described path template a request path falls under: the one whose
/// segments match, preferring literal segments over parameters.
pub fn template_of(path: &str) -> Option<&'static str> {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    description()["paths"]
        .as_object()?
        .keys()
        .filter_map(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            if parts.len() != segments.len() {
                return None;
            }
            let mut literal = 0;
            for (part, segment) in parts.iter().zip(&segments) {
                if part.starts_with('{') {
                    continue;
                }
                if part != segment {
                    return None;
                }
                literal += 1;
            }
            Some((literal, template.as_str()))
        })
        .max()
        .map(|(_, template)| template)
}

/// A validator for a JSON Schema of the description, compiled once; the
/// schema's `$ref`s resolve against the description's components.
fn validator(key: &str, schema: &Value) -> Arc<jsonschema::Validator> {
    static VALIDATORS: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> =
        OnceLock::new();
    let mut validators = VALIDATORS.get_or_init(Default::default).lock().unwrap();
    validators
        .entry(key.to_owned())
        .or_insert_with(|| {
            let root = serde_json::json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "components": description()["components"],
                "allOf": [schema],
            });
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&root)
                .unwrap_or_else(|err| panic!("the schema of {key} does not compile: {err}"));
            Arc::new(validator)
        })
        .clone()
}

/// Validates `body` against `schema`, naming every violation.
pub fn assert_valid(key: &str, schema: &Value, body: &Value) {
    let validator = validator(key, schema);
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|err| format!("{} at {}", err, err.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{key}: the answer does not match the description:\n  {}\nbody: {body}",
        errors.join("\n  ")
    );
}

/// Checks an answer against the description: a described operation must
/// list the answer's status, with the answer's media type, and a JSON body
/// must validate against that answer's schema. Answers outside every
/// described operation (unknown paths, wrong methods) must be errors of the
/// described error shape.
pub fn check_against_description(method: &Method, path: &str, answer: &Answer) {
    let error_schema = serde_json::json!({"$ref": "#/components/schemas/ErrorBody"});
    let operation = template_of(path).and_then(|template| {
        let operation = &description()["paths"][template][method.as_str().to_ascii_lowercase()];
        operation.is_object().then_some((template, operation))
    });
    let Some((template, operation)) = operation else {
        assert!(
            answer.status.is_client_error(),
            "{method} {path} is not described but answered {}",
            answer.status
        );
        assert_valid("ErrorBody", &error_schema, &answer.json);
        return;
    };
    let key = format!("{method} {template} {}", answer.status.as_u16());
    let described = &operation["responses"][answer.status.as_str()];
    assert!(
        described.is_object(),
        "{key}: this status is not in the description; the body was {}",
        answer.text
    );
    let Some(content) = described["content"].as_object() else {
        assert!(answer.text.is_empty(), "{key}: no body is described");
        return;
    };
    let declared = answer
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let (media_type, media) = content
        .iter()
        .find(|(media_type, _)| declared.starts_with(media_type.as_str()))
        .unwrap_or_else(|| panic!("{key}: answered {declared:?}, described {content:?}"));
    if media_type == "application/json" {
        let body: Value = serde_json::from_str(&answer.text)
            .unwrap_or_else(|err| panic!("{key}: the body is not JSON ({err}): {}", answer.text));
        assert_valid(&key, &media["schema"], &body);
    }
}
