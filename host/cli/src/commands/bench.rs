//! `flowhost bench [--quick] [--events N] [--traces all|failures] [--json] [--service PATH]`: the end-to-end load test
//! (see `crate::bench`).

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
    let flowhost = match &args.service {
        Some(path) => path.clone(),
        None => std::env::current_exe()?,
    };
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
