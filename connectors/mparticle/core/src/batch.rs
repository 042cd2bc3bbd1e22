//! Building Events API batches from capability inputs, with deterministic `source_request_id`s.

use crate::config::Environment;
use crate::error::{Error, FieldError};
use crate::input::{PROPERTIES, Problems, index_pointer, kind, pointer, properties, too_long};
use crate::validate::{
    self, CUSTOM_EVENT_TYPES, IDENTITY_TYPES, MAX_ATTRIBUTES, MAX_BATCHES_PER_REQUEST, MAX_NAME_CHARS, MAX_VALUE_CHARS,
    RESERVED_USER_ATTRIBUTES,
};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use std::borrow::Cow;
use uuid::Uuid;

/// The namespace of the connector's name-based (v5) UUIDs:
/// `uuid5(NAMESPACE_URL, "https://flowhost.dev/connectors/mparticle/source_request_id")`.
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0xdff63459_a198_5b9d_bd84_b5f815ddca9a);

/// The Events API endpoint a payload goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventsEndpoint {
    /// `POST {eventsApiUrl}/events`: one batch.
    Events,
    /// `POST {eventsApiUrl}/bulkevents`: a JSON array of batches.
    BulkEvents,
}

impl EventsEndpoint {
    /// The path under the Events API base URL.
    pub fn path(self) -> &'static str {
        match self {
            EventsEndpoint::Events => "/events",
            EventsEndpoint::BulkEvents => "/bulkevents",
        }
    }

    /// The name in capability outputs.
    pub fn name(self) -> &'static str {
        match self {
            EventsEndpoint::Events => "events",
            EventsEndpoint::BulkEvents => "bulkevents",
        }
    }
}

/// A checked, serialized Events API request body.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsPayload {
    pub endpoint: EventsEndpoint,
    /// The `source_request_id` of each batch, in order: one per batch.
    pub source_request_ids: Vec<String>,
    /// The request body: the batch (`/events`) or the JSON array of batches (`/bulkevents`), with
    /// `environment` and `source_request_id` filled in.
    pub body: Vec<u8>,
}

impl EventsPayload {
    /// How many batches the body holds.
    pub fn batch_count(&self) -> usize {
        self.source_request_ids.len()
    }

    /// The batches, parsed back from the body (for inspection and tests; sending uses the body as is).
    pub fn batches(&self) -> Vec<Value> {
        match serde_json::from_slice(&self.body) {
            Ok(Value::Array(batches)) if self.endpoint == EventsEndpoint::BulkEvents => batches,
            Ok(batch) => vec![batch],
            Err(_) => Vec::new(),
        }
    }
}

/// The `source_request_id` for the batch of an invocation (`index` None) or for batch `index` of a bulk
/// request. The same key always gives the same id, so a retried node sends the same id and mParticle
/// de-duplicates it. A key that is a UUID is used as is for a single batch; otherwise the id is a v5 UUID.
pub fn source_request_id(idempotency_key: &str, index: Option<usize>) -> String {
    match index {
        None => match Uuid::try_parse(idempotency_key.trim()) {
            Ok(uuid) => text(uuid),
            Err(_) => text(Uuid::new_v5(&ID_NAMESPACE, idempotency_key.as_bytes())),
        },
        Some(i) => text(Uuid::new_v5(&ID_NAMESPACE, format!("{idempotency_key}#{i}").as_bytes())),
    }
}

/// The `source_message_id` of event `index` of the batch with `source_request_id`.
pub fn source_message_id(source_request_id: &str, index: usize) -> String {
    text(Uuid::new_v5(&ID_NAMESPACE, format!("{source_request_id}/event/{index}").as_bytes()))
}

/// A UUID's hyphenated lower-case text, encoded directly rather than through `core::fmt` (two per event).
fn text(uuid: Uuid) -> String {
    uuid.hyphenated().encode_lower(&mut Uuid::encode_buffer()).to_owned()
}

fn require_key(idempotency_key: &str) -> Result<(), Error> {
    if idempotency_key.trim().is_empty() {
        return Err(Error::permanent(
            "the invocation has no idempotency key, so no stable source_request_id can be derived and a retry could \
             record the data twice; the host must pass one",
        ));
    }
    Ok(())
}

