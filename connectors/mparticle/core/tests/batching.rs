//! `invoke_batch`: many calls of one capability sent together, as `/bulkevents` requests within mParticle's
//! limits, each call keeping its own batch, `source_request_id` and result. No network.

mod common;

use common::*;
use mparticle_core::validate::{MAX_BATCHES_PER_REQUEST, MAX_REQUEST_BYTES};
use mparticle_core::{Error, source_request_id};
use serde_json::{Value, json};

fn point_add_for(member: &str) -> Value {
    wrap(json!({"eventName": "point_add", "eventType": "transaction", "payload": {"points": 10},
                "identityType": "customer_id", "identityValue": member}))
}

fn items(n: usize) -> Vec<(Value, mparticle_core::Context)> {
    (0..n).map(|i| (point_add_for(&format!("member-{i}")), context(&format!("run-{i}/send"), 1))).collect()
}

#[test]
fn calls_go_out_as_one_bulk_request_each_with_its_own_batch_and_id() {
    let mut host = FakeHost::new().answer(202, "");
    let results = invoke_batch(&mut host, "triggerMarketingCommunication", &connection(), &items(3));
    assert_eq!(host.urls(), [format!("POST {BASE}/v2/bulkevents")]);
    let body = host.body(0);
    let batches = body.as_array().expect("an array of batches");
    assert_eq!(batches.len(), 3);
    for (i, (batch, result)) in batches.iter().zip(&results).enumerate() {
        let id = source_request_id(&format!("run-{i}/send"), None);
        assert_eq!(batch["source_request_id"], id.as_str());
        assert_eq!(batch["user_identities"]["customer_id"], format!("member-{i}"));
        let output = result.as_ref().expect("each call succeeds");
        assert_eq!(output["sourceRequestId"], id.as_str());
        assert_eq!(output["sourceRequestIds"], json!([id]));
        assert_eq!(output["batches"], 1);
        assert_eq!(output["endpoint"], "bulkevents");
        assert_eq!(output["status"], 202);
    }
    assert!(host.log_text().contains("sending 3 batch(es) of 3 calls"), "{}", host.log_text());
}

#[test]
fn a_single_call_goes_to_the_events_endpoint_as_before() {
    let mut host = FakeHost::new().answer(202, "");
    let results = invoke_batch(&mut host, "triggerMarketingCommunication", &connection(), &items(1));
    assert_eq!(host.urls(), [format!("POST {BASE}/v2/events")]);
    assert_eq!(results[0].as_ref().unwrap()["endpoint"], "events");
}

#[test]
fn a_bad_input_fails_alone_and_is_not_sent() {
    let mut calls = items(3);
    calls[1].0 = wrap(json!({"eventName": "", "identityType": "customer_id", "identityValue": "x"}));
    let mut host = FakeHost::new().answer(202, "");
    let results = invoke_batch(&mut host, "triggerMarketingCommunication", &connection(), &calls);
    assert!(matches!(results[1], Err(Error::InvalidInput(_))), "{:?}", results[1]);
    assert!(results[0].is_ok() && results[2].is_ok());
    let body = host.body(0);
    let sent: Vec<&str> =
        body.as_array().unwrap().iter().map(|b| b["user_identities"]["customer_id"].as_str().unwrap()).collect();
    assert_eq!(sent, ["member-0", "member-2"]);
}

#[test]
fn a_refused_request_fails_every_call_in_it_with_the_same_kind() {
    let mut host = FakeHost::new().answer_with(429, &[("retry-after", "3")], "");
    let results = invoke_batch(&mut host, "triggerMarketingCommunication", &connection(), &items(4));
    assert_eq!(results.len(), 4);
    for result in results {
        assert!(matches!(result, Err(Error::RateLimited { retry_after_ms: Some(3000), .. })), "{result:?}");
    }
}

