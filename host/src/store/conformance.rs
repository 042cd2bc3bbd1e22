//! The [`Store`] contract as a suite of tests that every backend runs, in the manner of River's `riverdrivertest`.
//!
//! What it proves: a backend that passes it keeps the promises of the [store's documentation](super), so the
//! delivery service can run on it unchanged. Each behaviour is a `pub async fn` here that takes a fresh, empty
//! store and asserts through the [`Store`] trait alone: enqueue and de-duplication by dedup key; the ordering rule
//! (a key's later runs wait while an earlier one is leased, waiting for its resend, dead or held, and other keys go
//! on); claims of several runs of a key; leases and fencing (a stale lease changes nothing, an expired lease is
//! taken over after a crash); resends; dead letters; operators' retries and drops; completions and their outbox
//! events, one by one or in a batch; traces; held connections; the inbound message queue; listings, paging and
//! counts; bad input refused with the field named. Nothing here looks at how a backend stores its data: what only
//! one backend can check (a query plan, a file on disk, a reopen after a crash) stays in that backend's own tests.
//!
//! # Running it for a backend
//!
//! [`store_conformance_tests!`](crate::store_conformance_tests) expands to a module with one `#[tokio::test]` per
//! behaviour, so each behaviour passes or fails on its own, for each backend. It takes the module's name and an
//! `async` block that returns a fresh, empty store and a guard that keeps its data alive until the test ends (a
//! temporary directory, a throwaway database):
//!
//! ```ignore
//! flowhost::store_conformance_tests!(postgres, async {
//!     let database = TestDatabase::create().await; // dropped after the test
//!     let store: std::sync::Arc<dyn flowhost::store::Store> = std::sync::Arc::new(database.store().await);
//!     (store, database)
//! });
//! ```
//!
//! The SQLite store runs it this way in `store/sqlite/tests.rs`, the PostgreSQL store in `store/postgres/tests.rs`
//! (each test on a fresh database of a throwaway cluster, or skipped when there is no server: see [`FreshStore`]). The suite is compiled for flowhost's own tests;
//! another crate turns on flowhost's `store-conformance` feature (in its `dev-dependencies`) and needs `tokio` with
//! its `macros` and `rt-multi-thread` features. The behaviours pass their own clock to `claim` (`now_ms()` and
//! times after it), as the delivery service does.

use super::{
    BulkAction, Completion, ConnectionHold, Enqueued, HeldBehind, HeldBy, InboundFilter, InboundMessage,
    InboundOutcome, InboundState, Lease, NewOutboxEvent, NewRun, Purged, RunCompletion, RunCounts, RunFilter, RunState,
    RunSummary, Store, StoreError, StoredInbound, StoredRun, now_ms,
};
use serde_json::value::to_raw_value;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Expands to a module `$backend` with one `#[tokio::test]` per behaviour of the
/// [conformance suite](crate::store::conformance), each on a store of its own from `$fresh_store`: an expression
/// (an `async` block) whose output is `(Arc<dyn Store>, guard)`, the guard kept alive until the test ends, or an
/// `Option` of that, `None` to skip the test (having said why: see [`FreshStore`]). Names in `$fresh_store` are
/// resolved in the module that invokes the macro.
#[macro_export]
macro_rules! store_conformance_tests {
    ($backend:ident, $fresh_store:expr $(,)?) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;

            $crate::store_conformance_tests!(@behaviours $fresh_store;
                enqueue_returns_ids_in_order_and_de_duplicates_by_dedup_key,
                a_large_batch_keeps_its_order_and_de_duplicates_within_itself,
                claims_in_arrival_order_and_a_waiting_resend_holds_only_its_key,
                a_claim_takes_a_keys_due_runs_in_order_up_to_per_key_and_every_keys_first_run_first,
                a_claim_stops_each_key_at_a_run_that_is_not_due_and_released_runs_wait_behind_it,
                a_claimed_keys_runs_whose_lease_expired_are_claimed_again_together,
                a_lease_holder_keeps_its_run_while_it_checkpoints_or_extends_its_lease,
                an_expired_lease_is_claimed_again_and_the_old_worker_is_fenced_off,
                a_resend_is_not_claimable_before_its_time_and_keeps_or_replaces_the_checkpoint,
                a_dead_run_holds_its_key_until_retried_or_dropped,
                runs_waiting_behind_a_dead_run_or_a_resend_name_it_and_are_counted,
                an_operator_retries_or_drops_every_dead_run_of_a_customer_or_a_flow_at_once,
                operators_retry_and_drop_runs_only_in_the_states_the_contract_names,
                a_failed_run_retried_by_the_operator_goes_before_the_later_runs_of_its_key,
                completing_writes_the_run_and_its_outbox_events_together,
                completions_share_a_transaction_and_a_lost_lease_fails_only_its_own,
                a_lease_completed_twice_in_one_batch_counts_once_and_keeps_its_failure,
                traces_read_back_as_kept_and_a_trace_not_kept_is_none,
                the_outbox_reads_events_after_a_seq_oldest_first_up_to_a_limit,
                holding_a_connection_keeps_its_runs_and_releasing_sends_them,
                holds_are_idempotent_and_held_connections_are_listed_sorted,
                inbound_messages_are_recorded_claimed_in_order_and_settled_with_their_runs,
                an_expired_inbound_lease_is_claimed_again_and_the_old_worker_is_fenced_off,
                inbound_messages_list_newest_first_by_connection_and_state,
                listing_filters_and_pages_newest_first,
                counts_every_state,
                bad_input_is_an_error_naming_the_field_and_changes_nothing,
                purge_deletes_finished_runs_older_than_the_cutoff_and_never_open_or_dead_ones,
                purge_keeps_each_keys_order_and_a_kept_runs_trace,
                purge_deletes_in_batches_until_nothing_is_left,
                purge_deletes_processed_inbound_messages_and_keeps_the_others,
                purge_deletes_the_outbox_from_its_front_and_a_purged_runs_events_with_it,
                summaries_are_the_listed_runs_without_their_event_checkpoint_and_trace,
                runs_are_counted_per_state_by_customer_flow_connection_and_time,
                dead_runs_are_counted_by_customer_and_by_flow_largest_first,
                a_store_in_use_passes_its_integrity_check_and_says_what_it_checked,
            );

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_claimers_never_get_the_same_run_and_keep_key_order() {
                let Some((store, _guard)) = $crate::store::conformance::FreshStore::fresh($fresh_store.await) else {
                    return;
                };
                $crate::store::conformance::concurrent_claimers_never_get_the_same_run_and_keep_key_order(store).await;
            }
        }
    };
    (@behaviours $fresh_store:expr; $($behaviour:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $behaviour() {
                let Some((store, _guard)) = $crate::store::conformance::FreshStore::fresh($fresh_store.await) else {
                    return;
                };
                $crate::store::conformance::$behaviour(store).await;
            }
        )*
    };
}

/// What a backend's `$fresh_store` gives [`store_conformance_tests!`](crate::store_conformance_tests): a store and
/// the guard of its data, or an `Option` of them for a backend whose tests need a server that may be missing
/// (`None`: the test is skipped; the backend says so itself, and fails instead where the tests must run).
pub trait FreshStore {
    type Guard;
    fn fresh(self) -> Option<(Arc<dyn Store>, Self::Guard)>;
}

impl<G> FreshStore for (Arc<dyn Store>, G) {
    type Guard = G;
    fn fresh(self) -> Option<(Arc<dyn Store>, G)> {
        Some(self)
    }
}

impl<G> FreshStore for Option<(Arc<dyn Store>, G)> {
    type Guard = G;
    fn fresh(self) -> Option<(Arc<dyn Store>, G)> {
        self
    }
}

/// A lease long enough that it never expires during a behaviour unless the behaviour's clock says so.
const LEASE: Duration = Duration::from_secs(30);

/// A run of customer `key` that uses `connections` (for a backend's own tests too).
pub fn run_for(key: &str, connections: &[&str]) -> NewRun {
    NewRun {
        flow_id: "loyalty-to-cdp".into(),
        flow_version: "1.0.0".into(),
        connections: connections.iter().map(|c| c.to_string()).collect(),
        ordering_key: format!("loyalty-to-cdp/{key}"),
        customer: Some(key.to_string()),
        event: json!({"event": "point_add", "customer": key}),
        dedup_key: None,
    }
}

/// A run of customer `key` that uses the connection `cdp`.
pub fn run(key: &str) -> NewRun {
    run_for(key, &["cdp"])
}

