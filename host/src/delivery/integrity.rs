//! The integrity task: checks the store ([`Store::check_integrity`](crate::store::Store::check_integrity)) when the
//! service starts and then every [`ServiceConfig::integrity_check`](super::ServiceConfig::integrity_check), and
//! keeps the latest result, with its time, for `/healthz` and `/metrics`: the check may read the whole store, so
//! they read what it found rather than run it per request.

use super::shared::Shared;
use crate::store::{Integrity, now_ms};
use std::sync::Arc;

/// The latest integrity check of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrityStatus {
    /// When the check ended, in milliseconds since the Unix epoch.
    pub checked_at_ms: i64,
    /// What it found, or why it could not run (the store was not reachable).
    pub result: Result<Integrity, String>,
}

impl IntegrityStatus {
    /// Whether the check ran and found the store damaged.
    pub fn failed(&self) -> bool {
        matches!(&self.result, Ok(found) if !found.ok())
    }
}

pub(super) async fn run(shared: Arc<Shared>) {
    loop {
        let result = tokio::select! {
            result = shared.store.check_integrity() => result,
            _ = shared.stopping.cancelled() => return,
        };
        let status = IntegrityStatus { checked_at_ms: now_ms(), result: result.map_err(|e| e.to_string()) };
        match &status.result {
            Ok(found) if found.ok() => tracing::debug!(check = %found.check, "the store passed its integrity check"),
            Ok(found) => tracing::error!(
                check = %found.check,
                problems = %found.problems.join("; "),
                "the store failed its integrity check: restore it from a backup"
            ),
            Err(error) => tracing::warn!(%error, "the store's integrity check could not run"),
        }
        shared.metrics.integrity_checked(&status);
        *shared.integrity.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(status);
        tokio::select! {
            _ = tokio::time::sleep(shared.config.integrity_check) => {}
            _ = shared.stopping.cancelled() => return,
        }
    }
}
