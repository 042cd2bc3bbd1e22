//! `flowhost demo`: starts the mParticle and Antavo emulators in-process on loopback, runs the example flows
//! for a handful of realistic loyalty events (one of them through an injected outage, retried), and shows
//! what happened: the run traces, the batches mParticle received, and the account, audience and
//! calculated-attribute answers. Then the durable service runs both directions of the Antavo-mParticle link
//! through both connectors and both emulators, served over HTTP: Antavo's signed webhooks become mParticle
//! events and user attributes, and mParticle's events become Antavo events. No credentials and no set-up
//! beyond the build.

use anyhow::Context as _;
use flowhost::connector::{RuntimeConfig, SecretStore};
use flowhost::delivery::{InboundConnection, LoyaltyEvent, Service, ServiceConfig};
use flowhost::flow::{Run, RunStatus};
use flowhost::inbound::InboundRequest;
use flowhost::server::{ApiState, router};
use flowhost::store::{RunFilter, RunState, Store, StoreLocation, StoredRun};
use flowhost::{Host, HostConfig};
use mparticle_emulator::{EmulatorConfig, FaultRule};
use secrecy::SecretString;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

/// The example flows of `flows/`, built into the binary so the demo runs from anywhere.
pub const EXAMPLE_FLOWS: &[(&str, &str)] = &[
    ("point-add-to-mparticle.json", include_str!("../../../flows/point-add-to-mparticle.json")),
    ("reward-claim-external-event.json", include_str!("../../../flows/reward-claim-external-event.json")),
    ("profile-sync.json", include_str!("../../../flows/profile-sync.json")),
    ("account-lifecycle.json", include_str!("../../../flows/account-lifecycle.json")),
    ("calculated-attributes.json", include_str!("../../../flows/calculated-attributes.json")),
    ("upload-event-batch.json", include_str!("../../../flows/upload-event-batch.json")),
    ("inbound-coupon-redeemed.json", include_str!("../../../flows/inbound-coupon-redeemed.json")),
    ("antavo-point-add-to-mparticle.json", include_str!("../../../flows/antavo-point-add-to-mparticle.json")),
    ("antavo-profile-to-mparticle.json", include_str!("../../../flows/antavo-profile-to-mparticle.json")),
    ("mparticle-coupon-to-antavo.json", include_str!("../../../flows/mparticle-coupon-to-antavo.json")),
];

/// The flows of the durable service's two-way part: both directions between Antavo and mParticle.
const TWO_WAY_FLOWS: [&str; 3] =
    ["antavo-point-add-to-mparticle.json", "antavo-profile-to-mparticle.json", "mparticle-coupon-to-antavo.json"];

/// The token the demo's mParticle "sends" inbound events with.
const DEMO_INBOUND_TOKEN: &str = "demo-inbound-token";

