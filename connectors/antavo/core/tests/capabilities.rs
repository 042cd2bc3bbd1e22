//! The connector against a scripted host: signed requests, outputs, error mapping, retries and duplicates,
//! batching into /events/bulk, customers, async events and their token, and the connection check. No network.

mod common;

use antavo_core::escher::{Profile, Request, Verifier};
use antavo_core::http::host_of;
use antavo_core::{Error, HttpRequest, TransportError, check};
use common::*;
use serde_json::{Value, json};

/// The request is signed as Antavo checks it: Escher, `ANTAVO-HMAC-SHA256`, scope `st2/api/antavo_request`,
/// `date;host`, at the host's time, over the exact body.
fn assert_signed(request: &HttpRequest) {
    let (path, query, host) = host_of(&request.url).unwrap();
    let mut headers = request.headers.clone();
    headers.push(("host".into(), host));
    assert_eq!(request.header("date"), Some("20240115T103000Z"));
    let auth = request.header("authorization").unwrap();
    assert!(
        auth.starts_with("ANTAVO-HMAC-SHA256 Credential=test_key/20240115/st2/api/antavo_request, SignedHeaders=date;host, Signature="),
        "{auth}"
    );
    let profile = Profile::antavo();
    let verifier = Verifier { profile: &profile, scope: "st2/api/antavo_request", clock_skew_seconds: 300 };
    let signed = Request {
        method: request.method.as_str(),
        path,
        query,
        headers: &headers,
        body: request.body.as_deref().unwrap_or_default(),
    };
    assert_eq!(
        verifier.verify(&signed, NOW_MS / 1000, |k| (k == API_KEY).then(|| API_SECRET.to_string())),
        Ok(API_KEY.to_string())
    );
}

fn point_add(customer: &str, points: i64) -> Value {
    wrap(json!({"customer": customer, "action": "point_add", "data": {"points": points}}))
}

// ---- sendEvent and the event capabilities ----

#[test]
fn send_event_posts_a_signed_event_and_returns_the_customer() {
    let mut host = FakeHost::new().answer_json(200, customer_answer("c-1", 10));
    let output = invoke(&mut host, "sendEvent", point_add("c-1", 10)).unwrap();
    assert_eq!(host.urls(), [format!("POST {BASE}/events")]);
    assert_eq!(host.body(0), json!({"customer": "c-1", "action": "point_add", "data": {"points": 10}}));
    assert_eq!(host.requests[0].header("content-type"), Some("application/json"));
    assert_signed(&host.requests[0]);
    assert_eq!(output["status"], 200);
    assert_eq!(output["endpoint"], "events");
    assert_eq!(output["customer"]["spendable"], 10);
    assert_eq!(output["events"][0]["action"], "point_add");
    assert!(output["customer"].get("events").is_none(), "events are lifted out of the customer");
    assert_eq!(output["duplicate"], false);
    assert!(!host.everything().contains(API_SECRET), "the secret leaves only as a signature");
}

#[test]
fn points_given_as_text_are_sent_as_integers_and_bad_points_are_refused_before_any_call() {
    let mut host = FakeHost::new().answer_json(200, customer_answer("c-1", 150));
    invoke(&mut host, "sendEvent", wrap(json!({"customer": "c-1", "action": "point_add", "data": {"points": "150"}})))
        .unwrap();
    assert_eq!(host.body(0)["data"]["points"], 150);
    let mut host = FakeHost::new();
    for (data, pointer) in [
        (json!({"points": "many"}), "/properties/data/points"),
        (json!({"points": 1.5}), "/properties/data/points"),
        (json!({}), "/properties/data/points"),
    ] {
        let input = wrap(json!({"customer": "c-1", "action": "point_add", "data": data}));
        let Err(Error::InvalidInput(errors)) = invoke(&mut host, "sendEvent", input) else { panic!() };
        assert_eq!(errors[0].pointer, pointer);
    }
    let checkout = wrap(json!({"customer": "c-1", "action": "checkout", "data": {"total": 3}}));
    let Err(Error::InvalidInput(errors)) = invoke(&mut host, "sendEvent", checkout) else { panic!() };
    assert_eq!(errors[0].pointer, "/properties/data/transaction_id");
    let Err(Error::InvalidInput(errors)) = invoke(&mut host, "sendEvent", wrap(json!({"action": "x"}))) else {
        panic!()
    };
    assert_eq!(errors[0].pointer, "/properties/customer");
    assert!(host.requests.is_empty());
}

