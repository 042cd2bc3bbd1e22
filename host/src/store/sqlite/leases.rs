//! A lease holder's calls on its runs: save a checkpoint, extend the lease, complete (one run, or a batch in one
//! write), reschedule a resend, dead-letter. Every one is fenced by the [`Lease`] from the claim: once the run was
//! claimed again, retried or dropped, the old holder's call fails with [`StoreError::LeaseLost`] and changes
//! nothing.

use super::decode::Decoder;
use super::outbox::insert_outbox;
use super::traces::{compress, insert_trace_block, pack_trace};
use super::{SqliteStore, db, non_empty};
use crate::store::{Completion, Lease, NewOutboxEvent, RunCompletion, RunState, StoreError, now_ms};
use serde_json::value::{RawValue, to_raw_value};
use serde_json::{Value, json};
use sqlx::SqliteConnection;
use std::collections::HashSet;

/// Which table a lease belongs to.
#[derive(Clone, Copy)]
pub(super) enum Leased {
    Run,
    Inbound,
}

impl Leased {
    fn what(self) -> &'static str {
        match self {
            Leased::Run => "run",
            Leased::Inbound => "inbound message",
        }
    }
}

/// The error for a fenced update that matched nothing: the lease is lost, or the id never existed.
pub(super) async fn lease_lost(conn: &mut SqliteConnection, table: Leased, lease: &Lease) -> StoreError {
    let sql = match table {
        Leased::Run => "SELECT status, lease_owner, leases FROM runs WHERE id = ?1",
        Leased::Inbound => "SELECT status, lease_owner, leases FROM inbound WHERE id = ?1",
    };
    let found: Result<Option<(String, Option<String>, i64)>, _> =
        sqlx::query_as(sql).bind(lease.id.as_str()).fetch_optional(&mut *conn).await;
    let what = table.what();
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

/// The fenced updates of a batch of completions, in one statement. ?1 is a JSON array of `[id, worker, token,
/// status, trace slot or null, error or null]`, ?2 now, ?3 the batch's trace block or null (a run's trace is
/// its slot of the block). Completing closes a run, so its head mark is cleared here, and the trigger of
/// migration 0004 marks its key's next run. `next_attempt_at` of a finished run is when it finished, which
/// retention reads from `runs_due` (the status in that index changes anyway, so this costs no extra write). The
/// unary `+` keeps the planner from reading every leased run
/// through `runs_due` and scanning the batch for each: the batch is walked and each run found by id.
pub(super) const COMPLETE_RUNS: &str = "UPDATE runs SET status = c.value ->> 3, head = 0, trace = NULL, \
     trace_block = iif(c.value ->> 4 IS NULL, NULL, ?3), trace_slot = c.value ->> 4, \
     last_error = COALESCE(c.value ->> 5, last_error), lease_until = NULL, next_attempt_at = ?2, updated_at = ?2 \
     FROM json_each(?1) c \
     WHERE runs.id = c.value ->> 0 AND +runs.status = 'leased' AND runs.lease_owner = c.value ->> 1 \
       AND runs.leases = c.value ->> 2 \
     RETURNING runs.id, runs.lease_owner, runs.leases";

/// A run to complete: its lease, how it ended, and its trace (JSON text), if kept.
type Closing<'a> = (&'a Lease, &'a Completion, Option<&'a RawValue>);

/// A lease as [`COMPLETE_RUNS`] returns it: id, worker, token.
type Fence = (String, String, i64);

fn fence(lease: &Lease) -> Fence {
    (lease.id.clone(), lease.worker.clone(), i64::from(lease.token))
}

/// A batch of completions as [`COMPLETE_RUNS`] takes it: ?1, and the batch's trace block, if any trace is kept.
/// Built (the traces compressed) before the write connection is taken.
struct ClosingBatch {
    rows: String,
    traces: Option<Vec<u8>>,
}

