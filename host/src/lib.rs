//! repeaterd: forwards events to remote HTTP APIs, reliably and fairly.

pub mod plugin;
