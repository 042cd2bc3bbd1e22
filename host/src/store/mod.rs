//! Storage for durable delivery: the run queue (with resends and dead letters), checkpoints, the outbox of
//! emitted loyalty events and the inbound message queue, behind one [`Store`] trait.
//!
//! [`SqliteStore`] is the embedded default; [`PostgresStore`] (many processes sharing one queue, see its module
//! documentation for how they keep each key's order) implements the same trait, so callers never change. Everything the trait
//! exchanges is backend-neutral: JSON as [`serde_json::Value`], times as milliseconds since the Unix epoch
//! (`i64`, see [`now_ms`]), ids as strings.
//!
//! # Runs and their states
//!
//! A *run* is one flow run for one accepted event, and the unit of the queue. [`Store::enqueue`] commits it
//! as `queued`; a worker [`claim`](Store::claim)s it (`leased`, until `lease_until`), saves progress with
//! [`checkpoint`](Store::checkpoint), and ends the lease with exactly one of [`complete`](Store::complete)
//! (`succeeded` / `failed`), [`reschedule`](Store::reschedule) (a resend: back to `queued` at a later time)
//! or [`dead_letter`](Store::dead_letter) (`dead`: retries exhausted, kept and visible). A worker that dies
//! simply stops renewing its lease; once `lease_until` has passed, the run is claimable again and resumes
//! from its last checkpoint. Every lease-holder call is *fenced* by the [`Lease`] it got from `claim`: once
//! the run was claimed again (or retried or dropped by an operator), the old holder's calls fail with
//! [`StoreError::LeaseLost`] and change nothing.
//!
//! ```text
//!  enqueue ──> queued ──claim──> leased ──complete──> succeeded | failed
//!               ^  ^               │ │ └──dead_letter──> dead ──retry_now──> queued
//!               │  └──reschedule───┤ └──lease expires (crash) ──> claimable again
//!               │  └──release──────┘ (not started)
//!               └──release_connection── held <──hold_connection── queued
//!  drop_run: queued | leased | held | dead ──> dropped (kept for the record)
//! ```
//!
//! # The ordering rule
//!
//! Events of one *ordering key* (e.g. `"<flow>/<customer>"`) are delivered in arrival order (`seq`). A run
//! is claimable when
//!
//! 1. it is **due**: `queued` with `next_attempt_at <= now`, or `leased` with an expired lease; and
//! 2. **no earlier run of the same ordering key is still open**: no run with the same `ordering_key` and a
//!    smaller `seq` is `queued`, `leased`, `held` or `dead`.
//!
//! So a customer's message waiting for a resend — or dead-lettered, until an operator retries or drops
//! it — holds that customer's later messages, and nobody else's. `succeeded`, `failed` (a permanent error,
//! handled by the flow's error path) and `dropped` runs do not hold later runs. (An operator retrying a
//! `failed` run puts it back in the queue after later runs of its key may already have been delivered: that
//! is the operator's explicit choice.)
//!
//! One claim may take several runs of a key: a claimable run and the due runs right behind it, up to
//! `per_key`. The leased runs of a key then belong to one worker and one claim. The worker runs them in `seq`
//! order, completes the ones that finished together, and [`release`](Store::release)s the ones after a run
//! that stopped (a resend, a dead letter), which wait behind it again.
//!
//! # Connections (disconnect)
//!
//! [`Store::hold_connection`] marks a connection disconnected, durably: its queued runs (and inbound
//! messages) become `held` in one transaction, runs enqueued, rescheduled or retried while it is held go
//! straight to `held`, and a run whose worker died while holding it becomes `held` instead of claimable.
//! Held runs are kept and listed, never sent, and still hold their key's later runs. In-flight runs finish
//! their current attempt. [`Store::release_connection`] puts them back in the queue.
//!
//! # Inbound messages
//!
//! Messages received on an inbound webhook are recorded with [`Store::record_inbound`] before the sender
//! gets its answer, then claimed by the inbound worker with [`Store::claim_inbound`], which maps them and
//! calls [`Store::complete_inbound`]: that enqueues the resulting runs and settles the message in one
//! transaction, so a message is never lost nor turned into runs twice. Messages of one connection are
//! processed in arrival order: a claim takes a message only when no earlier message of its connection is
//! leased, held or waiting, so one claim may take several consecutive messages of a connection, which the
//! worker handles in `seq` order.
//!
//! # Retention
//!
//! [`Store::purge`] deletes what is only kept for the record once it is older than a cutoff: finished runs
//! (`succeeded`, `failed`, `dropped`) with their traces, `processed` inbound messages and outbox events. What
//! still needs someone (a `queued`, `leased`, `held` or `dead` run; an inbound message not yet processed, or
//! `unmatched` or `failed`) is never purged. A finished run does not hold its key, so a purge never changes which
//! runs are claimable. It deletes in batches, one transaction each, so that accepts and claims take their turns
//! in between.
//!
//! # For backend implementers
//!
//! - Every method is atomic (SQLite's `claim` first sweeps expired leases on held connections, in a statement of
//!   its own); `claim`/`claim_inbound` must be atomic against concurrent claimers.
//! - Durability: what a caller was told is accepted must be on disk when the call returns: `enqueue`,
//!   `record_inbound`, and operators' actions (`retry_now`, `drop_run`, `retry_inbound`, `hold_connection`,
//!   `release_connection`). Claims and the lease holders' calls may reach the disk later, provided commits reach
//!   it in order: losing the newest of them to a power loss only makes runs and messages go again.
//!   With concurrent claimers in their own transactions (PostgreSQL), `SKIP LOCKED` on the runs alone is not
//!   enough: a claimer that skips a key's first run, locked by another, can take the second. [`PostgresStore`]
//!   locks a row per key (`SKIP LOCKED`) before it reads the key's runs in a new snapshot, and makes a key's
//!   enqueues take turns so that `seq` follows commit order (see its module documentation).
//! - `next_attempt_at` of a leased run equals `lease_until`, so "due" is one condition for both states.
//! - Fencing: lease-holder updates match `id`, `status = 'leased'`, `lease_owner` and `leases` (the token).
//! - The held-connection invariant: no `queued` run uses a held connection (enqueue, reschedule, retry and
//!   release check it; claim first turns expired leases on held connections into `held`).
//! - `enqueue` keeps the order of its input in `seq`.
//! - `purge` must cost what it deletes, not the size of the store: find finished runs and processed messages by
//!   an index on their state and the time they closed (SQLite sets `next_attempt_at` to it and reads `runs_due`),
//!   take the outbox's front by `seq`, and delete a stored trace only with the last run that points at it. One
//!   batch is one short transaction; the service pauses between batches.

