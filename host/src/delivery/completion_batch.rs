//! Group commit of completions: runs that finish at about the same time are settled in one store call (one
//! atomic commit), as accepted events are by [`GroupCommit`](super::group_commit::GroupCommit). Each caller
//! still learns its own outcome, and only after the commit.

use crate::store::{RunCompletion, Store, StoreError};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The most callers one store call serves (each may bring several completions).
const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Vec<Result<(), StoreError>>>;

/// Hands completions to one committing task.
pub(crate) struct CompletionBatch {
    sender: mpsc::Sender<(Vec<RunCompletion>, Reply)>,
}

impl CompletionBatch {
    /// Starts the committing task; it ends when the last `CompletionBatch` clone is dropped.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let (sender, receiver) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(commit_loop(store, receiver));
        CompletionBatch { sender }
    }

    /// Completes runs in one store call, shared with concurrent callers, so they commit together or not at
    /// all; one result per completion, in order.
    pub async fn complete_all(&self, completions: Vec<RunCompletion>) -> Vec<Result<(), StoreError>> {
        let count = completions.len();
        let failed = |message: &str| (0..count).map(|_| Err(StoreError::invalid("completion", message))).collect();
        if count == 0 {
            return Vec::new();
        }
        let (reply, answer) = oneshot::channel();
        if self.sender.send((completions, reply)).await.is_err() {
            return failed("the service is shutting down");
        }
        answer.await.unwrap_or_else(|_| failed("the committing task stopped"))
    }
}

async fn commit_loop(store: Arc<dyn Store>, mut receiver: mpsc::Receiver<(Vec<RunCompletion>, Reply)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let sizes: Vec<usize> = batch.iter().map(|(completions, _)| completions.len()).collect();
        let (groups, replies): (Vec<Vec<RunCompletion>>, Vec<Reply>) = batch.drain(..).unzip();
        let completions: Vec<RunCompletion> = groups.into_iter().flatten().collect();
        let mut results = match store.complete_many(&completions).await {
            Ok(results) => results,
            Err(error) => {
                // Nothing was written: every run of the batch stays leased and is run again after its lease.
                let message = error.to_string();
                completions.iter().map(|_| Err(StoreError::invalid("completion", message.clone()))).collect()
            }
        }
        .into_iter();
        for (reply, size) in replies.into_iter().zip(sizes) {
            let _ = reply.send(results.by_ref().take(size).collect());
        }
    }
}
