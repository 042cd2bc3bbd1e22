//! In-memory state: Platform API data, recorded batches, counters, tokens, faults.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::EmulatorConfig;
use crate::faults::FaultRule;
use crate::throttle::Throttle;

/// One batch the Events API accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedBatch {
    /// Arrival order, from 1.
    pub seq: u64,
    /// The API key (Basic auth user name) the batch was sent with.
    pub api_key: String,
    /// Request path: `/v2/events`, `/v2/bulkevents` or `/v2/bulkevents/historical`.
    pub endpoint: String,
    /// Arrival time, RFC 3339 UTC with milliseconds.
    pub received_at: String,
    /// Arrival time in Unix milliseconds.
    pub received_unix_ms: i64,
    /// The batch exactly as sent (parsed JSON).
    pub batch: Value,
}

/// Counters. Batch counters obey `received == accepted + duplicates + rejected`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Batches that reached validation (after fault injection and authentication). A request
    /// whose body could not be read as the expected JSON shape counts as one batch.
    pub received: u64,
    /// Batches accepted and recorded.
    pub accepted: u64,
    /// Batches answered 202 but not recorded because their `source_request_id` was already
    /// accepted for the same API key.
    pub duplicates: u64,
    /// Batches refused (400/413/415). In a refused bulk request every batch counts as refused.
    pub rejected: u64,
    /// Requests per endpoint, keyed `"METHOD /route/template"` (e.g. `"POST /v2/events"`),
    /// including requests that got an injected fault or an auth error.
    pub requests: BTreeMap<String, u64>,
    /// Number of requests that got an injected fault.
    pub faults_injected: u64,
    /// Number of access tokens issued by `POST /oauth/token`.
    pub tokens_issued: u64,
    /// Events API requests answered 429 because their API key was over its provisioned throughput (not counting
    /// injected faults).
    #[serde(default)]
    pub throttled_requests: u64,
    /// The batches in those requests (not counted in `received`).
    #[serde(default)]
    pub throttled_batches: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub id: i64,
    pub name: String,
    pub created_on: String,
    pub last_modified_on: String,
    /// Applications in the account; an account with applications cannot be deleted.
    pub applications: u32,
}

impl Account {
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "last_modified_on": self.last_modified_on,
            "data_type": "account",
            "id": self.id,
            "created_on": self.created_on,
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Workspace {
    pub id: i64,
    pub account_id: i64,
    pub name: String,
    pub created_on: String,
}

impl Workspace {
    /// The `/v1/workspace` shape: `id` is a string there.
    pub fn to_json(&self) -> Value {
        json!({"id": self.id.to_string(), "name": self.name, "data_type": "workspace", "created_on": self.created_on})
    }

