//! The operator console: server-rendered pages at `/ui` on the API's
//! listener, over the same store, metrics and plugin catalogue as the API.
//!
//! Pages: the overview (every domain's backlog and last quarter hour, what
//! needs attention, the daemon's health), a domain (its repeaters), a
//! repeater (its records and its failures grouped by last error, with bulk
//! resend and cancel), a record (its event and every attempt) and the
//! plugins. Every page has a stable URL; the few that change on their own
//! refresh themselves every 2 s through `console.js`, which swaps only the
//! parts marked `data-live`.
//!
//! Access follows the API's tokens ([`session`]): a domain token's session
//! reaches its domains in pages and actions alike, checked on every request,
//! URLs typed by hand included. State changes are POSTs that carry the
//! session's CSRF token; bulk actions show what they will touch and ask
//! first. Everything the pages need (style, script) is embedded in the
//! binary and served from `/ui/assets`, so the console works offline and
//! its Content-Security-Policy allows nothing from elsewhere.
//!
//! Cost: a page reads bounded index ranges only (record pages by id,
//! backlog counts per repeater on the state index, failure groups over the
//! newest failures); deliveries per minute and latency come from the
//! in-memory [`History`](crate::telemetry::History), never a scan.

mod actions;
mod pages;
pub mod session;
mod view;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use tokio::sync::watch;

use crate::api::auth::Grant;
use crate::api::{ApiError, ApiState};
use crate::config::DispatchConfig;
use session::{NOTICE_COOKIE, SESSION_COOKIE, Sessions, Viewer, set_cookie};

const STYLE: &str = include_str!("assets/console.css");
const SCRIPT: &str = include_str!("assets/console.js");

/// Everything the console's routes need. Cheap to clone.
#[derive(Clone)]
pub struct ConsoleState {
    /// The API's state: store, metrics, tokens, plugin catalogue, limits.
    pub api: ApiState,
    /// The logged-in sessions.
    pub sessions: Arc<Sessions>,
    /// This process's lease holder name, to tell its leases from others'.
    pub holder: String,
    /// The dispatch defaults, for the limits a repeater does not set.
    pub dispatch: watch::Receiver<Arc<DispatchConfig>>,
}

impl ConsoleState {
    /// A console over `api` whose logins last `session_ttl`.
    pub fn new(
        api: ApiState,
        session_ttl: Duration,
        holder: String,
        dispatch: watch::Receiver<Arc<DispatchConfig>>,
    ) -> ConsoleState {
        ConsoleState {
            api,
            sessions: Arc::new(Sessions::new(session_ttl)),
            holder,
            dispatch,
        }
    }
}

/// The console's routes, all under `/ui`. Merge it with the API's router.
pub fn router(state: ConsoleState) -> Router {
    let upload_limit = state.api.limits.max_plugin_bytes + 64 * 1024;
    Router::new()
        .route("/ui", get(pages::overview))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/assets/console.css", get(style))
        .route("/ui/assets/console.js", get(script))
        .route("/ui/domains/{domain}", get(pages::domain))
        .route(
            "/ui/domains/{domain}/repeaters/{name}",
            get(pages::repeater),
        )
        .route(
            "/ui/domains/{domain}/repeaters/{name}/{action}",
            post(actions::repeater),
        )
        .route(
            "/ui/domains/{domain}/repeaters/{name}/plugin",
            post(actions::pin),
        )
        .route(
            "/ui/domains/{domain}/repeaters/{name}/failures/{action}",
            get(actions::confirm_group).post(actions::group),
        )
        .route("/ui/domains/{domain}/records/{id}", get(pages::record))
        .route(
            "/ui/domains/{domain}/records/{id}/{action}",
            post(actions::record),
        )
        .route(
            "/ui/plugins",
            get(pages::plugins)
                .post(actions::upload)
                .layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/ui/{*rest}", get(not_found).post(not_found))
        .with_state(state)
}

/// A page the console failed to show, shown as a page of its own.
#[derive(Debug)]
pub struct ConsoleError {
    status: StatusCode,
    message: String,
}

impl ConsoleError {
    fn new(status: StatusCode, message: impl Into<String>) -> ConsoleError {
        ConsoleError {
            status,
            message: message.into(),
        }
    }

    /// 404: what was asked for does not exist.
    pub fn not_found(message: impl Into<String>) -> ConsoleError {
        ConsoleError::new(StatusCode::NOT_FOUND, message)
    }

    /// 403: the session does not reach it.
    pub fn forbidden(message: impl Into<String>) -> ConsoleError {
        ConsoleError::new(StatusCode::FORBIDDEN, message)
    }

    /// 400: the request itself was wrong.
    pub fn bad_request(message: impl Into<String>) -> ConsoleError {
        ConsoleError::new(StatusCode::BAD_REQUEST, message)
    }

    /// A store failure while `doing` something, with the status and
    /// message the API gives the same failure (and its logging).
    pub fn store(doing: &str, error: crate::store::StoreError) -> ConsoleError {
        ConsoleError::from(ApiError::from_store(doing, error))
    }

    /// The page's heading.
    fn title(&self) -> &'static str {
        match self.status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::BAD_REQUEST => "Bad request",
            StatusCode::CONFLICT => "Not possible now",
            StatusCode::UNPROCESSABLE_ENTITY => "Not accepted",
            StatusCode::SERVICE_UNAVAILABLE => "Store unavailable",
            StatusCode::INSUFFICIENT_STORAGE => "Store full",
            _ => "Something failed",
        }
    }
}

