//! The mParticle connector's logic as a plain Rust library.
//!
//! Everything the connector does lives here: the manifest ([`describe`]), the connection check ([`check`]),
//! the capabilities ([`invoke`]), request and batch building, validation against mParticle's documented
//! format and limits, error mapping and OAuth token caching. The outside world is reached only through
//! [`Host`], so the same code runs natively (tests, benchmarks) and inside the WebAssembly component, whose
//! crate (`mparticle-connector`) only adapts the WIT imports and types.
//!
//! Capabilities:
//! - Platform API (OAuth client credentials, token cached through the host): `createAccount`, `getAccount`,
//!   `updateAccount`, `deleteAccount`, `getAudiences`, `getCalculatedAttributes`.
//! - Events API (HTTP Basic with the server-to-server key and secret; every batch carries a
//!   `source_request_id` derived from the invocation's idempotency key): `uploadEventBatch`,
//!   `triggerMarketingCommunication`, `syncUserAttributes`.
//!
//! Inbound ([`receive`], [`describe_inbound`]): mParticle's Webhook output and Firehose requests, parsed into
//! normalized events (Events API names) and answered as mParticle expects.

pub mod batch;
pub mod config;
pub mod error;
pub mod events;
pub mod host;
pub mod http;
pub mod inbound;
pub mod input;
pub mod manifest;
pub mod oauth;
pub mod platform;
pub mod validate;

pub use batch::{
    EventsEndpoint, EventsPayload, build_marketing_event_batch, build_upload_event_batches,
    build_user_attributes_batch, source_request_id,
};
pub use config::{Config, Environment, Pod};
pub use error::{Error, FieldError};
pub use host::{Host, HttpRequest, HttpResponse, Level, Method, TransportError};
pub use inbound::{InboundEvent, InboundInfo, InboundRequest, InboundResponse, Received, describe_inbound, receive};
pub use manifest::{CAPABILITY_IDS, Capability, ConnectionProperty, Manifest, describe};
pub use validate::validate_batch;

use serde_json::Value;

/// Where an invocation comes from (mirrors the WIT `invocation-context`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Context {
    pub run_id: String,
    pub node_id: String,
    /// The same for every attempt of one node execution; the source of every `source_request_id`.
    pub idempotency_key: String,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// Verifies the credentials the connection has: mints (and caches) an OAuth token when `clientId` and
/// `clientSecret` are set, and sends a probe batch that records nothing (no identities, attributes or events;
/// development environment) when `apiKey` and `apiSecret` are set. `InvalidConfig` when neither pair is
/// complete.
pub fn check(host: &mut dyn Host, connection: &Value) -> Result<(), Error> {
    let config = Config::parse(connection)?;
    if config.oauth.is_none() && config.events.is_none() {
        return Err(Error::InvalidConfig(format!(
            "the connection has no complete credentials: set clientId and clientSecret (Platform API) and/or apiKey \
             and apiSecret (Events API); {}; {}",
            missing_text(config.require_oauth().err()),
            missing_text(config.require_events().err()),
        )));
    }
    if let Some(credentials) = &config.oauth {
        oauth::mint(host, &config, credentials)?;
        host.log(Level::Info, "mParticle accepted the clientId/clientSecret");
    } else {
        host.log(Level::Info, "no clientId/clientSecret: the Platform API capabilities will not work");
    }
    if config.events.is_some() {
        events::check(host, &config)?;
    } else {
        host.log(Level::Info, "no apiKey/apiSecret: the Events API capabilities will not work");
    }
    Ok(())
}

fn missing_text(error: Option<Error>) -> String {
    match error {
        Some(Error::InvalidConfig(message)) => message,
        _ => String::new(),
    }
}

