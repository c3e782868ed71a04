//! Event ingest: `POST /v1/domains/{domain}/events` and
//! `POST /v1/domains/{domain}/events/batch`.
//!
//! An event is `{"type", "payload" (any JSON) | "body" (string) +
//! "content_type", "id"?, "ordering_key"?}`. The first post of an event
//! answers 202 with its records; posting the same `id` again answers 200
//! with the first answer and creates nothing (`"created": false`).
//! A batch is all or nothing: the first invalid event (by index and field)
//! refuses the whole batch before anything is stored.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use super::ApiState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiPath, DomainPath, decode_object_at, is_json_media_type, json_body};
use crate::model::{NewEvent, now_millis};
use crate::store::{Ingested, IngestedRecord};

/// Longest event type, id, ordering key or content type, in bytes.
const MAX_TEXT_FIELD: usize = 255;

/// One event as posted: `payload` (any JSON) or `body` (a string) with
/// `content_type`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    /// The event's type; repeaters subscribe by it.
    #[serde(rename = "type")]
    #[schema(example = "case.created", min_length = 1, max_length = 255)]
    pub event_type: String,
    /// A JSON payload, stored byte for byte as posted (key order, number
    /// spelling and spacing kept). `null` is a payload.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub payload: Option<Box<RawValue>>,
    /// A text payload; needs `content_type`.
    #[serde(default)]
    pub body: Option<String>,
    /// Media type of the payload; defaults to `application/json` for `payload`.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Idempotency key: the same id again in this domain answers the first
    /// answer and creates nothing. The host makes one when it is absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Ordering key, for repeaters with `ordering = "key"`.
    #[serde(default)]
    pub ordering_key: Option<String>,
}

/// Keeps an explicit `"payload": null` apart from a missing payload.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(deserializer).map(Some)
}

/// A batch as posted; each event is decoded on its own so errors can name
/// its index.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchInput {
    /// The events, at most the configured batch size (default 1000).
    #[schema(value_type = Vec<EventInput>)]
    pub events: Vec<Box<RawValue>>,
}

/// The answer for one event.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventAnswer {
    /// The event id (the producer's, or the one the host made).
    pub event_id: String,
    /// False when the id was seen before and nothing was created.
    pub created: bool,
    /// One record per subscribed repeater.
    pub records: Vec<RecordRef>,
}

/// A record made for an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordRef {
    /// The record's id.
    pub id: i64,
    /// The repeater it is for.
    pub repeater: String,
}

impl From<IngestedRecord> for RecordRef {
    fn from(record: IngestedRecord) -> RecordRef {
        RecordRef {
            id: record.id,
            repeater: record.repeater,
        }
    }
}

impl From<Ingested> for EventAnswer {
    fn from(ingested: Ingested) -> Self {
        EventAnswer {
            event_id: ingested.event_id,
            created: ingested.created,
            records: ingested.records.into_iter().map(RecordRef::from).collect(),
        }
    }
}

/// The answer for a batch, in the order posted.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchAnswer {
    /// One answer per event.
    pub events: Vec<EventAnswer>,
}

fn check_text(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{field}: must not be empty (omit it instead)"));
    }
    if value.len() > MAX_TEXT_FIELD {
        return Err(format!(
            "{field}: longer than {MAX_TEXT_FIELD} bytes ({} bytes)",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field}: must not contain control characters"));
    }
    Ok(())
}

/// Turns a posted event into a [`NewEvent`]; `Err` names the field, prefixed
/// by `at` (for example `events[3].`).
pub fn to_new_event(input: EventInput, at: &str) -> Result<NewEvent, String> {
    check_text(&format!("{at}type"), &input.event_type)?;
    if let Some(id) = &input.id {
        check_text(&format!("{at}id"), id)?;
    }
    if let Some(key) = &input.ordering_key {
        check_text(&format!("{at}ordering_key"), key)?;
    }
    if let Some(content_type) = &input.content_type {
        let field = format!("{at}content_type");
        check_text(&field, content_type)?;
        if !content_type.contains('/') {
            return Err(format!(
                "{field}: {content_type:?} is not a media type (type/subtype)"
            ));
        }
    }
    let (content_type, payload) = match (input.payload, input.body) {
        (Some(_), Some(_)) => {
            return Err(format!("{at}body: give either payload or body, not both"));
        }
        (None, None) => {
            return Err(format!(
                "{at}payload: missing; give payload (JSON) or body (string) with content_type"
            ));
        }
        (Some(payload), None) => {
            let content_type = input
                .content_type
                .unwrap_or_else(|| "application/json".to_owned());
            if !is_json_media_type(&content_type) {
                return Err(format!(
                    "{at}content_type: {content_type:?} does not describe a JSON payload; send a string in body instead"
                ));
            }
            (content_type, payload.get().as_bytes().to_vec())
        }
        (None, Some(body)) => {
            let content_type = input
                .content_type
                .ok_or_else(|| format!("{at}content_type: required with body"))?;
            (content_type, body.into_bytes())
        }
    };
    Ok(NewEvent {
        id: input.id,
        event_type: input.event_type,
        content_type,
        payload,
        ordering_key: input.ordering_key,
    })
}

