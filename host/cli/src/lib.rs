//! The `flowhost` binary: the command line (one file per command in `commands/`, each only parsing arguments
//! and printing what the library returns), the demo, the load benchmark and the connectors built into the
//! binary. Platforms embed the `flowhost` library instead; nothing here is part of it.

pub mod acceptance;
pub mod bench;
pub mod builtin;
mod commands;
pub mod davinci;
pub mod demo;
pub mod template;

use commands::{connector, flow, queue, serve};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use flowhost::connector::{Runtime, RuntimeConfig, SecretStore};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "flowhost", version, about = "Runs JSON flows whose nodes call WebAssembly connectors")]
struct Cli {
    /// More logging on stderr (-v: info, -vv: debug). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// The options of the commands that load connectors, also accepted before the command (as they were once
    /// global); hidden here, shown on the commands that use them.
    #[command(flatten)]
    before_command: BeforeCommand,
    #[command(subcommand)]
    command: Command,
}

/// How connector components are compiled, cached and limited: for the commands that load connectors.
#[derive(clap::Args, Default)]
struct RuntimeArgs {
    /// Directory of precompiled components [default: $XDG_CACHE_HOME/flowhost or ~/.cache/flowhost].
    #[arg(long, global = true, env = "FLOWHOST_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not read or write precompiled components on disk.
    #[arg(long, global = true)]
    no_cache: bool,
    /// Wall-clock limit of one connector invocation, in seconds [default: 30].
    #[arg(long, global = true, value_name = "SECONDS")]
    timeout: Option<f64>,
}

/// Where secret references resolve from: for the commands that configure connections.
#[derive(clap::Args, Default)]
struct SecretsArgs {
    /// A file of NAME=value lines that secret references resolve from before the environment.
    #[arg(long, global = true, env = "FLOWHOST_SECRETS_FILE")]
    secrets_file: Option<PathBuf>,
}

/// [`RuntimeArgs`] and [`SecretsArgs`] given before the command.
#[derive(clap::Args)]
struct BeforeCommand {
    #[arg(long = "cache-dir", hide = true)]
    cache_dir: Option<PathBuf>,
    #[arg(long = "no-cache", hide = true)]
    no_cache: bool,
    #[arg(long = "secrets-file", hide = true)]
    secrets_file: Option<PathBuf>,
    #[arg(long = "timeout", hide = true)]
    timeout: Option<f64>,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and lint flow files without running them; every problem with its JSON pointer.
    Check {
        /// Flow files, or directories whose *.json files are checked in name order (JSON Schemas among them,
        /// such as flows/schema.json, are skipped).
        #[arg(required = true, value_name = "FLOW.json|DIR")]
        files: Vec<PathBuf>,
        #[command(flatten)]
        host: flow::HostArgs,
        #[command(flatten)]
        runtime: RuntimeArgs,
        #[command(flatten)]
        secrets: SecretsArgs,
    },
    /// Run one flow for one event (or, for an inbound flow, for a request as its vendor sends it) and print
    /// the run trace.
    Run {
        /// The flow file.
        #[arg(value_name = "FLOW.json")]
        file: PathBuf,
        /// The event: JSON, or @file.
        #[arg(long, required_unless_present = "inbound", conflicts_with = "inbound")]
        event: Option<String>,
        /// For an inbound flow: the body its vendor posts (text, or @file), handed to the trigger connection's
        /// connector as an authenticated POST; the flow runs for each event its trigger matches.
        #[arg(long, value_name = "BODY")]
        inbound: Option<String>,
        /// Print the run trace as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        host: flow::HostArgs,
        #[command(flatten)]
        runtime: RuntimeArgs,
        #[command(flatten)]
        secrets: SecretsArgs,
    },
    /// The main job: run the example flows against an in-process mParticle emulator and show what happened.
    Demo {
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Inspect, check, call and test connector components, or start a new one.
    Connector {
        #[command(subcommand)]
        command: connector::ConnectorCommand,
        #[command(flatten)]
        runtime: RuntimeArgs,
        #[command(flatten)]
        secrets: SecretsArgs,
    },
    /// The flow format.
    #[command(subcommand)]
    Flow(FlowCommand),
    /// Run the durable service: the HTTP API, the run and inbound workers, the store.
    Serve {
        /// The service's configuration.
        #[arg(long, default_value = "flowhost.toml")]
        config: PathBuf,
        /// The store, instead of the configuration's `store`: a SQLite file, or a PostgreSQL URL
        /// (`postgres://user@host:5432/database`) that any number of `flowhost serve` processes share.
        #[arg(long, env = "FLOWHOST_STORE", value_name = "PATH|URL", hide_env_values = true)]
        store: Option<String>,
        #[command(flatten)]
        runtime: RuntimeArgs,
        #[command(flatten)]
        secrets: SecretsArgs,
    },
    /// The end-to-end load test: `flowhost serve` and the mParticle emulator on loopback; throughput,
    /// latencies, cold start and memory.
    Bench(commands::bench::BenchArgs),
    /// The resend queue of a service's store: list, retry, drop.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Bring flows over from another system.
    #[command(subcommand)]
    Import(ImportCommand),
}

#[derive(Subcommand)]
enum ImportCommand {
    /// Ping DaVinci flow exports to flowhost flows, with a report of what became of every node.
    Davinci(davinci::ImportArgs),
}

#[derive(Subcommand)]
enum FlowCommand {
    /// Print the JSON Schema of flow files (flows/schema.json is this output).
    Schema,
}

/// The `flowhost` binary: parses the process arguments and runs the command.
pub fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let args: Vec<String> = std::env::args().collect();
    runtime.block_on(run(args, &mut std::io::stdout(), &mut std::io::stderr()))
}