/// The `identityType`/`identityValue` pair of a loyalty input: the batch's `user_identities`.
fn identity<'a>(props: &'a Map<String, Value>, problems: &mut Problems) -> Option<Identity<'a>> {
    let identity_type = problems.optional_string(props, "identityType").unwrap_or("customer_id");
    let known = IDENTITY_TYPES.contains(&identity_type);
    if !known {
        problems.add(
            pointer(PROPERTIES, "identityType"),
            format!("{identity_type:?} is not an Events API identity type ({})", IDENTITY_TYPES.join(", ")),
        );
    }
    let value = problems.required_string(props, "identityValue")?;
    known.then_some(Identity { identity_type, value })
}

/// `user_identities` with one identity: `{"<identity type>": "<value>"}`.
#[derive(Debug, Clone, Copy)]
struct Identity<'a> {
    identity_type: &'a str,
    value: &'a str,
}

impl Serialize for Identity<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map([(self.identity_type, self.value)])
    }
}

impl Identity<'_> {
    fn to_map(self) -> Map<String, Value> {
        Map::from_iter([(self.identity_type.to_string(), Value::String(self.value.to_string()))])
    }
}

// The `triggerMarketingCommunication` batch, serialized straight from the input's strings: it is the hot path
// of the loyalty integration, and building `Value` maps first took about half of a native call.
#[derive(Serialize)]
struct MarketingBatch<'a> {
    source_request_id: &'a str,
    environment: &'static str,
    user_identities: Identity<'a>,
    events: [CustomEvent<'a>; 1],
}

#[derive(Serialize)]
struct CustomEvent<'a> {
    event_type: &'static str,
    data: CustomEventData<'a>,
}

#[derive(Serialize)]
struct CustomEventData<'a> {
    event_name: &'a str,
    custom_event_type: &'a str,
    source_message_id: String,
    #[serde(skip_serializing_if = "Attributes::is_empty")]
    custom_attributes: Attributes<'a>,
}

/// Custom attributes, serialized as an object in the input's order.
#[derive(Default)]
struct Attributes<'a>(Vec<(&'a str, Cow<'a, str>)>);

impl Attributes<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Attributes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, value)| (name, value)))
    }
}

/// The batch of `triggerMarketingCommunication`: one `custom_event` named `eventName` of type `eventType`
/// whose custom attributes are `payload` (values converted to strings), for the user `identityType` =
/// `identityValue`, in the connection's environment.
pub fn build_marketing_event_batch(
    input: &Value,
    environment: Environment,
    idempotency_key: &str,
) -> Result<EventsPayload, Error> {
    let props = properties(input)?;
    let mut problems = Problems::default();
    let event_name = problems.required_string(props, "eventName");
    if let Some(n) = event_name.and_then(|name| too_long(name, MAX_NAME_CHARS)) {
        problems.add(
            pointer(PROPERTIES, "eventName"),
            format!("the event name is {n} characters; mParticle accepts at most {MAX_NAME_CHARS}"),
        );
    }
    let event_type = problems.required_string(props, "eventType");
    if let Some(t) = event_type.filter(|t| !CUSTOM_EVENT_TYPES.contains(t)) {
        let note = if t == "attribution" {
            " (attribution is documented by mParticle but its published Events API schema rejects it)"
        } else {
            ""
        };
        problems.add(
            pointer(PROPERTIES, "eventType"),
            format!("{t:?} is not a custom event type: use one of {}{note}", CUSTOM_EVENT_TYPES.join(", ")),
        );
    }
    let attributes = payload_attributes(props, &mut problems);
    let identities = identity(props, &mut problems);
    let (Some(event_name), Some(event_type), Some(identities)) = (event_name, event_type, identities) else {
        return Err(Error::InvalidInput(problems.0));
    };
    let attributes = problems.into_result(attributes)?;
    require_key(idempotency_key)?;

    let id = source_request_id(idempotency_key, None);
    let batch = MarketingBatch {
        source_request_id: &id,
        environment: environment.as_str(),
        user_identities: identities,
        events: [CustomEvent {
            event_type: "custom_event",
            data: CustomEventData {
                event_name,
                custom_event_type: event_type,
                source_message_id: source_message_id(&id, 0),
                custom_attributes: attributes,
            },
        }],
    };
    single(encode(&batch)?, id, || size_pointer(props, "payload"))
}

