//! Group commit of completions: runs that finish at about the same time are settled in one store call (one
//! atomic commit), as accepted events are by [`GroupCommit`](super::group_commit::GroupCommit). Each caller
//! still learns its own outcome, and only after the commit.

use crate::store::{RunCompletion, Store, StoreError};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The most completions one transaction takes.
const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// Hands completions to one committing task.
pub(crate) struct CompletionBatch {
    sender: mpsc::Sender<(RunCompletion, Reply)>,
}

impl CompletionBatch {
    /// Starts the committing task; it ends when the last `CompletionBatch` clone is dropped.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let (sender, receiver) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(commit_loop(store, receiver));
        CompletionBatch { sender }
    }

    /// Completes a run, in a transaction shared with concurrent callers.
    pub async fn complete(&self, completion: RunCompletion) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        if self.sender.send((completion, reply)).await.is_err() {
            return Err(StoreError::invalid("completion", "the service is shutting down"));
        }
        answer.await.unwrap_or_else(|_| Err(StoreError::invalid("completion", "the committing task stopped")))
    }
}

async fn commit_loop(store: Arc<dyn Store>, mut receiver: mpsc::Receiver<(RunCompletion, Reply)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (completions, replies): (Vec<RunCompletion>, Vec<Reply>) = batch.drain(..).unzip();
        match store.complete_many(&completions).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(error) => {
                // Nothing was written: every run of the batch stays leased and is run again after its lease.
                let message = error.to_string();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::invalid("completion", message.clone())));
                }
            }
        }
    }
}
