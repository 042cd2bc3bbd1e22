//! The shared store: one PostgreSQL database, one queue for any number of flowhost processes.
//!
//! The contract is SQLite's (the [store's documentation](super), proven by the same conformance suite); what
//! changes is that several processes claim, settle and accept at once, each in its own transactions:
//!
//! - **A key's runs go one after another, whatever process takes them.** Each ordering key has a row in
//!   `run_keys`. A claim ([`runs`], the SQL function `flowhost_claim_runs` of migration 0003) first locks the rows
//!   of the keys that may be due, with `FOR UPDATE SKIP LOCKED` (a key another process is claiming is skipped, not
//!   waited for), and only then, in a new snapshot, reads which runs of those keys are claimable and leases them.
//!   The runs' leases (`leased`, an open state) then hold the key's later runs, as in SQLite. Plain `SKIP LOCKED` on
//!   the runs alone would let a second claimer skip a key's first run, locked by the first claimer, and take the
//!   second.
//! - **A claim reads only the keys that may be due**, so its cost follows the work it finds, not the number of
//!   keys with open runs, nor the number of processes claiming. `run_keys.due` says when to look at a key next
//!   (when its first open run is due; never, for a key with nothing open or held by a dead letter), written only by
//!   the claim that holds the key's row; whatever may make a key claimable sooner (an enqueue, a completion, a
//!   resend, a release, an operator's retry or drop, a released connection) inserts a row in `key_wakeups`, which
//!   never waits for a claim. Migration 0003 says why that cannot lose a wake-up.
//! - **A key's `seq` follows the order its runs commit in.** Enqueues of one key take turns on an advisory lock
//!   (by the key's hash, taken in hash order), so a run never commits behind a later-numbered run of its key that
//!   may already be leased.
//! - **Fencing** is the run's lease token (`leases`, bumped by every claim): every lease holder's call matches
//!   `id`, `status = 'leased'`, `lease_owner` and `leases`, so a process that lost its lease (it stalled past
//!   `lease_seconds` and another took the run over) changes nothing.
//! - **De-duplication** of re-sent events is the unique `(flow_id, dedup_key)`: a second process enqueuing the same
//!   event waits for the first's commit and returns its run's id (`ON CONFLICT DO NOTHING`, then the stored id).
//! - **No deadlocks**: every write that changes many runs locks them in `id` order, or skips what another
//!   transaction holds (`SKIP LOCKED`); advisory locks are taken in one order (held connections, then keys).
//!   Decisions that read the list of held connections (enqueue, resend, release, retry, the claim's sweep) take a
//!   shared advisory lock that holding or releasing a connection takes exclusively.
//! - **Durability**: accepts and operators' actions commit synchronously on one pool (`durable`); claims and the
//!   lease holders' calls commit with `synchronous_commit = off` on another (`bookkeeping`): PostgreSQL's WAL keeps
//!   commits in order, so a crash of the server can only forget the newest bookkeeping, which makes runs go again
//!   (the same contract as SQLite's). With `poll_only` (a pooler in transaction mode, where a session setting would
//!   leak to other clients) every commit is synchronous.
//! - **Wake-ups**: an enqueue, a release, a retry or a recorded inbound message sends `NOTIFY flowhost_runs` (or
//!   `flowhost_inbound`); a `LISTEN` connection ([`notify`]) wakes the workers of every process at once. Workers
//!   poll as well, so a lost notification (or `poll_only`) costs at most one poll interval.
//!
//! The parts, one concern a file, as SQLite's: [`runs`] (enqueue, claim, release, reading, operators' retry and
//! drop), [`leases`] (a lease holder's fenced calls), [`inbound`], [`holds`], [`outbox`] (and counts), [`notify`]
//! (wake-ups), [`location`] (the URL). This file opens the store: it connects, refuses a schema newer than the
//! binary, and runs the migrations (`host/migrations/postgres`) under an advisory lock, so that processes starting
//! together migrate once.

// SQL fragments that the statements of several parts share, defined before the parts' modules (which see a macro
// only below its definition), so that statements are `concat!`-ed literals.

/// The columns of a run, as `runs::RunRow` reads them.
macro_rules! run_columns {
    () => {
        "id, seq, flow_id, flow_version, connections, ordering_key, customer, dedup_key, event, status, attempts, \
         leases, next_attempt_at, lease_owner, lease_until, checkpoint, last_error, trace, trace_block, trace_slot, \
         created_at, updated_at"
    };
}

macro_rules! inbound_columns {
    () => {
        "id, seq, connection, source, external_id, body, status, leases, next_attempt_at, lease_owner, lease_until, \
         detail, run_ids, received_at, updated_at"
    };
}

