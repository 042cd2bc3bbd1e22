//! Secrets in connection configs: given by reference (`{"secret": "NAME"}`), resolved from a secrets file
//! or the environment, held in `secrecy` types, and redacted from everything a connector says.

use aho_corasick::{AhoCorasick, MatchKind};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

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

/// Where secret values come from: a secrets file first (when given), then the process environment. A store
/// [`restricted`](SecretStore::restricted) for flows also says which names may be referenced at all.
#[derive(Default)]
pub struct SecretStore {
    file: HashMap<String, SecretString>,
    use_environment: bool,
    /// `Some`: only these names resolve; `None` on a restricted store: only the file's names.
    allow: Option<Vec<String>>,
    restricted: bool,
}

/// Why a secret reference does not resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretMissing {
    /// The operator does not let flows reference this name.
    NotAllowed,
    /// No value for it.
    NotSet,
}

/// Whether `name` is on an allow-list whose entries are names or prefixes ending in `*`.
fn listed(allow: &[String], name: &str) -> bool {
    allow.iter().any(|entry| match entry.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => entry == name,
    })
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.file.keys().collect();
        names.sort();
        f.debug_struct("SecretStore")
            .field("names", &names)
            .field("environment", &self.use_environment)
            .field("allow", &self.allow.as_deref().unwrap_or_default())
            .field("restricted", &self.restricted)
            .finish()
    }
}

impl SecretStore {
    /// Secrets from the environment only.
    pub fn from_env() -> Self {
        SecretStore { use_environment: true, ..SecretStore::default() }
    }

    /// Secrets from the given pairs only (tests, embedding platforms with their own vault).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let file = pairs.into_iter().map(|(k, v)| (k.into(), SecretString::from(v.into()))).collect();
        SecretStore { file, ..SecretStore::default() }
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
        Ok(SecretStore { file, use_environment: true, ..SecretStore::default() })
    }

    /// The secrets a flow may reference: the names on `allow` (entries ending in `*` are prefixes), or without
    /// it the names this store's file defines; their values from the file, then from the environment only when
    /// `environment` is true. What the operator's own configuration references uses the unrestricted store.
    pub fn restricted(&self, allow: Option<Vec<String>>, environment: bool) -> SecretStore {
        SecretStore {
            file: self.file.clone(),
            use_environment: environment && self.use_environment,
            allow,
            restricted: true,
        }
    }

    pub fn get(&self, name: &str) -> Option<SecretString> {
        self.lookup(name).ok()
    }

    /// A secret's value, or why there is none.
    pub fn lookup(&self, name: &str) -> Result<SecretString, SecretMissing> {
        let allowed = match &self.allow {
            Some(allow) => listed(allow, name),
            None => !self.restricted || self.file.contains_key(name),
        };
        if !allowed {
            return Err(SecretMissing::NotAllowed);
        }
        if let Some(value) = self.file.get(name) {
            return Ok(value.clone());
        }
        if self.use_environment {
            return std::env::var(name).map(SecretString::from).map_err(|_| SecretMissing::NotSet);
        }
        Err(SecretMissing::NotSet)
    }
}

/// Replaces the connection's secret values wherever they appear in text a connector produced, in every form a
/// secret is commonly passed on in: as it is and with its letters' case changed, JSON-escaped, URL-encoded, in
/// hexadecimal (either case), and in base64 (standard and URL-safe, padded or not, also where it sits inside a
/// longer encoding such as `Basic base64(user:secret)`).
#[derive(Default, Clone)]
pub struct Redactor {
    secrets: Vec<SecretString>,
    /// The forms whose case does not matter (the value, its escapes, hex), matched ignoring ASCII case.
    any_case: Option<Arc<AhoCorasick>>,
    /// The base64 forms, whose case is part of the encoding.
    exact_case: Option<Arc<AhoCorasick>>,
    /// Whether a secret is made of digits (and may be a JSON number).
    numeric: bool,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

pub const REDACTED: &str = "[REDACTED]";

/// Encoded forms shorter than this are not redacted: they would blank out ordinary words.
const MIN_FORM_LEN: usize = 6;

/// The escaped and encoded forms of one secret whose letter case does not matter.
fn case_free_forms(secret: &str) -> Vec<String> {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    // JavaScript's encodeURIComponent leaves these as they are.
    const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'!')
        .remove(b'~')
        .remove(b'*')
        .remove(b'\'')
        .remove(b'(')
        .remove(b')');
    let json = serde_json::to_string(secret).unwrap_or_default();
    vec![
        json.get(1..json.len() - 1).unwrap_or_default().to_string(),
        utf8_percent_encode(secret, NON_ALPHANUMERIC).to_string(),
        utf8_percent_encode(secret, COMPONENT).to_string(),
        form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
        hex::encode(secret),
    ]
}

