//! `[[repeater]]` tables: the flat form users write, its conversion to
//! [`RepeaterSpec`], and [`check_repeater_spec`], the validation shared with
//! the API (a repeater `PUT` over HTTP obeys the same rules).

use std::time::Duration;

use serde::Deserialize;

use super::dispatch::rate_opt;
use super::duration;
use super::secret::check_env_name;
use super::sections::nonzero_opt;
use crate::model::{AuthSpec, Ordering, RepeaterLimits, RepeaterSpec, SigningSpec, check_slug};

/// One `[[repeater]]` table as written: limits sit flat beside the
/// destination, durations are strings like `"30s"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RepeaterTable {
    domain: String,
    name: String,
    url: String,
    plugin: String,
    #[serde(default)]
    plugin_sha256: Option<String>,
    #[serde(default)]
    plugin_config: Option<toml::Table>,
    #[serde(default)]
    event_types: Vec<String>,
    #[serde(default)]
    ordering: Ordering,
    #[serde(default, deserialize_with = "nonzero_opt")]
    concurrency: Option<u32>,
    #[serde(default, deserialize_with = "rate_opt")]
    rate_per_second: Option<f64>,
    #[serde(default, deserialize_with = "nonzero_opt")]
    burst: Option<u32>,
    #[serde(default, deserialize_with = "duration::positive_opt")]
    timeout: Option<Duration>,
    #[serde(default, deserialize_with = "nonzero_opt")]
    max_attempts: Option<u32>,
    #[serde(default, deserialize_with = "duration::positive_opt")]
    max_age: Option<Duration>,
    #[serde(default, deserialize_with = "duration::positive_list_opt")]
    retry_schedule: Option<Vec<Duration>>,
    #[serde(default, deserialize_with = "duration::positive_opt")]
    backoff_min: Option<Duration>,
    #[serde(default, deserialize_with = "duration::positive_opt")]
    backoff_max: Option<Duration>,
    #[serde(default)]
    response_excerpt_bytes: Option<usize>,
    #[serde(default)]
    auth: Option<AuthSpec>,
    #[serde(default)]
    signing: Option<SigningSpec>,
}

/// A problem with one field of a repeater spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The field, as a dotted path in [`RepeaterSpec`] (e.g. `limits.burst`,
    /// `auth.token_env`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn spec_error(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Whole seconds of a duration, or an error naming `key`.
fn whole_seconds(key: &str, duration: Duration) -> Result<u64, SpecError> {
    if duration.subsec_millis() != 0 {
        return Err(spec_error(
            key,
            format!(
                "{} is not a whole number of seconds",
                humantime::format_duration(duration)
            ),
        ));
    }
    Ok(duration.as_secs())
}

