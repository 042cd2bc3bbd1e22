//! A scripted, in-memory [`Host`]: answers requests from a queue, keeps the cache and the log, and a fixed
//! clock. No network.

#![allow(dead_code)]

use antavo_core::{Context, Error, Host, HttpRequest, HttpResponse, Level, TransportError};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};

pub const API_KEY: &str = "test_key";
pub const API_SECRET: &str = "api-secret-do-not-leak";
pub const CLIENT_SECRET: &str = "client-secret-do-not-leak";
pub const TOKEN: &str = "token-from-antavo-do-not-leak";
pub const BASE: &str = "http://127.0.0.1:4020";
/// 2024-01-15T10:30:00Z, in milliseconds.
pub const NOW_MS: i64 = 1_705_314_600_000;

pub struct FakeHost {
    pub answers: VecDeque<Result<HttpResponse, TransportError>>,
    pub requests: Vec<HttpRequest>,
    pub cache: HashMap<String, (String, u32)>,
    pub deleted: Vec<String>,
    pub logs: Vec<(Level, String)>,
    pub now_ms: i64,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            answers: VecDeque::new(),
            requests: Vec::new(),
            cache: HashMap::new(),
            deleted: Vec::new(),
            logs: Vec::new(),
            now_ms: NOW_MS,
        }
    }
}

impl FakeHost {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn answer(mut self, status: u16, body: &str) -> Self {
        self.answers.push_back(Ok(response(status, &[], body)));
        self
    }

    pub fn answer_json(self, status: u16, body: Value) -> Self {
        self.answer(status, &body.to_string())
    }

    pub fn fail(mut self, error: TransportError) -> Self {
        self.answers.push_back(Err(error));
        self
    }

    pub fn token(self, token: &str) -> Self {
        self.answer_json(
            200,
            json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600, "scope": "loyalty.async_events"}),
        )
    }

    pub fn body(&self, index: usize) -> Value {
        serde_json::from_slice(self.requests[index].body.as_deref().expect("a body")).expect("a JSON body")
    }

    pub fn urls(&self) -> Vec<String> {
        self.requests.iter().map(|r| format!("{} {}", r.method, r.url)).collect()
    }

    /// Everything the connector reported or sent but the signatures: log lines, URLs, headers, bodies.
    pub fn everything(&self) -> String {
        let mut text: Vec<String> = self.logs.iter().map(|(_, m)| m.clone()).collect();
        for request in &self.requests {
            text.push(request.url.clone());
            text.extend(request.headers.iter().map(|(n, v)| format!("{n}: {v}")));
            text.push(String::from_utf8_lossy(request.body.as_deref().unwrap_or_default()).into_owned());
        }
        text.join("\n")
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

    fn now_ms(&mut self) -> i64 {
        self.now_ms
    }
}

/// A connection with both credential pairs, pointed at a local server.
pub fn connection() -> Value {
    json!({
        "environment": "st2",
        "apiKey": API_KEY,
        "apiSecret": API_SECRET,
        "clientId": "client-id",
        "clientSecret": CLIENT_SECRET,
        "apiUrl": BASE,
    })
}

pub fn context(attempt: u32) -> Context {
    Context { run_id: "run-1".into(), node_id: "node-1".into(), idempotency_key: "run-1/node-1".into(), attempt }
}

pub fn wrap(properties: Value) -> Value {
    json!({ "properties": properties })
}

pub fn invoke(host: &mut dyn Host, capability: &str, input: Value) -> Result<Value, Error> {
    invoke_at(host, capability, input, 1)
}

pub fn invoke_at(host: &mut dyn Host, capability: &str, input: Value, attempt: u32) -> Result<Value, Error> {
    antavo_core::invoke(host, capability, &connection(), &input, &context(attempt))
        .map(|output| serde_json::from_str(&output).expect("JSON output"))
}

/// A customer object as `POST /events` answers it.
pub fn customer_answer(id: &str, points: i64) -> Value {
    json!({"id": id, "status": "active", "score": points, "spent": 0, "spendable": points, "pending": 0,
           "first_name": "Ada", "events": [{"id": "evt-1", "action": "point_add", "points": points}]})
}

pub fn antavo_error(kind: &str, code: i64, message: &str) -> Value {
    json!({"error": {"type": kind, "code": code, "message": message}})
}