/// The API's answer to a failure, shown as a page.
impl From<ApiError> for ConsoleError {
    fn from(error: ApiError) -> ConsoleError {
        ConsoleError::new(error.status, error.message)
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let body = html! {
            div.error-box {
                p { (self.message) }
                p { a href="/ui" { "Back to the overview" } }
            }
        };
        let mut response = document(self.title(), None, &[], body, false).into_response();
        *response.status_mut() = self.status;
        response
    }
}

/// A console page: its title, breadcrumbs, body, and whether it refreshes
/// itself.
pub struct Page {
    title: String,
    crumbs: Vec<(String, String)>,
    body: Markup,
    refresh: bool,
    viewer: Viewer,
}

impl Page {
    /// A page for `viewer`.
    pub fn new(viewer: Viewer, title: impl Into<String>, body: Markup) -> Page {
        Page {
            title: title.into(),
            crumbs: Vec::new(),
            body,
            refresh: false,
            viewer,
        }
    }

    /// Breadcrumbs above the title: `(text, href)`.
    pub fn crumbs(mut self, crumbs: Vec<(String, String)>) -> Page {
        self.crumbs = crumbs;
        self
    }

    /// Refresh the `data-live` parts every 2 s.
    pub fn live(mut self) -> Page {
        self.refresh = true;
        self
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let body = html! {
            @if let Some(notice) = &self.viewer.notice {
                div.notice role="status" { (notice) }
            }
            (self.body)
        };
        let had_notice = self.viewer.notice.is_some();
        let mut response = document(
            &self.title,
            Some(&self.viewer),
            &self.crumbs,
            body,
            self.refresh,
        )
        .into_response();
        if had_notice {
            response.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(&HeaderMap::new(), NOTICE_COOKIE, None, Duration::ZERO),
            );
        }
        response
    }
}