#[test]
fn the_profile_capabilities_send_opt_in_profile_and_opt_out() {
    let mut host = FakeHost::new()
        .answer_json(200, customer_answer("c-9", 0))
        .answer_json(200, customer_answer("c-9", 0))
        .answer_json(200, customer_answer("c-9", 0));
    let attributes = json!({"email": "ada@example.com", "first_name": "Ada", "tier_code": "gold"});
    invoke(&mut host, "optIn", wrap(json!({"customer": "c-9", "attributes": attributes}))).unwrap();
    invoke(&mut host, "updateProfile", wrap(json!({"customer": "c-9", "attributes": {"last_name": "King"}}))).unwrap();
    invoke(&mut host, "optOut", wrap(json!({"customer": "c-9", "externalId": "email"}))).unwrap();
    assert_eq!(host.body(0), json!({"customer": "c-9", "action": "opt_in", "data": attributes}));
    assert_eq!(host.body(1), json!({"customer": "c-9", "action": "profile", "data": {"last_name": "King"}}));
    assert_eq!(host.body(2), json!({"customer": "c-9", "action": "opt_out", "data": {}, "external_id": "email"}));
    let Err(Error::InvalidInput(errors)) =
        invoke(&mut host, "updateProfile", wrap(json!({"customer": "c-9", "attributes": {}})))
    else {
        panic!()
    };
    assert_eq!(errors[0].pointer, "/properties/attributes");
}

#[test]
fn antavo_answers_map_to_error_kinds() {
    let cases: Vec<(u16, Value, &str)> = vec![
        (404, antavo_error("NotFoundException", 160_212, "Customer not found"), "not-found"),
        (
            429,
            json!({"error": {"type": "TooManyRequestsException", "code": 0, "message": "Too Many Requests"}}),
            "rate-limited",
        ),
        (503, json!({}), "transient"),
        (500, json!({}), "transient"),
        (401, antavo_error("UnauthorizedException", 101_021, "Auth header format is invalid"), "unauthorized"),
        (400, antavo_error("BadRequestException", 10_001, "Action \"x\" cannot be repeated"), "permanent"),
    ];
    for (status, body, kind) in cases {
        let mut host = FakeHost::new().answer_json(status, body);
        let error = invoke(&mut host, "sendEvent", point_add("c-404", 1)).unwrap_err();
        let actual = match &error {
            Error::NotFound(_) => "not-found",
            Error::RateLimited { .. } => "rate-limited",
            Error::Transient(_) => "transient",
            Error::Unauthorized(_) => "unauthorized",
            Error::Permanent { .. } => "permanent",
            other => panic!("{other:?}"),
        };
        assert_eq!(actual, kind, "HTTP {status}: {error:?}");
        assert_eq!(error.is_retryable(), matches!(kind, "rate-limited" | "transient"), "{status}");
        if let Error::Unauthorized(message) = error {
            assert!(message.contains("apiKey") && message.contains("apiSecret"), "{message}");
        }
    }
}

