//! Tests of the SQLite store.

use super::leases::COMPLETE_RUNS;
use super::runs::{CLAIM_RUNS, DEMOTE_STALE_HEADS, INSERT_RUNS, KNOWN_DEDUP_KEYS, PROMOTE_HEADS};
use super::traces::pack_trace;
use super::*;
use crate::store::{InboundState, RunCounts, add_ms, now_ms};
use serde_json::json;
use serde_json::value::to_raw_value;
use sqlx::AssertSqlSafe;
use std::collections::{HashMap, HashSet};
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
    assert_eq!(first.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), [&ids[0], &ids[1], &ids[3]].map(|s| s.clone()));
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
        .list(&RunFilter { connection: Some("mparticle".into()), statuses: vec![RunState::Held], ..Default::default() })
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
    let stale =
        store.complete_inbound(&lease, &InboundOutcome::Processed { unmatched: None }, &[run("z")]).await.unwrap_err();
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
    assert_eq!(page.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [&ids[6], &ids[4], &ids[3]].map(String::as_str));
    let next = store.list(&RunFilter { before_seq: Some(page[2].seq), ..alice.clone() }).await.unwrap();
    assert_eq!(next.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [&ids[2], &ids[1], &ids[0]].map(String::as_str));
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
