//! # mParticle emulator
//!
//! A local, in-memory emulator of the mParticle APIs that the flowhost mParticle connector
//! uses, written from mParticle's public documentation (see the project's mParticle API
//! reference). mParticle itself cannot be reached from test machines, so tests and the
//! `flowhost demo` command run against this emulator instead. One HTTP port serves every
//! mParticle host; the connector is pointed at it with base-URL overrides.
//!
//! ## Starting it
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use mparticle_emulator::{EmulatorConfig, start};
//! let emu = start(EmulatorConfig::default(), "127.0.0.1:0".parse()?).await?;
//! println!("mParticle emulator at {}", emu.url()); // e.g. http://127.0.0.1:41234
//! // ... send requests ...
//! assert_eq!(emu.stats().rejected, 0);
//! emu.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! or as a program: `mparticle-emulator --listen 127.0.0.1:8087`.
//!
//! ## Default credentials (used by the demo)
//!
//! | what | id | secret |
//! |---|---|---|
//! | OAuth client (Platform API) | `demo-client-id` | `demo-client-secret` |
//! | Events API key | `demo-api-key` | `demo-api-secret` |
//!
//! Tokens live 8 hours (28800 s) unless [`EmulatorConfig::token_lifetime`] says otherwise.
//!
//! ## Routes
//!
//! mParticle's (faults apply to these, before authentication and validation):
//!
//! | route | auth | answer |
//! |---|---|---|
//! | `POST /oauth/token` | JSON body `client_id`, `client_secret`, `audience` = `https://api.mparticle.com`, `grant_type` = `client_credentials` | 200 `{"access_token","expires_in":28800,"token_type":"Bearer"}`; 401 `{"error":"access_denied","error_description":"Unauthorized"}`; 400 `invalid_request` / `unsupported_grant_type` |
//! | `GET /v1/accounts?accountId=A` | Bearer | 200 envelope with every account |
//! | `GET /v1/accounts/{id}?accountId=A` | Bearer | 200 envelope with one account; 404 |
//! | `POST /v1/accounts` body `{"name"}` | Bearer | 201 envelope with the new account; 422 "Account name is not unique." |
//! | `PUT /v1/accounts/{id}?accountId=A` body `{"name"}` | Bearer | 202 envelope with the updated account |
//! | `DELETE /v1/accounts?accountId=A` (no id in the path, as documented) | Bearer | 202; 422 "All applications must be deleted before deleting account." |
//! | `GET /v1/audiences?accountId=A` | Bearer | 200 bare array of audiences |
//! | `DELETE /v1/audiences/{id}?accountId=A` | Bearer | 202; 404 |
//! | `GET /v1/workspace?accountId=A` | Bearer | 200 envelope, `dataType` `workspace`, ids as strings |
//! | `GET /v1/workspace/{workspaceId}/audiences?accountId=A` | Bearer | 200 bare array; 404 |
//! | `GET /platform/v2/workspaces/{ws}/calculatedattributes[?name=N]` | Bearer | 200 bare array; 404 unknown workspace |
//! | `HEAD` the same | Bearer | 204 some match / 404 none |
//! | `GET /platform/v2/workspaces/{ws}/calculatedattributes/{id}` | Bearer | 200 object; 404 |
//! | `POST /v2/events` (one batch) | Basic | 202 empty body; 400/401/403/413/415 |
//! | `POST /v2/bulkevents` (array of ≤ 100 batches) | Basic | same |
//! | `POST /v2/bulkevents/historical` | Basic | same, plus the historical rules |
//!
//! The emulator's own (never faulted, no auth):
//!
//! | route | answer |
//! |---|---|
//! | `GET /_emulator/health` | `{"status":"ok"}` |
//! | `GET /_emulator/batches[?since=SEQ]` | array of [`RecordedBatch`] (`seq`, `api_key`, `endpoint`, `received_at`, `received_unix_ms`, `batch`), arrival order |
//! | `GET /_emulator/stats` | [`Stats`]: `received`, `accepted`, `duplicates`, `rejected` (batches), `requests` (by `"METHOD /route"`), `faults_injected`, `tokens_issued`, `throttled_requests`, `throttled_batches` |
//! | `GET /_emulator/faults` | `{"faults":[…]}` active rules |
//! | `POST /_emulator/faults` | add one rule object, an array of them, or `{"faults":[…]}`; answers the active rules (format: [`FaultRule`]) |
//! | `DELETE /_emulator/faults` | remove every rule |
//! | `GET /_emulator/throttle` | `{"batches_per_second": N or null, "api_keys": {key: N or null}}`: the provisioned throughput |
//! | `POST /_emulator/throttle` | `{"batches_per_second": N}` (every key) or `{"api_key": K, "batches_per_second": N}` (one key); `null` or 0: no limit; answers the limits |
//! | `POST /_emulator/tokens/expire` | every issued token expires now: `{"expired":N}` |
//! | `POST /_emulator/reset` | back to the seed: Platform data, batches, dedup memory, counters, faults (issued tokens stay valid) |
//!
//! Platform API envelope: `{"data":[…],"dataType":"account","errors":null}`; errors
//! `{"data":null,"dataType":"account","errors":[{"code":"VALIDATION_ERROR","message":"…"}]}`.
//! Events API errors: `{"errors":[{"code":"BAD_REQUEST","message":"<JSON path>: <reason>"}]}`.
//!
//! ## What the emulator checks
//!
//! - **OAuth**: JSON body only (as documented); `grant_type` must be `client_credentials`,
//!   `audience` must be `https://api.mparticle.com`, client id and secret must match a configured
//!   pair. Tokens are random, remembered with their expiry; expired tokens get 401 with a message
//!   saying so; unknown tokens get 401.
//! - **Platform API v1**: Bearer token; `accountId` query parameter present (else 401), an
//!   integer (else 400) and an existing account (else 404); entity ids exist (else 404);
//!   JSON bodies parse (else 400); `name` is a string (else 400), not blank (else 422) and unique
//!   among accounts, case-insensitively (else 422 "Account name is not unique."); wrong method
//!   405; unknown path 404.
//! - **Calculated attributes v2**: Bearer token, no `accountId`; unknown workspace 404.
//! - **Events API**: Basic auth (missing 401, anything wrong 403); `Content-Type`, when sent,
//!   must be JSON (else 415); body ≤ 256 KB (else 413); JSON (else 400); one object on
//!   `/v2/events`, an array of ≤ 100 objects on the bulk endpoints (else 400); every batch is
//!   validated by [`validate`], a hand-written translation of mParticle's official JSON Schema
//!   for inbound batches plus the documented limits:
//!   - batch fields limited to the schema's list (`additionalProperties: false`);
//!     `schema_version` is refused (output-only field);
//!   - `environment` ∈ `development` | `production`; `ip` an IPv4/IPv6 address; `mpid`,
//!     timestamps and ids integers; UUID fields UUIDs; `source_info`, `consent_state`,
//!     `context.data_plan`, `device_info`, `application_info` … with their own closed field
//!     lists, enums and required fields;
//!   - `user_identities` keys from the schema (customer_id, email, other, other_id_2…10,
//!     mobile_number, phone_number_2/3, facebook, twitter, google, microsoft, yahoo, alias,
//!     facebook_custom_audience_id), values scalars;
//!   - `user_attributes` values string / number / boolean / null / list of scalars;
//!   - `events[]` items `{event_type, data}` with the 17 event types of the schema's `oneOf`;
//!     each type's required `data` fields and typed fields (e.g. `custom_event` needs
//!     `event_name` and a `custom_event_type` from the schema's enum; `screen_view` needs
//!     `screen_name`; commerce `product_action.action` from its enum);
//!   - limits: batch ≤ 128 KB serialized; event/screen names ≤ 256 characters; attribute names
//!     ≤ 256; attribute values ≤ 4096; ≤ 100 attributes per event; ≤ 100 user attributes per
//!     batch; user attribute lists ≤ 1000 entries of ≤ 512 characters;
//!   - historical endpoint: every batch has events, every event has `timestamp_unixtime_ms`,
//!     none less than 72 hours old.
//!
//!   The first problem is reported with its JSON path, e.g.
//!   `$.events[0].data.custom_event_type: "bogus" is not an allowed value; expected one of: …`.
//! - **De-duplication**: a batch whose `source_request_id` was already accepted for the same
//!   API key is answered 202 but counted as a duplicate and not recorded again (also within one
//!   bulk request).
//! - **Provisioned throughput** (`--batches-per-second N`, [`EmulatorConfig::batches_per_second`],
//!   `POST /_emulator/throttle`, off by default): per API key, a leaky bucket of one second of the limit,
//!   counting batches (a bulk request counts each of its batches). A request that finds its key's bucket full is
//!   answered 429 with `Retry-After` (whole seconds until there is room, at least 1) and
//!   `X-mp-rate-limit-exceeded: workspace`, and none of its batches is recorded; admitted requests get
//!   `X-mp-rate-limit-percentage-used` (how full the bucket is, in percent of one second). Throttling is
//!   checked after validation, so an invalid request is refused with 400 and uses no throughput.
//! - **Faults** ([`FaultRule`]): `429` (with `Retry-After` and `X-mp-rate-limit-exceeded`),
//!   `500`, `503` (or any 4xx/5xx), and `stall` (sleep, optionally after processing), for the
//!   next N matching requests or a random fraction, optionally limited to a path prefix.
//!
//! ## Choices made where mParticle's documentation is silent
//!
//! - KB means 1024 bytes: requests ≤ 262144 bytes, batches ≤ 131072 bytes. A client that stays
//!   under 256000 / 128000 bytes is safe either way.
//! - Over-size requests get **413** with `{"errors":[{"code":"REQUEST_TOO_LARGE",…}]}`; mParticle
//!   does not state the status. Over-limit batches (size, lengths, counts) get 400. The real
//!   service is documented to *truncate* over-long event and attribute names; the emulator
//!   refuses them instead, so that a client that does not truncate is caught.
//! - A bulk request with any invalid batch is refused whole with 400 naming the batch index
//!   (`Batch at index 3 is invalid …: $[3].events[0]…`); no batch of it is recorded. The real
//!   service answers 202 even when some batches fail (and drops those silently).
//! - More than 100 batches in one bulk request: 400.
//! - Missing or blank account `name`: **422** `VALIDATION_ERROR` "Account name is required.";
//!   a `name` that is not a string, or a body that is not a JSON object: 400. Name uniqueness is
//!   case-insensitive, after trimming.
//! - `accountId` is matched exactly (case-sensitive parameter name); any existing account may
//!   be read with any valid token (the emulator has one organisation). `POST /v1/accounts` needs
//!   no `accountId` (as in the documented example); when given it must be valid.
//! - Error `code`s other than `VALIDATION_ERROR` (`UNAUTHORIZED`, `NOT_FOUND`,
//!   `METHOD_NOT_ALLOWED`, `REQUEST_TOO_LARGE`, `UNSUPPORTED_MEDIA_TYPE`, `FORBIDDEN`,
//!   `TOO_MANY_REQUESTS`, …) are the emulator's own; clients should rely on HTTP statuses.
//! - Bodies of create (201) and update (202) are the envelope with the account; delete answers
//!   `{"data":null,"dataType":"account","errors":null}`. Wrong `audience` on the token endpoint
//!   gives 400 `invalid_request` (Auth0 itself may answer 403).
//! - Calculated attribute `name` filter: exact match, case-insensitive, after trimming (the
//!   docs only say "filter by name"). No pagination (none documented).
//! - The schema allows `"custom_event_type": "attribution"` only on commerce events; the
//!   emulator follows the schema and refuses it on `custom_event` although mParticle's prose
//!   lists it.
//! - Where the schema pairs `$ref` with an `enum` (`application_info.os`,
//!   `device_current_state.device_orientation`, …) draft-07 ignores the enum; so does the
//!   emulator. Where a schema definition has `properties` but no `type`, the emulator still
//!   requires an object or `null` (stricter than the schema).
//! - The dedup key is `source_request_id` as a string (numbers by their JSON text); batches
//!   without one are never duplicates. Dedup memory lasts until reset (mParticle: 30–60 days).
//! - `Content-Type` may be omitted; a non-JSON one gets 415.
//!
//! ## What the emulator cannot know (UNCONFIRMED in the reference)
//!
//! - The token endpoint's real error bodies and status for bad credentials, and whether
//!   `expires_in` is always 28800; token request latency (1–3 s in reality, instant here).
//! - Response bodies of account create/update/delete; the exact status of validation errors
//!   (400 vs 422); which credential scope may create accounts.
//! - Pagination of audiences and calculated attributes; the `name` filter semantics; Platform
//!   API rate limits (no 429 unless injected).
//! - What the Events API does with over-limit batches or requests (status, truncation,
//!   partial acceptance), how exactly it measures its throughput limits (≈270 batches/s, then 429; the
//!   emulator's one-second bucket and its whole-second `Retry-After` are our reading), request
//!   timeouts, and whether reserved user attribute names (`$firstname` vs `$FirstName`) are
//!   case-sensitive (the emulator accepts both spellings).
//! - Whether the real service validates as strictly as the published schema, and what it does
//!   with fields the schema allows but ignores.
//! - Whether `inbound.mparticle.com` partner-feed URLs are pod-aware (not emulated).

