//! Shared harness of the API tests: the real router over a real SQLite store
//! in a temporary directory, and a real plugin catalogue of the built-in
//! plugin names.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use repeaterd::api::{
    self, ApiAuth, ApiLimits, ApiState, PluginCatalog, PluginInfo, PluginInstallError,
};
use repeaterd::store::Store;
use repeaterd::store::sqlite::SqliteStore;
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
        Answer {
            status,
            headers,
            json,
            text,
        }
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
