//! The inbound message queue: messages received on a webhook are recorded, claimed by the inbound worker in each
//! connection's order, and settled together with the runs they map to.

use super::decode::{Decoder, convert};
use super::flow_connections::store_flow_connections;
use super::leases::{Leased, lease_lost};
use super::runs::insert_runs;
use super::{SqliteStore, clamp_claim, clamp_limit, db, non_empty};
use crate::store::{
    InboundFilter, InboundMessage, InboundOutcome, InboundState, Lease, NewRun, StoreError, StoredInbound, add_ms,
    now_ms, validate_runs,
};
use serde_json::Value;
use sqlx::{FromRow, QueryBuilder, Sqlite};
use std::time::Duration;

/// Claim inbound messages: due, and no earlier message of the connection leased, held or waiting. ?1 worker,
/// ?2 lease until, ?3 now, ?4 limit.
const CLAIM_INBOUND: &str = concat!(
    "UPDATE inbound SET status = 'leased', lease_owner = ?1, lease_until = ?2, next_attempt_at = ?2, \
     leases = leases + 1, updated_at = ?3 \
     WHERE seq IN (SELECT m.seq FROM inbound m INDEXED BY inbound_active \
        WHERE m.status IN ('received', 'leased') AND m.next_attempt_at <= ?3 \
          AND NOT EXISTS (SELECT 1 FROM inbound e WHERE e.connection = m.connection AND e.seq < m.seq \
                          AND e.status IN ('received', 'leased', 'held') \
                          AND (e.status <> 'received' OR e.next_attempt_at > ?3)) \
        ORDER BY m.seq LIMIT ?4) \
     RETURNING ",
    inbound_columns!()
);

const SWEEP_HELD_INBOUND: &str = "UPDATE inbound SET status = 'held', lease_until = NULL, updated_at = ?1 \
     WHERE status = 'leased' AND next_attempt_at <= ?1 \
       AND connection IN (SELECT connection FROM held_connections)";