#[cfg(any(test, feature = "store-conformance"))]
pub mod conformance;
mod postgres;
mod sqlite;

pub use postgres::location::{PostgresLocation, redact_store_setting};
/// A real PostgreSQL for tests: a throwaway cluster, or `FLOWHOST_TEST_POSTGRES_URL`'s server.
#[cfg(any(test, feature = "store-conformance"))]
pub use postgres::testing as postgres_testing;
pub use postgres::{PostgresStore, schema_version as postgres_schema_version};
/// Damage to a SQLite store file, for integrity tests.
#[cfg(any(test, feature = "store-conformance"))]
pub use sqlite::testing as sqlite_testing;
pub use sqlite::{SqliteStore, use_the_global_allocator_for_sqlite};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Opens the store at `location`: a SQLite file given as a path (`flowhost.db`, `/var/lib/flowhost.db`) or as a
/// `sqlite://` URL (`sqlite://flowhost.db`, `sqlite:///var/lib/flowhost.db`), or a PostgreSQL database as a
/// `postgres://` URL. See [`StoreLocation`].
pub async fn open(location: &str) -> Result<Arc<dyn Store>, StoreError> {
    StoreLocation::parse(location)?.open().await
}

/// Where a store is: which backend, and where that backend finds its data.
/// Its `Debug` and `Display` never show a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite database file, created with its directories on first start.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://user:password@host:port/database`), shared by any number of processes.
    Postgres(PostgresLocation),
}

/// What [`StoreLocation::parse`] names when a location has a scheme it does not know.
const SUPPORTED_STORES: &str =
    "this build supports sqlite (a path, or sqlite:// and a path) and postgres (postgres:// or postgresql://)";

impl StoreLocation {
    /// Reads a location: a path, or a URL whose scheme names the backend. This match on the scheme is where a
    /// backend is added; the compiler then points at what else its variant needs.
    pub fn parse(location: &str) -> Result<Self, StoreError> {
        let refused = |message: &str| StoreError::Open { path: shown_location(location), message: message.into() };
        let sqlite_file = |path: &str| match path {
            "" => Err(refused("names no database file")),
            path if path.contains(['?', '#']) => Err(refused("a sqlite:// URL takes a path only, without `?` options")),
            path => Ok(StoreLocation::Sqlite(PathBuf::from(path))),
        };
        match url_scheme(location) {
            None => sqlite_file(location),
            Some(("sqlite", path)) => sqlite_file(path),
            Some(("postgres" | "postgresql", _)) => {
                PostgresLocation::parse(location).map(StoreLocation::Postgres).map_err(|message| refused(&message))
            }
            Some((scheme, _)) => Err(refused(&format!("unknown store scheme `{scheme}`; {SUPPORTED_STORES}"))),
        }
    }

    /// The location with a relative file path taken from `dir` (e.g. the directory of the configuration file
    /// that names the store) rather than from the working directory.
    pub fn relative_to(self, dir: &Path) -> Self {
        match self {
            StoreLocation::Sqlite(path) => StoreLocation::Sqlite(dir.join(path)),
            postgres @ StoreLocation::Postgres(_) => postgres,
        }
    }

    /// The database file, for a backend that keeps its data in one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            StoreLocation::Sqlite(path) => Some(path),
            StoreLocation::Postgres(_) => None,
        }
    }

    /// Opens the store, creating it on first start, and brings its schema up to date.
    pub async fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        match self {
            StoreLocation::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path).await?)),
            StoreLocation::Postgres(location) => Ok(Arc::new(PostgresStore::open(location).await?)),
        }
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Sqlite(path) => write!(f, "SQLite at {}", path.display()),
            StoreLocation::Postgres(location) => write!(f, "PostgreSQL at {}", location.shown()),
        }
    }
}

/// The scheme of a URL (`postgres` in `postgres://…`) and what follows `://`; `None` for a path. A scheme is a
/// letter followed by letters, digits, `+`, `-` or `.` (RFC 3986), so a path such as `./data://x` is a path.
fn url_scheme(location: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = location.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some((scheme, rest))
}

/// A location as an error shows it: a PostgreSQL URL without its password and parameters; a URL of a backend this
/// build does not know may carry a password too, so only its scheme is shown.
fn shown_location(location: &str) -> String {
    match url_scheme(location) {
        None | Some(("sqlite", _)) => location.to_string(),
        Some(("postgres" | "postgresql", _)) => redact_store_setting(location),
        Some((scheme, _)) => format!("{scheme}://…"),
    }
}

/// What may have become claimable, for [`Store::on_wake`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Runs: enqueued, released, retried, or put back by a reconnect.
    Runs,
    /// Inbound messages: recorded or retried.
    Inbound,
}

/// A callback for [`Store::on_wake`].
pub type WakeFn = Arc<dyn Fn(Wake) + Send + Sync>;

/// Milliseconds since the Unix epoch, the store's clock.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// `now_ms + duration`, saturating.
pub fn add_ms(now_ms: i64, duration: Duration) -> i64 {
    now_ms.saturating_add(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
}

/// Listing limit used when a filter asks for 0 rows.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// The largest listing a single call returns.
pub const MAX_LIST_LIMIT: usize = 1000;

/// Where a run is in its life. See the [module documentation](self) for the transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Ready, or waiting for a resend until `next_attempt_at`.
    Queued,
    /// A worker holds it until `lease_until`; an expired lease is claimable again.
    Leased,
    /// Finished successfully (terminal).
    Succeeded,
    /// Finished with a permanent error (terminal).
    Failed,
    /// Retries exhausted: kept and visible; holds its ordering key until retried or dropped.
    Dead,
    /// Its connection was disconnected: kept and reported, not sent.
    Held,
    /// Removed from the queue by an operator; kept for the record (terminal).
    Dropped,
}

