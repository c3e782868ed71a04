//! The raw ceiling of the machine: the fastest a minimal keep-alive HTTP/1.1
//! client can post the benchmark's 1 KiB JSON body to the same receiver the
//! scenarios use, over loopback. Every throughput figure is divided by it, so
//! results from different machines and runs can be compared.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::payload;
use crate::receiver::{RECORD_ID_HEADER, Receiver};

/// What the ceiling run measured.
#[derive(Debug, Clone)]
pub struct Ceiling {
    /// Completed requests per second.
    pub requests_per_s: f64,
    /// Requests completed.
    pub requests: u64,
    /// Connections used.
    pub connections: usize,
    /// How long it ran.
    pub seconds: f64,
}

/// Posts the 1 KiB body over `connections` keep-alive connections for
/// `duration`, each connection sending its next request as soon as the last
/// answer came back.
pub async fn measure(duration: Duration, connections: usize) -> Result<Ceiling, String> {
    let domains = vec!["ceiling".to_owned()];
    let receiver = Receiver::start(&domains).await?;
    let addr = receiver.addr();
    let body = Bytes::from(payload::json_body(0, payload::BODY_BYTES));
    let next_id = Arc::new(AtomicU64::new(1));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let body = body.clone();
        let next_id = next_id.clone();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|err| format!("ceiling client cannot connect to {addr}: {err}"))?;
            let _ = stream.set_nodelay(true);
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|err| format!("ceiling client handshake: {err}"))?;
            tokio::spawn(connection);
            let mut done = 0u64;
            while Instant::now() < deadline {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let request = Request::post(format!("http://{addr}/ceiling/sink"))
                    .header("host", addr.to_string())
                    .header("content-type", "application/json")
                    .header(RECORD_ID_HEADER, id.to_string())
                    .body(Full::new(body.clone()))
                    .map_err(|err| format!("ceiling request: {err}"))?;
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|err| format!("ceiling request failed: {err}"))?;
                if !response.status().is_success() {
                    return Err(format!("ceiling receiver answered {}", response.status()));
                }
                response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|err| format!("ceiling response body: {err}"))?;
                done += 1;
            }
            Ok::<u64, String>(done)
        }));
    }
    let mut requests = 0;
    for task in tasks {
        requests += task
            .await
            .map_err(|err| format!("ceiling client task failed: {err}"))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    if receiver.requests() as u64 != requests {
        return Err(format!(
            "ceiling client counted {requests} answers but the receiver saw {} requests",
            receiver.requests()
        ));
    }
    Ok(Ceiling {
        requests_per_s: requests as f64 / seconds,
        requests,
        connections,
        seconds,
    })
}