/// `payload`: key -> string, number or boolean, converted to the string custom attributes of the event.
fn payload_attributes<'a>(props: &'a Map<String, Value>, problems: &mut Problems) -> Attributes<'a> {
    let at = || pointer(PROPERTIES, "payload");
    let payload = match props.get("payload") {
        None | Some(Value::Null) => return Attributes::default(),
        Some(Value::Object(payload)) => payload,
        Some(other) => {
            problems.add(at(), format!("must be an object of key -> value, not {}", kind(other)));
            return Attributes::default();
        }
    };
    if payload.len() > MAX_ATTRIBUTES {
        problems.add(
            at(),
            format!("has {} keys; mParticle accepts at most {MAX_ATTRIBUTES} attributes per event", payload.len()),
        );
    }
    let mut attributes = Vec::with_capacity(payload.len());
    for (name, value) in payload {
        // The pointer is only built for a problem: this loop runs for every attribute of every event.
        let here = || pointer(&at(), name);
        if let Some(problem) = validate::name_problem(name) {
            problems.add(here(), problem);
        }
        let text = match value {
            Value::String(s) => Cow::Borrowed(s.as_str()),
            Value::Number(n) => Cow::Owned(n.to_string()),
            Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            other => {
                problems.add(here(), format!("must be a string, number or boolean, not {}", kind(other)));
                continue;
            }
        };
        if let Some(n) = too_long(&text, MAX_VALUE_CHARS) {
            problems.add(here(), format!("the value is {n} characters; mParticle accepts at most {MAX_VALUE_CHARS}"));
            continue;
        }
        attributes.push((name.as_str(), text));
    }
    Attributes(attributes)
}

/// The batch of `syncUserAttributes`: `user_attributes` (and `deleted_user_attributes` for null values) for
/// the user `identityType` = `identityValue`, without events.
pub fn build_user_attributes_batch(
    input: &Value,
    environment: Environment,
    idempotency_key: &str,
) -> Result<EventsPayload, Error> {
    let props = properties(input)?;
    let mut problems = Problems::default();
    let identities = identity(props, &mut problems);
    let (set, deleted) = user_attributes(props, &mut problems);
    let Some(identities) = identities else {
        return Err(Error::InvalidInput(problems.0));
    };
    problems.into_result(())?;
    require_key(idempotency_key)?;

    let id = source_request_id(idempotency_key, None);
    let mut batch = Map::new();
    batch.insert("source_request_id".into(), id.clone().into());
    batch.insert("environment".into(), environment.as_str().into());
    batch.insert("user_identities".into(), Value::Object(identities.to_map()));
    if !set.is_empty() {
        batch.insert("user_attributes".into(), Value::Object(set));
    }
    if !deleted.is_empty() {
        batch.insert("deleted_user_attributes".into(), Value::Array(deleted));
    }
    single(encode(&Value::Object(batch))?, id, || size_pointer(props, "attributes"))
}

