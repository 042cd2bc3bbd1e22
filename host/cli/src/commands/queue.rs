//! `flowhost queue list|retry|drop`: the resend queue of a service's store, the same operations as
//! `GET /v1/queue`, `POST /v1/queue/{id}/retry` and `DELETE /v1/queue/{id}`. Safe while the service runs.

use clap::Subcommand;
use flowhost::server::config::ServeConfig;
use flowhost::store::{RunFilter, RunState, Store, StoreLocation, parse_states};
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
    /// Make a dead, failed, held or waiting run due now, with a fresh count of attempts.
    Retry {
        /// The run's id (`flowhost queue list` shows them).
        #[arg(value_name = "RUN_ID")]
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Drop a run from the queue (kept for the record as `dropped`).
    Drop {
        /// The run's id (`flowhost queue list` shows them).
        #[arg(value_name = "RUN_ID")]
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
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
            let runs = store.list(&filter).await?;
            store.close().await;
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
                    .map(|m| format!("  last error: {m}"))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{}  {:<7}  {}  customer {}  attempts {}{error}",
                    run.id,
                    run.status.as_str(),
                    run.flow_id,
                    run.customer.as_deref().unwrap_or("-"),
                    run.attempts
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Retry { id, store } => {
            let store = store.open().await?;
            let done = store.retry_now(&id).await?;
            store.close().await;
            if done {
                writeln!(out, "run {id} is due now")?;
                Ok(ExitCode::SUCCESS)
            } else {
                writeln!(err, "error: run {id} is not dead, failed, held or queued")?;
                Ok(ExitCode::from(1))
            }
        }
        QueueCommand::Drop { id, store } => {
            let store = store.open().await?;
            let done = store.drop_run(&id).await?;
            store.close().await;
            if done {
                writeln!(out, "run {id} dropped (kept for the record)")?;
                Ok(ExitCode::SUCCESS)
            } else {
                writeln!(err, "error: run {id} is not queued, leased, held or dead")?;
                Ok(ExitCode::from(1))
            }
        }
    }
}
