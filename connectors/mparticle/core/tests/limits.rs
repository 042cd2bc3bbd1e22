//! Every documented limit and every input rule, refused before anything is sent, naming the field.

mod common;

use common::*;
use mparticle_core::{
    Environment, Error, build_marketing_event_batch, build_upload_event_batches, build_user_attributes_batch,
};
use serde_json::{Map, Value, json};

fn marketing(props: Value) -> Result<mparticle_core::EventsPayload, Error> {
    build_marketing_event_batch(&wrap(props), Environment::Production, "key")
}

fn attributes(attributes: Value) -> Result<mparticle_core::EventsPayload, Error> {
    build_user_attributes_batch(
        &wrap(json!({"identityValue": "42", "attributes": attributes})),
        Environment::Production,
        "key",
    )
}

fn upload(batch: Value) -> Result<mparticle_core::EventsPayload, Error> {
    build_upload_event_batches(&wrap(json!({ "eventBatch": batch })), Environment::Production, "key")
}

/// Asserts the error is invalid input naming exactly `pointer`, with a message containing `needle`.
fn refused(outcome: Result<mparticle_core::EventsPayload, Error>, pointer: &str, needle: &str) {
    let error = outcome.expect_err("refused");
    let Error::InvalidInput(errors) = &error else { panic!("expected invalid input, got {error:?}") };
    assert!(
        errors.iter().any(|e| e.pointer == pointer && e.message.contains(needle)),
        "expected {pointer:?} ~ {needle:?}, got {errors:#?}"
    );
}

fn many(n: usize, value: impl Fn(usize) -> Value) -> Value {
    Value::Object((0..n).map(|i| (format!("attribute_{i}"), value(i))).collect::<Map<_, _>>())
}

fn event(data: Value) -> Value {
    json!({"event_type": "custom_event", "data": data})
}

// ---- triggerMarketingCommunication ----

#[test]
fn event_names_are_at_most_256_characters() {
    let ok = json!({"eventName": "é".repeat(256), "eventType": "other", "identityValue": "1"});
    marketing(ok).unwrap();
    refused(
        marketing(json!({"eventName": "x".repeat(257), "eventType": "other", "identityValue": "1"})),
        "/properties/eventName",
        "257 characters",
    );
}

#[test]
fn payloads_are_at_most_100_attributes_of_bounded_size() {
    let base =
        |payload: Value| json!({"eventName": "e", "eventType": "other", "identityValue": "1", "payload": payload});
    marketing(base(many(100, |_| json!("v")))).unwrap();
    refused(marketing(base(many(101, |_| json!("v")))), "/properties/payload", "101 keys");
    refused(
        marketing(base(json!({"k".repeat(257): "v"}))),
        &format!("/properties/payload/{}", "k".repeat(257)),
        "257 characters",
    );
    refused(marketing(base(json!({"big": "v".repeat(4097)}))), "/properties/payload/big", "4097 characters");
    marketing(base(json!({"big": "v".repeat(4096)}))).unwrap();
    refused(marketing(base(json!({"a/b": {"nested": 1}}))), "/properties/payload/a~1b", "string, number or boolean");
    refused(marketing(base(json!({"list": [1]}))), "/properties/payload/list", "string, number or boolean");
    refused(marketing(base(json!({"nothing": null}))), "/properties/payload/nothing", "string, number or boolean");
    refused(marketing(base(json!({"": "v"}))), "/properties/payload/", "must not be empty");
    refused(marketing(base(json!("text"))), "/properties/payload", "must be an object");
}

#[test]
fn a_marketing_batch_over_128_kb_is_refused() {
    // 100 values of 4096 characters each are within the per-attribute limits but make a 400 KB batch.
    let input = json!({"eventName": "e", "eventType": "other", "identityValue": "1", "payload": many(100, |_| json!("v".repeat(4096)))});
    refused(marketing(input), "/properties/payload", "131072 bytes (128 KB)");
}

#[test]
fn marketing_inputs_are_checked() {
    refused(marketing(json!({"eventType": "other", "identityValue": "1"})), "/properties/eventName", "required");
    refused(marketing(json!({"eventName": "e", "identityValue": "1"})), "/properties/eventType", "required");
    refused(
        marketing(json!({"eventName": "e", "eventType": "purchase", "identityValue": "1"})),
        "/properties/eventType",
        "navigation",
    );
    refused(
        marketing(json!({"eventName": "e", "eventType": "attribution", "identityValue": "1"})),
        "/properties/eventType",
        "schema rejects it",
    );
    refused(marketing(json!({"eventName": "e", "eventType": "other"})), "/properties/identityValue", "required");
    refused(
        marketing(json!({"eventName": "e", "eventType": "other", "identityValue": ""})),
        "/properties/identityValue",
        "empty",
    );
    refused(
        marketing(json!({"eventName": "e", "eventType": "other", "identityValue": "1", "identityType": "customer"})),
        "/properties/identityType",
        "not an Events API identity type",
    );
    // Every problem is reported at once.
    let error = marketing(json!({"eventName": 5, "eventType": "x", "payload": []})).unwrap_err();
    assert_eq!(
        pointers(&error),
        ["/properties/eventName", "/properties/eventType", "/properties/payload", "/properties/identityValue"]
    );
    let error = build_marketing_event_batch(&json!({"eventName": "e"}), Environment::Production, "k").unwrap_err();
    assert_eq!(pointers(&error), ["/properties"]);
}

