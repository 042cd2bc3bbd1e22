//! Antavo's webhooks in: verification (Escher with the connection's key and secret, or the host's token) and
//! normalization.

mod common;

use antavo_core::escher::{self, Profile, Request};
use antavo_core::{Error, InboundRequest, receive};
use common::*;
use serde_json::{Value, json};

const HOST: &str = "flowhost.example.com";

/// A webhook as Antavo would post it, signed with `secret` at `time` (seconds) for `path`.
fn signed(body: &str, secret: &str, time: i64, path: &str) -> InboundRequest {
    let headers =
        vec![("host".to_string(), HOST.to_string()), ("content-type".to_string(), "application/json".to_string())];
    let request = Request { method: "POST", path, query: "", headers: &headers, body: body.as_bytes() };
    let signature =
        escher::sign(&Profile::antavo(), "st2/api/antavo_request", API_KEY, secret, &request, &[], time).unwrap();
    let mut headers = headers.clone();
    headers.push(signature.date);
    headers.push(signature.authorization);
    InboundRequest {
        method: "POST".into(),
        path: path.strip_prefix("/v1/inbound/antavo").unwrap_or(path).into(),
        query: String::new(),
        headers,
        body: body.as_bytes().to_vec(),
        authenticated: false,
        received_at_ms: NOW_MS,
    }
}

fn point_add_body() -> String {
    json!({"id": "evt-1", "action": "point_add", "timestamp": "2024-01-15T10:29:58Z",
           "customer": {"id": "c-1", "email": "ada@example.com", "first_name": "Ada", "spendable": 250},
           "data": {"points": 100}, "account": "default"})
    .to_string()
}

#[test]
fn a_signed_point_add_becomes_a_loyalty_event() {
    let mut host = FakeHost::new();
    let received =
        receive(&mut host, &connection(), &signed(&point_add_body(), API_SECRET, NOW_MS / 1000, "/v1/inbound/antavo"))
            .unwrap();
    assert_eq!(received.response.status, 200);
    assert_eq!(received.message_id.as_deref(), Some("evt-1"));
    let [event] = &received.events[..] else { panic!() };
    assert_eq!(event.source, "antavo.webhook");
    assert_eq!(event.event_type, "loyalty_event");
    assert_eq!(event.event_name.as_deref(), Some("point_add"));
    assert_eq!(event.identity("customer_id"), Some("c-1"));
    assert_eq!(event.identity("email"), Some("ada@example.com"));
    assert_eq!(Value::Object(event.attributes.clone()), json!({"points": 100}));
    assert_eq!(
        Value::Object(event.user_attributes.clone()),
        json!({"email": "ada@example.com", "first_name": "Ada", "spendable": 250})
    );
    assert_eq!(event.timestamp_ms, Some(NOW_MS - 2000));
    assert_eq!(event.extra["action"], "point_add");
    assert_eq!(event.extra["account"], "default");
    assert!(host.requests.is_empty(), "receiving calls nothing");
}

#[test]
fn a_profile_change_carries_the_changed_fields_as_user_attributes() {
    let body = json!([{"action": "profile", "customer": {"_id": "c-2", "first_name": "Ada", "last_name": "Byron"},
                       "data": {"last_name": "King", "email": "ada@example.com"}, "created_at": 1_705_314_600},
                      {"action": "opt_out", "customer": "c-3"}])
    .to_string();
    let received =
        receive(&mut FakeHost::new(), &connection(), &signed(&body, API_SECRET, NOW_MS / 1000, "/v1/inbound/antavo"))
            .unwrap();
    assert_eq!(received.message_id, None, "two events: no one id for the request");
    let profile = &received.events[0];
    assert_eq!((profile.event_type.as_str(), profile.event_name.as_deref()), ("profile_change", Some("profile")));
    assert_eq!(
        Value::Object(profile.user_attributes.clone()),
        json!({"first_name": "Ada", "last_name": "King", "email": "ada@example.com"})
    );
    assert_eq!(profile.identity("customer_id"), Some("c-2"));
    assert_eq!(profile.timestamp_ms, Some(NOW_MS));
    assert_eq!(received.events[1].event_type, "profile_change");
    assert_eq!(received.events[1].identity("customer_id"), Some("c-3"));
}

