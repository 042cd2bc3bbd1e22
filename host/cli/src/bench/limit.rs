//! `flowhost bench --mparticle-limit N`: a burst against a throttling mParticle. The emulator (in this process,
//! on loopback) gives one API key a provisioned throughput of N batches per second; one `flowhost serve` sends
//! it a burst posted at ten times that rate, once with pacing and once without (`[delivery] pacing = false`),
//! and the bench reports for each pass the batches delivered per second against the limit, the 429s among the
//! Events API requests, dead letters, events lost, and whether every customer's events arrived in order.
//!
//! Nothing leaves loopback. Timing figures are reported, never asserted.

use super::{BenchOptions, ServiceDir, client, events_api_requests, unix_ms};
use anyhow::{Context as _, bail};
use mparticle_emulator::EmulatorConfig;
use serde::Serialize;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// The token the bench's services require on the API (for the detailed `/healthz`).
const TOKEN: &str = "bench-api-token";

/// The figures of both passes.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitReport {
    /// The emulator's provisioned throughput, batches per second.
    pub limit: u32,
    pub events: usize,
    pub customers: usize,
    /// The rate the burst was posted at, events per second (ten times the limit).
    pub posted_per_second: f64,
    pub paced: LimitPass,
    pub unpaced: LimitPass,
}

/// One pass.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitPass {
    pub pacing: bool,
    /// From the first event posted to the last batch delivered.
    pub seconds: f64,
    /// Batches the emulator accepted per second over that time.
    pub delivered_batches_per_second: f64,
    /// The same, in percent of the limit.
    pub percent_of_limit: f64,
    /// Events API requests (`/v2/events`, `/v2/bulkevents`), those answered 429 included.
    pub requests: u64,
    pub throttled_requests: u64,
    pub percent_throttled: f64,
    pub dead_letters: u64,
    /// Events neither delivered nor dead-lettered when the pass ended.
    pub lost: u64,
    pub duplicates: u64,
    /// Whether every customer's events arrived in the order they were posted.
    pub order_kept: bool,
}

impl LimitReport {
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "burst of {} events for {} customers, posted at {:.0}/s, against mParticle's limit of {} batches/s\n",
            self.events, self.customers, self.posted_per_second, self.limit
        );
        for pass in [&self.paced, &self.unpaced] {
            text.push_str(&format!(
                "  pacing {:<3}  {:>7.1} s  {:>6.1} batches/s ({:>5.1} % of the limit)  429s {:>6} of {:>6} requests \
                 ({:>5.1} %)  dead letters {}  lost {}  duplicates {}  order kept: {}\n",
                if pass.pacing { "on" } else { "off" },
                pass.seconds,
                pass.delivered_batches_per_second,
                pass.percent_of_limit,
                pass.throttled_requests,
                pass.requests,
                pass.percent_throttled,
                pass.dead_letters,
                pass.lost,
                pass.duplicates,
                if pass.order_kept { "yes" } else { "NO" },
            ));
        }
        text
    }
}

