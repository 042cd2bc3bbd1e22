//! A lease holder's calls on its runs: save a checkpoint, extend the lease, complete (one run, or a batch in one
//! statement), reschedule a resend, dead-letter. Every one is fenced by the [`Lease`] from the claim (`id`, `status =
//! 'leased'`, `lease_owner`, `leases`): once the run was claimed again, by this process or another, retried or
//! dropped, the old holder's call fails with [`StoreError::LeaseLost`] and changes nothing.

use super::{HOLDS_SHARED, PostgresStore, db, non_empty, token};
use crate::store::sqlite::decode::Decoder;
use crate::store::sqlite::traces::{compress, pack_trace};
use crate::store::{Completion, Lease, NewOutboxEvent, RunCompletion, RunState, StoreError, now_ms};
use serde_json::Value;
use serde_json::value::to_raw_value;
use sqlx::PgExecutor;
use std::collections::HashSet;

/// Which table a lease belongs to.
#[derive(Clone, Copy)]
pub(super) enum Leased {
    Run,
    Inbound,
}

/// The error for a fenced update that matched nothing: the lease is lost, or the id never existed.
pub(super) async fn lease_lost<'c>(executor: impl PgExecutor<'c>, table: Leased, lease: &Lease) -> StoreError {
    let (sql, what) = match table {
        Leased::Run => ("SELECT status, lease_owner, leases FROM runs WHERE id = $1", "run"),
        Leased::Inbound => ("SELECT status, lease_owner, leases FROM inbound WHERE id = $1", "inbound message"),
    };
    let found: Result<Option<(String, Option<String>, i32)>, _> =
        sqlx::query_as(sql).bind(lease.id.as_str()).fetch_optional(executor).await;
    match found {
        Err(source) => StoreError::Database { operation: "checking a lease", source },
        Ok(None) => StoreError::NotFound { what, id: lease.id.clone() },
        Ok(Some((status, owner, leases))) => {
            let now = match (status.as_str(), owner) {
                ("leased", Some(owner)) => format!("leased again, by `{owner}` (claim {leases})"),
                (status, _) => status.to_string(),
            };
            StoreError::LeaseLost { what, id: lease.id.clone(), worker: lease.worker.clone(), now }
        }
    }
}

/// Completes a batch of runs in one statement: their trace block (when a trace is kept), the fenced update (rows
/// locked in `id` order first), and the outbox rows of the runs it closed, in the batch's order. $1..$6 are the runs'
/// ids, workers, tokens, new statuses, trace slots and errors; $7 the trace block or null; $8..$11 the outbox rows'
/// entries (the position, from 1, of their completion in $1..$6), node ids, events and payloads; $12 now. Wakes the
/// closed runs' keys (their next runs may be due). Returns the leases it closed. Each run is looked up by its id, in
/// `id` order, so the plan reads only them whatever the table's statistics say (see migration 0003).
const COMPLETE_RUNS: &str = concat!(
    "WITH block AS (\
        INSERT INTO trace_blocks (traces) SELECT $7::bytea WHERE $7::bytea IS NOT NULL RETURNING id), \
     c AS (SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[], $5::int4[], $6::text[]) \
           WITH ORDINALITY AS c (id, worker, token, status, slot, error, entry)), \
     locked AS (SELECT r.seq, c.entry, c.status, c.slot, c.error FROM (SELECT * FROM c ORDER BY c.id) c \
                CROSS JOIN LATERAL (SELECT x.seq FROM runs x WHERE x.id = c.id AND x.status = 'leased' \
                                      AND x.lease_owner = c.worker AND x.leases = c.token FOR UPDATE) r), \
     done AS (UPDATE runs SET status = l.status, trace = NULL, \
                  trace_block = CASE WHEN l.slot IS NULL THEN NULL ELSE (SELECT id FROM block) END, \
                  trace_slot = l.slot, last_error = COALESCE(l.error, runs.last_error), lease_until = NULL, \
                  updated_at = $12 \
              FROM locked l WHERE runs.seq = l.seq \
              RETURNING runs.id, runs.flow_id, runs.ordering_key, NULL::int8 AS wake_at, runs.lease_owner, runs.leases, \
                        l.entry), ",
    wake_keys_of_done!(),
    ", emitted AS (INSERT INTO outbox (run_id, flow_id, node_id, event, payload, created_at) \
              SELECT d.id, d.flow_id, o.node_id, o.event, o.payload, $12 \
                FROM unnest($8::int8[], $9::text[], $10::text[], $11::text[]) WITH ORDINALITY \
                     AS o (entry, node_id, event, payload, ord) \
                JOIN done d ON d.entry = o.entry ORDER BY o.ord) \
     SELECT id, lease_owner, leases FROM done"
);