impl RunState {
    pub const ALL: [RunState; 7] = [
        RunState::Queued,
        RunState::Leased,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Dead,
        RunState::Held,
        RunState::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Leased => "leased",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Dead => "dead",
            RunState::Held => "held",
            RunState::Dropped => "dropped",
        }
    }

    /// Whether a run in this state holds the later runs of its ordering key.
    pub fn holds_key(self) -> bool {
        matches!(self, RunState::Queued | RunState::Leased | RunState::Held | RunState::Dead)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = RunState::ALL.iter().map(|state| state.as_str()).collect();
            StoreError::invalid("status", format!("unknown run status `{s}`; the states are {}", known.join(", ")))
        })
    }
}

/// Where an inbound message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InboundState {
    /// Recorded, waiting for the inbound worker.
    Received,
    /// The inbound worker holds it until `lease_until`.
    Leased,
    /// Mapped; its runs (if any) are enqueued (terminal).
    Processed,
    /// Nothing maps it (e.g. an unknown event type): kept and reported (terminal until retried).
    Unmatched,
    /// It could not be processed (e.g. a payload the mapping cannot read): kept (terminal until retried).
    Failed,
    /// Its connection was disconnected: kept, not processed.
    Held,
}

impl InboundState {
    pub const ALL: [InboundState; 6] = [
        InboundState::Received,
        InboundState::Leased,
        InboundState::Processed,
        InboundState::Unmatched,
        InboundState::Failed,
        InboundState::Held,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InboundState::Received => "received",
            InboundState::Leased => "leased",
            InboundState::Processed => "processed",
            InboundState::Unmatched => "unmatched",
            InboundState::Failed => "failed",
            InboundState::Held => "held",
        }
    }
}

impl fmt::Display for InboundState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InboundState {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InboundState::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = InboundState::ALL.iter().map(|state| state.as_str()).collect();
            let message = format!("unknown inbound message status `{s}`; the states are {}", known.join(", "));
            StoreError::invalid("status", message)
        })
    }
}

/// States given as a comma-separated list (`dead,queued`), as the API's `?status=` and the CLI's `--status`
/// take them; the error names the first unknown one.
pub fn parse_states<T: FromStr<Err = StoreError>>(list: &str) -> Result<Vec<T>, StoreError> {
    list.split(',').map(|state| state.trim().parse()).collect()
}

/// A run to enqueue: one flow run for one accepted event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewRun {
    pub flow_id: String,
    pub flow_version: String,
    /// Names of the connections the flow uses (a disconnect holds the run).
    #[serde(default)]
    pub connections: Vec<String>,
    /// Runs of one key are delivered in order, e.g. `"<flow>/<customer>"`. Must not be empty.
    pub ordering_key: String,
    /// The customer, for listing (`GET /v1/runs?customer=…`).
    #[serde(default)]
    pub customer: Option<String>,
    /// The event that starts the run.
    pub event: Value,
    /// An optional caller-supplied key (e.g. the platform's event id): enqueuing a run whose flow already has
    /// a run with this key returns the existing run's id instead of adding a second run, so a client that
    /// re-sends an event after a timeout does not get it delivered twice.
    #[serde(default)]
    pub dedup_key: Option<String>,
}

impl NewRun {
    /// Checks the fields the store relies on; `field` names the run in the error (e.g. `runs[3]`).
    pub fn validate(&self, field: &str) -> Result<(), StoreError> {
        if self.flow_id.is_empty() {
            return Err(StoreError::invalid(format!("{field}.flowId"), "must not be empty"));
        }
        if self.ordering_key.is_empty() {
            return Err(StoreError::invalid(format!("{field}.orderingKey"), "must not be empty"));
        }
        if let Some(i) = self.connections.iter().position(String::is_empty) {
            return Err(StoreError::invalid(format!("{field}.connections[{i}]"), "must not be empty"));
        }
        if self.dedup_key.as_deref() == Some("") {
            return Err(StoreError::invalid(format!("{field}.dedupKey"), "must not be empty when given"));
        }
        Ok(())
    }
}

/// A run handed to [`Store::enqueue_runs`]: its id, and whether that call stored it (`false` for a re-sent run,
/// de-duplicated by its dedup key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    pub id: String,
    pub new: bool,
}

