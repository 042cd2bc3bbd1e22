//! Numbers that an `f64` or a 64-bit integer cannot hold go through `flowhost serve` digit for digit (issue 22): an
//! accepted event's integers above 2^64 and long decimals reach the connector's input (and so mParticle), the
//! stored run and the API's answers as they were sent, not rounded to the nearest `f64`.

use crate::serve::{ServiceDir, client, repo_flow, send};
use mparticle_emulator::EmulatorConfig;
use serde_json::Value;
use std::time::{Duration, Instant};

/// 2^64 + 1: no u64, and its nearest f64 is 2^64.
const ABOVE_U64: &str = "18446744073709551617";
/// Below i64's range.
const BELOW_I64: &str = "-92233720368547758090";
/// 0.1 with every digit of the f64 nearest to it, and more: an f64 keeps 17 of them.
const LONG_DECIMAL: &str = "0.10000000000000000555111512312578270211815834045410156251";
/// A decimal whose integer part alone is past an f64's precision.
const BIG_DECIMAL: &str = "12345678901234567890.123456789012345678901234567890";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_past_f64_and_u64_reach_the_connector_the_stored_run_and_the_api_digit_for_digit() {
    let emulator = mparticle_emulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut flow: Value = serde_json::from_str(&repo_flow("point-add-to-mparticle.json")).unwrap();
    flow["trigger"]["schema"]["properties"]["balance"] = serde_json::json!({"type": "integer"});
    flow["trigger"]["schema"]["properties"]["ratio"] = serde_json::json!({"type": "number"});
    flow["trigger"]["schema"]["properties"]["amount"] = serde_json::json!({"type": "number", "minimum": 0});
    let payload = &mut flow["nodes"][0]["connector"]["input"]["properties"]["payload"];
    payload["ratio"] = "{{ trigger.ratio }}".into();
    payload["amount"] = "{{ trigger.amount }}".into();
    let service = ServiceDir::new(&emulator, &[("point-add.json", flow.to_string())], "");
    let server = service.start();
    let base = &server.url;

    // Sent as text: the digits are the test's, whatever a JSON library would make of them.
    let body = format!(
        r#"{{"event": "point_add", "customer": "c-big", "data": {{"customerId": "c-big", "points": {ABOVE_U64},
            "balance": {BELOW_I64}, "ratio": {LONG_DECIMAL}, "amount": {BIG_DECIMAL}}}}}"#
    );
    let request = client().post(format!("{base}/v1/events")).header("content-type", "application/json").body(body);
    let (status, accepted) = send(request).await;
    assert_eq!(status, 202, "{accepted}");
    let run_id = accepted["accepted"][0]["runs"][0]["runId"].as_str().unwrap().to_string();

    // mParticle receives each as the attribute's text (its custom attributes are strings), every digit of it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let attributes = loop {
        let batches = emulator.handle().batches();
        if let Some(batch) = batches.iter().find(|b| b.batch["user_identities"]["customer_id"] == "c-big") {
            break batch.batch["events"][0]["data"]["custom_attributes"].clone();
        }
        assert!(Instant::now() < deadline, "nothing reached mParticle:\n{}", service.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(attributes["points"], ABOVE_U64, "{attributes}");
    assert_eq!(attributes["balance"], BELOW_I64, "{attributes}");
    assert_eq!(attributes["ratio"], LONG_DECIMAL, "{attributes}");
    assert_eq!(attributes["amount"], BIG_DECIMAL, "{attributes}");

    // The stored run, as the API answers it: the event and the node's resolved input, as text.
    let deadline = Instant::now() + Duration::from_secs(60);
    let run = loop {
        let response = client().get(format!("{base}/v1/runs/{run_id}")).send().await.unwrap();
        let text = response.text().await.unwrap();
        if text.contains("\"status\":\"succeeded\"") {
            break text;
        }
        assert!(Instant::now() < deadline, "the run did not succeed: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for number in [ABOVE_U64, BELOW_I64, LONG_DECIMAL, BIG_DECIMAL] {
        // In the event, and in the node's input.
        assert!(run.matches(&format!(":{number}")).count() >= 2, "{number} in the event and the input: {run}");
    }
}
