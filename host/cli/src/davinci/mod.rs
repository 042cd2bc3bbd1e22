//! `flowhost import davinci`: Ping DaVinci flow exports to flowhost flows, with a report of what became of every
//! node. By role: `export` reads and checks the export, `text` turns references and rich text into CEL templates,
//! `translate` builds the flows, `report` says what happened. Vendor-specific, so it lives in the CLI, not in the
//! host library.

pub mod export;
pub mod report;
pub mod text;
pub mod translate;

use anyhow::Context as _;
use flowhost::flow::flow_schema;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use translate::{MPARTICLE_CAPABILITIES, Options};

/// `flowhost import davinci`'s arguments.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// The DaVinci export: one flow, or `{"flows": [...]}`.
    #[arg(value_name = "EXPORT.json")]
    export: PathBuf,
    /// Name the flowhost connection that a DaVinci connection (its 32-hex id) becomes (repeatable).
    #[arg(long = "map-connection", value_name = "CONNECTION_ID=NAME")]
    map_connection: Vec<String>,
    /// Map a DaVinci capability name of the mParticle connector to a capability of flowhost's `mparticle`
    /// connector, beyond the importer's table (repeatable).
    #[arg(long = "map-capability", value_name = "NAME=CAPABILITY")]
    map_capability: Vec<String>,
    /// Where the flows are written (one `<flow id>.json` each, and the `schema.json` their `$schema` names).
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Write flows with untranslatable nodes too, each such node a `fail` node carrying the reason.
    #[arg(long)]
    partial: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Exit status: 0 when every flow was imported whole (or `--partial` wrote it), 1 when a node or flow was
/// refused, 2 when the file is not a usable DaVinci export or an argument is wrong (nothing is written).
pub fn run(args: &ImportArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let options = options(args)?;
    let path = args.export.display();
    let text = std::fs::read_to_string(&args.export).with_context(|| format!("cannot read {path}"))?;
    let export = match export::parse(&text) {
        Ok(export) => export,
        Err(error) => {
            writeln!(err, "{path}: {error}")?;
            writeln!(err, "{path}: not imported; nothing was written")?;
            return Ok(ExitCode::from(2));
        }
    };
    let mut imported = translate::translate(&export, &options);
    if imported.iter().any(|i| i.flow.is_some()) {
        std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
        let schema = serde_json::to_string_pretty(&flow_schema())? + "\n";
        let schema_path = args.out.join("schema.json");
        std::fs::write(&schema_path, schema).with_context(|| format!("cannot write {}", schema_path.display()))?;
    }
    for flow in &mut imported {
        let Some(document) = &flow.flow else { continue };
        let file = args.out.join(format!("{}.json", document.id));
        let text = serde_json::to_string_pretty(document)? + "\n";
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
        flow.report.file = Some(file.display().to_string());
    }
    let reports: Vec<&report::FlowReport> = imported.iter().map(|i| &i.report).collect();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&reports)?)?;
    } else {
        for report in &reports {
            write!(out, "{}", report.to_text())?;
        }
    }
    let incomplete = reports.iter().filter(|r| r.problem.is_some() || (!args.partial && r.incomplete())).count();
    if incomplete > 0 {
        writeln!(err, "{path}: {incomplete} of {} flow(s) not imported whole (see the report)", reports.len())?;
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn options(args: &ImportArgs) -> anyhow::Result<Options> {
    let mut options = Options { partial: args.partial, ..Options::default() };
    for entry in &args.map_connection {
        let (id, name) = entry.split_once('=').with_context(|| format!("--map-connection {entry:?} is not ID=NAME"))?;
        let valid = !name.is_empty()
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        anyhow::ensure!(
            valid,
            "--map-connection {entry:?}: the name must be letters, digits, '-' or '_', starting with a letter"
        );
        options.connections.insert(id.trim().to_string(), name.to_string());
    }
    for entry in &args.map_capability {
        let (name, capability) =
            entry.split_once('=').with_context(|| format!("--map-capability {entry:?} is not NAME=CAPABILITY"))?;
        anyhow::ensure!(
            MPARTICLE_CAPABILITIES.contains(&capability),
            "--map-capability {entry:?}: {capability:?} is not a capability of the mparticle connector ({})",
            MPARTICLE_CAPABILITIES.join(", ")
        );
        options.capabilities.insert(name.to_string(), capability.to_string());
    }
    Ok(options)
}
