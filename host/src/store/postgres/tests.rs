//! The PostgreSQL store's own tests: the conformance suite on a fresh database each, and what only many processes
//! sharing a server can break (two stores here are two processes: two sets of pools). Each test needs a server: a
//! throwaway cluster (see [`testing`](super::testing)), shared by the tests of this binary, or
//! `FLOWHOST_TEST_POSTGRES_URL`'s.

use super::PostgresStore;
use super::location::PostgresLocation;
use super::testing::{TestCluster, TestDatabase, server_binaries};
use crate::store::conformance::{run, run_for};
use crate::store::{Completion, NewRun, Store, StoreError, Wake, now_ms};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

crate::store_conformance_tests!(conformance, async {
    let database = TestDatabase::create("PostgreSQL conformance").await?;
    let store: Arc<dyn Store> = Arc::new(database.store().await);
    Some((store, database))
});

const LEASE: Duration = Duration::from_secs(30);

/// Two "processes" on one fresh database.
async fn two_processes(test: &str) -> Option<(TestDatabase, Arc<PostgresStore>, Arc<PostgresStore>)> {
    let database = TestDatabase::create(test).await?;
    let a = Arc::new(database.store().await);
    let b = Arc::new(database.store().await);
    Some((database, a, b))
}

fn is_deadlock(error: &StoreError) -> bool {
    match error {
        StoreError::Database { source: sqlx::Error::Database(e), .. } => e.code().as_deref() == Some("40P01"),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_customers_runs_go_one_after_another_in_order_across_processes() {
    let Some((_db, a, b)) = two_processes("per-customer order across processes").await else { return };
    let stores: [Arc<dyn Store>; 2] = [a.clone(), b.clone()];
    const CUSTOMERS: usize = 20;
    const PER_CUSTOMER: usize = 30;
    // Enqueuers: each customer's runs in order, batch by batch, alternately through both processes; two enqueuers
    // at once, so the processes enqueue to the same keys concurrently.
    let mut enqueuers = Vec::new();
    for e in 0..2 {
        let stores = stores.clone();
        enqueuers.push(tokio::spawn(async move {
            for round in 0..PER_CUSTOMER / 2 {
                let batch: Vec<NewRun> = (0..CUSTOMERS)
                    .map(|c| NewRun { event: json!({"customer": c, "n": round, "from": e}), ..run(&format!("c{c}")) })
                    .collect();
                stores[(round + e) % 2].enqueue(&batch).await.unwrap();
            }
        }));
    }
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let done: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..4 {
        let (store, in_flight, done) = (stores[w % 2].clone(), in_flight.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while done.lock().unwrap().len() < CUSTOMERS * PER_CUSTOMER {
                assert!(Instant::now() < deadline, "not every run was delivered in time");
                let claimed = store.claim(&format!("w{w}"), 16, 2, now_ms(), LEASE).await.unwrap();
                if claimed.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let mut keys = HashMap::<String, Vec<_>>::new();
                for run in claimed {
                    keys.entry(run.ordering_key.clone()).or_default().push(run);
                }
                for (key, runs) in keys {
                    assert!(in_flight.lock().unwrap().insert(key.clone()), "two workers hold runs of {key} at once");
                    for run in &runs {
                        tokio::task::yield_now().await;
                        done.lock().unwrap().push((key.clone(), run.seq));
                    }
                    in_flight.lock().unwrap().remove(&key);
                    for run in runs {
                        store.complete(&run.lease().unwrap(), &Completion::Succeeded, &json!({}), &[]).await.unwrap();
                    }
                }
            }
        }));
    }
    for task in enqueuers.into_iter().chain(workers) {
        task.await.unwrap();
    }
    let done = done.lock().unwrap().clone();
    assert_eq!(done.len(), CUSTOMERS * PER_CUSTOMER);
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (key, seq) in done.iter() {
        let previous = last.insert(key, *seq).unwrap_or(i64::MIN);
        assert!(*seq > previous, "{key}: run {seq} went after run {previous}");
    }
    assert_eq!(done.iter().map(|(_, seq)| seq).collect::<HashSet<_>>().len(), done.len(), "a run went twice");
    assert_eq!(a.counts().await.unwrap().runs.succeeded as usize, CUSTOMERS * PER_CUSTOMER);
}

