//! The inbound side end to end, in process: `POST /v1/inbound/{connection}` on a real listener, the service
//! over SQLite, and three connectors with their own inbound sides: mParticle (a token, public registration
//! and verification requests), the signed-webhook test connector (Standard Webhooks signatures, no token),
//! and a hostile one.

use flowhost::connector::{RuntimeConfig, SandboxLimits, SecretStore};
use flowhost::delivery::{InboundConnection, Service, ServiceConfig, ServiceError};
use flowhost::inbound::stored_body;
use flowhost::server::{ApiState, router};
use flowhost::store::{InboundMessage, SqliteStore, Store};
use flowhost::{Host, HostConfig};
use flowhost_cli::builtin::MPARTICLE;
use flowhost_tests::components;
use secrecy::SecretString;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use test_connectors::standard_webhooks;

const MPARTICLE_TOKEN: &str = "mp-inbound-token-1";
const HOSTILE_TOKEN: &str = "hostile-token-1";
const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A service on a loopback port with the flows given, the mParticle connection `mparticle` (token), the
/// signed webhook connection `acme` (no token) and the hostile connection `hostile` (token).
struct Served {
    base: String,
    _service: Arc<Service>,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn serve(flows: &[Value]) -> Served {
    serve_with(flows, |_| async {}).await.unwrap()
}

/// Like [`serve`], with a chance to write to the store before the service starts, and the service's refusal.
async fn serve_with<F, Fut>(flows: &[Value], before: F) -> Result<Served, ServiceError>
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let runtime = RuntimeConfig {
        cache_dir: Some(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("inbound-compile-cache")),
        max_instances: 32,
        limits: SandboxLimits { memory_bytes: 32 << 20, timeout: Duration::from_secs(2), ..SandboxLimits::default() },
        ..RuntimeConfig::default()
    };
    let config = HostConfig { runtime, embedded_connectors: vec![MPARTICLE], ..HostConfig::default() };
    let secrets = SecretStore::from_pairs([
        ("MPARTICLE_API_KEY", "key"),
        ("MPARTICLE_API_SECRET", "secret"),
        ("ACME_SIGNING_SECRET", SIGNING_SECRET),
        ("ECHO_TOKEN", "let-me-in"),
    ]);
    let mut host = Host::new(config, secrets).await.unwrap();
    for component in [components::SIGNED_WEBHOOK, components::HOSTILE_INBOUND, components::ECHO] {
        host.add_connector_file(component.as_ref()).await.unwrap();
    }
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("flowhost.db")).await.unwrap());
    before(store.clone()).await;
    let files: Vec<(String, String)> =
        flows.iter().map(|flow| (format!("{}.json", flow["id"].as_str().unwrap()), flow.to_string())).collect();
    let used = |name: &str| flows.iter().any(|flow| flow["connections"].get(name).is_some());
    let tokens = [("mparticle", MPARTICLE_TOKEN), ("hostile", HOSTILE_TOKEN), ("echo", "echo-token")]
        .into_iter()
        .filter(|(name, _)| used(name))
        .map(|(name, token)| InboundConnection { name: name.into(), token: SecretString::from(token) })
        .collect();
    let service = Service::start(host, store.clone(), &files, tokens, ServiceConfig::default()).await?;
    let service = Arc::new(service);
    let state = ApiState { service: service.clone(), max_body_bytes: 16 * 1024, api_token: None, metrics_token: None };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    Ok(Served { base, _service: service, store, _dir: dir })
}

fn mparticle_connection() -> Value {
    json!({"connector": "mparticle", "config": {
        "apiKey": {"secret": "MPARTICLE_API_KEY"}, "apiSecret": {"secret": "MPARTICLE_API_SECRET"}}})
}

/// An inbound flow that emits `emitted` with the `fields` mapping.
fn inbound_flow(id: &str, trigger: Value, connection: Value, emitted: &str, fields: Value) -> Value {
    let name = trigger["connection"].as_str().unwrap().to_string();
    let mut trigger = trigger;
    trigger["type"] = json!("inbound");
    json!({"id": id, "version": "1.0.0", "trigger": trigger, "connections": {name: connection},
           "nodes": [{"id": "emit", "emit": {"event": emitted, "fields": fields}}]})
}

