//! In-memory state: the workspace (customers, balances, transaction ids), what was received, counters, tokens,
//! async events, faults, the rate limiter and the webhook subscriptions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::faults::FaultRule;
use crate::{EmulatorConfig, WebhookSubscription};

/// Locks a mutex, ignoring poisoning (a panicking handler must not take the emulator down).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An error as Antavo answers it: `{"error": {"type", "code", "message"}}` with an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub code: i64,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, code: i64, message: impl Into<String>) -> Self {
        ApiError { status, kind, code, message: message.into() }
    }

    pub fn bad_request(code: i64, message: impl Into<String>) -> Self {
        Self::new(400, "BadRequestException", code, message)
    }

    pub fn body(&self) -> Value {
        json!({"error": {"type": self.kind, "code": self.code, "message": self.message}})
    }
}

/// One event the workspace accepted, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcceptedEvent {
    /// Arrival order, from 1.
    pub seq: u64,
    /// The event id Antavo gave it.
    pub id: String,
    /// The customer's Antavo id.
    pub customer: String,
    /// The action, e.g. `point_add`.
    pub action: String,
    /// The event's data as received.
    pub data: Value,
    /// Change of the spendable balance.
    pub points: i64,
    /// How it came: `events`, `events/bulk`, `async`, or `trigger` (made inside the emulator).
    pub via: String,
    /// The API key that signed it (none for async events and triggers).
    pub api_key: Option<String>,
    /// When it was accepted, by the emulator's clock.
    pub received_unix_ms: i64,
}

/// One request to an Antavo route, as received and answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// Arrival order, from 1.
    pub seq: u64,
    /// `GET`, `POST`.
    pub method: String,
    /// The raw path.
    pub path: String,
    /// The raw query, without `?`.
    pub query: String,
    /// The answer's status.
    pub status: u16,
    /// The key whose signature was verified, if any.
    pub api_key: Option<String>,
    /// The body as text (lossy), at most 64 KiB.
    pub body: String,
    /// The injected fault that answered it, if any (`429`, `503`, `stall`).
    pub fault: Option<String>,
    /// When it arrived, by the emulator's clock.
    pub received_unix_ms: i64,
}

/// One webhook delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The event delivered.
    pub event_id: String,
    /// Where to.
    pub url: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The receiver's status, or `None` when no answer came.
    pub status: Option<u16>,
    /// Why no answer came, if none did.
    pub error: Option<String>,
    /// When it was sent, by the emulator's clock.
    pub unix_ms: i64,
}

/// Counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests per route, keyed `"METHOD /route"`, faults and refusals included.
    pub requests: BTreeMap<String, u64>,
    /// Events the workspace accepted (any way in).
    pub accepted_events: u64,
    /// Events refused for their content (unknown customer, repeat, malformed...).
    pub refused_events: u64,
    /// Requests refused for their signature, key or token (401).
    pub unauthorized: u64,
    /// Requests refused by the rate limit (429, not injected).
    pub throttled: u64,
    /// Requests answered by an injected fault.
    pub faults_injected: u64,
    /// OAuth tokens issued.
    pub tokens_issued: u64,
    /// Webhook deliveries answered 2xx.
    pub webhooks_delivered: u64,
    /// Webhook delivery attempts that failed.
    pub webhook_attempts_failed: u64,
}

