//! Provisioned throughput per API key, as mParticle's Events API enforces it (reference §3.5, §4): about 270
//! batches per second by default, 429 beyond it.
//!
//! Each API key with a limit has a leaky bucket that holds one second of its limit. A request is admitted while
//! the bucket is not full and then adds all its batches (a bulk request counts each of its batches), so a key is
//! held to its limit over any second; a request that finds the bucket full is answered 429 with `Retry-After`
//! (whole seconds, at least 1, until the bucket has room again) and `X-mp-rate-limit-exceeded: workspace`.
//! Admitted requests learn how full the bucket is, for `X-mp-rate-limit-percentage-used`.

use std::collections::HashMap;
use std::time::Instant;

/// What a request gets from the throttle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Admission {
    /// The key has no limit.
    Unlimited,
    /// Admitted; the bucket is this full now, in percent of one second of the limit (may pass 100).
    Admitted { percentage_used: u64 },
    /// Over the limit: try again after this many seconds.
    Throttled { retry_after_secs: u64 },
}

#[derive(Debug, Default)]
pub(crate) struct Throttle {
    /// The limit of keys without one of their own (`--batches-per-second`).
    default: Option<u32>,
    /// Limits set for one key (`None`: that key is not limited even with a default).
    per_key: HashMap<String, Option<u32>>,
    buckets: HashMap<String, Bucket>,
}

#[derive(Debug)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Throttle {
    pub(crate) fn new(default: Option<u32>) -> Self {
        Throttle { default: default.filter(|n| *n > 0), ..Throttle::default() }
    }

    /// The limit that applies to `api_key`, in batches per second.
    pub(crate) fn limit(&self, api_key: &str) -> Option<u32> {
        self.per_key.get(api_key).copied().unwrap_or(self.default).filter(|n| *n > 0)
    }

    pub(crate) fn set_default(&mut self, limit: Option<u32>) {
        self.default = limit.filter(|n| *n > 0);
        self.buckets.clear();
    }

    pub(crate) fn set_key(&mut self, api_key: &str, limit: Option<u32>) {
        self.per_key.insert(api_key.to_owned(), limit.filter(|n| *n > 0));
        self.buckets.remove(api_key);
    }

    /// The limits as `GET /_emulator/throttle` shows them.
    pub(crate) fn describe(&self) -> serde_json::Value {
        let keys: serde_json::Map<String, serde_json::Value> =
            self.per_key.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect();
        serde_json::json!({"batches_per_second": self.default, "api_keys": keys})
    }

    /// Admits (or not) a request of `batches` batches for `api_key` at `now`.
    pub(crate) fn admit(&mut self, api_key: &str, batches: u64, now: Instant) -> Admission {
        let Some(limit) = self.limit(api_key) else { return Admission::Unlimited };
        let rate = f64::from(limit);
        let capacity = rate; // one second of the limit
        let bucket = self.buckets.entry(api_key.to_owned()).or_insert(Bucket { level: 0.0, at: now });
        let drained = now.saturating_duration_since(bucket.at).as_secs_f64() * rate;
        bucket.level = (bucket.level - drained).max(0.0);
        bucket.at = now;
        if bucket.level >= capacity {
            let wait = (bucket.level - capacity) / rate;
            return Admission::Throttled { retry_after_secs: (wait.ceil() as u64).max(1) };
        }
        bucket.level += batches as f64;
        Admission::Admitted { percentage_used: (bucket.level / capacity * 100.0).round() as u64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn holds_a_key_to_its_limit_and_leaves_others_alone() {
        let mut t = Throttle::new(Some(10));
        let start = Instant::now();
        for i in 0..10 {
            let Admission::Admitted { percentage_used } = t.admit("a", 1, start) else { panic!("batch {i}") };
            assert_eq!(percentage_used, (i + 1) * 10);
        }
        assert_eq!(t.admit("a", 1, start), Admission::Throttled { retry_after_secs: 1 });
        // Another key has its own bucket.
        assert!(matches!(t.admit("b", 1, start), Admission::Admitted { .. }));
        // Half a second later, five batches have drained.
        let later = start + Duration::from_millis(500);
        assert_eq!(t.admit("a", 1, later), Admission::Admitted { percentage_used: 60 });
        // A bulk request counts every batch: it may overfill the bucket, and then the key waits longer.
        assert!(matches!(t.admit("a", 40, later), Admission::Admitted { percentage_used: 460 }));
        assert_eq!(t.admit("a", 1, later), Admission::Throttled { retry_after_secs: 4 });
    }

    #[test]
    fn limits_per_key_override_the_default() {
        let mut t = Throttle::new(None);
        let now = Instant::now();
        assert_eq!(t.admit("a", 1000, now), Admission::Unlimited);
        t.set_key("a", Some(1));
        assert!(matches!(t.admit("a", 1, now), Admission::Admitted { percentage_used: 100 }));
        assert!(matches!(t.admit("a", 1, now), Admission::Throttled { .. }));
        t.set_default(Some(5));
        t.set_key("b", None);
        assert_eq!(t.admit("b", 100, now), Admission::Unlimited);
        assert_eq!(t.limit("c"), Some(5));
        t.set_key("a", Some(0));
        assert_eq!(t.admit("a", 1, now), Admission::Unlimited, "0 means no limit");
    }
}