fn message(connection: &str, external_id: Option<&str>) -> InboundMessage {
    InboundMessage {
        connection: connection.into(),
        source: "cdp.webhook".into(),
        external_id: external_id.map(str::to_string),
        body: json!({"events": [{"event_type": "custom_event"}]}),
    }
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

fn emit(node_id: &str, event: &str, payload: Value) -> NewOutboxEvent {
    NewOutboxEvent { node_id: node_id.into(), event: event.into(), payload }
}

async fn succeed(store: &dyn Store, run: &StoredRun) {
    store.complete(&run.lease().unwrap(), &Completion::Succeeded, &json!({}), &[]).await.unwrap();
}

fn customers(runs: &[StoredRun]) -> Vec<String> {
    runs.iter().map(|r| r.event["customer"].as_str().unwrap().to_string()).collect()
}

fn run_ids(runs: &[StoredRun]) -> Vec<String> {
    runs.iter().map(|r| r.id.clone()).collect()
}

fn message_ids(messages: &[StoredInbound]) -> Vec<String> {
    messages.iter().map(|m| m.id.clone()).collect()
}

/// Where each run is in `ids`, the order its batch was enqueued in (`seq` increases with it, but may skip values).
fn positions(runs: &[StoredRun], ids: &[String]) -> Vec<usize> {
    runs.iter().map(|run| ids.iter().position(|id| *id == run.id).expect("a run that was enqueued")).collect()
}

async fn status(store: &dyn Store, id: &str) -> RunState {
    store.get(id).await.unwrap().expect("a stored run").status
}

fn total(counts: &RunCounts) -> u64 {
    RunState::ALL.iter().map(|state| counts.get(*state)).sum()
}

fn is_invalid(error: &StoreError, expected: &str) -> bool {
    matches!(error, StoreError::Invalid { field, .. } if field == expected)
}

pub async fn enqueue_returns_ids_in_order_and_de_duplicates_by_dedup_key(store: Arc<dyn Store>) {
    assert!(store.enqueue(&[]).await.unwrap().is_empty(), "an empty batch enqueues nothing");
    let keyed = NewRun { dedup_key: Some("evt-1".into()), ..run("carol") };
    let ids = store.enqueue(&[run("alice"), run("bob"), keyed.clone()]).await.unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 3, "one id per run");
    let mut stored = Vec::new();
    for id in &ids {
        stored.push(store.get(id).await.unwrap().expect("an enqueued run"));
    }
    assert!(stored.windows(2).all(|w| w[0].seq < w[1].seq), "seq follows the order of the batch");
    let carol = &stored[2];
    assert_eq!(
        (carol.id.as_str(), carol.flow_id.as_str(), carol.flow_version.as_str()),
        (ids[2].as_str(), "loyalty-to-cdp", "1.0.0")
    );
    assert_eq!(carol.connections, ["cdp"]);
    assert_eq!(carol.ordering_key, "loyalty-to-cdp/carol");
    assert_eq!((carol.customer.as_deref(), carol.dedup_key.as_deref()), (Some("carol"), Some("evt-1")));
    assert_eq!(carol.event, json!({"event": "point_add", "customer": "carol"}));
    assert_eq!((carol.status, carol.attempts, carol.leases), (RunState::Queued, 0, 0));
    assert_eq!((&carol.lease_owner, carol.lease_until), (&None, None));
    assert_eq!((&carol.checkpoint, &carol.last_error, &carol.trace), (&None, &None, &None));

    // The same event sent again (e.g. after a client timeout) is not a second run, whatever became of the first.
    assert_eq!(store.enqueue(std::slice::from_ref(&keyed)).await.unwrap(), [ids[2].clone()]);
    for claimed in store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap() {
        succeed(&*store, &claimed).await;
    }
    let again = store.enqueue_runs(&[run("dave"), keyed.clone(), keyed.clone()]).await.unwrap();
    assert_eq!(again[1], Enqueued { id: ids[2].clone(), new: false }, "stored before: not new");
    assert_eq!(again[2], again[1]);
    assert!(again[0].new && again[0].id != ids[2]);
    let fresh = NewRun { dedup_key: Some("evt-2".into()), ..run("erin") };
    let twice = store.enqueue_runs(&[fresh.clone(), fresh]).await.unwrap();
    assert_eq!((twice[0].new, twice[1].new), (true, false), "the second of a batch is the first");
    assert_eq!(twice[0].id, twice[1].id);
    // A dedup key is the flow's: another flow's run with the same key is a run of its own.
    let other_flow = NewRun { flow_id: "profile-sync".into(), ..keyed };
    let other = store.enqueue(&[other_flow]).await.unwrap();
    assert!(!ids.contains(&other[0]));
    assert_eq!(total(&store.counts().await.unwrap().runs), 6);
}

pub async fn a_large_batch_keeps_its_order_and_de_duplicates_within_itself(store: Arc<dyn Store>) {
    let mut runs: Vec<NewRun> = (0..600).map(|i| run(&format!("c{i}"))).collect();
    runs[10].dedup_key = Some("evt-10".into());
    runs[500].dedup_key = Some("evt-10".into());
    runs[20].connections = vec!["cdp".into(), "other".into(), "cdp".into()];
    let ids = store.enqueue(&runs).await.unwrap();
    assert_eq!(ids.len(), 600);
    assert_eq!(ids[500], ids[10], "the same dedup key twice in one batch is one run");
    let mut last = i64::MIN;
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| *i != 500) {
        let stored = store.get(id).await.unwrap().unwrap();
        assert_eq!(stored.event["customer"], json!(format!("c{i}")));
        assert!(stored.seq > last, "seq follows the order of the batch");
        last = stored.seq;
    }
    assert_eq!(store.counts().await.unwrap().runs.queued, 599);
    assert_eq!(store.get(&ids[20]).await.unwrap().unwrap().connections, ["cdp", "other"]);
    let on_other = RunFilter { connection: Some("other".into()), ..Default::default() };
    assert_eq!(store.list(&on_other).await.unwrap().len(), 1);
    let on_cdp = RunFilter { connection: Some("cdp".into()), limit: 1000, ..Default::default() };
    assert_eq!(store.list(&on_cdp).await.unwrap().len(), 599);
}

pub async fn claims_in_arrival_order_and_a_waiting_resend_holds_only_its_key(store: Arc<dyn Store>) {
    let ids = store.enqueue(&[run("a"), run("b"), run("a"), run("c"), run("b")]).await.unwrap();
    let now = now_ms();

    let first = store.claim("w1", 10, 1, now, LEASE).await.unwrap();
    assert_eq!(customers(&first), ["a", "b", "c"], "one run per key, oldest first");
    assert_eq!(run_ids(&first), [&ids[0], &ids[1], &ids[3]].map(|s| s.clone()));
    assert!(store.claim("w2", 10, 1, now, LEASE).await.unwrap().is_empty(), "later runs wait for leased ones");

    // a1 fails and waits a minute for its resend; b1 and c1 succeed.
    let state = store
        .reschedule(&first[0].lease().unwrap(), now + 60_000, &json!({"kind": "transient"}), Some(&json!({"n": 1})))
        .await
        .unwrap();
    assert_eq!(state, RunState::Queued);
    for run in &first[1..] {
        succeed(&*store, run).await;
    }
    let next = store.claim("w1", 10, 1, now + 1, LEASE).await.unwrap();
    assert_eq!(customers(&next), ["b"], "b2 goes; a2 waits behind a1's resend");
    succeed(&*store, &next[0]).await;
    assert!(store.claim("w1", 10, 1, now + 2, LEASE).await.unwrap().is_empty());

    // The resend is due: a1 first (with its attempt counted and checkpoint kept), then a2.
    let resend = store.claim("w1", 10, 1, now + 60_000, LEASE).await.unwrap();
    assert_eq!(resend.len(), 1);
    assert_eq!(resend[0].id, ids[0]);
    assert_eq!((resend[0].attempts, resend[0].leases), (1, 2));
    assert_eq!(resend[0].checkpoint, Some(json!({"n": 1})));
    assert_eq!(resend[0].last_error, Some(json!({"kind": "transient"})));
    succeed(&*store, &resend[0]).await;
    let last = store.claim("w1", 10, 1, now + 60_001, LEASE).await.unwrap();
    assert_eq!(run_ids(&last), [ids[2].clone()]);
}

pub async fn a_claim_takes_a_keys_due_runs_in_order_up_to_per_key_and_every_keys_first_run_first(
    store: Arc<dyn Store>,
) {
    let ids = store.enqueue(&[run("a"), run("a"), run("b"), run("a"), run("a"), run("c"), run("b")]).await.unwrap();
    // Within the limit, every key's first run comes before any key's second: a1, b1, c1, then a2.
    let first = store.claim("w1", 4, 3, now_ms(), LEASE).await.unwrap();
    assert_eq!(customers(&first), ["a", "a", "b", "c"]);
    assert_eq!(positions(&first, &ids), [0, 1, 2, 5]);
    assert!(first.iter().all(|r| r.status == RunState::Leased && r.lease_owner.as_deref() == Some("w1")));
    // a3 is right behind a2 but over the limit; nobody else may take it while a1 and a2 are out.
    assert!(store.claim("w2", 10, 3, now_ms(), LEASE).await.unwrap().is_empty());

    // Once a key's claimed runs are done, its next ones go, up to `per_key` of them.
    for claimed in &first {
        succeed(&*store, claimed).await;
    }
    let second = store.claim("w2", 10, 2, now_ms(), LEASE).await.unwrap();
    assert_eq!(positions(&second, &ids), [3, 4, 6]);
}

pub async fn a_claim_stops_each_key_at_a_run_that_is_not_due_and_released_runs_wait_behind_it(store: Arc<dyn Store>) {
    store.hold_connection("crm").await.unwrap();
    // a3 uses the held connection: it is open but not due, so a4 must not overtake it.
    let ids = store.enqueue(&[run("a"), run("a"), run_for("a", &["cdp", "crm"]), run("a"), run("b")]).await.unwrap();
    let claimed = store.claim("w1", 10, 4, now_ms(), LEASE).await.unwrap();
    assert_eq!(positions(&claimed, &ids), [0, 1, 4]);

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
    assert_eq!(positions(&again, &ids), [0, 1]);
    // Released while its connection is held, a run becomes held.
    store.release(&[again[1].lease().unwrap()]).await.unwrap();
    assert_eq!(status(&*store, &a2.id).await, RunState::Queued);
    store.release_connection("crm").await.unwrap();
    let held = store.enqueue(&[run_for("c", &["crm"])]).await.unwrap();
    let [c]: [StoredRun; 1] = store.claim("w3", 10, 4, now_ms(), LEASE).await.unwrap().try_into().unwrap();
    assert_eq!(c.id, held[0]);
    store.hold_connection("crm").await.unwrap();
    store.release(&[c.lease().unwrap()]).await.unwrap();
    assert_eq!(status(&*store, &c.id).await, RunState::Held);
}

pub async fn a_claimed_keys_runs_whose_lease_expired_are_claimed_again_together(store: Arc<dyn Store>) {
    let ids = store.enqueue(&[run("a"), run("a"), run("a")]).await.unwrap();
    let now = now_ms();
    let old = store.claim("w1", 10, 3, now, Duration::from_secs(1)).await.unwrap();
    assert_eq!(old.len(), 3);
    assert!(store.claim("w2", 10, 3, now + 999, LEASE).await.unwrap().is_empty());
    let taken = store.claim("w2", 10, 3, now + 1_000, LEASE).await.unwrap();
    assert_eq!(positions(&taken, &ids), [0, 1, 2]);
    assert!(taken.iter().all(|run| run.leases == 2 && run.lease_owner.as_deref() == Some("w2")));
    let error = store.complete(&old[1].lease().unwrap(), &Completion::Succeeded, &json!({}), &[]).await;
    assert!(error.unwrap_err().is_lease_lost());
}

