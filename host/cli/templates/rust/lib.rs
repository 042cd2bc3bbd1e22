//! The {{name}} connector, in Rust. `cargo build --target wasm32-wasip2 --profile wasm` makes
//! `target/wasm32-wasip2/wasm/{{crate}}.wasm`; `flowhost connector test` on it runs the acceptance suite.

use flowhost_connector_sdk::*;
use serde_json::json;

struct Connector;

impl Guest for Connector {
    fn describe() -> ConnectorInfo {
        ConnectorInfo {
            id: "{{name}}".into(),
            version: "0.1.0".into(),
            display_name: "{{title}}".into(),
            description: "Greets whoever it is asked to.".into(),
            connection_properties: vec![ConnectionProperty {
                name: "greeting".into(),
                title: "Greeting".into(),
                description: "The word to greet with.".into(),
                secret: false,
                required: false,
                schema: r#"{"type":"string","example":"Hello"}"#.into(),
            }],
            // The hosts it may call, e.g. "api.example.com", or "{baseUrl}" for the origin of a connection property.
            allowed_hosts: vec![],
            capabilities: vec![Capability {
                id: "greet".into(),
                title: "Greet someone".into(),
                description: "Returns a greeting for a name.".into(),
                input_schema: r#"{"type":"object","required":["name"],"properties":{"name":{"type":"string","minLength":1}},"additionalProperties":false,"example":{"name":"Ada"}}"#.into(),
                output_schema: r#"{"type":"object","required":["message"],"properties":{"message":{"type":"string"}}}"#.into(),
            }],
        }
    }

    fn check(connection: String) -> Result<(), ConnectorError> {
        let connection = parse_connection(&connection)?;
        match connection.get("greeting") {
            None | Some(serde_json::Value::String(_)) => Ok(()),
            Some(_) => Err(ConnectorError::InvalidConfig("greeting must be a string".into())),
        }
    }

    fn invoke(
        capability: String,
        connection: String,
        input: String,
        _context: InvocationContext,
    ) -> Result<String, ConnectorError> {
        if capability != "greet" {
            return Err(invalid_input("", format!("unknown capability {capability}")));
        }
        let connection = parse_connection(&connection)?;
        let input = parse_input(&input)?;
        let greeting = connection.get("greeting").and_then(|g| g.as_str()).unwrap_or("Hello");
        let name = match input.get("name").and_then(|n| n.as_str()) {
            Some(name) if !name.is_empty() => name,
            Some(_) => return Err(invalid_input("/name", "name must not be empty")),
            None => return Err(invalid_input("/name", "name is required and must be a string")),
        };
        log_info(&format!("greeting {name}"));
        Ok(json!({ "message": format!("{greeting}, {name}!") }).to_string())
    }
}

export_connector!(Connector);
