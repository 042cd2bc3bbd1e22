//! # Antavo emulator
//!
//! A local, in-memory emulator of the Antavo Loyalty Cloud APIs the flowhost Antavo connector uses, written
//! from the project's Antavo reference (`shared/reference/antavo-api.md`: Antavo's published OpenAPI files,
//! its manual and error list, Escher's specification and Antavo-authored clients). Antavo cannot be reached
//! from test machines (there is no public sandbox), so tests and `flowhost demo` run against this instead.
//! One HTTP port serves the API host of one environment (`api.<region>.antavo.com`); the connector is
//! pointed at it with its `apiUrl` override, and signs for the emulator's region (default `st2`).
//!
//! ## Starting it
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use antavo_emulator::{EmulatorConfig, start};
//! let emu = start(EmulatorConfig::default(), "127.0.0.1:0".parse()?).await?;
//! println!("Antavo emulator at {}", emu.url()); // e.g. http://127.0.0.1:41234
//! // ... send signed requests ...
//! assert_eq!(emu.stats().unauthorized, 0);
//! emu.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! or as a program: `antavo-emulator --listen 127.0.0.1:8088 [--webhook-url URL]`.
//!
//! ## Default credentials (used by the demo)
//!
//! | what | id | secret |
//! |---|---|---|
//! | API key (Escher) | `demo-antavo-key` | `demo-antavo-secret` |
//! | OAuth client (Async Events) | `demo-antavo-client` | `demo-antavo-client-secret` |
//!
//! Region `st2` (scope `st2/api/antavo_request`); seed customers `cust-1001` (Ada, 1250 points), `cust-1002`
//! (Grace, 90) and `cust-1003` (Alan, 0).
//!
//! ## Routes
//!
//! Antavo's (faults apply to these first; then the signature and the rate limit; then the request):
//!
//! | route | auth | answer |
//! |---|---|---|
//! | `POST /events` | Escher | 200 the customer after the event, with `events[]` that changed spendable points; errors below |
//! | `POST /events/bulk` `{"events": [...]}` | Escher | 200 `{"results": [{"events"} or {"error"}], "total", "errors"}` in order; 400 only for a malformed body |
//! | `GET /customers/{id}` (`{field:value}` for an external id; `fields=groups,...`) | Escher | 200 the customer; 404 160212 |
//! | `GET /customers?updated_at.gt=<ISO date>&<field>=<value>&limit&offset` | Escher | 200 `{"data": [{"id", "updated_at"}], "prev", "next"}` (relative paths); 400 160211 without criteria |
//! | `GET /customers/-/count` | Escher | 200 `{"active": N}` |
//! | `GET /customers/{id}/events?limit&offset&order` | Escher | 200 `{"data": [{id, action, label, points, timestamp, properties}], "prev", "next"}` |
//! | `POST /v1/auth/token` (form `grant_type=client_credentials&scope=loyalty.async_events`) | Basic | 200 `{"access_token", "token_type": "Bearer", "expires_in", "scope"}`; 401 `invalid_client` 220010; 400 `invalid_request` 220011 / `unsupported_grant_type` 220014 / `invalid_scope` 220015 |
//! | `POST /v1/async/events` | Bearer | 200 `{"status":"success","payload":{"correlation_id","status":"queued"}}`; 400 203401 / 203404; 401 220052 |
//! | `GET /v1/async/events/{id}` | Bearer | 200 `{"payload":{"status":"processed"|"error"|"queued","response":{"success","error"}}}`; 400 203408 |
//!
//! Errors are Antavo's envelope `{"error": {"type", "code", "message"}}`; a path that is no route answers 404
//! `{"error":{"type":"NotFoundException","code":0,"message":"Not Found"}}`.
//!
//! The emulator's own (never faulted, no auth):
//!
//! | route | answer |
//! |---|---|
//! | `GET /_emulator/health` | `{"status":"ok"}` |
//! | `GET /_emulator/requests[?since=SEQ]` | every request to an Antavo route ([`RecordedRequest`]: method, path, query, status, signing key, body, fault) |
//! | `GET /_emulator/events[?since=SEQ]` | every event the workspace accepted, in order ([`AcceptedEvent`]) |
//! | `GET /_emulator/customers` | every customer |
//! | `GET /_emulator/stats` | [`Stats`] |
//! | `GET/POST/DELETE /_emulator/faults` | the fault rules (format: [`FaultRule`]) |
//! | `POST /_emulator/reset` | back to the seed (tokens stay valid, webhook subscriptions stay) |
//! | `POST /_emulator/tokens/expire` | every OAuth token expires now |
//! | `POST /_emulator/async/process` | processes every queued async event now |
//! | `GET/POST /_emulator/clock` `{"offset_ms": N}` | moves the emulator's clock (for clock-skew tests) |
//! | `POST /_emulator/trigger` `{"customer", "action", "data"}` | an event that happens inside Antavo: applied unsigned, delivered to the webhooks |
//! | `GET/POST /_emulator/webhooks` | the webhook subscriptions ([`WebhookSubscription`]); add one |
//! | `GET /_emulator/deliveries` | every webhook delivery attempt |
//!
//! ## What the emulator checks
//!
//! - **Escher** (every key-signed route), in the order of Escher's PHP verifier, which Antavo forks: the
//!   `Authorization` header is there and parses strictly (`ANTAVO-HMAC-SHA256|SHA512 Credential=<key>/
//!   <YYYYMMDD>/<scope>, SignedHeaders=..., Signature=<hex>`); `host` and `date` are signed; the algorithm is
//!   SHA256 or SHA512; the credential's date is the `Date` header's day; the `Date` (long date, ISO 8601
//!   extended or RFC 1123) is within the clock skew (default 300 s) of the emulator's clock; the scope is
//!   `<region>/api/antavo_request`; the key is known; the signature recomputed over the method, the raw path,
//!   the raw query, the signed headers as received and the exact body matches (constant-time). A wrong
//!   secret, a wrong date, a request outside the skew, a wrong region or an altered body: **401**
//!   `{"error":{"type":"UnauthorizedException","code":101021,"message":"<Escher's message>"}}`. With
//!   [`EmulatorConfig::allow_unsigned`] (staging before 2026-12-31) a known `api_key` query parameter is
//!   enough; when both are there the `api_key` must be the signing key.
//! - **Rate limit**: a token bucket per API key of [`EmulatorConfig::rate_limit_per_minute`] (default 1,500,
//!   the shared-stack limit) refilled continuously; over it **429** `TooManyRequestsException`, without
//!   `Retry-After` (Antavo documents none; [`EmulatorConfig::retry_after_secs`] adds one). Async routes and
//!   the token endpoint are not limited. A bulk request counts as one request.
//! - **Events** (`POST /events`, each item of `/events/bulk`, processed async events): `customer` and `action`
//!   non-empty strings (else 400, code 0, "Property customer cannot be empty"); the action in the workspace's
//!   vocabulary ([`EmulatorConfig::actions`], else 400 "Invalid action: x"); `data` an object; integer
//!   `points` for `point_add`, `point_sub`, `point_spend`, `point_unspend`; a `transaction_id` for the
//!   checkout and refund family; `external_id` names a configured external-id field.
//!   An `opt_in` for an unknown customer creates it; a second `opt_in` is **400 112101** "Customer has already
//!   been opted-in."; any other action for an unknown customer is **404 160212** "Customer not found"; a
//!   `checkout` whose `transaction_id` was used is **400 5003** "The transaction ID has already been used";
//!   a repeated `opt_out` is 400 10001; an event for an opted-out customer 400 160216. Balances: `point_add`
//!   raises score and spendable, `point_spend` moves spendable to spent, `point_sub` lowers spendable,
//!   `checkout` earns one point per whole unit of `total`; `profile` and `opt_in` set profile fields; `opt_out`
//!   anonymises. A malformed body is **400** "Malformed JSON body". JSON and form-urlencoded bodies are read.
//! - **OAuth / async**: HTTP Basic client authentication, `grant_type` and `scope` as documented; tokens are
//!   random, expire after [`EmulatorConfig::token_lifetime`] (default 3600 s); an unknown or expired bearer
//!   token is 401 220052. Async events are queued and processed when polled after
//!   [`EmulatorConfig::async_delay`] (or on `/_emulator/async/process`); business errors come back with HTTP
//!   200 and status `error`, as documented.
//! - **Records**: every request (with its body and the key that signed it) and every accepted event, in order,
//!   so tests can assert exactly what arrived and find duplicates (Antavo has no idempotency key).
//! - **Faults** ([`FaultRule`]): any 4xx/5xx status (with Antavo's envelope), and `stall` (sleep before, or
//!   after processing so that the caller times out although the event was recorded), for the next N matching
//!   requests or a random fraction, optionally limited to a path prefix.
//! - **Webhooks out** ([`WebhookSubscription`]): each accepted event whose action a subscription lists is
//!   posted to its URL (body: [`webhooks::envelope`]), signed with Escher (Antavo's profile, the subscription's
//!   key and secret, the emulator's region) or a Bearer token, one at a time in acceptance order, retried up
//!   to `max_attempts` (5) every `retry_interval_ms` (10 s) on a non-2xx answer or no answer.
//!
//! ## What the emulator cannot know (UNCONFIRMED in the reference)
//!
//! - Antavo's real clock skew (300 s here, as in Escher's libraries; the spec page says 900 s), whether it
//!   accepts all three `Date` forms, SHA512, and the body and code of each signature failure (101021 for all
//!   here); the answer to a signed request carrying the wrong region.
//! - Whether `api_key` is required beside a signature; the status of several errors (5003 and the
//!   missing-property errors are 400 here); the error type and code of a 429; rate-limit window semantics
//!   (fixed or sliding), the length of Antavo's "temporary request blocks", whether a bulk request counts as
//!   one request or as its events.
//! - The earning rules of a real workspace (tiers, multipliers, pending points, expiry), which are configured
//!   per workspace: the emulator's rules above are its own. Custom events must be listed in
//!   [`EmulatorConfig::actions`].
//! - The search answer's exact layout ("returns ids"); the `{field:value}` syntax of external ids is taken
//!   literally.
//! - Async: 200 or 202 on submit, how a client names its own correlation id, what `exported`, `failed` and
//!   `retried` mean, and the `callback_url` push (not emulated).
//! - Outgoing webhooks: Antavo fixes no payload (a Workflow node's template decides it) and documents neither
//!   the header names of its "AWS signature" Trusted-site auth nor delivery order (none is guaranteed; the
//!   emulator delivers in order).