/// Checks every run of a batch; the error names the first bad one (`runs[i].field`).
pub fn validate_runs(runs: &[NewRun]) -> Result<(), StoreError> {
    runs.iter().enumerate().try_for_each(|(i, run)| run.validate(&format!("runs[{i}]")))
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredRun {
    /// A UUID.
    pub id: String,
    /// Arrival order, increasing, never reused.
    pub seq: i64,
    pub flow_id: String,
    pub flow_version: String,
    pub connections: Vec<String>,
    pub ordering_key: String,
    pub customer: Option<String>,
    pub dedup_key: Option<String>,
    pub event: Value,
    pub status: RunState,
    /// Failed attempts recorded by `reschedule` and `dead_letter` (reset when an operator retries a dead
    /// or failed run).
    pub attempts: u32,
    /// How many times the run was claimed; also the fencing token of the current lease.
    pub leases: u32,
    /// When the run may next be claimed: for `queued`, when it is due; for `leased`, when the lease
    /// expires (equal to `lease_until`).
    pub next_attempt_at: i64,
    /// The worker that holds (or last held) the run.
    pub lease_owner: Option<String>,
    /// When the current lease expires; set only while `leased`.
    pub lease_until: Option<i64>,
    /// The executor's saved progress.
    pub checkpoint: Option<Value>,
    pub last_error: Option<Value>,
    pub trace: Option<Value>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl StoredRun {
    /// The lease the current holder passes to fenced calls, when the run is leased.
    pub fn lease(&self) -> Option<Lease> {
        lease_of(self.status == RunState::Leased, &self.id, self.lease_owner.as_deref(), self.leases)
    }

    /// The attempts made since the run was enqueued or an operator retried it: the failed ones the store
    /// counts, and the one that ended the run or is in progress.
    pub fn attempts_made(&self) -> u32 {
        attempts_made(self.status, self.attempts)
    }

    /// When the run will next be tried, for a run that will be: not for one that ended, is dead or dropped.
    pub fn next_attempt(&self) -> Option<i64> {
        next_attempt(self.status, self.next_attempt_at)
    }

    /// The error of the last failed attempt, unless the run succeeded since.
    pub fn error_to_show(&self) -> Option<&Value> {
        error_to_show(self.status, self.last_error.as_ref())
    }

    /// The run as a listing shows it.
    pub fn summary(&self) -> RunSummary {
        RunSummary {
            id: self.id.clone(),
            seq: self.seq,
            flow_id: self.flow_id.clone(),
            flow_version: self.flow_version.clone(),
            connections: self.connections.clone(),
            ordering_key: self.ordering_key.clone(),
            customer: self.customer.clone(),
            status: self.status,
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at,
            last_error: self.last_error.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

fn attempts_made(status: RunState, attempts: u32) -> u32 {
    match status {
        RunState::Leased | RunState::Succeeded | RunState::Failed => attempts + 1,
        _ => attempts,
    }
}

fn next_attempt(status: RunState, next_attempt_at: i64) -> Option<i64> {
    matches!(status, RunState::Queued | RunState::Leased | RunState::Held).then_some(next_attempt_at)
}

fn error_to_show(status: RunState, last_error: Option<&Value>) -> Option<&Value> {
    last_error.filter(|_| status != RunState::Succeeded)
}

/// A run as a listing shows it ([`Store::list_summaries`]): a [`StoredRun`] without its event, checkpoint, trace
/// and lease. Those are what a run's own page reads, and what made a page of runs slow: a trace is read from a
/// compressed block that it shares with the other traces of its batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub id: String,
    pub seq: i64,
    pub flow_id: String,
    pub flow_version: String,
    pub connections: Vec<String>,
    pub ordering_key: String,
    pub customer: Option<String>,
    pub status: RunState,
    /// As [`StoredRun::attempts`].
    pub attempts: u32,
    /// As [`StoredRun::next_attempt_at`].
    pub next_attempt_at: i64,
    pub last_error: Option<Value>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What a [`StoredRun`] has beyond its [`RunSummary`].
pub(crate) struct RunDetails {
    pub dedup_key: Option<String>,
    pub event: Value,
    pub leases: u32,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub checkpoint: Option<Value>,
    pub trace: Option<Value>,
}

impl RunSummary {
    /// The whole run: this summary and the rest ([`StoredRun::summary`] the other way).
    pub(crate) fn with_details(self, details: RunDetails) -> StoredRun {
        let RunDetails { dedup_key, event, leases, lease_owner, lease_until, checkpoint, trace } = details;
        StoredRun {
            id: self.id,
            seq: self.seq,
            flow_id: self.flow_id,
            flow_version: self.flow_version,
            connections: self.connections,
            ordering_key: self.ordering_key,
            customer: self.customer,
            dedup_key,
            event,
            status: self.status,
            attempts: self.attempts,
            leases,
            next_attempt_at: self.next_attempt_at,
            lease_owner,
            lease_until,
            checkpoint,
            last_error: self.last_error,
            trace,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }

    /// As [`StoredRun::attempts_made`].
    pub fn attempts_made(&self) -> u32 {
        attempts_made(self.status, self.attempts)
    }

    /// As [`StoredRun::next_attempt`].
    pub fn next_attempt(&self) -> Option<i64> {
        next_attempt(self.status, self.next_attempt_at)
    }

    /// As [`StoredRun::error_to_show`].
    pub fn error_to_show(&self) -> Option<&Value> {
        error_to_show(self.status, self.last_error.as_ref())
    }
}

/// Dead runs counted by customer and by flow ([`Store::dead_runs_by_group`]), for the operators' bulk retry and
/// drop: the largest groups first, then by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadRunGroups {
    /// Per customer (`None`: runs without one), how many dead runs.
    pub by_customer: Vec<(Option<String>, u64)>,
    /// Per flow id, how many dead runs.
    pub by_flow: Vec<(String, u64)>,
}

fn lease_of(leased: bool, id: &str, owner: Option<&str>, token: u32) -> Option<Lease> {
    match (leased, owner) {
        (true, Some(worker)) => Some(Lease { id: id.to_string(), worker: worker.to_string(), token }),
        _ => None,
    }
}

/// Proof of holding a run (or inbound message) from one claim: the id, the claiming worker, and a token
/// that changes with every claim, so a worker whose lease expired and was claimed again — even by a worker
/// with the same name — is refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    pub worker: String,
    pub token: u32,
}

/// How a leased run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    Succeeded,
    /// A permanent error; `error` is kept as the run's `last_error`.
    Failed {
        error: Value,
    },
}

/// One run's completion, for [`Store::complete_many`].
#[derive(Debug, Clone)]
pub struct RunCompletion {
    pub lease: Lease,
    pub completion: Completion,
    /// The trace as JSON text (`serde_json::value::to_raw_value`), or `None` when it is not kept: the run then
    /// reads back with no trace. Text rather than a `Value`, so that a worker serializes its trace once, straight
    /// from its own types, instead of building a `Value` tree and serializing that (BENCHMARKS.md, "Tenth
    /// round").
    pub trace: Option<Box<RawValue>>,
    pub emitted: Vec<NewOutboxEvent>,
}

/// An event an emit node handed to the embedding platform, written to the outbox when its run completes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewOutboxEvent {
    pub node_id: String,
    /// The loyalty event name, e.g. `point_add`.
    pub event: String,
    pub payload: Value,
}

/// An event in the durable outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboxEvent {
    /// Increasing; read on with `outbox(after_seq = last seen seq)`.
    pub seq: i64,
    pub run_id: String,
    pub flow_id: String,
    pub node_id: String,
    pub event: String,
    pub payload: Value,
    pub created_at: i64,
}

/// Which runs to list, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    pub customer: Option<String>,
    pub flow_id: Option<String>,
    pub ordering_key: Option<String>,
    /// Runs that use this connection.
    pub connection: Option<String>,
    /// Any of these states; all states when empty.
    pub statuses: Vec<RunState>,
    /// Only runs with a smaller `seq` (paging: pass the last `seq` of the previous page).
    pub before_seq: Option<i64>,
    /// Only runs created at or after this time (ms since the Unix epoch).
    pub created_from: Option<i64>,
    /// Only runs created before this time (ms since the Unix epoch).
    pub created_until: Option<i64>,
    /// At most this many ([`DEFAULT_LIST_LIMIT`] when 0, at most [`MAX_LIST_LIMIT`]).
    pub limit: usize,
}

