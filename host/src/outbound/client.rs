//! The pooled HTTP client that sends the requests plugins build.
//!
//! One [`Outbound`] is made at start and cloned into every task that sends
//! (the clone shares the connection pool). It speaks HTTP/1.1, and HTTP/2 when
//! a TLS server offers it by ALPN; it never follows redirects, bounds every
//! exchange by the request's timeout and keeps only an excerpt of each
//! response body.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue, USER_AGENT};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ipnet::IpNet;
use rustls::pki_types::CertificateDer;

use super::connector::GuardedConnector;
use super::error::{
    TransportError, TransportErrorKind, classify_body_error, classify_client_error,
};
use super::guard::SsrfPolicy;

/// The default number of response body bytes kept with an attempt (16 KiB).
pub const DEFAULT_EXCERPT_LIMIT: usize = 16 * 1024;

/// After the excerpt is full, up to this many more bytes are read and dropped
/// so the connection can go back to the pool; a longer body closes it instead.
const DRAIN_LIMIT: usize = 64 * 1024;

/// How the client is built. Every field has a default.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// Special-purpose addresses the operator permits anyway (SSRF allow-list).
    pub allow: Vec<IpNet>,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Most idle connections kept per host.
    pub pool_max_idle_per_host: usize,
    /// Timeout of the TCP connect alone (the request timeout also bounds it).
    pub connect_timeout: Duration,
    /// The `user-agent` sent when the request sets none.
    pub user_agent: String,
    /// Trust anchors added to the Mozilla roots, for endpoints behind a
    /// private certificate authority.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for OutboundConfig {
    fn default() -> OutboundConfig {
        OutboundConfig {
            allow: Vec::new(),
            pool_idle_timeout: Duration::from_secs(90),
            // As many as the default `dispatch.max_inflight`: many repeaters
            // often share one receiver, and a smaller pool closes and reopens
            // connections at every batch.
            pool_max_idle_per_host: 256,
            connect_timeout: Duration::from_secs(10),
            user_agent: concat!("repeaterd/", env!("CARGO_PKG_VERSION")).to_owned(),
            extra_roots: Vec::new(),
        }
    }
}

/// A request to send.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    /// The HTTP method.
    pub method: Method,
    /// The absolute `http` or `https` URL.
    pub url: String,
    /// Headers to send; `user-agent` is added when absent.
    pub headers: HeaderMap,
    /// The request body.
    pub body: Bytes,
    /// Bound on the whole exchange: connect, response head and excerpt.
    pub timeout: Duration,
    /// Most response body bytes to keep.
    pub excerpt_limit: usize,
}

impl OutboundRequest {
    /// A request with no headers, a 30 s timeout and the default excerpt limit.
    pub fn new(method: Method, url: impl Into<String>, body: Bytes) -> OutboundRequest {
        OutboundRequest {
            method,
            url: url.into(),
            headers: HeaderMap::new(),
            body,
            timeout: Duration::from_secs(30),
            excerpt_limit: DEFAULT_EXCERPT_LIMIT,
        }
    }
}

/// What came back.
#[derive(Debug, Clone)]
pub struct OutboundResponse {
    /// The status code; a 3xx is returned as is, never followed.
    pub status: StatusCode,
    /// The HTTP version spoken (HTTP/2 when the server chose it by ALPN).
    pub version: Version,
    /// The response headers.
    pub headers: HeaderMap,
    /// The first `excerpt_limit` bytes of the body.
    pub body_excerpt: Bytes,
    /// True when the body was longer than the excerpt.
    pub truncated: bool,
    /// From the start of `send` to the end of reading the excerpt.
    pub duration: Duration,
}

type Connector = HttpsConnector<GuardedConnector>;

struct Inner {
    client: Client<Connector, Full<Bytes>>,
    user_agent: HeaderValue,
}

