//! Cross-check of the hand-written validator against mParticle's official JSON Schema
//! (draft-07, format assertion on), read from the shared test data at run time.

use jsonschema::{Registry, Validator};
use mparticle_emulator::validate::{Limits, validate_batch, validate_bulk};
use serde_json::{Value, json};

use crate::cases;
use crate::common::{self, shared_json};

const SCHEMA_ID: &str = "https://docs.mparticle.com/schema/mparticle.inbound.eventsapi.schema.json";

fn official() -> Validator {
    let schema = shared_json("mparticle-eventsapi-schema.json");
    assert_eq!(schema["$id"], SCHEMA_ID);
    jsonschema::draft7::options().should_validate_formats(true).build(&schema).expect("official schema compiles")
}

#[test]
fn validator_agrees_with_the_official_schema() {
    let schema = official();
    let mut checked = 0;
    for (name, batch) in cases::valid() {
        let errors: Vec<String> = schema.iter_errors(&batch).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "valid case {name:?} fails the official schema: {errors:?}");
        assert!(validate_batch(&batch).is_ok(), "valid case {name:?} rejected by the emulator");
        checked += 1;
    }
    for case in cases::invalid() {
        let mut b = common::valid_batch();
        (case.mutate)(&mut b);
        assert!(validate_batch(&b).is_err(), "case {:?} accepted by the emulator", case.name);
        assert_eq!(
            !schema.is_valid(&b),
            case.schema_rejects,
            "case {:?}: the official schema {} it, the table says it {}",
            case.name,
            if schema.is_valid(&b) { "accepts" } else { "rejects" },
            if case.schema_rejects { "rejects" } else { "accepts (emulator stricter)" },
        );
        checked += 1;
    }
    assert!(checked > 80);
}

#[test]
fn the_official_sample_validates_under_both() {
    let sample = shared_json("mparticle-eventsapi-sample.json");
    let schema = official();
    let errors: Vec<String> = schema.iter_errors(&sample).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    validate_batch(&sample).unwrap();
}

#[test]
fn bulk_schema_with_the_single_schema_registered() {
    let single = shared_json("mparticle-eventsapi-schema.json");
    let bulk = shared_json("mparticle-eventsapi-bulk-schema.json");
    let registry = Registry::new().add(SCHEMA_ID, single).unwrap().prepare().unwrap();
    let validator = jsonschema::draft7::options()
        .with_registry(&registry)
        .should_validate_formats(true)
        .build(&bulk)
        .expect("bulk schema compiles");
    let good = json!([common::valid_batch(), shared_json("mparticle-eventsapi-sample.json")]);
    assert!(validator.is_valid(&good));
    assert!(validate_bulk(&good, &Limits::default(), None).is_ok());
    let mut bad_batch = common::valid_batch();
    bad_batch["environment"] = json!("qa");
    let bad = Value::Array(vec![common::valid_batch(), bad_batch]);
    assert!(!validator.is_valid(&bad));
    let e = validate_bulk(&bad, &Limits::default(), None).unwrap_err();
    assert_eq!(e.path, "$[1].environment");
}