/// Runs one command line, writing its output to `out` and its messages to `err`: what the binary does, in a
/// form tests and embedding platforms can call in-process.
pub async fn run<I, A>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode
where
    I: IntoIterator<Item = A>,
    A: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version are "errors" that go to stdout and succeed.
            if error.use_stderr() {
                let _ = write!(err, "{}", error.render());
                return ExitCode::from(2);
            }
            let _ = write!(out, "{}", error.render());
            return ExitCode::SUCCESS;
        }
    };
    init_tracing(cli.verbose);
    let before = &cli.before_command;
    let result = match cli.command {
        Command::Check { files, host, runtime, secrets } => {
            async { flow::check(&files, &host, &options(before, runtime, secrets)?, out, err).await }.await
        }
        Command::Run { file, event, inbound, json, host, runtime, secrets } => {
            async {
                let options = options(before, runtime, secrets)?;
                match (event, inbound) {
                    (Some(event), _) => flow::run(&file, &event, json, &host, &options, out, err).await,
                    (None, Some(body)) => flow::run_inbound(&file, &body, json, &host, &options, out, err).await,
                    (None, None) => unreachable!("clap requires --event or --inbound"),
                }
            }
            .await
        }
        Command::Connector { command, runtime, secrets } => {
            async { connector::run(command, &options(before, runtime, secrets)?, out, err).await }.await
        }
        Command::Flow(FlowCommand::Schema) => flow::schema(out),
        Command::Serve { config, store, runtime, secrets } => {
            async { serve::serve(&config, store, &options(before, runtime, secrets)?, out).await }.await
        }
        Command::Queue(command) => queue::run(command, out, err).await,
        Command::Import(ImportCommand::Davinci(args)) => davinci::run(&args, out, err),
        Command::Bench(args) => commands::bench::run(&args, out).await,
        Command::Demo { runtime } => {
            async {
                let options = options(before, runtime, SecretsArgs::default())?;
                let runs = crate::demo::run(options.runtime_config(), out).await?;
                Ok(if runs.iter().all(|r| r.status == flowhost::flow::RunStatus::Succeeded) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            }
            .await
        }
    };
    result.unwrap_or_else(|error| {
        // A reader that went away (`flowhost flow schema | head -1`) is not an error of ours.
        if error.chain().any(|cause| {
            cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        }) {
            return ExitCode::SUCCESS;
        }
        let _ = writeln!(err, "error: {error:#}");
        ExitCode::from(2)
    })
}

/// The options of a command that loads connectors, given before or after the command (after wins).
fn options(before: &BeforeCommand, runtime: RuntimeArgs, secrets: SecretsArgs) -> anyhow::Result<GlobalOptions> {
    let timeout = match runtime.timeout.or(before.timeout).map(Duration::try_from_secs_f64) {
        Some(Ok(timeout)) if !timeout.is_zero() => Some(timeout),
        Some(_) => anyhow::bail!("--timeout must be a positive number of seconds"),
        None => None,
    };
    Ok(GlobalOptions {
        cache_dir: runtime.cache_dir.or_else(|| before.cache_dir.clone()),
        no_cache: runtime.no_cache || before.no_cache,
        secrets_file: secrets.secrets_file.or_else(|| before.secrets_file.clone()),
        timeout,
    })
}

/// What the commands that load connectors need from their options.
struct GlobalOptions {
    cache_dir: Option<PathBuf>,
    no_cache: bool,
    secrets_file: Option<PathBuf>,
    timeout: Option<Duration>,
}

impl GlobalOptions {
    fn runtime_config(&self) -> RuntimeConfig {
        let mut config = RuntimeConfig::default();
        if self.no_cache {
            config.cache_dir = None;
        } else if let Some(dir) = &self.cache_dir {
            config.cache_dir = Some(dir.clone());
        }
        if let Some(timeout) = self.timeout {
            config.limits.timeout = timeout;
        }
        config
    }

    fn runtime(&self) -> anyhow::Result<Runtime> {
        Runtime::new(self.runtime_config()).map_err(anyhow::Error::msg)
    }

    fn secrets(&self) -> anyhow::Result<SecretStore> {
        match &self.secrets_file {
            Some(path) => SecretStore::from_file_and_env(path).map_err(anyhow::Error::msg),
            None => Ok(SecretStore::from_env()),
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // No colour codes in a log that goes to a file or a pipe.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A second command in the same process (tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
}

/// Reads a JSON argument given inline or as `@path`.
fn json_argument(what: &str, text: &str) -> anyhow::Result<serde_json::Value> {
    let (source, content) = match text.strip_prefix('@') {
        Some(path) => {
            let content = std::fs::read_to_string(path).with_context(|| format!("cannot read {what} file {path}"))?;
            (format!("{what} file {path}"), content)
        }
        None => (what.to_string(), text.to_string()),
    };
    serde_json::from_str(&content).with_context(|| format!("{source} is not valid JSON"))
}
