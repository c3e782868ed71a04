//! The [`Plugin`] trait a plugin implements, the glue that runs it for the
//! WIT exports (and for the native test harness, so both take one path),
//! and the [`export_plugin!`](crate::export_plugin) macro.

use serde::de::DeserializeOwned;

use crate::bindings::exports::repeater::plugin::classification::ReplyRules;
use crate::classify::default_classify;
use crate::types::{BuildOutcome, Event, Reply, RequestSummary, Verdict};

/// A repeaterd plugin: turns events into requests and judges replies.
///
/// The host creates a fresh instance for every call, so a plugin keeps no
/// state between calls; the trait's functions are associated functions.
pub trait Plugin {
    /// The repeater's plugin config, decoded from JSON. An empty or `null`
    /// config decodes as `{}`, so a config struct with `#[serde(default)]`
    /// accepts "no config". Use `serde_json::Value` to take anything.
    type Config: DeserializeOwned;

    /// Checks a decoded config beyond what its type already enforces. The
    /// error names the field that is wrong.
    fn validate_config(config: &Self::Config) -> Result<(), String> {
        let _ = config;
        Ok(())
    }

    /// Turns an event into the request to send, or skips, rejects or
    /// postpones it.
    fn build(event: &Event, config: &Self::Config) -> BuildOutcome;

    /// Judges the reply to a request this plugin built. Defaults to
    /// [`default_classify`].
    fn classify(request: &RequestSummary, reply: &Reply, config: &Self::Config) -> Verdict {
        let _ = (request, config);
        default_classify(reply)
    }

    /// Set to `true` in a plugin that leaves [`classify`](Self::classify)
    /// at its default. The plugin then declares the default rules (the
    /// WIT `classification` interface), and the host judges its replies by
    /// those rules itself, without starting a plugin instance for each
    /// reply: one of the two instances a delivery costs.
    ///
    /// Once this is `true` the plugin's own `classify` is never called, by
    /// the host or by [`testing::classify`](crate::testing::classify), so
    /// leave it `false` in a plugin that overrides `classify`.
    const DEFAULT_CLASSIFY: bool = false;
}

/// The rules a plugin declares, for the `classification` export.
pub fn rules<P: Plugin>() -> ReplyRules {
    if P::DEFAULT_CLASSIFY {
        ReplyRules::DefaultRules
    } else {
        ReplyRules::OwnRules
    }
}

/// Decodes a plugin config, treating an empty or `null` document as `{}`.
fn decode_config<P: Plugin>(config: &str) -> Result<P::Config, String> {
    let trimmed = config.trim();
    let document = if trimmed.is_empty() || trimmed == "null" {
        "{}"
    } else {
        trimmed
    };
    serde_json::from_str(document).map_err(|err| format!("invalid plugin config: {err}"))
}

/// Runs `validate-config`: decodes, then calls [`Plugin::validate_config`].
pub fn run_validate_config<P: Plugin>(config: &str) -> Result<(), String> {
    let config = decode_config::<P>(config)?;
    P::validate_config(&config).map_err(|err| format!("invalid plugin config: {err}"))
}

/// Runs `build`. A config that no longer decodes is the operator's problem,
/// not the event's, so the record waits (`retry-later`) instead of being
/// rejected.
pub fn run_build<P: Plugin>(event: &Event, config: &str) -> BuildOutcome {
    match decode_config::<P>(config) {
        Ok(config) => P::build(event, &config),
        Err(err) => BuildOutcome::RetryLater(err),
    }
}

/// Runs `classify`; with a config that no longer decodes the attempt is
/// retried, for the same reason as in [`run_build`]. A plugin that declares
/// the default rules is judged by them, as the host judges it.
pub fn run_classify<P: Plugin>(request: &RequestSummary, reply: &Reply, config: &str) -> Verdict {
    if P::DEFAULT_CLASSIFY {
        return default_classify(reply);
    }
    match decode_config::<P>(config) {
        Ok(config) => P::classify(request, reply, &config),
        Err(err) => Verdict::retry(err),
    }
}

/// Exports a type implementing [`Plugin`] as the component's
/// `repeater:plugin/plugin@0.1.1` and `repeater:plugin/classification@0.1.1`
/// interfaces. Call it once per plugin crate.
///
/// On non-wasm targets the glue is type-checked but nothing is exported, so
/// the crate's native unit tests link normally.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            #[allow(dead_code)]
            struct RepeaterPluginExports;

            impl $crate::bindings::exports::repeater::plugin::plugin::Guest for RepeaterPluginExports {
                fn validate_config(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::run_validate_config::<$plugin>(&config)
                }

                fn build(
                    event: $crate::Event,
                    config: ::std::string::String,
                ) -> $crate::BuildOutcome {
                    $crate::__private::run_build::<$plugin>(&event, &config)
                }

                fn classify(
                    request: $crate::RequestSummary,
                    reply: $crate::Reply,
                    config: ::std::string::String,
                ) -> $crate::Verdict {
                    $crate::__private::run_classify::<$plugin>(&request, &reply, &config)
                }
            }

            impl $crate::bindings::exports::repeater::plugin::classification::Guest
                for RepeaterPluginExports
            {
                fn rules() -> $crate::bindings::exports::repeater::plugin::classification::ReplyRules {
                    $crate::__private::rules::<$plugin>()
                }
            }

            #[cfg(target_arch = "wasm32")]
            $crate::bindings::export_repeater_world!(
                RepeaterPluginExports with_types_in $crate::bindings
            );
        };
    };
}
