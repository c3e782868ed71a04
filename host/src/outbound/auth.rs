//! The authentication the host adds to a repeater's request after the plugin
//! built it: HTTP Basic, a static bearer token, or an OAuth2 client-credentials
//! token that is fetched, cached and shared.
//!
//! Secrets are looked up through a [`SecretSource`] (the environment in the
//! daemon) each time they are used; see `secrets` for why. No secret is ever
//! logged: the types that hold one implement `Debug` by hand, and header
//! values carrying one are marked sensitive (HTTP/2 never indexes them).
//!
//! OAuth2 tokens are cached per (token URL, client id, scope) until their
//! expiry minus a safety margin. Concurrent callers that find no valid token
//! share one fetch (a task whose shared result is kept in the cache slot), so
//! a burst of records never stampedes the token endpoint; a failed fetch is
//! shared by those callers too and is not cached. The token endpoint is reached through
//! the same [`Outbound`] client, hence the same SSRF policy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use super::client::{Outbound, OutboundRequest};
use super::error::{TransportError, TransportErrorKind};
use super::secrets::SecretSource;
use crate::model::AuthSpec;

/// Why authentication could not be added to a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The environment variable naming a secret is unset.
    #[error("auth secret variable {var} is not set")]
    MissingSecret {
        /// The variable's name.
        var: String,
    },
    /// A credential holds bytes that cannot go in an HTTP header.
    #[error("{what} contains characters not allowed in an HTTP header")]
    BadCredential {
        /// Which credential (never its value).
        what: &'static str,
    },
    /// The token endpoint could not be reached.
    #[error("OAuth2 token endpoint {token_url} unreachable: {error}")]
    TokenTransport {
        /// The repeater's token URL.
        token_url: String,
        /// Why.
        error: TransportError,
    },
    /// The token endpoint answered with an error status.
    #[error("OAuth2 token endpoint {token_url} answered {status}: {detail}")]
    TokenRefused {
        /// The repeater's token URL.
        token_url: String,
        /// The status it answered.
        status: u16,
        /// The OAuth2 `error` and `error_description`, or the start of the body.
        detail: String,
    },
    /// The token endpoint answered 2xx with something that is not a usable token.
    #[error("OAuth2 token endpoint {token_url} sent an unusable token response: {reason}")]
    BadTokenResponse {
        /// The repeater's token URL.
        token_url: String,
        /// What was wrong with it.
        reason: String,
    },
}

