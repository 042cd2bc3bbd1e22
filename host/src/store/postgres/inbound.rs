//! The inbound message queue: messages received on a webhook are recorded, claimed in each connection's order (one
//! process at a time per connection, `flowhost_claim_inbound`), and settled together with the runs they map to.

use super::leases::{Leased, lease_lost};
use super::notify::INBOUND_CHANNEL;
use super::runs::{insert_runs, store_flow_connections};
use super::{HOLDS_SHARED, PostgresStore, clamp_claim, clamp_limit, db, non_empty, token};
use crate::store::sqlite::decode::{Decoder, convert};
use crate::store::{
    InboundFilter, InboundMessage, InboundOutcome, InboundState, Lease, NewRun, StoreError, StoredInbound, add_ms,
    now_ms, validate_runs,
};
use serde_json::Value;
use sqlx::{FromRow, Postgres, QueryBuilder};
use std::time::Duration;

#[derive(FromRow)]
struct InboundRow {
    id: String,
    seq: i64,
    connection: String,
    source: String,
    external_id: Option<String>,
    body: String,
    status: String,
    leases: i32,
    next_attempt_at: i64,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    detail: Option<String>,
    run_ids: String,
    received_at: i64,
    updated_at: i64,
}

impl TryFrom<InboundRow> for StoredInbound {
    type Error = StoreError;

    fn try_from(row: InboundRow) -> Result<Self, StoreError> {
        let d = Decoder { what: "inbound message", id: &row.id };
        Ok(StoredInbound {
            body: d.json("body", &row.body)?,
            status: d.state(&row.status)?,
            leases: d.count("leases", i64::from(row.leases))?,
            detail: d.opt_json("detail", row.detail.as_deref())?,
            run_ids: d.strings("run_ids", &row.run_ids)?,
            seq: row.seq,
            connection: row.connection,
            source: row.source,
            external_id: row.external_id,
            next_attempt_at: row.next_attempt_at,
            lease_owner: row.lease_owner,
            lease_until: row.lease_until,
            received_at: row.received_at,
            updated_at: row.updated_at,
            id: row.id,
        })
    }
}

pub(super) async fn record_inbound(store: &PostgresStore, message: &InboundMessage) -> Result<String, StoreError> {
    non_empty("connection", &message.connection)?;
    non_empty("source", &message.source)?;
    if message.external_id.as_deref() == Some("") {
        return Err(StoreError::invalid("externalId", "must not be empty when given"));
    }
    const OP: &str = "recording an inbound message";
    let now = now_ms();
    let mut tx = store.durable.begin().await.map_err(db(OP))?;
    sqlx::query(HOLDS_SHARED).execute(&mut *tx).await.map_err(db(OP))?;
    // A message with the sender's id recorded before (by any process) is that message: the insert waits for a
    // concurrent one to commit, then does nothing, and the stored id is read.
    let inserted: Option<String> = sqlx::query_scalar(
        "INSERT INTO inbound (id, connection, source, external_id, body, status, next_attempt_at, received_at, \
         updated_at) \
         VALUES ($1, $2, $3, $4, $5, \
                 CASE WHEN EXISTS (SELECT 1 FROM held_connections WHERE connection = $2) \
                      THEN 'held' ELSE 'received' END, \
                 $6, $6, $6) \
         ON CONFLICT (connection, external_id) DO NOTHING RETURNING id",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(message.connection.as_str())
    .bind(message.source.as_str())
    .bind(message.external_id.as_deref())
    .bind(message.body.to_string())
    .bind(now)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db(OP))?;
    let id = match inserted {
        Some(id) => {
            sqlx::query("SELECT pg_notify($1, '')").bind(INBOUND_CHANNEL).execute(&mut *tx).await.map_err(db(OP))?;
            id
        }
        None => sqlx::query_scalar("SELECT id FROM inbound WHERE connection = $1 AND external_id = $2")
            .bind(message.connection.as_str())
            .bind(message.external_id.as_deref())
            .fetch_one(&mut *tx)
            .await
            .map_err(db(OP))?,
    };
    tx.commit().await.map_err(db(OP))?;
    Ok(id)
}

pub(super) async fn claim_inbound(
    store: &PostgresStore,
    worker: &str,
    limit: usize,
    now_ms: i64,
    lease: Duration,
) -> Result<Vec<StoredInbound>, StoreError> {
    non_empty("worker", worker)?;
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows: Vec<InboundRow> =
        sqlx::query_as(concat!("SELECT ", inbound_columns!(), " FROM flowhost_claim_inbound($1, $2, $3, $4)"))
            .bind(worker)
            .bind(add_ms(now_ms, lease))
            .bind(now_ms)
            .bind(clamp_claim(limit))
            .fetch_all(&store.bookkeeping)
            .await
            .map_err(db("claiming inbound messages"))?;
    let mut messages: Vec<StoredInbound> = convert(rows)?;
    messages.sort_by_key(|message| message.seq);
    Ok(messages)
}

