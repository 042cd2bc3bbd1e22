//! The inbound side: what mParticle posts to a partner (flowhost), parsed and normalized, and the answers it
//! expects. [`receive`] handles one HTTP request; [`describe_inbound`] says what it produces.
//!
//! - **Webhook output**: mParticle's outbound batch JSON (the Events API batch, but `user_identities` is an
//!   array of `{identity_type, identity, timestamp_unixtime_ms}` and mParticle adds `batch_id`,
//!   `message_id`, …). With "send as batch" the body is an array of batches. The outbound format is loosely
//!   documented, so unknown fields are ignored and identities are also accepted in the Events API object
//!   form (`{"customer_id": "…"}`). Answered `202`.
//! - **Firehose**: an object with `type` (`event_processing_request`, `module_registration_request`,
//!   `audience_*_request`, `dsr_processing_request`), `id` and `firehose_version`. Firehose names differ from
//!   the Events API (`customer` for `customer_id`, `product_action` for a commerce event, `name` for
//!   `event_name`, …); [`parse`] normalizes them. mParticle also sends empty `event_processing_request`s to
//!   verify the endpoint: they parse to no events and still get a normal [`response`]. Answered `200` with
//!   the matching `*_response`.
//!
//! Parsing is strict only where the body is unusable (not a JSON object or array, `events` not an array, an
//! event without a string type, a non-object `data` or `attributes`, an identity without a string type or
//! value), and every error names the offending part with a JSON pointer.
//!
//! mParticle signs nothing: the host checks the connection's inbound token. Without it, only the requests
//! mParticle sends before a token exists are answered ([`PUBLIC_REQUESTS`]); nothing else is.

use crate::batch::ID_NAMESPACE;
use crate::config::Environment;
use crate::error::{Error, FieldError};
use crate::input::{kind, pointer};
use crate::manifest::CONNECTOR_VERSION;
use crate::validate::{IDENTITY_TYPES, event_type_names};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// [`InboundEvent::source`] of events that came in mParticle's Webhook output.
pub const WEBHOOK_SOURCE: &str = "mparticle.webhook";
/// [`InboundEvent::source`] of events that came in a Firehose `event_processing_request`.
pub const FIREHOSE_SOURCE: &str = "mparticle.firehose";
/// The Firehose version flowhost answers with when a request does not say its own (the version of the
/// Firehose SDK samples flowhost is tested against).
pub const DEFAULT_FIREHOSE_VERSION: &str = "3.2.0";

/// The requests mParticle sends without the connection's token, as [`InboundInfo::public_requests`] lists
/// them: Firehose's registration endpoint must not require auth, and its periodic verification requests are
/// `event_processing_request`s without events.
pub const PUBLIC_REQUESTS: [&str; 2] =
    ["module_registration_request", "event_processing_request without events (verification)"];

/// One event received, normalized (mirrors the WIT `inbound-event`): what an inbound flow's `trigger` sees.
///
/// Names follow mParticle's Events API whatever format the event arrived in, so that one flow matches the
/// same event from the Webhook output and from Firehose.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundEvent {
    /// [`WEBHOOK_SOURCE`] or [`FIREHOSE_SOURCE`].
    pub source: String,
    /// The Events API event type: `custom_event`, `commerce_event`, `screen_view`, `session_start`,
    /// `session_end`, `user_attribute_change`, `user_identity_change`, `crash_report`, …; a type with no
    /// Events API counterpart is kept as received (see [`event_types`]).
    pub event_type: String,
    /// The name of a custom event or screen view.
    pub event_name: Option<String>,
    /// The user's identities as (Events API name, value), sorted by name: `customer_id`, `email`,
    /// `other_id_2`, …; names with no Events API counterpart are kept as received.
    pub identities: Vec<(String, String)>,
    /// The event's custom attributes.
    pub attributes: Map<String, Value>,
    /// The user's attributes (values are strings, or lists of strings for list attributes).
    pub user_attributes: Map<String, Value>,
    /// The mParticle environment the data comes from, where the request says (see [`parse`]).
    pub environment: Option<Environment>,
    /// The event's own id when it has one (Firehose `events[].id`; Webhook `message_id`, else
    /// `data.source_message_id`, else `data.event_id`).
    pub message_id: Option<String>,
    /// When the event happened, in milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// The mParticle fields the normalized form does not carry, which flows may read at the top level of
    /// `trigger`: `mpid` (the mParticle user id, as a string whether it arrived as a number or a string: it is
    /// an int64 that JavaScript-based consumers could not hold exactly as a number), `sourceEventType` (the
    /// event type exactly as received, e.g. Firehose `product_action` for a `commerce_event`) and
    /// `customEventType` (for custom events: `navigation`, `transaction`, `other`, …); `null` when absent.
    pub extra: Map<String, Value>,
    /// The event object as received.
    pub raw: Value,
}

impl InboundEvent {
    /// The value of one identity, by Events API name.
    pub fn identity(&self, name: &str) -> Option<&str> {
        self.identities.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

/// An HTTP request as flowhost received it (mirrors the WIT `request`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InboundRequest {
    /// `POST`, usually.
    pub method: String,
    /// The path below the connection's route: empty, or e.g. `/registration`.
    pub path: String,
    /// The query string without the `?`.
    pub query: String,
    /// The headers as received (names in lower case), the authorization header removed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// True when the request carried the connection's inbound token.
    pub authenticated: bool,
    /// When the host received the request, in milliseconds since the Unix epoch.
    pub received_at_ms: i64,
}

/// The answer to give the sender (mirrors the WIT `response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl InboundResponse {
    /// An answer with a JSON body.
    pub fn json(status: u16, body: &Value) -> Self {
        InboundResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }
}

/// What [`receive`] made of a request (mirrors the WIT `received`).
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The normalized events, in body order; empty for a registration or a verification request.
    pub events: Vec<InboundEvent>,
    /// The sender's id for the request, for de-duplication of re-sent requests: the Firehose request id, or
    /// the Webhook batch ids joined with `,` (none when no batch has one).
    pub message_id: Option<String>,
    /// The answer to give.
    pub response: InboundResponse,
}

/// What the inbound side produces (mirrors the WIT `inbound-info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundInfo {
    pub event_types: Vec<String>,
    pub identities: Vec<String>,
    pub public_requests: Vec<String>,
}

/// Describes the inbound side: the event types and identities [`receive`] produces (Events API names) and
/// the [`PUBLIC_REQUESTS`].
pub fn describe_inbound() -> InboundInfo {
    InboundInfo {
        event_types: event_types().into_iter().map(str::to_string).collect(),
        identities: IDENTITY_TYPES.iter().map(|name| name.to_string()).collect(),
        public_requests: PUBLIC_REQUESTS.iter().map(|name| name.to_string()).collect(),
    }
}

/// The event types [`parse`] produces: every Events API event type (a Webhook batch carries them as they
/// are), then the Firehose types that have no Events API counterpart and are kept as received
/// (`privacy_setting_change`, `attribution`). A type mParticle adds later is passed through as received too,
/// but is not listed until the connector knows it.
pub fn event_types() -> Vec<&'static str> {
    let mut types: Vec<&'static str> = event_type_names().collect();
    for firehose in FIREHOSE_EVENT_TYPES {
        let normalized = events_api_event_type(firehose);
        if !types.contains(&normalized) {
            types.push(normalized);
        }
    }
    types
}

/// Handles one request mParticle sent: Webhook output (answered `202` with `{"received": <events>}`) or a
/// Firehose request (answered `200` with its `*_response`, see [`response`]).
///
/// Only `POST` is accepted; the body must be a JSON Webhook batch (or array of batches) or Firehose request,
/// else `InvalidInput` naming the offending part. A request without the connection's token
/// (`authenticated == false`) is answered only when it is one of the [`PUBLIC_REQUESTS`] (it carries no
/// events); anything else, malformed bodies included, is `Unauthorized`.
///
/// `connection` is not read: mParticle signs nothing, and the host has checked the token.
pub fn receive(_connection: &Value, request: &InboundRequest) -> Result<Received, Error> {
    if !request.method.eq_ignore_ascii_case("POST") {
        return Err(Error::invalid_input(
            "",
            format!(
                "method {:?} is not accepted: mParticle sends its Webhook output and Firehose requests with POST",
                request.method
            ),
        ));
    }
    let parsed = read_body(&request.body);
    if !request.authenticated {
        let refused = match &parsed {
            Ok(message) if message.is_public() => None,
            Ok(message) => Some(message.description()),
            Err(_) => Some("a body that is not a well-formed mParticle request".to_string()),
        };
        if let Some(what) = refused {
            return Err(Error::Unauthorized(format!(
                "a token is required for {what}: set the connection's inbound token as the Webhook output's \
                 Authorization header, or register it as the Firehose token; without it only a \
                 module_registration_request and an event_processing_request without events (verification) are \
                 answered"
            )));
        }
    }
    let message = parsed?;
    let answer = match response(&message, request.received_at_ms) {
        Some(answer) => InboundResponse::json(200, &answer),
        None => InboundResponse::json(202, &json!({"received": message.events().len()})),
    };
    let message_id = message.external_id();
    Ok(Received { events: message.into_events(), message_id, response: answer })
}

