//! The outbox: the events emit nodes handed to the embedding platform, written with their run's completion and
//! read in `seq` order.

use super::decode::{convert, corrupt};
use super::{SqliteStore, clamp_limit, db};
use crate::store::{Lease, NewOutboxEvent, OutboxEvent, StoreError};
use sqlx::{FromRow, SqliteConnection};

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

pub(super) async fn insert_outbox(
    conn: &mut SqliteConnection,
    lease: &Lease,
    emitted: &[NewOutboxEvent],
    now: i64,
) -> Result<(), StoreError> {
    for event in emitted {
        sqlx::query(
            "INSERT INTO outbox (run_id, flow_id, node_id, event, payload, created_at) \
             SELECT id, flow_id, ?2, ?3, ?4, ?5 FROM runs WHERE id = ?1",
        )
        .bind(lease.id.as_str())
        .bind(event.node_id.as_str())
        .bind(event.event.as_str())
        .bind(event.payload.to_string())
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db("writing the outbox"))?;
    }
    Ok(())
}

pub(super) async fn outbox(store: &SqliteStore, after_seq: i64, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "SELECT seq, run_id, flow_id, node_id, event, payload, created_at FROM outbox \
         WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )
    .bind(after_seq)
    .bind(clamp_limit(limit))
    .fetch_all(&store.reader)
    .await
    .map_err(db("reading the outbox"))?;
    convert(rows)
}
