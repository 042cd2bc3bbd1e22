//! Four CPU-bound connector runs beside normal traffic (issue 22, item 1): `flowhost serve` keeps answering
//! `/healthz` and accepting events, renews its leases (no run is taken over), delivers the normal events, and
//! stops each looping run at its deadline once, as its `maxAttempts: 1` says.
//!
//! The bounds asserted here are loose (a debug build on a shared 2-core machine); the figures are measured with
//! `FLOWHOST_ISOLATION_FIGURES=1 cargo test -p flowhost-tests --test e2e isolation -- --nocapture` and
//! recorded in BENCHMARKS.md.

use crate::serve::{ServiceDir, client, delivered_points, eventually, get, repo_flow, send};
use flowhost::store::now_ms;
use flowhost_tests::components;
use mparticle_emulator::EmulatorConfig;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const LOOPS: usize = 4;
const NORMAL_EVENTS: usize = 20;

fn spin_flow() -> String {
    json!({
        "id": "spin", "version": "1.0.0",
        "trigger": {"type": "event", "event": "spin"},
        "connections": {"loop": {"connector": "infinite-loop", "config": {}}},
        "nodes": [{"id": "spin", "connector": {"connection": "loop", "capability": "run", "input": {}},
                   "retry": {"maxAttempts": 1}}]
    })
    .to_string()
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_looping_connectors_leave_the_service_responsive_and_run_once() {
    let emulator = mparticle_emulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let service = ServiceDir::new(
        &emulator,
        &[("point-add.json", repo_flow("point-add-to-mparticle.json")), ("spin.json", spin_flow())],
        "",
    );
    let dir = service.config().parent().unwrap().to_path_buf();
    std::fs::create_dir(dir.join("connectors")).unwrap();
    std::fs::copy(components::INFINITE_LOOP, dir.join("connectors/infinite-loop.wasm")).unwrap();
    let config = std::fs::read_to_string(service.config()).unwrap();
    let config = config.replacen("allow_private = true\n", "allow_private = true\ndirs = [\"connectors\"]\n", 1);
    std::fs::write(service.config(), config).unwrap();
    // `--timeout 2`: each looping run is stopped after 2 s; leases last 3 s and are renewed every second.
    let server = tokio::task::block_in_place(|| service.start());
    let base = server.url.clone();

    // The baseline: one normal event alone, accept to delivery.
    let event = |i: usize| {
        json!({"event": "point_add", "id": format!("normal-{i}"), "customer": format!("c-{i}"),
               "data": {"customerId": format!("c-{i}"), "points": i, "balance": i * 10}})
    };
    let delivered = || delivered_points(&emulator.handle().batches()).len();
    let baseline_sent = now_ms();
    let (status, _) = send(client().post(format!("{base}/v1/events")).json(&[event(0)])).await;
    assert_eq!(status, 202);
    eventually(Duration::from_secs(30), "the baseline event", || async { delivered() >= 1 }).await;

    // Four loops, each for its own customer so that they run at once.
    let spins: Vec<Value> =
        (0..LOOPS).map(|i| json!({"event": "spin", "id": format!("spin-{i}"), "customer": format!("s-{i}")})).collect();
    let (status, accepted) = send(client().post(format!("{base}/v1/events")).json(&spins)).await;
    assert_eq!(status, 202, "{accepted}");
    let spin_runs: Vec<String> = accepted["accepted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["runs"][0]["runId"].as_str().unwrap().to_string())
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // While they loop: /healthz, one at a time, and normal events, one per request.
    let loops_started = Instant::now();
    let mut health_ms = Vec::new();
    let mut accept_ms = Vec::new();
    let mut posted_at = Vec::new();
    for i in 1..=NORMAL_EVENTS {
        let asked = Instant::now();
        let health = client().get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        health_ms.push(asked.elapsed().as_secs_f64() * 1000.0);
        let asked = Instant::now();
        posted_at.push(now_ms());
        let (status, body) = send(client().post(format!("{base}/v1/events")).json(&[event(i)])).await;
        assert_eq!(status, 202, "an accept failed while connectors loop: {body}");
        accept_ms.push(asked.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually(Duration::from_secs(60), "the normal events", || async { delivered() > NORMAL_EVENTS }).await;
    let looping_for = loops_started.elapsed();
    // Each normal event's delay, from its POST to its arrival at the emulator.
    let arrived: std::collections::HashMap<String, i64> = emulator
        .handle()
        .batches()
        .iter()
        .filter_map(|b| {
            Some((b.batch.pointer("/user_identities/customer_id")?.as_str()?.to_string(), b.received_unix_ms))
        })
        .collect();
    let baseline = arrived["c-0"] - baseline_sent;
    let mut delay_ms: Vec<f64> =
        (1..=NORMAL_EVENTS).map(|i| (arrived[&format!("c-{i}")] - posted_at[i - 1]).max(0) as f64).collect();

    // Each looping run was stopped at its deadline once, and failed: a timeout with no attempt left.
    for id in &spin_runs {
        let url = format!("{base}/v1/runs/{id}");
        eventually(Duration::from_secs(30), "the looping run to end", || {
            let url = url.clone();
            async move { !matches!(get(url).await["status"].as_str(), Some("queued" | "leased")) }
        })
        .await;
        let run = get(url).await;
        assert_eq!(run["status"], "failed", "{run}");
        assert_eq!(run["attempts"], 1, "one attempt, as maxAttempts says: {run}");
        assert!(run.to_string().contains("timed out after 2000 ms"), "{run}");
    }
    let log = service.log();
    assert!(!log.contains("lease was lost") && !log.contains("taken over"), "a lease was lost:\n{log}");

    let (p99_health, max_health) = (percentile(&mut health_ms, 0.99), percentile(&mut health_ms, 1.0));
    let (p50_accept, p99_accept) = (percentile(&mut accept_ms, 0.5), percentile(&mut accept_ms, 0.99));
    let (p50_delay, max_delay) = (percentile(&mut delay_ms, 0.5), percentile(&mut delay_ms, 1.0));
    if std::env::var_os("FLOWHOST_ISOLATION_FIGURES").is_some() {
        eprintln!(
            "{LOOPS} looping connectors, {NORMAL_EVENTS} normal events over {looping_for:.1?}: healthz p99 \
             {p99_health:.1} ms (max {max_health:.1}); accept p50 {p50_accept:.1} ms, p99 {p99_accept:.1} ms; \
             baseline delivery {baseline} ms; accept to delivery p50 {p50_delay:.0} ms, max {max_delay:.0} ms"
        );
    }
    // Loose bounds (the issue saw 32 s and 90 s of refusals before): the figures are in BENCHMARKS.md.
    assert!(max_health < 2000.0, "healthz took {max_health} ms");
    assert!(p99_accept < 2000.0, "accepts took {p99_accept} ms");
    assert!(max_delay < 10_000.0, "a normal event took {max_delay} ms to be delivered");
}