/// The pooled HTTP client; cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OutboundBuildError {
    /// The configured user agent is not a valid header value.
    #[error("outbound user_agent {0:?} is not a valid header value")]
    UserAgent(String),
    /// rustls refused the TLS settings.
    #[error("cannot set up TLS for outbound requests: {0}")]
    Tls(#[from] rustls::Error),
    /// A configured extra root certificate is not a usable trust anchor.
    #[error("extra root certificate #{index} is not a usable trust anchor: {reason}")]
    ExtraRoot {
        /// Its position in `extra_roots`, from 0.
        index: usize,
        /// Why it was refused.
        reason: String,
    },
}

impl Outbound {
    /// Builds the client and its connection pool. Building needs no runtime;
    /// [`Outbound::send`] must run inside a tokio runtime.
    pub fn new(config: OutboundConfig) -> Result<Outbound, OutboundBuildError> {
        let user_agent = HeaderValue::from_str(&config.user_agent)
            .map_err(|_| OutboundBuildError::UserAgent(config.user_agent.clone()))?;
        let policy = Arc::new(SsrfPolicy::new(config.allow));
        let guarded = GuardedConnector::new(policy, config.connect_timeout);
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for (index, cert) in config.extra_roots.into_iter().enumerate() {
            roots
                .add(cert)
                .map_err(|err| OutboundBuildError::ExtraRoot {
                    index,
                    reason: err.to_string(),
                })?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(guarded);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            // A request that was never written may be retried on a fresh
            // connection; hyper only does so when nothing reached the peer.
            .retry_canceled_requests(true)
            .build(connector);
        Ok(Outbound {
            inner: Arc::new(Inner { client, user_agent }),
        })
    }

    /// Sends one request and reads at most `excerpt_limit` bytes of the
    /// answer, all within `timeout`. Redirects are returned, not followed.
    pub async fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, TransportError> {
        let started = Instant::now();
        let uri: Uri = request.url.parse().map_err(|err| {
            TransportError::new(
                TransportErrorKind::Other,
                format!("invalid URL {:?}: {err}", request.url),
            )
        })?;
        let host = match (uri.scheme_str(), uri.host()) {
            (Some("http" | "https"), Some(host)) => host.to_owned(),
            (Some("http" | "https"), None) => {
                return Err(TransportError::new(
                    TransportErrorKind::Other,
                    format!("URL {:?} has no host", request.url),
                ));
            }
            _ => {
                return Err(TransportError::new(
                    TransportErrorKind::Refused,
                    format!("URL {:?} is not http or https", request.url),
                ));
            }
        };
        let mut builder = Request::builder().method(request.method).uri(uri);
        if let Some(headers) = builder.headers_mut() {
            *headers = request.headers;
            if !headers.contains_key(USER_AGENT) {
                headers.insert(USER_AGENT, self.inner.user_agent.clone());
            }
        }
        let http_request = builder.body(Full::new(request.body)).map_err(|err| {
            TransportError::new(
                TransportErrorKind::Other,
                format!("cannot build the request to {host}: {err}"),
            )
        })?;
        // A timeout too large to add is as good as none: cap it at a day.
        let deadline = started
            .checked_add(request.timeout)
            .unwrap_or(started + Duration::from_secs(86_400));
        let deadline = tokio::time::Instant::from_std(deadline);
        // Set once the response head is in, so a timeout can say whether
        // the receiver never answered or stalled in its body.
        let head_received = AtomicBool::new(false);
        let exchange = async {
            let response = self
                .inner
                .client
                .request(http_request)
                .await
                .map_err(|err| classify_client_error(&host, &err))?;
            head_received.store(true, Ordering::Relaxed);
            let (parts, body) = response.into_parts();
            let (body_excerpt, truncated) =
                read_excerpt(&host, parts.status, body, request.excerpt_limit, deadline).await?;
            Ok(OutboundResponse {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body_excerpt,
                truncated,
                duration: started.elapsed(),
            })
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => {
                let limit = request.timeout.as_millis();
                let message = if head_received.load(Ordering::Relaxed) {
                    format!("{host} answered but did not finish its body within {limit} ms")
                } else {
                    format!(
                        "{host} did not answer within {limit} ms (no response head: connect, TLS handshake or the receiver's own work)"
                    )
                };
                Err(TransportError::new(TransportErrorKind::Timeout, message))
            }
        }
    }
}

/// Reads up to `limit` bytes of `body`. The rest is drained by a background
/// task (best effort, bounded by [`DRAIN_LIMIT`] and the deadline) so a
/// slightly longer body keeps its connection reusable; a longer one is
/// dropped with its connection.
async fn read_excerpt(
    host: &str,
    status: StatusCode,
    mut body: Incoming,
    limit: usize,
    deadline: tokio::time::Instant,
) -> Result<(Bytes, bool), TransportError> {
    let mut excerpt = BytesMut::new();
    let mut truncated = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| classify_body_error(host, status.as_u16(), &err))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let room = limit - excerpt.len();
        if data.len() > room {
            excerpt.extend_from_slice(&data[..room]);
            truncated = true;
            break;
        }
        excerpt.extend_from_slice(&data);
    }
    if truncated {
        // Errors here change nothing about the answer already received.
        let drain = async move {
            let mut drained = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    drained += data.len();
                    if drained > DRAIN_LIMIT {
                        break;
                    }
                }
            }
        };
        tokio::spawn(tokio::time::timeout_at(deadline, drain));
    }
    Ok((excerpt.freeze(), truncated))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::StreamExt;

    use super::super::test_server::{TestServer, text};
    use super::*;

    fn loopback_allowed() -> Outbound {
        Outbound::new(OutboundConfig {
            allow: vec!["127.0.0.1/32".parse().expect("net")],
            ..OutboundConfig::default()
        })
        .expect("client builds")
    }

    fn guarded() -> Outbound {
        Outbound::new(OutboundConfig::default()).expect("client builds")
    }

    fn get(url: impl Into<String>) -> OutboundRequest {
        let mut request = OutboundRequest::new(Method::GET, url, Bytes::new());
        request.timeout = Duration::from_secs(5);
        request
    }

    #[tokio::test]
    async fn loopback_is_refused_without_any_connection_when_not_allowed() {
        let server = TestServer::answering(200, "hello").await;
        let err = guarded().send(get(server.url("/"))).await.unwrap_err();
        assert_eq!(err.kind, TransportErrorKind::Refused, "{err}");
        assert!(err.message.contains("127.0.0.1"), "{}", err.message);
        assert!(
            err.message.contains("loopback 127.0.0.0/8"),
            "{}",
            err.message
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(server.connections(), 0);
    }

    #[tokio::test]
    async fn loopback_is_reached_when_the_allow_list_contains_it() {
        let server = TestServer::start(Arc::new(|req| {
            Box::pin(async move {
                let agent = req
                    .headers()
                    .get(USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                text(201, agent)
            })
        }))
        .await;
        let response = loopback_allowed()
            .send(get(server.url("/x")))
            .await
            .unwrap();
        assert_eq!(response.status, StatusCode::CREATED);
        assert_eq!(
            response.body_excerpt,
            Bytes::from(concat!("repeaterd/", env!("CARGO_PKG_VERSION")))
        );
        assert!(!response.truncated);
        assert_eq!(server.requests(), 1);
    }

    #[tokio::test]
    async fn an_enormous_timeout_is_accepted() {
        let server = TestServer::answering(204, "").await;
        let mut request = get(server.url("/"));
        request.timeout = Duration::MAX;
        let response = loopback_allowed().send(request).await.unwrap();
        assert_eq!(response.status, StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn a_user_agent_set_by_the_request_is_kept() {
        let server = TestServer::start(Arc::new(|req| {
            Box::pin(async move {
                let agent = req.headers().get(USER_AGENT).cloned();
                text(
                    200,
                    agent.map(|v| v.as_bytes().to_vec()).unwrap_or_default(),
                )
            })
        }))
        .await;
        let mut request = get(server.url("/"));
        request
            .headers
            .insert(USER_AGENT, HeaderValue::from_static("custom/1"));
        let response = loopback_allowed().send(request).await.unwrap();
        assert_eq!(response.body_excerpt, Bytes::from_static(b"custom/1"));
    }

    #[tokio::test]
    async fn localhost_is_refused_through_the_resolver() {
        let server = TestServer::answering(200, "hello").await;
        let url = format!("http://localhost:{}/", server.addr.port());
        let err = guarded().send(get(url)).await.unwrap_err();
        assert_eq!(err.kind, TransportErrorKind::Refused, "{err}");
        assert!(err.message.contains("\"localhost\""), "{}", err.message);
        assert!(err.message.contains("loopback"), "{}", err.message);
        // A numeric host that only the resolver understands is judged the same way.
        let url = format!("http://2130706433:{}/", server.addr.port());
        let err = guarded().send(get(url)).await.unwrap_err();
        assert_eq!(err.kind, TransportErrorKind::Refused, "{err}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(server.connections(), 0);
    }

    #[tokio::test]
    async fn localhost_resolving_to_an_allowed_address_is_reached() {
        let server = TestServer::answering(200, "hello").await;
        let url = format!("http://localhost:{}/", server.addr.port());
        let response = loopback_allowed().send(get(url)).await.unwrap();
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.body_excerpt, Bytes::from_static(b"hello"));
    }

    #[tokio::test]
    async fn forbidden_literals_are_refused_before_any_socket() {
        // Refusal happens in the connector's `call` before the TCP connector
        // is asked, so no packet leaves for these addresses. The tiny timeout
        // would turn any real connection attempt into a timeout instead.
        let cases = [
            ("http://10.0.0.1/", "private 10.0.0.0/8"),
            ("https://192.168.1.10:8443/x", "private 192.168.0.0/16"),
            ("http://169.254.169.254/latest/meta-data/", "link-local"),
            ("http://100.64.1.1/", "CGNAT"),
            ("http://[::ffff:10.0.0.1]/", "inside IPv4-mapped"),
            ("http://[fd00::1]/", "unique local"),
            ("http://[fe80::1]/", "link-local"),
            ("http://[64:ff9b::a00:1]/", "inside NAT64"),
            ("http://[2002:a00:1::1]/", "inside 6to4"),
            ("http://0.0.0.0:9/", "unspecified"),
            ("http://[::]:9/", "unspecified"),
        ];
        let client = guarded();
        for (url, range) in cases {
            let mut request = get(url);
            request.timeout = Duration::from_millis(1);
            let err = client.send(request).await.unwrap_err();
            assert_eq!(err.kind, TransportErrorKind::Refused, "{url}: {err}");
            assert!(err.message.contains(range), "{url}: {}", err.message);
        }
    }

    #[tokio::test]
    async fn the_connector_itself_refuses_private_literals() {
        use tower::Service;
        let policy = Arc::new(SsrfPolicy::default());
        let mut connector = GuardedConnector::new(policy, Duration::from_secs(1));
        let err = connector
            .call(Uri::from_static("http://10.0.0.1/"))
            .await
            .expect_err("refused");
        let refused = super::super::connector::find_refusal(err.as_ref()).expect("a refusal");
        assert_eq!(
            refused.addr,
            "10.0.0.1".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(refused.range, "private 10.0.0.0/8");
    }

    #[tokio::test]
    async fn redirects_are_returned_not_followed() {
        let target = TestServer::answering(200, "target").await;
        let location = target.url("/landing");
        let origin = TestServer::start(Arc::new(move |_req| {
            let location = location.clone();
            Box::pin(async move {
                let mut response = text(302, "moved");
                response
                    .headers_mut()
                    .insert(http::header::LOCATION, location.parse().unwrap());
                response
            })
        }))
        .await;
        let response = loopback_allowed().send(get(origin.url("/"))).await.unwrap();
        assert_eq!(response.status, StatusCode::FOUND);
        assert_eq!(
            response.headers.get(http::header::LOCATION).unwrap(),
            &target.url("/landing")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(target.connections(), 0);
    }

    #[tokio::test]
    async fn a_slow_endpoint_times_out_within_the_request_timeout() {
        let server = TestServer::start(Arc::new(|_req| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                text(200, "late")
            })
        }))
        .await;
        let mut request = get(server.url("/"));
        request.timeout = Duration::from_millis(200);
        let started = Instant::now();
        let err = loopback_allowed().send(request).await.unwrap_err();
        assert_eq!(err.kind, TransportErrorKind::Timeout, "{err}");
        assert!(err.message.contains("127.0.0.1"), "{}", err.message);
        assert!(err.message.contains("no response head"), "{}", err.message);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_stalled_body_counts_against_the_timeout() {
        let server = TestServer::start(Arc::new(|_req| {
            Box::pin(async {
                // The head goes out at once; the body never finishes.
                let first = Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                    Bytes::from_static(b"partial"),
                ));
                let stream = futures::stream::iter([first]).chain(futures::stream::pending());
                let body = BodyExt::boxed(http_body_util::StreamBody::new(stream));
                http::Response::builder().status(200).body(body).unwrap()
            })
        }))
        .await;
        let mut request = get(server.url("/"));
        request.timeout = Duration::from_millis(300);
        let err = loopback_allowed().send(request).await.unwrap_err();
        assert_eq!(err.kind, TransportErrorKind::Timeout, "{err}");
        assert!(
            err.message.contains("answered but did not finish its body"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn only_the_excerpt_of_a_huge_body_is_kept() {
        let server = TestServer::start(Arc::new(|_req| {
            Box::pin(async {
                // 1 GiB in 64 KiB chunks, produced lazily: reading it all would take long.
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let stream = futures::stream::repeat_with(move || {
                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk.clone()))
                })
                .take(16 * 1024);
                let body = BodyExt::boxed(http_body_util::StreamBody::new(stream));
                http::Response::builder().status(200).body(body).unwrap()
            })
        }))
        .await;
        let mut request = get(server.url("/"));
        request.excerpt_limit = 1000;
        let response = loopback_allowed().send(request).await.unwrap();
        assert_eq!(response.body_excerpt.len(), 1000);
        assert!(response.truncated);
        assert!(response.body_excerpt.iter().all(|&b| b == b'x'));
    }

    #[tokio::test]
    async fn a_body_of_exactly_the_limit_is_not_truncated() {
        let server = TestServer::answering(200, "0123456789").await;
        let client = loopback_allowed();
        let mut request = get(server.url("/"));
        request.excerpt_limit = 10;
        let response = client.send(request.clone()).await.unwrap();
        assert_eq!(response.body_excerpt, Bytes::from_static(b"0123456789"));
        assert!(!response.truncated);
        request.excerpt_limit = 4;
        let response = client.send(request).await.unwrap();
        assert_eq!(response.body_excerpt, Bytes::from_static(b"0123"));
        assert!(response.truncated);
    }

    #[tokio::test]
    async fn connections_are_reused_across_requests() {
        let server = TestServer::start(Arc::new(|req| {
            Box::pin(async move { text(200, req.into_body()) })
        }))
        .await;
        let client = loopback_allowed();
        for i in 0..20 {
            let mut request =
                OutboundRequest::new(Method::POST, server.url("/"), Bytes::from(format!("n{i}")));
            request.timeout = Duration::from_secs(5);
            let response = client.clone().send(request).await.unwrap();
            assert_eq!(response.body_excerpt, Bytes::from(format!("n{i}")));
        }
        assert_eq!(server.requests(), 20);
        assert_eq!(server.connections(), 1);
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error_naming_the_host() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = loopback_allowed()
            .send(get(format!("http://127.0.0.1:{port}/")))
            .await
            .unwrap_err();
        assert_eq!(err.kind, TransportErrorKind::Connect, "{err}");
        assert!(err.message.contains("127.0.0.1"), "{}", err.message);
    }

    #[tokio::test]
    async fn bad_urls_are_refused_or_rejected_by_name() {
        let client = guarded();
        let err = client.send(get("ftp://127.0.0.1/file")).await.unwrap_err();
        assert_eq!(err.kind, TransportErrorKind::Refused);
        assert!(
            err.message.contains("ftp://127.0.0.1/file"),
            "{}",
            err.message
        );
        let err = client.send(get("not a url")).await.unwrap_err();
        assert_eq!(err.kind, TransportErrorKind::Other);
        assert!(err.message.contains("not a url"), "{}", err.message);
    }

    #[tokio::test]
    async fn a_malformed_response_is_a_protocol_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(b"this is not http\r\n\r\n").await;
        });
        let err = loopback_allowed()
            .send(get(format!("http://{addr}/")))
            .await
            .unwrap_err();
        assert_eq!(err.kind, TransportErrorKind::Protocol, "{err}");
        assert!(err.message.contains("127.0.0.1"), "{}", err.message);
    }
}

