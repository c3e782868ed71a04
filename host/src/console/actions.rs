//! The console's actions: pause, resume and requeue a repeater; resend or
//! cancel a record; resend or cancel a failure group (after a page that
//! says what it will touch); upload a plugin. Each is a POST that carries
//! the session's CSRF token and answers with a redirect to the page it came
//! from, which then shows what was done once.

use std::time::Duration;

use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::pages::{check_domain, find_repeater};
use super::session::{NOTICE_COOKIE, Viewer, set_cookie};
use super::view::count;
use super::{ConsoleError, ConsoleState, Page};
use crate::api::plugins::install_error;
use crate::model::{check_slug, now_millis};
use crate::store::FailureGroup;

/// Refuses a form whose CSRF token is missing or not the session's.
pub(super) fn check_csrf(viewer: &Viewer, presented: Option<&str>) -> Result<(), ConsoleError> {
    match presented {
        Some(token) if viewer.csrf_matches(token) => Ok(()),
        _ => Err(ConsoleError::forbidden(
            "This form is missing its CSRF token, or the token belongs to another session. \
             Reload the page and try again.",
        )),
    }
}

/// A redirect to `to` that shows `notice` there once.
fn done(to: &str, notice: &str, headers: &HeaderMap) -> Response {
    let encoded: String = form_urlencoded::byte_serialize(notice.as_bytes()).collect();
    let mut response = Redirect::to(to).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(
            headers,
            NOTICE_COOKIE,
            Some(&encoded),
            Duration::from_secs(60),
        ),
    );
    response
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    csrf: Option<String>,
}

/// `POST /ui/domains/{domain}/repeaters/{name}/{pause|resume|requeue}`.
pub(super) async fn repeater(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path((domain, name, action)): Path<(String, String, String)>,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    check_csrf(&viewer, form.csrf.as_deref())?;
    find_repeater(&state, &viewer, &domain, &name).await?;
    let store = &state.api.store;
    let now = now_millis();
    let notice = match action.as_str() {
        "pause" | "resume" => {
            let paused = action == "pause";
            store
                .set_paused(&domain, &name, paused, now)
                .await
                .map_err(|e| ConsoleError::store("pausing or resuming", e))?;
            format!(
                "{domain}/{name} is {}.",
                if paused { "paused" } else { "resumed" }
            )
        }
        "requeue" => {
            let moved = store
                .requeue(&domain, &name, now)
                .await
                .map_err(|e| ConsoleError::store("requeueing", e))?;
            format!(
                "{domain}/{name}: {} records back to pending, backoff cleared.",
                count(moved as i64)
            )
        }
        other => {
            return Err(ConsoleError::not_found(format!(
                "There is no repeater action {other:?}."
            )));
        }
    };
    let back = headers
        .get(header::REFERER)
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.find("/ui/").map(|at| r[at..].to_owned()))
        .map(|path| super::safe_next(Some(&path)))
        .unwrap_or_else(|| format!("/ui/domains/{domain}/repeaters/{name}"));
    Ok(done(&back, &notice, &headers))
}

#[derive(Deserialize)]
pub(super) struct PinForm {
    csrf: Option<String>,
    /// The version to pin; empty to follow the newest again.
    sha256: Option<String>,
}