#[tokio::test]
async fn a_process_that_lost_its_lease_cannot_settle_and_an_expired_lease_is_taken_over() {
    let Some((_db, a, b)) = two_processes("lost leases across processes").await else { return };
    let ids = a.enqueue(&[run("alice"), run("alice")]).await.unwrap();
    let now = now_ms();
    let claimed = a.claim("a-worker", 10, 2, now, Duration::from_secs(3)).await.unwrap();
    assert_eq!(claimed.len(), 2);
    a.checkpoint(&claimed[0].lease().unwrap(), &json!({"step": 1}), now + 3_000).await.unwrap();
    assert!(b.claim("b-worker", 10, 2, now + 2_999, LEASE).await.unwrap().is_empty(), "the leases still hold");

    // Process a stalls past its leases: b takes both runs over, from a's checkpoint, in order.
    let taken = b.claim("b-worker", 10, 2, now + 3_000, LEASE).await.unwrap();
    assert_eq!(taken.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), ids);
    assert_eq!(taken[0].checkpoint, Some(json!({"step": 1})));
    assert!(taken.iter().all(|r| r.leases == 2 && r.lease_owner.as_deref() == Some("b-worker")));

    // a wakes up: nothing it does takes.
    let stale = claimed[0].lease().unwrap();
    let emitted = [crate::store::NewOutboxEvent { node_id: "n".into(), event: "point_add".into(), payload: json!({}) }];
    let lost = a.complete(&stale, &Completion::Succeeded, &json!({}), &emitted).await.unwrap_err();
    assert!(matches!(&lost, StoreError::LeaseLost { now, .. } if now.contains("b-worker")), "{lost}");
    assert!(a.checkpoint(&stale, &json!({"step": 2}), now + 9_000).await.unwrap_err().is_lease_lost());
    assert!(a.reschedule(&stale, now, &json!({}), None).await.unwrap_err().is_lease_lost());
    assert!(a.dead_letter(&stale, &json!({}), &json!({})).await.unwrap_err().is_lease_lost());
    let late = [crate::store::RunCompletion {
        lease: claimed[1].lease().unwrap(),
        completion: Completion::Succeeded,
        trace: None,
        emitted: Vec::new(),
    }];
    assert!(a.complete_many(&late).await.unwrap()[0].as_ref().unwrap_err().is_lease_lost());
    assert!(a.outbox(0, 10).await.unwrap().is_empty());
    let current = b.get(&ids[0]).await.unwrap().unwrap();
    assert_eq!((current.lease_owner.as_deref(), current.checkpoint), (Some("b-worker"), Some(json!({"step": 1}))));
    for run in &taken {
        b.complete(&run.lease().unwrap(), &Completion::Succeeded, &json!({}), &[]).await.unwrap();
    }
    assert_eq!(a.counts().await.unwrap().runs.succeeded, 2);
}

/// Each key's `run_keys.due` and how many of its wake-ups (null: at once) have come by `now`, by customer
/// (migration 0003).
async fn due_by_key(store: &PostgresStore, now: i64) -> HashMap<String, (Option<i64>, i64)> {
    let rows: Vec<(String, Option<i64>, i64)> = sqlx::query_as(
        "SELECT k.ordering_key, k.due, \
                (SELECT count(*) FROM key_wakeups w \
                  WHERE w.ordering_key = k.ordering_key AND (w.due IS NULL OR w.due <= $1)) \
           FROM run_keys k",
    )
    .bind(now)
    .fetch_all(&store.durable)
    .await
    .unwrap();
    // By customer: the conformance runs' ordering key is "<flow>/<customer>".
    rows.into_iter().map(|(key, due, wakeups)| (key.rsplit('/').next().unwrap().to_string(), (due, wakeups))).collect()
}

