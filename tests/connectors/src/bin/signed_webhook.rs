//! The inbound side of "Acme Loyalty", a fictional vendor whose webhooks are signed with Standard Webhooks
//! (<https://www.standardwebhooks.com>): the example for connector authors of an inbound side that does its
//! own verification, with no change to the host.
//!
//! The host keeps what every source shares (the route, the connection's token, body limits, storing each
//! accepted message once, trigger matching); this component does what is Acme's own, in `receive`:
//!
//! 1. the request is a POST;
//! 2. its `webhook-id`, `webhook-timestamp` and `webhook-signature` headers verify against the connection's
//!    `signingSecret`, with a timestamp within 5 minutes of the time of receipt
//!    ([`test_connectors::standard_webhooks`], plain Rust, unit-tested natively);
//! 3. a request seen before on this connection (the same `webhook-id` and `webhook-timestamp`, so the same
//!    signature) is refused as a replay; the connection's cache remembers them a little longer than the
//!    timestamp tolerance, past which a replay fails the timestamp check anyway. A vendor's re-delivery of an
//!    event keeps its `webhook-id` but is signed anew with a new timestamp: it passes, and the host's
//!    de-duplication by message id keeps it from being stored twice;
//! 4. only then is the body read: one Acme event or an array of them, each normalized into an
//!    [`InboundEvent`] (identities from `member`, attributes from `data`).
//!
//! An Acme event:
//!
//! ```json
//! {"type": "points.earned", "id": "evt_1", "timestamp": "2026-03-01T12:00:00Z", "environment": "live",
//!  "member": {"id": "m-42", "email": "ada@example.com", "tier": "gold"}, "data": {"points": 120}}
//! ```
//!
//! The outbound side is a manifest with one harmless capability (`ping`); `check` validates the secret.

use flowhost_connector_sdk::inbound::{self, InboundEvent, InboundInfo, Received, Request};
use flowhost_connector_sdk::*;
use serde_json::{Map, Value, json};
use test_connectors::standard_webhooks::Secret;
use test_connectors::{capability, manifest};

/// The `source` of every event this connector produces.
const SOURCE: &str = "acme.webhook";
/// The event types Acme sends.
const EVENT_TYPES: &[&str] = &["points.earned", "reward.redeemed", "member.updated"];
/// The identities an Acme member carries: `member.id` and `member.email`.
const IDENTITIES: &[&str] = &["member_id", "email"];
/// How long a received `webhook-id` is remembered: a little longer than the 300 s timestamp tolerance.
const SEEN_ID_TTL_SECONDS: u32 = 600;
/// The top-level fields of an Acme event that the normalized event carries; the others go to `extra`.
const NORMALIZED_FIELDS: &[&str] = &["type", "id", "timestamp", "environment", "member", "data"];

struct SignedWebhook;

impl Guest for SignedWebhook {
    fn describe() -> ConnectorInfo {
        let mut info = manifest(
            "signed-webhook",
            vec![ConnectionProperty {
                name: "signingSecret".into(),
                title: "Signing secret".into(),
                description: "The endpoint's signing secret from Acme Loyalty's webhook settings, `whsec_` followed \
                              by base64."
                    .into(),
                secret: true,
                required: true,
                schema: r#"{"type":"string","pattern":"^whsec_[A-Za-z0-9+/]+={0,2}$"}"#.into(),
            }],
            &[],
            vec![capability("ping", "Answers pong; calls nothing.")],
        );
        info.display_name = "Acme Loyalty (signed webhooks)".into();
        info.description = "Receives Acme Loyalty's webhooks, signed with Standard Webhooks: points earned, rewards \
                            redeemed, members updated."
            .into();
        info
    }

    fn check(connection: String) -> Result<(), ConnectorError> {
        signing_secret(&connection).map(|_| ())
    }

