//! The manifest: every capability has input and output schemas that compile, examples that validate against
//! them, and outputs the connector really produces that validate too.

mod common;

use antavo_core::{CAPABILITY_IDS, describe};
use common::*;
use jsonschema::Validator;
use serde_json::{Value, json};

fn compile(schema: &Value, what: &str) -> Validator {
    jsonschema::options().should_validate_formats(true).build(schema).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn assert_valid(validator: &Validator, value: &Value, what: &str) {
    let errors: Vec<String> =
        validator.iter_errors(value).map(|e| format!("{}: {e}", e.instance_path().as_str())).collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}\n{value:#}");
}

/// The input schema without the DaVinci wrapper, and its example.
fn input(capability: &str) -> (Validator, Value) {
    let manifest = describe();
    let schema: Value = serde_json::from_str(&manifest.capability(capability).unwrap().input_schema).unwrap();
    let inner = &schema["default"];
    (compile(inner, capability), inner["example"].clone())
}

fn output(capability: &str) -> (Validator, Value) {
    let manifest = describe();
    let schema: Value = serde_json::from_str(&manifest.capability(capability).unwrap().output_schema).unwrap();
    (compile(&schema, capability), schema["example"].clone())
}

#[test]
fn the_manifest_is_complete() {
    let manifest = describe();
    assert_eq!(
        (manifest.id.as_str(), manifest.version.as_str(), manifest.display_name.as_str()),
        ("antavo", "0.1.0", "Antavo")
    );
    let ids: Vec<&str> = manifest.capabilities.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, CAPABILITY_IDS);
    let properties: Vec<(&str, bool, bool)> =
        manifest.connection_properties.iter().map(|p| (p.name.as_str(), p.secret, p.required)).collect();
    assert_eq!(
        properties,
        [
            ("environment", false, true),
            ("apiKey", false, false),
            ("apiSecret", true, false),
            ("clientId", false, false),
            ("clientSecret", true, false),
            ("apiUrl", false, false),
            ("webhookPath", false, false),
        ]
    );
    assert_eq!(manifest.allowed_hosts, ["https://*.antavo.com", "{apiUrl}"]);
    for property in &manifest.connection_properties {
        serde_json::from_str::<Value>(&property.schema).unwrap();
    }
}

#[test]
fn every_example_validates_against_its_schema() {
    for id in CAPABILITY_IDS {
        let (validator, example) = input(id);
        assert!(example.is_object(), "{id} has an input example");
        assert_valid(&validator, &example, &format!("{id} input example"));
        let (validator, example) = output(id);
        assert!(example.is_object(), "{id} has an output example");
        assert_valid(&validator, &example, &format!("{id} output example"));
    }
}

#[test]
fn real_outputs_validate_against_the_output_schemas() {
    let mut host = FakeHost::new()
        .answer_json(200, customer_answer("c-1", 10))
        .answer_json(200, json!({"results": [{"events": []}], "total": 1, "errors": 0}))
        .answer_json(200, json!({"id": "c-1", "email": null, "status": "active", "spendable": 3}))
        .answer_json(200, json!(["c-1"]))
        .token(TOKEN)
        .answer_json(200, json!({"payload": {"correlation_id": "x1", "status": "queued"}}))
        .answer_json(200, json!({"payload": {"status": "error", "response": {"success": [], "error": {"type": "NotFoundException", "code": 160212, "message": "Customer not found"}}}}));
    let calls = [
        ("sendEvent", wrap(json!({"customer": "c-1", "action": "point_add", "data": {"points": 10}}))),
        ("sendEvents", wrap(json!({"events": [{"customer": "c-1", "action": "x"}]}))),
        ("getCustomer", wrap(json!({"customerId": "c-1"}))),
        ("listChangedCustomers", wrap(json!({"since": 0}))),
        ("sendAsyncEvent", wrap(json!({"customer": "c-1", "action": "opt_out"}))),
        ("getAsyncEventStatus", wrap(json!({"correlationId": "x1"}))),
    ];
    for (capability, input_value) in calls {
        let (validator, _) = input(capability);
        assert_valid(&validator, &input_value, &format!("{capability} input"));
        let produced = invoke(&mut host, capability, input_value).unwrap();
        let (validator, _) = output(capability);
        assert_valid(&validator, &produced, &format!("{capability} output"));
    }
}
