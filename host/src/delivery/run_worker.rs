//! The run worker: claims due runs from the store, executes them durably, and settles each one: complete
//! (with its emitted events to the outbox), reschedule (a resend, with backoff and Retry-After), or
//! dead-letter. A run is renewed while it executes, and checkpointed before each connector call that follows
//! a finished one, so a crash repeats at most the call that was in flight (with the same idempotency key).

use super::service::Shared;
use crate::flow::{Checkpoint, CheckpointSink, NodeError, Outcome, Run, Stop};
use crate::store::{Completion, Lease, NewOutboxEvent, RunCompletion, StoreError, StoredRun, add_ms, now_ms};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// How long to wait before trying a run again whose flow is not loaded (e.g. removed from the config).
const FLOW_MISSING_DELAY: Duration = Duration::from_secs(60);
/// The most runs one claim takes.
const CLAIM_BATCH: usize = 256;

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
        let claimed = shared.store.claim(&shared.config.worker, free, now_ms(), shared.config.lease).await;
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
        for run in runs {
            let permit = match first.take() {
                Some(permit) => permit,
                // Free permits were counted before the claim; nobody else takes them.
                None => match slots.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let shared = shared.clone();
            tasks.spawn(async move {
                execute(&shared, run).await;
                drop(permit);
                // The run's settling may have made the next run of its key claimable: look now rather than
                // at the next idle poll, or each customer's runs would go one per poll interval.
                shared.runs_waiting.notify_waiters();
            });
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

/// Executes one claimed run and settles it.
async fn execute(shared: &Shared, run: StoredRun) {
    let Some(lease) = run.lease() else { return };
    let active = shared.active();
    let Some(flow) = active.by_id.get(&run.flow_id).cloned() else {
        let error = json!({"message": format!("flow {} is not loaded; the run waits for it", run.flow_id)});
        settle(&run, shared.store.reschedule(&lease, add_ms(now_ms(), FLOW_MISSING_DELAY), &error, None).await);
        return;
    };
    let mut checkpoint = match run.checkpoint.clone().map(serde_json::from_value::<Checkpoint>).transpose() {
        Ok(checkpoint) => checkpoint.unwrap_or_default(),
        Err(e) => {
            let error = json!({"message": format!("the run's checkpoint cannot be read: {e}")});
            settle(&run, shared.store.dead_letter(&lease, &error, &Value::Null).await);
            return;
        }
    };
    if run.attempts == 0 {
        // A new run, or one an operator retried: its calls get a fresh count of attempts.
        checkpoint.failed_attempts.clear();
    }
    let sink = LeasedSink { shared, lease: &lease };
    let heartbeat = heartbeat(shared, &lease);
    let outcome = tokio::select! {
        outcome = flow.execute_durable(run.id.clone(), run.event.clone(), checkpoint, Some(&sink)) => outcome,
        lost = heartbeat => {
            tracing::warn!(run = %run.id, error = %lost, "stopped a run whose lease was lost");
            return;
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
            let trace_json = trace_value(&trace);
            let result = shared
                .completions
                .complete(RunCompletion { lease: lease.clone(), completion, trace: trace_json, emitted })
                .await;
            if settle(&run, result) {
                shared.metrics.finished(&trace, run.created_at);
                for event in &trace.emitted {
                    shared.emit(event);
                }
            }
        }
        Outcome::Stopped { stop: Stop::Resend { error, delay }, run: trace, checkpoint } => {
            shared.metrics.observe_nodes(&trace);
            let checkpoint = serde_json::to_value(&checkpoint).unwrap_or(Value::Null);
            let at = add_ms(now_ms(), delay);
            let result = shared.store.reschedule(&lease, at, &error_value(&error), Some(&checkpoint)).await;
            if settle(&run, result) {
                tracing::info!(run = %run.id, flow = %run.flow_id, node = %error.node_id, delay_ms = delay.as_millis() as u64, kind = %error.kind, "resend scheduled");
                shared.metrics.retried(&run.flow_id);
            }
        }
        Outcome::Stopped { stop: Stop::Exhausted { error }, run: trace, .. } => {
            shared.metrics.observe_nodes(&trace);
            let result = shared.store.dead_letter(&lease, &error_value(&error), &trace_value(&trace)).await;
            if settle(&run, result) {
                tracing::warn!(run = %run.id, flow = %run.flow_id, node = %error.node_id, kind = %error.kind, "retries exhausted: dead letter");
                shared.metrics.dead_lettered(&run.flow_id, run.created_at);
            }
        }
        Outcome::Stopped { stop: Stop::Aborted { reason }, .. } => {
            tracing::warn!(run = %run.id, %reason, "stopped a run whose progress could not be saved");
        }
    }
}

/// Renews the lease until it is lost (returned as the error) or the run ends (the future is dropped).
async fn heartbeat(shared: &Shared, lease: &Lease) -> StoreError {
    let every = shared.config.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        if let Err(error) = shared.store.extend_lease(lease, add_ms(now_ms(), shared.config.lease)).await
            && error.is_lease_lost()
        {
            return error;
        }
    }
}

/// Logs a settle that did not take; true when it did.
fn settle<T>(run: &StoredRun, result: Result<T, StoreError>) -> bool {
    match result {
        Ok(_) => true,
        Err(error) if error.is_lease_lost() => {
            tracing::warn!(run = %run.id, %error, "the run was taken over; its outcome here is discarded");
            false
        }
        Err(error) => {
            // The lease expires and the run is claimed again, replaying from its last checkpoint.
            tracing::error!(run = %run.id, %error, "cannot record the run's outcome; it will be run again");
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
