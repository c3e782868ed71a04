//! The SQL seam between the two backends. Every query is written once, as
//! a named query beside the code that runs it (`lanes`, `ingest`, `admin`,
//! `retention`), with `$n` placeholders; [`Dialect`] carries the few real
//! differences between SQLite and PostgreSQL, and renders each text for
//! one of them.
//!
//! Record states appear in SQL as literal numbers, never as bound
//! parameters: PostgreSQL uses a partial index (the ready set of pending
//! and retrying records; the terminal records) only when the query's own
//! text implies the index's predicate. The numbers come from
//! [`RecordState`] through the predicates below, so no source file spells
//! them out.

use std::sync::LazyLock;

use crate::model::RecordState;

/// The SQL dialect of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// PostgreSQL, shared by several daemon processes.
    Postgres,
    /// SQLite, owned by one daemon process.
    Sqlite,
}

impl Dialect {
    /// `text` with its `$n` placeholders as this dialect numbers them:
    /// `$n` for PostgreSQL, `?n` for SQLite (which reads `$n` as a name and
    /// numbers names by first use, whatever their digits say).
    pub(crate) fn render(self, text: &str) -> String {
        match self {
            Dialect::Postgres => text.to_owned(),
            Dialect::Sqlite => {
                let mut out = String::with_capacity(text.len());
                let mut chars = text.chars().peekable();
                while let Some(c) = chars.next() {
                    let numbered = c == '$' && chars.peek().is_some_and(char::is_ascii_digit);
                    out.push(if numbered { '?' } else { c });
                }
                out
            }
        }
    }

    /// `VALUES (..), (..)`: `rows` rows of `columns` placeholders, the only
    /// placeholders of a multi-row statement. PostgreSQL numbers them from
    /// `$1`; SQLite's are anonymous, so a statement's text stays short for
    /// the group writer's statement cache to hash.
    pub(crate) fn values(self, rows: usize, columns: usize) -> String {
        let mut out = String::from("VALUES ");
        for row in 0..rows {
            out.push_str(if row == 0 { "(" } else { ", (" });
            self.push_placeholders(&mut out, row * columns, columns);
            out.push(')');
        }
        out
    }

    /// `count` placeholders separated by commas, for an `IN (..)` list that
    /// is a statement's only placeholders.
    pub(crate) fn list(self, count: usize) -> String {
        let mut out = String::new();
        self.push_placeholders(&mut out, 0, count);
        out
    }

    /// Appends placeholders `after + 1` to `after + count`.
    fn push_placeholders(self, out: &mut String, after: usize, count: usize) {
        for n in after + 1..=after + count {
            if n > after + 1 {
                out.push_str(", ");
            }
            match self {
                Dialect::Postgres => {
                    out.push('$');
                    out.push_str(&n.to_string());
                }
                Dialect::Sqlite => out.push('?'),
            }
        }
    }

    /// The smaller of `a` and `b`, either of which may be NULL; NULL only
    /// when both are. PostgreSQL's `LEAST` skips NULLs; SQLite's `min` is
    /// NULL when any argument is, so NULLs stand in as the largest integer
    /// and that value turns back into NULL.
    pub(crate) fn least(self, a: &str, b: &str) -> String {
        match self {
            Dialect::Postgres => format!("LEAST({a}, {b})"),
            Dialect::Sqlite => format!(
                "NULLIF(min(COALESCE({a}, {MAX}), COALESCE({b}, {MAX})), {MAX})",
                MAX = i64::MAX
            ),
        }
    }

    /// The greatest of `values`, none of which may be NULL (callers wrap a
    /// nullable one in `COALESCE`): the two dialects differ on NULLs.
    pub(crate) fn greatest(self, values: &[&str]) -> String {
        match self {
            Dialect::Postgres => format!("GREATEST({})", values.join(", ")),
            Dialect::Sqlite => format!("max({})", values.join(", ")),
        }
    }

    /// What locks a repeater's row while its lease is taken. PostgreSQL:
    /// `FOR NO KEY UPDATE SKIP LOCKED`, so contending processes skip a lane
    /// another is taking instead of queueing behind it. SQLite: nothing, as
    /// its one writer holds the whole file's lock.
    pub(crate) fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Postgres => " FOR NO KEY UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        }
    }

    /// The conflict resolution of the group writer's statements: SQLite's
    /// `OR FAIL` keeps no statement journal (ADR 9); PostgreSQL has no such
    /// clause and needs none.
    pub(crate) fn or_fail(self) -> &'static str {
        match self {
            Dialect::Postgres => "",
            Dialect::Sqlite => " OR FAIL",
        }
    }

    /// The statement that begins a write transaction. SQLite's `BEGIN
    /// IMMEDIATE` takes the write lock up front instead of failing to
    /// upgrade a read lock halfway; PostgreSQL locks rows as it goes.
    pub(crate) fn begin_write(self) -> &'static str {
        match self {
            Dialect::Postgres => "BEGIN",
            Dialect::Sqlite => "BEGIN IMMEDIATE",
        }
    }
}

