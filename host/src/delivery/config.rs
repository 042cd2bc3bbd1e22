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
        }
    }
}
