//! `flowhost check`, `flowhost run` and `flowhost flow schema`.

use crate::{GlobalOptions, json_argument};
use anyhow::Context as _;
use flowhost::flow::{RunStatus, flow_schema, is_json_schema};
use flowhost::inbound::InboundRequest;
use flowhost::store::now_ms;
use flowhost::{Host, HostConfig, LoadedFlow};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
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
            embedded_connectors: crate::builtin::COMPONENTS.to_vec(),
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
            config.connection_overrides.entry(name.to_string()).or_default().extend(values);
        }
        Ok(Host::new(config, options.secrets()?).await?)
    }
}

pub async fn check(
    paths: &[PathBuf],
    host: &HostArgs,
    options: &GlobalOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let host = host.host(options).await?;
    let mut failed = 0;
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        match flow_files_in(path) {
            Ok(found) if found.is_empty() => {
                writeln!(err, "{}: no flow files (*.json) in this directory", path.display())?;
                failed += 1;
            }
            Ok(found) => files.extend(found),
            Err(e) => {
                writeln!(err, "{}: cannot read: {e}", path.display())?;
                failed += 1;
            }
        }
    }
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                writeln!(err, "{}: cannot read: {e}", file.display())?;
                failed += 1;
                continue;
            }
        };
        if is_json_schema(&text) {
            writeln!(out, "{}: skipped (a JSON Schema, not a flow)", file.display())?;
            continue;
        }
        match host.check_with_warnings(&text) {
            Ok((flow, warnings)) => {
                for warning in &warnings {
                    writeln!(err, "{}: {warning}", file.display())?;
                }
                let noted = match warnings.len() {
                    0 => String::new(),
                    1 => ", 1 warning".to_string(),
                    n => format!(", {n} warnings"),
                };
                writeln!(
                    out,
                    "{}: ok ({} {}, {} node(s){noted})",
                    file.display(),
                    flow.id,
                    flow.version,
                    flow.nodes.len()
                )?
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

/// The `*.json` files of a directory, in name order, as `serve` reads a directory of flows.
fn flow_files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
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
    let event = json_argument("--event", event)?;
    let Some((host, flow)) = load_flow(file, host, options, err).await? else { return Ok(ExitCode::from(2)) };
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
        write!(out, "{}", run.to_text())?;
    }
    Ok(if run.status == RunStatus::Succeeded { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Builds the host and loads the flow file for `run`; `None` once the flow's problems are printed.
async fn load_flow(
    file: &PathBuf,
    host: &HostArgs,
    options: &GlobalOptions,
    err: &mut dyn Write,
) -> anyhow::Result<Option<(Host, LoadedFlow)>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let host = host.host(options).await?;
    match host.load(&text) {
        Ok(flow) => Ok(Some((host, flow))),
        Err(problems) => {
            for problem in problems {
                writeln!(err, "{}: {problem}", file.display())?;
            }
            Ok(None)
        }
    }
}

pub async fn run_inbound(
    file: &PathBuf,
    body: &str,
    json: bool,
    host: &HostArgs,
    options: &GlobalOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let body = match body.strip_prefix('@') {
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read --inbound file {path}"))?,
        None => body.as_bytes().to_vec(),
    };
    let Some((host, flow)) = load_flow(file, host, options, err).await? else { return Ok(ExitCode::from(2)) };
    let request = InboundRequest::json_post(body, true, now_ms());
    let outcome = match host.run_inbound(&flow, request).await {
        Ok(outcome) => outcome,
        Err(error) => {
            writeln!(err, "error: {error}")?;
            return Ok(ExitCode::from(2));
        }
    };
    if json {
        let answer = flow.redactor().redact(&String::from_utf8_lossy(&outcome.response.body));
        let report = serde_json::json!({
            "runs": outcome.runs,
            "skipped": outcome.skipped,
            "response": {"status": outcome.response.status, "body": answer},
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        for run in &outcome.runs {
            write!(out, "{}", run.to_text())?;
        }
        for note in &outcome.skipped {
            writeln!(out, "skipped {note}")?;
        }
        writeln!(out, "the sender would get {}", outcome.response.status)?;
    }
    if outcome.runs.is_empty() {
        writeln!(err, "no event of the request started a run")?;
        return Ok(ExitCode::from(1));
    }
    Ok(if outcome.runs.iter().all(|r| r.status == RunStatus::Succeeded) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn schema(out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    writeln!(out, "{}", serde_json::to_string_pretty(&flow_schema())?)?;
    Ok(ExitCode::SUCCESS)
}
