//! The example flows of `flows/` run against the mParticle emulator, asserting what mParticle received;
//! retry policies against real fault injection; and the demo itself.

use flowhost::connector::{HttpLimits, RuntimeConfig, SandboxLimits};
use flowhost::flow::{NodeStatus, RunStatus};
use flowhost::{Host, LoadedFlow};
use flowhost_cli::demo::{EXAMPLE_FLOWS, emulator_host_config};
use mparticle_emulator::{EmulatorConfig, FaultRule, RunningEmulator};
use serde_json::{Value, json};
use std::time::Duration;

struct Setup {
    host: Host,
    emulator: RunningEmulator,
    _cache: tempfile::TempDir,
}

async fn setup(http_timeout: Duration) -> Setup {
    let emulator = mparticle_emulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    let runtime = RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        max_instances: 32,
        limits: SandboxLimits { timeout: Duration::from_secs(10), ..SandboxLimits::default() },
        http: HttpLimits { request_timeout: http_timeout, ..HttpLimits::default() },
        ..RuntimeConfig::default()
    };
    let (config, secrets) = emulator_host_config(&emulator.url(), runtime);
    let host = Host::new(config, secrets).await.unwrap();
    Setup { host, emulator, _cache: cache }
}

fn example(host: &Host, file: &str) -> LoadedFlow {
    let (_, text) = EXAMPLE_FLOWS.iter().find(|(name, _)| *name == file).unwrap();
    host.load(text).unwrap_or_else(|problems| panic!("{file}: {problems:?}"))
}

/// The only batch the emulator accepted.
fn only_batch(emulator: &RunningEmulator) -> Value {
    let batches = emulator.batches();
    assert_eq!(batches.len(), 1, "{batches:#?}");
    batches[0].batch.clone()
}

#[tokio::test]
async fn point_add_sends_a_custom_event() {
    let s = setup(Duration::from_secs(5)).await;
    let flow = example(&s.host, "point-add-to-mparticle.json");
    let run = s.host.run(&flow, json!({"customerId": "c-1", "points": 150, "balance": 1250})).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.to_text());
    let batch = only_batch(&s.emulator);
    assert_eq!(batch["environment"], "development");
    assert_eq!(batch["user_identities"], json!({"customer_id": "c-1"}));
    let event = &batch["events"][0];
    assert_eq!(event["event_type"], "custom_event");
    assert_eq!(event["data"]["event_name"], "point_add");
    assert_eq!(event["data"]["custom_event_type"], "transaction");
    assert_eq!(event["data"]["custom_attributes"], json!({"points": "150", "balance": "1250"}));
    assert!(batch["source_request_id"].as_str().is_some_and(|id| !id.is_empty()));

    let invalid = s.host.run(&flow, json!({"customerId": "c-1", "points": "many"})).await.unwrap_err();
    let text = invalid.to_string();
    assert!(text.contains("/points") && text.contains("\"balance\" is a required property"), "{text}");
}

#[tokio::test]
async fn reward_claim_carries_the_reward_id() {
    let s = setup(Duration::from_secs(5)).await;
    let flow = example(&s.host, "reward-claim-external-event.json");
    let run = s.host.run(&flow, json!({"customerId": "c-2", "rewardId": "rw-42"})).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.to_text());
    let data = &only_batch(&s.emulator)["events"][0]["data"];
    assert_eq!(data["event_name"], "reward_claim");
    assert_eq!(data["custom_attributes"]["reward_id"], "rw-42");
}

#[tokio::test]
async fn profile_sync_sets_reserved_and_custom_user_attributes() {
    let s = setup(Duration::from_secs(5)).await;
    let flow = example(&s.host, "profile-sync.json");
    let event =
        json!({"customerId": "c-3", "firstName": "Ada", "lastName": "Lovelace", "country": "GB", "tier": "gold"});
    let run = s.host.run(&flow, event).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.to_text());
    let batch = only_batch(&s.emulator);
    assert_eq!(
        batch["user_attributes"],
        json!({"$firstname": "Ada", "$lastname": "Lovelace", "$country": "GB", "antavo_customer_id": "c-3", "tier": "gold"})
    );
    assert!(batch["events"].as_array().is_none_or(Vec::is_empty), "attributes only: {batch}");
}

