//! The inbound worker: claims the inbound messages recorded by `POST /v1/inbound/mparticle`, maps each event
//! onto the flows whose `inbound` trigger matches it (event type, custom event name, the customer's identity),
//! and settles the message together with the runs it produced, in one transaction. Events nothing maps are
//! kept and reported, never dropped silently.

use super::service::{Shared, ordering_key};
use crate::flow::Trigger;
use crate::inbound::{InboundEvent, mparticle};
use crate::store::{InboundOutcome, NewRun, StoredInbound, now_ms};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const CLAIM_BATCH: usize = 64;

/// The identity that names the customer when a flow's trigger does not say.
pub const DEFAULT_CUSTOMER_IDENTITY: &str = "customer_id";

pub(crate) async fn run(shared: Arc<Shared>) {
    loop {
        if shared.stopping.is_cancelled() {
            return;
        }
        let woken = shared.inbound_waiting.notified();
        let claimed =
            shared.store.claim_inbound(&shared.config.worker, CLAIM_BATCH, now_ms(), shared.config.lease).await;
        let messages = match claimed {
            Ok(messages) => messages,
            Err(error) => {
                tracing::error!(%error, "cannot claim inbound messages; trying again");
                Vec::new()
            }
        };
        if messages.is_empty() {
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(shared.config.idle_poll.max(Duration::from_millis(50))) => {}
                _ = shared.stopping.cancelled() => {}
            }
            continue;
        }
        // A claim keeps each connection's messages in order; they are settled in that order.
        for message in messages {
            process(&shared, message).await;
        }
    }
}

async fn process(shared: &Shared, message: StoredInbound) {
    let Some(lease) = message.lease() else { return };
    let (outcome, runs) = map_message(shared, &message);
    let flows: Vec<String> = runs.iter().map(|r| r.flow_id.clone()).collect();
    match shared.store.complete_inbound(&lease, &outcome, &runs).await {
        Ok(_) => {
            for flow in &flows {
                shared.metrics.enqueued(flow);
            }
            if !flows.is_empty() {
                shared.runs_waiting.notify_waiters();
            }
        }
        Err(error) => {
            tracing::error!(message = %message.id, %error, "cannot settle an inbound message; it will be processed again")
        }
    }
}

/// The runs a message starts, and how it is settled.
fn map_message(shared: &Shared, message: &StoredInbound) -> (InboundOutcome, Vec<NewRun>) {
    let parsed = match mparticle::parse(&message.body) {
        Ok(parsed) => parsed,
        Err(error) => return (InboundOutcome::Failed { error: json!({"message": error.to_string()}) }, Vec::new()),
    };
    let active = shared.active();
    let flows = active.inbound.get(&message.connection).map(Vec::as_slice).unwrap_or_default();
    let mut runs = Vec::new();
    let mut unmatched = Vec::new();
    for (index, event) in parsed.events().iter().enumerate() {
        let mut matched = false;
        let mut reasons = Vec::new();
        for flow in flows {
            let Trigger::Inbound { event_type, event_name, customer_identity, .. } = &flow.flow().trigger else {
                continue;
            };
            if event_type.as_ref().is_some_and(|t| *t != event.event_type)
                || event_name.as_ref().is_some_and(|n| event.event_name.as_ref() != Some(n))
            {
                continue;
            }
            let identity = customer_identity.as_deref().unwrap_or(DEFAULT_CUSTOMER_IDENTITY);
            let Some(customer) = event.identities.get(identity).cloned() else {
                reasons.push(format!("flow {} needs the `{identity}` identity, which the event lacks", flow.id()));
                continue;
            };
            matched = true;
            let trigger = InboundEvent { customer: Some(customer.clone()), ..event.clone() }.to_value();
            runs.push(NewRun {
                flow_id: flow.id().to_string(),
                flow_version: flow.flow().version.clone(),
                connections: flow.flow().connections.keys().cloned().collect(),
                ordering_key: ordering_key(flow.id(), Some(&customer)),
                customer: Some(customer),
                event: trigger,
                // A message processed twice (after a crash) does not start its runs twice.
                dedup_key: Some(format!("inbound/{}/{index}", message.id)),
            });
        }
        if !matched {
            if reasons.is_empty() {
                reasons.push(match &event.event_name {
                    Some(name) => format!("no flow maps {} `{name}`", event.event_type),
                    None => format!("no flow maps {}", event.event_type),
                });
            }
            unmatched.push(json!({
                "index": index,
                "eventType": event.event_type,
                "eventName": event.event_name,
                "messageId": event.message_id,
                "reasons": reasons,
            }));
        }
    }
    if !unmatched.is_empty() {
        shared.metrics.inbound_unmatched(unmatched.len() as u64);
        tracing::warn!(message = %message.id, events = unmatched.len(), "inbound events that no flow maps are kept and reported");
    }
    let report = (!unmatched.is_empty()).then(|| Value::Array(unmatched));
    match (runs.is_empty(), report) {
        (true, Some(reason)) => (InboundOutcome::Unmatched { reason }, runs),
        (_, unmatched) => (InboundOutcome::Processed { unmatched }, runs),
    }
}
