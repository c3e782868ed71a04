//! What went wrong in the store, and what a caller can do about it: every
//! [`StoreError`] has an [`ErrorKind`], read from the variant or, for a
//! driver's error, from its SQLSTATE or SQLite result code. The driver's
//! error stays the [`source`](std::error::Error::source), so a log shows it
//! whole while callers decide by kind.

use std::io;

use rusqlite::ffi;
use sqlx::error::DatabaseError;

/// What kind of failure a [`StoreError`] is, for callers to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The named thing does not exist.
    NotFound,
    /// The request clashes with what is stored (a uniqueness constraint, a
    /// record already terminal, a repeater deleted meanwhile).
    Conflict,
    /// The input cannot be stored as given; trying again will not help.
    InvalidInput,
    /// The lease a write was fenced by is no longer held.
    LeaseLost,
    /// The database cannot answer now: connection refused or lost, pool
    /// timed out, server shutting down or starting, SQLite busy or locked
    /// beyond its timeout. Trying again later may succeed.
    Unavailable,
    /// The database has no room left to write.
    StorageFull,
    /// Anything else: a corrupt stored value, a failed migration, a bug.
    Internal,
}

/// Errors from the store. Callers decide by [`StoreError::kind`]; the
/// variants carry what the message needs.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database said no (connection, query, constraint).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A statement on one of the SQLite store's own connections failed
    /// (group commit or lane read: constraint, lock, I/O).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Another process has the SQLite file open as its store.
    #[error("{path} is in use by another repeaterd process (it holds the lock on {lock})")]
    InUse {
        /// The database file.
        path: String,
        /// The lock file beside it.
        lock: String,
    },
    /// The lock file beside a SQLite database could not be opened or locked.
    #[error("cannot lock {lock}: {source}")]
    LockFile {
        /// The lock file.
        lock: String,
        /// What the file system said.
        source: io::Error,
    },
    /// A task the store needs to write has stopped (the store is closing).
    #[error("the store's {0} has stopped")]
    Stopped(&'static str),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The input cannot be stored (an unknown domain, an overlong key, a
    /// database URL the store cannot use).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The request clashes with the stored state (cancelling a record that
    /// is already terminal, resending one whose repeater was deleted).
    #[error("{0}")]
    Conflict(String),
    /// The lease this write was fenced by is no longer held.
    #[error("lease on repeater {repeater_id} (epoch {epoch}) is no longer held")]
    LeaseLost {
        /// The repeater whose lane was lost.
        repeater_id: i64,
        /// The epoch the writer held.
        epoch: i64,
    },
    /// A stored value could not be decoded.
    #[error("corrupt stored value in {what}: {detail}")]
    Corrupt {
        /// Which column or row.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// Short alias for store results.
pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Database(error) => sqlx_kind(error),
            StoreError::Sqlite(error) => rusqlite_kind(error),
            StoreError::InUse { .. } | StoreError::Stopped(_) => ErrorKind::Unavailable,
            StoreError::Migrate(error) => migrate_kind(error),
            StoreError::NotFound(_) => ErrorKind::NotFound,
            StoreError::Invalid(_) => ErrorKind::InvalidInput,
            StoreError::Conflict(_) => ErrorKind::Conflict,
            StoreError::LeaseLost { .. } => ErrorKind::LeaseLost,
            StoreError::LockFile { .. } | StoreError::Corrupt { .. } => ErrorKind::Internal,
        }
    }
}

/// The kind of an error of the async driver, on either database.
fn sqlx_kind(error: &sqlx::Error) -> ErrorKind {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ErrorKind::Unavailable,
        sqlx::Error::RowNotFound => ErrorKind::NotFound,
        sqlx::Error::Database(error) => {
            if let Some(error) = error.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                sqlstate_kind(error.code())
            } else if let Some(error) = error.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                // sqlx reports SQLite's extended result code, in decimal.
                (error.code())
                    .and_then(|code| code.parse().ok())
                    .map_or(ErrorKind::Internal, sqlite_kind)
            } else {
                ErrorKind::Internal
            }
        }
        _ => ErrorKind::Internal,
    }
}

/// The kind of an error on the SQLite store's own connections.
fn rusqlite_kind(error: &rusqlite::Error) -> ErrorKind {
    match error {
        rusqlite::Error::SqliteFailure(failure, _) => sqlite_kind(failure.extended_code),
        _ => ErrorKind::Internal,
    }
}

/// A migration fails as its statement did when the database could not
/// answer or had no room; any other failure is the migration's own.
fn migrate_kind(error: &sqlx::migrate::MigrateError) -> ErrorKind {
    use sqlx::migrate::MigrateError;
    match error {
        MigrateError::Execute(error) | MigrateError::ExecuteMigration(error, _) => {
            match sqlx_kind(error) {
                kind @ (ErrorKind::Unavailable | ErrorKind::StorageFull) => kind,
                _ => ErrorKind::Internal,
            }
        }
        _ => ErrorKind::Internal,
    }
}

