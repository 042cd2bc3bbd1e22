//! `flowhost connector inspect | check | call | test | new`.

use crate::{GlobalOptions, json_argument};
use anyhow::Context as _;
use clap::Subcommand;
use flowhost::connector::{
    ConnectionOptions, Connector, Invocation, InvocationContext, InvokeError, LoadSource, LogLine, Manifest,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Subcommand)]
pub enum ConnectorCommand {
    /// Print a connector's manifest: id, version, connection properties, allowed hosts, capabilities.
    Inspect {
        /// A connector component (.wasm file), or the id of a connector built into flowhost (e.g. `mparticle`).
        #[arg(value_name = "COMPONENT")]
        component: PathBuf,
        /// Print the manifest as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Run the connector's check of a connection config (e.g. that the credentials are accepted).
    Check {
        /// A connector component (.wasm file), or the id of a connector built into flowhost (e.g. `mparticle`).
        #[arg(value_name = "COMPONENT")]
        component: PathBuf,
        #[command(flatten)]
        connection: ConnectionArgs,
    },
    /// Validate an input and invoke one capability; prints the output JSON.
    Call {
        /// A connector component (.wasm file), or the id of a connector built into flowhost (e.g. `mparticle`).
        #[arg(value_name = "COMPONENT")]
        component: PathBuf,
        /// The capability to call, e.g. `getAccount` (`flowhost connector inspect` lists them).
        capability: String,
        #[command(flatten)]
        connection: ConnectionArgs,
        /// The capability's input: JSON, or @file.
        #[arg(long)]
        input: String,
    },
    /// Run the acceptance suite every connector passes: a valid manifest, check and inputs refused properly,
    /// examples within the sandbox's limits, batches in order, no secret in any output. Requests go to a stub
    /// remote in the process, never to the network. Exits non-zero when a check fails.
    Test {
        /// A connector component (.wasm file), or the id of a connector built into flowhost (e.g. `http`).
        #[arg(value_name = "COMPONENT")]
        component: PathBuf,
        /// A working connection config: JSON, or @file, secrets by reference. Without it, one is made from the
        /// connection properties' schemas (their examples), with marker values for the secrets.
        #[arg(long)]
        config: Option<String>,
    },
    /// Create a connector project that builds and passes `flowhost connector test` as generated.
    New {
        /// The connector's id: lower-case letters, digits and dashes (e.g. `acme-crm`).
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum)]
        lang: crate::template::Language,
        /// Where to create it [default: ./<name>].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
pub struct ConnectionArgs {
    /// The connection config: JSON, or @file. Secrets by reference: {"clientSecret": {"secret": "NAME"}}.
    #[arg(long)]
    config: String,
    /// A host this connection may reach (repeatable); without any, the connector's declared hosts apply.
    #[arg(long = "allow-host", value_name = "HOST")]
    allow_hosts: Vec<String>,
    /// Allow loopback and private addresses (for local services and the emulator).
    #[arg(long)]
    allow_private: bool,
}

/// The inbound side, as `inspect` prints it.
fn render_inbound(inbound: &flowhost::inbound::InboundInfo) -> String {
    let none = |list: &[String]| if list.is_empty() { "none".to_string() } else { list.join(", ") };
    format!(
        "\nInbound (POST /v1/inbound/<connection>):\n  event types: {}\n  identities: {}\n  \
         public requests (no token): {}\n  verifies requests itself: {}\n",
        none(&inbound.event_types),
        none(&inbound.identities),
        none(&inbound.public_requests),
        if inbound.verifies_requests { "yes" } else { "no (the connection needs an inbound token)" },
    )
}

pub async fn run(
    command: ConnectorCommand,
    context: &GlobalOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    match command {
        ConnectorCommand::Inspect { component, json } => {
            let connector = load(context, &component).await?;
            if json {
                let mut manifest = serde_json::to_value(connector.manifest())?;
                manifest["inbound"] = serde_json::to_value(connector.inbound())?;
                writeln!(out, "{}", serde_json::to_string_pretty(&manifest)?)?;
            } else {
                write!(out, "{}", render_manifest(connector.manifest()))?;
                if let Some(inbound) = connector.inbound() {
                    write!(out, "{}", render_inbound(inbound))?;
                }
                let (source, elapsed) = connector.load_source();
                let how = match source {
                    LoadSource::Compiled => "compiled",
                    LoadSource::DiskCache => "loaded from the compile cache",
                    LoadSource::Memory => "already loaded",
                };
                writeln!(
                    out,
                    "\nComponent: sha256 {} ({how} in {:.1} ms)",
                    connector.hash(),
                    elapsed.as_secs_f64() * 1e3
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        ConnectorCommand::Check { component, connection } => {
            let connector = load(context, &component).await?;
            let connection = connect(context, &connector, &connection)?;
            let outcome = connector.check(&connection).await;
            print_log(err, &outcome.log)?;
            Ok(match outcome.result {
                Ok(()) => {
                    writeln!(out, "ok: the connection works")?;
                    ExitCode::SUCCESS
                }
                Err(error) => report(err, &error)?,
            })
        }
        ConnectorCommand::New { name, lang, dir } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let files = crate::template::generate(&name, lang, &dir)?;
            writeln!(out, "Created {} ({} files). Next:\n", dir.display(), files.len())?;
            let wasm = match lang {
                crate::template::Language::Typescript => {
                    writeln!(out, "  cd {}\n  npm ci\n  npm run build", dir.display())?;
                    format!("dist/{name}.wasm")
                }
                crate::template::Language::Rust => {
                    writeln!(out, "  cd {}\n  cargo build --target wasm32-wasip2 --profile wasm", dir.display())?;
                    format!("target/wasm32-wasip2/wasm/{}.wasm", name.replace('-', "_"))
                }
            };
            writeln!(out, "  flowhost connector test {wasm}")?;
            Ok(ExitCode::SUCCESS)
        }
        ConnectorCommand::Test { component, config } => {
            let (bytes, name) = component_bytes(&component)?;
            let config = config.map(|c| json_argument("--config", &c)).transpose()?;
            let options = crate::acceptance::SuiteOptions {
                config,
                secrets: context.secrets()?,
                runtime: context.runtime_config(),
            };
            // The command ends with the suite: the bytes may live as long as the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            let report = crate::acceptance::run(bytes, &name, options).await;
            write!(out, "{}", report.render())?;
            Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        ConnectorCommand::Call { component, capability, connection, input } => {
            let connector = load(context, &component).await?;
            let connection = connect(context, &connector, &connection)?;
            let input = json_argument("--input", &input)?;
            let invocation_id = uuid::Uuid::new_v4().to_string();
            let invocation = InvocationContext {
                run_id: invocation_id.clone(),
                node_id: "cli".into(),
                idempotency_key: invocation_id,
                attempt: 1,
            };
            let Invocation { result, log, .. } = connector.invoke(&connection, &capability, &input, &invocation).await;
            print_log(err, &log)?;
            Ok(match result {
                Ok(output) => {
                    // A connector may echo a credential (or its base64) in its output: never on the terminal.
                    let output = connection.redactor().redact_json(&output);
                    writeln!(out, "{}", serde_json::to_string_pretty(&output)?)?;
                    ExitCode::SUCCESS
                }
                Err(error) => report(err, &error)?,
            })
        }
    }
}

/// The bytes of a component file, or of a built-in connector named by its id, and a name for it.
fn component_bytes(component: &Path) -> anyhow::Result<(Vec<u8>, String)> {
    let bare_name = component.components().count() == 1 && component.extension().is_none();
    if component.exists() || !bare_name {
        let bytes = std::fs::read(component).with_context(|| format!("cannot read {}", component.display()))?;
        return Ok((bytes, component.display().to_string()));
    }
    let id = component.to_string_lossy();
    let builtin = [("mparticle", crate::builtin::MPARTICLE), ("http", crate::builtin::HTTP)];
    match builtin.iter().find(|(name, _)| *name == id) {
        Some((name, bytes)) => Ok((bytes.to_vec(), format!("built-in {name}"))),
        None => {
            let ids: Vec<&str> = builtin.iter().map(|(name, _)| *name).collect();
            anyhow::bail!("{id}: no such file, and no built-in connector has that id (built in: {})", ids.join(", "))
        }
    }
}

/// Loads a component file, or a built-in connector named by its id (a bare name that is no file here).
async fn load(context: &GlobalOptions, component: &Path) -> anyhow::Result<Arc<Connector>> {
    let runtime = context.runtime()?;
    let bare_name = component.components().count() == 1 && component.extension().is_none();
    let connector = if component.exists() || !bare_name {
        runtime.load_file(component).await.with_context(|| format!("cannot load {}", component.display()))?
    } else {
        let mut builtin = Vec::new();
        for bytes in crate::builtin::COMPONENTS {
            builtin.push(runtime.load_embedded(bytes).await?);
        }
        let id = component.to_string_lossy();
        let ids: Vec<String> = builtin.iter().map(|c| c.manifest().id.clone()).collect();
        builtin.into_iter().find(|c| c.manifest().id == id).with_context(|| {
            format!("{id}: no such file, and no built-in connector has that id (built in: {})", ids.join(", "))
        })?
    };
    let (source, elapsed) = connector.load_source();
    tracing::info!(component = %component.display(), source = ?source, ms = elapsed.as_secs_f64() * 1e3, "connector loaded");
    Ok(connector)
}

fn connect(
    context: &GlobalOptions,
    connector: &Connector,
    args: &ConnectionArgs,
) -> anyhow::Result<flowhost::connector::Connection> {
    let config = json_argument("--config", &args.config)?;
    let options = ConnectionOptions {
        allowed_hosts: (!args.allow_hosts.is_empty()).then(|| args.allow_hosts.clone()),
        allow_private: args.allow_private,
        ..ConnectionOptions::default()
    };
    Ok(connector.connection("cli", &config, &context.secrets()?, &options)?)
}

/// Prints the error kind and message on stderr and picks the exit status.
fn report(err: &mut dyn Write, error: &InvokeError) -> std::io::Result<ExitCode> {
    // The message names its kind already when it starts with it (`unauthorized: …`, `invalid input: …`).
    let (kind, message) = (error.kind().to_string(), error.to_string());
    if message.starts_with(&kind.replace('-', " ")) {
        writeln!(err, "error: {message}")?;
    } else {
        writeln!(err, "error: {kind}: {message}")?;
    }
    if let InvokeError::Permanent { body, .. } = error
        && !body.is_empty()
    {
        writeln!(err, "response body: {body}")?;
    }
    Ok(ExitCode::from(1))
}

fn print_log(err: &mut dyn Write, log: &[LogLine]) -> std::io::Result<()> {
    for line in log {
        writeln!(err, "[{:>5} ms] {:?}/{:?}: {}", line.at_ms, line.source, line.level, line.message)?;
    }
    Ok(())
}

fn render_manifest(manifest: &Manifest) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{} {} ({})", manifest.id, manifest.version, manifest.display_name);
    if !manifest.description.is_empty() {
        let _ = writeln!(out, "  {}", manifest.description);
    }
    let _ = writeln!(out, "\nConnection properties:");
    let width = manifest.connection_properties.iter().map(|p| p.name.len()).max().unwrap_or(0);
    for p in &manifest.connection_properties {
        let mut flags = vec![if p.required { "required" } else { "optional" }];
        if p.secret {
            flags.push("secret");
        }
        let _ = writeln!(out, "  {:width$}  [{}]  {}: {}", p.name, flags.join(", "), p.title, p.description);
    }
    let _ = writeln!(out, "\nAllowed hosts:");
    for host in &manifest.allowed_hosts {
        let _ = writeln!(out, "  {host}");
    }
    let _ = writeln!(out, "\nCapabilities:");
    for c in &manifest.capabilities {
        let _ = writeln!(out, "\n  {} — {}", c.id, c.title);
        if !c.description.is_empty() {
            let _ = writeln!(out, "    {}", c.description);
        }
        for (label, schema) in [("input schema", &c.input_schema), ("output schema", &c.output_schema)] {
            let pretty = serde_json::to_string_pretty(schema).unwrap_or_default();
            let _ = writeln!(out, "    {label}:");
            for line in pretty.lines() {
                let _ = writeln!(out, "      {line}");
            }
        }
    }
    out
}
