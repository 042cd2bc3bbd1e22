//! The embedded store: one SQLite file in WAL mode.
//!
//! What was accepted survives a crash or a power loss: an enqueue, a recorded inbound message and an operator's
//! action return only once the WAL is fsynced. Every write commits with `synchronous=NORMAL` (no fsync inside
//! the commit); those that must be durable then sync the WAL after handing the write connection to the next
//! writer ([`WalSync`]), so no writer waits for the disk, and concurrent accepts share one fsync. Lease
//! bookkeeping (claims, checkpoints, lease renewals, completions, resends, dead letters, settling inbound
//! messages) does not sync: it survives the process crashing, and reaches the disk with the next sync or WAL
//! checkpoint. The WAL is one file written in order, so syncing it makes every earlier commit durable too: a
//! power loss can only forget the newest bookkeeping, whole transactions of it, and that only makes runs or
//! messages go again (from an earlier checkpoint, with the same idempotency keys); nothing accepted is lost.
//! In the store benchmark, syncing each of them cost a claim or a completion a quarter of its time (BENCHMARKS.md,
//! "Fourth round").
//!
//! A claim sees accepts whose sync may still be running, so it waits for the ones it can see to be durable
//! before it returns ([`WalSync::last_issued`]): a run is never worked on, nor delivered, before its accept
//! could survive a power loss.
//!
//! SQLite has one writer. All writes take turns on one connection ([`Writer`]), and every multi-statement
//! write runs in `BEGIN IMMEDIATE`, which takes the write lock before reading, so another process opening the
//! same file (e.g. the CLI's `queue retry` while the server runs) waits for the busy timeout instead of failing
//! on a stale snapshot. A write statement on its own takes the write lock before it reads too, and is atomic
//! with the triggers it fires: the hot paths (a claim, a batch of completions without outbox rows) are
//! statements that commit on their own, without `BEGIN` and `COMMIT`, because under load each statement of a
//! transaction is a round trip between the async task and SQLite's thread that costs more than the SQL
//! (BENCHMARKS.md, "Fourth round").
//! Reads use a separate small pool of read-only connections, which WAL lets run alongside the writer.
//! A third connection copies the WAL into the database file in the background ([`checkpoint_loop`]), so that
//! the writer's commits do not stall on checkpoints.
//!
//! The parts, one concern a file: [`runs`] (enqueue, claim, release, reading, operators' retry and drop, and
//! each key's head), [`leases`] (a lease holder's fenced calls: checkpoint, completion, resend, dead letter),
//! [`inbound`] (the inbound message queue), [`outbox`], [`holds`] (disconnected connections),
//! [`flow_connections`] (which flows use a connection), [`traces`] (compressed traces and trace blocks),
//! [`retention`] (purging what is old), [`counts`], [`waiting`] (which runs wait behind which), [`decode`]
//! (stored rows back into values), [`wal_sync`] (durable accepts) and [`allocator`] (SQLite's memory). This file
//! opens the store and owns its connections.

use super::{
    Completion, ConnectionHold, DEFAULT_LIST_LIMIT, HeldBehind, HeldBy, InboundFilter, InboundMessage, InboundOutcome,
    Lease, MAX_LIST_LIMIT, NewOutboxEvent, NewRun, OutboxEvent, Purged, QueueCounts, RunCompletion, RunFilter,
    RunState, Store, StoreError, StoredInbound, StoredRun,
};
use async_trait::async_trait;
use flow_connections::KnownFlowConnections;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Sqlite, SqliteConnection, SqlitePool, Transaction};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;
use wal_sync::WalSync;

/// The schema migrations, embedded from `host/migrations/sqlite`.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a write waits for another process holding the database's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write waits for its turn on the write connection.
const WRITE_WAIT: Duration = Duration::from_secs(60);
/// Read-only connections (WAL readers do not block the writer).
const READERS: u32 = 4;
/// How often the background checkpointer copies the WAL's new pages into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// WAL pages after which the writer checkpoints by itself (SQLite's default is 1,000): only a safety net for a
/// checkpointer that falls behind, since a checkpoint at commit stalls every write behind it.
const WRITER_CHECKPOINT_PAGES: &str = "16384";

// SQL fragments that the statements of several parts share. They are defined before the parts' modules, which see
// a macro only below its definition.

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

/// True when the run (`runs` row in scope) uses a held connection.
macro_rules! uses_held_connection {
    () => {
        "EXISTS (SELECT 1 FROM json_each(runs.connections) c JOIN held_connections h ON h.connection = c.value)"
    };
}

