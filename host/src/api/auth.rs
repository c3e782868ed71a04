//! Who may call what. A request carries `Authorization: Bearer <token>`.
//! The admin token reaches every route; a domain token reaches only
//! `/v1/domains/<its domain>/...`. `/healthz`, `/readyz` and
//! `/v1/openapi.json` are always open (probes and the API's description carry
//! no secrets); `/v1/repeaters` takes any valid token and answers only what
//! that token reaches; `/metrics` and `/v1/plugins` are admin routes because
//! they span every domain.
//!
//! With no token configured at all the API is open: every route answers
//! without a token. That suits a daemon bound to loopback; the daemon logs a
//! warning at start when it happens.
//!
//! Tokens are compared as SHA-256 digests in constant time, so neither the
//! content nor the length of a configured token leaks through timing. Tokens
//! are never logged and never printed by `Debug`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiState;
use super::error::ApiError;
use crate::model::{InvalidName, check_slug};

/// Why a token configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    /// A configured token is empty (or only whitespace).
    #[error("the {0} token is empty")]
    EmptyToken(String),
    /// A domain token names an invalid domain.
    #[error(transparent)]
    InvalidDomain(#[from] InvalidName),
}

type TokenDigest = [u8; 32];

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// The resolved API tokens. Cheap to clone.
#[derive(Clone, Default)]
pub struct ApiAuth {
    inner: Arc<AuthTokens>,
}

#[derive(Default)]
struct AuthTokens {
    admin: Option<TokenDigest>,
    domains: Vec<(String, TokenDigest)>,
}

