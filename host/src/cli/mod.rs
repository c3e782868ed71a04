//! The verbs of the `repeaterd` binary, one module per verb group. They sit
//! at the binary's edge, so they report errors with `anyhow`.

pub mod admin;
pub mod daemon;
pub mod plugin;
pub mod scaffold;
pub mod table;