/// The traces of a batch go into one trace block: one zstd frame of a JSON array, each run pointing at its slot.
/// Traces of a flow's runs are alike (the same nodes, keys, connector logs), so together they compress far
/// better than one by one, and the writer appends one row instead of rewriting each run's row with its trace
/// (BENCHMARKS.md, "Tenth round"). A `null` trace (not kept) gets no slot.
fn closing_batch(runs: &[Closing<'_>]) -> ClosingBatch {
    // A join that matches a row twice updates it with either match, so a repeated lease goes in once; the
    // repeat then finds its lease gone, as it would one statement later.
    let mut seen = HashSet::new();
    let mut traces = String::from("[");
    let mut slots = 0;
    let rows: Vec<Value> = runs
        .iter()
        .filter(|(lease, ..)| seen.insert(fence(lease)))
        .map(|(lease, completion, trace)| {
            let (status, error) = match completion {
                Completion::Succeeded => (RunState::Succeeded, None),
                Completion::Failed { error } => (RunState::Failed, Some(error.to_string())),
            };
            let slot = trace.map(|trace| {
                if slots > 0 {
                    traces.push(',');
                }
                traces.push_str(trace.get());
                slots += 1;
                slots - 1
            });
            json!([lease.id.as_str(), lease.worker.as_str(), lease.token, status.as_str(), slot, error])
        })
        .collect();
    traces.push(']');
    ClosingBatch { rows: Value::from(rows).to_string(), traces: (slots > 0).then(|| compress(traces.into_bytes())) }
}

/// Stores the batch's trace block, if it has one, and completes its runs with one fenced update
/// ([`COMPLETE_RUNS`], `batch` from [`closing_batch`]): for each, whether it was still held (false when its lease
/// is lost, including the second of two completions of the same lease). Each is a statement of its own: outside
/// a transaction, a crash between the two leaves a block nothing points to, which costs only its bytes.
async fn complete_runs(
    conn: &mut SqliteConnection,
    runs: &[Closing<'_>],
    batch: &ClosingBatch,
    now: i64,
) -> Result<Vec<bool>, StoreError> {
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let trace_block = match &batch.traces {
        Some(traces) => Some(insert_trace_block(conn, traces).await?),
        None => None,
    };
    let mut closed: HashSet<Fence> = sqlx::query_as(COMPLETE_RUNS)
        .bind(batch.rows.as_str())
        .bind(now)
        .bind(trace_block)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("completing runs"))?
        .into_iter()
        .collect();
    Ok(runs.iter().map(|(lease, ..)| closed.remove(&fence(lease))).collect())
}

pub(super) async fn checkpoint(
    store: &SqliteStore,
    lease: &Lease,
    checkpoint: &Value,
    lease_until_ms: i64,
) -> Result<(), StoreError> {
    const OP: &str = "saving a checkpoint";
    let mut conn = store.write_connection(OP).await?;
    let done = sqlx::query(concat!(
        "UPDATE runs SET checkpoint = ?4, lease_until = ?5, next_attempt_at = ?5, updated_at = ?6",
        fenced!()
    ))
    .bind(lease.id.as_str())
    .bind(lease.worker.as_str())
    .bind(i64::from(lease.token))
    .bind(checkpoint.to_string())
    .bind(lease_until_ms)
    .bind(now_ms())
    .execute(&mut *conn)
    .await
    .map_err(db(OP))?;
    if done.rows_affected() == 0 {
        return Err(lease_lost(&mut conn, Leased::Run, lease).await);
    }
    Ok(())
}

pub(super) async fn extend_lease(store: &SqliteStore, lease: &Lease, lease_until_ms: i64) -> Result<(), StoreError> {
    const OP: &str = "extending a lease";
    let mut conn = store.write_connection(OP).await?;
    let done =
        sqlx::query(concat!("UPDATE runs SET lease_until = ?4, next_attempt_at = ?4, updated_at = ?5", fenced!()))
            .bind(lease.id.as_str())
            .bind(lease.worker.as_str())
            .bind(i64::from(lease.token))
            .bind(lease_until_ms)
            .bind(now_ms())
            .execute(&mut *conn)
            .await
            .map_err(db(OP))?;
    if done.rows_affected() == 0 {
        return Err(lease_lost(&mut conn, Leased::Run, lease).await);
    }
    Ok(())
}

pub(super) async fn complete(
    store: &SqliteStore,
    lease: &Lease,
    completion: &Completion,
    trace: &Value,
    emitted: &[NewOutboxEvent],
) -> Result<(), StoreError> {
    // One completion is a batch of one: the same checks, fenced update, outbox rows and next head.
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
    store: &SqliteStore,
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
    let valid: Vec<(usize, &RunCompletion)> =
        completions.iter().enumerate().filter(|(i, _)| results[*i].is_ok()).collect();
    if valid.is_empty() {
        return Ok(results);
    }
    let closing: Vec<Closing> =
        valid.iter().map(|(_, item)| (&item.lease, &item.completion, item.trace.as_deref())).collect();
    let batch = closing_batch(&closing);
    let closed = if valid.iter().all(|(_, item)| item.emitted.is_empty()) {
        // No outbox rows: the trace block and the fenced update (with the trigger marking the keys' next heads)
        // are a statement each, each atomic by itself, with no `BEGIN` and `COMMIT` round trips.
        let mut conn = store.write_connection(OP).await?;
        complete_runs(&mut conn, &closing, &batch, now).await?
    } else {
        let mut writer = store.writer(OP).await?;
        let mut tx = writer.begin(OP).await?;
        // The fenced update first: only a run still held gets its outbox rows.
        let closed = complete_runs(&mut tx, &closing, &batch, now).await?;
        for ((_, item), closed) in valid.iter().zip(&closed) {
            if *closed {
                insert_outbox(&mut tx, &item.lease, &item.emitted, now).await?;
            }
        }
        tx.commit().await.map_err(db(OP))?;
        closed
    };
    if closed.contains(&false) {
        // Only to name what became of each lost lease; the completions are already committed.
        let mut conn = store.reader.acquire().await.map_err(db("checking a lease"))?;
        for ((i, item), closed) in valid.iter().zip(closed) {
            if !closed {
                results[*i] = Err(lease_lost(&mut conn, Leased::Run, &item.lease).await);
            }
        }
    }
    Ok(results)
}

pub(super) async fn reschedule(
    store: &SqliteStore,
    lease: &Lease,
    at_ms: i64,
    error: &Value,
    checkpoint: Option<&Value>,
) -> Result<RunState, StoreError> {
    const OP: &str = "rescheduling a run";
    let mut conn = store.write_connection(OP).await?;
    let status: Option<String> = sqlx::query_scalar(concat!(
        "UPDATE runs SET status = CASE WHEN ",
        uses_held_connection!(),
        " THEN 'held' ELSE 'queued' END, attempts = attempts + 1, next_attempt_at = ?4, lease_until = NULL, \
         last_error = ?5, checkpoint = COALESCE(?6, checkpoint), updated_at = ?7",
        fenced!(),
        " RETURNING status"
    ))
    .bind(lease.id.as_str())
    .bind(lease.worker.as_str())
    .bind(i64::from(lease.token))
    .bind(at_ms)
    .bind(error.to_string())
    .bind(checkpoint.map(Value::to_string))
    .bind(now_ms())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db(OP))?;
    match status {
        Some(status) => Decoder { what: "run", id: &lease.id }.state(&status),
        None => Err(lease_lost(&mut conn, Leased::Run, lease).await),
    }
}

pub(super) async fn dead_letter(
    store: &SqliteStore,
    lease: &Lease,
    error: &Value,
    trace: &Value,
) -> Result<(), StoreError> {
    const OP: &str = "dead-lettering a run";
    let mut conn = store.write_connection(OP).await?;
    let done = sqlx::query(concat!(
        "UPDATE runs SET status = 'dead', attempts = attempts + 1, last_error = ?4, trace = ?5, \
         trace_block = NULL, trace_slot = NULL, \
         lease_until = NULL, updated_at = ?6",
        fenced!()
    ))
    .bind(lease.id.as_str())
    .bind(lease.worker.as_str())
    .bind(i64::from(lease.token))
    .bind(error.to_string())
    .bind(pack_trace(trace))
    .bind(now_ms())
    .execute(&mut *conn)
    .await
    .map_err(db(OP))?;
    if done.rows_affected() == 0 {
        return Err(lease_lost(&mut conn, Leased::Run, lease).await);
    }
    Ok(())
}
