//! Outbound HTTP: sending the requests plugins build to repeaters' endpoints.
//!
//! This module owns everything between a built request and the bytes on the
//! wire: the pooled client ([`client`]), the SSRF policy ([`guard`]) enforced
//! where connections are opened ([`connector`]), the transport error kinds
//! plugins see ([`error`]), the authentication the host adds after `build`
//! ([`auth`]), Standard Webhooks signatures ([`signing`]), and both applied
//! to a built request with the secrets they read ([`credentials`]), and the
//! redacted summary of what was sent that an attempt keeps ([`redact`]).

pub mod auth;
pub mod client;
pub mod connector;
pub mod credentials;
pub mod error;
pub mod guard;
pub mod redact;
pub mod secrets;
pub mod signing;

#[cfg(test)]
mod test_server;

pub use auth::{AuthConfig, AuthError, Authenticator};
pub use client::{
    DEFAULT_EXCERPT_LIMIT, Outbound, OutboundBuildError, OutboundConfig, OutboundRequest,
    OutboundResponse,
};
pub use credentials::Credentials;
pub use error::{TransportError, TransportErrorKind};
pub use guard::{Refused, SsrfPolicy, is_forbidden};
pub use secrets::{EnvSecrets, SecretSource};
pub use signing::{SigningError, SigningKey, sign_request, sign_standard_webhooks};