    fn invoke(
        capability: String,
        _connection: String,
        _input: String,
        _context: InvocationContext,
    ) -> Result<String, ConnectorError> {
        match capability.as_str() {
            "ping" => Ok(json!({ "pong": true }).to_string()),
            other => Err(invalid_input("", format!("unknown capability {other}"))),
        }
    }
}

impl inbound::Guest for SignedWebhook {
    fn describe_inbound() -> InboundInfo {
        InboundInfo {
            event_types: EVENT_TYPES.iter().map(|t| t.to_string()).collect(),
            identities: IDENTITIES.iter().map(|i| i.to_string()).collect(),
            // Acme signs every request: none is public, so the host refuses any without the connection's token.
            public_requests: vec![],
            verifies_requests: true,
        }
    }

    fn receive(connection: String, request: Request) -> Result<Received, ConnectorError> {
        if !request.method.eq_ignore_ascii_case("POST") {
            return Err(invalid_input("", format!("Acme Loyalty webhooks are POST requests, not {}", request.method)));
        }
        let secret = signing_secret(&connection)?;
        let verified = secret
            .verify(&request.headers, &request.body, request.received_at_ms)
            .map_err(|e| ConnectorError::Unauthorized(e.to_string()))?;
        let webhook_id = verified.id;

        // Entries may vanish from the cache: the host's de-duplication by message id stays the backstop.
        let seen_key = format!("webhook/{webhook_id}/{}", verified.timestamp);
        if cache::get(&seen_key).is_some() {
            return Err(ConnectorError::Unauthorized(format!(
                "webhook-id {webhook_id} with webhook-timestamp {} was already received: replay refused",
                verified.timestamp
            )));
        }

        let events = parse_body(&request.body, webhook_id)?;
        cache::set(&seen_key, &verified.timestamp.to_string(), SEEN_ID_TTL_SECONDS);

        let response = inbound::json_response(202, &json!({ "accepted": events.len(), "webhookId": webhook_id }));
        Ok(Received { events, message_id: Some(webhook_id.to_string()), response })
    }
}

/// The connection's `signingSecret`, parsed.
fn signing_secret(connection: &str) -> Result<Secret, ConnectorError> {
    let connection = parse_connection(connection)?;
    let text = connection["signingSecret"]
        .as_str()
        .ok_or_else(|| ConnectorError::InvalidConfig("signingSecret is required (whsec_ followed by base64)".into()))?;
    Secret::parse(text).map_err(|e| ConnectorError::InvalidConfig(format!("signingSecret: {e}")))
}

/// The events of a verified body: one Acme event or a non-empty array of them. Every problem is reported, each
/// with its JSON pointer.
fn parse_body(body: &[u8], webhook_id: &str) -> Result<Vec<InboundEvent>, ConnectorError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| invalid_input("", format!("the body is not valid JSON: {e}")))?;
    let mut errors = Vec::new();
    let events = match &value {
        Value::Array(items) if items.is_empty() => {
            return Err(invalid_input("", "the body is an empty array: it holds no Acme event"));
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .filter_map(|(index, item)| parse_event(item, &format!("/{index}"), webhook_id, &mut errors))
            .collect(),
        single => parse_event(single, "", webhook_id, &mut errors).into_iter().collect(),
    };
    if errors.is_empty() { Ok(events) } else { Err(ConnectorError::InvalidInput(errors)) }
}

