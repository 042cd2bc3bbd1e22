//! The `{field}` mapping of emit nodes (the "inbound events data mapping" of loyalty platforms): each target field of
//! the emitted event is either a reference `{field}` to a field of the inbound event, or a literal value.
//!
//! The rule is "enter the payload field name (e.g. `{coupon_code}`); without curly brackets it is treated as a
//! value". flowhost's own templates use `{{ … }}` (CEL, see `flow::expression`), so a string
//! in double braces is never a reference here: it is left as a literal for the template engine.

use serde_json::{Map, Value};

/// A reference whose field the inbound event does not have.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{target}: the inbound event has no field `{field}` (looked in attributes, userAttributes, the event and its data)"
)]
pub struct MappingError {
    /// The mapped (target) field, e.g. `coupon`; see [`MappingError::within`] for a path such as `fields.coupon`.
    pub target: String,
    /// The referenced field of the inbound event, without braces, e.g. `coupon_code`.
    pub field: String,
}

impl MappingError {
    /// Prefixes the target with where the mapping sits, e.g. `within("fields")` turns `coupon` into
    /// `fields.coupon`, so that the message points at the configuration the user wrote.
    pub fn within(mut self, parent: &str) -> Self {
        self.target = format!("{parent}.{}", self.target);
        self
    }
}

/// Maps fields: a string value `{field}` takes that field of the inbound event's payload; anything
/// else (other strings, numbers, objects) is a literal, kept as is.
///
/// `event` is an [`InboundEvent::trigger`](crate::inbound::InboundEvent::trigger). A `{name}` is looked up, first
/// match wins, in: the event's `attributes`, its `userAttributes`, the normalized top level (`customer`,
/// `eventName`, `eventType`, `messageId`, `timestampMs`, `identities`, the connector's extra fields, …), the raw `event`, and the raw
/// event's `data` (sources that nest an event's fields there). A name with dots that matches no key as a whole is followed as a path in
/// the same places, e.g. `{identities.email}` or `{product_action.coupon_code}`. A field present with value
/// `null` maps to `null`; so does a normalized field the event leaves empty (e.g. `{customer}` before the host
/// fills it), after the raw event had no such field either.
pub fn map_fields(mapping: &Map<String, Value>, event: &Value) -> Result<Map<String, Value>, MappingError> {
    mapping
        .iter()
        .map(|(target, value)| {
            let mapped = match field_reference(value) {
                Some(field) => lookup(event, field)
                    .cloned()
                    .ok_or_else(|| MappingError { target: target.clone(), field: field.to_string() })?,
                None => value.clone(),
            };
            Ok((target.clone(), mapped))
        })
        .collect()
}

/// The field a mapping value refers to: a string that is exactly `{name}` (surrounding whitespace allowed,
/// `name` non-empty and without braces). `None` for literals, including `{{ … }}` templates.
pub fn field_reference(value: &Value) -> Option<&str> {
    let inner = value.as_str()?.trim().strip_prefix('{')?.strip_suffix('}')?.trim();
    if inner.is_empty() || inner.contains(['{', '}']) {
        return None;
    }
    Some(inner)
}

/// Where a name is looked up, in order. The index of the normalized top level, whose `null`s mean "not known"
/// rather than "sent as null".
const TOP_LEVEL: usize = 2;

fn lookup<'a>(event: &'a Value, name: &str) -> Option<&'a Value> {
    let raw = event.get("event");
    let places: [Option<&Value>; 5] =
        [event.get("attributes"), event.get("userAttributes"), Some(event), raw, raw.and_then(|raw| raw.get("data"))];
    let mut known_but_empty = false;
    for (i, place) in places.iter().enumerate() {
        match place.and_then(|place| place.as_object()).and_then(|place| place.get(name)) {
            // A normalized field left empty: the raw event may still have a field of that name.
            Some(Value::Null) if i == TOP_LEVEL => known_but_empty = true,
            Some(found) => return Some(found),
            None => {}
        }
    }
    // Whole keys first: attribute names may contain dots themselves.
    if name.contains('.') {
        for place in places.into_iter().flatten() {
            if let Some(found) = follow(place, name) {
                return Some(found);
            }
        }
    }
    known_but_empty.then_some(&Value::Null)
}

