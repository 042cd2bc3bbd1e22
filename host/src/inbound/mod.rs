//! Inbound events: what a connection's sender (a vendor's webhook, an event stream) posts to flowhost, as the
//! connection's connector normalizes it (`receive` in the WIT `inbound` interface), and how inbound flows'
//! triggers match it.
//!
//! The host keeps what is generic: the route, the connection's token, body limits, storing each accepted
//! message once with its normalized events (parsed once, by the connector, when it is accepted), de-duplication
//! by message id, and trigger matching ([`match_trigger`]). Everything about a vendor's formats lives in its
//! connector.

use crate::flow::Trigger;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What a connector's inbound side produces and accepts (`describe-inbound`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundInfo {
    /// The event types `receive` produces, e.g. `custom_event`.
    pub event_types: Vec<String>,
    /// The identities an event may carry, e.g. `customer_id`, `email`.
    pub identities: Vec<String>,
    /// The requests the vendor sends without credentials, in words; they may be answered, never stored.
    pub public_requests: Vec<String>,
    /// Whether `receive` verifies every request itself (e.g. an HMAC signature), so that a connection may
    /// take requests without an inbound token.
    pub verifies_requests: bool,
}

/// An HTTP request as received on `POST /v1/inbound/{connection}`, handed to the connector.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InboundRequest {
    pub method: String,
    /// The path below the connection's route: empty, or e.g. `/registration`.
    pub path: String,
    /// The query string without the `?`.
    pub query: String,
    /// The headers, names in lower case; the authorization header is left out when it carried the connection's
    /// token, and kept otherwise (a sender's own credential, such as a signature, for the connector to verify).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the request carried the connection's inbound token.
    pub authenticated: bool,
    /// When the host received it, in milliseconds since the Unix epoch.
    pub received_at_ms: i64,
}

impl InboundRequest {
    /// A POST of a JSON body, as a vendor sends one: for a request made in process (running an inbound flow
    /// offline, the demo, a message an earlier version stored raw).
    pub fn json_post(body: Vec<u8>, authenticated: bool, received_at_ms: i64) -> Self {
        InboundRequest {
            method: "POST".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body,
            authenticated,
            received_at_ms,
            ..InboundRequest::default()
        }
    }
}

/// The answer the connector gives the sender.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InboundResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What a connector made of one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Received {
    /// The normalized events, in the order received; empty for a request that carries none.
    pub events: Vec<InboundEvent>,
    /// The sender's id of the request, for de-duplication of re-sent requests.
    pub message_id: Option<String>,
    pub response: InboundResponse,
}

/// One event received, normalized by its connector: what an inbound flow's trigger sees (see
/// [`InboundEvent::trigger`]). Stored as it is, so that the inbound worker maps exactly what was accepted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundEvent {
    /// Where the event came from, e.g. `acme.webhook`.
    pub source: String,
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_name: Option<String>,
    /// `(identity, value)` pairs, named as the connector declares its identities.
    #[serde(default)]
    pub identities: Vec<(String, String)>,
    #[serde(default)]
    pub attributes: Map<String, Value>,
    #[serde(default)]
    pub user_attributes: Map<String, Value>,
    /// `development` or `production`, where the source says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<i64>,
    /// The source's own fields, added at the top level of the trigger.
    #[serde(default)]
    pub extra: Map<String, Value>,
    /// The event as received.
    #[serde(default)]
    pub raw: Value,
}

