//! Shared parts of the reliability tests (crash, receiver faults, hostile
//! plugins, config): a config written in the daemon's own schema with the
//! knobs these tests turn (lease TTL, in-flight cap, timeouts, plugin
//! limits), restarts of the real binary on a fresh port, ingest that
//! survives the daemon being killed mid-request, and record listing through
//! the API. The receiver and the process launcher are `common`'s.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{ADMIN_TOKEN, ADMIN_TOKEN_ENV, Backend, Daemon, TestDir, free_port};

/// One `[[repeater]]` of a reliability config.
#[derive(Debug, Clone)]
pub struct Lane {
    pub domain: String,
    pub name: String,
    pub url: String,
    pub plugin: String,
    /// Inline TOML table for `plugin_config`.
    pub plugin_config: String,
    /// Extra per-repeater keys as TOML lines, e.g. `concurrency = 2`.
    pub extra: Vec<String>,
}

impl Lane {
    /// A json-forward repeater (idempotency header = record id).
    pub fn json_forward(domain: &str, name: &str, url: &str) -> Lane {
        Lane {
            domain: domain.to_owned(),
            name: name.to_owned(),
            url: url.to_owned(),
            plugin: "json-forward".to_owned(),
            plugin_config: "{ envelope = true }".to_owned(),
            extra: Vec::new(),
        }
    }

    /// A repeater using `plugin` with an inline TOML config table.
    pub fn with_plugin(domain: &str, name: &str, url: &str, plugin: &str, config: &str) -> Lane {
        Lane {
            plugin: plugin.to_owned(),
            plugin_config: config.to_owned(),
            ..Lane::json_forward(domain, name, url)
        }
    }

    pub fn extra(mut self, line: &str) -> Lane {
        self.extra.push(line.to_owned());
        self
    }
}

/// The knobs of a reliability test's daemon; durations are config strings.
#[derive(Debug, Clone)]
pub struct Rig {
    pub lanes: Vec<Lane>,
    pub max_inflight: u32,
    pub lease_ttl: String,
    pub batch_size: u32,
    pub concurrency: u32,
    pub timeout: String,
    pub retry_schedule: Vec<String>,
    pub max_attempts: u32,
    pub backoff_min: String,
    pub backoff_max: String,
    pub plugin_memory_mb: u32,
    pub plugin_cpu_ms: u32,
}

