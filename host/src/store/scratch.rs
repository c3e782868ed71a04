//! Databases for the store's own unit tests: a migrated SQLite file in a
//! temporary directory, and the store's schema inside one transaction on
//! the test PostgreSQL server (`REPEATERD_TEST_PG_URL`), in a schema of its
//! own, so nothing outlives the test: the transaction is never committed.

use sqlx::{Connection, PgConnection, SqliteConnection};

use super::sql::SqlDatabase;

/// The test server, as the conformance suite finds it.
pub(crate) fn pg_url() -> String {
    std::env::var("REPEATERD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A connection to the test server inside an open transaction whose
/// search path is a fresh schema holding the store's tables.
pub(crate) async fn postgres() -> PgConnection {
    let url = pg_url();
    let mut db = PgConnection::connect(&url)
        .await
        .unwrap_or_else(|error| panic!("PostgreSQL at {url} is unreachable: {error}"));
    let schema = format!("scratch_{:016x}", rand::random::<u64>());
    sqlx::raw_sql(&format!(
        "BEGIN; CREATE SCHEMA {schema}; SET LOCAL search_path = {schema};"
    ))
    .execute(&mut db)
    .await
    .expect("scratch schema");
    for migration in <sqlx::Postgres as SqlDatabase>::MIGRATIONS.iter() {
        sqlx::raw_sql(&migration.sql)
            .execute(&mut db)
            .await
            .expect("migration");
    }
    db
}

/// A migrated SQLite file in `dir`, and a connection to it.
pub(crate) async fn sqlite(dir: &tempfile::TempDir) -> SqliteConnection {
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("scratch.db").display()
    );
    let mut db = SqliteConnection::connect(&url).await.expect("SQLite file");
    <sqlx::Sqlite as SqlDatabase>::MIGRATIONS
        .run(&mut db)
        .await
        .expect("migration");
    db
}