#[cfg(test)]
impl AuthError {
    /// True when retrying later may help (the token endpoint was unreachable
    /// or failed with 5xx/429); false for configuration mistakes.
    pub fn is_transient(&self) -> bool {
        match self {
            AuthError::TokenTransport { .. } => true,
            AuthError::TokenRefused { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// Settings of OAuth2 token handling.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// A token is refreshed this long before it expires (at most half its
    /// lifetime, so short-lived tokens are still reused).
    pub safety_margin: Duration,
    /// Lifetime assumed when the token response has no `expires_in`.
    pub default_lifetime: Duration,
    /// Bound on one token request.
    pub token_timeout: Duration,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            safety_margin: Duration::from_secs(30),
            default_lifetime: Duration::from_secs(300),
            token_timeout: Duration::from_secs(10),
        }
    }
}

/// A token in the cache: the ready `authorization` value and when to refresh.
#[derive(Clone)]
struct CachedToken {
    header: HeaderValue,
    refresh_at: Instant,
}

type TokenFetch = Shared<BoxFuture<'static, Result<CachedToken, AuthError>>>;

#[derive(Default)]
struct SlotState {
    token: Option<CachedToken>,
    fetching: Option<TokenFetch>,
}

/// The cache entry of one (token URL, client id, scope).
#[derive(Default)]
struct TokenSlot {
    state: Mutex<SlotState>,
    /// Set once the endpoint refused HTTP Basic client authentication but
    /// accepted the credentials in the form body (RFC 6749 §2.3.1 allows both).
    credentials_in_body: AtomicBool,
}

struct Inner {
    outbound: Outbound,
    secrets: Arc<dyn SecretSource>,
    config: AuthConfig,
    slots: Mutex<HashMap<String, Arc<TokenSlot>>>,
}

/// Adds a repeater's authentication to its requests; cheap to clone (the
/// token cache is shared).
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cached = self.inner.slots.lock().map(|s| s.len()).unwrap_or(0);
        f.debug_struct("Authenticator")
            .field("cached_token_slots", &cached)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator that fetches tokens with `outbound` and finds
    /// secrets in `secrets`.
    pub fn new(outbound: Outbound, secrets: Arc<dyn SecretSource>, config: AuthConfig) -> Self {
        Authenticator {
            inner: Arc::new(Inner {
                outbound,
                secrets,
                config,
                slots: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Sets the `authorization` header `spec` calls for, replacing any the
    /// plugin set. May fetch an OAuth2 token.
    pub async fn apply(&self, spec: &AuthSpec, headers: &mut HeaderMap) -> Result<(), AuthError> {
        let value = match spec {
            AuthSpec::Basic {
                username,
                password_env,
            } => {
                let password = self.secret(password_env)?;
                let encoded = STANDARD.encode(format!("{username}:{password}"));
                sensitive(format!("Basic {encoded}"), "basic credentials")?
            }
            AuthSpec::Bearer { token_env } => {
                let token = self.secret(token_env)?;
                sensitive(format!("Bearer {token}"), "the bearer token")?
            }
            AuthSpec::Oauth2 {
                token_url,
                client_id,
                client_secret_env,
                scope,
            } => {
                let key = slot_key(token_url, client_id, scope.as_deref());
                self.oauth2_header(key, token_url, client_id, client_secret_env, scope)
                    .await?
            }
        };
        headers.insert(AUTHORIZATION, value);
        Ok(())
    }

    /// Drops the cached OAuth2 token of `spec`, so the next request fetches a
    /// new one (for when the endpoint answers 401 to a token we thought valid).
    #[cfg(test)]
    pub fn forget_token(&self, spec: &AuthSpec) {
        if let AuthSpec::Oauth2 {
            token_url,
            client_id,
            scope,
            ..
        } = spec
        {
            let key = slot_key(token_url, client_id, scope.as_deref());
            let slot = lock(&self.inner.slots).get(&key).cloned();
            if let Some(slot) = slot {
                lock(&slot.state).token = None;
            }
        }
    }

    fn secret(&self, var: &str) -> Result<String, AuthError> {
        self.inner
            .secrets
            .secret(var)
            .ok_or_else(|| AuthError::MissingSecret {
                var: var.to_owned(),
            })
    }

    async fn oauth2_header(
        &self,
        key: String,
        token_url: &str,
        client_id: &str,
        client_secret_env: &str,
        scope: &Option<String>,
    ) -> Result<HeaderValue, AuthError> {
        let slot = lock(&self.inner.slots).entry(key).or_default().clone();
        let fetch = {
            let mut state = lock(&slot.state);
            if let Some(token) = &state.token
                && Instant::now() < token.refresh_at
            {
                return Ok(token.header.clone());
            }
            match &state.fetching {
                Some(fetch) => fetch.clone(),
                None => {
                    let request = TokenRequest {
                        outbound: self.inner.outbound.clone(),
                        config: self.inner.config.clone(),
                        token_url: token_url.to_owned(),
                        client_id: client_id.to_owned(),
                        client_secret: self.secret(client_secret_env)?,
                        scope: scope.clone(),
                    };
                    let token_url = request.token_url.clone();
                    let slot = slot.clone();
                    // A task of its own, so the fetch finishes and fills the
                    // cache even when every caller waiting on it gave up.
                    let task = tokio::spawn(async move {
                        let result = request.fetch(&slot.credentials_in_body).await;
                        let mut state = lock(&slot.state);
                        state.fetching = None;
                        if let Ok(token) = &result {
                            state.token = Some(token.clone());
                        }
                        result
                    });
                    let fetch = async move {
                        task.await.unwrap_or_else(|err| {
                            Err(AuthError::TokenTransport {
                                token_url,
                                error: TransportError::new(
                                    TransportErrorKind::Other,
                                    format!("the token fetch stopped: {err}"),
                                ),
                            })
                        })
                    }
                    .boxed()
                    .shared();
                    state.fetching = Some(fetch.clone());
                    fetch
                }
            }
        };
        fetch.await.map(|token| token.header)
    }
}

/// Everything one token request needs, owned so the shared fetch is `'static`.
struct TokenRequest {
    outbound: Outbound,
    config: AuthConfig,
    token_url: String,
    client_id: String,
    client_secret: String,
    scope: Option<String>,
}

impl TokenRequest {
    /// Fetches a token: client authentication by HTTP Basic first; if the
    /// endpoint refuses that as a client error, once more with the
    /// credentials in the form body, and remembers which one worked.
    async fn fetch(&self, credentials_in_body: &AtomicBool) -> Result<CachedToken, AuthError> {
        let in_body = credentials_in_body.load(Ordering::Relaxed);
        let result = match self.post(in_body).await {
            Err(AuthError::TokenRefused { status, detail, .. })
                if !in_body && refuses_client_auth(status, &detail) =>
            {
                let token = self.post(true).await?;
                credentials_in_body.store(true, Ordering::Relaxed);
                tracing::info!(
                    token_url = %self.token_url,
                    client_id = %self.client_id,
                    "token endpoint refused HTTP Basic client authentication; using the form body"
                );
                Ok(token)
            }
            other => other,
        };
        match &result {
            Ok(_) => {
                tracing::debug!(token_url = %self.token_url, client_id = %self.client_id, "fetched an OAuth2 token")
            }
            Err(err) => {
                tracing::warn!(client_id = %self.client_id, error = %err, "OAuth2 token fetch failed")
            }
        }
        result
    }

    /// The form body and headers of a token request. Built apart from the
    /// send so the (non-`Send`) form serializer never lives across an await.
    fn token_request_parts(
        &self,
        credentials_in_body: bool,
    ) -> Result<(Bytes, HeaderMap), AuthError> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(scope) = &self.scope {
            form.append_pair("scope", scope);
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if credentials_in_body {
            form.append_pair("client_id", &self.client_id);
            form.append_pair("client_secret", &self.client_secret);
        } else {
            // RFC 6749 §2.3.1: both parts are form-encoded before Basic encoding.
            let user: String = form_urlencoded::byte_serialize(self.client_id.as_bytes()).collect();
            let pass: String =
                form_urlencoded::byte_serialize(self.client_secret.as_bytes()).collect();
            let encoded = STANDARD.encode(format!("{user}:{pass}"));
            headers.insert(
                AUTHORIZATION,
                sensitive(format!("Basic {encoded}"), "OAuth2 client credentials")?,
            );
        }
        Ok((Bytes::from(form.finish()), headers))
    }

    async fn post(&self, credentials_in_body: bool) -> Result<CachedToken, AuthError> {
        let (body, headers) = self.token_request_parts(credentials_in_body)?;
        let started = Instant::now();
        let response = self
            .outbound
            .send(OutboundRequest {
                method: Method::POST,
                url: self.token_url.clone(),
                headers,
                body,
                timeout: self.config.token_timeout,
                excerpt_limit: 64 * 1024,
            })
            .await
            .map_err(|error| AuthError::TokenTransport {
                token_url: self.token_url.clone(),
                error,
            })?;
        if !response.status.is_success() {
            return Err(AuthError::TokenRefused {
                token_url: self.token_url.clone(),
                status: response.status.as_u16(),
                detail: self.redact(error_detail(response.status, &response.body_excerpt)),
            });
        }
        if response.truncated {
            return Err(self.bad("the response is longer than 64 KiB"));
        }
        self.parse(&response.body_excerpt, started)
    }

    fn parse(&self, body: &[u8], requested_at: Instant) -> Result<CachedToken, AuthError> {
        let json: serde_json::Value =
            serde_json::from_slice(body).map_err(|err| self.bad(&format!("not JSON ({err})")))?;
        let token = json
            .get("access_token")
            .and_then(|v| v.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.bad("no access_token string"))?;
        match json.get("token_type").and_then(|v| v.as_str()) {
            None => {}
            Some(kind) if kind.eq_ignore_ascii_case("bearer") => {}
            Some(kind) => return Err(self.bad(&format!("token_type {kind:?} is not bearer"))),
        }
        // expires_in is a number per RFC 6749; some servers send it as a string.
        let lifetime = match json.get("expires_in") {
            None | Some(serde_json::Value::Null) => self.config.default_lifetime,
            Some(value) => {
                let seconds = value
                    .as_f64()
                    .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| {
                        self.bad(&format!("expires_in {value} is not a number of seconds"))
                    })?;
                Duration::from_secs_f64(seconds.min(10.0 * 365.0 * 86_400.0))
            }
        };
        let margin = self.config.safety_margin.min(lifetime / 2);
        let header = sensitive(format!("Bearer {token}"), "the OAuth2 access token")
            .map_err(|_| self.bad("access_token has characters not allowed in a header"))?;
        Ok(CachedToken {
            header,
            refresh_at: requested_at + (lifetime - margin),
        })
    }

    /// Removes the client secret from text an endpoint sent back (a server
    /// that echoes the request must not get the secret into a log line).
    fn redact(&self, text: String) -> String {
        let encoded: String =
            form_urlencoded::byte_serialize(self.client_secret.as_bytes()).collect();
        let mut text = text;
        for secret in [&self.client_secret, &encoded] {
            if !secret.is_empty() && text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "[redacted]");
            }
        }
        text
    }

    fn bad(&self, reason: &str) -> AuthError {
        AuthError::BadTokenResponse {
            token_url: self.token_url.clone(),
            reason: reason.to_owned(),
        }
    }
}

/// True when a token endpoint's error says it did not accept the way the
/// client authenticated (RFC 6749 §5.2 `invalid_client`, or a bare 401).
fn refuses_client_auth(status: u16, detail: &str) -> bool {
    status == StatusCode::UNAUTHORIZED.as_u16()
        || (status == StatusCode::BAD_REQUEST.as_u16() && detail.starts_with("invalid_client"))
}

/// The OAuth2 error of a failed token response (`error: description`), or
/// the start of its body when it is not OAuth2 JSON.
fn error_detail(status: StatusCode, body: &[u8]) -> String {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(error) = json.get("error").and_then(|e| e.as_str())
    {
        return match json.get("error_description").and_then(|d| d.as_str()) {
            Some(description) => format!("{error}: {description}"),
            None => error.to_owned(),
        };
    }
    let text = String::from_utf8_lossy(body);
    let text: String = text.chars().take(200).collect();
    if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("no body").to_owned()
    } else {
        text
    }
}