pub async fn a_lease_holder_keeps_its_run_while_it_checkpoints_or_extends_its_lease(store: Arc<dyn Store>) {
    let ids = store.enqueue(&[run("a")]).await.unwrap();
    let now = now_ms();
    let [claimed]: [StoredRun; 1] =
        store.claim("w1", 10, 1, now, Duration::from_secs(1)).await.unwrap().try_into().unwrap();
    assert_eq!((claimed.status, claimed.leases, claimed.lease_owner.as_deref()), (RunState::Leased, 1, Some("w1")));
    assert_eq!((claimed.lease_until, claimed.next_attempt_at), (Some(now + 1_000), now + 1_000));
    let lease = claimed.lease().unwrap();
    assert_eq!(lease, Lease { id: ids[0].clone(), worker: "w1".into(), token: 1 });

    store.extend_lease(&lease, now + 10_000).await.unwrap();
    assert!(store.claim("w2", 10, 1, now + 5_000, LEASE).await.unwrap().is_empty(), "the extended lease holds");
    // A holder's call succeeds while nobody else has claimed the run, even past the lease it had.
    store.checkpoint(&lease, &json!({"done": ["lookup"]}), now + 20_000).await.unwrap();
    let saved = store.get(&ids[0]).await.unwrap().unwrap();
    assert_eq!(
        (saved.status, saved.lease_until, saved.next_attempt_at),
        (RunState::Leased, Some(now + 20_000), now + 20_000)
    );
    assert_eq!(saved.checkpoint, Some(json!({"done": ["lookup"]})));
    assert!(store.claim("w2", 10, 1, now + 19_999, LEASE).await.unwrap().is_empty(), "the checkpoint extended it");

    let [taken]: [StoredRun; 1] = store.claim("w2", 10, 1, now + 20_000, LEASE).await.unwrap().try_into().unwrap();
    assert_eq!((taken.leases, taken.checkpoint), (2, Some(json!({"done": ["lookup"]}))));
    assert!(store.extend_lease(&lease, now + 90_000).await.unwrap_err().is_lease_lost());
}

pub async fn an_expired_lease_is_claimed_again_and_the_old_worker_is_fenced_off(store: Arc<dyn Store>) {
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
    assert!(
        matches!(&lost, StoreError::LeaseLost { now: holder, .. } if holder.contains("w2")),
        "names the new holder: {lost}"
    );
    let emitted = [emit("emit", "point_add", json!({}))];
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
    succeed(&*store, &third[0]).await;

    let missing = Lease { id: "nope".into(), worker: "w1".into(), token: 1 };
    assert!(matches!(store.checkpoint(&missing, &json!({}), now).await, Err(StoreError::NotFound { .. })));
}

pub async fn a_resend_is_not_claimable_before_its_time_and_keeps_or_replaces_the_checkpoint(store: Arc<dyn Store>) {
    let ids = store.enqueue(&[run("a")]).await.unwrap();
    let now = now_ms();
    let [first]: [StoredRun; 1] = store.claim("w1", 10, 1, now, LEASE).await.unwrap().try_into().unwrap();
    let lease = first.lease().unwrap();
    store.checkpoint(&lease, &json!({"done": ["lookup"]}), now + 30_000).await.unwrap();

    let at = now + 5_000;
    assert_eq!(store.reschedule(&lease, at, &json!({"status": 503}), None).await.unwrap(), RunState::Queued);
    let waiting = store.get(&ids[0]).await.unwrap().unwrap();
    assert_eq!((waiting.status, waiting.attempts, waiting.next_attempt_at), (RunState::Queued, 1, at));
    assert_eq!(waiting.lease_until, None);
    assert_eq!(waiting.checkpoint, Some(json!({"done": ["lookup"]})), "kept when the resend brings none");
    assert_eq!(waiting.last_error, Some(json!({"status": 503})));
    assert!(store.claim("w2", 10, 1, at - 1, LEASE).await.unwrap().is_empty(), "not before its time");
    assert!(store.reschedule(&lease, at, &json!({}), None).await.unwrap_err().is_lease_lost(), "ended the lease");

    let [again]: [StoredRun; 1] = store.claim("w2", 10, 1, at, LEASE).await.unwrap().try_into().unwrap();
    assert_eq!((again.id.as_str(), again.attempts, again.leases), (ids[0].as_str(), 1, 2));
    let checkpoint = json!({"done": ["lookup", "send"]});
    let resend =
        store.reschedule(&again.lease().unwrap(), at + 1_000, &json!({"status": 429}), Some(&checkpoint)).await;
    assert_eq!(resend.unwrap(), RunState::Queued);
    let waiting = store.get(&ids[0]).await.unwrap().unwrap();
    assert_eq!(
        (waiting.attempts, waiting.checkpoint, waiting.last_error),
        (2, Some(checkpoint), Some(json!({"status": 429})))
    );
    assert!(store.claim("w3", 10, 1, at + 999, LEASE).await.unwrap().is_empty());
    assert_eq!(store.claim("w3", 10, 1, at + 1_000, LEASE).await.unwrap().len(), 1);
}

pub async fn a_dead_run_holds_its_key_until_retried_or_dropped(store: Arc<dyn Store>) {
    let ids = store.enqueue(&[run("a"), run("a"), run("z")]).await.unwrap();
    let now = now_ms();
    let claimed = store.claim("w1", 10, 1, now, LEASE).await.unwrap();
    assert_eq!(customers(&claimed), ["a", "z"]);
    store.dead_letter(&claimed[0].lease().unwrap(), &json!({"status": 503}), &json!({"nodes": []})).await.unwrap();
    succeed(&*store, &claimed[1]).await;

    let dead = store.get(&ids[0]).await.unwrap().unwrap();
    assert_eq!((dead.status, dead.attempts, dead.lease_until), (RunState::Dead, 1, None));
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
    assert_eq!(status(&*store, &ids[0]).await, RunState::Dropped);
    let next = store.claim("w1", 10, 1, now_ms(), LEASE).await.unwrap();
    assert_eq!(run_ids(&next), [ids[1].clone()]);
}

pub async fn runs_waiting_behind_a_dead_run_or_a_resend_name_it_and_are_counted(store: Arc<dyn Store>) {
    let ids = store.enqueue(&[run("a"), run("a"), run("a"), run("b"), run("b"), run("c"), run("c")]).await.unwrap();
    let now = now_ms();
    let claimed = store.claim("w1", 10, 1, now, LEASE).await.unwrap();
    assert_eq!(customers(&claimed), ["a", "b", "c"]);
    store.dead_letter(&claimed[0].lease().unwrap(), &json!({"status": 503}), &json!({})).await.unwrap();
    store.reschedule(&claimed[1].lease().unwrap(), now + 60_000, &json!({"status": 429}), None).await.unwrap();
    // c1 is still leased: c2 waits behind a run in progress, which is no reason to look.

    let mut asked = ids.clone();
    asked.push("no-such-run".into());
    let held = store.held_by(&asked).await.unwrap();
    let dead = HeldBy { run: ids[0].clone(), status: RunState::Dead, attempts: 1 };
    let resend = HeldBy { run: ids[3].clone(), status: RunState::Queued, attempts: 1 };
    let leased = HeldBy { run: ids[5].clone(), status: RunState::Leased, attempts: 0 };
    let expected: HashMap<String, HeldBy> =
        [(ids[1].clone(), dead.clone()), (ids[2].clone(), dead), (ids[4].clone(), resend), (ids[6].clone(), leased)]
            .into();
    assert_eq!(
        held, expected,
        "each waiting run names its key's first open run; the heads themselves wait for nothing"
    );
    assert_eq!(store.held_behind().await.unwrap(), HeldBehind { dead: 2, resend: 1 });
    assert!(store.held_by(&[]).await.unwrap().is_empty());

    // Dropping the dead run frees its key: a2 is the head now and waits for nothing; a3 waits behind it.
    assert!(store.drop_run(&ids[0]).await.unwrap());
    let held = store.held_by(&ids[1..3]).await.unwrap();
    assert_eq!(held.keys().collect::<Vec<_>>(), [&ids[2]]);
    assert_eq!(held[&ids[2]], HeldBy { run: ids[1].clone(), status: RunState::Queued, attempts: 0 });
    assert_eq!(store.held_behind().await.unwrap(), HeldBehind { dead: 0, resend: 1 });
}

pub async fn an_operator_retries_or_drops_every_dead_run_of_a_customer_or_a_flow_at_once(store: Arc<dyn Store>) {
    let of_flow = |flow: &str, customer: &str| NewRun {
        flow_id: flow.into(),
        ordering_key: format!("{flow}/{customer}"),
        ..run(customer)
    };
    let ids = store
        .enqueue(&[of_flow("f1", "a"), of_flow("f1", "a"), of_flow("f2", "a"), of_flow("f1", "b"), of_flow("f2", "c")])
        .await
        .unwrap();
    let claimed = store.claim("w1", 10, 1, now_ms(), LEASE).await.unwrap();
    assert_eq!(run_ids(&claimed), [&ids[0], &ids[2], &ids[3], &ids[4]].map(|s| s.clone()));
    for run in &claimed[..3] {
        store.dead_letter(&run.lease().unwrap(), &json!({"status": 503}), &json!({})).await.unwrap();
    }
    succeed(&*store, &claimed[3]).await;

    let of = |customer: Option<&str>, flow: Option<&str>| RunFilter {
        customer: customer.map(str::to_string),
        flow_id: flow.map(str::to_string),
        // Ignored: only dead runs are taken, all of them.
        statuses: vec![RunState::Succeeded],
        limit: 1,
        ..RunFilter::default()
    };
    let retried = store.bulk_dead(&of(Some("a"), None), BulkAction::Retry).await.unwrap();
    assert_eq!(retried, [ids[2].clone(), ids[0].clone()], "customer a's dead runs of both flows, newest first");
    assert_eq!(status(&*store, &ids[0]).await, RunState::Queued);
    assert_eq!(status(&*store, &ids[1]).await, RunState::Queued, "a run behind a dead one is not touched");
    assert_eq!(status(&*store, &ids[3]).await, RunState::Dead, "another customer's dead run stays");

    let dropped = store.bulk_dead(&of(None, Some("f1")), BulkAction::Drop).await.unwrap();
    assert_eq!(dropped, [ids[3].clone()], "a's runs of f1 are no longer dead");
    assert_eq!(status(&*store, &ids[3]).await, RunState::Dropped);
    assert!(store.bulk_dead(&of(None, Some("f1")), BulkAction::Drop).await.unwrap().is_empty());
    assert_eq!(status(&*store, &ids[4]).await, RunState::Succeeded);
}

