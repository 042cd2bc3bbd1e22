//! `flowhost bench`: the end-to-end load test. It starts the mParticle emulator on loopback (in this process)
//! and `flowhost serve` (this binary, in a child process) on a fresh SQLite store, and measures:
//!
//! - **cold start**: process start to the first event delivered to mParticle, with an empty compile cache and
//!   with a warm one;
//! - **throughput**: N loyalty events for many customers across several connections (one mParticle input
//!   each), posted by concurrent clients; accepted and delivered events per second (delivered as counted by
//!   the emulator), accept latency and accept-to-delivery latency percentiles;
//! - **memory**: the service's idle RSS, and its peak RSS with many invocations in flight (mParticle stalls
//!   every request for a while, so they pile up).
//!
//! With `--store postgres://…` the service runs on that PostgreSQL database instead (an empty one: the bench does not
//! clear it), and `--processes N` starts N `flowhost serve` processes on the store for the throughput phase, the
//! clients posting to them round robin. Then the bench also reports the CPU time the processes named `postgres` on
//! this machine used during the throughput phase (the server, when it runs here), per delivered event; the phases
//! that measure one process (memory, inbound) are left out.
//!
//! Nothing leaves loopback. Timing figures are reported, never asserted.

pub mod limit;

use anyhow::{Context as _, bail};
use flowhost::delivery::TraceRetention;
use indicatif::{ProgressBar, ProgressStyle};
use mparticle_emulator::{EmulatorConfig, FaultRule, RunningEmulator};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub events: usize,
    pub customers: usize,
    pub connections: usize,
    /// Concurrent HTTP clients posting events.
    pub clients: usize,
    /// Events per `POST /v1/events`.
    pub batch: usize,
    /// Runs the service executes at once.
    pub service_concurrency: usize,
    /// Invocations held in flight for the memory figure.
    pub in_flight: usize,
    /// Show a progress bar.
    pub progress: bool,
    /// Which runs keep their trace (`[delivery] traces`).
    pub traces: TraceRetention,
    /// The store (`store` in flowhost.toml), when not a fresh SQLite file per phase: a PostgreSQL URL.
    pub store: Option<String>,
    /// `flowhost serve` processes sharing the store in the throughput phase.
    pub processes: usize,
    /// How long the emulated mParticle takes to answer each Events API request in the throughput phase, as the
    /// real one does across a network (0: at once, on loopback).
    pub mparticle_latency_ms: u64,
}

impl BenchOptions {
    pub fn full() -> Self {
        BenchOptions {
            events: 20_000,
            customers: 100,
            connections: 10,
            clients: 8,
            batch: 50,
            service_concurrency: 256,
            in_flight: 1000,
            progress: true,
            traces: TraceRetention::All,
            store: None,
            processes: 1,
            mparticle_latency_ms: 0,
        }
    }

    /// Under a minute, for CI: the same phases, smaller.
    pub fn quick() -> Self {
        BenchOptions { events: 1000, in_flight: 200, ..Self::full() }
    }
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchReport {
    pub events: usize,
    pub customers: usize,
    pub connections: usize,
    pub traces: TraceRetention,
    /// The store, as it may be shown (`SQLite` for a fresh file per phase).
    pub store: String,
    /// `flowhost serve` processes in the throughput phase.
    pub processes: usize,
    /// The emulated mParticle's answer time per Events API request in the throughput phase.
    pub mparticle_latency_ms: u64,
    pub cold_start_empty_cache_ms: f64,
    pub cold_start_warm_cache_ms: f64,
    pub accepted_per_second: f64,
    pub delivered_per_second: f64,
    pub accept_p50_ms: f64,
    pub accept_p99_ms: f64,
    pub accept_to_delivery_p50_ms: f64,
    pub accept_to_delivery_p99_ms: f64,
    /// Batches the emulator received, and the Events API requests (`/v2/events` and `/v2/bulkevents`) they came in.
    pub emulator_batches: u64,
    pub emulator_requests: u64,
    pub duplicates: u64,
    /// CPU time of the `flowhost serve` processes during the throughput phase, per delivered event.
    pub service_cpu_us_per_event: f64,
    /// CPU time of the processes named `postgres` on this machine during the throughput phase, per delivered event
    /// (with a PostgreSQL store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_cpu_us_per_event: Option<f64>,
    pub idle_rss_mb: f64,
    /// The memory and inbound phases (one process on a fresh SQLite store; not run with `--store`).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub single_process: Option<SingleProcessFigures>,
}

/// The figures of the phases that measure one process on a fresh SQLite store.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SingleProcessFigures {
    pub in_flight: usize,
    pub peak_rss_in_flight_mb: f64,
    /// Inbound: Webhook batches of [`INBOUND_BATCH`] events posted to `/v1/inbound/{connection}`, received by
    /// the mParticle connector, stored, and mapped by an inbound flow into the outbox.
    pub inbound_accepted_per_second: f64,
    pub inbound_mapped_per_second: f64,
}

