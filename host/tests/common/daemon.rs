//! Runs the real `repeaterd` binary for end-to-end tests: writes a config
//! into a temporary directory, picks a free port, starts `repeaterd serve`,
//! waits until it answers, and talks to its HTTP API.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The admin token every test daemon accepts.
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";
/// The environment variable the test config names for it.
pub const ADMIN_TOKEN_ENV: &str = "REPEATERD_E2E_ADMIN_TOKEN";

/// Which database a test daemon uses.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A SQLite file in the test's directory.
    Sqlite,
    /// A fresh PostgreSQL database (URL).
    Postgres(String),
}

impl Backend {
    /// A fresh PostgreSQL database on the test server, named after the test.
    pub async fn postgres(test: &str) -> Backend {
        Backend::Postgres(fresh_pg_database(test).await)
    }
}

/// Creates an empty database for one test through the `postgres` database
/// and returns its URL. Fails loudly when the server is unreachable.
pub async fn fresh_pg_database(test: &str) -> String {
    use sqlx::Connection;
    let base = std::env::var("REPEATERD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let (server, _) = base
        .rsplit_once('/')
        .expect("REPEATERD_TEST_PG_URL has a database");
    let admin_url = format!("{server}/postgres");
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL at {admin_url} is unreachable (set REPEATERD_TEST_PG_URL): {e}")
        });
    let name = format!(
        "e2e_{}_{}_{}",
        test.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
        std::process::id(),
        rand::random::<u32>()
    );
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut admin)
        .await
        .expect("drop old test database");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    format!("{server}/{name}")
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `[[repeater]]` of a test config.
#[derive(Debug, Clone)]
pub struct RepeaterConf {
    pub domain: String,
    pub name: String,
    pub url: String,
    pub plugin: String,
    /// Inline TOML for `plugin_config`, e.g. `{ envelope = true }`.
    pub plugin_config: String,
    /// Extra per-repeater keys as TOML lines, e.g. `concurrency = 3`.
    pub limits: Vec<String>,
}

impl RepeaterConf {
    pub fn json_forward(domain: &str, name: &str, url: &str) -> RepeaterConf {
        RepeaterConf {
            domain: domain.to_owned(),
            name: name.to_owned(),
            url: url.to_owned(),
            plugin: "json-forward".to_owned(),
            plugin_config: "{ envelope = true }".to_owned(),
            limits: Vec::new(),
        }
    }

    pub fn limit(mut self, line: &str) -> RepeaterConf {
        self.limits.push(line.to_owned());
        self
    }
}

/// A test config: fast retry and backoff timings, loopback allowed.
#[derive(Debug, Clone)]
pub struct TestConfig {
    pub repeaters: Vec<RepeaterConf>,
    pub max_inflight: u32,
    pub concurrency: u32,
    pub retry_schedule_ms: Vec<u64>,
    pub max_attempts: u32,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    pub timeout_ms: u64,
    pub batch_size: u32,
}

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig {
            repeaters: Vec::new(),
            max_inflight: 32,
            concurrency: 7,
            retry_schedule_ms: vec![100],
            max_attempts: 10,
            backoff_min_ms: 200,
            backoff_max_ms: 2000,
            timeout_ms: 5000,
            batch_size: 50,
        }
    }
}

