//! What the service and its workers share: the loaded flows by what triggers them, the store, the inbound
//! endpoints, the wake-ups and the metrics. The service builds it; the workers only read it.

use super::completion_batch::CompletionBatch;
use super::config::ServiceConfig;
use super::inbound_endpoint::InboundEndpoint;
use super::metrics::Metrics;
use crate::Host;
use crate::flow::{EmittedEvent, LoadedFlow, Trigger};
use crate::store::Store;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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
    pub fn build(flows: &[Arc<LoadedFlow>], held: &BTreeSet<String>) -> Self {
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
    pub flows: Vec<Arc<LoadedFlow>>,
    pub active: RwLock<Arc<ActiveFlows>>,
    /// The connections that take inbound requests, by name.
    pub inbound: HashMap<String, InboundEndpoint>,
    /// Wakes the run workers when runs were enqueued.
    pub runs_waiting: Notify,
    /// Wakes the inbound worker when a message was recorded.
    pub inbound_waiting: Notify,
    /// Cancelled when the service stops taking new work.
    pub stopping: CancellationToken,
    pub on_emit: RwLock<Option<EmitCallback>>,
    /// Completions committed together.
    pub completions: CompletionBatch,
    /// The latest integrity check of the store; `None` until the first one ends.
    pub integrity: RwLock<Option<super::IntegrityStatus>>,
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

/// Runs of one key are delivered in order: a customer's events per flow. Events without a customer are not
/// ordered against each other.
pub(crate) fn ordering_key(flow: &str, customer: Option<&str>) -> String {
    match customer {
        Some(customer) => format!("{flow}/{customer}"),
        None => format!("{flow}/-/{}", uuid::Uuid::new_v4()),
    }
}
