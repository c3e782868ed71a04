//! A real HTTP/1.1 server on 127.0.0.1 for the outbound tests: it counts the
//! TCP connections it accepts and the requests it serves, and answers with a
//! handler the test provides.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The response body type handlers return.
pub type TestBody = BoxBody<Bytes, Infallible>;

/// A handler: the request with its body read whole, to a response.
pub type Handler =
    Arc<dyn Fn(Request<Bytes>) -> BoxFuture<'static, Response<TestBody>> + Send + Sync>;

/// A running server; it stops when the test's runtime ends.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl TestServer {
    /// Starts a server on 127.0.0.1 with an ephemeral port.
    pub async fn start(handler: Handler) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (conn_count, req_count) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                conn_count.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let req_count = req_count.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        let req_count = req_count.clone();
                        async move {
                            req_count.fetch_add(1, Ordering::SeqCst);
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            Ok::<_, Infallible>(handler(Request::from_parts(parts, body)).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestServer {
            addr,
            connections,
            requests,
        }
    }

    /// A server answering every request with `status` and `body`.
    pub async fn answering(status: u16, body: &'static str) -> TestServer {
        TestServer::start(Arc::new(move |_req| {
            Box::pin(async move { text(status, body) })
        }))
        .await
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests served so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A response with `status` and a text body.
pub fn text(status: u16, body: impl Into<Bytes>) -> Response<TestBody> {
    Response::builder()
        .status(status)
        .body(Full::new(body.into()).boxed())
        .expect("valid test response")
}
