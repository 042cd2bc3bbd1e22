//! `flowhost demo`: starts the mParticle emulator in-process on loopback, runs the example flows for a
//! handful of realistic loyalty events (one of them through an injected outage, retried), and shows what
//! happened: the run traces, the batches mParticle received, and the account, audience and
//! calculated-attribute answers. No credentials and no set-up beyond the build.

use crate::connector::{RuntimeConfig, SecretStore};
use crate::flow::{Run, RunStatus};
use crate::{Host, HostConfig};
use anyhow::Context as _;
use mparticle_emulator::{EmulatorConfig, FaultRule};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::io::Write;

/// The example flows of `flows/`, built into the binary so the demo runs from anywhere.
pub const EXAMPLE_FLOWS: &[(&str, &str)] = &[
    ("point-add-to-mparticle.json", include_str!("../../flows/point-add-to-mparticle.json")),
    ("reward-claim-external-event.json", include_str!("../../flows/reward-claim-external-event.json")),
    ("profile-sync.json", include_str!("../../flows/profile-sync.json")),
    ("account-lifecycle.json", include_str!("../../flows/account-lifecycle.json")),
    ("calculated-attributes.json", include_str!("../../flows/calculated-attributes.json")),
    ("upload-event-batch.json", include_str!("../../flows/upload-event-batch.json")),
];

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
/// credentials (the secrets the example flows reference).
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
        allow_private: true,
        connection_overrides: BTreeMap::from([("mparticle".to_string(), endpoints)]),
        default_retry: crate::flow::RetryPolicy { initial_delay_ms: 200, ..Default::default() },
        ..HostConfig::default()
    };
    let secrets = SecretStore::from_pairs([
        ("MPARTICLE_CLIENT_ID", mparticle_emulator::DEMO_CLIENT_ID),
        ("MPARTICLE_CLIENT_SECRET", mparticle_emulator::DEMO_CLIENT_SECRET),
        ("MPARTICLE_API_KEY", mparticle_emulator::DEMO_API_KEY),
        ("MPARTICLE_API_SECRET", mparticle_emulator::DEMO_API_SECRET),
    ]);
    (config, secrets)
}

/// Runs the demo, writing a report to `out`. Returns the runs, for tests.
pub async fn run(runtime: RuntimeConfig, out: &mut dyn Write) -> anyhow::Result<Vec<Run>> {
    let emulator = mparticle_emulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse()?)
        .await
        .context("cannot start the mParticle emulator on loopback")?;
    let url = emulator.url();
    writeln!(out, "flowhost demo\n=============\n")?;
    writeln!(
        out,
        "mParticle emulator listening on {url} (loopback only; the connector's default is the real mParticle)\n"
    )?;

    let (config, secrets) = emulator_host_config(&url, runtime);
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
    let failed = runs.iter().filter(|r| r.status == RunStatus::Failed).count();
    writeln!(out, "\n{} runs, {} succeeded, {failed} failed.", runs.len(), runs.len() - failed)?;
    emulator.shutdown().await?;
    Ok(runs)
}