/// The base64 forms of one secret: the whole encoding, and for each of the three alignments it may have inside a
/// longer encoded text, the characters that depend on the secret's bytes alone.
fn base64_forms(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut forms = vec![STANDARD.encode(secret), URL_SAFE.encode(secret)];
    for offset in 0..3 {
        let mut bytes = vec![0u8; offset];
        bytes.extend_from_slice(secret.as_bytes());
        // Characters mixing the bytes before the secret, or those after it, vary with the surrounding text.
        let skip = [0, 2, 3][offset];
        let keep = bytes.len() / 3 * 4;
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(&bytes);
            if keep > skip {
                forms.push(encoded[skip..keep].to_string());
            }
        }
    }
    forms
}

/// One automaton finding every form given, the longest where several start at one place.
fn automaton(mut forms: Vec<String>, any_case: bool) -> Option<Arc<AhoCorasick>> {
    forms.sort();
    forms.dedup();
    if forms.is_empty() {
        return None;
    }
    let built = AhoCorasick::builder()
        .ascii_case_insensitive(any_case)
        .match_kind(MatchKind::LeftmostLongest)
        .build(forms)
        .expect("literal patterns always build");
    Some(Arc::new(built))
}

impl Redactor {
    pub fn new(secrets: Vec<SecretString>) -> Self {
        // Very short values would blank out ordinary words; they are not credentials anyway.
        let secrets: Vec<_> = secrets.into_iter().filter(|s| s.expose_secret().len() >= 4).collect();
        let mut case_free = Vec::new();
        let mut base64 = Vec::new();
        for secret in &secrets {
            let value = secret.expose_secret();
            case_free.push(value.to_string());
            case_free.extend(case_free_forms(value).into_iter().filter(|f| f.len() >= MIN_FORM_LEN));
            base64.extend(base64_forms(value).into_iter().filter(|f| f.len() >= MIN_FORM_LEN));
        }
        let numeric = secrets.iter().any(|s| s.expose_secret().bytes().all(|b| b.is_ascii_digit()));
        Redactor { secrets, any_case: automaton(case_free, true), exact_case: automaton(base64, false), numeric }
    }

    /// One redactor for the secrets of several connections.
    pub fn merge(redactors: &[Redactor]) -> Redactor {
        Redactor::new(redactors.iter().flat_map(|r| r.secrets.iter().cloned()).collect())
    }

    /// Where the secrets' forms are in `text`, as sorted byte ranges that do not overlap.
    fn spans(&self, text: &str) -> Vec<std::ops::Range<usize>> {
        let mut spans: Vec<std::ops::Range<usize>> = [&self.any_case, &self.exact_case]
            .into_iter()
            .flatten()
            .flat_map(|automaton| automaton.find_iter(text).map(|m| m.range()))
            .collect();
        spans.sort_by_key(|span| span.start);
        let mut merged: Vec<std::ops::Range<usize>> = Vec::with_capacity(spans.len());
        for span in spans {
            match merged.last_mut() {
                Some(last) if span.start <= last.end => last.end = last.end.max(span.end),
                _ => merged.push(span),
            }
        }
        merged
    }

