//! Secrets in connection configs: given by reference (`{"secret": "NAME"}`), resolved from a secrets file
//! or the environment, held in `secrecy` types, and redacted from everything a connector says.

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// Whether a presented token equals a secret one, compared in constant time. Both are hashed first, so the
/// comparison takes the same time whatever their lengths.
pub fn token_matches(presented: &str, expected: &SecretString) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    Sha256::digest(presented.as_bytes()).ct_eq(&Sha256::digest(expected.expose_secret().as_bytes())).into()
}

/// If `value` is a secret reference `{"secret": "NAME"}`, the name.
pub fn secret_reference(value: &Value) -> Option<&str> {
    match value {
        Value::Object(map) if map.len() == 1 => map.get("secret")?.as_str(),
        _ => None,
    }
}

/// Where secret values come from: a secrets file first (when given), then the process environment.
#[derive(Default)]
pub struct SecretStore {
    file: HashMap<String, SecretString>,
    use_environment: bool,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.file.keys().collect();
        names.sort();
        f.debug_struct("SecretStore").field("names", &names).field("environment", &self.use_environment).finish()
    }
}

impl SecretStore {
    /// Secrets from the environment only.
    pub fn from_env() -> Self {
        SecretStore { file: HashMap::new(), use_environment: true }
    }

    /// Secrets from the given pairs only (tests, embedding platforms with their own vault).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let file = pairs.into_iter().map(|(k, v)| (k.into(), SecretString::from(v.into()))).collect();
        SecretStore { file, use_environment: false }
    }

    /// Secrets from a file of `NAME=value` lines (`#` starts a comment; values may be quoted), then from the
    /// environment.
    pub fn from_file_and_env(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the secrets file {}: {e}", path.display()))?;
        let mut file = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                // Never echo the line: it may be a secret value written without a name.
                return Err(format!("{}:{}: expected NAME=value", path.display(), number + 1));
            };
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            file.insert(name.trim().to_string(), SecretString::from(value.to_string()));
        }
        Ok(SecretStore { file, use_environment: true })
    }

    pub fn get(&self, name: &str) -> Option<SecretString> {
        if let Some(value) = self.file.get(name) {
            return Some(value.clone());
        }
        if self.use_environment {
            return std::env::var(name).ok().map(SecretString::from);
        }
        None
    }
}

/// Replaces the connection's secret values wherever they appear in text a connector produced.
#[derive(Default, Clone)]
pub struct Redactor {
    secrets: Vec<SecretString>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

pub const REDACTED: &str = "[REDACTED]";

impl Redactor {
    pub fn new(secrets: Vec<SecretString>) -> Self {
        // Very short values would blank out ordinary words; they are not credentials anyway.
        let mut secrets: Vec<_> = secrets.into_iter().filter(|s| s.expose_secret().len() >= 4).collect();
        // Longest first, so that a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.expose_secret().len()));
        Redactor { secrets }
    }

    /// One redactor for the secrets of several connections.
    pub fn merge(redactors: &[Redactor]) -> Redactor {
        Redactor::new(redactors.iter().flat_map(|r| r.secrets.iter().cloned()).collect())
    }

    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in &self.secrets {
            if text.contains(secret.expose_secret()) {
                text = text.replace(secret.expose_secret(), REDACTED);
            }
        }
        text
    }

    fn holds_a_secret(&self, text: &str) -> bool {
        self.secrets.iter().any(|secret| text.contains(secret.expose_secret()))
    }

    /// Redacts every string in a JSON value, keys included.
    pub fn redact_json(&self, value: &Value) -> Value {
        let mut value = value.clone();
        self.redact_json_in_place(&mut value);
        value
    }

    /// Redacts every string in a JSON value, keys included, where it is. Rewrites only the strings that hold a
    /// secret: a traced value rarely has one, and rebuilding every map and string of it cost more than the copy
    /// itself.
    pub fn redact_json_in_place(&self, value: &mut Value) {
        if self.secrets.is_empty() {
            return;
        }
        match value {
            Value::String(text) => {
                if self.holds_a_secret(text) {
                    *text = self.redact(text);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.redact_json_in_place(item)),
            Value::Object(map) => {
                if map.keys().any(|key| self.holds_a_secret(key)) {
                    *map = std::mem::take(map).into_iter().map(|(key, item)| (self.redact(&key), item)).collect();
                }
                map.values_mut().for_each(|item| self.redact_json_in_place(item));
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_single_key_objects() {
        assert_eq!(secret_reference(&json!({"secret": "X"})), Some("X"));
        assert_eq!(secret_reference(&json!({"secret": "X", "other": 1})), None);
        assert_eq!(secret_reference(&json!("X")), None);
    }

    #[test]
    fn secrets_file_is_parsed_and_never_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.env");
        std::fs::write(&path, "# comment\nA=one\nB = \"two words\"\n").unwrap();
        let store = SecretStore::from_file_and_env(&path).unwrap();
        assert_eq!(store.get("A").unwrap().expose_secret(), "one");
        assert_eq!(store.get("B").unwrap().expose_secret(), "two words");
        assert!(!format!("{store:?}").contains("one"));

        std::fs::write(&path, "sup3r-s3cret-value\n").unwrap();
        let err = SecretStore::from_file_and_env(&path).unwrap_err();
        assert!(err.contains(":1: expected NAME=value") && !err.contains("s3cret"), "{err}");
    }

    #[test]
    fn redactor_replaces_secret_values() {
        let redactor = Redactor::new(vec!["hunter2-secret".to_string().into(), "abc".to_string().into()]);
        assert_eq!(redactor.redact("token hunter2-secret sent"), "token [REDACTED] sent");
        assert_eq!(redactor.redact("abc stays"), "abc stays");
        let value = redactor.redact_json(&json!({"a": ["x hunter2-secret"]}));
        assert_eq!(value, json!({"a": ["x [REDACTED]"]}));
        // Keys too, at any depth; everything else, and the order of keys, stays as it was.
        let traced = json!({"z": 1, "hunter2-secret": {"k": "hunter2-secret", "n": [true, null, 2.5]}, "a": "abc"});
        let redacted = redactor.redact_json(&traced);
        assert_eq!(redacted, json!({"z": 1, "[REDACTED]": {"k": "[REDACTED]", "n": [true, null, 2.5]}, "a": "abc"}));
        let keys: Vec<&String> = redacted.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["z", "[REDACTED]", "a"]);
        let clean = json!({"b": 2, "a": ["plain", {"c": "text"}]});
        assert_eq!(redactor.redact_json(&clean), clean);
        assert_eq!(Redactor::new(Vec::new()).redact_json(&traced), traced);
    }
}