/// `POST /ui/domains/{domain}/repeaters/{name}/plugin`: pins the repeater
/// to a kept version of its plugin, or (empty `sha256`) lets it follow the
/// newest again. The change is checked against that version's
/// `validate-config` before it is stored, as the API's `PUT` does.
pub(super) async fn pin(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path((domain, name)): Path<(String, String)>,
    axum::Form(form): axum::Form<PinForm>,
) -> Result<Response, ConsoleError> {
    check_csrf(&viewer, form.csrf.as_deref())?;
    let row = find_repeater(&state, &viewer, &domain, &name).await?;
    let Some(catalog) = &state.api.plugins else {
        return Err(ConsoleError::not_found(
            "This daemon has no plugin catalogue.",
        ));
    };
    let pin = form
        .sha256
        .map(|sha| sha.trim().to_ascii_lowercase())
        .filter(|sha| !sha.is_empty());
    if let Some(sha) = &pin
        && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ConsoleError::bad_request(format!(
            "sha256: {sha:?} is not the 64 hex digits of a plugin version."
        )));
    }
    let mut spec = row.spec;
    spec.plugin_sha256 = pin.clone();
    catalog
        .validate_repeater(
            &domain,
            &name,
            &spec.plugin,
            spec.plugin_sha256.as_deref(),
            &spec.plugin_config,
        )
        .await
        .map_err(|why| {
            ConsoleError::bad_request(format!(
                "{domain}/{name} was not changed: plugin {:?} refused it: {why}",
                spec.plugin
            ))
        })?;
    state
        .api
        .store
        .upsert_repeater(&spec, now_millis())
        .await
        .map_err(|e| ConsoleError::store("storing the repeater", e))?;
    let notice = match &pin {
        Some(sha) => format!(
            "{domain}/{name} is pinned to {} of {}.",
            &sha[..12],
            spec.plugin
        ),
        None => format!(
            "{domain}/{name} follows the newest version of {} again.",
            spec.plugin
        ),
    };
    tracing::info!(%domain, repeater = %name, pin = ?pin, "repeater's plugin pin changed in the console");
    Ok(done(
        &format!("/ui/domains/{domain}/repeaters/{name}"),
        &notice,
        &headers,
    ))
}

/// The failure group a bulk action names.
#[derive(Deserialize)]
pub(super) struct GroupQuery {
    error: Option<String>,
}

/// What a bulk action does to a failure group.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GroupAction {
    Resend,
    Cancel,
}

impl GroupAction {
    /// The action named by the URL's last segment.
    fn parse(action: &str) -> Result<GroupAction, ConsoleError> {
        match action {
            "resend" => Ok(GroupAction::Resend),
            "cancel" => Ok(GroupAction::Cancel),
            other => Err(ConsoleError::not_found(format!(
                "There is no failure group action {other:?}."
            ))),
        }
    }

    fn segment(self) -> &'static str {
        match self {
            GroupAction::Resend => "resend",
            GroupAction::Cancel => "cancel",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            GroupAction::Resend => "Resend",
            GroupAction::Cancel => "Cancel",
        }
    }

    fn done(self) -> &'static str {
        match self {
            GroupAction::Resend => "Resent",
            GroupAction::Cancel => "Cancelled",
        }
    }

    /// What happens to the records it touches.
    fn effect(self) -> &'static str {
        match self {
            GroupAction::Resend => "put back to pending, due now",
            GroupAction::Cancel => "cancelled (only those still retrying)",
        }
    }

    /// How many records of `group` it touches.
    fn touches(self, group: &FailureGroup) -> i64 {
        match self {
            GroupAction::Resend => group.count,
            GroupAction::Cancel => group.retrying,
        }
    }
}

/// `GET .../failures/{resend|cancel}?error=...`: what the bulk action will
/// touch, and the button that does it.
pub(super) async fn confirm_group(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Path((domain, name, action)): Path<(String, String, String)>,
    Query(query): Query<GroupQuery>,
) -> Result<Page, ConsoleError> {
    let action = GroupAction::parse(&action)?;
    let (verb, effect) = (action.verb(), action.effect());
    find_repeater(&state, &viewer, &domain, &name).await?;
    let error = query.error.unwrap_or_default();
    let groups = state
        .api
        .store
        .failure_groups(&domain, &name, u32::MAX)
        .await
        .map_err(|e| ConsoleError::store("grouping failures", e))?;
    let group = groups.iter().find(|g| g.error == error).ok_or_else(|| {
        ConsoleError::not_found(format!(
            "{domain}/{name} has no failures with the last error {error:?} any more."
        ))
    })?;
    let touched = action.touches(group);
    let base = format!("/ui/domains/{domain}/repeaters/{name}");
    let body = html! {
        p {
            (verb) " " strong id="group-count" { (count(touched)) } " records of " (domain) "/" (name) " whose last error is:"
        }
        pre { (if error.is_empty() { "(none)" } else { error.as_str() }) }
        p { "They will be " (effect) ". Their attempts stay in their history." }
        div.actions {
            form.inline method="post" action={ (base) "/failures/" (action.segment()) } {
                input type="hidden" name="csrf" value=(viewer.csrf);
                input type="hidden" name="error" value=(error);
                button.primary type="submit" id="confirm" { (verb) " " (count(touched)) " records" }
            }
            a.button href=(base) { "Back" }
        }
    };
    Ok(
        Page::new(viewer, format!("{verb} a failure group?"), body).crumbs(vec![
            ("Overview".into(), "/ui".into()),
            (domain.clone(), format!("/ui/domains/{domain}")),
            (name.clone(), base),
        ]),
    )
}

