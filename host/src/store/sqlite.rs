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

use super::wal_sync::WalSync;
use super::{
    Completion, ConnectionHold, DEFAULT_LIST_LIMIT, InboundFilter, InboundMessage, InboundOutcome, InboundState, Lease,
    MAX_LIST_LIMIT, NewOutboxEvent, NewRun, OutboxEvent, QueueCounts, RunCompletion, RunFilter, RunState, Store,
    StoreError, StoredInbound, StoredRun, add_ms, now_ms, validate_runs,
};
use async_trait::async_trait;
use serde_json::value::{RawValue, to_raw_value};
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, FromRow, QueryBuilder, Sqlite, SqliteConnection, SqlitePool, Transaction};
use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;

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

/// Claim: due runs with no earlier open run of their key, oldest first, each with up to `per_key - 1` of its
/// key's runs right behind it. ?1 worker, ?2 lease until, ?3 now, ?4 limit, ?5 runs per key.
///
/// A run with no earlier open run of its key is the key's *head* (the smallest open `seq`), which the
/// statements that open and close runs keep marked (migrations 0002 to 0004, [`rehead`]). Heads are read in
/// `seq` order from the partial index `runs_claimable`, which holds only heads, so a claim costs O(keys with
/// open runs) at most, and stops after `limit`, however long each key's backlog is. Behind each head, the next
/// open runs of its key are read from `runs_open_by_key` (at most `per_key - 1`), and taken while each is due
/// (an earlier run that is not, e.g. held or waiting for a resend, stops its key there). The limit takes every
/// head before any key's second run, every second run before any third, and so on.
const CLAIM_RUNS: &str = concat!(
    "WITH heads AS (SELECT r.seq, r.ordering_key FROM runs r INDEXED BY runs_claimable \
        WHERE r.head = 1 AND r.status IN ('queued', 'leased') AND r.next_attempt_at <= ?3 \
        ORDER BY r.seq LIMIT ?4), \
     behind AS (SELECT h.seq AS head, o.seq, (o.status IN ('queued', 'leased') AND o.next_attempt_at <= ?3) AS due \
        FROM heads h JOIN runs o ON o.seq IN (SELECT x.seq FROM runs x INDEXED BY runs_open_by_key \
            WHERE x.ordering_key = h.ordering_key AND x.status IN ",
    open_statuses!(),
    " AND x.seq > h.seq ORDER BY x.seq LIMIT ?5 - 1)), \
     chosen AS (SELECT seq, 0 AS depth, seq AS head FROM heads \
        UNION ALL SELECT seq, depth, head FROM (SELECT seq, head, MIN(due) OVER key_order AS unbroken, \
                                                       row_number() OVER key_order AS depth \
                                                FROM behind WINDOW key_order AS (PARTITION BY head ORDER BY seq)) \
                  WHERE unbroken) \
     UPDATE runs SET status = 'leased', lease_owner = ?1, lease_until = ?2, next_attempt_at = ?2, \
     leases = leases + 1, updated_at = ?3 \
     WHERE seq IN (SELECT seq FROM chosen ORDER BY depth, head LIMIT ?4) \
     RETURNING ",
    run_columns!()
);

/// Gives back leased runs that were not started: ?1 is a JSON array of `[id, worker, token]`, ?2 now. They are
/// due at once (behind the open run that stopped their holder, so never a key's head), or held if one of their
/// connections is.
const RELEASE_RUNS: &str = concat!(
    "UPDATE runs SET status = CASE WHEN ",
    uses_held_connection!(),
    " THEN 'held' ELSE 'queued' END, next_attempt_at = ?2, lease_until = NULL, updated_at = ?2 \
     FROM json_each(?1) c \
     WHERE runs.id = c.value ->> 0 AND +runs.status = 'leased' AND runs.lease_owner = c.value ->> 1 \
       AND runs.leases = c.value ->> 2"
);

/// A run whose worker died while its connection is held becomes held rather than claimable. ?1 now.
const SWEEP_HELD_RUNS: &str = concat!(
    "UPDATE runs SET status = 'held', lease_until = NULL, updated_at = ?1 \
     WHERE status = 'leased' AND next_attempt_at <= ?1 AND ",
    uses_held_connection!()
);

/// Claim inbound messages: due, and no earlier message of the connection leased, held or waiting. ?1 worker,
/// ?2 lease until, ?3 now, ?4 limit.
const CLAIM_INBOUND: &str = concat!(
    "UPDATE inbound SET status = 'leased', lease_owner = ?1, lease_until = ?2, next_attempt_at = ?2, \
     leases = leases + 1, updated_at = ?3 \
     WHERE seq IN (SELECT m.seq FROM inbound m INDEXED BY inbound_active \
        WHERE m.status IN ('received', 'leased') AND m.next_attempt_at <= ?3 \
          AND NOT EXISTS (SELECT 1 FROM inbound e WHERE e.connection = m.connection AND e.seq < m.seq \
                          AND e.status IN ('received', 'leased', 'held') \
                          AND (e.status <> 'received' OR e.next_attempt_at > ?3)) \
        ORDER BY m.seq LIMIT ?4) \
     RETURNING ",
    inbound_columns!()
);

const SWEEP_HELD_INBOUND: &str = "UPDATE inbound SET status = 'held', lease_until = NULL, updated_at = ?1 \
     WHERE status = 'leased' AND next_attempt_at <= ?1 \
       AND connection IN (SELECT connection FROM held_connections)";

/// Clears the head mark of each key in ?1 (a JSON array) that is no longer on the key's smallest open run: the
/// run closed, or an older run of the key reopened.
const DEMOTE_STALE_HEADS: &str = concat!(
    "UPDATE runs SET head = 0 \
     WHERE head = 1 AND ordering_key IN (SELECT value FROM json_each(?1)) \
       AND seq IS NOT (SELECT MIN(o.seq) FROM runs o WHERE o.ordering_key = runs.ordering_key \
                                                  AND o.status IN ",
    open_statuses!(),
    ")"
);

/// Marks the smallest open run of each key in ?1 (a JSON array) as the key's head, where it is not yet.
const PROMOTE_HEADS: &str = concat!(
    "UPDATE runs SET head = 1 \
     WHERE head = 0 AND seq IN (SELECT (SELECT MIN(o.seq) FROM runs o WHERE o.ordering_key = k.value \
                                                                 AND o.status IN ",
    open_statuses!(),
    ") FROM json_each(?1) k)"
);

/// The runs among ?1 (a JSON array of `[flow id, dedup key]`) that are already stored: flow id, dedup key, run id.
/// An enqueue reads them before it inserts: a run's id never changes, and a dedup key stored meanwhile by another
/// process fails the insert on the `UNIQUE (flow_id, dedup_key)` constraint rather than storing the run twice.
const KNOWN_DEDUP_KEYS: &str = "SELECT j.value ->> 0, j.value ->> 1, r.id FROM json_each(?1) j \
     JOIN runs r ON r.flow_id = j.value ->> 0 AND r.dedup_key = j.value ->> 1";

/// Inserts runs, in order, from ?1, a JSON array of `[id, flow id, flow version, connections (JSON text), ordering
/// key, customer, dedup key, event (JSON text), first of its key in the batch]`; ?2 is now.
///
/// The statement itself reads what another process (`flowhost queue retry` or `drop`) may change: whether the
/// run's key already has a head (an open run), and whether one of its connections is held. A write statement
/// holds the write lock before it reads, and SQLite reads every row of an `INSERT ... SELECT` that reads its own
/// table before inserting any, so it needs no transaction around it: no `BEGIN` and `COMMIT` round trips, and no
/// statement journal, which SQLite keeps for a multi-row write inside a transaction. Its text is the same for any
/// number of runs, so it is prepared once: a `VALUES` list made one statement per batch size, each prepared
/// again once more sizes had pushed it out of sqlx's statement cache.
const INSERT_RUNS: &str = "INSERT INTO runs (id, flow_id, flow_version, connections, ordering_key, customer, \
     dedup_key, event, status, next_attempt_at, created_at, updated_at, head) \
     SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3, j.value ->> 4, j.value ->> 5, j.value ->> 6, \
        j.value ->> 7, \
        CASE WHEN EXISTS (SELECT 1 FROM json_each(j.value ->> 3) c \
                          JOIN held_connections h ON h.connection = c.value) \
             THEN 'held' ELSE 'queued' END, \
        ?2, ?2, ?2, \
        (j.value ->> 8) AND NOT EXISTS (SELECT 1 FROM runs r INDEXED BY runs_head_by_key \
                                        WHERE r.ordering_key = j.value ->> 4 AND r.head = 1) \
     FROM json_each(?1) j ORDER BY j.key";

/// Re-marks the heads of `keys`: each key's head is its smallest open `seq`, or none (migration 0003). A
/// statement that reopens runs is followed by this, for the runs' keys. A statement that closes runs clears
/// their own marks instead, and the trigger of migration 0004 marks each key's next run. Each statement costs an
/// index probe per key and writes only rows that change.
async fn rehead(conn: &mut SqliteConnection, keys: &[&str], operation: &'static str) -> Result<(), StoreError> {
    let keys = Value::from(keys).to_string();
    for sql in [DEMOTE_STALE_HEADS, PROMOTE_HEADS] {
        sqlx::query(sql).bind(keys.as_str()).execute(&mut *conn).await.map_err(db(operation))?;
    }
    Ok(())
}

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
}

/// The (flow, connection) pairs this process knows are in `flow_connections` (migration 0006). Pairs are never
/// deleted, so an insert of runs writes only the pairs it brings that are not known yet: after the first runs of
/// each flow, none.
#[derive(Default)]
struct KnownFlowConnections(std::sync::Mutex<HashMap<String, HashSet<String>>>);

/// Pairs of (connection, flow id) to store.
type FlowConnectionPairs = Vec<(String, String)>;

impl KnownFlowConnections {
    /// The pairs of `runs` not known to be stored, each once.
    fn unknown(&self, runs: &[NewRun]) -> FlowConnectionPairs {
        let known = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut pairs = FlowConnectionPairs::new();
        for run in runs {
            let flow_known = known.get(&run.flow_id);
            for connection in &run.connections {
                if !flow_known.is_some_and(|names| names.contains(connection))
                    && !pairs.iter().any(|(c, f)| c == connection && f == &run.flow_id)
                {
                    pairs.push((connection.clone(), run.flow_id.clone()));
                }
            }
        }
        pairs
    }

    /// Records pairs as stored, once what wrote them has committed.
    fn learn(&self, pairs: FlowConnectionPairs) {
        let mut known = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (connection, flow_id) in pairs {
            known.entry(flow_id).or_default().insert(connection);
        }
    }
}