pub async fn operators_retry_and_drop_runs_only_in_the_states_the_contract_names(store: Arc<dyn Store>) {
    let ids =
        store.enqueue(&[run("waiting"), run("leased"), run("failed"), run("succeeded"), run("dead")]).await.unwrap();
    let now = now_ms();
    let claimed = store.claim("w1", 10, 1, now, LEASE).await.unwrap();
    assert_eq!(run_ids(&claimed), ids);
    let lease = |i: usize| claimed[i].lease().unwrap();
    store.reschedule(&lease(0), now + 3_600_000, &json!({"status": 503}), None).await.unwrap();
    store.complete(&lease(2), &Completion::Failed { error: json!("refused") }, &json!({}), &[]).await.unwrap();
    succeed(&*store, &claimed[3]).await;
    store.dead_letter(&lease(4), &json!({"status": 503}), &json!({})).await.unwrap();

    // Retry: a run waiting for its resend is due now and keeps its attempts; dead and failed runs start afresh.
    assert!(store.retry_now(&ids[0]).await.unwrap());
    let retried = store.get(&ids[0]).await.unwrap().unwrap();
    assert_eq!((retried.status, retried.attempts), (RunState::Queued, 1));
    assert!(retried.next_attempt_at <= now_ms(), "due now");
    assert!(!store.retry_now(&ids[1]).await.unwrap(), "a leased run is not retried");
    assert_eq!(status(&*store, &ids[1]).await, RunState::Leased);
    assert!(!store.retry_now(&ids[3]).await.unwrap(), "nor a succeeded one");
    assert!(!store.retry_now("no-such-run").await.unwrap());
    assert!(store.retry_now(&ids[2]).await.unwrap());
    assert!(store.retry_now(&ids[4]).await.unwrap());
    let again = store.claim("w2", 10, 1, now_ms(), LEASE).await.unwrap();
    assert_eq!(positions(&again, &ids), [0, 2, 4]);
    assert_eq!(again.iter().map(|run| run.attempts).collect::<Vec<_>>(), [1, 0, 0]);

    // Drop: a leased run is taken from its holder, whose calls then fail.
    assert!(store.drop_run(&ids[1]).await.unwrap());
    let dropped = store.get(&ids[1]).await.unwrap().unwrap();
    assert_eq!((dropped.status, dropped.lease_until), (RunState::Dropped, None), "kept for the record");
    assert!(store.checkpoint(&lease(1), &json!({}), now + 60_000).await.unwrap_err().is_lease_lost());
    // Dead, queued and held runs are dropped too; finished ones are not.
    store.dead_letter(&again[2].lease().unwrap(), &json!({}), &json!({})).await.unwrap();
    assert!(store.drop_run(&ids[4]).await.unwrap());
    store
        .complete(&again[1].lease().unwrap(), &Completion::Failed { error: json!("refused") }, &json!({}), &[])
        .await
        .unwrap();
    assert!(!store.drop_run(&ids[2]).await.unwrap(), "a failed run is not dropped");
    assert!(!store.drop_run(&ids[3]).await.unwrap(), "nor a succeeded one");
    assert!(!store.drop_run(&ids[1]).await.unwrap(), "nor a dropped one");
    assert!(!store.drop_run("no-such-run").await.unwrap());
    store.hold_connection("crm").await.unwrap();
    let more = store.enqueue(&[run("queued"), run_for("held", &["crm"])]).await.unwrap();
    assert_eq!(status(&*store, &more[1]).await, RunState::Held);
    for id in &more {
        assert!(store.drop_run(id).await.unwrap(), "{id}");
        assert_eq!(status(&*store, id).await, RunState::Dropped);
    }
    assert!(!store.retry_now(&more[0]).await.unwrap(), "a dropped run is not retried");
    // A dropped run does not hold its key.
    let after = store.enqueue(&[run("queued")]).await.unwrap();
    let claimed = store.claim("w3", 10, 1, now_ms(), LEASE).await.unwrap();
    assert_eq!(run_ids(&claimed), after);
}

pub async fn a_failed_run_retried_by_the_operator_goes_before_the_later_runs_of_its_key(store: Arc<dyn Store>) {
    let ids = store.enqueue(&[run("a"), run("a")]).await.unwrap();
    let first = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
    assert_eq!(run_ids(&first), [ids[0].clone()], "only the key's first run");
    let failed = Completion::Failed { error: json!({"kind": "permanent"}) };
    store.complete(&first[0].lease().unwrap(), &failed, &json!({}), &[]).await.unwrap();
    // A failed run does not hold its key: the second run goes now.
    let later = store.enqueue(&[run("a")]).await.unwrap();
    let second = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
    assert_eq!(run_ids(&second), [ids[1].clone()]);
    succeed(&*store, &second[0]).await;
    // The operator retries the failed first run: it is earlier than the queued third, so it goes first and the
    // third waits behind it.
    assert!(store.retry_now(&ids[0]).await.unwrap());
    let third = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
    assert_eq!(run_ids(&third), [ids[0].clone()]);
    succeed(&*store, &third[0]).await;
    let last = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
    assert_eq!(run_ids(&last), later);
}

pub async fn completing_writes_the_run_and_its_outbox_events_together(store: Arc<dyn Store>) {
    let ids = store.enqueue(&[run("a"), run("b")]).await.unwrap();
    let claimed = store.claim("w1", 10, 1, now_ms(), LEASE).await.unwrap();
    let emitted =
        [emit("emit_points", "point_add", json!({"points": 5})), emit("emit_reward", "reward_claim", json!({"id": 7}))];
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
    assert_eq!(outbox[0].flow_id, "loyalty-to-cdp");
    assert!(outbox.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(store.outbox(outbox[1].seq, 10).await.unwrap(), outbox[2..].to_vec(), "paging by seq");

    // Completing twice is refused and adds nothing to the outbox.
    let again = store.complete(&claimed[0].lease().unwrap(), &Completion::Succeeded, &json!({}), &emitted).await;
    assert!(again.unwrap_err().is_lease_lost());
    assert_eq!(store.counts().await.unwrap().outbox, 3);

    let bad = [emit("n", "", json!({}))];
    let error = store.complete(&claimed[0].lease().unwrap(), &Completion::Succeeded, &json!({}), &bad).await;
    assert!(error.unwrap_err().to_string().contains("emitted[0].event"));
}

pub async fn completions_share_a_transaction_and_a_lost_lease_fails_only_its_own(store: Arc<dyn Store>) {
    let ids = store.enqueue(&[run("a"), run("b"), run("c")]).await.unwrap();
    let claimed = store.claim("w1", 10, 1, now_ms(), LEASE).await.unwrap();
    // The second run is taken away (dropped by an operator) before its completion arrives.
    assert!(store.drop_run(&ids[1]).await.unwrap());
    let emitted = vec![emit("n", "point_add", json!({}))];
    let completions: Vec<RunCompletion> =
        claimed.iter().map(|run| completing(run, Completion::Succeeded, &emitted)).collect();
    let results = store.complete_many(&completions).await.unwrap();
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(results[1].as_ref().unwrap_err().is_lease_lost());
    assert_eq!(status(&*store, &ids[0]).await, RunState::Succeeded);
    assert_eq!(status(&*store, &ids[1]).await, RunState::Dropped);
    let outbox: Vec<String> = store.outbox(0, 10).await.unwrap().into_iter().map(|e| e.run_id).collect();
    assert_eq!(outbox, [ids[0].clone(), ids[2].clone()], "no outbox rows for the lost lease");
    assert!(store.complete_many(&[]).await.unwrap().is_empty());
}

pub async fn a_lease_completed_twice_in_one_batch_counts_once_and_keeps_its_failure(store: Arc<dyn Store>) {
    store.enqueue(&[run("a"), run("b")]).await.unwrap();
    let claimed = store.claim("w1", 10, 1, now_ms(), LEASE).await.unwrap();
    let emitted = [emit("n", "point_add", json!({}))];
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
    assert_eq!(status(&*store, &claimed[1].id).await, RunState::Succeeded);
    assert_eq!(store.outbox(0, 10).await.unwrap().len(), 2, "one outbox row per completed run");
}

pub async fn traces_read_back_as_kept_and_a_trace_not_kept_is_none(store: Arc<dyn Store>) {
    let ids = store.enqueue(&["a", "b", "c", "d", "e", "f"].map(run)).await.unwrap();
    let claimed = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
    assert_eq!(claimed.len(), 6);
    let lease = |i: usize| claimed[i].lease().unwrap();
    let log: Vec<Value> = (0..20).map(|i| json!({"level": "info", "message": format!("sent batch {i}")})).collect();
    let trace = json!({"nodes": [{"nodeId": "send", "output": {"status": 202}, "log": log}]});

    store.complete(&lease(0), &Completion::Succeeded, &trace, &[]).await.unwrap();
    store.complete(&lease(1), &Completion::Succeeded, &Value::Null, &[]).await.unwrap();
    let batch = [
        RunCompletion {
            trace: to_raw_value(&json!({"batch": 1})).ok(),
            ..completing(&claimed[2], Completion::Succeeded, &[])
        },
        RunCompletion { trace: None, ..completing(&claimed[3], Completion::Succeeded, &[]) },
    ];
    assert!(store.complete_many(&batch).await.unwrap().iter().all(Result::is_ok));
    store.dead_letter(&lease(4), &json!({"status": 503}), &trace).await.unwrap();
    store.dead_letter(&lease(5), &json!({"status": 503}), &Value::Null).await.unwrap();

    let expected = [Some(trace.clone()), None, Some(json!({"batch": 1})), None, Some(trace), None];
    for (id, expected) in ids.iter().zip(&expected) {
        assert_eq!(&store.get(id).await.unwrap().unwrap().trace, expected, "{id}");
    }
    let listed = store.list(&RunFilter::default()).await.unwrap();
    for run in &listed {
        let i = ids.iter().position(|id| *id == run.id).unwrap();
        assert_eq!(run.trace, expected[i], "{} as listed", run.id);
    }
}

pub async fn the_outbox_reads_events_after_a_seq_oldest_first_up_to_a_limit(store: Arc<dyn Store>) {
    assert!(store.outbox(0, 10).await.unwrap().is_empty());
    let ids = store.enqueue(&[run("a"), run("b")]).await.unwrap();
    let claimed = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
    let events = |from: i64, to: i64| {
        (from..to).map(|n| emit(&format!("emit_{n}"), "point_add", json!({"n": n}))).collect::<Vec<_>>()
    };
    store.complete(&claimed[0].lease().unwrap(), &Completion::Succeeded, &json!({}), &events(1, 4)).await.unwrap();
    store.complete(&claimed[1].lease().unwrap(), &Completion::Succeeded, &json!({}), &events(4, 6)).await.unwrap();

    let all = store.outbox(0, 0).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.payload["n"].as_i64().unwrap()).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5],
        "0: the default limit"
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "oldest first");
    assert_eq!(
        all.iter().map(|e| e.run_id.as_str()).collect::<Vec<_>>(),
        [&ids[0], &ids[0], &ids[0], &ids[1], &ids[1]].map(String::as_str)
    );
    assert_eq!(
        (all[2].node_id.as_str(), all[2].event.as_str(), all[2].flow_id.as_str()),
        ("emit_3", "point_add", "loyalty-to-cdp")
    );

    let first = store.outbox(0, 2).await.unwrap();
    assert_eq!(first, all[..2].to_vec());
    let second = store.outbox(first[1].seq, 2).await.unwrap();
    assert_eq!(second, all[2..4].to_vec());
    let third = store.outbox(second[1].seq, 2).await.unwrap();
    assert_eq!(third, all[4..].to_vec());
    assert!(store.outbox(third[0].seq, 2).await.unwrap().is_empty());
    assert_eq!(store.counts().await.unwrap().outbox, 5);
}

