//! The durable service: loyalty events and inbound messages are committed to the [`Store`] before the
//! caller gets an answer, then workers run the flows they trigger, resend what failed with a retryable error,
//! dead-letter what ran out of attempts, and write emitted events to the outbox. `flowhost serve` is this
//! service behind HTTP; a platform can embed it the same way.

use super::group_commit::{GroupCommit, GroupCommitConfig, GroupCommitError};
use super::metrics::Metrics;
use super::{inbound_worker, run_worker};
use crate::connector::secrets::token_matches;
use crate::flow::{EmittedEvent, LoadedFlow, Problem, Trigger};
use crate::inbound::mparticle;
use crate::store::{ConnectionHold, InboundMessage, NewRun, Store, StoreError};
use crate::{Host, connector::FieldError};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How the service works.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// This process's name in leases; unique per process.
    pub worker: String,
    /// Runs executed at the same time.
    pub concurrency: usize,
    /// How long a claimed run is reserved to this process; renewed while it runs. A crashed process's
    /// runs are taken over after this.
    pub lease: Duration,
    /// How often idle workers look for due work (resends coming due, expired leases).
    pub idle_poll: Duration,
    pub group_commit: GroupCommitConfig,
    /// Which finished runs keep their trace (every node's input, output, attempts and log).
    pub traces: TraceRetention,
}

/// Which runs keep their trace once they end. A trace is most of what a completion writes, so keeping only the
/// traces of runs that did not succeed lets one SQLite writer deliver more (BENCHMARKS.md, "Sixth round"). A
/// run that succeeded keeps everything else: its event, status, attempts and times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceRetention {
    /// Every run that ends keeps its trace.
    #[default]
    All,
    /// Only runs that failed or were dead-lettered keep their trace.
    Failures,
}

impl TraceRetention {
    /// Whether a run that ended this way keeps its trace.
    pub fn keeps(self, succeeded: bool) -> bool {
        match self {
            TraceRetention::All => true,
            TraceRetention::Failures => !succeeded,
        }
    }

    /// The name in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            TraceRetention::All => "all",
            TraceRetention::Failures => "failures",
        }
    }
}

impl std::str::FromStr for TraceRetention {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "all" => Ok(TraceRetention::All),
            "failures" => Ok(TraceRetention::Failures),
            other => Err(format!("unknown trace retention `{other}`: use `all` or `failures`")),
        }
    }
}

impl std::fmt::Display for TraceRetention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            worker: format!("{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]),
            concurrency: 256,
            lease: Duration::from_secs(30),
            idle_poll: Duration::from_millis(100),
            group_commit: GroupCommitConfig::default(),
            traces: TraceRetention::All,
        }
    }
}

/// A loyalty event handed to the service (`POST /v1/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoyaltyEvent {
    /// The event name, e.g. `point_add`: every flow triggered by it runs.
    pub event: String,
    /// The event's payload, validated against each flow's trigger schema.
    #[serde(default)]
    pub data: Value,
    /// The customer: events of one customer are delivered in order. Defaults to `data.customerId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    /// The platform's id of the event: sending the same id again does not start a second run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl LoyaltyEvent {
    fn customer(&self) -> Option<String> {
        self.customer.clone().or_else(|| self.data.get("customerId").and_then(Value::as_str).map(String::from))
    }
}

/// What became of one accepted event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedEvent {
    pub event: String,
    /// The runs started, one per flow the event triggers.
    pub runs: Vec<AcceptedRun>,
    /// Why no run or fewer runs started (no flow for the event, a flow stopped by a disconnect).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedRun {
    pub flow: String,
    pub run_id: String,
}

/// Why events were not accepted. Nothing of the request was accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// An event does not fit (its name, or a flow's trigger schema); the fields are named.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Queue(#[from] GroupCommitError),
}

/// Why an inbound message was refused.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// No token, or one that no connection has.
    #[error("missing or wrong token: send `Authorization: Bearer <token>` or `Token <token>`")]
    Unauthorized,
    #[error("connection `{0}` is disconnected; it takes no inbound messages until it is reconnected")]
    Disconnected(String),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the sender gets back for an accepted inbound message.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundReceipt {
    /// The stored message's id.
    pub id: String,
    /// The answer the sender's protocol expects (a Firehose response), if any.
    pub response: Option<Value>,
}

/// An inbound connection: the token its sender presents.
pub struct InboundConnection {
    pub name: String,
    pub token: SecretString,
}

impl std::fmt::Debug for InboundConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundConnection").field("name", &self.name).field("token", &"<secret>").finish()
    }
}

