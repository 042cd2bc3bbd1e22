//! The inbound side: Antavo's outgoing webhooks, verified and normalized. [`receive`] handles one HTTP
//! request; [`describe_inbound`] says what it produces.
//!
//! **Who may send.** A request that carried the connection's inbound token (`Authorization: Bearer <token>`,
//! checked by the host: the legacy Webhooks module's "authentication header", or a Trusted site with that
//! header) is Antavo's. Any other must be signed with Escher the way Antavo signs (the 2019 PHP SDK: "webhook
//! calls can be verified with Escher using the same key/secret"): `ANTAVO-HMAC-SHA256` in `Authorization`,
//! `Date`, scope `<environment>/api/antavo_request`, the connection's `apiKey`/`apiSecret`, `date;host`
//! signed, within 300 s of the time of receipt, over the path Antavo posted to (`webhookPath`, default
//! `/v1/inbound/antavo`, plus the path below the connection's route), the query and the exact body. A
//! signed request seen before is refused as a replay (the connection's cache remembers signatures for twice
//! the clock skew). A refusal is `Unauthorized`: the host answers 401 and stores nothing.
//!
//! **What is sent.** Antavo's webhook payloads are configured per Workflow node (no fixed envelope), so the
//! connector reads the shape of an Antavo event, which is what such a node is set up to post: one object, an
//! array of them, or `{"events": [...]}`, as JSON or form-urlencoded (`data[points]=10`):
//!
//! ```json
//! {"id": "evt-1", "action": "point_add", "customer": {"id": "c-1", "email": "ada@example.com", "first_name": "Ada"},
//!  "data": {"points": 100}, "timestamp": "2024-01-15T10:30:00Z", "account": "default"}
//! ```
//!
//! `customer` is the customer's id or its object (`id`, or `_id`, and profile fields). Each event becomes an
//! [`InboundEvent`]: type `profile_change` for `profile`, `opt_in` and `opt_out`, else `loyalty_event`; the
//! action as the event name; identities `customer_id` and `email`; `data` as the attributes; the customer's
//! profile fields (and, for a profile change, the changed fields of `data`) as the user attributes; `id` (or
//! `event_id`) as the message id; `action` and `account` as extra fields. An empty body (a delivery test)
//! carries no events.

use crate::config::Config;
use crate::error::{Error, FieldError};
use crate::escher::{Profile, Request, Verifier};
use crate::host::{Host, Level};
use crate::input::{kind, pointer};
use crate::time;
use serde_json::{Map, Value, json};

/// [`InboundEvent::source`] of every event.
pub const SOURCE: &str = "antavo.webhook";
/// The event type of a loyalty action (points, checkouts, rewards, custom actions).
pub const LOYALTY_EVENT: &str = "loyalty_event";
/// The event type of the actions that create, change and anonymise a member.
pub const PROFILE_CHANGE: &str = "profile_change";
/// The actions of a [`PROFILE_CHANGE`].
pub const PROFILE_ACTIONS: [&str; 3] = ["profile", "opt_in", "opt_out"];
/// The identities an event carries.
pub const IDENTITIES: [&str; 2] = ["customer_id", "email"];
/// How far a webhook's `Date` may be from the time of receipt (Escher's libraries' default).
pub const CLOCK_SKEW_SECONDS: i64 = 300;
/// Customer fields that are not user attributes.
const NOT_ATTRIBUTES: [&str; 4] = ["id", "_id", "customer_id", "events"];

/// What the inbound side produces (mirrors the WIT `inbound-info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundInfo {
    pub event_types: Vec<String>,
    pub identities: Vec<String>,
    pub public_requests: Vec<String>,
    pub verifies_requests: bool,
}

/// Antavo sends nothing without credentials; every request is verified (signature or the host's token).
pub fn describe_inbound() -> InboundInfo {
    InboundInfo {
        event_types: vec![LOYALTY_EVENT.into(), PROFILE_CHANGE.into()],
        identities: IDENTITIES.iter().map(|i| i.to_string()).collect(),
        public_requests: vec![],
        verifies_requests: true,
    }
}

/// An HTTP request as flowhost received it (mirrors the WIT `request`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InboundRequest {
    pub method: String,
    /// The path below the connection's route: empty, or e.g. `/points`.
    pub path: String,
    pub query: String,
    /// Names in lower case; `authorization` is there when it was not the connection's token.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// True when the request carried the connection's inbound token.
    pub authenticated: bool,
    pub received_at_ms: i64,
}

