//! The documented behaviour of the Events, Customer and Async Events APIs.

use crate::*;
use antavo_emulator::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET};
use base64::Engine as _;
use serde_json::{Value, json};

fn event(customer: &str, action: &str, data: Value) -> String {
    json!({"customer": customer, "action": action, "data": data}).to_string()
}

fn error_of(body: &Value) -> (String, i64) {
    (body["error"]["type"].as_str().unwrap_or_default().to_string(), body["error"]["code"].as_i64().unwrap_or(-1))
}

#[tokio::test]
async fn events_change_balances_and_answer_the_customer() {
    let emu = start_default().await;
    let (status, body) = post(&emu, "/events", &event("cust-1002", "point_add", json!({"points": 40}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["id"].as_str(), body["score"].as_i64(), body["spendable"].as_i64()),
        (Some("cust-1002"), Some(130), Some(130))
    );
    assert_eq!(body["events"][0]["action"], "point_add");
    assert_eq!(body["events"][0]["points"], 40);
    let (_, body) = post(&emu, "/events", &event("cust-1002", "point_spend", json!({"points": 30}))).await;
    assert_eq!((body["spendable"].as_i64(), body["spent"].as_i64()), (Some(100), Some(30)));
    let (_, body) =
        post(&emu, "/events", &event("cust-1002", "checkout", json!({"transaction_id": "tx-1", "total": 42.5}))).await;
    assert_eq!(body["spendable"], 142, "one point per whole unit of total");
    let (_, body) =
        post(&emu, "/events", &event("cust-1002", "profile", json!({"last_name": "Murray", "tier": "gold"}))).await;
    assert_eq!((body["last_name"].as_str(), body["tier"].as_str()), (Some("Murray"), Some("gold")));
    assert_eq!(body["events"], json!([]));
    let events = emu.events();
    assert_eq!(
        events.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["point_add", "point_spend", "checkout", "profile"]
    );
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
}

#[tokio::test]
async fn the_documented_errors() {
    let emu = start_default().await;
    // Unknown customer: 404 160212 for anything but opt_in.
    let (status, body) = post(&emu, "/events", &event("nobody", "point_add", json!({"points": 1}))).await;
    assert_eq!((status, error_of(&body)), (404, ("NotFoundException".into(), 160_212)));
    // opt_in creates it; a second opt_in is 112101.
    let (status, body) = post(&emu, "/events", &event("nobody", "opt_in", json!({"email": "n@example.com"}))).await;
    assert_eq!((status, body["status"].as_str(), body["email"].as_str()), (200, Some("active"), Some("n@example.com")));
    let (status, body) = post(&emu, "/events", &event("nobody", "opt_in", json!({}))).await;
    assert_eq!((status, error_of(&body).1), (400, 112_101));
    // A used transaction id: 5003.
    let checkout = event("cust-1001", "checkout", json!({"transaction_id": "tx-9", "total": 5}));
    assert_eq!(post(&emu, "/events", &checkout).await.0, 200);
    let (status, body) = post(&emu, "/events", &checkout).await;
    assert_eq!((status, error_of(&body).1), (400, 5003));
    assert_eq!(body["error"]["message"], "The transaction ID has already been used");
    // Malformed bodies and properties: 400.
    for bad in [
        "{not json".to_string(),
        "[1, 2]".to_string(),
        event("cust-1001", "point_add", json!({"points": "ten"})),
        event("cust-1001", "point_add", json!({})),
        event("cust-1001", "checkout", json!({"total": 3})),
        event("cust-1001", "no_such_action", json!({})),
        json!({"action": "point_add", "data": {"points": 1}}).to_string(),
        json!({"customer": "cust-1001", "action": "point_add", "data": [1]}).to_string(),
    ] {
        let (status, body) = post(&emu, "/events", &bad).await;
        assert_eq!((status, body["error"]["type"].as_str()), (400, Some("BadRequestException")), "{bad}: {body}");
    }
    // opt_out anonymises; a second one cannot be repeated; then the customer is gone for the Customer API.
    assert_eq!(post(&emu, "/events", &event("cust-1003", "opt_out", json!({}))).await.0, 200);
    let (status, body) = post(&emu, "/events", &event("cust-1003", "opt_out", json!({}))).await;
    assert_eq!((status, error_of(&body).1), (400, 10_001));
    assert_eq!(get(&emu, "/customers/cust-1003").await.0, 404);
    let stats = emu.stats();
    // A body that is not JSON is no event: it is not counted.
    assert_eq!((stats.accepted_events, stats.refused_events), (3, 11), "{stats:?}");
}

#[tokio::test]
async fn bulk_answers_each_event_in_order() {
    let emu = start_default().await;
    let body = json!({"events": [
        {"customer": "cust-1001", "action": "point_add", "data": {"points": 5}},
        {"customer": "ghost", "action": "point_add", "data": {"points": 5}},
        {"customer": "cust-1002", "action": "coupon_redeem", "data": {"coupon_code": "WELCOME10"}},
    ]});
    let (status, answer) = post(&emu, "/events/bulk", &body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["total"].as_u64(), answer["errors"].as_u64()), (Some(3), Some(1)));
    assert_eq!(answer["results"][0]["events"][0]["points"], 5);
    assert_eq!(answer["results"][1]["error"]["code"], 160212);
    assert_eq!(answer["results"][2]["events"], json!([]));
    assert_eq!(emu.events().iter().map(|e| e.customer.as_str()).collect::<Vec<_>>(), ["cust-1001", "cust-1002"]);
    assert_eq!(post(&emu, "/events/bulk", "{\"events\": 5}").await.0, 400);
    assert_eq!(post(&emu, "/events/bulk", "nope").await.0, 400);
    let requests = emu.requests();
    assert_eq!(requests.len(), 3, "a bulk request is one request");
}

