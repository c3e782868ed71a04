//! The config of a test daemon, in the daemon's own TOML schema (see
//! `examples/repeaterd.toml`): fast retry and backoff timings, loopback
//! destinations allowed, the admin token from [`ADMIN_TOKEN_ENV`], and the
//! knobs tests turn.

use std::path::Path;

use crate::binary;
use crate::daemon::ADMIN_TOKEN_ENV;

/// One `[[repeater]]` table.
#[derive(Debug, Clone)]
pub struct RepeaterConfig {
    pub domain: String,
    pub name: String,
    pub url: String,
    pub plugin: String,
    /// Inline TOML table for `plugin_config`, e.g. `{ envelope = true }`.
    pub plugin_config: String,
    /// Further keys as TOML lines, e.g. `concurrency = 3`.
    pub extra: Vec<String>,
}

impl RepeaterConfig {
    /// A json-forward repeater with the envelope on: its requests carry the
    /// record id as the idempotency key and say which attempt they are.
    pub fn json_forward(domain: &str, name: &str, url: &str) -> RepeaterConfig {
        RepeaterConfig {
            domain: domain.to_owned(),
            name: name.to_owned(),
            url: url.to_owned(),
            plugin: "json-forward".to_owned(),
            plugin_config: "{ envelope = true }".to_owned(),
            extra: Vec::new(),
        }
    }

    /// A repeater using `plugin` with an inline TOML config table.
    pub fn with_plugin(
        domain: &str,
        name: &str,
        url: &str,
        plugin: &str,
        config: &str,
    ) -> RepeaterConfig {
        RepeaterConfig {
            plugin: plugin.to_owned(),
            plugin_config: config.to_owned(),
            ..RepeaterConfig::json_forward(domain, name, url)
        }
    }

    /// Adds a key, as a TOML line.
    pub fn extra(mut self, line: &str) -> RepeaterConfig {
        self.extra.push(line.to_owned());
        self
    }
}

/// A test daemon's config. Durations are config strings (`"200ms"`).
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub repeaters: Vec<RepeaterConfig>,
    pub max_inflight: u32,
    pub lease_ttl: String,
    pub batch_size: u32,
    pub concurrency: u32,
    pub timeout: String,
    pub retry_schedule: Vec<String>,
    pub max_attempts: u32,
    pub backoff_min: String,
    pub backoff_max: String,
    pub retry_after_max: String,
    pub plugin_memory_mb: u32,
    pub plugin_cpu_ms: u32,
    /// Domains that get a token of their own ([`domain_token`]).
    pub domain_tokens: Vec<String>,
    /// Extra `key = value` lines of the `[server]` table.
    pub server_extra: Vec<String>,
    /// Further environment variables of the daemon (secrets named by
    /// `token_env`, `secret_envs` and the like).
    pub env: Vec<(String, String)>,
}

/// The environment variable that holds `domain`'s token in a test daemon.
pub fn domain_token_env(domain: &str) -> String {
    format!(
        "REPEATERD_E2E_TOKEN_{}",
        domain.to_ascii_uppercase().replace('-', "_")
    )
}

/// The token of `domain` in a test daemon started with it in
/// [`DaemonConfig::domain_tokens`].
pub fn domain_token(domain: &str) -> String {
    format!("e2e-{domain}-token-0123456789")
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            repeaters: Vec::new(),
            max_inflight: 64,
            lease_ttl: "5s".to_owned(),
            batch_size: 50,
            concurrency: 16,
            timeout: "10s".to_owned(),
            retry_schedule: vec!["100ms".to_owned()],
            max_attempts: 10,
            backoff_min: "200ms".to_owned(),
            backoff_max: "2s".to_owned(),
            retry_after_max: "30s".to_owned(),
            plugin_memory_mb: 64,
            plugin_cpu_ms: 100,
            domain_tokens: Vec::new(),
            server_extra: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl DaemonConfig {
    /// The config text of a daemon listening on `port` with its files in
    /// `dir`; `database` holds the `[database]` keys
    /// ([`Backend::database_toml`](crate::Backend::database_toml)).
    pub fn to_toml(&self, dir: &Path, port: u16, database: &str) -> String {
        let quoted: Vec<String> = self
            .retry_schedule
            .iter()
            .map(|delay| format!("{delay:?}"))
            .collect();
        let mut text = format!(
            r#"[server]
listen = "127.0.0.1:{port}"
shutdown_grace = "5s"
{server_extra}

[database]
{database}
[dispatch]
max_inflight = {max_inflight}
lease_ttl = {lease_ttl:?}
batch_size = {batch_size}
concurrency = {concurrency}
timeout = {timeout:?}
retry_schedule = [{schedule}]
jitter = 0.2
max_attempts = {max_attempts}
backoff_min = {backoff_min:?}
backoff_max = {backoff_max:?}
retry_after_max = {retry_after_max:?}

[plugins]
dir = {plugins_dir:?}
cache_dir = {cache_dir:?}
memory_mb = {memory_mb}
cpu_ms = {cpu_ms}

[security]
admin_token_env = "{ADMIN_TOKEN_ENV}"
allow_private = ["127.0.0.1/32"]
"#,
            server_extra = self.server_extra.join("\n"),
            max_inflight = self.max_inflight,
            lease_ttl = self.lease_ttl,
            batch_size = self.batch_size,
            concurrency = self.concurrency,
            timeout = self.timeout,
            schedule = quoted.join(", "),
            max_attempts = self.max_attempts,
            backoff_min = self.backoff_min,
            backoff_max = self.backoff_max,
            retry_after_max = self.retry_after_max,
            plugins_dir = dir.join("plugins").display().to_string(),
            cache_dir = binary::plugin_cache_dir().display().to_string(),
            memory_mb = self.plugin_memory_mb,
            cpu_ms = self.plugin_cpu_ms,
        );
        if !self.domain_tokens.is_empty() {
            text.push_str("\n[security.domain_tokens]\n");
            for domain in &self.domain_tokens {
                text.push_str(&format!("{domain} = {:?}\n", domain_token_env(domain)));
            }
        }
        for repeater in &self.repeaters {
            text.push_str(&format!(
                "\n[[repeater]]\ndomain = {:?}\nname = {:?}\nurl = {:?}\nplugin = {:?}\nplugin_config = {}\n",
                repeater.domain, repeater.name, repeater.url, repeater.plugin, repeater.plugin_config
            ));
            for line in &repeater.extra {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }
}