/// The HTML document around a page's body.
fn document(
    title: &str,
    viewer: Option<&Viewer>,
    crumbs: &[(String, String)],
    body: Markup,
    refresh: bool,
) -> HtmlPage {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · repeaterd" }
                link rel="stylesheet" href="/ui/assets/console.css";
                script src="/ui/assets/console.js" defer {}
            }
            body {
                @if viewer.is_some_and(|v| v.open) {
                    div.banner role="note" {
                        strong { "Open console. " }
                        "No API tokens are configured, so anyone who can reach this address can see and change everything. "
                        "Set security.admin_token_env to require a login."
                    }
                }
                header.top {
                    a.brand href="/ui" { "repeaterd" }
                    @if let Some(viewer) = viewer {
                        nav {
                            a href="/ui" { "Overview" }
                            @if let Some(domains) = viewer.domains() {
                                @for domain in domains {
                                    a href={ "/ui/domains/" (domain) } { (domain) }
                                }
                            }
                            @if viewer.is_admin() {
                                a href="/ui/plugins" { "Plugins" }
                            }
                        }
                        div.who {
                            span { (who(viewer)) }
                            @if !viewer.open {
                                form.inline method="post" action="/ui/logout" {
                                    input type="hidden" name="csrf" value=(viewer.csrf);
                                    button type="submit" id="logout" { "Log out" }
                                }
                            }
                        }
                    }
                }
                main data-refresh=[refresh.then_some("2")] {
                    @if !crumbs.is_empty() {
                        div.crumbs {
                            @for (i, (text, href)) in crumbs.iter().enumerate() {
                                @if i > 0 { " / " }
                                a href=(href) { (text) }
                            }
                        }
                    }
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    HtmlPage(markup)
}

fn who(viewer: &Viewer) -> String {
    match (&viewer.grant, viewer.open) {
        (_, true) => "open".into(),
        (Grant::Admin, false) => "admin".into(),
        (Grant::Domains(domains), false) => format!("domain {}", domains.join(", ")),
    }
}

/// An HTML answer with the console's security headers.
struct HtmlPage(Markup);

impl IntoResponse for HtmlPage {
    fn into_response(self) -> Response {
        let mut response = self.0.into_string().into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        secure_headers(headers);
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

fn secure_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    secure_headers(headers);
    response
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// Unknown console paths: a 404 page, after the login like every page, so
/// the console's layout is not shown to visitors without a session.
async fn not_found(_viewer: Viewer) -> Response {
    ConsoleError::not_found("There is no console page at this address.").into_response()
}

/// Where a form may send the browser after it: a console path, never
/// another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(next)
            if (next == "/ui" || next.starts_with("/ui/") || next.starts_with("/ui?"))
                && !next.contains("//")
                && !next.contains('\\') =>
        {
            next.to_owned()
        }
        _ => "/ui".to_owned(),
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_form(
    State(state): State<ConsoleState>,
    Query(query): Query<LoginQuery>,
) -> Response {
    if state.api.auth.is_open() {
        return Redirect::to("/ui").into_response();
    }
    login_page(&safe_next(query.next.as_deref()), None, StatusCode::OK)
}

fn login_page(next: &str, error: Option<&str>, status: StatusCode) -> Response {
    let body = html! {
        @if let Some(error) = error {
            div.error-box role="alert" { (error) }
        }
        form.login method="post" action="/ui/login" {
            input type="hidden" name="next" value=(next);
            label {
                "API token (admin, or a domain's)"
                input type="password" name="token" id="token" autocomplete="current-password" required autofocus;
            }
            button.primary type="submit" id="login" { "Log in" }
        }
        p.muted { "The token is checked once and not kept; the session lasts until you log out or it expires." }
    };
    let mut response = document("Log in", None, &[], body, false).into_response();
    *response.status_mut() = status;
    response
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    if state.api.auth.is_open() {
        return Redirect::to(&next).into_response();
    }
    let Some(grant) = state.api.auth.grant(form.token.trim()) else {
        return login_page(
            &next,
            Some("That token is not valid."),
            StatusCode::UNAUTHORIZED,
        );
    };
    let id = state.sessions.start(grant);
    let mut response = Redirect::to(&next).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&headers, SESSION_COOKIE, Some(&id), state.sessions.ttl()),
    );
    response
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

async fn logout(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    actions::check_csrf(&viewer, form.csrf.as_deref())?;
    if let Some(id) = &viewer.session {
        state.sessions.end(id);
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&headers, SESSION_COOKIE, None, Duration::ZERO),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_form_the_browser_stays_in_the_console() {
        assert_eq!(safe_next(Some("/ui/domains/acme")), "/ui/domains/acme");
        assert_eq!(safe_next(Some("/ui?x=1")), "/ui?x=1");
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/ui//evil.example",
            "/ui/\\evil",
            "/v1/repeaters",
            "/uievil",
        ] {
            assert_eq!(safe_next(Some(bad)), "/ui", "{bad}");
        }
        assert_eq!(safe_next(None), "/ui");
    }
}
