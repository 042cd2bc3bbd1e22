//! Webhooks out: signed with Escher as the connector verifies them, delivered in order, retried.

use crate::*;
use antavo_emulator::{WebhookSigning, WebhookSubscription};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

type Received = Arc<Mutex<Vec<(String, HeaderMap, Bytes)>>>;

/// A receiver that records what it gets and answers 500 to the first `failures` requests.
async fn receiver(failures: usize) -> (String, Received) {
    let received: Received = Arc::default();
    let seen = received.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let seen = seen.clone();
        async move {
            let mut seen = seen.lock().unwrap();
            seen.push((uri.path().to_string(), headers, body));
            if seen.len() <= failures { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/inbound/antavo", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

#[tokio::test]
async fn accepted_events_are_posted_signed_in_order() {
    let emu = start_default().await;
    let (url, received) = receiver(0).await;
    emu.add_webhook(WebhookSubscription::escher(&url, &["point_add", "profile"], "hook-key", "hook-secret"));
    for points in [10, 20, 30] {
        emu.trigger(json!({"customer": "cust-1001", "action": "point_add", "data": {"points": points}})).unwrap();
    }
    emu.trigger(json!({"customer": "cust-1002", "action": "checkout", "data": {"transaction_id": "t", "total": 1}}))
        .unwrap();
    post(
        &emu,
        "/events",
        &json!({"customer": "cust-1002", "action": "profile", "data": {"first_name": "G"}}).to_string(),
    )
    .await;
    assert!(emu.webhooks_idle(std::time::Duration::from_secs(10)).await);
    let received = received.lock().unwrap().clone();
    let bodies: Vec<Value> = received.iter().map(|(_, _, b)| serde_json::from_slice(b).unwrap()).collect();
    let summary: Vec<(String, Value)> =
        bodies.iter().map(|b| (b["action"].as_str().unwrap().to_string(), b["data"]["points"].clone())).collect();
    assert_eq!(
        summary,
        [
            ("point_add".to_string(), json!(10)),
            ("point_add".to_string(), json!(20)),
            ("point_add".to_string(), json!(30)),
            ("profile".to_string(), Value::Null)
        ],
        "the checkout is not subscribed"
    );
    assert_eq!(bodies[0]["customer"]["id"], "cust-1001");
    assert_eq!(bodies[0]["customer"]["spendable"], 1260);
    assert!(bodies[0]["customer"].get("events").is_none());
    assert_eq!(bodies[3]["customer"]["first_name"], "G");
    // Each verifies with the connector's verifier, as it would at flowhost.
    let profile = antavo_core::escher::Profile::antavo();
    let verifier =
        antavo_core::escher::Verifier { profile: &profile, scope: "st2/api/antavo_request", clock_skew_seconds: 300 };
    for (path, headers, body) in &received {
        let pairs: Vec<(String, String)> =
            headers.iter().map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap().to_string())).collect();
        let request = antavo_core::escher::Request { method: "POST", path, query: "", headers: &pairs, body };
        let key =
            verifier.verify(&request, emu.now_ms() / 1000, |k| (k == "hook-key").then(|| "hook-secret".to_string()));
        assert_eq!(key, Ok("hook-key".to_string()));
    }
}

#[tokio::test]
async fn a_failed_delivery_is_retried() {
    let emu = start_default().await;
    let (url, received) = receiver(2).await;
    emu.add_webhook(WebhookSubscription {
        url,
        actions: vec![],
        signing: WebhookSigning::Bearer { token: "hook-token".into() },
        max_attempts: 5,
        retry_interval_ms: 50,
    });
    emu.trigger(json!({"customer": "cust-1001", "action": "point_add", "data": {"points": 1}})).unwrap();
    assert!(emu.webhooks_idle(std::time::Duration::from_secs(10)).await);
    let received = received.lock().unwrap();
    assert_eq!(received.len(), 3, "two 500s, then delivered");
    assert_eq!(received[2].1.get("authorization").unwrap(), "Bearer hook-token");
    let deliveries = emu.deliveries();
    assert_eq!(
        deliveries.iter().map(|d| (d.attempt, d.status)).collect::<Vec<_>>(),
        [(1, Some(500)), (2, Some(500)), (3, Some(200))]
    );
    let stats = emu.stats();
    assert_eq!((stats.webhooks_delivered, stats.webhook_attempts_failed), (1, 2));
}