/// Stores (connection, flow id) pairs in `flow_connections`, if not there yet: before the runs that have them.
async fn store_flow_connections(conn: &mut SqliteConnection, pairs: &FlowConnectionPairs) -> Result<(), StoreError> {
    if pairs.is_empty() {
        return Ok(());
    }
    let rows: Vec<Value> = pairs.iter().map(|(connection, flow_id)| json!([connection, flow_id])).collect();
    sqlx::query(
        "INSERT OR IGNORE INTO flow_connections (connection, flow_id) \
         SELECT j.value ->> 0, j.value ->> 1 FROM json_each(?1) j",
    )
    .bind(Value::from(rows).to_string())
    .execute(&mut *conn)
    .await
    .map_err(db("storing the connections of flows"))?;
    Ok(())
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
        if let Err(e) = MIGRATOR.run(&mut conn).await {
            conn.close().await.ok();
            return Err(StoreError::Migrate(e.to_string()));
        }
        let wal = WalSync::new(path);
        if let Err(message) = make_durable_at_open(&wal, path).await {
            conn.close().await.ok();
            return Err(open_error(message));
        }
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

    /// Runs as read, with the traces they point into from the trace blocks.
    async fn stored_runs(&self, rows: Vec<RunRow>) -> Result<Vec<StoredRun>, StoreError> {
        let blocks = read_trace_blocks(&self.reader, &rows).await?;
        rows.into_iter().map(|row| row.into_run(&blocks)).collect()
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

fn corrupt(what: &str, id: &str, field: &str, message: impl Display) -> StoreError {
    StoreError::Corrupt { what: format!("{what} {id}, column {field}"), message: message.to_string() }
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

/// Decodes one stored row's JSON and numbers, naming the row and column when the data is bad.
struct Decoder<'a> {
    what: &'static str,
    id: &'a str,
}

impl Decoder<'_> {
    fn json(&self, field: &str, text: &str) -> Result<Value, StoreError> {
        serde_json::from_str(text).map_err(|e| corrupt(self.what, self.id, field, format!("not valid JSON: {e}")))
    }

    fn opt_json(&self, field: &str, text: Option<&str>) -> Result<Option<Value>, StoreError> {
        text.map(|text| self.json(field, text)).transpose()
    }

    /// A run's trace: zstd-compressed JSON ([`pack_trace`]), or JSON text as written before compression.
    fn trace(&self, stored: &[u8]) -> Result<Value, StoreError> {
        let bad = |message: String| corrupt(self.what, self.id, "trace", message);
        let json = decompress(stored).map_err(bad)?;
        serde_json::from_slice(&json).map_err(|e| bad(format!("not JSON: {e}")))
    }

    /// Trace `slot` of trace block `block` (migration 0005).
    fn trace_in_block(&self, blocks: &TraceBlocks, block: i64, slot: i64) -> Result<Value, StoreError> {
        let bad = |message: String| corrupt(self.what, self.id, "trace", message);
        let traces = match blocks.get(&block) {
            None => return Err(bad(format!("trace block {block} does not exist"))),
            Some(Err(message)) => return Err(bad(format!("trace block {block} {message}"))),
            Some(Ok(traces)) => traces,
        };
        let trace = usize::try_from(slot)
            .ok()
            .and_then(|slot| traces.get(slot))
            .ok_or_else(|| bad(format!("trace block {block} has no trace {slot}")))?;
        serde_json::from_str(trace.get()).map_err(|e| bad(format!("not JSON: {e}")))
    }

    fn strings(&self, field: &str, text: &str) -> Result<Vec<String>, StoreError> {
        serde_json::from_str(text)
            .map_err(|e| corrupt(self.what, self.id, field, format!("not a JSON array of strings: {e}")))
    }

    fn count(&self, field: &str, value: i64) -> Result<u32, StoreError> {
        u32::try_from(value).map_err(|_| corrupt(self.what, self.id, field, format!("{value} is out of range")))
    }

    fn state<T: FromStr>(&self, text: &str) -> Result<T, StoreError> {
        text.parse().map_err(|_| corrupt(self.what, self.id, "status", format!("unknown status `{text}`")))
    }
}

#[derive(FromRow)]
struct RunRow {
    id: String,
    seq: i64,
    flow_id: String,
    flow_version: String,
    connections: String,
    ordering_key: String,
    customer: Option<String>,
    dedup_key: Option<String>,
    event: String,
    status: String,
    attempts: i64,
    leases: i64,
    next_attempt_at: i64,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    checkpoint: Option<String>,
    last_error: Option<String>,
    trace: Option<Vec<u8>>,
    trace_block: Option<i64>,
    trace_slot: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl RunRow {
    /// The run as stored, its trace taken from its row or from `blocks` (which [`read_trace_blocks`] loaded).
    fn into_run(self, blocks: &TraceBlocks) -> Result<StoredRun, StoreError> {
        let row = self; // the fields move out one by one below
        let d = Decoder { what: "run", id: &row.id };
        let trace = match (row.trace_block, row.trace_slot) {
            (Some(block), Some(slot)) => Some(d.trace_in_block(blocks, block, slot)?),
            _ => row.trace.as_deref().map(|stored| d.trace(stored)).transpose()?,
        };
        Ok(StoredRun {
            connections: d.strings("connections", &row.connections)?,
            event: d.json("event", &row.event)?,
            status: d.state(&row.status)?,
            attempts: d.count("attempts", row.attempts)?,
            leases: d.count("leases", row.leases)?,
            checkpoint: d.opt_json("checkpoint", row.checkpoint.as_deref())?,
            last_error: d.opt_json("last_error", row.last_error.as_deref())?,
            trace,
            seq: row.seq,
            flow_id: row.flow_id,
            flow_version: row.flow_version,
            ordering_key: row.ordering_key,
            customer: row.customer,
            dedup_key: row.dedup_key,
            next_attempt_at: row.next_attempt_at,
            lease_owner: row.lease_owner,
            lease_until: row.lease_until,
            created_at: row.created_at,
            updated_at: row.updated_at,
            id: row.id,
        })
    }
}

#[derive(FromRow)]
struct InboundRow {
    id: String,
    seq: i64,
    connection: String,
    source: String,
    external_id: Option<String>,
    body: String,
    status: String,
    leases: i64,
    next_attempt_at: i64,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    detail: Option<String>,
    run_ids: String,
    received_at: i64,
    updated_at: i64,
}

impl TryFrom<InboundRow> for StoredInbound {
    type Error = StoreError;

    fn try_from(row: InboundRow) -> Result<Self, StoreError> {
        let d = Decoder { what: "inbound message", id: &row.id };
        Ok(StoredInbound {
            body: d.json("body", &row.body)?,
            status: d.state(&row.status)?,
            leases: d.count("leases", row.leases)?,
            detail: d.opt_json("detail", row.detail.as_deref())?,
            run_ids: d.strings("run_ids", &row.run_ids)?,
            seq: row.seq,
            connection: row.connection,
            source: row.source,
            external_id: row.external_id,
            next_attempt_at: row.next_attempt_at,
            lease_owner: row.lease_owner,
            lease_until: row.lease_until,
            received_at: row.received_at,
            updated_at: row.updated_at,
            id: row.id,
        })
    }
}

#[derive(FromRow)]
struct OutboxRow {
    seq: i64,
    run_id: String,
    flow_id: String,
    node_id: String,
    event: String,
    payload: String,
    created_at: i64,
}

impl TryFrom<OutboxRow> for OutboxEvent {
    type Error = StoreError;

    fn try_from(row: OutboxRow) -> Result<Self, StoreError> {
        let payload = serde_json::from_str(&row.payload)
            .map_err(|e| corrupt("outbox event", &row.seq.to_string(), "payload", format!("not valid JSON: {e}")))?;
        Ok(OutboxEvent {
            seq: row.seq,
            run_id: row.run_id,
            flow_id: row.flow_id,
            node_id: row.node_id,
            event: row.event,
            payload,
            created_at: row.created_at,
        })
    }
}

fn convert<R, T: TryFrom<R, Error = StoreError>>(rows: Vec<R>) -> Result<Vec<T>, StoreError> {
    rows.into_iter().map(T::try_from).collect()
}

/// A run about to be inserted, as a row of [`INSERT_RUNS`]: id, flow id, flow version, connections (each once, as
/// JSON text), ordering key, customer, dedup key, event (JSON text), and whether no earlier run of the batch has its
/// key (it is then the key's head if the key has no open run).
type FreshRow<'a> = (String, &'a str, &'a str, String, &'a str, Option<&'a str>, Option<&'a str>, String, bool);

/// Inserts runs and returns their ids, in order (the existing id for a run whose dedup key its flow already has, in
/// the store or earlier in `runs`). Runs go in with one `INSERT` ([`INSERT_RUNS`]), atomic by itself, in order, so
/// their `seq` follows their order in `runs`, after one lookup of the batch's dedup keys ([`KNOWN_DEDUP_KEYS`]).
async fn insert_runs(conn: &mut SqliteConnection, runs: &[NewRun], now: i64) -> Result<Vec<String>, StoreError> {
    const OP: &str = "enqueuing runs";
    let dedup_keys: Vec<Value> = runs
        .iter()
        .filter_map(|run| Some(Value::from(vec![run.flow_id.as_str(), run.dedup_key.as_deref()?])))
        .collect();
    let mut keyed: HashMap<(String, String), String> = HashMap::new();
    if !dedup_keys.is_empty() {
        let found: Vec<(String, String, String)> = sqlx::query_as(KNOWN_DEDUP_KEYS)
            .bind(Value::from(dedup_keys).to_string())
            .fetch_all(&mut *conn)
            .await
            .map_err(db(OP))?;
        keyed.extend(found.into_iter().map(|(flow_id, dedup_key, id)| ((flow_id, dedup_key), id)));
    }
    let mut ids = Vec::with_capacity(runs.len());
    let mut fresh: Vec<FreshRow> = Vec::with_capacity(runs.len());
    let mut keys_seen = HashSet::new();
    for run in runs {
        let dedup = run.dedup_key.as_ref().map(|key| (run.flow_id.clone(), key.clone()));
        if let Some(id) = dedup.as_ref().and_then(|dedup| keyed.get(dedup)) {
            ids.push(id.clone());
            continue;
        }
        let mut seen = HashSet::new();
        let connections: Vec<&str> =
            run.connections.iter().map(String::as_str).filter(|name| seen.insert(*name)).collect();
        let first_of_key = keys_seen.insert(run.ordering_key.as_str());
        // Time-ordered (v7), so new ids land at the end of the id index instead of on a random page.
        let id = uuid::Uuid::now_v7().to_string();
        if let Some(dedup) = dedup {
            keyed.insert(dedup, id.clone());
        }
        ids.push(id.clone());
        fresh.push((
            id,
            run.flow_id.as_str(),
            run.flow_version.as_str(),
            Value::from(connections).to_string(),
            run.ordering_key.as_str(),
            run.customer.as_deref(),
            run.dedup_key.as_deref(),
            run.event.to_string(),
            first_of_key,
        ));
    }
    if !fresh.is_empty() {
        let rows = serde_json::to_string(&fresh).map_err(|e| StoreError::invalid("runs", e.to_string()))?;
        sqlx::query(INSERT_RUNS).bind(rows).bind(now).execute(&mut *conn).await.map_err(db(OP))?;
    }
    Ok(ids)
}

/// Which table a lease belongs to.
#[derive(Clone, Copy)]
enum Leased {
    Run,
    Inbound,
}

impl Leased {
    fn what(self) -> &'static str {
        match self {
            Leased::Run => "run",
            Leased::Inbound => "inbound message",
        }
    }
}

/// The error for a fenced update that matched nothing: the lease is lost, or the id never existed.
async fn lease_lost(conn: &mut SqliteConnection, table: Leased, lease: &Lease) -> StoreError {
    let sql = match table {
        Leased::Run => "SELECT status, lease_owner, leases FROM runs WHERE id = ?1",
        Leased::Inbound => "SELECT status, lease_owner, leases FROM inbound WHERE id = ?1",
    };
    let found: Result<Option<(String, Option<String>, i64)>, _> =
        sqlx::query_as(sql).bind(lease.id.as_str()).fetch_optional(&mut *conn).await;
    let what = table.what();
    match found {
        Err(source) => StoreError::Database { operation: "checking a lease", source },
        Ok(None) => StoreError::NotFound { what, id: lease.id.clone() },
        Ok(Some((status, owner, leases))) => {
            let now = match (status.as_str(), owner) {
                ("leased", Some(owner)) => format!("leased again, by `{owner}` (claim {leases})"),
                (status, _) => status.to_string(),
            };
            StoreError::LeaseLost { what, id: lease.id.clone(), worker: lease.worker.clone(), now }
        }
    }
}

/// The fenced updates of a batch of completions, in one statement. ?1 is a JSON array of `[id, worker, token,
/// status, trace slot or null, error or null]`, ?2 now, ?3 the batch's trace block or null (a run's trace is
/// its slot of the block). Completing closes a run, so its head mark is cleared here, and the trigger of
/// migration 0004 marks its key's next run. The unary `+` keeps the planner from reading every leased run
/// through `runs_due` and scanning the batch for each: the batch is walked and each run found by id.
const COMPLETE_RUNS: &str = "UPDATE runs SET status = c.value ->> 3, head = 0, trace = NULL, \
     trace_block = iif(c.value ->> 4 IS NULL, NULL, ?3), trace_slot = c.value ->> 4, \
     last_error = COALESCE(c.value ->> 5, last_error), lease_until = NULL, updated_at = ?2 \
     FROM json_each(?1) c \
     WHERE runs.id = c.value ->> 0 AND +runs.status = 'leased' AND runs.lease_owner = c.value ->> 1 \
       AND runs.leases = c.value ->> 2 \
     RETURNING runs.id, runs.lease_owner, runs.leases";

/// The first bytes of a zstd frame; JSON text never starts with them.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A trace stored in its run's row (a dead letter's): zstd-compressed JSON. A `null` trace (not kept) is stored
/// as `NULL`. Completions store their traces together instead ([`closing_batch`]).
fn pack_trace(trace: &Value) -> Option<Vec<u8>> {
    if trace.is_null() {
        return None;
    }
    Some(compress(trace.to_string().into_bytes()))
}

/// JSON compressed with zstd. Compressing a slice into a buffer sized by zstd's bound cannot fail; the JSON is
/// kept as it is if it ever does ([`decompress`] reads both).
fn compress(json: Vec<u8>) -> Vec<u8> {
    let packed = TRACE_COMPRESSOR.with_borrow_mut(|compressor| match compressor {
        Ok(compressor) => compressor.compress(&json).ok(),
        Err(_) => None,
    });
    packed.unwrap_or(json)
}

/// The JSON of a stored trace or trace block: zstd-compressed, or JSON text (JSON never starts with zstd's magic
/// number).
fn decompress(stored: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    if stored.starts_with(&ZSTD_MAGIC) {
        zstd::decode_all(stored).map(Into::into).map_err(|e| format!("cannot decompress: {e}"))
    } else {
        Ok(stored.into())
    }
}

/// Trace blocks by id (migration 0005), each decompressed and split into its traces, or why it could not be.
type TraceBlocks = HashMap<i64, Result<Vec<Box<RawValue>>, String>>;

/// Loads the trace blocks that `rows` point into, each once.
async fn read_trace_blocks(reader: &SqlitePool, rows: &[RunRow]) -> Result<TraceBlocks, StoreError> {
    let ids: HashSet<i64> = rows.iter().filter_map(|row| row.trace_block).collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let stored: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT id, traces FROM trace_blocks WHERE id IN (SELECT value FROM json_each(?1))")
            .bind(Value::from(ids.into_iter().collect::<Vec<_>>()).to_string())
            .fetch_all(reader)
            .await
            .map_err(db("reading traces"))?;
    let unpack = |stored: &[u8]| {
        let json = decompress(stored)?;
        serde_json::from_slice(&json).map_err(|e| format!("is not a JSON array of traces: {e}"))
    };
    Ok(stored.into_iter().map(|(id, stored)| (id, unpack(&stored))).collect())
}

thread_local! {
    /// One zstd context per thread, reused: `zstd::bulk::compress` created one, with its tables, for every
    /// trace (`ZSTD_createCCtx` and zeroed allocations in the service's profile). A batch of 50 completions
    /// in the store benchmark went from 4.5–5.3 to 3.9–4.0 ms (BENCHMARKS.md, "Ninth round").
    static TRACE_COMPRESSOR: std::cell::RefCell<std::io::Result<zstd::bulk::Compressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Compressor::new(TRACE_ZSTD_LEVEL));
}

/// zstd's default level: on a trace, as fast as level 1 and a little smaller.
const TRACE_ZSTD_LEVEL: i32 = 3;

/// A run to complete: its lease, how it ended, and its trace (JSON text), if kept.
type Closing<'a> = (&'a Lease, &'a Completion, Option<&'a RawValue>);

/// A lease as [`COMPLETE_RUNS`] returns it: id, worker, token.
type Fence = (String, String, i64);

fn fence(lease: &Lease) -> Fence {
    (lease.id.clone(), lease.worker.clone(), i64::from(lease.token))
}

/// A batch of completions as [`COMPLETE_RUNS`] takes it: ?1, and the batch's trace block, if any trace is kept.
/// Built (the traces compressed) before the write connection is taken.
struct ClosingBatch {
    rows: String,
    traces: Option<Vec<u8>>,
}

