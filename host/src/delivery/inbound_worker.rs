//! The inbound worker: claims the inbound messages recorded by `POST /v1/inbound/{connection}`, matches each
//! of their normalized events against the flows whose `inbound` trigger names the connection (event type, event
//! name, environment, the customer's identity), and settles the message together with the runs it produced, in
//! one transaction. Events nothing maps are kept and reported, never dropped silently.

use super::shared::{Shared, ordering_key};
use crate::inbound::{InboundEvent, InboundRequest, TriggerFilter, TriggerMatch, match_trigger, stored_events};
use crate::store::{InboundOutcome, NewRun, StoredInbound, now_ms};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const CLAIM_BATCH: usize = 64;

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
    let (outcome, runs) = match events_of(shared, &message).await {
        Ok(events) => map_events(shared, &message, &events),
        Err(Unreadable { message: error, retryable: false }) => {
            (InboundOutcome::Failed { error: json!({"message": error}) }, Vec::new())
        }
        Err(Unreadable { message: error, retryable: true }) => {
            // Its lease runs out and it is taken again; nothing is settled on a passing failure.
            tracing::warn!(message = %message.id, %error, "an inbound message could not be read now; it will be again");
            return;
        }
    };
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

/// Why a message's events cannot be read, and whether trying again later may help.
struct Unreadable {
    message: String,
    retryable: bool,
}

/// The message's normalized events, as its connector returned them when the message was accepted. A message
/// that an earlier version stored as the raw body it received is normalized by the connection's connector now.
async fn events_of(shared: &Shared, message: &StoredInbound) -> Result<Vec<InboundEvent>, Unreadable> {
    let for_good = |message: String| Unreadable { message, retryable: false };
    if let Some(events) = stored_events(&message.body) {
        return events.map_err(for_good);
    }
    let endpoint = shared.inbound.get(&message.connection).ok_or_else(|| {
        for_good(format!(
            "the message was stored raw and connection `{}` no longer takes inbound requests",
            message.connection
        ))
    })?;
    let (connector, connection) = endpoint.connector();
    // It was authenticated when it was accepted.
    let body = serde_json::to_vec(&message.body).unwrap_or_default();
    let request = InboundRequest::json_post(body, true, message.received_at);
    match connector.receive(connection, request).await.result {
        Ok(received) => Ok(received.events),
        Err(error) => Err(Unreadable {
            retryable: error.kind().is_retryable(),
            message: format!("the message was stored raw and its connector cannot read it: {error}"),
        }),
    }
}

/// The runs a message's events start, and how the message is settled.
fn map_events(shared: &Shared, message: &StoredInbound, events: &[InboundEvent]) -> (InboundOutcome, Vec<NewRun>) {
    let active = shared.active();
    let flows = active.inbound.get(&message.connection).map(Vec::as_slice).unwrap_or_default();
    let mut runs = Vec::new();
    let mut unmatched = Vec::new();
    for (index, event) in events.iter().enumerate() {
        let mut matched = false;
        let mut reasons = Vec::new();
        for flow in flows {
            let Some((_, filter)) = TriggerFilter::of(&flow.flow().trigger) else { continue };
            let customer = match match_trigger(&filter, event) {
                TriggerMatch::Other => continue,
                missing @ TriggerMatch::NoCustomer { .. } => {
                    reasons.extend(missing.reason(flow.id(), event));
                    continue;
                }
                TriggerMatch::Customer(customer) => customer,
            };
            matched = true;
            runs.push(NewRun {
                flow_id: flow.id().to_string(),
                flow_version: flow.flow().version.clone(),
                connections: flow.flow().connections.keys().cloned().collect(),
                ordering_key: ordering_key(flow.id(), Some(&customer)),
                event: event.trigger(Some(&customer)),
                customer: Some(customer),
                // An event sent again (in another message) or a message processed twice (after a crash) does
                // not start its runs twice.
                dedup_key: Some(match &event.message_id {
                    Some(id) => format!("inbound/{}/event/{id}", message.connection),
                    None => format!("inbound/{}/{index}", message.id),
                }),
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
