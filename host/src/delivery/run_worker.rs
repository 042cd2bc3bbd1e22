//! The run worker: claims due runs from the store (up to a few consecutive runs of each ordering key), executes
//! each key's runs in order, durably, and settles each one: complete (with its emitted events to the outbox),
//! reschedule (a resend, with backoff and Retry-After), or dead-letter. A run is renewed while it executes, and
//! checkpointed before each connector call that follows a finished one, so a crash repeats at most the call
//! that was in flight (with the same idempotency key), and the runs of its key that finished before it in the
//! same turn but were not yet recorded done.

use super::shared::Shared;
use crate::flow::{Checkpoint, CheckpointSink, NodeError, Outcome, Run, Stop};
use crate::store::{Completion, Lease, NewOutboxEvent, RunCompletion, StoreError, StoredRun, add_ms, now_ms};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

/// How long to wait before trying a run again whose flow is not loaded (e.g. removed from the config).
const FLOW_MISSING_DELAY: Duration = Duration::from_secs(60);
/// The most runs one claim takes.
const CLAIM_BATCH: usize = 256;
/// The most runs of one ordering key one claim takes. A key's runs go one after another, so taking several
/// at once lets each start as soon as the one before it has finished, and pays for one claim and one commit
/// for all of them instead of one each (BENCHMARKS.md, "Fifth round").
const RUNS_PER_KEY: usize = 2;

/// Claims and executes runs until the service stops.
pub(crate) async fn run(shared: Arc<Shared>, tasks: TaskTracker) {
    let slots = Arc::new(Semaphore::new(shared.config.concurrency.max(1)));
    loop {
        if shared.stopping.is_cancelled() {
            return;
        }
        // Claim only as many runs as there are free slots, so that claimed runs start at once.
        let Ok(first) = slots.clone().acquire_owned().await else { return };
        let free = 1 + slots.available_permits().min(CLAIM_BATCH - 1);
        // Register interest before claiming, so an enqueue between the claim and the wait is not missed.
        let woken = shared.runs_waiting.notified();
        let claimed =
            shared.store.claim(&shared.config.worker, free, RUNS_PER_KEY, now_ms(), shared.config.lease).await;
        let runs = match claimed {
            Ok(runs) => runs,
            Err(error) => {
                tracing::error!(%error, "cannot claim runs; trying again");
                drop(first);
                wait(&shared, woken, Duration::from_secs(1)).await;
                continue;
            }
        };
        if runs.is_empty() {
            drop(first);
            wait(&shared, woken, shared.config.idle_poll).await;
            continue;
        }
        let mut first = Some(first);
        for runs in by_key(runs) {
            let mut permits = Vec::with_capacity(runs.len());
            for _ in &runs {
                permits.push(match first.take() {
                    Some(permit) => permit,
                    // Free permits were counted before the claim; nobody else takes them.
                    None => match slots.clone().acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                });
            }
            let shared = shared.clone();
            tasks.spawn(async move {
                execute_in_order(&shared, runs, permits).await;
                // Settling the runs may have made the next run of their key claimable: look now rather than
                // at the next idle poll, or each customer's runs would go one group per poll interval.
                shared.runs_waiting.notify_waiters();
            });
        }
    }
}

/// Claimed runs grouped by ordering key, keeping the claim's order (oldest first, as `Store::claim` returns
/// them): each group in `seq` order, the groups in the order of their first run.
fn by_key(runs: Vec<StoredRun>) -> Vec<Vec<StoredRun>> {
    let mut group_of: HashMap<String, usize> = HashMap::new();
    let mut groups: Vec<Vec<StoredRun>> = Vec::new();
    for run in runs {
        match group_of.get(&run.ordering_key) {
            Some(&group) => groups[group].push(run),
            None => {
                group_of.insert(run.ordering_key.clone(), groups.len());
                groups.push(vec![run]);
            }
        }
    }
    groups
}

