//! Receivers that misbehave on purpose, each behind a repeater of its own
//! with a 1 s timeout, beside healthy repeaters under load:
//!
//! | receiver    | does                                                        |
//! |-------------|-------------------------------------------------------------|
//! | `drip-head` | sends its status line one byte a second                     |
//! | `drip-body` | sends a head, then its body one byte a second               |
//! | `endless`   | answers 503 with a chunked body that never ends             |
//! | `huge`      | answers 503 with a 1 GiB body, as fast as it is read        |
//! | `silent`    | accepts the connection and never answers                    |
//! | `tls-stall` | accepts the TLS connection and never answers the handshake  |
//!
//! The slow ones must end each attempt by the timeout with a `timeout`
//! error; the floods must end with their status and an excerpt within the
//! repeater's cap, long before the timeout; the daemon's peak memory stays
//! bounded; every healthy record is delivered. The healthy repeaters'
//! delivery time is printed; its comparison with a run without the
//! hostile receivers is a measurement, not a test.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use repeaterd_tests::{
    Backend, Daemon, DaemonConfig, Receiver, RepeaterConfig, TestDir, eventually, list_records,
    record_attempts,
};

const HEALTHY_EVENTS: usize = 1_000;
const HOSTILE_EVENTS: usize = 4;
/// The hostile repeaters' excerpt cap, bytes.
const EXCERPT_BYTES: usize = 4_096;
/// The hostile repeaters' timeout, ms.
const TIMEOUT_MS: u64 = 1_000;
/// Bound on the daemon's peak RSS: a daemon delivering 2,000 healthy
/// records stays near 100 MiB; the floods may cost it their excerpts and a
/// bounded drain each, never their bodies (1 GiB, or no end at all).
const PEAK_RSS_LIMIT_MIB: u64 = 256;

/// How a hostile receiver misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misbehaviour {
    DripHead,
    DripBody,
    Endless,
    Huge,
    Silent,
    TlsStall,
}

impl Misbehaviour {
    const ALL: [Misbehaviour; 6] = [
        Misbehaviour::DripHead,
        Misbehaviour::DripBody,
        Misbehaviour::Endless,
        Misbehaviour::Huge,
        Misbehaviour::Silent,
        Misbehaviour::TlsStall,
    ];

    fn name(self) -> &'static str {
        match self {
            Misbehaviour::DripHead => "drip-head",
            Misbehaviour::DripBody => "drip-body",
            Misbehaviour::Endless => "endless",
            Misbehaviour::Huge => "huge",
            Misbehaviour::Silent => "silent",
            Misbehaviour::TlsStall => "tls-stall",
        }
    }

    /// Whether the receiver floods its answer (and so answers, with 503).
    fn floods(self) -> bool {
        matches!(self, Misbehaviour::Endless | Misbehaviour::Huge)
    }

    /// Serves one connection until the peer goes away.
    async fn serve(self, mut stream: TcpStream) {
        // The request (or the TLS ClientHello): read once and ignored.
        let mut request = vec![0u8; 64 * 1024];
        let _ = stream.read(&mut request).await;
        match self {
            Misbehaviour::DripHead => {
                drip_bytes(&mut stream, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
            }
            Misbehaviour::DripBody => {
                let head = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n";
                if stream.write_all(head).await.is_ok() {
                    drip_bytes(&mut stream, &[b'x'; 100_000]).await;
                }
            }
            Misbehaviour::Endless => {
                let head =
                    b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n";
                let mut chunk = format!("{:x}\r\n", 64 * 1024).into_bytes();
                chunk.extend(std::iter::repeat_n(b'e', 64 * 1024));
                chunk.extend_from_slice(b"\r\n");
                if stream.write_all(head).await.is_ok() {
                    while stream.write_all(&chunk).await.is_ok() {}
                }
            }
            Misbehaviour::Huge => {
                let head = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\n\r\n",
                    1u64 << 30
                );
                let block = vec![b'h'; 64 * 1024];
                if stream.write_all(head.as_bytes()).await.is_ok() {
                    for _ in 0..(1 << 30) / block.len() {
                        if stream.write_all(&block).await.is_err() {
                            break;
                        }
                    }
                }
            }
            Misbehaviour::Silent | Misbehaviour::TlsStall => {
                // Hold the connection until the daemon gives up on it.
                let _ = stream.read(&mut request).await;
            }
        }
    }
}

/// Writes `bytes` one a second until they end or the peer goes away.
async fn drip_bytes(stream: &mut TcpStream, bytes: &[u8]) {
    for byte in bytes {
        if stream.write_all(std::slice::from_ref(byte)).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Starts a hostile receiver; returns the URL a repeater posts to.
async fn start(misbehaviour: Misbehaviour) -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a hostile receiver");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(misbehaviour.serve(stream));
        }
    });
    let scheme = if misbehaviour == Misbehaviour::TlsStall {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}/{}", misbehaviour.name())
}

/// The healthy repeaters' config, posting to `receiver`.
fn healthy_config(receiver: &Receiver) -> DaemonConfig {
    let mut config = DaemonConfig::default();
    for name in ["h1", "h2"] {
        config.repeaters.push(RepeaterConfig::json_forward(
            "healthy",
            name,
            &format!("{}/healthy/{name}", receiver.url()),
        ));
    }
    config
}

