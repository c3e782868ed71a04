//! Why no response came back: the transport error of an attempt, sorted into
//! the kinds the plugin WIT knows (`transport-error-kind`), with a message
//! that names the host and the cause.

use std::error::Error as StdError;
use std::fmt;
use std::io;

use super::connector::{ResolveFailed, find_refusal};

/// The kind of a transport failure; mirrors the WIT's `transport-error-kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportErrorKind {
    /// The host name did not resolve.
    Dns,
    /// No connection could be made (refused, unreachable, reset while connecting).
    Connect,
    /// The exchange did not finish within the request timeout.
    Timeout,
    /// The TLS handshake failed (certificate, protocol version, ...).
    Tls,
    /// The peer broke HTTP: malformed response, connection closed mid-message.
    Protocol,
    /// The host refused the destination (SSRF policy, unsupported scheme).
    Refused,
    /// Anything else, such as a URL that cannot be parsed.
    Other,
}

impl TransportErrorKind {
    /// The lowercase name used in the WIT, the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportErrorKind::Dns => "dns",
            TransportErrorKind::Connect => "connect",
            TransportErrorKind::Timeout => "timeout",
            TransportErrorKind::Tls => "tls",
            TransportErrorKind::Protocol => "protocol",
            TransportErrorKind::Refused => "refused",
            TransportErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for TransportErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one request got no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} error: {message}")]
pub struct TransportError {
    /// What kind of failure it was.
    pub kind: TransportErrorKind,
    /// What went wrong, naming the host and the cause.
    pub message: String,
}

impl TransportError {
    /// A transport error of `kind` with `message`.
    pub fn new(kind: TransportErrorKind, message: impl Into<String>) -> TransportError {
        TransportError {
            kind,
            message: message.into(),
        }
    }
}

/// Sorts a failure of the hyper-util client into a [`TransportError`] for a
/// request to `host`.
pub(crate) fn classify_client_error(
    host: &str,
    err: &hyper_util::client::legacy::Error,
) -> TransportError {
    // The client's own text ("client error (Connect)") adds nothing to its causes.
    let cause = match err.source() {
        Some(source) => chain_text(source),
        None => chain_text(err),
    };
    if let Some(refused) = find_refusal(err) {
        return TransportError::new(TransportErrorKind::Refused, refused.to_string());
    }
    if find_in_chain::<ResolveFailed>(err).is_some() {
        return TransportError::new(TransportErrorKind::Dns, cause);
    }
    if find_in_chain::<rustls::Error>(err).is_some() || io_inner_is::<rustls::Error>(err) {
        return TransportError::new(
            TransportErrorKind::Tls,
            format!("TLS with {host} failed: {cause}"),
        );
    }
    if err.is_connect() {
        return TransportError::new(
            TransportErrorKind::Connect,
            format!("cannot connect to {host}: {cause}"),
        );
    }
    if let Some(hyper_err) = find_in_chain::<hyper::Error>(err)
        && hyper_err.is_timeout()
    {
        return TransportError::new(
            TransportErrorKind::Timeout,
            format!("{host} timed out: {cause}"),
        );
    }
    if find_in_chain::<hyper::Error>(err).is_some() {
        return TransportError::new(
            TransportErrorKind::Protocol,
            format!("HTTP exchange with {host} failed: {cause}"),
        );
    }
    TransportError::new(
        TransportErrorKind::Other,
        format!("request to {host} failed: {cause}"),
    )
}

/// Sorts an error met while reading the response body from `host`.
pub(crate) fn classify_body_error(host: &str, status: u16, err: &hyper::Error) -> TransportError {
    let kind = if err.is_timeout() {
        TransportErrorKind::Timeout
    } else {
        TransportErrorKind::Protocol
    };
    TransportError::new(
        kind,
        format!(
            "{host} answered {status} but its body could not be read: {}",
            chain_text(err)
        ),
    )
}

/// The first error of type `T` in `err`'s source chain.
fn find_in_chain<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// True when an `io::Error` in the chain wraps a `T` (tokio-rustls reports
/// handshake failures that way, without exposing it as `source`).
fn io_inner_is<T: StdError + 'static>(err: &(dyn StdError + 'static)) -> bool {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io_err) = e.downcast_ref::<io::Error>()
            && let Some(inner) = io_err.get_ref()
            && (inner.is::<T>() || io_inner_is::<T>(inner))
        {
            return true;
        }
        current = e.source();
    }
    false
}

/// The messages of an error and its causes, joined with ": ", skipping
/// repeats (several layers often repeat their cause's text).
fn chain_text(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}
