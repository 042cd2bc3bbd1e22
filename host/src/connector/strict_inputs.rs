//! Strict connector inputs: a property that the capability's input schema does not declare is refused, with
//! its JSON pointer and the nearest declared name, instead of being sent and silently ignored.
//!
//! The schemas stay exactly as connector authors publish them (DaVinci's are open: no
//! `additionalProperties: false`). Strictness is the host's rule, applied when it compiles a capability's
//! validator: [`close_schema`] closes every object schema that lists `properties` and says nothing about
//! other properties. A schema opts out with `additionalProperties` (`true` or a schema for them) or
//! `unevaluatedProperties`; names matching its `patternProperties` are declared; names that the branches of
//! its `allOf`/`anyOf`/`oneOf`, `if`/`then`/`else` or `dependentSchemas` declare are declared too, and those
//! branches are not closed themselves (they describe the same object). A schema with a `$ref` beside its
//! `properties` is left open: what the reference declares is not known here. A connection opts out with
//! `"openInputs": true` in the flow.

use super::error::FieldError;
use crate::suggest::{nearest, quoted_list};
use serde_json::{Map, Value};

/// The keywords whose value is one subschema that describes something else than the object itself.
const SUBSCHEMA: &[&str] = &[
    "additionalProperties",
    "unevaluatedProperties",
    "items",
    "additionalItems",
    "unevaluatedItems",
    "contains",
    "propertyNames",
    "not",
    "contentSchema",
];
/// The keywords whose value maps names to subschemas of something else than the object itself.
const SUBSCHEMA_MAPS: &[&str] = &["properties", "patternProperties", "definitions", "$defs"];
/// The keywords whose value is a list of subschemas of something else than the object itself.
const SUBSCHEMA_LISTS: &[&str] = &["items", "prefixItems"];
/// The keywords whose subschemas describe the same object as the schema they are in: their names count as
/// declared by it, and they are not closed themselves.
const BRANCH_LISTS: &[&str] = &["allOf", "anyOf", "oneOf"];
const BRANCHES: &[&str] = &["if", "then", "else"];
const BRANCH_MAPS: &[&str] = &["dependentSchemas", "dependencies"];

/// The properties an object schema declares: its own and those of its branches.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Declared {
    /// Declared names, own first, in the schema's order.
    pub names: Vec<String>,
    /// `patternProperties` patterns.
    pub patterns: Vec<String>,
    /// Whether the schema or one of its branches says what other properties may be (`additionalProperties`
    /// other than `false`, or `unevaluatedProperties`), or refers elsewhere (`$ref`) for what it declares.
    pub open: bool,
    /// Whether the schema itself closes the object (`additionalProperties: false`).
    pub closed: bool,
}

impl Declared {
    /// Whether the schema declares anything about the object's properties.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.patterns.is_empty()
    }

    /// What to say about an undeclared property `name`: the nearest declared name, else the declared names.
    pub fn hint(&self, name: &str) -> String {
        if let Some(near) = nearest(name, self.names.iter().map(String::as_str)) {
            return format!("did you mean `{near}`?");
        }
        let patterns = quoted_list(self.patterns.iter().map(String::as_str));
        match (self.names.is_empty(), self.patterns.is_empty()) {
            (true, true) => "the schema declares no properties".to_string(),
            (false, true) => {
                format!("the declared properties are {}", quoted_list(self.names.iter().map(String::as_str)))
            }
            (true, false) => format!("the declared properties are the names matching {patterns}"),
            (false, false) => format!(
                "the declared properties are {} and the names matching {patterns}",
                quoted_list(self.names.iter().map(String::as_str))
            ),
        }
    }
}

/// The properties `schema` declares, its branches' included.
pub fn declared(schema: &Map<String, Value>) -> Declared {
    let mut found =
        Declared { closed: schema.get("additionalProperties") == Some(&Value::Bool(false)), ..Default::default() };
    collect_declared(schema, &mut found);
    found
}