/// Runs both passes. `events` defaults to about 222 seconds of the limit (60,000 events at 270/s).
pub async fn run(
    flowhost: &Path,
    limit: u32,
    events: Option<usize>,
    customers: usize,
    progress: bool,
) -> anyhow::Result<LimitReport> {
    anyhow::ensure!(limit > 0, "--mparticle-limit must be at least 1");
    let events = events.unwrap_or(limit as usize * 60_000 / 270).max(1);
    let customers = customers.clamp(1, events);
    let work = std::env::temp_dir().join(format!("flowhost-bench-limit-{}", uuid::Uuid::new_v4().simple()));
    let result = async {
        let paced = pass(flowhost, limit, events, customers, true, &work, progress).await?;
        let unpaced = pass(flowhost, limit, events, customers, false, &work, progress).await?;
        anyhow::Ok(LimitReport { limit, events, customers, posted_per_second: f64::from(limit) * 10.0, paced, unpaced })
    }
    .await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn pass(
    flowhost: &Path,
    limit: u32,
    events: usize,
    customers: usize,
    pacing: bool,
    work: &Path,
    progress: bool,
) -> anyhow::Result<LimitPass> {
    let keys = vec![("bench-key-0".to_string(), "bench-secret-0".to_string())];
    let config =
        EmulatorConfig { api_keys: keys.clone(), batches_per_second: Some(limit), ..EmulatorConfig::default() };
    let emulator = mparticle_emulator::start(config, "127.0.0.1:0".parse()?).await?;
    let options = BenchOptions { events, customers, connections: 1, progress: false, ..BenchOptions::full() };
    let dir = work.join(if pacing { "paced" } else { "unpaced" });
    let mut service = ServiceDir::create(&dir, &emulator, &keys, options.service_concurrency, &options)?;
    let config_path = dir.join("flowhost.toml");
    let config = std::fs::read_to_string(&config_path)?.replacen(
        "\n\n[delivery]\n",
        &format!("\napi_token = {{ secret = \"BENCH_API_TOKEN\" }}\n\n[delivery]\npacing = {pacing}\n"),
        1,
    );
    std::fs::write(&config_path, config)?;
    service.secrets.push(("BENCH_API_TOKEN".into(), TOKEN.into()));
    let server = service.start(flowhost, &work.join("compile-cache"))?;
    let client = client()?;

    // The burst: one client (so the store accepts each customer's events in sequence order), a tenth of a second
    // of the limit's events per request, ten requests per second.
    let per_post = (limit as usize).max(1);
    let started_ms = unix_ms();
    let started = Instant::now();
    for (n, from) in (0..events).step_by(per_post).enumerate() {
        let due = started + Duration::from_millis(100 * n as u64);
        tokio::time::sleep_until(due.into()).await;
        let batch: Vec<Value> =
            (from..(from + per_post).min(events)).map(|i| super::event(i % customers, i, &options)).collect();
        post(&client, &server.url, &batch).await?;
    }
    let timeout = Duration::from_secs(120).max(Duration::from_secs_f64(events as f64 / f64::from(limit) * 4.0));
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    let dead = loop {
        let dead = dead_letters(&client, &server.url).await?;
        let accepted = emulator.stats().accepted;
        if accepted + dead >= events as u64 {
            break dead;
        }
        if Instant::now() > deadline {
            bail!("pacing {pacing}: {accepted} of {events} delivered and {dead} dead after {} s", timeout.as_secs());
        }
        if progress && last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("pacing {}: {accepted} of {events} delivered, {dead} dead", if pacing { "on" } else { "off" });
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    server.stop();
    let stats = emulator.stats();
    let batches = emulator.batches();
    emulator.shutdown().await?;

    let last_ms = batches.iter().map(|b| b.received_unix_ms).max().unwrap_or(started_ms);
    let seconds = ((last_ms - started_ms) as f64 / 1000.0).max(0.001);
    let mut delivered = HashSet::new();
    let mut order_kept = true;
    let mut last_of: HashMap<String, i64> = HashMap::new();
    for batch in &batches {
        for event in batch.batch["events"].as_array().into_iter().flatten() {
            let sequence = &event["data"]["custom_attributes"]["sequence"];
            let Some(sequence) = sequence.as_i64().or_else(|| sequence.as_str()?.parse().ok()) else { continue };
            let customer = batch.batch["user_identities"]["customer_id"].as_str().unwrap_or_default().to_string();
            if last_of.insert(customer, sequence).is_some_and(|before| before >= sequence) {
                order_kept = false;
            }
            delivered.insert(sequence);
        }
    }
    let requests = events_api_requests(&stats);
    let accepted = stats.accepted as f64;
    Ok(LimitPass {
        pacing,
        seconds,
        delivered_batches_per_second: accepted / seconds,
        percent_of_limit: accepted / seconds / f64::from(limit) * 100.0,
        requests,
        throttled_requests: stats.throttled_requests,
        percent_throttled: if requests == 0 { 0.0 } else { stats.throttled_requests as f64 / requests as f64 * 100.0 },
        dead_letters: dead,
        lost: (events as u64).saturating_sub(delivered.len() as u64 + dead),
        duplicates: stats.duplicates,
        order_kept,
    })
}

async fn post(client: &reqwest::Client, url: &str, events: &[Value]) -> anyhow::Result<()> {
    let response = client.post(format!("{url}/v1/events")).bearer_auth(TOKEN).json(events).send().await?;
    let status = response.status();
    if status != reqwest::StatusCode::ACCEPTED {
        bail!("POST /v1/events answered {status}: {}", response.text().await.unwrap_or_default());
    }
    Ok(())
}

/// Dead letters, from the service's detailed `/healthz`.
async fn dead_letters(client: &reqwest::Client, url: &str) -> anyhow::Result<u64> {
    let health: Value = client.get(format!("{url}/healthz")).bearer_auth(TOKEN).send().await?.json().await?;
    health["queue"]["dead"].as_u64().with_context(|| format!("no dead-letter count in /healthz: {health}"))
}
