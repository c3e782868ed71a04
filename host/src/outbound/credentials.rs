//! What the host adds to a built request before it leaves: the repeater's
//! authentication and its Standard Webhooks signature. Secrets stay in the
//! host (environment variables named by the config); the plugin never sees
//! them, and `classify` is shown the headers the plugin built, not these.
//!
//! The signature's `webhook-id` is the record id: stable across retries, so
//! receivers can drop duplicates of an at-least-once delivery (ADR 3).

use std::sync::Arc;

use http::HeaderMap;

use super::{Authenticator, SecretSource, sign_request};
use crate::model::{Millis, RepeaterSpec};

/// Shared authentication state (cached OAuth2 tokens) and the secret
/// source. Cheap to clone.
#[derive(Clone)]
pub struct Credentials {
    /// Applies a repeater's [`crate::model::AuthSpec`].
    pub auth: Authenticator,
    /// Where signing secrets are read (the process environment in the daemon).
    pub secrets: Arc<dyn SecretSource>,
}

/// Adds authentication, then the signature (last, over the final body), to
/// `headers`. The error names the repeater and what is missing or failed.
pub async fn add(
    credentials: &Credentials,
    spec: &RepeaterSpec,
    record_id: i64,
    now: Millis,
    body: &[u8],
    headers: &mut HeaderMap,
) -> Result<(), String> {
    if let Some(auth) = &spec.auth {
        credentials
            .auth
            .apply(auth, headers)
            .await
            .map_err(|error| {
                format!(
                    "authentication for repeater {}/{}: {error}",
                    spec.domain, spec.name
                )
            })?;
    }
    if let Some(signing) = &spec.signing {
        sign_request(
            signing,
            credentials.secrets.as_ref(),
            &record_id.to_string(),
            now / 1000,
            body,
            headers,
        )
        .map_err(|error| {
            format!(
                "signing for repeater {}/{}: {error}",
                spec.domain, spec.name
            )
        })?;
    }
    Ok(())
}