#[derive(Deserialize)]
pub(super) struct GroupForm {
    csrf: Option<String>,
    error: Option<String>,
}

/// `POST .../failures/{resend|cancel}`: the bulk action itself.
pub(super) async fn group(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path((domain, name, action)): Path<(String, String, String)>,
    axum::Form(form): axum::Form<GroupForm>,
) -> Result<Response, ConsoleError> {
    check_csrf(&viewer, form.csrf.as_deref())?;
    let action = GroupAction::parse(&action)?;
    find_repeater(&state, &viewer, &domain, &name).await?;
    let error = form.error.unwrap_or_default();
    let store = &state.api.store;
    let now = now_millis();
    let moved = match action {
        GroupAction::Resend => store.resend_failures(&domain, &name, &error, now).await,
        GroupAction::Cancel => store.cancel_failures(&domain, &name, &error, now).await,
    }
    .map_err(|e| ConsoleError::store("acting on a failure group", e))?;
    Ok(done(
        &format!("/ui/domains/{domain}/repeaters/{name}"),
        &format!("{} {} records.", action.done(), count(moved as i64)),
        &headers,
    ))
}

/// `POST /ui/domains/{domain}/records/{id}/{resend|cancel}`.
pub(super) async fn record(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path((domain, id, action)): Path<(String, String, String)>,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    check_csrf(&viewer, form.csrf.as_deref())?;
    check_domain(&viewer, &domain)?;
    let missing =
        || ConsoleError::not_found(format!("There is no record {id} in domain {domain}."));
    let id: i64 = id.parse().map_err(|_| missing())?;
    let store = &state.api.store;
    let now = now_millis();
    let found = match action.as_str() {
        "resend" => store.resend(&domain, id, now).await,
        "cancel" => store.cancel(&domain, id, now).await,
        other => {
            return Err(ConsoleError::not_found(format!(
                "There is no record action {other:?}."
            )));
        }
    }
    .map_err(|e| ConsoleError::store("changing the record", e))?;
    if !found {
        return Err(missing());
    }
    let notice = if action == "resend" {
        format!("Record #{id} is pending again.")
    } else {
        format!("Record #{id} is cancelled.")
    };
    Ok(done(
        &format!("/ui/domains/{domain}/records/{id}"),
        &notice,
        &headers,
    ))
}

/// `POST /ui/plugins` (multipart: `csrf`, `name`, `component`).
pub(super) async fn upload(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    mut form: Multipart,
) -> Result<Response, ConsoleError> {
    if !viewer.is_admin() {
        return Err(ConsoleError::forbidden(
            "Uploading a plugin needs the admin token.",
        ));
    }
    let unreadable =
        |e: axum::extract::multipart::MultipartError| ConsoleError::bad_request(e.body_text());
    let (mut csrf, mut name, mut bytes) = (None, None, None);
    while let Some(field) = form.next_field().await.map_err(unreadable)? {
        match field.name() {
            Some("csrf") => csrf = Some(field.text().await.map_err(unreadable)?),
            Some("name") => name = Some(field.text().await.map_err(unreadable)?),
            Some("component") => bytes = Some(field.bytes().await.map_err(unreadable)?),
            _ => {}
        }
    }
    check_csrf(&viewer, csrf.as_deref())?;
    let name = name.unwrap_or_default();
    check_slug("plugin", &name).map_err(|e| ConsoleError::bad_request(e.to_string()))?;
    let bytes = bytes
        .filter(|b| !b.is_empty())
        .ok_or_else(|| ConsoleError::bad_request("Choose a component file to upload."))?;
    let Some(catalog) = &state.api.plugins else {
        return Err(ConsoleError::not_found(
            "This daemon has no plugin catalogue.",
        ));
    };
    let info = catalog
        .install(&name, bytes.to_vec())
        .await
        .map_err(|error| ConsoleError::from(install_error(&name, error)))?;
    Ok(done(
        "/ui/plugins",
        &format!(
            "Plugin {} loaded ({}).",
            info.name,
            info.sha256.as_deref().map_or("", |s| &s[..s.len().min(12)])
        ),
        &headers,
    ))
}
