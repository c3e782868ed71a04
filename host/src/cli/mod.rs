//! The verbs of the `repeaterd` binary, one module each.

pub mod admin;
pub mod daemon;