/// Executes one key's claimed runs in `seq` order. A run that finishes (succeeded, or failed for good) lets
/// the next one start at once; their completions commit together, in one store call, when the key's turn
/// ends, so a later run is never recorded done while an earlier one is not. A run that stops otherwise (a
/// resend, a dead letter, a lost lease) ends the turn, and the runs behind it are given back: they wait
/// behind it as if they had never been claimed.
async fn execute_in_order(shared: &Shared, runs: Vec<StoredRun>, mut permits: Vec<OwnedSemaphorePermit>) {
    let mut finished: Vec<Finished> = Vec::new();
    let mut waiting = runs.into_iter();
    let mut stopped_at = None;
    for mut run in waiting.by_ref() {
        let Some(lease) = run.lease() else { continue };
        if run.lease_until.is_none_or(|until| until < add_ms(now_ms(), shared.config.lease * 2 / 3)) {
            // It waited behind its key's earlier runs long enough for its lease to run low: renew it first.
            if let Err(error) = shared.store.extend_lease(&lease, add_ms(now_ms(), shared.config.lease)).await {
                tracing::warn!(run = %run.id, %error, "cannot renew the lease of a run waiting its turn");
                stopped_at = Some(lease);
                break;
            }
        }
        let held: Vec<Lease> = finished.iter().map(|done| done.completion.lease.clone()).collect();
        // The flow gets the event itself, not a copy: nothing else reads it.
        let event = std::mem::take(&mut run.event);
        let outcome = execute(shared, &run, event, &lease, &held).await;
        permits.pop();
        match outcome {
            Some(done) => finished.push(done),
            None => break,
        }
    }
    commit(shared, finished).await;
    let rest: Vec<Lease> = stopped_at.into_iter().chain(waiting.filter_map(|run| run.lease())).collect();
    if !rest.is_empty()
        && let Err(error) = shared.store.release(&rest).await
    {
        tracing::error!(%error, runs = rest.len(), "cannot give back unstarted runs; they go when their leases expire");
    }
}

/// A run that finished, waiting to be completed with the rest of its key's turn.
struct Finished {
    created_at: i64,
    trace: Run,
    completion: RunCompletion,
}

/// Completes the finished runs of a key's turn in one commit, then counts them and publishes their events.
async fn commit(shared: &Shared, finished: Vec<Finished>) {
    if finished.is_empty() {
        return;
    }
    let (done, completions): (Vec<(String, i64, Run)>, Vec<RunCompletion>) = finished
        .into_iter()
        .map(|done| ((done.completion.lease.id.clone(), done.created_at, done.trace), done.completion))
        .unzip();
    let mut results = shared.completions.complete_all(completions).await.into_iter();
    for (id, created_at, trace) in done {
        let result = results.next().unwrap_or_else(|| Err(StoreError::invalid("completion", "no result")));
        if settle(&id, result) {
            shared.metrics.finished(&trace, created_at);
            for event in &trace.emitted {
                shared.emit(event);
            }
        }
    }
}

async fn wait(shared: &Shared, woken: tokio::sync::futures::Notified<'_>, timeout: Duration) {
    tokio::select! {
        _ = woken => {}
        _ = tokio::time::sleep(timeout) => {}
        _ = shared.stopping.cancelled() => {}
    }
}

/// Saves checkpoints through the run's lease, renewing it.
struct LeasedSink<'a> {
    shared: &'a Shared,
    lease: &'a Lease,
}

#[async_trait::async_trait]
impl CheckpointSink for LeasedSink<'_> {
    async fn save(&self, checkpoint: &Checkpoint) -> Result<(), String> {
        let value = serde_json::to_value(checkpoint).map_err(|e| e.to_string())?;
        let until = add_ms(now_ms(), self.shared.config.lease);
        self.shared.store.checkpoint(self.lease, &value, until).await.map_err(|e| e.to_string())
    }
}

