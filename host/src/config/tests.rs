use std::path::Path;
use std::time::Duration;

use super::*;
use crate::model::{AuthSpec, Ordering, RepeaterLimits};

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/repeaterd/repeaterd.toml"))
}

/// Asserts an error names `key` on `line` and mentions `needle`.
fn assert_invalid(text: &str, line: usize, key: &str, needle: &str) {
    let err = parse(text).expect_err("config should be refused");
    let shown = err.to_string();
    assert_eq!(err.line(), Some(line), "wrong line in: {shown}");
    assert_eq!(err.key(), Some(key), "wrong key in: {shown}");
    assert!(
        shown.contains(needle),
        "{shown:?} does not mention {needle:?}"
    );
    assert!(shown.contains(&format!(":{line}:")), "{shown}");
}

const FULL: &str = r#"
[server]
listen = "127.0.0.1:9090"
max_body_bytes = 2097152
max_pending_events = 500
shutdown_grace = "10s"

[database]
url = "postgres://postgres:hunter2@127.0.0.1:5432/test"
max_connections = 5

[dispatch]
max_inflight = 64
concurrency = 4
rate_per_second = 20.0
burst = 5
domain_rate_per_second = 100.0
retry_schedule = ["1s", "10s", "1m"]
max_attempts = 4
max_age = "1d"
backoff_min = "10s"
backoff_max = "10m"
retention = "2d"

[plugins]
dir = "plugins"
cache_dir = "/var/cache/repeaterd"
memory_mb = 32
cpu_ms = 50

[security]
admin_token_env = "REPEATERD_ADMIN_TOKEN"
allow_private = ["127.0.0.1/32", "::1"]

[security.domain_tokens]
acme = "ACME_TOKEN"

[[repeater]]
domain = "acme"
name = "crm"
url = "https://crm.example/hooks"
plugin = "json-forward"
event_types = ["case.created", "case.closed"]
ordering = "key"
concurrency = 2
rate_per_second = 1.5
timeout = "5s"
retry_schedule = ["30s", "5m"]
backoff_max = "30m"

[repeater.plugin_config]
template = "v2"
fields = ["id", "status"]
since = 2026-01-02T03:04:05Z
nested = { depth = 2, ratio = 0.5 }

[repeater.auth]
type = "bearer"
token_env = "CRM_TOKEN"

[repeater.signing]
secret_envs = ["CRM_SIGNING", "CRM_SIGNING_OLD"]

[[repeater]]
domain = "acme"
name = "archive"
url = "http://127.0.0.1:8081/"
plugin = "form-xml"
plugin_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
auth = { type = "basic", username = "svc", password_env = "ARCHIVE_PASSWORD" }
"#;

