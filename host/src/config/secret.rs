//! Secrets by reference: the config names an environment variable, and the
//! value is read only when needed, into a type whose `Debug` hides it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use super::ConfigError;

/// The name of an environment variable holding a secret.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SecretRef(String);

/// A secret's value. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret written in the config text itself (an inline database URL).
    pub(crate) fn from_config(value: &str) -> Secret {
        Secret(value.to_owned())
    }

    /// The value, for the one place that needs it (a header, a comparison).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Checks the shape of an environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn check_env_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not an environment variable name (expected letters, digits and '_', not starting with a digit)"
        ))
    }
}

impl SecretRef {
    /// A reference to the variable `name`, if it looks like one.
    pub fn new(name: &str) -> Result<SecretRef, String> {
        check_env_name(name)?;
        Ok(SecretRef(name.to_owned()))
    }

    /// The variable's name.
    pub fn var(&self) -> &str {
        &self.0
    }

    /// Reads the secret from the environment. Fails naming the variable when
    /// it is unset, empty or not UTF-8.
    pub fn resolve(&self) -> Result<Secret, ConfigError> {
        match std::env::var(&self.0) {
            Ok(value) if !value.is_empty() => Ok(Secret(value)),
            Ok(_) => Err(ConfigError::MissingSecret {
                var: self.0.clone(),
                reason: "is empty",
            }),
            Err(std::env::VarError::NotPresent) => Err(ConfigError::MissingSecret {
                var: self.0.clone(),
                reason: "is not set",
            }),
            Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::MissingSecret {
                var: self.0.clone(),
                reason: "is not valid UTF-8",
            }),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "env:{}", self.0)
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}", self.0)
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<SecretRef, D::Error> {
        let name = String::deserialize(de)?;
        SecretRef::new(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_are_checked_and_missing_ones_are_named() {
        assert!(SecretRef::new("ACME_TOKEN").is_ok());
        assert!(SecretRef::new("_x1").is_ok());
        for bad in ["", "1X", "A-B", "A B", "$A"] {
            assert!(SecretRef::new(bad).is_err(), "{bad:?} accepted");
        }
        let missing = SecretRef::new("REPEATERD_TEST_SURELY_UNSET_VAR").unwrap();
        let err = missing.resolve().unwrap_err();
        assert!(err.to_string().contains("REPEATERD_TEST_SURELY_UNSET_VAR"));
        // PATH is set in every test environment; its value must not leak.
        let path = SecretRef::new("PATH").unwrap().resolve().unwrap();
        assert!(!format!("{path:?}").contains(path.expose()));
    }
}