fn slot_key(token_url: &str, client_id: &str, scope: Option<&str>) -> String {
    // NUL cannot appear in a URL or an env-configured id, so keys cannot collide.
    format!("{token_url}\0{client_id}\0{}", scope.unwrap_or("\0none"))
}

/// A header value marked sensitive; `what` names the credential in the error.
fn sensitive(value: String, what: &'static str) -> Result<HeaderValue, AuthError> {
    let mut header = HeaderValue::try_from(value).map_err(|_| AuthError::BadCredential { what })?;
    header.set_sensitive(true);
    Ok(header)
}

/// Locks a mutex that is only ever held for a few instructions; a panic
/// while holding it cannot leave the map half-written, so poison is ignored.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::super::client::OutboundConfig;
    use super::super::secrets::StaticSecrets;
    use super::super::test_server::{TestServer, text};
    use super::*;

    fn outbound() -> Outbound {
        Outbound::new(OutboundConfig {
            allow: vec!["127.0.0.1/32".parse().unwrap()],
            ..OutboundConfig::default()
        })
        .unwrap()
    }

    fn secrets() -> Arc<dyn SecretSource> {
        Arc::new(StaticSecrets::from_pairs([
            ("API_PASSWORD", "pa:ss wörd"),
            ("API_TOKEN", "tok-static"),
            ("CLIENT_SECRET", "s3cret&=+"),
        ]))
    }

    fn authenticator(config: AuthConfig) -> Authenticator {
        Authenticator::new(outbound(), secrets(), config)
    }

    fn oauth(token_url: String, scope: Option<&str>) -> AuthSpec {
        AuthSpec::Oauth2 {
            token_url,
            client_id: "client-1".into(),
            client_secret_env: "CLIENT_SECRET".into(),
            scope: scope.map(str::to_owned),
        }
    }

    async fn authorization(auth: &Authenticator, spec: &AuthSpec) -> Result<String, AuthError> {
        let mut headers = HeaderMap::new();
        auth.apply(spec, &mut headers).await?;
        let value = headers.get(AUTHORIZATION).unwrap();
        assert!(value.is_sensitive());
        Ok(value.to_str().unwrap().to_owned())
    }

    /// A token endpoint that accepts only `client-1` with `s3cret&=+` by HTTP
    /// Basic, numbers its tokens and records what it was sent.
    async fn token_server(
        expires_in: u64,
        delay: Duration,
    ) -> (TestServer, Arc<Mutex<Vec<String>>>) {
        let issued = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let server = TestServer::start(Arc::new(move |req| {
            let issued = issued.clone();
            let log = log.clone();
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                let basic = req
                    .headers()
                    .get(AUTHORIZATION)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let form = String::from_utf8(req.body().to_vec()).unwrap();
                log.lock().unwrap().push(format!("{basic}|{form}"));
                let expected = format!("Basic {}", STANDARD.encode("client-1:s3cret%26%3D%2B"));
                if basic != expected {
                    return text(401, r#"{"error":"invalid_client","error_description":"bad client"}"#);
                }
                let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                text(
                    200,
                    format!(r#"{{"access_token":"tok-{n}","token_type":"Bearer","expires_in":{expires_in}}}"#),
                )
            })
        }))
        .await;
        (server, seen)
    }

    #[tokio::test]
    async fn basic_and_bearer_come_from_named_secrets() {
        let auth = authenticator(AuthConfig::default());
        let basic = AuthSpec::Basic {
            username: "alice".into(),
            password_env: "API_PASSWORD".into(),
        };
        assert_eq!(
            authorization(&auth, &basic).await.unwrap(),
            format!("Basic {}", STANDARD.encode("alice:pa:ss wörd"))
        );
        let bearer = AuthSpec::Bearer {
            token_env: "API_TOKEN".into(),
        };
        assert_eq!(
            authorization(&auth, &bearer).await.unwrap(),
            "Bearer tok-static"
        );
        let missing = AuthSpec::Bearer {
            token_env: "NOT_SET".into(),
        };
        let err = authorization(&auth, &missing).await.unwrap_err();
        assert_eq!(err.to_string(), "auth secret variable NOT_SET is not set");
    }

    #[tokio::test]
    async fn the_plugin_cannot_keep_its_own_authorization() {
        let auth = authenticator(AuthConfig::default());
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer from-plugin"),
        );
        let bearer = AuthSpec::Bearer {
            token_env: "API_TOKEN".into(),
        };
        auth.apply(&bearer, &mut headers).await.unwrap();
        assert_eq!(headers.get_all(AUTHORIZATION).iter().count(), 1);
        assert_eq!(headers.get(AUTHORIZATION).unwrap(), "Bearer tok-static");
    }

    #[tokio::test]
    async fn oauth2_token_is_reused_until_expiry_then_refetched() {
        let (server, seen) = token_server(3, Duration::ZERO).await;
        let auth = authenticator(AuthConfig {
            safety_margin: Duration::from_secs(1),
            ..AuthConfig::default()
        });
        let spec = oauth(server.url("/token"), Some("read write"));
        for _ in 0..5 {
            assert_eq!(authorization(&auth, &spec).await.unwrap(), "Bearer tok-1");
        }
        assert_eq!(server.requests(), 1);
        assert_eq!(
            seen.lock().unwrap()[0],
            format!(
                "Basic {}|grant_type=client_credentials&scope=read+write",
                STANDARD.encode("client-1:s3cret%26%3D%2B")
            )
        );
        // 3 s lifetime minus the 1 s margin: stale after 2 s.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(authorization(&auth, &spec).await.unwrap(), "Bearer tok-2");
        assert_eq!(authorization(&auth, &spec).await.unwrap(), "Bearer tok-2");
        assert_eq!(server.requests(), 2);
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_token_fetch() {
        let (server, _) = token_server(3600, Duration::from_millis(200)).await;
        let auth = authenticator(AuthConfig::default());
        let spec = oauth(server.url("/token"), None);
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (auth, spec) = (auth.clone(), spec.clone());
            tasks.push(tokio::spawn(
                async move { authorization(&auth, &spec).await },
            ));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), "Bearer tok-1");
        }
        assert_eq!(server.requests(), 1);
    }

    #[tokio::test]
    async fn a_fetch_whose_callers_gave_up_still_fills_the_cache() {
        let (server, _) = token_server(3600, Duration::from_millis(300)).await;
        let auth = authenticator(AuthConfig::default());
        let spec = oauth(server.url("/token"), None);
        let gave_up =
            tokio::time::timeout(Duration::from_millis(50), authorization(&auth, &spec)).await;
        assert!(gave_up.is_err());
        tokio::time::sleep(Duration::from_millis(700)).await;
        // Nobody has asked since; the token is in the cache all the same.
        let slots = lock(&auth.inner.slots)
            .values()
            .cloned()
            .collect::<Vec<_>>();
        assert_eq!(slots.len(), 1);
        {
            let state = lock(&slots[0].state);
            assert!(state.token.is_some() && state.fetching.is_none());
        }
        assert_eq!(authorization(&auth, &spec).await.unwrap(), "Bearer tok-1");
        assert_eq!(server.requests(), 1);
    }

    #[tokio::test]
    async fn each_scope_and_client_has_its_own_token() {
        let (server, _) = token_server(3600, Duration::ZERO).await;
        let auth = authenticator(AuthConfig::default());
        let read = oauth(server.url("/token"), Some("read"));
        let write = oauth(server.url("/token"), Some("write"));
        assert_eq!(authorization(&auth, &read).await.unwrap(), "Bearer tok-1");
        assert_eq!(authorization(&auth, &write).await.unwrap(), "Bearer tok-2");
        assert_eq!(authorization(&auth, &read).await.unwrap(), "Bearer tok-1");
        auth.forget_token(&read);
        assert_eq!(authorization(&auth, &read).await.unwrap(), "Bearer tok-3");
        assert_eq!(server.requests(), 3);
    }

    #[tokio::test]
    async fn a_client_error_from_the_token_endpoint_names_the_token_url() {
        let server = TestServer::answering(
            400,
            r#"{"error":"invalid_scope","error_description":"scope admin is not allowed"}"#,
        )
        .await;
        let auth = authenticator(AuthConfig::default());
        let spec = oauth(server.url("/oauth/token"), Some("admin"));
        let err = authorization(&auth, &spec).await.unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&server.url("/oauth/token")), "{message}");
        assert!(
            message.contains("400") && message.contains("invalid_scope"),
            "{message}"
        );
        assert!(!err.is_transient());
        assert!(!message.contains("s3cret"), "{message}");
        // Errors are not cached: the next request asks again.
        let _ = authorization(&auth, &spec).await.unwrap_err();
        assert_eq!(server.requests(), 2);
    }

    #[tokio::test]
    async fn an_endpoint_echoing_the_request_cannot_leak_the_secret_into_errors() {
        let server = TestServer::start(Arc::new(|req| {
            Box::pin(async move { text(400, req.into_body()) })
        }))
        .await;
        let auth = authenticator(AuthConfig::default());
        let spec = oauth(server.url("/token"), None);
        // 400 without invalid_client: no fallback, but the body is echoed.
        let err = authorization(&auth, &spec).await.unwrap_err();
        assert!(
            err.to_string().contains("grant_type=client_credentials"),
            "{err}"
        );
        let echo_form = TestServer::start(Arc::new(|req| {
            Box::pin(async move {
                let status = if req.headers().contains_key(AUTHORIZATION) {
                    401
                } else {
                    400
                };
                text(status, req.into_body())
            })
        }))
        .await;
        let err = authorization(&auth, &oauth(echo_form.url("/token"), None))
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("client_secret=[redacted]"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }

    #[tokio::test]
    async fn a_failing_token_endpoint_is_asked_once_by_concurrent_callers() {
        let server = TestServer::start(Arc::new(|_req| {
            Box::pin(async {
                // Long enough that every caller arrives while the fetch runs.
                tokio::time::sleep(Duration::from_secs(1)).await;
                text(503, "down for maintenance")
            })
        }))
        .await;
        let auth = authenticator(AuthConfig::default());
        let spec = oauth(server.url("/token"), None);
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (auth, spec) = (auth.clone(), spec.clone());
            tasks.push(tokio::spawn(
                async move { authorization(&auth, &spec).await },
            ));
        }
        for task in tasks {
            let err = task.await.unwrap().unwrap_err();
            assert!(err.is_transient());
            assert!(err.to_string().contains("down for maintenance"), "{err}");
        }
        assert_eq!(server.requests(), 1);
    }

    #[tokio::test]
    async fn credentials_move_to_the_form_body_when_basic_is_refused() {
        // An endpoint that only takes client_secret_post.
        let server = TestServer::start(Arc::new(|req| {
            Box::pin(async move {
                let form = String::from_utf8(req.body().to_vec()).unwrap();
                if req.headers().contains_key(AUTHORIZATION)
                    || !form.contains("client_id=client-1&client_secret=s3cret%26%3D%2B")
                {
                    return text(401, r#"{"error":"invalid_client"}"#);
                }
                text(200, r#"{"access_token":"posted","expires_in":"3600"}"#)
            })
        }))
        .await;
        let auth = authenticator(AuthConfig::default());
        let spec = oauth(server.url("/token"), None);
        assert_eq!(authorization(&auth, &spec).await.unwrap(), "Bearer posted");
        assert_eq!(server.requests(), 2);
        auth.forget_token(&spec);
        // The working method is remembered: one request this time.
        assert_eq!(authorization(&auth, &spec).await.unwrap(), "Bearer posted");
        assert_eq!(server.requests(), 3);
    }

    #[tokio::test]
    async fn unusable_token_responses_are_errors() {
        for (body, reason) in [
            ("not json", "not JSON"),
            (r#"{"token_type":"bearer"}"#, "no access_token"),
            (
                r#"{"access_token":"t","token_type":"mac"}"#,
                "token_type \"mac\"",
            ),
            (r#"{"access_token":"t","expires_in":"soon"}"#, "expires_in"),
            ("{\"access_token\":\"a\\nb\"}", "not allowed in a header"),
        ] {
            let server = TestServer::answering(200, body).await;
            let auth = authenticator(AuthConfig::default());
            let err = authorization(&auth, &oauth(server.url("/t"), None))
                .await
                .unwrap_err();
            assert!(matches!(err, AuthError::BadTokenResponse { .. }), "{err}");
            assert!(err.to_string().contains(reason), "{body}: {err}");
        }
    }

    #[tokio::test]
    async fn the_token_endpoint_is_held_to_the_ssrf_policy() {
        let server = TestServer::answering(200, r#"{"access_token":"t"}"#).await;
        let guarded = Authenticator::new(
            Outbound::new(OutboundConfig::default()).unwrap(),
            secrets(),
            AuthConfig::default(),
        );
        let err = authorization(&guarded, &oauth(server.url("/t"), None))
            .await
            .unwrap_err();
        let AuthError::TokenTransport { error, .. } = err else {
            panic!("expected a transport error, got {err}");
        };
        assert_eq!(error.kind, super::super::TransportErrorKind::Refused);
        assert_eq!(server.connections(), 0);
    }

    #[tokio::test]
    async fn debug_output_never_shows_a_token() {
        let (server, _) = token_server(3600, Duration::ZERO).await;
        let auth = authenticator(AuthConfig::default());
        let spec = oauth(server.url("/token"), None);
        let mut headers = HeaderMap::new();
        auth.apply(&spec, &mut headers).await.unwrap();
        assert!(!format!("{auth:?}").contains("tok-1"));
        assert!(!format!("{headers:?}").contains("tok-1"));
    }
}