#[cfg(test)]
mod tls_tests {
    use std::sync::Arc;

    use super::super::test_server::{TestPki, TestServer, text};
    use super::*;

    async fn version_echo(pki: &TestPki) -> TestServer {
        TestServer::start_tls(
            Arc::new(|req| Box::pin(async move { text(200, format!("{:?}", req.version())) })),
            pki.server.clone(),
        )
        .await
    }

    fn trusting(pki: &TestPki) -> Outbound {
        Outbound::new(OutboundConfig {
            allow: vec!["127.0.0.1/32".parse().unwrap()],
            extra_roots: vec![pki.ca.clone()],
            ..OutboundConfig::default()
        })
        .unwrap()
    }

    fn get(url: String) -> OutboundRequest {
        let mut request = OutboundRequest::new(Method::GET, url, Bytes::new());
        request.timeout = Duration::from_secs(5);
        request
    }

    #[tokio::test]
    async fn https_negotiates_http2_by_alpn_and_multiplexes_one_connection() {
        let pki = TestPki::generate();
        let server = version_echo(&pki).await;
        let client = trusting(&pki);
        let url = format!("https://127.0.0.1:{}/", server.addr.port());
        let first = client.send(get(url.clone())).await.unwrap();
        assert_eq!(first.version, Version::HTTP_2);
        assert_eq!(first.body_excerpt, Bytes::from_static(b"HTTP/2.0"));
        // Once the pool knows the origin speaks HTTP/2, concurrent requests
        // share that one connection as streams.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (client, url) = (client.clone(), url.clone());
            tasks.push(tokio::spawn(async move { client.send(get(url)).await }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().version, Version::HTTP_2);
        }
        assert_eq!(server.requests(), 9);
        assert_eq!(server.connections(), 1);
    }

