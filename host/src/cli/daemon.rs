//! The daemon verbs: `serve` runs the daemon, `migrate` applies the
//! database migrations, `check-config` loads a config file and prints what
//! it would run (or the error naming the key and line).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use repeaterd::config::Config;
use repeaterd::daemon;

/// The config file argument shared by the daemon verbs.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The TOML config file.
    #[arg(long, short = 'c', env = "REPEATERD_CONFIG")]
    pub config: PathBuf,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `repeaterd serve --config FILE`.
pub fn serve(args: ConfigArg) -> anyhow::Result<()> {
    // Plugins are compiled by this same executable in a child process, so
    // the compiler's memory is not kept by the daemon.
    let compiler = std::env::current_exe().ok();
    runtime()?.block_on(daemon::serve(&args.config, compiler))?;
    Ok(())
}

/// `repeaterd migrate --config FILE`.
pub fn migrate(args: ConfigArg) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    runtime()?.block_on(daemon::open_store(&config))?;
    println!("migrations applied to {}", database_label(&config));
    Ok(())
}

/// `repeaterd check-config --config FILE`.
pub fn check_config(args: ConfigArg) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    println!("{}: ok", args.config.display());
    println!("  listen:        {}", config.server.listen);
    println!("  database:      {}", database_label(&config));
    println!("  max_inflight:  {}", config.dispatch.max_inflight);
    let mut domains: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for spec in &config.repeaters {
        domains
            .entry(spec.domain.as_str())
            .or_default()
            .push(format!("{} ({} -> {})", spec.name, spec.plugin, spec.url));
    }
    println!(
        "  repeaters:     {} in {} domains",
        config.repeaters.len(),
        domains.len()
    );
    for (domain, repeaters) in domains {
        println!("    {domain}:");
        for repeater in repeaters {
            println!("      {repeater}");
        }
    }
    Ok(())
}

fn database_label(config: &Config) -> String {
    let database = &config.database;
    match (&database.url, &database.url_env) {
        // The URL's Debug form hides its password.
        (Some(url), _) => format!("PostgreSQL {url:?}"),
        (None, Some(var)) => format!("PostgreSQL (URL from ${})", var.var()),
        (None, None) => format!("SQLite {}", database.sqlite_path.display()),
    }
}
