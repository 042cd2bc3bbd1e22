//! Events API: auth, body limits, bulk, historical, de-duplication, inspection endpoints.

use mparticle_emulator::{EmulatorConfig, Stats};
use serde_json::{Value, json};

use crate::common::{self, basic, client, demo_basic, first_message, post_batch, post_events, valid_batch};

async fn raw_post(url: &str, auth: Option<&str>, ct: Option<&str>, body: impl Into<reqwest::Body>) -> (u16, String) {
    let mut rb = client().post(url).body(body);
    if let Some(a) = auth {
        rb = rb.header("authorization", a);
    }
    if let Some(c) = ct {
        rb = rb.header("content-type", c);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn basic_auth_failures() {
    let emu = common::start().await;
    let url = format!("{}/v2/events", emu.url());
    let body = valid_batch().to_string();
    let r = client().post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), 401, "missing header");
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED");
    for (auth, what) in [
        (basic(common::DEMO_API_KEY, "wrong"), "wrong secret"),
        (basic("other-key", common::DEMO_API_SECRET), "unknown key"),
        ("Basic !!!notbase64".to_owned(), "bad base64"),
        ("Basic ZGVtby1hcGkta2V5".to_owned(), "no colon"),
        ("Bearer abc".to_owned(), "wrong scheme"),
        ("Basic".to_owned(), "no credentials"),
    ] {
        let (s, b) = raw_post(&url, Some(&auth), Some("application/json"), body.clone()).await;
        assert_eq!(s, 403, "{what}: {b}");
        assert_eq!(serde_json::from_str::<Value>(&b).unwrap()["errors"][0]["code"], "FORBIDDEN");
    }
    let (s, _) = raw_post(&format!("{}/v2/bulkevents", emu.url()), None, None, "[]").await;
    assert_eq!(s, 401);
    assert!(emu.batches().is_empty());
    assert_eq!(emu.stats().received, 0, "auth failures are not batches");
}

#[tokio::test]
async fn malformed_bodies_get_400_without_panics() {
    let emu = common::start().await;
    let url = format!("{}/v2/events", emu.url());
    let auth = demo_basic();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "not valid JSON"),
        (b"".to_vec(), "not valid JSON"),
        (vec![b'{', 0xff, 0xfe, b'}'], "not valid JSON"),
        (b"\"just a string\"".to_vec(), "expected one batch"),
        (b"[{}]".to_vec(), "/v2/bulkevents"),
        (b"null".to_vec(), "expected one batch"),
        (deep.into_bytes(), "JSON"),
        (br#"{"events": [{"event_type": "custom_event", "data": {"event_name": "\ud800"}}]}"#.to_vec(), "JSON"),
    ];
    let n = cases.len() as u64;
    for (body, fragment) in cases {
        let (s, b) = raw_post(&url, Some(&auth), Some("application/json"), body).await;
        assert_eq!(s, 400, "{b}");
        assert!(first_message(&b).contains(fragment), "{b}");
    }
    let (s, b) = raw_post(&url, Some(&auth), Some("text/plain"), valid_batch().to_string()).await;
    assert_eq!(s, 415, "{b}");
    let (s, _) = raw_post(&url, Some(&auth), None, valid_batch().to_string()).await;
    assert_eq!(s, 202, "Content-Type may be omitted");
    let st = emu.stats();
    assert_eq!((st.rejected, st.accepted, st.received), (n + 1, 1, n + 2));
}

#[tokio::test]
async fn request_size_limit_is_256_kb() {
    let emu = common::start().await;
    let url = format!("{}/v2/bulkevents", emu.url());
    // Three batches of ~100 KB: each under 128 KB, together over 256 KB.
    let big = |i: usize| {
        let mut b = valid_batch();
        b["user_attributes"] = (0..25).map(|j| (format!("u{i}_{j}"), json!("x".repeat(4000)))).collect();
        b
    };
    let body = json!([big(0), big(1), big(2)]).to_string();
    assert!(body.len() > 256 * 1024);
    let (s, b) = raw_post(&url, Some(&demo_basic()), Some("application/json"), body).await;
    assert_eq!(s, 413, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["errors"][0]["code"], "REQUEST_TOO_LARGE");
    assert!(first_message(&b).contains("262144"));
    // Two of them fit.
    let body = json!([big(0), big(1)]).to_string();
    assert!(body.len() < 256 * 1024);
    let (s, b) = raw_post(&url, Some(&demo_basic()), Some("application/json"), body).await;
    assert_eq!(s, 202, "{b}");
    // A body far over any limit is refused without reading it all.
    let huge = vec![b' '; 20 * 1024 * 1024];
    let (s, _) = raw_post(&url, Some(&demo_basic()), Some("application/json"), huge).await;
    assert_eq!(s, 413);
    // A smaller configured limit applies.
    let small = common::start_with(EmulatorConfig { max_request_bytes: 1000, ..Default::default() }).await;
    let (s, _) = post_batch(&small, &valid_batch()).await;
    assert_eq!(s, 202);
    let mut b = valid_batch();
    b["user_attributes"]["bio"] = json!("y".repeat(1000));
    assert_eq!(post_batch(&small, &b).await.0, 413);
}

