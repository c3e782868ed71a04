//! What the host adds to a built request before it leaves: the repeater's
//! authentication and its Standard Webhooks signature. Secrets stay in the
//! host (environment variables named by the config); the plugin never sees
//! them, and `classify` is shown the headers the plugin built, not these.
//!
//! The signature's `webhook-id` is the record id: stable across retries, so
//! receivers can drop duplicates of an at-least-once delivery (ADR 3).

use http::{HeaderMap, HeaderValue};

use crate::model::{Millis, RepeaterSpec};
use crate::outbound::auth::Authenticator;
use crate::outbound::signing;

/// Shared authentication state (cached OAuth2 tokens). Cheap to clone.
#[derive(Clone)]
pub struct Credentials {
    /// Applies a repeater's [`crate::model::AuthSpec`].
    pub auth: Authenticator,
}

/// Adds authentication and the signature to `headers`. The error names what
/// is missing or failed; the attempt is then retried (a secret may be set
/// or a token endpoint may recover).
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
            .map_err(|error| format!("authentication for {}/{}: {error}", spec.domain, spec.name))?;
    }
    if let Some(signing_spec) = &spec.signing {
        let id = record_id.to_string();
        let timestamp = now / 1000;
        let signed = signing::sign_request(signing_spec, &id, timestamp, body)
            .map_err(|error| format!("signing for {}/{}: {error}", spec.domain, spec.name))?;
        for (name, value) in signed {
            let value = HeaderValue::from_str(&value)
                .map_err(|_| format!("signing for {}/{}: {name} is not a valid header", spec.domain, spec.name))?;
            headers.insert(name, value);
        }
    }
    Ok(())
}
