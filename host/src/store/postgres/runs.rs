//! The run queue: enqueue, claim and release, reading runs, and the operators' retry and drop.

use super::notify::RUNS_CHANNEL;
use super::{HOLDS_SHARED, PostgresStore, clamp_claim, clamp_limit, db, non_empty, token};
use crate::store::Enqueued;
use crate::store::sqlite::decode::{Decoder, convert, corrupt};
use crate::store::sqlite::traces::TraceBlocks;
use crate::store::{
    DeadRunGroups, Lease, NewRun, RunCounts, RunDetails, RunFilter, RunState, RunSummary, StoreError, StoredRun,
    add_ms, now_ms, validate_runs,
};
use sqlx::postgres::PgPool;
use sqlx::{FromRow, PgExecutor, Postgres, QueryBuilder};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// A run as read: its summary's columns and the rest.
#[derive(FromRow)]
pub(super) struct RunRow {
    #[sqlx(flatten)]
    summary: SummaryRow,
    dedup_key: Option<String>,
    event: String,
    leases: i32,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    checkpoint: Option<String>,
    trace: Option<Vec<u8>>,
    trace_block: Option<i64>,
    trace_slot: Option<i32>,
}

impl RunRow {
    fn into_run(self, blocks: &TraceBlocks) -> Result<StoredRun, StoreError> {
        let summary = RunSummary::try_from(self.summary)?;
        let d = Decoder { what: "run", id: &summary.id };
        let trace = match (self.trace_block, self.trace_slot) {
            (Some(block), Some(slot)) => Some(d.trace_in_block(blocks, block, i64::from(slot))?),
            _ => self.trace.as_deref().map(|stored| d.trace(stored)).transpose()?,
        };
        let details = RunDetails {
            event: d.json("event", &self.event)?,
            leases: d.count("leases", i64::from(self.leases))?,
            checkpoint: d.opt_json("checkpoint", self.checkpoint.as_deref())?,
            trace,
            dedup_key: self.dedup_key,
            lease_owner: self.lease_owner,
            lease_until: self.lease_until,
        };
        Ok(summary.with_details(details))
    }
}

/// Runs as read, with the traces they point into from the trace blocks.
pub(super) async fn stored_runs(reader: impl PgExecutor<'_>, rows: Vec<RunRow>) -> Result<Vec<StoredRun>, StoreError> {
    let ids: HashSet<i64> = rows.iter().filter_map(|row| row.trace_block).collect();
    let mut blocks = TraceBlocks::new();
    if !ids.is_empty() {
        let ids: Vec<i64> = ids.into_iter().collect();
        let stored: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT id, traces FROM trace_blocks WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(reader)
            .await
            .map_err(db("reading traces"))?;
        for (id, stored) in stored {
            let unpacked = crate::store::sqlite::traces::decompress(&stored).and_then(|json| {
                serde_json::from_slice(&json).map_err(|e| format!("is not a JSON array of traces: {e}"))
            });
            blocks.insert(id, unpacked);
        }
    }
    rows.into_iter().map(|row| row.into_run(&blocks)).collect()
}

/// Stores (connection, flow id) pairs in `flow_connections`, if not there yet, in a statement of its own before the
/// runs that have them (a pair without its runs is harmless). Sorted, so two processes storing the same new pairs
/// never wait for each other in a cycle.
pub(super) async fn store_flow_connections(pool: &PgPool, pairs: &[(String, String)]) -> Result<(), StoreError> {
    if pairs.is_empty() {
        return Ok(());
    }
    let mut sorted = pairs.to_vec();
    sorted.sort();
    let (connections, flows): (Vec<String>, Vec<String>) = sorted.into_iter().unzip();
    sqlx::query(
        "INSERT INTO flow_connections (connection, flow_id) \
         SELECT c, f FROM unnest($1::text[], $2::text[]) AS u (c, f) ORDER BY c, f ON CONFLICT DO NOTHING",
    )
    .bind(connections)
    .bind(flows)
    .execute(pool)
    .await
    .map_err(db("storing the connections of flows"))?;
    Ok(())
}