#![warn(missing_docs)]

mod faults;
mod server;
mod state;
mod throttle;
mod time;
pub mod validate;

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use faults::{FaultKind, FaultRule};
pub use server::AUDIENCE;
pub use state::{RecordedBatch, Stats};
pub use validate::{BatchError, Limits};

/// OAuth client id of the default configuration.
pub const DEMO_CLIENT_ID: &str = "demo-client-id";
/// OAuth client secret of the default configuration.
pub const DEMO_CLIENT_SECRET: &str = "demo-client-secret";
/// Events API key of the default configuration.
pub const DEMO_API_KEY: &str = "demo-api-key";
/// Events API secret of the default configuration.
pub const DEMO_API_SECRET: &str = "demo-api-secret";
/// Listen address of the binary when `--listen` is not given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8087";
/// Documented token lifetime: 8 hours.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(28_800);
/// Documented request size limit of the Events API: 256 KB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 256 * 1024;

/// How the emulator behaves.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// OAuth clients accepted by `POST /oauth/token`: `(client_id, client_secret)`.
    pub oauth_clients: Vec<(String, String)>,
    /// Events API credentials accepted by HTTP Basic auth: `(api_key, api_secret)`.
    pub api_keys: Vec<(String, String)>,
    /// Lifetime of issued access tokens (`expires_in`), default 8 h.
    pub token_lifetime: Duration,
    /// Largest accepted request body in bytes (default 256 KB = 262144). Larger: 413.
    pub max_request_bytes: usize,
    /// Batch limits (size, names, values, counts).
    pub limits: Limits,
    /// Seed accounts, workspaces, audiences and calculated attributes (default true).
    pub seed_data: bool,
    /// Provisioned throughput of every API key, in batches per second (mParticle's default is about 270);
    /// `None` (the default) does not throttle. `POST /_emulator/throttle` changes it, also per key.
    pub batches_per_second: Option<u32>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            oauth_clients: vec![(DEMO_CLIENT_ID.to_owned(), DEMO_CLIENT_SECRET.to_owned())],
            api_keys: vec![(DEMO_API_KEY.to_owned(), DEMO_API_SECRET.to_owned())],
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            limits: Limits::default(),
            seed_data: true,
            batches_per_second: None,
        }
    }
}

