//! `flowhost queue list|retry|drop`: the resend queue of a service's store, the same operations as
//! `GET /v1/queue`, `POST /v1/queue/{id}/retry`, `DELETE /v1/queue/{id}` and, for every dead run of a customer
//! or a flow, `POST /v1/queue/retry|drop`. Safe while the service runs.

use clap::Subcommand;
use flowhost::server::config::ServeConfig;
use flowhost::store::{BulkAction, RunFilter, RunState, Store, StoreLocation, parse_states};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Subcommand)]
pub enum QueueCommand {
    /// Runs waiting for a resend, leased, held by a disconnect, or dead-lettered, newest first.
    List {
        /// Only these states, comma-separated (queued, leased, held, dead; also succeeded, failed, dropped).
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        flow: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Make a dead, failed, held or waiting run due now, with a fresh count of attempts; or, with --customer
    /// and/or --flow, every dead run of that customer or flow.
    Retry {
        #[command(flatten)]
        runs: Which,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Drop a run from the queue (kept for the record as `dropped`); or, with --customer and/or --flow, every
    /// dead run of that customer or flow.
    Drop {
        #[command(flatten)]
        runs: Which,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// One run by its id, or every dead run of a customer, a flow, or both.
#[derive(clap::Args)]
#[group(required = true, multiple = true)]
pub struct Which {
    /// The run's id (`flowhost queue list` shows them).
    #[arg(value_name = "RUN_ID", conflicts_with_all = ["customer", "flow"])]
    id: Option<String>,
    /// Every dead run of this customer.
    #[arg(long)]
    customer: Option<String>,
    /// Every dead run of this flow.
    #[arg(long)]
    flow: Option<String>,
}

#[derive(clap::Args)]
pub struct StoreArgs {
    /// The service's configuration, for its store.
    #[arg(long, default_value = "flowhost.toml")]
    config: PathBuf,
    /// The store itself, instead of the configuration's: a SQLite file, or a PostgreSQL URL
    /// (`postgres://user@host:5432/database`).
    #[arg(long, env = "FLOWHOST_STORE", value_name = "PATH|URL", hide_env_values = true)]
    store: Option<String>,
}

impl StoreArgs {
    async fn open(&self) -> anyhow::Result<Arc<dyn Store>> {
        let location = match &self.store {
            Some(store) => StoreLocation::parse(store)?,
            None => ServeConfig::load(&self.config)?.store_location()?,
        };
        if let Some(path) = location.file() {
            anyhow::ensure!(path.exists(), "no store at {} (has the service run yet?)", path.display());
        }
        Ok(location.open().await?)
    }
}

pub async fn run(command: QueueCommand, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<ExitCode> {
    match command {
        QueueCommand::List { status, customer, flow, limit, json, store } => {
            let statuses = match status {
                Some(list) => parse_states(&list)?,
                None => vec![RunState::Queued, RunState::Leased, RunState::Held, RunState::Dead],
            };
            let store = store.open().await?;
            let filter = RunFilter { customer, flow_id: flow, statuses, limit, ..RunFilter::default() };
            let runs = store.list(&filter).await;
            let ids: Vec<String> = runs.iter().flatten().map(|run| run.id.clone()).collect();
            let held_by = store.held_by(&ids).await;
            store.close().await;
            let (runs, held_by) = (runs?, held_by?);
            if json {
                serde_json::to_writer_pretty(&mut *out, &runs)?;
                writeln!(out)?;
                return Ok(ExitCode::SUCCESS);
            }
            if runs.is_empty() {
                writeln!(out, "the queue is empty")?;
            }
            for run in &runs {
                let error = run
                    .last_error
                    .as_ref()
                    .and_then(|e| e.get("message"))
                    .and_then(|m| m.as_str())
                    .filter(|_| run.error_to_show().is_some())
                    .map(|m| format!("  last error: {m}"))
                    .unwrap_or_default();
                let held = match held_by.get(&run.id) {
                    Some(by) if by.status == RunState::Queued && by.attempts > 0 => {
                        format!("  held by {} (waiting for its resend)", by.run)
                    }
                    Some(by) => format!("  held by {} ({})", by.run, by.status.as_str()),
                    None => String::new(),
                };
                writeln!(
                    out,
                    "{}  {:<7}  {}  customer {}  attempts {}{held}{error}",
                    run.id,
                    run.status.as_str(),
                    run.flow_id,
                    run.customer.as_deref().unwrap_or("-"),
                    run.attempts_made()
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Retry { runs, store } => act(runs, &store, BulkAction::Retry, out, err).await,
        QueueCommand::Drop { runs, store } => act(runs, &store, BulkAction::Drop, out, err).await,
    }
}

async fn act(
    runs: Which,
    store: &StoreArgs,
    action: BulkAction,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let store = store.open().await?;
    let Some(id) = runs.id else {
        let filter = RunFilter { customer: runs.customer, flow_id: runs.flow, ..RunFilter::default() };
        let result = store.bulk_dead(&filter, action).await;
        store.close().await;
        let ids = result?;
        let done = match action {
            BulkAction::Retry => "retried (due now)",
            BulkAction::Drop => "dropped (kept for the record)",
        };
        writeln!(out, "{} dead run{} {done}", ids.len(), if ids.len() == 1 { "" } else { "s" })?;
        for id in ids {
            writeln!(out, "{id}")?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    let result = match action {
        BulkAction::Retry => store.retry_now(&id).await,
        BulkAction::Drop => store.drop_run(&id).await,
    };
    store.close().await;
    match (action, result?) {
        (BulkAction::Retry, true) => writeln!(out, "run {id} is due now")?,
        (BulkAction::Drop, true) => writeln!(out, "run {id} dropped (kept for the record)")?,
        (BulkAction::Retry, false) => {
            writeln!(err, "error: run {id} is not dead, failed, held or queued")?;
            return Ok(ExitCode::from(1));
        }
        (BulkAction::Drop, false) => {
            writeln!(err, "error: run {id} is not queued, leased, held or dead")?;
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}