// ---- syncUserAttributes ----

#[test]
fn user_attributes_are_at_most_100_of_bounded_size() {
    attributes(many(100, |_| json!("v"))).unwrap();
    refused(attributes(many(101, |_| json!("v"))), "/properties/attributes", "101 attributes");
    refused(
        attributes(json!({"n".repeat(257): "v"})),
        &format!("/properties/attributes/{}", "n".repeat(257)),
        "257 characters",
    );
    refused(attributes(json!({"v": "x".repeat(4097)})), "/properties/attributes/v", "4097 characters");
    attributes(json!({"v": "x".repeat(4096)})).unwrap();
}

#[test]
fn user_attribute_lists_are_at_most_1000_entries_of_512_characters() {
    attributes(json!({"l": (0..1000).map(|i| i.to_string()).collect::<Vec<_>>()})).unwrap();
    refused(
        attributes(json!({"l": (0..1001).map(|i| i.to_string()).collect::<Vec<_>>()})),
        "/properties/attributes/l",
        "1001 entries",
    );
    refused(attributes(json!({"l": ["ok", "x".repeat(513)]})), "/properties/attributes/l/1", "513 characters");
    refused(attributes(json!({"l": ["ok", 5]})), "/properties/attributes/l/1", "must be a string");
}

#[test]
fn a_user_attribute_batch_over_128_kb_is_refused() {
    refused(attributes(many(40, |_| json!("x".repeat(4096)))), "/properties/attributes", "128 KB");
}

#[test]
fn dollar_names_must_be_reserved_attributes() {
    let payload =
        attributes(json!({"$age": 42, "$FirstName": "Ada", "$LASTNAME": "Lovelace", "tier": "gold"})).unwrap();
    assert_eq!(
        payload.batches()[0]["user_attributes"],
        json!({"$age": 42, "$firstname": "Ada", "$lastname": "Lovelace", "tier": "gold"})
    );
    refused(
        attributes(json!({"$tier": "gold"})),
        "/properties/attributes/$tier",
        "$tier is not one of mParticle's reserved user attributes",
    );
    refused(
        attributes(json!({"$firstname": "A", "$FirstName": "B"})),
        "/properties/attributes/$FirstName",
        "second time",
    );
    let payload = attributes(json!({"$mobile": null, "old": null})).unwrap();
    assert_eq!(payload.batches()[0]["deleted_user_attributes"], json!(["$mobile", "old"]));
    assert!(payload.batches()[0].get("user_attributes").is_none());
}

#[test]
fn user_attribute_inputs_are_checked() {
    refused(attributes(json!({})), "/properties/attributes", "at least one");
    refused(attributes(json!(["a"])), "/properties/attributes", "must be an object");
    refused(attributes(json!({"o": {"nested": 1}})), "/properties/attributes/o", "list of strings");
    let error =
        build_user_attributes_batch(&wrap(json!({"identityType": "fax"})), Environment::Production, "k").unwrap_err();
    assert_eq!(pointers(&error), ["/properties/identityType", "/properties/identityValue", "/properties/attributes"]);
}

// ---- uploadEventBatch ----

#[test]
fn a_bulk_request_has_at_most_100_batches() {
    let batch = json!({"user_identities": {"customer_id": "1"}});
    let payload = upload(Value::Array(vec![batch.clone(); 100])).unwrap();
    assert_eq!(payload.batches().len(), 100);
    refused(upload(Value::Array(vec![batch; 101])), "/properties/eventBatch", "101 batches");
    refused(upload(json!([])), "/properties/eventBatch", "at least one batch");
}

#[test]
fn a_batch_is_at_most_128_kb() {
    let events: Vec<Value> = (0..40)
        .map(|i| event(json!({"event_name": format!("e{i}"), "custom_event_type": "other", "custom_attributes": {"a": "x".repeat(4000)}})))
        .collect();
    refused(upload(json!({"events": events})), "/properties/eventBatch", "128 KB");
    refused(upload(json!([{"mpid": 1}, {"events": events}])), "/properties/eventBatch/1", "128 KB");
}

