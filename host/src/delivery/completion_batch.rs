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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Completion, NewRun, RunState, SqliteStore, now_ms};
    use serde_json::json;
    use std::time::Duration;

    fn run(customer: &str) -> NewRun {
        NewRun {
            flow_id: "loyalty-to-crm".into(),
            flow_version: "1".into(),
            connections: vec!["crm".into()],
            ordering_key: format!("loyalty-to-crm/{customer}"),
            customer: Some(customer.into()),
            event: json!({"customer": customer}),
            dedup_key: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_groups_each_get_their_own_results_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("flowhost.db")).await.unwrap());
        let ids = store.enqueue(&[run("a"), run("a"), run("b"), run("c"), run("c")]).await.unwrap();
        let claimed = store.claim("w", 10, 2, now_ms(), Duration::from_secs(30)).await.unwrap();
        assert_eq!(claimed.len(), 5);
        let completion = |index: usize, token_offset: u32| {
            let mut lease = claimed[index].lease().unwrap();
            lease.token += token_offset;
            RunCompletion {
                lease,
                completion: Completion::Succeeded,
                trace: serde_json::value::to_raw_value(&json!({"run": index})).ok(),
                emitted: vec![],
            }
        };
        let batch = Arc::new(CompletionBatch::new(store.clone()));
        // Three callers at once: a's two runs, b's run with a lease that is not the current one, c's two runs.
        let groups = [
            vec![completion(0, 0), completion(1, 0)],
            vec![completion(2, 1)],
            vec![completion(3, 0), completion(4, 0)],
        ];
        let calls: Vec<_> = groups
            .into_iter()
            .map(|group| {
                let batch = batch.clone();
                tokio::spawn(async move { batch.complete_all(group).await })
            })
            .collect();
        let mut results = Vec::new();
        for call in calls {
            results.push(call.await.unwrap().iter().map(|result| result.is_ok()).collect::<Vec<_>>());
        }
        assert_eq!(results, [vec![true, true], vec![false], vec![true, true]]);
        let mut states = Vec::new();
        for id in &ids {
            states.push(store.get(id).await.unwrap().unwrap().status);
        }
        let (done, leased) = (RunState::Succeeded, RunState::Leased);
        assert_eq!(states, [done, done, leased, done, done], "only b's completion was refused");
        assert!(batch.complete_all(Vec::new()).await.is_empty());
    }
}