pub async fn holding_a_connection_keeps_its_runs_and_releasing_sends_them(store: Arc<dyn Store>) {
    // In flight on cdp when it is disconnected, and a run whose worker will have died.
    let ids = store.enqueue(&[run("inflight"), run("crashed")]).await.unwrap();
    let now = now_ms();
    let inflight = store.claim("w1", 1, 1, now, LEASE).await.unwrap().remove(0);
    let crashed = store.claim("w-dead", 1, 1, now, Duration::from_secs(5)).await.unwrap().remove(0);
    assert_eq!(crashed.id, ids[1]);
    let queued =
        store.enqueue(&[run("a"), run("b"), run_for("c", &["other"]), run_for("d", &["other", "cdp"])]).await.unwrap();

    let held = store.hold_connection("cdp").await.unwrap();
    assert_eq!(held.runs, 3, "a, b and d; live leases finish their attempt");
    assert_eq!(store.hold_connection("cdp").await.unwrap().runs, 0, "idempotent");
    assert_eq!(store.held_connections().await.unwrap(), ["cdp"]);

    // Only the run on the other connection goes; the crashed run is held once its lease expires.
    let claimed = store.claim("w2", 10, 1, now + 10_000, LEASE).await.unwrap();
    assert_eq!(customers(&claimed), ["c"]);
    assert_eq!(status(&*store, &ids[1]).await, RunState::Held);
    // New runs for the held connection are held on arrival; the in-flight one is held on reschedule.
    let late = store.enqueue(&[run("e")]).await.unwrap();
    assert_eq!(status(&*store, &late[0]).await, RunState::Held);
    let state = store.reschedule(&inflight.lease().unwrap(), now, &json!({"status": 503}), None).await.unwrap();
    assert_eq!(state, RunState::Held);
    // An operator retry keeps it held while the connection is disconnected.
    assert!(store.retry_now(&queued[0]).await.unwrap());
    assert_eq!(status(&*store, &queued[0]).await, RunState::Held);

    let counts = store.counts().await.unwrap();
    assert_eq!((counts.runs.held, counts.runs.leased), (6, 1));
    let listed = store
        .list(&RunFilter { connection: Some("cdp".into()), statuses: vec![RunState::Held], ..Default::default() })
        .await
        .unwrap();
    assert_eq!(listed.len(), 6, "held runs are kept and reported");
    assert!(store.claim("w2", 10, 1, now_ms() + 1_000, LEASE).await.unwrap().is_empty());

    // d also uses `other`: holding and releasing `other` must not free it while cdp is held.
    store.hold_connection("other").await.unwrap();
    assert_eq!(store.release_connection("other").await.unwrap().runs, 0);
    assert_eq!(status(&*store, &queued[3]).await, RunState::Held);

    let released = store.release_connection("cdp").await.unwrap();
    assert_eq!(released.runs, 6);
    assert!(store.held_connections().await.unwrap().is_empty());
    let claimed = store.claim("w2", 10, 1, now + 20_000, LEASE).await.unwrap();
    assert_eq!(customers(&claimed), ["inflight", "crashed", "a", "b", "d", "e"]);
    assert_eq!(claimed[0].attempts, 1);
}

pub async fn holds_are_idempotent_and_held_connections_are_listed_sorted(store: Arc<dyn Store>) {
    assert!(store.held_connections().await.unwrap().is_empty());
    let nothing = ConnectionHold::default();
    assert_eq!(store.release_connection("crm").await.unwrap(), nothing, "a connection that is not held");
    assert_eq!(store.hold_connection("zendesk").await.unwrap(), nothing, "nothing to hold yet");
    store.hold_connection("crm").await.unwrap();
    assert_eq!(store.hold_connection("crm").await.unwrap(), nothing, "held already");
    assert_eq!(store.held_connections().await.unwrap(), ["crm", "zendesk"]);

    // A message for a held connection is held on arrival, and stays held when retried.
    let id = store.record_inbound(&message("crm", None)).await.unwrap();
    assert_eq!(store.get_inbound(&id).await.unwrap().unwrap().status, InboundState::Held);
    assert!(store.claim_inbound("in", 10, now_ms(), LEASE).await.unwrap().is_empty());
    assert!(store.retry_inbound(&id).await.unwrap());
    assert_eq!(store.get_inbound(&id).await.unwrap().unwrap().status, InboundState::Held);
    assert_eq!(store.counts().await.unwrap().inbound.held, 1);

    assert_eq!(store.release_connection("crm").await.unwrap(), ConnectionHold { runs: 0, inbound: 1 });
    assert_eq!(store.held_connections().await.unwrap(), ["zendesk"]);
    assert_eq!(store.get_inbound(&id).await.unwrap().unwrap().status, InboundState::Received);
    assert_eq!(message_ids(&store.claim_inbound("in", 10, now_ms(), LEASE).await.unwrap()), [id]);
}

pub async fn inbound_messages_are_recorded_claimed_in_order_and_settled_with_their_runs(store: Arc<dyn Store>) {
    let m1 = store.record_inbound(&message("mp", Some("batch-1"))).await.unwrap();
    assert_eq!(store.record_inbound(&message("mp", Some("batch-1"))).await.unwrap(), m1, "de-duplicated");
    let m2 = store.record_inbound(&message("mp", None)).await.unwrap();
    let m3 = store.record_inbound(&message("mp2", Some("batch-1"))).await.unwrap();
    let now = now_ms();
    assert_ne!(m3, m1, "external ids are per connection");

    let first = store.claim_inbound("in", 1, now, LEASE).await.unwrap();
    assert_eq!(message_ids(&first), [m1.as_str()]);
    let second = store.claim_inbound("in", 10, now, LEASE).await.unwrap();
    assert_eq!(message_ids(&second), [m3.as_str()], "m2 waits for m1");

    // Settling enqueues the mapped runs in the same transaction.
    let lease = first[0].lease().unwrap();
    let runs = store
        .complete_inbound(&lease, &InboundOutcome::Processed { unmatched: None }, &[run("x"), run("y")])
        .await
        .unwrap();
    assert_eq!(runs.len(), 2);
    let settled = store.get_inbound(&m1).await.unwrap().unwrap();
    assert_eq!((settled.status, settled.run_ids.clone()), (InboundState::Processed, runs.clone()));
    assert_eq!(status(&*store, &runs[0]).await, RunState::Queued);
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
    assert_eq!(message_ids(&claimed), [m3.as_str()]);
    assert_eq!(store.release_connection("mp").await.unwrap().inbound, 1);
    let claimed = store.claim_inbound("in", 10, now_ms(), LEASE).await.unwrap();
    assert_eq!(message_ids(&claimed), [m2.as_str()]);

    let counts = store.counts().await.unwrap();
    assert_eq!((counts.inbound.processed, counts.inbound.leased), (1, 2));
    let listed = store.list_inbound(&InboundFilter { connection: Some("mp".into()), ..Default::default() }).await;
    assert_eq!(message_ids(&listed.unwrap()), [m2, m1]);
}

pub async fn an_expired_inbound_lease_is_claimed_again_and_the_old_worker_is_fenced_off(store: Arc<dyn Store>) {
    let id = store.record_inbound(&message("mp", None)).await.unwrap();
    let now = now_ms();
    let [old]: [StoredInbound; 1] =
        store.claim_inbound("in1", 10, now, Duration::from_secs(1)).await.unwrap().try_into().unwrap();
    assert_eq!((old.status, old.leases, old.lease_until), (InboundState::Leased, 1, Some(now + 1_000)));
    assert!(store.claim_inbound("in2", 10, now + 999, LEASE).await.unwrap().is_empty(), "the lease still holds");

    // in1 crashed: once its lease expired, in2 takes the message over, and in1's settlement is refused.
    let [taken]: [StoredInbound; 1] =
        store.claim_inbound("in2", 10, now + 1_000, LEASE).await.unwrap().try_into().unwrap();
    assert_eq!((taken.id.as_str(), taken.leases, taken.lease_owner.as_deref()), (id.as_str(), 2, Some("in2")));
    let processed = InboundOutcome::Processed { unmatched: None };
    let lost = store.complete_inbound(&old.lease().unwrap(), &processed, &[run("x")]).await.unwrap_err();
    assert!(lost.is_lease_lost(), "{lost}");
    assert_eq!(total(&store.counts().await.unwrap().runs), 0, "the refused settlement enqueued nothing");

    let failed = InboundOutcome::Failed { error: json!({"message": "unreadable payload"}) };
    assert!(store.complete_inbound(&taken.lease().unwrap(), &failed, &[]).await.unwrap().is_empty());
    let kept = store.get_inbound(&id).await.unwrap().unwrap();
    assert_eq!(
        (kept.status, kept.detail, kept.lease_until),
        (InboundState::Failed, Some(json!({"message": "unreadable payload"})), None)
    );
    assert!(store.retry_inbound(&id).await.unwrap());
    assert!(!store.retry_inbound("no-such-message").await.unwrap());
    let [again]: [StoredInbound; 1] =
        store.claim_inbound("in3", 10, now_ms(), LEASE).await.unwrap().try_into().unwrap();
    assert_eq!(again.leases, 3);
    assert!(!store.retry_inbound(&id).await.unwrap(), "a leased message is not retried");

    let missing = Lease { id: "nope".into(), worker: "in1".into(), token: 1 };
    let error = store.complete_inbound(&missing, &processed, &[]).await.unwrap_err();
    assert!(matches!(error, StoreError::NotFound { .. }), "{error}");
}

