//! The Antavo connector's logic as a plain Rust library.
//!
//! Everything the connector does lives here: Escher signing ([`escher`]), the manifest ([`describe`]), the
//! connection check ([`check`]), the capabilities ([`invoke`], [`invoke_batch`]), error mapping, the OAuth
//! token of the Async Events API, and the inbound side ([`receive`]: Antavo's webhooks, verified and
//! normalized). The outside world is reached only through [`Host`], so the same code runs natively (tests)
//! and inside the WebAssembly component, whose crate (`antavo-connector`) only adapts the WIT imports and
//! types.
//!
//! Capabilities:
//! - Events API (Escher-signed with the API key and secret): `sendEvent`, `optIn`, `updateProfile`, `optOut`
//!   (one event each, `POST /events`; calls that meet are batched into `/events/bulk`), `sendEvents` (many,
//!   `/events/bulk`).
//! - Async Events API (OAuth bearer token, cached): `sendAsyncEvent`, `getAsyncEventStatus`.
//! - Customer API (Escher-signed): `getCustomer`, `listChangedCustomers`.
//!
//! The API secret is used only as an HMAC key: no output, log line, error or `Debug` carries it.

pub mod async_events;
pub mod config;
pub mod customers;
pub mod error;
pub mod escher;
pub mod events;
pub mod host;
pub mod http;
pub mod inbound;
pub mod input;
pub mod manifest;
pub mod time;

pub use config::Config;
pub use error::{Error, FieldError};
pub use events::EVENT_CAPABILITIES;
pub use host::{Host, HttpRequest, HttpResponse, Level, Method, TransportError};
pub use inbound::{InboundEvent, InboundInfo, InboundRequest, InboundResponse, Received, describe_inbound, receive};
pub use manifest::{CAPABILITY_IDS, Capability, ConnectionProperty, Manifest, describe};

use serde_json::Value;

/// Where an invocation comes from (mirrors the WIT `invocation-context`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Context {
    pub run_id: String,
    pub node_id: String,
    pub idempotency_key: String,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// Verifies the credentials the connection has: a signed read (`GET /customers/-/count`) with the API key and
/// secret, and a token minted (and cached) with the OAuth client. `InvalidConfig` naming the properties when
/// it has neither.
pub fn check(host: &mut dyn Host, connection: &Value) -> Result<(), Error> {
    let config = Config::parse(connection)?;
    if config.api.is_none() && config.oauth.is_none() {
        return Err(Error::InvalidConfig(format!(
            "the connection has no complete credentials: set apiKey and apiSecret (every API but async events) \
             and/or clientId and clientSecret (async events); {}",
            config.require_api().err().map(|e| e.to_string()).unwrap_or_default()
        )));
    }
    if config.api.is_some() {
        customers::probe(host, &config)?;
        host.log(Level::Info, "Antavo accepted the signature made with apiKey/apiSecret");
    } else {
        host.log(Level::Info, "no apiKey/apiSecret: only the async event capabilities will work");
    }
    if let Some(credentials) = &config.oauth {
        async_events::mint(host, &config, credentials)?;
        host.log(Level::Info, "Antavo accepted the clientId/clientSecret");
    }
    Ok(())
}

/// Runs one capability and returns its output as JSON text. `input` is shaped like the DaVinci wrapper:
/// `{"properties": {...}}`.
pub fn invoke(
    host: &mut dyn Host,
    capability: &str,
    connection: &Value,
    input: &Value,
    context: &Context,
) -> Result<String, Error> {
    let config = Config::parse(connection)?;
    if context.attempt > 1 {
        host.log(Level::Info, &format!("{capability}: attempt {} of {}", context.attempt, context.idempotency_key));
    }
    match capability {
        _ if EVENT_CAPABILITIES.contains(&capability) => {
            config.require_api()?;
            let event = events::event_from_input(capability, input)?;
            events::send(host, &config, capability, &event, context)
        }
        "sendEvents" => {
            config.require_api()?;
            events::send_many(host, &config, input)
        }
        "sendAsyncEvent" => async_events::submit(host, &config, input),
        "getAsyncEventStatus" => async_events::status(host, &config, input),
        "getCustomer" => {
            config.require_api()?;
            customers::get(host, &config, input)
        }
        "listChangedCustomers" => {
            config.require_api()?;
            customers::changed_since(host, &config, input)
        }
        other => Err(Error::invalid_input(
            "",
            format!("unknown capability {other:?}; the Antavo connector offers {}", CAPABILITY_IDS.join(", ")),
        )),
    }
}

/// Runs one capability for each `(input, context)` item and returns one result per item, in order. The event
/// capabilities send the items' events together in `/events/bulk` requests (see [`events::send_together`]);
/// an item whose input is wrong fails alone and is not sent. Other capabilities run item by item.
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
        return items.iter().map(|(input, context)| invoke(host, capability, connection, input, context)).collect();
    }
    if let Err(error) = config.require_api() {
        return vec![Err(error); items.len()];
    }
    let parsed: Vec<Result<events::Event, Error>> =
        items.iter().map(|(input, _)| events::event_from_input(capability, input)).collect();
    let valid: Vec<(&events::Event, &Context)> = parsed
        .iter()
        .zip(items)
        .filter_map(|(event, (_, context))| event.as_ref().ok().map(|event| (event, context)))
        .collect();
    let mut sent = events::send_together(host, &config, capability, &valid).into_iter();
    parsed
        .into_iter()
        .map(|event| match event {
            Ok(_) => sent.next().expect("one result per event sent"),
            Err(error) => Err(error),
        })
        .collect()
}