/// True when the run (`runs` row in scope) uses the connection bound at `$n` (e.g. "?1"): it is a run of one of the
/// flows that have used the connection (migration 0006; the index `runs_by_flow` finds those), and its own list
/// has it.
macro_rules! uses_connection {
    ($n:literal) => {
        concat!(
            "runs.flow_id IN (SELECT fc.flow_id FROM flow_connections fc WHERE fc.connection = ",
            $n,
            ") AND EXISTS (SELECT 1 FROM json_each(runs.connections) c WHERE c.value = ",
            $n,
            ")"
        )
    };
}

/// The statuses of an open run (one that holds its key's order), as in the partial index `runs_open_by_key`.
macro_rules! open_statuses {
    () => {
        "('queued', 'leased', 'held', 'dead')"
    };
}

/// The lease check of every lease-holder call: ?1 id, ?2 worker, ?3 token.
macro_rules! fenced {
    () => {
        " WHERE id = ?1 AND status = 'leased' AND lease_owner = ?2 AND leases = ?3"
    };
}

mod allocator;
mod counts;
pub(super) mod decode;
pub(super) mod flow_connections;
mod holds;
mod inbound;
mod integrity;
mod leases;
mod outbox;
mod retention;
mod runs;
#[cfg(any(test, feature = "store-conformance"))]
pub mod testing;
#[cfg(test)]
mod tests;
pub(super) mod traces;
pub(super) mod waiting;
mod wal_sync;

pub use allocator::use_the_global_allocator_for_sqlite;

