//! Tests of what only the SQLite store can show: its files (a reopen after a crash, the WAL and its syncs, the
//! checkpointer), its tables (flow connections, trace blocks, each key's head mark), its query plans and prepared
//! statements, and its errors on a bad path or damaged data. What any store must do is the conformance suite's
//! ([`crate::store::conformance`]), which the SQLite store runs here, each behaviour as a test of its own
//! (`store::sqlite::tests::conformance::…`).

use super::leases::COMPLETE_RUNS;
use super::retention::{
    DELETE_OUTBOX_FRONT, DELETE_PROCESSED_INBOUND, DELETE_RUNS, DELETE_RUNS_OUTBOX, DELETE_UNUSED_TRACE_BLOCKS,
    FINISHED_RUNS,
};
use super::runs::{CLAIM_RUNS, DEMOTE_STALE_HEADS, INSERT_RUNS, KNOWN_DEDUP_KEYS, PROMOTE_HEADS};
use super::testing::corrupt_tail_pages;
use super::traces::pack_trace;
use super::*;
use crate::store::conformance::{run, run_for};
use crate::store::{add_ms, now_ms};
use serde_json::json;
use serde_json::value::to_raw_value;
use sqlx::AssertSqlSafe;
use std::sync::Arc;

crate::store_conformance_tests!(conformance, async {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("flowhost.db")).await.unwrap();
    (Arc::new(store) as Arc<dyn Store>, dir)
});

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

