//! Where the host finds the secrets that auth and signing use.
//!
//! Config names secrets by environment variable (`token_env = "..."`), never
//! inline. They are looked up each time they are used, not resolved once at
//! start: a missing variable then shows as an error on the attempt (naming the
//! variable, never a value), and nothing long-lived holds the value.

#[cfg(test)]
use std::collections::HashMap;

/// Looks up a secret by the name config gives it.
pub trait SecretSource: Send + Sync {
    /// The secret named `name`, if it is set.
    fn secret(&self, name: &str) -> Option<String>;
}

/// The process environment: the source the daemon uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvSecrets;

impl SecretSource for EnvSecrets {
    fn secret(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A fixed set of named secrets, for tests, which must not change the shared
/// process environment while other tests run.
#[cfg(test)]
#[derive(Clone, Default)]
pub struct StaticSecrets(pub HashMap<String, String>);

#[cfg(test)]
impl std::fmt::Debug for StaticSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.0.keys().collect();
        names.sort();
        f.debug_struct("StaticSecrets")
            .field("names", &names)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
impl StaticSecrets {
    /// Secrets from `(name, value)` pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> StaticSecrets {
        StaticSecrets(
            pairs
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
        )
    }
}

#[cfg(test)]
impl SecretSource for StaticSecrets {
    fn secret(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_source_reads_variables_set_for_the_process() {
        // PATH is set for every test run; an unlikely name is not.
        assert!(EnvSecrets.secret("PATH").is_some());
        assert_eq!(
            EnvSecrets.secret("REPEATERD_SURELY_UNSET_SECRET_5d1c"),
            None
        );
    }

    #[test]
    fn debug_output_names_secrets_but_never_shows_values() {
        let secrets = StaticSecrets::from_pairs([("TOKEN", "s3cr3t-value")]);
        let shown = format!("{secrets:?}");
        assert!(shown.contains("TOKEN"));
        assert!(!shown.contains("s3cr3t-value"));
        assert_eq!(secrets.secret("TOKEN").as_deref(), Some("s3cr3t-value"));
    }
}