#![warn(missing_docs)]

mod escher;
mod faults;
mod server;
mod state;
mod time;
pub mod webhooks;

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use faults::{FaultKind, FaultRule};
pub use state::{AcceptedEvent, DeliveryRecord, RecordedRequest, Stats};

/// The API key of the default configuration.
pub const DEMO_API_KEY: &str = "demo-antavo-key";
/// Its secret.
pub const DEMO_API_SECRET: &str = "demo-antavo-secret";
/// The OAuth client of the default configuration.
pub const DEMO_CLIENT_ID: &str = "demo-antavo-client";
/// Its secret.
pub const DEMO_CLIENT_SECRET: &str = "demo-antavo-client-secret";
/// The region (environment label) of the default configuration.
pub const DEFAULT_REGION: &str = "st2";
/// Listen address of the binary when `--listen` is not given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8088";
/// The actions the Async Events API takes.
pub const ASYNC_ACTIONS: [&str; 14] = [
    "point_add",
    "checkout",
    "checkout_item",
    "checkout_update",
    "checkout_update_item",
    "checkout_accept",
    "checkout_accept_item",
    "checkout_reject",
    "partial_refund",
    "refund_item",
    "refund",
    "opt_in",
    "opt_out",
    "profile",
];
/// The default action vocabulary: Antavo's standard actions and the custom ones of the demo workspace.
pub const DEFAULT_ACTIONS: [&str; 22] = [
    "opt_in",
    "opt_out",
    "profile",
    "point_add",
    "point_sub",
    "point_spend",
    "point_unspend",
    "checkout",
    "checkout_item",
    "checkout_update",
    "checkout_update_item",
    "checkout_accept",
    "checkout_accept_item",
    "checkout_reject",
    "checkout_claim",
    "refund",
    "partial_refund",
    "refund_item",
    "reward_claim",
    // Custom events of the demo workspace: the mParticle integration's inbound events.
    "coupon_redeem",
    "purchase",
    "review",
];

