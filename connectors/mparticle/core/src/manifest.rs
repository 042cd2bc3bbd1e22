//! The connector's manifest: connection properties, allowed hosts and capabilities with their schemas.

use crate::config::{DEFAULT_AUTH_URL, DEFAULT_PLATFORM_API_URL};
use serde_json::json;

/// The connector id.
pub const CONNECTOR_ID: &str = "mparticle";
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
        "createAccount",
        "Create an account",
        "Create a new account within mParticle.",
        include_str!("../schemas/createAccount.input.json"),
        include_str!("../schemas/createAccount.output.json"),
    ),
    (
        "getAccount",
        "Get a single account",
        "Get information on an existing account within mParticle.",
        include_str!("../schemas/getAccount.input.json"),
        include_str!("../schemas/getAccount.output.json"),
    ),
    (
        "updateAccount",
        "Update an account",
        "Update an existing account within mParticle",
        include_str!("../schemas/updateAccount.input.json"),
        include_str!("../schemas/updateAccount.output.json"),
    ),
    (
        "deleteAccount",
        "Delete an account",
        "Delete an existing account within mParticle",
        include_str!("../schemas/deleteAccount.input.json"),
        include_str!("../schemas/deleteAccount.output.json"),
    ),
    (
        "getAudiences",
        "Get all audiences",
        "Get all audiences for an account. Audiences allow you to segment your users and view their historical \
         context for re-engagement, for example 'Abandoned Shopping Cart audience'",
        include_str!("../schemas/getAudiences.input.json"),
        include_str!("../schemas/getAudiences.output.json"),
    ),
    (
        "getCalculatedAttributes",
        "Get all calculated attributes",
        "Calculated attribute is a read-only value about a single user, providing granular insight into user \
         behavior. Create a flow that leverages this API to view 'check out' step, for example.",
        include_str!("../schemas/getCalculatedAttributes.input.json"),
        include_str!("../schemas/getCalculatedAttributes.output.json"),
    ),
    (
        "uploadEventBatch",
        "Upload an event batch",
        "Send event data directly to mParticle",
        include_str!("../schemas/uploadEventBatch.input.json"),
        include_str!("../schemas/uploadEventBatch.output.json"),
    ),
    (
        "triggerMarketingCommunication",
        "Trigger marketing communication",
        "Send a loyalty event (e.g. point_add) to mParticle as a custom event with its payload as event \
         attributes, for one member, so that mParticle can trigger a marketing communication.",
        include_str!("../schemas/triggerMarketingCommunication.input.json"),
        include_str!("../schemas/triggerMarketingCommunication.output.json"),
    ),
    (
        "syncUserAttributes",
        "Sync user attributes",
        "Set (or, with null, delete) a member's user attributes in mParticle: reserved $ attributes such as \
         $firstname and custom attributes such as tier.",
        include_str!("../schemas/syncUserAttributes.input.json"),
        include_str!("../schemas/syncUserAttributes.output.json"),
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

fn property(name: &str, title: &str, description: &str, secret: bool, schema: serde_json::Value) -> ConnectionProperty {
    ConnectionProperty {
        name: name.into(),
        title: title.into(),
        description: description.into(),
        secret,
        required: false,
        schema: schema.to_string(),
    }
}

/// The manifest. No property is required at schema level: DaVinci users have only OAuth credentials and
/// Events API users only the key and secret; each capability names what it misses.
pub fn describe() -> Manifest {
    let url = json!({"type": "string", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"});
    let with_default = |default: &str| {
        let mut schema = url.clone();
        schema["default"] = default.into();
        schema
    };
    let connection_properties = vec![
        property(
            "clientId",
            "Client ID",
            "Client ID of mParticle API credentials (Settings > API Credentials) with access to the Platform API. \
             Needed by the account, audience and calculated attribute capabilities.",
            false,
            json!({"type": "string"}),
        ),
        property(
            "clientSecret",
            "Client Secret",
            "Client Secret of those API credentials (shown once, when the credentials are created).",
            true,
            json!({"type": "string"}),
        ),
        property(
            "pod",
            "Pod",
            "The mParticle pod (data hosting location) of the workspace; selects the Events API host for \
             uploadEventBatch, triggerMarketingCommunication and syncUserAttributes.",
            false,
            json!({"type": "string", "enum": ["US1", "US2", "EU1", "AU1"], "default": "US1"}),
        ),
        property(
            "apiKey",
            "Server to Server Key",
            "The Server to Server Key of an input feed (Setup > Inputs > Feeds, or Platforms). Needed by the \
             event capabilities.",
            false,
            json!({"type": "string"}),
        ),
        property(
            "apiSecret",
            "Server to Server Secret",
            "The Server to Server Secret of that input feed.",
            true,
            json!({"type": "string"}),
        ),
        property(
            "environment",
            "Environment",
            "Where event data goes: development keeps it apart from production data (Live Stream shows it).",
            false,
            json!({"type": "string", "enum": ["development", "production"], "default": "production"}),
        ),
        property(
            "authUrl",
            "OAuth token URL",
            "Override of the OAuth token endpoint, e.g. for a test emulator.",
            false,
            with_default(DEFAULT_AUTH_URL),
        ),
        property(
            "platformApiUrl",
            "Platform API URL",
            "Override of the Platform API base URL (v1 paths and /platform/v2 are under it).",
            false,
            with_default(DEFAULT_PLATFORM_API_URL),
        ),
        property(
            "eventsApiUrl",
            "Events API URL",
            "Override of the Events API base URL (/events and /bulkevents are under it). Defaults to the pod's \
             host, e.g. https://s2s.us1.mparticle.com/v2; partner feeds use https://inbound.mparticle.com/s2s/v2.",
            false,
            url.clone(),
        ),
    ];
    let allowed_hosts = [
        "https://sso.auth.mparticle.com",
        "https://api.mparticle.com",
        "https://s2s.mparticle.com",
        "https://s2s.us1.mparticle.com",
        "https://s2s.us2.mparticle.com",
        "https://s2s.eu1.mparticle.com",
        "https://s2s.au1.mparticle.com",
        "{authUrl}",
        "{platformApiUrl}",
        "{eventsApiUrl}",
    ];
    Manifest {
        id: CONNECTOR_ID.into(),
        version: CONNECTOR_VERSION.into(),
        display_name: "mParticle".into(),
        description: "mParticle customer data platform: accounts, audiences and calculated attributes (Platform \
                      API), and events and user attributes (Events API), e.g. for a loyalty integration."
            .into(),
        connection_properties,
        allowed_hosts: allowed_hosts.iter().map(|h| h.to_string()).collect(),
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