#[derive(FromRow)]
struct InboundRow {
    id: String,
    seq: i64,
    connection: String,
    source: String,
    external_id: Option<String>,
    body: String,
    status: String,
    leases: i64,
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
            leases: d.count("leases", row.leases)?,
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

pub(super) async fn record_inbound(store: &SqliteStore, message: &InboundMessage) -> Result<String, StoreError> {
    non_empty("connection", &message.connection)?;
    non_empty("source", &message.source)?;
    if message.external_id.as_deref() == Some("") {
        return Err(StoreError::invalid("externalId", "must not be empty when given"));
    }
    const OP: &str = "recording an inbound message";
    let now = now_ms();
    let mut writer = store.writer(OP).await?;
    let mut tx = writer.begin(OP).await?;
    if let Some(external_id) = &message.external_id {
        let existing: Option<String> =
            sqlx::query_scalar("SELECT id FROM inbound WHERE connection = ?1 AND external_id = ?2")
                .bind(message.connection.as_str())
                .bind(external_id.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db(OP))?;
        if let Some(id) = existing {
            tx.rollback().await.map_err(db(OP))?;
            // Recorded by an earlier call, whose sync may still be running.
            store.sync_seen(writer, OP).await?;
            return Ok(id);
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO inbound (id, connection, source, external_id, body, status, next_attempt_at, received_at, \
         updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, \
                 CASE WHEN EXISTS (SELECT 1 FROM held_connections WHERE connection = ?2) \
                      THEN 'held' ELSE 'received' END, \
                 ?6, ?6, ?6)",
    )
    .bind(id.as_str())
    .bind(message.connection.as_str())
    .bind(message.source.as_str())
    .bind(message.external_id.as_deref())
    .bind(message.body.to_string())
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db(OP))?;
    tx.commit().await.map_err(db(OP))?;
    store.sync_after(writer, OP).await?;
    Ok(id)
}

pub(super) async fn claim_inbound(
    store: &SqliteStore,
    worker: &str,
    limit: usize,
    now_ms: i64,
    lease: Duration,
) -> Result<Vec<StoredInbound>, StoreError> {
    non_empty("worker", worker)?;
    if limit == 0 {
        return Ok(Vec::new());
    }
    const OP: &str = "claiming inbound messages";
    let mut writer = store.writer(OP).await?;
    let mut tx = writer.begin(OP).await?;
    sqlx::query(SWEEP_HELD_INBOUND).bind(now_ms).execute(&mut *tx).await.map_err(db(OP))?;
    let rows: Vec<InboundRow> = sqlx::query_as(CLAIM_INBOUND)
        .bind(worker)
        .bind(add_ms(now_ms, lease))
        .bind(now_ms)
        .bind(clamp_claim(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db(OP))?;
    tx.commit().await.map_err(db(OP))?;
    // As for runs: a message is worked on once its recording is durable.
    store.sync_seen(writer, OP).await?;
    let mut messages: Vec<StoredInbound> = convert(rows)?;
    messages.sort_by_key(|message| message.seq);
    Ok(messages)
}

pub(super) async fn complete_inbound(
    store: &SqliteStore,
    lease: &Lease,
    outcome: &InboundOutcome,
    runs: &[NewRun],
) -> Result<Vec<String>, StoreError> {
    validate_runs(runs)?;
    const OP: &str = "completing an inbound message";
    let now = now_ms();
    let pairs = store.flow_connections.unknown(runs);
    let mut writer = store.writer(OP).await?;
    let mut tx = writer.begin(OP).await?;
    store_flow_connections(&mut tx, &pairs).await?;
    let ids: Vec<String> = insert_runs(&mut tx, runs, now).await?.into_iter().map(|run| run.id).collect();
    let (status, detail) = match outcome {
        InboundOutcome::Processed { unmatched } => (InboundState::Processed, unmatched.as_ref().map(Value::to_string)),
        InboundOutcome::Unmatched { reason } => (InboundState::Unmatched, Some(reason.to_string())),
        InboundOutcome::Failed { error } => (InboundState::Failed, Some(error.to_string())),
    };
    // A settled message's `next_attempt_at` is when it was settled, which retention reads from `inbound_due`.
    let done = sqlx::query(concat!(
        "UPDATE inbound SET status = ?4, detail = ?5, run_ids = ?6, lease_until = NULL, next_attempt_at = ?7, \
         updated_at = ?7",
        fenced!()
    ))
    .bind(lease.id.as_str())
    .bind(lease.worker.as_str())
    .bind(i64::from(lease.token))
    .bind(status.as_str())
    .bind(detail)
    .bind(Value::from(ids.clone()).to_string())
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db(OP))?;
    if done.rows_affected() == 0 {
        let error = lease_lost(&mut tx, Leased::Inbound, lease).await;
        tx.rollback().await.map_err(db(OP))?;
        return Err(error);
    }
    tx.commit().await.map_err(db(OP))?;
    store.flow_connections.learn(pairs);
    Ok(ids)
}

pub(super) async fn get_inbound(store: &SqliteStore, id: &str) -> Result<Option<StoredInbound>, StoreError> {
    let row: Option<InboundRow> = sqlx::query_as(concat!("SELECT ", inbound_columns!(), " FROM inbound WHERE id = ?1"))
        .bind(id)
        .fetch_optional(&store.reader)
        .await
        .map_err(db("reading an inbound message"))?;
    row.map(StoredInbound::try_from).transpose()
}

pub(super) async fn list_inbound(
    store: &SqliteStore,
    filter: &InboundFilter,
) -> Result<Vec<StoredInbound>, StoreError> {
    let mut query = QueryBuilder::<Sqlite>::new(concat!("SELECT ", inbound_columns!(), " FROM inbound WHERE 1 = 1"));
    if let Some(connection) = &filter.connection {
        query.push(" AND connection = ").push_bind(connection.clone());
    }
    if !filter.statuses.is_empty() {
        query.push(" AND status IN (");
        let mut states = query.separated(", ");
        for state in &filter.statuses {
            states.push_bind(state.as_str());
        }
        query.push(")");
    }
    if let Some(before) = filter.before_seq {
        query.push(" AND seq < ").push_bind(before);
    }
    query.push(" ORDER BY seq DESC LIMIT ").push_bind(clamp_limit(filter.limit));
    let rows: Vec<InboundRow> =
        query.build_query_as().fetch_all(&store.reader).await.map_err(db("listing inbound messages"))?;
    convert(rows)
}

pub(super) async fn retry_inbound(store: &SqliteStore, id: &str) -> Result<bool, StoreError> {
    const OP: &str = "retrying an inbound message";
    let mut conn = store.write_connection(OP).await?;
    let done = sqlx::query(
        "UPDATE inbound SET status = CASE WHEN EXISTS \
             (SELECT 1 FROM held_connections h WHERE h.connection = inbound.connection) \
             THEN 'held' ELSE 'received' END, \
         next_attempt_at = ?2, lease_until = NULL, updated_at = ?2 \
         WHERE id = ?1 AND status IN ('unmatched', 'failed', 'held')",
    )
    .bind(id)
    .bind(now_ms())
    .execute(&mut *conn)
    .await
    .map_err(db(OP))?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    store.sync_after(conn, OP).await?;
    Ok(true)
}