#[tokio::test]
async fn account_lifecycle_creates_reads_renames_lists_and_deletes() {
    let s = setup(Duration::from_secs(5)).await;
    let flow = example(&s.host, "account-lifecycle.json");
    let run = s.host.run(&flow, json!({"displayName": "Brand X", "renameTo": "Brand X (EU)"})).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.to_text());
    let outputs: Vec<&Value> = run.nodes.iter().map(|n| n.output.as_ref().unwrap()).collect();
    let id = outputs[0]["id"].clone();
    assert_eq!(outputs[0]["name"], "Brand X");
    assert_eq!(outputs[1]["id"], id);
    assert_eq!(outputs[2]["name"], "Brand X (EU)");
    assert_eq!(outputs[3], &json!({"audiences": []}));
    assert_eq!(outputs[4]["deleted"], true);
    // The account is gone: running the flow's getAccount step again now fails with not-found.
    let again = s.host.run(&flow, json!({"displayName": "Brand X", "renameTo": "Brand X (EU)"})).await.unwrap();
    assert_eq!(again.status, RunStatus::Succeeded, "the name is free again after the delete: {}", again.to_text());
    assert_eq!(s.emulator.stats().tokens_issued, 1, "the OAuth token is cached across runs");
}

#[tokio::test]
async fn calculated_attributes_branch_and_loop() {
    let s = setup(Duration::from_secs(5)).await;
    let flow = example(&s.host, "calculated-attributes.json");
    let run = s.host.run(&flow, json!({"workspace": "1234"})).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.to_text());
    let names: Vec<&str> = run.emitted.iter().map(|e| e.payload["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"Lifetime Points"), "{names:?}");
    assert!(run.emitted.iter().all(|e| e.event == "calculated_attribute"));

    let filtered = s.host.run(&flow, json!({"workspace": "1234", "name": "lifetime points"})).await.unwrap();
    assert_eq!(filtered.emitted.len(), 1, "{}", filtered.to_text());

    let none = s.host.run(&flow, json!({"workspace": "1234", "name": "no such attribute"})).await.unwrap();
    assert_eq!(none.emitted.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(), ["no_calculated_attributes"]);

    let unknown = s.host.run(&flow, json!({"workspace": "999999"})).await.unwrap();
    assert_eq!(unknown.status, RunStatus::Failed);
    assert_eq!(unknown.error.unwrap().kind.to_string(), "not-found");
}

#[tokio::test]
async fn upload_event_batch_sends_the_batch_built_from_the_event() {
    let s = setup(Duration::from_secs(5)).await;
    let flow = example(&s.host, "upload-event-batch.json");
    let event =
        json!({"customerId": "c-4", "email": "g@example.com", "orderId": "o-1", "amount": 42.5, "currency": "EUR"});
    let run = s.host.run(&flow, event).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.to_text());
    let batch = only_batch(&s.emulator);
    assert_eq!(batch["user_identities"], json!({"customer_id": "c-4", "email": "g@example.com"}));
    assert_eq!(batch["user_attributes"], json!({"last_order_id": "o-1"}));
    assert_eq!(
        batch["events"][0]["data"]["custom_attributes"],
        json!({"order_id": "o-1", "amount": "42.5", "currency": "EUR"})
    );
}

#[tokio::test]
async fn a_503_is_retried_and_succeeds() {
    let s = setup(Duration::from_secs(5)).await;
    let flow = example(&s.host, "point-add-to-mparticle.json");
    s.emulator.add_fault(FaultRule::status(503).times(1).path_prefix("/v2/"));
    let run = s.host.run(&flow, json!({"customerId": "c-5", "points": 1, "balance": 1})).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.to_text());
    let attempts = &run.nodes[0].attempts;
    assert_eq!(attempts.len(), 2);
    let first = attempts[0].error.as_ref().unwrap();
    assert_eq!(first.kind.to_string(), "transient");
    let delay = attempts[0].retry_after_ms.unwrap();
    assert!((400..=600).contains(&delay), "500 ms ± 20% jitter, got {delay}");
    assert!(attempts[1].started_ms >= attempts[0].started_ms + delay);
    assert_eq!(s.emulator.batches().len(), 1);
}