/// The body as a [`Message`]: not empty, JSON, and one of mParticle's formats.
fn read_body(body: &[u8]) -> Result<Message, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid_input(
            "",
            "the body is empty: mParticle sends a JSON Webhook batch (or an array of them) or a Firehose request",
        ));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| Error::invalid_input("", format!("the body is not JSON: {e}")))?;
    parse(&value).map_err(|e| Error::InvalidInput(vec![e]))
}

/// What a body is, once parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Webhook output: one or more batches.
    Webhook {
        /// The `batch_id` of each batch that has one, in body order.
        batch_ids: Vec<String>,
        /// The events of all batches, in body order.
        events: Vec<InboundEvent>,
    },
    /// Firehose event_processing_request; `events` empty for a verification request.
    FirehoseEvents {
        /// The request id.
        id: String,
        /// The request's `firehose_version`, echoed in the response.
        firehose_version: Option<String>,
        /// The normalized events.
        events: Vec<InboundEvent>,
    },
    /// Any other Firehose request (module registration, audience..., dsr...): answered, carries no events.
    FirehoseOther {
        /// The request id.
        id: String,
        /// The request's `type`, e.g. `module_registration_request`.
        request_type: String,
        /// The request's `firehose_version`, echoed in the response.
        firehose_version: Option<String>,
    },
}

impl Message {
    /// [`WEBHOOK_SOURCE`] or [`FIREHOSE_SOURCE`].
    pub fn source(&self) -> &'static str {
        match self {
            Message::Webhook { .. } => WEBHOOK_SOURCE,
            Message::FirehoseEvents { .. } | Message::FirehoseOther { .. } => FIREHOSE_SOURCE,
        }
    }

    /// The sender's id for de-duplication: the firehose request id, or the webhook batch id(s) joined when present.
    pub fn external_id(&self) -> Option<String> {
        match self {
            Message::Webhook { batch_ids, .. } if batch_ids.is_empty() => None,
            Message::Webhook { batch_ids, .. } => Some(batch_ids.join(",")),
            Message::FirehoseEvents { id, .. } | Message::FirehoseOther { id, .. } => Some(id.clone()),
        }
    }

    /// The normalized events; empty for Firehose requests that carry none.
    pub fn events(&self) -> &[InboundEvent] {
        match self {
            Message::Webhook { events, .. } | Message::FirehoseEvents { events, .. } => events,
            Message::FirehoseOther { .. } => &[],
        }
    }

    /// The normalized events, taken.
    pub fn into_events(self) -> Vec<InboundEvent> {
        match self {
            Message::Webhook { events, .. } | Message::FirehoseEvents { events, .. } => events,
            Message::FirehoseOther { .. } => Vec::new(),
        }
    }

    /// The Firehose request type (`event_processing_request`, …); `None` for Webhook output.
    pub fn request_type(&self) -> Option<&str> {
        match self {
            Message::Webhook { .. } => None,
            Message::FirehoseEvents { .. } => Some(EVENT_PROCESSING_REQUEST),
            Message::FirehoseOther { request_type, .. } => Some(request_type),
        }
    }

    /// True for the requests answered without a token: a module registration, or an event processing request
    /// without events (a verification probe).
    pub fn is_public(&self) -> bool {
        match self {
            Message::FirehoseEvents { events, .. } => events.is_empty(),
            Message::FirehoseOther { request_type, .. } => request_type == MODULE_REGISTRATION_REQUEST,
            Message::Webhook { .. } => false,
        }
    }

    /// What the message is, in words, for messages.
    fn description(&self) -> String {
        match self {
            Message::Webhook { events, .. } => format!("Webhook output ({} event(s))", events.len()),
            Message::FirehoseEvents { events, .. } => {
                format!("an {EVENT_PROCESSING_REQUEST} with {} event(s)", events.len())
            }
            Message::FirehoseOther { request_type, .. } => format!("a {request_type}"),
        }
    }
}

const EVENT_PROCESSING_REQUEST: &str = "event_processing_request";
const MODULE_REGISTRATION_REQUEST: &str = "module_registration_request";

/// Top-level keys of mParticle's outbound batch, one of which a Webhook batch must have: an object with none
/// of them is something else posted to the wrong URL, and accepting it as an empty batch would hide that.
const WEBHOOK_BATCH_KEYS: &[&str] = &[
    "events",
    "batch_id",
    "mpid",
    "user_identities",
    "user_attributes",
    "source_request_id",
    "timestamp_unixtime_ms",
    "schema_version",
    "environment",
];

/// Parses a body (already JSON): detects the format, validates the parts flowhost relies on, normalizes the
/// events. The error names the offending part by JSON pointer into the body (empty for the whole body).
///
/// An object with a `type` is a Firehose request (its `type` must end in `_request` and it needs a string
/// `id`); any other object is one Webhook batch, an array is a list of Webhook batches.
///
/// The environment: a Webhook batch says it in `environment` (`development` or `production`; another value
/// is not mapped). A Firehose request has no such field (the SDK samples carry none); its
/// `runtime_environment` may carry `is_debug` (older schema: `debug`), which the Firehose SDK describes as
/// "the application is running in debug mode", i.e. the development environment: `true` maps to
/// `development`, an explicit `false` to `production`, and absence (the SDK leaves `is_debug` out when it is
/// false) to no environment.
pub fn parse(body: &Value) -> Result<Message, FieldError> {
    match body {
        Value::Object(object) if object.contains_key("type") => parse_firehose(object),
        Value::Object(object) => {
            let mut parsed = WebhookBatches::default();
            parsed.add(object, "")?;
            Ok(parsed.into_message())
        }
        Value::Array(batches) => {
            let mut parsed = WebhookBatches::default();
            for (i, batch) in batches.iter().enumerate() {
                let pointer = format!("/{i}");
                let Value::Object(object) = batch else {
                    return Err(FieldError::new(
                        pointer,
                        format!("must be an object (a Webhook batch), got {}", kind(batch)),
                    ));
                };
                parsed.add(object, &pointer)?;
            }
            Ok(parsed.into_message())
        }
        other => Err(FieldError::new(
            "",
            format!(
                "expected a JSON object (a Webhook batch or a Firehose request) or an array of Webhook batches, got {}",
                kind(other)
            ),
        )),
    }
}

/// The answer mParticle expects, for Firehose requests: `{"type": "<request type with _request ->
/// _response>", "id": <a GUID>, "timestamp_ms": <received_at_ms>, "firehose_version": <the request's version
/// or [`DEFAULT_FIREHOSE_VERSION`]>}`, and for a `module_registration_request` flowhost's registration on top
/// (see [`registration`]). `None` for Webhook output, which gets a plain 202.
///
/// Firehose wants a GUID per response. It is a v5 UUID of the request id and the time the request was
/// received, not a random one: the core has no random source (nor a clock, hence the host's receipt time),
/// and the id still differs from the request's and from a re-sent request's answer.
pub fn response(message: &Message, received_at_ms: i64) -> Option<Value> {
    let (id, request_type, firehose_version) = match message {
        Message::Webhook { .. } => return None,
        Message::FirehoseEvents { id, firehose_version, .. } => (id, EVENT_PROCESSING_REQUEST, firehose_version),
        Message::FirehoseOther { id, request_type, firehose_version } => (id, request_type.as_str(), firehose_version),
    };
    let stem = request_type.strip_suffix("_request").unwrap_or(request_type);
    let response_id = uuid::Uuid::new_v5(&ID_NAMESPACE, format!("firehose-response/{id}/{received_at_ms}").as_bytes());
    let mut answer = json!({
        "type": format!("{stem}_response"),
        "id": response_id.hyphenated().to_string(),
        "timestamp_ms": received_at_ms,
        "firehose_version": firehose_version.as_deref().unwrap_or(DEFAULT_FIREHOSE_VERSION),
    });
    if request_type == MODULE_REGISTRATION_REQUEST
        && let (Some(answer), Value::Object(fields)) = (answer.as_object_mut(), registration())
    {
        answer.extend(fields);
    }
    Some(answer)
}

