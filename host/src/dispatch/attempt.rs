//! One attempt of one record: the plugin builds the request, the host fixes
//! its URL, adds authentication and the Standard Webhooks signature, sends
//! it through the guarded client, and the plugin classifies the reply.
//!
//! Nothing here fails the batch: every problem (a plugin trap or timeout, a
//! refused URL, a missing secret, a transport error) ends as an
//! [`AttemptReport`] with its reason. How plugin errors are judged:
//!
//! - In `build`, a refused request (`InvalidRequest`, e.g. a `..` path, a
//!   header the host owns) or output over a size limit rejects the record:
//!   the same plugin given the same event answers the same way, so retrying
//!   cannot help. A trap, a CPU or memory limit hit or an engine failure is
//!   retried on the record's schedule: those can be transient (a busy
//!   machine, a plugin version fixed by hot reload) and `max_attempts`
//!   bounds them. A CPU or memory limit hit and oversized output also
//!   count against the repeater, like a failing endpoint: each one burns up
//!   to a whole limit of host work, so a plugin that keeps hitting them is
//!   backed off instead of starving the healthy repeaters.
//! - A plugin that declared the default reply rules is judged by them in
//!   the host, with no `classify` call (see `LoadedPlugin::classify`).
//! - In `classify`, the request has already been sent. The reply is then
//!   judged by the default rules (the SDK's `default_classify`: 2xx
//!   success; 408, 409, 425, 429, 5xx and transport errors retry, honouring
//!   `Retry-After`; other statuses reject), and the plugin's error is kept
//!   with the attempt's reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dispatch::target::request_url;
use crate::model::{ClaimedRecord, Millis, RepeaterSpec, now_millis};
use crate::outbound::{self, Credentials, Outbound, OutboundRequest, credentials, redact};
use crate::plugin::types::{
    BuildOutcome, Event, Header, Method, Reply, RequestSummary, Response, TransportError,
    TransportErrorKind, Verdict as PluginVerdict,
};
use crate::plugin::{
    CallContext, ClassifyRules, LoadedPlugin, PluginError, judge_by_default_rules,
};
use crate::schedule::{AttemptReport, Verdict};
use crate::telemetry::{Metrics, PluginCall};