/// Whether the run (`runs` in scope) uses a held connection.
macro_rules! uses_held_connection {
    () => {
        "runs.connections && ARRAY(SELECT h.connection FROM held_connections h)"
    };
}

/// Whether the run (`r` in scope) uses the connection bound at $1: a run of one of the flows that have used it,
/// whose own list has it.
macro_rules! uses_connection {
    () => {
        "r.flow_id IN (SELECT fc.flow_id FROM flow_connections fc WHERE fc.connection = $1) \
         AND $1 = ANY (r.connections)"
    };
}

/// Wakes the keys of the runs that a data-modifying CTE `done` (in scope, before this one) returned with their
/// `ordering_key` and `wake_at` (when to look: null for at once, which no clock skew between processes delays): their
/// first open run may be claimable sooner than their `run_keys.due` says (migration 0003).
macro_rules! wake_keys_of_done {
    () => {
        "woken AS (INSERT INTO key_wakeups (ordering_key, due) SELECT DISTINCT done.ordering_key, done.wake_at FROM done)"
    };
}

/// A lease holder's fenced update (`done`, returning `ordering_key` and the new `next_attempt_at`) that may have
/// moved its lease's end earlier than its key's `run_keys.due`: wakes the key at the new end then. (Leases normally
/// only move later, which needs nothing.)
macro_rules! wake_key_if_lease_shortened {
    () => {
        "woken AS (INSERT INTO key_wakeups (ordering_key, due) \
                   SELECT done.ordering_key, done.next_attempt_at FROM done JOIN run_keys k USING (ordering_key) \
                    WHERE k.due IS NULL OR k.due > done.next_attempt_at)"
    };
}

/// The lease check of every single-run lease-holder call: $1 id, $2 worker, $3 token.
macro_rules! fenced {
    () => {
        " WHERE id = $1 AND status = 'leased' AND lease_owner = $2 AND leases = $3"
    };
}

mod holds;
mod inbound;
mod integrity;
mod leases;
pub mod location;
mod notify;
mod outbox;
mod retention;
mod runs;
#[cfg(any(test, feature = "store-conformance"))]
pub mod testing;
#[cfg(test)]
mod tests;
mod waiting;

use super::sqlite::flow_connections::KnownFlowConnections;
use super::{
    Completion, ConnectionHold, DEFAULT_LIST_LIMIT, InboundFilter, InboundMessage, InboundOutcome, Lease,
    MAX_LIST_LIMIT, NewOutboxEvent, NewRun, OutboxEvent, QueueCounts, RunCompletion, RunFilter, RunState, Store,
    StoreError, StoredInbound, StoredRun, WakeFn,
};
use async_trait::async_trait;
use location::PostgresLocation;
use serde_json::Value;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor};
use std::time::Duration;

/// The schema migrations, embedded from `host/migrations/postgres`.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long opening the store waits for the server to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call waits for a connection (a server that went away fails calls after this).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// The advisory lock around migrations (session-level; the two-key space of migration 0001's locks).
const MIGRATION_LOCK: &str = "SELECT pg_advisory_lock(1718382455, 0)";
const MIGRATION_UNLOCK: &str = "SELECT pg_advisory_unlock(1718382455, 0)";
/// The shared lock of decisions that read the held connections, and the exclusive one of holding and releasing.
const HOLDS_SHARED: &str = "SELECT pg_advisory_xact_lock_shared(1718382455, 1)";
const HOLDS_EXCLUSIVE: &str = "SELECT pg_advisory_xact_lock(1718382455, 1)";