/// flowhost's module registration: the fields of a `module_registration_response` that a partner fills.
///
/// It asks for every user identity, raw (unhashed), none required: the identity that names the loyalty
/// customer is chosen per connection, and a hashed one could not be matched to a customer. No account
/// settings are required, because the partner token authenticates mParticle and flows carry the rest.
pub fn registration() -> Value {
    let user_identities: Vec<Value> =
        firehose_user_identity_types().map(|t| json!({"type": t, "encoding": "raw", "required": false})).collect();
    json!({
        "name": "flowhost",
        "description": "flowhost runs flows for the events mParticle sends: each event can start an inbound flow \
                        that maps it to a loyalty event.",
        "version": CONNECTOR_VERSION,
        "permissions": {
            "user_identities": user_identities,
            "allow_user_attributes": true,
            "allow_access_mpid": true,
        },
        "event_processing_registration": {
            "account_settings": [],
            "supported_event_types": FIREHOSE_EVENT_TYPES,
            "supported_runtime_environments": FIREHOSE_RUNTIME_ENVIRONMENTS,
        },
    })
}

/// The Events API identity types that Firehose has no user identity type for.
const EVENTS_API_ONLY_IDENTITIES: [&str; 2] = ["alias", "facebook_custom_audience_id"];

/// Firehose user identity types (Firehose SDK 3.2 `UserIdentity.Type`): the Events API identity types under
/// their Firehose names, in the same order.
fn firehose_user_identity_types() -> impl Iterator<Item = String> {
    IDENTITY_TYPES.iter().filter(|name| !EVENTS_API_ONLY_IDENTITIES.contains(name)).map(|name| firehose_identity(name))
}

/// Firehose event types (Firehose SDK 3.2 `Event.Type`): flowhost accepts them all and lets flows choose.
const FIREHOSE_EVENT_TYPES: [&str; 16] = [
    "custom_event",
    "screen_view",
    "product_action",
    "promotion_action",
    "impression",
    "session_start",
    "session_end",
    "user_attribute_change",
    "user_identity_change",
    "error",
    "privacy_setting_change",
    "push_subscription",
    "push_message_receipt",
    "push_message_open",
    "application_state_transition",
    "attribution",
];

/// Firehose runtime environments (Firehose SDK 3.2 `RuntimeEnvironment.Type`); `unknown` covers server-side
/// feeds.
const FIREHOSE_RUNTIME_ENVIRONMENTS: [&str; 10] =
    ["unknown", "android", "ios", "tvos", "mobileweb", "roku", "xbox", "firetv", "alexa", "smarttv"];

fn parse_firehose(request: &Map<String, Value>) -> Result<Message, FieldError> {
    let request_type = match request.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(other) => {
            return Err(FieldError::new(
                "/type",
                format!("must be a string naming the Firehose request, got {}", kind(other)),
            ));
        }
        None => unreachable!("parse only calls parse_firehose for objects with a type"),
    };
    if !request_type.ends_with("_request") {
        return Err(FieldError::new(
            "/type",
            format!(
                "unknown message type {request_type:?}: flowhost answers Firehose requests (event_processing_request, \
                 module_registration_request, audience_*_request, dsr_processing_request)"
            ),
        ));
    }
    let id = match request.get("id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        Some(other) => {
            return Err(FieldError::new("/id", format!("must be a non-empty string, got {}", describe(other))));
        }
        None => return Err(FieldError::new("/id", "missing; every Firehose request has a string id")),
    };
    // Only echoed back: a version that is not a string is answered with flowhost's own.
    let firehose_version = request.get("firehose_version").and_then(Value::as_str).map(str::to_string);

    if request_type != EVENT_PROCESSING_REQUEST {
        return Ok(Message::FirehoseOther { id, request_type, firehose_version });
    }

    let mpid = mpid(request.get("mpid"), "/mpid")?;
    let identities = firehose_identities(request.get("user_identities"))?;
    let mut user_attributes = object_or_empty(request.get("user_attributes"), "/user_attributes")?;
    // Firehose sends list attributes apart from the scalar ones; flows see them together, as in the Events API.
    for (name, values) in object_or_empty(request.get("user_attribute_lists"), "/user_attribute_lists")? {
        user_attributes.entry(name).or_insert(values);
    }
    let environment = firehose_environment(request.get("runtime_environment"));

    let events = match request.get("events") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(events)) => events.as_slice(),
        Some(other) => {
            return Err(FieldError::new("/events", format!("must be an array of events, got {}", kind(other))));
        }
    };
    let mut normalized = Vec::with_capacity(events.len());
    for (i, raw) in events.iter().enumerate() {
        let pointer = format!("/events/{i}");
        let Value::Object(event) = raw else {
            return Err(FieldError::new(pointer, format!("must be an object, got {}", kind(raw))));
        };
        let source_event_type = match event.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(other) => {
                return Err(FieldError::new(
                    format!("{pointer}/type"),
                    format!("must be a string, got {}", kind(other)),
                ));
            }
            None => {
                return Err(FieldError::new(
                    format!("{pointer}/type"),
                    "missing; every Firehose event needs a string type",
                ));
            }
        };
        let event_name = string(event.get("name"))
            .or_else(|| (source_event_type == "screen_view").then(|| string(event.get("screen_name"))).flatten());
        normalized.push(InboundEvent {
            source: FIREHOSE_SOURCE.to_string(),
            event_type: events_api_event_type(&source_event_type).to_string(),
            event_name,
            identities: identities.clone(),
            attributes: object_or_empty(event.get("attributes"), &format!("{pointer}/attributes"))?,
            user_attributes: user_attributes.clone(),
            environment,
            message_id: id_string(event.get("id")),
            timestamp_ms: event.get("timestamp_ms").and_then(Value::as_i64),
            extra: extra(mpid.as_deref(), source_event_type, string(event.get("custom_event_type"))),
            raw: raw.clone(),
        });
    }
    Ok(Message::FirehoseEvents { id, firehose_version, events: normalized })
}

/// The environment of a Firehose request, from `runtime_environment.is_debug` (or the older `debug`); see
/// [`parse`]. Not a boolean, or absent: unknown.
fn firehose_environment(runtime_environment: Option<&Value>) -> Option<Environment> {
    let runtime_environment = runtime_environment?.as_object()?;
    let debug = ["is_debug", "debug"].iter().find_map(|key| runtime_environment.get(*key).and_then(Value::as_bool))?;
    Some(if debug { Environment::Development } else { Environment::Production })
}

/// The environment of a Webhook batch: its `environment`, when it is `development` or `production`.
fn webhook_environment(environment: Option<&Value>) -> Option<Environment> {
    environment.and_then(Value::as_str).and_then(Environment::parse)
}

/// An event's [`InboundEvent::extra`].
fn extra(mpid: Option<&str>, source_event_type: String, custom_event_type: Option<String>) -> Map<String, Value> {
    let optional = |value: Option<String>| value.map_or(Value::Null, Value::String);
    Map::from_iter([
        ("mpid".to_string(), optional(mpid.map(str::to_string))),
        ("sourceEventType".to_string(), Value::String(source_event_type)),
        ("customEventType".to_string(), optional(custom_event_type)),
    ])
}

/// Webhook batches parsed so far.
#[derive(Default)]
struct WebhookBatches {
    batch_ids: Vec<String>,
    events: Vec<InboundEvent>,
}

impl WebhookBatches {
    /// Parses one batch; `at` is its JSON pointer in the body (empty when the body is the batch).
    fn add(&mut self, batch: &Map<String, Value>, at: &str) -> Result<(), FieldError> {
        if !WEBHOOK_BATCH_KEYS.iter().any(|key| batch.contains_key(*key)) {
            return Err(FieldError::new(
                at,
                format!(
                    "not an mParticle batch: it has none of {}; Firehose requests need a \"type\"",
                    WEBHOOK_BATCH_KEYS.join(", ")
                ),
            ));
        }
        if let Some(batch_id) = id_string(batch.get("batch_id")) {
            self.batch_ids.push(batch_id);
        }
        let mpid = mpid(batch.get("mpid"), &format!("{at}/mpid"))?;
        let identities = webhook_identities(batch.get("user_identities"), &format!("{at}/user_identities"))?;
        let user_attributes = object_or_empty(batch.get("user_attributes"), &format!("{at}/user_attributes"))?;
        let environment = webhook_environment(batch.get("environment"));
        let events = match batch.get("events") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(events)) => events.as_slice(),
            Some(other) => {
                return Err(FieldError::new(
                    format!("{at}/events"),
                    format!("must be an array of events, got {}", kind(other)),
                ));
            }
        };
        let no_data = Map::new();
        for (i, raw) in events.iter().enumerate() {
            let pointer = format!("{at}/events/{i}");
            let Value::Object(event) = raw else {
                return Err(FieldError::new(pointer, format!("must be an object, got {}", kind(raw))));
            };
            let source_event_type = match event.get("event_type") {
                Some(Value::String(t)) => t.clone(),
                Some(other) => {
                    return Err(FieldError::new(
                        format!("{pointer}/event_type"),
                        format!("must be a string, got {}", kind(other)),
                    ));
                }
                None => {
                    return Err(FieldError::new(
                        format!("{pointer}/event_type"),
                        "missing; every event needs a string event_type",
                    ));
                }
            };
            let data = match event.get("data") {
                None | Some(Value::Null) => &no_data,
                Some(Value::Object(data)) => data,
                Some(other) => {
                    return Err(FieldError::new(
                        format!("{pointer}/data"),
                        format!("must be an object, got {}", kind(other)),
                    ));
                }
            };
            // mParticle documents `message_id` per event without saying at which level; fall back to the
            // SDK's id, then to mParticle's server-side event id.
            let message_id = id_string(event.get("message_id"))
                .or_else(|| id_string(data.get("message_id")))
                .or_else(|| id_string(data.get("source_message_id")))
                .or_else(|| id_string(data.get("event_id")));
            // Commerce events may carry a screen_name too; only a screen view is named by it.
            let event_name = string(data.get("event_name"))
                .or_else(|| (source_event_type == "screen_view").then(|| string(data.get("screen_name"))).flatten());
            let timestamp_ms = ["timestamp_unixtime_ms", "event_start_unixtime_ms"]
                .iter()
                .find_map(|key| data.get(*key).and_then(Value::as_i64))
                .or_else(|| event.get("timestamp_unixtime_ms").and_then(Value::as_i64));
            self.events.push(InboundEvent {
                source: WEBHOOK_SOURCE.to_string(),
                event_type: events_api_event_type(&source_event_type).to_string(),
                event_name,
                identities: identities.clone(),
                attributes: object_or_empty(
                    data.get("custom_attributes"),
                    &format!("{pointer}/data/custom_attributes"),
                )?,
                user_attributes: user_attributes.clone(),
                environment,
                message_id,
                timestamp_ms,
                extra: extra(mpid.as_deref(), source_event_type, string(data.get("custom_event_type"))),
                raw: raw.clone(),
            });
        }
        Ok(())
    }

    fn into_message(self) -> Message {
        Message::Webhook { batch_ids: self.batch_ids, events: self.events }
    }
}