impl BenchReport {
    pub fn to_text(&self) -> String {
        let database = match self.database_cpu_us_per_event {
            Some(us) => format!("; PostgreSQL {us:.0} µs"),
            None => String::new(),
        };
        let mut text = format!(
            "flowhost bench: {} events, {} customers, {} connections, traces kept: {}; store {}, {} process{}; \
             mParticle answers in {} ms\n\
             cold start to first delivery: {:.0} ms with an empty compile cache, {:.0} ms with a warm one\n\
             accepted: {:.0} events/s; accept latency p50 {:.1} ms, p99 {:.1} ms (per POST of a batch of events)\n\
             delivered: {:.0} events/s (counted by the emulator: {} batches in {} Events API requests, {} duplicates)\n\
             accept to delivery: p50 {:.0} ms, p99 {:.0} ms\n\
             CPU per delivered event: flowhost {:.0} µs{database}\n\
             memory: {:.0} MB idle\n",
            self.events,
            self.customers,
            self.connections,
            self.traces,
            self.store,
            self.processes,
            if self.processes == 1 { "" } else { "es" },
            self.mparticle_latency_ms,
            self.cold_start_empty_cache_ms,
            self.cold_start_warm_cache_ms,
            self.accepted_per_second,
            self.accept_p50_ms,
            self.accept_p99_ms,
            self.delivered_per_second,
            self.emulator_batches,
            self.emulator_requests,
            self.duplicates,
            self.accept_to_delivery_p50_ms,
            self.accept_to_delivery_p99_ms,
            self.service_cpu_us_per_event,
            self.idle_rss_mb,
        );
        if let Some(single) = &self.single_process {
            text.push_str(&format!(
                "memory: {:.0} MB peak with {} invocations in flight\n\
                 inbound: {:.0} events/s accepted, {:.0} events/s mapped into the outbox (Webhook batches of {} events)\n",
                single.peak_rss_in_flight_mb,
                single.in_flight,
                single.inbound_accepted_per_second,
                single.inbound_mapped_per_second,
                INBOUND_BATCH,
            ));
        }
        text
    }
}

/// Events per inbound Webhook batch.
pub const INBOUND_BATCH: usize = 50;
const INBOUND_TOKEN: &str = "bench-inbound-token";
/// The inbound phase's connection: `mparticle`, whose route (`/v1/inbound/mparticle`) every version of the
/// service has, so that `--service` can measure an earlier build too.
const INBOUND_CONNECTION: &str = "mparticle";

/// Runs every phase. `flowhost` is the binary to start as the service (normally this one).
pub async fn run(flowhost: &Path, options: &BenchOptions) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(options.events > 0 && options.customers > 0 && options.connections > 0, "nothing to do");
    let keys: Vec<(String, String)> =
        (0..options.connections).map(|k| (format!("bench-key-{k}"), format!("bench-secret-{k}"))).collect();
    let emulator_config = EmulatorConfig { api_keys: keys.clone(), ..EmulatorConfig::default() };
    let emulator = mparticle_emulator::start(emulator_config, "127.0.0.1:0".parse()?).await?;
    let work = std::env::temp_dir().join(format!("flowhost-bench-{}", uuid::Uuid::new_v4().simple()));
    let result = phases(flowhost, options, &emulator, &keys, &work).await;
    let _ = std::fs::remove_dir_all(&work);
    emulator.shutdown().await?;
    result
}