/// Starts the emulator on `listen` (use port 0 for an ephemeral port) in the current Tokio
/// runtime and returns once it accepts connections.
pub async fn start(config: EmulatorConfig, listen: SocketAddr) -> anyhow::Result<RunningEmulator> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("mparticle-emulator: cannot listen on {listen}"))?;
    let addr = listener.local_addr().context("mparticle-emulator: no local address")?;
    let shared = Arc::new(state::Shared::new(config));
    let app = server::router(shared.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
    });
    tracing::info!(%addr, "mParticle emulator listening");
    Ok(RunningEmulator { addr, handle: EmulatorHandle { shared }, shutdown: Some(tx), task: Some(task) })
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
    /// Every accepted batch, in arrival order.
    pub fn batches(&self) -> Vec<RecordedBatch> {
        state::lock(&self.shared.events).batches.clone()
    }

    /// Accepted batches with `seq` greater than `seq`.
    pub fn batches_since(&self, seq: u64) -> Vec<RecordedBatch> {
        let e = state::lock(&self.shared.events);
        let start = e.batches.partition_point(|b| b.seq <= seq);
        e.batches[start..].to_vec()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Replaces the fault rules.
    pub fn set_faults(&self, rules: Vec<FaultRule>) {
        self.shared.set_faults(rules);
    }

    /// Adds one fault rule after the existing ones.
    pub fn add_fault(&self, rule: FaultRule) {
        self.shared.add_faults(vec![rule]);
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.shared.set_faults(Vec::new());
    }

    /// The active fault rules (with their remaining counts).
    pub fn faults(&self) -> Vec<FaultRule> {
        state::lock(&self.shared.faults).clone()
    }

    /// Sets the provisioned throughput in batches per second of one API key, or with `None` of every key
    /// without a limit of its own (see `POST /_emulator/throttle`); `None` or 0 as the limit: no limit.
    pub fn set_batches_per_second(&self, api_key: Option<&str>, limit: Option<u32>) {
        let mut throttle = state::lock(&self.shared.throttle);
        match api_key {
            Some(key) => throttle.set_key(key, limit),
            None => throttle.set_default(limit),
        }
    }

    /// Makes every issued token expire now; returns how many were still valid.
    pub fn expire_tokens(&self) -> usize {
        self.shared.expire_tokens()
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

/// A running emulator. Dereferences to its [`EmulatorHandle`]. Dropping it stops the server
/// (it stops accepting connections at once; open requests finish in the background).
pub struct RunningEmulator {
    addr: SocketAddr,
    handle: EmulatorHandle,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
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

    /// Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash). Every mParticle host
    /// (`sso.auth.mparticle.com`, `api.mparticle.com`, `s2s.*.mparticle.com`) maps to it.
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
        if let Some(mut task) = self.task.take() {
            match tokio::time::timeout(Duration::from_secs(5), &mut task).await {
                Ok(joined) => joined.context("mparticle-emulator: server task failed")?.context("server error")?,
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
    }
}
