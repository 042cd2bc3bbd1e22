//! Provisioned throughput: a key over its batches per second gets 429 with Retry-After; other keys do not.

use mparticle_emulator::{DEMO_API_KEY, DEMO_API_SECRET, EmulatorConfig};
use serde_json::{Value, json};

use crate::common::{self, basic, client, post_events, valid_batch};

#[tokio::test]
async fn a_key_over_its_limit_gets_429_and_bulk_requests_count_each_batch() {
    let config = EmulatorConfig {
        api_keys: vec![(DEMO_API_KEY.into(), DEMO_API_SECRET.into()), ("other-key".into(), "other-secret".into())],
        batches_per_second: Some(5),
        ..EmulatorConfig::default()
    };
    let emu = common::start_with(config).await;
    // One bulk request of 3 batches and one single batch: 4 of 5, with the bucket's fill on each answer.
    let r = client()
        .post(format!("{}/v2/bulkevents", emu.url()))
        .header("authorization", common::demo_basic())
        .json(&json!([valid_batch(), valid_batch(), valid_batch()]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // (The bucket drains while the test runs: 1 % of the limit per 10 ms.)
    let percentage = |r: &reqwest::Response| -> u64 {
        r.headers()["x-mp-rate-limit-percentage-used"].to_str().unwrap().parse().unwrap()
    };
    let first = percentage(&r);
    assert!((40..=60).contains(&first), "{first}");
    let r = client()
        .post(format!("{}/v2/events", emu.url()))
        .header("authorization", common::demo_basic())
        .json(&valid_batch())
        .send()
        .await
        .unwrap();
    let second = percentage(&r);
    assert!(second > first && second <= 80, "{first} then {second}");
    // A bulk request is admitted while the bucket has room, and then counts all its batches: it overfills.
    let bulk = json!([valid_batch(), valid_batch(), valid_batch()]);
    assert_eq!(post_events(&emu, "/v2/bulkevents", &bulk).await.0, 202);
    let r = client()
        .post(format!("{}/v2/events", emu.url()))
        .header("authorization", common::demo_basic())
        .json(&valid_batch())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["x-mp-rate-limit-exceeded"], "workspace");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "TOO_MANY_REQUESTS");
    // Another key has its own throughput.
    let other = client()
        .post(format!("{}/v2/events", emu.url()))
        .header("authorization", basic("other-key", "other-secret"))
        .json(&valid_batch())
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 202);
    let stats = emu.stats();
    assert_eq!((stats.accepted, stats.throttled_requests, stats.throttled_batches), (8, 1, 1));
    assert_eq!(emu.batches().len(), 8, "a throttled batch is not recorded");
    // When the bucket has room again (at most 1.6 s: 7 batches over 5 per second), the key is admitted again.
    tokio::time::sleep(std::time::Duration::from_millis(1700)).await;
    assert_eq!(post_events(&emu, "/v2/events", &valid_batch()).await.0, 202);
}

#[tokio::test]
async fn limits_are_set_through_the_emulator_routes() {
    let emu = common::start().await;
    let set = |body: Value| {
        let url = format!("{}/_emulator/throttle", emu.url());
        async move {
            let r = client().post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    // No limit by default: a burst goes through, and 2xx answers carry no percentage.
    let (s, _) = post_events(&emu, "/v2/bulkevents", &json!(vec![valid_batch(); 20])).await;
    assert_eq!(s, 202);
    let (s, v) = set(json!({"api_key": DEMO_API_KEY, "batches_per_second": 1})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["api_keys"][DEMO_API_KEY], 1);
    let got: Value =
        client().get(format!("{}/_emulator/throttle", emu.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(got, v);
    assert_eq!(post_events(&emu, "/v2/bulkevents", &json!([valid_batch(), valid_batch(), valid_batch()])).await.0, 202);
    assert_eq!(post_events(&emu, "/v2/events", &valid_batch()).await.0, 429, "3 batches over a limit of 1 per second");
    let (s, v) = set(json!({"api_key": DEMO_API_KEY, "batches_per_second": null})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(post_events(&emu, "/v2/events", &valid_batch()).await.0, 202);
    let (s, v) = set(json!({"batches_per_second": "fast"})).await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("batches_per_second"), "{v}");
    // Reset goes back to the configured limits (none) and clears the counts.
    emu.reset();
    assert_eq!(emu.stats().throttled_requests, 0);
}