/// The answer to give (mirrors the WIT `response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// One event received, normalized (mirrors the WIT `inbound-event`).
#[derive(Debug, Clone, PartialEq)]
pub struct InboundEvent {
    pub source: String,
    /// [`LOYALTY_EVENT`] or [`PROFILE_CHANGE`].
    pub event_type: String,
    /// The Antavo action, e.g. `point_add`.
    pub event_name: Option<String>,
    pub identities: Vec<(String, String)>,
    /// The event's `data`.
    pub attributes: Map<String, Value>,
    /// The customer's profile fields.
    pub user_attributes: Map<String, Value>,
    pub message_id: Option<String>,
    pub timestamp_ms: Option<i64>,
    /// `action` and `account`.
    pub extra: Map<String, Value>,
    pub raw: Value,
}

impl InboundEvent {
    pub fn identity(&self, name: &str) -> Option<&str> {
        self.identities.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

/// What [`receive`] made of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub events: Vec<InboundEvent>,
    pub message_id: Option<String>,
    pub response: InboundResponse,
}

fn header<'a>(request: &'a InboundRequest, name: &str) -> Option<&'a str> {
    request.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Verifies a request that did not carry the connection's token: Escher, Antavo's profile, the connection's
/// key and secret, and not seen before.
pub fn verify(host: &mut dyn Host, config: &Config, request: &InboundRequest) -> Result<(), Error> {
    let Some(credentials) = &config.api else {
        return Err(Error::Unauthorized(
            "the request carries neither the connection's inbound token nor a signature the connection can check: \
             give the connection apiKey and apiSecret (Antavo signs webhooks with them) or an inbound token"
                .into(),
        ));
    };
    let profile = Profile::antavo();
    let scope = config.scope();
    let verifier = Verifier { profile: &profile, scope: &scope, clock_skew_seconds: CLOCK_SKEW_SECONDS };
    let path = format!("{}{}", config.webhook_path, request.path);
    let signed = Request {
        method: &request.method,
        path: &path,
        query: &request.query,
        headers: &request.headers,
        body: &request.body,
    };
    verifier
        .verify(&signed, request.received_at_ms.div_euclid(1000), |key| {
            (key == credentials.key).then(|| credentials.secret.clone())
        })
        .map_err(|e| Error::Unauthorized(format!("Antavo webhook refused: {e} (Escher error {})", e.code())))?;
    // The signature is unique to this request: a second arrival within the skew window is a replay.
    let signature = header(request, "authorization").and_then(|a| a.rsplit_once("Signature=")).map(|(_, s)| s.trim());
    if let Some(signature) = signature {
        let key = format!("webhook-signature/{signature}");
        if host.cache_get(&key).is_some() {
            return Err(Error::Unauthorized(
                "Antavo webhook refused: this signed request was already received (a replay)".into(),
            ));
        }
        host.cache_set(&key, "1", (2 * CLOCK_SKEW_SECONDS) as u32);
    }
    Ok(())
}

/// Receives one request: verifies it (unless it carried the connection's token), then parses its events.
pub fn receive(host: &mut dyn Host, connection: &Value, request: &InboundRequest) -> Result<Received, Error> {
    if !matches!(request.method.to_ascii_uppercase().as_str(), "POST" | "PUT") {
        return Err(Error::invalid_input("", format!("Antavo posts webhooks (POST or PUT), not {}", request.method)));
    }
    let config = Config::parse(connection)?;
    if !request.authenticated {
        verify(host, &config, request)?;
    }
    let events = parse(request)?;
    host.log(Level::Info, &format!("received {} Antavo event(s)", events.len()));
    let message_id = match &events[..] {
        [only] => only.message_id.clone(),
        _ => None,
    };
    let body = json!({"received": events.len()}).to_string().into_bytes();
    let response =
        InboundResponse { status: 200, headers: vec![("content-type".into(), "application/json".into())], body };
    Ok(Received { events, message_id, response })
}

/// Parses the events of a request body (JSON, or form-urlencoded when the content type says so).
pub fn parse(request: &InboundRequest) -> Result<Vec<InboundEvent>, Error> {
    if request.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let form =
        header(request, "content-type").is_some_and(|t| t.to_ascii_lowercase().contains("x-www-form-urlencoded"));
    let value = if form {
        form_to_json(&request.body)
    } else {
        serde_json::from_slice(&request.body)
            .map_err(|e| Error::invalid_input("", format!("the body is not JSON (nor form-urlencoded): {e}")))?
    };
    let mut errors = Vec::new();
    let events: Vec<InboundEvent> = match &value {
        Value::Array(items) => {
            items.iter().enumerate().filter_map(|(i, item)| parse_event(item, &format!("/{i}"), &mut errors)).collect()
        }
        Value::Object(o) if o.get("events").is_some() && o.get("action").is_none() => match o.get("events") {
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| parse_event(item, &format!("/events/{i}"), &mut errors))
                .collect(),
            Some(other) => {
                return Err(Error::invalid_input("/events", format!("events must be an array, not {}", kind(other))));
            }
            None => Vec::new(),
        },
        Value::Object(_) => parse_event(&value, "", &mut errors).into_iter().collect(),
        other => {
            return Err(Error::invalid_input(
                "",
                format!("the body must be an Antavo event or a list of them, not {}", kind(other)),
            ));
        }
    };
    if !errors.is_empty() {
        return Err(Error::InvalidInput(errors));
    }
    if events.is_empty() {
        return Err(Error::invalid_input("", "the body holds no Antavo event"));
    }
    Ok(events)
}