/// The [`Store`] on PostgreSQL, shared by any number of processes.
pub struct PostgresStore {
    /// Accepts and operators' actions: synchronous commits.
    durable: PgPool,
    /// Claims, lease holders' calls and reads: commits need not wait for the disk.
    bookkeeping: PgPool,
    location: PostgresLocation,
    flow_connections: KnownFlowConnections,
    wake: notify::Wakers,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("location", &self.location).finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database, refuses a schema newer than this binary's, brings an older one up to date (under
    /// an advisory lock: processes starting together migrate once), and starts listening for wake-ups.
    pub async fn open(location: &PostgresLocation) -> Result<Self, StoreError> {
        let open_error = |message: String| StoreError::Open { path: location.shown().to_string(), message };
        let options = location.connect_options()?.application_name("flowhost");
        let unreachable = |detail: String| {
            open_error(format!("cannot connect to the PostgreSQL server at {}: {detail}", location.address()))
        };
        let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
            Err(_) => return Err(unreachable(format!("no answer in {} s", CONNECT_TIMEOUT.as_secs()))),
            Ok(Err(error)) => return Err(unreachable(error.to_string())),
            Ok(Ok(conn)) => conn,
        };
        let migrated = migrate(&mut conn).await;
        conn.close().await.ok();
        migrated?;
        let durable = PgPoolOptions::new()
            .max_connections(location.pool_size)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone());
        let asynchronous = !location.poll_only;
        let bookkeeping = PgPoolOptions::new()
            .max_connections(location.pool_size)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A connection broken by a restart of the server fails one call, whose caller retries; pinging before
            // every call would double the round trips of the hot path.
            .test_before_acquire(false)
            .after_connect(move |conn, _| Box::pin(asynchronous_commits(conn, asynchronous)))
            .connect_lazy_with(options.clone());
        // Migrated just now, so this finds only what migrating cannot see (a table that does not answer).
        match integrity::check(&bookkeeping).await {
            Ok(found) if found.ok() => {}
            found => {
                bookkeeping.close().await;
                durable.close().await;
                return Err(match found {
                    Ok(found) => open_error(format!("{} found: {}", found.check, found.problems.join("; "))),
                    Err(error) => error,
                });
            }
        }
        let wake = notify::Wakers::default();
        if !location.poll_only {
            notify::listen(options, wake.clone());
        }
        Ok(PostgresStore {
            durable,
            bookkeeping,
            location: location.clone(),
            flow_connections: KnownFlowConnections::default(),
            wake,
        })
    }

    /// Where the store is.
    pub fn location(&self) -> &PostgresLocation {
        &self.location
    }

    /// Closes the pools and stops listening, once the calls in progress are done.
    pub async fn close(&self) {
        self.wake.stop();
        self.bookkeeping.close().await;
        self.durable.close().await;
    }
}

/// Sets a bookkeeping connection's commits not to wait for the disk (see the module documentation).
async fn asynchronous_commits(conn: &mut PgConnection, asynchronous: bool) -> Result<(), sqlx::Error> {
    if asynchronous {
        conn.execute("SET synchronous_commit = off").await?;
    }
    Ok(())
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // The listener task holds no reference to the store: stop it with it.
        self.wake.stop();
    }
}

/// The newest migration this binary knows.
pub fn schema_version() -> i64 {
    MIGRATOR.iter().map(|migration| migration.version).max().unwrap_or(0)
}

/// Runs the migrations on `conn` under the migration lock, after checking that the database's schema is not newer
/// than this binary's.
async fn migrate(conn: &mut PgConnection) -> Result<(), StoreError> {
    let failed = |e: sqlx::Error| StoreError::Migrate(e.to_string());
    sqlx::query(MIGRATION_LOCK).execute(&mut *conn).await.map_err(failed)?;
    let result = async {
        let known = schema_version();
        let has_table: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await
            .map_err(failed)?;
        if has_table {
            let applied: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&mut *conn)
                .await
                .map_err(failed)?;
            if let Some(applied) = applied.filter(|applied| *applied > known) {
                return Err(StoreError::Migrate(format!(
                    "the database's schema is version {applied}, newer than this flowhost's ({known}): a newer \
                     flowhost upgraded it; run that version (or newer) instead"
                )));
            }
        }
        // sqlx takes a lock of its own too, inside ours (which covers the check above as well).
        // (`run_direct`: `run` makes the future of `open` not `Send`.)
        MIGRATOR.run_direct(None, &mut *conn, false).await.map_err(|e| StoreError::Migrate(e.to_string()))
    }
    .await;
    sqlx::query(MIGRATION_UNLOCK).execute(&mut *conn).await.map_err(failed)?;
    result
}

fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { operation, source }
}

fn clamp_limit(limit: usize) -> i64 {
    let limit = if limit == 0 { DEFAULT_LIST_LIMIT } else { limit.min(MAX_LIST_LIMIT) };
    limit as i64
}

fn clamp_claim(limit: usize) -> i32 {
    i32::try_from(limit).unwrap_or(i32::MAX)
}

fn non_empty(field: &str, value: &str) -> Result<(), StoreError> {
    if value.is_empty() { Err(StoreError::invalid(field, "must not be empty")) } else { Ok(()) }
}

fn token(lease: &Lease) -> i32 {
    i32::try_from(lease.token).unwrap_or(i32::MAX)
}

/// Each call is carried out in the file of its concern.
#[async_trait]
impl Store for PostgresStore {
    async fn enqueue_runs(&self, runs: &[NewRun]) -> Result<Vec<crate::store::Enqueued>, StoreError> {
        runs::enqueue(self, runs).await
    }

    async fn claim(
        &self,
        worker: &str,
        limit: usize,
        per_key: usize,
        now_ms: i64,
        lease: Duration,
    ) -> Result<Vec<StoredRun>, StoreError> {
        runs::claim(self, worker, limit, per_key, now_ms, lease).await
    }

    async fn release(&self, leases: &[Lease]) -> Result<(), StoreError> {
        runs::release(self, leases).await
    }