/// The embedded SQLite [`Store`].
pub struct SqliteStore {
    /// The one write connection; `None` once the store is closed.
    writer: Mutex<Option<Writer>>,
    reader: SqlitePool,
    /// Stops the background checkpointer ([`checkpoint_loop`]), whose task `close` waits for.
    checkpointer: CancellationToken,
    checkpointer_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// How to open the write connection again (see [`Writer::crashed`]).
    writer_options: SqliteConnectOptions,
    /// Makes accepted writes durable once the write connection has moved on.
    wal: WalSync,
    flow_connections: KnownFlowConnections,
    path: PathBuf,
    /// How the integrity check opens its own connection (read-only): a fresh connection reads the file as it is
    /// now, not pages a pooled connection has cached.
    check_options: SqliteConnectOptions,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

/// The write connection. Writes take turns on it behind an async mutex, which hands it straight to the next
/// waiter. (A one-connection sqlx pool did the same with a spawned task that pinged the connection before the
/// next caller got it: three waits for a busy runtime per hand-over, BENCHMARKS.md "Fifth round".)
struct Writer {
    conn: SqliteConnection,
    /// The connection's worker thread has stopped (sqlx stops it when it cannot roll back a cancelled
    /// transaction), so the next write opens a new connection instead of failing forever.
    crashed: bool,
}

impl Writer {
    /// Starts a transaction that takes the database's write lock at once.
    async fn begin(&mut self, operation: &'static str) -> Result<Transaction<'_, Sqlite>, StoreError> {
        match self.conn.begin_with("BEGIN IMMEDIATE").await {
            Ok(tx) => Ok(tx),
            Err(e) => {
                self.crashed = matches!(e, sqlx::Error::WorkerCrashed);
                Err(db(operation)(e))
            }
        }
    }
}

impl SqliteStore {
    /// Opens the database at `path`, creating it (and its parent directories) on first start, and brings its
    /// schema up to date.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let open_error = |message: String| StoreError::Open { path: path.display().to_string(), message };
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| open_error(format!("cannot create the directory {}: {e}", parent.display())))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            // No fsync inside commits: accepted writes sync the WAL themselves, after the commit (`WalSync`).
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            // 8 MiB of page cache per connection (SQLite's default is 2 MiB). Claims read only the keys' heads
            // (migration 0002), so the hot pages are few; 64 MiB made every commit slower (SQLite walks the
            // cache's hash table when a transaction ends): a claim or a completion cost a fifth more
            // (BENCHMARKS.md, "Ninth round").
            .pragma("cache_size", "-8192")
            // Statement journals (SQLite keeps one for a write statement that may fail midway, such as a
            // multi-row update) in memory rather than in a temporary file: with the key-head triggers of
            // migration 0002 a claim cost half as much (BENCHMARKS.md, "What limits delivery").
            .pragma("temp_store", "memory")
            .foreign_keys(true);
        let writer_options =
            options.clone().create_if_missing(true).pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES);
        let mut conn = connect(&writer_options).await.map_err(|e| open_error(e.to_string()))?;
        // Before the migrations, which would write into a damaged file (or fail on it with a vaguer error).
        match integrity::quick_check(&mut conn).await {
            Ok(found) if found.ok() => {}
            found => {
                conn.close().await.ok();
                return Err(open_error(match found {
                    Ok(found) => integrity::refusal(&found),
                    Err(e) => format!("the integrity check (PRAGMA quick_check) could not run: {e}"),
                }));
            }
        }
        if let Err(e) = MIGRATOR.run(&mut conn).await {
            conn.close().await.ok();
            return Err(StoreError::Migrate(e.to_string()));
        }
        let wal = WalSync::new(path);
        if let Err(message) = make_durable_at_open(&wal, path).await {
            conn.close().await.ok();
            return Err(open_error(message));
        }
        let check_options = options.clone().read_only(true);
        let reader = match SqlitePoolOptions::new()
            .max_connections(READERS)
            .after_connect(|conn, _| Box::pin(plan_without_bound_values(conn)))
            .connect_with(options.read_only(true))
            .await
        {
            Ok(reader) => reader,
            Err(e) => {
                conn.close().await.ok();
                return Err(open_error(e.to_string()));
            }
        };
        let checkpoint_conn = match connect(&writer_options).await {
            Ok(checkpoint_conn) => checkpoint_conn,
            Err(e) => {
                reader.close().await;
                conn.close().await.ok();
                return Err(open_error(e.to_string()));
            }
        };
        let checkpointer = CancellationToken::new();
        let checkpointer_task = tokio::spawn(checkpoint_loop(checkpoint_conn, checkpointer.clone()));
        Ok(SqliteStore {
            writer: Mutex::new(Some(Writer { conn, crashed: false })),
            reader,
            checkpointer,
            checkpointer_task: Mutex::new(Some(checkpointer_task)),
            writer_options,
            wal,
            flow_connections: KnownFlowConnections::default(),
            path: path.to_path_buf(),
            check_options,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the connections, waiting for calls in progress. Later calls fail.
    pub async fn close(&self) {
        self.checkpointer.cancel();
        if let Some(task) = self.checkpointer_task.lock().await.take() {
            task.await.ok();
        }
        self.reader.close().await;
        if let Some(writer) = self.writer.lock().await.take()
            && let Err(error) = writer.conn.close().await
        {
            tracing::warn!(%error, "closing the store's write connection");
        }
    }

    /// Waits for the write connection (opening it again if its worker crashed).
    async fn writer(&self, operation: &'static str) -> Result<MappedMutexGuard<'_, Writer>, StoreError> {
        let guard = tokio::time::timeout(WRITE_WAIT, self.writer.lock())
            .await
            .map_err(|_| db(operation)(sqlx::Error::PoolTimedOut))?;
        let mut writer =
            MutexGuard::try_map(guard, Option::as_mut).map_err(|_| db(operation)(sqlx::Error::PoolClosed))?;
        if writer.crashed {
            tracing::warn!(operation, "the store's write connection had stopped; opening it again");
            writer.conn = connect(&self.writer_options).await.map_err(db(operation))?;
            writer.crashed = false;
        }
        Ok(writer)
    }

    /// Makes the write just committed with `writer` (the write connection's guard) durable: the connection goes
    /// to the next writer first, and this call returns once the WAL is synced (see [`WalSync`]).
    async fn sync_after<Guard>(&self, writer: Guard, operation: &'static str) -> Result<(), StoreError> {
        let ticket = self.wal.ticket();
        drop(writer);
        self.wal.sync(ticket, operation).await
    }

    /// Returns once every durable write that `writer` could see is durable (some may still be syncing), after
    /// giving the write connection to the next writer.
    async fn sync_seen<Guard>(&self, writer: Guard, operation: &'static str) -> Result<(), StoreError> {
        let seen = self.wal.last_issued();
        drop(writer);
        self.wal.sync(seen, operation).await
    }

    /// The write connection, for statements that commit on their own.
    async fn write_connection(
        &self,
        operation: &'static str,
    ) -> Result<MappedMutexGuard<'_, SqliteConnection>, StoreError> {
        let writer = self.writer(operation).await?;
        Ok(MappedMutexGuard::map(writer, |writer| &mut writer.conn))
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.checkpointer.cancel();
    }
}

/// Opens a connection of the store (the writer, or the checkpointer's), set up as [`plan_without_bound_values`].
async fn connect(options: &SqliteConnectOptions) -> Result<SqliteConnection, sqlx::Error> {
    let mut conn = options.connect().await?;
    plan_without_bound_values(&mut conn).await?;
    Ok(conn)
}

/// Turns on SQLite's query planner stability guarantee for the connection: a statement's plan never depends on
/// the values bound to it. Without it SQLite reads some bound values while planning (a `LIMIT ?`, a parameter
/// compared with a partial index's condition) and prepares the statement again, inside `step`, whenever a value
/// it read changes: the claim's limit changes with every claim, and re-preparing was 7.7 % of SQLite's threads
/// under load (BENCHMARKS.md, "Twelfth round"). The plans the store relies on are checked by tests, and they are
/// the plans this gives.
async fn plan_without_bound_values(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    match planner_stability(conn, 1).await? {
        true => Ok(()),
        false => Err(sqlx::Error::Configuration("SQLite refused the query planner stability guarantee".into())),
    }
}

/// Sets the query planner stability guarantee (`SQLITE_DBCONFIG_ENABLE_QPSG`: 1 on, 0 off, -1 as it is) and says
/// whether it is on.
async fn planner_stability(conn: &mut SqliteConnection, setting: std::ffi::c_int) -> Result<bool, sqlx::Error> {
    use libsqlite3_sys::{SQLITE_DBCONFIG_ENABLE_QPSG, SQLITE_OK, sqlite3_db_config};
    let mut handle = conn.lock_handle().await?;
    let mut enabled: std::ffi::c_int = 0;
    // SAFETY: the handle is an open connection, locked for this call. The option takes an int and a pointer to an
    // int, where SQLite writes the setting now in force.
    let code = unsafe {
        sqlite3_db_config(handle.as_raw_handle().as_ptr(), SQLITE_DBCONFIG_ENABLE_QPSG, setting, &mut enabled)
    };
    Ok(code == SQLITE_OK && enabled == 1)
}

/// Copies the WAL's new pages into the database file every [`CHECKPOINT_EVERY`], on a connection of its own,
/// so that the writer does not: a checkpoint at commit (SQLite's default, every 1,000 pages) stalled every
/// write behind it, about 10 % of the delivered rate (BENCHMARKS.md, "Fifth round"). `PASSIVE` never waits
/// for the writer or for readers; the next write starts the WAL over once everything in it is copied.
async fn checkpoint_loop(mut conn: SqliteConnection, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECKPOINT_EVERY) => {}
            _ = stop.cancelled() => break,
        }
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut conn).await {
            // The writer's own checkpoints still bound the WAL.
            tracing::warn!(%error, "background WAL checkpoint failed");
        }
    }
    conn.close().await.ok();
}

