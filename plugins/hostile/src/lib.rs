//! `hostile`: a test fixture that misbehaves on purpose, so the host's
//! sandbox limits can be shown to hold. It is never embedded in the daemon.
//!
//! Config: `{"mode": M}` where M chooses what `build` does:
//!
//! | mode | behaviour of `build` |
//! | --- | --- |
//! | `loop` | spins forever (the CPU deadline must stop it) |
//! | `memory-bomb` | grows its memory without bound (the memory cap must stop it) |
//! | `trap` | panics, which aborts the instance with a trap |
//! | `oversized-body` | returns a 64 MiB body (above any sane body cap) |
//! | `oversized-headers` | returns 10 000 headers of 100 bytes each |
//! | `ok` | logs one info line and forwards the payload, like a trivial plugin |
//!
//! `validate-config` accepts exactly these modes (the mode is required);
//! `classify` uses the default rules in every mode.

use std::hint::black_box;

use repeater_plugin_sdk::{BuildOutcome, Event, Method, Plugin, Request};
use serde::Deserialize;

/// Size of the body `oversized-body` returns.
pub const OVERSIZED_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Number of headers `oversized-headers` returns.
pub const OVERSIZED_HEADER_COUNT: usize = 10_000;

/// How `build` misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Spin forever.
    Loop,
    /// Allocate until memory runs out.
    MemoryBomb,
    /// Trap.
    Trap,
    /// Return a 64 MiB body.
    OversizedBody,
    /// Return thousands of headers.
    OversizedHeaders,
    /// Behave.
    Ok,
}

/// The plugin config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What to do in `build`.
    pub mode: Mode,
}

/// The `hostile` plugin.
pub struct Hostile;

impl Plugin for Hostile {
    type Config = Config;

    fn build(event: &Event, config: &Config) -> BuildOutcome {
        match config.mode {
            Mode::Loop => spin_forever(),
            Mode::MemoryBomb => exhaust_memory(),
            Mode::Trap => panic!("hostile plugin: trapping on purpose"),
            Mode::OversizedBody => BuildOutcome::Send(
                Request::new(Method::Post)
                    .with_header("content-type", "application/octet-stream")
                    .with_body(vec![b'x'; OVERSIZED_BODY_BYTES]),
            ),
            Mode::OversizedHeaders => {
                let value = "v".repeat(90);
                let headers = (0..OVERSIZED_HEADER_COUNT)
                    .fold(Request::new(Method::Post), |request, index| {
                        request.with_header(&format!("x-hostile-{index:05}"), &value)
                    });
                BuildOutcome::Send(headers)
            }
            Mode::Ok => {
                // Exercises the host's `log` import.
                repeater_plugin_sdk::info!("hostile plugin in ok mode: forwarding {}", event.id);
                BuildOutcome::Send(
                    Request::new(Method::Post)
                        .with_header("content-type", &event.content_type)
                        .with_body(event.payload.clone()),
                )
            }
        }
    }
}

/// Never returns and never calls out: only an external deadline stops it.
fn spin_forever() -> ! {
    let mut counter: u64 = 0;
    loop {
        // black_box keeps the optimiser from proving the loop empty.
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Keeps allocating (and touching) 1 MiB blocks until the allocator fails,
/// which aborts the instance; a memory cap should end it sooner.
fn exhaust_memory() -> ! {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        blocks.push(vec![1u8; 1024 * 1024]);
        black_box(&blocks);
    }
}

repeater_plugin_sdk::export_plugin!(Hostile);

#[cfg(test)]
mod tests {
    use repeater_plugin_sdk::testing::{self, event, expect_send};

    use super::*;

    #[test]
    fn every_mode_is_accepted_by_validate_config() {
        for mode in [
            "loop",
            "memory-bomb",
            "trap",
            "oversized-body",
            "oversized-headers",
            "ok",
        ] {
            let config = format!(r#"{{"mode": "{mode}"}}"#);
            assert_eq!(
                testing::validate_config::<Hostile>(&config),
                Ok(()),
                "mode {mode}"
            );
        }
    }

    #[test]
    fn unknown_or_missing_modes_are_refused() {
        let err = testing::validate_config::<Hostile>(r#"{"mode": "nice"}"#).unwrap_err();
        assert!(err.contains("nice"), "{err}");
        let err = testing::validate_config::<Hostile>("{}").unwrap_err();
        assert!(err.contains("mode"), "{err}");
    }

    #[test]
    fn ok_mode_forwards_the_payload() {
        let request = expect_send(testing::build::<Hostile>(
            &event().payload("hi").content_type("text/plain").build(),
            r#"{"mode": "ok"}"#,
        ));
        assert_eq!(request.body, b"hi");
        assert_eq!(request.header("content-type"), Some("text/plain"));
    }

    #[test]
    fn oversized_body_mode_returns_64_mib() {
        let request = expect_send(testing::build::<Hostile>(
            &event().build(),
            r#"{"mode": "oversized-body"}"#,
        ));
        assert_eq!(request.body.len(), OVERSIZED_BODY_BYTES);
    }

    #[test]
    fn oversized_headers_mode_returns_thousands_of_headers() {
        let request = expect_send(testing::build::<Hostile>(
            &event().build(),
            r#"{"mode": "oversized-headers"}"#,
        ));
        assert_eq!(request.headers.len(), OVERSIZED_HEADER_COUNT);
        let total: usize = request
            .headers
            .iter()
            .map(|h| h.name.len() + h.value.len())
            .sum();
        assert!(total > 1024 * 1024, "headers total {total} bytes");
    }

    #[test]
    fn trap_mode_panics() {
        let outcome = std::panic::catch_unwind(|| {
            testing::build::<Hostile>(&event().build(), r#"{"mode": "trap"}"#)
        });
        assert!(outcome.is_err(), "trap mode returned {outcome:?}");
    }
}
