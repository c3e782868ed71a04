//! A small client for the daemon's HTTP API on 127.0.0.1: ingest batches,
//! read repeater status, pause and resume. Every call has a time limit and
//! every failure names the call.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::receiver::record_key;

/// How long one API call may take.
const CALL_LIMIT: Duration = Duration::from_secs(60);

/// What a producer's post came to.
#[derive(Debug)]
pub enum Posted {
    /// Stored: the keys of the records it created.
    Stored(Vec<u64>),
    /// Pushed back with `503`, with its `Retry-After` seconds if given.
    PushedBack { retry_after: Option<u64> },
}

/// How a producer waits after a push-back before posting again.
#[derive(Debug, Clone, Copy)]
pub enum PushBackWait {
    /// As long as the answer's `Retry-After` says (1 s without one).
    RetryAfter,
    /// A fixed pause, shorter than `Retry-After`: the scenario measures
    /// the daemon pushed hard, not a producer that backs off politely.
    Fixed(Duration),
}

/// What posting a batch until it was stored came to.
#[derive(Debug, Default)]
pub struct PostedUntilStored {
    /// The keys of the records it created; `None` when the deadline came
    /// first.
    pub records: Option<Vec<u64>>,
    /// `503` answers on the way.
    pub pushed_back: u64,
    /// The first `Retry-After` seconds those answers gave.
    pub retry_after: Option<u64>,
}

/// The daemon's API, reached over pooled keep-alive connections.
#[derive(Clone)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: String,
}

impl Api {
    /// A client for the daemon listening on `addr` (always loopback), sending
    /// `token` as the admin bearer token.
    pub fn new(addr: SocketAddr, token: &str) -> Api {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .build(connector);
        Api {
            client,
            base: format!("http://{addr}"),
            token: token.to_owned(),
        }
    }