/// A database the store runs on, with its dialect and its schema's
/// migrations (embedded in the binary).
pub(crate) trait SqlDatabase: sqlx::Database {
    /// Its SQL dialect.
    const DIALECT: Dialect;
    /// Its migrations.
    const MIGRATIONS: sqlx::migrate::Migrator;
}

impl SqlDatabase for sqlx::Postgres {
    const DIALECT: Dialect = Dialect::Postgres;
    const MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");
}

impl SqlDatabase for sqlx::Sqlite {
    const DIALECT: Dialect = Dialect::Sqlite;
    const MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
}

/// Most rows of one multi-row statement (a group's writes, leases taken
/// or given up together); more run as several statements.
pub(crate) const MOST_ROWS: usize = 256;

/// `items` in runs of [`MOST_ROWS`], then of the powers of two that make up
/// the rest (95 rows run as 64, 16, 8, 4, 2 and 1). A statement's text
/// names its row count, and an ever new count is an ever new statement to
/// parse and plan: profiled under load, preparing the group writer's
/// statements took about as long as running them. With powers of two each
/// kind of statement has at most nine texts, prepared once per connection.
pub(crate) fn runs<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = rest.len().min(MOST_ROWS);
        let len = 1 << len.ilog2();
        let (run, after) = rest.split_at(len);
        rest = after;
        Some(run)
    })
}

/// `{column} IN (pending, retrying)`: a record not yet terminal, the
/// predicate of the ready-set indexes.
pub(crate) fn unfinished(column: &str) -> String {
    state_in(column, &[RecordState::Pending, RecordState::Retrying])
}

/// `{column} >= succeeded`: a terminal record, the predicate of the
/// retention index. Every terminal state is stored above every unfinished
/// one (a test checks it).
pub(crate) fn terminal(column: &str) -> String {
    format!("{column} >= {}", FIRST_TERMINAL.as_i16())
}

/// The lowest stored number of a terminal state.
const FIRST_TERMINAL: RecordState = RecordState::Succeeded;

/// `{column} IN (..)`: one of `states`.
pub(crate) fn state_in(column: &str, states: &[RecordState]) -> String {
    let codes: Vec<String> = states.iter().map(|s| s.as_i16().to_string()).collect();
    format!("{column} IN ({})", codes.join(", "))
}

/// Declares a struct of named queries: one `String` field per query, and
/// `new(dialect)`, which writes each text (an expression that may use the
/// dialect) and renders its placeholders for that dialect. Tests walk every
/// query through `named()`.
macro_rules! named_queries {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident($dialect:ident) {
            $($(#[$field_meta:meta])* $field:ident: $text:expr,)*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($(#[$field_meta])* pub(crate) $field: String,)*
        }

        impl $name {
            /// Every query of this group, written for `dialect`.
            pub(crate) fn new($dialect: $crate::store::sql::Dialect) -> Self {
                Self { $($field: $dialect.render(&$text),)* }
            }

            /// Every query with its name.
            #[cfg(test)]
            pub(crate) fn named(&self) -> Vec<(&'static str, &str)> {
                vec![$((stringify!($field), self.$field.as_str()),)*]
            }
        }
    };
}
pub(crate) use named_queries;

/// Every fixed named query of the store, rendered for one dialect.
pub(crate) struct Statements {
    /// The scheduler's and the lanes' queries.
    pub lanes: super::lanes::LaneSql,
    /// Repeater administration, status and record listings.
    pub admin: super::admin::AdminSql,
    /// The purge of terminal records.
    pub retention: super::retention::RetentionSql,
}

impl Statements {
    /// The statements of `dialect`, written once per process on first use.
    pub(crate) fn of(dialect: Dialect) -> &'static Statements {
        static POSTGRES: LazyLock<Statements> =
            LazyLock::new(|| Statements::new(Dialect::Postgres));
        static SQLITE: LazyLock<Statements> = LazyLock::new(|| Statements::new(Dialect::Sqlite));
        match dialect {
            Dialect::Postgres => &POSTGRES,
            Dialect::Sqlite => &SQLITE,
        }
    }

    fn new(dialect: Dialect) -> Statements {
        Statements {
            lanes: super::lanes::LaneSql::new(dialect),
            admin: super::admin::AdminSql::new(dialect),
            retention: super::retention::RetentionSql::new(dialect),
        }
    }

    /// Every fixed query with its group and name.
    #[cfg(test)]
    pub(crate) fn named(&self) -> Vec<(String, &str)> {
        let groups = [
            ("lanes", self.lanes.named()),
            ("admin", self.admin.named()),
            ("retention", self.retention.named()),
        ];
        groups
            .into_iter()
            .flat_map(|(group, queries)| {
                queries
                    .into_iter()
                    .map(move |(name, text)| (format!("{group}.{name}"), text))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
