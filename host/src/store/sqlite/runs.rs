//! The run queue: enqueue, claim and release, reading runs, the operators' retry and drop, and the mark on each
//! ordering key's *head* (its first open run) that claims read.

use super::decode::{Decoder, convert};
use super::flow_connections::store_flow_connections;
use super::traces::{TraceBlocks, read_trace_blocks};
use super::{SqliteStore, clamp_claim, clamp_limit, db, non_empty};
use crate::store::Enqueued;
use crate::store::{
    Lease, NewRun, RunDetails, RunFilter, RunState, RunSummary, StoreError, StoredRun, add_ms, now_ms, validate_runs,
};
use serde_json::{Value, json};
use sqlx::{FromRow, QueryBuilder, Sqlite, SqliteConnection};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Claim: due runs with no earlier open run of their key, oldest first, each with up to `per_key - 1` of its
/// key's runs right behind it. ?1 worker, ?2 lease until, ?3 now, ?4 limit, ?5 runs per key.
///
/// A run with no earlier open run of its key is the key's *head* (the smallest open `seq`), which the
/// statements that open and close runs keep marked (migrations 0002 to 0004, [`rehead`]). Heads are read in
/// `seq` order from the partial index `runs_claimable`, which holds only heads, so a claim costs O(keys with
/// open runs) at most, and stops after `limit`, however long each key's backlog is. Behind each head, the next
/// open runs of its key are read from `runs_open_by_key` (at most `per_key - 1`), and taken while each is due
/// (an earlier run that is not, e.g. held or waiting for a resend, stops its key there). The limit takes every
/// head before any key's second run, every second run before any third, and so on.
pub(super) const CLAIM_RUNS: &str = concat!(
    "WITH heads AS (SELECT r.seq, r.ordering_key FROM runs r INDEXED BY runs_claimable \
        WHERE r.head = 1 AND r.status IN ('queued', 'leased') AND r.next_attempt_at <= ?3 \
        ORDER BY r.seq LIMIT ?4), \
     behind AS (SELECT h.seq AS head, o.seq, (o.status IN ('queued', 'leased') AND o.next_attempt_at <= ?3) AS due \
        FROM heads h JOIN runs o ON o.seq IN (SELECT x.seq FROM runs x INDEXED BY runs_open_by_key \
            WHERE x.ordering_key = h.ordering_key AND x.status IN ",
    open_statuses!(),
    " AND x.seq > h.seq ORDER BY x.seq LIMIT ?5 - 1)), \
     chosen AS (SELECT seq, 0 AS depth, seq AS head FROM heads \
        UNION ALL SELECT seq, depth, head FROM (SELECT seq, head, MIN(due) OVER key_order AS unbroken, \
                                                       row_number() OVER key_order AS depth \
                                                FROM behind WINDOW key_order AS (PARTITION BY head ORDER BY seq)) \
                  WHERE unbroken) \
     UPDATE runs SET status = 'leased', lease_owner = ?1, lease_until = ?2, next_attempt_at = ?2, \
     leases = leases + 1, updated_at = ?3 \
     WHERE seq IN (SELECT seq FROM chosen ORDER BY depth, head LIMIT ?4) \
     RETURNING ",
    run_columns!()
);

/// Gives back leased runs that were not started: ?1 is a JSON array of `[id, worker, token]`, ?2 now. They are
/// due at once (behind the open run that stopped their holder, so never a key's head), or held if one of their
/// connections is.
const RELEASE_RUNS: &str = concat!(
    "UPDATE runs SET status = CASE WHEN ",
    uses_held_connection!(),
    " THEN 'held' ELSE 'queued' END, next_attempt_at = ?2, lease_until = NULL, updated_at = ?2 \
     FROM json_each(?1) c \
     WHERE runs.id = c.value ->> 0 AND +runs.status = 'leased' AND runs.lease_owner = c.value ->> 1 \
       AND runs.leases = c.value ->> 2"
);

/// A run whose worker died while its connection is held becomes held rather than claimable. ?1 now.
const SWEEP_HELD_RUNS: &str = concat!(
    "UPDATE runs SET status = 'held', lease_until = NULL, updated_at = ?1 \
     WHERE status = 'leased' AND next_attempt_at <= ?1 AND ",
    uses_held_connection!()
);

/// Clears the head mark of each key in ?1 (a JSON array) that is no longer on the key's smallest open run: the
/// run closed, or an older run of the key reopened.
pub(super) const DEMOTE_STALE_HEADS: &str = concat!(
    "UPDATE runs SET head = 0 \
     WHERE head = 1 AND ordering_key IN (SELECT value FROM json_each(?1)) \
       AND seq IS NOT (SELECT MIN(o.seq) FROM runs o WHERE o.ordering_key = runs.ordering_key \
                                                  AND o.status IN ",
    open_statuses!(),
    ")"
);