/// Runs one capability and returns its output as JSON text (as the WIT contract hands it back). `input` is
/// shaped like the DaVinci wrapper: `{"properties": {...}}`.
pub fn invoke(
    host: &mut dyn Host,
    capability: &str,
    connection: &Value,
    input: &Value,
    context: &Context,
) -> Result<String, Error> {
    let config = Config::parse(connection)?;
    invoke_with(host, &config, capability, input, context)
}

/// Runs one capability for each `(input, context)` item and returns one result per item, in order. The
/// connection is parsed once. The Events API capabilities send every item's batches together, in as few
/// `/bulkevents` requests as mParticle's limits allow (see [`events::send_together`]); an item whose input is
/// wrong fails alone and is not sent. Other capabilities run item by item.
pub fn invoke_batch(
    host: &mut dyn Host,
    capability: &str,
    connection: &Value,
    items: &[(Value, Context)],
) -> Vec<Result<String, Error>> {
    let config = match Config::parse(connection) {
        Ok(config) => config,
        Err(error) => return vec![Err(error); items.len()],
    };
    if !EVENT_CAPABILITIES.contains(&capability) {
        return items.iter().map(|(input, context)| invoke_with(host, &config, capability, input, context)).collect();
    }
    if let Err(error) = config.require_events() {
        return vec![Err(error); items.len()];
    }
    log_retries(host, capability, items.iter().map(|(_, context)| context));
    let payloads: Vec<Result<EventsPayload, Error>> = items
        .iter()
        .map(|(input, context)| build_events_payload(capability, input, config.environment, &context.idempotency_key))
        .collect();
    let valid: Vec<&EventsPayload> = payloads.iter().filter_map(|p| p.as_ref().ok()).collect();
    let mut sent = events::send_together(host, &config, capability, &valid).into_iter();
    payloads
        .into_iter()
        .map(|payload| match payload {
            Ok(_) => sent.next().expect("one result per payload sent"),
            Err(error) => Err(error),
        })
        .collect()
}

/// The capabilities that send batches to the Events API: the ones worth batching.
pub const EVENT_CAPABILITIES: [&str; 3] = ["uploadEventBatch", "triggerMarketingCommunication", "syncUserAttributes"];

fn invoke_with(
    host: &mut dyn Host,
    config: &Config,
    capability: &str,
    input: &Value,
    context: &Context,
) -> Result<String, Error> {
    log_retries(host, capability, [context]);
    match capability {
        "createAccount"
        | "getAccount"
        | "updateAccount"
        | "deleteAccount"
        | "getAudiences"
        | "getCalculatedAttributes" => platform::invoke(host, config, capability, input).map(|o| o.to_string()),
        _ if EVENT_CAPABILITIES.contains(&capability) => {
            config.require_events()?;
            let payload = build_events_payload(capability, input, config.environment, &context.idempotency_key)?;
            events::send(host, config, capability, &payload)
        }
        other => Err(Error::invalid_input(
            "",
            format!("unknown capability {other:?}; the mParticle connector offers {}", CAPABILITY_IDS.join(", ")),
        )),
    }
}

/// Notes in the log which calls are retries.
fn log_retries<'a>(host: &mut dyn Host, capability: &str, contexts: impl IntoIterator<Item = &'a Context>) {
    for context in contexts {
        if context.attempt > 1 {
            host.log(Level::Info, &format!("{capability}: attempt {} of {}", context.attempt, context.idempotency_key));
        }
    }
}

/// The checked Events API payload of an event capability, without sending it.
pub fn build_events_payload(
    capability: &str,
    input: &Value,
    environment: Environment,
    idempotency_key: &str,
) -> Result<EventsPayload, Error> {
    match capability {
        "uploadEventBatch" => build_upload_event_batches(input, environment, idempotency_key),
        "triggerMarketingCommunication" => build_marketing_event_batch(input, environment, idempotency_key),
        "syncUserAttributes" => build_user_attributes_batch(input, environment, idempotency_key),
        other => Err(Error::invalid_input("", format!("{other:?} is not an Events API capability"))),
    }
}
