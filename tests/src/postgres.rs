//! A PostgreSQL database made for one test and dropped after it.
//!
//! The server is the one `REPEATERD_TEST_PG_URL` names (default
//! [`DEFAULT_URL`]). A test that needs PostgreSQL fails, naming the URL,
//! when the server cannot be reached: it is never skipped.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Connection;

/// The environment variable naming the test server (and a database on it).
pub const URL_ENV: &str = "REPEATERD_TEST_PG_URL";

/// The test server when [`URL_ENV`] is unset.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Prefix of every database this helper creates, so leftovers are easy to
/// recognise.
const NAME_PREFIX: &str = "repeaterd_test";

/// A fresh, empty database on the test server; dropping it drops the
/// database, disconnecting whoever is still connected. The fields are for
/// reading.
#[derive(Debug)]
pub struct PgDatabase {
    /// The URL of the test database.
    pub url: String,
    /// The database's name.
    pub name: String,
    /// The URL of the server's maintenance database, from which test
    /// databases are created and dropped.
    pub admin_url: String,
}

impl PgDatabase {
    /// Creates a uniquely named database. Panics, naming the URL and how to
    /// change it, when the server cannot be reached.
    pub async fn create() -> PgDatabase {
        let url = std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_URL.to_owned());
        PgDatabase::create_on(&url).await
    }

    /// Creates a uniquely named database on the server of `url` (a test's
    /// own [`PgServer`](crate::PgServer), say).
    pub async fn create_on(url: &str) -> PgDatabase {
        static CREATED: AtomicU64 = AtomicU64::new(0);
        // Created and dropped from the maintenance database, which always
        // exists, so the database the URL names may be absent.
        let admin_url = with_database(url, "postgres");
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "PostgreSQL at {admin_url} cannot be reached ({err}). Start it, or set \
                     {URL_ENV} to a server where the user may create databases, e.g. \
                     {URL_ENV}={DEFAULT_URL}"
                )
            });
        let name = format!(
            "{NAME_PREFIX}_{}_{}_{:08x}",
            std::process::id(),
            CREATED.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|err| panic!("creating database {name} at {admin_url}: {err}"));
        let _ = admin.close().await;
        PgDatabase {
            url: with_database(url, &name),
            name,
            admin_url,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run on a runtime's thread, where blocking on another
        // future is refused: drop the database from a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| err.to_string())?;
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .map_err(|err| err.to_string())?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .map_err(|err| err.to_string())?;
                let _ = admin.close().await;
                Ok::<(), String>(())
            })
        })
        .join();
        // Panicking in drop would abort a test that is already unwinding.
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("test database {} was not dropped: {err}", self.name),
            Err(_) => eprintln!("test database {} was not dropped: panic", self.name),
        }
    }
}

/// `url` with its database replaced by `database`, query string kept.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let server = match base.rsplit_once('/') {
        // `postgres://host:port/db`: the slash after the authority.
        Some((server, _)) if server.contains("://") && !server.ends_with('/') => server,
        _ => base.trim_end_matches('/'),
    };
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_of_a_url_is_replaced_and_its_options_kept() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "other"),
            "postgres://postgres@127.0.0.1:5432/other"
        );
        assert_eq!(
            with_database("postgres://u:p@db:5432/test?sslmode=disable", "x"),
            "postgres://u:p@db:5432/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
    }
}
