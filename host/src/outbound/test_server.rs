//! Real HTTP servers on 127.0.0.1 for the outbound tests (HTTP/1.1 in clear,
//! or HTTP/1.1 and HTTP/2 over TLS): they count the TCP connections they
//! accept and the requests they serve, and answer with a handler the test
//! provides.

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
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as AutoBuilder;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

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
    /// Starts an HTTP/1.1 server on 127.0.0.1 with an ephemeral port.
    pub async fn start(handler: Handler) -> TestServer {
        TestServer::spawn(handler, None).await
    }

    /// Starts a TLS server on 127.0.0.1 offering HTTP/2 and HTTP/1.1 by ALPN.
    pub async fn start_tls(handler: Handler, mut tls: rustls::ServerConfig) -> TestServer {
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TestServer::spawn(handler, Some(TlsAcceptor::from(Arc::new(tls)))).await
    }

    async fn spawn(handler: Handler, tls: Option<TlsAcceptor>) -> TestServer {
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
                let tls = tls.clone();
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
                    match tls {
                        None => {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let _ = AutoBuilder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
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

/// A certificate authority and a server certificate for `127.0.0.1` and
/// `localhost` signed by it, made with the `openssl` command.
pub struct TestPki {
    /// The authority's certificate, to trust on the client side.
    pub ca: rustls::pki_types::CertificateDer<'static>,
    /// The server's TLS settings (certificate chain and key).
    pub server: rustls::ServerConfig,
}

impl TestPki {
    /// Makes a fresh authority and server certificate in a temporary folder.
    pub fn generate() -> TestPki {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let dir = tempfile::tempdir().expect("temp dir");
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let openssl = |args: &[&str]| {
            let output = std::process::Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl runs");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let (ca_key, ca_cert) = (path("ca.key"), path("ca.pem"));
        let (key, csr, cert, ext) = (
            path("server.key"),
            path("server.csr"),
            path("server.pem"),
            path("ext.cnf"),
        );
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write extensions");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    &ca_key,
                    "-out",
                    &ca_cert,
                    "-days",
                    "2",
                    "-subj",
                    "/CN=repeaterd test CA",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
        let ca = CertificateDer::from_pem_file(&ca_cert).expect("CA certificate");
        let chain = vec![CertificateDer::from_pem_file(&cert).expect("server certificate")];
        let key = PrivateKeyDer::from_pem_file(&key).expect("server key");
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate and key match");
        TestPki { ca, server }
    }
}
