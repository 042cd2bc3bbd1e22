//! Gathers concurrent calls of one capability on one connection into batched invocations (`invoke-batch`),
//! the way a group commit gathers writes: nobody waits for a batch to fill. A call queues itself and waits
//! for a turn; whoever gets a turn takes every call queued by then (up to [`MAX_BATCH`]) and invokes them
//! together. Calls that arrive while a batch is in flight form the next one, so the busier a connection, the
//! bigger its batches, and an idle connection's call goes out at once, alone, as a plain `invoke`.

use super::error::InvokeError;
use super::invocation::{Invocation, InvocationContext};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot};

/// The most calls one invocation takes. The connector splits them further by its remote service's limits
/// (e.g. a bulk endpoint's limits on items and bytes per request).
pub const MAX_BATCH: usize = 100;

/// How many batches of one capability on one connection may be in flight at once. One: the calls that arrive
/// while it is being sent gather into the next, so a busy connection sends big batches (with two, `flowhost bench`
/// needed 11,700 requests instead of 8,600 for 20,000 events, and delivered no more).
const TURNS: usize = 1;

/// What sends one batch: one invocation per item, in order (the runtime's `invoke-batch`).
pub(crate) trait BatchSender: Sync {
    fn send<'a>(&'a self, items: &'a [(&'a Value, &'a InvocationContext)]) -> BatchFuture<'a>;
}

pub(crate) type BatchFuture<'a> = Pin<Box<dyn Future<Output = Vec<Invocation>> + Send + 'a>>;

/// The queues of one connection, one per capability.
#[derive(Default)]
pub(crate) struct Batcher {
    queues: Mutex<HashMap<String, Arc<Queue>>>,
}

struct Queue {
    pending: Mutex<Vec<Pending>>,
    turns: Semaphore,
}

struct Pending {
    input: Value,
    context: InvocationContext,
    reply: oneshot::Sender<Invocation>,
}

impl Batcher {
    pub(crate) async fn call(
        &self,
        sender: &dyn BatchSender,
        capability: &str,
        input: &Value,
        context: &InvocationContext,
    ) -> Invocation {
        let queue = self.queue(capability);
        let (reply, mut answer) = oneshot::channel();
        lock(&queue.pending).push(Pending { input: input.clone(), context: context.clone(), reply });
        loop {
            let turn = queue.turns.acquire().await.expect("the semaphore is never closed");
            if let Some(invocation) = answered(&mut answer) {
                return invocation;
            }
            let batch: Vec<Pending> = {
                let mut pending = lock(&queue.pending);
                // Calls whose caller went away (its run was stopped) are not sent.
                pending.retain(|p| !p.reply.is_closed());
                let n = pending.len().min(MAX_BATCH);
                pending.drain(..n).collect()
            };
            if batch.is_empty() {
                // Ours is in a batch that is in flight.
                drop(turn);
                return answer.await.unwrap_or_else(|_| cancelled());
            }
            let items: Vec<(&Value, &InvocationContext)> = batch.iter().map(|p| (&p.input, &p.context)).collect();
            let invocations = sender.send(&items).await;
            drop(items);
            for (pending, invocation) in batch.into_iter().zip(invocations) {
                // A caller that went away (its run was stopped) no longer needs its result.
                let _ = pending.reply.send(invocation);
            }
            drop(turn);
            // Ours was in that batch, unless more than MAX_BATCH calls were queued ahead of it.
            if let Some(invocation) = answered(&mut answer) {
                return invocation;
            }
        }
    }

    fn queue(&self, capability: &str) -> Arc<Queue> {
        let mut queues = lock(&self.queues);
        if let Some(queue) = queues.get(capability) {
            return queue.clone();
        }
        let queue = Arc::new(Queue { pending: Mutex::new(Vec::new()), turns: Semaphore::new(TURNS) });
        queues.insert(capability.to_string(), queue.clone());
        queue
    }
}

/// The call's answer, if its batch has finished (or was dropped).
fn answered(answer: &mut oneshot::Receiver<Invocation>) -> Option<Invocation> {
    match answer.try_recv() {
        Ok(invocation) => Some(invocation),
        Err(oneshot::error::TryRecvError::Closed) => Some(cancelled()),
        Err(oneshot::error::TryRecvError::Empty) => None,
    }
}

/// The answer of a call whose batch was dropped before it finished, because the call that was sending it was
/// stopped (its run's lease was lost, or the service is shutting down). Whether the batch reached the remote
/// service is unknown, so the call is retried; its idempotency key makes that safe.
fn cancelled() -> Invocation {
    Invocation {
        result: Err(InvokeError::Transient {
            message: "the batched invocation this call was part of was stopped before it finished".into(),
        }),
        log: Vec::new(),
        duration: Duration::ZERO,
        usage_percent: None,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