pub async fn inbound_messages_list_newest_first_by_connection_and_state(store: Arc<dyn Store>) {
    let m1 = store.record_inbound(&message("mp", Some("batch-1"))).await.unwrap();
    let m2 = store.record_inbound(&message("mp", None)).await.unwrap();
    let m3 = store.record_inbound(&message("mp2", None)).await.unwrap();
    let m4 = store.record_inbound(&message("mp", None)).await.unwrap();

    let recorded = store.get_inbound(&m1).await.unwrap().unwrap();
    assert_eq!((recorded.connection.as_str(), recorded.source.as_str()), ("mp", "cdp.webhook"));
    assert_eq!((recorded.external_id.as_deref(), recorded.body.clone()), (Some("batch-1"), message("mp", None).body));
    assert_eq!((recorded.status, recorded.leases, recorded.lease_owner.clone()), (InboundState::Received, 0, None));
    assert_eq!((recorded.detail.clone(), recorded.run_ids.len()), (None, 0));
    assert!(store.get_inbound("no-such-message").await.unwrap().is_none());

    let all = store.list_inbound(&InboundFilter::default()).await.unwrap();
    assert_eq!(message_ids(&all), [&m4, &m3, &m2, &m1].map(String::clone));
    let mp = InboundFilter { connection: Some("mp".into()), limit: 2, ..Default::default() };
    let page = store.list_inbound(&mp).await.unwrap();
    assert_eq!(message_ids(&page), [m4.clone(), m2.clone()]);
    let next = store.list_inbound(&InboundFilter { before_seq: Some(page[1].seq), ..mp }).await.unwrap();
    assert_eq!(message_ids(&next), [m1.as_str()]);

    store.claim_inbound("in", 1, now_ms(), LEASE).await.unwrap();
    let leased = InboundFilter { statuses: vec![InboundState::Leased], ..Default::default() };
    assert_eq!(message_ids(&store.list_inbound(&leased).await.unwrap()), [m1.as_str()]);
    let waiting =
        InboundFilter { statuses: vec![InboundState::Received], connection: Some("mp".into()), ..Default::default() };
    assert_eq!(message_ids(&store.list_inbound(&waiting).await.unwrap()), [m4, m2]);
    let counts = store.counts().await.unwrap().inbound;
    assert_eq!((counts.received, counts.leased), (3, 1));
    assert_eq!(InboundState::ALL.iter().map(|state| counts.get(*state)).sum::<u64>(), 4);
}

pub async fn listing_filters_and_pages_newest_first(store: Arc<dyn Store>) {
    let mut runs: Vec<NewRun> = (0..5).map(|_| run("alice")).collect();
    runs.push(run("bob"));
    runs.push(NewRun { flow_id: "profile-sync".into(), ..run("alice") });
    let ids = store.enqueue(&runs).await.unwrap();
    let alice = RunFilter { customer: Some("alice".into()), limit: 3, ..Default::default() };
    let page = store.list(&alice).await.unwrap();
    assert_eq!(run_ids(&page), [&ids[6], &ids[4], &ids[3]].map(String::clone));
    let next = store.list(&RunFilter { before_seq: Some(page[2].seq), ..alice.clone() }).await.unwrap();
    assert_eq!(run_ids(&next), [&ids[2], &ids[1], &ids[0]].map(String::clone));
    let flow = RunFilter { flow_id: Some("profile-sync".into()), ..Default::default() };
    assert_eq!(run_ids(&store.list(&flow).await.unwrap()), [ids[6].clone()]);
    let key = RunFilter { ordering_key: Some("loyalty-to-cdp/bob".into()), ..Default::default() };
    assert_eq!(run_ids(&store.list(&key).await.unwrap()), [ids[5].clone()]);
    assert_eq!(store.list(&RunFilter::default()).await.unwrap().len(), 7, "0: the default limit");
    // By creation time: all of them were created at `created_at` or later, none before.
    let created = page[0].created_at;
    let from = RunFilter { created_from: Some(created - 60_000), ..alice.clone() };
    assert_eq!(store.list(&from).await.unwrap().len(), 3);
    let until = RunFilter { created_until: Some(created - 60_000), ..Default::default() };
    assert!(store.list(&until).await.unwrap().is_empty(), "nothing was created a minute before");
    let after = RunFilter { created_from: Some(now_ms() + 60_000), ..Default::default() };
    assert!(store.list(&after).await.unwrap().is_empty(), "nothing is created in the future");
    store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
    let statuses = RunFilter { statuses: vec![RunState::Leased, RunState::Dead], ..Default::default() };
    assert_eq!(customers(&store.list(&statuses).await.unwrap()), ["bob", "alice"]);
    assert!(store.get("no-such-run").await.unwrap().is_none());
}

pub async fn counts_every_state(store: Arc<dyn Store>) {
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
    assert_eq!(total(&counts.runs), 7);
}

pub async fn bad_input_is_an_error_naming_the_field_and_changes_nothing(store: Arc<dyn Store>) {
    let error = store.enqueue(&[run("a"), NewRun { ordering_key: String::new(), ..run("b") }]).await.unwrap_err();
    assert!(is_invalid(&error, "runs[1].orderingKey"), "{error}");
    let bad_runs = [
        (NewRun { flow_id: String::new(), ..run("a") }, "runs[0].flowId"),
        (run_for("a", &["cdp", ""]), "runs[0].connections[1]"),
        (NewRun { dedup_key: Some(String::new()), ..run("a") }, "runs[0].dedupKey"),
    ];
    for (bad, field) in bad_runs {
        let error = store.enqueue(&[bad]).await.unwrap_err();
        assert!(is_invalid(&error, field), "{field}: {error}");
    }
    assert_eq!(total(&store.counts().await.unwrap().runs), 0, "all or nothing");
    assert!(is_invalid(&store.claim("", 1, 1, 0, LEASE).await.unwrap_err(), "worker"));
    assert!(is_invalid(&store.claim_inbound("", 1, 0, LEASE).await.unwrap_err(), "worker"));
    assert!(is_invalid(&store.hold_connection("").await.unwrap_err(), "connection"));
    assert!(is_invalid(&store.release_connection("").await.unwrap_err(), "connection"));

    let bad_messages = [
        (InboundMessage { connection: String::new(), ..message("mp", None) }, "connection"),
        (InboundMessage { source: String::new(), ..message("mp", None) }, "source"),
        (message("mp", Some("")), "externalId"),
    ];
    for (bad, field) in bad_messages {
        let error = store.record_inbound(&bad).await.unwrap_err();
        assert!(is_invalid(&error, field), "{field}: {error}");
    }
    assert_eq!(store.list_inbound(&InboundFilter::default()).await.unwrap().len(), 0);

    // A message settled with a bad run stays leased, and nothing is enqueued.
    store.record_inbound(&message("mp", None)).await.unwrap();
    let [leased]: [StoredInbound; 1] = store.claim_inbound("in", 1, now_ms(), LEASE).await.unwrap().try_into().unwrap();
    let processed = InboundOutcome::Processed { unmatched: None };
    let bad = NewRun { ordering_key: String::new(), ..run("a") };
    let error = store.complete_inbound(&leased.lease().unwrap(), &processed, &[run("a"), bad]).await.unwrap_err();
    assert!(is_invalid(&error, "runs[1].orderingKey"), "{error}");
    assert_eq!(store.get_inbound(&leased.id).await.unwrap().unwrap().status, InboundState::Leased);
    assert_eq!(total(&store.counts().await.unwrap().runs), 0);

    // In a batch of completions, a bad entry fails alone.
    store.enqueue(&[run("a"), run("b")]).await.unwrap();
    let claimed = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
    let results = store
        .complete_many(&[
            completing(&claimed[0], Completion::Succeeded, &[emit("", "point_add", json!({}))]),
            completing(&claimed[1], Completion::Succeeded, &[emit("n", "point_add", json!({}))]),
        ])
        .await
        .unwrap();
    assert!(matches!(&results[0], Err(error) if is_invalid(error, "emitted[0].nodeId")), "{results:?}");
    assert!(results[1].is_ok(), "{results:?}");
    assert_eq!(status(&*store, &claimed[0].id).await, RunState::Leased);
    assert_eq!(store.outbox(0, 10).await.unwrap().len(), 1);
}

