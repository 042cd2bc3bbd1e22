//! The `cache` import: a small in-memory key-value store with TTLs, one namespace per connection.
//! Bounded in entries and value size so a connector cannot grow it without limit.

use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_ENTRIES_PER_SCOPE: usize = 256;
const MAX_VALUE_BYTES: usize = 64 * 1024;
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The entries of one scope: value and expiry by key.
type Entries = HashMap<String, (SecretString, Instant)>;

/// Values are held as secrets: a cache typically holds access tokens.
#[derive(Default)]
pub struct KvCache {
    scopes: Mutex<HashMap<String, Entries>>,
}

impl KvCache {
    pub fn get(&self, scope: &str, key: &str) -> Option<String> {
        let mut scopes = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        let entries = scopes.get_mut(scope)?;
        match entries.get(key) {
            Some((value, expires)) if *expires > Instant::now() => Some(value.expose_secret().to_string()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores a value; returns why it was not stored, if it was not.
    pub fn set(&self, scope: &str, key: &str, value: &str, ttl: Duration) -> Result<(), String> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!("cache value for {key:?} is larger than {}", crate::ByteSize::from(MAX_VALUE_BYTES)));
        }
        let now = Instant::now();
        let mut scopes = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        let entries = scopes.entry(scope.to_string()).or_default();
        if entries.len() >= MAX_ENTRIES_PER_SCOPE && !entries.contains_key(key) {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= MAX_ENTRIES_PER_SCOPE {
                return Err(format!("the connection's cache is full ({MAX_ENTRIES_PER_SCOPE} entries)"));
            }
        }
        entries.insert(key.to_string(), (SecretString::from(value.to_string()), now + ttl.min(MAX_TTL)));
        Ok(())
    }

    pub fn delete(&self, scope: &str, key: &str) {
        let mut scopes = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entries) = scopes.get_mut(scope) {
            entries.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_scopes_are_separate() {
        let cache = KvCache::default();
        cache.set("a", "token", "t1", Duration::from_secs(60)).unwrap();
        cache.set("a", "gone", "t2", Duration::ZERO).unwrap();
        assert_eq!(cache.get("a", "token").as_deref(), Some("t1"));
        assert_eq!(cache.get("b", "token"), None);
        assert_eq!(cache.get("a", "gone"), None);
        cache.delete("a", "token");
        assert_eq!(cache.get("a", "token"), None);
    }

    #[test]
    fn scopes_are_bounded() {
        let cache = KvCache::default();
        for i in 0..MAX_ENTRIES_PER_SCOPE {
            cache.set("s", &i.to_string(), "v", Duration::from_secs(60)).unwrap();
        }
        assert!(cache.set("s", "one-more", "v", Duration::from_secs(60)).is_err());
        assert!(cache.set("s", "x", &"v".repeat(MAX_VALUE_BYTES + 1), Duration::from_secs(60)).is_err());
    }
}