/// Marks the smallest open run of each key in ?1 (a JSON array) as the key's head, where it is not yet.
pub(super) const PROMOTE_HEADS: &str = concat!(
    "UPDATE runs SET head = 1 \
     WHERE head = 0 AND seq IN (SELECT (SELECT MIN(o.seq) FROM runs o WHERE o.ordering_key = k.value \
                                                                 AND o.status IN ",
    open_statuses!(),
    ") FROM json_each(?1) k)"
);

/// The runs among ?1 (a JSON array of `[flow id, dedup key]`) that are already stored: flow id, dedup key, run id.
/// An enqueue reads them before it inserts: a run's id never changes, and a dedup key stored meanwhile by another
/// process fails the insert on the `UNIQUE (flow_id, dedup_key)` constraint rather than storing the run twice.
pub(super) const KNOWN_DEDUP_KEYS: &str = "SELECT j.value ->> 0, j.value ->> 1, r.id FROM json_each(?1) j \
     JOIN runs r ON r.flow_id = j.value ->> 0 AND r.dedup_key = j.value ->> 1";

/// Inserts runs, in order, from ?1, a JSON array of `[id, flow id, flow version, connections (JSON text), ordering
/// key, customer, dedup key, event (JSON text), first of its key in the batch]`; ?2 is now.
///
/// The statement itself reads what another process (`flowhost queue retry` or `drop`) may change: whether the
/// run's key already has a head (an open run), and whether one of its connections is held. A write statement
/// holds the write lock before it reads, and SQLite reads every row of an `INSERT ... SELECT` that reads its own
/// table before inserting any, so it needs no transaction around it: no `BEGIN` and `COMMIT` round trips, and no
/// statement journal, which SQLite keeps for a multi-row write inside a transaction. Its text is the same for any
/// number of runs, so it is prepared once: a `VALUES` list made one statement per batch size, each prepared
/// again once more sizes had pushed it out of sqlx's statement cache.
pub(super) const INSERT_RUNS: &str = "INSERT INTO runs (id, flow_id, flow_version, connections, ordering_key, \
     customer, dedup_key, event, status, next_attempt_at, created_at, updated_at, head) \
     SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3, j.value ->> 4, j.value ->> 5, j.value ->> 6, \
        j.value ->> 7, \
        CASE WHEN EXISTS (SELECT 1 FROM json_each(j.value ->> 3) c \
                          JOIN held_connections h ON h.connection = c.value) \
             THEN 'held' ELSE 'queued' END, \
        ?2, ?2, ?2, \
        (j.value ->> 8) AND NOT EXISTS (SELECT 1 FROM runs r INDEXED BY runs_head_by_key \
                                        WHERE r.ordering_key = j.value ->> 4 AND r.head = 1) \
     FROM json_each(?1) j ORDER BY j.key";

/// Re-marks the heads of `keys`: each key's head is its smallest open `seq`, or none (migration 0003). A
/// statement that reopens runs is followed by this, for the runs' keys. A statement that closes runs clears
/// their own marks instead, and the trigger of migration 0004 marks each key's next run. Each statement costs an
/// index probe per key and writes only rows that change.
async fn rehead(conn: &mut SqliteConnection, keys: &[&str], operation: &'static str) -> Result<(), StoreError> {
    let keys = Value::from(keys).to_string();
    for sql in [DEMOTE_STALE_HEADS, PROMOTE_HEADS] {
        sqlx::query(sql).bind(keys.as_str()).execute(&mut *conn).await.map_err(db(operation))?;
    }
    Ok(())
}

/// A run as read: its summary's columns and the rest.
#[derive(FromRow)]
pub(super) struct RunRow {
    #[sqlx(flatten)]
    summary: SummaryRow,
    dedup_key: Option<String>,
    event: String,
    leases: i64,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    checkpoint: Option<String>,
    trace: Option<Vec<u8>>,
    pub(super) trace_block: Option<i64>,
    trace_slot: Option<i64>,
}

