//! The TOML configuration: schema, defaults (DESIGN's "defaults worth
//! starting from") and validation. Unknown keys and bad values are errors
//! naming the key and its line. Secrets are referenced by environment
//! variable ([`SecretRef`]) and read only on demand, so `Config`'s `Debug`
//! never holds one.
//!
//! - [`sections`]: `[server]`, `[database]`, `[plugins]`, `[security]`.
//! - [`dispatch`]: `[dispatch]` and [`EffectiveLimits`], a repeater's limits
//!   with defaults resolved, from which the dispatcher builds the scheduling
//!   policies.
//! - [`repeater`]: `[[repeater]]` tables and [`check_repeater_spec`].

pub mod dispatch;
pub mod duration;
pub mod repeater;
pub mod secret;
pub mod sections;
mod source;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use dispatch::{DispatchConfig, EffectiveLimits};
pub use repeater::{SpecError, check_repeater_spec, check_url};
pub use secret::{Secret, SecretRef, check_env_name};
pub use sections::{
    DEFAULT_MAX_PENDING_EVENTS, DatabaseConfig, DatabaseUrl, PluginsConfig, SecurityConfig,
    ServerConfig,
};

use crate::model::{RepeaterSpec, check_slug};
use source::SourceIndex;

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key is unknown, misspelt, of the wrong type or has a bad value.
    #[error("{}", display_invalid(origin, *line, *column, key, message))]
    Invalid {
        /// The file (or other origin) of the text.
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// Dotted path of the key, e.g. `dispatch.concurrency` or
        /// `repeater[2].url` (0-based array index); empty when unknown.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A secret's environment variable is not usable.
    #[error("secret environment variable {var} {reason}")]
    MissingSecret {
        /// The variable's name.
        var: String,
        /// "is not set", "is empty", ...
        reason: &'static str,
    },
}

fn display_invalid(origin: &str, line: usize, column: usize, key: &str, message: &str) -> String {
    if key.is_empty() {
        format!("{origin}:{line}:{column}: {message}")
    } else {
        format!("{origin}:{line}:{column}: key `{key}`: {message}")
    }
}

impl ConfigError {
    /// The 1-based line of an [`ConfigError::Invalid`] error.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => Some(*line),
            _ => None,
        }
    }

    /// The key path of an [`ConfigError::Invalid`] error.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// The whole configuration of one daemon. `Config::default()` is what an
/// empty file gives, with paths relative to the current directory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// The HTTP API listener.
    pub server: ServerConfig,
    /// Where state is stored. Relative paths are already resolved.
    pub database: DatabaseConfig,
    /// Global work bounds and per-repeater defaults.
    pub dispatch: DispatchConfig,
    /// User plugins and sandbox limits. Relative paths are already resolved.
    pub plugins: PluginsConfig,
    /// API tokens and the outbound allow-list.
    pub security: SecurityConfig,
    /// Repeaters declared in the file, in file order.
    pub repeaters: Vec<RepeaterSpec>,
}

/// The file as written, before defaults are resolved.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ConfigFile {
    server: ServerConfig,
    database: DatabaseConfig,
    dispatch: DispatchConfig,
    plugins: PluginsConfig,
    security: SecurityConfig,
    repeater: Vec<repeater::RepeaterTable>,
}

/// Builds errors that point at a key's line.
struct Locator<'a> {
    origin: &'a str,
    text: &'a str,
    index: SourceIndex,
}

