//! The SQLite store's cost per run, the part of delivery that one writer serialises: enqueue (accept), claim
//! and complete, each in batches of 50 as the service's group commits make them, with a backlog of queued runs
//! over 100 ordering keys (the `flowhost bench` shape). Times are per batch; the summary divides by 50.
//!
//! `cargo bench -p flowhost-tests --bench store` (full) or `... --bench store -- --quick` (CI smoke test).

use criterion::Criterion;
use flowhost::store::{Completion, NewRun, RunCompletion, SqliteStore, Store, now_ms};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The allocator the `flowhost` binary runs with (host/src/main.rs), SQLite's included.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 50;
const KEYS: usize = 100;
/// Queued runs before timing starts.
const BACKLOG: usize = 20_000;
/// Under `cargo test --benches` (each benchmark once, debug build) a small backlog does.
const TEST_BACKLOG: usize = 1_000;

fn new_runs(start: usize, n: usize) -> Vec<NewRun> {
    (start..start + n)
        .map(|i| {
            let customer = format!("member-{}", i % KEYS);
            NewRun {
                flow_id: format!("point-add-brand-{}", i % 10),
                flow_version: "sha256:bench".into(),
                connections: vec![format!("mparticle-{}", i % 10)],
                ordering_key: format!("point-add-brand-{}/{customer}", i % 10),
                customer: Some(customer.clone()),
                event: json!({"type": "point_add", "customer": customer, "id": format!("evt-{i}"),
                              "data": {"points": 100, "reason": "purchase", "brand": i % 10}}),
                dedup_key: Some(format!("evt-{i}")),
            }
        })
        .collect()
}

/// A trace the size of a delivered `point_add` run's (about 1.3 KB), with the run's own id in it, as a real
/// trace has (traces of a batch are stored together, compressed: identical ones would flatter that).
fn trace(run_id: &str) -> Value {
    json!({"id": run_id, "status": "succeeded", "nodes": [{"id": "send", "kind": "connector", "status": "succeeded",
           "input": {"properties": {"eventName": "point_add", "eventType": "transaction", "payload": {"points": 100},
                                     "identityType": "customer_id", "identityValue": "member-1"}},
           "output": {"status": 202, "sourceRequestId": request_id(), "batches": 1,
                      "endpoint": "bulkevents"},
           "log": ["triggerMarketingCommunication: sending 10 batch(es) of 10 calls (3300 bytes) to /bulkevents",
                   "POST http://127.0.0.1:40000/v2/bulkevents -> HTTP 202"],
           "attempts": [{"attempt": 1, "startedMs": 0, "durationMs": 6}]}],
           "padding": "x".repeat(600)})
}

/// A different id each time, like mParticle's request ids.
fn request_id() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{:032x}", now.as_nanos().wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn bench(c: &mut Criterion) {
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = tokio.block_on(SqliteStore::open(&dir.path().join("bench.db"))).unwrap();
    let lease = Duration::from_secs(60);
    // `cargo bench` passes `--bench`; `cargo test` does not.
    let backlog = if std::env::args().any(|a| a == "--bench") { BACKLOG } else { TEST_BACKLOG };
    for chunk in new_runs(0, backlog).chunks(500) {
        tokio.block_on(store.enqueue(chunk)).unwrap();
    }
    let mut next = backlog;
    let complete = |runs: Vec<flowhost::store::StoredRun>| {
        let completions: Vec<RunCompletion> = runs
            .iter()
            .map(|run| RunCompletion {
                lease: run.lease().unwrap(),
                completion: Completion::Succeeded,
                trace: serde_json::value::to_raw_value(&trace(&run.id)).ok(),
                emitted: Vec::new(),
            })
            .collect();
        completions
    };

    let mut group = c.benchmark_group("store");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5)).sample_size(30);
    group.bench_function("enqueue_50", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let runs = new_runs(next, BATCH);
                next += BATCH;
                let started = Instant::now();
                tokio.block_on(store.enqueue(&runs)).unwrap();
                total += started.elapsed();
            }
            total
        })
    });
    group.bench_function("claim_50", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Untimed: keep the backlog as it is (one batch in for each batch out).
                tokio.block_on(store.enqueue(&new_runs(next, BATCH))).unwrap();
                next += BATCH;
                let started = Instant::now();
                let runs = tokio.block_on(store.claim("bench", BATCH, 1, now_ms(), lease)).unwrap();
                total += started.elapsed();
                assert_eq!(runs.len(), BATCH);
                tokio.block_on(store.complete_many(&complete(runs))).unwrap();
            }
            total
        })
    });
    group.bench_function("complete_50", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                tokio.block_on(store.enqueue(&new_runs(next, BATCH))).unwrap();
                next += BATCH;
                let runs = tokio.block_on(store.claim("bench", BATCH, 1, now_ms(), lease)).unwrap();
                assert_eq!(runs.len(), BATCH);
                let completions = complete(runs);
                let started = Instant::now();
                let results = tokio.block_on(store.complete_many(&completions)).unwrap();
                total += started.elapsed();
                assert!(results.iter().all(Result::is_ok));
            }
            total
        })
    });
    group.finish();
}

fn main() {
    // SAFETY: nothing has used SQLite yet, and no other thread is running.
    unsafe { flowhost::store::use_the_global_allocator_for_sqlite() }.expect("SQLite's allocator");
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
}
