//! Shared parts of the end-to-end tests: a real receiver, the real daemon
//! binary with a generated config, and fresh databases.

#![allow(dead_code)]

pub mod daemon;
pub mod receiver;

pub use daemon::*;
pub use receiver::*;

/// Generates one test per store for each named async test function taking a
/// [`Backend`]: `<name>::sqlite` and `<name>::postgres`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let backend = $crate::common::Backend::postgres(stringify!($name)).await;
                super::$name(backend).await
            }
        }
    )* };
}
