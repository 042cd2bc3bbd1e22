//! How retries work: the policy a node (or the host) sets, which failures are retried, and how long to wait
//! before the next attempt (exponential backoff with jitter, honouring the remote service's Retry-After).

use crate::connector::ErrorKind;
use rand::Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How a failed connector call is retried: exponential backoff with jitter, honouring Retry-After.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry). The default, 6, is the first attempt and up to
    /// five resends.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// Delay before the first retry.
    #[serde(default = "defaults::initial_delay_ms")]
    pub initial_delay_ms: u64,
    /// Each further delay is the previous one times this.
    #[serde(default = "defaults::multiplier")]
    pub multiplier: f64,
    /// No delay is longer than this, except a longer Retry-After from the remote service.
    #[serde(default = "defaults::max_delay_ms")]
    pub max_delay_ms: u64,
    /// A random fraction (0 to 1) of each delay added or removed, so that retries spread out.
    #[serde(default = "defaults::jitter")]
    pub jitter: f64,
    /// The error kinds that are retried; by default the retryable ones (rate-limited, transient, timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<ErrorKind>>,
    /// How long a run may keep waiting on a remote service that refuses its calls for their rate
    /// (`rate-limited`), from the first refusal, before it is dead-lettered. Such refusals do not spend
    /// attempts. Default 24 hours.
    #[serde(default = "defaults::throttle_budget_ms")]
    pub throttle_budget_ms: u64,
}

mod defaults {
    pub fn max_attempts() -> u32 {
        6
    }
    pub fn initial_delay_ms() -> u64 {
        200
    }
    pub fn multiplier() -> f64 {
        2.0
    }
    pub fn max_delay_ms() -> u64 {
        30_000
    }
    pub fn jitter() -> f64 {
        0.2
    }
    pub fn throttle_budget_ms() -> u64 {
        24 * 3600 * 1000
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: defaults::max_attempts(),
            initial_delay_ms: defaults::initial_delay_ms(),
            multiplier: defaults::multiplier(),
            max_delay_ms: defaults::max_delay_ms(),
            jitter: defaults::jitter(),
            retry_on: None,
            throttle_budget_ms: defaults::throttle_budget_ms(),
        }
    }
}

/// The longest Retry-After honoured; a remote service asking for more is capped here.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

impl RetryPolicy {
    /// Whether a failure of `kind` after `attempts_made` attempts is tried again.
    pub fn should_retry(&self, kind: ErrorKind, attempts_made: u32) -> bool {
        attempts_made < self.max_attempts
            && match &self.retry_on {
                Some(kinds) => kinds.contains(&kind),
                None => kind.is_retryable(),
            }
    }

    /// Whether failures of `kind` are retried at all (attempts aside).
    pub fn retries(&self, kind: ErrorKind) -> bool {
        match &self.retry_on {
            Some(kinds) => kinds.contains(&kind),
            None => kind.is_retryable(),
        }
    }

    /// How long a run may wait on a service that throttles it.
    pub fn throttle_budget(&self) -> Duration {
        Duration::from_millis(self.throttle_budget_ms)
    }

    /// The delay before the next attempt, after `attempts_made` attempts (1 or more).
    pub fn delay(&self, attempts_made: u32, retry_after: Option<Duration>) -> Duration {
        let exponent = attempts_made.saturating_sub(1).min(63) as i32;
        let base =
            (self.initial_delay_ms as f64 * self.multiplier.max(1.0).powi(exponent)).min(self.max_delay_ms as f64);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = if jitter > 0.0 { rand::rng().random_range(1.0 - jitter..=1.0 + jitter) } else { 1.0 };
        let backoff = Duration::from_millis((base * factor).max(0.0) as u64);
        match retry_after {
            // The service said when it will take requests again: never earlier than that.
            Some(after) => after.min(MAX_RETRY_AFTER).max(backoff),
            None => backoff,
        }
    }

    /// Problems with the policy's numbers, for the linter.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_attempts == 0 {
            problems.push("maxAttempts must be at least 1".to_string());
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            problems.push("multiplier must be 1 or more".to_string());
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            problems.push("jitter must be between 0 and 1".to_string());
        }
        if self.initial_delay_ms > self.max_delay_ms {
            problems.push("initialDelayMs must not exceed maxDelayMs".to_string());
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_delay_ms: 100,
            multiplier: 2.0,
            max_delay_ms: 350,
            jitter: 0.0,
            retry_on: None,
            throttle_budget_ms: 60_000,
        }
    }

    #[test]
    fn only_retryable_kinds_by_default() {
        let p = policy();
        assert!(p.should_retry(ErrorKind::Transient, 1));
        assert!(p.should_retry(ErrorKind::RateLimited, 3));
        assert!(!p.should_retry(ErrorKind::RateLimited, 4), "max attempts reached");
        assert!(!p.should_retry(ErrorKind::Permanent, 1));
        let custom = RetryPolicy { retry_on: Some(vec![ErrorKind::NotFound]), ..policy() };
        assert!(custom.should_retry(ErrorKind::NotFound, 1));
        assert!(!custom.should_retry(ErrorKind::Transient, 1));
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let p = policy();
        let ms = |d: Duration| d.as_millis();
        assert_eq!([1, 2, 3, 4].map(|a| ms(p.delay(a, None))), [100, 200, 350, 350]);
        assert_eq!(ms(p.delay(1, Some(Duration::from_secs(2)))), 2000);
        assert_eq!(p.delay(1, Some(Duration::from_secs(1_000_000))), MAX_RETRY_AFTER);
        let jittered = RetryPolicy { jitter: 0.5, ..policy() };
        for _ in 0..100 {
            let d = ms(jittered.delay(2, None));
            assert!((100..=300).contains(&d), "{d}");
        }
    }
}