impl TestConfig {
    /// The TOML text for a daemon listening on `port` with `backend`.
    pub fn to_toml(&self, dir: &Path, port: u16, backend: &Backend) -> String {
        let database = match backend {
            Backend::Sqlite => format!(
                "sqlite_path = {:?}\n",
                dir.join("repeaterd.sqlite").display().to_string()
            ),
            Backend::Postgres(url) => format!("url = {url:?}\n"),
        };
        let schedule: Vec<String> = self
            .retry_schedule_ms
            .iter()
            .map(|ms| format!("\"{ms}ms\""))
            .collect();
        let mut text = format!(
            r#"[server]
listen = "127.0.0.1:{port}"
shutdown_grace = "5s"

[database]
{database}
[dispatch]
max_inflight = {max_inflight}
batch_size = {batch_size}
concurrency = {concurrency}
timeout = "{timeout_ms}ms"
retry_schedule = [{schedule}]
jitter = 0.2
max_attempts = {max_attempts}
backoff_min = "{backoff_min_ms}ms"
backoff_max = "{backoff_max_ms}ms"
lease_ttl = "5s"

[plugins]
dir = {plugins_dir:?}
cache_dir = {cache_dir:?}

[security]
admin_token_env = "{ADMIN_TOKEN_ENV}"
allow_private = ["127.0.0.1/32"]
"#,
            max_inflight = self.max_inflight,
            batch_size = self.batch_size,
            concurrency = self.concurrency,
            timeout_ms = self.timeout_ms,
            schedule = schedule.join(", "),
            max_attempts = self.max_attempts,
            backoff_min_ms = self.backoff_min_ms,
            backoff_max_ms = self.backoff_max_ms,
            plugins_dir = dir.join("plugins").display().to_string(),
            // Shared by every test daemon: compiling a plugin in a debug
            // build takes seconds, loading a cached one milliseconds.
            cache_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("plugin-cache")
                .display()
                .to_string(),
        );
        for r in &self.repeaters {
            text.push_str(&format!(
                "\n[[repeater]]\ndomain = {:?}\nname = {:?}\nurl = {:?}\nplugin = {:?}\nplugin_config = {}\n",
                r.domain, r.name, r.url, r.plugin, r.plugin_config
            ));
            for line in &r.limits {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }
}

/// A running `repeaterd serve`.
pub struct Daemon {
    pub base: String,
    port: u16,
    config_path: PathBuf,
    backend: Backend,
    pub dir: PathBuf,
    child: Option<Child>,
    log_path: PathBuf,
    http: reqwest::Client,
}

/// Owns the temporary directory of a test's daemons.
pub struct TestDir {
    pub dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        TestDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Daemon {
    /// Writes the config and starts the daemon; waits until `/healthz` answers.
    pub async fn start(dir: &TestDir, config: &TestConfig, backend: &Backend) -> Daemon {
        Daemon::start_named(dir, "repeaterd", config, backend).await
    }

    /// Like [`Daemon::start`], with its own config and log file names so
    /// several daemons can share one directory.
    pub async fn start_named(
        dir: &TestDir,
        name: &str,
        config: &TestConfig,
        backend: &Backend,
    ) -> Daemon {
        let port = free_port();
        let text = config.to_toml(dir.path(), port, backend);
        Daemon::start_text(dir, name, port, backend, &text).await
    }

    /// Starts the daemon from a config text that listens on `port`; waits
    /// until `/healthz` answers. The log file is appended to, so a daemon
    /// restarted under the same name keeps one log. `backend` is the
    /// database the text names.
    pub async fn start_text(
        dir: &TestDir,
        name: &str,
        port: u16,
        backend: &Backend,
        config_text: &str,
    ) -> Daemon {
        let config_path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config_path, config_text).unwrap();
        let log_path = dir.path().join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_repeaterd"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env(ADMIN_TOKEN_ENV, ADMIN_TOKEN)
            .env("REPEATERD_LOG", "repeaterd=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start repeaterd");
        let mut daemon = Daemon {
            base: format!("http://127.0.0.1:{port}"),
            port,
            config_path: config_path.clone(),
            backend: backend.clone(),
            dir: dir.path().to_owned(),
            child: Some(child),
            log_path,
            http: reqwest::Client::new(),
        };
        daemon.wait_healthy(Duration::from_secs(60)).await;
        daemon
    }

    async fn wait_healthy(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(resp) = self.http.get(format!("{}/healthz", self.base)).send().await
                && resp.status().is_success()
            {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "repeaterd exited with {status} before answering:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "repeaterd did not answer /healthz within {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the daemon wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Rewrites the daemon's config file with `config` (same port and
    /// database) and sends SIGHUP.
    pub fn reload(&self, config: &TestConfig) {
        let dir = self.config_path.parent().unwrap();
        std::fs::write(
            &self.config_path,
            config.to_toml(dir, self.port, &self.backend),
        )
        .unwrap();
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("daemon runs");
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(pid as i32, libc::SIGHUP);
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it
    /// exited successfully.
    pub async fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if let Some(pid) = child.id() {
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => {
                let _ = child.kill().await;
                false
            }
        }
    }

    fn auth(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.bearer_auth(ADMIN_TOKEN)
    }

    /// GET a path under the API; returns status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .auth(self.http.get(format!("{}{path}", self.base)))
            .send()
            .await
            .expect("GET reaches repeaterd");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POST JSON to a path under the API; returns status and JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .auth(self.http.post(format!("{}{path}", self.base)))
            .json(body)
            .send()
            .await
            .expect("POST reaches repeaterd");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Posts one event; returns the 202 answer.
    pub async fn ingest(&self, domain: &str, event: Value) -> Value {
        let (status, body) = self
            .post(&format!("/v1/domains/{domain}/events"), &event)
            .await;
        assert_eq!(
            status, 202,
            "ingest into {domain} answered {status}: {body}"
        );
        body
    }

    /// Posts events in batches of up to 1000.
    pub async fn ingest_many(&self, domain: &str, events: Vec<Value>) {
        for chunk in events.chunks(1000) {
            let (status, body) = self
                .post(
                    &format!("/v1/domains/{domain}/events/batch"),
                    &json!({ "events": chunk }),
                )
                .await;
            assert!(
                status == 202 || status == 200,
                "batch ingest into {domain} answered {status}: {body}"
            );
        }
    }

    /// One record with its attempts.
    pub async fn record(&self, domain: &str, id: &str) -> Value {
        let (status, body) = self
            .get(&format!("/v1/domains/{domain}/records/{id}"))
            .await;
        assert_eq!(
            status, 200,
            "record {domain}/{id} answered {status}: {body}"
        );
        body
    }

    /// Waits until record `id` reaches `state`; returns the record.
    pub async fn wait_record_state(
        &self,
        domain: &str,
        id: &str,
        state: &str,
        limit: Duration,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let record = self.record(domain, id).await;
            if record_state(&record) == Some(state.to_owned()) {
                return record;
            }
            assert!(
                Instant::now() < deadline,
                "record {domain}/{id} did not reach {state} within {limit:?}: {record}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POST an admin action on a repeater (`pause`, `resume`, `requeue`).
    pub async fn repeater_action(&self, domain: &str, name: &str, action: &str) -> Value {
        let (status, body) = self
            .post(
                &format!("/v1/domains/{domain}/repeaters/{name}/{action}"),
                &json!({}),
            )
            .await;
        assert!(
            (200..300).contains(&status),
            "{action} {domain}/{name} answered {status}: {body}"
        );
        body
    }

    /// POST an admin action on a record (`resend`, `cancel`); returns the status.
    pub async fn record_action(&self, domain: &str, id: &str, action: &str) -> (u16, Value) {
        self.post(
            &format!("/v1/domains/{domain}/records/{id}/{action}"),
            &json!({}),
        )
        .await
    }
}

/// The state of a record answer, wherever the API put it.
pub fn record_state(record: &Value) -> Option<String> {
    record
        .get("state")
        .or_else(|| record.get("record").and_then(|r| r.get("state")))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The attempts of a record answer.
pub fn record_attempts(record: &Value) -> Vec<Value> {
    record
        .get("attempts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The record ids an ingest answer created, as text.
pub fn ingested_ids(answer: &Value) -> Vec<String> {
    answer["records"]
        .as_array()
        .expect("ingest answer has records")
        .iter()
        .map(|r| match &r["id"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// Process control for crash and resource tests.
impl Daemon {
    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Kills the process with SIGKILL (no shutdown code runs) and reaps it.
    pub async fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                // SAFETY: sending a signal to our own child process.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
            let _ = child.wait().await;
        }
    }

    /// Sends `signal` to the process (e.g. `libc::SIGHUP`).
    pub fn signal(&self, signal: i32) {
        let pid = self.pid().expect("repeaterd is running");
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(pid as i32, signal);
        }
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// Peak resident memory of the process so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// POST JSON without assuming the daemon is up: a transport error is
    /// returned, not a panic.
    pub async fn try_post(&self, path: &str, body: &Value) -> Result<(u16, Value), reqwest::Error> {
        let resp = self
            .auth(self.http.post(format!("{}{path}", self.base)))
            .json(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }
}
