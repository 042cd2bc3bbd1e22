//! A connector's inbound side: `receive` for each request its vendor sends (`describe-inbound` runs when the
//! component is loaded, in the runtime), in a fresh sandboxed instance like any other call. What the component returns is
//! checked here (its size, and JSON objects where the contract says so), so that a hostile or broken connector
//! cannot hand the host something it would store and fail on later.

use super::bindings::inbound::wit;
use super::egress::EgressPolicy;
use super::error::InvokeError;
use super::invocation::Invocation;
use super::runtime::{Connection, Connector, check_output_size, flatten, run_sandboxed};
use super::sandbox::SandboxLimits;
use crate::inbound::{InboundEvent, InboundInfo, InboundRequest, InboundResponse, Received};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};
use std::sync::Arc;

impl Connector {
    /// What the connector's inbound side produces; `None` when the component does not export `receive`.
    pub fn inbound(&self) -> Option<&InboundInfo> {
        self.inbound.as_ref()
    }

    /// Hands one request the connection's sender made to the connector's `receive`, in a fresh instance under
    /// the sandbox's limits; without the connection's token, without network access. A connector without an
    /// inbound side fails with `unknown-capability`.
    pub async fn receive(&self, connection: &Connection, request: InboundRequest) -> Invocation<Received> {
        let Some(pre) = &self.inbound_pre else {
            let error = InvokeError::UnknownCapability {
                capability: "receive".into(),
                offered: format!("{} (it has no inbound side)", self.manifest().capability_ids()),
            };
            return Invocation {
                result: Err(error),
                log: Vec::new(),
                duration: Default::default(),
                usage_percent: None,
            };
        };
        let config = connection.resolved_config.expose_secret().to_string();
        // Taken by value: the body (up to the body limit) moves into the call instead of being copied.
        let request = wit::Request {
            method: request.method,
            path: request.path,
            query: request.query,
            headers: request.headers,
            body: request.body,
            authenticated: request.authenticated,
            received_at_ms: request.received_at_ms,
        };
        // A request that did not carry the connection's token has no network: nothing an unauthenticated
        // sender posts makes the connector call out with the connection's credentials.
        let mut scope = self.scope(connection);
        if !request.authenticated {
            scope.egress = Arc::new(EgressPolicy::deny_all());
        }
        let outcome = run_sandboxed(&self.runtime, pre, scope, move |instance, store| {
            Box::pin(async move { instance.call_receive(store, &config, &request).await })
        })
        .await;
        let limits = &self.runtime.limits;
        flatten(outcome, connection.redactor(), limits, |output| received(output, limits))
    }
}

/// The host's form of what `receive` returned, checked against the contract. Larger than `max_output_bytes` in
/// all, it is refused before its JSON is parsed (`output-too-large`), as an `invoke`'s output is: the host would
/// store it.
fn received(received: wit::Received, limits: &SandboxLimits) -> Result<Received, InvokeError> {
    check_output_size("receive output", received_size(&received), limits)?;
    let events = received
        .events
        .into_iter()
        .enumerate()
        .map(|(index, event)| {
            inbound_event(event).map_err(|message| broke_contract(&format!("event {index}: {message}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !(200..=599).contains(&received.response.status) {
        let status = received.response.status;
        return Err(broke_contract(&format!("the answer's status {status} is not a final HTTP status (200-599)")));
    }
    Ok(Received {
        events,
        message_id: received.message_id.filter(|id| !id.is_empty()),
        response: InboundResponse {
            status: received.response.status,
            headers: received.response.headers,
            body: received.response.body,
        },
    })
}

/// The bytes of text and body in what `receive` returned.
fn received_size(received: &wit::Received) -> usize {
    let headers =
        |headers: &[(String, String)]| -> usize { headers.iter().map(|(name, value)| name.len() + value.len()).sum() };
    let optional = |text: &Option<String>| text.as_ref().map_or(0, String::len);
    let events: usize = received
        .events
        .iter()
        .map(|e| {
            e.source.len()
                + e.event_type.len()
                + optional(&e.event_name)
                + headers(&e.identities)
                + e.attributes.len()
                + e.user_attributes.len()
                + optional(&e.environment)
                + optional(&e.message_id)
                + e.extra.len()
                + e.raw.len()
        })
        .sum();
    events + optional(&received.message_id) + headers(&received.response.headers) + received.response.body.len()
}

fn inbound_event(event: wit::InboundEvent) -> Result<InboundEvent, String> {
    if event.event_type.is_empty() {
        return Err("the event type is empty".into());
    }
    Ok(InboundEvent {
        source: event.source,
        event_type: event.event_type,
        event_name: event.event_name,
        identities: event.identities,
        attributes: object(&event.attributes, "attributes")?,
        user_attributes: object(&event.user_attributes, "user-attributes")?,
        environment: event.environment,
        message_id: event.message_id.filter(|id| !id.is_empty()),
        timestamp_ms: event.timestamp_ms,
        extra: object(&event.extra, "extra")?,
        raw: serde_json::from_str(&event.raw).map_err(|e| format!("raw is not JSON ({e})"))?,
    })
}

/// A JSON object field; empty text stands for an empty object.
fn object(text: &str, field: &str) -> Result<Map<String, Value>, String> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str(text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(format!("{field} is not a JSON object")),
        Err(e) => Err(format!("{field} is not JSON ({e})")),
    }
}

fn broke_contract(message: &str) -> InvokeError {
    InvokeError::Crashed { message: format!("the connector broke the contract: receive returned {message}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(raw: &str) -> wit::InboundEvent {
        wit::InboundEvent {
            source: "test".into(),
            event_type: "line".into(),
            event_name: None,
            identities: vec![("customer_id".into(), "c-1".into())],
            attributes: "{}".into(),
            user_attributes: String::new(),
            environment: None,
            message_id: None,
            timestamp_ms: None,
            extra: String::new(),
            raw: raw.into(),
        }
    }

    fn output(events: Vec<wit::InboundEvent>, body: &[u8]) -> wit::Received {
        wit::Received {
            events,
            message_id: None,
            response: wit::Response { status: 202, headers: vec![], body: body.to_vec() },
        }
    }

    #[test]
    fn a_receive_output_over_the_limit_is_refused_with_its_size_and_the_limit() {
        let limits = SandboxLimits { max_output_bytes: 100, ..SandboxLimits::default() };
        // Many events that are each small add up.
        let raw = format!("\"{}\"", "x".repeat(20));
        let error = received(output(vec![event(&raw); 3], b""), &limits).unwrap_err();
        assert_eq!(error.kind(), super::super::ErrorKind::OutputTooLarge);
        let message = error.to_string();
        assert!(message.contains("max_output_bytes") && message.contains("100 bytes"), "{message}");
        // So does the answer's body.
        let error = received(output(vec![], &[b' '; 101]), &limits).unwrap_err();
        assert_eq!(error.kind(), super::super::ErrorKind::OutputTooLarge);
        // Within the limit, it is taken.
        let taken = received(output(vec![event("1")], b"{}"), &limits).unwrap();
        assert_eq!(taken.events.len(), 1);
    }
}
