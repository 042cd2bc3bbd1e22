//! Shared pieces of the test connectors. Each binary in `src/bin` is one component, built for
//! wasm32-wasip2 by the `flowhost-tests` build script.
//!
//! [`standard_webhooks`] is plain Rust (no WIT types): it is unit-tested natively, and the host's tests can
//! use it to sign the requests they send to the `signed_webhook` component.

pub mod standard_webhooks;

use flowhost_connector_sdk::{Capability, ConnectionProperty, ConnectorInfo};

/// A capability whose input is any object and whose output is any JSON.
pub fn capability(id: &str, description: &str) -> Capability {
    Capability {
        id: id.to_string(),
        title: id.to_string(),
        description: description.to_string(),
        input_schema: r#"{"type":"object"}"#.to_string(),
        output_schema: "{}".to_string(),
    }
}

/// A string connection property.
pub fn property(name: &str, secret: bool, required: bool) -> ConnectionProperty {
    ConnectionProperty {
        name: name.to_string(),
        title: name.to_string(),
        description: format!("The {name} of the connection."),
        secret,
        required,
        schema: r#"{"type":"string"}"#.to_string(),
    }
}

/// The manifest of a test connector.
pub fn manifest(
    id: &str,
    properties: Vec<ConnectionProperty>,
    allowed_hosts: &[&str],
    capabilities: Vec<Capability>,
) -> ConnectorInfo {
    ConnectorInfo {
        id: id.to_string(),
        version: "0.1.0".to_string(),
        display_name: format!("Test connector {id}"),
        description: "A connector used by flowhost's tests.".to_string(),
        connection_properties: properties,
        allowed_hosts: allowed_hosts.iter().map(|h| h.to_string()).collect(),
        capabilities,
    }
}
