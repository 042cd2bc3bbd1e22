//! Reading capability inputs, which arrive shaped like the DaVinci wrapper: `{"properties": {...}}`.

use crate::error::{Error, FieldError};
use serde_json::{Map, Value};

/// The pointer of the `properties` object every input is wrapped in.
pub const PROPERTIES: &str = "/properties";

/// Appends one reference token to a JSON pointer, escaping `~` and `/` (RFC 6901).
pub fn pointer(base: &str, token: &str) -> String {
    let mut out = String::with_capacity(base.len() + token.len() + 1);
    out.push_str(base);
    out.push('/');
    if !token.contains(['~', '/']) {
        out.push_str(token);
        return out;
    }
    for c in token.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
    out
}

/// Appends an array index to a JSON pointer.
pub fn index_pointer(base: &str, index: usize) -> String {
    format!("{base}/{index}")
}

/// The `properties` object of an input.
pub fn properties(input: &Value) -> Result<&Map<String, Value>, Error> {
    match input.get("properties") {
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(Error::invalid_input(PROPERTIES, "must be an object")),
        None if input.is_object() => {
            Err(Error::invalid_input(PROPERTIES, "is required: the input is shaped {\"properties\": {...}}"))
        }
        None => Err(Error::invalid_input("", "the input must be a JSON object shaped {\"properties\": {...}}")),
    }
}

/// The length in characters (Unicode scalar values, as mParticle's limits count them) of `text` when it is
/// longer than `max`, else `None`.
pub fn too_long(text: &str, max: usize) -> Option<usize> {
    // A char is at least one byte, so a short byte length settles it without counting.
    if text.len() <= max {
        return None;
    }
    let count = text.chars().count();
    (count > max).then_some(count)
}

/// Collects field errors of one input.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<FieldError>);

impl Problems {
    pub fn add(&mut self, pointer: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(pointer, message));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was found, else `InvalidInput` with every problem.
    pub fn into_result<T>(self, value: T) -> Result<T, Error> {
        if self.0.is_empty() { Ok(value) } else { Err(Error::InvalidInput(self.0)) }
    }

    /// A required non-empty string field of `properties`.
    pub fn required_string<'a>(&mut self, properties: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
        let at = || pointer(PROPERTIES, name);
        match properties.get(name) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.as_str()),
            Some(Value::String(_)) => {
                self.add(at(), "must not be empty");
                None
            }
            None | Some(Value::Null) => {
                self.add(at(), "is required");
                None
            }
            Some(other) => {
                self.add(at(), format!("must be a string, not {}", kind(other)));
                None
            }
        }
    }

    /// An optional string field of `properties`; empty counts as absent.
    pub fn optional_string<'a>(&mut self, properties: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
        match properties.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(other) => {
                self.add(pointer(PROPERTIES, name), format!("must be a string, not {}", kind(other)));
                None
            }
        }
    }
}

/// A JSON type name for messages.
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_escape_tilde_and_slash() {
        assert_eq!(pointer("/properties", "a/b~c"), "/properties/a~1b~0c");
        assert_eq!(index_pointer("/properties/eventBatch", 3), "/properties/eventBatch/3");
    }

    #[test]
    fn the_properties_wrapper_is_required() {
        assert_eq!(properties(&json!({"accountId": "1"})).unwrap_err().field_errors()[0].pointer, "/properties");
        assert_eq!(properties(&json!("x")).unwrap_err().field_errors()[0].pointer, "");
        assert!(properties(&json!({"properties": {}})).is_ok());
    }

    #[test]
    fn strings_are_checked() {
        let input = json!({"a": "", "b": 5, "c": "ok"});
        let map = input.as_object().unwrap();
        let mut problems = Problems::default();
        assert_eq!(problems.required_string(map, "a"), None);
        assert_eq!(problems.required_string(map, "b"), None);
        assert_eq!(problems.required_string(map, "missing"), None);
        assert_eq!(problems.required_string(map, "c"), Some("ok"));
        assert_eq!(problems.optional_string(map, "a"), None);
        let pointers: Vec<_> = problems.0.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/properties/a", "/properties/b", "/properties/missing"]);
    }

    #[test]
    fn lengths_count_characters() {
        assert_eq!(too_long("héllo", 5), None);
        assert_eq!(too_long(&"é".repeat(256), 256), None, "512 bytes but 256 characters");
        assert_eq!(too_long(&"é".repeat(300), 256), Some(300));
    }
}