/// Firehose `user_identities`: `[{"type", "encoding", "value"}]`.
fn firehose_identities(value: Option<&Value>) -> Result<Vec<(String, String)>, FieldError> {
    let mut identities = BTreeMap::new();
    let entries = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(entries)) => entries,
        Some(other) => {
            return Err(FieldError::new(
                "/user_identities",
                format!("must be an array of {{type, encoding, value}}, got {}", kind(other)),
            ));
        }
    };
    for (i, entry) in entries.iter().enumerate() {
        let pointer = format!("/user_identities/{i}");
        let (name, value) = identity_entry(entry, &pointer, "type", "value")?;
        identities.insert(events_api_identity(name), value.to_string());
    }
    Ok(identities.into_iter().collect())
}

/// Webhook `user_identities`: the outbound array `[{"identity_type", "identity", …}]`, or the Events API
/// object `{"customer_id": "…"}`.
fn webhook_identities(value: Option<&Value>, at: &str) -> Result<Vec<(String, String)>, FieldError> {
    let mut identities = BTreeMap::new();
    match value {
        None | Some(Value::Null) => {}
        Some(Value::Array(entries)) => {
            for (i, entry) in entries.iter().enumerate() {
                let (name, value) = identity_entry(entry, &format!("{at}/{i}"), "identity_type", "identity")?;
                identities.insert(events_api_identity(name), value.to_string());
            }
        }
        Some(Value::Object(entries)) => {
            for (name, value) in entries {
                match value {
                    Value::String(value) => {
                        identities.insert(events_api_identity(name), value.clone());
                    }
                    // An identity set to null is an identity the batch does not have.
                    Value::Null => {}
                    other => {
                        return Err(FieldError::new(
                            pointer(at, name),
                            format!("must be a string, got {}", kind(other)),
                        ));
                    }
                }
            }
        }
        Some(other) => {
            return Err(FieldError::new(
                at,
                format!(
                    "must be an array of {{identity_type, identity}} or an object of identity values, got {}",
                    kind(other)
                ),
            ));
        }
    }
    Ok(identities.into_iter().collect())
}

/// One identity entry of an array: its type and value, both required strings.
fn identity_entry<'a>(
    entry: &'a Value,
    pointer: &str,
    type_key: &str,
    value_key: &str,
) -> Result<(&'a str, &'a str), FieldError> {
    let Value::Object(entry) = entry else {
        return Err(FieldError::new(pointer, format!("must be an object, got {}", kind(entry))));
    };
    let field = |key: &str| match entry.get(key) {
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(other) => {
            Err(FieldError::new(format!("{pointer}/{key}"), format!("must be a string, got {}", kind(other))))
        }
        None => Err(FieldError::new(
            format!("{pointer}/{key}"),
            format!("missing; every identity needs a string {type_key} and {value_key}"),
        )),
    };
    Ok((field(type_key)?, field(value_key)?))
}

/// The Events API name of an identity type: Firehose says `customer` and `other2`…`other10` where the Events
/// API says `customer_id` and `other_id_2`…`other_id_10`; other names are the same in both or kept as received.
fn events_api_identity(name: &str) -> String {
    if name == "customer" {
        return "customer_id".to_string();
    }
    if let Some(n) = name.strip_prefix("other")
        && let Ok(n @ 2..=10) = n.parse::<u8>()
    {
        return format!("other_id_{n}");
    }
    name.to_string()
}

/// The Firehose name of an Events API identity type: the inverse of [`events_api_identity`].
fn firehose_identity(name: &str) -> String {
    if name == "customer_id" {
        return "customer".to_string();
    }
    if let Some(n) = name.strip_prefix("other_id_")
        && let Ok(n @ 2..=10) = n.parse::<u8>()
    {
        return format!("other{n}");
    }
    name.to_string()
}

/// The Events API event type for a received type. Firehose splits commerce events into `product_action`,
/// `promotion_action` and `impression`, and names a few others differently; types with no Events API
/// counterpart (`privacy_setting_change`, `attribution`, …) are kept.
fn events_api_event_type(source: &str) -> &str {
    match source {
        "product_action" | "promotion_action" | "impression" => "commerce_event",
        "error" => "crash_report",
        "push_subscription" => "push_registration",
        "push_message_receipt" | "push_message_open" => "push_message",
        other => other,
    }
}

/// `mpid` as a string: mParticle sends it as a number (Webhook) or a string (Firehose).
fn mpid(value: Option<&Value>, pointer: &str) -> Result<Option<String>, FieldError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(FieldError::new(pointer, format!("must be a number or a string, got {}", kind(other)))),
    }
}

/// An object, or an empty one when absent or null; anything else is an error at `pointer`.
fn object_or_empty(value: Option<&Value>, pointer: &str) -> Result<Map<String, Value>, FieldError> {
    match value {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(object)) => Ok(object.clone()),
        Some(other) => Err(FieldError::new(pointer, format!("must be an object, got {}", kind(other)))),
    }
}

fn string(value: Option<&Value>) -> Option<String> {
    value.and_then(Value::as_str).map(str::to_string)
}