impl RunRow {
    /// The run as stored, its trace taken from its row or from `blocks` (which [`read_trace_blocks`] loaded).
    fn into_run(self, blocks: &TraceBlocks) -> Result<StoredRun, StoreError> {
        let summary = RunSummary::try_from(self.summary)?;
        let d = Decoder { what: "run", id: &summary.id };
        let trace = match (self.trace_block, self.trace_slot) {
            (Some(block), Some(slot)) => Some(d.trace_in_block(blocks, block, slot)?),
            _ => self.trace.as_deref().map(|stored| d.trace(stored)).transpose()?,
        };
        let details = RunDetails {
            event: d.json("event", &self.event)?,
            leases: d.count("leases", self.leases)?,
            checkpoint: d.opt_json("checkpoint", self.checkpoint.as_deref())?,
            trace,
            dedup_key: self.dedup_key,
            lease_owner: self.lease_owner,
            lease_until: self.lease_until,
        };
        Ok(summary.with_details(details))
    }
}

/// A run about to be inserted, as a row of [`INSERT_RUNS`]: id, flow id, flow version, connections (each once, as
/// JSON text), ordering key, customer, dedup key, event (JSON text), and whether no earlier run of the batch has its
/// key (it is then the key's head if the key has no open run).
type FreshRow<'a> = (String, &'a str, &'a str, String, &'a str, Option<&'a str>, Option<&'a str>, String, bool);

/// Inserts runs and returns their ids, in order (the existing id for a run whose dedup key its flow already has, in
/// the store or earlier in `runs`). Runs go in with one `INSERT` ([`INSERT_RUNS`]), atomic by itself, in order, so
/// their `seq` follows their order in `runs`, after one lookup of the batch's dedup keys ([`KNOWN_DEDUP_KEYS`]).
pub(super) async fn insert_runs(
    conn: &mut SqliteConnection,
    runs: &[NewRun],
    now: i64,
) -> Result<Vec<Enqueued>, StoreError> {
    const OP: &str = "enqueuing runs";
    let dedup_keys: Vec<Value> = runs
        .iter()
        .filter_map(|run| Some(Value::from(vec![run.flow_id.as_str(), run.dedup_key.as_deref()?])))
        .collect();
    let mut keyed: HashMap<(String, String), String> = HashMap::new();
    if !dedup_keys.is_empty() {
        let found: Vec<(String, String, String)> = sqlx::query_as(KNOWN_DEDUP_KEYS)
            .bind(Value::from(dedup_keys).to_string())
            .fetch_all(&mut *conn)
            .await
            .map_err(db(OP))?;
        keyed.extend(found.into_iter().map(|(flow_id, dedup_key, id)| ((flow_id, dedup_key), id)));
    }
    let mut ids = Vec::with_capacity(runs.len());
    let mut fresh: Vec<FreshRow> = Vec::with_capacity(runs.len());
    let mut keys_seen = HashSet::new();
    for run in runs {
        let dedup = run.dedup_key.as_ref().map(|key| (run.flow_id.clone(), key.clone()));
        if let Some(id) = dedup.as_ref().and_then(|dedup| keyed.get(dedup)) {
            ids.push(Enqueued { id: id.clone(), new: false });
            continue;
        }
        let mut seen = HashSet::new();
        let connections: Vec<&str> =
            run.connections.iter().map(String::as_str).filter(|name| seen.insert(*name)).collect();
        let first_of_key = keys_seen.insert(run.ordering_key.as_str());
        // Time-ordered (v7), so new ids land at the end of the id index instead of on a random page.
        let id = uuid::Uuid::now_v7().to_string();
        if let Some(dedup) = dedup {
            keyed.insert(dedup, id.clone());
        }
        ids.push(Enqueued { id: id.clone(), new: true });
        fresh.push((
            id,
            run.flow_id.as_str(),
            run.flow_version.as_str(),
            Value::from(connections).to_string(),
            run.ordering_key.as_str(),
            run.customer.as_deref(),
            run.dedup_key.as_deref(),
            run.event.to_string(),
            first_of_key,
        ));
    }
    if !fresh.is_empty() {
        let rows = serde_json::to_string(&fresh).map_err(|e| StoreError::invalid("runs", e.to_string()))?;
        sqlx::query(INSERT_RUNS).bind(rows).bind(now).execute(&mut *conn).await.map_err(db(OP))?;
    }
    Ok(ids)
}

impl SqliteStore {
    /// Runs as read, with the traces they point into from the trace blocks.
    async fn stored_runs(&self, rows: Vec<RunRow>) -> Result<Vec<StoredRun>, StoreError> {
        let mut reader = self.reader.acquire().await.map_err(db("reading trace blocks"))?;
        stored_runs_in(&mut reader, rows).await
    }
}

/// Runs with their traces, read on `reader`: in the read transaction that read the rows, so that a purge
/// cannot delete a trace block between the two reads.
async fn stored_runs_in(reader: &mut SqliteConnection, rows: Vec<RunRow>) -> Result<Vec<StoredRun>, StoreError> {
    let blocks = read_trace_blocks(reader, rows.iter().filter_map(|row| row.trace_block)).await?;
    rows.into_iter().map(|row| row.into_run(&blocks)).collect()
}

