//! The connector's manifest: connection properties, allowed hosts and capabilities with their schemas.

use crate::config::DEFAULT_WEBHOOK_PATH;
use serde_json::json;

/// The connector id.
pub const CONNECTOR_ID: &str = "antavo";
/// The connector version.
pub const CONNECTOR_VERSION: &str = "0.1.0";

/// One property of a connection's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionProperty {
    pub name: String,
    pub title: String,
    pub description: String,
    pub secret: bool,
    pub required: bool,
    /// The JSON Schema of the value, as JSON text.
    pub schema: String,
}

/// One capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub id: String,
    pub title: String,
    pub description: String,
    /// The input schema as JSON text, in the DaVinci wrapper `{"default": {...}}`.
    pub input_schema: String,
    /// The output schema as JSON text.
    pub output_schema: String,
}

/// What the connector is and can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub id: String,
    pub version: String,
    pub display_name: String,
    pub description: String,
    pub connection_properties: Vec<ConnectionProperty>,
    pub allowed_hosts: Vec<String>,
    pub capabilities: Vec<Capability>,
}

impl Manifest {
    pub fn capability(&self, id: &str) -> Option<&Capability> {
        self.capabilities.iter().find(|c| c.id == id)
    }
}

/// The capabilities: id, title, description, input schema, output schema.
const CAPABILITIES: [(&str, &str, &str, &str, &str); 9] = [
    (
        "sendEvent",
        "Send an event",
        "Record one event for a customer (POST /events): a point_add, a checkout, a custom action of the workspace. \
         Calls made at the same time on one connection are sent together in /events/bulk requests.",
        include_str!("../schemas/sendEvent.input.json"),
        include_str!("../schemas/sendEvent.output.json"),
    ),
    (
        "sendEvents",
        "Send events in bulk",
        "Record many events in order (POST /events/bulk, at most 50 per request); each event succeeds or is refused \
         on its own.",
        include_str!("../schemas/sendEvents.input.json"),
        include_str!("../schemas/sendEvents.output.json"),
    ),
    (
        "sendAsyncEvent",
        "Send an async event",
        "Queue one event with the Async Events API (OAuth client credentials); returns the correlation id to read its \
         result with.",
        include_str!("../schemas/sendAsyncEvent.input.json"),
        include_str!("../schemas/sendAsyncEvent.output.json"),
    ),
    (
        "getAsyncEventStatus",
        "Read an async event's status",
        "The status and result of an event queued with sendAsyncEvent.",
        include_str!("../schemas/getAsyncEventStatus.input.json"),
        include_str!("../schemas/getAsyncEventStatus.output.json"),
    ),
    (
        "getCustomer",
        "Get a customer",
        "A customer's profile and balances, by Antavo id or by an external id (GET /customers/{id}).",
        include_str!("../schemas/getCustomer.input.json"),
        include_str!("../schemas/getCustomer.output.json"),
    ),
    (
        "listChangedCustomers",
        "List customers changed since a time",
        "The ids of the customers changed after a time (GET /customers?updated_at.gt=...), a page at a time: the \
         incremental pull of a two-way sync.",
        include_str!("../schemas/listChangedCustomers.input.json"),
        include_str!("../schemas/listChangedCustomers.output.json"),
    ),
    (
        "optIn",
        "Opt a customer in",
        "Create a loyalty member with profile attributes (an opt_in event). A customer who already opted in is \
         refused (112101).",
        include_str!("../schemas/optIn.input.json"),
        include_str!("../schemas/optIn.output.json"),
    ),
    (
        "updateProfile",
        "Update a customer's profile",
        "Change profile attributes of a member (a profile event): standard fields such as first_name and custom \
         customer fields.",
        include_str!("../schemas/updateProfile.input.json"),
        include_str!("../schemas/updateProfile.output.json"),
    ),
    (
        "optOut",
        "Opt a customer out",
        "End a membership (an opt_out event); Antavo anonymises the member.",
        include_str!("../schemas/optOut.input.json"),
        include_str!("../schemas/optOut.output.json"),
    ),
];

/// The ids of the capabilities, in manifest order.
pub const CAPABILITY_IDS: [&str; 9] = [
    CAPABILITIES[0].0,
    CAPABILITIES[1].0,
    CAPABILITIES[2].0,
    CAPABILITIES[3].0,
    CAPABILITIES[4].0,
    CAPABILITIES[5].0,
    CAPABILITIES[6].0,
    CAPABILITIES[7].0,
    CAPABILITIES[8].0,
];

fn property(
    name: &str,
    title: &str,
    description: &str,
    secret: bool,
    required: bool,
    schema: serde_json::Value,
) -> ConnectionProperty {
    ConnectionProperty {
        name: name.into(),
        title: title.into(),
        description: description.into(),
        secret,
        required,
        schema: schema.to_string(),
    }
}

/// The manifest.
pub fn describe() -> Manifest {
    let connection_properties = vec![
        property(
            "environment",
            "Environment",
            "The label of the workspace's API host api.<environment>.antavo.com, e.g. st2 (staging) or eu6 \
             (production). It is also the region of every Escher signature.",
            false,
            true,
            json!({"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", "examples": ["st2", "eu6"]}),
        ),
        property(
            "apiKey",
            "API key",
            "The workspace's API key (Management UI > Settings > API settings). Signs every request except async \
             events, and checks the signature of Antavo's webhooks.",
            false,
            false,
            json!({"type": "string"}),
        ),
        property(
            "apiSecret",
            "API secret",
            "The API secret shown once beside the key. It never leaves the connector except as a signature.",
            true,
            false,
            json!({"type": "string"}),
        ),
        property(
            "clientId",
            "OAuth client ID",
            "An OAuth client of the Authentication Manager with the scope loyalty.async_events: needed by \
             sendAsyncEvent and getAsyncEventStatus only.",
            false,
            false,
            json!({"type": "string"}),
        ),
        property(
            "clientSecret",
            "OAuth client secret",
            "That client's secret (shown once).",
            true,
            false,
            json!({"type": "string"}),
        ),
        property(
            "apiUrl",
            "API URL",
            "Override of the API base URL (default https://api.<environment>.antavo.com), e.g. for an emulator. The \
             signing region stays the environment.",
            false,
            false,
            json!({"type": "string", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"}),
        ),
        property(
            "webhookPath",
            "Webhook path",
            "The path of the URL Antavo posts webhooks to, as Antavo signs it: flowhost's inbound route of this \
             connection (/v1/inbound/<connection>) plus any prefix a proxy adds.",
            false,
            false,
            json!({"type": "string", "pattern": "^/", "default": DEFAULT_WEBHOOK_PATH}),
        ),
    ];
    Manifest {
        id: CONNECTOR_ID.into(),
        version: CONNECTOR_VERSION.into(),
        display_name: "Antavo".into(),
        description: "Antavo Loyalty Cloud: events (points, checkouts, profile, opt-in and opt-out), bulk and async \
                      events, customers, with Escher-signed requests; and Antavo's webhooks in."
            .into(),
        connection_properties,
        allowed_hosts: vec!["https://*.antavo.com".into(), "{apiUrl}".into()],
        capabilities: CAPABILITIES
            .iter()
            .map(|(id, title, description, input, output)| Capability {
                id: (*id).into(),
                title: (*title).into(),
                description: (*description).into(),
                input_schema: (*input).into(),
                output_schema: (*output).into(),
            })
            .collect(),
    }
}
