//! How fast the web console's pages answer with 100,000 runs in the store (SQLite): each page fetched over HTTP
//! on loopback from `flowhost::server::router`, as a browser would. The store holds 100,000 runs of one flow
//! over 2,000 customers: most succeeded with a trace, some failed, some dead with runs queued behind them (a dead
//! run holds its customer's later runs: about 480 dead runs hold about 12,000 queued ones).
//!
//! `cargo bench -p flowhost-tests --bench console` (full) or `... --bench console -- --quick`. Under
//! `cargo test --benches` (each page once, debug build) a store of 2,000 runs does.

use criterion::Criterion;
use flowhost::delivery::{Service, ServiceConfig};
use flowhost::server::{ApiState, router};
use flowhost::store::{Completion, NewRun, RunCompletion, SqliteStore, Store, now_ms};
use flowhost::{Host, HostConfig, connector::SecretStore};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RUNS: usize = 100_000;
const TEST_RUNS: usize = 2_000;
const CUSTOMERS: usize = 2_000;
const BATCH: usize = 1_000;

/// A flow without connectors: its runs could not reach anything even if a worker took one.
const FLOW: &str = r#"{
  "id": "point-add-note", "version": "1.0.0",
  "trigger": {"type": "event", "event": "point_add"},
  "nodes": [
    {"id": "big", "condition": {"if": "trigger.points > 100", "then": "note", "else": "skip"}},
    {"id": "note", "emit": {"event": "big_point_add", "fields": {"customer": "{customer}"}}},
    {"id": "skip", "emit": {"event": "small_point_add"}}
  ]
}"#;

fn new_runs(start: usize, n: usize) -> Vec<NewRun> {
    (start..start + n)
        .map(|i| {
            let customer = format!("member-{}", i % CUSTOMERS);
            NewRun {
                flow_id: "point-add-note".into(),
                flow_version: "1.0.0".into(),
                connections: Vec::new(),
                ordering_key: format!("point-add-note/{customer}"),
                customer: Some(customer),
                event: json!({"customerId": format!("member-{}", i % CUSTOMERS), "points": i % 300}),
                dedup_key: None,
            }
        })
        .collect()
}

fn trace(id: &str, failed: bool) -> Value {
    let mut node = json!({"nodeId": "big", "kind": "condition", "status": "succeeded", "startedMs": 0,
                          "durationMs": 1, "next": "note"});
    if failed {
        node = json!({"nodeId": "big", "kind": "condition", "status": "failed", "startedMs": 0, "durationMs": 1,
                      "error": {"nodeId": "big", "kind": "expression", "message": "no such key: points"}});
    }
    json!({"id": id, "flowId": "point-add-note", "flowVersion": "1.0.0",
           "status": if failed { "failed" } else { "succeeded" }, "startedAt": "2026-12-05T03:00:00Z",
           "durationMs": 2, "trigger": {"points": 1}, "nodes": [node], "emitted": []})
}

/// Fills the store: each claimed run ends (succeeded, 1 in 50 failed, 1 in 200 dead); a dead run's customer's later
/// runs are not claimed and stay queued behind it. Then one more run behind the last dead one.
async fn fill(store: &Arc<dyn Store>, runs: usize) -> (String, String) {
    let lease = Duration::from_secs(300);
    let mut dead_customer = String::new();
    let mut dead_run = String::new();
    for start in (0..runs).step_by(BATCH) {
        store.enqueue(&new_runs(start, BATCH.min(runs - start))).await.unwrap();
        let claimed = store.claim("bench", BATCH, BATCH, now_ms(), lease).await.unwrap();
        let mut completions = Vec::new();
        for (k, run) in claimed.into_iter().enumerate() {
            let lease = run.lease().unwrap();
            if (start + k) % 200 == 7 {
                let error = json!({"kind": "transient", "message": "HTTP 503 from the service"});
                store.dead_letter(&lease, &error, &trace(&run.id, true)).await.unwrap();
                dead_customer = run.customer.clone().unwrap_or_default();
                dead_run = run.id.clone();
                continue;
            }
            let failed = (start + k) % 50 == 3;
            let completion = if failed {
                Completion::Failed { error: json!({"kind": "expression", "message": "no such key: points"}) }
            } else {
                Completion::Succeeded
            };
            let trace = serde_json::value::to_raw_value(&trace(&run.id, failed)).unwrap();
            completions.push(RunCompletion { lease, completion, trace: Some(trace), emitted: Vec::new() });
        }
        assert!(store.complete_many(&completions).await.unwrap().iter().all(Result::is_ok));
    }
    // A run behind the last dead one: queued, not claimable.
    let behind = NewRun {
        customer: Some(dead_customer.clone()),
        ordering_key: format!("point-add-note/{dead_customer}"),
        ..new_runs(0, 1).remove(0)
    };
    store.enqueue(&[behind]).await.unwrap();
    (dead_customer, dead_run)
}