pub(super) async fn enqueue(store: &SqliteStore, runs: &[NewRun]) -> Result<Vec<Enqueued>, StoreError> {
    validate_runs(runs)?;
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    const OP: &str = "enqueuing runs";
    // The flows' new connections, if any, commit first (a pair without its runs is harmless); then one `INSERT`,
    // atomic by itself and reading what it depends on ([`INSERT_RUNS`]): no transaction.
    let pairs = store.flow_connections.unknown(runs);
    let mut conn = store.write_connection(OP).await?;
    store_flow_connections(&mut conn, &pairs).await?;
    let ids = insert_runs(&mut conn, runs, now_ms()).await?;
    store.flow_connections.learn(pairs);
    store.sync_after(conn, OP).await?;
    Ok(ids)
}

pub(super) async fn claim(
    store: &SqliteStore,
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
    const OP: &str = "claiming runs";
    // Two statements, each atomic on its own (a write statement takes the write lock before it reads), and
    // no transaction around them: every statement is a round trip to SQLite's thread, and under load the
    // round trips cost more than the SQL. A lease expiring in between is swept at the next claim.
    let mut conn = store.write_connection(OP).await?;
    sqlx::query(SWEEP_HELD_RUNS).bind(now_ms).execute(&mut *conn).await.map_err(db(OP))?;
    let rows: Vec<RunRow> = sqlx::query_as(CLAIM_RUNS)
        .bind(worker)
        .bind(add_ms(now_ms, lease))
        .bind(now_ms)
        .bind(clamp_claim(limit))
        .bind(clamp_claim(per_key.max(1)))
        .fetch_all(&mut *conn)
        .await
        .map_err(db(OP))?;
    // The claimed runs' accepts may still be syncing: work starts once they are durable.
    store.sync_seen(conn, OP).await?;
    let mut runs = store.stored_runs(rows).await?;
    runs.sort_by_key(|run| run.seq);
    Ok(runs)
}

pub(super) async fn release(store: &SqliteStore, leases: &[Lease]) -> Result<(), StoreError> {
    if leases.is_empty() {
        return Ok(());
    }
    const OP: &str = "releasing runs";
    let rows: Vec<Value> =
        leases.iter().map(|lease| json!([lease.id.as_str(), lease.worker.as_str(), lease.token])).collect();
    let mut conn = store.write_connection(OP).await?;
    sqlx::query(RELEASE_RUNS)
        .bind(Value::from(rows).to_string())
        .bind(now_ms())
        .execute(&mut *conn)
        .await
        .map_err(db(OP))?;
    Ok(())
}

pub(super) async fn get(store: &SqliteStore, id: &str) -> Result<Option<StoredRun>, StoreError> {
    const OP: &str = "reading a run";
    let mut tx = store.reader.begin().await.map_err(db(OP))?;
    let row: Option<RunRow> = sqlx::query_as(concat!("SELECT ", run_columns!(), " FROM runs WHERE id = ?1"))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db(OP))?;
    let run = stored_runs_in(&mut tx, Vec::from_iter(row)).await?.pop();
    tx.commit().await.map_err(db(OP))?;
    Ok(run)
}

/// Appends the conditions of `filter` but its `before_seq` and `limit` (` AND ...` each) to a query on `runs`.
pub(super) fn push_filter(query: &mut QueryBuilder<Sqlite>, filter: &RunFilter) {
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
        // As [`uses_connection`], with the name bound twice.
        query.push(" AND runs.flow_id IN (SELECT fc.flow_id FROM flow_connections fc WHERE fc.connection = ");
        query.push_bind(connection.clone());
        query.push(") AND EXISTS (SELECT 1 FROM json_each(runs.connections) c WHERE c.value = ");
        query.push_bind(connection.clone()).push(")");
    }
    if !filter.statuses.is_empty() {
        query.push(" AND status IN (");
        let mut states = query.separated(", ");
        for state in &filter.statuses {
            states.push_bind(state.as_str());
        }
        query.push(")");
    }
    if let Some(from) = filter.created_from {
        query.push(" AND created_at >= ").push_bind(from);
    }
    if let Some(until) = filter.created_until {
        query.push(" AND created_at < ").push_bind(until);
    }
}