    pub fn redact(&self, text: &str) -> String {
        let spans = self.spans(text);
        if spans.is_empty() {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for span in spans {
            out.push_str(&text[at..span.start]);
            out.push_str(REDACTED);
            at = span.end;
        }
        out.push_str(&text[at..]);
        out
    }

    fn holds_a_secret(&self, text: &str) -> bool {
        [&self.any_case, &self.exact_case].into_iter().flatten().any(|automaton| automaton.is_match(text))
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
            // A secret of digits alone may come back as a number.
            Value::Number(number) if self.numeric => {
                let text = number.to_string();
                if self.holds_a_secret(&text) {
                    *value = Value::String(self.redact(&text));
                }
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
    fn a_restricted_store_resolves_only_what_the_operator_allows() {
        let store = SecretStore::from_pairs([("CRM_KEY", "k1"), ("OTHER", "o1")]);
        // The file's names alone, without an allow-list; never the environment unless enabled.
        let flows = store.restricted(None, true);
        assert_eq!(flows.get("OTHER").unwrap().expose_secret(), "o1");
        assert_eq!(flows.lookup("PATH").unwrap_err(), SecretMissing::NotAllowed);
        // With an allow-list: the names and prefixes on it.
        let flows = store.restricted(Some(vec!["CRM_*".into(), "MISSING".into()]), false);
        assert_eq!(flows.get("CRM_KEY").unwrap().expose_secret(), "k1");
        assert_eq!(flows.lookup("OTHER").unwrap_err(), SecretMissing::NotAllowed);
        assert_eq!(flows.lookup("MISSING").unwrap_err(), SecretMissing::NotSet);
        // The environment only when the operator enables it, and only for allowed names.
        let with_env = SecretStore::from_env().restricted(Some(vec!["PATH".into()]), true);
        assert!(with_env.get("PATH").is_some());
        assert_eq!(with_env.lookup("HOME").unwrap_err(), SecretMissing::NotAllowed);
        let without_env = SecretStore::from_env().restricted(Some(vec!["PATH".into()]), false);
        assert_eq!(without_env.lookup("PATH").unwrap_err(), SecretMissing::NotSet);
        assert_eq!(
            SecretStore::from_env().restricted(None, true).lookup("PATH").unwrap_err(),
            SecretMissing::NotAllowed
        );
        // An unrestricted store is as before.
        assert!(SecretStore::from_env().get("PATH").is_some());
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

    #[test]
    fn redactor_finds_encoded_and_case_changed_copies() {
        use base64::Engine as _;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
        let secret = "s3cr3t/Value+with?&=chars~\"q\"";
        let redactor = Redactor::new(vec![secret.to_string().into()]);
        let copies = [
            secret.to_string(),
            secret.to_uppercase(),
            secret.to_lowercase(),
            serde_json::to_string(secret).unwrap(),
            url::form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>(),
            percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC).to_string(),
            percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
                .to_lowercase(),
            hex::encode(secret),
            hex::encode_upper(secret),
            STANDARD.encode(secret),
            URL_SAFE.encode(secret),
            URL_SAFE_NO_PAD.encode(secret),
            // Inside a longer encoding, at each of the three alignments: what `Basic` authorization sends.
            STANDARD.encode(format!("user:{secret}")),
            STANDARD.encode(format!("ab:{secret}:tail")),
            URL_SAFE_NO_PAD.encode(format!("a{secret}")),
        ];
        for copy in copies {
            let text = format!("before {copy} after");
            let redacted = redactor.redact(&text);
            assert!(redacted.contains(REDACTED), "{copy} was not redacted: {redacted}");
            assert!(!redacted.contains("s3cr3t") && !redacted.contains("S3CR3T"), "{redacted}");
            assert!(redacted.starts_with("before ") && redacted.ends_with(" after"), "{redacted}");
            let nested = redactor.redact_json(&json!({"k": [text]}));
            assert!(nested["k"][0].as_str().unwrap().contains(REDACTED), "{nested}");
        }
        // Everything else stays, and short values are not redacted out of ordinary words.
        assert_eq!(redactor.redact("plain text, no secret"), "plain text, no secret");
        assert_eq!(Redactor::new(vec!["word".to_string().into()]).redact("a Word or two"), "a [REDACTED] or two");
        // A secret of digits, given back as a JSON number.
        let digits = Redactor::new(vec!["12345678".to_string().into()]);
        assert_eq!(digits.redact_json(&json!({"pin": 12345678, "n": 7})), json!({"pin": REDACTED, "n": 7}));
    }
}