/// `a=1&data[points]=10&customer[id]=c-1` as `{"a": "1", "data": {"points": "10"}, "customer": {"id": "c-1"}}`.
fn form_to_json(body: &[u8]) -> Value {
    let decode = |text: &str| {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                },
                byte => out.push(byte),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let mut root = Map::new();
    for pair in String::from_utf8_lossy(body).split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (name, value) = (decode(name), Value::String(decode(value)));
        match name.split_once('[').and_then(|(outer, rest)| rest.strip_suffix(']').map(|inner| (outer, inner))) {
            Some((outer, inner)) => {
                let entry = root.entry(outer.to_string()).or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(map) = entry {
                    map.insert(inner.to_string(), value);
                }
            }
            None => {
                root.insert(name, value);
            }
        }
    }
    Value::Object(root)
}

fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Unix seconds or milliseconds (by magnitude), or a date text, as milliseconds.
fn timestamp_ms(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => {
            let n = n.as_f64()?;
            Some(if n.abs() >= 1e11 { n as i64 } else { (n * 1000.0) as i64 })
        }
        Value::String(s) => time::parse_date(s)
            .map(|s| s * 1000)
            .or_else(|| s.trim().parse::<i64>().ok().map(|n| if n.abs() >= 100_000_000_000 { n } else { n * 1000 })),
        _ => None,
    }
}

fn parse_event(value: &Value, base: &str, errors: &mut Vec<FieldError>) -> Option<InboundEvent> {
    let Some(event) = value.as_object() else {
        errors.push(FieldError::new(base, format!("an Antavo event is an object, not {}", kind(value))));
        return None;
    };
    let before = errors.len();
    let at = |name: &str| format!("{base}/{}", pointer(name));
    let action = match event.get("action") {
        Some(Value::String(a)) if !a.trim().is_empty() => Some(a.trim().to_string()),
        Some(other) => {
            errors
                .push(FieldError::new(at("action"), format!("action must be a non-empty string, not {}", kind(other))));
            None
        }
        None => {
            errors.push(FieldError::new(at("action"), "an Antavo event needs its action (e.g. point_add)"));
            None
        }
    };
    let (customer_id, customer) = match event.get("customer") {
        None | Some(Value::Null) => (None, Map::new()),
        Some(Value::Object(c)) => {
            let id = ["id", "_id", "customer_id"].iter().find_map(|k| c.get(*k).and_then(id_text));
            if id.is_none() {
                errors.push(FieldError::new(at("customer"), "the customer object has no id (id or _id)"));
            }
            (id, c.clone())
        }
        Some(other) => match id_text(other) {
            Some(id) => (Some(id), Map::new()),
            None => {
                errors.push(FieldError::new(
                    at("customer"),
                    format!("customer must be an id or an object, not {}", kind(other)),
                ));
                (None, Map::new())
            }
        },
    };
    let data = match event.get("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(d)) => d.clone(),
        Some(other) => {
            errors.push(FieldError::new(at("data"), format!("data must be an object, not {}", kind(other))));
            Map::new()
        }
    };
    if errors.len() > before {
        return None;
    }
    let action = action?;
    let profile_change = PROFILE_ACTIONS.contains(&action.as_str());
    let mut user_attributes: Map<String, Value> = customer
        .iter()
        .filter(|(k, _)| !NOT_ATTRIBUTES.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if profile_change {
        for (name, value) in &data {
            user_attributes.insert(name.clone(), value.clone());
        }
    }
    let mut identities = Vec::new();
    if let Some(id) = &customer_id {
        identities.push(("customer_id".to_string(), id.clone()));
    }
    if let Some(email) = user_attributes.get("email").and_then(Value::as_str).filter(|e| !e.trim().is_empty()) {
        identities.push(("email".to_string(), email.to_string()));
    }
    let message_id = ["id", "event_id"].iter().find_map(|k| event.get(*k).and_then(id_text));
    let timestamp_ms = ["timestamp", "created_at", "date"].iter().find_map(|k| event.get(*k).and_then(timestamp_ms));
    let mut extra = Map::new();
    extra.insert("action".into(), Value::String(action.clone()));
    extra.insert("account".into(), event.get("account").cloned().unwrap_or(Value::Null));
    Some(InboundEvent {
        source: SOURCE.into(),
        event_type: if profile_change { PROFILE_CHANGE } else { LOYALTY_EVENT }.into(),
        event_name: Some(action),
        identities,
        attributes: data,
        user_attributes,
        message_id,
        timestamp_ms,
        extra,
        raw: value.clone(),
    })
}