impl InboundEvent {
    /// The value of the first identity named `name`.
    pub fn identity(&self, name: &str) -> Option<&str> {
        self.identities.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// The event as a flow's `trigger` sees it, for `customer`: the normalized fields in camelCase (absent
    /// ones as `null`), `identities` as an object (the first value of each identity), the raw event as
    /// `event`, and the connector's `extra` fields beside them.
    pub fn trigger(&self, customer: Option<&str>) -> Value {
        let mut identities = Map::new();
        for (name, value) in &self.identities {
            identities.entry(name.clone()).or_insert_with(|| Value::String(value.clone()));
        }
        let text = |value: &Option<String>| value.clone().map_or(Value::Null, Value::String);
        let normalized = [
            ("source", Value::String(self.source.clone())),
            ("eventType", Value::String(self.event_type.clone())),
            ("eventName", text(&self.event_name)),
            ("customer", customer.map_or(Value::Null, |c| Value::String(c.to_string()))),
            ("identities", Value::Object(identities)),
            ("attributes", Value::Object(self.attributes.clone())),
            ("userAttributes", Value::Object(self.user_attributes.clone())),
            ("environment", text(&self.environment)),
            ("messageId", text(&self.message_id)),
            ("timestampMs", self.timestamp_ms.map_or(Value::Null, Value::from)),
            ("event", self.raw.clone()),
        ];
        let mut trigger: Map<String, Value> =
            normalized.into_iter().map(|(name, value)| (name.to_string(), value)).collect();
        // The connector's own fields sit beside them; a normalized field of the same name wins.
        for (name, value) in &self.extra {
            trigger.entry(name.clone()).or_insert_with(|| value.clone());
        }
        Value::Object(trigger)
    }
}

/// What an inbound trigger asks of an event (a flow's `trigger` of type `inbound`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TriggerFilter<'a> {
    pub event_type: Option<&'a str>,
    pub event_name: Option<&'a str>,
    pub environment: Option<&'a str>,
    /// The identity that names the customer; [`DEFAULT_CUSTOMER_IDENTITY`] when absent.
    pub customer_identity: Option<&'a str>,
}

impl<'a> TriggerFilter<'a> {
    /// The filter of an inbound trigger, with the connection it names; `None` for another kind of trigger.
    pub fn of(trigger: &'a Trigger) -> Option<(&'a str, TriggerFilter<'a>)> {
        let Trigger::Inbound { connection, event_type, event_name, environment, customer_identity } = trigger else {
            return None;
        };
        let filter = TriggerFilter {
            event_type: event_type.as_deref(),
            event_name: event_name.as_deref(),
            environment: environment.as_deref(),
            customer_identity: customer_identity.as_deref(),
        };
        Some((connection, filter))
    }
}

/// The identity that names the customer when a flow's trigger does not say.
pub const DEFAULT_CUSTOMER_IDENTITY: &str = "customer_id";

/// How an event fares against one trigger.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerMatch {
    /// The trigger is not about this event (another type, name or environment).
    Other,
    /// The trigger is about this event, but the event lacks the identity that names the customer.
    NoCustomer { identity: String },
    /// The trigger runs for this event, for this customer.
    Customer(String),
}

impl TriggerMatch {
    /// Why the event starts no run of `flow`, for a match that is not a customer's.
    pub fn reason(&self, flow: &str, event: &InboundEvent) -> Option<String> {
        match self {
            TriggerMatch::Customer(_) => None,
            TriggerMatch::NoCustomer { identity } => {
                Some(format!("flow {flow} needs the `{identity}` identity, which the event lacks"))
            }
            TriggerMatch::Other => Some(match &event.event_name {
                Some(name) => format!("flow {flow} does not map {} `{name}`", event.event_type),
                None => format!("flow {flow} does not map {}", event.event_type),
            }),
        }
    }
}

/// Matches an event against an inbound trigger: event type, event name and environment when the trigger
/// names them, then the customer from the identity the trigger asks for.
pub fn match_trigger(filter: &TriggerFilter, event: &InboundEvent) -> TriggerMatch {
    if filter.event_type.is_some_and(|t| t != event.event_type)
        || filter.event_name.is_some_and(|n| event.event_name.as_deref() != Some(n))
        || filter.environment.is_some_and(|e| event.environment.as_deref() != Some(e))
    {
        return TriggerMatch::Other;
    }
    let identity = filter.customer_identity.unwrap_or(DEFAULT_CUSTOMER_IDENTITY);
    match event.identity(identity) {
        Some(customer) => TriggerMatch::Customer(customer.to_string()),
        None => TriggerMatch::NoCustomer { identity: identity.to_string() },
    }
}

