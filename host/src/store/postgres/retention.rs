//! Retention: finished runs (with their outbox events and the trace blocks no run points at any more), processed
//! inbound messages and the front of the outbox, deleted by age in batches
//! ([`Store::purge`](crate::store::Store::purge)). Each kind is found by an index of migration 0002, so a batch
//! costs what it deletes; rows another process holds are skipped, for the next batch.

use super::{PostgresStore, db};
use crate::store::{Purged, StoreError};

pub(super) async fn purge(store: &PostgresStore, older_than_ms: i64, batch: usize) -> Result<Purged, StoreError> {
    if batch == 0 {
        return Err(StoreError::invalid("batch", "must be at least 1"));
    }
    const OP: &str = "purging old runs, inbound messages and outbox events";
    let limit = i64::try_from(batch).unwrap_or(i64::MAX);
    // Bookkeeping: a purge lost to a crash of the server is simply done again.
    let mut tx = store.bookkeeping.begin().await.map_err(db(OP))?;
    let (runs, run_events): (i64, i64) = sqlx::query_as(
        "WITH finished AS (
             SELECT seq, id, trace_block FROM runs
              WHERE status IN ('succeeded', 'failed', 'dropped') AND updated_at < $1
              ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED),
         events AS (DELETE FROM outbox WHERE run_id IN (SELECT id FROM finished) RETURNING 1),
         gone AS (DELETE FROM runs WHERE seq IN (SELECT seq FROM finished) RETURNING trace_block),
         blocks AS (
             DELETE FROM trace_blocks AS t
              WHERE t.id IN (SELECT DISTINCT trace_block FROM gone WHERE trace_block IS NOT NULL)
                AND NOT EXISTS (SELECT 1 FROM runs AS r WHERE r.trace_block = t.id
                                                          AND r.seq NOT IN (SELECT seq FROM finished))
             RETURNING 1)
         -- `blocks` runs though nothing reads it: PostgreSQL carries out every data-modifying WITH.
         SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM events)",
    )
    .bind(older_than_ms)
    .bind(limit)
    .fetch_one(&mut *tx)
    .await
    .map_err(db(OP))?;
    let inbound = sqlx::query(
        "DELETE FROM inbound WHERE seq IN (
             SELECT seq FROM inbound WHERE status = 'processed' AND updated_at < $1
              ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind(older_than_ms)
    .bind(limit)
    .execute(&mut *tx)
    .await
    .map_err(db(OP))?
    .rows_affected();
    // The front of the outbox, in `seq` order, up to the first event that is not older than the cutoff.
    let front = sqlx::query(
        "DELETE FROM outbox WHERE seq IN (
             SELECT seq FROM (SELECT seq, bool_or(created_at >= $1) OVER (ORDER BY seq) AS stop
                                FROM (SELECT seq, created_at FROM outbox ORDER BY seq LIMIT $2) AS oldest) AS o
              WHERE NOT o.stop)",
    )
    .bind(older_than_ms)
    .bind(limit)
    .execute(&mut *tx)
    .await
    .map_err(db(OP))?
    .rows_affected();
    tx.commit().await.map_err(db(OP))?;
    Ok(Purged { runs: runs.max(0) as u64, inbound, outbox: run_events.max(0) as u64 + front })
}
