//! Measures what hostile plugins cost healthy repeaters: the real daemon
//! delivers the same healthy load twice, once alone and once beside
//! repeaters whose `hostile` plugin spins, exhausts memory, traps and
//! builds an oversized body; prints one JSON line
//! `{"scenario":"hostile_load","healthy_per_s_without":..,"healthy_per_s_with":..,"ratio":..}`.
//!
//! Run: `cargo bench -p repeaterd --bench hostile_load` (release build).
//! `HOSTILE_LOAD_EVENTS` sets the healthy events (default 20,000; two
//! repeaters each, so twice as many records: a run of several seconds, so
//! the figure is the steady state rather than the first backoff window of
//! each hostile repeater, which costs a fixed ~0.5 s of CPU); `HOSTILE_LOAD_MODES` picks
//! the hostile modes (comma-separated; default all four).

use std::time::{Duration, Instant};

use serde_json::json;

use repeaterd_tests::{Backend, Daemon, DaemonConfig, Receiver, RepeaterConfig, TestDir};

/// The `hostile` test plugin, staged in `OUT_DIR` by `build.rs`.
const HOSTILE_PLUGIN: &str = concat!(env!("OUT_DIR"), "/hostile.wasm");

const HOSTILE_MODES: [&str; 4] = ["loop", "memory-bomb", "trap", "oversized-body"];

/// The hostile modes of this run: `HOSTILE_LOAD_MODES` (comma-separated)
/// or all of them.
fn hostile_modes() -> Vec<String> {
    match std::env::var("HOSTILE_LOAD_MODES") {
        Ok(list) => list.split(',').map(|m| m.trim().to_owned()).collect(),
        Err(_) => HOSTILE_MODES.iter().map(|m| (*m).to_owned()).collect(),
    }
}
const HOSTILE_EVENTS: usize = 50;

/// Delivers `events` healthy events (two repeaters each) and returns records
/// per second from the first ingest to the last first arrival.
async fn healthy_rate(events: usize, with_hostile: bool) -> f64 {
    let receiver = Receiver::start().await;
    let dir = TestDir::new();
    let mut config = DaemonConfig {
        max_inflight: 64,
        plugin_memory_mb: 96,
        lease_ttl: "10s".to_owned(),
        retry_schedule: vec!["300ms".to_owned()],
        max_attempts: 1_000,
        // The daemon's default backoff: a repeater whose plugin keeps
        // hitting its CPU or memory limit backs off like a dead endpoint
        // (ADR 4). Records still retry every 300 ms, so traps keep coming.
        backoff_min: "30s".to_owned(),
        backoff_max: "1h".to_owned(),
        ..DaemonConfig::default()
    };
    for name in ["one", "two"] {
        config.repeaters.push(RepeaterConfig::json_forward(
            "healthy",
            name,
            &format!("{}/healthy/{name}", receiver.url()),
        ));
    }
    if with_hostile {
        std::fs::copy(HOSTILE_PLUGIN, dir.path().join("plugins/hostile.wasm"))
            .expect("copy the hostile plugin");
        for mode in hostile_modes() {
            config.repeaters.push(
                RepeaterConfig::with_plugin(
                    "hostile",
                    &mode,
                    &format!("{}/hostile/{mode}", receiver.url()),
                    "hostile",
                    &format!("{{ mode = {mode:?} }}"),
                )
                .extra("concurrency = 2"),
            );
        }
    }
    let mut daemon = Daemon::start(&dir, &config, &Backend::Sqlite).await;
    if with_hostile {
        let hostile = (0..HOSTILE_EVENTS)
            .map(|i| json!({"type": "hostile", "payload": {"n": i}}))
            .collect();
        daemon.ingest_many("hostile", hostile).await;
    }
    let started = Instant::now();
    let healthy = (0..events)
        .map(|i| json!({"type": "healthy", "payload": {"n": i}}))
        .collect();
    daemon.ingest_many("healthy", healthy).await;
    let records = 2 * events;
    let deadline = Instant::now() + Duration::from_secs(600);
    while receiver.distinct_records() < records {
        assert!(
            Instant::now() < deadline,
            "healthy records did not all arrive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    daemon.stop().await;
    records as f64 / seconds
}

fn main() {
    let events = std::env::var("HOSTILE_LOAD_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let without = healthy_rate(events, false).await;
        let with = healthy_rate(events, true).await;
        let line = json!({
            "scenario": "hostile_load",
            "events": events,
            "modes": hostile_modes(),
            "healthy_per_s_without": (without * 10.0).round() / 10.0,
            "healthy_per_s_with": (with * 10.0).round() / 10.0,
            "ratio": ((with / without) * 1000.0).round() / 1000.0,
        });
        println!("{line}");
    });
}
