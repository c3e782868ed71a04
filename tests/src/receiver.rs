//! A real HTTP receiver on 127.0.0.1 for end-to-end tests: it records every
//! request it gets (path, headers, body, arrival time) and answers from a
//! programmable script, so a test can say "503 twice then 200" or "always
//! 400" and then look at exactly what arrived. Started with a [`Capacity`]
//! instead, it is a busy API that sheds load: it serves a few requests at a
//! time and answers `503` at once to the rest.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it arrived, relative to the receiver's start.
    pub at: Duration,
    /// True when a receiver with a [`Capacity`] was full and answered `503`
    /// at once.
    pub shed: bool,
}

impl Received {
    /// A header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// The record id the plugin put in the idempotency header.
    pub fn record_id(&self) -> Option<String> {
        self.header("idempotency-key")
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("receiver got a JSON body")
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answer with this status, these headers and this body.
    Status(u16, Vec<(String, String)>, String),
    /// Wait this long, then answer as the inner reply says (a stalled
    /// endpoint, when the wait is past the client's timeout).
    Delayed(Duration, Box<Reply>),
    /// Drop the connection without answering: the client sees the
    /// connection closed mid-request.
    Reset,
}

impl Reply {
    pub fn status(code: u16) -> Reply {
        Reply::Status(code, Vec::new(), String::new())
    }
}

/// Decides the reply from the request and how many earlier requests carried
/// the same record id.
pub type Script = Arc<dyn Fn(&Received, usize) -> Reply + Send + Sync>;

/// How much a load-shedding receiver serves: at most `limit` requests at
/// once, each answered `200` after `service`; a request arriving while
/// `limit` are being served is answered `503` at once, with no
/// `Retry-After`. A slot is free again as soon as its answer is ready.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub limit: usize,
    pub service: Duration,
}

/// When a request held one of a [`Capacity`]'s slots, relative to the
/// receiver's start.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    pub from: Duration,
    pub to: Duration,
}

struct Shared {
    started: Instant,
    log: Mutex<Vec<Received>>,
    /// Requests per record id, so counting earlier copies stays O(1) even
    /// after tens of thousands of requests.
    per_record: Mutex<HashMap<String, usize>>,
    script: Mutex<Script>,
    /// While false, requests wait before being answered (a slow receiver).
    open: watch::Receiver<bool>,
    /// When set, the script is not asked: requests are served or shed.
    capacity: Option<Capacity>,
    /// Requests holding a slot of `capacity` now.
    serving: AtomicUsize,
    /// Every slot held so far, in the order the slots were freed.
    served: Mutex<Vec<Served>>,
}

/// A running receiver; dropped with the test's runtime.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    gate: watch::Sender<bool>,
}

impl Receiver {
    /// Starts a receiver that answers every request with `200`.
    pub async fn start() -> Receiver {
        Receiver::with_script(Arc::new(|_, _| Reply::status(200))).await
    }

    /// Starts a receiver answering from `script`.
    pub async fn with_script(script: Script) -> Receiver {
        Receiver::serve(script, None).await
    }

    /// Starts a receiver that serves at most `capacity.limit` requests at
    /// once and answers `503` at once beyond that.
    pub async fn with_capacity(capacity: Capacity) -> Receiver {
        Receiver::serve(Arc::new(|_, _| Reply::status(200)), Some(capacity)).await
    }

