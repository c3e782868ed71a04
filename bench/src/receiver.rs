//! The local receiver: a minimal HTTP/1.1 keep-alive server on 127.0.0.1
//! that answers `200` at once and remembers, for every request, which record
//! it carried (the `idempotency-key` header), which domain it was for (the
//! first path segment of the repeater URL `http://127.0.0.1:PORT/<domain>/<repeater>`)
//! and when it arrived. Recording is one short mutex section per request, so
//! the receiver costs little next to the daemon it measures.
//!
//! Started with a [`Capacity`], it is a busy API instead: it serves a few
//! requests at a time, each after a fixed service time, answers `503` at
//! once to any beyond them, and remembers when each served request held its
//! slot and when each turned-away one came.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The header json-forward sets to the record id.
pub const RECORD_ID_HEADER: &str = "idempotency-key";

/// Domain index of requests whose path names no known domain.
pub const UNKNOWN_DOMAIN: u32 = u32::MAX;

/// One request seen by the receiver.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// The record key (see [`record_key`]).
    pub key: u64,
    /// Index of the domain in the list given to [`Receiver::start`].
    pub domain: u32,
    /// When the request head arrived.
    pub at: Instant,
}

/// Turns a record id as text into the key the receiver stores: the number
/// itself when it is one, a hash otherwise. The API answer and the header
/// go through the same function, so they always agree.
pub fn record_key(id: &str) -> u64 {
    match id.parse::<u64>() {
        Ok(number) => number,
        Err(_) => {
            let mut hasher = DefaultHasher::new();
            id.hash(&mut hasher);
            hasher.finish()
        }
    }
}

/// How much a busy receiver serves: at most `limit` requests at once, each
/// answered `200` after `service`; a request arriving while `limit` are
/// being served is answered `503` at once, without `Retry-After`.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub limit: usize,
    pub service: Duration,
}

/// When a served request of a busy receiver held its slot.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub from: Instant,
    pub to: Instant,
}

/// What a busy receiver saw besides the arrivals.
#[derive(Default)]
struct Busy {
    /// Every slot held, in the order they were freed.
    held: Vec<Held>,
    /// When each turned-away request came.
    shed: Vec<Instant>,
}

#[derive(Default)]
struct Log {
    /// First arrival of each record, in arrival order.
    arrivals: Vec<Arrival>,
    seen: HashSet<u64>,
}

struct Shared {
    domains: HashMap<String, u32>,
    log: Mutex<Log>,
    /// Distinct records seen.
    distinct: AtomicUsize,
    /// Every request, repeats included.
    requests: AtomicUsize,
    /// Distinct records seen, per domain index.
    per_domain: Vec<AtomicUsize>,
    /// A busy receiver's service time, and its slots.
    capacity: Option<(Duration, Semaphore)>,
    busy: Mutex<Busy>,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Binds 127.0.0.1:0 and starts serving. `domains` gives each domain the
    /// index reported in [`Arrival::domain`].
    pub async fn start(domains: &[String]) -> Result<Receiver, String> {
        Receiver::serve(domains, None).await
    }

    /// Starts a busy receiver that serves at most `capacity.limit` requests
    /// at once and turns the others away.
    pub async fn with_capacity(domains: &[String], capacity: Capacity) -> Result<Receiver, String> {
        Receiver::serve(domains, Some(capacity)).await
    }

