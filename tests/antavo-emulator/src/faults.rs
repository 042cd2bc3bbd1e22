//! Fault injection rules.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer with this HTTP status (400–599) and Antavo's error envelope, before any authentication or
    /// validation. `Retry-After` only when the rule gives one (Antavo documents none).
    Status(u16),
    /// Sleep `stall_ms` before handling the request normally (or after handling it, with
    /// `stall_after_processing`), so that callers with a shorter timeout give up. A caller that
    /// disconnects during a stall before processing gets its request dropped unprocessed.
    Stall,
}

impl FaultKind {
    /// The JSON spelling: `"429"`, `"500"`, `"503"`, …, or `"stall"`.
    pub fn as_string(&self) -> String {
        match self {
            FaultKind::Status(s) => s.to_string(),
            FaultKind::Stall => "stall".to_owned(),
        }
    }
}

/// One fault rule. Rules are checked in the order they were added; the first rule that matches a
/// request (path prefix, then the `fraction` draw) is applied to it and its `count` goes down by one.
///
/// JSON form (`POST /_emulator/faults`, one object or an array of them):
///
/// ```json
/// {"kind": "429", "count": 2, "path_prefix": "/events"}
/// {"kind": 503, "fraction": 0.2}
/// {"kind": "stall", "stall_ms": 3000, "count": 1, "stall_after_processing": true}
/// ```
///
/// - `kind` (required): `"429"`, `"500"`, `"503"` (any status 400–599 works, as a string or a
///   number), or `"stall"`.
/// - `count`: how many matching requests get the fault; the rule is removed after that.
/// - `fraction` (0.0–1.0): each matching request gets the fault with that probability. Without
///   `count` such a rule stays until cleared; with `count` it ends after `count` hits.
/// - neither `count` nor `fraction`: `count` is 1.
/// - `path_prefix`: only requests whose path starts with it (e.g. `/events`, `/customers`,
///   `/v1/async/`, `/v1/auth/`); default: every Antavo endpoint (never the `/_emulator` ones).
/// - `retry_after_secs`: value of a `Retry-After` header; absent by default, as Antavo documents none.
/// - `stall_ms`: for `stall`, milliseconds to sleep (default 5000, at most 600000).
/// - `stall_after_processing`: for `stall`, handle the request first (so a batch is recorded)
///   and then sleep before answering: the caller times out although the data arrived, which is
///   how a retry turns into a duplicate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultRule {
    /// What to do.
    #[serde(serialize_with = "ser_kind")]
    pub kind: FaultKind,
    /// Remaining number of requests that get the fault (`None`: unlimited, with `fraction`).
    pub count: Option<u64>,
    /// Probability per matching request.
    pub fraction: Option<f64>,
    /// Request path prefix filter.
    pub path_prefix: Option<String>,
    /// `Retry-After` header value in seconds, if any.
    pub retry_after_secs: Option<u64>,
    /// Sleep of a `stall` fault, in milliseconds.
    pub stall_ms: u64,
    /// For `stall`: process the request before sleeping instead of after.
    pub stall_after_processing: bool,
}

fn ser_kind<S: serde::Serializer>(k: &FaultKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&k.as_string())
}

impl FaultRule {
    /// A rule answering the next request with `status` (without `Retry-After`).
    pub fn status(status: u16) -> Self {
        FaultRule {
            kind: FaultKind::Status(status),
            count: Some(1),
            fraction: None,
            path_prefix: None,
            retry_after_secs: None,
            stall_ms: 0,
            stall_after_processing: false,
        }
    }

    /// A rule that sleeps `ms` milliseconds before handling the next request.
    pub fn stall(ms: u64) -> Self {
        FaultRule { kind: FaultKind::Stall, stall_ms: ms, retry_after_secs: None, ..FaultRule::status(500) }
    }

    /// Apply to the next `n` matching requests.
    pub fn times(mut self, n: u64) -> Self {
        self.count = Some(n);
        self
    }

    /// Apply to each matching request with probability `f`, until cleared.
    pub fn fraction(mut self, f: f64) -> Self {
        self.fraction = Some(f);
        self.count = None;
        self
    }

    /// Only for request paths starting with `prefix`.
    pub fn path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    /// Set (or with `None`, drop) the `Retry-After` header.
    pub fn retry_after(mut self, secs: Option<u64>) -> Self {
        self.retry_after_secs = secs;
        self
    }

    /// For stalls: handle the request first, then sleep.
    pub fn after_processing(mut self) -> Self {
        self.stall_after_processing = true;
        self
    }