    #[tokio::test]
    async fn https_by_name_checks_the_certificate_for_that_name() {
        let pki = TestPki::generate();
        let server = version_echo(&pki).await;
        let url = format!("https://localhost:{}/", server.addr.port());
        let response = trusting(&pki).send(get(url)).await.unwrap();
        assert_eq!(response.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_a_tls_error_naming_the_host() {
        let pki = TestPki::generate();
        let server = version_echo(&pki).await;
        let client = Outbound::new(OutboundConfig {
            allow: vec!["127.0.0.1/32".parse().unwrap()],
            ..OutboundConfig::default()
        })
        .unwrap();
        let err = client
            .send(get(format!("https://127.0.0.1:{}/", server.addr.port())))
            .await
            .unwrap_err();
        assert_eq!(err.kind, TransportErrorKind::Tls, "{err}");
        assert!(err.message.contains("127.0.0.1"), "{}", err.message);
        assert!(err.message.contains("UnknownIssuer"), "{}", err.message);
        assert_eq!(server.requests(), 0);
    }

    #[tokio::test]
    async fn https_to_a_plain_http_server_is_a_tls_error() {
        let server = TestServer::answering(200, "plain").await;
        let client = Outbound::new(OutboundConfig {
            allow: vec!["127.0.0.1/32".parse().unwrap()],
            ..OutboundConfig::default()
        })
        .unwrap();
        let err = client
            .send(get(format!("https://127.0.0.1:{}/", server.addr.port())))
            .await
            .unwrap_err();
        assert_eq!(err.kind, TransportErrorKind::Tls, "{err}");
    }
}