    async fn serve(script: Script, capacity: Option<Capacity>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let (gate, open) = watch::channel(true);
        let shared = Arc::new(Shared {
            started: Instant::now(),
            log: Mutex::new(Vec::new()),
            per_record: Mutex::new(HashMap::new()),
            script: Mutex::new(script),
            open,
            capacity,
            serving: AtomicUsize::new(0),
            served: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, shared, gate }
    }

    /// The base URL, e.g. `http://127.0.0.1:4711`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the script.
    pub fn set_script(&self, script: Script) {
        *self.shared.script.lock().unwrap() = script;
    }

    /// Holds (false) or releases (true) requests.
    pub fn set_open(&self, open: bool) {
        let _ = self.gate.send(open);
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.log.lock().unwrap().clone()
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.shared.log.lock().unwrap().len()
    }

    /// How many requests arrived for each record id (the idempotency header);
    /// cheap compared with [`Receiver::received`].
    pub fn per_record(&self) -> HashMap<String, usize> {
        self.shared.per_record.lock().unwrap().clone()
    }

    /// Now on the receiver's clock, the one [`Received::at`] and [`Served`]
    /// are read on.
    pub fn now(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// The slots a [`Capacity`] receiver's requests held so far.
    pub fn served(&self) -> Vec<Served> {
        self.shared.served.lock().unwrap().clone()
    }

    /// How many distinct record ids arrived so far.
    pub fn distinct_records(&self) -> usize {
        self.shared.per_record.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived, failing after `limit`.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "receiver got {} requests, expected {n} within {limit:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `done` holds for the requests received, failing after `limit`.
    pub async fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "receiver: {what} did not happen within {limit:?} ({} requests so far)",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let received = Received {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
        at: shared.started.elapsed(),
        shed: false,
    };
    if let Some(capacity) = shared.capacity {
        return serve_within(&shared, capacity, received).await;
    }
    let mut open = shared.open.clone();
    let _ = open.wait_for(|open| *open).await;
    let seen = log(&shared, &received);
    let script = shared.script.lock().unwrap().clone();
    answer(script(&received, seen)).await
}

/// Appends `received` to the log; returns how many earlier requests
/// carried its record id.
fn log(shared: &Shared, received: &Received) -> usize {
    let mut log = shared.log.lock().unwrap();
    let seen = match received.record_id() {
        Some(id) => {
            let mut per_record = shared.per_record.lock().unwrap();
            let count = per_record.entry(id).or_insert(0);
            *count += 1;
            *count - 1
        }
        None => 0,
    };
    log.push(received.clone());
    seen
}

/// Counts `received` in the log, then serves it within `capacity` or sheds
/// it.
async fn serve_within(
    shared: &Arc<Shared>,
    capacity: Capacity,
    mut received: Received,
) -> Response {
    let slot = Slot::take(shared, capacity.limit);
    received.shed = slot.is_none();
    log(shared, &received);
    let Some(slot) = slot else {
        return status_reply(503, Vec::new(), String::new());
    };
    tokio::time::sleep(capacity.service).await;
    drop(slot);
    status_reply(200, Vec::new(), String::new())
}

/// One of a [`Capacity`]'s slots, held by a request being served; given
/// back (and its time logged) when dropped, also when the client goes away.
struct Slot<'a> {
    shared: &'a Shared,
    from: Duration,
}

impl<'a> Slot<'a> {
    fn take(shared: &'a Shared, limit: usize) -> Option<Slot<'a>> {
        if shared.serving.fetch_add(1, Ordering::SeqCst) >= limit {
            shared.serving.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot {
            shared,
            from: shared.started.elapsed(),
        })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let to = self.shared.started.elapsed();
        self.shared.served.lock().unwrap().push(Served {
            from: self.from,
            to,
        });
        self.shared.serving.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Carries out one reply.
async fn answer(mut reply: Reply) -> Response {
    loop {
        match reply {
            Reply::Delayed(wait, inner) => {
                tokio::time::sleep(wait).await;
                reply = *inner;
            }
            Reply::Reset => reset_connection(),
            Reply::Status(code, headers, body) => return status_reply(code, headers, body),
        }
    }
}

/// The message of the unwind that ends a connection on purpose.
const RESET_ON_PURPOSE: &str = "receiver: connection dropped on purpose";

/// Ends the connection serving the current request without an answer. The
/// server runs each connection as its own task, so unwinding out of the
/// handler drops that task and its socket and nothing else; the panic hook
/// stays quiet about this one message.
fn reset_connection() -> ! {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&RESET_ON_PURPOSE) {
                previous(info);
            }
        }));
    });
    std::panic::panic_any(RESET_ON_PURPOSE)
}

fn status_reply(code: u16, headers: Vec<(String, String)>, body: String) -> Response {
    let mut response = (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
        .into_response();
    for (name, value) in headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    response
}

/// A TCP endpoint that accepts connections and closes them at once without
/// answering: a dead endpoint that still lets a test count how often it was
/// tried.
pub struct ResettingEndpoint {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    arrivals: Arc<Mutex<Vec<Duration>>>,
}

impl ResettingEndpoint {
    pub async fn start() -> ResettingEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind endpoint");
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let (count, log) = (connections.clone(), arrivals.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                log.lock().unwrap().push(started.elapsed());
                // Reset rather than a graceful close: the client sees an
                // error. A zero linger never blocks on drop.
                #[allow(deprecated)]
                let _ = stream.set_linger(Some(Duration::ZERO));
                drop(stream);
            }
        });
        ResettingEndpoint {
            addr,
            connections,
            arrivals,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// When each connection arrived.
    pub fn arrivals(&self) -> Vec<Duration> {
        self.arrivals.lock().unwrap().clone()
    }
}
