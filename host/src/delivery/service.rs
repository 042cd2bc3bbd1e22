//! The durable service: loyalty events and inbound messages are committed to the [`Store`] before the
//! caller gets an answer, then workers run the flows they trigger, resend what failed with a retryable error,
//! dead-letter what ran out of attempts, and write emitted events to the outbox. `flowhost serve` is this
//! service behind HTTP; a platform can embed it the same way.

use super::completion_batch::CompletionBatch;
use super::config::ServiceConfig;
use super::group_commit::{GroupCommit, GroupCommitError};
use super::inbound_accept::{self, Admission};
use super::inbound_endpoint::{InboundConnection, InboundEndpoint, InboundError, InboundReceipt};
use super::integrity::IntegrityStatus;
use super::metrics::Metrics;
use super::shared::{ActiveFlows, Shared, ordering_key};
use super::{inbound_worker, retention, run_worker};
use crate::flow::{EmittedEvent, LoadedFlow, Problem, Trigger};
use crate::inbound::InboundRequest;
use crate::store::{
    ConnectionHold, InboundFilter, InboundState, NewRun, RunState, Store, StoreError, StoredInbound, Wake,
};
use crate::{Host, connector::FieldError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A loyalty event handed to the service (`POST /v1/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoyaltyEvent {
    /// The event name, e.g. `point_add`: every flow triggered by it runs.
    #[schema(min_length = 1)]
    pub event: String,
    /// The event's payload, validated against each flow's trigger schema.
    #[serde(default)]
    pub data: Value,
    /// The customer: events of one customer are delivered in order. Defaults to `data.customerId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    /// The platform's id of the event: sending the same id again does not start a second run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1)]
    pub id: Option<String>,
}

impl LoyaltyEvent {
    fn customer(&self) -> Option<String> {
        self.customer.clone().or_else(|| self.data.get("customerId").and_then(Value::as_str).map(String::from))
    }
}

/// What became of one accepted event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedEvent {
    pub event: String,
    /// The runs started, one per flow the event triggers.
    pub runs: Vec<AcceptedRun>,
    /// Why no run or fewer runs started (no flow for the event, a flow stopped by a disconnect).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
        let inbound = match InboundEndpoint::build(&flows, inbound) {
            Ok(endpoints) => endpoints,
            Err(found) => {
                problems.extend(found);
                HashMap::new()
            }
        };
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
            completions: CompletionBatch::new(store.clone()),
            integrity: RwLock::new(None),
            config,
        });
        // Another process's enqueue (or retry, or recorded message) wakes this one's workers, where the store can
        // tell (PostgreSQL's LISTEN); they poll anyway.
        let weak = Arc::downgrade(&shared);
        store.on_wake(Arc::new(move |what| {
            if let Some(shared) = weak.upgrade() {
                match what {
                    Wake::Runs => shared.runs_waiting.notify_waiters(),
                    Wake::Inbound => shared.inbound_waiting.notify_waiters(),
                }
            }
        }));
        let commit = GroupCommit::new(store, shared.config.group_commit);
        let tasks = TaskTracker::new();
        tasks.spawn(run_worker::run(shared.clone(), tasks.clone()));
        tasks.spawn(inbound_worker::run(shared.clone()));
        tasks.spawn(retention::run(shared.clone()));
        tasks.spawn(super::integrity::run(shared.clone()));
        Ok(Service { shared, commit, tasks })
    }

    /// The latest integrity check of the store (see [`ServiceConfig::integrity_check`]); `None` until the first
    /// one, which starts with the service, has ended.
    pub fn integrity(&self) -> Option<IntegrityStatus> {
        self.shared.integrity.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
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

    /// Every loaded flow, running or stopped, in the order of their files.
    pub fn loaded_flows(&self) -> &[Arc<LoadedFlow>] {
        &self.shared.flows
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
        let enqueued = self.commit.enqueue_runs(runs).await?;
        // A re-sent event's run is the one stored before: not enqueued again.
        for (flow, run) in flow_ids.iter().zip(&enqueued) {
            if run.new {
                self.shared.metrics.enqueued(flow);
            }
        }
        let mut ids = enqueued.into_iter().map(|run| run.id);
        for run in accepted.iter_mut().flat_map(|a| a.runs.iter_mut()) {
            run.run_id = ids.next().unwrap_or_default();
        }
        self.shared.metrics.accepted(events.len() as u64);
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

    /// Admits an inbound request before its body is read (see [`Admission`]): the connection takes inbound
    /// requests and is not disconnected, and `authorization` carries its token, compared in constant time
    /// (or the connector takes the request without it: a public request, or one it verifies itself). Read at
    /// most [`Admission::body_limit`] bytes of the body, then hand it to [`Service::receive`].
    pub fn admit_inbound(&self, connection: &str, authorization: Option<&str>) -> Result<Admission, InboundError> {
        inbound_accept::admit(&self.shared, connection, authorization)
    }

    /// Hands an admitted inbound request to the connection's connector (`receive`), stores the events it
    /// returns durably, once, and returns the connector's answer for the sender. The inbound worker maps the
    /// stored events to runs.
    pub async fn receive(
        &self,
        admission: &Admission,
        request: InboundRequest,
    ) -> Result<InboundReceipt, InboundError> {
        inbound_accept::receive(&self.shared, admission, request).await
    }

    /// Inbound messages as the store lists them (`filter`), each with what became of its runs: a processed
    /// message one of whose runs failed or was dead-lettered is `failed`, naming those runs (the message was
    /// mapped, but what it carried did not all arrive). Filtering on `failed` finds those too. Returns the
    /// page and the `seq` to page on.
    pub async fn inbound_messages(
        &self,
        filter: &InboundFilter,
    ) -> Result<(Vec<InboundMessageView>, Option<i64>), StoreError> {
        let asked = filter.statuses.clone();
        let mut widened = filter.clone();
        if asked.contains(&InboundState::Failed) && !asked.contains(&InboundState::Processed) {
            widened.statuses.push(InboundState::Processed);
        }
        let stored = self.shared.store.list_inbound(&widened).await?;
        let next = stored.last().map(|m| m.seq);
        let mut views = Vec::with_capacity(stored.len());
        for message in stored {
            let mut failed_runs = Vec::new();
            if message.status == InboundState::Processed {
                for id in &message.run_ids {
                    if let Some(run) = self.shared.store.get(id).await?
                        && matches!(run.status, RunState::Failed | RunState::Dead)
                    {
                        failed_runs.push(FailedRun {
                            run_id: run.id,
                            flow: run.flow_id,
                            status: run.status,
                            error: run.last_error,
                        });
                    }
                }
            }
            let status = if failed_runs.is_empty() { message.status } else { InboundState::Failed };
            if asked.is_empty() || asked.contains(&status) {
                views.push(InboundMessageView { message, status, failed_runs });
            }
        }
        Ok((views, next))
    }

    /// Disconnect: holds the connection in the store (its queued runs and inbound messages are kept, not
    /// sent) and stops every flow that uses it, in both directions; its inbound token is refused.
    pub async fn disconnect(&self, name: &str) -> Result<ConnectionHold, ConnectionError> {
        self.known_connection(name)?;
        let hold = self.shared.store.hold_connection(name).await?;
        self.refresh().await?;
        Ok(hold)
    }

    /// Reconnect: the held runs and messages go back in the queue and the connection's flows run again. A
    /// connection configured for inbound requests (an inbound flow or token) must be able to take them.
    pub async fn reconnect(&self, name: &str) -> Result<ConnectionHold, ConnectionError> {
        self.known_connection(name)?;
        // Only the directions the connection is configured for must work: an outbound-only connection has
        // no inbound side to ask for.
        if let Some(why) = self.shared.inbound.get(name).and_then(InboundEndpoint::why_closed) {
            return Err(ConnectionError::Incomplete { name: name.to_string(), missing: why });
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
        let held_behind = self.shared.store.held_behind().await?;
        self.shared.metrics.set_pacing(&self.host().pacing().status());
        Ok(self.shared.metrics.render(&counts, &held_behind))
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

/// An inbound message with what became of its runs ([`Service::inbound_messages`]).
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessageView {
    pub message: StoredInbound,
    /// The message's status, `failed` also when one of its runs failed.
    pub status: InboundState,
    pub failed_runs: Vec<FailedRun>,
}

/// A run of an inbound message that failed or was dead-lettered.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedRun {
    pub run_id: String,
    pub flow: String,
    pub status: RunState,
    pub error: Option<Value>,
}

/// Why the service did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("the flows have problems:\n  {}", .0.join("\n  "))]
    Flows(Vec<String>),
    #[error(transparent)]
    Store(#[from] StoreError),
}
