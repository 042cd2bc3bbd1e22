//! Reading capability inputs (the DaVinci wrapper `{"properties": {...}}`), with errors that name the field by
//! JSON pointer. The host validates inputs against the schemas first; these checks keep the core safe on its
//! own (tests, other hosts) and cover what a schema cannot say.

use crate::error::{Error, FieldError};
use serde_json::{Map, Value};

/// The `properties` object of an input.
pub fn properties(input: &Value) -> Result<&Map<String, Value>, Error> {
    input
        .get("properties")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::invalid_input("/properties", "the input must be an object {\"properties\": {...}}"))
}

/// Collects field errors while reading.
#[derive(Default)]
pub struct Fields {
    pub errors: Vec<FieldError>,
}

impl Fields {
    pub fn error(&mut self, pointer: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(pointer, message));
    }

    /// A string field: `None` when absent or null; an error when required and absent, or not a string, or
    /// blank.
    pub fn text(&mut self, map: &Map<String, Value>, base: &str, name: &str, required: bool) -> Option<String> {
        let pointer = format!("{base}/{name}");
        match map.get(name) {
            None | Some(Value::Null) => {
                if required {
                    self.error(pointer, format!("{name} is required"));
                }
                None
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.error(pointer, format!("{name} must not be blank"));
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.error(pointer, format!("{name} must be a string, not {}", kind(other)));
                None
            }
        }
    }

    /// An object field (absent: empty).
    pub fn object(&mut self, map: &Map<String, Value>, base: &str, name: &str) -> Map<String, Value> {
        match map.get(name) {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(o)) => o.clone(),
            Some(other) => {
                self.error(format!("{base}/{name}"), format!("{name} must be an object, not {}", kind(other)));
                Map::new()
            }
        }
    }

    /// Fails with every error collected, if any.
    pub fn finish(self) -> Result<(), Error> {
        if self.errors.is_empty() { Ok(()) } else { Err(Error::InvalidInput(self.errors)) }
    }
}

/// A JSON type's name, for messages.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Escapes a key for a JSON pointer (RFC 6901).
pub fn pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}
