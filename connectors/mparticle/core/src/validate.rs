//! mParticle's documented Events API limits and batch format, checked before anything is sent.
//!
//! The checks cover what the published JSON Schema encodes for the batch envelope and for events (field
//! names and types, event types and their required data fields, identity types, the custom event type enum)
//! plus the documented size and length limits the schema leaves out. Deeper parts (device info, commerce
//! details, consent) are left to mParticle, whose HTTP 400 maps to a permanent error.

use crate::error::FieldError;
use crate::input::{index_pointer, kind, pointer, too_long};
use serde_json::{Map, Value};

/// A request to `/events` or `/bulkevents` is at most 256 KB.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// A batch should be at most 128 KB.
pub const MAX_BATCH_BYTES: usize = 128 * 1024;
/// At most 100 batches per `/bulkevents` request.
pub const MAX_BATCHES_PER_REQUEST: usize = 100;
/// Event names and attribute names (event and user) are at most 256 characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Attribute values (event and user) are at most 4096 characters.
pub const MAX_VALUE_CHARS: usize = 4096;
/// At most 100 attributes per event and 100 user attributes per batch.
pub const MAX_ATTRIBUTES: usize = 100;
/// A user attribute list has at most 1000 entries...
pub const MAX_LIST_ENTRIES: usize = 1000;
/// ... of at most 512 characters each.
pub const MAX_LIST_ENTRY_CHARS: usize = 512;

/// The reserved user attributes, as the Events API JSON reference spells them.
pub const RESERVED_USER_ATTRIBUTES: [&str; 10] =
    ["$age", "$gender", "$country", "$zip", "$city", "$state", "$address", "$firstname", "$lastname", "$mobile"];

/// The custom event types the published Events API schema accepts. mParticle documents `attribution` too, but
/// the schema's enum lacks it, so the connector does not send it.
pub const CUSTOM_EVENT_TYPES: [&str; 9] =
    ["navigation", "location", "search", "transaction", "user_content", "user_preference", "social", "other", "media"];

/// The `user_identities` keys of an Events API batch.
pub const IDENTITY_TYPES: [&str; 22] = [
    "customer_id",
    "email",
    "other",
    "other_id_2",
    "other_id_3",
    "other_id_4",
    "other_id_5",
    "other_id_6",
    "other_id_7",
    "other_id_8",
    "other_id_9",
    "other_id_10",
    "mobile_number",
    "phone_number_2",
    "phone_number_3",
    "facebook",
    "twitter",
    "google",
    "microsoft",
    "yahoo",
    "alias",
    "facebook_custom_audience_id",
];

/// One event type of the schema: its name, the `data` fields it requires, and whether the event object may
/// carry fields besides `event_type` and `data`.
struct EventType {
    name: &'static str,
    required_data: &'static [&'static str],
    closed: bool,
}

const fn event(name: &'static str, required_data: &'static [&'static str], closed: bool) -> EventType {
    EventType { name, required_data, closed }
}

/// The event types of the schema's `oneOf` (its `EventType` enum also names `pre_attribution` and
/// `push_reaction`, but no event definition matches them, so a batch with them does not validate).
const EVENT_TYPES: [EventType; 17] = [
    event("custom_event", &["event_name", "custom_event_type"], true),
    event("commerce_event", &[], true),
    event("screen_view", &["screen_name"], false),
    event("session_start", &[], false),
    event("session_end", &["session_duration_ms"], false),
    event("crash_report", &["severity", "message"], false),
    event("opt_out", &["is_opted_out"], false),
    event("first_run", &[], true),
    event("push_registration", &["register", "registration_token"], false),
    event("application_state_transition", &["application_transition_type"], true),
    event("push_message", &["push_message_token", "push_message_type", "push_notification_payload"], false),
    event("network_performance", &["url", "response_code"], false),
    event("breadcrumb", &["label"], true),
    event("profile", &["previous_mpid", "current_mpid", "profile_event_type"], false),
    event("user_attribute_change", &["user_attribute_name"], false),
    event("user_identity_change", &["new", "old"], false),
    event("uninstall", &[], false),
];

/// The names of the schema's `EventType` enum that no event definition matches: a batch sent with them does not
/// validate, but mParticle may still send them to a partner (its Webhook output).
pub const UNDEFINED_EVENT_TYPES: [&str; 2] = ["pre_attribution", "push_reaction"];

/// Every name of the schema's `EventType` enum: the event types of its `oneOf`, then
/// [`UNDEFINED_EVENT_TYPES`].
pub fn event_type_names() -> impl Iterator<Item = &'static str> {
    EVENT_TYPES.iter().map(|t| t.name).chain(UNDEFINED_EVENT_TYPES)
}

