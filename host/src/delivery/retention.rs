//! The purge task: every `retention.interval`, what is older than `retention.max_age` is purged from the store
//! ([`Store::purge`](crate::store::Store::purge)) in batches, with a pause after each, until a batch comes back
//! short. SQLite has one writer: a batch is one short transaction, and the pause lets accepts, claims and
//! completions take the writer in between, so a large backlog (the first purge of an old store) is worked off
//! without stalling delivery.

use super::shared::Shared;
use crate::store::{Purged, now_ms};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long after the service starts the first purge begins: late enough not to compete with a start-up's burst
/// of claims, and soon enough that a service restarted more often than its interval still purges.
const FIRST_PURGE_AFTER: Duration = Duration::from_secs(5);

pub(super) async fn run(shared: Arc<Shared>) {
    let config = shared.config.retention;
    let Some(max_age) = config.max_age else { return };
    let mut wait = FIRST_PURGE_AFTER.min(config.interval);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.stopping.cancelled() => return,
        }
        wait = config.interval;
        let started = Instant::now();
        let cutoff = now_ms().saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
        let mut total = Purged::default();
        loop {
            match shared.store.purge(cutoff, config.batch).await {
                Ok(purged) => {
                    shared.metrics.purged(&purged);
                    total += purged;
                    if !purged.may_have_more(config.batch) {
                        break;
                    }
                }
                Err(error) => {
                    // The next interval tries again; what was purged so far stays purged.
                    tracing::warn!(%error, "purging old runs, inbound messages and outbox events");
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(config.pause) => {}
                _ = shared.stopping.cancelled() => return,
            }
        }
        if !total.is_empty() {
            tracing::info!(
                runs = total.runs,
                inbound = total.inbound,
                outbox = total.outbox,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "purged what was older than the retention age"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::connector::SecretStore;
    use crate::delivery::{LoyaltyEvent, RetentionConfig, Service, ServiceConfig};
    use crate::store::{
        Completion, InboundMessage, InboundOutcome, NewOutboxEvent, RunState, SqliteStore, Store, now_ms,
    };
    use crate::{Host, HostConfig};
    use serde_json::json;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    const LEASE: Duration = Duration::from_secs(30);

    /// A flow that needs no connector: it emits one event per `point_add`.
    fn flow() -> (String, String) {
        let flow = json!({
            "id": "points", "version": "1.0.0",
            "trigger": {"type": "event", "event": "point_add"},
            "connections": {},
            "nodes": [{"id": "tell", "emit": {"event": "points_seen", "payload": {"customer": "{{ trigger.customerId }}"}}}]
        });
        ("points.json".into(), flow.to_string())
    }

    async fn start(store: Arc<dyn Store>, retention: RetentionConfig) -> Service {
        let host = Host::new(HostConfig::default(), SecretStore::default()).await.unwrap();
        let config = ServiceConfig { idle_poll: Duration::from_millis(20), retention, ..ServiceConfig::default() };
        Service::start(host, store, &[flow()], Vec::new(), config).await.unwrap()
    }

    fn run(key: &str) -> crate::store::NewRun {
        crate::store::conformance::run(key)
    }

    /// Waits until `done` holds, for at most a minute.
    async fn eventually<F, Fut>(what: &str, mut done: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done().await {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_service_purges_old_finished_runs_inbound_messages_and_outbox_events_and_keeps_dead_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("flowhost.db")).await.unwrap());
        // Before the service starts: a run that succeeded with an event, one that failed, one dead-lettered and
        // one waiting for its resend; a processed inbound message and an unmatched one.
        let ids = store.enqueue(&[run("ok"), run("bad"), run("dead"), run("waiting")]).await.unwrap();
        let claimed = store.claim("earlier", 10, 1, now_ms(), LEASE).await.unwrap();
        let lease = |i: usize| claimed[i].lease().unwrap();
        let emitted = [NewOutboxEvent { node_id: "tell".into(), event: "points_seen".into(), payload: json!({}) }];
        store.complete(&lease(0), &Completion::Succeeded, &json!({"nodes": []}), &emitted).await.unwrap();
        store.complete(&lease(1), &Completion::Failed { error: json!("refused") }, &json!({}), &[]).await.unwrap();
        store.dead_letter(&lease(2), &json!({"status": 503}), &json!({})).await.unwrap();
        store.reschedule(&lease(3), now_ms() + 3_600_000, &json!({"status": 429}), None).await.unwrap();
        let message = |id: &str| InboundMessage {
            connection: "crm".into(),
            source: "crm".into(),
            external_id: Some(id.into()),
            body: json!({}),
        };
        let processed = store.record_inbound(&message("m1")).await.unwrap();
        let unmatched = store.record_inbound(&message("m2")).await.unwrap();
        let messages = store.claim_inbound("earlier", 10, now_ms(), LEASE).await.unwrap();
        let outcome = InboundOutcome::Processed { unmatched: None };
        store.complete_inbound(&messages[0].lease().unwrap(), &outcome, &[]).await.unwrap();
        let outcome = InboundOutcome::Unmatched { reason: json!({"eventType": "screen_view"}) };
        store.complete_inbound(&messages[1].lease().unwrap(), &outcome, &[]).await.unwrap();

        // Retention's smallest age in flowhost.toml is an hour; an embedder may choose any, which lets this test
        // see the purge without waiting for it.
        let retention = RetentionConfig {
            max_age: Some(Duration::from_millis(300)),
            interval: Duration::from_millis(50),
            batch: 2,
            pause: Duration::from_millis(1),
        };
        let service = start(store.clone(), retention).await;
        let event =
            LoyaltyEvent { event: "point_add".into(), data: json!({"customerId": "fresh"}), customer: None, id: None };
        let fresh = service.accept(&[event]).await.unwrap()[0].runs[0].run_id.clone();
        let gone = |id: String| {
            let store = store.clone();
            async move { store.get(&id).await.unwrap().is_none() }
        };
        eventually("the old finished runs are purged", || {
            let (ok, bad) = (gone(ids[0].clone()), gone(ids[1].clone()));
            async move { ok.await && bad.await }
        })
        .await;
        // Messages are purged after runs, in a statement of their own, and this one was processed after the runs
        // finished: it may come of age, or its statement run, only after them.
        eventually("the processed message is purged", || {
            let store = store.clone();
            let processed = processed.clone();
            async move { store.get_inbound(&processed).await.unwrap().is_none() }
        })
        .await;
        assert!(store.outbox(0, 100).await.unwrap().iter().all(|event| event.run_id != ids[0]));
        // What still needs someone is kept.
        assert_eq!(store.get(&ids[2]).await.unwrap().map(|run| run.status), Some(RunState::Dead));
        assert_eq!(store.get(&ids[3]).await.unwrap().map(|run| run.status), Some(RunState::Queued));
        assert!(store.get_inbound(&unmatched).await.unwrap().is_some(), "an unmatched message is kept");
        // The run accepted meanwhile is delivered, then purged in its turn once it is old enough.
        eventually("the fresh run is delivered, then purged", || gone(fresh.clone())).await;
        let metrics = service.render_metrics().await.unwrap();
        assert!(metrics.contains(r#"flowhost_retention_purged_total{kind="runs"} 3"#), "{metrics}");
        assert!(metrics.contains(r#"flowhost_retention_purged_total{kind="inbound"} 1"#), "{metrics}");
        assert!(metrics.contains(r#"flowhost_retention_purged_total{kind="outbox"} 2"#), "{metrics}");
        assert_eq!(store.get(&ids[2]).await.unwrap().map(|run| run.status), Some(RunState::Dead), "still kept");
        service.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_retention_off_nothing_is_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("flowhost.db")).await.unwrap());
        let ids = store.enqueue(&[run("ok")]).await.unwrap();
        let claimed = store.claim("earlier", 10, 1, now_ms(), LEASE).await.unwrap();
        store.complete(&claimed[0].lease().unwrap(), &Completion::Succeeded, &json!({}), &[]).await.unwrap();
        let retention = RetentionConfig { interval: Duration::from_millis(10), ..RetentionConfig::off() };
        let service = start(store.clone(), retention).await;
        // The same wait as a purge with an interval of 10 ms would need many times over.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(store.get(&ids[0]).await.unwrap().map(|run| run.status), Some(RunState::Succeeded));
        service.shutdown(Duration::from_secs(5)).await;
    }

    /// Accept latencies of `clients` concurrent callers sending one event at a time, until `enough` says so
    /// (asked between accepts, with how many were made).
    async fn accept_latencies<F, Fut>(service: Arc<Service>, clients: usize, enough: F) -> Vec<Duration>
    where
        F: Fn(usize) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = bool> + Send,
    {
        let enough = Arc::new(enough);
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for client in 0..clients {
            let (service, enough, made) = (service.clone(), enough.clone(), made.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = 0;
                while !enough(made.load(std::sync::atomic::Ordering::Relaxed)).await {
                    let data = json!({"customerId": format!("load-{client}-{}", i % 50)});
                    let event = LoyaltyEvent { event: "point_add".into(), data, customer: None, id: None };
                    let started = Instant::now();
                    service.accept(&[event]).await.unwrap();
                    latencies.push(started.elapsed());
                    made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    i += 1;
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all.sort();
        all
    }

    fn quantile(sorted: &[Duration], q: f64) -> Duration {
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    }

    fn ms(duration: Duration) -> f64 {
        duration.as_secs_f64() * 1000.0
    }

    /// A purge of a large backlog, with the service's own batches and pauses, while accepts go on: their latency
    /// is compared with the same accepts on the same store with retention off. Only a generous bound is asserted
    /// (timings vary with the machine and its load); the figures are printed, and BENCHMARKS.md ("Retention")
    /// records them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_of_a_large_backlog_does_not_slow_accepts_beyond_noise() {
        const BACKLOG: usize = 20_000;
        const CHUNK: usize = 1_000;
        const CLIENTS: usize = 4;
        const BASELINE_ACCEPTS: usize = 2_000;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("flowhost.db")).await.unwrap());
        let started = Instant::now();
        let mut last = String::new();
        for chunk in 0..BACKLOG / CHUNK {
            let runs: Vec<_> = (0..CHUNK).map(|i| run(&format!("old-{chunk}-{i}"))).collect();
            store.enqueue(&runs).await.unwrap();
            let claimed = store.claim("earlier", CHUNK, 1, now_ms(), LEASE).await.unwrap();
            let emitted = [NewOutboxEvent { node_id: "tell".into(), event: "points_seen".into(), payload: json!({}) }];
            let completions: Vec<_> = claimed
                .iter()
                .map(|run| crate::store::RunCompletion {
                    lease: run.lease().unwrap(),
                    completion: Completion::Succeeded,
                    trace: serde_json::value::to_raw_value(&json!({"run": run.id, "nodes": [{"nodeId": "tell"}]})).ok(),
                    emitted: emitted.to_vec(),
                })
                .collect();
            assert!(store.complete_many(&completions).await.unwrap().iter().all(Result::is_ok));
            last = claimed.last().unwrap().id.clone();
        }
        let backlog_took = started.elapsed();

        let service = Arc::new(start(store.clone(), RetentionConfig::off()).await);
        let baseline = accept_latencies(service.clone(), CLIENTS, |made| async move { made >= BASELINE_ACCEPTS }).await;
        service.shutdown(Duration::from_secs(10)).await;
        assert!(store.get(&last).await.unwrap().is_some(), "retention off purges nothing");

        // The defaults but the age: everything finished so far is old.
        let retention = RetentionConfig {
            max_age: Some(Duration::from_millis(1)),
            interval: Duration::from_millis(10),
            ..RetentionConfig::default()
        };
        let purge_started = Instant::now();
        let service = Arc::new(start(store.clone(), retention).await);
        let watched = store.clone();
        let during = accept_latencies(service.clone(), CLIENTS, move |made| {
            let (store, last) = (watched.clone(), last.clone());
            async move { made >= BASELINE_ACCEPTS && store.get(&last).await.unwrap().is_none() }
        })
        .await;
        let purge_took = purge_started.elapsed();
        service.shutdown(Duration::from_secs(10)).await;

        let (p50, p99) = (quantile(&baseline, 0.5), quantile(&baseline, 0.99));
        let (p50_purging, p99_purging) = (quantile(&during, 0.5), quantile(&during, 0.99));
        eprintln!(
            "backlog of {BACKLOG} finished runs built in {:.1} s; purged in {:.1} s while {} accepts ran ({CLIENTS} \
             clients); accept latency p50/p99: {:.2}/{:.2} ms without the purge ({} accepts), {:.2}/{:.2} ms during it",
            backlog_took.as_secs_f64(),
            purge_took.as_secs_f64(),
            during.len(),
            ms(p50),
            ms(p99),
            baseline.len(),
            ms(p50_purging),
            ms(p99_purging),
        );
        // Generous: a purge that held the writer for long (one transaction for the whole backlog, or no pause)
        // would stall accepts for seconds.
        let bound = p99 * 5 + Duration::from_millis(100);
        assert!(p99_purging <= bound, "p99 {p99_purging:?} during the purge, {p99:?} without it");
    }
}