/// The kind of a PostgreSQL error, by its SQLSTATE.
fn sqlstate_kind(code: &str) -> ErrorKind {
    match code {
        // unique_violation, foreign_key_violation, exclusion_violation
        "23505" | "23503" | "23P01" => ErrorKind::Conflict,
        // disk_full
        "53100" => ErrorKind::StorageFull,
        // serialization_failure, deadlock_detected, lock_not_available,
        // query_canceled (statement timeout), admin_shutdown,
        // crash_shutdown, cannot_connect_now (starting up)
        "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" => {
            ErrorKind::Unavailable
        }
        // connection exceptions; insufficient resources (memory, connections)
        _ if code.starts_with("08") || code.starts_with("53") => ErrorKind::Unavailable,
        // integrity constraints (not null, check) and data exceptions
        _ if code.starts_with("23") || code.starts_with("22") => ErrorKind::InvalidInput,
        _ => ErrorKind::Internal,
    }
}

/// The kind of a SQLite error, by its extended result code.
fn sqlite_kind(extended: i32) -> ErrorKind {
    match extended {
        ffi::SQLITE_CONSTRAINT_UNIQUE
        | ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        | ffi::SQLITE_CONSTRAINT_FOREIGNKEY => return ErrorKind::Conflict,
        _ => {}
    }
    match extended & 0xff {
        ffi::SQLITE_BUSY | ffi::SQLITE_LOCKED | ffi::SQLITE_CANTOPEN => ErrorKind::Unavailable,
        ffi::SQLITE_FULL => ErrorKind::StorageFull,
        ffi::SQLITE_CONSTRAINT | ffi::SQLITE_MISMATCH | ffi::SQLITE_TOOBIG => {
            ErrorKind::InvalidInput
        }
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    //! Each kind is read from real driver errors: a PostgreSQL server that
    //! refuses, ends a session or raises a code, and SQLite files that are
    //! locked, full or constrained.

    use std::error::Error as _;
    use std::time::Duration;

    use sqlx::postgres::PgPoolOptions;
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{ConnectOptions, Connection};

    use super::*;
    use crate::store::scratch;

    /// A port on the loopback that nothing listens on.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_refused_postgresql_connection_is_unavailable() {
        // One attempt: a pool would try again until its timeout.
        let url = format!("postgres://postgres@127.0.0.1:{}/test", closed_port());
        let Err(error) = sqlx::PgConnection::connect(&url).await else {
            panic!("connected to a closed port");
        };
        let error = StoreError::from(error);
        assert_eq!(error.kind(), ErrorKind::Unavailable, "{error:?}");
        let source = error.source().expect("the driver's error");
        assert!(source.downcast_ref::<sqlx::Error>().is_some(), "{source:?}");
    }

    #[tokio::test]
    async fn a_session_the_server_ends_is_unavailable() {
        let mut db = sqlx::PgConnection::connect(&scratch::pg_url())
            .await
            .unwrap();
        let error = sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
            .execute(&mut db)
            .await
            .expect_err("the server ends its own session");
        let error = StoreError::from(error);
        assert_eq!(error.kind(), ErrorKind::Unavailable, "{error:?}");
    }

    #[tokio::test]
    async fn a_pool_that_times_out_is_unavailable() {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_millis(100))
            .connect(&scratch::pg_url())
            .await
            .unwrap();
        let _held = pool.acquire().await.unwrap();
        let error = StoreError::from(pool.acquire().await.expect_err("no connection free"));
        assert!(matches!(
            error,
            StoreError::Database(sqlx::Error::PoolTimedOut)
        ));
        assert_eq!(error.kind(), ErrorKind::Unavailable);
    }

    #[tokio::test]
    async fn postgresql_disk_full_is_storage_full() {
        let mut db = scratch::postgres().await;
        let error = sqlx::raw_sql(
            "DO $$ BEGIN RAISE EXCEPTION 'no room' USING ERRCODE = 'disk_full'; END $$",
        )
        .execute(&mut db)
        .await
        .expect_err("raised");
        assert_eq!(StoreError::from(error).kind(), ErrorKind::StorageFull);
    }

    /// A repeater row with `spec` (NULL when `None`), as SQL.
    fn repeater_insert(spec: Option<&str>) -> String {
        let spec = spec.map_or("NULL".to_owned(), |spec| format!("'{spec}'"));
        format!(
            "INSERT INTO repeaters (domain, name, spec, created_at, updated_at) \
             VALUES ('acme', 'a', {spec}, 0, 0)"
        )
    }

    /// The kind of the error `sql` fails with on `db`; `None` when it runs.
    async fn fails_as<'c>(db: impl sqlx::Executor<'c>, sql: &str) -> Option<ErrorKind> {
        let result = db.execute(sql).await;
        result.err().map(|error| StoreError::from(error).kind())
    }

    #[tokio::test]
    async fn constraint_violations_are_conflicts_or_invalid_input_on_postgresql() {
        let (repeater, no_spec) = (repeater_insert(Some("{}")), repeater_insert(None));
        let mut db = scratch::postgres().await;
        assert_eq!(fails_as(&mut db, &repeater).await, None);
        let unique = fails_as(&mut db, &repeater).await;
        assert_eq!(unique, Some(ErrorKind::Conflict));
        // The failed statement ended the transaction's use: a fresh one.
        let mut db = scratch::postgres().await;
        let not_null = fails_as(&mut db, &no_spec).await;
        assert_eq!(not_null, Some(ErrorKind::InvalidInput));
    }

    #[tokio::test]
    async fn constraint_violations_are_conflicts_or_invalid_input_on_sqlite() {
        let (repeater, no_spec) = (repeater_insert(Some("{}")), repeater_insert(None));
        let dir = tempfile::tempdir().unwrap();
        let mut db = scratch::sqlite(&dir).await;
        assert_eq!(fails_as(&mut db, &repeater).await, None);
        let unique = fails_as(&mut db, &repeater).await;
        assert_eq!(unique, Some(ErrorKind::Conflict));
        let not_null = fails_as(&mut db, &no_spec).await;
        assert_eq!(not_null, Some(ErrorKind::InvalidInput));
        // The same file through the store's own connections' driver.
        let own = rusqlite::Connection::open(dir.path().join("scratch.db")).unwrap();
        let unique = own
            .execute(&repeater, [])
            .expect_err("unique (domain, name)");
        assert_eq!(StoreError::from(unique).kind(), ErrorKind::Conflict);
    }

    #[tokio::test]
    async fn a_sqlite_file_locked_beyond_the_timeout_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let mut holder = scratch::sqlite(&dir).await;
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut holder)
            .await
            .unwrap();
        let path = dir.path().join("scratch.db");
        let mut waiter = SqliteConnectOptions::new()
            .filename(&path)
            .busy_timeout(Duration::from_millis(20))
            .connect()
            .await
            .unwrap();
        let busy = sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut waiter)
            .await
            .expect_err("the write lock is held");
        assert_eq!(StoreError::from(busy).kind(), ErrorKind::Unavailable);
        let own = rusqlite::Connection::open(&path).unwrap();
        own.busy_timeout(Duration::from_millis(20)).unwrap();
        let busy = own
            .execute_batch("BEGIN IMMEDIATE")
            .expect_err("the write lock is held");
        assert_eq!(StoreError::from(busy).kind(), ErrorKind::Unavailable);
    }

    #[tokio::test]
    async fn a_full_sqlite_file_is_storage_full() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.db");
        let own = rusqlite::Connection::open(&path).unwrap();
        own.execute_batch("CREATE TABLE filler (bytes BLOB); PRAGMA max_page_count = 16;")
            .unwrap();
        let full = (0..64)
            .find_map(|_| {
                own.execute("INSERT INTO filler VALUES (zeroblob(4096))", [])
                    .err()
            })
            .expect("16 pages fill up");
        assert_eq!(StoreError::from(full).kind(), ErrorKind::StorageFull);
        drop(own);
        // The page limit is a setting of the connection: the async driver's
        // own connection sets it again.
        let mut db = SqliteConnectOptions::new()
            .filename(&path)
            .pragma("max_page_count", "16")
            .connect()
            .await
            .unwrap();
        let full = sqlx::query("INSERT INTO filler VALUES (zeroblob(65536))")
            .execute(&mut db)
            .await
            .expect_err("no room");
        assert_eq!(StoreError::from(full).kind(), ErrorKind::StorageFull);
    }

    #[test]
    fn the_store_s_own_refusals_have_their_kinds() {
        let cases = [
            (
                StoreError::NotFound("repeater acme/a".into()),
                ErrorKind::NotFound,
            ),
            (
                StoreError::Invalid("domain".into()),
                ErrorKind::InvalidInput,
            ),
            (StoreError::Conflict("terminal".into()), ErrorKind::Conflict),
            (
                StoreError::LeaseLost {
                    repeater_id: 1,
                    epoch: 2,
                },
                ErrorKind::LeaseLost,
            ),
            (
                StoreError::Corrupt {
                    what: "records.state",
                    detail: "unknown state 9".into(),
                },
                ErrorKind::Internal,
            ),
            (
                StoreError::Stopped("group-commit writer"),
                ErrorKind::Unavailable,
            ),
        ];
        for (error, kind) in cases {
            assert_eq!(error.kind(), kind, "{error}");
        }
    }
}
