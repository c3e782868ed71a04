//! The HTTP API (`repeaterd::api`) in process: the real router over real
//! stores, requests sent through it (and once over a real socket).

mod admin_cli;
mod auth;
mod bulk;
mod ingest_props;
mod routes;
mod stores;
mod support;