#[test]
fn a_full_valid_config_parses() {
    let config = parse(FULL).unwrap();
    assert_eq!(config.server.listen.port(), 9090);
    assert_eq!(config.server.max_body_bytes, 2 * 1024 * 1024);
    assert_eq!(config.server.max_pending_events, 500);
    assert_eq!(config.server.shutdown_grace, Duration::from_secs(10));
    assert_eq!(config.database.max_connections, 5);
    assert!(config.database.postgres_url().unwrap().is_some());
    assert_eq!(config.dispatch.max_inflight, 64);
    assert_eq!(config.dispatch.rate_per_second, Some(20.0));
    assert_eq!(
        config.plugins.dir.as_deref(),
        Some(Path::new("/etc/repeaterd/plugins"))
    );
    assert_eq!(config.plugins.cache_dir, Path::new("/var/cache/repeaterd"));
    assert_eq!(
        config.plugins.versions_dir,
        Path::new("/etc/repeaterd/plugin-versions"),
        "kept versions default to beside the config file"
    );
    assert_eq!(config.security.domain_tokens["acme"].var(), "ACME_TOKEN");
    assert_eq!(config.security.allow_private.len(), 2);

    assert_eq!(config.repeaters.len(), 2);
    let crm = &config.repeaters[0];
    assert_eq!((crm.domain.as_str(), crm.name.as_str()), ("acme", "crm"));
    assert_eq!(crm.ordering, Ordering::Key);
    assert_eq!(crm.plugin_config["template"], "v2");
    assert_eq!(crm.plugin_config["fields"][1], "status");
    assert_eq!(crm.plugin_config["since"], "2026-01-02T03:04:05Z");
    assert_eq!(crm.plugin_config["nested"]["depth"], 2);
    assert_eq!(crm.plugin_config["nested"]["ratio"], 0.5);
    assert_eq!(
        crm.limits,
        RepeaterLimits {
            concurrency: Some(2),
            rate_per_second: Some(1.5),
            timeout_ms: Some(5000),
            retry_schedule_seconds: Some(vec![30, 300]),
            backoff_max_seconds: Some(1800),
            ..RepeaterLimits::default()
        }
    );
    assert_eq!(
        crm.auth,
        Some(AuthSpec::Bearer {
            token_env: "CRM_TOKEN".into()
        })
    );
    assert_eq!(crm.signing.as_ref().unwrap().secret_envs.len(), 2);
    let archive = &config.repeaters[1];
    assert!(matches!(archive.auth, Some(AuthSpec::Basic { .. })));
    assert_eq!(archive.ordering, Ordering::None);
    assert!(archive.plugin_config.as_object().unwrap().is_empty());

    // Repeater overrides win; the rest comes from [dispatch].
    let limits = config.dispatch.effective(&crm.limits);
    assert_eq!(limits.concurrency, 2);
    assert_eq!(limits.burst, 5);
    assert_eq!(limits.timeout, Duration::from_secs(5));
    assert_eq!(limits.max_attempts, 4);
    assert_eq!(limits.backoff_min, Duration::from_secs(10));
    assert_eq!(limits.backoff_max, Duration::from_secs(1800));
    assert_eq!(
        limits.retry_schedule,
        [Duration::from_secs(30), Duration::from_secs(300)]
    );
    assert_eq!(limits.max_age, Duration::from_secs(86_400));
    assert_eq!(limits.rate_per_second, Some(1.5));
    assert!(config.dispatch.domain_rate_per_second.is_some());
}

#[test]
fn secrets_never_show_in_debug_output() {
    let config = parse(FULL).unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains("hunter2"), "password leaked: {shown}");
    assert!(shown.contains("postgres:***@127.0.0.1"));
    assert!(shown.contains("REPEATERD_ADMIN_TOKEN"));
    assert!(!format!("{config}").contains("hunter2"));
}

#[test]
fn an_empty_file_gives_designs_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.server.max_body_bytes, 1024 * 1024);
    assert_eq!(config.database.url, None);
    assert_eq!(
        config.database.sqlite_path,
        Path::new("/etc/repeaterd/repeaterd.db")
    );
    let d = &config.dispatch;
    assert_eq!(d.max_inflight, 256);
    assert_eq!(d.concurrency, 7);
    assert_eq!(d.timeout, Duration::from_secs(30));
    assert_eq!(d.response_excerpt_bytes, 16 * 1024);
    assert_eq!(d.jitter, 0.2);
    let schedule: Vec<u64> = d.retry_schedule.iter().map(Duration::as_secs).collect();
    assert_eq!(schedule, [5, 300, 1800, 7200, 18_000, 36_000, 36_000]);
    assert_eq!(d.backoff_min, Duration::from_secs(30));
    assert_eq!(d.backoff_max, Duration::from_secs(3600));
    assert_eq!(d.retention, Duration::from_secs(7 * 86_400));
    assert_eq!(config.plugins.memory_mb, 64);
    assert_eq!(config.plugins.cpu_ms, 100);
    assert!(config.security.admin_token_env.is_none());
    assert!(config.repeaters.is_empty());
    let limits = d.effective(&RepeaterLimits::default());
    assert_eq!(limits.concurrency, 7);
    assert_eq!(limits.rate_per_second, None);
    assert_eq!(limits.backoff_min, Duration::from_secs(30));
}