/// Everything one repeater's attempts share within a batch.
pub struct AttemptContext {
    /// The plugin version this batch runs on (calls in flight keep it).
    pub plugin: Arc<LoadedPlugin>,
    /// Labels the plugin's log output.
    pub call: CallContext,
    /// The repeater.
    pub spec: RepeaterSpec,
    /// The repeater's plugin config as JSON text.
    pub plugin_config: String,
    /// Request timeout.
    pub timeout: Duration,
    /// Bytes of the response kept.
    pub excerpt_limit: usize,
    /// The guarded HTTP client.
    pub outbound: Outbound,
    /// Authentication and signing, added after `build`.
    pub credentials: Credentials,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// Runs one attempt of `record`; never fails.
pub async fn run_attempt(ctx: &AttemptContext, record: &ClaimedRecord) -> AttemptReport {
    let started_at = now_millis();
    let clock = Instant::now();
    let mut report = AttemptReport {
        record_id: record.id,
        started_at,
        duration_ms: 0,
        status: None,
        response_excerpt: None,
        request: None,
        sent: false,
        timed_out: false,
        repeater_fault: false,
        verdict: Verdict::Skip,
    };
    report.verdict = attempt(ctx, record, started_at, &mut report).await;
    report.duration_ms = clock.elapsed().as_millis() as i64;
    report
}

async fn attempt(
    ctx: &AttemptContext,
    record: &ClaimedRecord,
    started_at: Millis,
    report: &mut AttemptReport,
) -> Verdict {
    let plugin_name = ctx.plugin.name().to_owned();
    let event = event_of(ctx, record);

    let clock = Instant::now();
    let built = ctx
        .plugin
        .build(&ctx.call, &event, &ctx.plugin_config)
        .await;
    ctx.metrics.plugin_call(
        &plugin_name,
        PluginCall::Build,
        clock.elapsed().as_secs_f64(),
    );
    let request = match built {
        Ok(BuildOutcome::Send(request)) => request,
        Ok(BuildOutcome::Skip) => return Verdict::Skip,
        Ok(BuildOutcome::Reject(reason)) => return Verdict::Reject(reason),
        Ok(BuildOutcome::RetryLater(reason)) => {
            return Verdict::Retry {
                reason: format!("plugin {plugin_name} asked to retry later: {reason}"),
                after_ms: None,
            };
        }
        Err(error) => {
            ctx.metrics
                .plugin_failure(&plugin_name, plugin_error_kind(&error));
            report.repeater_fault = counts_against_repeater(&error);
            return build_error_verdict(&error);
        }
    };

    let url = match request_url(
        &ctx.spec.url,
        request.path.as_deref(),
        request.query.as_deref(),
    ) {
        Ok(url) => url,
        Err(error) => return Verdict::Reject(error.to_string()),
    };

    let summary = RequestSummary {
        method: request.method,
        url: url.clone(),
        // The plugin sees the headers it built, never the host's credentials.
        headers: request.headers.clone(),
        body_size: request.body.len() as u64,
    };
    let mut headers = match header_map(&request.headers) {
        Ok(headers) => headers,
        Err(reason) => return Verdict::Reject(format!("plugin {plugin_name}: {reason}")),
    };
    let body = bytes::Bytes::from(request.body);
    if let Err(reason) = credentials::add(
        &ctx.credentials,
        &ctx.spec,
        record.id,
        started_at,
        &body,
        &mut headers,
    )
    .await
    {
        report.repeater_fault = true;
        return Verdict::Retry {
            reason,
            after_ms: None,
        };
    }

    let method = http_method(request.method);
    let sent_request = redact::sent_request(&method, &url, &headers, body.len());
    report.request = serde_json::to_string(&sent_request).ok();
    let sent = ctx
        .outbound
        .send(OutboundRequest {
            method,
            url,
            headers,
            body,
            timeout: ctx.timeout,
            excerpt_limit: ctx.excerpt_limit,
        })
        .await;
    report.sent = true;
    let reply = match sent {
        Ok(response) => {
            report.status = Some(response.status.as_u16());
            report.response_excerpt = Some(response.body_excerpt.to_vec());
            Reply::Response(Response {
                status: response.status.as_u16(),
                headers: response
                    .headers
                    .iter()
                    .map(|(name, value)| Header {
                        name: name.as_str().to_owned(),
                        value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    })
                    .collect(),
                body_excerpt: response.body_excerpt.to_vec(),
            })
        }
        Err(error) => {
            report.timed_out = error.kind == outbound::TransportErrorKind::Timeout;
            Reply::TransportError(TransportError {
                kind: transport_kind(error.kind),
                message: error.message,
            })
        }
    };

    let clock = Instant::now();
    let classified = ctx
        .plugin
        .classify(&ctx.call, &summary, &reply, &ctx.plugin_config)
        .await;
    // A plugin that declared the default rules was judged by the host
    // without a call; the metric counts plugin calls only.
    if ctx.plugin.classify_rules() == ClassifyRules::Own {
        ctx.metrics.plugin_call(
            &plugin_name,
            PluginCall::Classify,
            clock.elapsed().as_secs_f64(),
        );
    }
    match classified {
        Ok(verdict) => attempt_verdict(verdict, ""),
        Err(error) => {
            ctx.metrics
                .plugin_failure(&plugin_name, plugin_error_kind(&error));
            default_verdict(&reply, &error)
        }
    }
}

fn event_of(ctx: &AttemptContext, record: &ClaimedRecord) -> Event {
    Event {
        id: record.event_id.clone(),
        domain: ctx.spec.domain.clone(),
        repeater: ctx.spec.name.clone(),
        event_type: record.event_type.clone(),
        content_type: record.content_type.clone(),
        payload: record.payload.clone(),
        attempt: record.attempts.saturating_add(1),
        registered_at: record.registered_at,
        ordering_key: record.ordering_key.clone(),
        record_id: record.id.to_string(),
    }
}

/// A `build` failure: reject what is deterministic, retry the rest.
fn build_error_verdict(error: &PluginError) -> Verdict {
    match error {
        PluginError::InvalidRequest { .. } | PluginError::OutputTooLarge { .. } => {
            Verdict::Reject(error.to_string())
        }
        _ => Verdict::Retry {
            reason: error.to_string(),
            after_ms: None,
        },
    }
}

/// True when a `build` failure counts against the repeater like a failing
/// endpoint: it ran out of CPU time or memory, or returned output over a
/// size limit. Each of these costs the host up to a whole limit of work
/// (a CPU budget, a memory cap, a copy of an oversized body), and each is
/// almost always the plugin version's doing rather than one payload's (the
/// API caps events well below the plugin output caps). So a window of them
/// ends the batch and, with nothing else in it, backs the repeater off. The
/// record's own outcome does not change: oversized output still rejects it.
/// A trap is cheap and often tied to one payload; it stays the record's alone.
fn counts_against_repeater(error: &PluginError) -> bool {
    matches!(
        error,
        PluginError::Timeout { .. }
            | PluginError::MemoryLimit { .. }
            | PluginError::OutputTooLarge { .. }
    )
}

/// The judgement of a reply when `classify` failed: the default rules,
/// with the plugin's error added to the reason.
fn default_verdict(reply: &Reply, error: &PluginError) -> Verdict {
    let note = format!("; {error}; reply judged by the default rules");
    attempt_verdict(judge_by_default_rules(reply), &note)
}

/// A plugin's verdict as the attempt's, with `note` appended to a reason.
fn attempt_verdict(verdict: PluginVerdict, note: &str) -> Verdict {
    match verdict {
        PluginVerdict::Success => Verdict::Success,
        PluginVerdict::Reject(reason) => Verdict::Reject(format!("{reason}{note}")),
        PluginVerdict::Retry(retry) => Verdict::Retry {
            reason: format!("{}{note}", retry.reason),
            after_ms: retry.after_seconds.map(|s| i64::from(s) * 1000),
        },
    }
}

/// A short label for metrics.
fn plugin_error_kind(error: &PluginError) -> &'static str {
    match error {
        PluginError::Timeout { .. } => "timeout",
        PluginError::MemoryLimit { .. } => "memory",
        PluginError::Trap { .. } => "trap",
        PluginError::OutputTooLarge { .. } => "output_too_large",
        PluginError::InvalidRequest { .. } => "invalid_request",
        _ => "other",
    }
}