    /// Sends one request and returns the status and body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        let what = format!("{method} {path}");
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token));
        if !body.is_empty() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(body))
            .map_err(|err| format!("{what}: {err}"))?;
        let (status, _, body) = self.exchange(&what, request).await?;
        Ok((status, body))
    }

    /// Sends `request` and reads the whole answer within [`CALL_LIMIT`];
    /// errors start with `what`.
    async fn exchange(
        &self,
        what: &str,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), String> {
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|err| format!("{what}: {err}"))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|err| format!("{what}: reading the answer: {err}"))?
                .to_bytes();
            Ok((parts.status, parts.headers, body))
        };
        tokio::time::timeout(CALL_LIMIT, exchange)
            .await
            .map_err(|_| format!("{what}: no answer within {} s", CALL_LIMIT.as_secs()))?
    }

    /// Logs in to the console with the admin token; returns the session
    /// cookie (`name=value`) to send with [`Api::console_get`].
    pub async fn console_login(&self) -> Result<String, String> {
        let what = "POST /ui/login";
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", &self.token)
            .finish();
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/ui/login", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .map_err(|err| format!("{what}: {err}"))?;
        let (status, headers, _) = self.exchange(what, request).await?;
        headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find(|value| value.starts_with("repeaterd_session="))
            .and_then(|value| value.split(';').next())
            .map(str::to_owned)
            .ok_or_else(|| format!("{what}: HTTP {status} without a session"))
    }

    /// Loads a console page with a session cookie; returns the status and
    /// the page's size.
    pub async fn console_get(
        &self,
        path: &str,
        cookie: &str,
    ) -> Result<(StatusCode, usize), String> {
        let what = format!("GET {path}");
        let request = Request::builder()
            .uri(format!("{}{path}", self.base))
            .header("cookie", cookie)
            .body(Full::new(Bytes::new()))
            .map_err(|err| format!("{what}: {err}"))?;
        let (status, _, body) = self.exchange(&what, request).await?;
        Ok((status, body.len()))
    }

    /// Like [`Api::call`], but a non-2xx answer is an error quoting the body.
    pub async fn call_ok(&self, method: Method, path: &str, body: Bytes) -> Result<Bytes, String> {
        let what = format!("{method} {path}");
        let (status, body) = self.call(method, path, body).await?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!(
                "{what}: HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(500)])
            ))
        }
    }

    /// Waits until `GET /readyz` answers 200, polling every few
    /// milliseconds; fails after `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            match self.call(Method::GET, "/readyz", Bytes::new()).await {
                Ok((status, _)) if status == StatusCode::OK => return Ok(()),
                Ok((status, body)) => {
                    last = format!("HTTP {status}: {}", String::from_utf8_lossy(&body))
                }
                Err(err) => last = err,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(format!(
            "daemon not ready within {:.0} s ({last})",
            limit.as_secs_f64()
        ))
    }

    /// Posts a batch body to a domain and returns the keys of the records
    /// it created.
    pub async fn ingest_batch(&self, domain: &str, body: String) -> Result<Vec<u64>, String> {
        let path = format!("/v1/domains/{domain}/events/batch");
        let answer = self.call_ok(Method::POST, &path, Bytes::from(body)).await?;
        let value: Value = serde_json::from_slice(&answer)
            .map_err(|err| format!("POST {path}: answer is not JSON: {err}"))?;
        let mut keys = Vec::new();
        collect_record_keys(&value, &mut keys);
        Ok(keys)
    }

    /// Posts a batch body to a domain as a producer that honours push-back
    /// would: stored records, or the daemon's `503` and its `Retry-After`.
    /// Any other answer is an error.
    pub async fn post_batch(&self, domain: &str, body: Bytes) -> Result<Posted, String> {
        let path = format!("/v1/domains/{domain}/events/batch");
        let what = format!("POST {path}");
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|err| format!("{what}: {err}"))?;
        let (status, headers, answer) = self.exchange(&what, request).await?;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let retry_after = headers
                .get("retry-after")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<u64>().ok());
            return Ok(Posted::PushedBack { retry_after });
        }
        if !status.is_success() {
            return Err(format!(
                "{what}: HTTP {status}: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(500)])
            ));
        }
        let value: Value = serde_json::from_slice(&answer)
            .map_err(|err| format!("{what}: answer is not JSON: {err}"))?;
        let mut keys = Vec::new();
        collect_record_keys(&value, &mut keys);
        Ok(Posted::Stored(keys))
    }

    /// Posts a batch body to a domain until it is stored, waiting `wait`
    /// after each push-back; gives up once `until` has passed, if given.
    pub async fn post_until_stored(
        &self,
        domain: &str,
        body: Bytes,
        wait: PushBackWait,
        until: Option<Instant>,
    ) -> Result<PostedUntilStored, String> {
        let mut posted = PostedUntilStored::default();
        loop {
            match self.post_batch(domain, body.clone()).await? {
                Posted::Stored(records) => {
                    posted.records = Some(records);
                    return Ok(posted);
                }
                Posted::PushedBack { retry_after } => {
                    posted.pushed_back += 1;
                    posted.retry_after = posted.retry_after.or(retry_after);
                    if until.is_some_and(|until| Instant::now() >= until) {
                        return Ok(posted);
                    }
                    let pause = match wait {
                        PushBackWait::RetryAfter => Duration::from_secs(retry_after.unwrap_or(1)),
                        PushBackWait::Fixed(pause) => pause,
                    };
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// The sum of every sample of the metric `name` (all its label sets) in
    /// the daemon's `/metrics`; 0 when it has none yet.
    pub async fn metric(&self, name: &str) -> Result<f64, String> {
        let text = self.call_ok(Method::GET, "/metrics", Bytes::new()).await?;
        let text = String::from_utf8_lossy(&text);
        Ok(metric_sum(&text, name))
    }

    /// `GET /v1/domains/{domain}/repeaters/{name}` as JSON.
    pub async fn repeater_status(&self, domain: &str, name: &str) -> Result<Value, String> {
        self.get_json(&format!("/v1/domains/{domain}/repeaters/{name}"))
            .await
    }

    /// `GET path` as JSON; a non-2xx answer is an error.
    pub async fn get_json(&self, path: &str) -> Result<Value, String> {
        let answer = self.call_ok(Method::GET, path, Bytes::new()).await?;
        serde_json::from_slice(&answer)
            .map_err(|err| format!("GET {path}: answer is not JSON: {err}"))
    }

    /// Pauses (`true`) or resumes (`false`) a repeater.
    pub async fn set_paused(&self, domain: &str, name: &str, paused: bool) -> Result<(), String> {
        let verb = if paused { "pause" } else { "resume" };
        let path = format!("/v1/domains/{domain}/repeaters/{name}/{verb}");
        self.call_ok(Method::POST, &path, Bytes::new()).await?;
        Ok(())
    }

    /// The repeater's record count in `state`, read from its status.
    pub async fn backlog_count(
        &self,
        domain: &str,
        name: &str,
        state: &str,
    ) -> Result<i64, String> {
        let status = self.repeater_status(domain, name).await?;
        let backlog = find_key(&status, "backlog").unwrap_or(&status);
        find_key(backlog, state)
            .and_then(Value::as_i64)
            .ok_or_else(|| format!("status of {domain}/{name} shows no {state:?} count: {status}"))
    }
}

/// Collects `records[].id` from an ingest answer, wherever the records
/// arrays sit (the batch answer wraps one entry per event).
fn collect_record_keys(value: &Value, keys: &mut Vec<u64>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(records)) = map.get("records") {
                for record in records {
                    match record.get("id") {
                        Some(Value::String(id)) => keys.push(record_key(id)),
                        Some(Value::Number(id)) => keys.push(record_key(&id.to_string())),
                        _ => {}
                    }
                }
            }
            for (name, inner) in map {
                if name != "records" {
                    collect_record_keys(inner, keys);
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| collect_record_keys(item, keys)),
        _ => {}
    }
}

/// The sum of the samples of `name` in a Prometheus text exposition.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            line.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// The first value under `key`, searching objects depth-first.
fn find_key<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|inner| find_key(inner, key))),
        Value::Array(items) => items.iter().find_map(|item| find_key(item, key)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn record_keys_are_found_in_batch_answers() {
        let answer = json!({"events": [
            {"event_id": "a", "records": [{"id": 7, "repeater": "r0"}, {"id": "8", "repeater": "r1"}]},
            {"event_id": "b", "records": [{"id": 9, "repeater": "r0"}]}
        ]});
        let mut keys = Vec::new();
        collect_record_keys(&answer, &mut keys);
        assert_eq!(keys, vec![7, 8, 9]);
    }

    #[test]
    fn metric_samples_are_summed_by_exact_name() {
        let text = "# HELP x_total a\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3.5\nx_total_more 9\nx_total 1\n";
        assert_eq!(metric_sum(text, "x_total"), 6.5);
        assert_eq!(metric_sum(text, "missing"), 0.0);
    }

    #[test]
    fn backlog_counts_are_found_nested() {
        let status = json!({"name": "r", "backlog": {"pending": 3, "succeeded": 5}});
        assert_eq!(find_key(&status, "succeeded"), Some(&json!(5)));
        assert_eq!(find_key(&status, "missing"), None);
    }
}