/// Inserts runs (through `flowhost_enqueue`, migration 0003) and returns their ids, in order: for a run whose dedup
/// key its flow already has (stored, or earlier in `runs`), the stored run's id.
pub(super) async fn insert_runs<'c>(
    executor: impl PgExecutor<'c>,
    runs: &[NewRun],
    now: i64,
) -> Result<Vec<Enqueued>, StoreError> {
    const OP: &str = "enqueuing runs";
    let mut ids = Vec::with_capacity(runs.len());
    let mut first_by_dedup: HashMap<(&str, &str), usize> = HashMap::new();
    // Each run's provisional id, or the index of the earlier run of the batch with its dedup key.
    let mut fresh: Vec<usize> = Vec::with_capacity(runs.len());
    let mut same_as: Vec<Option<usize>> = Vec::with_capacity(runs.len());
    for (i, run) in runs.iter().enumerate() {
        // Time-ordered (v7), so new ids land at the end of the id index.
        ids.push(uuid::Uuid::now_v7().to_string());
        match run.dedup_key.as_deref() {
            Some(key) => match first_by_dedup.get(&(run.flow_id.as_str(), key)) {
                Some(first) => same_as.push(Some(*first)),
                None => {
                    first_by_dedup.insert((run.flow_id.as_str(), key), i);
                    fresh.push(i);
                    same_as.push(None);
                }
            },
            None => {
                fresh.push(i);
                same_as.push(None);
            }
        }
    }
    let provisional = ids.clone();
    let column = |f: &dyn Fn(&NewRun) -> String| fresh.iter().map(|&i| f(&runs[i])).collect::<Vec<String>>();
    let connections = column(&|run| {
        let mut seen = HashSet::new();
        let names: Vec<&str> = run.connections.iter().map(String::as_str).filter(|name| seen.insert(*name)).collect();
        serde_json::Value::from(names).to_string()
    });
    let customers: Vec<Option<&str>> = fresh.iter().map(|&i| runs[i].customer.as_deref()).collect();
    let dedup_keys: Vec<Option<&str>> = fresh.iter().map(|&i| runs[i].dedup_key.as_deref()).collect();
    let stored: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT flow_id, dedup_key, id FROM flowhost_enqueue($1::text[], $2::text[], $3::text[], $4::text[], \
         $5::text[], $6::text[], $7::text[], $8::text[], $9)",
    )
    .bind(fresh.iter().map(|&i| ids[i].clone()).collect::<Vec<_>>())
    .bind(column(&|run| run.flow_id.clone()))
    .bind(column(&|run| run.flow_version.clone()))
    .bind(connections)
    .bind(column(&|run| run.ordering_key.clone()))
    .bind(customers)
    .bind(dedup_keys)
    .bind(column(&|run| run.event.to_string()))
    .bind(now)
    .fetch_all(executor)
    .await
    .map_err(db(OP))?;
    let stored: HashMap<(String, String), String> =
        stored.into_iter().map(|(flow_id, dedup_key, id)| ((flow_id, dedup_key), id)).collect();
    for (i, run) in runs.iter().enumerate() {
        if let Some(key) = run.dedup_key.as_deref() {
            let id = stored
                .get(&(run.flow_id.clone(), key.to_string()))
                .cloned()
                .or_else(|| same_as[i].map(|first| ids[first].clone()));
            match id {
                Some(id) => ids[i] = id,
                None => {
                    return Err(StoreError::Corrupt {
                        what: format!("run with dedup key {key}"),
                        message: "enqueued but not found".into(),
                    });
                }
            }
        }
    }
    // A run whose id is not its provisional one is a run stored before, or earlier in the batch.
    Ok(ids.into_iter().zip(provisional).map(|(id, provisional)| Enqueued { new: id == provisional, id }).collect())
}

pub(super) async fn enqueue(store: &PostgresStore, runs: &[NewRun]) -> Result<Vec<Enqueued>, StoreError> {
    validate_runs(runs)?;
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let pairs = store.flow_connections.unknown(runs);
    store_flow_connections(&store.durable, &pairs).await?;
    let ids = insert_runs(&store.durable, runs, now_ms()).await?;
    store.flow_connections.learn(pairs);
    Ok(ids)
}