/// One Acme event at `pointer`, or `None` after adding its problems to `errors`.
fn parse_event(event: &Value, pointer: &str, webhook_id: &str, errors: &mut Vec<FieldError>) -> Option<InboundEvent> {
    let errors_before = errors.len();
    let mut problem = |field: &str, message: &str| {
        errors.push(FieldError { pointer: format!("{pointer}{field}"), message: message.to_string() });
    };
    let Some(fields) = event.as_object() else {
        problem("", "an Acme event is a JSON object");
        return None;
    };

    let event_type = match fields.get("type") {
        Some(Value::String(t)) if EVENT_TYPES.contains(&t.as_str()) => Some(t.clone()),
        Some(Value::String(t)) => {
            problem("/type", &format!("unknown Acme event type {t:?}; expected one of {}", EVENT_TYPES.join(", ")));
            None
        }
        _ => {
            problem("/type", "type is required: a string such as \"points.earned\"");
            None
        }
    };
    let message_id = match fields.get("id") {
        Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
        _ => {
            problem("/id", "id is required: the event's id, a non-empty string such as \"evt_1\"");
            None
        }
    };
    let timestamp_ms = match fields.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(value) => timestamp_ms(value).or_else(|| {
            problem(
                "/timestamp",
                "timestamp must be an RFC 3339 time in UTC (e.g. \"2026-03-01T12:00:00Z\") or milliseconds since the \
                 Unix epoch",
            );
            None
        }),
    };
    let environment = match fields.get("environment") {
        None | Some(Value::Null) => None,
        Some(Value::String(e)) if e == "test" => Some("development".to_string()),
        Some(Value::String(e)) if e == "live" => Some("production".to_string()),
        Some(other) => {
            problem("/environment", &format!("environment must be \"test\" or \"live\", not {other}"));
            None
        }
    };
    let attributes = match fields.get("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(data)) => data.clone(),
        Some(_) => {
            problem("/data", "data must be an object");
            Map::new()
        }
    };

    // `member.id` and `member.email` are the identities; its other fields are the user's attributes.
    let mut identities = Vec::new();
    let mut user_attributes = Map::new();
    match fields.get("member") {
        Some(Value::Object(member)) => {
            let mut invalid = false;
            for (key, identity) in [("id", "member_id"), ("email", "email")] {
                match member.get(key) {
                    None | Some(Value::Null) => {}
                    Some(Value::String(text)) if !text.is_empty() => {
                        identities.push((identity.to_string(), text.clone()))
                    }
                    Some(Value::Number(number)) if key == "id" && (number.is_i64() || number.is_u64()) => {
                        identities.push((identity.to_string(), number.to_string()))
                    }
                    Some(_) => {
                        invalid = true;
                        problem(&format!("/member/{key}"), &format!("member.{key} must be a non-empty string"));
                    }
                }
            }
            if identities.is_empty() && !invalid {
                problem("/member", "member has neither an id nor an email: the event names no member");
            }
            let others = member.iter().filter(|(key, _)| !matches!(key.as_str(), "id" | "email"));
            user_attributes.extend(others.map(|(key, value)| (key.clone(), value.clone())));
        }
        _ => problem("/member", "member is required: an object with the member's id and email"),
    }

    if errors.len() > errors_before {
        return None;
    }
    // The event's other top-level fields (e.g. a program id) and the delivery's id reach the trigger as they are.
    let mut extra: Map<String, Value> = fields
        .iter()
        .filter(|(key, _)| !NORMALIZED_FIELDS.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    extra.insert("webhookId".into(), webhook_id.into());
    Some(InboundEvent {
        source: SOURCE.into(),
        event_type: event_type?,
        // Acme's event types have no names of their own.
        event_name: None,
        identities,
        attributes: Value::Object(attributes).to_string(),
        user_attributes: Value::Object(user_attributes).to_string(),
        environment,
        message_id,
        timestamp_ms,
        extra: Value::Object(extra).to_string(),
        raw: event.to_string(),
    })
}

/// An Acme timestamp in milliseconds since the Unix epoch: an RFC 3339 UTC time or an integer of milliseconds.
fn timestamp_ms(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => {
            let time = humantime::parse_rfc3339(text).ok()?;
            i64::try_from(time.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()
        }
        _ => None,
    }
}

export_connector!(SignedWebhook);
export_inbound!(SignedWebhook);