/// One demo step: a loyalty event for a flow, optionally with a fault injected into mParticle first.
struct Step {
    title: &'static str,
    flow: &'static str,
    event: Value,
    /// A fault injected into the emulator before the run, and how to say it.
    fault: Option<(FaultRule, &'static str)>,
}

fn steps() -> Vec<Step> {
    vec![
        Step {
            title: "Points added: a point_add custom event goes to mParticle",
            flow: "point-add-to-mparticle",
            event: json!({"customerId": "cust-1001", "points": 150, "balance": 1250}),
            fault: None,
        },
        Step {
            title: "Points added while mParticle answers 503 once: the node is retried and succeeds",
            flow: "point-add-to-mparticle",
            event: json!({"customerId": "cust-1002", "points": 40, "balance": 90}),
            fault: Some((
                FaultRule::status(503).times(1).path_prefix("/v2/"),
                "mParticle answers the next Events API request with 503 Service Unavailable",
            )),
        },
        Step {
            title: "Reward claimed: an external event carrying the reward id",
            flow: "reward-claim-external-event",
            event: json!({"customerId": "cust-1001", "rewardId": "rw-42", "rewardName": "Free coffee"}),
            fault: None,
        },
        Step {
            title: "Profile changed: user attributes synchronised ($-reserved and custom)",
            flow: "profile-sync",
            event: json!({"customerId": "cust-1001", "firstName": "Ada", "lastName": "Lovelace", "country": "GB", "tier": "gold"}),
            fault: None,
        },
        Step {
            title: "Account administration: create, read, rename, list audiences, delete",
            flow: "account-lifecycle",
            event: json!({"displayName": "Loyalty Demo Brand", "renameTo": "Loyalty Demo Brand (EU)"}),
            fault: None,
        },
        Step {
            title: "Calculated attributes of workspace 1234, each handed back as a loyalty event",
            flow: "calculated-attributes",
            event: json!({"workspace": "1234"}),
            fault: None,
        },
        Step {
            title: "Purchase: a whole Events API batch built from the event and uploaded",
            flow: "upload-event-batch",
            event: json!({"customerId": "cust-1003", "email": "grace@example.com", "orderId": "o-7781", "amount": 42.5, "currency": "EUR"}),
            fault: None,
        },
    ]
}

/// A host configuration whose `mparticle` connections talk to the emulator at `url` with its demo
/// credentials (the secrets the example flows reference; the Antavo ones too, for the Antavo emulator's
/// demo workspace, which [`two_way_host_config`] points the `antavo` connections at).
pub fn emulator_host_config(url: &str, runtime: RuntimeConfig) -> (HostConfig, SecretStore) {
    let endpoints: Map<String, Value> = [
        ("authUrl", format!("{url}/oauth/token")),
        ("platformApiUrl", url.to_string()),
        ("eventsApiUrl", format!("{url}/v2")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Value::String(v)))
    .collect();
    let config = HostConfig {
        runtime,
        embedded_connectors: crate::builtin::COMPONENTS.to_vec(),
        allow_private: true,
        connection_overrides: BTreeMap::from([("mparticle".to_string(), endpoints)]),
        default_retry: flowhost::flow::RetryPolicy { initial_delay_ms: 200, ..Default::default() },
        ..HostConfig::default()
    };
    let secrets = SecretStore::from_pairs([
        ("MPARTICLE_CLIENT_ID", mparticle_emulator::DEMO_CLIENT_ID),
        ("MPARTICLE_CLIENT_SECRET", mparticle_emulator::DEMO_CLIENT_SECRET),
        ("MPARTICLE_API_KEY", mparticle_emulator::DEMO_API_KEY),
        ("MPARTICLE_API_SECRET", mparticle_emulator::DEMO_API_SECRET),
        ("ANTAVO_API_KEY", antavo_emulator::DEMO_API_KEY),
        ("ANTAVO_API_SECRET", antavo_emulator::DEMO_API_SECRET),
    ]);
    (config, secrets)
}

/// [`emulator_host_config`] with the `antavo` connections pointed at the Antavo emulator at `antavo_url`.
pub fn two_way_host_config(mparticle_url: &str, antavo_url: &str, runtime: RuntimeConfig) -> (HostConfig, SecretStore) {
    let (mut config, secrets) = emulator_host_config(mparticle_url, runtime);
    let antavo: Map<String, Value> =
        [("apiUrl".to_string(), Value::String(antavo_url.to_string()))].into_iter().collect();
    config.connection_overrides.insert("antavo".to_string(), antavo);
    (config, secrets)
}

/// Runs the demo, writing a report to `out`. Returns the runs it showed (inline, then the durable service's), for
/// tests.
pub async fn run(runtime: RuntimeConfig, out: &mut dyn Write) -> anyhow::Result<Vec<Run>> {
    let emulator = mparticle_emulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse()?)
        .await
        .context("cannot start the mParticle emulator on loopback")?;
    let url = emulator.url();
    let antavo = antavo_emulator::start(antavo_emulator::EmulatorConfig::default(), "127.0.0.1:0".parse()?)
        .await
        .context("cannot start the Antavo emulator on loopback")?;
    writeln!(out, "flowhost demo\n=============\n")?;
    writeln!(
        out,
        "mParticle emulator listening on {url} (loopback only; the connector's default is the real mParticle)"
    )?;
    writeln!(
        out,
        "Antavo emulator listening on {} (environment {}; the connector's default is https://api.<environment>.antavo.com)\n",
        antavo.url(),
        antavo_emulator::DEFAULT_REGION
    )?;

    let runtime_for_service = runtime.clone();
    let (config, secrets) = two_way_host_config(&url, &antavo.url(), runtime);
    let mut host = Host::new(config, secrets).await?;
    let emitted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = emitted.clone();
    host.on_emit(move |event| sink.lock().unwrap_or_else(|e| e.into_inner()).push(event.clone()));