    /// The shape inside audiences: `id` is an integer there.
    pub fn to_audience_json(&self) -> Value {
        json!({"name": self.name, "id": self.id, "data_type": "workspace", "created_on": self.created_on})
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Audience {
    pub id: i64,
    pub account_id: i64,
    pub workspace_ids: Vec<i64>,
    pub json: Value,
}

#[derive(Debug, Clone)]
pub(crate) struct CalculatedAttribute {
    pub id: i64,
    pub workspace_id: i64,
    pub name: String,
    pub json: Value,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Platform {
    pub accounts: Vec<Account>,
    pub workspaces: Vec<Workspace>,
    pub audiences: Vec<Audience>,
    pub calculated_attributes: Vec<CalculatedAttribute>,
}

impl Platform {
    pub fn account(&self, id: i64) -> Option<&Account> {
        self.accounts.iter().find(|a| a.id == id)
    }
}

#[derive(Debug, Default)]
pub(crate) struct EventStore {
    pub batches: Vec<RecordedBatch>,
    /// Accepted `source_request_id`s per API key.
    pub seen: HashMap<String, HashSet<String>>,
    pub received: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub next_seq: u64,
}

pub(crate) struct Shared {
    pub config: EmulatorConfig,
    pub platform: Mutex<Platform>,
    pub events: Mutex<EventStore>,
    /// Access token -> expiry.
    pub tokens: Mutex<HashMap<String, Instant>>,
    pub faults: Mutex<Vec<FaultRule>>,
    /// Cheap check before locking `faults`.
    pub fault_count: AtomicU64,
    pub requests: Mutex<BTreeMap<String, u64>>,
    pub faults_injected: AtomicU64,
    pub tokens_issued: AtomicU64,
    /// Provisioned throughput per API key.
    pub throttle: Mutex<Throttle>,
    pub throttled_requests: AtomicU64,
    pub throttled_batches: AtomicU64,
}

/// Locks a mutex, ignoring poisoning (a panicking handler must not take the emulator down).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn new(config: EmulatorConfig) -> Shared {
        let platform = if config.seed_data { seed() } else { Platform::default() };
        Shared {
            throttle: Mutex::new(Throttle::new(config.batches_per_second)),
            throttled_requests: AtomicU64::new(0),
            throttled_batches: AtomicU64::new(0),
            config,
            platform: Mutex::new(platform),
            events: Mutex::new(EventStore::default()),
            tokens: Mutex::new(HashMap::new()),
            faults: Mutex::new(Vec::new()),
            fault_count: AtomicU64::new(0),
            requests: Mutex::new(BTreeMap::new()),
            faults_injected: AtomicU64::new(0),
            tokens_issued: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> Stats {
        let (received, accepted, duplicates, rejected) = {
            let e = lock(&self.events);
            (e.received, e.accepted, e.duplicates, e.rejected)
        };
        Stats {
            received,
            accepted,
            duplicates,
            rejected,
            requests: lock(&self.requests).clone(),
            faults_injected: self.faults_injected.load(Ordering::Relaxed),
            tokens_issued: self.tokens_issued.load(Ordering::Relaxed),
            throttled_requests: self.throttled_requests.load(Ordering::Relaxed),
            throttled_batches: self.throttled_batches.load(Ordering::Relaxed),
        }
    }

    pub fn set_faults(&self, rules: Vec<FaultRule>) {
        let mut f = lock(&self.faults);
        *f = rules;
        self.fault_count.store(f.len() as u64, Ordering::Relaxed);
    }

    pub fn add_faults(&self, rules: Vec<FaultRule>) -> Vec<FaultRule> {
        let mut f = lock(&self.faults);
        f.extend(rules);
        self.fault_count.store(f.len() as u64, Ordering::Relaxed);
        f.clone()
    }

    pub fn take_fault(&self, path: &str) -> Option<FaultRule> {
        if self.fault_count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut f = lock(&self.faults);
        let out = crate::faults::take(&mut f, path);
        self.fault_count.store(f.len() as u64, Ordering::Relaxed);
        if out.is_some() {
            self.faults_injected.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    pub fn count_request(&self, key: String) {
        *lock(&self.requests).entry(key).or_insert(0) += 1;
    }

    pub fn expire_tokens(&self) -> usize {
        let mut t = lock(&self.tokens);
        let now = Instant::now();
        let mut n = 0;
        for exp in t.values_mut() {
            if *exp > now {
                n += 1;
            }
            *exp = now;
        }
        n
    }

    /// Back to the seed: Platform data, batches, dedup memory, counters and faults. Issued
    /// tokens stay valid (they are credentials, not data).
    pub fn reset(&self) {
        *lock(&self.platform) = if self.config.seed_data { seed() } else { Platform::default() };
        *lock(&self.events) = EventStore::default();
        lock(&self.requests).clear();
        self.set_faults(Vec::new());
        self.faults_injected.store(0, Ordering::Relaxed);
        self.tokens_issued.store(0, Ordering::Relaxed);
        *lock(&self.throttle) = Throttle::new(self.config.batches_per_second);
        self.throttled_requests.store(0, Ordering::Relaxed);
        self.throttled_batches.store(0, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// Seed data, shaped like the examples of mParticle's Platform API reference.

fn ws(id: i64, account_id: i64, name: &str, created_on: &str) -> Workspace {
    Workspace { id, account_id, name: name.to_owned(), created_on: created_on.to_owned() }
}

#[allow(clippy::too_many_arguments)]
fn audience(
    p: &Platform,
    id: i64,
    account_id: i64,
    name: &str,
    size: u64,
    added: u64,
    dropped: u64,
    workspace_ids: &[i64],
    outputs: Value,
    modified: &str,
) -> Audience {
    let workspaces: Vec<Value> = workspace_ids
        .iter()
        .filter_map(|w| p.workspaces.iter().find(|x| x.id == *w))
        .map(Workspace::to_audience_json)
        .collect();
    Audience {
        id,
        account_id,
        workspace_ids: workspace_ids.to_vec(),
        json: json!({
            "name": name,
            "external_name": name,
            "size": size,
            "created_by": "jsmith",
            "last_modified_by": "mmann",
            "last_modified_on": modified,
            "is_calculated": false,
            "added_last_24_hours": added,
            "dropped_last_24_hours": dropped,
            "status": "active",
            "workspaces": workspaces,
            "connected_outputs": outputs,
            "data_type": "audience",
            "id": id,
        }),
    }
}

fn output(provider: &str, configs: &[&str]) -> Value {
    let configurations: Vec<Value> = configs.iter().map(|c| json!({"name": c})).collect();
    json!({"provider_name": provider, "configurations": configurations, "data_type": "audience_output"})
}

fn definition(datapoint: Value, conditions: Value, calculation_type: &str, time_period: Value, cutoff: &str) -> Value {
    json!({
        "recipe_type": "event",
        "datapoint": datapoint,
        "conditions": conditions,
        "calculation_type": calculation_type,
        "time_period": time_period,
        "seeding": {"cutoff_date": cutoff},
    })
}

fn since(date: &str) -> Value {
    json!({"type": "since", "date": date, "within": null, "within_unit": null})
}

fn within(n: u64, unit: &str) -> Value {
    json!({"type": "within", "date": null, "within": n, "within_unit": unit})
}

#[allow(clippy::too_many_arguments)]
fn calculated(
    id: i64,
    workspace_id: i64,
    name: &str,
    description: &str,
    created_on: &str,
    modified_on: &str,
    active: Value,
    draft: Value,
    audience_count: u64,
    activated_on: Option<&str>,
) -> CalculatedAttribute {
    CalculatedAttribute {
        id,
        workspace_id,
        name: name.to_owned(),
        json: json!({
            "id": id,
            "name": name,
            "description": description,
            "created_by": "loyalty-admin@antavo.example",
            "created_on": created_on,
            "last_modified_on": modified_on,
            "last_modified_by": "loyalty-admin@antavo.example",
            "active_definition": active,
            "draft_definition": draft,
            "audience_count": audience_count,
            "activated_on": activated_on,
            "activated_by": activated_on.map(|_| "loyalty-admin@antavo.example"),
        }),
    }
}

fn number_condition(attribute: &str, operator: &str, value: &str) -> Value {
    json!({"type": "number", "operator": operator, "attribute_name": attribute, "value": value,
           "values": null, "min_value": null, "max_value": null})
}

/// The seeded Platform API data.
pub(crate) fn seed() -> Platform {
    let mut p = Platform::default();
    p.accounts = vec![
        Account {
            id: 1,
            name: "Antavo Loyalty Demo".into(),
            created_on: "2021-03-04T09:15:22.417".into(),
            last_modified_on: "2024-11-02T16:40:08.113".into(),
            applications: 2,
        },
        Account {
            id: 2,
            name: "Antavo Loyalty Staging".into(),
            created_on: "2022-06-17T13:02:45.090".into(),
            last_modified_on: "2024-08-21T07:55:31.602".into(),
            applications: 1,
        },
        Account {
            id: 3,
            name: "Sandbox".into(),
            created_on: "2023-01-09T11:30:00.250".into(),
            last_modified_on: "2023-01-09T11:30:00.250".into(),
            applications: 0,
        },
    ];
    p.workspaces = vec![
        ws(1234, 1, "Loyalty Production", "2021-03-04T09:20:11.337"),
        ws(1235, 1, "Loyalty Web", "2021-05-12T14:03:52.108"),
        ws(4302, 2, "mP Traveller", "2017-02-02T11:20:23"),
        ws(5001, 3, "Sandbox Workspace", "2023-01-09T11:31:12.004"),
    ];
    p.audiences = vec![
        audience(
            &p,
            7622,
            1,
            "Abandoned Cart",
            342,
            10,
            7,
            &[1234],
            json!([output("Mixpanel", &["Prod"]), output("Antavo", &["Loyalty Production"])]),
            "2024-10-12T17:27:34.387",
        ),
        audience(
            &p,
            7623,
            1,
            "Gold Tier Members",
            1874,
            23,
            4,
            &[1234, 1235],
            json!([output("Antavo", &["Loyalty Production"]), output("Braze", &["Prod", "Staging"])]),
            "2024-10-30T08:12:09.541",
        ),
        audience(
            &p,
            7624,
            1,
            "Points Expiring Soon",
            519,
            61,
            48,
            &[1234],
            json!([output("Braze", &["Prod"])]),
            "2024-11-01T21:45:00.003",
        ),
        audience(&p, 7625, 1, "Lapsed Members (90 days)", 2210, 0, 12, &[1235], json!([]), "2024-09-18T10:04:55.780"),
        audience(
            &p,
            8101,
            2,
            "Staging Testers",
            12,
            0,
            0,
            &[4302],
            json!([output("Webhook", &["QA"])]),
            "2024-08-21T08:00:00.000",
        ),
    ];
    let purchase = json!({"type": "event", "event_name": "Purchase", "attribute_name": "Total Amount",
        "event_type": "commerce_event", "custom_event_type": "purchase", "attribute_category": "product_attribute",
        "use_product_quantity": true});
    let points = json!({"type": "event", "event_name": "Points Earned", "attribute_name": "points",
        "event_type": "custom_event", "custom_event_type": "transaction", "attribute_category": "event_attribute",
        "use_product_quantity": false});
    let last_purchase = json!({"type": "event", "event_name": "Purchase", "attribute_name": null,
        "event_type": "commerce_event", "custom_event_type": "purchase", "attribute_category": null,
        "use_product_quantity": false});
    let checkout = json!({"type": "event", "event_name": "Checkout", "attribute_name": null,
        "event_type": "commerce_event", "custom_event_type": "checkout", "attribute_category": null,
        "use_product_quantity": false});
    let tier = json!({"type": "event", "event_name": "Tier Changed", "attribute_name": "tier",
        "event_type": "custom_event", "custom_event_type": "user_preference", "attribute_category": "event_attribute",
        "use_product_quantity": false});
    p.calculated_attributes = vec![
        calculated(
            5,
            1234,
            "Lifetime Points",
            "Sum of loyalty points earned over the member's lifetime.",
            "2021-03-10T15:34:44.69",
            "2024-06-06T15:04:22.043",
            definition(points.clone(), json!([]), "sum", since("2021-03-01T00:00:00"), "2021-03-02T00:00:00"),
            definition(points, json!([]), "sum", since("2021-03-01T00:00:00"), "2021-03-02T00:00:00"),
            2,
            Some("2021-03-11T19:24:50.426Z"),
        ),
        calculated(
            6,
            1234,
            "Last Purchase Date",
            "Timestamp of the member's most recent purchase.",
            "2021-03-10T15:40:02.118",
            "2023-02-14T09:12:45.5",
            definition(
                last_purchase,
                json!([]),
                "last_occurrence_timestamp",
                within(365, "day"),
                "2021-03-11T00:00:00",
            ),
            Value::Null,
            1,
            Some("2021-03-11T19:30:12.001Z"),
        ),
        calculated(
            7,
            1234,
            "Checkout Step Count",
            "Number of checkouts that reached step 22.",
            "2019-09-10T15:34:44.69",
            "2019-12-06T15:04:22.043",
            definition(
                checkout,
                json!([number_condition("Checkout Step", "equals", "22")]),
                "count",
                since("2019-10-01T00:00:00"),
                "2019-10-02T00:00:00",
            ),
            json!({"recipe_type": "event", "datapoint": null, "conditions": null, "calculation_type": "count",
                   "time_period": null, "seeding": null}),
            0,
            Some("2020-02-18T19:24:50.426Z"),
        ),
        calculated(
            8,
            1234,
            "Lifetime Spend",
            "Total purchase amount, by product quantity.",
            "2021-04-01T08:00:00.000",
            "2024-01-15T12:30:00.250",
            definition(
                purchase,
                json!([number_condition("Total Amount", "greater_than", "0")]),
                "sum",
                since("2021-04-01T00:00:00"),
                "2021-04-02T00:00:00",
            ),
            Value::Null,
            3,
            Some("2021-04-02T10:00:00.000Z"),
        ),
        calculated(
            9,
            1234,
            "Current Tier",
            "Most recent loyalty tier (draft, not activated yet).",
            "2024-10-01T08:00:00.000",
            "2024-10-01T08:00:00.000",
            Value::Null,
            definition(tier, json!([]), "last_occurrence", within(90, "day"), "2024-10-02T00:00:00"),
            0,
            None,
        ),
    ];
    let web_points = p.calculated_attributes[0].json.clone();
    let mut web = calculated(
        21,
        1235,
        "Lifetime Points",
        "Sum of loyalty points earned on the web.",
        "2021-05-12T14:10:00.000",
        "2021-05-12T14:10:00.000",
        web_points["active_definition"].clone(),
        Value::Null,
        0,
        Some("2021-05-12T14:11:00.000Z"),
    );
    web.json["id"] = json!(21);
    p.calculated_attributes.push(web);
    p
}