#[test]
fn an_unknown_outcome_is_retried_only_for_events_antavo_refuses_to_repeat() {
    // point_add: a re-send would record the points twice.
    let mut host = FakeHost::new().fail(TransportError::Timeout("30 s".into()));
    let Err(Error::Permanent { message, .. }) = invoke(&mut host, "sendEvent", point_add("c-1", 5)) else { panic!() };
    assert!(message.contains("may or may not have recorded it"), "{message}");
    let mut host = FakeHost::new().answer(504, "");
    assert!(matches!(invoke(&mut host, "sendEvent", point_add("c-1", 5)), Err(Error::Permanent { .. })));
    // Nothing was sent when the connection could not be made.
    let mut host = FakeHost::new().fail(TransportError::ConnectFailed("refused".into()));
    assert!(matches!(invoke(&mut host, "sendEvent", point_add("c-1", 5)), Err(Error::Transient(_))));

    // A checkout with a transaction id: Antavo refuses a repeat, so it is retried, and a retry that Antavo
    // refuses as a repeat succeeds as a duplicate.
    let checkout =
        || wrap(json!({"customer": "c-1", "action": "checkout", "data": {"transaction_id": "tx-1", "total": 9}}));
    let mut host = FakeHost::new().fail(TransportError::Timeout("30 s".into()));
    assert!(matches!(invoke(&mut host, "sendEvent", checkout()), Err(Error::Transient(_))));
    let used = antavo_error("BadRequestException", 5003, "The transaction ID has already been used");
    let mut host = FakeHost::new().answer_json(400, used.clone());
    let output = invoke_at(&mut host, "sendEvent", checkout(), 2).unwrap();
    assert_eq!((output["duplicate"].clone(), output["customer"].clone()), (json!(true), Value::Null));
    // On a first attempt the same refusal is the caller's mistake.
    let mut host = FakeHost::new().answer_json(400, used);
    assert!(matches!(invoke_at(&mut host, "sendEvent", checkout(), 1), Err(Error::Permanent { .. })));
    // opt_in likewise.
    let opted = antavo_error("BadRequestException", 112_101, "Customer has already been opted-in.");
    let mut host = FakeHost::new().answer_json(400, opted);
    let output = invoke_at(&mut host, "optIn", wrap(json!({"customer": "c-1", "attributes": {}})), 3).unwrap();
    assert_eq!(output["duplicate"], true);
}

#[test]
fn missing_credentials_are_named_before_any_call() {
    let mut host = FakeHost::new();
    for (connection, needle) in [
        (json!({"environment": "st2", "apiKey": "k"}), "apiSecret"),
        (json!({"environment": "st2"}), "apiKey and apiSecret"),
        (json!({"apiKey": "k", "apiSecret": "s"}), "environment"),
    ] {
        let error =
            antavo_core::invoke(&mut host, "sendEvent", &connection, &point_add("c", 1), &context(1)).unwrap_err();
        let Error::InvalidConfig(message) = error else { panic!("{error:?}") };
        assert!(message.contains(needle), "{message}");
    }
    let only_keys = json!({"environment": "st2", "apiKey": "k", "apiSecret": "s"});
    let input = wrap(json!({"customer": "c", "action": "point_add", "data": {"points": 1}}));
    let Err(Error::InvalidConfig(message)) =
        antavo_core::invoke(&mut host, "sendAsyncEvent", &only_keys, &input, &context(1))
    else {
        panic!()
    };
    assert!(message.contains("clientId and clientSecret"), "{message}");
    assert!(host.requests.is_empty());
}

// ---- batching ----

#[test]
fn concurrent_calls_share_one_bulk_request_and_each_gets_its_own_result() {
    let answer = json!({"results": [
        {"events": [{"id": "e1", "action": "point_add", "points": 10}]},
        {"error": {"type": "NotFoundException", "code": 160212, "message": "Customer not found"}},
        {"events": []},
    ], "total": 3, "errors": 1});
    let mut host = FakeHost::new().answer_json(200, answer);
    let items = vec![
        (point_add("c-1", 10), context(1)),
        (point_add("nobody", 5), context(1)),
        (wrap(json!({"customer": "c-1", "action": "point_add", "data": {"points": "x"}})), context(1)),
        (point_add("c-2", 7), context(1)),
    ];
    let results = antavo_core::invoke_batch(&mut host, "sendEvent", &connection(), &items);
    assert_eq!(host.urls(), [format!("POST {BASE}/events/bulk")]);
    assert_signed(&host.requests[0]);
    let body = host.body(0);
    let sent: Vec<&str> = body["events"].as_array().unwrap().iter().map(|e| e["customer"].as_str().unwrap()).collect();
    assert_eq!(sent, ["c-1", "nobody", "c-2"], "the invalid item is not sent");
    let output: Value = serde_json::from_str(results[0].as_ref().unwrap()).unwrap();
    assert_eq!((output["endpoint"].as_str(), output["events"][0]["points"].as_i64()), (Some("events/bulk"), Some(10)));
    assert!(matches!(results[1], Err(Error::NotFound(_))), "{:?}", results[1]);
    assert!(matches!(results[2], Err(Error::InvalidInput(_))));
    assert!(results[3].is_ok());
}

