//! `flowhost serve` end to end: the real binary against the mParticle emulator on loopback. It is killed with
//! SIGKILL mid-load and restarted, fed mParticle's inbound formats, and its resend queue is driven through
//! dead letters, retries and drops, over HTTP and the CLI.

use mparticle_emulator::{DEMO_API_KEY, DEMO_API_SECRET, EmulatorConfig, FaultRule, RecordedBatch, RunningEmulator};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::RwLock;

pub(crate) const INBOUND_TOKEN: &str = "inbound-token-4f1c";

/// The `flowhost` command line as a binary cargo builds for these tests (`tests/bin/flowhost-e2e.rs`: the
/// product's `flowhost_cli::main`), so the tests never run a stale or missing build.
pub(crate) fn flowhost_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flowhost-e2e"))
}

/// Compiled components survive restarts and tests, as they do in production.
fn compile_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-compile-cache")
}

pub(crate) fn repo_flow(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../flows").join(name)).unwrap()
}

/// A service directory: its config, its flows, its store.
pub(crate) struct ServiceDir {
    dir: tempfile::TempDir,
    /// More environment for the server (e.g. the secret its `api_token` names).
    env: Vec<(String, String)>,
}

impl ServiceDir {
    pub(crate) fn new(emulator: &RunningEmulator, flows: &[(&str, String)], extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("flows")).unwrap();
        for (name, text) in flows {
            std::fs::write(dir.path().join("flows").join(name), text).unwrap();
        }
        let url = emulator.url();
        let config = format!(
            r#"
listen = "127.0.0.1:0"
store = "data/flowhost.db"
flows = ["flows"]
max_body_bytes = 65536
{extra}

[delivery]
lease_seconds = 3
shutdown_grace_seconds = 5

[connectors]
allow_private = true

[secrets]
environment = true
allow = ["MPARTICLE_API_KEY", "MPARTICLE_API_SECRET"]

[connections.mparticle]
inbound_token = {{ secret = "MPARTICLE_INBOUND_TOKEN" }}
config = {{ eventsApiUrl = "{url}/v2", authUrl = "{url}/oauth/token", platformApiUrl = "{url}" }}
"#
        );
        std::fs::write(dir.path().join("flowhost.toml"), config).unwrap();
        ServiceDir { dir, env: Vec::new() }
    }

    /// Sets an environment variable for the server.
    pub(crate) fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Uses `store` (e.g. a PostgreSQL URL) instead of the directory's SQLite file.
    pub(crate) fn store(self, store: &str) -> Self {
        let text = std::fs::read_to_string(self.config()).unwrap();
        std::fs::write(
            self.config(),
            text.replacen("store = \"data/flowhost.db\"", &format!("store = \"{store}\""), 1),
        )
        .unwrap();
        self
    }

    /// Adds a line to the config's `[delivery]` section.
    pub(crate) fn delivery(self, line: &str) -> Self {
        let text = std::fs::read_to_string(self.config()).unwrap();
        std::fs::write(self.config(), text.replacen("[delivery]\n", &format!("[delivery]\n{line}\n"), 1)).unwrap();
        self
    }

    /// Adds a line to the config's `[connections.mparticle]` section.
    pub(crate) fn connection(self, line: &str) -> Self {
        let text = std::fs::read_to_string(self.config()).unwrap();
        let section = "[connections.mparticle]\n";
        std::fs::write(self.config(), text.replacen(section, &format!("{section}{line}\n"), 1)).unwrap();
        self
    }

    pub(crate) fn config(&self) -> PathBuf {
        self.dir.path().join("flowhost.toml")
    }

    /// Starts `flowhost serve` and waits for it to listen.
    pub(crate) fn start(&self) -> Server {
        self.start_with(&[])
    }

    /// Starts `flowhost serve` with more environment variables (secrets the config references).
    pub(crate) fn start_with(&self, env: &[(&str, &str)]) -> Server {
        let log = std::fs::File::options().create(true).append(true).open(self.dir.path().join("server.log")).unwrap();
        let mut child = Command::new(flowhost_bin())
            .arg("--cache-dir")
            .arg(compile_cache())
            .args(["--timeout", "2", "serve", "--config"])
            .arg(self.config())
            .env("MPARTICLE_API_KEY", DEMO_API_KEY)
            .env("MPARTICLE_API_SECRET", DEMO_API_SECRET)
            .env("MPARTICLE_INBOUND_TOKEN", INBOUND_TOKEN)
            .env("RUST_LOG", "info")
            .env_remove("FLOWHOST_STORE")
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let line = match receiver.recv_timeout(Duration::from_secs(300)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
                panic!("flowhost serve did not start:\n{log}");
            }
        };
        let url = line
            .split_once("serving on ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_string();
        Server { child, url, lines: receiver }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Server {
    /// SIGKILL: no shutdown code runs.
    pub(crate) fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM: a graceful shutdown; returns what it printed.
    pub(crate) fn terminate(mut self) -> Vec<String> {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        // Far above the shutdown's own bound, so that only a shutdown that hangs fails here.
        let exit = crate::wait_within(&mut self.child, Duration::from_secs(120))
            .expect("graceful shutdown did not end within 120 s (killed)");
        assert!(exit.success(), "graceful shutdown exits 0: {exit:?}");
        self.lines.try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn client() -> reqwest::Client {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap()
}

pub(crate) async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

pub(crate) async fn get(url: String) -> Value {
    let (status, body) = send(client().get(url)).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until `check` holds, or fails with `what` after `timeout`.
pub(crate) async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `base`'s queue holds no open run. On a timeout, fails with what is still open, the service's
/// health (its connections' pacing among it) and the end of its log, so that a queue that never drains says why.
pub(crate) async fn wait_for_the_queue_to_drain(base: &str, timeout: Duration, log: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    loop {
        let queue = get(format!("{base}/v1/queue?status=queued,leased,held,dead")).await;
        if queue["runs"].as_array().unwrap().is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            let health = get(format!("{base}/healthz")).await;
            let log = log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
            panic!(
                "timed out waiting for the queue to drain; still open:\n{queue:#}\nhealth: {health}\nthe log's end:\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(customer, points)` of every point_add event mParticle accepted, in arrival order.
pub(crate) fn delivered_points(batches: &[RecordedBatch]) -> Vec<(String, i64)> {
    batches
        .iter()
        .filter_map(|b| {
            let customer = b.batch.pointer("/user_identities/customer_id")?.as_str()?.to_string();
            let points = b.batch.pointer("/events/0/data/custom_attributes/points")?;
            let points = points.as_i64().or_else(|| points.as_str()?.parse().ok())?;
            Some((customer, points))
        })
        .collect()
}

async fn emulator() -> RunningEmulator {
    mparticle_emulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_nothing_duplicates_nothing_and_keeps_each_customers_order() {
    const CUSTOMERS: usize = 12;
    const PER_CUSTOMER: usize = 25;
    const POSTERS: usize = 4;
    let emulator = emulator().await;
    let handle = emulator.handle();
    handle.set_faults(vec![
        FaultRule::status(429).fraction(0.05).path_prefix("/v2/").retry_after(Some(1)),
        FaultRule::status(503).fraction(0.05).path_prefix("/v2/"),
        // Processed, then no answer before the 2 s invocation deadline: the resend is de-duplicated.
        FaultRule::stall(2500).fraction(0.02).path_prefix("/v2/").after_processing(),
    ]);
    let service = ServiceDir::new(&emulator, &[("point-add.json", repo_flow("point-add-to-mparticle.json"))], "");
    let server = service.start();
    let url = Arc::new(RwLock::new(server.url.clone()));
    let sent = Arc::new(AtomicUsize::new(0));

    // Each poster owns some customers and sends their events in order, two per request, re-sending a
    // request (same event ids) until it is accepted: the way a platform talks to flowhost.
    let mut posters = Vec::new();
    for poster in 0..POSTERS {
        let (url, sent) = (url.clone(), sent.clone());
        posters.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let customers: Vec<usize> = (0..CUSTOMERS).filter(|c| c % POSTERS == poster).collect();
            for step in (0..PER_CUSTOMER).step_by(2) {
                for customer in &customers {
                    let events: Vec<Value> = (step..(step + 2).min(PER_CUSTOMER))
                        .map(|k| {
                            let customer = format!("cust-{customer}");
                            json!({"event": "point_add", "id": format!("{customer}/{k}"), "customer": customer,
                                   "data": {"customerId": customer, "points": k, "balance": k * 10}})
                        })
                        .collect();
                    loop {
                        let base = url.read().await.clone();
                        let result = client().post(format!("{base}/v1/events")).json(&events).send().await;
                        match result {
                            Ok(response) if response.status() == 202 => break,
                            Ok(response) => panic!("refused: {} {}", response.status(), response.text().await.unwrap()),
                            // The server is down (killed): try again, with the same ids.
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                    sent.fetch_add(events.len(), Ordering::SeqCst);
                    accepted.extend(
                        events.iter().map(|e| {
                            (e["customer"].as_str().unwrap().to_string(), e["data"]["points"].as_i64().unwrap())
                        }),
                    );
                }
            }
            accepted
        }));
    }

    // Kill the server three times mid-load, and restart it at once on the same store.
    let total = CUSTOMERS * PER_CUSTOMER;
    let mut server = Some(server);
    for kill_at in [total / 5, total / 2, total * 4 / 5] {
        while sent.load(Ordering::SeqCst) < kill_at {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.take().unwrap().kill();
        let restarted = tokio::task::block_in_place(|| service.start());
        *url.write().await = restarted.url.clone();
        server = Some(restarted);
    }
    let mut accepted = BTreeSet::new();
    for poster in posters {
        accepted.extend(poster.await.unwrap());
    }
    assert_eq!(accepted.len(), total, "every event was eventually accepted");

    // Everything accepted is delivered: the queue drains (crashed runs resume once their leases expire).
    let base = url.read().await.clone();
    wait_for_the_queue_to_drain(&base, Duration::from_secs(180), || service.log()).await;
    let delivered = delivered_points(&handle.batches());
    let unique: BTreeSet<(String, i64)> = delivered.iter().cloned().collect();
    assert_eq!(unique, accepted, "every accepted event reached mParticle\n{}", service.log());
    assert_eq!(delivered.len(), unique.len(), "none twice after mParticle's de-duplication");
    let mut per_customer: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (customer, points) in &delivered {
        per_customer.entry(customer.clone()).or_default().push(*points);
    }
    for (customer, points) in &per_customer {
        assert!(points.windows(2).all(|w| w[0] < w[1]), "{customer} out of order: {points:?}");
    }
    let stats = handle.stats();
    assert!(stats.faults_injected > 0, "the faults were exercised: {stats:?}");

    // The workflow log has every run, succeeded; the metrics saw resends.
    let runs = get(format!("{base}/v1/runs?status=succeeded&limit=1000")).await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), total);
    let one = &runs["runs"][0];
    let run = get(format!("{base}/v1/runs/{}", one["id"].as_str().unwrap())).await;
    assert_eq!(run["trace"]["status"], "succeeded", "{run}");
    let customer_runs = get(format!("{base}/v1/runs?customer=cust-3")).await;
    assert_eq!(customer_runs["runs"].as_array().unwrap().len(), PER_CUSTOMER);
    let (status, metrics) = send(client().get(format!("{base}/metrics"))).await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(metrics.contains("flowhost_runs_delivered_total"), "{metrics}");
    assert!(metrics.contains(r#"flowhost_queue_runs{state="succeeded"} "#), "{metrics}");

    // A graceful stop drains and says so.
    let lines = server.take().unwrap().terminate();
    assert!(lines.iter().any(|l| l == "stopped"), "{lines:?}");
}

fn firehose_sample(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/mparticle/firehose").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn webhook_batch(batch_id: &str, customer: &str, events: Value) -> Value {
    json!({
        "batch_id": batch_id, "mpid": 8_675_309, "timestamp_unixtime_ms": 1_714_592_744_066_i64,
        "environment": "production",
        "user_identities": [
            {"identity_type": "customer_id", "identity": customer, "timestamp_unixtime_ms": 1_714_592_744_066_i64},
            {"identity_type": "email", "identity": format!("{customer}@example.com")}
        ],
        "user_attributes": {"$FirstName": "Ada", "tier": "gold"},
        "events": events
    })
}

fn custom_event(name: &str, attributes: Value) -> Value {
    json!({"event_type": "custom_event", "message_id": format!("m-{name}"),
           "data": {"event_name": name, "custom_event_type": "other", "custom_attributes": attributes,
                    "timestamp_unixtime_ms": 1_714_592_744_066_i64}})
}

/// A flow mapping the Firehose samples' custom event (named `customEvent`).
fn firehose_flow() -> String {
    json!({
        "id": "inbound-firehose-custom", "version": "1.0.0",
        "trigger": {"type": "inbound", "connection": "mparticle", "eventType": "custom_event", "eventName": "customEvent"},
        "connections": {"mparticle": {"connector": "mparticle", "config": {
            "apiKey": {"secret": "MPARTICLE_API_KEY"}, "apiSecret": {"secret": "MPARTICLE_API_SECRET"}}}},
        "nodes": [{"id": "emit", "emit": {"event": "app_event",
            "fields": {"customer": "{customer}", "value": "{event_attribute}", "name": "{eventName}", "origin": "firehose"}}}]
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_formats_tokens_limits_mapping_and_disconnect() {
    let emulator = emulator().await;
    let service = ServiceDir::new(
        &emulator,
        &[
            ("point-add.json", repo_flow("point-add-to-mparticle.json")),
            ("coupon.json", repo_flow("inbound-coupon-redeemed.json")),
            ("firehose.json", firehose_flow()),
        ],
        "",
    );
    let server = service.start();
    let base = server.url.clone();
    let inbound = format!("{base}/v1/inbound/mparticle");
    let post = |auth: Option<String>, body: Value| {
        let mut request = client().post(&inbound).json(&body);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        send(request)
    };
    let token = Some(format!("Token {INBOUND_TOKEN}"));
    let bearer = Some(format!("Bearer {INBOUND_TOKEN}"));

    // Firehose: both samples are accepted and answered with an event_processing_response carrying an id.
    for sample in ["EventProcessingRequest_android.json", "EventProcessingRequest_ios.json"] {
        let (status, response) = post(token.clone(), firehose_sample(sample)).await;
        assert_eq!(status, 200, "{sample}: {response}");
        assert_eq!(response["type"], "event_processing_response");
        assert!(response["id"].as_str().is_some_and(|id| id.len() == 36), "{response}");
    }
    // mParticle re-sending the same request (same id) is not processed twice.
    let (status, _) = post(token.clone(), firehose_sample("EventProcessingRequest_android.json")).await;
    assert_eq!(status, 200);
    // An empty verification request gets a normal answer and stores nothing.
    let verification = json!({"type": "event_processing_request", "id": "a2c8e3b4-6f4a-4c0e-9a55-5a7e0e2b9d11",
                               "timestamp_ms": 1_714_592_744_066_i64, "firehose_version": "3.2.0"});
    let (status, response) = post(token.clone(), verification).await;
    assert_eq!((status, response["type"].as_str()), (200, Some("event_processing_response")), "{response}");

    // Webhook output, Bearer token: a mapped custom event, and a batch with only an unknown event type.
    let coupon = webhook_batch(
        "b-1",
        "cust-9",
        json!([custom_event("coupon_redeemed", json!({"coupon_code": "SUMMER24", "store_id": "s-17"}))]),
    );
    let (status, receipt) = post(bearer.clone(), coupon).await;
    assert_eq!(status, 202, "{receipt}");
    let unknown =
        webhook_batch("b-2", "cust-9", json!([{"event_type": "screen_view", "data": {"screen_name": "Home"}}]));
    let (status, unknown_receipt) = post(bearer.clone(), unknown).await;
    assert_eq!(status, 202, "{unknown_receipt}");

    // The loyalty events arrive in the outbox, mapped: `{field}` from the payload, literals as they are.
    eventually(Duration::from_secs(60), "the outbox to fill", || {
        let base = base.clone();
        async move { get(format!("{base}/v1/outbox")).await["events"].as_array().unwrap().len() >= 3 }
    })
    .await;
    let outbox = get(format!("{base}/v1/outbox")).await;
    let events = outbox["events"].as_array().unwrap();
    let coupon = events.iter().find(|e| e["event"] == "coupon_redeem").expect("coupon_redeem emitted");
    assert_eq!(
        coupon["payload"],
        json!({"customer": "cust-9", "coupon": "SUMMER24", "store": "s-17", "channel": "mparticle"})
    );
    let app_events: Vec<&Value> = events.iter().filter(|e| e["event"] == "app_event").collect();
    assert_eq!(app_events.len(), 2, "one per sample, the re-sent request not again: {outbox}");
    assert_eq!(app_events[0]["payload"]["value"], "value");
    assert_eq!(app_events[0]["payload"]["name"], "customEvent");
    assert_eq!(app_events[0]["payload"]["origin"], "firehose");
    // The re-sent request's run is the same run: the outbox has no more than the two.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(format!("{base}/v1/outbox")).await["events"].as_array().unwrap().len(), 3);

    // Unknown event types are kept and reported: the screen_view batch is unmatched, and the samples'
    // commerce events are listed on their (processed) messages.
    let unmatched = get(format!("{base}/v1/inbound?status=unmatched")).await;
    let messages = unmatched["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{unmatched}");
    assert_eq!(messages[0]["externalId"], "b-2", "{unknown_receipt}");
    assert!(messages[0]["detail"].to_string().contains("screen_view"), "{unmatched}");
    let processed = get(format!("{base}/v1/inbound?status=processed")).await;
    assert!(processed.to_string().contains("commerce_event"), "{processed}");
    assert_eq!(processed["messages"].as_array().unwrap().len(), 3);

    // Wrong or missing token: 401, never echoing what was sent.
    let (status, body) = post(Some("Bearer not-the-token".into()), json!({})).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.to_string().contains("not-the-token"));
    assert_eq!(post(None, json!({})).await.0, 401);
    assert_eq!(post(Some(format!("Basic {INBOUND_TOKEN}")), json!({})).await.0, 401);
    // Over the size limit: 413.
    let big = webhook_batch("b-3", "cust-9", json!([custom_event("x", json!({"blob": "x".repeat(70_000)}))]));
    let (status, body) = post(bearer.clone(), big).await;
    assert_eq!(status, 413, "{body}");
    // Malformed: 400 naming what is wrong.
    let (status, body) =
        send(client().post(&inbound).header("Authorization", bearer.clone().unwrap()).body("{\"events\": [")).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("not JSON"), "{body}");
    let (status, body) = post(bearer.clone(), json!({"batch_id": "b-4", "events": {"not": "a list"}})).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("/events"), "{body}");

    // Disconnect stops both directions; queued messages are kept; reconnect brings them back.
    let (status, body) = send(client().post(format!("{base}/v1/connections/mparticle/disconnect"))).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["stoppedFlows"].as_array().unwrap().len() == 3, "{body}");
    let (status, body) =
        post(bearer.clone(), webhook_batch("b-5", "cust-9", json!([custom_event("coupon_redeemed", json!({}))]))).await;
    assert_eq!(status, 403, "{body}");
    let event = json!({"event": "point_add", "data": {"customerId": "cust-1", "points": 1, "balance": 1}});
    let (status, body) = send(client().post(format!("{base}/v1/events")).json(&event)).await;
    assert_eq!(status, 202);
    assert!(body["accepted"][0]["notes"][0].as_str().unwrap().contains("disconnected"), "{body}");
    assert!(body["accepted"][0]["runs"].as_array().unwrap().is_empty());
    let health = get(format!("{base}/healthz")).await;
    assert_eq!(health["stoppedFlows"]["point-add-to-mparticle"], "mparticle", "{health}");
    let (status, body) = send(client().post(format!("{base}/v1/connections/mparticle/reconnect"))).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = send(client().post(format!("{base}/v1/events")).json(&event)).await;
    assert_eq!(status, 202);
    let (status, _) = send(client().post(format!("{base}/v1/connections/nope/disconnect"))).await;
    assert_eq!(status, 404);
    let metrics = send(client().get(format!("{base}/metrics"))).await.1;
    assert!(metrics.as_str().unwrap().contains("flowhost_inbound_received_total 5"), "{metrics}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_queue_dead_letters_and_operator_retry_and_drop() {
    let emulator = emulator().await;
    let handle = emulator.handle();
    let mut flow: Value = serde_json::from_str(&repo_flow("point-add-to-mparticle.json")).unwrap();
    flow["nodes"][0]["retry"] = json!({"maxAttempts": 3, "initialDelayMs": 50, "jitter": 0});
    // Runs that succeed keep no trace; the dead letters below keep theirs.
    let service =
        ServiceDir::new(&emulator, &[("point-add.json", flow.to_string())], "").delivery("traces = \"failures\"");
    let server = service.start();
    let base = server.url.clone();

    // mParticle is down for everything: three attempts, then a dead letter, visible in the queue.
    handle.set_faults(vec![FaultRule::status(503).fraction(1.0).path_prefix("/v2/")]);
    let events = json!([
        {"event": "point_add", "id": "e-1", "data": {"customerId": "cust-a", "points": 1, "balance": 1}},
        {"event": "point_add", "id": "e-2", "data": {"customerId": "cust-a", "points": 2, "balance": 3}},
        {"event": "point_add", "id": "e-3", "data": {"customerId": "cust-b", "points": 5, "balance": 5}}
    ]);
    let (status, body) = send(client().post(format!("{base}/v1/events")).json(&events)).await;
    assert_eq!(status, 202, "{body}");
    let first = body["accepted"][0]["runs"][0]["runId"].as_str().unwrap().to_string();
    let third = body["accepted"][2]["runs"][0]["runId"].as_str().unwrap().to_string();
    // The platform sends them again (a timeout on its side): the same runs, not enqueued a second time.
    let (status, again) = send(client().post(format!("{base}/v1/events")).json(&events)).await;
    assert_eq!((status, &again), (202, &body));
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(format!("{base}/v1/queue?status=dead")).await["runs"].as_array().unwrap().len() != 2 {
        let queue = get(format!("{base}/v1/queue")).await;
        assert!(Instant::now() < deadline, "two dead letters expected: {queue}\n{}", service.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // cust-a's second event waits behind its dead first one; cust-b is not held up by cust-a.
    let queue = get(format!("{base}/v1/queue")).await;
    let states: BTreeMap<String, String> = queue["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["customer"].as_str().unwrap().to_string() + "/" + r["id"].as_str().unwrap(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(states.values().filter(|s| *s == "dead").count(), 2, "{queue}");
    assert_eq!(states.values().filter(|s| *s == "queued").count(), 1, "{queue}");
    let dead = get(format!("{base}/v1/runs/{first}")).await;
    assert_eq!(dead["attempts"], 3, "{dead}");
    assert_eq!(dead["lastError"]["kind"], "transient", "{dead}");
    assert_eq!(dead["trace"]["nodes"][0]["attempts"].as_array().unwrap().len(), 3, "{dead}");
    assert!(dead.get("nextAttemptAt").is_none(), "a dead run is not tried again by itself: {dead}");
    // The run behind it says why it does not move.
    let waiting = queue["runs"].as_array().unwrap().iter().find(|r| r["status"] == "queued").unwrap();
    assert_eq!(waiting["heldBy"], json!({"run": first, "status": "dead", "attempts": 3}), "{queue}");
    assert_eq!(waiting["attempts"], 0, "{waiting}");
    let metrics = send(client().get(format!("{base}/metrics"))).await.1;
    let metrics = metrics.as_str().unwrap();
    assert!(metrics.contains(r#"flowhost_queue_runs_held_behind{behind="dead"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"flowhost_runs_enqueued_total{flow="point-add-to-mparticle"} 3"#), "{metrics}");
    assert!(metrics.contains("flowhost_events_accepted_total 6"), "{metrics}");

    // The CLI sees the same queue, and drops every dead letter of cust-b.
    let config = service.config().display().to_string();
    let (code, out) = cli(&["queue", "list", "--config", &config]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().filter(|l| l.contains(" dead ")).count(), 2, "{out}");
    assert!(out.contains("last error: "), "{out}");
    assert!(out.contains(&format!("held by {first} (dead)")), "{out}");
    let (code, out) = cli(&["queue", "drop", "--customer", "cust-b", "--config", &config]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, format!("1 dead run dropped (kept for the record)\n{third}\n"));
    let (code, _) = cli(&["queue", "drop", &third, "--config", &config]).await;
    assert_eq!(code, 1, "a dropped run is not in the queue any more");
    let (code, out) = cli(&["queue", "retry", "--config", &config]).await;
    assert_eq!(code, 2, "a run id, a customer or a flow is needed: {out}");

    // mParticle is back: the operator retries every dead letter of the flow over HTTP; both of cust-a's events
    // go, in order.
    handle.clear_faults();
    let (status, body) = send(client().post(format!("{base}/v1/queue/retry?customr=cust-a"))).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("customr"), "the bad parameter is named: {body}");
    let (status, body) = send(client().post(format!("{base}/v1/queue/retry?flow=point-add-to-mparticle"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"count": 1, "ids": [first]}));
    eventually(Duration::from_secs(30), "cust-a's runs to be delivered", || {
        let base = base.clone();
        async move { get(format!("{base}/v1/queue")).await["runs"].as_array().unwrap().is_empty() }
    })
    .await;
    let delivered = delivered_points(&handle.batches());
    assert_eq!(delivered, [("cust-a".to_string(), 1), ("cust-a".to_string(), 2)]);
    let retried = get(format!("{base}/v1/runs/{first}")).await;
    assert_eq!(retried["status"], "succeeded", "{retried}");
    assert_eq!(retried["attempts"], 1, "one attempt since the operator's retry: {retried}");
    assert!(retried.get("lastError").is_none() && retried.get("nextAttemptAt").is_none(), "{retried}");
    let (status, _) = send(client().post(format!("{base}/v1/queue/{first}/retry"))).await;
    assert_eq!(status, 404, "a run that succeeded is not retried");
    assert_eq!(
        retried["trace"],
        Value::Null,
        "a run that succeeded keeps no trace, nor shows its checkpoint: {retried}"
    );
    let dropped = get(format!("{base}/v1/runs/{third}")).await;
    assert_eq!(dropped["status"], "dropped");
    let (status, _) = send(client().delete(format!("{base}/v1/queue/{third}"))).await;
    assert_eq!(status, 404);

    // Bad requests name what is wrong and accept nothing.
    let (status, body) = send(
        client()
            .post(format!("{base}/v1/events"))
            .json(&json!({"event": "point_add", "data": {"customerId": "c", "points": "many", "balance": 1}})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["fields"][0]["pointer"], "/0/data/points", "{body}");
    let (status, body) = send(client().post(format!("{base}/v1/events")).json(&json!({"evnt": "point_add"}))).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("evnt"), "{body}");
    let (status, body) = send(client().get(format!("{base}/v1/queue?status=sleeping"))).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("sleeping"), "{body}");
    drop(server);
    assert!(!service.log().contains(DEMO_API_SECRET), "no secret in the server's log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_retry_keeps_the_attempts_that_ran_out_in_the_trace() {
    let emulator = emulator().await;
    let handle = emulator.handle();
    let mut flow: Value = serde_json::from_str(&repo_flow("point-add-to-mparticle.json")).unwrap();
    flow["nodes"][0]["retry"] = json!({"maxAttempts": 2, "initialDelayMs": 50, "jitter": 0});
    let service = ServiceDir::new(&emulator, &[("point-add.json", flow.to_string())], "");
    let server = service.start();
    let base = server.url.clone();

    handle.set_faults(vec![FaultRule::status(503).fraction(1.0).path_prefix("/v2/")]);
    let event = json!({"event": "point_add", "data": {"customerId": "cust-h", "points": 1, "balance": 1}});
    let (status, body) = send(client().post(format!("{base}/v1/events")).json(&event)).await;
    assert_eq!(status, 202, "{body}");
    let id = body["accepted"][0]["runs"][0]["runId"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(30), "a dead letter", || {
        let url = format!("{base}/v1/runs/{id}");
        async move { get(url).await["status"] == "dead" }
    })
    .await;

    // The service answers once more with 503, then accepts: one more failed attempt, then a success.
    handle.set_faults(vec![FaultRule::status(503).times(1).path_prefix("/v2/")]);
    let (status, body) = send(client().post(format!("{base}/v1/queue/retry?customer=cust-h"))).await;
    assert_eq!((status, &body["ids"]), (200, &json!([id])), "{body}");
    eventually(Duration::from_secs(30), "the retried run to succeed", || {
        let url = format!("{base}/v1/runs/{id}");
        async move { get(url).await["status"] == "succeeded" }
    })
    .await;
    let run = get(format!("{base}/v1/runs/{id}")).await;
    assert_eq!(run["attempts"], 2, "a failed attempt and the one that succeeded, since the retry: {run}");
    let node = &run["trace"]["nodes"][0];
    let numbers = |attempts: &Value| -> Vec<u64> {
        attempts.as_array().unwrap().iter().map(|a| a["attempt"].as_u64().unwrap()).collect()
    };
    assert_eq!(numbers(&node["earlierAttempts"]), [1, 2], "the two attempts that ran out: {node}");
    assert_eq!(node["earlierAttempts"][1]["error"]["kind"], "transient", "{node}");
    assert_eq!(numbers(&node["attempts"]), [1, 2], "a fresh count after the retry: {node}");
    assert!(node["attempts"][1].get("error").is_none(), "{node}");
    drop(server);
}

async fn cli(args: &[&str]) -> (u8, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = flowhost_cli::run(std::iter::once("flowhost").chain(args.iter().copied()), &mut out, &mut err).await;
    let text = String::from_utf8_lossy(&out).to_string() + &String::from_utf8_lossy(&err);
    let code = if code == std::process::ExitCode::SUCCESS {
        0
    } else if code == std::process::ExitCode::from(1) {
        1
    } else {
        2
    };
    (code, text)
}
