//! The threads connector code runs on. A sandboxed call never runs on the caller's async workers: those also
//! serve the HTTP API, the store and lease renewals, and four CPU-bound connectors on a 2-core machine once
//! froze all of them (issue 22). Calls run on a small Tokio runtime of their own, one worker per core, and
//! wasm yields to it on every epoch tick (`run_sandboxed`), so a looping connector holds a worker for one
//! tick at a time, the other calls on the pool still make progress, and the operating system shares the cores
//! between the pool and the service's own workers.

use std::future::Future;
use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

/// A dedicated multi-thread Tokio runtime for sandboxed calls.
pub(super) struct InvocationPool {
    /// Always `Some` until dropped.
    runtime: Option<Runtime>,
}

impl InvocationPool {
    pub fn new(threads: usize) -> Result<Self, String> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("flowhost-connector")
            // Each poll of a looping call lasts one epoch tick (10 ms): look at I/O and at newly submitted
            // calls every other poll rather than every 61st and 31st (Tokio's defaults), so that a call
            // waiting on HTTP, or just submitted, is not kept behind a queue of loops.
            .event_interval(2)
            .global_queue_interval(2)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the connector threads: {e}"))?;
        Ok(InvocationPool { runtime: Some(runtime) })
    }

    /// Runs `future` on the pool and waits for it; `None` when the pool is shutting down. Dropping the returned
    /// future (the caller gave up, e.g. its run's lease was lost) cancels the call at its next yield.
    pub async fn run<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> Option<T> {
        let runtime = self.runtime.as_ref().expect("the pool's runtime lives until the pool is dropped");
        let mut task = AbortOnDrop(runtime.spawn(future));
        match (&mut task.0).await {
            Ok(value) => Some(value),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_cancelled) => None,
        }
    }
}

impl Drop for InvocationPool {
    fn drop(&mut self) {
        // The last handle of a connector runtime may go inside an async task, where dropping a Tokio runtime
        // (which waits for its threads) panics: let the threads end on their own.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_run_on_the_pool_threads_and_the_pool_drops_inside_a_task() {
        let pool = InvocationPool::new(1).unwrap();
        let name = pool.run(async { std::thread::current().name().map(str::to_string) }).await.unwrap();
        assert_eq!(name.as_deref(), Some("flowhost-connector"));
        // Dropping it here, in an async test, must not panic.
        drop(pool);
    }

    #[tokio::test]
    async fn a_dropped_call_is_cancelled() {
        let pool = InvocationPool::new(1).unwrap();
        let (sender, receiver) = tokio::sync::oneshot::channel::<()>();
        let call = pool.run(async move {
            let _sender = sender;
            std::future::pending::<()>().await
        });
        // Polled once (so spawned), then dropped: the task is aborted and drops its sender.
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), call).await.is_err());
        assert!(receiver.await.is_err(), "the aborted call dropped its end");
    }
}
