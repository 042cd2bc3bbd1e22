//! The Antavo emulator over HTTP. Requests are signed with the connector's Escher implementation
//! (`antavo-core`), which the emulator does not share: two implementations written apart must agree.

mod api;
mod signatures;
mod webhooks;

use antavo_core::escher::{self, Profile, Request};
use antavo_emulator::{DEMO_API_KEY, DEMO_API_SECRET, EmulatorConfig, RunningEmulator};
use serde_json::Value;
use std::time::Duration;

pub async fn start(config: EmulatorConfig) -> RunningEmulator {
    antavo_emulator::start(config, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

pub async fn start_default() -> RunningEmulator {
    start(EmulatorConfig::default()).await
}

pub fn client() -> reqwest::Client {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().unwrap()
}

/// How to sign a request.
#[derive(Clone)]
pub struct Signing {
    pub key: String,
    pub secret: String,
    pub region: String,
    /// Unix seconds.
    pub time: i64,
}

impl Signing {
    pub fn now(emulator: &RunningEmulator) -> Self {
        Signing {
            key: DEMO_API_KEY.into(),
            secret: DEMO_API_SECRET.into(),
            region: "st2".into(),
            time: emulator.now_ms() / 1000,
        }
    }
}

/// The `Date` and `Authorization` of a request to the emulator (path without query; `query` raw).
pub fn sign_for(
    emulator: &RunningEmulator,
    signing: &Signing,
    method: &str,
    path: &str,
    query: &str,
    body: &str,
) -> (String, String) {
    let headers = vec![("host".to_string(), emulator.addr().to_string())];
    let request = Request { method, path, query, headers: &headers, body: body.as_bytes() };
    let scope = escher::antavo_scope(&signing.region);
    let signed =
        escher::sign(&Profile::antavo(), &scope, &signing.key, &signing.secret, &request, &[], signing.time).unwrap();
    (signed.date.1, signed.authorization.1)
}

/// Sends a request signed with `signing` (method, path with query, body); status and JSON body.
pub async fn send_signed(
    emulator: &RunningEmulator,
    signing: &Signing,
    method: &str,
    path_and_query: &str,
    body: &str,
) -> (u16, Value) {
    let url = format!("{}{path_and_query}", emulator.url());
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let host = emulator.addr().to_string();
    let headers = vec![("host".to_string(), host)];
    let request = Request { method, path, query, headers: &headers, body: body.as_bytes() };
    let scope = escher::antavo_scope(&signing.region);
    let signed =
        escher::sign(&Profile::antavo(), &scope, &signing.key, &signing.secret, &request, &[], signing.time).unwrap();
    let builder = match method {
        "GET" => client().get(&url),
        _ => client().post(&url).header("content-type", "application/json").body(body.to_string()),
    };
    let response =
        builder.header("date", signed.date.1).header("authorization", signed.authorization.1).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

pub async fn post(emulator: &RunningEmulator, path: &str, body: &str) -> (u16, Value) {
    send_signed(emulator, &Signing::now(emulator), "POST", path, body).await
}

pub async fn get(emulator: &RunningEmulator, path: &str) -> (u16, Value) {
    send_signed(emulator, &Signing::now(emulator), "GET", path, "").await
}

/// A request without a signature.
pub async fn raw(
    method: reqwest::Method,
    url: String,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut builder = client().request(method, url).body(body.to_string());
    for (n, v) in headers {
        builder = builder.header(*n, *v);
    }
    let response = builder.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)), headers)
}