#[tokio::test]
async fn bulk_events_accept_arrays_of_up_to_100_batches() {
    let emu = common::start().await;
    let batches: Vec<Value> = (0..100).map(|_| valid_batch()).collect();
    let (s, b) = post_events(&emu, "/v2/bulkevents", &Value::Array(batches.clone())).await;
    assert_eq!(s, 202, "{b}");
    let got = emu.batches();
    assert_eq!(got.len(), 100);
    assert!(got.iter().all(|r| r.endpoint == "/v2/bulkevents" && r.api_key == common::DEMO_API_KEY));
    assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=100).collect::<Vec<_>>());
    assert_eq!(got[7].batch, batches[7], "batches are kept verbatim, in order");

    let too_many: Vec<Value> = (0..101).map(|_| valid_batch()).collect();
    let (s, b) = post_events(&emu, "/v2/bulkevents", &Value::Array(too_many)).await;
    assert_eq!(s, 400);
    assert!(first_message(&b).contains("at most 100"), "{b}");

    let (s, b) = post_events(&emu, "/v2/bulkevents", &valid_batch()).await;
    assert_eq!(s, 400, "an object is not a bulk body");
    assert!(first_message(&b).contains("array"));

    let (s, _) = post_events(&emu, "/v2/bulkevents", &json!([])).await;
    assert_eq!(s, 202, "empty bulk");
}

#[tokio::test]
async fn bulk_with_one_invalid_batch_is_refused_whole() {
    let emu = common::start().await;
    let mut bad = valid_batch();
    bad["events"][0]["data"].as_object_mut().unwrap().remove("event_name");
    let body = json!([valid_batch(), valid_batch(), bad, valid_batch()]);
    let (s, b) = post_events(&emu, "/v2/bulkevents", &body).await;
    assert_eq!(s, 400);
    let msg = first_message(&b);
    assert!(msg.contains("index 2"), "{msg}");
    assert!(msg.contains("$[2].events[0].data.event_name: required field is missing"), "{msg}");
    assert!(emu.batches().is_empty());
    let st = emu.stats();
    assert_eq!((st.received, st.rejected, st.accepted), (4, 4, 0));
}

#[tokio::test]
async fn historical_endpoint_rules() {
    let emu = common::start().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let day = 86_400_000_i64;
    let with_ts = |ts: Option<i64>| {
        let mut b = valid_batch();
        match ts {
            Some(t) => b["events"][0]["data"]["timestamp_unixtime_ms"] = json!(t),
            None => {
                b["events"][0]["data"].as_object_mut().unwrap().remove("timestamp_unixtime_ms");
            }
        }
        b
    };
    let path = "/v2/bulkevents/historical";
    let (s, b) = post_events(&emu, path, &json!([with_ts(Some(now - 40 * day))])).await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(emu.batches()[0].endpoint, path);
    let (s, b) = post_events(&emu, path, &json!([with_ts(Some(now - day))])).await;
    assert_eq!(s, 400);
    assert!(first_message(&b).contains("72 hours"), "{b}");
    let (s, b) = post_events(&emu, path, &json!([with_ts(None)])).await;
    assert_eq!(s, 400);
    assert!(first_message(&b).contains("$[0].events[0].data.timestamp_unixtime_ms"), "{b}");
    let mut empty = valid_batch();
    empty["events"] = json!([]);
    let (s, b) = post_events(&emu, path, &json!([empty])).await;
    assert_eq!(s, 400);
    assert!(first_message(&b).contains("contain events"), "{b}");
    // The same recent batch is fine on the normal endpoints.
    assert_eq!(post_events(&emu, "/v2/bulkevents", &json!([with_ts(Some(now))])).await.0, 202);
}