#[tokio::test]
async fn a_claim_looks_only_at_keys_that_may_be_due_and_what_reopens_a_key_wakes_it() {
    let Some((_db, a, b)) = two_processes("claims read due keys").await else { return };
    let ids = a.enqueue(&[run("dead"), run("dead"), run("done"), run("busy"), run("busy")]).await.unwrap();
    let now = now_ms();
    let claimed = a.claim("a", 10, 1, now, Duration::from_secs(3)).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let lease_end = claimed[0].lease_until.unwrap();
    let by_key = |key: &str| claimed.iter().find(|r| r.customer.as_deref() == Some(key)).unwrap().lease().unwrap();
    a.dead_letter(&by_key("dead"), &json!({"message": "refused"}), &json!({})).await.unwrap();
    a.complete(&by_key("done"), &Completion::Succeeded, &json!({}), &[]).await.unwrap();

    // Nothing is due. The completion woke its key, which the claim found with nothing open (never looked at again
    // until woken); the other keys are looked at when the leases they had end.
    assert!(b.claim("b", 10, 1, now + 1, LEASE).await.unwrap().is_empty());
    let due = due_by_key(&b, now + 1).await;
    assert_eq!(due["done"], (None, 0));
    assert_eq!(due["dead"], (Some(lease_end), 0));
    assert_eq!(due["busy"], (Some(lease_end), 0));

    // The leases end: the leased run is taken over (its key due when the new lease ends), and the dead letter's key
    // is looked at once, then never again: the dead letter holds it.
    let taken = b.claim("b", 10, 1, lease_end, LEASE).await.unwrap();
    assert_eq!(taken.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), [ids[3].clone()]);
    let due = due_by_key(&b, lease_end).await;
    assert_eq!(due["busy"], (taken[0].lease_until, 0));
    assert_eq!(due["dead"], (None, 0), "a dead letter holds its key: no claim looks at it");

    // A lease moved earlier wakes its key then.
    b.extend_lease(&taken[0].lease().unwrap(), lease_end + 10).await.unwrap();
    assert_eq!(b.claim("a", 10, 1, lease_end + 10, LEASE).await.unwrap()[0].id, ids[3]);

    // An operator's retry wakes the dead letter's key, whichever process claims next.
    assert!(b.retry_now(&ids[0]).await.unwrap());
    assert_eq!(due_by_key(&a, now + 1).await["dead"].1, 1);
    let retried = a.claim("a", 10, 2, lease_end + 11, LEASE).await.unwrap();
    assert_eq!(retried.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), [ids[0].clone(), ids[1].clone()]);
}