fn acme_flow() -> Value {
    inbound_flow(
        "acme-points",
        json!({"connection": "acme", "eventType": "points.earned", "customerIdentity": "member_id"}),
        json!({"connector": "signed-webhook", "config": {"signingSecret": {"secret": "ACME_SIGNING_SECRET"}}}),
        "acme_points",
        json!({"member": "{customer}", "points": "{points}", "environment": "{environment}"}),
    )
}

fn hostile_flow() -> Value {
    inbound_flow(
        "hostile-lines",
        json!({"connection": "hostile"}),
        json!({"connector": "hostile-inbound"}),
        "line",
        json!({"customer": "{customer}"}),
    )
}

fn client() -> reqwest::Client {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap()
}

/// Status, `flowhost-inbound-id` and JSON body of a response.
async fn send(request: reqwest::RequestBuilder) -> (u16, Option<String>, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let id = response.headers().get("flowhost-inbound-id").map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    (status, id, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn outbox(served: &Served) -> Vec<Value> {
    let events = served.store.outbox(0, 100).await.unwrap();
    events.into_iter().map(|e| json!({"event": e.event, "payload": e.payload})).collect()
}

async fn wait_for_outbox(served: &Served, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = outbox(served).await;
        if events.len() >= count {
            return events;
        }
        assert!(Instant::now() < deadline, "the outbox has {} events, not {count}: {events:?}", events.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn inbound_messages(served: &Served) -> Vec<Value> {
    let (status, _, body) = send(client().get(format!("{}/v1/inbound", served.base))).await;
    assert_eq!(status, 200, "{body}");
    body["messages"].as_array().unwrap().clone()
}

fn webhook_batch(batch_id: &str, environment: &str, name: &str) -> Value {
    json!({
        "batch_id": batch_id, "mpid": 8_675_309, "environment": environment,
        "user_identities": [{"identity_type": "customer_id", "identity": format!("cust-{batch_id}")}],
        "events": [{"event_type": "custom_event", "data": {"event_name": name, "custom_event_type": "other",
                    "custom_attributes": {"coupon_code": format!("C-{batch_id}")}}}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mparticle_registration_and_verification_need_no_token_and_nothing_else_goes_without_one() {
    let flow = inbound_flow(
        "coupon",
        json!({"connection": "mparticle", "eventType": "custom_event", "eventName": "coupon_redeemed"}),
        mparticle_connection(),
        "coupon_redeem",
        json!({"customer": "{customer}"}),
    );
    let served = serve(&[flow]).await;
    let url = format!("{}/v1/inbound/mparticle", served.base);
    let registration = json!({"type": "module_registration_request", "id": "r-1", "firehose_version": "3.2.0"});
    let (status, id, body) = send(client().post(&url).json(&registration)).await;
    assert_eq!((status, id), (200, None), "{body}");
    assert_eq!(body["type"], "module_registration_response");
    assert!(body["permissions"].is_object(), "a registration answer: {body}");
    let probe = json!({"type": "event_processing_request", "id": "v-1", "firehose_version": "3.2.0"});
    let (status, _, body) = send(client().post(&url).json(&probe)).await;
    assert_eq!((status, body["type"].as_str()), (200, Some("event_processing_response")), "{body}");

    // Events without the token: refused, whatever the format, and nothing stored.
    let with_events = json!({"type": "event_processing_request", "id": "v-2", "firehose_version": "3.2.0",
        "user_identities": [{"type": "customer", "encoding": "raw", "value": "c-1"}],
        "events": [{"type": "custom_event", "id": "e-1", "name": "coupon_redeemed"}]});
    for body in [with_events, webhook_batch("b-1", "production", "coupon_redeemed")] {
        let (status, _, answer) = send(client().post(&url).json(&body)).await;
        assert_eq!(status, 401, "{answer}");
        let (status, _, answer) = send(client().post(&url).bearer_auth("not-the-token-7f3").json(&body)).await;
        assert_eq!(status, 401, "{answer}");
        assert!(!answer.to_string().contains("not-the-token-7f3"), "the token is not echoed: {answer}");
    }
    assert!(inbound_messages(&served).await.is_empty());
    // A request without the token is read only up to the public requests' limit.
    let big = json!({"type": "module_registration_request", "id": "r-2", "padding": "x".repeat(70 * 1024)});
    let (status, _, answer) = send(client().post(&url).json(&big)).await;
    assert_eq!(status, 413, "{answer}");
    // A wrong token is refused before the body is read, even for a registration.
    let (status, _, answer) = send(client().post(&url).bearer_auth("wrong").json(&registration)).await;
    assert_eq!(status, 401, "{answer}");

    // With the token the batch is stored and mapped.
    let batch = webhook_batch("b-2", "production", "coupon_redeemed");
    let (status, id, body) = send(client().post(&url).bearer_auth(MPARTICLE_TOKEN).json(&batch)).await;
    assert_eq!(status, 202, "{body}");
    assert!(id.is_some(), "the stored message's id is in flowhost-inbound-id");
    let events = wait_for_outbox(&served, 1).await;
    assert_eq!(events[0]["payload"]["customer"], "cust-b-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_flows_read_and_filter_on_the_environment() {
    let production = inbound_flow(
        "coupon-production",
        json!({"connection": "mparticle", "eventName": "coupon_redeemed", "environment": "production"}),
        mparticle_connection(),
        "coupon_live",
        json!({"customer": "{customer}", "environment": "{environment}", "coupon": "{coupon_code}"}),
    );
    let served = serve(&[production]).await;
    let url = format!("{}/v1/inbound/mparticle", served.base);
    for (batch, environment) in [("dev", "development"), ("live", "production")] {
        let body = webhook_batch(batch, environment, "coupon_redeemed");
        let (status, _, answer) = send(client().post(&url).bearer_auth(MPARTICLE_TOKEN).json(&body)).await;
        assert_eq!(status, 202, "{answer}");
    }
    let events = wait_for_outbox(&served, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(outbox(&served).await.len(), 1, "the development event maps to nothing: {events:?}");
    assert_eq!(events[0]["payload"], json!({"customer": "cust-live", "environment": "production", "coupon": "C-live"}));
    let messages = inbound_messages(&served).await;
    let development = messages.iter().find(|m| m["externalId"] == "dev").unwrap();
    assert_eq!(development["status"], "unmatched", "{development}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_message_whose_run_failed_says_so_with_the_run() {
    let mut flow = inbound_flow(
        "coupon-fails",
        json!({"connection": "mparticle", "eventName": "coupon_redeemed"}),
        mparticle_connection(),
        "unused",
        json!({}),
    );
    flow["connections"]["echo"] = json!({"connector": "echo", "config": {"token": {"secret": "ECHO_TOKEN"}}});
    flow["nodes"] = json!([{"id": "refuse", "connector": {"connection": "echo", "capability": "fail",
                                                            "input": {"kind": "permanent"}}}]);
    let served = serve(&[flow]).await;
    let url = format!("{}/v1/inbound/mparticle", served.base);
    let body = webhook_batch("f-1", "production", "coupon_redeemed");
    let (status, id, answer) = send(client().post(&url).bearer_auth(MPARTICLE_TOKEN).json(&body)).await;
    assert_eq!(status, 202, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let message = loop {
        let messages = inbound_messages(&served).await;
        if let Some(message) = messages.into_iter().find(|m| m["status"] == "failed") {
            break message;
        }
        assert!(Instant::now() < deadline, "the message never showed its failed run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(message["id"].as_str(), id.as_deref());
    let (_, _, listed) = send(client().get(format!("{}/v1/inbound?status=failed", served.base))).await;
    assert_eq!(listed["messages"][0]["id"], message["id"], "?status=failed finds it: {listed}");
    let (_, _, listed) = send(client().get(format!("{}/v1/inbound?status=processed", served.base))).await;
    assert!(listed["messages"].as_array().unwrap().is_empty(), "it is not listed as processed: {listed}");
    let failed = &message["failedRuns"][0];
    assert_eq!(failed["runId"], message["runIds"][0], "{message}");
    assert_eq!(failed["flow"], "coupon-fails");
    assert!(failed["error"].to_string().contains("requested failure"), "{message}");
}

fn now_seconds() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A request to the `acme` connection, signed as Standard Webhooks senders sign.
fn signed(url: &str, id: &str, timestamp: i64, body: &str, secret: &str) -> reqwest::RequestBuilder {
    let mut request = client().post(url).body(body.to_string());
    for (name, value) in standard_webhooks::signed_headers(secret, id, timestamp, body.as_bytes()) {
        request = request.header(name, value);
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_connector_verifies_its_own_requests_with_no_host_change() {
    let served = serve(&[acme_flow()]).await;
    let url = format!("{}/v1/inbound/acme", served.base);
    let body = r#"{"type": "points.earned", "id": "evt_1", "environment": "live",
                   "member": {"id": "m-42", "email": "ada@example.com"}, "data": {"points": 120}}"#;
    let now = now_seconds();
    let (status, id, answer) = send(signed(&url, "msg_1", now, body, SIGNING_SECRET)).await;
    assert_eq!(status, 202, "{answer}");
    assert!(id.is_some());
    let events = wait_for_outbox(&served, 1).await;
    assert_eq!(events[0]["payload"], json!({"member": "m-42", "points": 120, "environment": "production"}));

    // Refused, each with its reason, and nothing stored.
    let other_secret = "whsec_c2VjcmV0LW9mLXNvbWVib2R5LWVsc2U=";
    let refusals = [
        (signed(&url, "msg_2", now, body, other_secret), "webhook-signature does not match"),
        (signed(&url, "msg_1", now, body, SIGNING_SECRET), "replay refused"),
        (signed(&url, "msg_3", now - 400, body, SIGNING_SECRET), "older than the time of receipt"),
        (signed(&url, "msg_4", now + 400, body, SIGNING_SECRET), "later than the time of receipt"),
        (client().post(&url).body(body), "webhook-id header is missing"),
    ];
    for (request, reason) in refusals {
        let (status, id, answer) = send(request).await;
        assert_eq!((status, id), (401, None), "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(reason), "{reason}: {answer}");
    }
    // A body that is not an Acme event: 400 naming the field.
    let (status, _, answer) = send(signed(&url, "msg_5", now, r#"{"type": "points.earned"}"#, SIGNING_SECRET)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["fields"].to_string().contains("/id"), "{answer}");
    assert_eq!(inbound_messages(&served).await.len(), 1, "only the first request was stored");

    // The vendor re-delivers msg_1, signed anew: accepted, and not stored or mapped twice.
    let (status, _, answer) = send(signed(&url, "msg_1", now + 1, body, SIGNING_SECRET)).await;
    assert_eq!(status, 202, "{answer}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(inbound_messages(&served).await.len(), 1);
    assert_eq!(outbox(&served).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inbound_requests_get_clear_answers_and_a_hostile_receive_stores_nothing() {
    let mut with_echo = hostile_flow();
    with_echo["connections"]["echo"] = json!({"connector": "echo", "config": {"token": {"secret": "ECHO_TOKEN"}}});
    let served = serve(&[with_echo, acme_flow()]).await;
    let base = &served.base;
    let hostile = format!("{base}/v1/inbound/hostile");
    let post = |url: &str, token: &str, body: &str| client().post(url).bearer_auth(token).body(body.to_string());
    // The sender learns the kind; the detail (a panic message, a broken contract) is the operator's, in the log.
    for (body, kind) in [
        ("trap", "(crashed)"),
        ("loop", "(timeout)"),
        ("oom", "(memory-limit)"),
        ("flood", "(output-too-large)"),
        ("bad-attributes", "(crashed)"),
        ("bad-status", "(crashed)"),
    ] {
        let started = Instant::now();
        let (status, _, answer) = send(post(&hostile, HOSTILE_TOKEN, body)).await;
        assert_eq!(status, 500, "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(kind), "{body}: {answer}");
        assert!(!answer.to_string().contains("exploded"), "no panic text for the sender: {answer}");
        assert!(started.elapsed() < Duration::from_secs(5), "{body} took {:?}", started.elapsed());
    }
    assert!(inbound_messages(&served).await.is_empty(), "nothing stored");
    // The host keeps serving: a good request to the same connector is stored and mapped.
    let (status, id, answer) = send(post(&hostile, HOSTILE_TOKEN, "c-1\nc-2")).await;
    assert_eq!(status, 202, "{answer}");
    assert!(id.is_some());
    assert_eq!(wait_for_outbox(&served, 2).await.len(), 2);

    let cases = [
        (post(&format!("{base}/v1/inbound/nope"), HOSTILE_TOKEN, "c-1"), 404, "no connection `nope`"),
        (post(&format!("{base}/v1/inbound/echo"), "echo-token", "c-1"), 404, "has no inbound side"),
        (post(&hostile, "wrong-token", "c-1"), 401, "missing or wrong token"),
        (client().post(&hostile).body("c-1"), 401, "missing or wrong token"),
        (post(&hostile, HOSTILE_TOKEN, &"c\n".repeat(10_000)), 413, "larger than the limit"),
    ];
    for (request, expected, part) in cases {
        let (status, _, answer) = send(request).await;
        assert_eq!(status, expected, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(part), "{answer}");
    }
    // A connector that verifies requests refuses an unsigned one before it reads the body.
    let (status, _, answer) = send(post(&format!("{base}/v1/inbound/acme"), "", "{")).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(inbound_messages(&served).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stored_raw_by_an_earlier_version_is_normalized_by_its_connector_and_mapped() {
    let flow = inbound_flow(
        "coupon",
        json!({"connection": "mparticle", "eventName": "coupon_redeemed"}),
        mparticle_connection(),
        "coupon_redeem",
        json!({"customer": "{customer}", "coupon": "{coupon_code}"}),
    );
    let served = serve_with(&[flow], |store| async move {
        // What the host stored before connectors had an inbound side: the raw Webhook batch.
        let raw = InboundMessage {
            connection: "mparticle".into(),
            source: "mparticle.webhook".into(),
            external_id: Some("old-1".into()),
            body: webhook_batch("old-1", "production", "coupon_redeemed"),
        };
        store.record_inbound(&raw).await.unwrap();
        // And one in today's form, to show both are read.
        let normalized = InboundMessage {
            connection: "mparticle".into(),
            source: "test".into(),
            external_id: Some("new-1".into()),
            body: stored_body(&[flowhost::inbound::InboundEvent {
                source: "test".into(),
                event_type: "custom_event".into(),
                event_name: Some("coupon_redeemed".into()),
                identities: vec![("customer_id".into(), "cust-new".into())],
                attributes: json!({"coupon_code": "C-new"}).as_object().cloned().unwrap(),
                ..Default::default()
            }]),
        };
        store.record_inbound(&normalized).await.unwrap();
    })
    .await
    .unwrap();
    let mut events = wait_for_outbox(&served, 2).await;
    events.sort_by_key(|e| e["payload"]["customer"].to_string());
    assert_eq!(events[0]["payload"], json!({"customer": "cust-new", "coupon": "C-new"}));
    assert_eq!(events[1]["payload"], json!({"customer": "cust-old-1", "coupon": "C-old-1"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_flows_of_one_connection_must_use_one_connector() {
    let first = inbound_flow(
        "coupon-a",
        json!({"connection": "mparticle", "eventName": "coupon_redeemed"}),
        mparticle_connection(),
        "a",
        json!({}),
    );
    let second = inbound_flow(
        "lines-b",
        json!({"connection": "mparticle"}),
        json!({"connector": "hostile-inbound"}),
        "b",
        json!({}),
    );
    let Err(ServiceError::Flows(problems)) = serve_with(&[first, second], |_| async {}).await else {
        panic!("the service started with two connectors behind one inbound connection");
    };
    let expected = "flows coupon-a and lines-b both run for its inbound events with different connectors";
    assert!(problems.iter().any(|p| p.contains(expected)), "{problems:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_only_connection_is_disconnected_and_reconnected() {
    let outbound = json!({"id": "echo-out", "version": "1.0.0", "trigger": {"type": "event", "event": "ping"},
        "connections": {"outbound": {"connector": "echo", "config": {"token": {"secret": "ECHO_TOKEN"}}}},
        "nodes": [{"id": "say", "connector": {"connection": "outbound", "capability": "echo",
                                              "input": {"properties": {"message": "hi"}}}}]});
    let served = serve(&[outbound]).await;
    for action in ["disconnect", "reconnect"] {
        let url = format!("{}/v1/connections/outbound/{action}", served.base);
        let (status, _, answer) = send(client().post(url)).await;
        assert_eq!(status, 200, "{action}: {answer}");
    }
    // Every API error answers with the API's JSON body, a wrong method included.
    let (status, _, answer) = send(client().get(format!("{}/v1/events", served.base))).await;
    assert_eq!(status, 405, "{answer}");
    assert!(answer["error"].is_string(), "{answer}");
}
