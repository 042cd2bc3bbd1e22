//! Group commit: many concurrent `enqueue` calls share one store transaction, so that durable acceptance
//! (an fsync per commit) does not cap throughput at one fsync per event.
//!
//! One task owns the commits. Callers hand it their runs and wait; while a commit is in flight, new requests
//! pile up in the channel, and the next commit takes all of them (up to `max_batch` runs) in one
//! [`Store::enqueue`]. Each caller gets its own ids back only after that transaction has committed, so an
//! answer still means "durably accepted". Bad input is checked per caller before batching, so one caller's
//! mistake never fails the others' commit.

use crate::store::Enqueued;
use crate::store::{NewRun, Store, StoreError, validate_runs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Limits of the batcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitConfig {
    /// The most runs one transaction takes (a single larger request is committed alone, whole).
    pub max_batch: usize,
    /// Requests that may wait for the commit task before callers wait to hand theirs over (backpressure).
    pub queue: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig { max_batch: 512, queue: 8192 }
    }
}

/// Why a group-committed enqueue failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupCommitError {
    /// The runs were refused before reaching the store (they name the bad field); nothing was accepted.
    #[error(transparent)]
    Invalid(StoreError),
    /// The batch's transaction failed; nothing of it was accepted. Shared by every caller of that batch.
    #[error("the events were not accepted: {0}")]
    Store(Arc<StoreError>),
    /// Shutting down: the runs were not accepted.
    #[error("the event queue is shutting down; the events were not accepted")]
    Closed,
    /// The commit task stopped before answering: whether the runs were accepted is unknown.
    #[error("the event queue stopped before confirming; the events may or may not have been accepted")]
    Interrupted,
}

/// What the batcher has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Store transactions (calls to `Store::enqueue`), committed or not.
    pub transactions: u64,
    /// Enqueue requests answered by those transactions.
    pub requests: u64,
    /// Runs committed.
    pub runs: u64,
    /// Transactions that failed.
    pub failed_transactions: u64,
    /// The most requests one transaction carried.
    pub largest_batch: u64,
}

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    requests: AtomicU64,
    runs: AtomicU64,
    failed_transactions: AtomicU64,
    largest_batch: AtomicU64,
}

struct Request {
    runs: Vec<NewRun>,
    reply: oneshot::Sender<Result<Vec<Enqueued>, Arc<StoreError>>>,
}

/// Batches concurrent enqueues into shared store transactions. Create it inside a Tokio runtime; share it
/// behind an `Arc`. Call [`shutdown`](GroupCommit::shutdown) to stop accepting and commit what was handed
/// over; dropping it does the same in the background.
pub struct GroupCommit {
    sender: mpsc::Sender<Request>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
}

impl GroupCommit {
    /// Starts the commit task on the current Tokio runtime.
    pub fn new(store: Arc<dyn Store>, config: GroupCommitConfig) -> Self {
        let (sender, receiver) = mpsc::channel(config.queue.max(1));
        let (stop, stopped) = oneshot::channel();
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(commit_loop(store, receiver, stopped, config.max_batch.max(1), counters.clone()));
        GroupCommit { sender, stop: Mutex::new(Some(stop)), task: Mutex::new(Some(task)), counters }
    }

    /// Durably enqueues `runs` (in a transaction shared with concurrent callers) and returns their ids, in
    /// order, once committed.
    pub async fn enqueue(&self, runs: Vec<NewRun>) -> Result<Vec<String>, GroupCommitError> {
        Ok(self.enqueue_runs(runs).await?.into_iter().map(|run| run.id).collect())
    }

    /// As [`enqueue`](Self::enqueue), saying of each run whether it is new or a re-sent one, de-duplicated.
    pub async fn enqueue_runs(&self, runs: Vec<NewRun>) -> Result<Vec<Enqueued>, GroupCommitError> {
        validate_runs(&runs).map_err(GroupCommitError::Invalid)?;
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.sender.send(Request { runs, reply }).await.map_err(|_| GroupCommitError::Closed)?;
        match answer.await {
            Ok(Ok(ids)) => Ok(ids),
            Ok(Err(error)) => Err(GroupCommitError::Store(error)),
            Err(_) => Err(GroupCommitError::Interrupted),
        }
    }