    async fn checkpoint(&self, lease: &Lease, checkpoint: &Value, lease_until_ms: i64) -> Result<(), StoreError> {
        leases::checkpoint(self, lease, checkpoint, lease_until_ms).await
    }

    async fn extend_lease(&self, lease: &Lease, lease_until_ms: i64) -> Result<(), StoreError> {
        leases::extend_lease(self, lease, lease_until_ms).await
    }

    async fn complete(
        &self,
        lease: &Lease,
        completion: &Completion,
        trace: &Value,
        emitted: &[NewOutboxEvent],
    ) -> Result<(), StoreError> {
        leases::complete(self, lease, completion, trace, emitted).await
    }

    async fn complete_many(&self, completions: &[RunCompletion]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        leases::complete_many(self, completions).await
    }

    async fn reschedule(
        &self,
        lease: &Lease,
        at_ms: i64,
        error: &Value,
        checkpoint: Option<&Value>,
    ) -> Result<RunState, StoreError> {
        leases::reschedule(self, lease, at_ms, error, checkpoint).await
    }

    async fn dead_letter(&self, lease: &Lease, error: &Value, trace: &Value) -> Result<(), StoreError> {
        leases::dead_letter(self, lease, error, trace).await
    }

    async fn get(&self, id: &str) -> Result<Option<StoredRun>, StoreError> {
        runs::get(self, id).await
    }

    async fn list(&self, filter: &RunFilter) -> Result<Vec<StoredRun>, StoreError> {
        runs::list(self, filter).await
    }

    async fn list_summaries(&self, filter: &RunFilter) -> Result<Vec<crate::store::RunSummary>, StoreError> {
        runs::list_summaries(self, filter).await
    }

    async fn count_runs(&self, filter: &RunFilter) -> Result<crate::store::RunCounts, StoreError> {
        runs::count_runs(self, filter).await
    }

    async fn dead_runs_by_group(&self, limit: usize) -> Result<crate::store::DeadRunGroups, StoreError> {
        runs::dead_runs_by_group(self, limit).await
    }

    async fn retry_now(&self, id: &str) -> Result<bool, StoreError> {
        runs::retry_now(self, id).await
    }

    async fn drop_run(&self, id: &str) -> Result<bool, StoreError> {
        runs::drop_run(self, id).await
    }

    async fn outbox(&self, after_seq: i64, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        outbox::outbox(self, after_seq, limit).await
    }

    async fn record_inbound(&self, message: &InboundMessage) -> Result<String, StoreError> {
        inbound::record_inbound(self, message).await
    }

    async fn claim_inbound(
        &self,
        worker: &str,
        limit: usize,
        now_ms: i64,
        lease: Duration,
    ) -> Result<Vec<StoredInbound>, StoreError> {
        inbound::claim_inbound(self, worker, limit, now_ms, lease).await
    }

    async fn complete_inbound(
        &self,
        lease: &Lease,
        outcome: &InboundOutcome,
        runs: &[NewRun],
    ) -> Result<Vec<String>, StoreError> {
        inbound::complete_inbound(self, lease, outcome, runs).await
    }

    async fn get_inbound(&self, id: &str) -> Result<Option<StoredInbound>, StoreError> {
        inbound::get_inbound(self, id).await
    }

    async fn list_inbound(&self, filter: &InboundFilter) -> Result<Vec<StoredInbound>, StoreError> {
        inbound::list_inbound(self, filter).await
    }

    async fn retry_inbound(&self, id: &str) -> Result<bool, StoreError> {
        inbound::retry_inbound(self, id).await
    }

    async fn hold_connection(&self, connection: &str) -> Result<ConnectionHold, StoreError> {
        holds::hold_connection(self, connection).await
    }

    async fn release_connection(&self, connection: &str) -> Result<ConnectionHold, StoreError> {
        holds::release_connection(self, connection).await
    }

    async fn held_connections(&self) -> Result<Vec<String>, StoreError> {
        holds::held_connections(self).await
    }

    async fn counts(&self) -> Result<QueueCounts, StoreError> {
        outbox::counts(self).await
    }

    async fn held_by(
        &self,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, crate::store::HeldBy>, StoreError> {
        waiting::held_by(self, ids).await
    }

    async fn held_behind(&self) -> Result<crate::store::HeldBehind, StoreError> {
        waiting::held_behind(self).await
    }

    async fn purge(&self, older_than_ms: i64, batch: usize) -> Result<crate::store::Purged, StoreError> {
        retention::purge(self, older_than_ms, batch).await
    }

    fn on_wake(&self, wake: WakeFn) {
        self.wake.add(wake);
    }

    async fn close(&self) {
        PostgresStore::close(self).await
    }

    async fn check_integrity(&self) -> Result<crate::store::Integrity, StoreError> {
        integrity::check(&self.bookkeeping).await
    }
}
