//! The outbox (the events emit nodes handed to the embedding platform, written with their run's completion and read
//! in `seq` order), and the queue's sizes for `/metrics`.

use super::{PostgresStore, clamp_limit, db};
use crate::store::sqlite::decode::{Decoder, convert, corrupt};
use crate::store::{InboundState, OutboxEvent, QueueCounts, RunState, StoreError};
use sqlx::FromRow;

#[derive(FromRow)]
struct OutboxRow {
    seq: i64,
    run_id: String,
    flow_id: String,
    node_id: String,
    event: String,
    payload: String,
    created_at: i64,
}

impl TryFrom<OutboxRow> for OutboxEvent {
    type Error = StoreError;

    fn try_from(row: OutboxRow) -> Result<Self, StoreError> {
        let payload = serde_json::from_str(&row.payload)
            .map_err(|e| corrupt("outbox event", &row.seq.to_string(), "payload", format!("not valid JSON: {e}")))?;
        Ok(OutboxEvent {
            seq: row.seq,
            run_id: row.run_id,
            flow_id: row.flow_id,
            node_id: row.node_id,
            event: row.event,
            payload,
            created_at: row.created_at,
        })
    }
}

pub(super) async fn outbox(
    store: &PostgresStore,
    after_seq: i64,
    limit: usize,
) -> Result<Vec<OutboxEvent>, StoreError> {
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "SELECT seq, run_id, flow_id, node_id, event, payload, created_at FROM outbox \
         WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after_seq)
    .bind(clamp_limit(limit))
    .fetch_all(&store.bookkeeping)
    .await
    .map_err(db("reading the outbox"))?;
    convert(rows)
}

pub(super) async fn counts(store: &PostgresStore) -> Result<QueueCounts, StoreError> {
    const OP: &str = "counting the queue";
    // One statement, so the three counts are of the same moment.
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT 'run', status, count(*) FROM runs GROUP BY status \
         UNION ALL SELECT 'inbound', status, count(*) FROM inbound GROUP BY status \
         UNION ALL SELECT 'outbox', '', count(*) FROM outbox",
    )
    .fetch_all(&store.bookkeeping)
    .await
    .map_err(db(OP))?;
    let mut counts = QueueCounts::default();
    for (table, status, n) in rows {
        let n = n.max(0) as u64;
        match table.as_str() {
            "run" => *counts.runs.slot(Decoder { what: "runs", id: "count" }.state::<RunState>(&status)?) = n,
            "inbound" => {
                *counts
                    .inbound
                    .slot(Decoder { what: "inbound messages", id: "count" }.state::<InboundState>(&status)?) = n
            }
            _ => counts.outbox = n,
        }
    }
    Ok(counts)
}