const REPEATER: &str = "[[repeater]]\ndomain = \"acme\"\nname = \"crm\"\nurl = \"https://crm.example/\"\nplugin = \"json-forward\"\n";

#[test]
fn unknown_keys_are_named_with_their_line() {
    assert_invalid("colour = 1\n", 1, "colour", "unknown field `colour`");
    assert_invalid("\n[bogus]\nx = 1\n", 2, "bogus", "unknown field `bogus`");
    assert_invalid(
        "[dispatch]\nconcurrency = 3\nconcurency = 4\n",
        3,
        "dispatch.concurency",
        "unknown field `concurency`",
    );
    let text = format!("{REPEATER}{REPEATER}timeout_seconds = 5\n").replace(
        "name = \"crm\"\nurl = \"https://crm.example/\"\nplugin = \"json-forward\"\ntimeout",
        "name = \"crm2\"\nurl = \"https://crm.example/\"\nplugin = \"json-forward\"\ntimeout",
    );
    assert_invalid(
        &text,
        11,
        "repeater[1].timeout_seconds",
        "unknown field `timeout_seconds`",
    );
    assert_invalid(
        &format!("{REPEATER}[repeater.auth]\ntype = \"bearer\"\ntoken = \"x\"\n"),
        8,
        "repeater[0].auth.token",
        "unknown field `token`",
    );
}

#[test]
fn wrong_types_and_bad_values_are_named_with_their_line() {
    assert_invalid(
        "[dispatch]\n\nconcurrency = \"seven\"\n",
        3,
        "dispatch.concurrency",
        "invalid type",
    );
    assert_invalid(
        "[dispatch]\nconcurrency = 0\n",
        2,
        "dispatch.concurrency",
        "greater than zero",
    );
    assert_invalid(
        "[dispatch]\ntimeout = \"30\"\n",
        2,
        "dispatch.timeout",
        "no unit",
    );
    assert_invalid("[dispatch]\njitter = 1.5\n", 2, "dispatch.jitter", "jitter");
    assert_invalid(
        "[server]\nlisten = \"localhost\"\n",
        2,
        "server.listen",
        "socket address",
    );
    assert_invalid(
        "[security]\nallow_private = [\"10.0.0.0/33\"]\n",
        2,
        "security.allow_private",
        "10.0.0.0/33",
    );
    assert_invalid(
        "[security]\nadmin_token_env = \"my-token\"\n",
        2,
        "security.admin_token_env",
        "environment variable",
    );
    assert_invalid(
        "[dispatch]\nbackoff_min = \"2h\"\n",
        2,
        "dispatch.backoff_min",
        "larger than backoff_max",
    );
    assert_invalid(
        "[database]\nurl = \"mysql://x\"\n",
        2,
        "database.url",
        "postgres://",
    );
    assert_invalid(
        &format!("{REPEATER}ordering = \"lifo\"\n"),
        6,
        "repeater[0].ordering",
        "lifo",
    );
    assert_invalid(
        &format!("{REPEATER}max_age = \"1500ms\"\n"),
        6,
        "repeater[0].max_age",
        "whole number of seconds",
    );
    assert_invalid(
        &format!("{REPEATER}[repeater.signing]\nsecret_envs = [\"OK\", \"not ok\"]\n"),
        7,
        "repeater[0].signing.secret_envs",
        "not ok",
    );
    assert_invalid(
        "[security.domain_tokens]\nAcme = \"ACME_TOKEN\"\n",
        2,
        "security.domain_tokens.Acme",
        "invalid domain",
    );
}

#[test]
fn plugin_config_that_json_cannot_carry_is_refused() {
    assert_invalid(
        &format!("{REPEATER}[repeater.plugin_config]\nlimit = inf\n"),
        6,
        "repeater[0].plugin_config",
        "JSON",
    );
}