pub(super) async fn complete_inbound(
    store: &PostgresStore,
    lease: &Lease,
    outcome: &InboundOutcome,
    runs: &[NewRun],
) -> Result<Vec<String>, StoreError> {
    validate_runs(runs)?;
    const OP: &str = "completing an inbound message";
    let now = now_ms();
    let pairs = store.flow_connections.unknown(runs);
    store_flow_connections(&store.durable, &pairs).await?;
    let mut tx = store.durable.begin().await.map_err(db(OP))?;
    let ids: Vec<String> = if runs.is_empty() {
        Vec::new()
    } else {
        insert_runs(&mut *tx, runs, now).await?.into_iter().map(|run| run.id).collect()
    };
    let (status, detail) = match outcome {
        InboundOutcome::Processed { unmatched } => (InboundState::Processed, unmatched.as_ref().map(Value::to_string)),
        InboundOutcome::Unmatched { reason } => (InboundState::Unmatched, Some(reason.to_string())),
        InboundOutcome::Failed { error } => (InboundState::Failed, Some(error.to_string())),
    };
    let done = sqlx::query(
        "UPDATE inbound SET status = $4, detail = $5, run_ids = $6, lease_until = NULL, updated_at = $7 \
         WHERE id = $1 AND status = 'leased' AND lease_owner = $2 AND leases = $3",
    )
    .bind(lease.id.as_str())
    .bind(lease.worker.as_str())
    .bind(token(lease))
    .bind(status.as_str())
    .bind(detail)
    .bind(Value::from(ids.clone()).to_string())
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db(OP))?;
    if done.rows_affected() == 0 {
        let error = lease_lost(&mut *tx, Leased::Inbound, lease).await;
        tx.rollback().await.map_err(db(OP))?;
        return Err(error);
    }
    tx.commit().await.map_err(db(OP))?;
    store.flow_connections.learn(pairs);
    Ok(ids)
}

pub(super) async fn get_inbound(store: &PostgresStore, id: &str) -> Result<Option<StoredInbound>, StoreError> {
    let row: Option<InboundRow> = sqlx::query_as(concat!("SELECT ", inbound_columns!(), " FROM inbound WHERE id = $1"))
        .bind(id)
        .fetch_optional(&store.bookkeeping)
        .await
        .map_err(db("reading an inbound message"))?;
    row.map(StoredInbound::try_from).transpose()
}

pub(super) async fn list_inbound(
    store: &PostgresStore,
    filter: &InboundFilter,
) -> Result<Vec<StoredInbound>, StoreError> {
    let mut query = QueryBuilder::<Postgres>::new(concat!("SELECT ", inbound_columns!(), " FROM inbound WHERE true"));
    if let Some(connection) = &filter.connection {
        query.push(" AND connection = ").push_bind(connection.clone());
    }
    if !filter.statuses.is_empty() {
        let states: Vec<&str> = filter.statuses.iter().map(|state| state.as_str()).collect();
        query.push(" AND status = ANY (").push_bind(states).push(")");
    }
    if let Some(before) = filter.before_seq {
        query.push(" AND seq < ").push_bind(before);
    }
    query.push(" ORDER BY seq DESC LIMIT ").push_bind(clamp_limit(filter.limit));
    let rows: Vec<InboundRow> =
        query.build_query_as().fetch_all(&store.bookkeeping).await.map_err(db("listing inbound messages"))?;
    convert(rows)
}

pub(super) async fn retry_inbound(store: &PostgresStore, id: &str) -> Result<bool, StoreError> {
    const OP: &str = "retrying an inbound message";
    let mut tx = store.durable.begin().await.map_err(db(OP))?;
    sqlx::query(HOLDS_SHARED).execute(&mut *tx).await.map_err(db(OP))?;
    let done = sqlx::query(
        "UPDATE inbound SET status = CASE WHEN EXISTS \
             (SELECT 1 FROM held_connections h WHERE h.connection = inbound.connection) \
             THEN 'held' ELSE 'received' END, \
         next_attempt_at = $2, lease_until = NULL, updated_at = $2 \
         WHERE id = $1 AND status IN ('unmatched', 'failed', 'held')",
    )
    .bind(id)
    .bind(now_ms())
    .execute(&mut *tx)
    .await
    .map_err(db(OP))?;
    if done.rows_affected() == 0 {
        // Ended now rather than when the connection is next used: it holds the held-connections lock.
        tx.rollback().await.map_err(db(OP))?;
        return Ok(false);
    }
    sqlx::query("SELECT pg_notify($1, '')").bind(INBOUND_CHANNEL).execute(&mut *tx).await.map_err(db(OP))?;
    tx.commit().await.map_err(db(OP))?;
    Ok(true)
}
