//! Helpers shared by the emulator's integration tests. Everything talks to 127.0.0.1 only.

use std::path::PathBuf;
use std::sync::{Mutex, Once};
use std::time::Duration;

use base64::Engine as _;
use mparticle_emulator::{EmulatorConfig, RunningEmulator};
use serde_json::{Value, json};

pub use mparticle_emulator::{DEMO_API_KEY, DEMO_API_SECRET, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET};

/// Starts an emulator with `config` on an ephemeral loopback port.
pub async fn start_with(config: EmulatorConfig) -> RunningEmulator {
    mparticle_emulator::start(config, "127.0.0.1:0".parse().unwrap()).await.expect("emulator starts")
}

/// Starts an emulator with the default (demo) configuration.
pub async fn start() -> RunningEmulator {
    start_with(EmulatorConfig::default()).await
}

/// A reqwest client for loopback plain HTTP, one per test runtime (building one is not free,
/// and a client must not outlive the runtime its connections belong to).
pub fn client() -> reqwest::Client {
    static CLIENTS: Mutex<Vec<(tokio::runtime::Id, reqwest::Client)>> = Mutex::new(Vec::new());
    let id = tokio::runtime::Handle::current().id();
    let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = clients.iter().find(|(i, _)| *i == id) {
        return c.clone();
    }
    let c = client_with_timeout(Duration::from_secs(20));
    clients.push((id, c.clone()));
    c
}

/// A fresh reqwest client for loopback plain HTTP (no proxy; rustls needs a provider even unused).
pub fn client_with_timeout(timeout: Duration) -> reqwest::Client {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().no_proxy().timeout(timeout).build().expect("client builds")
}

pub fn basic(key: &str, secret: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}")))
}

pub fn demo_basic() -> String {
    basic(DEMO_API_KEY, DEMO_API_SECRET)
}

/// Gets a token with the demo client.
pub async fn token(emu: &RunningEmulator) -> String {
    let r = client()
        .post(format!("{}/oauth/token", emu.url()))
        .json(&json!({"client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET,
                      "audience": "https://api.mparticle.com", "grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

/// Sends one batch to /v2/events with the demo credentials.
pub async fn post_batch(emu: &RunningEmulator, batch: &Value) -> (u16, String) {
    post_events(emu, "/v2/events", batch).await
}

pub async fn post_events(emu: &RunningEmulator, path: &str, body: &Value) -> (u16, String) {
    let r = client()
        .post(format!("{}{path}", emu.url()))
        .header("authorization", demo_basic())
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A valid batch in the shape the loyalty connector sends.
pub fn valid_batch() -> Value {
    json!({
        "environment": "development",
        "source_request_id": uuid::Uuid::new_v4().to_string(),
        "user_identities": {"customer_id": "1234", "email": "member@example.com"},
        "user_attributes": {"$firstname": "John", "$zip": "10016", "tier": "gold", "tags": ["a", "b"],
                            "points": 120, "vip": true, "nickname": null},
        "deleted_user_attributes": ["old_attr"],
        "events": [{
            "event_type": "custom_event",
            "data": {
                "event_name": "Points Earned",
                "custom_event_type": "transaction",
                "timestamp_unixtime_ms": 1_402_521_613_976_i64,
                "source_message_id": "e8335d31-2031-4bff-afec-17ffc1784697",
                "custom_attributes": {"points": "100", "reason": "purchase"}
            }
        }]
    })
}

pub fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/mparticle")
}

/// Reads a JSON file from the shared mParticle test data (../shared/mparticle beside the repo).
pub fn shared_json(name: &str) -> Value {
    let path = shared_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {} (shared test data beside the repo): {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The first error message of an Events API error body.
pub fn first_message(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    v["errors"][0]["message"].as_str().unwrap_or_else(|| panic!("no errors[0].message in {body}")).to_owned()
}