    async fn serve(domains: &[String], capacity: Option<Capacity>) -> Result<Receiver, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|err| format!("receiver cannot bind 127.0.0.1:0: {err}"))?;
        let addr = listener
            .local_addr()
            .map_err(|err| format!("receiver address: {err}"))?;
        let shared = Arc::new(Shared {
            domains: domains
                .iter()
                .enumerate()
                .map(|(index, name)| (name.clone(), index as u32))
                .collect(),
            log: Mutex::new(Log::default()),
            distinct: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            per_domain: domains.iter().map(|_| AtomicUsize::new(0)).collect(),
            capacity: capacity.map(|c| (c.service, Semaphore::new(c.limit))),
            busy: Mutex::new(Busy::default()),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Receiver {
            addr,
            shared,
            accept,
        })
    }

    /// The receiver's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL a repeater should post to.
    pub fn url_for(&self, domain: &str, repeater: &str) -> String {
        format!("http://{}/{domain}/{repeater}", self.addr)
    }

    /// Distinct records seen so far.
    pub fn distinct(&self) -> usize {
        self.shared.distinct.load(Ordering::Relaxed)
    }

    /// Requests seen so far, repeats of a record included.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Distinct records seen so far for the domain at `index`.
    pub fn domain_count(&self, index: usize) -> usize {
        self.shared
            .per_domain
            .get(index)
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }

    /// Waits until `done()` holds, polling every 5 ms; fails after `limit`
    /// with `what` and the receiver's count.
    pub async fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        mut done: impl FnMut(&Receiver) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if done(self) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{what}: not done within {:.0} s (receiver saw {} records)",
                    limit.as_secs_f64(),
                    self.distinct()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until at least `count` distinct records have arrived, or fails
    /// after `limit` naming how many did.
    pub async fn wait_for(&self, count: usize, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.distinct();
            if seen >= count {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "receiver saw {seen} of {count} records within {:.0} s",
                    limit.as_secs_f64()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A copy of every first arrival so far, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.lock().arrivals.clone()
    }

    /// First arrival time of each record key.
    pub fn arrival_times(&self) -> HashMap<u64, Instant> {
        self.lock()
            .arrivals
            .iter()
            .map(|arrival| (arrival.key, arrival.at))
            .collect()
    }

    /// The latest first arrival, if any.
    pub fn last_arrival(&self) -> Option<Instant> {
        self.lock().arrivals.last().map(|arrival| arrival.at)
    }

    /// A busy receiver's held slots, in the order they were freed, and the
    /// times of its turned-away requests.
    pub fn busy(&self) -> (Vec<Held>, Vec<Instant>) {
        let busy = lock(&self.shared.busy);
        (busy.held.clone(), busy.shed.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        lock(&self.shared.log)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Connections live in the set so that stopping the receiver stops them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| handle(shared.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let at = Instant::now();
    let key = request
        .headers()
        .get(RECORD_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(record_key);
    let domain = request
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .and_then(|segment| shared.domains.get(segment).copied())
        .unwrap_or(UNKNOWN_DOMAIN);
    // Read the body to its end so the connection can be reused.
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let slot = match &shared.capacity {
        Some((service, slots)) => match slots.try_acquire() {
            Ok(permit) => Some((permit, *service, Instant::now())),
            Err(_) => {
                lock(&shared.busy).shed.push(at);
                let mut shed = Response::new(Empty::new());
                *shed.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return Ok(shed);
            }
        },
        None => None,
    };
    if let Some(key) = key {
        let mut log = lock(&shared.log);
        if log.seen.insert(key) {
            log.arrivals.push(Arrival { key, domain, at });
            shared.distinct.fetch_add(1, Ordering::Relaxed);
            if let Some(count) = shared.per_domain.get(domain as usize) {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if let Some((permit, service, from)) = slot {
        tokio::time::sleep(service).await;
        let held = Held {
            from,
            to: Instant::now(),
        };
        lock(&shared.busy).held.push(held);
        drop(permit);
    }
    Ok(Response::new(Empty::new()))
}

/// A mutex's guard; a poisoned lock only means a handler panicked
/// mid-push, and the data is still usable for measurement.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_keep_numbers_and_hash_other_ids() {
        assert_eq!(record_key("42"), 42);
        assert_eq!(record_key("rec-1"), record_key("rec-1"));
        assert_ne!(record_key("rec-1"), record_key("rec-2"));
    }
}
