//! The manifest against the published DaVinci schemas, and every batch the connector builds against
//! mParticle's official Events API JSON Schema (draft-07, read from the shared folder beside the checkout).

mod common;

use common::*;
use jsonschema::{Draft, Registry, Validator};
use mparticle_core::{Environment, describe, validate_batch};
use serde_json::{Value, json};

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../../shared");

fn read_json(relative: &str) -> Value {
    let path = format!("{SHARED}/{relative}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn batch_validator() -> Validator {
    let schema = read_json("mparticle/mparticle-eventsapi-schema.json");
    jsonschema::options()
        .with_draft(Draft::Draft7)
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema compiles")
}

fn assert_valid(validator: &Validator, batch: &Value, what: &str) {
    let errors: Vec<String> =
        validator.iter_errors(batch).map(|e| format!("{}: {e}", e.instance_path().as_str())).collect();
    assert!(errors.is_empty(), "{what} does not validate against the official schema: {errors:#?}\n{batch:#}");
}

// ---- the manifest ----

/// The six input schemas published in the seed document, in its order (uploadEventBatch has none there).
fn seed_schemas() -> Vec<Value> {
    let path = format!("{SHARED}/seeds/davinci-mparticle-connector.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let mut schemas = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("Input Schema:") {
        rest = &rest[at + "Input Schema:".len()..];
        let start = rest.find('{').expect("a JSON object follows");
        let mut stream = serde_json::Deserializer::from_str(&rest[start..]).into_iter::<Value>();
        schemas.push(stream.next().expect("one value").expect("valid JSON"));
        rest = &rest[start + stream.byte_offset()..];
    }
    schemas
}

#[test]
fn the_davinci_input_schemas_are_exactly_the_published_ones() {
    let manifest = describe();
    let published = seed_schemas();
    let ids =
        ["createAccount", "getAccount", "updateAccount", "deleteAccount", "getAudiences", "getCalculatedAttributes"];
    assert_eq!(published.len(), ids.len());
    for (id, expected) in ids.iter().zip(&published) {
        let ours: Value = serde_json::from_str(&manifest.capability(id).unwrap().input_schema).unwrap();
        assert_eq!(&ours, expected, "{id}");
    }
    // Spot-check against a hand copy, in case the seed parser drifts.
    let get_account: Value = serde_json::from_str(&manifest.capability("getAccount").unwrap().input_schema).unwrap();
    assert_eq!(
        get_account,
        json!({"default": {"type": "object", "properties": {"properties": {"type": "object", "properties": {
            "accountId": {"type": "string", "description": "Account ID from your mParticle account."}},
            "required": ["accountId"]}}, "example": {"properties": {"accountId": "1"}}}})
    );
}

#[test]
fn the_manifest_is_complete() {
    let manifest = describe();
    assert_eq!(
        (manifest.id.as_str(), manifest.version.as_str(), manifest.display_name.as_str()),
        ("mparticle", "0.1.0", "mParticle")
    );
    let ids: Vec<_> = manifest.capabilities.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "createAccount",
            "getAccount",
            "updateAccount",
            "deleteAccount",
            "getAudiences",
            "getCalculatedAttributes",
            "uploadEventBatch",
            "triggerMarketingCommunication",
            "syncUserAttributes"
        ]
    );
    let titles: Vec<_> = manifest.capabilities.iter().take(7).map(|c| c.title.as_str()).collect();
    assert_eq!(
        titles,
        [
            "Create an account",
            "Get a single account",
            "Update an account",
            "Delete an account",
            "Get all audiences",
            "Get all calculated attributes",
            "Upload an event batch"
        ]
    );
    let names: Vec<_> = manifest.connection_properties.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "clientId",
            "clientSecret",
            "pod",
            "apiKey",
            "apiSecret",
            "environment",
            "authUrl",
            "platformApiUrl",
            "eventsApiUrl"
        ]
    );
    let secrets: Vec<_> = manifest.connection_properties.iter().filter(|p| p.secret).map(|p| p.name.as_str()).collect();
    assert_eq!(secrets, ["clientSecret", "apiSecret"]);
    assert!(manifest.connection_properties.iter().all(|p| !p.required));
    for p in &manifest.connection_properties {
        let schema: Value = serde_json::from_str(&p.schema).unwrap();
        jsonschema::draft7::new(&schema).unwrap_or_else(|e| panic!("{}: {e}", p.name));
    }
    for entry in [
        "{authUrl}",
        "{platformApiUrl}",
        "{eventsApiUrl}",
        "https://sso.auth.mparticle.com",
        "https://api.mparticle.com",
        "https://s2s.mparticle.com",
    ] {
        assert!(manifest.allowed_hosts.iter().any(|h| h == entry), "{entry}");
    }
}