/// Syncs what is in the WAL when the store opens (an earlier process may have committed without syncing, then
/// stopped), and the directory, so that the database and WAL files' own entries survive a power loss: SQLite
/// syncs the directory of a new WAL only at its first sync, which `synchronous=NORMAL` leaves to a checkpoint.
async fn make_durable_at_open(wal: &WalSync, database: &Path) -> Result<(), String> {
    wal.sync(wal.ticket(), "opening the store").await.map_err(|e| e.to_string())?;
    #[cfg(unix)]
    {
        let dir = match database.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            Some(parent) => parent.to_path_buf(),
            None => PathBuf::from("."),
        };
        let shown = dir.display().to_string();
        let synced = tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all());
        synced.await.map_err(|e| e.to_string())?.map_err(|e| format!("cannot sync the directory {shown}: {e}"))?;
    }
    #[cfg(not(unix))]
    let _ = database;
    Ok(())
}

fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { operation, source }
}

fn clamp_limit(limit: usize) -> i64 {
    let limit = if limit == 0 { DEFAULT_LIST_LIMIT } else { limit.min(MAX_LIST_LIMIT) };
    limit as i64
}

fn clamp_claim(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn non_empty(field: &str, value: &str) -> Result<(), StoreError> {
    if value.is_empty() { Err(StoreError::invalid(field, "must not be empty")) } else { Ok(()) }
}

/// Each call is carried out in the file of its concern.
#[async_trait]
impl Store for SqliteStore {
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
        counts::count_runs(self, filter).await
    }

    async fn dead_runs_by_group(&self, limit: usize) -> Result<crate::store::DeadRunGroups, StoreError> {
        counts::dead_runs_by_group(self, limit).await
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

    async fn purge(&self, older_than_ms: i64, batch: usize) -> Result<Purged, StoreError> {
        retention::purge(self, older_than_ms, batch).await
    }

    async fn counts(&self) -> Result<QueueCounts, StoreError> {
        counts::counts(self).await
    }

    async fn held_by(&self, ids: &[String]) -> Result<std::collections::HashMap<String, HeldBy>, StoreError> {
        waiting::held_by(self, ids).await
    }

    async fn held_behind(&self) -> Result<HeldBehind, StoreError> {
        waiting::held_behind(self).await
    }

    async fn close(&self) {
        SqliteStore::close(self).await
    }

    async fn check_integrity(&self) -> Result<crate::store::Integrity, StoreError> {
        let operation = "checking the store's integrity";
        let mut conn = self.check_options.connect().await.map_err(db(operation))?;
        let found = integrity::quick_check(&mut conn).await;
        conn.close().await.ok();
        found.map_err(db(operation))
    }
}