/// How a webhook subscription authenticates its requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WebhookSigning {
    /// Escher, Antavo's profile, with this key and secret (the reference, §10).
    Escher {
        /// The key named in the Credential.
        key: String,
        /// The secret that signs.
        secret: String,
    },
    /// A static `Authorization: Bearer <token>` (the legacy module's authentication header).
    Bearer {
        /// The token.
        token: String,
    },
    /// Nothing.
    #[default]
    None,
}

fn default_attempts() -> u32 {
    5
}

fn default_interval() -> u64 {
    10_000
}

/// Where the emulator posts its webhooks (a Trusted site with a Workflow's "Webhook message" node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookSubscription {
    /// The receiver's URL, e.g. `http://127.0.0.1:8080/v1/inbound/antavo`.
    pub url: String,
    /// The actions it is sent for; empty: every action.
    #[serde(default)]
    pub actions: Vec<String>,
    /// How its requests are authenticated.
    #[serde(default)]
    pub signing: WebhookSigning,
    /// Attempts before a delivery is given up (Antavo: 5).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Pause between attempts (Antavo: 10 s).
    #[serde(default = "default_interval")]
    pub retry_interval_ms: u64,
}

impl WebhookSubscription {
    /// A subscription signed with Escher, for `actions` (empty: all).
    pub fn escher(url: impl Into<String>, actions: &[&str], key: &str, secret: &str) -> Self {
        WebhookSubscription {
            url: url.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
            signing: WebhookSigning::Escher { key: key.into(), secret: secret.into() },
            max_attempts: default_attempts(),
            retry_interval_ms: default_interval(),
        }
    }