fn main() {
    // SAFETY: nothing has used SQLite yet, and no other thread is running.
    unsafe { flowhost::store::use_the_global_allocator_for_sqlite() }.expect("SQLite's allocator");
    let full = std::env::args().any(|a| a == "--bench");
    let runs = if full { RUNS } else { TEST_RUNS };
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (base, customer, dead_run, _service) = tokio.block_on(async {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("flowhost.db")).await.unwrap());
        let started = std::time::Instant::now();
        let (customer, dead_run) = fill(&store, runs).await;
        eprintln!("{runs} runs stored in {:.1} s", started.elapsed().as_secs_f64());
        let host = Host::new(HostConfig::default(), SecretStore::default()).await.unwrap();
        let flows = vec![("point-add-note.json".to_string(), FLOW.to_string())];
        let service =
            Arc::new(Service::start(host, store, &flows, Vec::new(), ServiceConfig::default()).await.unwrap());
        let state =
            ApiState { service: service.clone(), max_body_bytes: 1 << 20, api_token: None, metrics_token: None };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router(state)).await });
        (base, customer, dead_run, service)
    });
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let pages = [
        ("overview", "/ui".to_string()),
        ("workflow logs", "/ui/runs".to_string()),
        ("workflow logs, failures", "/ui/runs?status=failed%2Cdead".to_string()),
        ("workflow logs, from a time", "/ui/runs?from=2020-01-01T00%3A00".to_string()),
        // The worst case of a time filter: nothing matches, so every run is looked at.
        ("workflow logs, until a time", "/ui/runs?until=2020-01-01T00%3A00".to_string()),
        ("customer", format!("/ui/customers/{customer}")),
        ("run", format!("/ui/runs/{dead_run}")),
        ("resend queue", "/ui/queue".to_string()),
        ("resend queue, dead runs", "/ui/queue?status=dead".to_string()),
        ("bulk retry of a flow's dead runs, confirmation", "/ui/queue-bulk/retry?flow=point-add-note".to_string()),
        ("inbound", "/ui/inbound".to_string()),
        ("connections", "/ui/connections".to_string()),
        ("flows", "/ui/flows".to_string()),
        ("flow graph", "/ui/flows/point-add-note".to_string()),
        ("mappings", "/ui/mappings".to_string()),
        // The API's listings, which answer from the same summaries.
        ("API runs", "/v1/runs".to_string()),
        ("API a customer's runs", format!("/v1/runs?customer={customer}")),
        ("API queue", "/v1/queue".to_string()),
    ];
    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group(format!("console with {runs} runs"));
    for (name, path) in &pages {
        let url = format!("{base}{path}");
        group.bench_function(*name, |b| {
            b.iter(|| {
                tokio.block_on(async {
                    let response = client.get(&url).send().await.unwrap();
                    assert_eq!(response.status(), 200, "{url}");
                    response.bytes().await.unwrap()
                })
            })
        });
    }
    group.finish();
    criterion.final_summary();
}