async fn phases(
    flowhost: &Path,
    options: &BenchOptions,
    emulator: &RunningEmulator,
    keys: &[(String, String)],
    work: &Path,
) -> anyhow::Result<BenchReport> {
    let cache = work.join("compile-cache");
    let client = client()?;

    // Cold start, twice: an empty compile cache, then the cache the first start filled.
    let mut cold = Vec::new();
    for (round, name) in ["empty", "warm"].into_iter().enumerate() {
        let service = ServiceDir::create(
            &work.join(format!("cold-{name}")),
            emulator,
            keys,
            options.service_concurrency,
            options,
        )?;
        let started = Instant::now();
        let server = service.start(flowhost, &cache)?;
        let before = emulator.handle().stats().accepted;
        // A customer of its own (no other phase sends for it): on a shared store, the run of a stopped process
        // must not hold a later phase's runs of the same customer.
        post(&client, &server.url, &[event(options.customers + round, 1_000_000 + round, options)]).await?;
        wait_until(Duration::from_secs(120), || emulator.handle().stats().accepted > before).await?;
        cold.push(started.elapsed().as_secs_f64() * 1000.0);
        // Stopped gracefully, so that its run's completion is committed rather than left leased on a shared store.
        server.stop();
    }

    // Throughput: `options.processes` processes on one store (their own directories, the same `store`).
    let mut servers = Vec::new();
    for process in 0..options.processes.max(1) {
        let service = ServiceDir::create(
            &work.join(format!("load-{process}")),
            emulator,
            keys,
            options.service_concurrency,
            options,
        )?;
        servers.push(service.start(flowhost, &cache)?);
    }
    let urls: Arc<Vec<String>> = Arc::new(servers.iter().map(|server| server.url.clone()).collect());
    if options.mparticle_latency_ms > 0 {
        // Each batch is recorded when it arrives, and answered after the latency.
        let latency = FaultRule::stall(options.mparticle_latency_ms).fraction(1.0).path_prefix("/v2/");
        emulator.handle().set_faults(vec![latency.after_processing()]);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss_mb = rss_mb(servers[0].child.id(), "VmRSS").unwrap_or(0.0);
    let pids: Vec<u32> = servers.iter().map(|server| server.child.id()).collect();
    let cpu_before = (cpu_ticks(&pids), database_cpu_ticks());
    let before = emulator.handle().stats();
    let first_batch = emulator.handle().batches().last().map(|b| b.seq).unwrap_or(0);
    let progress = progress_bar(options);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let started_unix_ms = unix_ms();
    let mut clients = Vec::new();
    for _ in 0..options.clients.max(1) {
        let (client, urls, next, options, progress) =
            (client.clone(), urls.clone(), next.clone(), options.clone(), progress.clone());
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut sent_at = HashMap::new();
            loop {
                let from = next.fetch_add(options.batch, Ordering::SeqCst);
                if from >= options.events {
                    break;
                }
                let to = (from + options.batch).min(options.events);
                let events: Vec<Value> = (from..to).map(|i| event(i % options.customers, i, &options)).collect();
                let at = unix_ms();
                let start = Instant::now();
                post(&client, &urls[(from / options.batch) % urls.len()], &events).await?;
                latencies.push(start.elapsed().as_secs_f64() * 1000.0);
                for i in from..to {
                    sent_at.insert(i as i64, at);
                }
                progress.inc((to - from) as u64);
            }
            anyhow::Ok((latencies, sent_at))
        }));
    }
    let mut accept_latencies = Vec::new();
    let mut sent_at = HashMap::new();
    for client in clients {
        let (latencies, sent) = client.await??;
        accept_latencies.extend(latencies);
        sent_at.extend(sent);
    }
    let accepted_secs = started.elapsed().as_secs_f64();
    progress.set_message("all accepted; waiting for delivery");
    let expected = before.accepted + options.events as u64;
    wait_until(Duration::from_secs(600), || {
        let delivered = emulator.handle().stats().accepted;
        progress.set_position(delivered.saturating_sub(before.accepted));
        delivered >= expected
    })
    .await
    .context("not every event was delivered")?;
    let cpu_after = (cpu_ticks(&pids), database_cpu_ticks());
    progress.finish_and_clear();
    let batches = emulator.handle().batches_since(first_batch);
    let last_delivery_ms = batches.iter().map(|b| b.received_unix_ms).max().unwrap_or(started_unix_ms);
    let mut delivery_latencies = Vec::new();
    for batch in &batches {
        for event in batch.batch["events"].as_array().into_iter().flatten() {
            let sequence = &event["data"]["custom_attributes"]["sequence"];
            let sequence = sequence.as_i64().or_else(|| sequence.as_str()?.parse().ok());
            if let Some(sent) = sequence.and_then(|s| sent_at.get(&s)) {
                delivery_latencies.push((batch.received_unix_ms - sent) as f64);
            }
        }
    }
    let after = emulator.handle().stats();
    emulator.handle().set_faults(Vec::new());
    for server in servers {
        server.stop();
    }
    let per_event_us = |before: u64, after: u64| {
        (after.saturating_sub(before)) as f64 / ticks_per_second() * 1e6 / options.events as f64
    };
    let service_cpu_us_per_event = per_event_us(cpu_before.0, cpu_after.0);
    let database_cpu_us_per_event = match (options.store.is_some(), cpu_before.1, cpu_after.1) {
        (true, Some(before), Some(after)) if after > before => Some(per_event_us(before, after)),
        _ => None,
    };
    let single_process = if options.store.is_none() && options.processes <= 1 {
        Some(single_process_phases(flowhost, options, emulator, keys, work, &cache, &client).await?)
    } else {
        None
    };

    accept_latencies.sort_by(f64::total_cmp);
    delivery_latencies.sort_by(f64::total_cmp);
    let delivered_secs = ((last_delivery_ms - started_unix_ms) as f64 / 1000.0).max(accepted_secs);
    Ok(BenchReport {
        events: options.events,
        customers: options.customers,
        connections: options.connections,
        traces: options.traces,
        store: match &options.store {
            Some(store) => flowhost::store::redact_store_setting(store),
            None => "SQLite".to_string(),
        },
        processes: options.processes.max(1),
        mparticle_latency_ms: options.mparticle_latency_ms,
        cold_start_empty_cache_ms: cold[0],
        cold_start_warm_cache_ms: cold[1],
        accepted_per_second: options.events as f64 / accepted_secs,
        delivered_per_second: options.events as f64 / delivered_secs,
        accept_p50_ms: percentile(&accept_latencies, 0.50),
        accept_p99_ms: percentile(&accept_latencies, 0.99),
        accept_to_delivery_p50_ms: percentile(&delivery_latencies, 0.50),
        accept_to_delivery_p99_ms: percentile(&delivery_latencies, 0.99),
        emulator_batches: after.received - before.received,
        emulator_requests: events_api_requests(&after) - events_api_requests(&before),
        duplicates: after.duplicates - before.duplicates,
        service_cpu_us_per_event,
        database_cpu_us_per_event,
        idle_rss_mb,
        single_process,
    })
}

