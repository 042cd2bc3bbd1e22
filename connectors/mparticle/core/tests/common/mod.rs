//! A scripted, in-memory [`Host`]: answers requests from a queue, keeps the cache and the log. No network.

#![allow(dead_code)]

use mparticle_core::{Context, Error, Host, HttpRequest, HttpResponse, Level, TransportError};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};

pub const CLIENT_SECRET: &str = "client-secret-do-not-leak";
pub const API_SECRET: &str = "api-secret-do-not-leak";
pub const TOKEN: &str = "token-from-the-emulator-do-not-leak";

#[derive(Default)]
pub struct FakeHost {
    /// What the next requests get, in order; a request with nothing left panics.
    pub answers: VecDeque<Result<HttpResponse, TransportError>>,
    pub requests: Vec<HttpRequest>,
    pub cache: HashMap<String, (String, u32)>,
    pub deleted: Vec<String>,
    pub logs: Vec<(Level, String)>,
    /// The percentages of the rate limit used that the connector reported, in order.
    pub usage: Vec<u64>,
}

impl FakeHost {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn answer(mut self, status: u16, body: &str) -> Self {
        self.answers.push_back(Ok(response(status, &[], body)));
        self
    }

    pub fn answer_with(mut self, status: u16, headers: &[(&str, &str)], body: &str) -> Self {
        self.answers.push_back(Ok(response(status, headers, body)));
        self
    }

    pub fn fail(mut self, error: TransportError) -> Self {
        self.answers.push_back(Err(error));
        self
    }

    /// A successful token answer.
    pub fn token(self, token: &str) -> Self {
        self.answer(200, &json!({"access_token": token, "expires_in": 28800, "token_type": "Bearer"}).to_string())
    }

    pub fn with_cached_token(mut self, token: &str) -> Self {
        self.cache.insert("oauth-token".into(), (token.into(), 28_500));
        self
    }

    pub fn body(&self, index: usize) -> Value {
        serde_json::from_slice(self.requests[index].body.as_deref().expect("a body")).expect("a JSON body")
    }

    pub fn urls(&self) -> Vec<String> {
        self.requests.iter().map(|r| format!("{} {}", r.method, r.url)).collect()
    }

    /// Everything the connector reported: log lines and request lines.
    pub fn log_text(&self) -> String {
        self.logs.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("\n")
    }
}

pub fn response(status: u16, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    HttpResponse {
        status,
        headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        body: body.as_bytes().to_vec(),
    }
}

impl Host for FakeHost {
    fn fetch(&mut self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        self.requests.push(request.clone());
        self.answers.pop_front().unwrap_or_else(|| panic!("unexpected request {} {}", request.method, request.url))
    }

    fn cache_get(&mut self, key: &str) -> Option<String> {
        self.cache.get(key).map(|(v, _)| v.clone())
    }

    fn cache_set(&mut self, key: &str, value: &str, ttl_seconds: u32) {
        self.cache.insert(key.into(), (value.into(), ttl_seconds));
    }

    fn cache_delete(&mut self, key: &str) {
        self.deleted.push(key.into());
        self.cache.remove(key);
    }

    fn log(&mut self, level: Level, message: &str) {
        self.logs.push((level, message.into()));
    }

    fn report_usage(&mut self, percentage_used: u64) {
        self.usage.push(percentage_used);
    }
}

pub const BASE: &str = "http://127.0.0.1:4010";

/// A connection with both credential pairs, pointed at an emulator.
pub fn connection() -> Value {
    json!({
        "clientId": "client-id",
        "clientSecret": CLIENT_SECRET,
        "apiKey": "api-key",
        "apiSecret": API_SECRET,
        "pod": "US1",
        "environment": "development",
        "authUrl": format!("{BASE}/oauth/token"),
        "platformApiUrl": BASE,
        "eventsApiUrl": format!("{BASE}/v2"),
    })
}

pub fn context(key: &str, attempt: u32) -> Context {
    Context { run_id: "run-1".into(), node_id: "node-1".into(), idempotency_key: key.into(), attempt }
}

pub fn wrap(properties: Value) -> Value {
    json!({ "properties": properties })
}

/// The pointers of an invalid-input error.
pub fn pointers(error: &mparticle_core::Error) -> Vec<String> {
    match error {
        mparticle_core::Error::InvalidInput(errors) => errors.iter().map(|e| e.pointer.clone()).collect(),
        other => panic!("expected invalid input, got {other:?}"),
    }
}

/// The marketing event input of the Antavo point_add use case.
pub fn point_add() -> Value {
    wrap(json!({
        "eventName": "point_add",
        "eventType": "transaction",
        "payload": {"points": 100, "reason": "purchase", "double": true, "ratio": 1.5},
        "identityType": "customer_id",
        "identityValue": "member-42",
    }))
}

pub fn profile_sync() -> Value {
    wrap(json!({
        "identityType": "email",
        "identityValue": "ada@example.com",
        "attributes": {"$FirstName": "Ada", "$zip": "10016", "tier": "gold", "points_balance": 1200,
                       "vip": false, "interests": ["travel", "food"], "old_segment": null},
    }))
}

/// [`mparticle_core::invoke`] with its output (JSON text) parsed, to inspect.
pub fn invoke(
    host: &mut dyn Host,
    capability: &str,
    connection: &Value,
    input: &Value,
    context: &Context,
) -> Result<Value, Error> {
    mparticle_core::invoke(host, capability, connection, input, context).map(|output| parse_output(&output))
}

/// [`mparticle_core::invoke_batch`] with each output parsed.
pub fn invoke_batch(
    host: &mut dyn Host,
    capability: &str,
    connection: &Value,
    items: &[(Value, Context)],
) -> Vec<Result<Value, Error>> {
    let results = mparticle_core::invoke_batch(host, capability, connection, items);
    results.into_iter().map(|result| result.map(|output| parse_output(&output))).collect()
}

fn parse_output(output: &str) -> Value {
    serde_json::from_str(output).unwrap_or_else(|e| panic!("the output is not JSON ({e}): {output}"))
}