/// The completion of a claimed run, with a small trace naming it.
fn completing(run: &StoredRun, completion: Completion, emitted: &[NewOutboxEvent]) -> RunCompletion {
    RunCompletion {
        lease: run.lease().unwrap(),
        completion,
        trace: to_raw_value(&json!({"run": run.id})).ok(),
        emitted: emitted.to_vec(),
    }
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
    assert_eq!(first.connections, vec!["cdp".to_string()]);
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
    other_flow.flow_id = "reward-to-cdp".into();
    store.enqueue(&[run("a"), run("b"), other_flow]).await.unwrap();
    let expected = [("cdp", "loyalty-to-cdp"), ("other", "reward-to-cdp")]
        .map(|(connection, flow)| (connection.to_string(), flow.to_string()));
    assert_eq!(pairs().await, expected);

    // A pair written by a transaction that rolled back is not taken as stored: the stale settlement of an
    // inbound message enqueues nothing, and the next enqueue of that pair writes it.
    store
        .record_inbound(&InboundMessage {
            connection: "mp".into(),
            source: "cdp.webhook".into(),
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
    for (id, key, connections) in [("r1", "a", r#"["cdp","other"]"#), ("r2", "b", r#"["braze"]"#)] {
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
    assert_eq!(store.hold_connection("cdp").await.unwrap().runs, 1);
    assert_eq!(store.get("r1").await.unwrap().unwrap().status, RunState::Held);
    assert_eq!(store.get("r2").await.unwrap().unwrap().status, RunState::Queued);
    assert_eq!(store.release_connection("cdp").await.unwrap().runs, 1);
}

#[tokio::test]
async fn a_bad_path_and_bad_stored_data_are_errors_not_panics() {
    let (dir, store) = open().await;
    std::fs::write(dir.path().join("a-file"), b"").unwrap();
    let error = SqliteStore::open(&dir.path().join("a-file/flowhost.db")).await.unwrap_err();
    assert!(matches!(error, StoreError::Open { .. }), "{error}");
    assert!(error.to_string().contains("a-file"), "{error}");

    let ids = store.enqueue(&[run("a")]).await.unwrap();
    sqlx::query("UPDATE runs SET event = '{not json'").execute(&mut *store.test_writer().await).await.unwrap();
    let error = store.get(&ids[0]).await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
    assert!(error.to_string().contains(&ids[0]), "{error}");
    assert!(store.list(&RunFilter::default()).await.is_err());
}

#[tokio::test]
async fn a_lost_lease_is_reported_with_who_claimed_the_run_since() {
    let (_dir, store) = open().await;
    store.enqueue(&[run("a")]).await.unwrap();
    let now = now_ms();
    let old = store.claim("w1", 1, 1, now, Duration::from_secs(1)).await.unwrap().remove(0).lease().unwrap();
    store.claim("w2", 1, 1, now + 1_000, LEASE).await.unwrap();
    let lost = store.extend_lease(&old, now + 5_000).await.unwrap_err();
    assert_eq!(
        lost.to_string(),
        format!(
            "run {}: worker `w1` no longer holds its lease (it is leased again, by `w2` (claim 2)); its work must stop",
            old.id
        )
    );
    assert!(store.drop_run(&old.id).await.unwrap());
    let lost = store.extend_lease(&old, now + 5_000).await.unwrap_err();
    assert!(lost.to_string().contains("(it is dropped)"), "{lost}");
}

/// The conformance behaviours that move a key's runs through many states, each followed by a check of the head
/// marks that claims read (SQLite's own bookkeeping, so not in the suite).
#[tokio::test]
async fn the_conformance_behaviours_leave_each_keys_head_on_its_first_open_run() {
    macro_rules! then_check_heads {
        ($($behaviour:ident),* $(,)?) => {$(
            let (_dir, store) = open().await;
            let store = Arc::new(store);
            crate::store::conformance::$behaviour(store.clone()).await;
            assert_eq!(misplaced_heads(&store).await, [], stringify!($behaviour));
        )*};
    }
    then_check_heads!(
        claims_in_arrival_order_and_a_waiting_resend_holds_only_its_key,
        a_claim_takes_a_keys_due_runs_in_order_up_to_per_key_and_every_keys_first_run_first,
        a_claim_stops_each_key_at_a_run_that_is_not_due_and_released_runs_wait_behind_it,
        a_resend_is_not_claimable_before_its_time_and_keeps_or_replaces_the_checkpoint,
        a_dead_run_holds_its_key_until_retried_or_dropped,
        operators_retry_and_drop_runs_only_in_the_states_the_contract_names,
        a_failed_run_retried_by_the_operator_goes_before_the_later_runs_of_its_key,
        holding_a_connection_keeps_its_runs_and_releasing_sends_them,
        inbound_messages_are_recorded_claimed_in_order_and_settled_with_their_runs,
    );
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
    let (blocks,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM trace_blocks").fetch_one(&mut *store.test_writer().await).await.unwrap();
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
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {CLAIM_RUNS}")))
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
        assert!(details.iter().all(|d| !d.starts_with("SCAN") || d.contains("VIRTUAL TABLE")), "{sql}: {details:#?}");
        assert!(details.iter().any(|d| d.starts_with("SEARCH") && d.contains(index)), "{sql}: {details:#?}");
    }
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
        source: "cdp.webhook".into(),
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
        source: "cdp.webhook".into(),
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
                        let mut new = run_for(keys[next(keys.len())], &[["cdp", "crm"][next(2)]]);
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

#[tokio::test]
async fn a_purge_finds_what_it_deletes_through_indexes_and_never_scans_a_table() {
    let (_dir, store) = open().await;
    let expected = [
        (FINISHED_RUNS, "runs_due (status=? AND next_attempt_at<?)"),
        (DELETE_RUNS_OUTBOX, "outbox_by_run (run_id=?)"),
        (DELETE_RUNS, "INTEGER PRIMARY KEY (rowid=?)"),
        (DELETE_UNUSED_TRACE_BLOCKS, "runs_by_trace_block (trace_block=?)"),
        (DELETE_PROCESSED_INBOUND, "inbound_due (status=? AND next_attempt_at<?)"),
        (DELETE_OUTBOX_FRONT, "INTEGER PRIMARY KEY (rowid=?)"),
    ];
    for (sql, index) in expected {
        let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
            .bind(0_i64)
            .bind(10_i64)
            .fetch_all(&mut *store.test_writer().await)
            .await
            .unwrap();
        let details: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
        // Only the batch (json_each), a subquery's own rows, and the outbox's front in `seq` order are scanned.
        let scans_a_table = |d: &&str| {
            d.starts_with("SCAN")
                && !d.contains("VIRTUAL TABLE")
                && !d.starts_with("SCAN (subquery")
                && *d != "SCAN outbox"
        };
        assert!(!details.iter().any(scans_a_table), "{sql}: {details:#?}");
        assert!(details.iter().any(|d| d.starts_with("SEARCH") && d.contains(index)), "{sql}: {details:#?}");
    }
}

async fn trace_blocks(store: &SqliteStore) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM trace_blocks").fetch_one(&mut *store.test_writer().await).await.unwrap()
}

/// Trace blocks that no run points at.
async fn unused_trace_blocks(store: &SqliteStore) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM trace_blocks b WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.trace_block = b.id)",
    )
    .fetch_one(&mut *store.test_writer().await)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_purge_deletes_a_trace_block_with_the_last_run_that_points_at_it_and_keeps_heads_in_place() {
    let (_dir, store) = open().await;
    let keys: Vec<String> = (0..12).map(|i| format!("c{}", i % 4)).collect();
    let ids = store.enqueue(&keys.iter().map(|key| run(key)).collect::<Vec<_>>()).await.unwrap();
    // Three batches of completions, each with its own trace block; one run of the first is then retried.
    for _ in 0..3 {
        let claimed = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
        let completions: Vec<RunCompletion> =
            claimed.iter().map(|run| completing(run, Completion::Failed { error: json!("refused") }, &[])).collect();
        assert!(store.complete_many(&completions).await.unwrap().iter().all(Result::is_ok));
    }
    assert!(store.retry_now(&ids[0]).await.unwrap());
    assert_eq!(trace_blocks(&store).await, 3);

    let cutoff = now_ms() + 1;
    while now_ms() <= cutoff {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let purged = store.purge(cutoff, 100).await.unwrap();
    assert_eq!(purged.runs, 11);
    assert_eq!(trace_blocks(&store).await, 1, "the retried run's block is kept");
    assert_eq!(unused_trace_blocks(&store).await, 0);
    assert!(misplaced_heads(&store).await.is_empty());
    let claimed = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].trace, Some(json!({"run": ids[0]})), "its trace still reads");
    store.complete(&claimed[0].lease().unwrap(), &Completion::Succeeded, &json!({"again": true}), &[]).await.unwrap();
    assert_eq!(trace_blocks(&store).await, 1, "its old block went when it moved to a new one");
    let cutoff = now_ms() + 1;
    while now_ms() <= cutoff {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(store.purge(cutoff, 100).await.unwrap().runs, 1);
    assert_eq!(trace_blocks(&store).await, 0, "no trace is left behind");
}

#[tokio::test]
async fn listings_and_counts_read_a_flows_open_runs_by_their_states_and_a_customers_by_customer() {
    use super::counts::{DEAD_BY_CUSTOMER, DEAD_BY_FLOW, count_query};
    use super::runs::{SUMMARY_COLUMNS, listing};
    let (_dir, store) = open().await;
    let sql = |query: sqlx::QueryBuilder<Sqlite>| query.sql().as_str().to_string();
    let list = |filter: RunFilter| sql(listing(SUMMARY_COLUMNS, &filter));
    let count = |filter: RunFilter| sql(count_query(&filter));
    let flow = Some("f".to_string());
    let customer = Some("c".to_string());
    let dead = vec![RunState::Dead];
    let failures = vec![RunState::Failed, RunState::Dead];
    let queue = vec![RunState::Queued, RunState::Leased, RunState::Held, RunState::Dead];
    let filter = RunFilter::default;
    // (statement, its binds, the index it must search `runs` by)
    let expected = [
        // The queue, or failures: by state, whatever their number, sorting only their `seq`s.
        (list(RunFilter { statuses: failures, ..filter() }), 3, "COVERING INDEX runs_due (status=?)"),
        // A flow's dead runs, or its queue, are few among its history: by state too.
        (count(RunFilter { flow_id: flow.clone(), statuses: dead.clone(), ..filter() }), 2, "runs_due (status=?)"),
        (list(RunFilter { flow_id: flow.clone(), statuses: queue.clone(), ..filter() }), 6, "runs_due (status=?)"),
        (
            count(RunFilter { connection: Some("x".into()), statuses: queue.clone(), ..filter() }),
            6,
            "runs_due (status=?)",
        ),
        // A flow's history newest first: by flow, stopping after a page.
        (list(RunFilter { flow_id: flow, ..filter() }), 2, "runs_by_flow (flow_id=?)"),
        // A customer's runs, in any state, are few: by customer.
        (
            list(RunFilter { customer: customer.clone(), statuses: queue, ..filter() }),
            6,
            "runs_by_customer (customer=?)",
        ),
        (count(RunFilter { customer, statuses: dead, ..filter() }), 2, "runs_by_customer (customer=?)"),
        (DEAD_BY_CUSTOMER.to_string(), 1, "runs_due (status=?)"),
        (DEAD_BY_FLOW.to_string(), 1, "runs_due (status=?)"),
    ];
    for (sql, binds, index) in expected {
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut query = sqlx::query_as::<_, (i64, i64, i64, String)>(AssertSqlSafe(explain));
        for _ in 0..binds {
            query = query.bind("x");
        }
        let plan = query.fetch_all(&mut *store.test_writer().await).await.unwrap();
        let details: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
        assert!(!details.iter().any(|d| d.starts_with("SCAN runs")), "{sql}: {details:#?}");
        assert!(details.iter().any(|d| d.starts_with("SEARCH runs") && d.contains(index)), "{sql}: {details:#?}");
    }
}

/// A store file with a few thousand runs in it, closed (its WAL copied into the file and removed).
async fn filled_store_file(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("flowhost.db");
    let store = SqliteStore::open(&path).await.unwrap();
    for batch in 0..20 {
        store.enqueue(&(0..200).map(|i| run(&format!("customer-{batch}-{i}"))).collect::<Vec<_>>()).await.unwrap();
    }
    store.close().await;
    let wal = std::fs::metadata(dir.path().join("flowhost.db-wal")).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal, 0, "the WAL was not copied into the file at close");
    path
}

#[tokio::test]
async fn a_store_file_with_corrupted_pages_refuses_to_open_naming_the_file_and_what_quick_check_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = filled_store_file(&dir).await;
    assert!(corrupt_tail_pages(&path) > 10);
    let damaged = std::fs::read(&path).unwrap();
    for _ in 0..2 {
        let error = SqliteStore::open(&path).await.unwrap_err();
        let StoreError::Open { path: named, message } = &error else { panic!("not an open error: {error}") };
        assert_eq!(named, &path.display().to_string());
        let (_, found) = message.split_once("PRAGMA quick_check found: ").unwrap_or_else(|| panic!("{message}"));
        // quick_check's own words, e.g. "Page 40: btree page has invalid type" or "database disk image is malformed".
        assert!(found.len() > 20 && !found.starts_with('.'), "{message}");
        assert!(error.to_string().contains("flowhost.db"), "{error}");
        // Refusing wrote nothing over the damage.
        assert!(std::fs::read(&path).unwrap() == damaged, "opening changed the damaged file");
    }

    // Garbage over the header: not a database at all; an error naming the file too.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..100].fill(0x5a);
    std::fs::write(&path, &bytes).unwrap();
    let error = SqliteStore::open(&path).await.unwrap_err();
    assert!(matches!(error, StoreError::Open { .. }) && error.to_string().contains("flowhost.db"), "{error}");
}

#[tokio::test]
async fn a_running_store_whose_file_is_damaged_fails_its_next_integrity_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = filled_store_file(&dir).await;
    let store = SqliteStore::open(&path).await.unwrap();
    let healthy = store.check_integrity().await.unwrap();
    assert!(healthy.ok(), "{healthy:?}");
    corrupt_tail_pages(&path);
    let damaged = store.check_integrity().await.unwrap();
    assert_eq!(damaged.check, "PRAGMA quick_check");
    assert!(!damaged.ok(), "the damage went unseen");
    assert!(damaged.problems.len() <= 10, "{damaged:?}");
    store.close().await;
}