    let mut flows = BTreeMap::new();
    for (file, text) in EXAMPLE_FLOWS {
        let flow = host.load(text).map_err(|problems| {
            anyhow::anyhow!("{file}: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
        })?;
        flows.insert(flow.id().to_string(), flow);
    }
    writeln!(
        out,
        "Loaded {} example flows from flows/: {}\n",
        flows.len(),
        flows.keys().cloned().collect::<Vec<_>>().join(", ")
    )?;

    let mut runs = Vec::new();
    for (number, step) in steps().into_iter().enumerate() {
        writeln!(out, "{}. {}", number + 1, step.title)?;
        writeln!(out, "   event: {}", step.event)?;
        if let Some((fault, description)) = step.fault {
            writeln!(out, "   fault injected: {description}")?;
            emulator.add_fault(fault);
        }
        let flow = &flows[step.flow];
        let run = host.run(flow, step.event).await?;
        for line in run.to_text().lines() {
            writeln!(out, "   {line}")?;
        }
        writeln!(out)?;
        runs.push(run);
    }

    let durable_runs = durable_service(&url, &emulator, &antavo, runtime_for_service, out).await?;

    writeln!(out, "What mParticle received (Events API batches, as the emulator recorded them)")?;
    writeln!(out, "--------------------------------------------------------------------------")?;
    for batch in emulator.batches() {
        let b = &batch.batch;
        let events: Vec<String> = b["events"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .map(|e| {
                        let data = &e["data"];
                        format!(
                            "{} {:?} ({}) {}",
                            e["event_type"].as_str().unwrap_or_default(),
                            data["event_name"].as_str().unwrap_or_default(),
                            data["custom_event_type"].as_str().unwrap_or_default(),
                            data["custom_attributes"]
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        writeln!(
            out,
            "  #{} {} {} source_request_id={}",
            batch.seq, batch.endpoint, b["environment"], b["source_request_id"]
        )?;
        writeln!(out, "      user_identities: {}", b["user_identities"])?;
        if !b["user_attributes"].is_null() {
            writeln!(out, "      user_attributes: {}", b["user_attributes"])?;
        }
        for event in events {
            writeln!(out, "      event: {event}")?;
        }
    }
    let stats = emulator.stats();
    writeln!(
        out,
        "\nEmulator stats: {} batches received, {} accepted, {} duplicates, {} rejected; {} faults injected; {} OAuth tokens issued",
        stats.received, stats.accepted, stats.duplicates, stats.rejected, stats.faults_injected, stats.tokens_issued
    )?;

    writeln!(out, "\nLoyalty events handed back to the platform (emit nodes)")?;
    writeln!(out, "-------------------------------------------------------")?;
    for event in emitted.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        writeln!(out, "  {} from {}: {}", event.event, event.flow_id, event.payload)?;
    }
    writeln!(out, "\nWhat Antavo received (events the Antavo emulator recorded, and the webhooks it sent)")?;
    writeln!(out, "------------------------------------------------------------------------------------")?;
    for event in antavo.events() {
        writeln!(
            out,
            "  #{} {} {} for {} {} ({} points) key={}",
            event.seq,
            event.id,
            event.action,
            event.customer,
            event.data,
            event.points,
            event.api_key.as_deref().unwrap_or("-")
        )?;
    }
    for delivery in antavo.deliveries() {
        writeln!(
            out,
            "  webhook {} -> {} attempt {}: {}",
            delivery.event_id,
            delivery.url,
            delivery.attempt,
            delivery.status.map_or_else(|| delivery.error.clone().unwrap_or_default(), |s| format!("HTTP {s}"))
        )?;
    }
    let antavo_stats = antavo.stats();
    writeln!(
        out,
        "\nAntavo emulator stats: {} events accepted, {} refused; {} requests refused for their signature; {} faults injected; {} webhooks delivered",
        antavo_stats.accepted_events,
        antavo_stats.refused_events,
        antavo_stats.unauthorized,
        antavo_stats.faults_injected,
        antavo_stats.webhooks_delivered
    )?;

    // Every run shown: the example flows run inline, and the durable service's.
    runs.extend(durable_runs);
    let succeeded = runs.iter().filter(|r| r.status == RunStatus::Succeeded).count();
    writeln!(out, "\n{} runs, {succeeded} succeeded, {} failed.", runs.len(), runs.len() - succeeded)?;
    emulator.shutdown().await?;
    antavo.shutdown().await?;
    Ok(runs)
}

/// The durable service in-process, on a SQLite store in a temporary directory, its HTTP API on loopback: a
/// transient failure resent, a dead letter retried by the operator, an inbound mParticle event arriving as a
/// loyalty event in the outbox and as an Antavo event, and Antavo's signed webhooks becoming mParticle events
/// and user attributes.
async fn durable_service(
    url: &str,
    emulator: &mparticle_emulator::RunningEmulator,
    antavo: &antavo_emulator::RunningEmulator,
    runtime: RuntimeConfig,
    out: &mut dyn Write,
) -> anyhow::Result<Vec<Run>> {
    writeln!(out, "The durable service (what `flowhost serve` runs): resend queue, dead letter, inbound events")?;
    writeln!(out, "-------------------------------------------------------------------------------------------")?;
    let dir = std::env::temp_dir().join(format!("flowhost-demo-{}", uuid::Uuid::new_v4().simple()));
    let location = StoreLocation::Sqlite(dir.join("flowhost.db"));
    let store = location.open().await?;
    writeln!(out, "store: {location} (WAL; accepted events fsynced)\n")?;
    let (config, secrets) = two_way_host_config(url, &antavo.url(), runtime);
    let host = Host::new(config, secrets).await?;
    // The demo's copy of point_add retries three times 200 ms apart, so that the dead letter shows quickly.
    let (_, point_add) =
        EXAMPLE_FLOWS.iter().find(|(name, _)| *name == "point-add-to-mparticle.json").context("flow")?;
    let mut point_add: Value = serde_json::from_str(point_add)?;
    point_add["nodes"][0]["retry"] = json!({"maxAttempts": 3, "initialDelayMs": 200, "jitter": 0});
    let (_, inbound_flow) =
        EXAMPLE_FLOWS.iter().find(|(name, _)| *name == "inbound-coupon-redeemed.json").context("flow")?;
    let mut flows = vec![
        ("point-add-to-mparticle.json".to_string(), point_add.to_string()),
        ("inbound-coupon-redeemed.json".to_string(), inbound_flow.to_string()),
    ];
    for name in TWO_WAY_FLOWS {
        let (_, text) = EXAMPLE_FLOWS.iter().find(|(file, _)| *file == name).context("flow")?;
        flows.push((name.to_string(), text.to_string()));
    }
    // mParticle sends a token; Antavo signs its webhooks with Escher, so its connection needs none.
    let inbound = vec![InboundConnection { name: "mparticle".into(), token: SecretString::from(DEMO_INBOUND_TOKEN) }];
    let config = ServiceConfig { idle_poll: Duration::from_millis(50), ..ServiceConfig::default() };
    let service = std::sync::Arc::new(Service::start(host, store.clone(), &flows, inbound, config).await?);
    // The HTTP API on loopback, so that the Antavo emulator posts its webhooks as Antavo would.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let state = ApiState { service: service.clone(), max_body_bytes: 1 << 20, api_token: None, metrics_token: None };
    let server = tokio::spawn(async move { axum::serve(listener, router(state)).await });
    writeln!(out, "HTTP API: {base} (POST {base}/v1/inbound/antavo takes Antavo's Escher-signed webhooks)\n")?;
    antavo.add_webhook(antavo_emulator::WebhookSubscription {
        retry_interval_ms: 500,
        ..antavo_emulator::WebhookSubscription::escher(
            format!("{base}/v1/inbound/antavo"),
            &["point_add", "profile"],
            antavo_emulator::DEMO_API_KEY,
            antavo_emulator::DEMO_API_SECRET,
        )
    });
    let mut shown = Vec::new();
    let result = match durable_steps(&service, emulator, antavo, out, &mut shown).await {
        Ok(()) => two_way_steps(&service, emulator, antavo, &base, out, &mut shown).await,
        Err(e) => Err(e),
    };
    server.abort();
    service.shutdown(Duration::from_secs(5)).await;
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|()| shown)
}

async fn durable_steps(
    service: &Service,
    emulator: &mparticle_emulator::RunningEmulator,
    antavo: &antavo_emulator::RunningEmulator,
    out: &mut dyn Write,
    shown: &mut Vec<Run>,
) -> anyhow::Result<()> {
    let store = service.store().clone();
    let faults = emulator.handle();

    writeln!(out, "a. A point_add event while mParticle answers 503 once: committed, then resent from the queue")?;
    faults.add_fault(FaultRule::status(503).times(1).path_prefix("/v2/"));
    let first = accept(service, "cust-2001", 75).await?;
    let run = wait_for(&*store, &first, RunState::Succeeded).await?;
    writeln!(out, "   accepted as run {first}; it was re-queued after the 503 and resent:")?;
    print_trace(&run, out, shown)?;

    writeln!(out, "b. mParticle down for good: three attempts, then a dead letter, kept and visible")?;
    faults.add_fault(FaultRule::status(503).fraction(1.0).path_prefix("/v2/"));
    let second = accept(service, "cust-2002", 20).await?;
    let dead = wait_for(&*store, &second, RunState::Dead).await?;
    let queue =
        store.list(&RunFilter { statuses: vec![RunState::Dead, RunState::Queued], ..RunFilter::default() }).await?;
    writeln!(out, "   the resend queue (GET /v1/queue, flowhost queue list):")?;
    for run in &queue {
        let error = run.last_error.as_ref().and_then(|e| e["message"].as_str()).unwrap_or_default();
        writeln!(
            out,
            "     {}  {}  {}  attempts {}  last error: {error}",
            run.id, run.status, run.flow_id, run.attempts
        )?;
    }
    faults.clear_faults();
    writeln!(out, "   mParticle is back; the operator retries it (POST /v1/queue/{second}/retry):")?;
    store.retry_now(&dead.id).await?;
    service.wake();
    let retried = wait_for(&*store, &second, RunState::Succeeded).await?;
    print_trace(&retried, out, shown)?;

    writeln!(
        out,
        "c. mParticle sends a coupon_redeemed event (webhook output, Bearer token) while Antavo answers 429 once"
    )?;
    antavo.add_fault(antavo_emulator::FaultRule::status(429).times(1).path_prefix("/events"));
    let body = json!({
        "batch_id": "demo-batch-1", "mpid": 8675309, "environment": "production",
        "user_identities": [{"identity_type": "customer_id", "identity": "cust-1001"}],
        "events": [{"event_type": "custom_event", "message_id": "demo-message-1",
                    "data": {"event_name": "coupon_redeemed", "custom_event_type": "transaction",
                             "custom_attributes": {"coupon_code": "WELCOME10", "store_id": "store-7"}}}]
    });
    // What `POST /v1/inbound/mparticle` does: the token admits it, the mParticle connector receives it.
    let admission = service.admit_inbound("mparticle", Some(&format!("Bearer {DEMO_INBOUND_TOKEN}")))?;
    let request = InboundRequest::json_post(serde_json::to_vec(&body)?, true, flowhost::store::now_ms());
    let receipt = service.receive(&admission, request).await?;
    let id = receipt.id.context("the webhook batch stored no message")?;
    writeln!(out, "   stored as inbound message {id}; mapped by flow inbound-coupon-redeemed")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let event = loop {
        if let Some(event) = store.outbox(0, 10).await?.into_iter().next() {
            break event;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "the inbound event did not reach the outbox");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    writeln!(out, "   loyalty event in the outbox (GET /v1/outbox): {} {}", event.event, event.payload)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !antavo.events().iter().any(|e| e.action == "coupon_redeem") {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the coupon did not reach Antavo");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run = wait_for_flow(&*store, "mparticle-coupon-to-antavo", RunState::Succeeded).await?;
    writeln!(
        out,
        "   and, through the Antavo connector, an Antavo event (flow mparticle-coupon-to-antavo), resent after the 429:"
    )?;
    print_trace(&run, out, shown)?;
    Ok(())
}

/// Antavo's side of the loop: events that happen in Antavo reach mParticle through Antavo's signed webhooks.
async fn two_way_steps(
    service: &Service,
    emulator: &mparticle_emulator::RunningEmulator,
    antavo: &antavo_emulator::RunningEmulator,
    base: &str,
    out: &mut dyn Write,
    shown: &mut Vec<Run>,
) -> anyhow::Result<()> {
    let store = service.store().clone();
    writeln!(
        out,
        "d. Points added to cust-1001 in Antavo (a purchase at the till) while mParticle answers 503 once: Antavo \
         posts its Escher-signed point_add webhook to /v1/inbound/antavo; the Antavo connector verifies it"
    )?;
    emulator.add_fault(FaultRule::status(503).times(1).path_prefix("/v2/"));
    let customer = antavo
        .trigger(json!({"customer": "cust-1001", "action": "point_add", "data": {"points": 200, "reason": "purchase"}}))
        .map_err(|e| anyhow::anyhow!("Antavo refused the demo's point_add: {e}"))?;
    writeln!(out, "   Antavo: cust-1001 now has {} spendable points", customer["spendable"])?;
    let run = wait_for_flow(&*store, "antavo-point-add-to-mparticle", RunState::Succeeded).await?;
    writeln!(
        out,
        "   flow antavo-point-add-to-mparticle sent it to mParticle as a custom event, resent after the 503:"
    )?;
    print_trace(&run, out, shown)?;

    writeln!(
        out,
        "e. Grace (cust-1002) changes her profile in Antavo: the profile webhook becomes mParticle user attributes"
    )?;
    antavo
        .trigger(json!({"customer": "cust-1002", "action": "profile",
                        "data": {"first_name": "Grace", "last_name": "Hopper", "mobile_phone": "+15550100"}}))
        .map_err(|e| anyhow::anyhow!("Antavo refused the demo's profile change: {e}"))?;
    let run = wait_for_flow(&*store, "antavo-profile-to-mparticle", RunState::Succeeded).await?;
    print_trace(&run, out, shown)?;

    writeln!(out, "f. A webhook that Antavo did not sign (a forged point_add): refused with 401, stored nowhere")?;
    let forged = json!({"id": "forged-1", "action": "point_add", "customer": "cust-1001", "data": {"points": 1000000}});
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build()?;
    // Well-formed and current, but signed by someone without the secret.
    let date = antavo_core::time::long_date(flowhost::store::now_ms() / 1000);
    let authorization = format!(
        "ANTAVO-HMAC-SHA256 Credential={}/{}/st2/api/antavo_request, SignedHeaders=date;host, Signature={}",
        antavo_emulator::DEMO_API_KEY,
        &date[..8],
        "0".repeat(64)
    );
    let response = client
        .post(format!("{base}/v1/inbound/antavo"))
        .header("date", date)
        .header("authorization", authorization)
        .json(&forged)
        .send()
        .await?;
    let status = response.status().as_u16();
    let body = response.text().await?;
    anyhow::ensure!(status == 401, "a forged webhook was answered {status}: {body}");
    let stored = store
        .list_inbound(&flowhost::store::InboundFilter { connection: Some("antavo".into()), ..Default::default() })
        .await?;
    writeln!(out, "   HTTP {status}: {body}")?;
    writeln!(out, "   inbound messages stored from Antavo: {} (the two genuine webhooks)\n", stored.len())?;
    Ok(())
}

/// The newest run of a flow, once it is in `state`.
async fn wait_for_flow(store: &dyn Store, flow: &str, state: RunState) -> anyhow::Result<StoredRun> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let filter = RunFilter { flow_id: Some(flow.to_string()), limit: 1, ..RunFilter::default() };
        if let Some(run) = store.list(&filter).await?.into_iter().next()
            && run.status == state
        {
            return Ok(run);
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "no run of {flow} became {state} in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn accept(service: &Service, customer: &str, points: i64) -> anyhow::Result<String> {
    let event = LoyaltyEvent {
        event: "point_add".into(),
        data: json!({"customerId": customer, "points": points, "balance": points * 4}),
        customer: None,
        id: Some(format!("demo-{customer}")),
    };
    let accepted = service.accept(&[event]).await?;
    accepted.first().and_then(|a| a.runs.first()).map(|r| r.run_id.clone()).context("no run was started")
}

async fn wait_for(store: &dyn Store, id: &str, state: RunState) -> anyhow::Result<StoredRun> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(run) = store.get(id).await?
            && run.status == state
        {
            return Ok(run);
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "run {id} did not become {state} in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prints a durable run's trace, and counts it among the runs `shown`.
fn print_trace(run: &StoredRun, out: &mut dyn Write, shown: &mut Vec<Run>) -> anyhow::Result<()> {
    let trace: Run = serde_json::from_value(run.trace.clone().unwrap_or_default())?;
    for line in trace.to_text().lines() {
        writeln!(out, "   {line}")?;
    }
    writeln!(out)?;
    shown.push(trace);
    Ok(())
}