/// Follows a dotted path through objects (and arrays, by index).
fn follow<'a>(mut value: &'a Value, path: &str) -> Option<&'a Value> {
    for segment in path.split('.') {
        value = match value {
            Value::Object(object) => object.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::InboundEvent;
    use serde_json::json;

    fn mapping(value: Value) -> Map<String, Value> {
        value.as_object().expect("a mapping is an object").clone()
    }

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().expect("an object").clone()
    }

    /// A purchase with attributes, user attributes, identities, an extra field and fields only in the raw event.
    fn purchase() -> Value {
        InboundEvent {
            source: "shop.stream".into(),
            event_type: "commerce_event".into(),
            identities: vec![("customer_id".into(), "c-77".into()), ("email".into(), "ann@example.com".into())],
            user_attributes: object(json!({"$FirstName": "Ann", "tier": "gold", "shared": "from user"})),
            attributes: object(json!({
                "store": "Boca", "shared": "from event", "gone": null, "a.b": "whole key", "a": {"b": "path"}
            })),
            message_id: Some("e-1".into()),
            timestamp_ms: Some(1714592744066),
            extra: object(json!({"deviceId": "12345", "sourceEventType": "product_action"})),
            raw: json!({"type": "product_action", "id": "e-1", "coupon_code": "SPRING", "total_amount": 11}),
            ..InboundEvent::default()
        }
        .trigger(Some("c-77"))
    }

    /// An event whose source nests its fields under `data`.
    fn nested_event() -> Value {
        InboundEvent {
            source: "shop.batch".into(),
            event_type: "commerce_event".into(),
            extra: object(json!({"deviceId": "42"})),
            raw: json!({"event_type": "commerce_event", "data": {
                "session_uuid": "s-1", "product_action": {"action": "purchase", "coupon_code": "FALL"}
            }}),
            ..InboundEvent::default()
        }
        .trigger(None)
    }

    #[test]
    fn references_take_fields_from_attributes_then_user_attributes() {
        let mapped = map_fields(
            &mapping(json!({"store": "{store}", "name": "{$FirstName}", "tier": "{tier}", "shared": "{shared}"})),
            &purchase(),
        )
        .unwrap();
        assert_eq!(
            Value::Object(mapped),
            json!({"store": "Boca", "name": "Ann", "tier": "gold", "shared": "from event"}),
            "attributes win over user attributes"
        );
    }

    #[test]
    fn literals_are_kept_as_is() {
        let literals = json!({
            "channel": "shop",
            "points": 100,
            "ratio": 1.5,
            "flag": true,
            "nothing": null,
            "nested": {"a": "{store}"},
            "list": ["{store}"],
            "bare": "coupon_code",
            "empty": "{}",
            "braces": "{a{b}}",
            "template": "{{ trigger.attributes.store }}",
            "template_tight": "{{store}}",
            "open": "{store",
            "mixed": "code {store}",
        });
        let mapped = map_fields(&mapping(literals.clone()), &purchase()).unwrap();
        assert_eq!(Value::Object(mapped), literals);
    }

    #[test]
    fn whitespace_around_a_reference_is_allowed() {
        let mapped = map_fields(&mapping(json!({"store": "  { store } "})), &purchase()).unwrap();
        assert_eq!(mapped["store"], "Boca");
        assert_eq!(field_reference(&json!(" { store } ")), Some("store"));
        assert_eq!(field_reference(&json!("{{ store }}")), None);
        assert_eq!(field_reference(&json!(5)), None);
    }

    #[test]
    fn normalized_fields_identities_extra_fields_and_the_raw_event() {
        let mapped = map_fields(
            &mapping(json!({
                "customer": "{customer}",
                "device": "{deviceId}",
                "type": "{eventType}",
                "received": "{sourceEventType}",
                "id": "{messageId}",
                "at": "{timestampMs}",
                "email": "{identities.email}",
                "customerId": "{identities.customer_id}",
                "coupon": "{coupon_code}",
                "amount": "{total_amount}",
                "exact": "{a.b}",
            })),
            &purchase(),
        )
        .unwrap();
        assert_eq!(
            Value::Object(mapped),
            json!({
                "customer": "c-77",
                "device": "12345",
                "type": "commerce_event",
                "received": "product_action",
                "id": "e-1",
                "at": 1714592744066i64,
                "email": "ann@example.com",
                "customerId": "c-77",
                "coupon": "SPRING",
                "amount": 11,
                "exact": "whole key",
            })
        );
    }

    #[test]
    fn fields_nested_under_data_are_found() {
        let mapped = map_fields(
            &mapping(
                json!({"session": "{session_uuid}", "coupon": "{product_action.coupon_code}", "device": "{deviceId}"}),
            ),
            &nested_event(),
        )
        .unwrap();
        assert_eq!(Value::Object(mapped), json!({"session": "s-1", "coupon": "FALL", "device": "42"}));
    }

    #[test]
    fn a_missing_field_names_target_and_field() {
        let error = map_fields(&mapping(json!({"store": "{store}", "coupon": "{coupon}"})), &purchase()).unwrap_err();
        assert_eq!(error, MappingError { target: "coupon".into(), field: "coupon".into() });
        let error = map_fields(&mapping(json!({"coupon": "{coupon_kode}"})), &purchase()).unwrap_err();
        assert_eq!((error.target.as_str(), error.field.as_str()), ("coupon", "coupon_kode"));
        assert_eq!(
            error.within("fields").to_string(),
            "fields.coupon: the inbound event has no field `coupon_kode` (looked in attributes, userAttributes, \
             the event and its data)"
        );
        for missing in ["{identities.phone}", "{a.c}", "{store.x}"] {
            let error = map_fields(&mapping(json!({"t": missing})), &purchase()).unwrap_err();
            assert_eq!(format!("{{{}}}", error.field), missing);
        }
    }

    #[test]
    fn null_values_map_to_null() {
        let mut event = purchase();
        event["customer"] = Value::Null;
        let mapped =
            map_fields(&mapping(json!({"gone": "{gone}", "customer": "{customer}", "name": "{eventName}"})), &event)
                .unwrap();
        assert_eq!(Value::Object(mapped), json!({"gone": null, "customer": null, "name": null}));
    }

    #[test]
    fn an_empty_normalized_field_falls_back_to_the_raw_event() {
        // A normalized null `eventName` does not hide a raw field of that name.
        let mut event = purchase();
        event["event"]["eventName"] = json!("raw name");
        let mapped = map_fields(&mapping(json!({"name": "{eventName}"})), &event).unwrap();
        assert_eq!(mapped["name"], "raw name");
    }
}