impl Locator<'_> {
    fn at_key(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.index.position_of(key).unwrap_or((1, 1));
        ConfigError::Invalid {
            origin: self.origin.to_owned(),
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn toml_error(&self, error: toml::de::Error) -> ConfigError {
        let span = error.span().unwrap_or(0..0);
        let (mut line, mut column) = self.index.position(span.start);
        let mut key = self.index.path_at(self.text, span);
        let message = error.message().trim().to_owned();
        // Some errors (inside tagged tables such as `auth`) point at the
        // enclosing table; find the unknown key's own line inside it.
        if let Some(unknown) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
        {
            let inner = if key.is_empty() {
                unknown.to_owned()
            } else {
                format!("{key}.{unknown}")
            };
            if let Some(position) = self.index.position_of_exact(&inner) {
                ((line, column), key) = (position, inner);
            }
        }
        ConfigError::Invalid {
            origin: self.origin.to_owned(),
            line,
            column,
            key,
            message,
        }
    }
}

impl Config {
    /// Reads and validates the config file at `path`. Relative paths in it
    /// are taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text. `origin` names it in errors and its
    /// parent directory anchors relative paths.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let origin_name = origin.display().to_string();
        // Parsed once: the spans locate errors, the tree is deserialized.
        let (root, errors) = toml::de::DeTable::parse_recoverable(text);
        let locate = Locator {
            origin: &origin_name,
            text,
            index: SourceIndex::new(text, root.get_ref()),
        };
        if let Some(error) = errors.into_iter().next() {
            return Err(locate.toml_error(error));
        }
        let file = ConfigFile::deserialize(toml::de::Deserializer::from(root))
            .map_err(|e| locate.toml_error(e))?;

        let ConfigFile {
            server,
            mut database,
            dispatch,
            mut plugins,
            security,
            repeater,
        } = file;

        if database.url.is_some() && database.url_env.is_some() {
            return Err(locate.at_key(
                "database.url_env",
                "set either database.url or database.url_env, not both",
            ));
        }
        if dispatch.backoff_min > dispatch.backoff_max {
            return Err(locate.at_key(
                "dispatch.backoff_min",
                format!(
                    "backoff_min ({}) is larger than backoff_max ({})",
                    humantime::format_duration(dispatch.backoff_min),
                    humantime::format_duration(dispatch.backoff_max)
                ),
            ));
        }
        for domain in security.domain_tokens.keys() {
            check_slug("domain", domain).map_err(|e| {
                locate.at_key(&format!("security.domain_tokens.{domain}"), e.to_string())
            })?;
        }

        let mut repeaters = Vec::with_capacity(repeater.len());
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        for (i, table) in repeater.into_iter().enumerate() {
            let at = |e: SpecError| {
                locate.at_key(
                    &format!("repeater[{i}].{}", repeater::toml_key(&e.field)),
                    e.message,
                )
            };
            let spec = table.into_spec().map_err(at)?;
            check_repeater_spec(&spec).map_err(at)?;
            let key = (spec.domain.clone(), spec.name.clone());
            if let Some(first) = seen.insert(key, i) {
                let (first_line, _) = locate
                    .index
                    .position_of(&format!("repeater[{first}]"))
                    .unwrap_or((1, 1));
                return Err(locate.at_key(
                    &format!("repeater[{i}].name"),
                    format!(
                        "duplicate repeater {}/{}: already declared at line {first_line}",
                        spec.domain, spec.name
                    ),
                ));
            }
            repeaters.push(spec);
        }

        let base = origin.parent().unwrap_or(Path::new(""));
        database.sqlite_path = base.join(&database.sqlite_path);
        plugins.cache_dir = base.join(&plugins.cache_dir);
        plugins.versions_dir = base.join(&plugins.versions_dir);
        plugins.dir = plugins.dir.map(|dir| base.join(dir));

        Ok(Config {
            server,
            database,
            dispatch,
            plugins,
            security,
            repeaters,
        })
    }
}

impl fmt::Display for Config {
    /// A one-line summary for start-up logs (no secrets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "listen {}, database {}, {} repeaters, max_inflight {}",
            self.server.listen,
            if self.database.url.is_some() || self.database.url_env.is_some() {
                "postgres".to_owned()
            } else {
                self.database.sqlite_path.display().to_string()
            },
            self.repeaters.len(),
            self.dispatch.max_inflight
        )
    }
}

#[cfg(test)]
mod tests;