#[test]
fn bad_slugs_are_named_with_their_line() {
    assert_invalid(
        &REPEATER.replace("domain = \"acme\"", "domain = \"Acme Corp\""),
        2,
        "repeater[0].domain",
        "invalid domain \"Acme Corp\"",
    );
    assert_invalid(
        &REPEATER.replace("name = \"crm\"", "name = \"-crm\""),
        3,
        "repeater[0].name",
        "invalid repeater",
    );
}

#[test]
fn bad_urls_are_named_with_their_line() {
    for (url, needle) in [
        ("ftp://crm.example/", "only http and https"),
        ("/hooks", "not an absolute"),
        ("https://", "not a valid URL"),
        ("not a url", "not a valid URL"),
    ] {
        assert_invalid(
            &REPEATER.replace("https://crm.example/", url),
            4,
            "repeater[0].url",
            needle,
        );
    }
}

#[test]
fn duplicate_repeaters_are_refused_naming_both_lines() {
    let text = format!("{REPEATER}\n{REPEATER}");
    assert_invalid(&text, 9, "repeater[1].name", "already declared at line 1");
    // Same name in another domain is fine.
    let other = format!("{REPEATER}\n{}", REPEATER.replace("acme", "globex"));
    assert_eq!(parse(&other).unwrap().repeaters.len(), 2);
}

#[test]
fn missing_files_and_secrets_are_named() {
    let err = Config::load(Path::new("/nonexistent/repeaterd.toml")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/repeaterd.toml"));
    let config = parse("[database]\nurl_env = \"REPEATERD_TEST_UNSET_DB_URL\"\n").unwrap();
    let err = config.database.postgres_url().unwrap_err();
    assert!(err.to_string().contains("REPEATERD_TEST_UNSET_DB_URL"));
    assert_invalid(
        "[database]\nurl = \"postgres://x\"\nurl_env = \"DB_URL\"\n",
        3,
        "database.url_env",
        "not both",
    );
}

#[test]
fn the_example_config_parses_and_shows_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/repeaterd.toml");
    let config = Config::load(&path).unwrap();
    let defaults = parse("").unwrap();
    assert_eq!(config.server, defaults.server);
    assert_eq!(config.dispatch, defaults.dispatch);
    assert_eq!(
        (config.plugins.memory_mb, config.plugins.cpu_ms),
        (defaults.plugins.memory_mb, defaults.plugins.cpu_ms)
    );
    assert_eq!(
        config.plugins.max_body_bytes,
        defaults.plugins.max_body_bytes
    );
    assert_eq!(
        config.plugins.max_header_bytes,
        defaults.plugins.max_header_bytes
    );
    assert_eq!(
        config.database.max_connections,
        defaults.database.max_connections
    );
    assert!(!config.repeaters.is_empty());
}

#[test]
fn syntax_errors_carry_their_line() {
    let err = parse("[server]\nlisten = \"127.0.0.1:1\"\n\n[dispatch\n").unwrap_err();
    assert_eq!(err.line(), Some(4), "{err}");
    let err = parse("[dispatch]\nconcurrency = 3\nconcurrency = 4\n").unwrap_err();
    assert_eq!(err.line(), Some(3), "{err}");
    assert!(err.to_string().contains("concurrency"), "{err}");
}

#[test]
fn database_pool_defaults_are_the_documented_ones() {
    let defaults = crate::config::DatabaseConfig::default();
    // The numbers the field docs and the README give; the daemon's tests
    // check they are also the store's own.
    assert_eq!(defaults.max_connections, 10);
    assert_eq!(defaults.sqlite_read_connections, 4);
}

#[test]
fn a_multi_line_string_that_looks_like_tables_does_not_move_errors() {
    let text = format!(
        "{REPEATER}plugin_config = {{ template = \"\"\"\n[other]\nordering = 1\n\"\"\" }}\nordering = \"lifo\"\n"
    );
    assert_invalid(&text, 10, "repeater[0].ordering", "lifo");
}