fn collect_declared(schema: &Map<String, Value>, found: &mut Declared) {
    if let Some(Value::Object(properties)) = schema.get("properties") {
        for name in properties.keys() {
            if !found.names.contains(name) {
                found.names.push(name.clone());
            }
        }
    }
    if let Some(Value::Object(patterns)) = schema.get("patternProperties") {
        found.patterns.extend(patterns.keys().filter(|p| !found.patterns.contains(p)).cloned().collect::<Vec<_>>());
    }
    let additional_open = schema.get("additionalProperties").is_some_and(|a| a != &Value::Bool(false));
    if additional_open || schema.contains_key("unevaluatedProperties") || schema.contains_key("$ref") {
        found.open = true;
    }
    for branch in branches(schema) {
        collect_declared(branch, found);
    }
}

/// The subschemas that describe the same object as `schema`.
fn branches(schema: &Map<String, Value>) -> impl Iterator<Item = &Map<String, Value>> {
    let lists = BRANCH_LISTS.iter().filter_map(|k| schema.get(*k)?.as_array()).flatten();
    let single = BRANCHES.iter().filter_map(|k| schema.get(*k));
    // `dependencies` also holds lists of names (draft 4 to 7): only its schemas are branches.
    let maps = BRANCH_MAPS.iter().filter_map(|k| schema.get(*k)?.as_object()).flat_map(Map::values);
    lists.chain(single).chain(maps).filter_map(Value::as_object)
}

/// The subschema that a property `name` of an object takes, from `schema` or its branches (the first found).
pub fn property_schema<'a>(schema: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(found) = schema.get("properties").and_then(|p| p.get(name)) {
        return Some(found);
    }
    branches(schema).find_map(|branch| property_schema(branch, name))
}

/// A copy of `schema` in which every object schema that lists `properties` and leaves other properties
/// unsaid refuses them (`additionalProperties: false`), with the names its branches declare added to its
/// `properties` (as `true`) so that they are not refused.
pub fn close_schema(schema: &Value) -> Value {
    let mut closed = schema.clone();
    close(&mut closed, false);
    closed
}

fn close(schema: &mut Value, is_branch: bool) {
    let Value::Object(map) = schema else { return };
    for keyword in SUBSCHEMA {
        if let Some(sub) = map.get_mut(*keyword)
            && sub.is_object()
        {
            close(sub, false);
        }
    }
    for keyword in SUBSCHEMA_MAPS {
        if let Some(Value::Object(subs)) = map.get_mut(*keyword) {
            subs.values_mut().for_each(|sub| close(sub, false));
        }
    }
    for keyword in SUBSCHEMA_LISTS {
        if let Some(Value::Array(subs)) = map.get_mut(*keyword) {
            subs.iter_mut().for_each(|sub| close(sub, false));
        }
    }
    for keyword in BRANCH_LISTS {
        if let Some(Value::Array(subs)) = map.get_mut(*keyword) {
            subs.iter_mut().for_each(|sub| close(sub, true));
        }
    }
    for keyword in BRANCHES {
        if let Some(sub) = map.get_mut(*keyword) {
            close(sub, true);
        }
    }
    for keyword in BRANCH_MAPS {
        if let Some(Value::Object(subs)) = map.get_mut(*keyword) {
            subs.values_mut().for_each(|sub| close(sub, true));
        }
    }
    let closable =
        !is_branch && map.get("properties").is_some_and(Value::is_object) && !map.contains_key("additionalProperties");
    if !closable {
        return;
    }
    let declared = declared(map);
    if declared.open {
        return;
    }
    let own_patterns: Vec<String> = map
        .get("patternProperties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        for name in declared.names {
            properties.entry(name).or_insert(Value::Bool(true));
        }
    }
    let foreign_patterns: Vec<String> = declared.patterns.into_iter().filter(|p| !own_patterns.contains(p)).collect();
    if !foreign_patterns.is_empty() {
        let patterns = map.entry("patternProperties").or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(patterns) = patterns {
            for pattern in foreign_patterns {
                patterns.entry(pattern).or_insert(Value::Bool(true));
            }
        }
    }
    map.insert("additionalProperties".into(), Value::Bool(false));
}

