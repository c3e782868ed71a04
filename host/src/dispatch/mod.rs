//! tmp
pub mod target;