#[test]
fn the_share_of_the_rate_limit_used_is_reported_from_accepted_and_refused_answers() {
    let used = |percent: &'static str| [("x-mp-rate-limit-percentage-used", percent)];
    let mut host =
        FakeHost::new().answer_with(202, &used("42"), "").answer(202, "").answer_with(202, &used("97.6"), "");
    for _ in 0..3 {
        let results = invoke_batch(&mut host, "triggerMarketingCommunication", &connection(), &items(2));
        assert!(results.iter().all(Result::is_ok));
    }
    // An answer without the header reports nothing; a fraction is rounded.
    assert_eq!(host.usage, [42, 98]);
    // A 429 that says it carries it in the error too.
    let mut host =
        FakeHost::new().answer_with(429, &[("retry-after", "1"), ("x-mp-rate-limit-percentage-used", "130")], "");
    let results = invoke_batch(&mut host, "triggerMarketingCommunication", &connection(), &items(2));
    for result in results {
        assert!(matches!(result, Err(Error::RateLimited { percentage_used: Some(130), .. })), "{result:?}");
    }
    assert_eq!(host.usage, [130]);
    // A figure that is not a non-negative number is ignored.
    for bad in ["-3", "lots", "NaN", ""] {
        let mut host = FakeHost::new().answer_with(202, &used(bad), "");
        invoke_batch(&mut host, "triggerMarketingCommunication", &connection(), &items(1));
        assert!(host.usage.is_empty(), "{bad}");
    }
}

#[test]
fn requests_are_split_at_100_batches_and_never_split_a_call() {
    let mut host = FakeHost::new().answer(202, "").answer(202, "").answer(202, "");
    let results = invoke_batch(&mut host, "triggerMarketingCommunication", &connection(), &items(250));
    assert!(results.iter().all(Result::is_ok));
    let sizes: Vec<usize> = (0..host.requests.len()).map(|i| host.body(i).as_array().unwrap().len()).collect();
    assert_eq!(sizes, [MAX_BATCHES_PER_REQUEST, MAX_BATCHES_PER_REQUEST, 50]);

    // uploadEventBatch calls of 60 batches each: two do not fit in one request of 100.
    let bulk = |i: usize| {
        let batches: Vec<Value> =
            (0..60).map(|j| json!({"user_identities": {"customer_id": format!("m{i}-{j}")}, "events": []})).collect();
        (wrap(json!({"eventBatch": Value::Array(batches).to_string()})), context(&format!("up-{i}"), 1))
    };
    let mut host = FakeHost::new().answer(202, "").answer(202, "");
    let results = invoke_batch(&mut host, "uploadEventBatch", &connection(), &[bulk(0), bulk(1)]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let sizes: Vec<usize> = (0..host.requests.len()).map(|i| host.body(i).as_array().unwrap().len()).collect();
    assert_eq!(sizes, [60, 60]);
    assert_eq!(results[1].as_ref().unwrap()["sourceRequestIds"].as_array().unwrap().len(), 60);
}

#[test]
fn requests_are_split_at_256_kb() {
    // Each call's batch is about 40 KB: six fit in 256 KB, the seventh opens a second request.
    let big = "x".repeat(4000);
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let attributes: serde_json::Map<String, Value> = (0..10).map(|j| (format!("a{j}"), json!(big))).collect();
            let input = wrap(json!({"eventName": "point_add", "eventType": "transaction", "payload": attributes,
                                    "identityType": "customer_id", "identityValue": format!("m{i}")}));
            (input, context(&format!("big-{i}"), 1))
        })
        .collect();
    let mut host = FakeHost::new().answer(202, "").answer(202, "");
    let results = invoke_batch(&mut host, "triggerMarketingCommunication", &connection(), &calls);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(host.requests.len(), 2);
    for request in &host.requests {
        assert!(request.body.as_ref().unwrap().len() <= MAX_REQUEST_BYTES);
    }
    let sizes: Vec<usize> = (0..2).map(|i| host.body(i).as_array().unwrap().len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 8);
    assert_eq!(sizes[0], 6);
}

#[test]
fn platform_capabilities_run_call_by_call() {
    let mut host = FakeHost::new()
        .with_cached_token(TOKEN)
        .answer(200, &json!({"data": []}).to_string())
        .answer(200, &json!({"data": []}).to_string());
    let calls =
        vec![(wrap(json!({"accountId": "1"})), context("a", 1)), (wrap(json!({"accountId": "2"})), context("b", 1))];
    let results = invoke_batch(&mut host, "getAudiences", &connection(), &calls);
    assert_eq!(results.len(), 2);
    assert_eq!(host.requests.len(), 2);
}

#[test]
fn a_broken_connection_fails_every_call() {
    let mut host = FakeHost::new();
    let results = invoke_batch(&mut host, "triggerMarketingCommunication", &json!({"pod": "US9"}), &items(2));
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| matches!(r, Err(Error::InvalidConfig(_)))), "{results:?}");
    assert!(host.requests.is_empty());
}