#[tokio::test]
async fn a_400_is_not_retried() {
    let s = setup(Duration::from_secs(5)).await;
    let flow = example(&s.host, "point-add-to-mparticle.json");
    s.emulator.add_fault(FaultRule::status(400).times(1).path_prefix("/v2/"));
    let run = s.host.run(&flow, json!({"customerId": "c-6", "points": 1, "balance": 1})).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.nodes[0].status, NodeStatus::Failed);
    assert_eq!(run.nodes[0].attempts.len(), 1);
    assert_eq!(run.error.unwrap().kind.to_string(), "permanent");
    assert!(s.emulator.batches().is_empty());
}

#[tokio::test]
async fn a_429_waits_for_retry_after() {
    let s = setup(Duration::from_secs(5)).await;
    let flow = example(&s.host, "point-add-to-mparticle.json");
    s.emulator.add_fault(FaultRule::status(429).times(1).path_prefix("/v2/").retry_after(Some(1)));
    let run = s.host.run(&flow, json!({"customerId": "c-7", "points": 1, "balance": 1})).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.to_text());
    // A refusal for the rate spends no attempt: it is a throttled wait in the trace.
    assert_eq!(run.nodes[0].attempts.len(), 1, "{}", run.to_text());
    let wait = &run.nodes[0].throttled[0];
    assert_eq!(wait.retry_after_ms, Some(1000), "the Retry-After as read: {wait:?}");
    // Measured from the refusal, in whole milliseconds: a second, give or take the rounding.
    assert!(wait.waited_ms >= 990, "Retry-After: 1 is honoured: {wait:?}");
}

/// mParticle got the batch but the answer never came: the retry re-sends the same source_request_id and
/// mParticle de-duplicates it.
#[tokio::test]
async fn a_timeout_after_delivery_is_retried_and_deduplicated() {
    let s = setup(Duration::from_millis(500)).await;
    let flow = example(&s.host, "point-add-to-mparticle.json");
    s.emulator.add_fault(FaultRule::stall(1500).after_processing().times(1).path_prefix("/v2/"));
    let run = s.host.run(&flow, json!({"customerId": "c-8", "points": 1, "balance": 1})).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.to_text());
    assert_eq!(run.nodes[0].attempts.len(), 2);
    let stats = s.emulator.stats();
    assert_eq!((stats.accepted, stats.duplicates), (1, 1), "{stats:?}");
    assert_eq!(s.emulator.batches().len(), 1);
}

#[tokio::test]
async fn the_demo_runs_every_example() {
    let cache = tempfile::tempdir().unwrap();
    let runtime =
        RuntimeConfig { cache_dir: Some(cache.path().to_path_buf()), max_instances: 32, ..RuntimeConfig::default() };
    let mut out = Vec::new();
    let runs = flowhost_cli::demo::run(runtime, &mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(runs.len(), 12, "the seven example flows run inline, and five runs of the durable service");
    assert!(runs.iter().all(|r| r.status == RunStatus::Succeeded), "{text}");
    assert!(text.contains("What mParticle received") && text.contains("12 runs, 12 succeeded, 0 failed."), "{text}");
    assert!(text.contains("2 attempts"), "the injected 503 is retried: {text}");
    assert!(!text.contains(mparticle_emulator::DEMO_API_SECRET), "no secret is printed");
    assert!(!text.contains(mparticle_emulator::DEMO_CLIENT_SECRET), "no secret is printed");
    // Both directions between Antavo and mParticle, through both connectors and both emulators.
    for needle in [
        "and, through the Antavo connector, an Antavo event (flow mparticle-coupon-to-antavo)",
        "of mparticle-coupon-to-antavo 1.0.0: succeeded",
        "of antavo-point-add-to-mparticle 1.0.0: succeeded",
        "of antavo-profile-to-mparticle 1.0.0: succeeded",
        "coupon_redeem for cust-1001",
        "\"$firstname\":\"Grace\"",
        "HTTP 401: {\"error\":\"Antavo webhook refused: The signatures do not match",
        "inbound messages stored from Antavo: 2",
        "What Antavo received",
    ] {
        assert!(text.contains(needle), "{needle}:\n{text}");
    }
    assert!(!text.contains(antavo_emulator::DEMO_API_SECRET), "no secret is printed");
}