/// Posts the healthy events and waits until `receiver` has them all;
/// returns how long that took.
async fn deliver_healthy(daemon: &Daemon, receiver: &Receiver) -> Duration {
    let started = Instant::now();
    let healthy: Vec<Value> = (0..HEALTHY_EVENTS)
        .map(|n| json!({"type": "healthy.test", "payload": {"n": n}}))
        .collect();
    daemon.ingest_many("healthy", healthy).await;
    let delivered = receiver
        .wait_for(2 * HEALTHY_EVENTS, Duration::from_secs(120))
        .await;
    assert!(delivered.len() >= 2 * HEALTHY_EVENTS);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_receivers_cost_a_timeout_or_an_excerpt_and_nothing_more() {
    // The healthy repeaters alone first, for comparison.
    let alone = {
        let receiver = Receiver::start().await;
        let dir = TestDir::new();
        let mut daemon = Daemon::start(&dir, &healthy_config(&receiver), &Backend::Sqlite).await;
        let took = deliver_healthy(&daemon, &receiver).await;
        assert!(daemon.stop().await, "repeaterd did not stop cleanly");
        took
    };

    let receiver = Receiver::start().await;
    let dir = TestDir::new();
    let mut config = healthy_config(&receiver);
    for misbehaviour in Misbehaviour::ALL {
        let url = start(misbehaviour).await;
        config.repeaters.push(
            RepeaterConfig::json_forward("hostile", misbehaviour.name(), &url)
                .extra(&format!("timeout = \"{TIMEOUT_MS}ms\""))
                .extra(&format!("response_excerpt_bytes = {EXCERPT_BYTES}"))
                .extra("max_attempts = 2"),
        );
    }
    let mut daemon = Daemon::start(&dir, &config, &Backend::Sqlite).await;
    let hostile: Vec<Value> = (0..HOSTILE_EVENTS)
        .map(|n| json!({"type": "hostile.test", "payload": {"n": n}}))
        .collect();
    daemon.ingest_many("hostile", hostile).await;
    let healthy_done = deliver_healthy(&daemon, &receiver).await;

    // Every hostile record ends after its two attempts.
    let hostile_total = HOSTILE_EVENTS * Misbehaviour::ALL.len();
    let records = eventually(
        &format!("{hostile_total} hostile records finished"),
        Duration::from_secs(120),
        || daemon.log(),
        || async {
            let records = list_records(&daemon, "hostile", None).await;
            let finished = records
                .iter()
                .filter(|r| r["state"] != "pending" && r["state"] != "retrying")
                .count();
            (finished == hostile_total).then_some(records)
        },
    )
    .await;
    for record in &records {
        let repeater = record["repeater"].as_str().unwrap_or_default().to_owned();
        let misbehaviour = Misbehaviour::ALL
            .into_iter()
            .find(|m| m.name() == repeater)
            .unwrap_or_else(|| panic!("a record of an unknown repeater: {record}"));
        let id = record["id"]
            .as_str()
            .map_or_else(|| record["id"].to_string(), str::to_owned);
        let full = daemon.record("hostile", &id).await;
        let attempts = record_attempts(&full);
        assert_eq!(attempts.len(), 2, "{repeater}: two attempts: {full}");
        for attempt in &attempts {
            let took = attempt["duration_ms"].as_u64().unwrap_or(u64::MAX);
            let error = attempt["error"].as_str().unwrap_or_default();
            if misbehaviour.floods() {
                assert_eq!(attempt["status"], 503, "{repeater}: {attempt}");
                let excerpt = attempt["response_excerpt"].as_str().unwrap_or_default();
                assert!(
                    !excerpt.is_empty() && excerpt.len() <= EXCERPT_BYTES,
                    "{repeater}: an excerpt within {EXCERPT_BYTES} bytes, got {}",
                    excerpt.len()
                );
                assert!(
                    took < TIMEOUT_MS,
                    "{repeater}: a flood ends with its excerpt, not the timeout: {took} ms"
                );
            } else {
                assert!(
                    error.starts_with("transport error (timeout)"),
                    "{repeater}: ends with a timeout error: {attempt}"
                );
                let phase = if misbehaviour == Misbehaviour::DripBody {
                    "did not finish its body"
                } else {
                    "no response head"
                };
                assert!(
                    error.contains(phase),
                    "{repeater}: the error says where it stalled ({phase}): {error}"
                );
                assert!(
                    (TIMEOUT_MS - 50..TIMEOUT_MS + 1_000).contains(&took),
                    "{repeater}: ends by the {TIMEOUT_MS} ms timeout: {took} ms"
                );
            }
        }
    }

    let peak_mib = daemon.peak_rss_kib().expect("VmHWM of repeaterd") / 1024;
    println!(
        "hostile receivers: {} healthy records delivered in {:.2} s beside {} hostile records \
         ({:.2} s alone); peak RSS {peak_mib} MiB (limit {PEAK_RSS_LIMIT_MIB} MiB)",
        2 * HEALTHY_EVENTS,
        healthy_done.as_secs_f64(),
        records.len(),
        alone.as_secs_f64()
    );
    assert!(
        peak_mib < PEAK_RSS_LIMIT_MIB,
        "repeaterd peaked at {peak_mib} MiB resident, over {PEAK_RSS_LIMIT_MIB} MiB"
    );
    assert!(daemon.stop().await, "repeaterd did not stop cleanly");
}
