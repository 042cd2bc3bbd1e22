//! The embedding API: a `Host` knows the connectors, checks and loads flows, and runs them for events,
//! exactly as the CLI does.

use crate::connector::pacing::Pacing;
use crate::connector::{
    ConnectionOptions, ConnectorRegistry, FieldError, InvokeError, LoadError, Runtime, RuntimeConfig, SecretStore,
};
use crate::flow::{EmittedEvent, Flow, LoadedFlow, Problem, RetryPolicy, Run, lint, parse};
use crate::inbound::{InboundRequest, InboundResponse, TriggerFilter, TriggerMatch, match_trigger};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

/// How a host is set up.
#[derive(Clone, Default)]
pub struct HostConfig {
    pub runtime: RuntimeConfig,
    /// Connector components compiled into the embedding program, loaded first (the `flowhost` binary passes
    /// its built-in connectors).
    pub embedded_connectors: Vec<&'static [u8]>,
    /// Directories whose `*.wasm` components are loaded as connectors too.
    pub connector_dirs: Vec<PathBuf>,
    /// Ids of embedded connectors that a component of `connector_dirs` (or [`Host::add_connector_file`]) may
    /// take, replacing the embedded one. Any other embedded id is refused to them.
    pub override_builtin: Vec<String>,
    /// Let connections reach loopback and private addresses (local services, the emulator), and take a
    /// plain-`http` origin from a connection property.
    pub allow_private: bool,
    /// The hosts the operator lets connections reach, whatever a flow says, by connection name; the entry `""`
    /// applies to every connection without its own. A flow's `allowedHosts` narrows them, never widens them.
    pub operator_hosts: BTreeMap<String, Vec<String>>,
    /// The retry policy of connector nodes that do not set one.
    pub default_retry: RetryPolicy,
    /// Config values merged into connections by connection name, e.g. base URLs of another environment.
    pub connection_overrides: BTreeMap<String, Map<String, Value>>,
    /// Do not pace connections whose services refuse calls for their rate: each run then resends on its own
    /// schedule (for comparison; see `connector::pacing`).
    pub no_pacing: bool,
}

impl std::fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The embedded components are megabytes of bytes: their sizes say enough.
        let embedded: Vec<usize> = self.embedded_connectors.iter().map(|c| c.len()).collect();
        f.debug_struct("HostConfig")
            .field("runtime", &self.runtime)
            .field("embedded_connectors (bytes)", &embedded)
            .field("connector_dirs", &self.connector_dirs)
            .field("override_builtin", &self.override_builtin)
            .field("allow_private", &self.allow_private)
            .field("operator_hosts", &self.operator_hosts)
            .field("default_retry", &self.default_retry)
            .field("connection_overrides", &self.connection_overrides)
            .field("no_pacing", &self.no_pacing)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{0}")]
    Runtime(String),
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Why a run did not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RunError {
    #[error("the event does not fit the trigger's schema: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidEvent(Vec<FieldError>),
    #[error("flow {0} is not triggered by inbound requests (its trigger is not of type `inbound`)")]
    NotInbound(String),
    #[error("the connector did not receive the request: {0}")]
    Receive(InvokeError),
}

/// What became of an inbound request run offline ([`Host::run_inbound`]).
#[derive(Debug, Clone)]
pub struct InboundRuns {
    /// One run per event the flow's trigger matched, in the order of the events.
    pub runs: Vec<Run>,
    /// Why each other event did not start a run.
    pub skipped: Vec<String>,
    /// The answer the connector gives the sender.
    pub response: InboundResponse,
}

type EmitCallback = Arc<dyn Fn(&EmittedEvent) + Send + Sync>;

/// Connectors, secrets and options: everything needed to check, load and run flows.
pub struct Host {
    runtime: Runtime,
    registry: ConnectorRegistry,
    secrets: SecretStore,
    config: HostConfig,
    on_emit: EmitCallback,
    /// Each connection's limiter, by name, shared by the flows that name it.
    pacing: Arc<Pacing>,
}

impl Host {
    pub async fn new(config: HostConfig, secrets: SecretStore) -> Result<Self, HostError> {
        let runtime = Runtime::new(config.runtime.clone()).map_err(HostError::Runtime)?;
        let mut registry = ConnectorRegistry::default();
        for bytes in &config.embedded_connectors {
            registry.add_builtin(runtime.load_embedded(bytes).await?);
        }
        registry.allow_overrides(&config.override_builtin);
        registry.load_dirs(&runtime, &config.connector_dirs).await?;
        let pacing = Arc::new(Pacing::new(!config.no_pacing));
        Ok(Host { runtime, registry, secrets, config, on_emit: Arc::new(|_| {}), pacing })
    }

    /// Adds one connector component to the ones this host knows.
    pub async fn add_connector_file(&mut self, path: &std::path::Path) -> Result<(), LoadError> {
        let connector = self.runtime.load_file(path).await?;
        self.registry.add_component(connector).map_err(|e| LoadError::Manifest(format!("{}: {e}", path.display())))
    }

