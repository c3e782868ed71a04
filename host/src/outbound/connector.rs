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
use std::time::Duration;

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
            let admitted = admit(&policy, host, resolved).map_err(|refused| match refused {
                Some(refused) => BoxError::from(refused),
                None => BoxError::from(ResolveFailed {
                    host: host.to_owned(),
                    source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
                }),
            })?;
            Ok(admitted.into_iter())
        })
    }
}

/// Keeps the resolved addresses `policy` admits, in order. When none is
/// admitted, fails with the first refusal (`None` when there was no address
/// at all). Dropping the refused ones rather than failing the whole name is
/// safe: only admitted addresses are ever connected to.
pub fn admit(
    policy: &SsrfPolicy,
    host: &str,
    resolved: impl IntoIterator<Item = SocketAddr>,
) -> Result<Vec<SocketAddr>, Option<Refused>> {
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
        Err(first_refusal)
    } else {
        Ok(admitted)
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
    /// A TCP connector applying `policy` to literals and resolved names alike,
    /// giving up on a single connect after `connect_timeout`.
    pub fn new(policy: Arc<SsrfPolicy>, connect_timeout: Duration) -> GuardedConnector {
        let mut inner = HttpConnector::new_with_resolver(GuardedResolver::new(policy.clone()));
        // The TLS layer sits on top, so this layer must accept https URLs too.
        inner.enforce_http(false);
        inner.set_nodelay(true);
        inner.set_connect_timeout(Some(connect_timeout));
        inner.set_keepalive(Some(Duration::from_secs(60)));
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

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use tower::Service;

    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn only_admitted_addresses_of_a_name_are_kept() {
        let policy = SsrfPolicy::default();
        // A name answering with a public and a private address (a rebinding
        // attempt) keeps only the public one.
        let kept = admit(
            &policy,
            "mixed.example",
            addrs(&["10.0.0.5:443", "93.184.216.34:443"]),
        );
        assert_eq!(kept.unwrap(), addrs(&["93.184.216.34:443"]));
        let refused = admit(
            &policy,
            "inside.example",
            addrs(&["169.254.169.254:80", "[fd00::1]:80"]),
        )
        .unwrap_err()
        .expect("a refusal");
        assert_eq!(refused.addr, "169.254.169.254".parse::<IpAddr>().unwrap());
        assert_eq!(refused.host, "inside.example");
        assert_eq!(
            admit(&policy, "empty.example", Vec::new()).unwrap_err(),
            None
        );
        let allowing = SsrfPolicy::new(vec!["10.0.0.0/24".parse().unwrap()]);
        assert_eq!(
            admit(
                &allowing,
                "mixed.example",
                addrs(&["10.0.0.5:443", "10.0.1.5:443"])
            )
            .unwrap(),
            addrs(&["10.0.0.5:443"])
        );
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_that_resolve_to_loopback() {
        let mut guarded = GuardedResolver::new(Arc::new(SsrfPolicy::default()));
        let err = guarded
            .call(Name::from_str("localhost").unwrap())
            .await
            .expect_err("localhost is loopback");
        let refused = find_refusal(err.as_ref()).expect("a refusal");
        assert!(refused.addr.is_loopback());
        let mut allowing = GuardedResolver::new(Arc::new(SsrfPolicy::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ])));
        let found: Vec<SocketAddr> = allowing
            .call(Name::from_str("localhost").unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!found.is_empty());
        assert!(found.iter().all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn literal_hosts_are_recognised_with_or_without_brackets() {
        assert_eq!(literal_ip("10.0.0.1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(literal_ip("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(literal_ip("example.com"), None);
        assert_eq!(literal_ip("2130706433"), None); // left to the resolver, which is guarded too
    }
}