/// A cutoff after everything the store has stored so far: the store's clock has moved past it when this returns.
async fn cutoff_after_now() -> i64 {
    let cutoff = now_ms() + 1;
    while now_ms() <= cutoff {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    cutoff
}

pub async fn purge_deletes_finished_runs_older_than_the_cutoff_and_never_open_or_dead_ones(store: Arc<dyn Store>) {
    let names = ["succeeded", "failed", "dropped", "dead", "waiting", "leased", "held", "queued"];
    let ids = store.enqueue(&names[..6].iter().map(|name| run(name)).collect::<Vec<_>>()).await.unwrap();
    let now = now_ms();
    let claimed = store.claim("w", 10, 1, now, LEASE).await.unwrap();
    assert_eq!(run_ids(&claimed), ids);
    let lease = |i: usize| claimed[i].lease().unwrap();
    let before_closing = now_ms();
    let emitted = [emit("emit_points", "point_add", json!({"points": 5}))];
    store.complete(&lease(0), &Completion::Succeeded, &json!({"nodes": []}), &emitted).await.unwrap();
    store.complete(&lease(1), &Completion::Failed { error: json!("refused") }, &json!({}), &[]).await.unwrap();
    assert!(store.drop_run(&ids[2]).await.unwrap());
    store.dead_letter(&lease(3), &json!({"status": 503}), &json!({})).await.unwrap();
    store.reschedule(&lease(4), now + 3_600_000, &json!({"status": 429}), None).await.unwrap();
    store.hold_connection("crm").await.unwrap();
    let more = store.enqueue(&[run_for("held", &["crm"]), run("queued")]).await.unwrap();
    let ids: Vec<String> = ids.into_iter().chain(more).collect();

    // A cutoff before they closed purges nothing.
    assert_eq!(store.purge(before_closing, 100).await.unwrap(), Purged::default());
    assert_eq!(total(&store.counts().await.unwrap().runs), 8);

    let purged = store.purge(cutoff_after_now().await, 100).await.unwrap();
    assert_eq!(purged, Purged { runs: 3, inbound: 0, outbox: 1 });
    assert!(!purged.may_have_more(100) && purged.may_have_more(3));
    let kept = [None, None, None, Some(RunState::Dead), Some(RunState::Queued), Some(RunState::Leased)];
    let kept = kept.into_iter().chain([Some(RunState::Held), Some(RunState::Queued)]);
    for ((name, id), expected) in names.iter().zip(&ids).zip(kept) {
        assert_eq!(store.get(id).await.unwrap().map(|run| run.status), expected, "{name}");
    }
    let counts = store.counts().await.unwrap();
    let expected = RunCounts { queued: 2, leased: 1, dead: 1, held: 1, ..RunCounts::default() };
    assert_eq!((counts.runs, counts.outbox), (expected, 0));
    assert_eq!(store.list(&RunFilter::default()).await.unwrap().len(), 5, "listings no longer show them");
    assert!(store.outbox(0, 10).await.unwrap().is_empty(), "the purged run's event goes with it");
    assert_eq!(store.purge(now_ms() + 1, 100).await.unwrap(), Purged::default(), "nothing more to purge");
    // The lease holder of the leased run is untouched.
    store.complete(&lease(5), &Completion::Succeeded, &json!({}), &[]).await.unwrap();
}

pub async fn purge_keeps_each_keys_order_and_a_kept_runs_trace(store: Arc<dyn Store>) {
    // Key a: a1 succeeded, a2 waits for its resend; key b: b1 dead, b2 queued behind it; key c: c1 failed, c2
    // succeeded in the same batch of completions as a1 (so they may share stored traces), then c1 is retried.
    let ids = store.enqueue(&[run("a"), run("b"), run("c"), run("a"), run("b")]).await.unwrap();
    let now = now_ms();
    let first = store.claim("w", 10, 1, now, LEASE).await.unwrap();
    assert_eq!(positions(&first, &ids), [0, 1, 2]);
    store.dead_letter(&first[1].lease().unwrap(), &json!({"status": 503}), &json!({"dead": true})).await.unwrap();
    let batch = [
        completing(&first[0], Completion::Succeeded, &[]),
        completing(&first[2], Completion::Failed { error: json!("refused") }, &[]),
    ];
    assert!(store.complete_many(&batch).await.unwrap().iter().all(Result::is_ok));
    let second = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
    assert_eq!(positions(&second, &ids), [3]);
    store.reschedule(&second[0].lease().unwrap(), now + 3_600_000, &json!({"status": 429}), None).await.unwrap();
    let c2 = store.enqueue(&[run("c")]).await.unwrap().remove(0);
    let third = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
    assert_eq!(run_ids(&third), std::slice::from_ref(&c2));
    succeed(&*store, &third[0]).await;
    assert!(store.retry_now(&ids[2]).await.unwrap(), "c1 is queued again, before c2");
    let c1_trace = store.get(&ids[2]).await.unwrap().unwrap().trace;

    let purged = store.purge(cutoff_after_now().await, 100).await.unwrap();
    assert_eq!(purged.runs, 2, "a1 and c2: {purged:?}");
    assert!(store.get(&ids[0]).await.unwrap().is_none() && store.get(&c2).await.unwrap().is_none());
    // What was kept reads back whole, its trace included.
    let c1 = store.get(&ids[2]).await.unwrap().unwrap();
    assert_eq!((c1.status, &c1.trace), (RunState::Queued, &c1_trace));
    let b1 = store.get(&ids[1]).await.unwrap().unwrap();
    assert_eq!((b1.status, b1.trace), (RunState::Dead, Some(json!({"dead": true}))));
    // The order holds: b2 waits behind dead b1, a2 for its resend, and c1 goes.
    let claimed = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
    assert_eq!(run_ids(&claimed), [ids[2].clone()]);
    succeed(&*store, &claimed[0]).await;
    assert!(store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap().is_empty(), "b2 still waits behind b1");
    let resend = store.claim("w", 10, 1, now + 3_600_000, LEASE).await.unwrap();
    assert_eq!(run_ids(&resend), [ids[3].clone()], "a2 goes when its resend is due");
    assert!(store.drop_run(&ids[1]).await.unwrap());
    assert_eq!(run_ids(&store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap()), [ids[4].clone()]);
}

pub async fn purge_deletes_in_batches_until_nothing_is_left(store: Arc<dyn Store>) {
    let ids = store.enqueue(&(0..7).map(|i| run(&format!("c{i}"))).collect::<Vec<_>>()).await.unwrap();
    let claimed = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
    let completions: Vec<RunCompletion> =
        claimed.iter().map(|run| completing(run, Completion::Succeeded, &[])).collect();
    assert!(store.complete_many(&completions).await.unwrap().iter().all(Result::is_ok));
    let cutoff = cutoff_after_now().await;
    let mut sizes = Vec::new();
    loop {
        let purged = store.purge(cutoff, 3).await.unwrap();
        sizes.push(purged.runs);
        if !purged.may_have_more(3) {
            break;
        }
    }
    assert_eq!(sizes, [3, 3, 1]);
    for id in &ids {
        assert!(store.get(id).await.unwrap().is_none(), "{id}");
    }
    let error = store.purge(cutoff, 0).await.unwrap_err();
    assert!(is_invalid(&error, "batch"), "{error}");
}

pub async fn purge_deletes_processed_inbound_messages_and_keeps_the_others(store: Arc<dyn Store>) {
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for connection in ["processed", "unmatched", "failed", "leased", "received"] {
            ids.push(store.record_inbound(&message(connection, None)).await.unwrap());
        }
        ids
    };
    let claimed = store.claim_inbound("in", 4, now_ms(), LEASE).await.unwrap();
    assert_eq!(message_ids(&claimed), ids[..4]);
    let before_settling = now_ms();
    let processed = InboundOutcome::Processed { unmatched: None };
    let run_ids = store.complete_inbound(&claimed[0].lease().unwrap(), &processed, &[run("x")]).await.unwrap();
    let unmatched = InboundOutcome::Unmatched { reason: json!({"eventType": "screen_view"}) };
    store.complete_inbound(&claimed[1].lease().unwrap(), &unmatched, &[]).await.unwrap();
    let failed = InboundOutcome::Failed { error: json!("unreadable") };
    store.complete_inbound(&claimed[2].lease().unwrap(), &failed, &[]).await.unwrap();
    store.hold_connection("held").await.unwrap();
    let held = store.record_inbound(&message("held", None)).await.unwrap();

    assert_eq!(store.purge(before_settling, 10).await.unwrap(), Purged::default());
    let purged = store.purge(cutoff_after_now().await, 10).await.unwrap();
    assert_eq!(purged, Purged { runs: 0, inbound: 1, outbox: 0 });
    assert!(store.get_inbound(&ids[0]).await.unwrap().is_none());
    let states = [InboundState::Unmatched, InboundState::Failed, InboundState::Leased, InboundState::Received];
    for (id, state) in ids[1..].iter().zip(states) {
        assert_eq!(store.get_inbound(id).await.unwrap().map(|m| m.status), Some(state), "{state} is kept");
    }
    assert_eq!(store.get_inbound(&held).await.unwrap().map(|m| m.status), Some(InboundState::Held));
    assert_eq!(status(&*store, &run_ids[0]).await, RunState::Queued, "the message's run is the queue's, and kept");
    // The message still leased is settled by its holder as usual.
    store.complete_inbound(&claimed[3].lease().unwrap(), &processed, &[]).await.unwrap();
}

pub async fn purge_deletes_the_outbox_from_its_front_and_a_purged_runs_events_with_it(store: Arc<dyn Store>) {
    // a's run fails with an event and is retried by the operator: its event is old, the run is open again.
    let ids = store.enqueue(&[run("a"), run("b")]).await.unwrap();
    let claimed = store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap();
    let failed = Completion::Failed { error: json!("refused") };
    let events = |n: i64| (0..n).map(|i| emit(&format!("emit_{i}"), "point_add", json!({"i": i}))).collect::<Vec<_>>();
    store.complete(&claimed[0].lease().unwrap(), &failed, &json!({}), &events(2)).await.unwrap();
    assert!(store.retry_now(&ids[0]).await.unwrap());
    let old_events = store.outbox(0, 100).await.unwrap();
    let cutoff = cutoff_after_now().await;
    // b's run ends after the cutoff, with events newer than it.
    store.complete(&claimed[1].lease().unwrap(), &Completion::Succeeded, &json!({}), &events(3)).await.unwrap();

    let purged = store.purge(cutoff, 100).await.unwrap();
    assert_eq!(purged, Purged { runs: 0, inbound: 0, outbox: 2 });
    let left = store.outbox(0, 100).await.unwrap();
    assert_eq!(left.len(), 3);
    assert!(left.iter().all(|event| event.run_id == ids[1]), "{left:?}");
    assert!(left[0].seq > old_events[1].seq, "paging by `after` goes on from where the platform was");
    assert_eq!(store.outbox(old_events[1].seq, 100).await.unwrap(), left);
    assert_eq!(status(&*store, &ids[0]).await, RunState::Queued, "the open run is kept");

    // Once b's run is old too, it goes with its events, whatever the batch of the outbox's front.
    let purged = store.purge(cutoff_after_now().await, 1).await.unwrap();
    assert_eq!((purged.runs, purged.outbox), (1, 3));
    assert!(store.outbox(0, 100).await.unwrap().is_empty());
    assert_eq!(store.counts().await.unwrap().outbox, 0);
}

pub async fn concurrent_claimers_never_get_the_same_run_and_keep_key_order(store: Arc<dyn Store>) {
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
                    succeed(&*store, &run).await;
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
        let previous = last.insert(key.clone(), *seq).unwrap_or(i64::MIN);
        assert!(*seq > previous, "key {key}: seq {seq} ran after {previous}");
    }
    assert_eq!(store.counts().await.unwrap().runs.succeeded, 400);
}

/// Runs in every state over three customers (one run without a customer), two flows and two connections, some with
/// an error, a checkpoint or a trace: ids in enqueue order, and the time just before they were enqueued.
async fn runs_in_every_state(store: &dyn Store) -> (Vec<String>, i64) {
    let before = now_ms();
    let mut runs: Vec<NewRun> = (0..4).map(|i| NewRun { ordering_key: format!("alice-{i}"), ..run("alice") }).collect();
    runs.push(run_for("bob", &["cdp", "crm"]));
    runs.push(NewRun {
        flow_id: "profile-sync".into(),
        ordering_key: "profile-sync/bob".into(),
        ..run_for("bob", &["crm"])
    });
    runs.push(NewRun { customer: None, ordering_key: "anonymous".into(), ..run_for("x", &[]) });
    runs.push(NewRun { flow_id: "profile-sync".into(), ordering_key: "carol-1".into(), ..run_for("carol", &["crm"]) });
    runs.push(run("carol"));
    let ids = store.enqueue(&runs).await.unwrap();
    let now = now_ms();
    let claimed = store.claim("w", 8, 1, now, LEASE).await.unwrap();
    let lease = |id: &String| claimed.iter().find(|run| run.id == *id).unwrap().lease().unwrap();
    let failed = Completion::Failed { error: json!({"kind": "permanent", "message": "400"}) };
    store.complete(&lease(&ids[0]), &Completion::Succeeded, &json!({"nodes": ["a"]}), &[]).await.unwrap();
    store.complete(&lease(&ids[1]), &failed, &json!({"nodes": ["b"]}), &[]).await.unwrap();
    store.dead_letter(&lease(&ids[2]), &json!({"kind": "transient", "message": "503"}), &json!({})).await.unwrap();
    let checkpoint = json!({"calls": {}});
    store.reschedule(&lease(&ids[4]), now + 60_000, &json!("429"), Some(&checkpoint)).await.unwrap();
    store.dead_letter(&lease(&ids[5]), &json!("503"), &json!({"dead": true})).await.unwrap();
    store.dead_letter(&lease(&ids[6]), &json!("503"), &json!({})).await.unwrap();
    store.dead_letter(&lease(&ids[7]), &json!("503"), &json!({})).await.unwrap();
    // ids[3] stays leased; ids[8] (carol) is queued.
    (ids, before)
}

