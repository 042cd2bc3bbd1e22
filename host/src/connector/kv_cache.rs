//! The `cache` import: a small in-memory key-value store with TTLs, one namespace per connection.
//! Bounded per connection in key length, value size, entries and total bytes ([`CacheLimits`]) so that a
//! connector cannot grow it without limit: a write over a bound is refused (dropped), never stored.

use crate::ByteSize;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries per connection: bounds the map's own overhead, which the byte limits do not count.
const MAX_ENTRIES_PER_SCOPE: usize = 256;
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The bounds of one connection's cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheLimits {
    /// The longest key, in bytes.
    pub max_key_bytes: usize,
    /// The largest value, in bytes.
    pub max_value_bytes: usize,
    /// Keys and values of one connection together, in bytes.
    pub max_bytes: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits { max_key_bytes: 1024, max_value_bytes: 64 * 1024, max_bytes: 16 << 20 }
    }
}

/// Why a `set` was refused, naming the limit (as `flowhost.toml`'s `[connectors]` calls it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    KeyTooLong { size: usize, limit: usize },
    ValueTooLarge { key: String, size: usize, limit: usize },
    TooManyEntries { key: String },
    Full { key: String, size: usize, used: usize, limit: usize },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = |n: &usize| ByteSize::from(*n);
        match self {
            Refused::KeyTooLong { size, limit } => {
                write!(f, "a key of {} is longer than the limit of {} (cache_max_key_bytes)", b(size), b(limit))?
            }
            Refused::ValueTooLarge { key, size, limit } => write!(
                f,
                "the value of {key:?} ({}) is larger than the limit of {} (cache_max_value_bytes)",
                b(size),
                b(limit)
            )?,
            Refused::TooManyEntries { key } => write!(
                f,
                "no room for {key:?}: the connection's cache holds its maximum of {MAX_ENTRIES_PER_SCOPE} entries"
            )?,
            Refused::Full { key, size, used, limit } => write!(
                f,
                "no room for {key:?} ({}): the connection's cache holds {} of its limit of {} (cache_max_bytes)",
                b(size),
                b(used),
                b(limit)
            )?,
        }
        f.write_str("; the write was dropped")
    }
}

/// The entries of one connection, and the bytes their keys and values take.
#[derive(Default)]
struct Scope {
    entries: HashMap<String, (SecretString, Instant)>,
    bytes: usize,
}

impl Scope {
    fn remove(&mut self, key: &str) {
        if let Some((value, _)) = self.entries.remove(key) {
            self.bytes -= key.len() + value.expose_secret().len();
        }
    }

    fn purge_expired(&mut self, now: Instant) {
        let expired: Vec<String> =
            self.entries.iter().filter(|(_, (_, expires))| *expires <= now).map(|(key, _)| key.clone()).collect();
        for key in expired {
            self.remove(&key);
        }
    }
}

/// Values are held as secrets: a cache typically holds access tokens.
#[derive(Default)]
pub struct KvCache {
    limits: CacheLimits,
    scopes: Mutex<HashMap<String, Scope>>,
}

impl KvCache {
    pub fn new(limits: CacheLimits) -> Self {
        KvCache { limits, scopes: Mutex::default() }
    }