pub(super) async fn claim(
    store: &PostgresStore,
    worker: &str,
    limit: usize,
    per_key: usize,
    now_ms: i64,
    lease: Duration,
) -> Result<Vec<StoredRun>, StoreError> {
    non_empty("worker", worker)?;
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows: Vec<RunRow> =
        sqlx::query_as(concat!("SELECT ", run_columns!(), " FROM flowhost_claim_runs($1, $2, $3, $4, $5)"))
            .bind(worker)
            .bind(add_ms(now_ms, lease))
            .bind(now_ms)
            .bind(clamp_claim(limit))
            .bind(clamp_claim(per_key.max(1)))
            .fetch_all(&store.bookkeeping)
            .await
            .map_err(db("claiming runs"))?;
    let mut runs = stored_runs(&store.bookkeeping, rows).await?;
    runs.sort_by_key(|run| run.seq);
    Ok(runs)
}

pub(super) async fn release(store: &PostgresStore, leases: &[Lease]) -> Result<(), StoreError> {
    if leases.is_empty() {
        return Ok(());
    }
    const OP: &str = "releasing runs";
    let mut tx = store.bookkeeping.begin().await.map_err(db(OP))?;
    sqlx::query(HOLDS_SHARED).execute(&mut *tx).await.map_err(db(OP))?;
    let released: i64 = sqlx::query_scalar(concat!(
        "WITH done AS (\
         UPDATE runs SET status = CASE WHEN ", uses_held_connection!(), " THEN 'held' ELSE 'queued' END, \
         next_attempt_at = $4, lease_until = NULL, updated_at = $4 \
         WHERE runs.seq IN (SELECT r.seq FROM runs r \
                            JOIN unnest($1::text[], $2::text[], $3::int4[]) AS c (id, worker, token) \
                              ON r.id = c.id AND r.status = 'leased' AND r.lease_owner = c.worker AND r.leases = c.token \
                            ORDER BY r.id FOR UPDATE OF r) \
         RETURNING runs.ordering_key, NULL::int8 AS wake_at), ",
        wake_keys_of_done!(),
        " SELECT count(*) FROM done"
    ))
    .bind(leases.iter().map(|lease| lease.id.as_str()).collect::<Vec<_>>())
    .bind(leases.iter().map(|lease| lease.worker.as_str()).collect::<Vec<_>>())
    .bind(leases.iter().map(token).collect::<Vec<_>>())
    .bind(now_ms())
    .fetch_one(&mut *tx)
    .await
    .map_err(db(OP))?;
    if released > 0 {
        sqlx::query("SELECT pg_notify($1, '')").bind(RUNS_CHANNEL).execute(&mut *tx).await.map_err(db(OP))?;
    }
    tx.commit().await.map_err(db(OP))
}

