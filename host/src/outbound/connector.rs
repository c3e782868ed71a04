//! Connection establishment with the SSRF guard applied to the addresses a
//! socket is actually opened to.
//!
//! Two places see a destination address before a socket exists:
//! [`GuardedResolver`] filters what DNS returned (so a name that resolves to a
//! private address, or rebinds to one, is refused), and [`GuardedConnector`]
//! checks IP literals in the URL, which hyper-util's `HttpConnector` connects
//! to without asking the resolver. A refusal is a [`Refused`] error in the
//! error's source chain, which `error` turns into the `refused` kind.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::guard::{Refused, SsrfPolicy};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A DNS lookup that failed: the name did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve host {host:?}: {source}")]
pub struct ResolveFailed {
    /// The host name that was looked up.
    pub host: String,
    /// What the system resolver said.
    #[source]
    pub source: io::Error,
}

/// Resolves names with the system resolver and keeps only the addresses the
/// SSRF policy admits. When it admits none, the lookup fails with the first
/// refusal, so the error names the address and its range.
#[derive(Clone)]
pub struct GuardedResolver {
    policy: Arc<SsrfPolicy>,
}

impl GuardedResolver {
    /// A resolver applying `policy`.
    pub fn new(policy: Arc<SsrfPolicy>) -> GuardedResolver {
        GuardedResolver { policy }
    }
}

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str();
            // The port is replaced by HttpConnector; 0 is a placeholder.
            let resolved =
                tokio::net::lookup_host((host, 0))
                    .await
                    .map_err(|source| ResolveFailed {
                        host: host.to_owned(),
                        source,
                    })?;
            let mut admitted = Vec::new();
            let mut first_refusal = None;
            for addr in resolved {
                match policy.check(host, addr.ip()) {
                    Ok(()) => admitted.push(addr),
                    Err(refused) => {
                        first_refusal.get_or_insert(refused);
                    }
                }
            }
            if admitted.is_empty() {
                return Err(match first_refusal {
                    Some(refused) => BoxError::from(refused),
                    None => BoxError::from(ResolveFailed {
                        host: host.to_owned(),
                        source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
                    }),
                });
            }
            Ok(admitted.into_iter())
        })
    }
}

/// The TCP connector behind the TLS layer: hyper-util's `HttpConnector` with
/// the [`GuardedResolver`], plus the policy check of IP-literal hosts.
#[derive(Clone)]
pub struct GuardedConnector {
    policy: Arc<SsrfPolicy>,
    inner: HttpConnector<GuardedResolver>,
}

impl GuardedConnector {
    /// Wraps `inner`, which must use a [`GuardedResolver`] with the same policy.
    pub fn new(policy: Arc<SsrfPolicy>, inner: HttpConnector<GuardedResolver>) -> GuardedConnector {
        GuardedConnector { policy, inner }
    }
}

/// The IP address a URL host spells literally, if it does (`[v6]` or dotted v4).
pub fn literal_ip(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

impl tower::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(BoxError::from)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        if let Some(host) = dst.host()
            && let Some(ip) = literal_ip(host)
            && let Err(refused) = self.policy.check(host, ip)
        {
            return Box::pin(async move { Err(BoxError::from(refused)) });
        }
        let connecting = self.inner.call(dst);
        Box::pin(async move { connecting.await.map_err(BoxError::from) })
    }
}

/// Finds a [`Refused`] anywhere in an error's source chain.
pub fn find_refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        current = e.source();
    }
    None
}