    /// Parses the JSON form described on [`FaultRule`], with a clear message when it is wrong.
    pub fn from_json(v: &Value) -> Result<FaultRule, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            kind: Value,
            #[serde(default)]
            count: Option<u64>,
            #[serde(default)]
            fraction: Option<f64>,
            #[serde(default)]
            path_prefix: Option<String>,
            #[serde(default, deserialize_with = "double_option")]
            retry_after_secs: Option<Option<u64>>,
            #[serde(default)]
            stall_ms: Option<u64>,
            #[serde(default)]
            stall_after_processing: bool,
        }
        fn double_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
            Option::<u64>::deserialize(d).map(Some)
        }
        let raw: Raw = serde_json::from_value(v.clone()).map_err(|e| format!("invalid fault rule: {e}"))?;
        let kind = match &raw.kind {
            Value::String(s) if s.eq_ignore_ascii_case("stall") => FaultKind::Stall,
            Value::String(s) => match s.parse::<u16>() {
                Ok(n) => FaultKind::Status(n),
                Err(_) => return Err(format!("invalid fault kind {s:?}: use \"429\", \"500\", \"503\" or \"stall\"")),
            },
            Value::Number(n) => match n.as_u64().and_then(|n| u16::try_from(n).ok()) {
                Some(n) => FaultKind::Status(n),
                None => return Err(format!("invalid fault kind {n}")),
            },
            other => return Err(format!("invalid fault kind {other}: use \"429\", \"500\", \"503\" or \"stall\"")),
        };
        if let FaultKind::Status(s) = kind
            && !(400..=599).contains(&s)
        {
            return Err(format!("fault status {s} is not an HTTP error status (400-599)"));
        }
        if let Some(f) = raw.fraction
            && !(0.0..=1.0).contains(&f)
        {
            return Err(format!("fraction {f} must be between 0.0 and 1.0"));
        }
        if raw.count == Some(0) {
            return Err("count must be at least 1".to_owned());
        }
        let stall_ms = raw.stall_ms.unwrap_or(if kind == FaultKind::Stall { 5000 } else { 0 });
        if stall_ms > 600_000 {
            return Err(format!("stall_ms {stall_ms} is more than 600000 (10 minutes)"));
        }
        let count = match (raw.count, raw.fraction) {
            (None, None) => Some(1),
            (c, _) => c,
        };
        let retry_after_secs = raw.retry_after_secs.unwrap_or_default();
        Ok(FaultRule {
            kind,
            count,
            fraction: raw.fraction,
            path_prefix: raw.path_prefix,
            retry_after_secs,
            stall_ms,
            stall_after_processing: raw.stall_after_processing,
        })
    }

    pub(crate) fn matches_path(&self, path: &str) -> bool {
        self.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
    }
}

/// Picks the fault for a request and consumes one use of it.
pub(crate) fn take(rules: &mut Vec<FaultRule>, path: &str) -> Option<FaultRule> {
    let mut i = 0;
    while i < rules.len() {
        let r = &mut rules[i];
        if r.matches_path(path) {
            let hit = match r.fraction {
                Some(f) => rand::random::<f64>() < f,
                None => true,
            };
            if hit {
                let out = r.clone();
                if let Some(c) = r.count.as_mut() {
                    *c = c.saturating_sub(1);
                    if *c == 0 {
                        rules.remove(i);
                    }
                }
                return Some(out);
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_json_forms() {
        let r = FaultRule::from_json(&json!({"kind": "429"})).unwrap();
        assert_eq!(r.kind, FaultKind::Status(429));
        assert_eq!(r.count, Some(1));
        assert_eq!(r.retry_after_secs, None);
        let r = FaultRule::from_json(&json!({"kind": 429, "retry_after_secs": 2, "count": 3})).unwrap();
        assert_eq!(r.retry_after_secs, Some(2));
        assert_eq!(r.count, Some(3));
        let r = FaultRule::from_json(&json!({"kind": "503", "fraction": 0.5})).unwrap();
        assert_eq!(r.count, None);
        assert_eq!(r.retry_after_secs, None);
        let r = FaultRule::from_json(&json!({"kind": "stall"})).unwrap();
        assert_eq!((r.kind, r.stall_ms), (FaultKind::Stall, 5000));
        for bad in [
            json!({"kind": "boom"}),
            json!({"kind": 200}),
            json!({"kind": "500", "fraction": 2.0}),
            json!({"kind": "500", "count": 0}),
            json!({"kind": "500", "colour": "red"}),
            json!({"count": 1}),
            json!({"kind": "stall", "stall_ms": 10_000_000}),
        ] {
            assert!(FaultRule::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn take_consumes_counts_and_filters_paths() {
        let mut rules = vec![FaultRule::status(500).times(2).path_prefix("/events"), FaultRule::status(503)];
        assert_eq!(take(&mut rules, "/customers/c-1").unwrap().kind, FaultKind::Status(503));
        assert_eq!(rules.len(), 1);
        assert!(take(&mut rules, "/events").is_some());
        assert!(take(&mut rules, "/events/bulk").is_some());
        assert!(take(&mut rules, "/events").is_none());
        assert!(rules.is_empty());
        let mut never = vec![FaultRule::status(500).fraction(0.0)];
        assert!((0..100).all(|_| take(&mut never, "/x").is_none()));
        let mut always = vec![FaultRule::status(500).fraction(1.0)];
        assert!((0..100).all(|_| take(&mut always, "/x").is_some()));
    }
}
