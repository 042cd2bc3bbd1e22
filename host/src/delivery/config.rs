//! How the durable service is set up: its workers, leases, polling, group commit and which traces it keeps.

use super::group_commit::GroupCommitConfig;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How the service works.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// This process's name in leases; unique per process.
    pub worker: String,
    /// Runs executed at the same time.
    pub concurrency: usize,
    /// How long a claimed run is reserved to this process; renewed while it runs. A crashed process's
    /// runs are taken over after this.
    pub lease: Duration,
    /// How often idle workers look for due work (resends coming due, expired leases).
    pub idle_poll: Duration,
    pub group_commit: GroupCommitConfig,
    /// Which finished runs keep their trace (every node's input, output, attempts and log).
    pub traces: TraceRetention,
    /// How long finished runs, processed inbound messages and outbox events are kept.
    pub retention: RetentionConfig,
    /// How often the store's integrity is checked ([`Store::check_integrity`](crate::store::Store::check_integrity)):
    /// once when the service starts, then at this interval. For SQLite each check reads the whole file.
    pub integrity_check: Duration,
}

/// Retention: finished runs (with their traces), processed inbound messages and outbox events are purged once
/// older than `max_age` ([`Store::purge`](crate::store::Store::purge)); dead, queued, held and leased runs, and
/// inbound messages that were not processed, are never purged. A background task of the service purges every
/// `interval`, in batches of `batch` rows of each kind (one short transaction each) with a `pause` between
/// them, so that accepts and claims take the store's writer in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// How old what is purged must be; `None` keeps everything.
    pub max_age: Option<Duration>,
    /// How often a purge starts (the first one soon after the service starts).
    pub interval: Duration,
    /// Rows of each kind (runs, inbound messages, outbox events) one batch deletes, at least 1.
    pub batch: usize,
    /// The pause between two batches of one purge.
    pub pause: Duration,
}

impl RetentionConfig {
    /// 30 days, as DaVinci keeps run details.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5 * 60);
    pub const DEFAULT_BATCH: usize = 500;
    pub const DEFAULT_PAUSE: Duration = Duration::from_millis(100);

    /// Retention turned off: everything is kept.
    pub fn off() -> Self {
        RetentionConfig { max_age: None, ..RetentionConfig::default() }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age: Some(Self::DEFAULT_MAX_AGE),
            interval: Self::DEFAULT_INTERVAL,
            batch: Self::DEFAULT_BATCH,
            pause: Self::DEFAULT_PAUSE,
        }
    }
}

/// Which runs keep their trace once they end. A trace is most of what a completion writes, so keeping only the
/// traces of runs that did not succeed lets one SQLite writer deliver more (BENCHMARKS.md, "Sixth round"). A
/// run that succeeded keeps everything else: its event, status, attempts and times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceRetention {
    /// Every run that ends keeps its trace.
    #[default]
    All,
    /// Only runs that failed or were dead-lettered keep their trace.
    Failures,
}

impl TraceRetention {
    /// Whether a run that ended this way keeps its trace.
    pub fn keeps(self, succeeded: bool) -> bool {
        match self {
            TraceRetention::All => true,
            TraceRetention::Failures => !succeeded,
        }
    }

    /// The name in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            TraceRetention::All => "all",
            TraceRetention::Failures => "failures",
        }
    }
}

impl std::str::FromStr for TraceRetention {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "all" => Ok(TraceRetention::All),
            "failures" => Ok(TraceRetention::Failures),
            other => Err(format!("unknown trace retention `{other}`: use `all` or `failures`")),
        }
    }
}

impl std::fmt::Display for TraceRetention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            worker: format!("{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]),
            concurrency: 256,
            lease: Duration::from_secs(30),
            idle_poll: Duration::from_millis(100),
            group_commit: GroupCommitConfig::default(),
            traces: TraceRetention::All,
            retention: RetentionConfig::default(),
            integrity_check: ServiceConfig::DEFAULT_INTEGRITY_CHECK,
        }
    }
}

impl ServiceConfig {
    /// Every hour: a SQLite file is read whole each time, and damage found within the hour is early enough to
    /// restore from a backup before much more is written.
    pub const DEFAULT_INTEGRITY_CHECK: Duration = Duration::from_secs(3600);
}