/// `attributes`, split into the attributes to set and the names to delete (null values). `$` names must be
/// reserved attributes (matched case-insensitively and sent as the Events API spells them).
fn user_attributes(props: &Map<String, Value>, problems: &mut Problems) -> (Map<String, Value>, Vec<Value>) {
    let at = pointer(PROPERTIES, "attributes");
    let (mut set, mut deleted) = (Map::new(), Vec::new());
    let attributes = match props.get("attributes") {
        Some(Value::Object(attributes)) if !attributes.is_empty() => attributes,
        Some(Value::Object(_)) => {
            problems.add(at, "must name at least one attribute");
            return (set, deleted);
        }
        None | Some(Value::Null) => {
            problems.add(at, "is required");
            return (set, deleted);
        }
        Some(other) => {
            problems.add(at, format!("must be an object of name -> value, not {}", kind(other)));
            return (set, deleted);
        }
    };
    if attributes.len() > MAX_ATTRIBUTES {
        problems.add(
            &at,
            format!(
                "has {} attributes; mParticle accepts at most {MAX_ATTRIBUTES} user attributes per batch",
                attributes.len()
            ),
        );
    }
    for (name, value) in attributes {
        let here = pointer(&at, name);
        let name = if name.starts_with('$') {
            let lower = name.to_lowercase();
            match RESERVED_USER_ATTRIBUTES.iter().find(|r| **r == lower) {
                Some(reserved) => (*reserved).to_string(),
                None => {
                    problems.add(
                        here,
                        format!(
                            "{name} is not one of mParticle's reserved user attributes ({}); names starting with $ \
                             are reserved, drop the $ for a custom attribute",
                            RESERVED_USER_ATTRIBUTES.join(" ")
                        ),
                    );
                    continue;
                }
            }
        } else {
            name.clone()
        };
        validate::check_name(&name, &here, &mut problems.0);
        if set.contains_key(&name) || deleted.iter().any(|d| d.as_str() == Some(&name)) {
            problems.add(&here, format!("names the attribute {name} a second time"));
            continue;
        }
        match value {
            Value::Null => deleted.push(Value::String(name)),
            Value::Array(list) => {
                let before = problems.0.len();
                validate::check_list(list, &here, &mut problems.0);
                for (i, entry) in list.iter().enumerate() {
                    if !entry.is_string() {
                        problems.add(index_pointer(&here, i), format!("must be a string, not {}", kind(entry)));
                    }
                }
                if problems.0.len() == before {
                    set.insert(name, value.clone());
                }
            }
            Value::Object(_) => problems
                .add(here, "must be a string, number, boolean, list of strings, or null (to delete the attribute)"),
            scalar => {
                let before = problems.0.len();
                validate::check_value(scalar, &here, &mut problems.0);
                if problems.0.len() == before {
                    set.insert(name, scalar.clone());
                }
            }
        }
    }
    (set, deleted)
}

/// The batches of `uploadEventBatch`: `eventBatch` is JSON text, one batch (-> `/events`) or an array of at
/// most 100 batches (-> `/bulkevents`). Each is checked against the Events API format and limits; a batch
/// without `environment` gets the connection's and one without `source_request_id` gets a derived one.
/// Problems inside JSON text are reported under `/properties/eventBatch` followed by the pointer in the text.
pub fn build_upload_event_batches(
    input: &Value,
    environment: Environment,
    idempotency_key: &str,
) -> Result<EventsPayload, Error> {
    let props = properties(input)?;
    let base = pointer(PROPERTIES, "eventBatch");
    let parsed;
    let given = match props.get("eventBatch") {
        None | Some(Value::Null) => return Err(Error::invalid_input(base, "is required")),
        Some(Value::String(text)) => {
            parsed = serde_json::from_str::<Value>(text)
                .map_err(|e| Error::invalid_input(&base, format!("is not valid JSON: {e}")))?;
            &parsed
        }
        Some(value) => value,
    };
    let (endpoint, batches): (EventsEndpoint, Vec<(String, &Value)>) = match given {
        Value::Object(_) => (EventsEndpoint::Events, vec![(base.clone(), given)]),
        Value::Array(items) if items.is_empty() => {
            return Err(Error::invalid_input(base, "must contain at least one batch"));
        }
        Value::Array(items) if items.len() > MAX_BATCHES_PER_REQUEST => {
            return Err(Error::invalid_input(
                base,
                format!(
                    "has {} batches; mParticle accepts at most {MAX_BATCHES_PER_REQUEST} per bulk request",
                    items.len()
                ),
            ));
        }
        Value::Array(items) => {
            (EventsEndpoint::BulkEvents, items.iter().enumerate().map(|(i, b)| (index_pointer(&base, i), b)).collect())
        }
        other => {
            return Err(Error::invalid_input(
                base,
                format!("must be a batch object, an array of batches or JSON text of either, not {}", kind(other)),
            ));
        }
    };

    let mut errors: Vec<FieldError> = Vec::new();
    for (at, batch) in &batches {
        errors.extend(validate::validate_batch(batch, at));
    }
    if !errors.is_empty() {
        return Err(Error::InvalidInput(errors));
    }

    let mut filled = Vec::with_capacity(batches.len());
    let mut ids: Vec<String> = Vec::with_capacity(batches.len());
    for (i, (at, batch)) in batches.iter().enumerate() {
        let mut map = batch.as_object().cloned().unwrap_or_default();
        if map.get("environment").is_none_or(Value::is_null) {
            map.insert("environment".into(), environment.as_str().into());
        }
        let id = match map.get("source_request_id").and_then(Value::as_str).filter(|s| !s.trim().is_empty()) {
            Some(id) => id.to_string(),
            None => {
                require_key(idempotency_key)?;
                let index = (endpoint == EventsEndpoint::BulkEvents).then_some(i);
                let id = source_request_id(idempotency_key, index);
                map.insert("source_request_id".into(), id.clone().into());
                id
            }
        };
        if let Some(first) = ids.iter().position(|other| *other == id) {
            errors.push(FieldError::new(
                pointer(at, "source_request_id"),
                format!("repeats the source_request_id of batch {first}: mParticle would drop this batch as a re-send"),
            ));
        }
        ids.push(id);
        filled.push(Value::Object(map));
    }
    if !errors.is_empty() {
        return Err(Error::InvalidInput(errors));
    }
    match endpoint {
        EventsEndpoint::Events => {
            let batch = filled.pop().expect("one batch");
            single(encode(&batch)?, ids.pop().expect("one id"), || base)
        }
        EventsEndpoint::BulkEvents => {
            bulk(filled, ids, &batches.iter().map(|(at, _)| at.as_str()).collect::<Vec<_>>(), &base)
        }
    }
}