    /// The subscription as `/_emulator/webhooks` shows it: secrets left out.
    pub fn redacted(&self) -> Value {
        let signing = match &self.signing {
            WebhookSigning::Escher { key, .. } => json!({"kind": "escher", "key": key}),
            WebhookSigning::Bearer { .. } => json!({"kind": "bearer"}),
            WebhookSigning::None => json!({"kind": "none"}),
        };
        json!({"url": self.url, "actions": self.actions, "signing": signing, "max_attempts": self.max_attempts,
               "retry_interval_ms": self.retry_interval_ms})
    }
}

/// How the emulator behaves.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// The environment label of `api.<region>.antavo.com`: the scope is `<region>/api/antavo_request`.
    pub region: String,
    /// API keys and secrets (Escher).
    pub api_keys: Vec<(String, String)>,
    /// OAuth clients (Async Events).
    pub oauth_clients: Vec<(String, String)>,
    /// Lifetime of access tokens (`expires_in`, 300–3600 s documented); default 3600 s.
    pub token_lifetime: Duration,
    /// How far a request's `Date` may be from the emulator's clock; default 300 s.
    pub clock_skew: Duration,
    /// Requests per minute per API key; default 1,500 (shared stack).
    pub rate_limit_per_minute: u32,
    /// A `Retry-After` on throttled answers (Antavo documents none; default none).
    pub retry_after_secs: Option<u64>,
    /// Accept a bare `api_key` query parameter without a signature (staging before 2026-12-31).
    pub allow_unsigned: bool,
    /// The action vocabulary.
    pub actions: Vec<String>,
    /// Fields that may name a customer as an external id (`external_id`, `{field:value}`).
    pub external_id_fields: Vec<String>,
    /// Fields the customer search matches exactly.
    pub searchable_fields: Vec<String>,
    /// Seed the three demo customers (default true).
    pub seed_data: bool,
    /// Async events are processed when polled this long after submission (default 0).
    pub async_delay: Duration,
    /// Webhook subscriptions from the start.
    pub webhooks: Vec<WebhookSubscription>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            region: DEFAULT_REGION.into(),
            api_keys: vec![(DEMO_API_KEY.into(), DEMO_API_SECRET.into())],
            oauth_clients: vec![(DEMO_CLIENT_ID.into(), DEMO_CLIENT_SECRET.into())],
            token_lifetime: Duration::from_secs(3600),
            clock_skew: Duration::from_secs(300),
            rate_limit_per_minute: 1500,
            retry_after_secs: None,
            allow_unsigned: false,
            actions: DEFAULT_ACTIONS.iter().map(|a| a.to_string()).collect(),
            external_id_fields: vec!["email".into(), "external_id".into()],
            searchable_fields: vec!["email".into(), "first_name".into(), "last_name".into(), "external_id".into()],
            seed_data: true,
            async_delay: Duration::ZERO,
            webhooks: Vec::new(),
        }
    }
}

/// Starts the emulator on `listen` (port 0 for an ephemeral port) in the current Tokio runtime and returns
/// once it accepts connections.
pub async fn start(config: EmulatorConfig, listen: SocketAddr) -> anyhow::Result<RunningEmulator> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("antavo-emulator: cannot listen on {listen}"))?;
    let addr = listener.local_addr().context("antavo-emulator: no local address")?;
    let shared = Arc::new(state::Shared::new(config));
    let deliveries = webhooks::start(shared.clone());
    let app = server::router(shared.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
    });
    tracing::info!(%addr, "Antavo emulator listening");
    Ok(RunningEmulator {
        addr,
        handle: EmulatorHandle { shared },
        shutdown: Some(tx),
        task: Some(task),
        deliveries: Some(deliveries),
    })
}

