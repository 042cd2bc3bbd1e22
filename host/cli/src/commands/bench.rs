//! `flowhost bench [--quick] [--events N] [--traces all|failures] [--json] [--service PATH] [--store URL]
//! [--processes N] [--mparticle-latency-ms MS]`: the end-to-end load test
//! (see `crate::bench`); `flowhost bench --mparticle-limit N [--events N] [--customers N]`: a burst against a
//! throttling mParticle, with pacing and without (see `crate::bench::limit`).

use crate::bench::{BenchOptions, run as run_bench};
use flowhost::delivery::TraceRetention;
use std::io::Write;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A small run (under a minute) for CI smoke tests.
    #[arg(long)]
    quick: bool,
    /// Loyalty events to post [default: 20000, or 1000 with --quick].
    #[arg(long)]
    events: Option<usize>,
    /// Distinct customers.
    #[arg(long, default_value_t = 100)]
    customers: usize,
    /// Connections (mParticle inputs), one flow each.
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Events per request.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Which runs keep their trace, as `[delivery] traces` in flowhost.toml.
    #[arg(long, default_value_t = TraceRetention::All, value_parser = parse_traces)]
    traces: TraceRetention,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    /// The `flowhost` binary to run as the service [default: this one], e.g. another build to compare with.
    #[arg(long, value_name = "PATH")]
    service: Option<std::path::PathBuf>,
    /// Run the service on this store instead of a fresh SQLite file per phase: an empty PostgreSQL database
    /// (`postgres://user@host:5432/database`). Only the cold start and throughput phases run.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// `flowhost serve` processes sharing the store in the throughput phase (clients post to them round robin).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    processes: u16,
    /// Make the emulated mParticle answer each Events API request of the throughput phase after this many
    /// milliseconds, as the real one does across a network [default: 0, at once].
    #[arg(long, value_name = "MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    mparticle_latency_ms: u64,
    /// Instead of the phases above: give the emulated mParticle a provisioned throughput of N batches per second
    /// and send it a burst posted at ten times that rate, with pacing and without (`--events` sets the burst's
    /// size [default: N x 222, e.g. 60,000 at 270]).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    mparticle_limit: Option<u32>,
}

pub async fn run(args: &BenchArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let mut options = if args.quick { BenchOptions::quick() } else { BenchOptions::full() };
    if let Some(events) = args.events {
        options.events = events;
    }
    options.customers = args.customers;
    options.connections = args.connections;
    options.clients = args.clients;
    options.batch = args.batch.max(1);
    options.traces = args.traces;
    options.progress = !args.json;
    if let Some(store) = &args.store {
        // Refused here, with the reason, rather than by each service process.
        flowhost::store::StoreLocation::parse(store)?;
    }
    options.store = args.store.clone();
    options.processes = usize::from(args.processes);
    options.mparticle_latency_ms = args.mparticle_latency_ms;
    let flowhost = match &args.service {
        Some(path) => path.clone(),
        None => std::env::current_exe()?,
    };
    if let Some(limit) = args.mparticle_limit {
        let report = crate::bench::limit::run(&flowhost, limit, args.events, args.customers, !args.json).await?;
        if args.json {
            serde_json::to_writer_pretty(&mut *out, &report)?;
            writeln!(out)?;
        } else {
            write!(out, "{}", report.to_text())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = run_bench(&flowhost, &options).await?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", report.to_text())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_traces(text: &str) -> Result<TraceRetention, String> {
    text.parse()
}
