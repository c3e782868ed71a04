//! What every test of the workspace shares: the real `repeaterd` binary
//! (built once per test process) and the daemon process wrapper that runs
//! it, the one config builder for it, a real HTTP receiver, the PostgreSQL
//! test-database helper, a private PostgreSQL server for tests that restart
//! it, and the macro that runs a test on both stores.
//!
//! This library never links the `repeaterd` library: it drives the daemon
//! over HTTP, signals and SQL, so `repeaterd`'s own integration tests can
//! use it too (as a dev-dependency, without a cycle).

pub mod backend;
pub mod binary;
pub mod config;
pub mod daemon;
pub mod pg_server;
pub mod postgres;
pub mod receiver;

pub use backend::Backend;
pub use config::{DaemonConfig, RepeaterConfig, domain_token, domain_token_env};
pub use daemon::{
    ADMIN_TOKEN, ADMIN_TOKEN_ENV, Daemon, SmallDisk, TestDir, batch_record_ids, eventually,
    free_port, ingest_until_accepted, ingested_ids, list_records, record_attempts, record_id,
    record_state, seed_from_env,
};
pub use pg_server::PgServer;
pub use postgres::PgDatabase;
pub use receiver::{Capacity, Received, Receiver, Reply, ResettingEndpoint, Script, Served};