impl Default for Rig {
    fn default() -> Self {
        Rig {
            lanes: Vec::new(),
            max_inflight: 64,
            lease_ttl: "2s".to_owned(),
            batch_size: 50,
            concurrency: 16,
            timeout: "10s".to_owned(),
            retry_schedule: vec!["200ms".to_owned()],
            max_attempts: 20,
            backoff_min: "200ms".to_owned(),
            backoff_max: "1s".to_owned(),
            plugin_memory_mb: 64,
            plugin_cpu_ms: 100,
        }
    }
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Rig {
    /// The config text in the daemon's schema (see examples/repeaterd.toml).
    pub fn to_toml(&self, dir: &Path, port: u16, backend: &Backend) -> String {
        let database = match backend {
            Backend::Sqlite => format!(
                "sqlite_path = {:?}",
                dir.join("repeaterd.sqlite").display().to_string()
            ),
            Backend::Postgres(url) => format!("url = {url:?}"),
        };
        let mut text = format!(
            r#"[server]
listen = "127.0.0.1:{port}"
shutdown_grace = "5s"

[database]
{database}

[dispatch]
max_inflight = {max_inflight}
lease_ttl = {lease_ttl:?}
batch_size = {batch_size}
concurrency = {concurrency}
timeout = {timeout:?}
retry_schedule = [{schedule}]
jitter = 0.2
max_attempts = {max_attempts}
backoff_min = {backoff_min:?}
backoff_max = {backoff_max:?}
retry_after_max = "30s"

[plugins]
dir = {plugins_dir:?}
cache_dir = {cache_dir:?}
memory_mb = {memory_mb}
cpu_ms = {cpu_ms}

[security]
admin_token_env = "{ADMIN_TOKEN_ENV}"
allow_private = ["127.0.0.1/32"]
"#,
            max_inflight = self.max_inflight,
            lease_ttl = self.lease_ttl,
            batch_size = self.batch_size,
            concurrency = self.concurrency,
            timeout = self.timeout,
            schedule = quoted(&self.retry_schedule),
            max_attempts = self.max_attempts,
            backoff_min = self.backoff_min,
            backoff_max = self.backoff_max,
            plugins_dir = dir.join("plugins").display().to_string(),
            cache_dir = dir.join("plugin-cache").display().to_string(),
            memory_mb = self.plugin_memory_mb,
            cpu_ms = self.plugin_cpu_ms,
        );
        for lane in &self.lanes {
            text.push_str(&format!(
                "\n[[repeater]]\ndomain = {:?}\nname = {:?}\nurl = {:?}\nplugin = {:?}\nplugin_config = {}\n",
                lane.domain, lane.name, lane.url, lane.plugin, lane.plugin_config
            ));
            for line in &lane.extra {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    /// Starts (or restarts) the daemon on a fresh port. The config is first
    /// parsed in-process so a schema mistake in a test reads as one.
    pub async fn start(&self, dir: &TestDir, backend: &Backend) -> Daemon {
        let port = free_port();
        let text = self.to_toml(dir.path(), port, backend);
        if let Err(err) =
            repeaterd::config::Config::parse(&text, &dir.path().join("repeaterd.toml"))
        {
            panic!("the test config does not parse: {err}\n{text}");
        }
        Daemon::start_text(dir, "repeaterd", port, backend, &text).await
    }
}

/// Ingests through the batch API, resending a batch until it is answered
/// 2xx: a batch whose answer was lost (the daemon was killed mid-request)
/// may or may not be stored, and resending it with the same event ids is
/// idempotent. Returns the record ids of the answer.
pub async fn ingest_until_accepted(
    http: &reqwest::Client,
    base: &tokio::sync::watch::Receiver<String>,
    domain: &str,
    events: &[Value],
    limit: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let body = json!({ "events": events });
    let mut last = String::new();
    while Instant::now() < deadline {
        let url = format!("{}/v1/domains/{domain}/events/batch", base.borrow().clone());
        match http
            .post(&url)
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => match resp.json::<Value>().await {
                Ok(answer) => return batch_record_ids(&answer),
                Err(err) => last = format!("answer body lost: {err}"),
            },
            Ok(resp) => {
                let status = resp.status();
                last = format!("{status}: {}", resp.text().await.unwrap_or_default());
                assert!(
                    status.is_server_error() || status.as_u16() == 429,
                    "batch ingest into {domain} was refused: {last}"
                );
            }
            Err(err) => last = format!("transport: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("batch ingest into {domain} never got a 2xx within {limit:?}; last: {last}");
}

/// The record ids in a batch ingest answer.
pub fn batch_record_ids(answer: &Value) -> Vec<String> {
    answer["events"]
        .as_array()
        .unwrap_or_else(|| panic!("batch answer has events: {answer}"))
        .iter()
        .flat_map(|event| event["records"].as_array().cloned().unwrap_or_default())
        .map(|record| match &record["id"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// Every record of a domain (optionally one state), paging through the API.
pub async fn list_records(daemon: &Daemon, domain: &str, state: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/domains/{domain}/records?limit=1000");
        if let Some(state) = state {
            path.push_str(&format!("&state={state}"));
        }
        if let Some(after) = &after {
            path.push_str(&format!("&after={after}"));
        }
        let (status, body) = daemon.get(&path).await;
        assert_eq!(status, 200, "listing {path} answered {status}: {body}");
        let page = body["records"].as_array().cloned().unwrap_or_default();
        out.extend(page);
        match &body["next_after"] {
            Value::Null => return out,
            Value::String(s) => after = Some(s.clone()),
            other => after = Some(other.to_string()),
        }
    }
}

/// The id of a record row as text.
pub fn record_id(record: &Value) -> String {
    match &record["id"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A small seeded generator for kill moments and fault choices, so a run
/// can be repeated from the seed it prints.
pub fn seed_from_env(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{var}={text:?} is not a u64 seed")),
        Err(_) => rand::random(),
    }
}