/// A read-only snapshot for reading runs and then their trace blocks, so a retention purge that commits between the
/// two reads cannot leave a finished run pointing at a block that is gone.
async fn snapshot(store: &PostgresStore, op: &'static str) -> Result<sqlx::Transaction<'static, Postgres>, StoreError> {
    let mut tx = store.bookkeeping.begin().await.map_err(db(op))?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(db(op))?;
    Ok(tx)
}

pub(super) async fn get(store: &PostgresStore, id: &str) -> Result<Option<StoredRun>, StoreError> {
    const OP: &str = "reading a run";
    let mut tx = snapshot(store, OP).await?;
    let row: Option<RunRow> = sqlx::query_as(concat!("SELECT ", run_columns!(), " FROM runs WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db(OP))?;
    let run = stored_runs(&mut *tx, Vec::from_iter(row)).await?.pop();
    tx.commit().await.map_err(db(OP))?;
    Ok(run)
}

/// Appends the conditions of `filter` but its `before_seq` and `limit` (` AND ...` each) to a query on `runs`.
pub(super) fn push_filter(query: &mut QueryBuilder<Postgres>, filter: &RunFilter) {
    if let Some(customer) = &filter.customer {
        query.push(" AND customer = ").push_bind(customer.clone());
    }
    if let Some(flow_id) = &filter.flow_id {
        query.push(" AND flow_id = ").push_bind(flow_id.clone());
    }
    if let Some(key) = &filter.ordering_key {
        query.push(" AND ordering_key = ").push_bind(key.clone());
    }
    if let Some(connection) = &filter.connection {
        query.push(" AND runs.flow_id IN (SELECT fc.flow_id FROM flow_connections fc WHERE fc.connection = ");
        query.push_bind(connection.clone());
        query.push(") AND ").push_bind(connection.clone()).push(" = ANY (runs.connections)");
    }
    if !filter.statuses.is_empty() {
        let states: Vec<&str> = filter.statuses.iter().map(|state| state.as_str()).collect();
        query.push(" AND status = ANY (").push_bind(states).push(")");
    }
    if let Some(from) = filter.created_from {
        query.push(" AND created_at >= ").push_bind(from);
    }
    if let Some(until) = filter.created_until {
        query.push(" AND created_at < ").push_bind(until);
    }
}

/// A query for the runs `filter` selects, newest first: `SELECT <columns> FROM runs WHERE ...`.
fn listing(columns: &str, filter: &RunFilter) -> QueryBuilder<Postgres> {
    let mut query = QueryBuilder::<Postgres>::new(format!("SELECT {columns} FROM runs WHERE true"));
    push_filter(&mut query, filter);
    if let Some(before) = filter.before_seq {
        query.push(" AND seq < ").push_bind(before);
    }
    query.push(" ORDER BY seq DESC LIMIT ").push_bind(clamp_limit(filter.limit));
    query
}

pub(super) async fn list(store: &PostgresStore, filter: &RunFilter) -> Result<Vec<StoredRun>, StoreError> {
    let mut query = listing(run_columns!(), filter);
    const OP: &str = "listing runs";
    let mut tx = snapshot(store, OP).await?;
    let rows: Vec<RunRow> = query.build_query_as().fetch_all(&mut *tx).await.map_err(db(OP))?;
    let runs = stored_runs(&mut *tx, rows).await?;
    tx.commit().await.map_err(db(OP))?;
    Ok(runs)
}

/// The columns of a run's summary, as [`SummaryRow`] reads them.
const SUMMARY_COLUMNS: &str = "id, seq, flow_id, flow_version, connections, ordering_key, customer, status, attempts, \
     next_attempt_at, last_error, created_at, updated_at";

#[derive(FromRow)]
struct SummaryRow {
    id: String,
    seq: i64,
    flow_id: String,
    flow_version: String,
    connections: Vec<String>,
    ordering_key: String,
    customer: Option<String>,
    status: String,
    attempts: i32,
    next_attempt_at: i64,
    last_error: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<SummaryRow> for RunSummary {
    type Error = StoreError;

    fn try_from(row: SummaryRow) -> Result<Self, StoreError> {
        let d = Decoder { what: "run", id: &row.id };
        Ok(RunSummary {
            status: d.state(&row.status)?,
            attempts: d.count("attempts", i64::from(row.attempts))?,
            last_error: d.opt_json("last_error", row.last_error.as_deref())?,
            connections: row.connections,
            seq: row.seq,
            flow_id: row.flow_id,
            flow_version: row.flow_version,
            ordering_key: row.ordering_key,
            customer: row.customer,
            next_attempt_at: row.next_attempt_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
            id: row.id,
        })
    }
}

pub(super) async fn list_summaries(store: &PostgresStore, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
    const OP: &str = "listing runs";
    let rows: Vec<SummaryRow> =
        listing(SUMMARY_COLUMNS, filter).build_query_as().fetch_all(&store.bookkeeping).await.map_err(db(OP))?;
    convert(rows)
}

pub(super) async fn count_runs(store: &PostgresStore, filter: &RunFilter) -> Result<RunCounts, StoreError> {
    const OP: &str = "counting runs";
    let mut query = QueryBuilder::<Postgres>::new("SELECT status, count(*) FROM runs WHERE true");
    push_filter(&mut query, filter);
    query.push(" GROUP BY status");
    let rows: Vec<(String, i64)> = query.build_query_as().fetch_all(&store.bookkeeping).await.map_err(db(OP))?;
    let mut counts = RunCounts::default();
    for (status, n) in rows {
        *counts.slot(Decoder { what: "runs", id: "count" }.state::<RunState>(&status)?) = n.max(0) as u64;
    }
    Ok(counts)
}

/// Dead runs per customer and per flow, in one statement (so of one moment), found by the index on states
/// (`runs_by_status`). Names sort bytewise (`COLLATE "C"`), as SQLite sorts them.
pub(super) async fn dead_runs_by_group(store: &PostgresStore, limit: usize) -> Result<DeadRunGroups, StoreError> {
    const OP: &str = "counting dead runs";
    let rows: Vec<(bool, Option<String>, i64)> = sqlx::query_as(
        "WITH dead AS (SELECT customer, flow_id FROM runs WHERE status = 'dead') \
         (SELECT true, customer, count(*) AS n FROM dead GROUP BY customer \
          ORDER BY n DESC, customer IS NULL, customer COLLATE \"C\" LIMIT $1) \
         UNION ALL \
         (SELECT false, flow_id, count(*) AS n FROM dead GROUP BY flow_id ORDER BY n DESC, flow_id COLLATE \"C\" LIMIT $1)",
    )
    .bind(clamp_limit(limit))
    .fetch_all(&store.bookkeeping)
    .await
    .map_err(db(OP))?;
    let mut groups = DeadRunGroups::default();
    for (by_customer, name, n) in rows {
        let n = n.max(0) as u64;
        match (by_customer, name) {
            (true, customer) => groups.by_customer.push((customer, n)),
            (false, Some(flow)) => groups.by_flow.push((flow, n)),
            (false, None) => return Err(corrupt("runs", "count", "flow_id", "a dead run without a flow")),
        }
    }
    Ok(groups)
}

pub(super) async fn retry_now(store: &PostgresStore, id: &str) -> Result<bool, StoreError> {
    const OP: &str = "retrying a run";
    let now = now_ms();
    let mut tx = store.durable.begin().await.map_err(db(OP))?;
    sqlx::query(HOLDS_SHARED).execute(&mut *tx).await.map_err(db(OP))?;
    let key: Option<String> = sqlx::query_scalar("SELECT ordering_key FROM runs WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db(OP))?;
    let Some(key) = key else {
        // Ended now rather than when the connection is next used: it holds the held-connections lock.
        tx.rollback().await.map_err(db(OP))?;
        return Ok(false);
    };
    // A failed run reopens, and may be older than its key's open runs: no claim of the key may read the key's runs
    // meanwhile (see flowhost_claim_runs).
    sqlx::query("SELECT 1 FROM run_keys WHERE ordering_key = $1 FOR UPDATE")
        .bind(&key)
        .execute(&mut *tx)
        .await
        .map_err(db(OP))?;
    let done = sqlx::query(concat!(
        "UPDATE runs SET status = CASE WHEN ",
        uses_held_connection!(),
        " THEN 'held' ELSE 'queued' END, \
         attempts = CASE WHEN status IN ('dead', 'failed') THEN 0 ELSE attempts END, \
         next_attempt_at = $2, lease_until = NULL, updated_at = $2 \
         WHERE id = $1 AND status IN ('dead', 'queued', 'held', 'failed')"
    ))
    .bind(id)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db(OP))?;
    if done.rows_affected() == 0 {
        // Ended now: a transaction dropped is rolled back only when its connection is next used, and until then it
        // would hold the key's row, which claims skip.
        tx.rollback().await.map_err(db(OP))?;
        return Ok(false);
    }
    sqlx::query("INSERT INTO key_wakeups (ordering_key, due) VALUES ($1, NULL)")
        .bind(&key)
        .execute(&mut *tx)
        .await
        .map_err(db(OP))?;
    sqlx::query("SELECT pg_notify($1, '')").bind(RUNS_CHANNEL).execute(&mut *tx).await.map_err(db(OP))?;
    tx.commit().await.map_err(db(OP))?;
    Ok(true)
}

pub(super) async fn drop_run(store: &PostgresStore, id: &str) -> Result<bool, StoreError> {
    // The key's next run may be due now.
    let dropped: i64 = sqlx::query_scalar(concat!(
        "WITH done AS (UPDATE runs SET status = 'dropped', lease_until = NULL, updated_at = $2 \
         WHERE id = $1 AND status IN ('queued', 'leased', 'held', 'dead') \
         RETURNING ordering_key, NULL::int8 AS wake_at), ",
        wake_keys_of_done!(),
        " SELECT count(*) FROM done"
    ))
    .bind(id)
    .bind(now_ms())
    .fetch_one(&store.durable)
    .await
    .map_err(db("dropping a run"))?;
    Ok(dropped > 0)
}
