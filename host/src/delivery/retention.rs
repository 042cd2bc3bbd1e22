//! The purge task: every `retention.interval`, what is older than `retention.max_age` is purged from the store
//! ([`Store::purge`](crate::store::Store::purge)) in batches, with a pause after each, until a batch comes back
//! short. SQLite has one writer: a batch is one short transaction, and the pause lets accepts, claims and
//! completions take the writer in between, so a large backlog (the first purge of an old store) is worked off
//! without stalling delivery.

use super::shared::Shared;
use crate::store::{Purged, now_ms};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long after the service starts the first purge begins: late enough not to compete with a start-up's burst
/// of claims, and soon enough that a service restarted more often than its interval still purges.
const FIRST_PURGE_AFTER: Duration = Duration::from_secs(5);

pub(super) async fn run(shared: Arc<Shared>) {
    let config = shared.config.retention;
    let Some(max_age) = config.max_age else { return };
    let mut wait = FIRST_PURGE_AFTER.min(config.interval);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.stopping.cancelled() => return,
        }
        wait = config.interval;
        let started = Instant::now();
        let cutoff = now_ms().saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
        let mut total = Purged::default();
        loop {
            match shared.store.purge(cutoff, config.batch).await {
                Ok(purged) => {
                    shared.metrics.purged(&purged);
                    total += purged;
                    if !purged.may_have_more(config.batch) {
                        break;
                    }
                }
                Err(error) => {
                    // The next interval tries again; what was purged so far stays purged.
                    tracing::warn!(%error, "purging old runs, inbound messages and outbox events");
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(config.pause) => {}
                _ = shared.stopping.cancelled() => return,
            }
        }
        if !total.is_empty() {
            tracing::info!(
                runs = total.runs,
                inbound = total.inbound,
                outbox = total.outbox,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "purged what was older than the retention age"
            );
        }
    }
}