#[test]
fn every_capability_has_valid_schemas_whose_example_validates() {
    for capability in describe().capabilities {
        let input: Value = serde_json::from_str(&capability.input_schema).unwrap();
        let output: Value = serde_json::from_str(&capability.output_schema).unwrap();
        let wrapped = &input["default"];
        assert_eq!(input.as_object().unwrap().len(), 1, "{}: the DaVinci wrapper", capability.id);
        assert_eq!(wrapped["type"], "object");
        assert!(wrapped["properties"]["properties"]["properties"].is_object(), "{}", capability.id);
        let validator = jsonschema::validator_for(wrapped).unwrap_or_else(|e| panic!("{}: {e}", capability.id));
        assert!(validator.is_valid(&wrapped["example"]), "{}: the example is valid", capability.id);
        assert!(!validator.is_valid(&json!({"properties": {}})), "{}: something is required", capability.id);
        jsonschema::validator_for(&output).unwrap_or_else(|e| panic!("{} output: {e}", capability.id));
        assert_eq!(output["type"], "object", "{}", capability.id);
    }
}

#[test]
fn examples_run_through_the_builders() {
    for capability in describe().capabilities {
        let input: Value = serde_json::from_str(&capability.input_schema).unwrap();
        let example = &input["default"]["example"];
        match capability.id.as_str() {
            "uploadEventBatch" | "triggerMarketingCommunication" | "syncUserAttributes" => {
                mparticle_core::build_events_payload(&capability.id, example, Environment::Development, "key")
                    .unwrap_or_else(|e| panic!("{}: {e}", capability.id));
            }
            _ => {}
        }
    }
}

// ---- the official Events API schema ----

#[test]
fn marketing_event_batches_validate() {
    let validator = batch_validator();
    let inputs = [
        point_add(),
        wrap(json!({"eventName": "reward_claim", "eventType": "other", "identityValue": "42"})),
        wrap(
            json!({"eventName": "x".repeat(256), "eventType": "media", "identityType": "other_id_10", "identityValue": "v",
                    "payload": (0..100).map(|i| (format!("k{i}"), json!("v".repeat(1000)))).collect::<serde_json::Map<_, _>>()}),
        ),
    ];
    for event_type in [
        "navigation",
        "location",
        "search",
        "transaction",
        "user_content",
        "user_preference",
        "social",
        "other",
        "media",
    ] {
        for environment in [Environment::Development, Environment::Production] {
            let input = wrap(
                json!({"eventName": "e", "eventType": event_type, "identityType": "email", "identityValue": "a@b.c", "payload": {"n": 1}}),
            );
            let payload = mparticle_core::build_marketing_event_batch(&input, environment, "key").unwrap();
            assert_valid(&validator, &payload.batches()[0], event_type);
        }
    }
    for input in inputs {
        let payload = mparticle_core::build_marketing_event_batch(&input, Environment::Production, "key").unwrap();
        assert_valid(&validator, &payload.batches()[0], "marketing event");
        let sent: Value = serde_json::from_slice(&payload.body).unwrap();
        let props = &input["properties"];
        assert_eq!(sent["events"][0]["data"]["event_name"], props["eventName"]);
        let identity_type = props["identityType"].as_str().unwrap_or("customer_id");
        assert_eq!(sent["user_identities"], json!({ identity_type: props["identityValue"] }));
        let attributes = sent["events"][0]["data"].get("custom_attributes").and_then(Value::as_object);
        assert_eq!(attributes.map_or(0, |a| a.len()), props["payload"].as_object().map_or(0, |p| p.len()));
    }
}

#[test]
fn user_attribute_batches_validate() {
    let validator = batch_validator();
    let reserved =
        ["$age", "$gender", "$country", "$zip", "$city", "$state", "$address", "$firstname", "$lastname", "$mobile"];
    let mut attributes: serde_json::Map<String, Value> = reserved.iter().map(|n| (n.to_string(), json!("v"))).collect();
    // 1000 entries of 512 characters would be 512 KB, over the 128 KB batch limit: long entries, fewer of them.
    attributes.insert("list".into(), json!((0..200).map(|i| format!("{i:0>512}")).collect::<Vec<_>>()));
    attributes.insert("short_list".into(), json!((0..1000).map(|i| i.to_string()).collect::<Vec<_>>()));
    attributes.insert("number".into(), json!(12.5));
    attributes.insert("flag".into(), json!(true));
    attributes.insert("gone".into(), Value::Null);
    let only_deletes = wrap(json!({"identityValue": "1", "attributes": {"a": null, "b": null}}));
    for input in [profile_sync(), wrap(json!({"identityValue": "1", "attributes": attributes})), only_deletes] {
        let payload = mparticle_core::build_user_attributes_batch(&input, Environment::Development, "key").unwrap();
        assert_valid(&validator, &payload.batches()[0], "user attributes");
    }
}