#[tokio::test]
async fn keys_woken_with_nothing_due_do_not_keep_a_claim_from_the_due_run_behind_them() {
    let Some((_db, a, _b)) = two_processes("a backlog of keys with nothing due").await else { return };
    // 300 customers held by a dead letter each, then a run more for each (which wakes its key, held all the same),
    // then one customer with a due run, whose key sorts after theirs.
    let held: Vec<NewRun> = (0..300).map(|i| run(&format!("held-{i:03}"))).collect();
    a.enqueue(&held).await.unwrap();
    let now = now_ms();
    let claimed = a.claim("a", 300, 1, now, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 300);
    for run in &claimed {
        a.dead_letter(&run.lease().unwrap(), &json!({"message": "refused"}), &json!({})).await.unwrap();
    }
    a.enqueue(&held).await.unwrap();
    let due = a.enqueue(&[run("live")]).await.unwrap();

    // A claim of one run looks at 18 keys at a time: it goes through the 300 woken keys in that one call.
    let next = a.claim("a", 1, 1, now_ms(), LEASE).await.unwrap();
    assert_eq!(next.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), [due[0].clone()]);
    let due_now = due_by_key(&a, now_ms()).await;
    assert!(due_now.iter().all(|(key, due)| key == "live" || *due == (None, 0)), "every held key is settled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resent_event_is_one_run_whichever_processes_receive_it() {
    let Some((_db, a, b)) = two_processes("de-duplication across processes").await else { return };
    let event = |i: usize| NewRun { dedup_key: Some(format!("evt-{i}")), ..run(&format!("c{}", i % 7)) };
    let mut tasks = Vec::new();
    for t in 0..6 {
        let store: Arc<dyn Store> = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            // Each task sends every event, in batches, in its own order.
            let mut order: Vec<usize> = (0..200).collect();
            order.rotate_left(t * 31);
            let mut ids = HashMap::new();
            for chunk in order.chunks(25) {
                let batch: Vec<NewRun> = chunk.iter().map(|&i| event(i)).collect();
                for (i, id) in chunk.iter().zip(store.enqueue(&batch).await.unwrap()) {
                    ids.insert(*i, id);
                }
            }
            ids
        }));
    }
    let mut all: Vec<HashMap<usize, String>> = Vec::new();
    for task in tasks {
        all.push(task.await.unwrap());
    }
    for i in 0..200 {
        let ids: HashSet<&String> = all.iter().map(|ids| &ids[&i]).collect();
        assert_eq!(ids.len(), 1, "event {i} got {} run ids", ids.len());
    }
    assert_eq!(a.counts().await.unwrap().runs.queued, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_enqueues_claims_completions_and_operators_never_deadlock() {
    let Some((_db, a, b)) = two_processes("deadlocks under concurrency").await else { return };
    let stores: [Arc<dyn Store>; 2] = [a.clone(), b.clone()];
    let deadlocks = Arc::new(AtomicUsize::new(0));
    let other_errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = {
        let (deadlocks, other_errors) = (deadlocks.clone(), other_errors.clone());
        move |error: StoreError| {
            if is_deadlock(&error) {
                deadlocks.fetch_add(1, Ordering::SeqCst);
            } else if !error.is_lease_lost() {
                other_errors.lock().unwrap().push(error.to_string());
            }
        }
    };
    let until = Instant::now() + Duration::from_secs(8);
    let enqueued = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for e in 0..4 {
        let (store, record, enqueued) = (stores[e % 2].clone(), record.clone(), enqueued.clone());
        tasks.push(tokio::spawn(async move {
            let mut round = 0;
            while Instant::now() < until {
                // Overlapping keys in different orders, and connections that get held.
                let mut batch: Vec<NewRun> = (0..20)
                    .map(|i| {
                        let connections: &[&str] = if i % 3 == 0 { &["cdp", "crm"] } else { &["cdp"] };
                        run_for(&format!("c{}", (i * 7 + round + e) % 30), connections)
                    })
                    .collect();
                if e % 2 == 1 {
                    batch.reverse();
                }
                match store.enqueue(&batch).await {
                    Ok(ids) => _ = enqueued.fetch_add(ids.len(), Ordering::SeqCst),
                    Err(error) => record(error),
                }
                round += 1;
            }
        }));
    }
    for w in 0..6 {
        let (store, record) = (stores[w % 2].clone(), record.clone());
        tasks.push(tokio::spawn(async move {
            let mut turn = 0usize;
            while Instant::now() < until {
                let claimed = match store.claim(&format!("w{w}"), 32, 2, now_ms(), LEASE).await {
                    Ok(claimed) => claimed,
                    Err(error) => {
                        record(error);
                        continue;
                    }
                };
                let mut completions = Vec::new();
                for run in claimed {
                    turn += 1;
                    let lease = run.lease().unwrap();
                    let result = match turn % 10 {
                        0 => store.reschedule(&lease, now_ms(), &json!({"status": 503}), None).await.map(|_| ()),
                        1 => store.release(&[lease]).await,
                        2 => store.checkpoint(&lease, &json!({}), now_ms() + 30_000).await,
                        _ => {
                            completions.push(crate::store::RunCompletion {
                                lease,
                                completion: Completion::Succeeded,
                                trace: serde_json::value::to_raw_value(&json!({"w": w})).ok(),
                                emitted: vec![crate::store::NewOutboxEvent {
                                    node_id: "n".into(),
                                    event: "point_add".into(),
                                    payload: json!({}),
                                }],
                            });
                            Ok(())
                        }
                    };
                    if let Err(error) = result {
                        record(error);
                    }
                }
                match store.complete_many(&completions).await {
                    Ok(results) => results.into_iter().filter_map(Result::err).for_each(&record),
                    Err(error) => record(error),
                }
            }
        }));
    }
    // An operator holds and releases a connection, and retries and drops runs, meanwhile.
    {
        let (store, record) = (stores[0].clone(), record.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                if let Err(error) = store.hold_connection("crm").await {
                    record(error);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Err(error) = store.release_connection("crm").await {
                    record(error);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Ok(runs) = store.list(&crate::store::RunFilter { limit: 5, ..Default::default() }).await {
                    for run in runs {
                        let result = if run.seq % 2 == 0 {
                            store.retry_now(&run.id).await
                        } else {
                            store.drop_run(&run.id).await
                        };
                        if let Err(error) = result {
                            record(error);
                        }
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(deadlocks.load(Ordering::SeqCst), 0, "deadlocks");
    assert!(other_errors.lock().unwrap().is_empty(), "errors: {:?}", other_errors.lock().unwrap());
    let counts = a.counts().await.unwrap().runs;
    eprintln!("enqueued {}; {counts:?}", enqueued.load(Ordering::SeqCst));
    assert!(counts.succeeded > 100, "{counts:?}");
}

#[tokio::test]
async fn another_process_enqueuing_wakes_the_workers_and_poll_only_never_listens() {
    let Some(database) = TestDatabase::create("LISTEN/NOTIFY wake-ups").await else { return };
    let sender = database.store().await;
    let listening = database.store().await;
    let polling = database.store_with("poll_only=true").await;
    let woken: Arc<Mutex<Vec<(&'static str, Wake)>>> = Arc::default();
    for (name, store) in [("listening", &listening), ("polling", &polling)] {
        let woken = woken.clone();
        store.on_wake(Arc::new(move |what| woken.lock().unwrap().push((name, what))));
    }
    // The listener connects in the background: wait until it hears an enqueue.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !woken.lock().unwrap().contains(&("listening", Wake::Runs)) {
        assert!(Instant::now() < deadline, "the listener never heard anything");
        sender.enqueue(&[run("warm-up")]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let warm_up = polling.claim("poller", 1000, 1, now_ms(), LEASE).await.unwrap();
    assert!(!warm_up.is_empty());
    woken.lock().unwrap().clear();
    sender.enqueue(&[run("a")]).await.unwrap();
    sender
        .record_inbound(&crate::store::InboundMessage {
            connection: "mp".into(),
            source: "s".into(),
            external_id: None,
            body: json!({}),
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = woken.lock().unwrap().clone();
        if seen.contains(&("listening", Wake::Runs)) && seen.contains(&("listening", Wake::Inbound)) {
            break;
        }
        assert!(Instant::now() < deadline, "no wake-up came: {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(woken.lock().unwrap().iter().all(|(name, _)| *name == "listening"), "poll_only listened");
    // Polling alone still finds the work.
    assert_eq!(polling.claim("poller", 10, 1, now_ms(), LEASE).await.unwrap().len(), 1);
    assert_eq!(polling.claim_inbound("poller", 10, now_ms(), LEASE).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processes_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let Some(database) = TestDatabase::create("migrations").await else { return };
    let location = PostgresLocation::parse(&database.url("")).unwrap();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let location = location.clone();
            tokio::spawn(async move { PostgresStore::open(&location).await.map(|store| store.location().clone()) })
        })
        .collect();
    for open in opens {
        open.await.unwrap().unwrap();
    }
    let store = PostgresStore::open(&location).await.unwrap();
    let version = super::schema_version();
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&store.durable).await.unwrap();
    assert_eq!(applied as usize, super::MIGRATOR.iter().count());
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', true, '\\x00', 0)",
    )
    .execute(&store.durable)
    .await
    .unwrap();
    store.close().await;
    let error = PostgresStore::open(&location).await.unwrap_err().to_string();
    assert!(error.contains("99990101000000") && error.contains(&format!("({version})")), "{error}");
}

#[tokio::test]
async fn a_database_upgraded_to_migration_3_claims_the_runs_it_held() {
    let Some(database) = TestDatabase::create("upgrade to migration 0003").await else { return };
    // The schema as migration 0002 left it, with three runs of two customers queued.
    let pool = sqlx::PgPool::connect(&database.url("")).await.unwrap();
    super::MIGRATOR.run_to(2, &pool).await.unwrap();
    let enqueued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM flowhost_enqueue(ARRAY['r1', 'r2', 'r3'], ARRAY['f', 'f', 'f'], ARRAY['1', '1', '1'], \
         ARRAY['[\"cdp\"]', '[\"cdp\"]', '[\"cdp\"]'], ARRAY['f/a', 'f/a', 'f/b'], ARRAY['a', 'a', 'b'], \
         ARRAY[NULL, NULL, NULL]::text[], ARRAY['{}', '{}', '{}'], $1)",
    )
    .bind(now_ms())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(enqueued, 0, "no dedup keys");
    pool.close().await;

    let store = database.store().await;
    let claimed = store.claim("w", 10, 2, now_ms(), LEASE).await.unwrap();
    assert_eq!(claimed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["r1", "r2", "r3"]);
    let due = due_by_key(&store, now_ms()).await;
    assert!(due.values().all(|(due, wakeups)| due.is_some() && *wakeups == 0), "{due:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_an_error_naming_its_host_and_port() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let location = PostgresLocation::parse(&format!("postgres://flowhost:hunter2@127.0.0.1:{port}/flowhost")).unwrap();
    let started = Instant::now();
    let error = PostgresStore::open(&location).await.unwrap_err().to_string();
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn calls_fail_while_the_server_is_away_and_work_again_when_it_returns() {
    if server_binaries().is_none() {
        // Stopping a server takes a cluster of our own.
        let Some(_) = TestDatabase::create("the server going away").await else { return };
        eprintln!("*** SKIPPED the server going away: it stops and starts a throwaway cluster of its own ***");
        return;
    }
    let cluster = tokio::task::spawn_blocking(|| TestCluster::start("-c fsync=off")).await.unwrap().unwrap();
    let location = PostgresLocation::parse(&cluster.url("postgres")).unwrap();
    let store = PostgresStore::open(&location).await.unwrap();
    let before = store.enqueue(&[run("a")]).await.unwrap();

    let cluster = Arc::new(cluster);
    let stopping = cluster.clone();
    tokio::task::spawn_blocking(move || stopping.stop()).await.unwrap();
    let started = Instant::now();
    let error = store.enqueue(&[run("b")]).await.unwrap_err();
    assert!(matches!(error, StoreError::Database { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(15), "an accept waited {:?}", started.elapsed());
    assert!(store.claim("w", 10, 1, now_ms(), LEASE).await.is_err());

    let starting = cluster.clone();
    tokio::task::spawn_blocking(move || starting.restart()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        match store.enqueue(&[run("c")]).await {
            Ok(ids) => break ids,
            Err(error) => {
                assert!(Instant::now() < deadline, "the store did not come back: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let claimed = loop {
        match store.claim("w", 10, 1, now_ms(), LEASE).await {
            Ok(claimed) => break claimed,
            Err(error) => assert!(Instant::now() < deadline, "claims did not come back: {error}"),
        }
    };
    let ids: HashSet<String> = claimed.into_iter().map(|run| run.id).collect();
    assert_eq!(ids, HashSet::from([before[0].clone(), after[0].clone()]), "nothing lost, nothing more");
    store.close().await;
}

#[tokio::test]
async fn the_integrity_check_finds_migrations_that_are_not_this_builds_and_tables_that_do_not_answer() {
    let Some(database) = TestDatabase::create("PostgreSQL integrity check").await else { return };
    let store = database.store().await;
    let healthy = store.check_integrity().await.unwrap();
    assert!(healthy.ok(), "{healthy:?}");
    for tamper in [
        "UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = 2",
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99, 'from elsewhere', true, '\\x00', 0)",
        "ALTER TABLE outbox RENAME TO outbox_moved",
    ] {
        sqlx::query(tamper).execute(&store.durable).await.unwrap();
    }
    let found = store.check_integrity().await.unwrap();
    assert_eq!(found.check, "the schema's migrations and tables");
    let problems = found.problems.join("\n");
    assert_eq!(found.problems.len(), 3, "{problems}");
    assert!(problems.contains("migration 2 (retention) applied differs from this build's"), "{problems}");
    assert!(problems.contains("migration 99 is applied but unknown to this build"), "{problems}");
    assert!(problems.contains("table outbox cannot be read"), "{problems}");
    store.close().await;

    // A table that does not answer keeps the store from opening, named.
    let Some(other) = TestDatabase::create("PostgreSQL integrity check at open").await else { return };
    let store = other.store().await;
    sqlx::query("ALTER TABLE inbound RENAME TO inbound_moved").execute(&store.durable).await.unwrap();
    store.close().await;
    let location = PostgresLocation::parse(&other.url("")).unwrap();
    let error = PostgresStore::open(&location).await.unwrap_err();
    assert!(matches!(error, StoreError::Open { .. }), "{error}");
    assert!(error.to_string().contains("table inbound cannot be read"), "{error}");
}
