//! The two stores a test runs on, and [`on_both_stores!`](crate::on_both_stores),
//! which makes one test per store from one test body.

use std::path::Path;

use crate::postgres::PgDatabase;

/// Which store a test uses.
#[derive(Debug)]
pub enum Backend {
    /// A SQLite file in the test's own directory.
    Sqlite,
    /// A fresh PostgreSQL database, dropped with this value.
    Postgres(PgDatabase),
}

impl Backend {
    /// A fresh PostgreSQL database on the test server.
    pub async fn postgres() -> Backend {
        Backend::Postgres(PgDatabase::create().await)
    }

    /// `"sqlite"` or `"postgres"`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The `[database]` keys of a daemon config whose files live in `dir`.
    pub fn database_toml(&self, dir: &Path) -> String {
        match self {
            Backend::Sqlite => format!(
                "sqlite_path = {:?}\n",
                dir.join("repeaterd.sqlite").display().to_string()
            ),
            Backend::Postgres(database) => format!("url = {:?}\n", database.url),
        }
    }
}

/// Makes `<test>::sqlite` and `<test>::postgres` from each named async test
/// body.
///
/// `on_both_stores!(a, b)` calls each body with a [`Backend`]. With
/// `on_both_stores!(open = f; a, b)` it calls `f(backend).await` first, which
/// returns `(argument, guard)`: the body gets `argument`, and `guard` (a
/// temporary directory, a [`PgDatabase`]) lives until the body ends. Paths
/// are resolved in the module that invokes the macro.
#[macro_export]
macro_rules! on_both_stores {
    (open = $open:ident; $($test:ident),+ $(,)?) => { $(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let (argument, _guard) = super::$open($crate::Backend::Sqlite).await;
                super::$test(argument).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let (argument, _guard) = super::$open($crate::Backend::postgres().await).await;
                super::$test(argument).await
            }
        }
    )+ };
    ($($test:ident),+ $(,)?) => { $(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$test($crate::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$test($crate::Backend::postgres().await).await
            }
        }
    )+ };
}
