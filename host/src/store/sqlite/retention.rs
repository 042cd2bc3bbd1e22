//! Retention: finished runs (with their outbox events and the trace blocks no run points at any more), processed
//! inbound messages and the front of the outbox, deleted by age in batches ([`Store::purge`](crate::store::Store::purge)).
//!
//! Each kind is found by an index, so a batch costs what it deletes, however large the store: finished runs and
//! processed messages by `(status, next_attempt_at)` (`runs_due`, `inbound_due`; closing a run or settling a
//! message sets `next_attempt_at` to that time), the outbox by `seq` from its front, and whether a trace block is
//! still used by `runs_by_trace_block` (migration 0007). A batch is one transaction on the write connection,
//! without a sync: nothing a caller was told is accepted depends on it.

use super::{SqliteStore, db};
use crate::store::{Purged, StoreError};
use serde_json::Value;

/// Finished runs whose last change is older than ?1, at most ?2: seq, id and trace block. Rows closed before
/// migration 0007 have the lease's end in `next_attempt_at`, a little after they closed; `updated_at` keeps them
/// to the cutoff too.
pub(super) const FINISHED_RUNS: &str = "SELECT seq, id, trace_block FROM runs INDEXED BY runs_due \
     WHERE status IN ('succeeded', 'failed', 'dropped') AND next_attempt_at < ?1 AND updated_at < ?1 LIMIT ?2";

/// The outbox events of the runs in ?1 (a JSON array of run ids).
pub(super) const DELETE_RUNS_OUTBOX: &str = "DELETE FROM outbox WHERE run_id IN (SELECT value FROM json_each(?1))";

/// The runs in ?1 (a JSON array of seqs). They are closed, so no key's head moves (the delete trigger of
/// migration 0002 finds each key's head already marked).
pub(super) const DELETE_RUNS: &str = "DELETE FROM runs WHERE seq IN (SELECT value FROM json_each(?1))";

/// The trace blocks in ?1 (a JSON array of ids) that no run points at any more.
pub(super) const DELETE_UNUSED_TRACE_BLOCKS: &str = "DELETE FROM trace_blocks \
     WHERE id IN (SELECT value FROM json_each(?1)) \
       AND NOT EXISTS (SELECT 1 FROM runs INDEXED BY runs_by_trace_block WHERE runs.trace_block = trace_blocks.id)";

/// Inbound messages processed before ?1, at most ?2.
pub(super) const DELETE_PROCESSED_INBOUND: &str = "DELETE FROM inbound WHERE seq IN \
     (SELECT seq FROM inbound INDEXED BY inbound_due \
      WHERE status = 'processed' AND next_attempt_at < ?1 AND updated_at < ?1 LIMIT ?2)";

/// The front of the outbox: of its ?2 oldest events, those before the first one created at ?1 or later. Reads at
/// most ?2 rows, whatever the size of the outbox.
pub(super) const DELETE_OUTBOX_FRONT: &str = "DELETE FROM outbox WHERE seq IN \
     (SELECT seq FROM (SELECT seq, created_at, \
                              MAX(created_at >= ?1) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) AS stop \
                       FROM (SELECT seq, created_at FROM outbox ORDER BY seq LIMIT ?2)) \
      WHERE NOT stop)";

pub(super) async fn purge(store: &SqliteStore, older_than_ms: i64, batch: usize) -> Result<Purged, StoreError> {
    if batch == 0 {
        return Err(StoreError::invalid("batch", "must be at least 1"));
    }
    const OP: &str = "purging old runs, inbound messages and outbox events";
    let limit = i64::try_from(batch).unwrap_or(i64::MAX);
    let mut writer = store.writer(OP).await?;
    let mut tx = writer.begin(OP).await?;
    let finished: Vec<(i64, String, Option<i64>)> =
        sqlx::query_as(FINISHED_RUNS).bind(older_than_ms).bind(limit).fetch_all(&mut *tx).await.map_err(db(OP))?;
    let mut purged = Purged::default();
    if !finished.is_empty() {
        let ids = Value::from(finished.iter().map(|(_, id, _)| id.as_str()).collect::<Vec<_>>()).to_string();
        let seqs = Value::from(finished.iter().map(|(seq, ..)| *seq).collect::<Vec<_>>()).to_string();
        let mut blocks: Vec<i64> = finished.iter().filter_map(|(.., block)| *block).collect();
        blocks.sort_unstable();
        blocks.dedup();
        // The events first: each refers to its run.
        purged.outbox +=
            sqlx::query(DELETE_RUNS_OUTBOX).bind(ids).execute(&mut *tx).await.map_err(db(OP))?.rows_affected();
        purged.runs = sqlx::query(DELETE_RUNS).bind(seqs).execute(&mut *tx).await.map_err(db(OP))?.rows_affected();
        if !blocks.is_empty() {
            sqlx::query(DELETE_UNUSED_TRACE_BLOCKS)
                .bind(Value::from(blocks).to_string())
                .execute(&mut *tx)
                .await
                .map_err(db(OP))?;
        }
    }
    purged.inbound = sqlx::query(DELETE_PROCESSED_INBOUND)
        .bind(older_than_ms)
        .bind(limit)
        .execute(&mut *tx)
        .await
        .map_err(db(OP))?
        .rows_affected();
    purged.outbox += sqlx::query(DELETE_OUTBOX_FRONT)
        .bind(older_than_ms)
        .bind(limit)
        .execute(&mut *tx)
        .await
        .map_err(db(OP))?
        .rows_affected();
    tx.commit().await.map_err(db(OP))?;
    Ok(purged)
}
