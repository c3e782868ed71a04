//! Sanity figure for the outbound client: requests per second and latency of
//! `Outbound::send` against a local hyper server with keep-alive, sequential
//! and with concurrent senders. Prints one JSON line per mode.
//!
//! Run: `cargo bench -p repeaterd --bench outbound_send` (add `--profile dev`
//! for a quick unoptimised look).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use repeaterd::outbound::{Outbound, OutboundConfig, OutboundRequest};
use tokio::net::TcpListener;

const SEQUENTIAL: usize = 2_000;
const SENDERS: usize = 16;
const PER_SENDER: usize = 500;

async fn serve() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"{\"ok\":true}",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn request(url: &str) -> OutboundRequest {
    let mut request = OutboundRequest::new(
        Method::POST,
        url,
        Bytes::from_static(b"{\"type\":\"case.created\",\"id\":42}"),
    );
    request.timeout = Duration::from_secs(10);
    request
}

fn percentile(sorted: &[Duration], p: f64) -> u128 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_micros()
}

fn main() {
    let profile = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let addr = serve().await;
        let url = format!("http://{addr}/hook");
        let client = Outbound::new(OutboundConfig {
            allow: vec!["127.0.0.1/32".parse().expect("net")],
            ..OutboundConfig::default()
        })
        .expect("client");
        // Warm the pool.
        for _ in 0..50 {
            client.send(request(&url)).await.expect("warm-up request");
        }

        let mut latencies = Vec::with_capacity(SEQUENTIAL);
        let started = Instant::now();
        for _ in 0..SEQUENTIAL {
            let one = Instant::now();
            let response = client.send(request(&url)).await.expect("request");
            assert_eq!(response.status, 200);
            latencies.push(one.elapsed());
        }
        let elapsed = started.elapsed();
        latencies.sort();
        println!(
            "{{\"bench\":\"outbound_send\",\"mode\":\"sequential\",\"profile\":\"{profile}\",\"requests\":{SEQUENTIAL},\"per_second\":{:.0},\"p50_us\":{},\"p99_us\":{}}}",
            SEQUENTIAL as f64 / elapsed.as_secs_f64(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
        );

        let started = Instant::now();
        let mut senders = Vec::new();
        for _ in 0..SENDERS {
            let (client, url) = (client.clone(), url.clone());
            senders.push(tokio::spawn(async move {
                for _ in 0..PER_SENDER {
                    client.send(request(&url)).await.expect("request");
                }
            }));
        }
        for sender in senders {
            sender.await.expect("sender");
        }
        let elapsed = started.elapsed();
        let total = SENDERS * PER_SENDER;
        println!(
            "{{\"bench\":\"outbound_send\",\"mode\":\"concurrent\",\"profile\":\"{profile}\",\"senders\":{SENDERS},\"requests\":{total},\"per_second\":{:.0}}}",
            total as f64 / elapsed.as_secs_f64(),
        );
    });
}