    /// Receives every event an emit node hands to the embedding platform, as it happens.
    pub fn on_emit(&mut self, callback: impl Fn(&EmittedEvent) + Send + Sync + 'static) {
        self.on_emit = Arc::new(callback);
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn secrets(&self) -> &SecretStore {
        &self.secrets
    }

    pub fn registry(&self) -> &ConnectorRegistry {
        &self.registry
    }

    /// The connections' pacing: send rates, refusals and pauses.
    pub fn pacing(&self) -> &Pacing {
        &self.pacing
    }

    /// Parses and lints a flow file without running anything: the flow, or every problem (errors and
    /// warnings) when there is an error. Warnings alone do not refuse a flow; [`Host::check_with_warnings`]
    /// returns them.
    pub fn check(&self, text: &str) -> Result<Flow, Vec<Problem>> {
        self.check_with_warnings(text).map(|(flow, _)| flow)
    }

    /// Parses and lints a flow file: the flow and its warnings, or every problem (errors and warnings) when
    /// there is an error.
    pub fn check_with_warnings(&self, text: &str) -> Result<(Flow, Vec<Problem>), Vec<Problem>> {
        let flow = parse(text)?;
        let problems = lint(&flow, &self.registry);
        if problems.iter().any(Problem::is_error) { Err(problems) } else { Ok((flow, problems)) }
    }

    /// Checks a flow, sets up its connections (secrets resolved) and compiles it, ready to run. Warnings are
    /// logged, not refused.
    pub fn load(&self, text: &str) -> Result<LoadedFlow, Vec<Problem>> {
        let (flow, warnings) = self.check_with_warnings(text)?;
        for warning in &warnings {
            tracing::warn!(flow = %flow.id, pointer = %warning.pointer, "{}", warning.message);
        }
        let mut connections = HashMap::new();
        let mut problems = Vec::new();
        for (name, spec) in &flow.connections {
            let connector = match self.registry.resolve(&spec.connector, &spec.version) {
                Ok(connector) => connector.clone(),
                Err(message) => {
                    problems.push(Problem::error(format!("/connections/{name}/connector"), message));
                    continue;
                }
            };
            let mut config = spec.config.clone();
            if let Some(overrides) = self.config.connection_overrides.get(name) {
                config.extend(overrides.clone());
            }
            let operator_hosts =
                self.config.operator_hosts.get(name).or_else(|| self.config.operator_hosts.get("")).cloned();
            let options = ConnectionOptions {
                allowed_hosts: spec.allowed_hosts.clone(),
                operator_hosts,
                allow_private: self.config.allow_private,
                open_inputs: spec.open_inputs,
            };
            match connector.connection(name, &Value::Object(config), &self.secrets, &options) {
                Ok(connection) => {
                    connections.insert(name.clone(), (connector, connection));
                }
                Err(error) => problems.push(Problem::error(format!("/connections/{name}/config"), error.to_string())),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        LoadedFlow::compile(flow, connections, &self.config.default_retry, &self.pacing)
            .map_err(|message| vec![Problem::error("", message)])
    }

    /// Runs an inbound flow for a request as its vendor sends it, without a service: the trigger's connector
    /// receives it (`receive`), and the flow runs once for each event its trigger matches. For testing a
    /// mapping offline (`flowhost run <flow> --inbound @payload.json`).
    pub async fn run_inbound(&self, flow: &LoadedFlow, request: InboundRequest) -> Result<InboundRuns, RunError> {
        let Some((connection, filter)) = TriggerFilter::of(&flow.flow().trigger) else {
            return Err(RunError::NotInbound(flow.id().to_string()));
        };
        let (connector, wired) =
            flow.connection(connection).expect("a loaded flow has its trigger's connection (checked by the linter)");
        let received = connector.receive(wired, request).await.result.map_err(RunError::Receive)?;
        let mut runs = Vec::new();
        let mut skipped = Vec::new();
        for (index, event) in received.events.iter().enumerate() {
            match match_trigger(&filter, event) {
                TriggerMatch::Customer(customer) => {
                    let run_id = uuid::Uuid::new_v4().to_string();
                    runs.push(flow.execute(run_id, event.trigger(Some(&customer)), self.on_emit.as_ref()).await);
                }
                other => skipped.extend(other.reason(flow.id(), event).map(|why| format!("event {index}: {why}"))),
            }
        }
        Ok(InboundRuns { runs, skipped, response: received.response })
    }

    /// Runs a loaded flow for one event: validated against the trigger's schema first.
    pub async fn run(&self, flow: &LoadedFlow, event: Value) -> Result<Run, RunError> {
        flow.validate_event(&event).map_err(RunError::InvalidEvent)?;
        let run_id = uuid::Uuid::new_v4().to_string();
        Ok(flow.execute(run_id, event, self.on_emit.as_ref()).await)
    }
}
