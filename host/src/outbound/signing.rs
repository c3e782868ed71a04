//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>).
//!
//! A signed request carries `webhook-id` (the record id, stable across
//! attempts, so receivers can also use it to drop duplicates),
//! `webhook-timestamp` (Unix seconds) and `webhook-signature`: one
//! `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` per configured
//! secret, separated by spaces, so a receiver can rotate its secret without a
//! gap. Secrets are looked up (normally in the environment, see `secrets`)
//! each time a request is signed, so the value never sits in a config struct
//! or a log line.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;
#[cfg(test)]
use subtle::ConstantTimeEq;

use super::secrets::SecretSource;
use crate::model::SigningSpec;

/// `webhook-id`: the message id, here the record id.
pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
/// `webhook-timestamp`: Unix seconds when the request was signed.
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// `webhook-signature`: space-separated `v1,<base64>` signatures.
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// Why a request could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// The environment variable naming a secret is unset or not UTF-8.
    #[error("signing secret variable {var} is not set")]
    MissingSecret {
        /// The variable's name.
        var: String,
    },
    /// The secret is not `whsec_<base64>` or base64.
    #[error("signing secret in {source_name} is not base64 (expected whsec_<base64> or base64)")]
    BadSecret {
        /// Where the secret came from (a variable name).
        source_name: String,
    },
    /// No secret is configured.
    #[error("signing is configured with no secret_envs")]
    NoSecrets,
    /// The message id cannot go in a header.
    #[error("message id {0:?} cannot be sent as a webhook-id header")]
    BadMessageId(String),
}

/// One decoded signing key. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct SigningKey {
    key: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({} bytes, redacted)", self.key.len())
    }
}

impl SigningKey {
    /// Decodes a secret written as `whsec_<base64>` or plain base64.
    /// `source_name` (a variable name) is used in the error.
    pub fn parse(secret: &str, source_name: &str) -> Result<SigningKey, SigningError> {
        let encoded = secret.trim();
        let encoded = encoded.strip_prefix("whsec_").unwrap_or(encoded);
        match STANDARD.decode(encoded) {
            Ok(key) if !key.is_empty() => Ok(SigningKey { key }),
            _ => Err(SigningError::BadSecret {
                source_name: source_name.to_owned(),
            }),
        }
    }