/// A message received on an inbound webhook, to record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundMessage {
    /// The connection it arrived for.
    pub connection: String,
    /// What sent it and in which format, e.g. `acme.webhook`.
    pub source: String,
    /// The sender's message id, when it has one: recording the same id twice for a connection returns the
    /// first message's id.
    #[serde(default)]
    pub external_id: Option<String>,
    pub body: Value,
}

/// An inbound message as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredInbound {
    pub id: String,
    pub seq: i64,
    pub connection: String,
    pub source: String,
    pub external_id: Option<String>,
    pub body: Value,
    pub status: InboundState,
    pub leases: u32,
    pub next_attempt_at: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    /// Why it was unmatched or failed.
    pub detail: Option<Value>,
    /// The runs it produced.
    pub run_ids: Vec<String>,
    pub received_at: i64,
    pub updated_at: i64,
}

impl StoredInbound {
    pub fn lease(&self) -> Option<Lease> {
        lease_of(self.status == InboundState::Leased, &self.id, self.lease_owner.as_deref(), self.leases)
    }
}

/// How the inbound worker settled a message.
#[derive(Debug, Clone, PartialEq)]
pub enum InboundOutcome {
    /// Mapped; the runs passed along are enqueued. Events of the message that nothing maps are reported in
    /// `unmatched` (kept as the message's detail).
    Processed { unmatched: Option<Value> },
    /// Nothing maps it; kept and reported.
    Unmatched { reason: Value },
    /// It cannot be processed; kept.
    Failed { error: Value },
}

/// Which inbound messages to list, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InboundFilter {
    pub connection: Option<String>,
    pub statuses: Vec<InboundState>,
    pub before_seq: Option<i64>,
    pub limit: usize,
}

/// What a hold or release of a connection moved, in this call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionHold {
    pub runs: u64,
    pub inbound: u64,
}

/// Runs per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunCounts {
    pub queued: u64,
    pub leased: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dead: u64,
    pub held: u64,
    pub dropped: u64,
}

impl RunCounts {
    pub fn get(&self, state: RunState) -> u64 {
        match state {
            RunState::Queued => self.queued,
            RunState::Leased => self.leased,
            RunState::Succeeded => self.succeeded,
            RunState::Failed => self.failed,
            RunState::Dead => self.dead,
            RunState::Held => self.held,
            RunState::Dropped => self.dropped,
        }
    }

    fn slot(&mut self, state: RunState) -> &mut u64 {
        match state {
            RunState::Queued => &mut self.queued,
            RunState::Leased => &mut self.leased,
            RunState::Succeeded => &mut self.succeeded,
            RunState::Failed => &mut self.failed,
            RunState::Dead => &mut self.dead,
            RunState::Held => &mut self.held,
            RunState::Dropped => &mut self.dropped,
        }
    }
}

/// Inbound messages per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundCounts {
    pub received: u64,
    pub leased: u64,
    pub processed: u64,
    pub unmatched: u64,
    pub failed: u64,
    pub held: u64,
}

impl InboundCounts {
    pub fn get(&self, state: InboundState) -> u64 {
        match state {
            InboundState::Received => self.received,
            InboundState::Leased => self.leased,
            InboundState::Processed => self.processed,
            InboundState::Unmatched => self.unmatched,
            InboundState::Failed => self.failed,
            InboundState::Held => self.held,
        }
    }

    fn slot(&mut self, state: InboundState) -> &mut u64 {
        match state {
            InboundState::Received => &mut self.received,
            InboundState::Leased => &mut self.leased,
            InboundState::Processed => &mut self.processed,
            InboundState::Unmatched => &mut self.unmatched,
            InboundState::Failed => &mut self.failed,
            InboundState::Held => &mut self.held,
        }
    }
}

/// The run another run waits behind: the first open run of its ordering key (see the ordering rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeldBy {
    pub run: String,
    pub status: RunState,
    /// Its failed attempts: a `queued` run with attempts is waiting for its resend.
    pub attempts: u32,
}

/// Queued and held runs that wait behind a run that is not moving by itself soon: a dead run (until an operator
/// retries or drops it), or a run waiting for its resend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldBehind {
    pub dead: u64,
    pub resend: u64,
}

/// What an operator's action on many runs did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    Retry,
    Drop,
}

/// Sizes for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounts {
    pub runs: RunCounts,
    pub inbound: InboundCounts,
    /// Events in the outbox.
    pub outbox: u64,
}

/// What one [`Store::purge`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    /// Finished runs, with their traces.
    pub runs: u64,
    /// Processed inbound messages.
    pub inbound: u64,
    /// Outbox events: those older than the cutoff, and those of the runs purged.
    pub outbox: u64,
}

impl Purged {
    /// Whether a purge of batches of `batch` that deleted this may have left more to delete: it filled a batch.
    pub fn may_have_more(&self, batch: usize) -> bool {
        let batch = u64::try_from(batch).unwrap_or(u64::MAX);
        self.runs >= batch || self.inbound >= batch || self.outbox >= batch
    }