/// A customer of the workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct Customer {
    pub id: String,
    /// `active` or `opted_out`.
    pub status: String,
    /// Profile fields (email, first_name, ..., custom fields).
    pub profile: Map<String, Value>,
    pub score: i64,
    pub spent: i64,
    pub spendable: i64,
    pub pending: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Customer {
    pub fn new(id: &str, now_s: i64) -> Self {
        Customer {
            id: id.to_string(),
            status: "active".into(),
            profile: Map::new(),
            score: 0,
            spent: 0,
            spendable: 0,
            pending: 0,
            created_at: now_s,
            updated_at: now_s,
        }
    }

    /// The Customer API's object.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("id".into(), json!(self.id));
        for field in ["first_name", "last_name", "email", "language", "currency", "mobile_phone"] {
            out.insert(field.into(), self.profile.get(field).cloned().unwrap_or(Value::Null));
        }
        for (k, v) in &self.profile {
            out.entry(k.clone()).or_insert_with(|| v.clone());
        }
        out.insert("status".into(), json!(self.status));
        out.insert("handler".into(), json!(self.id));
        out.insert("score".into(), json!(self.score));
        out.insert("spent".into(), json!(self.spent));
        out.insert("spendable".into(), json!(self.spendable));
        out.insert("pending".into(), json!(self.pending));
        out.insert("reserved".into(), json!(0));
        out.insert("expired".into(), json!(0));
        out.insert("created_at".into(), json!(self.created_at));
        out.insert("updated_at".into(), json!(self.updated_at));
        Value::Object(out)
    }
}

/// An event queued with the Async Events API.
#[derive(Debug, Clone)]
pub(crate) struct AsyncEvent {
    pub event: Value,
    pub submitted_ms: i64,
    /// `(status, response)` once processed.
    pub result: Option<(String, Value)>,
}

/// The workspace's data.
#[derive(Debug, Default)]
pub(crate) struct Workspace {
    pub customers: BTreeMap<String, Customer>,
    pub transaction_ids: HashSet<String>,
    pub events: Vec<AcceptedEvent>,
    pub next_event: u64,
    pub tokens: HashMap<String, i64>,
    pub async_events: HashMap<String, AsyncEvent>,
}

/// A token bucket per API key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    pub tokens: f64,
    pub at_ms: i64,
}

pub(crate) struct Shared {
    pub config: EmulatorConfig,
    pub workspace: Mutex<Workspace>,
    pub requests: Mutex<Vec<RecordedRequest>>,
    pub request_seq: AtomicU64,
    pub stats: Mutex<Stats>,
    pub faults: Mutex<Vec<FaultRule>>,
    pub buckets: Mutex<HashMap<String, Bucket>>,
    pub clock_offset_ms: AtomicI64,
    pub subscriptions: Mutex<Vec<WebhookSubscription>>,
    pub deliveries: Mutex<Vec<DeliveryRecord>>,
    pub webhook_queue: Mutex<Option<tokio::sync::mpsc::UnboundedSender<crate::webhooks::Delivery>>>,
    /// Deliveries queued and not yet finished (for [`crate::EmulatorHandle::webhooks_idle`]).
    pub webhooks_pending: AtomicU64,
}

/// The customers of the seed: three members with profiles and balances.
pub fn seed_customers(now_s: i64) -> Vec<Customer> {
    let member = |id: &str, first: &str, last: &str, email: &str, points: i64| {
        let mut c = Customer::new(id, now_s);
        c.profile.insert("first_name".into(), json!(first));
        c.profile.insert("last_name".into(), json!(last));
        c.profile.insert("email".into(), json!(email));
        c.profile.insert("language".into(), json!("en"));
        c.score = points;
        c.spendable = points;
        c
    };
    vec![
        member("cust-1001", "Ada", "Lovelace", "ada@example.com", 1250),
        member("cust-1002", "Grace", "Hopper", "grace@example.com", 90),
        member("cust-1003", "Alan", "Turing", "alan@example.com", 0),
    ]
}

impl Shared {
    pub fn new(config: EmulatorConfig) -> Self {
        let shared = Shared {
            subscriptions: Mutex::new(config.webhooks.clone()),
            config,
            workspace: Mutex::new(Workspace::default()),
            requests: Mutex::new(Vec::new()),
            request_seq: AtomicU64::new(0),
            stats: Mutex::new(Stats::default()),
            faults: Mutex::new(Vec::new()),
            buckets: Mutex::new(HashMap::new()),
            clock_offset_ms: AtomicI64::new(0),
            deliveries: Mutex::new(Vec::new()),
            webhook_queue: Mutex::new(None),
            webhooks_pending: AtomicU64::new(0),
        };
        shared.seed();
        shared
    }

