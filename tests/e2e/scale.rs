//! Scale-out on PostgreSQL, end to end: three `flowhost serve` processes share one database (a throwaway cluster, see
//! `flowhost::store::postgres_testing`) and deliver to the mParticle emulator, which answers 429 and 503 and stalls
//! now and then. Events for many customers are posted round robin to the three; one of them is killed with SIGKILL
//! twice and started again. Then every accepted event was delivered, none twice after mParticle's de-duplication by
//! `source_request_id`, every customer's events in order, and no run is left leased.
//!
//! The issue asks for 20,000 events for 200 customers; `FLOWHOST_E2E_SCALE_EVENTS` and
//! `FLOWHOST_E2E_SCALE_CUSTOMERS` change the counts (see the default below).

use crate::serve::{ServiceDir, client, delivered_points, eventually, repo_flow, wait_for_the_queue_to_drain};
use flowhost::store::postgres_testing::TestDatabase;
use flowhost::store::{RunFilter, RunState, Store};
use mparticle_emulator::{EmulatorConfig, FaultRule};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::RwLock;

/// Events and customers by default: the figures.
const EVENTS: usize = 20_000;
const CUSTOMERS: usize = 200;
const PROCESSES: usize = 3;
/// Events per POST.
const PER_REQUEST: usize = 10;
/// Concurrent posters; each owns some customers and sends their events in order.
const POSTERS: usize = 8;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_on_one_postgresql_lose_nothing_duplicate_nothing_and_keep_each_customers_order() {
    let Some(database) = TestDatabase::create("many processes on PostgreSQL").await else { return };
    let events = setting("FLOWHOST_E2E_SCALE_EVENTS", EVENTS);
    let customers = setting("FLOWHOST_E2E_SCALE_CUSTOMERS", CUSTOMERS).max(1);
    let per_customer = events.div_ceil(customers);
    let started = Instant::now();

    let emulator = mparticle_emulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let handle = emulator.handle();
    handle.set_faults(vec![
        FaultRule::status(429).fraction(0.03).path_prefix("/v2/").retry_after(Some(1)),
        FaultRule::status(503).fraction(0.03).path_prefix("/v2/"),
        // Processed, then no answer before the 2 s invocation deadline: the resend is de-duplicated.
        FaultRule::stall(2500).fraction(0.005).path_prefix("/v2/").after_processing(),
    ]);
    let flows = [("point-add.json", repo_flow("point-add-to-mparticle.json"))];
    let url = database.url("pool_size=4");
    // The 429s injected here are random faults, not a rate limit: with pacing, each would pause the whole
    // connection of every process for its Retry-After. Pacing has tests of its own (e2e `pacing`).
    let services: Vec<ServiceDir> = (0..PROCESSES)
        .map(|_| {
            ServiceDir::new(&emulator, &flows, "").store(&url).delivery("concurrency = 128").delivery("pacing = false")
        })
        .collect();
    let mut servers: Vec<Option<crate::serve::Server>> =
        tokio::task::block_in_place(|| services.iter().map(|service| Some(service.start())).collect());
    let urls: Arc<Vec<RwLock<Option<String>>>> =
        Arc::new(servers.iter().map(|server| RwLock::new(server.as_ref().map(|s| s.url.clone()))).collect());
    let sent = Arc::new(AtomicUsize::new(0));
    let next_server = Arc::new(AtomicUsize::new(0));

    let mut posters = Vec::new();
    for poster in 0..POSTERS {
        let (urls, sent, next_server) = (urls.clone(), sent.clone(), next_server.clone());
        posters.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mine: Vec<usize> = (0..customers).filter(|c| c % POSTERS == poster).collect();
            for step in (0..per_customer).step_by(PER_REQUEST) {
                for customer in &mine {
                    let customer = format!("cust-{customer}");
                    let events: Vec<Value> = (step..(step + PER_REQUEST).min(per_customer))
                        .map(|k| {
                            json!({"event": "point_add", "id": format!("{customer}/{k}"), "customer": customer,
                                   "data": {"customerId": customer, "points": k, "balance": k * 10}})
                        })
                        .collect();
                    // Round robin over the processes; one that is down (killed) or refuses (503) is skipped, and the
                    // request re-sent to the next with the same ids.
                    let deadline = Instant::now() + Duration::from_secs(120);
                    loop {
                        assert!(Instant::now() < deadline, "no process accepted {customer}'s events");
                        let target = next_server.fetch_add(1, Ordering::Relaxed) % PROCESSES;
                        let Some(base) = urls[target].read().await.clone() else { continue };
                        match client().post(format!("{base}/v1/events")).json(&events).send().await {
                            Ok(response) if response.status() == 202 => break,
                            Ok(response) if response.status() == 503 => {}
                            Ok(response) => {
                                panic!("refused: {} {}", response.status(), response.text().await.unwrap())
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                    sent.fetch_add(events.len(), Ordering::SeqCst);
                    accepted.extend(events.iter().map(|e| (customer.clone(), e["data"]["points"].as_i64().unwrap())));
                }
            }
            accepted
        }));
    }

    // Process 0 is killed twice mid-load, and started again each time on the same database.
    let total = customers * per_customer;
    for kill_at in [total / 3, total * 2 / 3] {
        while sent.load(Ordering::SeqCst) < kill_at {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        *urls[0].write().await = None;
        servers[0].take().unwrap().kill();
        let restarted = tokio::task::block_in_place(|| services[0].start());
        *urls[0].write().await = Some(restarted.url.clone());
        servers[0] = Some(restarted);
    }
    let mut accepted = BTreeSet::new();
    for poster in posters {
        accepted.extend(poster.await.unwrap());
    }
    assert_eq!(accepted.len(), total, "every event was eventually accepted");
    let posted_in = started.elapsed();

    // The queue drains: runs of the killed process resume once their leases expire, on any process.
    let base = urls[1].read().await.clone().unwrap();
    wait_for_the_queue_to_drain(&base, Duration::from_secs(600), || {
        services.iter().map(|service| service.log()).collect::<Vec<_>>().join("\n")
    })
    .await;
    // The operator's view of the same queue, from the command line: nothing queued, leased, held or dead.
    let listed = crate::output_within(
        std::process::Command::new(crate::serve::flowhost_bin())
            .args(["queue", "list", "--json", "--store", &url])
            .env_remove("FLOWHOST_STORE"),
        Duration::from_secs(120),
    );
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&listed.stdout).unwrap(), json!([]));
    let delivered = delivered_points(&handle.batches());
    let unique: BTreeSet<(String, i64)> = delivered.iter().cloned().collect();
    let missing: Vec<_> = accepted.difference(&unique).take(10).collect();
    assert!(
        missing.is_empty(),
        "accepted but not delivered (first 10 of {}): {missing:?}",
        accepted.len() - unique.len()
    );
    assert_eq!(unique, accepted, "nothing was delivered that was not accepted");
    assert_eq!(delivered.len(), unique.len(), "none twice after mParticle's de-duplication");
    let mut per_customer_points: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (customer, points) in &delivered {
        per_customer_points.entry(customer.clone()).or_default().push(*points);
    }
    for (customer, points) in &per_customer_points {
        assert!(points.windows(2).all(|w| w[0] < w[1]), "{customer} out of order: {points:?}");
    }
    let stats = handle.stats();
    assert!(stats.faults_injected > 0, "the faults were exercised: {stats:?}");

    // Every run succeeded, none is left leased, and each process did some of the work.
    let metrics = crate::serve::send(client().get(format!("{base}/metrics"))).await.1;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    for (state, expected) in [("succeeded", total), ("leased", 0), ("queued", 0), ("dead", 0), ("held", 0)] {
        let line = format!("flowhost_queue_runs{{state=\"{state}\"}} {expected}");
        assert!(metrics.contains(&line), "expected `{line}`:\n{metrics}");
    }
    // Read straight from the database: which workers (a process each) completed runs.
    let store = database.store().await;
    let mut workers = BTreeSet::new();
    let mut filter = RunFilter { statuses: vec![RunState::Succeeded], limit: 1000, ..RunFilter::default() };
    loop {
        let runs = store.list(&filter).await.unwrap();
        workers.extend(runs.iter().filter_map(|run| run.lease_owner.clone()));
        match runs.last() {
            Some(last) if runs.len() == 1000 => filter.before_seq = Some(last.seq),
            _ => break,
        }
    }
    store.close().await;
    assert!(workers.len() >= PROCESSES, "runs were delivered by {workers:?}");
    eprintln!(
        "{total} events for {customers} customers: posted in {:.1} s, delivered in {:.1} s; {stats:?}",
        posted_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    for server in servers.into_iter().flatten() {
        server.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_stops_serve_at_start_naming_host_and_port_but_not_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let emulator = mparticle_emulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let service = ServiceDir::new(&emulator, &[("point-add.json", repo_flow("point-add-to-mparticle.json"))], "");
    let output = crate::output_within(
        std::process::Command::new(crate::serve::flowhost_bin())
            .args(["serve", "--config"])
            .arg(service.config())
            .args(["--store", &format!("postgres://flowhost:hunter2@127.0.0.1:{port}/flowhost")])
            .env_remove("FLOWHOST_STORE")
            .env("MPARTICLE_INBOUND_TOKEN", "token"),
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("cannot connect to the PostgreSQL server at 127.0.0.1:{port}")), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_away_accepts_answer_503_and_everything_resumes_when_it_returns() {
    use flowhost::store::postgres_testing::{TestCluster, server_binaries};
    if server_binaries().is_none() {
        // It stops and starts a cluster of its own: without the binaries, say so (or fail in CI).
        let Some(_) = TestDatabase::create("the database going away while serving").await else { return };
        eprintln!("*** SKIPPED the database going away: it needs the PostgreSQL server binaries ***");
        return;
    }
    let cluster = Arc::new(tokio::task::block_in_place(|| TestCluster::start("-c fsync=off")).unwrap());
    let emulator = mparticle_emulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let service = ServiceDir::new(&emulator, &[("point-add.json", repo_flow("point-add-to-mparticle.json"))], "")
        .store(&cluster.url("postgres"));
    let server = tokio::task::block_in_place(|| service.start());
    let post = |n: i64| {
        let event = json!([{"event": "point_add", "id": format!("away/{n}"), "customer": "cust-away",
                            "data": {"customerId": "cust-away", "points": n, "balance": n}}]);
        client().post(format!("{}/v1/events", server.url)).json(&event).send()
    };
    assert_eq!(post(1).await.unwrap().status(), 202);
    let handle = emulator.handle();
    eventually(Duration::from_secs(60), "the first event delivered", || async { handle.stats().accepted == 1 }).await;

    let stopping = cluster.clone();
    tokio::task::spawn_blocking(move || stopping.stop()).await.unwrap();
    let response = post(2).await.unwrap();
    assert_eq!(response.status(), 503, "{}", response.text().await.unwrap());

    let starting = cluster.clone();
    tokio::task::spawn_blocking(move || starting.restart()).await.unwrap();
    // The event refused meanwhile is sent again, as a client does after a 503, with the same id.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match post(2).await {
            Ok(response) if response.status() == 202 => break,
            _ => assert!(Instant::now() < deadline, "accepts did not resume"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(post(3).await.unwrap().status(), 202);
    eventually(Duration::from_secs(60), "the events after the outage delivered", || async {
        handle.stats().accepted == 3
    })
    .await;
    let delivered = delivered_points(&handle.batches());
    assert_eq!(delivered.iter().map(|(_, points)| *points).collect::<Vec<_>>(), [1, 2, 3], "{delivered:?}");
    let log = service.log();
    assert!(!log.contains("panicked"), "{log}");
    server.terminate();
}

/// `flowhost bench --store postgres://… --processes 2 --mparticle-latency-ms 20`, small: the bench runs two services on
/// one database, every event arrives once, and the report says what ran. (Its figures go in BENCHMARKS.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_runs_many_processes_on_one_database_with_mparticle_a_round_trip_away() {
    let Some(database) = TestDatabase::create("flowhost bench on PostgreSQL").await else { return };
    let store = database.url("pool_size=2");
    let report = tokio::task::block_in_place(|| {
        crate::bench_report(&[
            "--quick",
            "--events",
            "400",
            "--processes",
            "2",
            "--mparticle-latency-ms",
            "20",
            "--store",
            &store,
        ])
    });
    assert_eq!((report["processes"].as_u64(), report["mparticleLatencyMs"].as_u64()), (Some(2), Some(20)), "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert!(report["deliveredPerSecond"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["databaseCpuUsPerEvent"].as_f64().is_some(), "PostgreSQL's CPU is reported: {report}");
}
