//! The queue's sizes, for `/metrics`: runs and inbound messages per state, and the outbox, of one moment; and the
//! counts the console shows (runs of a customer, a flow or a connection per state, dead runs by customer and flow),
//! counted by the database rather than by listing runs.

use super::decode::Decoder;
use super::runs::push_filter;
use super::{SqliteStore, clamp_limit, db};
use crate::store::{DeadRunGroups, InboundState, QueueCounts, RunCounts, RunFilter, RunState, StoreError};
use sqlx::{QueryBuilder, Sqlite};

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

pub(super) async fn count_runs(store: &SqliteStore, filter: &RunFilter) -> Result<RunCounts, StoreError> {
    const OP: &str = "counting runs";
    let rows: Vec<(String, i64)> =
        count_query(filter).build_query_as().fetch_all(&store.reader).await.map_err(db(OP))?;
    let mut counts = RunCounts::default();
    for (status, n) in rows {
        *counts.slot(Decoder { what: "runs", id: "count" }.state::<RunState>(&status)?) = n.max(0) as u64;
    }
    Ok(counts)
}

/// The runs `filter` selects, counted per state: rows of (status, count).
pub(super) fn count_query(filter: &RunFilter) -> QueryBuilder<Sqlite> {
    // Counting visits every run the filter selects, in the index it is read by. Without statistics, SQLite would
    // read a flow's runs (often most of the store) by `runs_by_flow` to count its few dead ones: when states are
    // asked for, they select, unless a customer or an ordering key does (a customer's runs are few).
    let by_state = !filter.statuses.is_empty() && filter.customer.is_none() && filter.ordering_key.is_none();
    let runs = if by_state { "runs INDEXED BY runs_due" } else { "runs" };
    let mut query = QueryBuilder::<Sqlite>::new(format!("SELECT status, COUNT(*) FROM {runs} WHERE 1 = 1"));
    push_filter(&mut query, filter);
    query.push(" GROUP BY status");
    query
}

/// The `?1` largest groups of dead runs by customer (runs without one last among equals): customer, count.
pub(super) const DEAD_BY_CUSTOMER: &str = "SELECT customer, COUNT(*) AS n FROM runs WHERE status = 'dead' \
     GROUP BY customer ORDER BY n DESC, customer IS NULL, customer LIMIT ?1";
/// The `?1` largest groups of dead runs by flow: flow id, count.
pub(super) const DEAD_BY_FLOW: &str = "SELECT flow_id, COUNT(*) AS n FROM runs WHERE status = 'dead' \
     GROUP BY flow_id ORDER BY n DESC, flow_id LIMIT ?1";

/// Dead runs per customer and per flow, found by the index on states (`runs_due`): dead runs are few, or an
/// operator has work to do.
pub(super) async fn dead_runs_by_group(store: &SqliteStore, limit: usize) -> Result<DeadRunGroups, StoreError> {
    const OP: &str = "counting dead runs";
    let limit = clamp_limit(limit);
    // One read transaction, so the two groupings are of the same moment.
    let mut tx = store.reader.begin().await.map_err(db(OP))?;
    let by_customer: Vec<(Option<String>, i64)> =
        sqlx::query_as(DEAD_BY_CUSTOMER).bind(limit).fetch_all(&mut *tx).await.map_err(db(OP))?;
    let by_flow: Vec<(String, i64)> =
        sqlx::query_as(DEAD_BY_FLOW).bind(limit).fetch_all(&mut *tx).await.map_err(db(OP))?;
    tx.commit().await.map_err(db(OP))?;
    Ok(DeadRunGroups {
        by_customer: by_customer.into_iter().map(|(customer, n)| (customer, n.max(0) as u64)).collect(),
        by_flow: by_flow.into_iter().map(|(flow, n)| (flow, n.max(0) as u64)).collect(),
    })
}
