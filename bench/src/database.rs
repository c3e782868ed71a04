//! The database behind one scenario: a fresh SQLite file in the scenario's
//! directory, or a fresh PostgreSQL database created (and dropped again)
//! with `psql` on the loopback server given by `--pg-url`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::ValueEnum;

use crate::daemon::toml_string;

/// Which store the daemon runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The embedded default.
    Sqlite,
    /// A PostgreSQL server on loopback.
    Postgres,
}

impl Backend {
    /// The name printed in the JSON lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A scenario's own database; a PostgreSQL one is dropped with the value.
pub struct ScenarioDb {
    target: Target,
}

enum Target {
    Sqlite(PathBuf),
    Postgres {
        /// URL of the scenario's database.
        url: String,
        /// URL of the maintenance database used to create and drop it.
        admin_url: String,
        name: String,
    },
}

impl ScenarioDb {
    /// Makes a fresh database for one scenario run. `label` must be unique
    /// within the harness run (it names the PostgreSQL database).
    pub fn create(
        backend: Backend,
        dir: &Path,
        pg_url: &str,
        label: &str,
    ) -> Result<ScenarioDb, String> {
        match backend {
            Backend::Sqlite => Ok(ScenarioDb {
                target: Target::Sqlite(dir.join("repeaterd.db")),
            }),
            Backend::Postgres => {
                let server = PgServer::parse(pg_url)?;
                let name =
                    format!("repeaterd_bench_{}_{label}", std::process::id()).replace('-', "_");
                let admin_url = server.url_for("postgres");
                psql(
                    &admin_url,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                )?;
                psql(&admin_url, &format!("CREATE DATABASE {name}"))?;
                Ok(ScenarioDb {
                    target: Target::Postgres {
                        url: server.url_for(&name),
                        admin_url,
                        name,
                    },
                })
            }
        }
    }

    /// The `[database]` line of the daemon's config.
    pub fn config_line(&self) -> String {
        match &self.target {
            Target::Sqlite(path) => {
                format!("sqlite_path = {}", toml_string(&path.to_string_lossy()))
            }
            Target::Postgres { url, .. } => format!("url = {}", toml_string(url)),
        }
    }

    /// The SQLite file, when the scenario runs on SQLite.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.target {
            Target::Sqlite(path) => Some(path),
            Target::Postgres { .. } => None,
        }
    }

    /// The PostgreSQL URL, when the scenario runs on PostgreSQL.
    pub fn postgres_url(&self) -> Option<&str> {
        match &self.target {
            Target::Sqlite(_) => None,
            Target::Postgres { url, .. } => Some(url),
        }
    }
}

impl Drop for ScenarioDb {
    fn drop(&mut self) {
        if let Target::Postgres {
            admin_url, name, ..
        } = &self.target
        {
            let _ = psql(
                admin_url,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
        }
    }
}

/// A PostgreSQL server URL split so that the database name can be swapped.
#[derive(Debug, PartialEq, Eq)]
struct PgServer {
    /// `postgres://user@host:port`
    prefix: String,
    /// `?sslmode=...` or empty.
    query: String,
}

impl PgServer {
    /// Parses `postgres://[user[:password]@]host[:port][/db][?params]` and
    /// refuses any host but loopback: the harness talks to nothing else.
    fn parse(url: &str) -> Result<PgServer, String> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| format!("--pg-url {url:?} must start with postgres://"))?;
        let (rest, query) = match rest.find('?') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let host_port = authority.rsplit('@').next().unwrap_or_default();
        let host = if let Some(bracketed) = host_port.strip_prefix('[') {
            bracketed.split(']').next().unwrap_or_default()
        } else {
            host_port.split(':').next().unwrap_or_default()
        };
        if !matches!(host, "127.0.0.1" | "::1" | "localhost") {
            return Err(format!(
                "--pg-url host {host:?} is not loopback: the harness only talks to 127.0.0.1 or ::1"
            ));
        }
        Ok(PgServer {
            prefix: format!("postgres://{authority}"),
            query: query.to_owned(),
        })
    }

    fn url_for(&self, database: &str) -> String {
        format!("{}/{database}{}", self.prefix, self.query)
    }
}

/// The first column of the first row of `sql`, as text, from `psql`.
pub fn psql_value(url: &str, sql: &str) -> Result<String, String> {
    let output = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run psql for {sql:?}: {err}"))?;
    if output.status.success() {
        let text = String::from_utf8_lossy(&output.stdout);
        Ok(text.lines().next().unwrap_or_default().trim().to_owned())
    } else {
        Err(format!(
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Runs one SQL statement with `psql`.
fn psql(url: &str, sql: &str) -> Result<(), String> {
    let output = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run psql for {sql:?}: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_urls_keep_user_port_and_params_and_swap_the_database() {
        let server =
            PgServer::parse("postgres://postgres@127.0.0.1:5432/test?sslmode=disable").unwrap();
        assert_eq!(
            server.url_for("x"),
            "postgres://postgres@127.0.0.1:5432/x?sslmode=disable"
        );
        let server = PgServer::parse("postgresql://u:p@[::1]:5433").unwrap();
        assert_eq!(server.url_for("y"), "postgres://u:p@[::1]:5433/y");
    }

    #[test]
    fn pg_urls_off_loopback_are_refused() {
        for url in [
            "postgres://postgres@10.0.0.5:5432/test",
            "postgres://db.example.com/test",
            "mysql://127.0.0.1/test",
        ] {
            assert!(PgServer::parse(url).is_err(), "{url}");
        }
    }
}