    /// Counters, e.g. to check that commits are shared.
    pub fn stats(&self) -> GroupCommitStats {
        let c = &self.counters;
        GroupCommitStats {
            transactions: c.transactions.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            runs: c.runs.load(Ordering::Relaxed),
            failed_transactions: c.failed_transactions.load(Ordering::Relaxed),
            largest_batch: c.largest_batch.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting (later calls get [`GroupCommitError::Closed`]), commits every request already handed
    /// over, and waits for the commit task to finish. Idempotent.
    pub async fn shutdown(&self) {
        let stop = self.stop.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let task = self.task.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(task) = task
            && let Err(error) = task.await
        {
            tracing::error!(%error, "the group commit task ended abnormally");
        }
    }
}

async fn commit_loop(
    store: Arc<dyn Store>,
    mut receiver: mpsc::Receiver<Request>,
    mut stop: oneshot::Receiver<()>,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    let mut stopping = false;
    let mut carried: Option<Request> = None;
    loop {
        let first = match carried.take() {
            Some(request) => request,
            None => tokio::select! {
                biased;
                request = receiver.recv() => match request {
                    Some(request) => request,
                    // Closed and drained: every request handed over has been answered.
                    None => break,
                },
                // An explicit shutdown, or the GroupCommit was dropped: refuse new requests, drain the rest.
                _ = &mut stop, if !stopping => {
                    stopping = true;
                    receiver.close();
                    continue;
                }
            },
        };
        let mut size = first.runs.len();
        let mut batch = vec![first];
        while size < max_batch {
            match receiver.try_recv() {
                Ok(request) if size + request.runs.len() > max_batch => {
                    carried = Some(request);
                    break;
                }
                Ok(request) => {
                    size += request.runs.len();
                    batch.push(request);
                }
                Err(_) => break,
            }
        }
        commit(store.as_ref(), batch, &counters).await;
    }
}

async fn commit(store: &dyn Store, batch: Vec<Request>, counters: &Counters) {
    let runs: Vec<NewRun> = batch.iter().flat_map(|request| request.runs.iter().cloned()).collect();
    counters.transactions.fetch_add(1, Ordering::Relaxed);
    counters.requests.fetch_add(batch.len() as u64, Ordering::Relaxed);
    counters.largest_batch.fetch_max(batch.len() as u64, Ordering::Relaxed);
    match store.enqueue_runs(&runs).await {
        Ok(ids) if ids.len() == runs.len() => {
            counters.runs.fetch_add(ids.len() as u64, Ordering::Relaxed);
            let mut ids = ids.into_iter();
            for request in batch {
                let mine: Vec<Enqueued> = ids.by_ref().take(request.runs.len()).collect();
                // A caller that gave up waiting still had its runs accepted; nobody to tell.
                let _ = request.reply.send(Ok(mine));
            }
        }
        Ok(ids) => {
            counters.failed_transactions.fetch_add(1, Ordering::Relaxed);
            let error = Arc::new(StoreError::Corrupt {
                what: "enqueue".to_string(),
                message: format!(
                    "the store returned {} ids for {} runs; they may have been accepted",
                    ids.len(),
                    runs.len()
                ),
            });
            for request in batch {
                let _ = request.reply.send(Err(error.clone()));
            }
        }
        Err(error) => {
            counters.failed_transactions.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, requests = batch.len(), "a group commit failed; its events were not accepted");
            let error = Arc::new(error);
            for request in batch {
                let _ = request.reply.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use serde_json::json;
    use std::collections::HashSet;

    fn run(i: usize) -> NewRun {
        NewRun {
            flow_id: "loyalty-to-crm".into(),
            flow_version: "1".into(),
            connections: vec!["crm".into()],
            ordering_key: format!("loyalty-to-crm/c{}", i % 50),
            customer: Some(format!("c{}", i % 50)),
            event: json!({"n": i}),
            dedup_key: None,
        }
    }

    async fn open() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("flowhost.db")).await.unwrap();
        (dir, Arc::new(store))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_concurrent_enqueues_share_few_transactions() {
        let (_dir, store) = open().await;
        let group = Arc::new(GroupCommit::new(store.clone(), GroupCommitConfig::default()));
        let calls: Vec<_> = (0..1000)
            .map(|i| {
                let group = group.clone();
                tokio::spawn(async move { (i, group.enqueue(vec![run(i)]).await) })
            })
            .collect();
        let mut ids = HashSet::new();
        for call in calls {
            let (i, result) = call.await.unwrap();
            let mine = result.unwrap();
            assert_eq!(mine.len(), 1);
            // Each caller got its own run's id back.
            assert_eq!(store.get(&mine[0]).await.unwrap().unwrap().event, json!({"n": i}));
            assert!(ids.insert(mine[0].clone()));
        }
        let stats = group.stats();
        eprintln!("{stats:?}");
        assert_eq!((stats.requests, stats.runs, stats.failed_transactions), (1000, 1000, 0));
        assert!(stats.transactions <= 100, "1000 calls took {} transactions", stats.transactions);
        assert!(stats.largest_batch > 1);
        assert_eq!(store.counts().await.unwrap().runs.queued, 1000);
        group.shutdown().await;
    }

    #[tokio::test]
    async fn batches_respect_the_size_limit_and_keep_each_callers_ids_in_order() {
        let (_dir, store) = open().await;
        let group = Arc::new(GroupCommit::new(store.clone(), GroupCommitConfig { max_batch: 10, queue: 64 }));
        let calls: Vec<_> = (0..20)
            .map(|i| {
                let group = group.clone();
                tokio::spawn(async move { group.enqueue((0..3).map(|j| run(i * 3 + j)).collect()).await })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            let ids = call.await.unwrap().unwrap();
            for (j, id) in ids.iter().enumerate() {
                assert_eq!(store.get(id).await.unwrap().unwrap().event, json!({"n": i * 3 + j}));
            }
        }
        // A request larger than the limit is committed alone, whole.
        let big = group.enqueue((0..25).map(run).collect()).await.unwrap();
        assert_eq!(big.len(), 25);
        let stats = group.stats();
        assert!(stats.transactions >= 7, "at most 3 requests of 3 runs fit in 10: {stats:?}");
        assert_eq!(stats.runs, 85);
    }

    #[tokio::test]
    async fn bad_input_fails_only_its_caller() {
        let (_dir, store) = open().await;
        let group = GroupCommit::new(store.clone(), GroupCommitConfig::default());
        let bad = NewRun { ordering_key: String::new(), ..run(1) };
        let (good, bad) = tokio::join!(group.enqueue(vec![run(0)]), group.enqueue(vec![run(2), bad]));
        assert_eq!(good.unwrap().len(), 1);
        let error = bad.unwrap_err();
        assert!(matches!(error, GroupCommitError::Invalid(_)), "{error}");
        assert!(error.to_string().contains("runs[1].orderingKey"), "{error}");
        assert_eq!(group.enqueue(Vec::new()).await.unwrap(), Vec::<String>::new());
        assert_eq!(store.counts().await.unwrap().runs.queued, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_commits_what_was_handed_over_and_refuses_the_rest() {
        let (_dir, store) = open().await;
        let group = Arc::new(GroupCommit::new(store.clone(), GroupCommitConfig::default()));
        let calls: Vec<_> = (0..200)
            .map(|i| {
                let group = group.clone();
                tokio::spawn(async move { group.enqueue(vec![run(i)]).await })
            })
            .collect();
        tokio::task::yield_now().await;
        group.shutdown().await;
        group.shutdown().await;
        let mut accepted = 0;
        for call in calls {
            match call.await.unwrap() {
                Ok(ids) => {
                    assert!(store.get(&ids[0]).await.unwrap().is_some());
                    accepted += 1;
                }
                Err(GroupCommitError::Closed) => {}
                Err(other) => panic!("unexpected {other}"),
            }
        }
        // Every caller that got ids is in the store, and nothing else is.
        assert_eq!(store.counts().await.unwrap().runs.queued, accepted);
        assert!(matches!(group.enqueue(vec![run(0)]).await, Err(GroupCommitError::Closed)));
    }
}
