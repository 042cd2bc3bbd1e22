//! Fault injection: 429, 500, 503, stalls, fractions, path filters.

use std::time::{Duration, Instant};

use mparticle_emulator::{FaultKind, FaultRule};
use serde_json::{Value, json};

use crate::common::{self, client, client_with_timeout, demo_basic, post_batch, valid_batch};

async fn add_faults(url: &str, body: Value) -> (u16, Value) {
    let r = client().post(format!("{url}/_emulator/faults")).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn rate_limit_429_with_retry_after_before_auth() {
    let emu = common::start().await;
    let (s, v) = add_faults(&emu.url(), json!({"kind": "429", "count": 2, "retry_after_secs": 3})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["faults"][0]["kind"], "429");
    // Faults come before authentication: no credentials at all still gets 429.
    let r = client().post(format!("{}/v2/events", emu.url())).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "3");
    assert_eq!(r.headers()["x-mp-rate-limit-exceeded"], "app");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "TOO_MANY_REQUESTS");
    assert_eq!(post_batch(&emu, &valid_batch()).await.0, 429);
    assert_eq!(post_batch(&emu, &valid_batch()).await.0, 202, "count exhausted");
    let st = emu.stats();
    assert_eq!(st.faults_injected, 2);
    assert_eq!(st.requests["POST /v2/events"], 3);
    assert_eq!(st.received, 1, "faulted requests are not batches");
}

#[tokio::test]
async fn retry_after_can_be_left_out_and_scope_set() {
    let emu = common::start().await;
    add_faults(&emu.url(), json!({"kind": 429, "retry_after_secs": null, "rate_limit_scope": "org"})).await;
    let r = client().post(format!("{}/v2/events", emu.url())).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_none());
    assert_eq!(r.headers()["x-mp-rate-limit-exceeded"], "org");
}

#[tokio::test]
async fn server_errors_500_and_503_on_every_api() {
    let emu = common::start().await;
    let url = emu.url();
    add_faults(&url, json!([{"kind": "500", "path_prefix": "/oauth/"}, {"kind": "503", "path_prefix": "/v1/"}])).await;
    let r = client()
        .post(format!("{url}/oauth/token"))
        .json(&json!({"client_id": "x", "client_secret": "y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].is_string(), "OAuth-style body: {v}");
    let token = common::token(&emu).await;
    let r = client().get(format!("{url}/v1/accounts?accountId=1")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["dataType"], "account");
    assert_eq!(v["errors"][0]["code"], "SERVICE_UNAVAILABLE");
    let r = client().get(format!("{url}/v1/accounts?accountId=1")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);

    emu.add_fault(FaultRule::status(503).retry_after(Some(7)).path_prefix("/v2/"));
    let r = client()
        .post(format!("{url}/v2/bulkevents"))
        .header("authorization", demo_basic())
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "7");
    emu.add_fault(FaultRule::status(504));
    assert_eq!(post_batch(&emu, &valid_batch()).await.0, 504, "other statuses work too");
}

#[tokio::test]
async fn path_prefix_limits_faults() {
    let emu = common::start().await;
    emu.add_fault(FaultRule::status(500).times(5).path_prefix("/v2/bulkevents"));
    assert_eq!(post_batch(&emu, &valid_batch()).await.0, 202, "/v2/events does not match");
    let r = client().get(format!("{}/_emulator/stats", emu.url())).send().await.unwrap();
    assert_eq!(r.status(), 200, "emulator endpoints are never faulted");
    assert_eq!(emu.faults()[0].count, Some(5));
}

#[tokio::test]
async fn fractions_apply_until_cleared() {
    let emu = common::start().await;
    add_faults(&emu.url(), json!({"kind": "503", "fraction": 1.0})).await;
    for _ in 0..5 {
        assert_eq!(post_batch(&emu, &valid_batch()).await.0, 503);
    }
    let r = client().delete(format!("{}/_emulator/faults", emu.url())).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"faults": []}));
    assert_eq!(post_batch(&emu, &valid_batch()).await.0, 202);

    emu.set_faults(vec![FaultRule::status(500).fraction(0.5)]);
    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(post_batch(&emu, &valid_batch()).await.0);
    }
    let failed = statuses.iter().filter(|s| **s == 500).count();
    assert!((5..=55).contains(&failed), "about half should fail, {failed} of 60 did");
    assert_eq!(statuses.iter().filter(|s| **s == 202).count() + failed, 60);
    emu.clear_faults();
    assert!(emu.faults().is_empty());
}

#[tokio::test]
async fn stall_makes_callers_time_out() {
    let emu = common::start().await;
    add_faults(&emu.url(), json!({"kind": "stall", "stall_ms": 1500})).await;
    let impatient = client_with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = impatient
        .post(format!("{}/v2/events", emu.url()))
        .header("authorization", demo_basic())
        .json(&valid_batch())
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_millis(1400));
    // The next request is not stalled.
    assert_eq!(post_batch(&emu, &valid_batch()).await.0, 202);
    // A stall before processing: the caller went away, so the stalled request is dropped.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(started.elapsed()) + Duration::from_millis(200))
        .await;
    assert_eq!(emu.batches().len(), 1);
}

#[tokio::test]
async fn stall_after_processing_turns_a_retry_into_a_duplicate() {
    let emu = common::start().await;
    emu.add_fault(FaultRule::stall(1500).after_processing());
    let batch = valid_batch();
    let impatient = client_with_timeout(Duration::from_millis(300));
    let err = impatient
        .post(format!("{}/v2/events", emu.url()))
        .header("authorization", demo_basic())
        .json(&batch)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    // The caller retries with the same source_request_id.
    assert_eq!(post_batch(&emu, &batch).await.0, 202);
    let st = emu.stats();
    assert_eq!((st.accepted, st.duplicates), (1, 1));
}

#[tokio::test]
async fn stall_then_answer_normally() {
    let emu = common::start().await;
    emu.add_fault(FaultRule::stall(200));
    let started = Instant::now();
    assert_eq!(post_batch(&emu, &valid_batch()).await.0, 202);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(emu.stats().faults_injected, 1);
}

#[tokio::test]
async fn bad_fault_rules_are_refused() {
    let emu = common::start().await;
    for body in [
        json!({"kind": "teapot"}),
        json!({"kind": 302}),
        json!({"kind": "500", "fraction": 1.5}),
        json!({"kind": "500", "unknown": true}),
        json!("500"),
        json!({"faults": "all"}),
    ] {
        let (s, v) = add_faults(&emu.url(), body.clone()).await;
        assert_eq!(s, 400, "{body}: {v}");
        assert!(v["error"].is_string());
    }
    let r = client().post(format!("{}/_emulator/faults", emu.url())).body("{oops").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(emu.faults().is_empty());
    let (s, v) = add_faults(&emu.url(), json!({"faults": [{"kind": "stall"}]})).await;
    assert_eq!(s, 200);
    assert_eq!(v["faults"][0]["stall_ms"], 5000);
    assert_eq!(emu.faults()[0].kind, FaultKind::Stall);
    let r = client().get(format!("{}/_emulator/faults", emu.url())).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["faults"].as_array().unwrap().len(), 1);
}
