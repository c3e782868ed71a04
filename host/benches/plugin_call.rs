//! Plugin call cost (filled in below).
fn main() {}