    /// Whether it deleted nothing.
    pub fn is_empty(&self) -> bool {
        *self == Purged::default()
    }
}

impl std::ops::AddAssign for Purged {
    fn add_assign(&mut self, other: Purged) {
        self.runs += other.runs;
        self.inbound += other.inbound;
        self.outbox += other.outbox;
    }
}

/// Why a store call failed. Never a panic: bad input and bad stored data are errors like any other.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{what} {id}: worker `{worker}` no longer holds its lease (it is {now}); its work must stop")]
    LeaseLost { what: &'static str, id: String, worker: String, now: String },
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("cannot open the store at {path}: {message}")]
    Open { path: String, message: String },
    #[error("cannot migrate the store's schema: {0}")]
    Migrate(String),
    #[error("stored data is corrupt: {what}: {message}")]
    Corrupt { what: String, message: String },
    #[error("database error while {operation}: {source}")]
    Database {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// The write committed but could not be made durable: the caller must not report it as accepted.
    #[error("cannot make {operation} durable: syncing {path} failed: {message}")]
    Sync { operation: &'static str, path: String, message: String },
}

impl StoreError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        StoreError::Invalid { field: field.into(), message: message.into() }
    }

    /// Whether the caller's work on a leased item must stop because someone else owns it now.
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, StoreError::LeaseLost { .. })
    }
}

/// The storage behind durable delivery. Every method is one transaction, committed before it returns.
/// See the [module documentation](self) for states, the ordering rule and connections.
#[async_trait]
pub trait Store: Send + Sync {
    /// Accepts runs as `queued` (or `held`, if one of their connections is held) and returns their ids, in
    /// order. All or nothing. A run whose `dedup_key` its flow already has returns the existing id.
    async fn enqueue(&self, runs: &[NewRun]) -> Result<Vec<String>, StoreError> {
        Ok(self.enqueue_runs(runs).await?.into_iter().map(|run| run.id).collect())
    }

    /// As [`enqueue`](Store::enqueue), saying of each run whether this call stored it: not when its flow already
    /// had its `dedup_key`, stored before or earlier in `runs`.
    async fn enqueue_runs(&self, runs: &[NewRun]) -> Result<Vec<Enqueued>, StoreError>;

    /// Leases up to `limit` claimable runs (see the ordering rule) to `worker` until `now_ms + lease`, oldest
    /// first, with up to `per_key` runs of a key (a claimable run and the due runs right behind it; every
    /// key's first run is taken before any key's second). Atomic: two concurrent claimers never get the same
    /// run. The caller runs a key's runs in `seq` order and [`release`](Store::release)s those it does not
    /// start.
    async fn claim(
        &self,
        worker: &str,
        limit: usize,
        per_key: usize,
        now_ms: i64,
        lease: Duration,
    ) -> Result<Vec<StoredRun>, StoreError>;

    /// Gives back leased runs their holder did not start (an earlier run of their key stopped): they are due
    /// again at once, still behind that run. Fenced: a lease that is no longer held is skipped.
    async fn release(&self, leases: &[Lease]) -> Result<(), StoreError>;

    /// Saves the executor's progress and extends the lease to `lease_until_ms`. Like every lease-holder call,
    /// it succeeds while nobody else has claimed the run — even a little past `lease_until` — and fails with
    /// [`StoreError::LeaseLost`] once someone has.
    async fn checkpoint(&self, lease: &Lease, checkpoint: &Value, lease_until_ms: i64) -> Result<(), StoreError>;

    /// Extends the lease to `lease_until_ms` (a heartbeat during a long node).
    async fn extend_lease(&self, lease: &Lease, lease_until_ms: i64) -> Result<(), StoreError>;

    /// Ends the run as succeeded or failed, with its trace (`null`: none kept), and writes the events it
    /// emitted to the outbox, in one transaction.
    async fn complete(
        &self,
        lease: &Lease,
        completion: &Completion,
        trace: &Value,
        emitted: &[NewOutboxEvent],
    ) -> Result<(), StoreError>;

    /// Completes many runs in one transaction (group commit of completions): each as [`complete`](Store::complete)
    /// would, each fenced on its own, so one lost lease fails only its own entry. The outer error is a failure
    /// of the whole transaction (nothing was written).
    async fn complete_many(&self, completions: &[RunCompletion]) -> Result<Vec<Result<(), StoreError>>, StoreError>;

    /// A resend: attempts + 1, back to `queued` (or `held` if a connection is held) until `at_ms`, keeping
    /// `error` as `last_error` and replacing the checkpoint when one is given. Returns the new state.
    async fn reschedule(
        &self,
        lease: &Lease,
        at_ms: i64,
        error: &Value,
        checkpoint: Option<&Value>,
    ) -> Result<RunState, StoreError>;

    /// Retries exhausted: attempts + 1, `dead` with its error and trace (`null`: none kept), kept until an
    /// operator retries or drops it (and holding its ordering key until then).
    async fn dead_letter(&self, lease: &Lease, error: &Value, trace: &Value) -> Result<(), StoreError>;

    async fn get(&self, id: &str) -> Result<Option<StoredRun>, StoreError>;

    /// Runs matching the filter, newest (highest `seq`) first.
    async fn list(&self, filter: &RunFilter) -> Result<Vec<StoredRun>, StoreError>;