/// The traces of a batch go into one trace block: one zstd frame of a JSON array, each run pointing at its slot.
/// Traces of a flow's runs are alike (the same nodes, keys, connector logs), so together they compress far
/// better than one by one, and the writer appends one row instead of rewriting each run's row with its trace
/// (BENCHMARKS.md, "Tenth round"). A `null` trace (not kept) gets no slot.
fn closing_batch(runs: &[Closing<'_>]) -> ClosingBatch {
    // A join that matches a row twice updates it with either match, so a repeated lease goes in once; the
    // repeat then finds its lease gone, as it would one statement later.
    let mut seen = HashSet::new();
    let mut traces = String::from("[");
    let mut slots = 0;
    let rows: Vec<Value> = runs
        .iter()
        .filter(|(lease, ..)| seen.insert(fence(lease)))
        .map(|(lease, completion, trace)| {
            let (status, error) = match completion {
                Completion::Succeeded => (RunState::Succeeded, None),
                Completion::Failed { error } => (RunState::Failed, Some(error.to_string())),
            };
            let slot = trace.map(|trace| {
                if slots > 0 {
                    traces.push(',');
                }
                traces.push_str(trace.get());
                slots += 1;
                slots - 1
            });
            json!([lease.id.as_str(), lease.worker.as_str(), lease.token, status.as_str(), slot, error])
        })
        .collect();
    traces.push(']');
    ClosingBatch { rows: Value::from(rows).to_string(), traces: (slots > 0).then(|| compress(traces.into_bytes())) }
}

/// Appends a batch's trace block, returning its id.
async fn insert_trace_block(conn: &mut SqliteConnection, traces: &[u8]) -> Result<i64, StoreError> {
    sqlx::query_scalar("INSERT INTO trace_blocks (traces) VALUES (?1) RETURNING id")
        .bind(traces)
        .fetch_one(&mut *conn)
        .await
        .map_err(db("storing traces"))
}

/// Stores the batch's trace block, if it has one, and completes its runs with one fenced update
/// ([`COMPLETE_RUNS`], `batch` from [`closing_batch`]): for each, whether it was still held (false when its lease
/// is lost, including the second of two completions of the same lease). Each is a statement of its own: outside
/// a transaction, a crash between the two leaves a block nothing points to, which costs only its bytes.
async fn complete_runs(
    conn: &mut SqliteConnection,
    runs: &[Closing<'_>],
    batch: &ClosingBatch,
    now: i64,
) -> Result<Vec<bool>, StoreError> {
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let trace_block = match &batch.traces {
        Some(traces) => Some(insert_trace_block(conn, traces).await?),
        None => None,
    };
    let mut closed: HashSet<Fence> = sqlx::query_as(COMPLETE_RUNS)
        .bind(batch.rows.as_str())
        .bind(now)
        .bind(trace_block)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("completing runs"))?
        .into_iter()
        .collect();
    Ok(runs.iter().map(|(lease, ..)| closed.remove(&fence(lease))).collect())
}

async fn insert_outbox(
    conn: &mut SqliteConnection,
    lease: &Lease,
    emitted: &[NewOutboxEvent],
    now: i64,
) -> Result<(), StoreError> {
    for event in emitted {
        sqlx::query(
            "INSERT INTO outbox (run_id, flow_id, node_id, event, payload, created_at) \
             SELECT id, flow_id, ?2, ?3, ?4, ?5 FROM runs WHERE id = ?1",
        )
        .bind(lease.id.as_str())
        .bind(event.node_id.as_str())
        .bind(event.event.as_str())
        .bind(event.payload.to_string())
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db("writing the outbox"))?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn enqueue(&self, runs: &[NewRun]) -> Result<Vec<String>, StoreError> {
        validate_runs(runs)?;
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        const OP: &str = "enqueuing runs";
        // The flows' new connections, if any, commit first (a pair without its runs is harmless); then one `INSERT`,
        // atomic by itself and reading what it depends on ([`INSERT_RUNS`]): no transaction.
        let pairs = self.flow_connections.unknown(runs);
        let mut conn = self.write_connection(OP).await?;
        store_flow_connections(&mut conn, &pairs).await?;
        let ids = insert_runs(&mut conn, runs, now_ms()).await?;
        self.flow_connections.learn(pairs);
        self.sync_after(conn, OP).await?;
        Ok(ids)
    }

    async fn claim(
        &self,
        worker: &str,
        limit: usize,
        per_key: usize,
        now_ms: i64,
        lease: Duration,
    ) -> Result<Vec<StoredRun>, StoreError> {
        non_empty("worker", worker)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        const OP: &str = "claiming runs";
        // Two statements, each atomic on its own (a write statement takes the write lock before it reads), and
        // no transaction around them: every statement is a round trip to SQLite's thread, and under load the
        // round trips cost more than the SQL. A lease expiring in between is swept at the next claim.
        let mut conn = self.write_connection(OP).await?;
        sqlx::query(SWEEP_HELD_RUNS).bind(now_ms).execute(&mut *conn).await.map_err(db(OP))?;
        let rows: Vec<RunRow> = sqlx::query_as(CLAIM_RUNS)
            .bind(worker)
            .bind(add_ms(now_ms, lease))
            .bind(now_ms)
            .bind(clamp_claim(limit))
            .bind(clamp_claim(per_key.max(1)))
            .fetch_all(&mut *conn)
            .await
            .map_err(db(OP))?;
        // The claimed runs' accepts may still be syncing: work starts once they are durable.
        self.sync_seen(conn, OP).await?;
        let mut runs = self.stored_runs(rows).await?;
        runs.sort_by_key(|run| run.seq);
        Ok(runs)
    }

    async fn release(&self, leases: &[Lease]) -> Result<(), StoreError> {
        if leases.is_empty() {
            return Ok(());
        }
        const OP: &str = "releasing runs";
        let rows: Vec<Value> =
            leases.iter().map(|lease| json!([lease.id.as_str(), lease.worker.as_str(), lease.token])).collect();
        let mut conn = self.write_connection(OP).await?;
        sqlx::query(RELEASE_RUNS)
            .bind(Value::from(rows).to_string())
            .bind(now_ms())
            .execute(&mut *conn)
            .await
            .map_err(db(OP))?;
        Ok(())
    }

    async fn checkpoint(&self, lease: &Lease, checkpoint: &Value, lease_until_ms: i64) -> Result<(), StoreError> {
        const OP: &str = "saving a checkpoint";
        let mut conn = self.write_connection(OP).await?;
        let done = sqlx::query(concat!(
            "UPDATE runs SET checkpoint = ?4, lease_until = ?5, next_attempt_at = ?5, updated_at = ?6",
            fenced!()
        ))
        .bind(lease.id.as_str())
        .bind(lease.worker.as_str())
        .bind(i64::from(lease.token))
        .bind(checkpoint.to_string())
        .bind(lease_until_ms)
        .bind(now_ms())
        .execute(&mut *conn)
        .await
        .map_err(db(OP))?;
        if done.rows_affected() == 0 {
            return Err(lease_lost(&mut conn, Leased::Run, lease).await);
        }
        Ok(())
    }

    async fn extend_lease(&self, lease: &Lease, lease_until_ms: i64) -> Result<(), StoreError> {
        const OP: &str = "extending a lease";
        let mut conn = self.write_connection(OP).await?;
        let done =
            sqlx::query(concat!("UPDATE runs SET lease_until = ?4, next_attempt_at = ?4, updated_at = ?5", fenced!()))
                .bind(lease.id.as_str())
                .bind(lease.worker.as_str())
                .bind(i64::from(lease.token))
                .bind(lease_until_ms)
                .bind(now_ms())
                .execute(&mut *conn)
                .await
                .map_err(db(OP))?;
        if done.rows_affected() == 0 {
            return Err(lease_lost(&mut conn, Leased::Run, lease).await);
        }
        Ok(())
    }

    async fn complete(
        &self,
        lease: &Lease,
        completion: &Completion,
        trace: &Value,
        emitted: &[NewOutboxEvent],
    ) -> Result<(), StoreError> {
        // One completion is a batch of one: the same checks, fenced update, outbox rows and next head.
        let trace = match trace {
            Value::Null => None,
            trace => Some(to_raw_value(trace).map_err(|e| StoreError::invalid("trace", e.to_string()))?),
        };
        let completion =
            RunCompletion { lease: lease.clone(), completion: completion.clone(), trace, emitted: emitted.to_vec() };
        let mut results = self.complete_many(std::slice::from_ref(&completion)).await?;
        results.pop().unwrap_or_else(|| Err(StoreError::invalid("completion", "no result for the completion")))
    }

    async fn complete_many(&self, completions: &[RunCompletion]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        const OP: &str = "completing runs";
        let now = now_ms();
        let mut results: Vec<Result<(), StoreError>> = completions
            .iter()
            .map(|item| {
                item.emitted.iter().enumerate().try_for_each(|(i, event)| {
                    non_empty(&format!("emitted[{i}].event"), &event.event)?;
                    non_empty(&format!("emitted[{i}].nodeId"), &event.node_id)
                })
            })
            .collect();
        let valid: Vec<(usize, &RunCompletion)> =
            completions.iter().enumerate().filter(|(i, _)| results[*i].is_ok()).collect();
        if valid.is_empty() {
            return Ok(results);
        }
        let closing: Vec<Closing> =
            valid.iter().map(|(_, item)| (&item.lease, &item.completion, item.trace.as_deref())).collect();
        let batch = closing_batch(&closing);
        let closed = if valid.iter().all(|(_, item)| item.emitted.is_empty()) {
            // No outbox rows: the trace block and the fenced update (with the trigger marking the keys' next heads)
            // are a statement each, each atomic by itself, with no `BEGIN` and `COMMIT` round trips.
            let mut conn = self.write_connection(OP).await?;
            complete_runs(&mut conn, &closing, &batch, now).await?
        } else {
            let mut writer = self.writer(OP).await?;
            let mut tx = writer.begin(OP).await?;
            // The fenced update first: only a run still held gets its outbox rows.
            let closed = complete_runs(&mut tx, &closing, &batch, now).await?;
            for ((_, item), closed) in valid.iter().zip(&closed) {
                if *closed {
                    insert_outbox(&mut tx, &item.lease, &item.emitted, now).await?;
                }
            }
            tx.commit().await.map_err(db(OP))?;
            closed
        };
        if closed.contains(&false) {
            // Only to name what became of each lost lease; the completions are already committed.
            let mut conn = self.reader.acquire().await.map_err(db("checking a lease"))?;
            for ((i, item), closed) in valid.iter().zip(closed) {
                if !closed {
                    results[*i] = Err(lease_lost(&mut conn, Leased::Run, &item.lease).await);
                }
            }
        }
        Ok(results)
    }

    async fn reschedule(
        &self,
        lease: &Lease,
        at_ms: i64,
        error: &Value,
        checkpoint: Option<&Value>,
    ) -> Result<RunState, StoreError> {
        const OP: &str = "rescheduling a run";
        let mut conn = self.write_connection(OP).await?;
        let status: Option<String> = sqlx::query_scalar(concat!(
            "UPDATE runs SET status = CASE WHEN ",
            uses_held_connection!(),
            " THEN 'held' ELSE 'queued' END, attempts = attempts + 1, next_attempt_at = ?4, lease_until = NULL, \
             last_error = ?5, checkpoint = COALESCE(?6, checkpoint), updated_at = ?7",
            fenced!(),
            " RETURNING status"
        ))
        .bind(lease.id.as_str())
        .bind(lease.worker.as_str())
        .bind(i64::from(lease.token))
        .bind(at_ms)
        .bind(error.to_string())
        .bind(checkpoint.map(Value::to_string))
        .bind(now_ms())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db(OP))?;
        match status {
            Some(status) => Decoder { what: "run", id: &lease.id }.state(&status),
            None => Err(lease_lost(&mut conn, Leased::Run, lease).await),
        }
    }

    async fn dead_letter(&self, lease: &Lease, error: &Value, trace: &Value) -> Result<(), StoreError> {
        const OP: &str = "dead-lettering a run";
        let mut conn = self.write_connection(OP).await?;
        let done = sqlx::query(concat!(
            "UPDATE runs SET status = 'dead', attempts = attempts + 1, last_error = ?4, trace = ?5, \
             trace_block = NULL, trace_slot = NULL, \
             lease_until = NULL, updated_at = ?6",
            fenced!()
        ))
        .bind(lease.id.as_str())
        .bind(lease.worker.as_str())
        .bind(i64::from(lease.token))
        .bind(error.to_string())
        .bind(pack_trace(trace))
        .bind(now_ms())
        .execute(&mut *conn)
        .await
        .map_err(db(OP))?;
        if done.rows_affected() == 0 {
            return Err(lease_lost(&mut conn, Leased::Run, lease).await);
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<StoredRun>, StoreError> {
        let row: Option<RunRow> = sqlx::query_as(concat!("SELECT ", run_columns!(), " FROM runs WHERE id = ?1"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(db("reading a run"))?;
        Ok(self.stored_runs(Vec::from_iter(row)).await?.pop())
    }

    async fn list(&self, filter: &RunFilter) -> Result<Vec<StoredRun>, StoreError> {
        let mut query = QueryBuilder::<Sqlite>::new(concat!("SELECT ", run_columns!(), " FROM runs WHERE 1 = 1"));
        if let Some(customer) = &filter.customer {
            query.push(" AND customer = ").push_bind(customer.clone());
        }
        if let Some(flow_id) = &filter.flow_id {
            query.push(" AND flow_id = ").push_bind(flow_id.clone());
        }
        if let Some(key) = &filter.ordering_key {
            query.push(" AND ordering_key = ").push_bind(key.clone());
        }
        if let Some(connection) = &filter.connection {
            // As [`uses_connection`], with the name bound twice.
            query.push(" AND runs.flow_id IN (SELECT fc.flow_id FROM flow_connections fc WHERE fc.connection = ");
            query.push_bind(connection.clone());
            query.push(") AND EXISTS (SELECT 1 FROM json_each(runs.connections) c WHERE c.value = ");
            query.push_bind(connection.clone()).push(")");
        }
        if !filter.statuses.is_empty() {
            query.push(" AND status IN (");
            let mut states = query.separated(", ");
            for state in &filter.statuses {
                states.push_bind(state.as_str());
            }
            query.push(")");
        }
        if let Some(before) = filter.before_seq {
            query.push(" AND seq < ").push_bind(before);
        }
        query.push(" ORDER BY seq DESC LIMIT ").push_bind(clamp_limit(filter.limit));
        let rows: Vec<RunRow> = query.build_query_as().fetch_all(&self.reader).await.map_err(db("listing runs"))?;
        self.stored_runs(rows).await
    }

    async fn retry_now(&self, id: &str) -> Result<bool, StoreError> {
        const OP: &str = "retrying a run";
        let mut writer = self.writer(OP).await?;
        let mut tx = writer.begin(OP).await?;
        // A failed run reopens, and may be older than its key's head.
        let key: Option<String> = sqlx::query_scalar(concat!(
            "UPDATE runs SET status = CASE WHEN ",
            uses_held_connection!(),
            " THEN 'held' ELSE 'queued' END, \
             attempts = CASE WHEN status IN ('dead', 'failed') THEN 0 ELSE attempts END, \
             next_attempt_at = ?2, lease_until = NULL, updated_at = ?2 \
             WHERE id = ?1 AND status IN ('dead', 'queued', 'held', 'failed') RETURNING ordering_key"
        ))
        .bind(id)
        .bind(now_ms())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db(OP))?;
        let Some(key) = key else { return Ok(false) };
        rehead(&mut tx, &[key.as_str()], OP).await?;
        tx.commit().await.map_err(db(OP))?;
        self.sync_after(writer, OP).await?;
        Ok(true)
    }

    async fn drop_run(&self, id: &str) -> Result<bool, StoreError> {
        const OP: &str = "dropping a run";
        let mut conn = self.write_connection(OP).await?;
        // Dropping clears the run's own head mark, and the trigger of migration 0004 marks its key's next run.
        let done = sqlx::query(concat!(
            "UPDATE runs SET status = 'dropped', head = 0, lease_until = NULL, updated_at = ?2 \
                 WHERE id = ?1 AND status IN ",
            open_statuses!()
        ))
        .bind(id)
        .bind(now_ms())
        .execute(&mut *conn)
        .await
        .map_err(db(OP))?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.sync_after(conn, OP).await?;
        Ok(true)
    }

    async fn outbox(&self, after_seq: i64, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT seq, run_id, flow_id, node_id, event, payload, created_at FROM outbox \
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .bind(after_seq)
        .bind(clamp_limit(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(db("reading the outbox"))?;
        convert(rows)
    }

    async fn record_inbound(&self, message: &InboundMessage) -> Result<String, StoreError> {
        non_empty("connection", &message.connection)?;
        non_empty("source", &message.source)?;
        if message.external_id.as_deref() == Some("") {
            return Err(StoreError::invalid("externalId", "must not be empty when given"));
        }
        const OP: &str = "recording an inbound message";
        let now = now_ms();
        let mut writer = self.writer(OP).await?;
        let mut tx = writer.begin(OP).await?;
        if let Some(external_id) = &message.external_id {
            let existing: Option<String> =
                sqlx::query_scalar("SELECT id FROM inbound WHERE connection = ?1 AND external_id = ?2")
                    .bind(message.connection.as_str())
                    .bind(external_id.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db(OP))?;
            if let Some(id) = existing {
                tx.rollback().await.map_err(db(OP))?;
                // Recorded by an earlier call, whose sync may still be running.
                self.sync_seen(writer, OP).await?;
                return Ok(id);
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO inbound (id, connection, source, external_id, body, status, next_attempt_at, received_at, \
             updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, \
                     CASE WHEN EXISTS (SELECT 1 FROM held_connections WHERE connection = ?2) \
                          THEN 'held' ELSE 'received' END, \
                     ?6, ?6, ?6)",
        )
        .bind(id.as_str())
        .bind(message.connection.as_str())
        .bind(message.source.as_str())
        .bind(message.external_id.as_deref())
        .bind(message.body.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db(OP))?;
        tx.commit().await.map_err(db(OP))?;
        self.sync_after(writer, OP).await?;
        Ok(id)
    }

    async fn claim_inbound(
        &self,
        worker: &str,
        limit: usize,
        now_ms: i64,
        lease: Duration,
    ) -> Result<Vec<StoredInbound>, StoreError> {
        non_empty("worker", worker)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        const OP: &str = "claiming inbound messages";
        let mut writer = self.writer(OP).await?;
        let mut tx = writer.begin(OP).await?;
        sqlx::query(SWEEP_HELD_INBOUND).bind(now_ms).execute(&mut *tx).await.map_err(db(OP))?;
        let rows: Vec<InboundRow> = sqlx::query_as(CLAIM_INBOUND)
            .bind(worker)
            .bind(add_ms(now_ms, lease))
            .bind(now_ms)
            .bind(clamp_claim(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(db(OP))?;
        tx.commit().await.map_err(db(OP))?;
        // As for runs: a message is worked on once its recording is durable.
        self.sync_seen(writer, OP).await?;
        let mut messages: Vec<StoredInbound> = convert(rows)?;
        messages.sort_by_key(|message| message.seq);
        Ok(messages)
    }

    async fn complete_inbound(
        &self,
        lease: &Lease,
        outcome: &InboundOutcome,
        runs: &[NewRun],
    ) -> Result<Vec<String>, StoreError> {
        validate_runs(runs)?;
        const OP: &str = "completing an inbound message";
        let now = now_ms();
        let pairs = self.flow_connections.unknown(runs);
        let mut writer = self.writer(OP).await?;
        let mut tx = writer.begin(OP).await?;
        store_flow_connections(&mut tx, &pairs).await?;
        let ids = insert_runs(&mut tx, runs, now).await?;
        let (status, detail) = match outcome {
            InboundOutcome::Processed { unmatched } => {
                (InboundState::Processed, unmatched.as_ref().map(Value::to_string))
            }
            InboundOutcome::Unmatched { reason } => (InboundState::Unmatched, Some(reason.to_string())),
            InboundOutcome::Failed { error } => (InboundState::Failed, Some(error.to_string())),
        };
        let done = sqlx::query(concat!(
            "UPDATE inbound SET status = ?4, detail = ?5, run_ids = ?6, lease_until = NULL, updated_at = ?7",
            fenced!()
        ))
        .bind(lease.id.as_str())
        .bind(lease.worker.as_str())
        .bind(i64::from(lease.token))
        .bind(status.as_str())
        .bind(detail)
        .bind(Value::from(ids.clone()).to_string())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db(OP))?;
        if done.rows_affected() == 0 {
            let error = lease_lost(&mut tx, Leased::Inbound, lease).await;
            tx.rollback().await.map_err(db(OP))?;
            return Err(error);
        }
        tx.commit().await.map_err(db(OP))?;
        self.flow_connections.learn(pairs);
        Ok(ids)
    }

    async fn get_inbound(&self, id: &str) -> Result<Option<StoredInbound>, StoreError> {
        let row: Option<InboundRow> =
            sqlx::query_as(concat!("SELECT ", inbound_columns!(), " FROM inbound WHERE id = ?1"))
                .bind(id)
                .fetch_optional(&self.reader)
                .await
                .map_err(db("reading an inbound message"))?;
        row.map(StoredInbound::try_from).transpose()
    }

    async fn list_inbound(&self, filter: &InboundFilter) -> Result<Vec<StoredInbound>, StoreError> {
        let mut query =
            QueryBuilder::<Sqlite>::new(concat!("SELECT ", inbound_columns!(), " FROM inbound WHERE 1 = 1"));
        if let Some(connection) = &filter.connection {
            query.push(" AND connection = ").push_bind(connection.clone());
        }
        if !filter.statuses.is_empty() {
            query.push(" AND status IN (");
            let mut states = query.separated(", ");
            for state in &filter.statuses {
                states.push_bind(state.as_str());
            }
            query.push(")");
        }
        if let Some(before) = filter.before_seq {
            query.push(" AND seq < ").push_bind(before);
        }
        query.push(" ORDER BY seq DESC LIMIT ").push_bind(clamp_limit(filter.limit));
        let rows: Vec<InboundRow> =
            query.build_query_as().fetch_all(&self.reader).await.map_err(db("listing inbound messages"))?;
        convert(rows)
    }

    async fn retry_inbound(&self, id: &str) -> Result<bool, StoreError> {
        const OP: &str = "retrying an inbound message";
        let mut conn = self.write_connection(OP).await?;
        let done = sqlx::query(
            "UPDATE inbound SET status = CASE WHEN EXISTS \
                 (SELECT 1 FROM held_connections h WHERE h.connection = inbound.connection) \
                 THEN 'held' ELSE 'received' END, \
             next_attempt_at = ?2, lease_until = NULL, updated_at = ?2 \
             WHERE id = ?1 AND status IN ('unmatched', 'failed', 'held')",
        )
        .bind(id)
        .bind(now_ms())
        .execute(&mut *conn)
        .await
        .map_err(db(OP))?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.sync_after(conn, OP).await?;
        Ok(true)
    }

    async fn hold_connection(&self, connection: &str) -> Result<ConnectionHold, StoreError> {
        non_empty("connection", connection)?;
        const OP: &str = "holding a connection";
        let now = now_ms();
        let mut writer = self.writer(OP).await?;
        let mut tx = writer.begin(OP).await?;
        sqlx::query("INSERT INTO held_connections (connection, held_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
            .bind(connection)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db(OP))?;
        // Queued runs, and runs whose worker died (expired lease); live leases finish their attempt.
        let runs = sqlx::query(concat!(
            "UPDATE runs SET status = 'held', lease_until = NULL, updated_at = ?2 \
             WHERE (status = 'queued' OR (status = 'leased' AND next_attempt_at <= ?2)) \
               AND ",
            uses_connection!("?1")
        ))
        .bind(connection)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db(OP))?
        .rows_affected();
        let inbound = sqlx::query(
            "UPDATE inbound SET status = 'held', lease_until = NULL, updated_at = ?2 \
             WHERE connection = ?1 AND (status = 'received' OR (status = 'leased' AND next_attempt_at <= ?2))",
        )
        .bind(connection)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db(OP))?
        .rows_affected();
        tx.commit().await.map_err(db(OP))?;
        self.sync_after(writer, OP).await?;
        Ok(ConnectionHold { runs, inbound })
    }

    async fn release_connection(&self, connection: &str) -> Result<ConnectionHold, StoreError> {
        non_empty("connection", connection)?;
        const OP: &str = "releasing a connection";
        let now = now_ms();
        let mut writer = self.writer(OP).await?;
        let mut tx = writer.begin(OP).await?;
        sqlx::query("DELETE FROM held_connections WHERE connection = ?1")
            .bind(connection)
            .execute(&mut *tx)
            .await
            .map_err(db(OP))?;
        let runs = sqlx::query(concat!(
            "UPDATE runs SET status = 'queued', next_attempt_at = MAX(next_attempt_at, ?2), updated_at = ?2 \
             WHERE status = 'held' AND ",
            uses_connection!("?1"),
            " AND NOT ",
            uses_held_connection!()
        ))
        .bind(connection)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db(OP))?
        .rows_affected();
        let inbound = sqlx::query(
            "UPDATE inbound SET status = 'received', next_attempt_at = MAX(next_attempt_at, ?2), updated_at = ?2 \
             WHERE connection = ?1 AND status = 'held'",
        )
        .bind(connection)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db(OP))?
        .rows_affected();
        tx.commit().await.map_err(db(OP))?;
        self.sync_after(writer, OP).await?;
        Ok(ConnectionHold { runs, inbound })
    }

    async fn held_connections(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT connection FROM held_connections ORDER BY connection")
            .fetch_all(&self.reader)
            .await
            .map_err(db("listing held connections"))
    }

    async fn counts(&self) -> Result<QueueCounts, StoreError> {
        const OP: &str = "counting the queue";
        // One read transaction, so the three counts are of the same moment.
        let mut tx = self.reader.begin().await.map_err(db(OP))?;
        let mut counts = QueueCounts::default();
        let runs: Vec<(String, i64)> = sqlx::query_as("SELECT status, COUNT(*) FROM runs GROUP BY status")
            .fetch_all(&mut *tx)
            .await
            .map_err(db(OP))?;
        for (status, n) in runs {
            let state = Decoder { what: "runs", id: "count" }.state::<RunState>(&status)?;
            *counts.runs.slot(state) = n.max(0) as u64;
        }
        let inbound: Vec<(String, i64)> = sqlx::query_as("SELECT status, COUNT(*) FROM inbound GROUP BY status")
            .fetch_all(&mut *tx)
            .await
            .map_err(db(OP))?;
        for (status, n) in inbound {
            let state = Decoder { what: "inbound messages", id: "count" }.state::<InboundState>(&status)?;
            *counts.inbound.slot(state) = n.max(0) as u64;
        }
        let outbox: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox").fetch_one(&mut *tx).await.map_err(db(OP))?;
        counts.outbox = outbox.max(0) as u64;
        tx.commit().await.map_err(db(OP))?;
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunCounts;
    use serde_json::json;
    use sqlx::AssertSqlSafe;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    const LEASE: Duration = Duration::from_secs(30);

    impl SqliteStore {
        /// The write connection as the last write left it.
        async fn test_writer(&self) -> MappedMutexGuard<'_, SqliteConnection> {
            MappedMutexGuard::map(self.writer("testing").await.unwrap(), |writer| &mut writer.conn)
        }
    }

    async fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        // A nested path: the parent directories are created on first start.
        let store = SqliteStore::open(&dir.path().join("data/queue/flowhost.db")).await.unwrap();
        (dir, store)
    }

    fn run_for(key: &str, connections: &[&str]) -> NewRun {
        NewRun {
            flow_id: "loyalty-to-mparticle".into(),
            flow_version: "1.0.0".into(),
            connections: connections.iter().map(|c| c.to_string()).collect(),
            ordering_key: format!("loyalty-to-mparticle/{key}"),
            customer: Some(key.to_string()),
            event: json!({"event": "point_add", "customer": key}),
            dedup_key: None,
        }
    }

    fn run(key: &str) -> NewRun {
        run_for(key, &["mparticle"])
    }

    /// The completion of a claimed run, with a small trace naming it.
    fn completing(run: &StoredRun, completion: Completion, emitted: &[NewOutboxEvent]) -> RunCompletion {
        RunCompletion {
            lease: run.lease().unwrap(),
            completion,
            trace: to_raw_value(&json!({"run": run.id})).ok(),
            emitted: emitted.to_vec(),
        }
    }

    fn customers(runs: &[StoredRun]) -> Vec<String> {
        runs.iter().map(|r| r.event["customer"].as_str().unwrap().to_string()).collect()
    }

    #[tokio::test]
    async fn enqueued_runs_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/flowhost.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let deduped = NewRun { dedup_key: Some("evt-1".into()), ..run("carol") };
        let ids = store.enqueue(&[run("alice"), run("bob"), deduped.clone()]).await.unwrap();
        assert_eq!(ids.len(), 3);
        let claimed = store.claim("w1", 1, 1, now_ms(), LEASE).await.unwrap();
        let lease = claimed[0].lease().unwrap();
        store.checkpoint(&lease, &json!({"done": ["send"]}), now_ms() + 60_000).await.unwrap();
        store.hold_connection("other").await.unwrap();
        // Simulate a crash: no close, just drop the connections.
        drop(store);

        let store = SqliteStore::open(&path).await.unwrap();
        for id in &ids {
            assert!(store.get(id).await.unwrap().is_some(), "run {id} lost");
        }
        let first = store.get(&ids[0]).await.unwrap().unwrap();
        assert_eq!(first.status, RunState::Leased);
        assert_eq!(first.checkpoint, Some(json!({"done": ["send"]})));
        assert_eq!(first.connections, vec!["mparticle".to_string()]);
        assert_eq!(first.event, json!({"event": "point_add", "customer": "alice"}));
        assert_eq!(store.get(&ids[1]).await.unwrap().unwrap().status, RunState::Queued);
        assert_eq!(store.held_connections().await.unwrap(), vec!["other".to_string()]);
        // The same event sent again (e.g. after a client timeout) is not a second run.
        assert_eq!(store.enqueue(&[deduped]).await.unwrap(), vec![ids[2].clone()]);
        let counts = store.counts().await.unwrap();
        assert_eq!((counts.runs.queued, counts.runs.leased), (2, 1));
        store.close().await;
    }

    #[tokio::test]
    async fn claims_in_arrival_order_and_a_waiting_resend_holds_only_its_key() {
        let (_dir, store) = open().await;
        let ids = store.enqueue(&[run("a"), run("b"), run("a"), run("c"), run("b")]).await.unwrap();
        let now = now_ms();

        let first = store.claim("w1", 10, 1, now, LEASE).await.unwrap();
        assert_eq!(customers(&first), ["a", "b", "c"], "one run per key, oldest first");
        assert_eq!(
            first.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
            [&ids[0], &ids[1], &ids[3]].map(|s| s.clone())
        );
        assert!(store.claim("w2", 10, 1, now, LEASE).await.unwrap().is_empty(), "later runs wait for leased ones");

        // a1 fails and waits a minute for its resend; b1 and c1 succeed.
        let state = store
            .reschedule(&first[0].lease().unwrap(), now + 60_000, &json!({"kind": "transient"}), Some(&json!({"n": 1})))
            .await
            .unwrap();
        assert_eq!(state, RunState::Queued);
        for run in &first[1..] {
            store.complete(&run.lease().unwrap(), &Completion::Succeeded, &json!({}), &[]).await.unwrap();
        }
        let next = store.claim("w1", 10, 1, now + 1, LEASE).await.unwrap();
        assert_eq!(customers(&next), ["b"], "b2 goes; a2 waits behind a1's resend");
        store.complete(&next[0].lease().unwrap(), &Completion::Succeeded, &json!({}), &[]).await.unwrap();
        assert!(store.claim("w1", 10, 1, now + 2, LEASE).await.unwrap().is_empty());

        // The resend is due: a1 first (with its attempt counted and checkpoint kept), then a2.
        let resend = store.claim("w1", 10, 1, now + 60_000, LEASE).await.unwrap();
        assert_eq!(resend.len(), 1);
        assert_eq!(resend[0].id, ids[0]);
        assert_eq!((resend[0].attempts, resend[0].leases), (1, 2));
        assert_eq!(resend[0].checkpoint, Some(json!({"n": 1})));
        assert_eq!(resend[0].last_error, Some(json!({"kind": "transient"})));
        store.complete(&resend[0].lease().unwrap(), &Completion::Succeeded, &json!({}), &[]).await.unwrap();
        let last = store.claim("w1", 10, 1, now + 60_001, LEASE).await.unwrap();
        assert_eq!(last.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [ids[2].as_str()]);
    }

    #[tokio::test]
    async fn a_claim_takes_a_keys_due_runs_in_order_up_to_per_key_and_every_head_first() {
        let (_dir, store) = open().await;
        store.enqueue(&[run("a"), run("a"), run("b"), run("a"), run("a"), run("c"), run("b")]).await.unwrap();
        // Within the limit, every key's first run comes before any key's second: a1, b1, c1, then a2.
        let first = store.claim("w1", 4, 3, now_ms(), LEASE).await.unwrap();
        assert_eq!(customers(&first), ["a", "a", "b", "c"]);
        assert_eq!(first.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 6]);
        assert!(first.iter().all(|r| r.status == RunState::Leased && r.lease_owner.as_deref() == Some("w1")));
        // a3 is right behind a2 but over the limit; nobody else may take it while a1 and a2 are out.
        assert!(store.claim("w2", 10, 3, now_ms(), LEASE).await.unwrap().is_empty());

        // Once a key's claimed runs are done, its next ones go, up to `per_key` of them.
        for claimed in &first {
            store.complete(&claimed.lease().unwrap(), &Completion::Succeeded, &json!({}), &[]).await.unwrap();
        }
        let second = store.claim("w2", 10, 2, now_ms(), LEASE).await.unwrap();
        assert_eq!(second.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 5, 7]);
        assert_eq!(misplaced_heads(&store).await, []);
    }

    #[tokio::test]
    async fn a_claim_stops_each_key_at_a_run_that_is_not_due_and_released_runs_wait_behind_it() {
        let (_dir, store) = open().await;
        store.hold_connection("crm").await.unwrap();
        // a3 uses the held connection: it is open but not due, so a4 must not overtake it.
        store.enqueue(&[run("a"), run("a"), run_for("a", &["mparticle", "crm"]), run("a"), run("b")]).await.unwrap();
        let claimed = store.claim("w1", 10, 4, now_ms(), LEASE).await.unwrap();
        assert_eq!(claimed.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 5]);

        // a1 needs a resend, so its holder gives a2 back: a2 is queued behind a1 again, not claimable.
        let (a1, a2) = (claimed[0].lease().unwrap(), claimed[1].lease().unwrap());
        let due = now_ms() + 10_000;
        store.reschedule(&a1, due, &json!({"kind": "transient"}), None).await.unwrap();
        store.release(std::slice::from_ref(&a2)).await.unwrap();
        let a2_now = store.get(&a2.id).await.unwrap().unwrap();
        assert_eq!((a2_now.status, a2_now.lease_until, a2_now.attempts), (RunState::Queued, None, 0));
        assert!(store.claim("w2", 10, 4, now_ms(), LEASE).await.unwrap().is_empty(), "a1 waits; a2 behind it");
        // A release is fenced: once given back, the old lease can do nothing more.
        let error = store.complete(&a2, &Completion::Succeeded, &json!({}), &[]).await.unwrap_err();
        assert!(error.is_lease_lost(), "{error}");
        store.release(std::slice::from_ref(&a2)).await.unwrap();

        // When a1 is due again it goes with a2, and stops before the held a3.
        let again = store.claim("w2", 10, 4, due, LEASE).await.unwrap();
        assert_eq!(again.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
        // Released while its connection is held, a run becomes held.
        store.release(&[again[1].lease().unwrap()]).await.unwrap();
        assert_eq!(store.get(&a2.id).await.unwrap().unwrap().status, RunState::Queued);
        store.release_connection("crm").await.unwrap();
        let held = store.enqueue(&[run_for("c", &["crm"])]).await.unwrap();
        let [c]: [StoredRun; 1] = store.claim("w3", 10, 4, now_ms(), LEASE).await.unwrap().try_into().unwrap();
        assert_eq!(c.id, held[0]);
        store.hold_connection("crm").await.unwrap();
        store.release(&[c.lease().unwrap()]).await.unwrap();
        assert_eq!(store.get(&c.id).await.unwrap().unwrap().status, RunState::Held);
        assert_eq!(misplaced_heads(&store).await, []);
    }

    #[tokio::test]
    async fn a_claimed_keys_runs_whose_lease_expired_are_claimed_again_together() {
        let (_dir, store) = open().await;
        store.enqueue(&[run("a"), run("a"), run("a")]).await.unwrap();
        let now = now_ms();
        let old = store.claim("w1", 10, 3, now, Duration::from_secs(1)).await.unwrap();
        assert_eq!(old.len(), 3);
        assert!(store.claim("w2", 10, 3, now + 999, LEASE).await.unwrap().is_empty());
        let taken = store.claim("w2", 10, 3, now + 1_000, LEASE).await.unwrap();
        assert_eq!(taken.iter().map(|r| (r.seq, r.leases)).collect::<Vec<_>>(), [(1, 2), (2, 2), (3, 2)]);
        let error = store.complete(&old[1].lease().unwrap(), &Completion::Succeeded, &json!({}), &[]).await;
        assert!(error.unwrap_err().is_lease_lost());
    }

    #[tokio::test]
    async fn a_dead_run_holds_its_key_until_retried_or_dropped() {
        let (_dir, store) = open().await;
        let ids = store.enqueue(&[run("a"), run("a"), run("z")]).await.unwrap();
        let now = now_ms();
        let claimed = store.claim("w1", 10, 1, now, LEASE).await.unwrap();
        assert_eq!(customers(&claimed), ["a", "z"]);
        store.dead_letter(&claimed[0].lease().unwrap(), &json!({"status": 503}), &json!({"nodes": []})).await.unwrap();
        store.complete(&claimed[1].lease().unwrap(), &Completion::Succeeded, &json!({}), &[]).await.unwrap();

        let dead = store.get(&ids[0]).await.unwrap().unwrap();
        assert_eq!((dead.status, dead.attempts), (RunState::Dead, 1));
        assert_eq!(dead.last_error, Some(json!({"status": 503})));
        assert_eq!(store.counts().await.unwrap().runs.dead, 1);
        assert!(store.claim("w1", 10, 1, now + 3_600_000, LEASE).await.unwrap().is_empty(), "a2 waits behind dead a1");

        // An operator retries it: due now, with fresh attempts.
        assert!(store.retry_now(&ids[0]).await.unwrap());
        let again = store.claim("w1", 10, 1, now_ms(), LEASE).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].id.as_str(), again[0].attempts), (ids[0].as_str(), 0));
        store.dead_letter(&again[0].lease().unwrap(), &json!({"status": 503}), &json!({})).await.unwrap();

        // ... or drops it: kept for the record, and a2 goes.
        assert!(store.drop_run(&ids[0]).await.unwrap());
        assert!(!store.drop_run(&ids[0]).await.unwrap(), "already dropped");
        assert!(!store.retry_now(&ids[2]).await.unwrap(), "a succeeded run is not retried");
        assert!(!store.retry_now("no-such-run").await.unwrap());
        assert_eq!(store.get(&ids[0]).await.unwrap().unwrap().status, RunState::Dropped);
        let next = store.claim("w1", 10, 1, now_ms(), LEASE).await.unwrap();
        assert_eq!(next.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [ids[1].as_str()]);
    }

    #[tokio::test]
    async fn an_expired_lease_is_claimed_again_and_the_old_worker_is_fenced_off() {
        let (_dir, store) = open().await;
        let ids = store.enqueue(&[run("a")]).await.unwrap();
        let now = now_ms();
        let old = store.claim("w1", 10, 1, now, Duration::from_secs(1)).await.unwrap();
        let old_lease = old[0].lease().unwrap();
        store.checkpoint(&old_lease, &json!({"step": 1}), now + 1_000).await.unwrap();
        assert!(store.claim("w2", 10, 1, now + 999, LEASE).await.unwrap().is_empty(), "the lease still holds");

        // w1 crashed: after the lease expires, w2 takes the run over from w1's checkpoint.
        let taken = store.claim("w2", 10, 1, now + 1_000, LEASE).await.unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!((taken[0].lease_owner.as_deref(), taken[0].leases), (Some("w2"), 2));
        assert_eq!(taken[0].checkpoint, Some(json!({"step": 1})));

        let lost = store.checkpoint(&old_lease, &json!({"step": 2}), now + 5_000).await.unwrap_err();
        assert!(lost.is_lease_lost(), "{lost}");
        assert!(lost.to_string().contains("leased again, by `w2`"), "{lost}");
        let emitted = [NewOutboxEvent { node_id: "emit".into(), event: "point_add".into(), payload: json!({}) }];
        let lost = store.complete(&old_lease, &Completion::Succeeded, &json!({}), &emitted).await.unwrap_err();
        assert!(lost.is_lease_lost(), "{lost}");
        assert!(store.reschedule(&old_lease, now, &json!({}), None).await.unwrap_err().is_lease_lost());
        assert!(store.dead_letter(&old_lease, &json!({}), &json!({})).await.unwrap_err().is_lease_lost());
        assert!(store.extend_lease(&old_lease, now + 9_000).await.unwrap_err().is_lease_lost());
        assert!(store.outbox(0, 10).await.unwrap().is_empty(), "the fenced-off completion wrote nothing");
        let current = store.get(&ids[0]).await.unwrap().unwrap();
        assert_eq!((current.status, current.checkpoint), (RunState::Leased, Some(json!({"step": 1}))));

        // Fencing is by claim, not by name: a worker re-using the name w1 gets a new token.
        store.extend_lease(&taken[0].lease().unwrap(), now + 2_000).await.unwrap();
        let third = store.claim("w1", 10, 1, now + 2_000, LEASE).await.unwrap();
        assert_eq!(third[0].leases, 3);
        assert!(store.checkpoint(&old_lease, &json!({}), now + 9_000).await.unwrap_err().is_lease_lost());
        store.complete(&third[0].lease().unwrap(), &Completion::Succeeded, &json!({}), &[]).await.unwrap();

        let missing = Lease { id: "nope".into(), worker: "w1".into(), token: 1 };
        assert!(matches!(store.checkpoint(&missing, &json!({}), now).await, Err(StoreError::NotFound { .. })));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_claimers_never_get_the_same_run_and_keep_key_order() {
        let (_dir, store) = open().await;
        let store = Arc::new(store);
        // 300 runs with keys of their own, and 100 runs over 5 keys.
        let mut runs: Vec<NewRun> = (0..300).map(|i| run(&format!("solo-{i}"))).collect();
        runs.extend((0..100).map(|i| run(&format!("shared-{}", i % 5))));
        let ids = store.enqueue(&runs).await.unwrap();
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut workers = Vec::new();
        for w in 0..4 {
            let (store, seen, order) = (store.clone(), seen.clone(), order.clone());
            workers.push(tokio::spawn(async move {
                let worker = format!("w{w}");
                loop {
                    let claimed = store.claim(&worker, 7, 1, now_ms(), LEASE).await.unwrap();
                    if claimed.is_empty() {
                        let counts = store.counts().await.unwrap();
                        if counts.runs.queued + counts.runs.leased == 0 {
                            break;
                        }
                        tokio::task::yield_now().await;
                        continue;
                    }
                    for run in claimed {
                        assert!(seen.lock().unwrap().insert(run.id.clone()), "run {} claimed twice", run.id);
                        order.lock().unwrap().push((run.ordering_key.clone(), run.seq));
                        store.complete(&run.lease().unwrap(), &Completion::Succeeded, &json!({}), &[]).await.unwrap();
                    }
                }
            }));
        }
        for worker in workers {
            worker.await.unwrap();
        }
        assert_eq!(seen.lock().unwrap().len(), ids.len());
        let mut last: HashMap<String, i64> = HashMap::new();
        for (key, seq) in order.lock().unwrap().iter() {
            let previous = last.insert(key.clone(), *seq).unwrap_or(0);
            assert!(*seq > previous, "key {key}: seq {seq} ran after {previous}");
        }
        assert_eq!(store.counts().await.unwrap().runs.succeeded, 400);
    }

    #[tokio::test]
    async fn completing_writes_the_run_and_its_outbox_events_together() {
        let (_dir, store) = open().await;
        let ids = store.enqueue(&[run("a"), run("b")]).await.unwrap();
        let claimed = store.claim("w1", 10, 1, now_ms(), LEASE).await.unwrap();
        let emitted = [
            NewOutboxEvent { node_id: "emit_points".into(), event: "point_add".into(), payload: json!({"points": 5}) },
            NewOutboxEvent { node_id: "emit_reward".into(), event: "reward_claim".into(), payload: json!({"id": 7}) },
        ];
        let trace = json!({"nodes": [{"nodeId": "emit_points"}]});
        store.complete(&claimed[0].lease().unwrap(), &Completion::Succeeded, &trace, &emitted).await.unwrap();
        let failure = Completion::Failed { error: json!({"kind": "permanent", "status": 400}) };
        store.complete(&claimed[1].lease().unwrap(), &failure, &json!({}), &emitted[..1]).await.unwrap();

        let done = store.get(&ids[0]).await.unwrap().unwrap();
        assert_eq!((done.status, done.trace, done.lease_until), (RunState::Succeeded, Some(trace), None));
        let failed = store.get(&ids[1]).await.unwrap().unwrap();
        assert_eq!(
            (failed.status, failed.last_error),
            (RunState::Failed, Some(json!({"kind": "permanent", "status": 400})))
        );

        let outbox = store.outbox(0, 10).await.unwrap();
        assert_eq!(outbox.len(), 3);
        assert_eq!((outbox[0].run_id.as_str(), outbox[0].event.as_str()), (ids[0].as_str(), "point_add"));
        assert_eq!(outbox[1].payload, json!({"id": 7}));
        assert_eq!(outbox[0].flow_id, "loyalty-to-mparticle");
        assert!(outbox.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(store.outbox(outbox[1].seq, 10).await.unwrap(), outbox[2..].to_vec(), "paging by seq");

        // Completing twice is refused and adds nothing to the outbox: the inserts are rolled back.
        let again = store.complete(&claimed[0].lease().unwrap(), &Completion::Succeeded, &json!({}), &emitted).await;
        assert!(again.unwrap_err().is_lease_lost());
        assert_eq!(store.counts().await.unwrap().outbox, 3);

        let bad = [NewOutboxEvent { node_id: "n".into(), event: String::new(), payload: json!({}) }];
        let error = store.complete(&claimed[0].lease().unwrap(), &Completion::Succeeded, &json!({}), &bad).await;
        assert!(error.unwrap_err().to_string().contains("emitted[0].event"));
    }

    #[tokio::test]
    async fn a_failed_run_retried_by_the_operator_becomes_the_head_of_its_key_again() {
        let (_dir, store) = open().await;
        let ids = store.enqueue(&[run("a"), run("a")]).await.unwrap();
        let first = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
        assert_eq!(first.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), [ids[0].clone()], "only the head");
        let failed = Completion::Failed { error: json!({"kind": "permanent"}) };
        store.complete(&first[0].lease().unwrap(), &failed, &json!({}), &[]).await.unwrap();
        // A failed run does not hold its key: the second run is the head now.
        let later = store.enqueue(&[run("a")]).await.unwrap();
        let second = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
        assert_eq!(second.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), [ids[1].clone()]);
        store.complete(&second[0].lease().unwrap(), &Completion::Succeeded, &json!({}), &[]).await.unwrap();
        // The operator retries the failed first run: it is earlier than the queued third, so it goes first and
        // the third waits behind it.
        assert!(store.retry_now(&ids[0]).await.unwrap());
        let third = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
        assert_eq!(third.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), [ids[0].clone()]);
        store.complete(&third[0].lease().unwrap(), &Completion::Succeeded, &json!({}), &[]).await.unwrap();
        let last = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
        assert_eq!(last.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), later);
    }

    #[tokio::test]
    async fn completions_share_a_transaction_and_a_lost_lease_fails_only_its_own() {
        let (_dir, store) = open().await;
        let ids = store.enqueue(&[run("a"), run("b"), run("c")]).await.unwrap();
        let claimed = store.claim("w1", 10, 1, now_ms(), LEASE).await.unwrap();
        // The second run is taken away (dropped by an operator) before its completion arrives.
        assert!(store.drop_run(&ids[1]).await.unwrap());
        let emitted = vec![NewOutboxEvent { node_id: "n".into(), event: "point_add".into(), payload: json!({}) }];
        let completions: Vec<RunCompletion> =
            claimed.iter().map(|run| completing(run, Completion::Succeeded, &emitted)).collect();
        let results = store.complete_many(&completions).await.unwrap();
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(results[1].as_ref().unwrap_err().is_lease_lost());
        assert_eq!(store.get(&ids[0]).await.unwrap().unwrap().status, RunState::Succeeded);
        assert_eq!(store.get(&ids[1]).await.unwrap().unwrap().status, RunState::Dropped);
        let outbox: Vec<String> = store.outbox(0, 10).await.unwrap().into_iter().map(|e| e.run_id).collect();
        assert_eq!(outbox, [ids[0].clone(), ids[2].clone()], "no outbox rows for the lost lease");
    }

    #[tokio::test]
    async fn a_lease_completed_twice_in_one_batch_counts_once_and_keeps_its_failure() {
        let (_dir, store) = open().await;
        store.enqueue(&[run("a"), run("b")]).await.unwrap();
        let claimed = store.claim("w1", 10, 1, now_ms(), LEASE).await.unwrap();
        let emitted = [NewOutboxEvent { node_id: "n".into(), event: "point_add".into(), payload: json!({}) }];
        let completion = |run: &StoredRun, completion: Completion| completing(run, completion, &emitted);
        let failed = Completion::Failed { error: json!({"kind": "invalid-input", "message": "no"}) };
        let mut stale = completion(&claimed[1], Completion::Succeeded);
        stale.lease.token += 1;
        let results = store
            .complete_many(&[
                completion(&claimed[0], failed.clone()),
                completion(&claimed[0], Completion::Succeeded),
                stale,
                completion(&claimed[1], Completion::Succeeded),
            ])
            .await
            .unwrap();
        assert!(results[0].is_ok() && results[3].is_ok(), "{results:?}");
        assert!(results[1].as_ref().unwrap_err().is_lease_lost(), "{results:?}");
        assert!(results[2].as_ref().unwrap_err().is_lease_lost(), "a wrong token: {results:?}");
        let first = store.get(&claimed[0].id).await.unwrap().unwrap();
        assert_eq!(
            (first.status, first.last_error),
            (RunState::Failed, Some(json!({"kind": "invalid-input", "message": "no"})))
        );
        assert_eq!(first.trace, Some(json!({"run": claimed[0].id})));
        assert_eq!(store.get(&claimed[1].id).await.unwrap().unwrap().status, RunState::Succeeded);
        assert_eq!(store.outbox(0, 10).await.unwrap().len(), 2, "one outbox row per completed run");
    }

    #[tokio::test]
    async fn holding_a_connection_keeps_its_runs_and_releasing_sends_them() {
        let (_dir, store) = open().await;
        // In flight on mparticle when it is disconnected, and a run whose worker will have died.
        let ids = store.enqueue(&[run("inflight"), run("crashed")]).await.unwrap();
        let now = now_ms();
        let inflight = store.claim("w1", 1, 1, now, LEASE).await.unwrap().remove(0);
        let crashed = store.claim("w-dead", 1, 1, now, Duration::from_secs(5)).await.unwrap().remove(0);
        assert_eq!(crashed.id, ids[1]);
        let queued = store
            .enqueue(&[run("a"), run("b"), run_for("c", &["other"]), run_for("d", &["other", "mparticle"])])
            .await
            .unwrap();

        let held = store.hold_connection("mparticle").await.unwrap();
        assert_eq!(held.runs, 3, "a, b and d; live leases finish their attempt");
        assert_eq!(store.hold_connection("mparticle").await.unwrap().runs, 0, "idempotent");
        assert_eq!(store.held_connections().await.unwrap(), ["mparticle"]);

        // Only the run on the other connection goes; the crashed run is held once its lease expires.
        let claimed = store.claim("w2", 10, 1, now + 10_000, LEASE).await.unwrap();
        assert_eq!(customers(&claimed), ["c"]);
        assert_eq!(store.get(&ids[1]).await.unwrap().unwrap().status, RunState::Held);
        // New runs for the held connection are held on arrival; the in-flight one is held on reschedule.
        let late = store.enqueue(&[run("e")]).await.unwrap();
        assert_eq!(store.get(&late[0]).await.unwrap().unwrap().status, RunState::Held);
        let state = store.reschedule(&inflight.lease().unwrap(), now, &json!({"status": 503}), None).await.unwrap();
        assert_eq!(state, RunState::Held);
        // An operator retry keeps it held while the connection is disconnected.
        assert!(store.retry_now(&queued[0]).await.unwrap());
        assert_eq!(store.get(&queued[0]).await.unwrap().unwrap().status, RunState::Held);

        let counts = store.counts().await.unwrap();
        assert_eq!((counts.runs.held, counts.runs.leased), (6, 1));
        let listed = store
            .list(&RunFilter {
                connection: Some("mparticle".into()),
                statuses: vec![RunState::Held],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 6, "held runs are kept and reported");
        assert!(store.claim("w2", 10, 1, now_ms() + 1_000, LEASE).await.unwrap().is_empty());

        // d also uses `other`: holding and releasing `other` must not free it while mparticle is held.
        store.hold_connection("other").await.unwrap();
        assert_eq!(store.release_connection("other").await.unwrap().runs, 0);
        assert_eq!(store.get(&queued[3]).await.unwrap().unwrap().status, RunState::Held);

        let released = store.release_connection("mparticle").await.unwrap();
        assert_eq!(released.runs, 6);
        assert!(store.held_connections().await.unwrap().is_empty());
        let claimed = store.claim("w2", 10, 1, now + 20_000, LEASE).await.unwrap();
        assert_eq!(customers(&claimed), ["inflight", "crashed", "a", "b", "d", "e"]);
        assert_eq!(claimed[0].attempts, 1);
    }

    #[tokio::test]
    async fn a_flows_connections_are_stored_once_and_only_once_its_runs_are_committed() {
        let (dir, store) = open().await;
        let pairs = || async {
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT connection, flow_id FROM flow_connections ORDER BY connection, flow_id")
                    .fetch_all(&mut *store.test_writer().await)
                    .await
                    .unwrap();
            rows
        };
        let mut other_flow = run_for("o", &["other", "other"]);
        other_flow.flow_id = "reward-to-mparticle".into();
        store.enqueue(&[run("a"), run("b"), other_flow]).await.unwrap();
        let expected = [("mparticle", "loyalty-to-mparticle"), ("other", "reward-to-mparticle")]
            .map(|(connection, flow)| (connection.to_string(), flow.to_string()));
        assert_eq!(pairs().await, expected);

        // A pair written by a transaction that rolled back is not taken as stored: the stale settlement of an
        // inbound message enqueues nothing, and the next enqueue of that pair writes it.
        store
            .record_inbound(&InboundMessage {
                connection: "mp".into(),
                source: "mparticle.webhook".into(),
                external_id: None,
                body: json!({}),
            })
            .await
            .unwrap();
        let now = now_ms();
        let stale = store.claim_inbound("in", 1, now, Duration::from_millis(1)).await.unwrap().remove(0);
        store.claim_inbound("in", 1, now + 10, LEASE).await.unwrap();
        let mut new_pair = run_for("n", &["braze"]);
        new_pair.flow_id = "new-flow".into();
        let outcome = InboundOutcome::Processed { unmatched: None };
        let lost = store.complete_inbound(&stale.lease().unwrap(), &outcome, &[new_pair.clone()]).await;
        assert!(lost.unwrap_err().is_lease_lost());
        assert_eq!(pairs().await.len(), 2, "rolled back with the settlement");
        let id = store.enqueue(&[new_pair]).await.unwrap().remove(0);
        assert!(pairs().await.contains(&("braze".to_string(), "new-flow".to_string())));
        assert_eq!(store.hold_connection("braze").await.unwrap().runs, 1);
        assert_eq!(store.get(&id).await.unwrap().unwrap().status, RunState::Held);

        // Another process (a new store on the same file) knows none of them yet, and writing them again is harmless.
        let again = SqliteStore::open(&dir.path().join("data/queue/flowhost.db")).await.unwrap();
        again.enqueue(&[run("c")]).await.unwrap();
        assert_eq!(pairs().await.len(), 3);
        again.close().await;
    }

    #[tokio::test]
    async fn runs_stored_before_flow_connections_are_still_found_by_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flowhost.db");
        // A store as migration 0005 left it, with a run on two connections (its `run_connections` rows written by
        // that migration's trigger) and one on a third.
        let mut conn = SqliteConnectOptions::new().filename(&path).create_if_missing(true).connect().await.unwrap();
        MIGRATOR.run_to(5, &mut conn).await.unwrap();
        for (id, key, connections) in [("r1", "a", r#"["mparticle","other"]"#), ("r2", "b", r#"["braze"]"#)] {
            sqlx::query(
                "INSERT INTO runs (id, flow_id, flow_version, connections, ordering_key, event, status, \
                 next_attempt_at, created_at, updated_at, head) \
                 VALUES (?1, 'f', '1', ?3, ?2, '{}', 'queued', 0, 0, 0, 1)",
            )
            .bind(id)
            .bind(key)
            .bind(connections)
            .execute(&mut conn)
            .await
            .unwrap();
        }
        conn.close().await.unwrap();

        let store = SqliteStore::open(&path).await.unwrap();
        let on = |connection: &str| RunFilter { connection: Some(connection.into()), ..Default::default() };
        let ids = |runs: Vec<StoredRun>| runs.into_iter().map(|run| run.id).collect::<Vec<_>>();
        assert_eq!(ids(store.list(&on("other")).await.unwrap()), ["r1"]);
        assert_eq!(ids(store.list(&on("braze")).await.unwrap()), ["r2"]);
        assert!(store.list(&on("nothing")).await.unwrap().is_empty());
        assert_eq!(store.hold_connection("mparticle").await.unwrap().runs, 1);
        assert_eq!(store.get("r1").await.unwrap().unwrap().status, RunState::Held);
        assert_eq!(store.get("r2").await.unwrap().unwrap().status, RunState::Queued);
        assert_eq!(store.release_connection("mparticle").await.unwrap().runs, 1);
    }

    #[tokio::test]
    async fn inbound_messages_are_recorded_claimed_in_order_and_settled_with_their_runs() {
        let (_dir, store) = open().await;
        let message = |connection: &str, id: Option<&str>| InboundMessage {
            connection: connection.into(),
            source: "mparticle.webhook".into(),
            external_id: id.map(str::to_string),
            body: json!({"events": [{"event_type": "custom_event"}]}),
        };
        let m1 = store.record_inbound(&message("mp", Some("batch-1"))).await.unwrap();
        assert_eq!(store.record_inbound(&message("mp", Some("batch-1"))).await.unwrap(), m1, "de-duplicated");
        let m2 = store.record_inbound(&message("mp", None)).await.unwrap();
        let m3 = store.record_inbound(&message("mp2", Some("batch-1"))).await.unwrap();
        let now = now_ms();
        assert_ne!(m3, m1, "external ids are per connection");

        let first = store.claim_inbound("in", 1, now, LEASE).await.unwrap();
        assert_eq!(first.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), [m1.as_str()]);
        let second = store.claim_inbound("in", 10, now, LEASE).await.unwrap();
        assert_eq!(second.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), [m3.as_str()], "m2 waits for m1");

        // Settling enqueues the mapped runs in the same transaction.
        let lease = first[0].lease().unwrap();
        let runs = store
            .complete_inbound(&lease, &InboundOutcome::Processed { unmatched: None }, &[run("x"), run("y")])
            .await
            .unwrap();
        assert_eq!(runs.len(), 2);
        let settled = store.get_inbound(&m1).await.unwrap().unwrap();
        assert_eq!((settled.status, settled.run_ids.clone()), (InboundState::Processed, runs.clone()));
        assert_eq!(store.get(&runs[0]).await.unwrap().unwrap().status, RunState::Queued);
        // A stale lease settles nothing and enqueues nothing.
        let stale = store
            .complete_inbound(&lease, &InboundOutcome::Processed { unmatched: None }, &[run("z")])
            .await
            .unwrap_err();
        assert!(stale.is_lease_lost(), "{stale}");
        assert_eq!(store.counts().await.unwrap().runs.queued, 2);

        let unmatched = InboundOutcome::Unmatched { reason: json!({"eventType": "screen_view"}) };
        store.complete_inbound(&second[0].lease().unwrap(), &unmatched, &[]).await.unwrap();
        let kept = store.get_inbound(&m3).await.unwrap().unwrap();
        assert_eq!((kept.status, kept.detail), (InboundState::Unmatched, Some(json!({"eventType": "screen_view"}))));
        assert!(store.retry_inbound(&m3).await.unwrap());

        // A disconnect holds received messages.
        assert_eq!(store.hold_connection("mp").await.unwrap().inbound, 1);
        let claimed = store.claim_inbound("in", 10, now_ms(), LEASE).await.unwrap();
        assert_eq!(claimed.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), [m3.as_str()]);
        assert_eq!(store.release_connection("mp").await.unwrap().inbound, 1);
        let claimed = store.claim_inbound("in", 10, now_ms(), LEASE).await.unwrap();
        assert_eq!(claimed.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), [m2.as_str()]);

        let counts = store.counts().await.unwrap();
        assert_eq!((counts.inbound.processed, counts.inbound.leased), (1, 2));
        let listed = store.list_inbound(&InboundFilter { connection: Some("mp".into()), ..Default::default() }).await;
        assert_eq!(listed.unwrap().iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), [m2.as_str(), m1.as_str()]);
    }

    #[tokio::test]
    async fn listing_filters_and_pages_newest_first() {
        let (_dir, store) = open().await;
        let mut runs: Vec<NewRun> = (0..5).map(|_| run("alice")).collect();
        runs.push(run("bob"));
        runs.push(NewRun { flow_id: "profile-sync".into(), ..run("alice") });
        let ids = store.enqueue(&runs).await.unwrap();
        let alice = RunFilter { customer: Some("alice".into()), limit: 3, ..Default::default() };
        let page = store.list(&alice).await.unwrap();
        assert_eq!(
            page.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            [&ids[6], &ids[4], &ids[3]].map(String::as_str)
        );
        let next = store.list(&RunFilter { before_seq: Some(page[2].seq), ..alice.clone() }).await.unwrap();
        assert_eq!(
            next.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            [&ids[2], &ids[1], &ids[0]].map(String::as_str)
        );
        let flow = RunFilter { flow_id: Some("profile-sync".into()), ..Default::default() };
        assert_eq!(store.list(&flow).await.unwrap().len(), 1);
        store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
        let statuses = RunFilter { statuses: vec![RunState::Leased, RunState::Dead], ..Default::default() };
        assert_eq!(customers(&store.list(&statuses).await.unwrap()), ["bob", "alice"]);
    }

    #[tokio::test]
    async fn counts_every_state() {
        let (_dir, store) = open().await;
        store.enqueue(&(0..7).map(|i| run(&format!("c{i}"))).collect::<Vec<_>>()).await.unwrap();
        let now = now_ms();
        let c = store.claim("w", 6, 1, now, LEASE).await.unwrap();
        let lease = |i: usize| c[i].lease().unwrap();
        store.complete(&lease(0), &Completion::Succeeded, &json!({}), &[]).await.unwrap();
        store.complete(&lease(1), &Completion::Failed { error: json!("bad") }, &json!({}), &[]).await.unwrap();
        store.dead_letter(&lease(2), &json!("503"), &json!({})).await.unwrap();
        store.reschedule(&lease(3), now + 1_000, &json!("429"), None).await.unwrap();
        store.drop_run(&c[4].id).await.unwrap();
        store.hold_connection("unused").await.unwrap();
        let counts = store.counts().await.unwrap();
        let expected = RunCounts { queued: 2, leased: 1, succeeded: 1, failed: 1, dead: 1, held: 0, dropped: 1 };
        assert_eq!(counts.runs, expected);
        assert_eq!(RunState::ALL.iter().map(|s| counts.runs.get(*s)).sum::<u64>(), 7);
    }

    #[tokio::test]
    async fn bad_input_and_bad_stored_data_are_errors_not_panics() {
        let (dir, store) = open().await;
        std::fs::write(dir.path().join("a-file"), b"").unwrap();
        let error = SqliteStore::open(&dir.path().join("a-file/flowhost.db")).await.unwrap_err();
        assert!(matches!(error, StoreError::Open { .. }), "{error}");
        assert!(error.to_string().contains("a-file"), "{error}");

        let error = store.enqueue(&[run("a"), NewRun { ordering_key: String::new(), ..run("b") }]).await.unwrap_err();
        assert!(matches!(&error, StoreError::Invalid { field, .. } if field == "runs[1].orderingKey"), "{error}");
        assert_eq!(store.counts().await.unwrap().runs.queued, 0, "all or nothing");
        assert!(store.claim("", 1, 1, 0, LEASE).await.is_err());

        let ids = store.enqueue(&[run("a")]).await.unwrap();
        sqlx::query("UPDATE runs SET event = '{not json'").execute(&mut *store.test_writer().await).await.unwrap();
        let error = store.get(&ids[0]).await.unwrap_err();
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains(&ids[0]), "{error}");
        assert!(store.list(&RunFilter::default()).await.is_err());
    }

    #[tokio::test]
    async fn a_crashed_write_connection_is_opened_again_and_a_closed_store_refuses_writes() {
        let (_dir, store) = open().await;
        // A temporary table lives only as long as its connection.
        sqlx::query("CREATE TEMP TABLE marker (x)").execute(&mut *store.test_writer().await).await.unwrap();
        store.writer.lock().await.as_mut().unwrap().crashed = true;
        store.enqueue(&[run("a")]).await.unwrap();
        let markers: i64 = sqlx::query_scalar("SELECT count(*) FROM temp.sqlite_master WHERE name = 'marker'")
            .fetch_one(&mut *store.test_writer().await)
            .await
            .unwrap();
        assert_eq!(markers, 0, "the write went through a new connection");
        assert!(!store.writer.lock().await.as_ref().unwrap().crashed);
        assert_eq!(store.counts().await.unwrap().runs.queued, 1);

        store.close().await;
        let error = store.enqueue(&[run("b")]).await.unwrap_err();
        assert!(error.to_string().contains("while enqueuing runs"), "{error}");
        let error = store.claim("w", 1, 1, now_ms(), LEASE).await.unwrap_err();
        assert!(error.to_string().contains("while claiming runs"), "{error}");
    }

    #[tokio::test]
    async fn a_background_checkpoint_copies_the_wal_into_the_database_file() {
        let (dir, store) = open().await;
        let file = dir.path().join("data/queue/flowhost.db");
        let before = std::fs::metadata(&file).unwrap().len();
        let runs: Vec<NewRun> = (0..500).map(|i| run(&format!("c{}", i % 50))).collect();
        store.enqueue(&runs).await.unwrap();
        // The writer checkpoints only past WRITER_CHECKPOINT_PAGES, far more than this: the file grows only if
        // the background checkpointer copies the pages.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(&file).unwrap().len() <= before {
            assert!(std::time::Instant::now() < deadline, "the database file never grew past {before} bytes");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        store.close().await;
        assert!(store.checkpointer_task.lock().await.is_none(), "close waits for the checkpointer");
    }

    #[tokio::test]
    async fn traces_are_stored_compressed_or_not_at_all_and_text_traces_still_read() {
        let (_dir, store) = open().await;
        let ids = store.enqueue(&[run("a"), run("b"), run("c"), run("d")]).await.unwrap();
        let [a, b, _c, d]: [StoredRun; 4] = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap().try_into().unwrap();
        let log: Vec<Value> = (0..20).map(|i| json!({"level": "info", "message": format!("sent batch {i}")})).collect();
        let trace = json!({"nodes": [{"nodeId": "send", "log": log}]});
        store.complete(&a.lease().unwrap(), &Completion::Succeeded, &trace, &[]).await.unwrap();
        store.dead_letter(&b.lease().unwrap(), &json!({"kind": "transient"}), &trace).await.unwrap();
        for id in &ids[..2] {
            assert_eq!(store.get(id).await.unwrap().unwrap().trace, Some(trace.clone()), "{id}");
        }
        // A dead letter's trace is compressed in its row; a completion's is in a trace block.
        let (kind, size): (String, i64) = sqlx::query_as("SELECT typeof(trace), length(trace) FROM runs WHERE id = ?1")
            .bind(ids[1].as_str())
            .fetch_one(&mut *store.test_writer().await)
            .await
            .unwrap();
        assert_eq!(kind, "blob");
        assert!((size as usize) < trace.to_string().len() / 2, "{size} bytes for {}", trace.to_string().len());
        let (block, size): (i64, i64) = sqlx::query_as(
            "SELECT b.id, length(b.traces) FROM runs r JOIN trace_blocks b ON b.id = r.trace_block WHERE r.id = ?1",
        )
        .bind(ids[0].as_str())
        .fetch_one(&mut *store.test_writer().await)
        .await
        .unwrap();
        assert!((size as usize) < trace.to_string().len() / 2, "block {block}: {size} bytes");

        // A trace not kept (`null`) is no trace at all, not the JSON `null`, and needs no block.
        store.complete(&d.lease().unwrap(), &Completion::Succeeded, &Value::Null, &[]).await.unwrap();
        assert_eq!(store.get(&ids[3]).await.unwrap().unwrap().trace, None);
        let stored: (String, Option<i64>) = sqlx::query_as("SELECT typeof(trace), trace_block FROM runs WHERE id = ?1")
            .bind(ids[3].as_str())
            .fetch_one(&mut *store.test_writer().await)
            .await
            .unwrap();
        assert_eq!(stored, ("null".to_string(), None));
        let (blocks,): (i64,) = sqlx::query_as("SELECT count(*) FROM trace_blocks")
            .fetch_one(&mut *store.test_writer().await)
            .await
            .unwrap();
        assert_eq!(blocks, 1);

        // A trace written as JSON text (before compression) reads as before; a damaged one is an error.
        sqlx::query("UPDATE runs SET trace = ?2 WHERE id = ?1")
            .bind(ids[2].as_str())
            .bind(r#"{"nodes": []}"#)
            .execute(&mut *store.test_writer().await)
            .await
            .unwrap();
        assert_eq!(store.get(&ids[2]).await.unwrap().unwrap().trace, Some(json!({"nodes": []})));
        let mut damaged = pack_trace(&trace).unwrap();
        damaged.truncate(damaged.len() / 2);
        sqlx::query("UPDATE runs SET trace = ?2 WHERE id = ?1")
            .bind(ids[2].as_str())
            .bind(damaged)
            .execute(&mut *store.test_writer().await)
            .await
            .unwrap();
        let error = store.get(&ids[2]).await.unwrap_err();
        assert!(matches!(&error, StoreError::Corrupt { what, .. } if what.contains("column trace")), "{error}");
    }

    #[tokio::test]
    async fn a_batch_of_completions_shares_one_trace_block_and_each_run_reads_its_own_trace() {
        let (_dir, store) = open().await;
        let keys = ["a", "b", "c", "d", "e", "f"];
        let ids = store.enqueue(&keys.map(run)).await.unwrap();
        let claimed = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
        let trace_of = |run: &StoredRun| json!({"id": run.id, "nodes": [{"nodeId": "send", "output": {"status": 202}, "log": ["sent"]}]});
        // Every run but the fifth keeps its trace; the sixth fails for good; the first is repeated in the batch.
        let mut completions: Vec<RunCompletion> = claimed
            .iter()
            .enumerate()
            .map(|(i, run)| RunCompletion {
                lease: run.lease().unwrap(),
                completion: if i == 5 { Completion::Failed { error: json!("refused") } } else { Completion::Succeeded },
                trace: (i != 4).then(|| to_raw_value(&trace_of(run)).unwrap()),
                emitted: Vec::new(),
            })
            .collect();
        completions.push(completions[0].clone());
        let results = store.complete_many(&completions).await.unwrap();
        assert!(results[..6].iter().all(Result::is_ok), "{results:?}");
        assert!(results[6].as_ref().is_err_and(StoreError::is_lease_lost), "{:?}", results[6]);

        let (blocks, slots): (i64, String) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM trace_blocks), json_group_array(trace_slot) FROM (SELECT trace_slot FROM runs ORDER BY seq)",
        )
        .fetch_one(&mut *store.test_writer().await)
        .await
        .unwrap();
        assert_eq!((blocks, slots.as_str()), (1, "[0,1,2,3,null,4]"));
        for (run, id) in claimed.iter().zip(&ids) {
            let expected = (run.id != ids[4]).then(|| trace_of(run));
            assert_eq!(store.get(id).await.unwrap().unwrap().trace, expected, "{id}");
        }
        // A listing reads each block once for all its runs; the failed run keeps its error beside its trace.
        let listed = store.list(&RunFilter::default()).await.unwrap();
        assert_eq!(listed.len(), 6);
        for run in &listed {
            let claimed = claimed.iter().find(|c| c.id == run.id).unwrap();
            assert_eq!(run.trace, (run.id != ids[4]).then(|| trace_of(claimed)), "{}", run.id);
        }
        assert_eq!(listed[0].last_error, Some(json!("refused")));

        // Retried by an operator, the failed run is claimed with its old trace and completed with a new one in a
        // new block; a dead letter then writes its trace in the row and drops the block reference.
        assert!(store.retry_now(&ids[5]).await.unwrap());
        let again = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
        assert_eq!(again[0].trace, Some(trace_of(&claimed[5])));
        let newer = json!({"attempt": 2});
        store.complete(&again[0].lease().unwrap(), &Completion::Succeeded, &newer, &[]).await.unwrap();
        assert_eq!(store.get(&ids[5]).await.unwrap().unwrap().trace, Some(newer));
        sqlx::query("UPDATE runs SET status = 'failed' WHERE id = ?1")
            .bind(ids[5].as_str())
            .execute(&mut *store.test_writer().await)
            .await
            .unwrap();
        assert!(store.retry_now(&ids[5]).await.unwrap());
        let again = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
        let dead = json!({"attempt": 3});
        store.dead_letter(&again[0].lease().unwrap(), &json!({"kind": "transient"}), &dead).await.unwrap();
        assert_eq!(store.get(&ids[5]).await.unwrap().unwrap().trace, Some(dead));

        // A damaged block or a missing one is an error naming the run, its trace and the block.
        sqlx::query("UPDATE trace_blocks SET traces = x'28b52ffd0000' WHERE id = (SELECT min(id) FROM trace_blocks)")
            .execute(&mut *store.test_writer().await)
            .await
            .unwrap();
        let error = store.get(&ids[0]).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::Corrupt { what, message } if what.contains("column trace") && message.contains("trace block")),
            "{error}"
        );
        sqlx::query("DELETE FROM trace_blocks").execute(&mut *store.test_writer().await).await.unwrap();
        let error = store.list(&RunFilter::default()).await.unwrap_err();
        assert!(error.to_string().contains("does not exist"), "{error}");
    }

    /// How many times the connection's cached statements have been prepared again (`SQLITE_STMTSTATUS_REPREPARE`).
    async fn repreparations(conn: &mut SqliteConnection) -> i32 {
        use libsqlite3_sys::{SQLITE_STMTSTATUS_REPREPARE, sqlite3_next_stmt, sqlite3_stmt_status};
        let mut handle = conn.lock_handle().await.unwrap();
        let db = handle.as_raw_handle().as_ptr();
        let mut total = 0;
        // SAFETY: the connection is locked for this call; its statements are only read.
        unsafe {
            let mut statement = sqlite3_next_stmt(db, std::ptr::null_mut());
            while !statement.is_null() {
                total += sqlite3_stmt_status(statement, SQLITE_STMTSTATUS_REPREPARE, 0);
                statement = sqlite3_next_stmt(db, statement);
            }
        }
        total
    }

    #[tokio::test]
    async fn statements_are_prepared_once_whatever_values_are_bound() {
        let (_dir, store) = open().await;
        let keys: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
        let runs: Vec<NewRun> = keys.iter().chain(&keys).map(|key| run(key)).collect();
        store.enqueue(&runs).await.unwrap();
        assert!(planner_stability(&mut *store.test_writer().await, -1).await.unwrap());
        assert!(planner_stability(&mut store.reader.acquire().await.unwrap(), -1).await.unwrap());
        // The migrations' statements were prepared again after the schema they changed; nothing since should be.
        let before = repreparations(&mut *store.test_writer().await).await;
        let lease = Duration::from_secs(30);
        // Claims and completions of different sizes, as under load: each binds other values to the same statements.
        for limit in [1, 3, 2, 5] {
            let claimed = store.claim("w", limit, 2, now_ms(), lease).await.unwrap();
            assert!(!claimed.is_empty());
            let completions: Vec<RunCompletion> =
                claimed.iter().map(|run| completing(run, Completion::Succeeded, &[])).collect();
            assert!(store.complete_many(&completions).await.unwrap().iter().all(Result::is_ok));
        }
        assert_eq!(repreparations(&mut *store.test_writer().await).await, before);

        // Why it matters: without the planner's stability guarantee, SQLite reads the claim's bound limit while
        // planning, and prepares the claim again each time the limit changes.
        assert!(!planner_stability(&mut *store.test_writer().await, 0).await.unwrap());
        for limit in [1, 3] {
            store.claim("w", limit, 1, now_ms(), lease).await.unwrap();
        }
        assert!(repreparations(&mut *store.test_writer().await).await > before);
    }

    #[tokio::test]
    async fn claim_reads_only_the_heads_of_the_keys_in_order_and_the_runs_right_behind_them() {
        let (_dir, store) = open().await;
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {CLAIM_RUNS}")))
                .bind("w")
                .bind(1_i64)
                .bind(0_i64)
                .bind(1_i64)
                .bind(1_i64)
                .fetch_all(&mut *store.test_writer().await)
                .await
                .unwrap();
        let details: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
        // Heads in `seq` order straight from their index: no sort of all candidates.
        assert!(details.contains(&"SCAN r USING INDEX runs_claimable"), "{details:#?}");
        // The runs behind each head: a range of its key's open runs.
        assert!(details.contains(&"SEARCH x USING INDEX runs_open_by_key (ordering_key=? AND seq>?)"), "{details:#?}");
        // `runs` itself is only ever searched; the only scans are of the heads' index and of the small
        // intermediate results (the claimed heads and the runs behind them, at most `limit * per_key`).
        let scans: Vec<&&str> = details.iter().filter(|d| d.starts_with("SCAN")).collect();
        assert!(
            scans.iter().all(|d| d.contains("runs_claimable")
                || d.contains("subquery")
                || ["SCAN h", "SCAN heads", "SCAN chosen"].contains(d)),
            "{details:#?}"
        );
    }

    #[tokio::test]
    async fn the_batch_lookups_and_head_updates_walk_the_batch_and_probe_an_index() {
        let (_dir, store) = open().await;
        // The index each statement must search `runs` with.
        let expected = [
            (KNOWN_DEDUP_KEYS, "sqlite_autoindex_runs_2 (flow_id=? AND dedup_key=?)"),
            (INSERT_RUNS, "runs_head_by_key (ordering_key=?)"),
            (DEMOTE_STALE_HEADS, "runs_head_by_key (ordering_key=?)"),
            (PROMOTE_HEADS, "INTEGER PRIMARY KEY (rowid=?)"),
            (COMPLETE_RUNS, "sqlite_autoindex_runs_1 (id=?)"),
        ];
        for (sql, index) in expected {
            let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .bind("[]")
                .bind(0_i64)
                .fetch_all(&mut *store.test_writer().await)
                .await
                .unwrap();
            let details: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
            // The batch (json_each) is the outer loop; `runs` is only ever searched, never scanned.
            assert!(
                details.iter().all(|d| !d.starts_with("SCAN") || d.contains("VIRTUAL TABLE")),
                "{sql}: {details:#?}"
            );
            assert!(details.iter().any(|d| d.starts_with("SEARCH") && d.contains(index)), "{sql}: {details:#?}");
        }
    }

    #[tokio::test]
    async fn a_large_batch_keeps_its_order_and_de_duplicates_within_itself() {
        let (_dir, store) = open().await;
        let mut runs: Vec<NewRun> = (0..600).map(|i| run(&format!("c{i}"))).collect();
        runs[10].dedup_key = Some("evt-10".into());
        runs[500].dedup_key = Some("evt-10".into());
        runs[20].connections = vec!["mparticle".into(), "other".into(), "mparticle".into()];
        let ids = store.enqueue(&runs).await.unwrap();
        assert_eq!(ids.len(), 600);
        assert_eq!(ids[500], ids[10], "the same dedup key twice in one batch is one run");
        let mut last = 0;
        for (i, id) in ids.iter().enumerate().filter(|(i, _)| *i != 500) {
            let stored = store.get(id).await.unwrap().unwrap();
            assert_eq!(stored.event["customer"], json!(format!("c{i}")));
            assert!(stored.seq > last, "seq follows the order of the batch");
            last = stored.seq;
        }
        assert_eq!(store.counts().await.unwrap().runs.queued, 599);
        assert_eq!(store.get(&ids[20]).await.unwrap().unwrap().connections, ["mparticle", "other"]);
        let on_other = RunFilter { connection: Some("other".into()), ..Default::default() };
        assert_eq!(store.list(&on_other).await.unwrap().len(), 1);
        let on_mparticle = RunFilter { connection: Some("mparticle".into()), limit: 1000, ..Default::default() };
        assert_eq!(store.list(&on_mparticle).await.unwrap().len(), 599);
    }

    /// Runs whose `head` mark is wrong: a key's head must be exactly its smallest open run.
    async fn misplaced_heads(store: &SqliteStore) -> Vec<(i64, String, String, i64)> {
        sqlx::query_as(concat!(
            "SELECT seq, ordering_key, status, head FROM runs r WHERE head IS NOT (status IN ",
            open_statuses!(),
            " AND seq = (SELECT MIN(o.seq) FROM runs o WHERE o.ordering_key = r.ordering_key AND o.status IN ",
            open_statuses!(),
            "))"
        ))
        .fetch_all(&mut *store.test_writer().await)
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn what_was_accepted_is_synced_before_returning_and_lease_bookkeeping_is_not() {
        let (_dir, store) = open().await;
        // Fsyncs of the WAL during each call: one for each call that accepted something (calls run one at a
        // time, so none shares another's), none for lease bookkeeping, whose commits reach the disk with the
        // next sync or checkpoint.
        const SYNCED: u64 = 1;
        const DEFERRED: u64 = 0;
        let message = InboundMessage {
            connection: "mp".into(),
            source: "mparticle.webhook".into(),
            external_id: None,
            body: json!({"events": []}),
        };
        let mut seen = Vec::new();
        let mut syncs = store.wal.syncs();
        let mut synced = |call: &'static str, expected: u64| {
            let now = store.wal.syncs();
            seen.push((call, now - syncs, expected));
            syncs = now;
        };

        store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
        synced("claim", DEFERRED);
        store.enqueue(&[run("a"), run("b"), run("c")]).await.unwrap();
        synced("enqueue", SYNCED);
        let [a, b, c]: [StoredRun; 3] = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap().try_into().unwrap();
        synced("claim (its runs' accept already durable)", DEFERRED);
        let (a, b, c) = (a.lease().unwrap(), b.lease().unwrap(), c.lease().unwrap());
        store.hold_connection("crm").await.unwrap();
        synced("hold_connection", SYNCED);
        let held = store.record_inbound(&InboundMessage { connection: "crm".into(), ..message.clone() }).await.unwrap();
        synced("record_inbound", SYNCED);
        assert!(store.retry_inbound(&held).await.unwrap());
        synced("retry_inbound", SYNCED);
        store.checkpoint(&a, &json!({}), add_ms(now_ms(), LEASE)).await.unwrap();
        synced("checkpoint", DEFERRED);
        store.release_connection("crm").await.unwrap();
        synced("release_connection", SYNCED);
        store.extend_lease(&a, add_ms(now_ms(), LEASE)).await.unwrap();
        synced("extend_lease", DEFERRED);
        let inbound = store.record_inbound(&message).await.unwrap();
        synced("record_inbound", SYNCED);
        store.complete(&a, &Completion::Failed { error: json!({}) }, &json!({}), &[]).await.unwrap();
        synced("complete", DEFERRED);
        store.retry_now(&a.id).await.unwrap();
        synced("retry_now", SYNCED);
        store.reschedule(&b, now_ms(), &json!({}), None).await.unwrap();
        synced("reschedule", DEFERRED);
        store.drop_run(&b.id).await.unwrap();
        synced("drop_run", SYNCED);
        store.dead_letter(&c, &json!({}), &json!({})).await.unwrap();
        synced("dead_letter", DEFERRED);
        let [_held, claimed]: [StoredInbound; 2] =
            store.claim_inbound("in", 10, now_ms(), LEASE).await.unwrap().try_into().unwrap();
        synced("claim_inbound", DEFERRED);
        store.enqueue(&[run("d")]).await.unwrap();
        synced("enqueue", SYNCED);
        let processed = InboundOutcome::Processed { unmatched: None };
        store.complete_inbound(&claimed.lease().unwrap(), &processed, &[run("e")]).await.unwrap();
        synced("complete_inbound", DEFERRED);
        // Calls that change nothing have nothing to make durable.
        assert!(!store.drop_run(&b.id).await.unwrap());
        synced("drop_run of a dropped run", DEFERRED);
        assert!(!store.retry_inbound(&inbound).await.unwrap());
        synced("retry_inbound of a message being processed", DEFERRED);

        let wrong: Vec<_> = seen.iter().filter(|(_, got, expected)| got != expected).collect();
        assert!(wrong.is_empty(), "calls with the wrong number of WAL syncs (call, got, expected): {wrong:?}");
        // No commit fsyncs by itself: that is what lets the next writer go on while an accept syncs.
        let synchronous: i64 =
            sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut *store.test_writer().await).await.unwrap();
        assert_eq!(synchronous, 1, "the write connection commits with synchronous=NORMAL");
    }

    #[tokio::test]
    async fn a_claim_returns_once_the_accepts_it_can_see_are_durable() {
        let (_dir, store) = open().await;
        store.enqueue(&[run("a"), run("b")]).await.unwrap();
        let before = store.wal.syncs();
        // An accept that committed and has not synced yet (its caller is still on its way to the sync).
        let pending = store.wal.ticket();
        assert_eq!(store.claim("w", 1, 1, now_ms(), LEASE).await.unwrap().len(), 1);
        assert_eq!(store.wal.syncs(), before + 1, "the claim synced the WAL before handing its run out");
        store.wal.sync(pending, "test").await.unwrap();
        assert_eq!(store.wal.syncs(), before + 1, "and the accept then found itself durable");
        assert_eq!(store.claim("w", 1, 1, now_ms(), LEASE).await.unwrap().len(), 1);
        assert_eq!(store.wal.syncs(), before + 1, "nothing new to make durable");

        // Inbound messages the same way.
        let message = InboundMessage {
            connection: "mp".into(),
            source: "mparticle.webhook".into(),
            external_id: Some("m-1".into()),
            body: json!({"events": []}),
        };
        let id = store.record_inbound(&message).await.unwrap();
        let pending = store.wal.ticket();
        let before = store.wal.syncs();
        assert_eq!(store.record_inbound(&message).await.unwrap(), id, "a repeat returns the recorded message");
        assert_eq!(store.wal.syncs(), before + 1, "once what it found is durable");
        assert!(store.wal.sync(pending, "test").await.is_ok());
        let pending = store.wal.ticket();
        assert_eq!(store.claim_inbound("in", 10, now_ms(), LEASE).await.unwrap().len(), 1);
        assert_eq!(store.wal.syncs(), before + 2);
        store.wal.sync(pending, "test").await.unwrap();
        assert_eq!(store.wal.syncs(), before + 2);
    }

    #[tokio::test]
    async fn every_operation_keeps_each_keys_head_on_its_first_open_run() {
        let (_dir, store) = open().await;
        // A fixed pseudo-random walk over every call that opens, closes or reopens runs.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let keys = ["a", "b", "c", "d"];
        let mut leased: Vec<StoredRun> = Vec::new();
        let mut ids: Vec<String> = Vec::new();
        for step in 0..400 {
            let what = next(9);
            match what {
                0 | 1 => {
                    let batch: Vec<NewRun> = (0..next(6))
                        .map(|i| {
                            let mut new = run_for(keys[next(keys.len())], &[["mparticle", "crm"][next(2)]]);
                            new.dedup_key = Some(format!("evt-{}", (step * 6 + i) % 350));
                            new
                        })
                        .collect();
                    ids.extend(store.enqueue(&batch).await.unwrap());
                }
                2 => leased.extend(store.claim("w", 1 + next(3), 1 + next(3), now_ms(), LEASE).await.unwrap()),
                3 | 4 if !leased.is_empty() => {
                    let run = leased.swap_remove(next(leased.len()));
                    let completion = if what == 3 {
                        Completion::Succeeded
                    } else {
                        Completion::Failed { error: json!({"kind": "invalid-input"}) }
                    };
                    store.complete(&run.lease().unwrap(), &completion, &json!({}), &[]).await.unwrap();
                }
                5 if !leased.is_empty() => {
                    let run = leased.swap_remove(next(leased.len()));
                    let lease = run.lease().unwrap();
                    match next(3) {
                        0 => store.dead_letter(&lease, &json!({}), &json!({})).await.unwrap(),
                        1 => drop(store.reschedule(&lease, now_ms(), &json!({}), None).await.unwrap()),
                        _ => store.release(&[lease]).await.unwrap(),
                    }
                }
                6 if !ids.is_empty() => {
                    let id = &ids[next(ids.len())];
                    // Dropping or retrying a leased run invalidates its lease; forget it.
                    leased.retain(|run| &run.id != id);
                    if next(2) == 0 {
                        store.retry_now(id).await.unwrap();
                    } else {
                        store.drop_run(id).await.unwrap();
                    }
                }
                7 => {
                    store.hold_connection("crm").await.unwrap();
                }
                8 => {
                    store.release_connection("crm").await.unwrap();
                }
                _ => {}
            }
            assert_eq!(misplaced_heads(&store).await, [], "after step {step} ({what})");
        }
        let counts = store.counts().await.unwrap().runs;
        assert!(counts.succeeded > 0 && counts.failed > 0 && counts.dead > 0 && counts.dropped > 0, "{counts:?}");
    }
}