/// The phases that measure one process on a fresh SQLite store: memory with many invocations in flight, and inbound.
async fn single_process_phases(
    flowhost: &Path,
    options: &BenchOptions,
    emulator: &RunningEmulator,
    keys: &[(String, String)],
    work: &Path,
    cache: &Path,
    client: &reqwest::Client,
) -> anyhow::Result<SingleProcessFigures> {
    // Memory with many invocations in flight: mParticle holds every request for a while.
    let service = ServiceDir::create(&work.join("memory"), emulator, keys, options.in_flight, options)?;
    let server = service.start(flowhost, cache)?;
    emulator.handle().set_faults(vec![FaultRule::stall(1500).fraction(1.0).path_prefix("/v2/")]);
    let events: Vec<Value> =
        (0..options.in_flight).map(|i| event(i % options.customers, 2_000_000 + i, options)).collect();
    for chunk in events.chunks(100) {
        post(client, &server.url, chunk).await?;
    }
    let mut peak: f64 = 0.0;
    let sampling = Instant::now();
    while sampling.elapsed() < Duration::from_millis(1400) {
        peak = peak.max(rss_mb(server.child.id(), "VmRSS").unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peak = peak.max(rss_mb(server.child.id(), "VmHWM").unwrap_or(0.0));
    emulator.handle().clear_faults();
    drop(server);

    let (inbound_accepted_per_second, inbound_mapped_per_second) =
        inbound_phase(flowhost, options, emulator, keys, &work.join("inbound"), cache, client).await?;
    Ok(SingleProcessFigures {
        in_flight: options.in_flight,
        peak_rss_in_flight_mb: peak,
        inbound_accepted_per_second,
        inbound_mapped_per_second,
    })
}

/// The inbound phase: `options.events` events in Webhook batches posted by `options.clients` clients to
/// `/v1/inbound/mparticle`, then mapped by an inbound flow into the outbox. Returns the events per second accepted
/// (all posts answered) and mapped (all in the outbox).
async fn inbound_phase(
    flowhost: &Path,
    options: &BenchOptions,
    emulator: &RunningEmulator,
    keys: &[(String, String)],
    dir: &Path,
    cache: &Path,
    client: &reqwest::Client,
) -> anyhow::Result<(f64, f64)> {
    let mut service = ServiceDir::create(dir, emulator, keys, options.service_concurrency, options)?;
    service.add_inbound_flow()?;
    let server = service.start(flowhost, cache)?;
    let url = format!("{}/v1/inbound/{INBOUND_CONNECTION}", server.url);
    let batches = options.events.div_ceil(INBOUND_BATCH);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut posters = Vec::new();
    for _ in 0..options.clients.max(1) {
        let (client, url, next, options) = (client.clone(), url.clone(), next.clone(), options.clone());
        posters.push(tokio::spawn(async move {
            loop {
                let batch = next.fetch_add(1, Ordering::SeqCst);
                if batch >= batches {
                    return anyhow::Ok(());
                }
                let from = batch * INBOUND_BATCH;
                let to = (from + INBOUND_BATCH).min(options.events);
                let body = webhook_batch(batch, from..to, &options);
                let response = client.post(&url).bearer_auth(INBOUND_TOKEN).json(&body).send().await?;
                if !response.status().is_success() {
                    let status = response.status();
                    bail!("inbound batch {batch}: {status} {}", response.text().await.unwrap_or_default());
                }
            }
        }));
    }
    for poster in posters {
        poster.await??;
    }
    let accepted_secs = started.elapsed().as_secs_f64();
    let mut mapped = 0;
    let mut after = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while mapped < options.events {
        anyhow::ensure!(Instant::now() < deadline, "only {mapped} of {} inbound events were mapped", options.events);
        let page: Value =
            client.get(format!("{}/v1/outbox?after={after}&limit=1000", server.url)).send().await?.json().await?;
        let events = page["events"].as_array().map(Vec::len).unwrap_or(0);
        if events == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        mapped += events;
        after = page["next"].as_i64().unwrap_or(after);
    }
    let mapped_secs = started.elapsed().as_secs_f64();
    drop(server);
    Ok((options.events as f64 / accepted_secs, options.events as f64 / mapped_secs))
}

/// One Webhook output batch (mParticle's format) of one customer, with the events `sequences`.
fn webhook_batch(batch: usize, sequences: std::ops::Range<usize>, options: &BenchOptions) -> Value {
    let events: Vec<Value> = sequences
        .map(|sequence| {
            json!({"event_type": "custom_event", "message_id": format!("bench-in-{sequence}"),
                   "data": {"event_name": "points_redeemed", "custom_event_type": "transaction",
                            "custom_attributes": {"points": 10, "sequence": sequence}}})
        })
        .collect();
    json!({
        "batch_id": format!("bench-in-batch-{batch}"), "environment": "production",
        "user_identities": [{"identity_type": "customer_id", "identity": format!("member-{}", batch % options.customers)}],
        "events": events,
    })
}

/// The inbound flow of the inbound phase: brand 0's keys, a custom event mapped into the outbox.
fn inbound_flow() -> String {
    let brand: Value = serde_json::from_str(&brand_flow(0)).expect("the brand flow is JSON");
    json!({
        "id": "inbound-bench",
        "version": "1.0.0",
        "trigger": {"type": "inbound", "connection": INBOUND_CONNECTION, "eventType": "custom_event",
                    "eventName": "points_redeemed"},
        "connections": {INBOUND_CONNECTION: brand["connections"]["brand0"]},
        "nodes": [{"id": "to_loyalty", "emit": {"event": "points_redeem",
            "fields": {"customer": "{customer}", "points": "{points}", "sequence": "{sequence}"}}}]
    })
    .to_string()
}

/// One loyalty event: customer `customer` of brand `customer % connections`; `sequence` identifies it.
fn event(customer: usize, sequence: usize, options: &BenchOptions) -> Value {
    let brand = customer % options.connections;
    json!({
        "event": format!("point_add_brand_{brand}"),
        "id": format!("bench-{sequence}"),
        "data": {"customerId": format!("member-{customer}"), "points": 10, "sequence": sequence}
    })
}

/// The point_add flow of one brand: its own connection (mParticle input), its own event name.
fn brand_flow(brand: usize) -> String {
    json!({
        "id": format!("point-add-brand-{brand}"),
        "version": "1.0.0",
        "trigger": {"type": "event", "event": format!("point_add_brand_{brand}"),
            "schema": {"type": "object", "required": ["customerId", "points", "sequence"]}},
        "connections": {format!("brand{brand}"): {"connector": "mparticle", "version": "^0.1", "config": {
            "apiKey": {"secret": format!("BENCH_API_KEY_{brand}")},
            "apiSecret": {"secret": format!("BENCH_API_SECRET_{brand}")},
            "environment": "development"}}},
        "nodes": [{"id": "send", "connector": {"connection": format!("brand{brand}"),
            "capability": "triggerMarketingCommunication",
            "input": {"properties": {"eventName": "point_add", "eventType": "transaction",
                "payload": {"points": "{{ trigger.points }}", "sequence": "{{ trigger.sequence }}"},
                "identityType": "customer_id", "identityValue": "{{ trigger.customerId }}"}}},
            "retry": {"maxAttempts": 6, "initialDelayMs": 100}}]
    })
    .to_string()
}

struct ServiceDir {
    dir: PathBuf,
    secrets: Vec<(String, String)>,
}

impl ServiceDir {
    fn create(
        dir: &Path,
        emulator: &RunningEmulator,
        keys: &[(String, String)],
        concurrency: usize,
        options: &BenchOptions,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("flows"))?;
        let url = emulator.url();
        let traces = options.traces;
        let store = serde_json::to_string(options.store.as_deref().unwrap_or("flowhost.db"))?;
        let mut config = format!(
            "listen = \"127.0.0.1:0\"\nstore = {store}\nflows = [\"flows\"]\n\n[delivery]\nconcurrency = {concurrency}\ntraces = \"{traces}\"\n\n[connectors]\nallow_private = true\n\n[secrets]\nenvironment = true\nallow = [\"BENCH_API_KEY_*\", \"BENCH_API_SECRET_*\"]\n"
        );
        let mut secrets = Vec::new();
        for (brand, (key, secret)) in keys.iter().enumerate() {
            std::fs::write(dir.join("flows").join(format!("brand-{brand}.json")), brand_flow(brand))?;
            config.push_str(&format!("\n[connections.brand{brand}]\nconfig = {{ eventsApiUrl = \"{url}/v2\" }}\n"));
            secrets.push((format!("BENCH_API_KEY_{brand}"), key.clone()));
            secrets.push((format!("BENCH_API_SECRET_{brand}"), secret.clone()));
        }
        std::fs::write(dir.join("flowhost.toml"), config)?;
        Ok(ServiceDir { dir: dir.to_path_buf(), secrets })
    }

    /// Adds the inbound flow and its connection's inbound token.
    fn add_inbound_flow(&mut self) -> anyhow::Result<()> {
        std::fs::write(self.dir.join("flows").join("inbound.json"), inbound_flow())?;
        let mut config = std::fs::read_to_string(self.dir.join("flowhost.toml"))?;
        config.push_str(&format!(
            "\n[connections.{INBOUND_CONNECTION}]\ninbound_token = {{ secret = \"BENCH_INBOUND_TOKEN\" }}\n"
        ));
        std::fs::write(self.dir.join("flowhost.toml"), config)?;
        self.secrets.push(("BENCH_INBOUND_TOKEN".into(), INBOUND_TOKEN.into()));
        Ok(())
    }

    fn start(&self, flowhost: &Path, cache: &Path) -> anyhow::Result<Server> {
        let log = std::fs::File::create(self.dir.join("server.log"))?;
        let mut command = Command::new(flowhost);
        command
            .arg("--cache-dir")
            .arg(cache)
            .arg("serve")
            .arg("--config")
            .arg(self.dir.join("flowhost.toml"))
            .stdout(Stdio::piped())
            .stderr(log)
            // The store is the config's.
            .env_remove("FLOWHOST_STORE");
        for (name, value) in &self.secrets {
            command.env(name, value);
        }
        let mut child = command.spawn().with_context(|| format!("cannot start {}", flowhost.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(url) = line.split_once("serving on ").and_then(|(_, rest)| rest.split_whitespace().next()) else {
            let _ = child.kill();
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            bail!("flowhost serve did not start: {line}\n{log}");
        };
        Ok(Server { url: url.to_string(), child })
    }
}

struct Server {
    url: String,
    child: Child,
}

impl Server {
    /// SIGTERM, and up to 15 s for the graceful shutdown (settling what is in flight); then SIGKILL.
    fn stop(mut self) {
        #[cfg(target_os = "linux")]
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill only sends a signal to our own child process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> anyhow::Result<reqwest::Client> {
    // reqwest is built with rustls and no default provider; the runtime installs ring, do the same here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build()?)
}

async fn post(client: &reqwest::Client, url: &str, events: &[Value]) -> anyhow::Result<()> {
    let body = serde_json::to_vec(events)?;
    let response = client
        .post(format!("{url}/v1/events"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    if status != reqwest::StatusCode::ACCEPTED {
        bail!("POST /v1/events answered {status}: {}", response.text().await.unwrap_or_default());
    }
    Ok(())
}

async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out after {} s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

fn progress_bar(options: &BenchOptions) -> ProgressBar {
    if !options.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(options.events as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} events {per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("posting");
    bar
}

/// User and system CPU time of processes, in clock ticks (`/proc/<pid>/stat`); 0 for one that is gone.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|pid| process_ticks(&format!("/proc/{pid}/stat"))).sum()
}

fn process_ticks(stat_path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // The fields after the command (which may hold spaces), from the third: utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks of every process named `postgres` on this machine (a server running here, with all its backends),
/// including what finished backends left in their parent's `cutime`/`cstime`; `None` when there is none.
fn database_cpu_ticks() -> Option<u64> {
    let mut total = 0;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let path = entry.path();
        if std::fs::read_to_string(path.join("comm")).is_ok_and(|comm| comm.trim() == "postgres")
            && let Ok(stat) = std::fs::read_to_string(path.join("stat"))
            && let Some(rest) = stat.rfind(')').map(|at| &stat[at + 2..])
        {
            let fields: Vec<u64> = rest.split_whitespace().filter_map(|f| f.parse().ok()).collect();
            // utime, stime, cutime, cstime (fields 14 to 17; the state letter is not a number).
            total += fields.get(10..14).map_or(0, |times| times.iter().sum::<u64>());
            found = true;
        }
    }
    found.then_some(total)
}

fn ticks_per_second() -> f64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks > 0 {
            return ticks as f64;
        }
    }
    100.0
}

/// A line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in MB.
fn rss_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The requests the emulator got on the Events API's batch endpoints.
fn events_api_requests(stats: &mparticle_emulator::Stats) -> u64 {
    stats.requests.iter().filter(|(route, _)| route.starts_with("POST /v2/")).map(|(_, n)| n).sum()
}
