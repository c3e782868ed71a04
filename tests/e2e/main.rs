//! End to end: the real `repeaterd` binary with its built-in plugins (and
//! the `hostile` test plugin), real receivers on 127.0.0.1, SQLite files and
//! the PostgreSQL test server. One test executable, one module per subject;
//! run one subject with `cargo test -p repeaterd-tests delivery::`.

mod broken_config;
mod console;
mod crash;
mod database_restart;
mod delivery;
mod disk_full;
mod failover;
mod faulty_receiver;
mod hostile_plugins;
mod hostile_receivers;
mod overload;
mod plugin_cli;
mod plugin_languages;
mod plugin_new;
mod rollout;
mod scheduling;
