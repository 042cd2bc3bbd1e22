//! The batch validator, one rule per case, directly and over HTTP.

use mparticle_emulator::validate::{Limits, validate_batch, validate_batch_at};
use serde_json::json;

use crate::cases;
use crate::common::{self, first_message, post_batch};

#[test]
fn every_valid_case_is_accepted() {
    for (name, batch) in cases::valid() {
        if let Err(e) = validate_batch(&batch) {
            panic!("valid case {name:?} was rejected: {e}");
        }
    }
}

#[test]
fn every_invalid_case_is_rejected_naming_the_field() {
    let all = cases::invalid();
    assert!(all.len() >= 60, "expected many rules, have {}", all.len());
    for case in all {
        let mut b = common::valid_batch();
        (case.mutate)(&mut b);
        match validate_batch(&b) {
            Ok(()) => panic!("invalid case {:?} was accepted", case.name),
            Err(e) => {
                assert_eq!(e.path, case.path, "case {:?}: wrong path ({e})", case.name);
                assert!(
                    e.message.contains(case.contains),
                    "case {:?}: message {:?} lacks {:?}",
                    case.name,
                    e.message,
                    case.contains
                );
            }
        }
    }
}

#[test]
fn the_official_sample_batch_is_valid() {
    let sample = common::shared_json("mparticle-eventsapi-sample.json");
    validate_batch(&sample).unwrap();
}

#[test]
fn bulk_paths_carry_the_batch_index() {
    let mut b = common::valid_batch();
    b["events"][0]["data"]["custom_event_type"] = json!("bogus");
    let e = validate_batch_at(&b, &Limits::default(), Some(3), None).unwrap_err();
    assert_eq!(e.path, "$[3].events[0].data.custom_event_type");
}

#[test]
fn keys_that_are_not_identifiers_are_quoted_in_paths() {
    let mut b = common::valid_batch();
    b["user_attributes"]["$first name"] = json!({"x": 1});
    let e = validate_batch(&b).unwrap_err();
    assert_eq!(e.path, r#"$.user_attributes["$first name"]"#);
}

#[test]
fn wrong_types_at_the_top_do_not_panic() {
    for v in [json!(null), json!(1), json!("batch"), json!([]), json!(true)] {
        assert!(validate_batch(&v).is_err(), "{v} accepted");
    }
}

#[tokio::test]
async fn every_invalid_case_gets_400_over_http() {
    let emu = common::start().await;
    let cases = cases::invalid();
    for case in &cases {
        let mut b = common::valid_batch();
        (case.mutate)(&mut b);
        let (status, body) = post_batch(&emu, &b).await;
        assert_eq!(status, 400, "case {:?}: {body}", case.name);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["errors"][0]["code"], "BAD_REQUEST", "case {:?}", case.name);
        let msg = first_message(&body);
        assert!(msg.starts_with(&format!("{}: ", case.path)), "case {:?}: {msg}", case.name);
        assert!(msg.contains(case.contains), "case {:?}: {msg}", case.name);
    }
    let s = emu.stats();
    assert_eq!((s.rejected, s.accepted, s.received), (cases.len() as u64, 0, cases.len() as u64));
    assert!(emu.batches().is_empty());
}

#[tokio::test]
async fn every_valid_case_gets_202_over_http() {
    let emu = common::start().await;
    let valid = cases::valid();
    for (name, batch) in &valid {
        let (status, body) = post_batch(&emu, batch).await;
        assert_eq!(status, 202, "case {name:?}: {body}");
        assert!(body.is_empty(), "202 body should be empty, got {body:?}");
    }
    assert_eq!(emu.batches().len(), valid.len());
}

#[tokio::test]
async fn the_official_sample_is_accepted_over_http() {
    let emu = common::start().await;
    let sample = common::shared_json("mparticle-eventsapi-sample.json");
    let (status, body) = post_batch(&emu, &sample).await;
    assert_eq!(status, 202, "{body}");
    let got = emu.batches();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].batch, sample);
    assert_eq!(got[0].endpoint, "/v2/events");
}
