//! Inbound events: what a source (so far mParticle) posts to flowhost, parsed and normalized into
//! [`InboundEvent`]s that inbound flows are triggered with.
//!
//! - [`mparticle`] detects and parses mParticle's two formats (Webhook output batches and Firehose requests),
//!   and builds the answers Firehose expects.
//! - [`mapping`] applies an Antavo-style "inbound events data mapping": `{field}` takes a field of the inbound
//!   event, anything else is a literal.
//!
//! Nothing here does I/O: the HTTP endpoint, authentication and durable accept live with the host.

pub mod mapping;
pub mod mparticle;

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One event received from a source, normalized across formats: what an inbound flow's trigger sees.
///
/// Names follow mParticle's Events API whatever format the event arrived in, so that one flow matches the
/// same event from the Webhook output and from Firehose.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundEvent {
    /// Where the event came from: [`mparticle::WEBHOOK_SOURCE`] or [`mparticle::FIREHOSE_SOURCE`].
    pub source: String,
    /// The event's own id when it has one (Firehose `events[].id`; Webhook `message_id`, else
    /// `data.source_message_id`, else `data.event_id`).
    pub message_id: Option<String>,
    /// The Events API event type: `custom_event`, `commerce_event`, `screen_view`, `session_start`,
    /// `session_end`, `user_attribute_change`, `user_identity_change`, `crash_report`, …; a type with no
    /// Events API counterpart is kept as received.
    pub event_type: String,
    /// The event type exactly as received (e.g. Firehose `product_action` for a `commerce_event`).
    pub source_event_type: String,
    /// The name of a custom event or screen view.
    pub event_name: Option<String>,
    /// For custom events: `navigation`, `transaction`, `other`, …
    pub custom_event_type: Option<String>,
    /// When the event happened, in milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// The mParticle user id, as a string whether it arrived as a number or a string (it is an int64 that
    /// JavaScript-based consumers could not hold exactly as a number).
    pub mpid: Option<String>,
    /// The user's identities by Events API name (`customer_id`, `email`, `other_id_2`, …); names with no
    /// Events API counterpart are kept as received.
    pub identities: BTreeMap<String, String>,
    /// The user's attributes (values are strings, or lists of strings for list attributes).
    pub user_attributes: Map<String, Value>,
    /// The event's custom attributes.
    pub attributes: Map<String, Value>,
    /// The loyalty customer this event is about. The parser leaves it `None`; the host fills it from the
    /// identity the connection is configured with.
    pub customer: Option<String>,
    /// The raw event object as received, for fields the normalized form does not carry.
    pub event: Value,
}

impl InboundEvent {
    /// The event as JSON (camelCase keys, absent values as `null`): what a flow's `trigger` is bound to and
    /// what [`mapping::map_fields`] reads.
    pub fn to_value(&self) -> Value {
        // Every field is a string, integer, map with string keys or JSON value: serializing cannot fail.
        serde_json::to_value(self).expect("an InboundEvent always serializes to JSON")
    }
}