fn main() {}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointers(error: ConnectorError) -> Vec<(String, String)> {
        match error {
            ConnectorError::InvalidInput(errors) => errors.into_iter().map(|e| (e.pointer, e.message)).collect(),
            other => panic!("expected invalid-input, got {other:?}"),
        }
    }

    #[test]
    fn an_event_is_normalized() {
        let body = br#"{"type": "points.earned", "id": "evt_1", "timestamp": "2026-03-01T12:00:00.5Z",
            "environment": "live", "program": "acme-rewards",
            "member": {"id": "m-42", "email": "ada@example.com", "tier": "gold"}, "data": {"points": 120}}"#;
        let events = parse_body(body, "msg_1").unwrap();
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event.source, "acme.webhook");
        assert_eq!(event.event_type, "points.earned");
        assert_eq!(event.event_name, None);
        assert_eq!(
            event.identities,
            vec![("member_id".to_string(), "m-42".to_string()), ("email".to_string(), "ada@example.com".to_string())]
        );
        assert_eq!(event.attributes, r#"{"points":120}"#);
        assert_eq!(event.user_attributes, r#"{"tier":"gold"}"#);
        assert_eq!(event.environment.as_deref(), Some("production"));
        assert_eq!(event.message_id.as_deref(), Some("evt_1"));
        assert_eq!(event.timestamp_ms, Some(1_772_366_400_500));
        assert_eq!(event.extra, r#"{"program":"acme-rewards","webhookId":"msg_1"}"#);
        assert_eq!(serde_json::from_str::<Value>(&event.raw).unwrap()["member"]["tier"], "gold");
    }

    #[test]
    fn an_array_gives_one_event_each_in_order() {
        let body = br#"[
            {"type": "reward.redeemed", "id": "evt_1", "timestamp": 1772366400000, "environment": "test",
             "member": {"email": "ada@example.com"}},
            {"type": "member.updated", "id": "evt_2", "member": {"id": 42}, "data": null}]"#;
        let events = parse_body(body, "msg_1").unwrap();
        let ids: Vec<_> = events.iter().map(|e| e.message_id.clone().unwrap()).collect();
        assert_eq!(ids, ["evt_1", "evt_2"]);
        assert_eq!(events[0].timestamp_ms, Some(1_772_366_400_000));
        assert_eq!(events[0].environment.as_deref(), Some("development"));
        assert_eq!(events[0].attributes, "{}");
        assert_eq!(events[1].identities, vec![("member_id".to_string(), "42".to_string())]);
        assert_eq!(events[1].environment, None);
        assert_eq!(events[1].timestamp_ms, None);
    }

    #[test]
    fn every_problem_is_reported_with_its_pointer() {
        let body = br#"[
            {"type": "points.earned", "id": "evt_1", "member": {"id": "m-1"}},
            {"type": "points.lost", "timestamp": "yesterday", "environment": "staging", "data": [1],
             "member": {"id": "", "email": null}},
            {"type": "member.updated", "id": "evt_3", "member": {"tier": "gold"}},
            {"id": "evt_4"},
            7]"#;
        let problems: Vec<_> = pointers(parse_body(body, "msg_1").unwrap_err()).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            problems,
            [
                "/1/type",
                "/1/id",
                "/1/timestamp",
                "/1/environment",
                "/1/data",
                "/1/member/id",
                "/2/member",
                "/3/type",
                "/3/member",
                "/4"
            ]
        );
    }

    #[test]
    fn a_body_that_is_not_an_acme_event_is_invalid_input() {
        let problems = pointers(parse_body(b"{\"type\": ", "msg_1").unwrap_err());
        assert_eq!(problems[0].0, "");
        assert!(problems[0].1.starts_with("the body is not valid JSON"), "{problems:?}");
        assert_eq!(
            pointers(parse_body(b"[]", "msg_1").unwrap_err()),
            [(String::new(), "the body is an empty array: it holds no Acme event".to_string())]
        );
        assert_eq!(
            pointers(parse_body(br#"{"type": "points.earned", "id": "evt_1"}"#, "msg_1").unwrap_err()),
            [("/member".to_string(), "member is required: an object with the member's id and email".to_string())]
        );
    }
}
