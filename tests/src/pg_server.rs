//! A PostgreSQL server of a test's own, for tests that stop, start or
//! restart the database: `initdb` into a temporary directory, a free port on
//! 127.0.0.1, and `pg_ctl` to run it. Stopped and removed when dropped, so
//! it disturbs no other test (the shared server of [`crate::postgres`] is
//! never touched).
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the
//! commands run as the `postgres` user (through `runuser`), and the
//! directory is handed to that user.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::process::Command as AsyncCommand;

use crate::daemon::free_port;
use crate::postgres::PgDatabase;

/// The user the server runs as when the tests run as root.
const SERVER_USER: &str = "postgres";

/// A private PostgreSQL server, running until dropped.
pub struct PgServer {
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    /// Run `pg_ctl` and `initdb` as [`SERVER_USER`] (we are root).
    as_server_user: bool,
}

impl PgServer {
    /// Initialises a cluster in a temporary directory and starts it on a
    /// free port. Panics, naming the command, when `initdb` or `pg_ctl`
    /// fails or is missing.
    pub async fn start() -> PgServer {
        let dir = tempfile::tempdir().expect("a temporary directory for PostgreSQL");
        // SAFETY: geteuid has no preconditions and cannot fail.
        let as_server_user = unsafe { libc::geteuid() } == 0;
        if as_server_user {
            let path = dir.path().display().to_string();
            run(
                AsyncCommand::new("chown").args(["-R", SERVER_USER, &path]),
                None,
            )
            .await;
        }
        let server = PgServer {
            port: free_port(),
            dir,
            as_server_user,
        };
        let data = server.data_dir().display().to_string();
        server
            .run_pg(
                "initdb",
                &[
                    "-D",
                    &data,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ],
            )
            .await;
        server.pg_ctl_start().await;
        server
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A fresh database on this server.
    pub async fn database(&self) -> PgDatabase {
        PgDatabase::create_on(&self.url("postgres")).await
    }

    /// Stops the server, ending every session at once (`-m fast`); returns
    /// once it no longer accepts connections.
    pub async fn stop(&self) {
        let data = self.data_dir().display().to_string();
        self.run_pg("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"])
            .await;
    }

    /// Starts the stopped server again; returns once it accepts
    /// connections.
    pub async fn start_again(&self) {
        self.pg_ctl_start().await;
    }

    /// `pg_ctl restart -m fast`: sessions end, the server comes back; returns
    /// once it accepts connections again.
    pub async fn restart_fast(&self) {
        let data = self.data_dir().display().to_string();
        let log = self.log_path().display().to_string();
        let options = self.server_options();
        self.run_pg(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &options, "-m", "fast", "-w", "restart",
            ],
        )
        .await;
    }

    /// Whether a TCP connection to the server's port succeeds now.
    pub fn accepts_connections(&self) -> bool {
        std::net::TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(200),
        )
        .is_ok()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's own settings: its port, loopback only, its socket in
    /// its own directory; `fsync` off, since the data dies with the test.
    fn server_options(&self) -> String {
        format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.path().display()
        )
    }

    async fn pg_ctl_start(&self) {
        let data = self.data_dir().display().to_string();
        let log = self.log_path().display().to_string();
        let options = self.server_options();
        let started = Instant::now();
        self.run_pg(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "start"],
        )
        .await;
        assert!(
            self.accepts_connections(),
            "PostgreSQL on port {} said it started ({:?}) but refuses connections:\n{}",
            self.port,
            started.elapsed(),
            self.log()
        );
    }

    /// Runs a PostgreSQL program, as the server's user when we are root,
    /// from the server's directory (which that user may enter).
    async fn run_pg(&self, program: &str, args: &[&str]) {
        let mut command = if self.as_server_user {
            let mut command = AsyncCommand::new("runuser");
            command.args(["-u", SERVER_USER, "--", program]);
            command
        } else {
            AsyncCommand::new(program)
        };
        command.args(args).current_dir(self.dir.path());
        run(&mut command, Some(&self.log_path())).await;
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Immediate: the data is thrown away with the directory. A server
        // that is stopped already makes pg_ctl fail, which is fine here.
        let data = self.data_dir().display().to_string();
        let mut command = if self.as_server_user {
            let mut command = Command::new("runuser");
            command.args(["-u", SERVER_USER, "--", "pg_ctl"]);
            command
        } else {
            Command::new("pg_ctl")
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .current_dir(self.dir.path())
            .output();
    }
}

/// Runs a command, panicking with its output (and the server's log, when
/// there is one) if it fails.
async fn run(command: &mut AsyncCommand, log: Option<&Path>) {
    let output = command
        .output()
        .await
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}\nserver log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        log.and_then(|log| std::fs::read_to_string(log).ok())
            .unwrap_or_default()
    );
}