/// The top-level fields of an inbound batch (the schema's `properties`).
const BATCH_FIELDS: [&str; 26] = [
    "source_request_id",
    "events",
    "device_info",
    "application_info",
    "user_attributes",
    "deleted_user_attributes",
    "user_identities",
    "environment",
    "api_key",
    "api_keys",
    "ip",
    "integration_attributes",
    "context",
    "partner_identity",
    "partner_identities",
    "source_info",
    "mp_deviceid",
    "attribution_info",
    "timestamp_unixtime_ms",
    "batch_id",
    "mpid",
    "origin_mpid",
    "sdk_version",
    "consent_state",
    "job_id",
    "schema_version",
];

/// Checks one batch against the Events API format and limits; `base` is the batch's JSON pointer. Returns
/// every problem found (the size limit is checked where the batch is serialized).
pub fn validate_batch(batch: &Value, base: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(map) = batch.as_object() else {
        errors.push(FieldError::new(base, format!("a batch must be a JSON object, not {}", kind(batch))));
        return errors;
    };
    for (key, value) in map {
        let at = pointer(base, key);
        match key.as_str() {
            "schema_version" => errors.push(FieldError::new(
                at,
                "schema_version is output-only: the Events API schema rejects it in a batch sent to mParticle",
            )),
            "source_request_id" => {
                if !(value.is_string() || value.is_null()) {
                    errors.push(FieldError::new(at, format!("must be a string, not {}", kind(value))));
                }
            }
            "environment" => match value {
                Value::Null => {}
                Value::String(s) if s == "development" || s == "production" => {}
                _ => errors.push(FieldError::new(at, "must be \"development\" or \"production\"")),
            },
            "events" => match value {
                Value::Null => {}
                Value::Array(events) => {
                    for (i, event) in events.iter().enumerate() {
                        validate_event(event, &index_pointer(&at, i), &mut errors);
                    }
                }
                other => errors.push(FieldError::new(at, format!("must be an array of events, not {}", kind(other)))),
            },
            "user_identities" => validate_identities(value, &at, &mut errors),
            "user_attributes" => validate_user_attributes(value, &at, &mut errors),
            "deleted_user_attributes" => match value {
                Value::Null => {}
                Value::Array(names) => {
                    for (i, name) in names.iter().enumerate() {
                        if !name.is_string() {
                            errors.push(FieldError::new(index_pointer(&at, i), "must be an attribute name (a string)"));
                        }
                    }
                }
                other => errors.push(FieldError::new(at, format!("must be an array of names, not {}", kind(other)))),
            },
            "mpid" | "origin_mpid" | "batch_id" | "timestamp_unixtime_ms" => {
                if !(value.is_i64() || value.is_u64() || value.is_null()) {
                    errors.push(FieldError::new(at, format!("must be an integer, not {}", kind(value))));
                }
            }
            name if BATCH_FIELDS.contains(&name) => {}
            _ => errors.push(FieldError::new(
                at,
                "is not a field of an Events API batch (see mParticle's Events API JSON reference)",
            )),
        }
    }
    errors
}

fn validate_identities(value: &Value, at: &str, errors: &mut Vec<FieldError>) {
    let map = match value {
        Value::Null => return,
        Value::Object(map) => map,
        other => return errors.push(FieldError::new(at, format!("must be an object, not {}", kind(other)))),
    };
    for (key, value) in map {
        let here = pointer(at, key);
        if !IDENTITY_TYPES.contains(&key.as_str()) {
            errors.push(FieldError::new(
                here,
                format!("is not an Events API identity type ({})", IDENTITY_TYPES.join(", ")),
            ));
        } else if !is_scalar(value) {
            errors.push(FieldError::new(here, format!("must be a string, not {}", kind(value))));
        }
    }
}

/// User attributes: at most 100, names at most 256 characters, values scalars of at most 4096 characters or
/// lists of at most 1000 strings of at most 512 characters.
fn validate_user_attributes(value: &Value, at: &str, errors: &mut Vec<FieldError>) {
    let map = match value {
        Value::Null => return,
        Value::Object(map) => map,
        other => return errors.push(FieldError::new(at, format!("must be an object, not {}", kind(other)))),
    };
    if map.len() > MAX_ATTRIBUTES {
        errors.push(FieldError::new(
            at,
            format!("has {} user attributes; mParticle accepts at most {MAX_ATTRIBUTES} per batch", map.len()),
        ));
    }
    for (name, value) in map {
        let here = pointer(at, name);
        check_name(name, &here, errors);
        match value {
            Value::Array(list) => check_list(list, &here, errors),
            other => check_value(other, &here, errors),
        }
    }
}