/// Executes one claimed run. A run that finished is returned for its key's commit; any other outcome is
/// settled here (resend, dead letter), or left to the lease (a lost lease, a checkpoint not saved), and is
/// `None`. `event` is the run's event, taken out of `run`. `held` are the key's finished runs waiting for that
/// commit, whose leases the heartbeat renews too.
async fn execute(shared: &Shared, run: &StoredRun, event: Value, lease: &Lease, held: &[Lease]) -> Option<Finished> {
    let active = shared.active();
    let Some(flow) = active.by_id.get(&run.flow_id).cloned() else {
        let error = json!({"message": format!("flow {} is not loaded; the run waits for it", run.flow_id)});
        settle(&run.id, shared.store.reschedule(lease, add_ms(now_ms(), FLOW_MISSING_DELAY), &error, None).await);
        return None;
    };
    let mut checkpoint = match run.checkpoint.clone().map(serde_json::from_value::<Checkpoint>).transpose() {
        Ok(checkpoint) => checkpoint.unwrap_or_default(),
        Err(e) => {
            let error = json!({"message": format!("the run's checkpoint cannot be read: {e}")});
            settle(&run.id, shared.store.dead_letter(lease, &error, &Value::Null).await);
            return None;
        }
    };
    if run.attempts == 0 {
        // A new run, or one an operator retried: its calls get a fresh count of attempts.
        checkpoint.start_over();
    }
    let sink = LeasedSink { shared, lease };
    let heartbeat = heartbeat(shared, lease, held);
    let outcome = tokio::select! {
        outcome = flow.execute_durable(run.id.clone(), event, checkpoint, Some(&sink)) => outcome,
        lost = heartbeat => {
            tracing::warn!(run = %run.id, error = %lost, "stopped a run whose lease was lost");
            return None;
        }
    };
    match outcome {
        Outcome::Finished(trace) => {
            let completion = match &trace.error {
                None => Completion::Succeeded,
                Some(error) => Completion::Failed { error: error_value(error) },
            };
            let emitted: Vec<NewOutboxEvent> = trace
                .emitted
                .iter()
                .map(|e| NewOutboxEvent {
                    node_id: e.node_id.clone(),
                    event: e.event.clone(),
                    payload: e.payload.clone(),
                })
                .collect();
            let kept = shared.config.traces.keeps(trace.error.is_none());
            // Serialized once, straight from the trace's types: no `Value` tree is built for the store.
            let trace_json = if kept { serde_json::value::to_raw_value(&trace).ok() } else { None };
            let completion = RunCompletion { lease: lease.clone(), completion, trace: trace_json, emitted };
            return Some(Finished { created_at: run.created_at, trace, completion });
        }
        Outcome::Stopped { stop: Stop::Resend { error, delay }, run: trace, checkpoint } => {
            shared.metrics.observe_nodes(&trace);
            let checkpoint = serde_json::to_value(&checkpoint).unwrap_or(Value::Null);
            let at = add_ms(now_ms(), delay);
            let result = shared.store.reschedule(lease, at, &error_value(&error), Some(&checkpoint)).await;
            if settle(&run.id, result) {
                tracing::info!(run = %run.id, flow = %run.flow_id, node = %error.node_id, delay_ms = delay.as_millis() as u64, kind = %error.kind, "resend scheduled");
                shared.metrics.retried(&run.flow_id);
            }
        }
        Outcome::Stopped { stop: Stop::Throttled { error, delay }, run: trace, checkpoint } => {
            // The service refused the call for its rate (or its connection is paused): back in the queue for
            // when the connection takes calls again, without spending an attempt.
            shared.metrics.observe_nodes(&trace);
            let checkpoint = serde_json::to_value(&checkpoint).unwrap_or(Value::Null);
            let at = add_ms(now_ms(), delay);
            let result = shared.store.reschedule(lease, at, &error_value(&error), Some(&checkpoint)).await;
            if settle(&run.id, result) {
                tracing::info!(run = %run.id, flow = %run.flow_id, node = %error.node_id, delay_ms = delay.as_millis() as u64, "throttled: the run waits for its connection");
                shared.metrics.throttled(&run.flow_id);
            }
        }
        Outcome::Stopped { stop: Stop::Exhausted { error }, run: trace, checkpoint } => {
            shared.metrics.observe_nodes(&trace);
            // The attempts that ran out stay with the run, for the trace of an operator's retry.
            let checkpoint = serde_json::to_value(&checkpoint).unwrap_or(Value::Null);
            if let Err(e) = shared.store.checkpoint(lease, &checkpoint, add_ms(now_ms(), shared.config.lease)).await {
                tracing::warn!(run = %run.id, error = %e, "the attempts of a dead letter were not saved");
            }
            let result = shared.store.dead_letter(lease, &error_value(&error), &trace_value(&trace)).await;
            if settle(&run.id, result) {
                tracing::warn!(run = %run.id, flow = %run.flow_id, node = %error.node_id, kind = %error.kind, "retries exhausted: dead letter");
                shared.metrics.dead_lettered(&run.flow_id, run.created_at);
            }
        }
        Outcome::Stopped { stop: Stop::Aborted { reason }, .. } => {
            tracing::warn!(run = %run.id, %reason, "stopped a run whose progress could not be saved");
        }
    }
    None
}

/// Renews the lease until it is lost (returned as the error) or the run ends (the future is dropped), and
/// the leases of `held`, the key's finished runs waiting for their commit (a lost one of those fails its
/// completion, fenced, and is not this run's concern).
async fn heartbeat(shared: &Shared, lease: &Lease, held: &[Lease]) -> StoreError {
    let every = shared.config.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let until = add_ms(now_ms(), shared.config.lease);
        for finished in held {
            let _ = shared.store.extend_lease(finished, until).await;
        }
        if let Err(error) = shared.store.extend_lease(lease, until).await
            && error.is_lease_lost()
        {
            return error;
        }
    }
}

/// Logs a settle that did not take; true when it did.
fn settle<T>(run: &str, result: Result<T, StoreError>) -> bool {
    match result {
        Ok(_) => true,
        Err(error) if error.is_lease_lost() => {
            tracing::warn!(run, %error, "the run was taken over; its outcome here is discarded");
            false
        }
        Err(error) => {
            // The lease expires and the run is claimed again, replaying from its last checkpoint.
            tracing::error!(run, %error, "cannot record the run's outcome; it will be run again");
            false
        }
    }
}

fn error_value(error: &NodeError) -> Value {
    serde_json::to_value(error).unwrap_or(Value::Null)
}

fn trace_value(run: &Run) -> Value {
    serde_json::to_value(run).unwrap_or(Value::Null)
}