/// A query for the runs `filter` selects, newest first: `SELECT <columns> FROM runs WHERE ...`.
///
/// Runs asked for by state (the queue, failures) but not by customer or ordering key (whose own indexes find few
/// runs) are found by their states in `runs_due`, and only their `seq`s are sorted before the page's rows are read.
/// Without statistics, SQLite would otherwise read every run in those states whole to sort them (the resend queue
/// behind a few dead runs may hold thousands), or read a flow's whole history by `runs_by_flow` to find its few open
/// runs. Not for `succeeded`, most of the history, where reading newest first and stopping after a page is best.
pub(super) fn listing(columns: &str, filter: &RunFilter) -> QueryBuilder<Sqlite> {
    let by_state = !filter.statuses.is_empty()
        && !filter.statuses.contains(&RunState::Succeeded)
        && filter.customer.is_none()
        && filter.ordering_key.is_none();
    let mut query = QueryBuilder::<Sqlite>::new(format!("SELECT {columns} FROM runs WHERE "));
    if by_state {
        query.push("seq IN (SELECT seq FROM runs INDEXED BY runs_due WHERE 1 = 1");
    } else {
        query.push("1 = 1");
    }
    push_filter(&mut query, filter);
    if let Some(before) = filter.before_seq {
        query.push(" AND seq < ").push_bind(before);
    }
    query.push(" ORDER BY seq DESC LIMIT ").push_bind(clamp_limit(filter.limit));
    if by_state {
        query.push(") ORDER BY seq DESC");
    }
    query
}

pub(super) async fn list(store: &SqliteStore, filter: &RunFilter) -> Result<Vec<StoredRun>, StoreError> {
    let mut query = listing(run_columns!(), filter);
    const OP: &str = "listing runs";
    let mut tx = store.reader.begin().await.map_err(db(OP))?;
    let rows: Vec<RunRow> = query.build_query_as().fetch_all(&mut *tx).await.map_err(db(OP))?;
    let runs = stored_runs_in(&mut tx, rows).await?;
    tx.commit().await.map_err(db(OP))?;
    Ok(runs)
}

/// The columns of a run's summary, as [`SummaryRow`] reads them.
pub(super) const SUMMARY_COLUMNS: &str = "id, seq, flow_id, flow_version, connections, ordering_key, customer, status, attempts, \
     next_attempt_at, last_error, created_at, updated_at";

#[derive(FromRow)]
struct SummaryRow {
    id: String,
    seq: i64,
    flow_id: String,
    flow_version: String,
    connections: String,
    ordering_key: String,
    customer: Option<String>,
    status: String,
    attempts: i64,
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
            connections: d.strings("connections", &row.connections)?,
            status: d.state(&row.status)?,
            attempts: d.count("attempts", row.attempts)?,
            last_error: d.opt_json("last_error", row.last_error.as_deref())?,
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

pub(super) async fn list_summaries(store: &SqliteStore, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
    const OP: &str = "listing runs";
    let rows: Vec<SummaryRow> =
        listing(SUMMARY_COLUMNS, filter).build_query_as().fetch_all(&store.reader).await.map_err(db(OP))?;
    convert(rows)
}

pub(super) async fn retry_now(store: &SqliteStore, id: &str) -> Result<bool, StoreError> {
    const OP: &str = "retrying a run";
    let mut writer = store.writer(OP).await?;
    let mut tx = writer.begin(OP).await?;
    // A failed run reopens, and may be older than its key's head.
    let key: Option<String> = sqlx::query_scalar(concat!(
        "UPDATE runs SET status = CASE WHEN ",
        uses_held_connection!(),
        " THEN 'held' ELSE 'queued' END, \
         attempts = CASE WHEN status IN ('dead', 'failed') THEN 0 ELSE attempts END, \
         next_attempt_at = ?2, lease_until = NULL, updated_at = ?2 \
         WHERE id = ?1 AND status IN ('dead', 'queued', 'held', 'failed') RETURNING ordering_key"
    ))
    .bind(id)
    .bind(now_ms())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db(OP))?;
    let Some(key) = key else { return Ok(false) };
    rehead(&mut tx, &[key.as_str()], OP).await?;
    tx.commit().await.map_err(db(OP))?;
    store.sync_after(writer, OP).await?;
    Ok(true)
}

pub(super) async fn drop_run(store: &SqliteStore, id: &str) -> Result<bool, StoreError> {
    const OP: &str = "dropping a run";
    let mut conn = store.write_connection(OP).await?;
    // Dropping clears the run's own head mark, and the trigger of migration 0004 marks its key's next run. As for a
    // completion, `next_attempt_at` becomes the time it closed, for retention.
    let done = sqlx::query(concat!(
        "UPDATE runs SET status = 'dropped', head = 0, lease_until = NULL, next_attempt_at = ?2, updated_at = ?2 \
             WHERE id = ?1 AND status IN ",
        open_statuses!()
    ))
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