#[test]
fn a_refused_bulk_request_fails_each_call_as_its_event_allows() {
    let mut host = FakeHost::new().answer(429, "");
    let items = vec![(point_add("c-1", 1), context(1)), (point_add("c-2", 2), context(1))];
    let results = antavo_core::invoke_batch(&mut host, "sendEvent", &connection(), &items);
    assert!(results.iter().all(|r| matches!(r, Err(Error::RateLimited { .. }))));

    let mut host = FakeHost::new().fail(TransportError::Timeout("t".into()));
    let checkout = wrap(json!({"customer": "c-3", "action": "checkout", "data": {"transaction_id": "t-1"}}));
    let items = vec![(point_add("c-1", 1), context(1)), (checkout, context(1))];
    let results = antavo_core::invoke_batch(&mut host, "sendEvent", &connection(), &items);
    assert!(matches!(results[0], Err(Error::Permanent { .. })), "point_add may have been recorded");
    assert!(matches!(results[1], Err(Error::Transient(_))), "a checkout's repeat is refused: retry it");
}

#[test]
fn one_call_alone_goes_to_events() {
    let mut host = FakeHost::new().answer_json(200, customer_answer("c-1", 1));
    let results =
        antavo_core::invoke_batch(&mut host, "sendEvent", &connection(), &[(point_add("c-1", 1), context(1))]);
    assert!(results[0].is_ok());
    assert_eq!(host.urls(), [format!("POST {BASE}/events")]);
}

#[test]
fn send_events_splits_at_fifty_and_reports_refused_events() {
    let events: Vec<Value> =
        (0..120).map(|i| json!({"customer": format!("c-{i}"), "action": "point_add", "data": {"points": i}})).collect();
    let ok = |n: usize, refused: Option<usize>| {
        let results: Vec<Value> = (0..n)
            .map(|i| {
                if Some(i) == refused {
                    json!({"error": {"type": "NotFoundException", "code": 160212, "message": "Customer not found"}})
                } else {
                    json!({"events": []})
                }
            })
            .collect();
        json!({"results": results, "total": n, "errors": refused.map_or(0, |_| 1)})
    };
    let mut host =
        FakeHost::new().answer_json(200, ok(50, Some(3))).answer_json(200, ok(50, None)).answer_json(200, ok(20, None));
    let output = invoke(&mut host, "sendEvents", wrap(json!({"events": events.clone()}))).unwrap();
    assert_eq!(host.requests.len(), 3);
    assert_eq!(host.body(1)["events"][0]["customer"], "c-50");
    assert_eq!(
        (output["total"].as_u64(), output["recorded"].as_u64(), output["errors"].as_u64()),
        (Some(120), Some(119), Some(1))
    );
    assert_eq!(output["results"][3]["error"]["code"], 160212);
    assert_eq!(output["results"][119]["index"], 119);

    // The second request fails: the first 50 were recorded, so the call is not retried.
    let mut host = FakeHost::new().answer_json(200, ok(50, None)).answer(503, "");
    let Err(Error::Permanent { message, .. }) =
        invoke(&mut host, "sendEvents", wrap(json!({"events": events.clone()})))
    else {
        panic!()
    };
    assert!(message.contains("events 0 to 49 were sent") && message.contains("send events 50"), "{message}");
    // The first request fails: nothing was recorded, the kind stands.
    let mut host = FakeHost::new().answer(503, "");
    assert!(matches!(invoke(&mut host, "sendEvents", wrap(json!({"events": events}))), Err(Error::Transient(_))));
}

