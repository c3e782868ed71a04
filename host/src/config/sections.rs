//! The `[server]`, `[database]`, `[plugins]` and `[security]` tables.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use super::secret::{Secret, SecretRef};
use super::{ConfigError, duration};

/// serde: an unsigned number greater than zero.
pub(crate) fn nonzero<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default + PartialEq + fmt::Display,
{
    let value = T::deserialize(de)?;
    if value == T::default() {
        return Err(serde::de::Error::custom(format!(
            "must be greater than zero, got {value}"
        )));
    }
    Ok(value)
}

/// serde: an optional unsigned number greater than zero.
pub(crate) fn nonzero_opt<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default + PartialEq + fmt::Display,
{
    nonzero(de).map(Some)
}

/// Default of `server.max_pending_events`.
pub const DEFAULT_MAX_PENDING_EVENTS: usize = 10_000;

/// `[server]`: the HTTP API listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP API listens on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Largest request body accepted, bytes. Default 1 MiB.
    #[serde(deserialize_with = "nonzero")]
    pub max_body_bytes: usize,
    /// Most posted events waiting to be stored at once; a post that finds
    /// no room for 1 s is answered `503 overloaded` with `Retry-After`.
    /// Default 10,000.
    #[serde(deserialize_with = "nonzero")]
    pub max_pending_events: usize,
    /// How long in-flight work may take to finish on shutdown. Default 30 s.
    #[serde(deserialize_with = "duration::positive")]
    pub shutdown_grace: Duration,
    /// Serve the operator console at `/ui` on the same listener. Default true.
    pub ui: bool,
    /// How long a console login lasts before it asks for the token again.
    /// Default 8 h.
    #[serde(deserialize_with = "duration::positive")]
    pub ui_session_ttl: Duration,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024 * 1024,
            max_pending_events: DEFAULT_MAX_PENDING_EVENTS,
            shutdown_grace: Duration::from_secs(30),
            ui: true,
            ui_session_ttl: Duration::from_secs(8 * 3600),
        }
    }
}

/// A PostgreSQL URL written inline; `Debug` hides its password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Checks the scheme (`postgres://` or `postgresql://`).
    pub fn new(url: &str) -> Result<DatabaseUrl, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DatabaseUrl(url.to_owned()))
        } else {
            Err("expected a postgres:// or postgresql:// URL (leave url unset for SQLite)".into())
        }
    }

    /// The full URL, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // postgres://user:password@host/db → postgres://user:***@host/db
        let url = &self.0;
        let scheme_end = url.find("://").map_or(0, |i| i + 3);
        let redacted = match url[scheme_end..].find('@') {
            Some(at) => {
                let userinfo = &url[scheme_end..scheme_end + at];
                match userinfo.find(':') {
                    Some(colon) => format!(
                        "{}{}:***{}",
                        &url[..scheme_end],
                        &userinfo[..colon],
                        &url[scheme_end + at..]
                    ),
                    None => url.clone(),
                }
            }
            None => url.clone(),
        };
        write!(f, "{redacted:?}")
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<DatabaseUrl, D::Error> {
        DatabaseUrl::new(&String::deserialize(de)?).map_err(serde::de::Error::custom)
    }
}

/// `[database]`: SQLite by default, PostgreSQL when a URL is given.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// PostgreSQL URL. Unset means SQLite at `sqlite_path`.
    pub url: Option<DatabaseUrl>,
    /// Environment variable holding the PostgreSQL URL (instead of `url`).
    pub url_env: Option<SecretRef>,
    /// SQLite file; relative paths are relative to the config file's
    /// directory. Default `repeaterd.db`.
    pub sqlite_path: PathBuf,
    /// Most PostgreSQL connections. Default 10.
    #[serde(deserialize_with = "nonzero")]
    pub max_connections: u32,
    /// SQLite read connections: the API's pool, and as many kept for the
    /// scheduler's reads (there is always exactly one writer). Default 4.
    #[serde(deserialize_with = "nonzero")]
    pub sqlite_read_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> DatabaseConfig {
        // The store's own defaults (the daemon's tests keep them equal).
        DatabaseConfig {
            url: None,
            url_env: None,
            sqlite_path: PathBuf::from("repeaterd.db"),
            max_connections: 10,
            sqlite_read_connections: 4,
        }
    }
}

impl DatabaseConfig {
    /// The PostgreSQL URL, reading `url_env` if that is how it was given;
    /// `None` means SQLite.
    pub fn postgres_url(&self) -> Result<Option<Secret>, ConfigError> {
        if let Some(url) = &self.url {
            return Ok(Some(Secret::from_config(url.expose())));
        }
        match &self.url_env {
            Some(var) => var.resolve().map(Some),
            None => Ok(None),
        }
    }
}

/// `[plugins]`: where user plugins live and the sandbox limits of every call.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Directory of user plugins (`<name>.wasm`), watched for changes.
    /// Relative to the config file's directory. Unset: built-ins and uploads only.
    pub dir: Option<PathBuf>,
    /// Where compiled plugins are cached. Default `plugin-cache` beside the config.
    pub cache_dir: PathBuf,
    /// Where the component of every plugin version a repeater still runs is
    /// kept, so pins and older versions survive a restart. Default
    /// `plugin-versions` beside the config.
    pub versions_dir: PathBuf,
    /// Memory cap per plugin call, MiB. Default 64.
    #[serde(deserialize_with = "nonzero")]
    pub memory_mb: u32,
    /// CPU cap per plugin call, milliseconds. Default 100.
    #[serde(deserialize_with = "nonzero")]
    pub cpu_ms: u64,
    /// Largest request body a plugin may build, bytes. Default 1 MiB.
    #[serde(deserialize_with = "nonzero")]
    pub max_body_bytes: usize,
    /// Largest total size of the headers a plugin may set, bytes. Default 64 KiB.
    #[serde(deserialize_with = "nonzero")]
    pub max_header_bytes: usize,
}

impl Default for PluginsConfig {
    fn default() -> PluginsConfig {
        PluginsConfig {
            dir: None,
            cache_dir: PathBuf::from("plugin-cache"),
            versions_dir: PathBuf::from("plugin-versions"),
            memory_mb: 64,
            cpu_ms: 100,
            max_body_bytes: 1024 * 1024,
            max_header_bytes: 64 * 1024,
        }
    }
}

fn ip_nets<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(de)?
        .iter()
        .map(|text| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{text:?} is not a CIDR block or IP address (e.g. \"127.0.0.1/32\")"
                    ))
                })
        })
        .collect()
}

/// `[security]`: API tokens and the outbound SSRF allow-list.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Environment variable holding the admin bearer token. Unset: the admin
    /// API is refused.
    pub admin_token_env: Option<SecretRef>,
    /// Per-domain tokens: domain → environment variable. A domain token
    /// reaches only its own domain.
    pub domain_tokens: BTreeMap<String, SecretRef>,
    /// Private, loopback or link-local networks outbound requests may reach
    /// anyway. Everything non-public is refused unless listed here.
    #[serde(deserialize_with = "ip_nets")]
    pub allow_private: Vec<IpNet>,
}