#[test]
fn uploaded_batches_validate_including_the_official_sample() {
    let validator = batch_validator();
    let sample = read_json("mparticle/mparticle-eventsapi-sample.json");
    assert_valid(&validator, &sample, "the sample as published");
    assert!(validate_batch(&sample, "").is_empty(), "{:?}", validate_batch(&sample, ""));
    let mut without_ids = sample.clone();
    without_ids.as_object_mut().unwrap().remove("source_request_id");
    without_ids.as_object_mut().unwrap().remove("environment");

    // One batch, as an object and as text.
    for given in [sample.clone(), Value::String(without_ids.to_string())] {
        let payload = mparticle_core::build_upload_event_batches(
            &wrap(json!({"eventBatch": given})),
            Environment::Production,
            "key",
        )
        .unwrap();
        assert_valid(&validator, &payload.batches()[0], "uploaded batch");
    }
    let kept = mparticle_core::build_upload_event_batches(
        &wrap(json!({"eventBatch": sample})),
        Environment::Production,
        "key",
    )
    .unwrap();
    assert_eq!(kept.batches()[0]["source_request_id"], sample["source_request_id"]);
    assert_eq!(kept.batches()[0]["environment"], sample["environment"]);

    // A bulk request, checked with the official bulk schema (which refers to the batch schema by its $id).
    let bulk = json!([without_ids, {"user_identities": {"customer_id": "1"}}, {"mpid": 42, "events": null}]);
    let payload =
        mparticle_core::build_upload_event_batches(&wrap(json!({"eventBatch": bulk})), Environment::Development, "key")
            .unwrap();
    let body: Value = serde_json::from_slice(&payload.body).unwrap();
    let batch_schema = read_json("mparticle/mparticle-eventsapi-schema.json");
    let registry =
        Registry::new().add(batch_schema["$id"].as_str().unwrap(), &batch_schema).unwrap().prepare().unwrap();
    let bulk_validator = jsonschema::options()
        .with_draft(Draft::Draft7)
        .with_registry(&registry)
        .should_validate_formats(true)
        .build(&read_json("mparticle/mparticle-eventsapi-bulk-schema.json"))
        .unwrap();
    let errors: Vec<String> = bulk_validator.iter_errors(&body).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(!bulk_validator.is_valid(&json!([{"schema_version": 2}])), "the bulk validator does check batches");
}

#[test]
fn the_check_probe_batch_validates() {
    let mut host = FakeHost::new().answer(202, "");
    let mut connection = connection();
    connection.as_object_mut().unwrap().retain(|k, _| k != "clientId" && k != "clientSecret");
    mparticle_core::check(&mut host, &connection).unwrap();
    assert_valid(&batch_validator(), &host.body(0), "the probe");
}

#[test]
fn what_the_runtime_checks_refuse_the_schema_refuses_too() {
    let validator = batch_validator();
    let refused = [
        json!({"schema_version": 2}),
        json!({"environment": "staging"}),
        json!({"user_identities": {"customer": "1"}}),
        json!({"events": [{"event_type": "custom_event", "data": {"event_name": "e", "custom_event_type": "attribution"}}]}),
        json!({"events": [{"event_type": "custom_event", "data": {"event_name": "e"}}]}),
        json!({"events": [{"event_type": "screen_view", "data": {}}]}),
        json!({"events": [{"event_type": "push_reaction", "data": {}}]}),
        json!({"events": [{"event_type": "custom_event"}]}),
        json!({"events": [{"event_type": "custom_event", "data": {"event_name": "e", "custom_event_type": "other"}, "extra": 1}]}),
        json!({"user_attributes": {"a": {"nested": true}}}),
        json!({"deleted_user_attributes": [1]}),
        json!({"mpid": "12"}),
        json!({"unknown_field": 1}),
    ];
    for batch in refused {
        assert!(!validate_batch(&batch, "").is_empty(), "the connector accepts {batch}");
        assert!(!validator.is_valid(&batch), "the schema accepts {batch}");
    }
}
