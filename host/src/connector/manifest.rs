//! A connector's manifest (what `describe` returns) as host types, checked once at load, with the JSON
//! Schemas of the connection and of each capability compiled once and reused for every invocation.

use super::bindings::types as wit;
use super::error::{FieldError, LoadError};
use super::strict_inputs::{InputError, InputValidator};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashSet};

/// One property of a connection's configuration.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionProperty {
    pub name: String,
    pub title: String,
    pub description: String,
    pub secret: bool,
    pub required: bool,
    pub schema: Value,
}

/// One capability of a connector.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityInfo {
    pub id: String,
    pub title: String,
    pub description: String,
    /// The input schema exactly as the connector publishes it (DaVinci wrapper kept).
    pub input_schema: Value,
    pub output_schema: Value,
}

/// What a connector is and can do.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub id: String,
    pub version: String,
    pub display_name: String,
    pub description: String,
    pub connection_properties: Vec<ConnectionProperty>,
    pub allowed_hosts: Vec<String>,
    pub capabilities: Vec<CapabilityInfo>,
}

impl Manifest {
    pub fn capability(&self, id: &str) -> Option<&CapabilityInfo> {
        self.capabilities.iter().find(|c| c.id == id)
    }

    pub fn capability_ids(&self) -> String {
        self.capabilities.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// The JSON Schema of a connection config, built from the connection properties.
    pub fn connection_schema(&self) -> Value {
        let properties: Map<String, Value> =
            self.connection_properties.iter().map(|p| (p.name.clone(), p.schema.clone())).collect();
        let required: Vec<&str> =
            self.connection_properties.iter().filter(|p| p.required).map(|p| p.name.as_str()).collect();
        json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
    }

    pub(crate) fn from_wit(info: wit::ConnectorInfo) -> Result<Self, LoadError> {
        let bad = |message: String| LoadError::Manifest(message);
        let parse = |what: &str, text: &str| -> Result<Value, LoadError> {
            serde_json::from_str(text).map_err(|e| bad(format!("{what} is not valid JSON: {e}")))
        };
        if info.id.is_empty() || !info.id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            return Err(bad(format!("id {:?} must be lower-case letters, digits and dashes", info.id)));
        }
        semver::Version::parse(&info.version)
            .map_err(|e| bad(format!("version {:?} is not a semantic version: {e}", info.version)))?;
        let mut names = HashSet::new();
        let mut connection_properties = Vec::new();
        for p in info.connection_properties {
            if !names.insert(p.name.clone()) {
                return Err(bad(format!("connection property {:?} is declared twice", p.name)));
            }
            let schema = parse(&format!("the schema of connection property {:?}", p.name), &p.schema)?;
            connection_properties.push(ConnectionProperty {
                name: p.name,
                title: p.title,
                description: p.description,
                secret: p.secret,
                required: p.required,
                schema,
            });
        }
        let mut ids = HashSet::new();
        let mut capabilities = Vec::new();
        for c in info.capabilities {
            if c.id.is_empty() || !ids.insert(c.id.clone()) {
                return Err(bad(format!("capability id {:?} is empty or declared twice", c.id)));
            }
            let input_schema = parse(&format!("the input schema of capability {:?}", c.id), &c.input_schema)?;
            let output_schema = parse(&format!("the output schema of capability {:?}", c.id), &c.output_schema)?;
            capabilities.push(CapabilityInfo {
                id: c.id,
                title: c.title,
                description: c.description,
                input_schema,
                output_schema,
            });
        }
        for entry in &info.allowed_hosts {
            match entry.strip_prefix('{').and_then(|e| e.strip_suffix('}')) {
                Some(property) if !names.contains(property) => {
                    return Err(bad(format!("allowed host {entry:?} names no connection property")));
                }
                Some(_) => {}
                None => {
                    super::egress::HostPattern::parse(entry)
                        .map_err(|reason| bad(format!("allowed host {entry:?}: {reason}")))?;
                }
            }
        }
        Ok(Manifest {
            id: info.id,
            version: info.version,
            display_name: info.display_name,
            description: info.description,
            connection_properties,
            allowed_hosts: info.allowed_hosts,
            capabilities,
        })
    }
}

/// Removes the DaVinci wrapper `{"default": {...schema...}}` that connector authors publish, so that the
/// schema inside can be validated against.
pub fn unwrap_davinci(schema: &Value) -> &Value {
    match schema {
        Value::Object(map) if map.len() == 1 && map.get("default").is_some_and(Value::is_object) => &map["default"],
        other => other,
    }
}

/// The compiled validators of one connector.
pub(crate) struct Validators {
    connection: jsonschema::Validator,
    /// Each capability's input validator, strict by the host's rule (see `strict_inputs`).
    inputs: BTreeMap<String, InputValidator>,
    secret_properties: HashSet<String>,
}

impl Validators {
    pub fn compile(manifest: &Manifest) -> Result<Self, LoadError> {
        let compile = |what: &str, schema: &Value| {
            jsonschema::validator_for(schema)
                .map_err(|e| LoadError::Manifest(format!("{what} is not a valid JSON Schema: {e}")))
        };
        let connection = compile("the connection schema", &manifest.connection_schema())?;
        let mut inputs = BTreeMap::new();
        for capability in &manifest.capabilities {
            let input = InputValidator::compile(unwrap_davinci(&capability.input_schema)).map_err(|e| {
                LoadError::Manifest(format!(
                    "the input schema of capability {:?} is not a valid JSON Schema: {e}",
                    capability.id
                ))
            })?;
            inputs.insert(capability.id.clone(), input);
            compile(&format!("the output schema of capability {:?}", capability.id), &capability.output_schema)?;
        }
        let secret_properties =
            manifest.connection_properties.iter().filter(|p| p.secret).map(|p| p.name.clone()).collect();
        Ok(Validators { connection, inputs, secret_properties })
    }

    /// Every way an input does not fit its capability, undeclared properties included unless `open`; `None`
    /// when the capability does not exist.
    pub fn input_errors(&self, capability: &str, input: &Value, open: bool) -> Option<Vec<InputError>> {
        Some(self.inputs.get(capability)?.errors(input, open))
    }

    /// Validates a connection config whose secret values are resolved. Messages about secret properties
    /// never show the value.
    /// Validates a connection config; the messages about a secret property, or one whose value came from a secret
    /// reference (`from_secrets`), say what is wrong without the value.
    pub fn validate_connection(&self, config: &Value, from_secrets: &[String]) -> Result<(), Vec<FieldError>> {
        let errors: Vec<FieldError> = self
            .connection
            .iter_errors(config)
            .map(|e| {
                let pointer = e.instance_path().as_str().to_string();
                let property = pointer.trim_start_matches('/').split('/').next().unwrap_or_default();
                let message = if self.secret_properties.contains(property) || from_secrets.iter().any(|p| p == property)
                {
                    e.masked().to_string()
                } else {
                    e.to_string()
                };
                FieldError { pointer, message }
            })
            .collect();
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn davinci_wrapper_is_unwrapped() {
        let wrapped = json!({"default": {"type": "object", "properties": {"properties": {"type": "object"}}}});
        assert_eq!(unwrap_davinci(&wrapped)["type"], "object");
        let plain = json!({"type": "object", "properties": {"default": {"type": "string"}}});
        assert_eq!(unwrap_davinci(&plain), &plain);
    }
}