impl std::fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAuth")
            .field("admin", &self.inner.admin.map(|_| "<redacted>"))
            .field(
                "domains",
                &self
                    .inner
                    .domains
                    .iter()
                    .map(|(domain, _)| domain.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What a presented token is allowed to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Every route.
    Admin,
    /// Only these domains' routes.
    Domains(Vec<String>),
}

impl Grant {
    /// Whether this grant reaches `domain`'s routes and pages.
    pub fn reaches(&self, domain: &str) -> bool {
        match self {
            Grant::Admin => true,
            Grant::Domains(domains) => domains.iter().any(|d| d == domain),
        }
    }
}

/// Which token a route needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope<'a> {
    /// No token needed (health probes, the API's description).
    Open,
    /// The admin token, or a token of this domain.
    Domain(&'a str),
    /// Any valid token; the route answers only what its [`Grant`] reaches.
    AnyToken,
    /// The admin token only.
    Admin,
}

impl ApiAuth {
    /// No tokens: the API is open.
    pub fn open() -> ApiAuth {
        ApiAuth::default()
    }

    /// Resolved secrets: the admin token, if any, and `(domain, token)`
    /// pairs. A domain may have several tokens (for rotation).
    pub fn new(
        admin: Option<String>,
        domains: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ApiAuth, AuthConfigError> {
        let admin = match admin {
            Some(token) if token.trim().is_empty() => {
                return Err(AuthConfigError::EmptyToken("admin".into()));
            }
            Some(token) => Some(digest(&token)),
            None => None,
        };
        let mut domain_tokens = Vec::new();
        for (domain, token) in domains {
            check_slug("domain", &domain)?;
            if token.trim().is_empty() {
                return Err(AuthConfigError::EmptyToken(format!("domain {domain:?}")));
            }
            domain_tokens.push((domain, digest(&token)));
        }
        Ok(ApiAuth {
            inner: Arc::new(AuthTokens {
                admin,
                domains: domain_tokens,
            }),
        })
    }

    /// True when no token is configured and every route is open.
    pub fn is_open(&self) -> bool {
        self.inner.admin.is_none() && self.inner.domains.is_empty()
    }

    /// What `token` may reach, or `None` for an unknown token. Every
    /// configured token is compared, so the time taken does not reveal
    /// which one matched.
    pub fn grant(&self, token: &str) -> Option<Grant> {
        let presented = digest(token);
        let is_admin = self
            .inner
            .admin
            .map(|admin| bool::from(admin.ct_eq(&presented)))
            .unwrap_or(false);
        let mut domains = Vec::new();
        for (domain, expected) in &self.inner.domains {
            if bool::from(expected.ct_eq(&presented)) {
                domains.push(domain.clone());
            }
        }
        if is_admin {
            Some(Grant::Admin)
        } else if domains.is_empty() {
            None
        } else {
            Some(Grant::Domains(domains))
        }
    }

    /// Decides a request: `Ok` with what the headers' token reaches when it
    /// reaches `scope`. An API without tokens grants everything; an open
    /// route called on an API with tokens grants no domain.
    pub fn check(&self, headers: &HeaderMap, scope: &Scope<'_>) -> Result<Grant, ApiError> {
        if self.is_open() {
            return Ok(Grant::Admin);
        }
        if *scope == Scope::Open {
            return Ok(Grant::Domains(Vec::new()));
        }
        let token = bearer_token(headers)?;
        let grant = self
            .grant(token)
            .ok_or_else(|| ApiError::unauthorized("the bearer token is not valid"))?;
        match (grant, scope) {
            (Grant::Admin, _) => Ok(Grant::Admin),
            (grant @ Grant::Domains(_), Scope::AnyToken) => Ok(grant),
            (grant @ Grant::Domains(_), Scope::Domain(domain)) => {
                if grant.reaches(domain) {
                    Ok(grant)
                } else {
                    Err(ApiError::forbidden(format!(
                        "this token does not reach domain {domain:?}"
                    )))
                }
            }
            (Grant::Domains(_), _) => Err(ApiError::forbidden(
                "this route needs the admin token; a domain token reaches only /v1/domains/<its domain>/",
            )),
        }
    }
}

fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token> header"))?;
    let text = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not visible ASCII"))?;
    let (scheme, token) = text.split_once(' ').ok_or_else(|| {
        ApiError::unauthorized("the Authorization header must be \"Bearer <token>\"")
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::unauthorized(
            "the Authorization scheme must be Bearer",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::unauthorized("the bearer token is empty"));
    }
    Ok(token)
}

/// Which token a request path needs. The domain is the raw path segment:
/// a percent-encoded segment never equals a slug, so it can only be refused,
/// never let through to another domain.
pub fn scope_of(path: &str) -> Scope<'_> {
    if matches!(path, "/healthz" | "/readyz" | "/v1/openapi.json") {
        return Scope::Open;
    }
    if path == "/v1/repeaters" {
        return Scope::AnyToken;
    }
    if let Some(rest) = path.strip_prefix("/v1/domains/") {
        let domain = rest.split('/').next().unwrap_or_default();
        if !domain.is_empty() {
            return Scope::Domain(domain);
        }
    }
    Scope::Admin
}

/// Middleware: refuses the request before any body is read unless its
/// token reaches the path; otherwise hands the route its [`Grant`] as a
/// request extension.
pub(crate) async fn require_token(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let scope = scope_of(request.uri().path());
    let grant = state.auth.check(request.headers(), &scope)?;
    request.extensions_mut().insert(grant);
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        map
    }

    fn auth() -> ApiAuth {
        ApiAuth::new(
            Some("admin-secret".into()),
            [
                ("acme".to_string(), "acme-secret".to_string()),
                ("acme".to_string(), "acme-rotated".to_string()),
                ("globex".to_string(), "globex-secret".to_string()),
            ],
        )
        .unwrap()
    }

    #[test]
    fn paths_map_to_scopes() {
        assert_eq!(scope_of("/healthz"), Scope::Open);
        assert_eq!(scope_of("/readyz"), Scope::Open);
        assert_eq!(scope_of("/v1/openapi.json"), Scope::Open);
        assert_eq!(scope_of("/v1/repeaters"), Scope::AnyToken);
        assert_eq!(scope_of("/v1/repeaters/x"), Scope::Admin);
        assert_eq!(scope_of("/metrics"), Scope::Admin);
        assert_eq!(scope_of("/v1/plugins/x"), Scope::Admin);
        assert_eq!(scope_of("/v1/domains/acme/events"), Scope::Domain("acme"));
        assert_eq!(scope_of("/v1/domains/acme"), Scope::Domain("acme"));
        assert_eq!(scope_of("/v1/domains/"), Scope::Admin);
        assert_eq!(scope_of("/nowhere"), Scope::Admin);
    }

    #[test]
    fn tokens_grant_what_they_were_configured_for() {
        let auth = auth();
        assert_eq!(auth.grant("admin-secret"), Some(Grant::Admin));
        assert_eq!(
            auth.grant("acme-rotated"),
            Some(Grant::Domains(vec!["acme".into()]))
        );
        assert_eq!(auth.grant("admin-secret "), None);
        assert_eq!(auth.grant(""), None);
    }

    #[test]
    fn domain_tokens_stay_in_their_domain() {
        let auth = auth();
        let acme = headers("Bearer acme-secret");
        assert!(auth.check(&acme, &Scope::Domain("acme")).is_ok());
        assert_eq!(
            auth.check(&acme, &Scope::Domain("globex"))
                .unwrap_err()
                .code,
            "forbidden"
        );
        assert_eq!(
            auth.check(&acme, &Scope::Admin).unwrap_err().code,
            "forbidden"
        );
        assert_eq!(auth.check(&acme, &Scope::Open), Ok(Grant::Domains(vec![])));
        assert_eq!(
            auth.check(&acme, &Scope::AnyToken),
            Ok(Grant::Domains(vec!["acme".into()]))
        );
        let admin = headers("bearer admin-secret");
        assert_eq!(auth.check(&admin, &Scope::AnyToken), Ok(Grant::Admin));
        assert!(auth.check(&admin, &Scope::Admin).is_ok());
        assert!(auth.check(&admin, &Scope::Domain("globex")).is_ok());
    }

    #[test]
    fn missing_or_malformed_credentials_are_unauthorized() {
        let auth = auth();
        for bad in [
            HeaderMap::new(),
            headers("Basic YWRtaW46c2VjcmV0"),
            headers("Bearer"),
            headers("Bearer    "),
            headers("Bearer nope"),
        ] {
            let err = auth.check(&bad, &Scope::Domain("acme")).unwrap_err();
            assert_eq!(err.code, "unauthorized", "{bad:?}");
        }
    }

    #[test]
    fn no_tokens_means_an_open_api() {
        let auth = ApiAuth::open();
        assert!(auth.is_open());
        assert_eq!(
            auth.check(&HeaderMap::new(), &Scope::AnyToken),
            Ok(Grant::Admin)
        );
    }

    #[test]
    fn bad_configuration_is_refused_and_debug_hides_tokens() {
        assert!(matches!(
            ApiAuth::new(Some(" ".into()), []),
            Err(AuthConfigError::EmptyToken(_))
        ));
        assert!(matches!(
            ApiAuth::new(None, [("Bad_Domain".into(), "t".into())]),
            Err(AuthConfigError::InvalidDomain(_))
        ));
        let printed = format!("{:?}", auth());
        assert!(!printed.contains("secret"), "{printed}");
        assert!(printed.contains("globex"), "{printed}");
    }
}