pub async fn summaries_are_the_listed_runs_without_their_event_checkpoint_and_trace(store: Arc<dyn Store>) {
    let (ids, before) = runs_in_every_state(&*store).await;
    let created = store.get(&ids[8]).await.unwrap().unwrap().created_at;
    let filters = [
        RunFilter::default(),
        RunFilter { customer: Some("alice".into()), ..Default::default() },
        RunFilter { customer: Some("bob".into()), limit: 1, ..Default::default() },
        RunFilter { flow_id: Some("profile-sync".into()), ..Default::default() },
        RunFilter { ordering_key: Some("loyalty-to-cdp/bob".into()), ..Default::default() },
        RunFilter { connection: Some("crm".into()), ..Default::default() },
        RunFilter { connection: Some("cdp".into()), statuses: vec![RunState::Dead], ..Default::default() },
        RunFilter { statuses: vec![RunState::Failed, RunState::Dead, RunState::Queued], ..Default::default() },
        RunFilter { before_seq: Some(store.get(&ids[5]).await.unwrap().unwrap().seq), limit: 2, ..Default::default() },
        RunFilter { created_from: Some(before), created_until: Some(created + 1), ..Default::default() },
        RunFilter { created_until: Some(before - 60_000), ..Default::default() },
        RunFilter { customer: Some("nobody".into()), ..Default::default() },
    ];
    for filter in filters {
        let listed: Vec<RunSummary> = store.list(&filter).await.unwrap().iter().map(StoredRun::summary).collect();
        assert_eq!(store.list_summaries(&filter).await.unwrap(), listed, "{filter:?}");
    }
    let all = store.list_summaries(&RunFilter::default()).await.unwrap();
    assert_eq!(all.iter().map(|run| run.id.clone()).rev().collect::<Vec<_>>(), ids, "newest first");
    let resend = all.iter().find(|run| run.id == ids[4]).unwrap();
    assert_eq!((resend.status, resend.attempts_made()), (RunState::Queued, 1));
    assert_eq!(
        (resend.error_to_show(), &resend.connections),
        (Some(&json!("429")), &vec!["cdp".to_string(), "crm".to_string()])
    );
    assert!(resend.next_attempt().is_some_and(|at| at > now_ms()), "due after its resend delay");
    let anonymous = all.iter().find(|run| run.id == ids[6]).unwrap();
    assert_eq!((anonymous.customer.as_deref(), anonymous.status), (None, RunState::Dead));
    assert!(store.list_summaries(&RunFilter { limit: 3, ..Default::default() }).await.unwrap().len() == 3);
}

pub async fn runs_are_counted_per_state_by_customer_flow_connection_and_time(store: Arc<dyn Store>) {
    let (ids, before) = runs_in_every_state(&*store).await;
    let count = |filter: RunFilter| {
        let store = store.clone();
        async move { store.count_runs(&filter).await.unwrap() }
    };
    let none = RunCounts::default();
    let all = RunCounts { queued: 2, leased: 1, succeeded: 1, failed: 1, dead: 4, held: 0, dropped: 0 };
    assert_eq!(count(RunFilter::default()).await, all);
    assert_eq!(count(RunFilter::default()).await, store.counts().await.unwrap().runs, "as the queue's counts");
    // `before_seq` and `limit` do not apply: every run the filter selects counts.
    let paged =
        RunFilter { before_seq: Some(store.get(&ids[1]).await.unwrap().unwrap().seq), limit: 1, ..Default::default() };
    assert_eq!(count(paged).await, all);
    let alice = RunFilter { customer: Some("alice".into()), ..Default::default() };
    assert_eq!(count(alice.clone()).await, RunCounts { leased: 1, succeeded: 1, failed: 1, dead: 1, ..none });
    let alice_dead = RunFilter { statuses: vec![RunState::Dead, RunState::Held], ..alice };
    assert_eq!(count(alice_dead).await, RunCounts { dead: 1, ..none }, "only the states asked for");
    let flow = RunFilter { flow_id: Some("profile-sync".into()), ..Default::default() };
    assert_eq!(count(flow).await, RunCounts { dead: 2, ..none });
    let key = RunFilter { ordering_key: Some("loyalty-to-cdp/bob".into()), ..Default::default() };
    assert_eq!(count(key).await, RunCounts { queued: 1, ..none });
    let crm = RunFilter { connection: Some("crm".into()), ..Default::default() };
    assert_eq!(count(crm).await, RunCounts { queued: 1, dead: 2, ..none }, "bob's resend waits as queued");
    let cdp_waiting = RunFilter {
        connection: Some("cdp".into()),
        statuses: vec![RunState::Queued, RunState::Leased, RunState::Held],
        ..Default::default()
    };
    assert_eq!(count(cdp_waiting).await, RunCounts { queued: 2, leased: 1, ..none });
    assert_eq!(count(RunFilter { connection: Some("unused".into()), ..Default::default() }).await, none);
    assert_eq!(count(RunFilter { created_from: Some(before), ..Default::default() }).await, all);
    assert_eq!(count(RunFilter { created_until: Some(before - 60_000), ..Default::default() }).await, none);
    assert_eq!(count(RunFilter { customer: Some("nobody".into()), ..Default::default() }).await, none);
    // Held runs count as held: once crm is disconnected, bob's resend, and a run enqueued for it.
    store.hold_connection("crm").await.unwrap();
    store.enqueue(&[run_for("dave", &["crm"])]).await.unwrap();
    let crm = RunFilter { connection: Some("crm".into()), ..Default::default() };
    assert_eq!(count(crm).await, RunCounts { held: 2, dead: 2, ..none });
    let dave = RunFilter { customer: Some("dave".into()), ..Default::default() };
    assert_eq!(count(dave).await, RunCounts { held: 1, ..none });
}

pub async fn dead_runs_are_counted_by_customer_and_by_flow_largest_first(store: Arc<dyn Store>) {
    assert_eq!(store.dead_runs_by_group(0).await.unwrap(), super::DeadRunGroups::default());
    runs_in_every_state(&*store).await;
    // Two more dead runs of carol, one in a third flow: carol 3, alice 1, bob 1, none 1; by flow 3, 2, 1.
    let more = [
        NewRun { ordering_key: "carol-2".into(), ..run("carol") },
        NewRun { flow_id: "points".into(), ordering_key: "carol-3".into(), ..run("carol") },
    ];
    store.enqueue(&more).await.unwrap();
    for claimed in store.claim("w", 10, 1, now_ms(), LEASE).await.unwrap() {
        if claimed.ordering_key.starts_with("carol-") {
            store.dead_letter(&claimed.lease().unwrap(), &json!("503"), &json!({})).await.unwrap();
        }
    }
    let groups = store.dead_runs_by_group(0).await.unwrap();
    let customer = |name: Option<&str>, n: u64| (name.map(String::from), n);
    assert_eq!(
        groups.by_customer,
        [customer(Some("carol"), 3), customer(Some("alice"), 1), customer(Some("bob"), 1), customer(None, 1)],
        "the largest first, then by name, runs without a customer last"
    );
    let flow = |name: &str, n: u64| (name.to_string(), n);
    assert_eq!(groups.by_flow, [flow("loyalty-to-cdp", 3), flow("profile-sync", 2), flow("points", 1)]);
    let dead = store.count_runs(&RunFilter { statuses: vec![RunState::Dead], ..Default::default() }).await.unwrap();
    assert_eq!(groups.by_customer.iter().map(|(_, n)| n).sum::<u64>(), dead.dead);
    let top = store.dead_runs_by_group(1).await.unwrap();
    assert_eq!((top.by_customer, top.by_flow), (vec![customer(Some("carol"), 3)], vec![flow("loyalty-to-cdp", 3)]));
    // A retried run is dead no more.
    let carol = RunFilter { customer: Some("carol".into()), ..Default::default() };
    store.bulk_dead(&carol, BulkAction::Retry).await.unwrap();
    let groups = store.dead_runs_by_group(0).await.unwrap();
    assert_eq!(groups.by_customer, [customer(Some("alice"), 1), customer(Some("bob"), 1), customer(None, 1)]);
    assert_eq!(groups.by_flow, [flow("loyalty-to-cdp", 2), flow("profile-sync", 1)]);
}

/// A store passes its integrity check when new and once it holds runs in every state, outbox events, inbound
/// messages and a held connection, and says each time what it checked. (That a damaged store fails it is each
/// backend's own test: damage is made differently for each.)
pub async fn a_store_in_use_passes_its_integrity_check_and_says_what_it_checked(store: Arc<dyn Store>) {
    let fresh = store.check_integrity().await.unwrap();
    assert!(fresh.ok(), "a new store: {fresh:?}");
    assert!(!fresh.check.is_empty(), "{fresh:?}");
    store.enqueue(&(0..50).map(|i| run(&format!("key-{}", i % 7))).collect::<Vec<_>>()).await.unwrap();
    let claimed = store.claim("w1", 10, 1, now_ms(), LEASE).await.unwrap();
    let (done, dead) = claimed.split_at(5);
    let emitted = [emit("tell", "seen", json!({"n": 1}))];
    store
        .complete_many(&done.iter().map(|r| completing(r, Completion::Succeeded, &emitted)).collect::<Vec<_>>())
        .await
        .unwrap();
    for run in dead {
        store.dead_letter(&run.lease().unwrap(), &json!({"kind": "permanent"}), &json!({"nodes": []})).await.unwrap();
    }
    store.record_inbound(&message("crm", Some("m-1"))).await.unwrap();
    store.hold_connection("crm").await.unwrap();
    let used = store.check_integrity().await.unwrap();
    assert!(used.ok(), "a store in use: {used:?}");
    assert_eq!(used.check, fresh.check);
}

#[cfg(test)]
mod tests {
    /// The macro's list of behaviours, read from this file, is every `pub async fn` of the suite: a behaviour left
    /// out of it would run for no backend.
    #[test]
    fn the_tests_macro_runs_every_behaviour() {
        let source = include_str!("conformance.rs");
        let behaviours: Vec<&str> = source
            .lines()
            .filter_map(|line| line.strip_prefix("pub async fn "))
            .map(|rest| rest.split('(').next().unwrap())
            .collect();
        assert!(behaviours.len() > 20, "{behaviours:?}");
        let macro_text = &source[source.find("macro_rules!").unwrap()..source.find("/// A lease long enough").unwrap()];
        for behaviour in behaviours {
            let listed =
                macro_text.contains(&format!("{behaviour},")) || macro_text.contains(&format!("::{behaviour}("));
            assert!(listed, "`{behaviour}` is not in store_conformance_tests!");
        }
    }
}