/// A cheap, cloneable handle on a running emulator's state.
#[derive(Clone)]
pub struct EmulatorHandle {
    shared: Arc<state::Shared>,
}

impl std::fmt::Debug for EmulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorHandle").finish_non_exhaustive()
    }
}

impl EmulatorHandle {
    /// Every event the workspace accepted, in order.
    pub fn events(&self) -> Vec<AcceptedEvent> {
        state::lock(&self.shared.workspace).events.clone()
    }

    /// Every request to an Antavo route, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        state::lock(&self.shared.requests).clone()
    }

    /// One customer as the Customer API shows it.
    pub fn customer(&self, id: &str) -> Option<Value> {
        state::lock(&self.shared.workspace).customers.get(id).map(|c| c.to_json())
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        state::lock(&self.shared.stats).clone()
    }

    /// Adds one fault rule after the existing ones.
    pub fn add_fault(&self, rule: FaultRule) {
        state::lock(&self.shared.faults).push(rule);
    }

    /// Replaces the fault rules.
    pub fn set_faults(&self, rules: Vec<FaultRule>) {
        *state::lock(&self.shared.faults) = rules;
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        state::lock(&self.shared.faults).clear();
    }

    /// The active fault rules.
    pub fn faults(&self) -> Vec<FaultRule> {
        state::lock(&self.shared.faults).clone()
    }

    /// Moves the emulator's clock by `offset_ms` from the machine's.
    pub fn set_clock_offset_ms(&self, offset_ms: i64) {
        self.shared.clock_offset_ms.store(offset_ms, Ordering::Relaxed);
    }

    /// The emulator's clock, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.shared.now_ms()
    }

    /// Applies an event that happens inside Antavo (unsigned) and delivers its webhooks; the customer after
    /// it, or Antavo's error body.
    pub fn trigger(&self, event: Value) -> Result<Value, Value> {
        let now = self.shared.now_ms();
        let outcome = state::lock(&self.shared.workspace).apply(&self.shared.config, &event, "trigger", None, now);
        match outcome {
            Ok(applied) => {
                self.shared.count(|s| s.accepted_events += 1);
                webhooks::enqueue(&self.shared, &applied.accepted, &applied.customer);
                Ok(applied.customer)
            }
            Err(e) => Err(e.body()),
        }
    }

    /// Adds a webhook subscription.
    pub fn add_webhook(&self, subscription: WebhookSubscription) {
        state::lock(&self.shared.subscriptions).push(subscription);
    }

    /// Every webhook delivery attempt so far.
    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        state::lock(&self.shared.deliveries).clone()
    }

    /// Waits until every queued webhook was delivered or given up, at most `timeout`; whether it was.
    pub async fn webhooks_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.shared.webhooks_pending.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Processes every queued async event now; how many.
    pub fn process_async(&self) -> usize {
        server::process_async(&self.shared, true)
    }

    /// Makes every OAuth token expire now.
    pub fn expire_tokens(&self) {
        let now = self.shared.now_ms();
        for expires in state::lock(&self.shared.workspace).tokens.values_mut() {
            *expires = (*expires).min(now);
        }
    }

    /// Back to the seed (see `POST /_emulator/reset`).
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// The configuration the emulator runs with.
    pub fn config(&self) -> &EmulatorConfig {
        &self.shared.config
    }
}

/// A running emulator. Dereferences to its [`EmulatorHandle`]. Dropping it stops the server.
pub struct RunningEmulator {
    addr: SocketAddr,
    handle: EmulatorHandle,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    deliveries: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningEmulator").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl RunningEmulator {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash): the connector's `apiUrl`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A cloneable handle on the state.
    pub fn handle(&self) -> EmulatorHandle {
        self.handle.clone()
    }

    /// Stops accepting connections, lets open requests finish (at most 5 s) and waits.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(deliveries) = self.deliveries.take() {
            deliveries.abort();
        }
        if let Some(mut task) = self.task.take() {
            match tokio::time::timeout(Duration::from_secs(5), &mut task).await {
                Ok(joined) => joined.context("antavo-emulator: server task failed")?.context("server error")?,
                Err(_) => task.abort(),
            }
        }
        Ok(())
    }
}

impl Deref for RunningEmulator {
    type Target = EmulatorHandle;

    fn deref(&self) -> &EmulatorHandle {
        &self.handle
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(deliveries) = self.deliveries.take() {
            deliveries.abort();
        }
    }
}
