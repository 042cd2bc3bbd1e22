//! Guest-side bindings and helpers for writing flowhost connectors.
//!
//! A connector implements [`Guest`] and exports it with [`export_connector!`]:
//!
//! ```ignore
//! use flowhost_connector_sdk::*;
//!
//! struct Hello;
//!
//! impl Guest for Hello {
//!     fn describe() -> ConnectorInfo { /* id, version, properties, allowed hosts, capabilities */ }
//!     fn check(connection: String) -> Result<(), ConnectorError> { Ok(()) }
//!     fn invoke(capability: String, connection: String, input: String, context: InvocationContext)
//!         -> Result<String, ConnectorError> { Ok(input) }
//! }
//!
//! export_connector!(Hello);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2`: the result is a component the host loads as is.

// Lets the generated code name this crate the same way from inside and from connectors.
extern crate self as flowhost_connector_sdk;

pub use wit_bindgen;

mod arena;
pub use arena::InvocationArena;

/// The bindings generated from `wit/v0.2.0` (package `flowhost:connector@0.2.0`).
#[allow(clippy::too_many_arguments)] // generated code
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/v0.2.0",
        world: "connector",
        pub_export_macro: true,
        export_macro_name: "export_connector",
        default_bindings_module: "flowhost_connector_sdk::bindings",
        runtime_path: "flowhost_connector_sdk::wit_bindgen::rt",
    });
}

/// The bindings of the `inbound-connector` world: a connector's inbound side (`describe-inbound`, `receive`),
/// sharing the imports and types above. A connector that receives its vendor's requests implements
/// [`inbound::Guest`] and exports it with [`export_inbound!`] beside [`export_connector!`]; the component then
/// exports both worlds.
#[allow(clippy::too_many_arguments)] // generated code
pub mod inbound_bindings {
    wit_bindgen::generate!({
        path: "../../wit/v0.2.0",
        world: "inbound-connector",
        pub_export_macro: true,
        export_macro_name: "export_inbound",
        default_bindings_module: "flowhost_connector_sdk::inbound_bindings",
        runtime_path: "flowhost_connector_sdk::wit_bindgen::rt",
        with: {
            "flowhost:connector/types@0.2.0": crate::bindings::flowhost::connector::types,
            "flowhost:connector/http@0.2.0": crate::bindings::flowhost::connector::http,
            "flowhost:connector/log@0.2.0": crate::bindings::flowhost::connector::log,
            "flowhost:connector/cache@0.2.0": crate::bindings::flowhost::connector::cache,
            "flowhost:connector/pacing@0.2.0": crate::bindings::flowhost::connector::pacing,
        },
    });
}

/// The inbound side's types and the trait a receiving connector implements.
pub mod inbound {
    pub use crate::inbound_bindings::exports::flowhost::connector::inbound::{
        Guest, InboundEvent, InboundInfo, Received, Request, Response,
    };

    /// The value of the first header named `name` (compared without case), if the request has it.
    pub fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
        request.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// An answer with a JSON body.
    pub fn json_response(status: u16, body: &serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }
}
pub use inbound_bindings::export_inbound;

pub use bindings::flowhost::connector::cache;
pub use bindings::flowhost::connector::http::{self, HttpError, Request, Response};
pub use bindings::flowhost::connector::log::{self, Level};
pub use bindings::flowhost::connector::pacing;
pub use bindings::flowhost::connector::types::{
    BatchItem, Capability, ConnectionProperty, ConnectorError, ConnectorInfo, Failure, FieldError, InvocationContext,
    RateLimit,
};
pub use bindings::{Guest, export_connector};

use serde_json::Value;

/// Parses the connection config handed over by the host.
pub fn parse_connection(text: &str) -> Result<Value, ConnectorError> {
    serde_json::from_str(text).map_err(|e| ConnectorError::InvalidConfig(format!("connection is not valid JSON: {e}")))
}

/// Parses a capability input handed over by the host.
pub fn parse_input(text: &str) -> Result<Value, ConnectorError> {
    serde_json::from_str(text).map_err(|e| invalid_input("", format!("input is not valid JSON: {e}")))
}

/// An `invalid-input` error for one field.
pub fn invalid_input(pointer: &str, message: impl Into<String>) -> ConnectorError {
    ConnectorError::InvalidInput(vec![FieldError { pointer: pointer.to_string(), message: message.into() }])
}

/// A `permanent` error without an HTTP response.
pub fn permanent(message: impl Into<String>) -> ConnectorError {
    ConnectorError::Permanent(Failure { status: None, message: message.into(), body: String::new() })
}

/// Maps a transport failure to the error kind the host acts on: timeouts and lost connections may succeed
/// later, everything else will not.
impl From<HttpError> for ConnectorError {
    fn from(error: HttpError) -> Self {
        match error {
            HttpError::Timeout(m) => ConnectorError::Transient(format!("request timed out: {m}")),
            HttpError::ConnectFailed(m) => ConnectorError::Transient(format!("could not connect: {m}")),
            HttpError::Denied(m) => permanent(format!("request refused by the host: {m}")),
            HttpError::InvalidRequest(m) => permanent(format!("invalid request: {m}")),
            HttpError::ResponseTooLarge(m) => permanent(format!("response too large: {m}")),
            HttpError::Other(m) => ConnectorError::Transient(format!("request failed: {m}")),
        }
    }
}

/// Tells the host how much of its rate limit the service says is used, in percent (e.g. from a response header),
/// so that the host paces the connection before the service refuses calls. Figures above 255 are reported as 255.
pub fn report_usage(percentage_used: u64) {
    pacing::report_usage(clamp_usage(percentage_used));
}

/// A service's percentage used as the WIT carries it (`u8`): larger figures become 255.
pub fn clamp_usage(percentage_used: u64) -> u8 {
    u8::try_from(percentage_used).unwrap_or(u8::MAX)
}

/// Writes one line to the invocation log.
pub fn log_info(message: &str) {
    log::log(Level::Info, message);
}