pub(super) async fn checkpoint(
    store: &PostgresStore,
    lease: &Lease,
    checkpoint: &Value,
    lease_until_ms: i64,
) -> Result<(), StoreError> {
    renew(store, lease, Some(checkpoint), lease_until_ms, "saving a checkpoint").await
}

pub(super) async fn extend_lease(store: &PostgresStore, lease: &Lease, lease_until_ms: i64) -> Result<(), StoreError> {
    renew(store, lease, None, lease_until_ms, "extending a lease").await
}

/// Moves the lease's end to `lease_until_ms`, saving the checkpoint when there is one.
async fn renew(
    store: &PostgresStore,
    lease: &Lease,
    checkpoint: Option<&Value>,
    lease_until_ms: i64,
    operation: &'static str,
) -> Result<(), StoreError> {
    let renewed: i64 = sqlx::query_scalar(concat!(
        "WITH done AS (UPDATE runs SET checkpoint = COALESCE($4, checkpoint), lease_until = $5, next_attempt_at = $5, \
         updated_at = $6",
        fenced!(),
        " RETURNING ordering_key, next_attempt_at), ",
        wake_key_if_lease_shortened!(),
        " SELECT count(*) FROM done"
    ))
    .bind(lease.id.as_str())
    .bind(lease.worker.as_str())
    .bind(token(lease))
    .bind(checkpoint.map(Value::to_string))
    .bind(lease_until_ms)
    .bind(now_ms())
    .fetch_one(&store.bookkeeping)
    .await
    .map_err(db(operation))?;
    if renewed == 0 {
        return Err(lease_lost(&store.bookkeeping, Leased::Run, lease).await);
    }
    Ok(())
}

pub(super) async fn complete(
    store: &PostgresStore,
    lease: &Lease,
    completion: &Completion,
    trace: &Value,
    emitted: &[NewOutboxEvent],
) -> Result<(), StoreError> {
    let trace = match trace {
        Value::Null => None,
        trace => Some(to_raw_value(trace).map_err(|e| StoreError::invalid("trace", e.to_string()))?),
    };
    let completion =
        RunCompletion { lease: lease.clone(), completion: completion.clone(), trace, emitted: emitted.to_vec() };
    let mut results = complete_many(store, std::slice::from_ref(&completion)).await?;
    results.pop().unwrap_or_else(|| Err(StoreError::invalid("completion", "no result for the completion")))
}

pub(super) async fn complete_many(
    store: &PostgresStore,
    completions: &[RunCompletion],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    const OP: &str = "completing runs";
    let now = now_ms();
    let mut results: Vec<Result<(), StoreError>> = completions
        .iter()
        .map(|item| {
            item.emitted.iter().enumerate().try_for_each(|(i, event)| {
                non_empty(&format!("emitted[{i}].event"), &event.event)?;
                non_empty(&format!("emitted[{i}].nodeId"), &event.node_id)
            })
        })
        .collect();
    // A lease twice in the batch goes in once (its first completion); the repeat finds its lease gone.
    let mut seen = HashSet::new();
    let batch: Vec<usize> = (0..completions.len())
        .filter(|&i| results[i].is_ok())
        .filter(|&i| {
            let lease = &completions[i].lease;
            seen.insert((lease.id.as_str(), lease.worker.as_str(), lease.token))
        })
        .collect();
    if batch.is_empty() {
        return Ok(results);
    }
    let mut traces = String::from("[");
    let mut slots = 0;
    let (mut ids, mut workers, mut tokens, mut statuses, mut slot_of, mut errors) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut out_entries, mut out_nodes, mut out_events, mut out_payloads) =
        (Vec::<i64>::new(), Vec::new(), Vec::new(), Vec::new());
    for &i in &batch {
        let item = &completions[i];
        let (status, error) = match &item.completion {
            Completion::Succeeded => (RunState::Succeeded, None),
            Completion::Failed { error } => (RunState::Failed, Some(error.to_string())),
        };
        let slot = item.trace.as_deref().map(|trace| {
            if slots > 0 {
                traces.push(',');
            }
            traces.push_str(trace.get());
            slots += 1;
            slots - 1
        });
        ids.push(item.lease.id.as_str());
        workers.push(item.lease.worker.as_str());
        tokens.push(token(&item.lease));
        statuses.push(status.as_str());
        slot_of.push(slot);
        errors.push(error);
        for event in &item.emitted {
            out_entries.push(ids.len() as i64);
            out_nodes.push(event.node_id.as_str());
            out_events.push(event.event.as_str());
            out_payloads.push(event.payload.to_string());
        }
    }
    traces.push(']');
    let block = (slots > 0).then(|| compress(traces.into_bytes()));
    let closed: Vec<(String, Option<String>, i32)> = sqlx::query_as(COMPLETE_RUNS)
        .bind(&ids)
        .bind(&workers)
        .bind(&tokens)
        .bind(&statuses)
        .bind(&slot_of)
        .bind(&errors)
        .bind(block)
        .bind(&out_entries)
        .bind(&out_nodes)
        .bind(&out_events)
        .bind(&out_payloads)
        .bind(now)
        .fetch_all(&store.bookkeeping)
        .await
        .map_err(db(OP))?;
    let mut closed: HashSet<(String, String, i32)> =
        closed.into_iter().map(|(id, owner, leases)| (id, owner.unwrap_or_default(), leases)).collect();
    for &i in &batch {
        let lease = &completions[i].lease;
        if !closed.remove(&(lease.id.clone(), lease.worker.clone(), token(lease))) {
            results[i] = Err(lease_lost(&store.bookkeeping, Leased::Run, lease).await);
        }
    }
    // Repeats of a lease in the batch: the first took it.
    for (i, item) in completions.iter().enumerate() {
        if results[i].is_ok() && !batch.contains(&i) {
            results[i] = Err(lease_lost(&store.bookkeeping, Leased::Run, &item.lease).await);
        }
    }
    Ok(results)
}