/// A user attribute list: at most 1000 strings of at most 512 characters.
pub(crate) fn check_list(list: &[Value], at: &str, errors: &mut Vec<FieldError>) {
    if list.len() > MAX_LIST_ENTRIES {
        errors.push(FieldError::new(
            at,
            format!("has {} entries; mParticle accepts at most {MAX_LIST_ENTRIES} per user attribute list", list.len()),
        ));
    }
    for (i, entry) in list.iter().enumerate() {
        match entry {
            Value::String(s) => {
                if let Some(n) = too_long(s, MAX_LIST_ENTRY_CHARS) {
                    errors.push(FieldError::new(
                        index_pointer(at, i),
                        format!("is {n} characters; mParticle accepts at most {MAX_LIST_ENTRY_CHARS} per list entry"),
                    ));
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
            other => {
                errors.push(FieldError::new(index_pointer(at, i), format!("must be a string, not {}", kind(other))))
            }
        }
    }
}

/// An attribute name: not empty, at most 256 characters.
pub(crate) fn check_name(name: &str, at: &str, errors: &mut Vec<FieldError>) {
    if let Some(problem) = name_problem(name) {
        errors.push(FieldError::new(at, problem));
    }
}

/// What is wrong with an attribute name, if anything.
pub(crate) fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("an attribute name must not be empty".to_string())
    } else {
        too_long(name, MAX_NAME_CHARS)
            .map(|n| format!("the attribute name is {n} characters; mParticle accepts at most {MAX_NAME_CHARS}"))
    }
}

