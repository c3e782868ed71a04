//! Who is looking at the console. A login exchanges an API token for a
//! session: a random id in an `HttpOnly`, `SameSite=Strict` cookie (also
//! `Secure` when the request came over https through a proxy), kept in
//! memory with a server-side expiry and the token's [`Grant`]. The token
//! itself is never stored. Every state-changing form carries the session's
//! CSRF token, compared in constant time.
//!
//! With no tokens configured the console is open, like the API: there are
//! no sessions, every visitor acts as admin, and the forms carry one CSRF
//! token drawn at start (a page of another origin cannot read it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ConsoleState;
use crate::api::auth::Grant;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "repeaterd_session";
/// The cookie that carries a one-time notice to the next page.
pub const NOTICE_COOKIE: &str = "repeaterd_notice";
/// The most sessions kept; the oldest goes first beyond it.
const MAX_SESSIONS: usize = 10_000;

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

type SessionKey = [u8; 32];

fn key_of(id: &str) -> SessionKey {
    Sha256::digest(id.as_bytes()).into()
}

struct Session {
    grant: Grant,
    csrf: String,
    expires_at: Instant,
}

/// The console's sessions, in memory: a restart logs everyone out.
pub struct Sessions {
    ttl: Duration,
    open_csrf: String,
    live: Mutex<HashMap<SessionKey, Session>>,
}

impl Sessions {
    /// Sessions that last `ttl`.
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            open_csrf: random_hex(),
            live: Mutex::new(HashMap::new()),
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Starts a session for `grant`; returns its id (the cookie value).
    pub fn start(&self, grant: Grant) -> String {
        let id = random_hex();
        let now = Instant::now();
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, session| session.expires_at > now);
        if live.len() >= MAX_SESSIONS
            && let Some(oldest) = live
                .iter()
                .min_by_key(|(_, session)| session.expires_at)
                .map(|(key, _)| *key)
        {
            live.remove(&oldest);
        }
        live.insert(
            key_of(&id),
            Session {
                grant,
                csrf: random_hex(),
                expires_at: now + self.ttl,
            },
        );
        id
    }

    /// The grant and CSRF token of a live session.
    fn find(&self, id: &str) -> Option<(Grant, String)> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let session = live.get(&key_of(id))?;
        (session.expires_at > Instant::now()).then(|| (session.grant.clone(), session.csrf.clone()))
    }

    /// Ends a session.
    pub fn end(&self, id: &str) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.remove(&key_of(id));
    }
}

/// A cookie's value in a request.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Whether the browser reached us over https (through a TLS proxy).
fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value for a console cookie; `None` clears it.
pub fn set_cookie(
    headers: &HeaderMap,
    name: &str,
    value: Option<&str>,
    max_age: Duration,
) -> HeaderValue {
    let secure = if over_https(headers) { "; Secure" } else { "" };
    let text = match value {
        Some(value) => format!(
            "{name}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            max_age.as_secs()
        ),
        None => format!("{name}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The visitor of a console page: what they may reach and the CSRF token
/// their forms carry. Extracting it sends a visitor without a live session
/// to the login page, and back here after it.
#[derive(Clone)]
pub struct Viewer {
    /// What the visitor's token reaches.
    pub grant: Grant,
    /// The token every form of theirs must carry.
    pub csrf: String,
    /// True when no tokens are configured and the console is open.
    pub open: bool,
    /// A notice left by the previous action, shown once.
    pub notice: Option<String>,
    /// The id of their session (none on an open console).
    pub session: Option<String>,
}

impl Viewer {
    /// Whether the visitor reaches `domain`.
    pub fn reaches(&self, domain: &str) -> bool {
        self.grant.reaches(domain)
    }

    /// Whether the visitor holds the admin token (or the console is open).
    pub fn is_admin(&self) -> bool {
        self.grant == Grant::Admin
    }

    /// The domains the visitor reaches: `None` for all.
    pub fn domains(&self) -> Option<&[String]> {
        match &self.grant {
            Grant::Admin => None,
            Grant::Domains(domains) => Some(domains),
        }
    }

    /// Whether `presented` is this visitor's CSRF token.
    pub fn csrf_matches(&self, presented: &str) -> bool {
        bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// Where a visitor without a session goes: the login page, with the page
/// they asked for to come back to.
pub fn to_login(parts: &Parts) -> Response {
    let wanted = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/ui");
    let next: String = form_urlencoded::byte_serialize(wanted.as_bytes()).collect();
    let mut response = Redirect::to(&format!("/ui/login?next={next}")).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&parts.headers, SESSION_COOKIE, None, Duration::ZERO),
    );
    response
}

impl FromRequestParts<ConsoleState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Viewer, Response> {
        let notice = cookie(&parts.headers, NOTICE_COOKIE).map(|text| {
            form_urlencoded::parse(format!("n={text}").as_bytes())
                .next()
                .map(|(_, value)| value.into_owned())
                .unwrap_or_default()
        });
        if state.api.auth.is_open() {
            return Ok(Viewer {
                grant: Grant::Admin,
                csrf: state.sessions.open_csrf.clone(),
                open: true,
                notice,
                session: None,
            });
        }
        let Some(id) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login(parts));
        };
        let Some((grant, csrf)) = state.sessions.find(id) else {
            return Err(to_login(parts));
        };
        Ok(Viewer {
            grant,
            csrf,
            open: false,
            notice,
            session: Some(id.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_until_its_ttl_and_ends_on_logout() {
        let sessions = Sessions::new(Duration::from_millis(50));
        let id = sessions.start(Grant::Domains(vec!["acme".into()]));
        let (grant, csrf) = sessions.find(&id).expect("live");
        assert_eq!(grant, Grant::Domains(vec!["acme".into()]));
        assert_eq!(csrf.len(), 64);
        assert!(sessions.find("made-up").is_none());
        std::thread::sleep(Duration::from_millis(80));
        assert!(sessions.find(&id).is_none(), "expired");
        let id = sessions.start(Grant::Admin);
        sessions.end(&id);
        assert!(sessions.find(&id).is_none(), "logged out");
    }

    #[test]
    fn cookies_are_read_by_name_and_written_strict() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; repeaterd_session=abc; b=2"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
        let set = set_cookie(&headers, SESSION_COOKIE, Some("x"), Duration::from_secs(60));
        let text = set.to_str().unwrap();
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Strict"));
        assert!(!text.contains("Secure"), "plain http");
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let set = set_cookie(&headers, SESSION_COOKIE, Some("x"), Duration::from_secs(60));
        assert!(set.to_str().unwrap().ends_with("; Secure"));
    }

    #[test]
    fn a_domain_viewer_reaches_only_its_domains() {
        let viewer = Viewer {
            grant: Grant::Domains(vec!["acme".into()]),
            csrf: "t".repeat(64),
            open: false,
            notice: None,
            session: None,
        };
        assert!(viewer.reaches("acme"));
        assert!(!viewer.reaches("globex"));
        assert!(!viewer.is_admin());
        assert!(viewer.csrf_matches(&"t".repeat(64)));
        assert!(!viewer.csrf_matches("t"));
    }
}