/// Stores checked events, once the ingest gate has room for them, and
/// counts what was created.
async fn ingest_events(
    state: &ApiState,
    domain: &str,
    events: Vec<NewEvent>,
) -> Result<Vec<Ingested>, ApiError> {
    let _room = (state.ingest_gate)
        .admit(domain, events.len(), &state.metrics)
        .await?;
    let ingested = state
        .store
        .ingest(domain, &events, now_millis())
        .await
        .map_err(|err| ApiError::from_store("ingest", err))?;
    let created_events = ingested.iter().filter(|event| event.created).count();
    let created_records: usize = ingested
        .iter()
        .filter(|event| event.created)
        .map(|event| event.records.len())
        .sum();
    if created_events > 0 {
        state
            .metrics
            .ingested(domain, created_events, created_records);
    }
    Ok(ingested)
}

fn count_refusal<T>(state: &ApiState, result: Result<T, ApiError>) -> Result<T, ApiError> {
    if let Err(err) = &result
        && err.status.is_client_error()
    {
        state.metrics.ingest_refused();
    }
    result
}

/// Posts one event.
///
/// Every repeater of the domain that subscribes to the event's type gets a
/// record. An event whose `id` was posted before answers the first answer
/// with `"created": false` and creates nothing.
#[utoipa::path(
    post,
    path = "/v1/domains/{domain}/events",
    tag = "events",
    params(DomainPath),
    request_body(content = EventInput, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored, with one record per subscribed repeater", body = EventAnswer),
        (status = 200, description = "An event with this id was posted before: the first answer; nothing was created", body = EventAnswer),
        (status = 400, description = "Malformed JSON, a field of the wrong type, an unknown field or a bad domain name", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "A field's value is refused (the message names it)", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
        (status = 503, description = "Pushed back: too many posted events are waiting to be stored (`overloaded`), or the database cannot answer now (`unavailable`); nothing was stored, post again after `Retry-After`", body = ErrorBody),
        (status = 507, description = "The database has no room left; nothing was stored", body = ErrorBody),
    )
)]
pub async fn post_event(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<DomainPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<EventAnswer>), ApiError> {
    let result = async {
        path.check()?;
        let domain = &path.domain;
        let input: EventInput = json_body(&headers, body, state.limits.max_body_bytes)?;
        let event = to_new_event(input, "").map_err(ApiError::invalid)?;
        let mut ingested = ingest_events(&state, domain, vec![event]).await?;
        let first = ingested.pop().ok_or_else(|| {
            ApiError::internal(
                "ingest",
                &std::io::Error::other("the store answered no event for one posted"),
            )
        })?;
        let status = if first.created {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        Ok((status, Json(EventAnswer::from(first))))
    }
    .await;
    count_refusal(&state, result)
}

/// Posts a batch of events, all or nothing.
///
/// The first invalid event (named by its index and field) refuses the whole
/// batch before anything is stored. Answers one answer per event, in the
/// order posted: 202 when any event was created, 200 when every one was a
/// repeat.
#[utoipa::path(
    post,
    path = "/v1/domains/{domain}/events/batch",
    tag = "events",
    params(DomainPath),
    request_body(content = BatchInput, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored; at least one event was new", body = BatchAnswer),
        (status = 200, description = "Every event was posted before: their first answers; nothing was created", body = BatchAnswer),
        (status = 400, description = "Malformed JSON, a field of the wrong type (named as `events[3].type`) or a bad domain name", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "An empty or oversized batch, or an event's refused field (named as `events[3].type`)", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
        (status = 503, description = "Pushed back: too many posted events are waiting to be stored (`overloaded`), or the database cannot answer now (`unavailable`); nothing was stored, post again after `Retry-After`", body = ErrorBody),
        (status = 507, description = "The database has no room left; nothing was stored", body = ErrorBody),
    )
)]
pub async fn post_batch(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<DomainPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<BatchAnswer>), ApiError> {
    let result = async {
        path.check()?;
        let domain = &path.domain;
        let input: BatchInput = json_body(&headers, body, state.limits.max_body_bytes)?;
        if input.events.is_empty() {
            return Err(ApiError::invalid("events: the batch is empty"));
        }
        if input.events.len() > state.limits.max_batch_events {
            return Err(ApiError::invalid(format!(
                "events: {} events is more than the batch limit of {}",
                input.events.len(),
                state.limits.max_batch_events
            )));
        }
        let mut events = Vec::with_capacity(input.events.len());
        let mut seen_ids = std::collections::HashMap::new();
        for (index, event) in input.events.into_iter().enumerate() {
            let event: EventInput =
                decode_object_at(event.get().as_bytes(), &format!("events[{index}]"))?;
            let at = format!("events[{index}].");
            let event = to_new_event(event, &at).map_err(ApiError::invalid)?;
            if let Some(id) = &event.id
                && let Some(first) = seen_ids.insert(id.clone(), index)
            {
                return Err(ApiError::invalid(format!(
                    "{at}id: {id:?} repeats the id of events[{first}]"
                )));
            }
            events.push(event);
        }
        let ingested = ingest_events(&state, domain, events).await?;
        let status = if ingested.iter().any(|event| event.created) {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        Ok((
            status,
            Json(BatchAnswer {
                events: ingested.into_iter().map(EventAnswer::from).collect(),
            }),
        ))
    }
    .await;
    count_refusal(&state, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::Value;

    fn input(value: Value) -> EventInput {
        serde_json::from_str(&value.to_string()).unwrap()
    }

    #[test]
    fn a_json_payload_is_stored_as_compact_json() {
        let event = to_new_event(
            input(serde_json::json!({"type": "case.created", "payload": {"a": [1, 2]}})),
            "",
        )
        .unwrap();
        assert_eq!(event.payload, br#"{"a":[1,2]}"#);
        assert_eq!(event.content_type, "application/json");
        let null =
            to_new_event(input(serde_json::json!({"type": "t", "payload": null})), "").unwrap();
        assert_eq!(null.payload, b"null");
    }

    #[test]
    fn a_json_payload_keeps_its_exact_text() {
        let text =
            br#"{"type": "t", "payload": {"z": 1, "a": 12345678901234567890123, "f": 1.10}}"#;
        let event = to_new_event(crate::api::extract::parse_json(text).unwrap(), "").unwrap();
        assert_eq!(
            event.payload,
            br#"{"z": 1, "a": 12345678901234567890123, "f": 1.10}"#
        );
    }

    #[test]
    fn a_text_body_needs_its_content_type() {
        let err = to_new_event(
            input(serde_json::json!({"type": "t", "body": "<a/>"})),
            "events[2].",
        )
        .unwrap_err();
        assert!(err.starts_with("events[2].content_type"), "{err}");
        let event = to_new_event(
            input(
                serde_json::json!({"type": "t", "body": "<a/>", "content_type": "application/xml"}),
            ),
            "",
        )
        .unwrap();
        assert_eq!(event.payload, b"<a/>");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        for (value, field) in [
            (serde_json::json!({"type": "", "payload": 1}), "type"),
            (serde_json::json!({"type": "t"}), "payload"),
            (
                serde_json::json!({"type": "t", "payload": 1, "body": "x", "content_type": "a/b"}),
                "body",
            ),
            (
                serde_json::json!({"type": "t", "payload": 1, "content_type": "text/plain"}),
                "content_type",
            ),
            (
                serde_json::json!({"type": "t", "payload": 1, "content_type": "plain"}),
                "content_type",
            ),
            (
                serde_json::json!({"type": "t", "payload": 1, "id": "x".repeat(256)}),
                "id",
            ),
            (
                serde_json::json!({"type": "t", "payload": 1, "ordering_key": "a\nb"}),
                "ordering_key",
            ),
        ] {
            let err = to_new_event(input(value.clone()), "").unwrap_err();
            assert!(err.starts_with(field), "{value}: {err}");
        }
    }
}