fn http_method(method: Method) -> http::Method {
    match method {
        Method::Get => http::Method::GET,
        Method::Post => http::Method::POST,
        Method::Put => http::Method::PUT,
        Method::Patch => http::Method::PATCH,
        Method::Delete => http::Method::DELETE,
    }
}

/// The plugin's headers as HTTP headers. The plugin host already checked
/// names and values; a failure here is reported, never a panic.
fn header_map(headers: &[Header]) -> Result<http::HeaderMap, String> {
    let mut map = http::HeaderMap::with_capacity(headers.len());
    for header in headers {
        let name = http::HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| format!("header name {:?} is not valid HTTP", header.name))?;
        let value = http::HeaderValue::from_str(&header.value).map_err(|_| {
            format!(
                "header {:?} has a value that is not valid HTTP",
                header.name
            )
        })?;
        map.append(name, value);
    }
    Ok(map)
}

fn transport_kind(kind: outbound::TransportErrorKind) -> TransportErrorKind {
    use outbound::TransportErrorKind as K;
    match kind {
        K::Dns => TransportErrorKind::Dns,
        K::Connect => TransportErrorKind::Connect,
        K::Timeout => TransportErrorKind::Timeout,
        K::Tls => TransportErrorKind::Tls,
        K::Protocol => TransportErrorKind::Protocol,
        K::Refused => TransportErrorKind::Refused,
        K::Other => TransportErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::types::Response;

    fn response(status: u16) -> Reply {
        Reply::Response(Response {
            status,
            headers: Vec::new(),
            body_excerpt: Vec::new(),
        })
    }

    fn trap() -> PluginError {
        PluginError::Trap {
            plugin: "p".into(),
            call: "classify",
            message: "unreachable".into(),
        }
    }

    #[test]
    fn a_failed_classify_falls_back_to_the_default_rules() {
        assert_eq!(default_verdict(&response(204), &trap()), Verdict::Success);
        assert!(matches!(
            default_verdict(&response(503), &trap()),
            Verdict::Retry { .. }
        ));
        match default_verdict(&response(404), &trap()) {
            Verdict::Reject(reason) => {
                assert!(reason.contains("404") && reason.contains("trapped"))
            }
            other => panic!("{other:?}"),
        }
        // The same rules a plugin declaring them gets: 409 is retried, and
        // a Retry-After is honoured.
        let busy = Reply::Response(Response {
            status: 409,
            headers: vec![Header {
                name: "retry-after".into(),
                value: "7".into(),
            }],
            body_excerpt: b"locked".to_vec(),
        });
        match default_verdict(&busy, &trap()) {
            Verdict::Retry { reason, after_ms } => {
                assert_eq!(after_ms, Some(7000));
                assert!(reason.starts_with("HTTP 409: locked; "), "{reason}");
                assert!(
                    reason.ends_with("reply judged by the default rules"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        let transport = Reply::TransportError(TransportError {
            kind: TransportErrorKind::Connect,
            message: "connection refused".into(),
        });
        assert!(matches!(
            default_verdict(&transport, &trap()),
            Verdict::Retry { .. }
        ));
    }

    #[test]
    fn build_errors_reject_only_when_deterministic() {
        let invalid = PluginError::InvalidRequest {
            plugin: "p".into(),
            message: "path has ..".into(),
        };
        assert!(matches!(build_error_verdict(&invalid), Verdict::Reject(_)));
        let timeout = PluginError::Timeout {
            plugin: "p".into(),
            call: "build",
            limit: Duration::from_millis(100),
        };
        match build_error_verdict(&timeout) {
            Verdict::Retry { reason, after_ms } => {
                assert!(reason.contains("CPU time limit"), "{reason}");
                assert_eq!(after_ms, None);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            build_error_verdict(&trap()),
            Verdict::Retry { .. }
        ));
    }

    #[test]
    fn limit_hits_and_oversized_output_count_against_the_repeater() {
        let timeout = PluginError::Timeout {
            plugin: "p".into(),
            call: "build",
            limit: Duration::from_millis(100),
        };
        let memory = PluginError::MemoryLimit {
            plugin: "p".into(),
            call: "build",
            requested: 1 << 30,
            limit: 1 << 26,
        };
        let too_large = PluginError::OutputTooLarge {
            plugin: "p".into(),
            what: "request body",
            size: 1 << 27,
            limit: 1 << 20,
        };
        let invalid = PluginError::InvalidRequest {
            plugin: "p".into(),
            message: "path has ..".into(),
        };
        assert!(counts_against_repeater(&timeout));
        assert!(counts_against_repeater(&memory));
        assert!(counts_against_repeater(&too_large));
        assert!(!counts_against_repeater(&trap()));
        assert!(!counts_against_repeater(&invalid));
    }
}