// ---- customers ----

#[test]
fn get_customer_by_id_and_by_external_id() {
    let customer = json!({"id": "c-1", "email": "ada@example.com", "spendable": 40, "properties": {"tier": "gold"}});
    let mut host = FakeHost::new().answer_json(200, customer.clone()).answer_json(200, customer.clone());
    let output =
        invoke(&mut host, "getCustomer", wrap(json!({"customerId": "c 1/x", "fields": ["groups", "purchases.ytd"]})))
            .unwrap();
    assert_eq!(output, customer);
    invoke(&mut host, "getCustomer", wrap(json!({"customerId": "ada@example.com", "externalIdField": "email"})))
        .unwrap();
    assert_eq!(
        host.urls(),
        [
            format!("GET {BASE}/customers/c%201%2Fx?fields=groups%2Cpurchases.ytd"),
            format!("GET {BASE}/customers/%7Bemail%3Aada%40example.com%7D"),
        ]
    );
    host.requests.iter().for_each(assert_signed);
    let mut host = FakeHost::new().answer_json(404, antavo_error("NotFoundException", 160_212, "Customer not found"));
    assert!(matches!(invoke(&mut host, "getCustomer", wrap(json!({"customerId": "nobody"}))), Err(Error::NotFound(_))));
}

#[test]
fn changed_customers_are_listed_a_page_at_a_time() {
    let page = json!({"data": [{"id": "c-1"}, {"id": "c-2"}], "next": "/customers?updated_at.gt=x&offset=2"});
    let mut host = FakeHost::new().answer_json(200, page).answer_json(200, json!(["c-3"]));
    let output =
        invoke(&mut host, "listChangedCustomers", wrap(json!({"since": "2024-01-15T11:30:00+01:00", "limit": 2})))
            .unwrap();
    assert_eq!(host.urls()[0], format!("GET {BASE}/customers?updated_at.gt=2024-01-15T10%3A30%3A00Z&limit=2&offset=0"));
    assert_signed(&host.requests[0]);
    assert_eq!(output["customerIds"], json!(["c-1", "c-2"]));
    assert_eq!(output["nextOffset"], 2);
    let last = invoke(&mut host, "listChangedCustomers", wrap(json!({"since": 1_705_314_600, "offset": 2}))).unwrap();
    assert_eq!((last["customerIds"].clone(), last["nextOffset"].clone()), (json!(["c-3"]), Value::Null));
    let Err(Error::InvalidInput(errors)) =
        invoke(&mut host, "listChangedCustomers", wrap(json!({"since": "last week"})))
    else {
        panic!()
    };
    assert_eq!(errors[0].pointer, "/properties/since");
}

// ---- async events ----