/// One way an input does not fit a capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// Where, and what is wrong. For an undeclared property, the pointer is the property's own.
    pub field: FieldError,
    /// For an undeclared property: the pointer of the object that has it.
    pub undeclared_in: Option<String>,
}

/// The validators of one capability's input: as published, and closed by the host's rule.
pub(crate) struct InputValidator {
    open: jsonschema::Validator,
    strict: jsonschema::Validator,
    /// The closed schema, to name what an object that has an undeclared property declares.
    closed: Value,
}

impl InputValidator {
    /// Compiles the validators of an (unwrapped) input schema.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        let closed = close_schema(schema);
        let open = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
        let strict = jsonschema::validator_for(&closed).map_err(|e| e.to_string())?;
        Ok(InputValidator { open, strict, closed })
    }

    /// Every way `input` does not fit, by pointer; `open` leaves undeclared properties be, unless the schema as
    /// published refuses them.
    pub fn errors(&self, input: &Value, open: bool) -> Vec<InputError> {
        let validator = if open { &self.open } else { &self.strict };
        // The common case, a valid input, takes the cheaper check; errors are collected only when it fails.
        if validator.is_valid(input) {
            return Vec::new();
        }
        let mut errors = Vec::new();
        for error in validator.iter_errors(input) {
            let at = error.instance_path().as_str().to_string();
            let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } = error.kind() else {
                errors.push(InputError {
                    field: FieldError { pointer: at, message: error.to_string() },
                    undeclared_in: None,
                });
                continue;
            };
            let schema_path = error.schema_path().as_str();
            let object_schema = schema_path
                .strip_suffix("/additionalProperties")
                .and_then(|parent| self.closed.pointer(parent))
                .and_then(Value::as_object);
            let declared = object_schema.map(declared).unwrap_or_default();
            for name in unexpected {
                errors.push(InputError {
                    field: FieldError {
                        pointer: format!("{at}/{}", crate::flow::expression::escape_pointer(name)),
                        message: format!("unknown property; {}", declared.hint(name)),
                    },
                    undeclared_in: Some(at.clone()),
                });
            }
        }
        // Parents before their children, whatever order the validator's keywords ran in.
        errors.sort_by(|a, b| a.field.pointer.cmp(&b.field.pointer));
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn davinci(inner: Value) -> Value {
        json!({"type": "object", "properties": {"properties": inner}, "example": {"properties": {"x": 1}}})
    }

    fn messages(schema: &Value, input: Value) -> Vec<String> {
        InputValidator::compile(schema).unwrap().errors(&input, false).iter().map(|e| e.field.to_string()).collect()
    }

    #[test]
    fn object_schemas_with_properties_are_closed_at_every_depth() {
        let schema = davinci(json!({"type": "object", "properties": {
            "identityType": {"type": "string"},
            "payload": {"type": "object", "additionalProperties": {"type": "string"}},
            "address": {"type": "object", "properties": {"city": {"type": "string"}}},
            "lines": {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string"}}}},
        }}));
        let closed = close_schema(&schema);
        assert_eq!(closed["additionalProperties"], false);
        assert_eq!(closed["properties"]["properties"]["additionalProperties"], false);
        assert_eq!(closed["properties"]["properties"]["properties"]["address"]["additionalProperties"], false);
        assert_eq!(closed["properties"]["properties"]["properties"]["lines"]["items"]["additionalProperties"], false);
        // A schema for other properties opts out, and an example is data, not a schema.
        assert_eq!(
            closed["properties"]["properties"]["properties"]["payload"]["additionalProperties"]["type"],
            "string"
        );
        assert_eq!(closed["example"], json!({"properties": {"x": 1}}));
        // The original is untouched.
        assert!(schema.get("additionalProperties").is_none());

        let input = json!({"properties": {"identitytype": "email", "payload": {"any": "x"},
            "address": {"city": "Paris", "cty": "x"}, "lines": [{"sku": "a"}, {"skus": "b"}]}, "extra": 1});
        assert_eq!(
            messages(&schema, input),
            [
                "/extra: unknown property; the declared properties are `properties`",
                "/properties/address/cty: unknown property; did you mean `city`?",
                "/properties/identitytype: unknown property; did you mean `identityType`?",
                "/properties/lines/1/skus: unknown property; did you mean `sku`?",
            ]
        );
    }

    #[test]
    fn opting_out_keeps_a_schema_open() {
        for open in [
            json!({"type": "object", "properties": {"a": {}}, "additionalProperties": true}),
            json!({"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "integer"}}),
            json!({"type": "object", "properties": {"a": {}}, "unevaluatedProperties": true}),
            json!({"type": "object", "properties": {"a": {}}, "$ref": "#/$defs/more", "$defs": {"more": {}}}),
            json!({"type": "object"}),
        ] {
            let closed = close_schema(&open);
            assert_eq!(closed.get("additionalProperties"), open.get("additionalProperties"), "{open}");
            assert!(messages(&open, json!({"a": 1, "b": 2})).iter().all(|m| !m.contains("unknown property")), "{open}");
        }
    }

    #[test]
    fn pattern_properties_and_branches_count_as_declared() {
        let schema = json!({
            "type": "object",
            "properties": {"kind": {"type": "string"}},
            "patternProperties": {"^x-": {}},
            "allOf": [{"properties": {"shared": {}}}],
            "oneOf": [
                {"properties": {"kind": {"const": "a"}, "alpha": {}}},
                {"properties": {"kind": {"const": "b"}, "beta": {}}, "patternProperties": {"^y-": {}}}
            ]
        });
        let closed = close_schema(&schema);
        // The branches describe the same object: they are not closed, and what they declare is declared.
        assert!(closed["oneOf"][0].get("additionalProperties").is_none());
        assert_eq!(closed["properties"]["alpha"], true);
        assert_eq!(closed["patternProperties"]["^y-"], true);
        assert!(messages(&schema, json!({"kind": "a", "alpha": 1, "shared": 2, "x-1": 3, "y-2": 4})).is_empty());
        assert_eq!(
            messages(&schema, json!({"kind": "a", "alpha": 1, "z": 1})),
            [
                "/z: unknown property; the declared properties are `kind`, `shared`, `alpha`, `beta` and the names matching `^x-`, `^y-`"
            ]
        );
    }

    #[test]
    fn the_open_validator_checks_only_what_the_schema_says() {
        let schema = davinci(json!({"type": "object", "properties": {"name": {"type": "string"}}}));
        let validator = InputValidator::compile(&schema).unwrap();
        let input = json!({"properties": {"nme": "x", "name": 1}});
        let open = validator.errors(&input, true);
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].field.pointer, "/properties/name");
        assert_eq!(open[0].undeclared_in, None);
        let strict = validator.errors(&input, false);
        assert_eq!(strict.len(), 2, "{strict:?}");
        let unknown = strict.iter().find(|e| e.undeclared_in.is_some()).unwrap();
        assert_eq!(unknown.field.to_string(), "/properties/nme: unknown property; did you mean `name`?");
        assert_eq!(unknown.undeclared_in.as_deref(), Some("/properties"));
    }

    #[test]
    fn a_published_closed_schema_gets_the_same_messages() {
        let schema = json!({"type": "object", "properties": {"a/b": {}}, "additionalProperties": false});
        assert_eq!(messages(&schema, json!({"a/c": 1})), ["/a~1c: unknown property; did you mean `a/b`?"]);
        let refs = json!({"$defs": {"item": {"type": "object", "properties": {"sku": {}}}},
                          "type": "object", "properties": {"item": {"$ref": "#/$defs/item"}}});
        assert_eq!(
            messages(&refs, json!({"item": {"skus": 1}})),
            ["/item/skus: unknown property; did you mean `sku`?"]
        );
    }
}