#[test]
fn bad_signatures_are_refused() {
    let now = NOW_MS / 1000;
    let body = point_add_body();
    let cases: Vec<(InboundRequest, &str)> = vec![
        (signed(&body, "wrong-secret", now, "/v1/inbound/antavo"), "The signatures do not match"),
        (signed(&body, API_SECRET, now - 301, "/v1/inbound/antavo"), "not within the accepted time range"),
        (signed(&body, API_SECRET, now, "/v1/inbound/other"), "The signatures do not match"),
        (
            InboundRequest {
                body: body.replace("100", "1000").into_bytes(),
                ..signed(&body, API_SECRET, now, "/v1/inbound/antavo")
            },
            "The signatures do not match",
        ),
        (
            InboundRequest {
                headers: vec![("host".into(), HOST.into())],
                ..signed(&body, API_SECRET, now, "/v1/inbound/antavo")
            },
            "Escher authentication is missing",
        ),
    ];
    for (request, needle) in cases {
        let error = receive(&mut FakeHost::new(), &connection(), &request).unwrap_err();
        let Error::Unauthorized(message) = error else { panic!("{error:?}") };
        assert!(message.contains(needle), "{message}");
        assert!(!message.contains(API_SECRET));
    }
}

#[test]
fn a_replayed_request_is_refused_and_a_token_needs_no_signature() {
    let mut host = FakeHost::new();
    let request = signed(&point_add_body(), API_SECRET, NOW_MS / 1000, "/v1/inbound/antavo");
    receive(&mut host, &connection(), &request).unwrap();
    let Err(Error::Unauthorized(message)) = receive(&mut host, &connection(), &request) else { panic!() };
    assert!(message.contains("replay"), "{message}");

    let with_token = InboundRequest {
        method: "POST".into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: point_add_body().into_bytes(),
        authenticated: true,
        received_at_ms: NOW_MS,
        ..InboundRequest::default()
    };
    assert_eq!(receive(&mut host, &connection(), &with_token).unwrap().events.len(), 1);
    let without_keys = json!({"environment": "st2"});
    let Err(Error::Unauthorized(message)) =
        receive(&mut host, &without_keys, &InboundRequest { authenticated: false, ..with_token })
    else {
        panic!()
    };
    assert!(message.contains("apiKey and apiSecret"), "{message}");
}

#[test]
fn the_webhook_path_follows_the_connection() {
    let mut connection = connection();
    connection["webhookPath"] = json!("/hooks/v1/inbound/loyalty");
    let request = signed(&point_add_body(), API_SECRET, NOW_MS / 1000, "/hooks/v1/inbound/loyalty/points");
    // The host hands over the path below the connection's route.
    let request = InboundRequest { path: "/points".into(), ..request };
    assert!(receive(&mut FakeHost::new(), &connection, &request).is_ok());
}

#[test]
fn form_bodies_and_malformed_ones() {
    let form = InboundRequest {
        method: "POST".into(),
        headers: vec![("content-type".into(), "application/x-www-form-urlencoded".into())],
        body: b"action=point_add&customer=c-7&data%5Bpoints%5D=15&data[reason]=a+purchase&id=77".to_vec(),
        authenticated: true,
        received_at_ms: NOW_MS,
        ..InboundRequest::default()
    };
    let received = receive(&mut FakeHost::new(), &connection(), &form).unwrap();
    let event = &received.events[0];
    assert_eq!(event.identity("customer_id"), Some("c-7"));
    assert_eq!(Value::Object(event.attributes.clone()), json!({"points": "15", "reason": "a purchase"}));
    assert_eq!(event.message_id.as_deref(), Some("77"));

    for (body, pointer) in [
        ("not json", ""),
        ("42", ""),
        (r#"{"customer": "c-1"}"#, "/action"),
        (r#"[{"action": "point_add", "customer": []}]"#, "/0/customer"),
        (r#"{"events": [{"action": "x", "data": 5}]}"#, "/events/0/data"),
        (r#"[]"#, ""),
    ] {
        let request = InboundRequest { body: body.as_bytes().to_vec(), headers: vec![], ..form.clone() };
        let error = receive(&mut FakeHost::new(), &connection(), &request).unwrap_err();
        let Error::InvalidInput(errors) = error else { panic!("{body}: {error:?}") };
        assert_eq!(errors[0].pointer, pointer, "{body}");
    }
    let probe = InboundRequest { body: Vec::new(), ..form.clone() };
    assert!(receive(&mut FakeHost::new(), &connection(), &probe).unwrap().events.is_empty(), "a delivery test");
    let get = InboundRequest { method: "GET".into(), ..form };
    assert!(matches!(receive(&mut FakeHost::new(), &connection(), &get), Err(Error::InvalidInput(_))));
}
