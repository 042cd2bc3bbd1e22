//! Pacing against the throttling mParticle emulator (loopback only): a burst over a connection's provisioned
//! throughput is delivered whole and in order without dead letters, refusals for the rate spend no attempts,
//! a service that refuses for ever dead-letters after the run's throttling budget, and one connection's
//! throttling leaves another alone.

use flowhost::delivery::{Service, ServiceConfig};
use flowhost::store::{RunFilter, RunState, SqliteStore, Store};
use flowhost::{Host, HostConfig};
use flowhost_cli::builtin::COMPONENTS;
use mparticle_emulator::{EmulatorConfig, FaultRule, RunningEmulator};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowhost::connector::SecretStore;

/// A service whose flows each send `point_add` events of their own name over their own connection (one API key
/// each) to the emulator.
struct Setup {
    emulator: RunningEmulator,
    service: Arc<Service>,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

/// `connections`: (connection name, throttle budget in ms). Connection `x` uses API key `key-x`.
async fn setup(connections: &[(&str, u64)]) -> Setup {
    let keys: Vec<(String, String)> =
        connections.iter().map(|(name, _)| (format!("key-{name}"), format!("secret-{name}"))).collect();
    let emulator = mparticle_emulator::start(
        EmulatorConfig { api_keys: keys.clone(), ..EmulatorConfig::default() },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut overrides = BTreeMap::new();
    let mut secrets = Vec::new();
    let mut flows = Vec::new();
    for (name, budget) in connections {
        let url: Map<String, Value> =
            [("eventsApiUrl".to_string(), Value::String(format!("{}/v2", emulator.url())))].into_iter().collect();
        overrides.insert(name.to_string(), url);
        secrets.push((format!("KEY_{name}"), format!("key-{name}")));
        secrets.push((format!("SECRET_{name}"), format!("secret-{name}")));
        flows.push((format!("{name}.json"), flow(name, *budget)));
    }
    let config = HostConfig {
        runtime: flowhost::connector::RuntimeConfig {
            cache_dir: Some(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pacing-compile-cache")),
            max_instances: 64,
            ..Default::default()
        },
        embedded_connectors: COMPONENTS.to_vec(),
        allow_private: true,
        connection_overrides: overrides,
        ..HostConfig::default()
    };
    let host = Host::new(config, SecretStore::from_pairs(secrets.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
        .await
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("flowhost.db")).await.unwrap());
    let service_config = ServiceConfig { idle_poll: Duration::from_millis(50), ..ServiceConfig::default() };
    let service = Arc::new(Service::start(host, store.clone(), &flows, Vec::new(), service_config).await.unwrap());
    Setup { emulator, service, store, _dir: dir }
}

/// Two attempts only: were refusals for the rate counted, a throttled burst would dead-letter at once.
fn flow(name: &str, budget_ms: u64) -> String {
    json!({
        "id": format!("send-{name}"),
        "version": "1.0.0",
        "trigger": {"type": "event", "event": format!("point_add_{name}"),
            "schema": {"type": "object", "required": ["customerId", "sequence"]}},
        "connections": {name: {"connector": "mparticle", "version": "^0.1", "config": {
            "apiKey": {"secret": format!("KEY_{name}")},
            "apiSecret": {"secret": format!("SECRET_{name}")},
            "environment": "development"}}},
        "nodes": [{"id": "send", "connector": {"connection": name,
            "capability": "triggerMarketingCommunication",
            "input": {"properties": {"eventName": "point_add", "eventType": "transaction",
                "payload": {"sequence": "{{ trigger.sequence }}"},
                "identityType": "customer_id", "identityValue": "{{ trigger.customerId }}"}}},
            "retry": {"maxAttempts": 2, "initialDelayMs": 100, "throttleBudgetMs": budget_ms}}]
    })
    .to_string()
}

async fn post(setup: &Setup, connection: &str, events: std::ops::Range<usize>, customers: usize) {
    let events: Vec<flowhost::delivery::LoyaltyEvent> = events
        .map(|i| {
            serde_json::from_value(json!({
                "event": format!("point_add_{connection}"),
                "id": format!("{connection}-{i}"),
                "data": {"customerId": format!("member-{}", i % customers), "sequence": i}
            }))
            .unwrap()
        })
        .collect();
    setup.service.accept(&events).await.unwrap();
}

async fn wait_until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Delivered sequences per API key and customer, in arrival order.
type Sequences = HashMap<String, HashMap<String, Vec<i64>>>;

/// Each API key's delivered sequences, per customer, in arrival order; and each key's last arrival.
fn delivered(emulator: &RunningEmulator) -> (Sequences, HashMap<String, i64>) {
    let mut by_key: Sequences = HashMap::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    for batch in emulator.batches() {
        let customer = batch.batch["user_identities"]["customer_id"].as_str().unwrap().to_string();
        let sequence = &batch.batch["events"][0]["data"]["custom_attributes"]["sequence"];
        let sequence = sequence.as_i64().or_else(|| sequence.as_str()?.parse().ok()).unwrap();
        by_key.entry(batch.api_key.clone()).or_default().entry(customer).or_default().push(sequence);
        let at = last.entry(batch.api_key.clone()).or_default();
        *at = (*at).max(batch.received_unix_ms);
    }
    (by_key, last)
}

async fn runs(store: &Arc<dyn Store>, status: RunState) -> Vec<flowhost::store::StoredRun> {
    store.list(&RunFilter { statuses: vec![status], limit: 1000, ..RunFilter::default() }).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_burst_is_paced_and_delivered_in_order_without_spending_attempts_or_slowing_another_connection() {
    let s = setup(&[("slow", 3_600_000), ("fast", 3_600_000)]).await;
    // 50 batches per second for the slow connection's key; the fast one's is not limited.
    s.emulator.set_batches_per_second(Some("key-slow"), Some(50));
    post(&s, "slow", 0..300, 10).await;
    post(&s, "fast", 0..200, 10).await;
    let emulator = s.emulator.handle();
    wait_until("every event delivered", Duration::from_secs(120), async || emulator.stats().accepted >= 500).await;

    let (by_key, last) = delivered(&s.emulator);
    for (key, expected) in [("key-slow", 300), ("key-fast", 200)] {
        let customers = &by_key[key];
        assert_eq!(customers.values().map(Vec::len).sum::<usize>(), expected, "{key}: each event once");
        for (customer, sequences) in customers {
            assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{key} {customer} out of order: {sequences:?}");
        }
    }
    // The slow connection was paced: it learnt its limit from a 429 or, sooner, from the percentage used that the
    // service sent on its 2xx answers (then there may be no 429 at all); and nothing was dead-lettered although
    // each run has two attempts.
    let stats = s.emulator.stats();
    let pacing = s.service.host().pacing().status();
    assert!(pacing["slow"].limit.is_some(), "{pacing:?} {stats:?}");
    assert!(stats.throttled_requests >= 1 || pacing["slow"].usage_percent.is_some(), "{pacing:?} {stats:?}");
    wait_until("every run settled", Duration::from_secs(30), async || {
        s.store.counts().await.unwrap().runs.succeeded == 500
    })
    .await;
    assert!(runs(&s.store, RunState::Dead).await.is_empty());
    // The fast connection was not held back by the slow one's pacing: it was done first.
    assert!(last["key-fast"] < last["key-slow"], "{last:?}");

    // Every throttled wait is in its run's trace, and the attempt it waited for is the one that succeeded.
    let succeeded = runs(&s.store, RunState::Succeeded).await;
    let throttled: Vec<&Value> = succeeded
        .iter()
        .filter_map(|run| run.trace.as_ref())
        .map(|trace| &trace["nodes"][0])
        .filter(|node| node["throttled"].as_array().is_some_and(|w| !w.is_empty()))
        .collect();
    assert!(stats.throttled_requests == 0 || !throttled.is_empty(), "no run recorded a refusal: {stats:?}");
    for node in throttled {
        let wait = &node["throttled"][0];
        assert!(wait["message"].as_str().unwrap().contains("rate"), "{wait}");
        assert!(wait["waitedMs"].as_u64().is_some(), "{wait}");
        let attempts = node["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "a refusal for the rate is not an attempt: {node}");
    }

    // The connections' pacing, as /metrics and /healthz show it.
    let pacing = s.service.host().pacing().status();
    assert_eq!(pacing["slow"].throttled >= 1, stats.throttled_requests >= 1, "{pacing:?} {stats:?}");
    assert_eq!((pacing["fast"].throttled, pacing["fast"].limit), (0, None), "{pacing:?}");
    // mParticle's `X-mp-rate-limit-percentage-used` (on its 2xx answers) reached the pacer through the connector
    // (WIT 0.2.0's `pacing.report-usage`); the unlimited key's answers carry none.
    assert!(pacing["slow"].usage_percent.is_some(), "{pacing:?}");
    assert_eq!(pacing["fast"].usage_percent, None, "{pacing:?}");
    let metrics = s.service.render_metrics().await.unwrap();
    for line in [
        "flowhost_connection_throttled_total{connection=\"slow\"}",
        "flowhost_connection_throttled_total{connection=\"fast\"} 0",
        "flowhost_connection_paused_seconds_total{connection=\"slow\"}",
        "flowhost_connection_send_rate{connection=\"fast\"}",
        "flowhost_connection_rate_limit{connection=\"slow\"}",
        "flowhost_connection_rate_limit_used_percent{connection=\"slow\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_throttles_for_ever_dead_letters_after_the_budget_with_the_reason() {
    let s = setup(&[("stuck", 3_000)]).await;
    s.emulator.add_fault(FaultRule::status(429).fraction(1.0).path_prefix("/v2/"));
    post(&s, "stuck", 0..1, 1).await;
    wait_until("the dead letter", Duration::from_secs(60), async || !runs(&s.store, RunState::Dead).await.is_empty())
        .await;
    let run = runs(&s.store, RunState::Dead).await.remove(0);
    let error = run.last_error.unwrap();
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("throttling budget (3s) is spent"), "{message}");
    assert_eq!(error["kind"], "rate-limited");
    let trace = run.trace.unwrap();
    let node = &trace["nodes"][0];
    // Refused again and again (Retry-After: 1), waiting each time, and never more than the one attempt.
    assert!(node["throttled"].as_array().unwrap().len() >= 2, "{node}");
    assert_eq!(node["attempts"].as_array().unwrap().len(), 1, "{node}");
    assert!(s.emulator.stats().faults_injected >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enormous_retry_after_is_capped_and_said_in_the_trace() {
    let s = setup(&[("odd", 2_000)]).await;
    // Ten days: more than the host honours, and more than the run's budget.
    s.emulator.add_fault(FaultRule::status(429).path_prefix("/v2/").retry_after(Some(864_000)));
    post(&s, "odd", 0..1, 1).await;
    wait_until("the dead letter", Duration::from_secs(60), async || !runs(&s.store, RunState::Dead).await.is_empty())
        .await;
    let run = runs(&s.store, RunState::Dead).await.remove(0);
    let trace = run.trace.unwrap();
    let wait = &trace["nodes"][0]["throttled"][0];
    assert_eq!(wait["retryAfterMs"], 864_000_000u64, "{wait}");
    let note = wait["note"].as_str().unwrap();
    assert!(note.contains("the service asked to wait 10days") && note.contains("1h"), "{note}");
    assert!(wait["waitedMs"].as_u64().unwrap() <= 2_000, "never past the budget: {wait}");
    // The connection stays paused (the service asked for it), so the run ends within its budget.
    let message = run.last_error.unwrap()["message"].as_str().unwrap().to_string();
    assert!(message.contains("throttling budget (2s) is spent"), "{message}");
}

/// `flowhost bench --mparticle-limit N`, small: both passes deliver every event once, in order; the paced one
/// without a dead letter. (Its speed figures go in BENCHMARKS.md, not here.)
#[test]
fn the_burst_bench_runs_with_pacing_and_without() {
    let report = crate::bench_report(&["--mparticle-limit", "50", "--events", "300", "--customers", "10"]);
    assert_eq!((report["limit"].as_u64(), report["events"].as_u64()), (Some(50), Some(300)), "{report}");
    for pass in ["paced", "unpaced"] {
        let figures = &report[pass];
        assert_eq!(figures["lost"], 0, "{pass}: {figures}");
        assert_eq!(figures["orderKept"], true, "{pass}: {figures}");
        assert!(figures["requests"].as_u64().unwrap() > 0, "{pass}: {figures}");
    }
    assert_eq!(report["paced"]["pacing"], true);
    assert_eq!(report["unpaced"]["pacing"], false);
    assert_eq!(report["paced"]["deadLetters"], 0, "{report}");
}