/// An attribute value: a string of at most 4096 characters, a number, a boolean or null.
pub(crate) fn check_value(value: &Value, at: &str, errors: &mut Vec<FieldError>) {
    match value {
        Value::String(s) => {
            if let Some(n) = too_long(s, MAX_VALUE_CHARS) {
                errors.push(FieldError::new(
                    at,
                    format!("the value is {n} characters; mParticle accepts at most {MAX_VALUE_CHARS}"),
                ));
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
        other => errors.push(FieldError::new(at, format!("must be a string, number or boolean, not {}", kind(other)))),
    }
}

fn is_scalar(value: &Value) -> bool {
    !matches!(value, Value::Array(_) | Value::Object(_))
}

fn validate_event(event: &Value, at: &str, errors: &mut Vec<FieldError>) {
    let Some(map) = event.as_object() else {
        return errors.push(FieldError::new(at, format!("an event must be an object, not {}", kind(event))));
    };
    let type_at = pointer(at, "event_type");
    let event_type = match map.get("event_type") {
        Some(Value::String(name)) => match EVENT_TYPES.iter().find(|t| t.name == name) {
            Some(t) => Some(t),
            None => {
                let names: Vec<_> = EVENT_TYPES.iter().map(|t| t.name).collect();
                errors.push(FieldError::new(
                    type_at,
                    format!("{name:?} is not an event type the Events API accepts ({})", names.join(", ")),
                ));
                None
            }
        },
        None | Some(Value::Null) => {
            errors.push(FieldError::new(type_at, "is required"));
            None
        }
        Some(other) => {
            errors.push(FieldError::new(type_at, format!("must be a string, not {}", kind(other))));
            None
        }
    };
    let data_at = pointer(at, "data");
    let data = match map.get("data") {
        Some(Value::Object(data)) => Some(data),
        None => {
            errors.push(FieldError::new(&data_at, "is required"));
            None
        }
        Some(other) => {
            errors.push(FieldError::new(&data_at, format!("must be an object, not {}", kind(other))));
            None
        }
    };
    if let Some(t) = event_type
        && t.closed
    {
        for key in map.keys().filter(|k| *k != "event_type" && *k != "data") {
            errors.push(FieldError::new(
                pointer(at, key),
                format!("is not allowed: a {} event has only event_type and data", t.name),
            ));
        }
    }
    let Some(data) = data else { return };
    if let Some(t) = event_type {
        for field in t.required_data {
            if !data.contains_key(*field) {
                errors.push(FieldError::new(pointer(&data_at, field), format!("is required in a {} event", t.name)));
            }
        }
        if t.name == "custom_event" {
            validate_custom_event_data(data, &data_at, errors);
        }
    }
    validate_event_data(data, &data_at, errors);
}

fn validate_custom_event_data(data: &Map<String, Value>, at: &str, errors: &mut Vec<FieldError>) {
    match data.get("event_name") {
        Some(Value::String(name)) => {
            if name.is_empty() {
                errors.push(FieldError::new(pointer(at, "event_name"), "must not be empty"));
            } else if let Some(n) = too_long(name, MAX_NAME_CHARS) {
                errors.push(FieldError::new(
                    pointer(at, "event_name"),
                    format!("the event name is {n} characters; mParticle accepts at most {MAX_NAME_CHARS}"),
                ));
            }
        }
        Some(other) => {
            errors.push(FieldError::new(pointer(at, "event_name"), format!("must be a string, not {}", kind(other))))
        }
        None => {}
    }
    match data.get("custom_event_type") {
        Some(Value::String(t)) if CUSTOM_EVENT_TYPES.contains(&t.as_str()) => {}
        Some(Value::String(t)) if t == "attribution" => errors.push(FieldError::new(
            pointer(at, "custom_event_type"),
            "attribution is documented by mParticle but rejected by its published Events API schema; use one of \
             navigation, location, search, transaction, user_content, user_preference, social, other, media",
        )),
        Some(_) => errors.push(FieldError::new(
            pointer(at, "custom_event_type"),
            format!("must be one of {}", CUSTOM_EVENT_TYPES.join(", ")),
        )),
        None => {}
    }
    if let Some(flags) = data.get("custom_flags") {
        match flags {
            Value::Null => {}
            Value::Object(flags) => {
                for (name, value) in flags {
                    if !is_scalar(value) {
                        errors.push(FieldError::new(
                            pointer(&pointer(at, "custom_flags"), name),
                            format!("must be a string, not {}", kind(value)),
                        ));
                    }
                }
            }
            other => errors
                .push(FieldError::new(pointer(at, "custom_flags"), format!("must be an object, not {}", kind(other)))),
        }
    }
}

/// The data fields every event type shares: custom attributes (at most 100, names at most 256 characters,
/// values at most 4096), the timestamp and the message id.
fn validate_event_data(data: &Map<String, Value>, at: &str, errors: &mut Vec<FieldError>) {
    if let Some(attributes) = data.get("custom_attributes") {
        let here = pointer(at, "custom_attributes");
        match attributes {
            Value::Null => {}
            Value::Object(attributes) => {
                if attributes.len() > MAX_ATTRIBUTES {
                    errors.push(FieldError::new(
                        &here,
                        format!(
                            "has {} attributes; mParticle accepts at most {MAX_ATTRIBUTES} per event",
                            attributes.len()
                        ),
                    ));
                }
                for (name, value) in attributes {
                    let there = pointer(&here, name);
                    check_name(name, &there, errors);
                    check_value(value, &there, errors);
                }
            }
            other => errors.push(FieldError::new(here, format!("must be an object, not {}", kind(other)))),
        }
    }
    if let Some(timestamp) = data.get("timestamp_unixtime_ms")
        && !(timestamp.is_i64() || timestamp.is_u64() || timestamp.is_null())
    {
        errors.push(FieldError::new(
            pointer(at, "timestamp_unixtime_ms"),
            format!("must be an integer (milliseconds since the epoch), not {}", kind(timestamp)),
        ));
    }
    if let Some(id) = data.get("source_message_id")
        && !id.is_string()
    {
        errors.push(FieldError::new(pointer(at, "source_message_id"), format!("must be a string, not {}", kind(id))));
    }
}

/// An error when a serialized batch is over the 128 KB limit.
pub fn check_batch_size(bytes: usize, at: &str) -> Option<FieldError> {
    (bytes > MAX_BATCH_BYTES).then(|| {
        FieldError::new(
            at,
            format!("the batch is {bytes} bytes; mParticle accepts at most {MAX_BATCH_BYTES} bytes (128 KB) per batch"),
        )
    })
}

/// An error when a request body is over the 256 KB limit.
pub fn check_request_size(bytes: usize, at: &str) -> Option<FieldError> {
    (bytes > MAX_REQUEST_BYTES).then(|| {
        FieldError::new(
            at,
            format!(
                "the request is {bytes} bytes; mParticle accepts at most {MAX_REQUEST_BYTES} bytes (256 KB) per request"
            ),
        )
    })
}