    /// Looks up and decodes the secret named `var` (an environment variable).
    pub fn lookup(secrets: &dyn SecretSource, var: &str) -> Result<SigningKey, SigningError> {
        let secret = secrets
            .secret(var)
            .ok_or_else(|| SigningError::MissingSecret {
                var: var.to_owned(),
            })?;
        SigningKey::parse(&secret, var)
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// The `webhook-signature` value: `v1,<base64>` for each key, space-separated.
pub fn sign_standard_webhooks(
    keys: &[SigningKey],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let mut value = String::new();
    for key in keys {
        if !value.is_empty() {
            value.push(' ');
        }
        value.push_str("v1,");
        STANDARD.encode_string(
            key.mac(msg_id, timestamp, body).finalize().into_bytes(),
            &mut value,
        );
    }
    value
}

/// True when any `v1` signature in `header` matches any of `keys` for this
/// message (compared in constant time). Unknown versions are ignored.
#[cfg(test)]
pub fn verify_standard_webhooks(
    keys: &[SigningKey],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
) -> bool {
    let expected: Vec<Vec<u8>> = keys
        .iter()
        .map(|key| {
            key.mac(msg_id, timestamp, body)
                .finalize()
                .into_bytes()
                .to_vec()
        })
        .collect();
    header.split(' ').any(|part| {
        let Some(encoded) = part.strip_prefix("v1,") else {
            return false;
        };
        let Ok(given) = STANDARD.decode(encoded) else {
            return false;
        };
        expected
            .iter()
            .any(|want| bool::from(want.as_slice().ct_eq(given.as_slice())))
    })
}

/// Looks up the secrets a [`SigningSpec`] names, in order.
pub fn keys_for(
    spec: &SigningSpec,
    secrets: &dyn SecretSource,
) -> Result<Vec<SigningKey>, SigningError> {
    if spec.secret_envs.is_empty() {
        return Err(SigningError::NoSecrets);
    }
    spec.secret_envs
        .iter()
        .map(|var| SigningKey::lookup(secrets, var))
        .collect()
}

/// Signs a request as `spec` says, looking its secrets up now, and sets the
/// three Standard Webhooks headers on `headers` (replacing any the plugin
/// set). `msg_id` is the record id; `timestamp` is Unix seconds.
pub fn sign_request(
    spec: &SigningSpec,
    secrets: &dyn SecretSource,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    headers: &mut HeaderMap,
) -> Result<(), SigningError> {
    let keys = keys_for(spec, secrets)?;
    let id =
        HeaderValue::from_str(msg_id).map_err(|_| SigningError::BadMessageId(msg_id.to_owned()))?;
    let signature = sign_standard_webhooks(&keys, msg_id, timestamp, body);
    let signature = HeaderValue::from_str(&signature).expect("base64 is a valid header value");
    headers.insert(WEBHOOK_ID, id);
    headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
    headers.insert(WEBHOOK_SIGNATURE, signature);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use super::super::secrets::StaticSecrets;
    use super::*;

    const OLD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    // Raw base64 (no prefix) of 32 bytes, the rotated-in secret.
    const NEW_SECRET: &str = "3q2+78r+ur4AAQIDBAUGBwgJCgsMDQ4PEBESExQVFhc=";

    fn two_keys() -> Vec<SigningKey> {
        vec![
            SigningKey::parse(OLD_SECRET, "OLD").unwrap(),
            SigningKey::parse(NEW_SECRET, "NEW").unwrap(),
        ]
    }

    #[test]
    fn matches_the_published_standard_webhooks_example() {
        let key = SigningKey::parse(OLD_SECRET, "OLD").unwrap();
        let signature = sign_standard_webhooks(
            &[key],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn one_signature_per_secret_and_each_verifies_alone() {
        let keys = two_keys();
        let body = b"{\"a\":1}";
        let header = sign_standard_webhooks(&keys, "rec_1", 1700000000, body);
        assert_eq!(header.split(' ').count(), 2);
        assert!(header.split(' ').all(|part| part.starts_with("v1,")));
        for key in &keys {
            assert!(verify_standard_webhooks(
                std::slice::from_ref(key),
                "rec_1",
                1700000000,
                body,
                &header
            ));
        }
    }

    #[test]
    fn a_tampered_body_id_or_timestamp_fails_verification() {
        let keys = two_keys();
        let header = sign_standard_webhooks(&keys, "rec_1", 1700000000, b"amount=10");
        assert!(verify_standard_webhooks(
            &keys,
            "rec_1",
            1700000000,
            b"amount=10",
            &header
        ));
        assert!(!verify_standard_webhooks(
            &keys,
            "rec_1",
            1700000000,
            b"amount=1000",
            &header
        ));
        assert!(!verify_standard_webhooks(
            &keys,
            "rec_2",
            1700000000,
            b"amount=10",
            &header
        ));
        assert!(!verify_standard_webhooks(
            &keys,
            "rec_1",
            1700000001,
            b"amount=10",
            &header
        ));
        let stranger = SigningKey::parse("c2VjcmV0LW9mLXNvbWVvbmUtZWxzZQ==", "X").unwrap();
        assert!(!verify_standard_webhooks(
            &[stranger],
            "rec_1",
            1700000000,
            b"amount=10",
            &header
        ));
    }

    #[test]
    fn secrets_are_accepted_with_or_without_the_whsec_prefix() {
        let raw = SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "A").unwrap();
        let prefixed = SigningKey::parse(OLD_SECRET, "B").unwrap();
        assert_eq!(
            sign_standard_webhooks(&[raw], "m", 1, b"x"),
            sign_standard_webhooks(&[prefixed], "m", 1, b"x")
        );
        let err = SigningKey::parse("whsec_not base64!", "HOOK_SECRET").unwrap_err();
        assert_eq!(
            err,
            SigningError::BadSecret {
                source_name: "HOOK_SECRET".into()
            }
        );
        assert!(!format!("{:?}", two_keys()).contains("MfKQ"));
    }

    #[test]
    fn sign_request_sets_the_three_headers_from_named_secrets() {
        let secrets =
            StaticSecrets::from_pairs([("HOOK_OLD", OLD_SECRET), ("HOOK_NEW", NEW_SECRET)]);
        let spec = SigningSpec {
            secret_envs: vec!["HOOK_OLD".into(), "HOOK_NEW".into()],
        };
        let mut headers = HeaderMap::new();
        headers.insert(WEBHOOK_SIGNATURE, HeaderValue::from_static("v1,forged"));
        sign_request(&spec, &secrets, "rec_9", 1700000123, b"body", &mut headers).unwrap();
        assert_eq!(headers.get(WEBHOOK_ID).unwrap(), "rec_9");
        assert_eq!(headers.get(WEBHOOK_TIMESTAMP).unwrap(), "1700000123");
        let signature = headers.get(WEBHOOK_SIGNATURE).unwrap().to_str().unwrap();
        assert_eq!(
            signature,
            sign_standard_webhooks(&two_keys(), "rec_9", 1700000123, b"body")
        );

        let missing = SigningSpec {
            secret_envs: vec!["HOOK_OLD".into(), "HOOK_GONE".into()],
        };
        let err = sign_request(&missing, &secrets, "rec_9", 1, b"", &mut headers).unwrap_err();
        assert_eq!(
            err.to_string(),
            "signing secret variable HOOK_GONE is not set"
        );
        let none = SigningSpec {
            secret_envs: vec![],
        };
        assert_eq!(
            sign_request(&none, &secrets, "rec_9", 1, b"", &mut headers).unwrap_err(),
            SigningError::NoSecrets
        );
    }

    /// Verifies signatures with Python's standard library only, an
    /// implementation that shares no code with ours.
    const PYTHON_VERIFIER: &str = r#"
import base64, hashlib, hmac, json, sys

def key_of(secret):
    if secret.startswith("whsec_"):
        secret = secret[len("whsec_"):]
    return base64.b64decode(secret, validate=True)

results = []
for case in json.load(sys.stdin):
    signed = (case["id"] + "." + str(case["timestamp"]) + ".").encode() + base64.b64decode(case["body"])
    given = [part[3:] for part in case["header"].split(" ") if part.startswith("v1,")]
    per_secret = []
    for secret in case["secrets"]:
        want = base64.b64encode(hmac.new(key_of(secret), signed, hashlib.sha256).digest()).decode()
        per_secret.append(any(hmac.compare_digest(want, g) for g in given))
    results.append(per_secret)
print(json.dumps(results))
"#;

    #[test]
    fn python_standard_library_verifies_our_signatures() {
        let keys = two_keys();
        let bodies: [&[u8]; 5] = [
            b"",
            b"{\"type\":\"case.created\",\"id\":42}",
            "unicode: \u{e9}\u{4e2d}\u{1f600}".as_bytes(),
            &[0u8, 255, 10, 13, 46, 46],
            &[b'x'; 70_000],
        ];
        let mut cases = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            let id = format!("rec_{i}");
            let timestamp = 1_700_000_000 + i as i64;
            let header = sign_standard_webhooks(&keys, &id, timestamp, body);
            cases.push(serde_json::json!({
                "id": id, "timestamp": timestamp, "header": header,
                "body": STANDARD.encode(body), "secrets": [OLD_SECRET, NEW_SECRET],
            }));
        }
        // The same header presented with a tampered body must fail in Python too.
        let header = sign_standard_webhooks(&keys, "rec_t", 1_700_000_999, b"amount=10");
        cases.push(serde_json::json!({
            "id": "rec_t", "timestamp": 1_700_000_999, "header": header,
            "body": STANDARD.encode(b"amount=99"), "secrets": [OLD_SECRET, NEW_SECRET],
        }));

        let mut child = Command::new("python3")
            .arg("-c")
            .arg(PYTHON_VERIFIER)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(serde_json::to_string(&cases).unwrap().as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "python3 failed");
        let results: Vec<Vec<bool>> = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(results.len(), bodies.len() + 1);
        for (i, per_secret) in results[..bodies.len()].iter().enumerate() {
            assert_eq!(per_secret, &[true, true], "body {i}");
        }
        assert_eq!(results[bodies.len()], [false, false], "tampered body");
    }
}
