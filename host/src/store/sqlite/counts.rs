//! The queue's sizes, for `/metrics`: runs and inbound messages per state, and the outbox, of one moment.

use super::decode::Decoder;
use super::{SqliteStore, db};
use crate::store::{InboundState, QueueCounts, RunState, StoreError};

pub(super) async fn counts(store: &SqliteStore) -> Result<QueueCounts, StoreError> {
    const OP: &str = "counting the queue";
    // One read transaction, so the three counts are of the same moment.
    let mut tx = store.reader.begin().await.map_err(db(OP))?;
    let mut counts = QueueCounts::default();
    let runs: Vec<(String, i64)> = sqlx::query_as("SELECT status, COUNT(*) FROM runs GROUP BY status")
        .fetch_all(&mut *tx)
        .await
        .map_err(db(OP))?;
    for (status, n) in runs {
        let state = Decoder { what: "runs", id: "count" }.state::<RunState>(&status)?;
        *counts.runs.slot(state) = n.max(0) as u64;
    }
    let inbound: Vec<(String, i64)> = sqlx::query_as("SELECT status, COUNT(*) FROM inbound GROUP BY status")
        .fetch_all(&mut *tx)
        .await
        .map_err(db(OP))?;
    for (status, n) in inbound {
        let state = Decoder { what: "inbound messages", id: "count" }.state::<InboundState>(&status)?;
        *counts.inbound.slot(state) = n.max(0) as u64;
    }
    let outbox: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox").fetch_one(&mut *tx).await.map_err(db(OP))?;
    counts.outbox = outbox.max(0) as u64;
    tx.commit().await.map_err(db(OP))?;
    Ok(counts)
}