    /// The runs [`list`](Store::list) returns for `filter`, as summaries: without their event, checkpoint and
    /// trace, so a page of runs costs what it shows, not the runs' traces.
    async fn list_summaries(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError>;

    /// How many runs `filter` selects, per state, counted by the database: those of its customer, flow, ordering
    /// key, connection and creation time, in its `statuses` (all when empty; other states count 0). Its
    /// `before_seq` and `limit` do not apply: every such run counts.
    async fn count_runs(&self, filter: &RunFilter) -> Result<RunCounts, StoreError>;

    /// Dead runs counted by customer and by flow: the `limit` largest groups of each ([`DEFAULT_LIST_LIMIT`] when
    /// 0, at most [`MAX_LIST_LIMIT`]), the largest first, then by name.
    async fn dead_runs_by_group(&self, limit: usize) -> Result<DeadRunGroups, StoreError>;

    /// Operator retry: a `dead`, `queued`, `held` or `failed` run becomes due now (`held` again if its
    /// connection is still held); a dead or failed run gets a fresh count of attempts. False when there is
    /// no such run in one of those states.
    async fn retry_now(&self, id: &str) -> Result<bool, StoreError>;

    /// Operator drop: a `queued`, `leased`, `held` or `dead` run becomes `dropped` (kept for the record; a
    /// worker holding it loses its lease). False when there is no such run in one of those states.
    async fn drop_run(&self, id: &str) -> Result<bool, StoreError>;

    /// Outbox events with `seq > after_seq`, oldest first: at most `limit` ([`DEFAULT_LIST_LIMIT`] when 0, at most
    /// [`MAX_LIST_LIMIT`]).
    async fn outbox(&self, after_seq: i64, limit: usize) -> Result<Vec<OutboxEvent>, StoreError>;

    /// Records an inbound message as `received` (or `held`) and returns its id.
    async fn record_inbound(&self, message: &InboundMessage) -> Result<String, StoreError>;

    /// Leases up to `limit` inbound messages, oldest first, keeping each connection's messages in order.
    async fn claim_inbound(
        &self,
        worker: &str,
        limit: usize,
        now_ms: i64,
        lease: Duration,
    ) -> Result<Vec<StoredInbound>, StoreError>;

    /// Settles a leased inbound message and enqueues the runs it maps to, in one transaction; returns the
    /// run ids.
    async fn complete_inbound(
        &self,
        lease: &Lease,
        outcome: &InboundOutcome,
        runs: &[NewRun],
    ) -> Result<Vec<String>, StoreError>;

    async fn get_inbound(&self, id: &str) -> Result<Option<StoredInbound>, StoreError>;

    async fn list_inbound(&self, filter: &InboundFilter) -> Result<Vec<StoredInbound>, StoreError>;

    /// Operator retry of an `unmatched`, `failed` or `held` inbound message: `received` again (`held` if its
    /// connection is held).
    async fn retry_inbound(&self, id: &str) -> Result<bool, StoreError>;

    /// Disconnect: marks the connection held and moves its queued runs and received inbound messages to
    /// `held`, atomically. Idempotent.
    async fn hold_connection(&self, connection: &str) -> Result<ConnectionHold, StoreError>;

    /// Reconnect: un-holds the connection and puts its held runs (those with no other held connection) and
    /// inbound messages back in the queue.
    async fn release_connection(&self, connection: &str) -> Result<ConnectionHold, StoreError>;

    /// The connections currently held, sorted.
    async fn held_connections(&self) -> Result<Vec<String>, StoreError>;

    /// Runs and inbound messages per state, and the outbox size.
    async fn counts(&self) -> Result<QueueCounts, StoreError>;

    /// For each of `ids` that is `queued` or `held` behind an earlier open run of its ordering key, that key's
    /// first open run: the dead run or the resend it waits for. Runs that do not wait (their key's first open
    /// run, runs in other states, unknown ids) are absent.
    async fn held_by(&self, ids: &[String]) -> Result<HashMap<String, HeldBy>, StoreError>;

    /// How many `queued` and `held` runs wait behind a dead run of their key, and behind a run waiting for its
    /// resend (a `queued` first open run with failed attempts).
    async fn held_behind(&self) -> Result<HeldBehind, StoreError>;

    /// Retries (as [`retry_now`](Store::retry_now)) or drops (as [`drop_run`](Store::drop_run)) every dead
    /// run that `filter` selects, whatever its `statuses`, `before_seq` and `limit`; returns their ids, newest
    /// first. Each run is its own transaction: a run that changed state meanwhile is skipped. The default goes
    /// through [`list`](Store::list) a page at a time.
    async fn bulk_dead(&self, filter: &RunFilter, action: BulkAction) -> Result<Vec<String>, StoreError> {
        let mut page =
            RunFilter { statuses: vec![RunState::Dead], before_seq: None, limit: MAX_LIST_LIMIT, ..filter.clone() };
        let mut done = Vec::new();
        loop {
            let runs = self.list(&page).await?;
            let Some(last) = runs.last() else { return Ok(done) };
            page.before_seq = Some(last.seq);
            for run in runs {
                let changed = match action {
                    BulkAction::Retry => self.retry_now(&run.id).await?,
                    BulkAction::Drop => self.drop_run(&run.id).await?,
                };
                if changed {
                    done.push(run.id);
                }
            }
        }
    }

    /// Retention: deletes, in one transaction, at most `batch` of each of
    ///
    /// - runs that finished (`succeeded`, `failed` or `dropped`) before `older_than_ms`, that is whose last
    ///   change (`updated_at`) is older, with their traces and their outbox events (which are older still);
    /// - inbound messages `processed` before `older_than_ms`;
    /// - outbox events created before `older_than_ms`, from the front of the outbox: the platform reads it
    ///   forward by `seq`, so the purge takes the oldest events in `seq` order and stops at the first one that is
    ///   not older than the cutoff (even if a later one is, after a clock step back).
    ///
    /// Never a `queued`, `leased`, `held` or `dead` run, nor an inbound message in another state than
    /// `processed`; the keys' order is untouched (a finished run holds nothing). A run is purged whole: its trace
    /// goes with it, and no stored trace is left that no run points at. Returns what it deleted; when that fills
    /// a batch ([`Purged::may_have_more`]), more may be left, and the caller calls again, after a pause that
    /// lets other writers in. Not durable by itself: a purge lost to a power loss is simply done again.
    /// `batch` 0 is an error.
    async fn purge(&self, older_than_ms: i64, batch: usize) -> Result<Purged, StoreError>;

    /// Closes the store's connections once the calls in progress are done; later calls fail. A process calls it
    /// when it stops, after its workers. The default does nothing, for a store with nothing to close.
    async fn close(&self) {}

    /// Asks to be called when work may have become claimable because of another process (its enqueue, release,
    /// retry, recorded message), so that idle workers look at once rather than at their next poll. Workers poll
    /// anyway: a wake-up is a hint, and may come twice or not at all. The default never calls: a store no other
    /// process writes to has nothing to report.
    fn on_wake(&self, wake: WakeFn) {
        let _ = wake;
    }

    /// Checks that the stored data is intact, as far as the backend can tell on its own ([`Integrity`]): SQLite
    /// runs `PRAGMA quick_check`, which reads the whole file (call it on a schedule, not per request);
    /// PostgreSQL checks that its migrations are this build's and that every table answers (the server's own
    /// checksums and `amcheck` are its operator's). Opening a store runs the same check and refuses a store that
    /// fails it. `Err` when the check could not run (the store is not reachable); problems it found are `Ok`.
    async fn check_integrity(&self) -> Result<Integrity, StoreError>;
}

/// What a store's integrity check found ([`Store::check_integrity`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Integrity {
    /// What was checked, e.g. `PRAGMA quick_check`.
    pub check: String,
    /// What is wrong, in the backend's words; empty when the check passed.
    pub problems: Vec<String>,
}