/// Where a too-large batch is blamed: the field that carries most of it, when given.
fn size_pointer(props: &Map<String, Value>, field: &str) -> String {
    match props.get(field) {
        Some(Value::Object(map)) if !map.is_empty() => pointer(PROPERTIES, field),
        _ => PROPERTIES.to_string(),
    }
}

/// A batch as JSON text.
fn encode(batch: &impl Serialize) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(batch).map_err(|e| Error::permanent(format!("could not encode the batch: {e}")))
}

/// A payload of one batch (`body`, encoded) for `/events`, checked against the batch size limit; `at` is where
/// a batch that is too large is blamed.
fn single(body: Vec<u8>, id: String, at: impl FnOnce() -> String) -> Result<EventsPayload, Error> {
    #[cfg(debug_assertions)]
    {
        let batch: Value = serde_json::from_slice(&body).expect("a batch this module serialized");
        let problems = validate::validate_batch(&batch, "");
        assert!(problems.is_empty(), "built an invalid batch: {problems:?}");
    }
    // The pointer is only built for a batch over the limit.
    if body.len() > validate::MAX_BATCH_BYTES {
        return Err(Error::InvalidInput(validate::check_batch_size(body.len(), &at()).into_iter().collect()));
    }
    Ok(EventsPayload { endpoint: EventsEndpoint::Events, source_request_ids: vec![id], body })
}

/// A payload of several batches for `/bulkevents`, checked against the batch and request size limits.
fn bulk(batches: Vec<Value>, ids: Vec<String>, pointers: &[&str], base: &str) -> Result<EventsPayload, Error> {
    let mut body = Vec::with_capacity(batches.len() * 512);
    body.push(b'[');
    let mut errors = Vec::new();
    for (i, batch) in batches.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let start = body.len();
        serde_json::to_writer(&mut body, batch)
            .map_err(|e| Error::permanent(format!("could not encode batch {i}: {e}")))?;
        errors.extend(validate::check_batch_size(body.len() - start, pointers[i]));
    }
    body.push(b']');
    if errors.is_empty() {
        errors.extend(validate::check_request_size(body.len(), base));
    }
    if !errors.is_empty() {
        return Err(Error::InvalidInput(errors));
    }
    Ok(EventsPayload { endpoint: EventsEndpoint::BulkEvents, source_request_ids: ids, body })
}
