//! The store's integrity check in `flowhost serve` (issue 22): pages of the SQLite file damaged under a running
//! service turn `/healthz` to 503 at the next scheduled check (with what `PRAGMA quick_check` found for the API
//! token's holder, only "down" for anyone else) and show in `/metrics`; the damaged file then keeps `serve` from
//! starting, with an error naming the file and what the check found.

use crate::serve::{ServiceDir, client, repo_flow, send};
use flowhost::store::sqlite_testing::corrupt_tail_pages;
use flowhost::store::{SqliteStore, Store, conformance};
use mparticle_emulator::EmulatorConfig;
use std::path::Path;
use std::time::{Duration, Instant};

const API_TOKEN: &str = "api-token-integrity-3b7";

/// Fills the store file with runs that nothing will touch (their connection is held, and no flow uses it), so that
/// the pages damaged below are in the file rather than in the running service's WAL, as a disk's damage would be.
async fn fill(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let store = SqliteStore::open(path).await.unwrap();
    store.hold_connection("cdp").await.unwrap();
    for batch in 0..20 {
        let runs: Vec<_> = (0..200).map(|i| conformance::run(&format!("customer-{batch}-{i}"))).collect();
        store.enqueue(&runs).await.unwrap();
    }
    store.close().await;
}

/// `/metrics`, with the API token: its status and text.
async fn metrics(base: &str) -> (u16, String) {
    let request = client().get(format!("{base}/metrics")).header("authorization", format!("Bearer {API_TOKEN}"));
    let (status, text) = send(request).await;
    (status, text.as_str().map(str::to_string).unwrap_or_else(|| text.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_turns_unhealthy_when_the_store_file_is_damaged_and_serve_then_refuses_to_start() {
    let emulator = mparticle_emulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let extra = "api_token = { secret = \"FLOWHOST_API_TOKEN\" }\n\n[integrity]\ninterval = \"1s\"\n";
    let service = ServiceDir::new(&emulator, &[("point-add.json", repo_flow("point-add-to-mparticle.json"))], extra);
    let store_file = service.config().parent().unwrap().join("data/flowhost.db");
    fill(&store_file).await;
    let server = service.start_with(&[("FLOWHOST_API_TOKEN", API_TOKEN)]);
    let healthz = format!("{}/healthz", server.url);
    let bearer = format!("Bearer {API_TOKEN}");

    // Healthy, and the token's holder sees the check that passed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let integrity = loop {
        let (status, body) = send(client().get(&healthz).header("authorization", &bearer)).await;
        assert_eq!(status, 200, "{body}");
        if body["storeIntegrity"]["status"] != "pending" {
            break body["storeIntegrity"].clone();
        }
        assert!(Instant::now() < deadline, "no integrity check ended: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(integrity["status"], "ok", "{integrity}");
    assert_eq!(integrity["check"], "PRAGMA quick_check", "{integrity}");
    assert!(integrity["checkedAt"].as_str().is_some_and(|at| at.ends_with('Z')), "{integrity}");
    let (status, anonymous) = send(client().get(&healthz)).await;
    assert_eq!((status, anonymous.get("storeIntegrity")), (200, None), "{anonymous}");
    let gauge = |text: &str, name: &str| -> Option<u64> {
        text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    let (status, text) = metrics(&server.url).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(gauge(&text, "flowhost_store_integrity_problems"), Some(0), "{text}");
    assert!(gauge(&text, "flowhost_store_integrity_checked_timestamp_seconds").is_some_and(|at| at > 0), "{text}");

    corrupt_tail_pages(&store_file);
    let deadline = Instant::now() + Duration::from_secs(60);
    let said = loop {
        let (status, body) = send(client().get(&healthz).header("authorization", &bearer)).await;
        if status == 503 {
            break body["error"].as_str().unwrap_or_default().to_string();
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "healthz still healthy 60 s after the damage: {body}\n{}", service.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(said.starts_with("the store failed its integrity check (PRAGMA quick_check, at "), "{said}");
    assert!(said.ends_with("; restore it from a backup"), "{said}");
    // An anonymous caller learns only that the service is down.
    let (status, anonymous) = send(client().get(&healthz)).await;
    assert_eq!((status, anonymous), (503, serde_json::json!({"error": "down"})));
    // /metrics shows the problems, unless the damage keeps it from reading the queue's sizes (a 503, as for a store
    // that is not reachable).
    match metrics(&server.url).await {
        (200, text) => {
            let problems = gauge(&text, "flowhost_store_integrity_problems");
            assert!(problems.is_some_and(|n| (1..=10).contains(&n)), "{text}");
        }
        (status, text) => assert_eq!((status, text.contains("database")), (503, true), "{text}"),
    }
    assert!(service.log().contains("the store failed its integrity check"), "{}", service.log());
    server.kill();

    // The damaged file keeps the service from starting, with the file and what the check found named.
    let mut command = std::process::Command::new(crate::serve::flowhost_bin());
    command.args(["serve", "--config"]).arg(service.config()).env_remove("FLOWHOST_STORE").env("RUST_LOG", "warn");
    command.env("FLOWHOST_API_TOKEN", API_TOKEN).env("MPARTICLE_INBOUND_TOKEN", crate::serve::INBOUND_TOKEN);
    command.env("MPARTICLE_API_KEY", mparticle_emulator::DEMO_API_KEY);
    command.env("MPARTICLE_API_SECRET", mparticle_emulator::DEMO_API_SECRET);
    let output = crate::output_within(&mut command, Duration::from_secs(120));
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success() && !said.contains("serving on"), "{said}");
    assert!(said.contains(&format!("cannot open the store at {}", store_file.display())), "{said}");
    assert!(said.contains("the database file is corrupt; PRAGMA quick_check found: "), "{said}");
    assert!(!said.contains("panicked"), "{said}");
}