#[tokio::test]
async fn duplicates_by_source_request_id_per_api_key() {
    let cfg =
        EmulatorConfig { api_keys: vec![("k1".into(), "s1".into()), ("k2".into(), "s2".into())], ..Default::default() };
    let emu = common::start_with(cfg).await;
    let send = |key: &'static str, secret: &'static str, body: Value, path: &'static str| {
        let url = format!("{}{path}", emu.url());
        async move {
            let r = client().post(url).header("authorization", basic(key, secret)).json(&body).send().await.unwrap();
            r.status().as_u16()
        }
    };
    let b = valid_batch();
    assert_eq!(send("k1", "s1", b.clone(), "/v2/events").await, 202);
    assert_eq!(send("k1", "s1", b.clone(), "/v2/events").await, 202, "a duplicate is still 202");
    assert_eq!(send("k1", "s1", json!([b.clone()]), "/v2/bulkevents").await, 202);
    assert_eq!(send("k2", "s2", b.clone(), "/v2/events").await, 202, "other key: not a duplicate");
    let twin = valid_batch();
    assert_eq!(send("k1", "s1", json!([twin.clone(), twin]), "/v2/bulkevents").await, 202);
    let mut no_id = valid_batch();
    no_id.as_object_mut().unwrap().remove("source_request_id");
    assert_eq!(send("k1", "s1", no_id.clone(), "/v2/events").await, 202);
    assert_eq!(send("k1", "s1", no_id, "/v2/events").await, 202);

    let st = emu.stats();
    assert_eq!((st.received, st.accepted, st.duplicates, st.rejected), (8, 5, 3, 0));
    let got = emu.batches();
    assert_eq!(got.len(), 5);
    assert_eq!(got.iter().filter(|r| r.api_key == "k2").count(), 1);
}

#[tokio::test]
async fn inspection_endpoints() {
    let emu = common::start().await;
    let url = emu.url();
    for _ in 0..3 {
        assert_eq!(post_batch(&emu, &valid_batch()).await.0, 202);
    }
    let mut bad = valid_batch();
    bad["environment"] = json!("qa");
    assert_eq!(post_batch(&emu, &bad).await.0, 400);

    let v: Value = client().get(format!("{url}/_emulator/batches")).send().await.unwrap().json().await.unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 3);
    for key in ["seq", "api_key", "endpoint", "received_at", "received_unix_ms", "batch"] {
        assert!(list[0].get(key).is_some(), "{key} missing in {}", list[0]);
    }
    assert!(list[0]["received_at"].as_str().unwrap().ends_with('Z'));
    let v: Value = client().get(format!("{url}/_emulator/batches?since=2")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(emu.batches_since(1).len(), 2);

    let st: Stats = client().get(format!("{url}/_emulator/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!((st.received, st.accepted, st.duplicates, st.rejected), (4, 3, 0, 1));
    assert_eq!(st.requests.get("POST /v2/events"), Some(&4));
    assert_eq!(st, emu.stats());
    let v: Value = client().get(format!("{url}/_emulator/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["status"], "ok");
}

#[tokio::test]
async fn reset_goes_back_to_the_seed() {
    let emu = common::start().await;
    let token = common::token(&emu).await;
    let r = client()
        .post(format!("{}/v1/accounts", emu.url()))
        .bearer_auth(&token)
        .json(&json!({"name": "Temp"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(post_batch(&emu, &valid_batch()).await.0, 202);
    emu.add_fault(mparticle_emulator::FaultRule::status(500).path_prefix("/nowhere"));
    let r = client().post(format!("{}/_emulator/reset", emu.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(emu.batches().is_empty());
    assert!(emu.faults().is_empty());
    assert_eq!(emu.stats().received, 0);
    let v: Value = client()
        .get(format!("{}/v1/accounts?accountId=1", emu.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["data"].as_array().unwrap().iter().all(|a| a["name"] != "Temp"), "token survives reset: {v}");
}

#[tokio::test]
async fn keeps_up_with_thousands_of_batches() {
    let emu = common::start().await;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = format!("{}/v2/bulkevents", emu.url());
        tasks.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..10 {
                let body = Value::Array((0..100).map(|_| valid_batch()).collect());
                let r = c.post(&url).header("authorization", demo_basic()).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 202);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(emu.stats().accepted, 4000);
    assert!(elapsed.as_secs() < 30, "4000 batches took {elapsed:?}");
    eprintln!("4000 batches in {elapsed:?} ({:.0}/s)", 4000.0 / elapsed.as_secs_f64());
}