impl RepeaterTable {
    /// Converts to the model. Errors name the TOML key.
    pub(crate) fn into_spec(self) -> Result<RepeaterSpec, SpecError> {
        let secs = |key: &str, d: Option<Duration>| d.map(|d| whole_seconds(key, d)).transpose();
        let limits = RepeaterLimits {
            concurrency: self.concurrency,
            rate_per_second: self.rate_per_second,
            burst: self.burst,
            timeout_ms: self.timeout.map(|d| d.as_millis() as u64),
            max_attempts: self.max_attempts,
            max_age_seconds: secs("max_age", self.max_age)?,
            retry_schedule_seconds: self
                .retry_schedule
                .map(|steps| {
                    steps
                        .into_iter()
                        .map(|d| whole_seconds("retry_schedule", d))
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?,
            backoff_min_seconds: secs("backoff_min", self.backoff_min)?,
            backoff_max_seconds: secs("backoff_max", self.backoff_max)?,
            response_excerpt_bytes: self.response_excerpt_bytes,
        };
        let plugin_config = match self.plugin_config {
            Some(table) => toml_to_json(toml::Value::Table(table))
                .map_err(|e| spec_error("plugin_config", e))?,
            None => serde_json::Value::Object(Default::default()),
        };
        Ok(RepeaterSpec {
            domain: self.domain,
            name: self.name,
            url: self.url,
            plugin: self.plugin,
            plugin_sha256: self.plugin_sha256,
            plugin_config,
            event_types: self.event_types,
            ordering: self.ordering,
            limits,
            auth: self.auth,
            signing: self.signing,
        })
    }
}

/// Converts plugin config from TOML to the JSON the plugin receives.
/// Datetimes become their RFC 3339 text; non-finite floats are refused
/// because JSON cannot carry them.
fn toml_to_json(value: toml::Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as Json;
    Ok(match value {
        toml::Value::String(s) => Json::String(s),
        toml::Value::Integer(i) => Json::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Json::Number)
            .ok_or_else(|| format!("{f} cannot be represented in JSON"))?,
        toml::Value::Boolean(b) => Json::Bool(b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(items) => Json::Array(
            items
                .into_iter()
                .map(toml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(table) => Json::Object(
            table
                .into_iter()
                .map(|(k, v)| toml_to_json(v).map(|v| (k, v)))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// The TOML key of a [`SpecError`] field (limits sit flat in the table and
/// durations drop their unit suffix).
pub(crate) fn toml_key(field: &str) -> &str {
    match field {
        "limits.timeout_ms" => "timeout",
        "limits.max_age_seconds" => "max_age",
        "limits.retry_schedule_seconds" => "retry_schedule",
        "limits.backoff_min_seconds" => "backoff_min",
        "limits.backoff_max_seconds" => "backoff_max",
        other => other.strip_prefix("limits.").unwrap_or(other),
    }
}

/// Checks that a URL is absolute http(s) with a host.
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        Some(other) => {
            return Err(format!(
                "{url:?} has scheme {other:?}: only http and https are allowed"
            ));
        }
        None => return Err(format!("{url:?} is not an absolute http(s) URL")),
    }
    match uri.host() {
        Some(host) if !host.is_empty() => Ok(()),
        _ => Err(format!("{url:?} has no host")),
    }
}

/// Validates a repeater spec: names are slugs, the URL is http(s) with a
/// host, the sha256 pin is 64 hex digits, limits are in range and secrets
/// are referenced by well-formed environment variable names.
pub fn check_repeater_spec(spec: &RepeaterSpec) -> Result<(), SpecError> {
    check_slug("domain", &spec.domain).map_err(|e| spec_error("domain", e.to_string()))?;
    check_slug("repeater", &spec.name).map_err(|e| spec_error("name", e.to_string()))?;
    check_slug("plugin", &spec.plugin).map_err(|e| spec_error("plugin", e.to_string()))?;
    check_url(&spec.url).map_err(|e| spec_error("url", e))?;
    if let Some(pin) = &spec.plugin_sha256
        && (pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(spec_error(
            "plugin_sha256",
            format!("{pin:?} is not a sha256 (64 hex digits)"),
        ));
    }
    if !spec.plugin_config.is_object() {
        return Err(spec_error(
            "plugin_config",
            "must be a table (a JSON object)",
        ));
    }
    if let Some(bad) = spec.event_types.iter().find(|t| t.trim().is_empty()) {
        return Err(spec_error(
            "event_types",
            format!("{bad:?} is not an event type"),
        ));
    }
    let limits = &spec.limits;
    let positive = [
        ("limits.concurrency", limits.concurrency.map(u64::from)),
        ("limits.burst", limits.burst.map(u64::from)),
        ("limits.timeout_ms", limits.timeout_ms),
        ("limits.max_attempts", limits.max_attempts.map(u64::from)),
        ("limits.max_age_seconds", limits.max_age_seconds),
        ("limits.backoff_min_seconds", limits.backoff_min_seconds),
        ("limits.backoff_max_seconds", limits.backoff_max_seconds),
    ];
    for (field, value) in positive {
        if value == Some(0) {
            return Err(spec_error(field, "must be greater than zero"));
        }
    }
    if let Some(rate) = limits.rate_per_second
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(spec_error(
            "limits.rate_per_second",
            format!("must be a number greater than zero, got {rate}"),
        ));
    }
    if let Some(steps) = &limits.retry_schedule_seconds
        && (steps.is_empty() || steps.contains(&0))
    {
        return Err(spec_error(
            "limits.retry_schedule_seconds",
            "must hold at least one step, each greater than zero",
        ));
    }
    if let (Some(min), Some(max)) = (limits.backoff_min_seconds, limits.backoff_max_seconds)
        && min > max
    {
        return Err(spec_error(
            "limits.backoff_min_seconds",
            format!("backoff_min ({min}s) is larger than backoff_max ({max}s)"),
        ));
    }
    match &spec.auth {
        Some(AuthSpec::Basic {
            username,
            password_env,
        }) => {
            if username.is_empty() {
                return Err(spec_error("auth.username", "must not be empty"));
            }
            check_env_name(password_env).map_err(|e| spec_error("auth.password_env", e))?;
        }
        Some(AuthSpec::Bearer { token_env }) => {
            check_env_name(token_env).map_err(|e| spec_error("auth.token_env", e))?;
        }
        Some(AuthSpec::Oauth2 {
            token_url,
            client_id,
            client_secret_env,
            ..
        }) => {
            check_url(token_url).map_err(|e| spec_error("auth.token_url", e))?;
            if client_id.is_empty() {
                return Err(spec_error("auth.client_id", "must not be empty"));
            }
            check_env_name(client_secret_env)
                .map_err(|e| spec_error("auth.client_secret_env", e))?;
        }
        None => {}
    }
    if let Some(signing) = &spec.signing {
        if signing.secret_envs.is_empty() {
            return Err(spec_error(
                "signing.secret_envs",
                "must name at least one environment variable",
            ));
        }
        for name in &signing.secret_envs {
            check_env_name(name).map_err(|e| spec_error("signing.secret_envs", e))?;
        }
    }
    Ok(())
}
