//! The daemon under test: writes its TOML config, starts `repeaterd serve`
//! as a child process listening on 127.0.0.1, waits for `/readyz`, reads its
//! peak RSS and stops it. A [`Daemon`] that is dropped kills its process, so
//! a scenario that fails or runs out of time never leaves one behind.

use std::fmt::Write;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::api::Api;
use crate::database::ScenarioDb;
use crate::scenario::DispatchTuning;

/// Environment variable through which the daemon gets its admin token.
pub const TOKEN_ENV: &str = "REPEATERD_BENCH_ADMIN_TOKEN";

/// One `[[repeater]]` of the generated config.
#[derive(Debug, Clone)]
pub struct RepeaterDef {
    /// Its domain.
    pub domain: String,
    /// Its name.
    pub name: String,
    /// Where it posts (the receiver).
    pub url: String,
}

/// What the generated config says.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// API listen address (127.0.0.1, a free port).
    pub listen: SocketAddr,
    /// The `[dispatch]` settings.
    pub dispatch: DispatchTuning,
    /// The compiled-plugin cache lives under this directory.
    pub state_dir: PathBuf,
    /// The repeaters.
    pub repeaters: Vec<RepeaterDef>,
    /// `plugins.dir`, when the scenario brings plugins of its own.
    pub plugins_dir: Option<PathBuf>,
    /// `dispatch.retention`, when the scenario sets it.
    pub retention: Option<Duration>,
    /// `dispatch.retry_schedule` and `max_attempts`, when the scenario
    /// sets them.
    pub retries: Option<(Duration, u32)>,
}

impl DaemonConfig {
    /// A config for `repeaters` with `dispatch`, listening on a free
    /// loopback port.
    pub fn new(
        state_dir: &Path,
        repeaters: Vec<RepeaterDef>,
        dispatch: DispatchTuning,
    ) -> Result<DaemonConfig, String> {
        Ok(DaemonConfig {
            listen: free_loopback_port()?,
            dispatch,
            state_dir: state_dir.to_path_buf(),
            repeaters,
            plugins_dir: None,
            retention: None,
            retries: None,
        })
    }

    /// The TOML text of `repeaterd serve --config` (schema: the `config`
    /// module, `examples/repeaterd.toml`).
    pub fn render(&self, db: &ScenarioDb) -> String {
        let mut toml = String::new();
        let _ = writeln!(toml, "# Written by the repeaterd benchmark harness.");
        // Batches of 1000 events of 1 KiB exceed the default 1 MiB body cap.
        let _ = writeln!(
            toml,
            "[server]\nlisten = \"{}\"\nmax_body_bytes = {}\nshutdown_grace = \"5s\"\n",
            self.listen,
            8 * 1024 * 1024
        );
        let _ = writeln!(toml, "[database]\n{}\n", db.config_line());
        let _ = writeln!(
            toml,
            "[dispatch]\nmax_inflight = {}\nconcurrency = {}",
            self.dispatch.max_inflight, self.dispatch.concurrency
        );
        if let Some(batch_size) = self.dispatch.batch_size {
            let _ = writeln!(toml, "batch_size = {batch_size}");
        }
        if let Some(retention) = self.retention {
            let _ = writeln!(toml, "retention = \"{}s\"", retention.as_secs().max(1));
        }
        if let Some((every, max_attempts)) = self.retries {
            let _ = writeln!(
                toml,
                "retry_schedule = [\"{}ms\"]\nmax_attempts = {max_attempts}",
                every.as_millis().max(1)
            );
        }
        let _ = writeln!(toml);
        let cache = self.state_dir.join("plugin-cache");
        let _ = writeln!(
            toml,
            "[plugins]\ncache_dir = {}",
            toml_string(&cache.to_string_lossy())
        );
        if let Some(dir) = &self.plugins_dir {
            let _ = writeln!(toml, "dir = {}", toml_string(&dir.to_string_lossy()));
        }
        let _ = writeln!(toml);
        // The receiver is on loopback, which the SSRF guard refuses unless
        // it is allowed explicitly.
        let _ = writeln!(
            toml,
            "[security]\nadmin_token_env = \"{TOKEN_ENV}\"\nallow_private = [\"127.0.0.1/32\"]\n"
        );
        for repeater in &self.repeaters {
            let _ = writeln!(
                toml,
                "[[repeater]]\ndomain = {}\nname = {}\nurl = {}\nplugin = \"json-forward\"\n",
                toml_string(&repeater.domain),
                toml_string(&repeater.name),
                toml_string(&repeater.url),
            );
        }
        toml
    }
}

/// A TOML basic string.
pub fn toml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for ch in text.chars() {
        match ch {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            ch if ch.is_control() => {
                let _ = write!(quoted, "\\u{:04X}", ch as u32);
            }
            ch => quoted.push(ch),
        }
    }
    quoted.push('"');
    quoted
}