#[tokio::test]
async fn customers_by_id_external_id_and_change_time() {
    let emu = start_default().await;
    let (status, body) = get(&emu, "/customers/cust-1001?fields=groups%2Cpurchases.ytd").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["first_name"].as_str(), body["groups"].clone()), (Some("Ada"), json!([])));
    let (status, body) = get(&emu, "/customers/%7Bemail%3Agrace%40example.com%7D").await;
    assert_eq!((status, body["id"].as_str()), (200, Some("cust-1002")));
    let (status, body) = get(&emu, "/customers/nobody").await;
    assert_eq!((status, error_of(&body).1), (404, 160_212));
    assert_eq!(get(&emu, "/customers/-/count").await.1, json!({"active": 3}));

    let before = antavo_core::time::iso8601(emu.now_ms() / 1000 - 5);
    let encoded = before.replace(':', "%3A");
    // Nobody changed in the last 5 s... until cust-1002 gets points, a second later.
    let (_, body) = get(&emu, &format!("/customers?updated_at.gt={encoded}")).await;
    let seeded = body["data"].as_array().unwrap().len();
    emu.set_clock_offset_ms(10_000);
    let since = antavo_core::time::iso8601(emu.now_ms() / 1000 - 1).replace(':', "%3A");
    post(&emu, "/events", &event("cust-1002", "point_add", json!({"points": 1}))).await;
    let (status, body) = get(&emu, &format!("/customers?updated_at.gt={since}&limit=1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect::<Vec<_>>(),
        ["cust-1002"]
    );
    assert_eq!(body["next"], Value::Null);
    assert_eq!(seeded, 3, "the seed customers were created just now");
    let (_, page) = get(&emu, &format!("/customers?updated_at.gt={encoded}&limit=2")).await;
    assert!(page["next"].as_str().unwrap().starts_with("/customers?updated_at.gt="), "{page}");
    let (status, body) = get(&emu, "/customers?limit=5").await;
    assert_eq!((status, error_of(&body).1), (400, 160_211));
    let (_, history) = get(&emu, "/customers/cust-1002/events?order=desc").await;
    assert_eq!(history["data"][0]["action"], "point_add");
}

#[tokio::test]
async fn async_events_take_a_token_and_are_processed_when_polled() {
    let emu = start_default().await;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{DEMO_CLIENT_ID}:{DEMO_CLIENT_SECRET}"));
    let form = "grant_type=client_credentials&scope=loyalty.async_events";
    let token_url = format!("{}/v1/auth/token", emu.url());
    let (status, body, _) =
        raw(reqwest::Method::POST, token_url.clone(), &[("authorization", &format!("Basic {basic}"))], form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["token_type"].as_str(), body["expires_in"].as_u64()), (Some("Bearer"), Some(3600)));
    let token = body["access_token"].as_str().unwrap().to_string();
    let wrong = base64::engine::general_purpose::STANDARD.encode("x:y");
    let (status, body, headers) =
        raw(reqwest::Method::POST, token_url.clone(), &[("authorization", &format!("Basic {wrong}"))], form).await;
    assert_eq!(
        (status, body["error"].as_str(), body["details"]["code"].as_i64()),
        (401, Some("invalid_client"), Some(220_010))
    );
    assert!(headers.get("www-authenticate").is_some());
    let (status, body, _) = raw(
        reqwest::Method::POST,
        token_url,
        &[("authorization", &format!("Basic {basic}"))],
        "grant_type=client_credentials&scope=other",
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_scope")));

    let bearer = format!("Bearer {token}");
    let submit = |body: String| {
        let url = format!("{}/v1/async/events", emu.url());
        let bearer = bearer.clone();
        async move { raw(reqwest::Method::POST, url, &[("authorization", &bearer)], &body).await }
    };
    let (status, queued, _) = submit(event("cust-1001", "point_add", json!({"points": 7}))).await;
    assert_eq!((status, queued["payload"]["status"].as_str()), (200, Some("queued")), "{queued}");
    let id = queued["payload"]["correlation_id"].as_str().unwrap().to_string();
    let (_, unknown, _) = submit(event("ghost", "point_add", json!({"points": 7}))).await;
    let (status, body, _) = submit(event("cust-1001", "coupon_redeem", json!({}))).await;
    assert_eq!((status, body["error"]["code"].as_i64()), (400, Some(203_404)));
    let (status, body, _) = submit(json!({"action": "point_add"}).to_string()).await;
    assert_eq!((status, body["error"]["code"].as_i64()), (400, Some(203_401)));
    assert!(emu.events().is_empty(), "queued, not processed");

    let poll = |id: String| {
        let url = format!("{}/v1/async/events/{id}", emu.url());
        let bearer = bearer.clone();
        async move { raw(reqwest::Method::GET, url, &[("authorization", &bearer)], "").await }
    };
    let (status, body, _) = poll(id).await;
    assert_eq!((status, body["payload"]["status"].as_str()), (200, Some("processed")), "{body}");
    assert_eq!(body["payload"]["response"]["success"]["spendable"], 1257);
    let (status, body, _) = poll(unknown["payload"]["correlation_id"].as_str().unwrap().to_string()).await;
    assert_eq!((status, body["payload"]["status"].as_str()), (200, Some("error")), "business errors are HTTP 200");
    assert_eq!(body["payload"]["response"]["error"]["code"], 160212);
    let (status, body, _) = poll("nope".into()).await;
    assert_eq!((status, body["error"]["code"].as_i64()), (400, Some(203_408)));
    assert_eq!(emu.events()[0].via, "async");

    emu.expire_tokens();
    let (status, body, _) = poll("nope".into()).await;
    assert_eq!((status, body["error"]["code"].as_i64()), (401, Some(220_052)));
}