    fn seed(&self) {
        let now = self.now_ms() / 1000;
        let mut ws = lock(&self.workspace);
        *ws = Workspace::default();
        if self.config.seed_data {
            for c in seed_customers(now) {
                ws.customers.insert(c.id.clone(), c);
            }
        }
    }

    /// The emulator's clock: the machine's plus the offset tests set.
    pub fn now_ms(&self) -> i64 {
        crate::time::system_now_ms() + self.clock_offset_ms.load(Ordering::Relaxed)
    }

    pub fn count(&self, update: impl FnOnce(&mut Stats)) {
        update(&mut lock(&self.stats));
    }

    /// Back to the seed: customers, events, requests, counters, faults, buckets, async events, deliveries.
    /// Tokens issued stay valid; subscriptions stay.
    pub fn reset(&self) {
        let tokens = std::mem::take(&mut lock(&self.workspace).tokens);
        self.seed();
        lock(&self.workspace).tokens = tokens;
        lock(&self.requests).clear();
        *lock(&self.stats) = Stats::default();
        lock(&self.faults).clear();
        lock(&self.buckets).clear();
        lock(&self.deliveries).clear();
    }

    /// Takes one request from the key's bucket; `false` when it is empty (429).
    pub fn take_rate_token(&self, key: &str) -> bool {
        let per_minute = f64::from(self.config.rate_limit_per_minute.max(1));
        let now = self.now_ms();
        let mut buckets = lock(&self.buckets);
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket { tokens: per_minute, at_ms: now });
        let refill = (now - bucket.at_ms).max(0) as f64 * per_minute / 60_000.0;
        bucket.tokens = (bucket.tokens + refill).min(per_minute);
        bucket.at_ms = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Actions whose `points` must be an integer.
pub const POINT_ACTIONS: [&str; 4] = ["point_add", "point_sub", "point_spend", "point_unspend"];
/// Actions that cannot be repeated for a customer in a row.
pub const NOT_REPEATABLE: [&str; 1] = ["opt_out"];

/// What [`Workspace::apply`] made of an event.
pub(crate) struct Applied {
    pub customer: Value,
    pub accepted: AcceptedEvent,
}

fn field_text(data: &Map<String, Value>, name: &str) -> Option<String> {
    match data.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

impl Workspace {
    /// Finds the customer an event names: by id, or by the `external_id` field's value.
    fn resolve(
        &self,
        customer: &str,
        external_id: Option<&str>,
        fields: &[String],
    ) -> Result<Option<String>, ApiError> {
        match external_id {
            None => Ok(self.customers.contains_key(customer).then(|| customer.to_string())),
            Some(field) if fields.iter().any(|f| f == field) => Ok(self
                .customers
                .values()
                .find(|c| c.profile.get(field).and_then(Value::as_str) == Some(customer))
                .map(|c| c.id.clone())),
            Some(field) => Err(ApiError::bad_request(0, format!("Unknown external id field \"{field}\""))),
        }
    }

    /// Applies one event as Antavo's Events API does (the reference, §5): validation, the unknown-customer
    /// rules, balances, transaction ids. Returns the customer after it and the event recorded.
    pub fn apply(
        &mut self,
        config: &EmulatorConfig,
        event: &Value,
        via: &str,
        api_key: Option<&str>,
        now_ms: i64,
    ) -> Result<Applied, ApiError> {
        let now_s = now_ms / 1000;
        let Some(obj) = event.as_object() else {
            return Err(ApiError::bad_request(0, "The event must be a JSON object"));
        };
        let text = |name: &str| match obj.get(name) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(_)) => Ok(None),
            Some(_) => Err(ApiError::bad_request(0, format!("Property {name} must be a string"))),
        };
        let customer =
            text("customer")?.ok_or_else(|| ApiError::bad_request(0, "Property customer cannot be empty"))?;
        let action = text("action")?.ok_or_else(|| ApiError::bad_request(0, "Property action cannot be empty"))?;
        if !config.actions.contains(&action) {
            return Err(ApiError::bad_request(0, format!("Invalid action: {action}")));
        }
        let data = match obj.get("data") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(d)) => d.clone(),
            Some(_) => return Err(ApiError::bad_request(0, "Property data must be an object")),
        };
        let external_id = text("external_id")?;
        let points = if POINT_ACTIONS.contains(&action.as_str()) {
            match data.get("points") {
                Some(Value::Number(n)) if n.is_i64() => n.as_i64().unwrap_or_default(),
                Some(_) => return Err(ApiError::bad_request(0, "Property points must be an integer")),
                None => return Err(ApiError::bad_request(0, "Property points cannot be empty")),
            }
        } else {
            0
        };
        let transaction_id = if action.starts_with("checkout") || action.contains("refund") {
            Some(
                field_text(&data, "transaction_id")
                    .ok_or_else(|| ApiError::bad_request(0, "Property transaction_id cannot be empty"))?,
            )
        } else {
            None
        };
        let id = self.resolve(&customer, external_id.as_deref(), &config.external_id_fields)?;
        let id = match (id, action.as_str()) {
            (Some(id), "opt_in") => {
                let existing = &self.customers[&id];
                if existing.status == "active" {
                    return Err(ApiError::bad_request(112_101, "Customer has already been opted-in."));
                }
                // Re-joining after an opt-out starts empty.
                self.customers.insert(id.clone(), Customer::new(&id, now_s));
                id
            }
            (None, "opt_in") => {
                let id = customer.clone();
                self.customers.insert(id.clone(), Customer::new(&id, now_s));
                id
            }
            (Some(id), _) => id,
            (None, _) => return Err(ApiError::new(404, "NotFoundException", 160_212, "Customer not found")),
        };
        let current = &self.customers[&id];
        if current.status != "active" {
            if NOT_REPEATABLE.contains(&action.as_str()) {
                return Err(ApiError::bad_request(10_001, format!("Action \"{action}\" cannot be repeated")));
            }
            return Err(ApiError::bad_request(160_216, "Customer is not active"));
        }
        if action == "checkout" {
            let tx = transaction_id.clone().unwrap_or_default();
            if self.transaction_ids.contains(&tx) {
                return Err(ApiError::bad_request(5003, "The transaction ID has already been used"));
            }
        }
        // Accepted: apply it.
        let c = self.customers.get_mut(&id).expect("resolved above");
        let mut delta = 0;
        match action.as_str() {
            "point_add" | "point_unspend" => {
                delta = points;
                c.score += if action == "point_add" { points } else { 0 };
                c.spent -= if action == "point_unspend" { points } else { 0 };
            }
            "point_sub" => delta = -points,
            "point_spend" => {
                delta = -points;
                c.spent += points;
            }
            "checkout" => {
                // The emulator's earning rule: one point per whole unit of `total`.
                let total = data.get("total").and_then(Value::as_f64).unwrap_or(0.0);
                delta = total.floor().max(0.0) as i64;
                c.score += delta;
            }
            "opt_in" | "profile" => {
                for (k, v) in &data {
                    c.profile.insert(k.clone(), v.clone());
                }
            }
            "opt_out" => {
                c.status = "opted_out".into();
                c.profile.clear();
            }
            _ => {}
        }
        c.spendable += delta;
        c.updated_at = now_s;
        if let Some(tx) = transaction_id.filter(|_| action == "checkout") {
            self.transaction_ids.insert(tx);
        }
        self.next_event += 1;
        let accepted = AcceptedEvent {
            seq: self.next_event,
            id: format!("evt-{:06}", self.next_event),
            customer: id.clone(),
            action: action.clone(),
            data: Value::Object(data),
            points: delta,
            via: via.to_string(),
            api_key: api_key.map(str::to_string),
            received_unix_ms: now_ms,
        };
        self.events.push(accepted.clone());
        let mut customer_json = self.customers[&id].to_json();
        let changed = if delta != 0 {
            json!([{"id": accepted.id, "action": action, "points": delta, "expdate": null,
                    "account": {"id": "default", "name": "Default"}}])
        } else {
            json!([])
        };
        customer_json["events"] = changed;
        Ok(Applied { customer: customer_json, accepted })
    }
}
