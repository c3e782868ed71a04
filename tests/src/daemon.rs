//! The real `repeaterd serve` as a child process: written config, a free
//! port, a log file, start-up that waits until `/healthz` answers, signals,
//! and the HTTP API calls the tests make, with helpers that read its
//! answers.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::backend::Backend;
use crate::binary;
use crate::config::{DaemonConfig, domain_token, domain_token_env};

/// The admin token every test daemon accepts.
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";
/// The environment variable the test config names for it.
pub const ADMIN_TOKEN_ENV: &str = "REPEATERD_E2E_ADMIN_TOKEN";

/// How long a daemon may take to answer `/healthz` after it starts.
const START_LIMIT: Duration = Duration::from_secs(60);

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("an ephemeral port on 127.0.0.1")
        .port()
}

/// The temporary directory of a test's daemons: configs, logs, SQLite
/// files and the `plugins` directory.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir_all(dir.path().join("plugins")).expect("the plugins directory");
        TestDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for TestDir {
    fn default() -> Self {
        TestDir::new()
    }
}

/// A size-capped tmpfs that only one daemon sees, for tests of a full disk.
/// The daemon runs in a user and mount namespace of its own (`unshare`,
/// from util-linux), where a tmpfs of `mib` MiB is mounted on `path` before
/// the daemon starts; so no root is needed where unprivileged user
/// namespaces are allowed, and nothing outside the daemon sees the mount.
/// The tmpfs goes when the daemon exits; the test reaches its files
/// meanwhile through [`Daemon::path_as_seen_by_daemon`].
#[derive(Debug, Clone)]
pub struct SmallDisk {
    /// Where the tmpfs is mounted (an existing, empty directory).
    pub path: PathBuf,
    /// Its size in MiB.
    pub mib: u32,
}

