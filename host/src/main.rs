//! The `repeaterd` command line: one subcommand per verb. Each verb's code
//! lives in its own module under `cli/`; this file only parses and dispatches.

mod cli;

use clap::{Parser, Subcommand};

/// The daemon allocates and frees many small blocks per delivery (plugin
/// stores, request and reply headers, rows). Under glibc's allocator those
/// calls took about 15 % of the daemon's CPU at full load; mimalloc's
/// per-thread free lists serve the same calls at a fraction of that. It is
/// built without transparent huge pages (`no_thp`): asking for them tripled
/// the idle daemon's resident memory (40 MB under glibc, up to 143 MB with
/// huge pages, 61 MB without).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// repeaterd: forwards events to remote HTTP APIs, reliably and fairly.
#[derive(Debug, Parser)]
#[command(name = "repeaterd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The verbs of `repeaterd`.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: API, dispatcher, plugin hot reload.
    Serve(cli::daemon::ConfigArg),
    /// Apply the database migrations and exit.
    Migrate(cli::daemon::ConfigArg),
    /// Load a config file and print a summary, or the error naming key and line.
    CheckConfig(cli::daemon::ConfigArg),
    /// Inspect and act on records through a running daemon's API: one by
    /// id, or a repeater's in bulk by state or by last error.
    ///
    /// Prints a table for people when stdout is a terminal, the API's JSON
    /// answer when it is piped or redirected; `--output table|json` chooses.
    #[command(subcommand)]
    Records(cli::admin::RecordsCommand),
    /// Inspect and act on repeaters through a running daemon's API.
    ///
    /// Prints a table for people when stdout is a terminal, the API's JSON
    /// answer when it is piped or redirected; `--output table|json` chooses.
    #[command(subcommand)]
    Repeaters(cli::admin::RepeatersCommand),
    /// List the plugins of a running daemon, through its API.
    ///
    /// Prints a table for people when stdout is a terminal, the API's JSON
    /// answer when it is piped or redirected; `--output table|json` chooses.
    #[command(subcommand)]
    Plugins(cli::admin::PluginsCommand),
    /// Work with plugins: dry-run one, check a component, or start a new one.
    #[command(subcommand)]
    Plugin(cli::plugin::PluginCommand),
}

fn main() -> std::process::ExitCode {
    // Logs (plugin logs included) go to stderr; command output to stdout.
    // Colours only on a terminal: a journal or a log file gets plain text.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REPEATERD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => cli::daemon::serve(args),
        Command::Migrate(args) => cli::daemon::migrate(args),
        Command::CheckConfig(args) => cli::daemon::check_config(args),
        Command::Records(command) => cli::admin::records(command),
        Command::Repeaters(command) => cli::admin::repeaters(command),
        Command::Plugins(command) => cli::admin::plugins(command),
        Command::Plugin(command) => cli::plugin::run(command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