/// Why a connection could not be reconnected.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("no loaded flow uses connection `{0}`")]
    Unknown(String),
    #[error("connection `{name}` cannot be reconnected: {missing}")]
    Incomplete { name: String, missing: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The flows that run, by what triggers them. Flows that use a disconnected connection are left out.
#[derive(Default)]
pub(crate) struct ActiveFlows {
    pub by_id: HashMap<String, Arc<LoadedFlow>>,
    pub by_event: HashMap<String, Vec<Arc<LoadedFlow>>>,
    pub inbound: HashMap<String, Vec<Arc<LoadedFlow>>>,
    /// Flows not running, with the held connection that stopped them.
    pub stopped: HashMap<String, String>,
}

impl ActiveFlows {
    fn build(flows: &[Arc<LoadedFlow>], held: &BTreeSet<String>) -> Self {
        let mut active = ActiveFlows::default();
        for flow in flows {
            if let Some(connection) = flow.flow().connections.keys().find(|name| held.contains(*name)) {
                active.stopped.insert(flow.id().to_string(), connection.clone());
                continue;
            }
            active.by_id.insert(flow.id().to_string(), flow.clone());
            match &flow.flow().trigger {
                Trigger::Event { event, .. } => active.by_event.entry(event.clone()).or_default().push(flow.clone()),
                Trigger::Inbound { connection, .. } => {
                    active.inbound.entry(connection.clone()).or_default().push(flow.clone())
                }
            }
        }
        active
    }
}

type EmitCallback = Arc<dyn Fn(&EmittedEvent) + Send + Sync>;

/// What the workers share with the service.
pub(crate) struct Shared {
    pub host: Host,
    pub store: Arc<dyn Store>,
    pub config: ServiceConfig,
    pub metrics: Metrics,
    flows: Vec<Arc<LoadedFlow>>,
    active: RwLock<Arc<ActiveFlows>>,
    inbound: Vec<InboundConnection>,
    /// Wakes the run workers when runs were enqueued.
    pub runs_waiting: Notify,
    /// Wakes the inbound worker when a message was recorded.
    pub inbound_waiting: Notify,
    /// Cancelled when the service stops taking new work.
    pub stopping: CancellationToken,
    pub on_emit: RwLock<Option<EmitCallback>>,
    /// Completions committed together.
    pub completions: super::completion_batch::CompletionBatch,
}

impl Shared {
    pub fn active(&self) -> Arc<ActiveFlows> {
        self.active.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub fn emit(&self, event: &EmittedEvent) {
        let callback = self.on_emit.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        if let Some(callback) = callback {
            callback(event);
        }
    }
}

/// The durable service. Create it with [`Service::start`], inside a Tokio runtime.
pub struct Service {
    shared: Arc<Shared>,
    commit: GroupCommit,
    tasks: TaskTracker,
}

impl Service {
    /// Loads the flows (`(name, JSON text)` pairs; every problem is reported, named by file and pointer),
    /// and starts the workers. Flows that use a connection disconnected earlier stay stopped.
    pub async fn start(
        host: Host,
        store: Arc<dyn Store>,
        flow_files: &[(String, String)],
        inbound: Vec<InboundConnection>,
        config: ServiceConfig,
    ) -> Result<Service, ServiceError> {
        let mut flows = Vec::new();
        let mut problems = Vec::new();
        let mut ids = BTreeMap::new();
        for (name, text) in flow_files {
            match host.load(text) {
                Ok(flow) => {
                    if let Some(other) = ids.insert(flow.id().to_string(), name.clone()) {
                        problems.push(format!("{name}: flow id `{}` is also the id of {other}", flow.id()));
                    }
                    flows.push(Arc::new(flow));
                }
                Err(found) => problems.extend(found.iter().map(|p: &Problem| format!("{name}: {p}"))),
            }
        }
        let known: BTreeSet<&str> =
            flows.iter().flat_map(|f| f.flow().connections.keys()).map(String::as_str).collect();
        for connection in &inbound {
            if !known.contains(connection.name.as_str()) {
                problems.push(format!("inbound connection `{}`: no flow has this connection", connection.name));
            }
        }
        if !problems.is_empty() {
            return Err(ServiceError::Flows(problems));
        }
        let held: BTreeSet<String> = store.held_connections().await?.into_iter().collect();
        let active = ActiveFlows::build(&flows, &held);
        let shared = Arc::new(Shared {
            host,
            store: store.clone(),
            metrics: Metrics::new(),
            flows,
            active: RwLock::new(Arc::new(active)),
            inbound,
            runs_waiting: Notify::new(),
            inbound_waiting: Notify::new(),
            stopping: CancellationToken::new(),
            on_emit: RwLock::new(None),
            completions: super::completion_batch::CompletionBatch::new(store.clone()),
            config,
        });
        let commit = GroupCommit::new(store, shared.config.group_commit);
        let tasks = TaskTracker::new();
        tasks.spawn(run_worker::run(shared.clone(), tasks.clone()));
        tasks.spawn(inbound_worker::run(shared.clone()));
        Ok(Service { shared, commit, tasks })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn host(&self) -> &Host {
        &self.shared.host
    }

    /// Receives every event an emit node handed to the platform, once its run's outcome is committed
    /// (the outbox has them too).
    pub fn on_emit(&self, callback: impl Fn(&EmittedEvent) + Send + Sync + 'static) {
        *self.shared.on_emit.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(callback));
    }

    /// The ids of the flows that run, and of those stopped by a disconnect (with the connection).
    pub fn flows(&self) -> (Vec<String>, BTreeMap<String, String>) {
        let active = self.shared.active();
        let mut running: Vec<String> = active.by_id.keys().cloned().collect();
        running.sort();
        (running, active.stopped.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// Durably accepts loyalty events: one run per flow each event triggers, committed (shared with
    /// concurrent callers) before this returns. All or nothing: an event that does not fit a flow's trigger
    /// schema refuses the whole request, naming it as `/<index>/data/<field>`.
    pub async fn accept(&self, events: &[LoyaltyEvent]) -> Result<Vec<AcceptedEvent>, AcceptError> {
        let active = self.shared.active();
        let mut errors = Vec::new();
        let mut runs = Vec::new();
        let mut accepted = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let mut result = AcceptedEvent { event: event.event.clone(), runs: Vec::new(), notes: Vec::new() };
            if event.event.is_empty() {
                errors.push(FieldError { pointer: format!("/{index}/event"), message: "must not be empty".into() });
            }
            if event.id.as_deref() == Some("") {
                errors.push(FieldError { pointer: format!("/{index}/id"), message: "must not be empty".into() });
            }
            let flows = active.by_event.get(&event.event).map(Vec::as_slice).unwrap_or_default();
            for (flow, connection) in self.stopped_flows_for(&active, &event.event) {
                result.notes.push(format!("flow {flow} is stopped: connection `{connection}` is disconnected"));
            }
            if flows.is_empty() && result.notes.is_empty() {
                result.notes.push(format!("no flow is triggered by event `{}`", event.event));
            }
            for flow in flows {
                if let Err(found) = flow.validate_event(&event.data) {
                    errors.extend(found.into_iter().map(|e| FieldError {
                        pointer: format!("/{index}/data{}", e.pointer),
                        message: format!("{} (flow {})", e.message, flow.id()),
                    }));
                    continue;
                }
                let customer = event.customer();
                runs.push(NewRun {
                    flow_id: flow.id().to_string(),
                    flow_version: flow.flow().version.clone(),
                    connections: flow.flow().connections.keys().cloned().collect(),
                    ordering_key: ordering_key(flow.id(), customer.as_deref()),
                    customer,
                    event: event.data.clone(),
                    dedup_key: event.id.clone(),
                });
                result.runs.push(AcceptedRun { flow: flow.id().to_string(), run_id: String::new() });
            }
            accepted.push(result);
        }
        if !errors.is_empty() {
            return Err(AcceptError::Invalid(errors));
        }
        let flow_ids: Vec<String> = runs.iter().map(|r| r.flow_id.clone()).collect();
        let ids = self.commit.enqueue(runs).await?;
        let mut ids = ids.into_iter();
        for run in accepted.iter_mut().flat_map(|a| a.runs.iter_mut()) {
            run.run_id = ids.next().unwrap_or_default();
        }
        self.shared.metrics.accepted(events.len() as u64);
        for flow in &flow_ids {
            self.shared.metrics.enqueued(flow);
        }
        if !flow_ids.is_empty() {
            self.shared.runs_waiting.notify_waiters();
        }
        Ok(accepted)
    }

    fn stopped_flows_for(&self, active: &ActiveFlows, event: &str) -> Vec<(String, String)> {
        self.shared
            .flows
            .iter()
            .filter(|f| matches!(&f.flow().trigger, Trigger::Event { event: e, .. } if e == event))
            .filter_map(|f| active.stopped.get(f.id()).map(|c| (f.id().to_string(), c.clone())))
            .collect()
    }

    /// Finds the inbound connection whose token `authorization` (`Bearer <token>` or `Token <token>`)
    /// carries. Every token is compared in constant time, so the answer's timing tells nothing.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<&str, InboundError> {
        let presented = authorization
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("Token ")))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or(InboundError::Unauthorized)?;
        // No early exit: every token is compared, whichever matches.
        let mut found = None;
        for connection in &self.shared.inbound {
            if token_matches(presented, &connection.token) {
                found = Some(connection.name.as_str());
            }
        }
        found.ok_or(InboundError::Unauthorized)
    }

    /// Accepts a message mParticle sent (webhook output or Firehose) for `connection`, as named by
    /// [`authenticate`](Service::authenticate): it is checked, recorded durably, and answered; the inbound
    /// worker maps it to runs.
    pub async fn receive_mparticle(&self, connection: &str, body: &Value) -> Result<InboundReceipt, InboundError> {
        let connection = connection.to_string();
        if self.shared.active().stopped.values().any(|held| *held == connection) {
            return Err(InboundError::Disconnected(connection));
        }
        let message = mparticle::parse(body).map_err(|e| InboundError::Malformed(e.to_string()))?;
        let response = mparticle::response(&message);
        // A verification request or a registration carries nothing to process: answered, not stored.
        if message.events().is_empty() {
            return Ok(InboundReceipt { id: String::new(), response });
        }
        let record = InboundMessage {
            connection,
            source: message.source().to_string(),
            external_id: message.external_id(),
            body: body.clone(),
        };
        let id = self.shared.store.record_inbound(&record).await?;
        self.shared.metrics.inbound_received();
        self.shared.inbound_waiting.notify_waiters();
        Ok(InboundReceipt { id, response })
    }

    /// Disconnect: holds the connection in the store (its queued runs and inbound messages are kept, not
    /// sent) and stops every flow that uses it, in both directions; its inbound token is refused.
    pub async fn disconnect(&self, name: &str) -> Result<ConnectionHold, ConnectionError> {
        self.known_connection(name)?;
        let hold = self.shared.store.hold_connection(name).await?;
        self.refresh().await?;
        Ok(hold)
    }

    /// Reconnect: needs both directions configured (a flow that sends through the connection, and an
    /// inbound token for it); then the held runs and messages go back in the queue and its flows run again.
    pub async fn reconnect(&self, name: &str) -> Result<ConnectionHold, ConnectionError> {
        self.known_connection(name)?;
        let outbound = self
            .shared
            .flows
            .iter()
            .any(|f| f.flow().connections.contains_key(name) && matches!(f.flow().trigger, Trigger::Event { .. }));
        let inbound = self.shared.inbound.iter().any(|c| c.name == name);
        let missing: Vec<&str> =
            [(!outbound).then_some("no outbound flow uses it"), (!inbound).then_some("it has no inbound token")]
                .into_iter()
                .flatten()
                .collect();
        if !missing.is_empty() {
            return Err(ConnectionError::Incomplete { name: name.to_string(), missing: missing.join(" and ") });
        }
        let release = self.shared.store.release_connection(name).await?;
        self.refresh().await?;
        self.shared.runs_waiting.notify_waiters();
        self.shared.inbound_waiting.notify_waiters();
        Ok(release)
    }

    fn known_connection(&self, name: &str) -> Result<(), ConnectionError> {
        if self.shared.flows.iter().any(|f| f.flow().connections.contains_key(name)) {
            Ok(())
        } else {
            Err(ConnectionError::Unknown(name.to_string()))
        }
    }

    async fn refresh(&self) -> Result<(), StoreError> {
        let held: BTreeSet<String> = self.shared.store.held_connections().await?.into_iter().collect();
        let active = Arc::new(ActiveFlows::build(&self.shared.flows, &held));
        *self.shared.active.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = active;
        Ok(())
    }

    /// Wakes the workers, e.g. after an operator retried a run.
    pub fn wake(&self) {
        self.shared.runs_waiting.notify_waiters();
        self.shared.inbound_waiting.notify_waiters();
    }

    /// The Prometheus text for `/metrics`.
    pub async fn render_metrics(&self) -> Result<String, StoreError> {
        let counts = self.shared.store.counts().await?;
        Ok(self.shared.metrics.render(&counts))
    }

    /// Graceful shutdown: stops taking events, commits what was handed over, lets in-flight runs finish their
    /// current step for up to `grace`, and leaves the rest safely queued (their leases expire and another
    /// start resumes them from their checkpoints).
    pub async fn shutdown(&self, grace: Duration) {
        self.commit.shutdown().await;
        self.shared.stopping.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            tracing::warn!(
                "runs still in flight after {} s are left to their leases and resume on the next start",
                grace.as_secs()
            );
        }
    }
}

/// Runs of one key are delivered in order: a customer's events per flow. Events without a customer are not
/// ordered against each other.
pub(crate) fn ordering_key(flow: &str, customer: Option<&str>) -> String {
    match customer {
        Some(customer) => format!("{flow}/{customer}"),
        None => format!("{flow}/-/{}", uuid::Uuid::new_v4()),
    }
}

/// Why the service did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("the flows have problems:\n  {}", .0.join("\n  "))]
    Flows(Vec<String>),
    #[error(transparent)]
    Store(#[from] StoreError),
}