/// A free port on 127.0.0.1 (bound and released; the daemon binds it next).
fn free_loopback_port() -> Result<SocketAddr, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|err| format!("cannot find a free port on 127.0.0.1: {err}"))?;
    listener
        .local_addr()
        .map_err(|err| format!("cannot read the free port: {err}"))
}

/// A running `repeaterd serve`.
pub struct Daemon {
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
    api: Api,
    /// The largest VmHWM seen, in KiB.
    peak_rss_kib: u64,
}

impl Daemon {
    /// Writes `config` to `dir/repeaterd.toml`, starts the daemon with its
    /// output in `dir/repeaterd.log`, and waits up to `limit` for `/readyz`.
    /// Returns the daemon and the time from spawn to ready.
    pub async fn start(
        binary: &Path,
        config: &DaemonConfig,
        db: &ScenarioDb,
        dir: &Path,
        token: &str,
        limit: Duration,
    ) -> Result<(Daemon, Duration), String> {
        let config_path = dir.join("repeaterd.toml");
        std::fs::write(&config_path, config.render(db))
            .map_err(|err| format!("cannot write {}: {err}", config_path.display()))?;
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|err| format!("cannot create {}: {err}", config.state_dir.display()))?;
        let log = dir.join("repeaterd.log");
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|err| format!("cannot open {}: {err}", log.display()))?;
        let err_out = out
            .try_clone()
            .map_err(|err| format!("cannot share {}: {err}", log.display()))?;
        let started = Instant::now();
        let child = Command::new(binary)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env(TOKEN_ENV, token)
            .env(
                "RUST_LOG",
                std::env::var("REPEATERD_BENCH_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err_out)
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", binary.display()))?;
        let pid = child.id();
        // On stderr, so that a profiler can be attached to the daemon.
        eprintln!(
            "bench: started {} (pid {pid}) with {}",
            binary.display(),
            config_path.display()
        );
        let mut daemon = Daemon {
            child: Some(child),
            pid,
            log,
            api: Api::new(config.listen, token),
            peak_rss_kib: 0,
        };
        let api = daemon.api.clone();
        let ready = tokio::select! {
            ready = api.wait_ready(limit) => ready,
            exit = daemon.exited() => Err(format!("daemon exited before ready ({exit})")),
        };
        if let Err(err) = ready {
            return Err(format!("{err}; log tail: {}", daemon.log_tail()));
        }
        let ready_after = started.elapsed();
        daemon.sample_rss();
        Ok((daemon, ready_after))
    }

    /// The daemon's API.
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// Reads the process's peak resident set (VmHWM) and keeps the largest.
    pub fn sample_rss(&mut self) {
        if let Some(peak) = status_kib(self.pid, "VmHWM:") {
            self.peak_rss_kib = self.peak_rss_kib.max(peak);
        }
    }

    /// Starts the kernel's peak resident set (VmHWM) again from the
    /// resident set now, so a later reading covers only what follows.
    pub fn reset_peak_rss(&self) -> Result<(), String> {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5")
            .map_err(|err| format!("cannot reset the daemon's peak RSS: {err}"))
    }

    /// The resident set now (VmRSS) and its peak so far (VmHWM), MiB; 0
    /// where `/proc` cannot tell.
    pub fn memory_mb(&self) -> (f64, f64) {
        let mb = |field| status_kib(self.pid, field).map_or(0.0, |kib| kib as f64 / 1024.0);
        (mb("VmRSS:"), mb("VmHWM:"))
    }

    /// The daemon's CPU time so far (user + system, all threads), when
    /// `/proc` can tell.
    pub fn cpu(&self) -> Option<Duration> {
        crate::cpu::of_process(self.pid)
    }

    /// The peak resident set seen so far, in MiB.
    pub fn peak_rss_mb(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }

    /// Asks the daemon to stop (SIGTERM), waits up to 20 s, then kills it.
    /// Returns the peak RSS in MiB, read just before the stop.
    pub async fn stop(mut self) -> Result<f64, String> {
        self.sample_rss();
        let peak = self.peak_rss_mb();
        let Some(mut child) = self.child.take() else {
            return Ok(peak);
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(peak),
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(err) => return Err(format!("cannot wait for the daemon: {err}")),
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!(
            "daemon (pid {}) did not stop within 20 s of SIGTERM and was killed",
            self.pid
        ))
    }

    /// Resolves when the child exits, with its status.
    async fn exited(&mut self) -> String {
        loop {
            if let Some(child) = self.child.as_mut() {
                match child.try_wait() {
                    Ok(Some(status)) => return status.to_string(),
                    Ok(None) => {}
                    Err(err) => return err.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines of the daemon's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join(" | ")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `kB` field of `/proc/<pid>/status`, such as `VmRSS:`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_escape_quotes_and_backslashes() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(toml_string("x\ny"), "\"x\\u000Ay\"");
    }
}