/// The key under which a stored inbound message keeps its normalized events (its body is
/// `{"normalizedEvents": [...]}`), so that a body stored raw by an earlier version is told apart.
pub const NORMALIZED_EVENTS: &str = "normalizedEvents";

/// The stored body of an accepted message: its normalized events.
pub fn stored_body(events: &[InboundEvent]) -> Value {
    // Strings, numbers and maps with string keys: serializing cannot fail.
    let events = events.iter().map(|e| serde_json::to_value(e).expect("an inbound event serializes")).collect();
    Value::Object(Map::from_iter([(NORMALIZED_EVENTS.to_string(), Value::Array(events))]))
}

/// The normalized events of a stored body; `None` for a body stored raw (by a version that parsed it in the
/// host), `Some(Err)` for one that does not hold events in the normalized form.
pub fn stored_events(body: &Value) -> Option<Result<Vec<InboundEvent>, String>> {
    let events = body.get(NORMALIZED_EVENTS)?;
    // Read from the borrowed value: no copy of the whole body first.
    Some(
        Vec::<InboundEvent>::deserialize(events)
            .map_err(|e| format!("the stored message's normalized events cannot be read: {e}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> InboundEvent {
        InboundEvent {
            source: "acme.webhook".into(),
            event_type: "points.earned".into(),
            event_name: Some("bonus".into()),
            identities: vec![("member_id".into(), "m-1".into()), ("email".into(), "a@example.com".into())],
            attributes: json!({"points": 10}).as_object().cloned().unwrap(),
            environment: Some("production".into()),
            message_id: Some("evt_1".into()),
            timestamp_ms: Some(1_700_000_000_000),
            extra: json!({"tier": "gold", "eventType": "not this"}).as_object().cloned().unwrap(),
            raw: json!({"type": "points.earned"}),
            ..InboundEvent::default()
        }
    }

    #[test]
    fn the_trigger_has_the_normalized_fields_then_the_extra_ones() {
        let trigger = event().trigger(Some("m-1"));
        assert_eq!(trigger["customer"], "m-1");
        assert_eq!(trigger["eventType"], "points.earned");
        assert_eq!(trigger["identities"], json!({"member_id": "m-1", "email": "a@example.com"}));
        assert_eq!(trigger["environment"], "production");
        assert_eq!(trigger["tier"], "gold");
        assert_eq!(trigger["event"], json!({"type": "points.earned"}));
        assert_eq!(trigger["userAttributes"], json!({}));
    }

    #[test]
    fn triggers_match_on_type_name_environment_and_the_customer_identity() {
        let event = event();
        let filter = TriggerFilter {
            event_type: Some("points.earned"),
            event_name: Some("bonus"),
            environment: Some("production"),
            customer_identity: Some("member_id"),
        };
        assert_eq!(match_trigger(&filter, &event), TriggerMatch::Customer("m-1".into()));
        let development = TriggerFilter { environment: Some("development"), ..filter };
        assert_eq!(match_trigger(&development, &event), TriggerMatch::Other);
        let other_name = TriggerFilter { event_name: Some("welcome"), ..filter };
        assert_eq!(match_trigger(&other_name, &event), TriggerMatch::Other);
        let by_default = TriggerFilter { customer_identity: None, ..filter };
        assert_eq!(
            match_trigger(&by_default, &event),
            TriggerMatch::NoCustomer { identity: DEFAULT_CUSTOMER_IDENTITY.into() }
        );
    }

    #[test]
    fn a_stored_body_gives_back_its_events_and_a_raw_body_is_told_apart() {
        let body = stored_body(&[event()]);
        assert_eq!(stored_events(&body).unwrap().unwrap(), vec![event()]);
        assert!(stored_events(&json!({"events": []})).is_none());
        assert!(stored_events(&json!({"normalizedEvents": [1]})).unwrap().is_err());
    }
}