impl Integrity {
    /// Whether the check found nothing wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(path: &str) -> StoreLocation {
        StoreLocation::Sqlite(PathBuf::from(path))
    }

    #[test]
    fn a_path_or_a_sqlite_url_names_a_sqlite_file() {
        for (location, path) in [
            ("flowhost.db", "flowhost.db"),
            ("data/flowhost.db", "data/flowhost.db"),
            ("/var/lib/flowhost.db", "/var/lib/flowhost.db"),
            ("sqlite://relative.db", "relative.db"),
            ("sqlite:///var/lib/flowhost.db", "/var/lib/flowhost.db"),
            // Not a scheme: a path that happens to hold `://`.
            ("./data://x.db", "./data://x.db"),
        ] {
            assert_eq!(StoreLocation::parse(location).unwrap(), sqlite(path), "{location}");
        }
        assert_eq!(sqlite("relative.db").relative_to(Path::new("/etc/flowhost")), sqlite("/etc/flowhost/relative.db"));
        assert_eq!(sqlite("/var/lib/f.db").relative_to(Path::new("/etc/flowhost")), sqlite("/var/lib/f.db"));
        assert_eq!(sqlite("/var/lib/f.db").to_string(), "SQLite at /var/lib/f.db");
        assert_eq!(sqlite("/var/lib/f.db").file(), Some(Path::new("/var/lib/f.db")));
    }

    #[test]
    fn a_postgres_url_names_a_postgresql_database_and_is_never_shown_with_its_password() {
        let url = "postgres://flowhost:hunter2@db.internal:6432/queue?pool_size=3";
        let StoreLocation::Postgres(location) = StoreLocation::parse(url).unwrap() else { panic!("not PostgreSQL") };
        assert_eq!((location.shown(), location.pool_size), ("postgres://flowhost@db.internal:6432/queue", 3));
        let parsed = StoreLocation::parse(url).unwrap();
        assert_eq!(parsed.clone().relative_to(Path::new("/etc")), parsed, "a URL is not relative to a directory");
        assert_eq!(parsed.file(), None);
        for shown in [parsed.to_string(), format!("{parsed:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        assert_eq!(parsed.to_string(), "PostgreSQL at postgres://flowhost@db.internal:6432/queue");
        let error = StoreLocation::parse("postgresql://flowhost:hunter2@db.internal/").unwrap_err().to_string();
        assert!(error.contains("names no database") && !error.contains("hunter2"), "{error}");
    }

    #[test]
    fn another_scheme_is_an_error_naming_it_and_what_this_build_supports_without_the_rest_of_the_url() {
        let error = StoreLocation::parse("mysql://flowhost:hunter2@db.internal/flowhost").unwrap_err();
        let shown = error.to_string();
        assert!(matches!(error, StoreError::Open { .. }), "{shown}");
        assert!(shown.contains("store at mysql://…"), "{shown}");
        assert!(shown.contains("unknown store scheme `mysql`; this build supports sqlite"), "{shown}");
        assert!(shown.contains("and postgres"), "{shown}");
        assert!(!shown.contains("hunter2") && !shown.contains("db.internal"), "the URL may hold a password: {shown}");
        let error = StoreLocation::parse("mysql+tls://db/flowhost").unwrap_err().to_string();
        assert!(error.contains("unknown store scheme `mysql+tls`"), "{error}");
    }

    #[test]
    fn a_location_without_a_file_or_with_url_options_is_refused() {
        for (location, expected) in [
            ("", "names no database file"),
            ("sqlite://", "names no database file"),
            ("sqlite://flowhost.db?mode=rwc", "without `?` options"),
        ] {
            let error = StoreLocation::parse(location).unwrap_err().to_string();
            assert!(error.contains(expected), "{location}: {error}");
        }
    }

    #[tokio::test]
    async fn open_opens_sqlite_from_a_url_or_a_path_and_refuses_unknown_schemes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/flowhost.db");
        let url = format!("sqlite://{}", path.display());
        let store = open(&url).await.unwrap();
        let run = NewRun {
            flow_id: "f".into(),
            flow_version: "1".into(),
            connections: Vec::new(),
            ordering_key: "k".into(),
            customer: None,
            event: serde_json::json!({}),
            dedup_key: None,
        };
        let ids = store.enqueue(&[run]).await.unwrap();
        store.close().await;
        let again = open(path.to_str().unwrap()).await.unwrap();
        assert!(again.get(&ids[0]).await.unwrap().is_some(), "the same file by its path");
        again.close().await;

        let error = open("redis://db/flowhost").await.err().expect("no Redis in this build");
        assert!(error.to_string().contains("unknown store scheme `redis`"), "{error}");
    }
}