    pub fn get(&self, scope: &str, key: &str) -> Option<String> {
        let mut scopes = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        let scope = scopes.get_mut(scope)?;
        match scope.entries.get(key) {
            Some((value, expires)) if *expires > Instant::now() => Some(value.expose_secret().to_string()),
            Some(_) => {
                scope.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores a value, or refuses it (and says why) when it would break a limit. A refused write also removes
    /// the key's older value: the connector meant to replace it, so it must not be read back.
    pub fn set(&self, scope: &str, key: &str, value: &str, ttl: Duration) -> Result<(), Refused> {
        let limits = &self.limits;
        if key.len() > limits.max_key_bytes {
            return Err(Refused::KeyTooLong { size: key.len(), limit: limits.max_key_bytes });
        }
        let now = Instant::now();
        let mut scopes = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        let entries = scopes.entry(scope.to_string()).or_default();
        entries.remove(key);
        if value.len() > limits.max_value_bytes {
            return Err(Refused::ValueTooLarge {
                key: key.to_string(),
                size: value.len(),
                limit: limits.max_value_bytes,
            });
        }
        let size = key.len() + value.len();
        if entries.entries.len() >= MAX_ENTRIES_PER_SCOPE || entries.bytes + size > limits.max_bytes {
            entries.purge_expired(now);
        }
        if entries.entries.len() >= MAX_ENTRIES_PER_SCOPE {
            return Err(Refused::TooManyEntries { key: key.to_string() });
        }
        if entries.bytes + size > limits.max_bytes {
            return Err(Refused::Full { key: key.to_string(), size, used: entries.bytes, limit: limits.max_bytes });
        }
        entries.bytes += size;
        entries.entries.insert(key.to_string(), (SecretString::from(value.to_string()), now + ttl.min(MAX_TTL)));
        Ok(())
    }

    pub fn delete(&self, scope: &str, key: &str) {
        let mut scopes = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entries) = scopes.get_mut(scope) {
            entries.remove(key);
        }
    }

    /// The bytes of keys and values a connection's cache holds.
    #[cfg(test)]
    fn bytes(&self, scope: &str) -> usize {
        self.scopes.lock().unwrap().get(scope).map_or(0, |s| s.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn entries_expire_and_scopes_are_separate() {
        let cache = KvCache::default();
        cache.set("a", "token", "t1", MINUTE).unwrap();
        cache.set("a", "gone", "t2", Duration::ZERO).unwrap();
        assert_eq!(cache.get("a", "token").as_deref(), Some("t1"));
        assert_eq!(cache.get("b", "token"), None);
        assert_eq!(cache.get("a", "gone"), None);
        cache.delete("a", "token");
        assert_eq!(cache.get("a", "token"), None);
        assert_eq!(cache.bytes("a"), 0, "what is deleted or expired is no longer counted");
    }

    #[test]
    fn entries_are_bounded() {
        let cache = KvCache::default();
        for i in 0..MAX_ENTRIES_PER_SCOPE {
            cache.set("s", &i.to_string(), "v", MINUTE).unwrap();
        }
        assert_eq!(cache.set("s", "one-more", "v", MINUTE), Err(Refused::TooManyEntries { key: "one-more".into() }));
        cache.set("s", "0", "replaced", MINUTE).expect("a key it holds can be replaced");
    }

    #[test]
    fn keys_and_values_over_their_limits_are_refused_and_not_stored() {
        let limits = CacheLimits { max_key_bytes: 8, max_value_bytes: 16, max_bytes: 1024 };
        let cache = KvCache::new(limits);
        let refused = cache.set("s", &"k".repeat(9), "v", MINUTE).unwrap_err();
        assert_eq!(refused, Refused::KeyTooLong { size: 9, limit: 8 });
        assert!(refused.to_string().contains("cache_max_key_bytes"), "{refused}");
        cache.set("s", "token", "old", MINUTE).unwrap();
        let refused = cache.set("s", "token", &"v".repeat(17), MINUTE).unwrap_err();
        assert!(refused.to_string().contains("17 bytes") && refused.to_string().contains("cache_max_value_bytes"));
        assert_eq!(cache.get("s", "token"), None, "the value the connector meant to replace is gone");
        assert_eq!(cache.bytes("s"), 0);
    }

    #[test]
    fn a_connection_holds_at_most_its_total_bytes_and_the_others_are_not_touched() {
        let limits = CacheLimits { max_key_bytes: 16, max_value_bytes: 100, max_bytes: 250 };
        let cache = KvCache::new(limits);
        for i in 0..2 {
            cache.set("flood", &format!("k{i}"), &"v".repeat(98), MINUTE).unwrap();
        }
        cache.set("other", "k", &"v".repeat(98), MINUTE).unwrap();
        let refused = cache.set("flood", "k2", &"v".repeat(98), MINUTE).unwrap_err();
        assert_eq!(refused, Refused::Full { key: "k2".into(), size: 100, used: 200, limit: 250 });
        assert!(refused.to_string().contains("cache_max_bytes"), "{refused}");
        assert_eq!(cache.bytes("flood"), 200);
        assert_eq!(cache.get("flood", "k0").map(|v| v.len()), Some(98), "older entries are kept");
        // Replacing an entry counts its new size, not both.
        cache.set("flood", "k0", &"w".repeat(98), MINUTE).unwrap();
        assert_eq!(cache.bytes("flood"), 200);
        // Expired entries make room.
        cache.set("flood", "k1", &"v".repeat(98), Duration::ZERO).unwrap();
        cache.set("flood", "k2", &"v".repeat(98), MINUTE).unwrap();
        assert_eq!(cache.bytes("flood"), 200);
        assert_eq!(cache.get("flood", "k1"), None);
        assert_eq!(cache.get("other", "k").map(|v| v.len()), Some(98));
    }
}