#[test]
fn async_events_mint_a_token_once_and_poll_the_result() {
    let queued =
        json!({"status": "success", "metadata": {}, "payload": {"correlation_id": "62cc31", "status": "queued"}});
    let processed = json!({"status": "success", "metadata": [], "payload": {"status": "processed",
                           "response": {"success": {"id": "c-1", "score": 110}, "error": []}}});
    let mut host = FakeHost::new().token(TOKEN).answer_json(200, queued).answer_json(200, processed);
    let submitted = invoke(&mut host, "sendAsyncEvent", point_add("c-1", 10)).unwrap();
    assert_eq!(submitted, json!({"correlationId": "62cc31", "status": "queued"}));
    let status = invoke(&mut host, "getAsyncEventStatus", wrap(json!({"correlationId": "62cc31"}))).unwrap();
    assert_eq!(status["status"], "processed");
    assert_eq!(status["done"], true);
    assert_eq!(status["success"]["score"], 110);
    assert_eq!(status["error"], Value::Null);
    assert_eq!(
        host.urls(),
        [
            format!("POST {BASE}/v1/auth/token"),
            format!("POST {BASE}/v1/async/events"),
            format!("GET {BASE}/v1/async/events/62cc31"),
        ]
    );
    let token_request = &host.requests[0];
    assert_eq!(token_request.header("content-type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(token_request.body.as_deref(), Some(&b"grant_type=client_credentials&scope=loyalty.async_events"[..]));
    assert!(token_request.header("authorization").unwrap().starts_with("Basic "));
    assert_eq!(host.requests[1].header("authorization"), Some(format!("Bearer {TOKEN}").as_str()));
    assert_eq!(host.cache["antavo-oauth-token"], (TOKEN.to_string(), 3540));
    assert_eq!(host.body(1), json!({"customer": "c-1", "action": "point_add", "data": {"points": 10}}));
    let logs: String = host.logs.iter().map(|(_, m)| m.as_str()).collect();
    assert!(!logs.contains(TOKEN) && !logs.contains(CLIENT_SECRET), "{logs}");
}

#[test]
fn a_refused_cached_token_is_replaced_once() {
    let refused = json!({"error": {"type": "UnauthorizedException", "code": 220052, "message": "Bearer token authentication failed"}});
    let queued = json!({"payload": {"correlation_id": "c9", "status": "queued"}});
    let mut host = FakeHost::new().answer_json(401, refused.clone()).token("fresh-token").answer_json(200, queued);
    host.cache.insert("antavo-oauth-token".into(), ("stale-token".into(), 100));
    invoke(&mut host, "sendAsyncEvent", point_add("c-1", 1)).unwrap();
    assert_eq!(host.deleted, ["antavo-oauth-token"]);
    assert_eq!(host.requests[2].header("authorization"), Some("Bearer fresh-token"));

    let mut host = FakeHost::new().token("t1").answer_json(401, refused);
    let Err(Error::Unauthorized(message)) = invoke(&mut host, "sendAsyncEvent", point_add("c-1", 1)) else { panic!() };
    assert!(message.contains("loyalty.async_events"), "{message}");
    let unknown = json!({"status": "error", "error": {"type": "BadRequestException", "code": 203408, "message": "Correlation ID not found."}});
    let mut host = FakeHost::new().token("t2").answer_json(400, unknown);
    assert!(matches!(
        invoke(&mut host, "getAsyncEventStatus", wrap(json!({"correlationId": "nope"}))),
        Err(Error::NotFound(_))
    ));
    let bad_client = json!({"status": "error", "error": "invalid_client", "details": {"type": "UnauthorizedException", "code": 220010, "message": "Client authentication failed"}});
    let mut host = FakeHost::new().answer_json(401, bad_client);
    let Err(Error::Unauthorized(message)) = invoke(&mut host, "sendAsyncEvent", point_add("c-1", 1)) else { panic!() };
    assert!(message.contains("clientId/clientSecret") && !message.contains(CLIENT_SECRET), "{message}");
}

#[test]
fn async_events_take_only_their_actions() {
    let mut host = FakeHost::new();
    let input = wrap(json!({"customer": "c-1", "action": "coupon_redeem"}));
    let Err(Error::InvalidInput(errors)) = invoke(&mut host, "sendAsyncEvent", input) else { panic!() };
    assert_eq!(errors[0].pointer, "/properties/action");
}

// ---- check ----

#[test]
fn check_signs_a_read_and_mints_a_token() {
    let mut host = FakeHost::new().answer_json(200, json!({"active": 3})).token(TOKEN);
    check(&mut host, &connection()).unwrap();
    assert_eq!(host.urls(), [format!("GET {BASE}/customers/-/count"), format!("POST {BASE}/v1/auth/token")]);
    assert_signed(&host.requests[0]);

    let mut host = FakeHost::new()
        .answer_json(401, antavo_error("UnauthorizedException", 101_021, "Auth header format is invalid"));
    let Err(Error::Unauthorized(message)) = check(&mut host, &connection()) else { panic!() };
    assert!(message.contains("apiSecret") && message.contains("environment"), "{message}");

    let Err(Error::InvalidConfig(message)) = check(&mut FakeHost::new(), &json!({"environment": "st2"})) else {
        panic!()
    };
    assert!(message.contains("apiKey and apiSecret") && message.contains("clientId and clientSecret"), "{message}");
}