/// An id that may be a string or a number (mParticle's `batch_id` and `event_id` are int64).
fn id_string(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// [`kind`], but an empty string says so (an empty id is as useless as none).
fn describe(value: &Value) -> &'static str {
    match value {
        Value::String(s) if s.is_empty() => "an empty string",
        other => kind(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../../shared/mparticle/");
    /// When the host received the test requests: after every timestamp in the samples.
    const RECEIVED_AT: i64 = 1714592745000;

    fn shared(name: &str) -> Value {
        let path = format!("{SHARED}{name}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
    }

    fn sample(name: &str) -> Value {
        shared(&format!("firehose/{name}"))
    }

    fn parse_err(body: Value) -> FieldError {
        match parse(&body) {
            Err(e) => e,
            Ok(message) => panic!("expected a parse error for {body}, got {message:?}"),
        }
    }

    fn assert_guid(value: &Value) {
        let id = value.as_str().expect("id is a string");
        let parsed = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id:?} is not a UUID: {e}"));
        assert_eq!(parsed.hyphenated().to_string(), id, "a GUID in its hyphenated form");
    }

    fn identities(event: &InboundEvent) -> Vec<(&str, &str)> {
        event.identities.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    /// Checks what both Firehose SDK samples share; returns the events for sample-specific checks.
    fn check_firehose_sample(name: &str, request_id: &str, custom_id: &str, product_id: &str) -> Vec<InboundEvent> {
        let message = parse(&sample(name)).unwrap();
        assert_eq!(message.source(), FIREHOSE_SOURCE);
        assert_eq!(message.external_id().as_deref(), Some(request_id));
        assert_eq!(message.request_type(), Some("event_processing_request"));
        assert!(!message.is_public(), "a request with events needs the token");
        let Message::FirehoseEvents { id, firehose_version, events } = &message else {
            panic!("{name}: expected FirehoseEvents, got {message:?}");
        };
        assert_eq!(id, request_id);
        assert_eq!(firehose_version.as_deref(), Some("3.2.0"));
        assert_eq!(events.len(), 2, "{name}: a custom event and a product action");

        let custom = &events[0];
        assert_eq!(custom.source, FIREHOSE_SOURCE);
        assert_eq!(custom.event_type, "custom_event");
        assert_eq!(custom.extra["sourceEventType"], "custom_event");
        assert_eq!(custom.message_id.as_deref(), Some(custom_id));
        assert_eq!(custom.event_name.as_deref(), Some("customEvent"));
        assert_eq!(custom.extra["customEventType"], "other");
        assert_eq!(custom.timestamp_ms, Some(1714592744066));
        assert_eq!(custom.attributes, json!({"event_attribute": "value"}).as_object().unwrap().clone());
        assert_eq!(custom.raw["custom_flags"]["ModuleA.flagA"], "value1", "the raw event is kept");

        let product = &events[1];
        assert_eq!(product.event_type, "commerce_event");
        assert_eq!(product.extra["sourceEventType"], "product_action");
        assert_eq!(product.message_id.as_deref(), Some(product_id));
        assert_eq!(product.event_name, None);
        assert_eq!(product.extra["customEventType"], Value::Null);
        assert_eq!(product.raw["coupon_code"], "coupon");

        for event in events {
            assert_eq!(event.extra["mpid"], "12345", "{name}");
            assert_eq!(event.extra.len(), 3, "{:?}", event.extra);
            assert_eq!(
                identities(event),
                [
                    ("customer_id", "4739c5c11d833bb199c16ff95a92b267"),
                    ("email", "e179e95c00e7718ab4a23840f992ea63"),
                    ("facebook", "1234567890"),
                    ("google", "1234567890"),
                    ("other", "1234567890"),
                ],
                "{name}: Firehose `customer` becomes customer_id; partner and device identities are not user identities"
            );
            assert_eq!(event.user_attributes.len(), 7);
            assert_eq!(event.user_attributes["$FirstName"], "Brian");
            assert_eq!(event.user_attributes["$Zip"], "33431");
            assert_eq!(event.environment, None, "{name}: runtime_environment has no is_debug");
        }

        let answer = response(&message, RECEIVED_AT).expect("Firehose requests are answered");
        assert_eq!(answer["type"], "event_processing_response");
        assert_guid(&answer["id"]);
        assert_ne!(answer["id"], request_id, "a GUID of its own");
        assert_eq!(answer["firehose_version"], "3.2.0");
        assert_eq!(answer["timestamp_ms"], RECEIVED_AT);
        assert_eq!(answer.as_object().unwrap().len(), 4, "{answer}");
        events.clone()
    }

    #[test]
    fn firehose_android_sample() {
        check_firehose_sample(
            "EventProcessingRequest_android.json",
            "b3d9def7-f80a-4650-87b1-04c9fcce6082",
            "f93adf6a-be2c-4dd9-be7a-3bac9a0987ee",
            "47aa4c24-fc1b-4c20-9d6c-1d327ac360b9",
        );
    }

    #[test]
    fn firehose_ios_sample() {
        let events = check_firehose_sample(
            "EventProcessingRequest_ios.json",
            "66062a39-ea83-450e-9d5e-92829b6e565d",
            "9daa09f0-0c61-4b46-a16a-272c8cdd47e8",
            "e91037c0-c693-49a7-a4f8-5683218ac810",
        );
        assert_eq!(events[0].identity("customer_id"), Some("4739c5c11d833bb199c16ff95a92b267"));
        assert_eq!(events[0].user_attributes["$City"], "Boca Raton");
    }

    #[test]
    fn firehose_response_matches_the_sample_response_shape() {
        let expected = sample("EventProcessingResponse.json");
        let message = parse(&sample("EventProcessingRequest_ios.json")).unwrap();
        let answer = response(&message, RECEIVED_AT).unwrap();
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&answer), keys(&expected));
        assert_eq!(answer["type"], expected["type"]);
        for key in ["id", "timestamp_ms", "firehose_version"] {
            assert_eq!(kind(&answer[key]), kind(&expected[key]), "{key}");
        }
    }

    #[test]
    fn firehose_response_ids_are_guids_of_the_request_and_its_receipt() {
        let message = parse(&sample("ModuleRegistrationRequest.json")).unwrap();
        let first = response(&message, RECEIVED_AT).unwrap();
        assert_eq!(first["id"], response(&message, RECEIVED_AT).unwrap()["id"], "no random source in the core");
        assert_ne!(first["id"], response(&message, RECEIVED_AT + 1).unwrap()["id"], "a re-sent request");
        let other = parse(&json!({"type": "module_registration_request", "id": "another"})).unwrap();
        assert_ne!(first["id"], response(&other, RECEIVED_AT).unwrap()["id"], "another request");
        assert_guid(&first["id"]);
    }

    #[test]
    fn firehose_event_types_and_identity_names_are_normalized() {
        let body = json!({
            "type": "event_processing_request", "id": "r1", "firehose_version": "3.3.0", "mpid": "-42",
            "user_identities": [
                {"type": "other2", "encoding": "raw", "value": "o2"},
                {"type": "other10", "encoding": "raw", "value": "o10"},
                {"type": "mobile_number", "encoding": "raw", "value": "+1555"},
                {"type": "some_future_id", "encoding": "raw", "value": "f"}
            ],
            "user_attribute_lists": {"tags": ["a", "b"]},
            "events": [
                {"type": "screen_view", "id": "e1", "timestamp_ms": 1, "screen_name": "Home"},
                {"type": "promotion_action", "id": "e2", "timestamp_ms": 2},
                {"type": "impression", "id": "e3", "timestamp_ms": 3},
                {"type": "error", "id": "e4", "timestamp_ms": 4},
                {"type": "session_start", "id": "e5", "timestamp_ms": 5},
                {"type": "user_attribute_change", "id": "e6", "timestamp_ms": 6},
                {"type": "push_message_open", "id": "e7", "timestamp_ms": 7},
                {"type": "privacy_setting_change", "id": "e8", "timestamp_ms": 8}
            ]
        });
        let message = parse(&body).unwrap();
        let types: Vec<(&str, &str)> = message
            .events()
            .iter()
            .map(|e| (e.extra["sourceEventType"].as_str().unwrap(), e.event_type.as_str()))
            .collect();
        assert_eq!(
            types,
            [
                ("screen_view", "screen_view"),
                ("promotion_action", "commerce_event"),
                ("impression", "commerce_event"),
                ("error", "crash_report"),
                ("session_start", "session_start"),
                ("user_attribute_change", "user_attribute_change"),
                ("push_message_open", "push_message"),
                ("privacy_setting_change", "privacy_setting_change"),
            ]
        );
        let first = &message.events()[0];
        assert_eq!(first.event_name.as_deref(), Some("Home"), "Firehose screen views are named by screen_name");
        assert_eq!(first.extra["mpid"], "-42");
        assert_eq!(first.user_attributes["tags"], json!(["a", "b"]));
        let names: Vec<&str> = first.identities.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["mobile_number", "other_id_10", "other_id_2", "some_future_id"]);
        assert_eq!(
            response(&message, RECEIVED_AT).unwrap()["firehose_version"],
            "3.3.0",
            "the request's version is echoed"
        );
    }

    #[test]
    fn firehose_environment_comes_from_runtime_environment_is_debug() {
        let request = |runtime_environment: Value| {
            json!({
                "type": "event_processing_request", "id": "r", "runtime_environment": runtime_environment,
                "events": [{"type": "custom_event", "name": "E"}]
            })
        };
        let cases = [
            (json!({"type": "ios", "is_debug": true}), Some(Environment::Development)),
            (json!({"type": "ios", "is_debug": false}), Some(Environment::Production)),
            (json!({"type": "android", "debug": true}), Some(Environment::Development)),
            (json!({"type": "ios", "is_sandboxed": true}), None),
            (json!({"type": "ios", "is_debug": "yes"}), None),
            (json!({"type": "ios"}), None),
            (Value::Null, None),
        ];
        for (runtime_environment, expected) in cases {
            let message = parse(&request(runtime_environment.clone())).unwrap();
            assert_eq!(message.events()[0].environment, expected, "{runtime_environment}");
        }
    }

    #[test]
    fn empty_verification_request_is_answered() {
        let body = json!({
            "type": "event_processing_request",
            "id": "5c1d2c54-1b43-4c54-9a35-52e4d9a3c3a2",
            "firehose_version": "3.2.0"
        });
        let message = parse(&body).unwrap();
        assert!(message.events().is_empty());
        assert!(message.is_public());
        assert!(matches!(&message, Message::FirehoseEvents { events, .. } if events.is_empty()));
        let answer = response(&message, RECEIVED_AT).expect("verification requests get a normal response");
        assert_eq!(answer["type"], "event_processing_response");
        assert_eq!(answer["firehose_version"], "3.2.0");
        assert_guid(&answer["id"]);

        // Without a version, flowhost answers with its own.
        let message = parse(&json!({"type": "event_processing_request", "id": "x", "events": []})).unwrap();
        assert!(message.events().is_empty());
        assert_eq!(response(&message, RECEIVED_AT).unwrap()["firehose_version"], DEFAULT_FIREHOSE_VERSION);
    }

    #[test]
    fn module_registration_request_gets_a_registration() {
        let message = parse(&sample("ModuleRegistrationRequest.json")).unwrap();
        assert_eq!(
            message,
            Message::FirehoseOther {
                id: "438b0f74-8656-4f87-93c7-c9f9ac8a5544".into(),
                request_type: "module_registration_request".into(),
                firehose_version: Some("3.2.0".into()),
            }
        );
        assert!(message.events().is_empty());
        assert!(message.is_public());
        assert_eq!(message.external_id().as_deref(), Some("438b0f74-8656-4f87-93c7-c9f9ac8a5544"));
        let answer = response(&message, RECEIVED_AT).unwrap();
        assert_eq!(answer["type"], "module_registration_response");
        assert_guid(&answer["id"]);
        assert_eq!(answer["firehose_version"], "3.2.0");
        assert_eq!(answer["name"], "flowhost");
        assert_eq!(answer["version"], CONNECTOR_VERSION);
        let identities = answer["permissions"]["user_identities"].as_array().unwrap();
        for wanted in ["customer", "email", "other"] {
            let permission = identities.iter().find(|p| p["type"] == wanted).unwrap_or_else(|| panic!("{wanted}"));
            assert_eq!(permission["encoding"], "raw", "hashed identities could not name a customer");
            assert_eq!(permission["required"], false);
        }
        assert_eq!(answer["permissions"]["allow_access_mpid"], true);
        let registration = &answer["event_processing_registration"];
        assert_eq!(registration["account_settings"], json!([]), "no required account settings");
        let types = registration["supported_event_types"].as_array().unwrap();
        assert!(types.contains(&json!("custom_event")) && types.contains(&json!("product_action")));

        // Every field of the SDK's sample response that flowhost fills has the sample's JSON type.
        let sample = sample("ModuleRegistrationResponse.json");
        for key in ["type", "id", "timestamp_ms", "firehose_version", "name", "description", "version", "permissions"] {
            assert_eq!(kind(&answer[key]), kind(&sample[key]), "{key}");
        }
        for key in ["account_settings", "supported_event_types", "supported_runtime_environments"] {
            assert_eq!(
                kind(&registration[key]),
                kind(&sample["event_processing_registration"][key]),
                "event_processing_registration.{key}"
            );
        }
        // Firehose names only, as the sample uses.
        let known: Vec<Value> = sample["event_processing_registration"]["supported_event_types"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| !types.contains(t))
            .cloned()
            .collect();
        assert!(known.is_empty(), "the sample's event types are all supported: missing {known:?}");
    }

    #[test]
    fn registration_asks_for_every_firehose_user_identity() {
        let registration = registration();
        let types: Vec<&str> = registration["permissions"]["user_identities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        // Firehose SDK 3.2 `UserIdentity.Type`, as the host's registration listed it.
        assert_eq!(
            types,
            [
                "customer",
                "email",
                "other",
                "other2",
                "other3",
                "other4",
                "other5",
                "other6",
                "other7",
                "other8",
                "other9",
                "other10",
                "mobile_number",
                "phone_number_2",
                "phone_number_3",
                "facebook",
                "twitter",
                "google",
                "microsoft",
                "yahoo",
            ]
        );
        for name in IDENTITY_TYPES {
            assert_eq!(events_api_identity(&firehose_identity(name)), name, "round trip of {name}");
        }
    }

    #[test]
    fn other_firehose_requests_are_acknowledged_without_events() {
        for request_type in
            ["audience_subscription_request", "audience_membership_change_request", "dsr_processing_request"]
        {
            let message = parse(&json!({"type": request_type, "id": "abc", "firehose_version": "3.3.0"})).unwrap();
            assert!(message.events().is_empty());
            assert!(!message.is_public(), "{request_type} needs the token");
            assert_eq!(message.request_type(), Some(request_type));
            let answer = response(&message, RECEIVED_AT).unwrap();
            assert_eq!(answer["type"], request_type.replace("_request", "_response"));
            assert_eq!(answer["firehose_version"], "3.3.0");
            assert!(answer.get("permissions").is_none(), "only registration carries a registration");
        }
    }

    /// A Webhook output batch as section 5 of the mParticle reference describes it.
    fn webhook_batch(batch_id: u64, mpid: i64) -> Value {
        json!({
            "batch_id": batch_id,
            "mpid": mpid,
            "environment": "production",
            "timestamp_unixtime_ms": 1540484000000i64,
            "source_request_id": "7fa67be4-f83a-429f-9d73-38b660c50825",
            "schema_version": 2,
            "user_identities": [
                {"identity_type": "customer_id", "identity": "h.jekyll.md", "timestamp_unixtime_ms": 1540483995196i64},
                {
                    "identity_type": "email", "identity": "h.jekyll.md@example.com",
                    "timestamp_unixtime_ms": 1540483995196i64
                }
            ],
            "user_attributes": {"$firstname": "Henry", "tier": "gold", "tags": ["a", "b"]},
            "system_notifications": [],
            "events": [
                {
                    "event_type": "custom_event",
                    "message_id": "m-1",
                    "message_type": 4,
                    "data": {
                        "event_name": "Coupon Redeemed",
                        "custom_event_type": "transaction",
                        "timestamp_unixtime_ms": 1540483990000i64,
                        "event_start_unixtime_ms": 1540483990000i64,
                        "source_message_id": "e8335d31-2031-4bff-afec-17ffc1784697",
                        "custom_attributes": {"coupon_code": "SPRING", "points": "100"}
                    }
                },
                {
                    "event_type": "screen_view",
                    "data": {
                        "screen_name": "Rewards",
                        "event_start_unixtime_ms": 1540483991000i64,
                        "source_message_id": "s-2",
                        "custom_attributes": {}
                    }
                },
                {
                    "event_type": "commerce_event",
                    "data": {
                        "event_id": 6004677780660780000u64,
                        "screen_name": "Checkout",
                        "timestamp_unixtime_ms": 1540483992000i64,
                        "product_action": {
                            "action": "purchase", "transaction_id": "t-9", "total_amount": 10.5, "coupon_code": "SPRING"
                        },
                        "currency_code": "USD"
                    }
                }
            ]
        })
    }

    #[test]
    fn webhook_batch_is_normalized() {
        let message = parse(&webhook_batch(123456789, 7346244611012968789)).unwrap();
        assert_eq!(message.source(), WEBHOOK_SOURCE);
        assert_eq!(message.external_id().as_deref(), Some("123456789"));
        assert_eq!(message.request_type(), None);
        assert!(!message.is_public());
        assert_eq!(response(&message, RECEIVED_AT), None, "Webhook output gets a plain 202");
        let events = message.events();
        assert_eq!(events.len(), 3);

        let custom = &events[0];
        assert_eq!(custom.source, WEBHOOK_SOURCE);
        assert_eq!(
            (custom.event_type.as_str(), &custom.extra["sourceEventType"]),
            ("custom_event", &json!("custom_event"))
        );
        assert_eq!(custom.message_id.as_deref(), Some("m-1"), "message_id wins over source_message_id");
        assert_eq!(custom.event_name.as_deref(), Some("Coupon Redeemed"));
        assert_eq!(custom.extra["customEventType"], "transaction");
        assert_eq!(custom.timestamp_ms, Some(1540483990000));
        assert_eq!(custom.attributes["coupon_code"], "SPRING");
        assert_eq!(custom.raw["message_type"], 4, "the raw event is kept");

        let screen = &events[1];
        assert_eq!(screen.event_type, "screen_view");
        assert_eq!(screen.event_name.as_deref(), Some("Rewards"));
        assert_eq!(screen.message_id.as_deref(), Some("s-2"));
        assert_eq!(screen.timestamp_ms, Some(1540483991000), "event_start_unixtime_ms when there is no timestamp");
        assert!(screen.attributes.is_empty());
        assert_eq!(screen.extra["customEventType"], Value::Null);

        let commerce = &events[2];
        assert_eq!(commerce.event_type, "commerce_event");
        assert_eq!(commerce.event_name, None, "a commerce event's screen_name does not name it");
        assert_eq!(commerce.message_id.as_deref(), Some("6004677780660780000"));
        assert!(commerce.attributes.is_empty(), "no custom_attributes: empty, not an error");

        for event in events {
            assert_eq!(event.extra["mpid"], "7346244611012968789", "int64 mpid kept exactly");
            assert_eq!(identities(event), [("customer_id", "h.jekyll.md"), ("email", "h.jekyll.md@example.com")]);
            assert_eq!(event.user_attributes["tier"], "gold");
            assert_eq!(event.user_attributes["tags"], json!(["a", "b"]));
            assert_eq!(event.environment, Some(Environment::Production));
        }
    }

    #[test]
    fn webhook_environment_is_the_batch_environment() {
        let batch =
            |environment: Value| json!({"environment": environment, "events": [{"event_type": "session_start"}]});
        let cases = [
            (json!("development"), Some(Environment::Development)),
            (json!("production"), Some(Environment::Production)),
            (json!("staging"), None),
            (json!(1), None),
            (Value::Null, None),
        ];
        for (environment, expected) in cases {
            let message = parse(&batch(environment.clone())).unwrap();
            assert_eq!(message.events()[0].environment, expected, "{environment}");
        }
        let message = parse(&json!({"mpid": 1, "events": [{"event_type": "session_start"}]})).unwrap();
        assert_eq!(message.events()[0].environment, None, "a batch without environment");

        // Each batch of an array has its own.
        let mut development = webhook_batch(2, 2);
        development["environment"] = json!("development");
        let message = parse(&json!([webhook_batch(1, 1), development])).unwrap();
        let environments: Vec<_> = message.events().iter().map(|e| e.environment).collect();
        assert_eq!(environments[..3], [Some(Environment::Production); 3]);
        assert_eq!(environments[3..], [Some(Environment::Development); 3]);
    }

    #[test]
    fn webhook_array_of_batches() {
        let mut second = webhook_batch(2, 99);
        second["user_identities"] = json!({"customer_id": "c-2", "other_id_2": "x", "yahoo": null});
        second["events"] = json!([{"event_type": "session_start", "data": {"session_uuid": "u"}}]);
        let message = parse(&json!([webhook_batch(1, 42), second])).unwrap();
        let Message::Webhook { batch_ids, events } = &message else { panic!("{message:?}") };
        assert_eq!(batch_ids, &["1", "2"]);
        assert_eq!(message.external_id().as_deref(), Some("1,2"));
        assert_eq!(events.len(), 4);
        assert_eq!(events[0].extra["mpid"], "42");
        assert_eq!(events[3].extra["mpid"], "99");
        assert_eq!(events[3].event_type, "session_start");
        assert_eq!(events[3].message_id, None);
        assert_eq!(identities(&events[3]), [("customer_id", "c-2"), ("other_id_2", "x")], "null ones skipped");

        // No batch ids: nothing to de-duplicate on.
        let message = parse(&json!([{"events": []}, {"mpid": "7"}])).unwrap();
        assert_eq!(message.external_id(), None);
        assert!(message.events().is_empty());
    }

    #[test]
    fn malformed_bodies_name_the_offending_part() {
        let cases = [
            (json!("a string"), ""),
            (json!(42), ""),
            (json!(null), ""),
            (json!({"hello": "world"}), ""),
            (json!([{"events": []}, 3]), "/1"),
            (json!({"events": {"event_type": "custom_event"}}), "/events"),
            (json!({"events": [{"data": {}}]}), "/events/0/event_type"),
            (json!({"events": [{"event_type": "custom_event"}, {"event_type": 5}]}), "/events/1/event_type"),
            (json!([{"mpid": 1}, {"events": [{}, {}, {"data": {}}]}]), "/1/events/0/event_type"),
            (json!({"events": [{"event_type": "custom_event", "data": "x"}]}), "/events/0/data"),
            (
                json!({"events": [{"event_type": "custom_event", "data": {"custom_attributes": ["x"]}}]}),
                "/events/0/data/custom_attributes",
            ),
            (
                json!({"user_identities": [{"identity_type": "email", "identity": "a@b"}, {"identity": "x"}]}),
                "/user_identities/1/identity_type",
            ),
            (json!({"user_identities": [{"identity_type": "email", "identity": 5}]}), "/user_identities/0/identity"),
            (json!({"user_identities": ["email"]}), "/user_identities/0"),
            (json!({"user_identities": {"a/b": 5}}), "/user_identities/a~1b"),
            (json!({"user_identities": "x"}), "/user_identities"),
            (json!({"mpid": true}), "/mpid"),
            (json!({"events": [], "user_attributes": []}), "/user_attributes"),
            (json!({"type": "event_processing_request", "firehose_version": "3.2.0"}), "/id"),
            (json!({"type": "event_processing_request", "id": 7}), "/id"),
            (json!({"type": "event_processing_request", "id": ""}), "/id"),
            (json!({"type": "module_registration_request"}), "/id"),
            (json!({"type": "event_processing_response", "id": "x"}), "/type"),
            (json!({"type": "something_else", "id": "x"}), "/type"),
            (json!({"type": 3, "id": "x"}), "/type"),
            (json!({"type": "event_processing_request", "id": "x", "events": {}}), "/events"),
            (json!({"type": "event_processing_request", "id": "x", "events": [{"id": "e"}]}), "/events/0/type"),
            (
                json!({
                    "type": "event_processing_request", "id": "x",
                    "events": [{"type": "custom_event", "attributes": "a"}]
                }),
                "/events/0/attributes",
            ),
            (
                json!({
                    "type": "event_processing_request", "id": "x",
                    "user_identities": [{"type": "email", "encoding": "raw"}]
                }),
                "/user_identities/0/value",
            ),
            (
                json!({"type": "event_processing_request", "id": "x", "user_identities": [{"value": "v"}]}),
                "/user_identities/0/type",
            ),
            (json!({"type": "event_processing_request", "id": "x", "mpid": ["1"]}), "/mpid"),
            (json!({"type": "event_processing_request", "id": "x", "user_attributes": "a"}), "/user_attributes"),
            (
                json!({"type": "event_processing_request", "id": "x", "user_attribute_lists": 1}),
                "/user_attribute_lists",
            ),
        ];
        for (body, pointer) in cases {
            let error = parse_err(body.clone());
            assert_eq!(error.pointer, pointer, "{body} -> {error}");
            assert!(!error.message.is_empty());
        }
    }

    #[test]
    fn parse_errors_read_well() {
        let error = parse_err(json!({"events": [{"event_type": "custom_event"}, {}, {"data": {}}]}));
        assert_eq!(error.to_string(), "/events/1/event_type: missing; every event needs a string event_type");
        let error = parse_err(json!("x"));
        assert!(error.to_string().starts_with("(root): expected a JSON object"), "{error}");
        let error = parse_err(json!({"type": "event_processing_response", "id": "x"}));
        assert!(error.to_string().contains("\"event_processing_response\""), "{error}");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let message = parse(&json!({
            "batch_id": "b", "surprise": {"nested": true},
            "events": [{"event_type": "custom_event", "novel": 1, "data": {"event_name": "E", "extra": [1]}}]
        }))
        .unwrap();
        assert_eq!(message.events()[0].event_name.as_deref(), Some("E"));
        let message = parse(&json!({
            "type": "event_processing_request", "id": "i", "brand_new": 1,
            "events": [{"type": "custom_event", "id": 12, "name": "n", "timestamp_ms": "not a number"}]
        }))
        .unwrap();
        let event = &message.events()[0];
        assert_eq!(event.message_id.as_deref(), Some("12"));
        assert_eq!(event.timestamp_ms, None);
    }

    #[test]
    fn describe_inbound_lists_what_the_parser_produces() {
        let info = describe_inbound();
        assert_eq!(
            info.public_requests,
            ["module_registration_request", "event_processing_request without events (verification)"]
        );
        assert_eq!(info.identities, IDENTITY_TYPES);

        // The Events API event types: the published schema's `EventType` enum, all of it.
        let schema = shared("mparticle-eventsapi-schema.json");
        let mut enum_names: Vec<&str> = schema["definitions"]["EventType"]["enum"]
            .as_array()
            .expect("the schema's EventType enum")
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let mut listed: Vec<&str> = info.event_types.iter().map(String::as_str).collect();
        let extras = listed.split_off(enum_names.len());
        enum_names.sort_unstable();
        listed.sort_unstable();
        assert_eq!(listed, enum_names);
        assert_eq!(extras, ["privacy_setting_change", "attribution"], "Firehose types kept as received");

        // Every Firehose type, and every identity the registration asks for, comes out under a listed name.
        for firehose in FIREHOSE_EVENT_TYPES {
            let normalized = events_api_event_type(firehose);
            assert!(info.event_types.iter().any(|t| t == normalized), "{firehose} -> {normalized}");
        }
        for firehose in firehose_user_identity_types() {
            let normalized = events_api_identity(&firehose);
            assert!(info.identities.contains(&normalized), "{firehose} -> {normalized}");
        }
        let mut unique = info.event_types.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), info.event_types.len());
    }

    // --- receive ---

    fn post(body: impl Into<Vec<u8>>, authenticated: bool) -> InboundRequest {
        InboundRequest {
            method: "POST".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
            authenticated,
            received_at_ms: RECEIVED_AT,
            ..InboundRequest::default()
        }
    }

    fn post_json(body: &Value, authenticated: bool) -> InboundRequest {
        post(body.to_string(), authenticated)
    }

    fn accept(request: &InboundRequest) -> Received {
        receive(&json!({}), request).unwrap_or_else(|e| panic!("{e}"))
    }

    fn refused(request: &InboundRequest) -> Error {
        match receive(&json!({}), request) {
            Err(e) => e,
            Ok(received) => panic!("expected an error, got {received:?}"),
        }
    }

    fn body(response: &InboundResponse) -> Value {
        assert_eq!(response.headers, [("content-type".to_string(), "application/json".to_string())]);
        serde_json::from_slice(&response.body).expect("a JSON answer")
    }

    fn assert_token_required(error: Error, what: &str) {
        let Error::Unauthorized(message) = &error else { panic!("expected unauthorized, got {error:?}") };
        assert!(message.contains("a token is required"), "{message}");
        assert!(message.contains(what), "{message} should name {what}");
    }

    #[test]
    fn receive_answers_webhook_output_with_202() {
        let received = accept(&post_json(&webhook_batch(123456789, 7), true));
        assert_eq!(received.response.status, 202);
        assert_eq!(body(&received.response), json!({"received": 3}));
        assert_eq!(received.message_id.as_deref(), Some("123456789"));
        assert_eq!(received.events.len(), 3);
        assert_eq!(received.events[0].source, WEBHOOK_SOURCE);
        assert_eq!(received.events[0].event_name.as_deref(), Some("Coupon Redeemed"));

        // An array of batches: the ids joined; none without ids; a batch without events is still accepted.
        let received = accept(&post_json(&json!([webhook_batch(1, 1), webhook_batch(2, 2)]), true));
        assert_eq!(received.message_id.as_deref(), Some("1,2"));
        assert_eq!(body(&received.response), json!({"received": 6}));
        let received = accept(&post_json(&json!({"mpid": 5, "events": []}), true));
        assert_eq!((received.response.status, received.message_id), (202, None));
        assert_eq!(body(&received.response), json!({"received": 0}));
    }

    #[test]
    fn receive_answers_firehose_samples_with_200() {
        for (name, request_id) in [
            ("EventProcessingRequest_android.json", "b3d9def7-f80a-4650-87b1-04c9fcce6082"),
            ("EventProcessingRequest_ios.json", "66062a39-ea83-450e-9d5e-92829b6e565d"),
        ] {
            let message = parse(&sample(name)).unwrap();
            let received = accept(&post_json(&sample(name), true));
            assert_eq!(received.response.status, 200, "{name}");
            assert_eq!(body(&received.response), response(&message, RECEIVED_AT).unwrap(), "{name}");
            assert_eq!(received.message_id.as_deref(), Some(request_id));
            assert_eq!(received.events, message.events(), "{name}");
            assert_eq!(received.events.len(), 2);
        }
        // Pretty-printed as in the files, bytes as they came.
        let text = std::fs::read(format!("{SHARED}firehose/EventProcessingRequest_ios.json")).unwrap();
        assert_eq!(accept(&post(text, true)).events.len(), 2);
    }

    #[test]
    fn receive_answers_other_firehose_requests_with_a_token() {
        for request_type in ["audience_subscription_request", "dsr_processing_request"] {
            let received = accept(&post_json(&json!({"type": request_type, "id": "a-1"}), true));
            assert_eq!(received.response.status, 200);
            assert_eq!(body(&received.response)["type"], request_type.replace("_request", "_response"));
            assert_eq!(received.message_id.as_deref(), Some("a-1"));
            assert!(received.events.is_empty());
        }
    }

    #[test]
    fn receive_answers_module_registration_without_a_token() {
        for authenticated in [false, true] {
            let received = accept(&post_json(&sample("ModuleRegistrationRequest.json"), authenticated));
            assert_eq!(received.response.status, 200);
            let answer = body(&received.response);
            assert_eq!(answer["type"], "module_registration_response");
            assert_eq!(answer["permissions"], registration()["permissions"]);
            assert!(received.events.is_empty());
            assert_eq!(received.message_id.as_deref(), Some("438b0f74-8656-4f87-93c7-c9f9ac8a5544"));
        }
    }

    #[test]
    fn receive_answers_verification_requests_without_a_token() {
        let probes = [
            json!({"type": "event_processing_request", "id": "v-1", "firehose_version": "3.2.0"}),
            json!({"type": "event_processing_request", "id": "v-2", "events": []}),
            json!({"type": "event_processing_request", "id": "v-3", "events": null, "account": {"account_id": 1}}),
        ];
        for probe in probes {
            let received = accept(&post_json(&probe, false));
            assert_eq!(received.response.status, 200, "{probe}");
            let answer = body(&received.response);
            assert_eq!(answer["type"], "event_processing_response");
            assert_eq!(answer["timestamp_ms"], RECEIVED_AT);
            assert!(received.events.is_empty());
            assert_eq!(received.message_id.as_deref(), probe["id"].as_str());
        }
    }

    #[test]
    fn receive_refuses_everything_else_without_a_token() {
        let cases: [(Vec<u8>, &str); 8] = [
            (webhook_batch(1, 1).to_string().into(), "Webhook output (3 event(s))"),
            (json!({"mpid": 1, "events": []}).to_string().into(), "Webhook output (0 event(s))"),
            (sample("EventProcessingRequest_ios.json").to_string().into(), "event_processing_request with 2 event(s)"),
            (
                json!({"type": "audience_subscription_request", "id": "a"}).to_string().into(),
                "audience_subscription_request",
            ),
            (json!({"type": "dsr_processing_request", "id": "d"}).to_string().into(), "dsr_processing_request"),
            (json!({"type": "module_registration_request"}).to_string().into(), "not a well-formed mParticle request"),
            (b"not json".to_vec(), "not a well-formed mParticle request"),
            (Vec::new(), "not a well-formed mParticle request"),
        ];
        for (body, what) in cases {
            assert_token_required(refused(&post(body, false)), what);
        }
    }

    #[test]
    fn receive_refuses_other_methods() {
        for (method, authenticated) in [("GET", true), ("PUT", true), ("DELETE", false), ("", true)] {
            let mut request = post_json(&sample("ModuleRegistrationRequest.json"), authenticated);
            request.method = method.into();
            let error = refused(&request);
            let [field] = error.field_errors() else { panic!("expected one field error, got {error:?}") };
            assert_eq!(field.pointer, "");
            assert!(field.message.contains(&format!("{method:?}")), "{}", field.message);
            assert!(field.message.contains("POST"), "{}", field.message);
        }
        let mut request = post_json(&sample("ModuleRegistrationRequest.json"), false);
        request.method = "post".into();
        assert_eq!(accept(&request).response.status, 200, "methods compare without case");
    }

    #[test]
    fn receive_refuses_empty_and_non_json_bodies() {
        let cases: [(&[u8], &str); 4] = [
            (b"", "the body is empty"),
            (b" \n\t", "the body is empty"),
            (b"{\"events\": [", "the body is not JSON: "),
            (b"<xml/>", "the body is not JSON: "),
        ];
        for (text, message) in cases {
            let error = refused(&post(text, true));
            let [field] = error.field_errors() else { panic!("expected one field error, got {error:?}") };
            assert_eq!(field.pointer, "", "{error}");
            assert!(field.message.starts_with(message), "{}", field.message);
        }
    }

    #[test]
    fn receive_reports_what_is_malformed_by_pointer() {
        let cases = [
            (json!({"hello": "world"}), ""),
            (json!({"events": [{"event_type": "custom_event"}, {"data": {}}]}), "/events/1/event_type"),
            (json!({"type": "event_processing_request"}), "/id"),
            (json!({"type": "event_processing_request", "id": "x", "events": [{"type": 1}]}), "/events/0/type"),
        ];
        for (body, pointer) in cases {
            let error = refused(&post_json(&body, true));
            assert_eq!(error, Error::InvalidInput(vec![parse_err(body.clone())]), "{body}");
            assert_eq!(error.field_errors()[0].pointer, pointer, "{body}");
        }
    }

    #[test]
    fn received_events_carry_the_normalized_fields_and_extra() {
        let received = accept(&post_json(&webhook_batch(9, 7346244611012968789), true));
        let event = &received.events[0];
        assert_eq!(event.source, "mparticle.webhook");
        assert_eq!(event.event_type, "custom_event");
        assert_eq!(event.identity("customer_id"), Some("h.jekyll.md"));
        assert_eq!(event.identity("other_id_2"), None);
        assert_eq!(event.environment.map(Environment::as_str), Some("production"));
        assert_eq!(event.message_id.as_deref(), Some("m-1"));
        assert_eq!(event.timestamp_ms, Some(1540483990000));
        assert_eq!(
            Value::Object(event.extra.clone()),
            json!({"mpid": "7346244611012968789", "sourceEventType": "custom_event", "customEventType": "transaction"})
        );
        assert_eq!(event.raw, webhook_batch(9, 1)["events"][0]);
    }
}