impl SmallDisk {
    /// The command that mounts the disk and then runs `repeaterd` with the
    /// arguments added to it.
    fn command(&self) -> Command {
        let mut command = Command::new("unshare");
        command
            .args([
                "--user",
                "--map-root-user",
                "--mount",
                "--propagation",
                "private",
            ])
            .args(["--", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o size="$1"m repeaterd-test "$2" && shift 2 && exec "$@""#)
            .arg("sh")
            .arg(self.mib.to_string())
            .arg(&self.path)
            .arg(binary::repeaterd());
        command
    }
}

/// A running `repeaterd serve`; killed if still running when dropped.
pub struct Daemon {
    /// The API's base URL, e.g. `http://127.0.0.1:4711`.
    pub base: String,
    port: u16,
    config_path: PathBuf,
    /// The `[database]` keys, kept for reloads.
    database: String,
    child: Option<Child>,
    log_path: PathBuf,
    http: reqwest::Client,
}

impl Daemon {
    /// Writes `config` as `repeaterd.toml` in `dir` and starts the daemon on
    /// a fresh port; waits until `/healthz` answers. Starting again in the
    /// same directory restarts on the same files.
    pub async fn start(dir: &TestDir, config: &DaemonConfig, backend: &Backend) -> Daemon {
        Daemon::start_named(dir, "repeaterd", config, backend).await
    }

    /// Like [`Daemon::start`], with config and log files named after `name`
    /// so several daemons can share one directory.
    pub async fn start_named(
        dir: &TestDir,
        name: &str,
        config: &DaemonConfig,
        backend: &Backend,
    ) -> Daemon {
        let database = backend.database_toml(dir.path());
        Daemon::spawn(dir, name, config, database, None).await
    }

    /// Starts the daemon on SQLite with its database on `disk`, a small
    /// file system of its own (see [`SmallDisk`]).
    pub async fn start_on_small_disk(
        dir: &TestDir,
        config: &DaemonConfig,
        disk: &SmallDisk,
    ) -> Daemon {
        let database = format!(
            "sqlite_path = {:?}\n",
            disk.path.join("repeaterd.sqlite").display().to_string()
        );
        Daemon::spawn(dir, "repeaterd", config, database, Some(disk)).await
    }

    async fn spawn(
        dir: &TestDir,
        name: &str,
        config: &DaemonConfig,
        database: String,
        disk: Option<&SmallDisk>,
    ) -> Daemon {
        let port = free_port();
        let config_path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config_path, config.to_toml(dir.path(), port, &database))
            .expect("write the daemon's config");
        // Appended to, so a daemon restarted under the same name keeps one log.
        let log_path = dir.path().join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open the daemon's log");
        let mut command = match disk {
            None => Command::new(binary::repeaterd()),
            Some(disk) => disk.command(),
        };
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env(ADMIN_TOKEN_ENV, ADMIN_TOKEN)
            .envs(
                config
                    .domain_tokens
                    .iter()
                    .map(|domain| (domain_token_env(domain), domain_token(domain))),
            )
            .envs(config.env.iter().map(|(name, value)| (name, value)))
            .env("REPEATERD_LOG", "repeaterd=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file twice"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start repeaterd");
        let mut daemon = Daemon {
            base: format!("http://127.0.0.1:{port}"),
            port,
            config_path,
            database,
            child: Some(child),
            log_path,
            http: reqwest::Client::new(),
        };
        daemon.wait_healthy().await;
        daemon
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Ok(resp) = self.http.get(format!("{}/healthz", self.base)).send().await
                && resp.status().is_success()
            {
                return;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "repeaterd exited with {status} before answering:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "repeaterd did not answer /healthz within {START_LIMIT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The config file the daemon was started from.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// What the daemon wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Rewrites the daemon's config file with `config` (same port and
    /// database) and sends SIGHUP.
    pub fn reload(&self, config: &DaemonConfig) {
        let dir = self.config_path.parent().expect("the config's directory");
        std::fs::write(
            &self.config_path,
            config.to_toml(dir, self.port, &self.database),
        )
        .expect("rewrite the daemon's config");
        self.signal(libc::SIGHUP);
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// `path` as the daemon sees it, reachable from the test while the
    /// daemon runs: under `/proc/<pid>/root`, so a file on a [`SmallDisk`]
    /// (mounted in the daemon's own namespace) can be read or removed.
    pub fn path_as_seen_by_daemon(&self, path: &Path) -> PathBuf {
        let pid = self.pid().expect("repeaterd is running");
        let relative = path.strip_prefix("/").unwrap_or(path);
        Path::new(&format!("/proc/{pid}/root")).join(relative)
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the process.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid().expect("repeaterd is running");
        // SAFETY: sends a signal to our own child process, which has not
        // been reaped (we hold its `Child`), so the pid is still its own.
        unsafe {
            libc::kill(pid as i32, signal);
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it
    /// exited successfully within 30 s.
    pub async fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if let Some(pid) = child.id() {
            // SAFETY: as in `signal`.
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

    /// Kills the process with SIGKILL (no shutdown code runs) and reaps it.
    pub async fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
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

    /// GET a path under the API as admin; returns status and JSON body (a
    /// JSON string for a body that is not JSON).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let request = self.http.get(format!("{}{path}", self.base));
        answer(request.bearer_auth(ADMIN_TOKEN).send().await)
            .await
            .unwrap_or_else(|err| panic!("GET {path} did not reach repeaterd: {err}"))
    }

    /// GET a console page as admin: logs in with the admin token first.
    /// Returns the status and the HTML.
    pub async fn console_page(&self, path: &str) -> (u16, String) {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client");
        let login = client
            .post(format!("{}/ui/login", self.base))
            .form(&[("token", ADMIN_TOKEN), ("next", "/ui")])
            .send()
            .await
            .unwrap_or_else(|err| panic!("the console login did not reach repeaterd: {err}"));
        let cookie = (login.headers().get_all(reqwest::header::SET_COOKIE).iter())
            .filter_map(|value| value.to_str().ok())
            .find_map(|value| value.split(';').next())
            .unwrap_or_else(|| panic!("the console login set no cookie: {}", login.status()))
            .to_owned();
        let page = client
            .get(format!("{}{path}", self.base))
            .header(reqwest::header::COOKIE, cookie)
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET {path} did not reach repeaterd: {err}"));
        let status = page.status().as_u16();
        (status, page.text().await.unwrap_or_default())
    }

    /// POST JSON to a path under the API as admin; returns status and body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.try_post(path, body)
            .await
            .unwrap_or_else(|err| panic!("POST {path} did not reach repeaterd: {err}"))
    }

    /// Like [`Daemon::post`], returning a transport error instead of
    /// panicking (the daemon may be down on purpose).
    pub async fn try_post(&self, path: &str, body: &Value) -> Result<(u16, Value), reqwest::Error> {
        let request = self.http.post(format!("{}{path}", self.base));
        answer(request.bearer_auth(ADMIN_TOKEN).json(body).send().await).await
    }

    /// PUT JSON to a path under the API as admin; returns status and body.
    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let request = self.http.put(format!("{}{path}", self.base));
        answer(request.bearer_auth(ADMIN_TOKEN).json(body).send().await)
            .await
            .unwrap_or_else(|err| panic!("PUT {path} did not reach repeaterd: {err}"))
    }

    /// PUT raw `bytes` of `content_type` under the API as admin (a plugin
    /// upload); returns status and JSON body.
    pub async fn put_bytes(&self, path: &str, content_type: &str, bytes: Vec<u8>) -> (u16, Value) {
        let request = self.http.put(format!("{}{path}", self.base));
        let request = request
            .bearer_auth(ADMIN_TOKEN)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(bytes);
        answer(request.send().await)
            .await
            .unwrap_or_else(|err| panic!("PUT {path} did not reach repeaterd: {err}"))
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
            if record_state(&record).as_deref() == Some(state) {
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

    /// POST an admin action on a record (`resend`, `cancel`).
    pub async fn record_action(&self, domain: &str, id: &str, action: &str) -> (u16, Value) {
        self.post(
            &format!("/v1/domains/{domain}/records/{id}/{action}"),
            &json!({}),
        )
        .await
    }
}

/// Status and body of a response, the body as JSON or else as a string.
async fn answer(
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<(u16, Value), reqwest::Error> {
    let resp = sent?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// The state of a record answer.
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

/// The id of a record (in a listing or an ingest answer) as text.
pub fn record_id(record: &Value) -> String {
    match &record["id"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The record ids an ingest answer created.
pub fn ingested_ids(answer: &Value) -> Vec<String> {
    answer["records"]
        .as_array()
        .unwrap_or_else(|| panic!("ingest answer without records: {answer}"))
        .iter()
        .map(record_id)
        .collect()
}

/// The record ids in a batch ingest answer.
pub fn batch_record_ids(answer: &Value) -> Vec<String> {
    answer["events"]
        .as_array()
        .unwrap_or_else(|| panic!("batch answer without events: {answer}"))
        .iter()
        .flat_map(ingested_ids)
        .collect()
}

/// Ingests through the batch API, resending a batch until it is answered
/// 2xx: a batch whose answer was lost (the daemon was killed mid-request)
/// may or may not be stored, and resending it with the same event ids is
/// idempotent. `base` follows the daemon across restarts. Returns the
/// record ids of the answer.
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
        let sent = http
            .post(&url)
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await;
        match answer(sent).await {
            Ok((status, answer)) if (200..300).contains(&status) => {
                return batch_record_ids(&answer);
            }
            Ok((status, answer)) => {
                last = format!("{status}: {answer}");
                assert!(
                    status >= 500 || status == 429,
                    "batch ingest into {domain} was refused: {last}"
                );
            }
            Err(err) => last = format!("transport: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("batch ingest into {domain} never got a 2xx within {limit:?}; last: {last}");
}

/// Every record of a domain (optionally in one state), paging through the
/// listing by its keyset cursor.
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
        out.extend(body["records"].as_array().cloned().unwrap_or_default());
        match &body["next_after"] {
            Value::Null => return out,
            Value::String(s) => after = Some(s.clone()),
            other => after = Some(other.to_string()),
        }
    }
}

/// The seed in `var`, or a random one: tests print the seed they use so a
/// run can be repeated.
pub fn seed_from_env(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{var}={text:?} is not a u64 seed")),
        Err(_) => rand::random(),
    }
}

/// Polls `check` every 20 ms until it returns something, failing after
/// `limit` with `what` and `context()` (a daemon's log, say).
pub async fn eventually<T, F, Fut>(
    what: &str,
    limit: Duration,
    context: impl Fn() -> String,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}:\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
