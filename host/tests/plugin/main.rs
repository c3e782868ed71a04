//! The plugin host (`repeaterd::plugin`) with the real components built
//! from `plugins/`: the built-in plugins, the compiled-code cache, the
//! components' WIT exports, the registry, the reply rules and the sandbox.
//! `plugin_logging` runs in an executable of its own (see there).

mod builtins;
mod cache;
mod components;
mod fixtures;
mod registry;
mod reply_rules;
mod sandbox;