pub(super) async fn reschedule(
    store: &PostgresStore,
    lease: &Lease,
    at_ms: i64,
    error: &Value,
    checkpoint: Option<&Value>,
) -> Result<RunState, StoreError> {
    const OP: &str = "rescheduling a run";
    let mut tx = store.bookkeeping.begin().await.map_err(db(OP))?;
    sqlx::query(HOLDS_SHARED).execute(&mut *tx).await.map_err(db(OP))?;
    let status: Option<String> = sqlx::query_scalar(concat!(
        "WITH done AS (UPDATE runs SET status = CASE WHEN ",
        uses_held_connection!(),
        " THEN 'held' ELSE 'queued' END, \
         attempts = attempts + 1, next_attempt_at = $4, lease_until = NULL, last_error = $5, \
         checkpoint = COALESCE($6, checkpoint), updated_at = $7",
        fenced!(),
        " RETURNING status, ordering_key, CASE WHEN next_attempt_at > $7 THEN next_attempt_at END AS wake_at), ",
        wake_keys_of_done!(),
        " SELECT status FROM done"
    ))
    .bind(lease.id.as_str())
    .bind(lease.worker.as_str())
    .bind(token(lease))
    .bind(at_ms)
    .bind(error.to_string())
    .bind(checkpoint.map(Value::to_string))
    .bind(now_ms())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db(OP))?;
    match status {
        Some(status) => {
            tx.commit().await.map_err(db(OP))?;
            Decoder { what: "run", id: &lease.id }.state(&status)
        }
        None => {
            let error = lease_lost(&mut *tx, Leased::Run, lease).await;
            // Ended now rather than when the connection is next used: it holds the held-connections lock.
            tx.rollback().await.map_err(db(OP))?;
            Err(error)
        }
    }
}

pub(super) async fn dead_letter(
    store: &PostgresStore,
    lease: &Lease,
    error: &Value,
    trace: &Value,
) -> Result<(), StoreError> {
    let done = sqlx::query(concat!(
        "UPDATE runs SET status = 'dead', attempts = attempts + 1, last_error = $4, trace = $5, trace_block = NULL, \
         trace_slot = NULL, lease_until = NULL, updated_at = $6",
        fenced!()
    ))
    .bind(lease.id.as_str())
    .bind(lease.worker.as_str())
    .bind(token(lease))
    .bind(error.to_string())
    .bind(pack_trace(trace))
    .bind(now_ms())
    .execute(&store.bookkeeping)
    .await
    .map_err(db("dead-lettering a run"))?;
    if done.rows_affected() == 0 {
        return Err(lease_lost(&store.bookkeeping, Leased::Run, lease).await);
    }
    Ok(())
}
