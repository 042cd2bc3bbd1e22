//! `flowhost check`, `flowhost run` and `flowhost flow schema`.

use super::{GlobalOptions, json_argument};
use crate::flow::{NodeStatus, Run, RunStatus, flow_schema};
use crate::{Host, HostConfig};
use anyhow::Context as _;
use serde_json::{Map, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options for commands that build a host.
#[derive(clap::Args, Clone)]
pub struct HostArgs {
    /// A directory of connector components (*.wasm) to load besides the built-in ones (repeatable).
    #[arg(long = "connectors", value_name = "DIR")]
    connector_dirs: Vec<PathBuf>,
    /// Merge config into a connection of the flow: NAME=<json|@file>, e.g. to point it at another
    /// environment (repeatable).
    #[arg(long = "connection-config", value_name = "NAME=JSON")]
    connection_config: Vec<String>,
    /// Allow connections to reach loopback and private addresses (local services, the emulator).
    #[arg(long)]
    allow_private: bool,
}

impl HostArgs {
    pub async fn host(&self, options: &GlobalOptions) -> anyhow::Result<Host> {
        let mut config = HostConfig {
            runtime: options.runtime_config(),
            connector_dirs: self.connector_dirs.clone(),
            allow_private: self.allow_private,
            ..HostConfig::default()
        };
        for entry in &self.connection_config {
            let (name, json) =
                entry.split_once('=').with_context(|| format!("--connection-config {entry:?} is not NAME=JSON"))?;
            let Value::Object(values) = json_argument(&format!("--connection-config {name}"), json)? else {
                anyhow::bail!("--connection-config {name} must be a JSON object");
            };
            config.connection_overrides.entry(name.to_string()).or_insert_with(Map::new).extend(values);
        }
        Ok(Host::new(config, options.secrets()?).await?)
    }
}

pub async fn check(
    files: &[PathBuf],
    host: &HostArgs,
    options: &GlobalOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let host = host.host(options).await?;
    let mut failed = 0;
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                writeln!(err, "{}: cannot read: {e}", file.display())?;
                failed += 1;
                continue;
            }
        };
        match host.check(&text) {
            Ok(flow) => {
                writeln!(out, "{}: ok ({} {}, {} node(s))", file.display(), flow.id, flow.version, flow.nodes.len())?
            }
            Err(problems) => {
                failed += 1;
                for problem in problems {
                    writeln!(err, "{}: {problem}", file.display())?;
                }
            }
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub async fn run(
    file: &PathBuf,
    event: &str,
    json: bool,
    host: &HostArgs,
    options: &GlobalOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let event = json_argument("--event", event)?;
    let host = host.host(options).await?;
    let flow = match host.load(&text) {
        Ok(flow) => flow,
        Err(problems) => {
            for problem in problems {
                writeln!(err, "{}: {problem}", file.display())?;
            }
            return Ok(ExitCode::from(2));
        }
    };
    let run = match host.run(&flow, event).await {
        Ok(run) => run,
        Err(error) => {
            writeln!(err, "error: {error}")?;
            return Ok(ExitCode::from(2));
        }
    };
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&run)?)?;
    } else {
        write!(out, "{}", render_run(&run))?;
    }
    Ok(if run.status == RunStatus::Succeeded { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn schema(out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    writeln!(out, "{}", serde_json::to_string_pretty(&flow_schema())?)?;
    Ok(ExitCode::SUCCESS)
}

/// A run trace for people: one block per node execution.
pub fn render_run(run: &Run) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let status = match run.status {
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "FAILED",
    };
    let _ =
        writeln!(text, "run {} of {} {}: {status} in {} ms", run.id, run.flow_id, run.flow_version, run.duration_ms);
    for node in &run.nodes {
        let mark = match node.status {
            NodeStatus::Succeeded => "ok    ",
            NodeStatus::Failed => "FAILED",
        };
        let what = node.call.as_ref().map(|c| format!("{} {c}", node.kind)).unwrap_or_else(|| node.kind.clone());
        let iteration = node.iteration.map(|i| format!(" [item {i}]")).unwrap_or_default();
        let attempts = match node.attempts.len() {
            0 => String::new(),
            1 => ", 1 attempt".to_string(),
            n => format!(", {n} attempts"),
        };
        let _ = writeln!(text, "  {mark} {}{iteration}  ({what}, {} ms{attempts})", node.node_id, node.duration_ms);
        for attempt in node.attempts.iter().filter(|a| a.error.is_some()) {
            let error = attempt.error.as_ref().map(|e| format!("{}: {}", e.kind, e.message)).unwrap_or_default();
            let retry = attempt.retry_after_ms.map(|ms| format!("; retried after {ms} ms")).unwrap_or_default();
            let _ = writeln!(
                text,
                "         attempt {} failed in {} ms: {error}{retry}",
                attempt.attempt, attempt.duration_ms
            );
        }
        if let Some(input) = &node.input {
            let _ = writeln!(text, "         input:  {input}");
        }
        if let Some(output) = &node.output {
            let _ = writeln!(text, "         output: {}", truncate(&output.to_string(), 600));
        }
        if let Some(error) = &node.error {
            let _ = writeln!(text, "         error:  {}: {}", error.kind, error.message);
        }
        if let Some(next) = &node.next {
            let _ = writeln!(text, "         next:   {next}");
        }
    }
    for emitted in &run.emitted {
        let _ = writeln!(text, "  emitted {} {}", emitted.event, emitted.payload);
    }
    if let Some(error) = &run.error {
        let _ = writeln!(text, "  the run failed at node {}: {}: {}", error.node_id, error.kind, error.message);
    }
    text
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &text[..cut], text.len())
}