#[test]
fn a_request_is_at_most_256_kb() {
    let events: Vec<Value> = (0..25)
        .map(|i| event(json!({"event_name": format!("e{i}"), "custom_event_type": "other", "custom_attributes": {"a": "x".repeat(4000)}})))
        .collect();
    let batch = json!({"events": events});
    assert!(serde_json::to_vec(&batch).unwrap().len() < 128 * 1024);
    upload(json!([batch, batch])).unwrap();
    refused(upload(json!([batch, batch, batch])), "/properties/eventBatch", "256 KB");
}

#[test]
fn event_limits_in_uploaded_batches_are_checked() {
    let long_name = event(json!({"event_name": "x".repeat(257), "custom_event_type": "other"}));
    refused(
        upload(json!({"events": [long_name]})),
        "/properties/eventBatch/events/0/data/event_name",
        "257 characters",
    );
    let attrs =
        event(json!({"event_name": "e", "custom_event_type": "other", "custom_attributes": many(101, |_| json!("v"))}));
    refused(
        upload(json!({"events": [attrs]})),
        "/properties/eventBatch/events/0/data/custom_attributes",
        "101 attributes",
    );
    let value =
        event(json!({"event_name": "e", "custom_event_type": "other", "custom_attributes": {"a": "x".repeat(4097)}}));
    refused(
        upload(json!([{"mpid": 1}, {"events": [value]}])),
        "/properties/eventBatch/1/events/0/data/custom_attributes/a",
        "4097",
    );
    let name =
        event(json!({"event_name": "e", "custom_event_type": "other", "custom_attributes": {"n".repeat(257): "v"}}));
    refused(
        upload(json!({"events": [name]})),
        &format!("/properties/eventBatch/events/0/data/custom_attributes/{}", "n".repeat(257)),
        "257",
    );
}

#[test]
fn user_attribute_limits_in_uploaded_batches_are_checked() {
    refused(
        upload(json!({"user_attributes": many(101, |_| json!("v"))})),
        "/properties/eventBatch/user_attributes",
        "101 user attributes",
    );
    refused(
        upload(json!({"user_attributes": {"l": vec!["x"; 1001]}})),
        "/properties/eventBatch/user_attributes/l",
        "1001 entries",
    );
    refused(
        upload(json!({"user_attributes": {"l": ["x".repeat(513)]}})),
        "/properties/eventBatch/user_attributes/l/0",
        "513",
    );
    refused(
        upload(json!({"user_attributes": {"v": "x".repeat(4097)}})),
        "/properties/eventBatch/user_attributes/v",
        "4097",
    );
}

#[test]
fn the_batch_format_is_checked() {
    refused(upload(json!({"schema_version": 2})), "/properties/eventBatch/schema_version", "output-only");
    refused(upload(json!({"environment": "staging"})), "/properties/eventBatch/environment", "development");
    refused(
        upload(json!({"user_identities": {"customer": "1"}})),
        "/properties/eventBatch/user_identities/customer",
        "identity type",
    );
    refused(
        upload(json!({"events": [{"event_type": "click", "data": {}}]})),
        "/properties/eventBatch/events/0/event_type",
        "not an event type",
    );
    refused(upload(json!({"events": [{"data": {}}]})), "/properties/eventBatch/events/0/event_type", "required");
    refused(
        upload(json!({"events": [{"event_type": "screen_view"}]})),
        "/properties/eventBatch/events/0/data",
        "required",
    );
    refused(
        upload(json!({"events": [{"event_type": "screen_view", "data": {}}]})),
        "/properties/eventBatch/events/0/data/screen_name",
        "required",
    );
    refused(
        upload(json!({"events": [event(json!({"event_name": "e", "custom_event_type": "attribution"}))]})),
        "/properties/eventBatch/events/0/data/custom_event_type",
        "attribution",
    );
    refused(
        upload(json!({"events": [event(json!({"custom_event_type": "other"}))]})),
        "/properties/eventBatch/events/0/data/event_name",
        "required",
    );
    refused(upload(json!({"events": "none"})), "/properties/eventBatch/events", "array");
    refused(upload(json!({"unknown": 1})), "/properties/eventBatch/unknown", "not a field");
    refused(upload(json!([{"mpid": 1}, 7])), "/properties/eventBatch/1", "JSON object");
    refused(upload(json!(5)), "/properties/eventBatch", "batch object");
    refused(upload(json!("{not json")), "/properties/eventBatch", "not valid JSON");
    refused(upload(json!("{\"mpid\": \"x\"}")), "/properties/eventBatch/mpid", "integer");
    refused(
        upload(json!([{"source_request_id": "same"}, {"source_request_id": "same"}])),
        "/properties/eventBatch/1/source_request_id",
        "repeats the source_request_id of batch 0",
    );
    let error = build_upload_event_batches(&wrap(json!({})), Environment::Production, "k").unwrap_err();
    assert_eq!(pointers(&error), ["/properties/eventBatch"]);
}
