//! The connector against a scripted host: credentials, token caching, requests, status mapping,
//! idempotency and outputs. No network.

mod common;

use common::*;
use mparticle_core::{Error, Level, Method, TransportError, check};
use serde_json::{Value, json};

fn account_envelope(id: u64, name: &str) -> String {
    json!({"data": [{"name": name, "last_modified_on": "2014-11-14T22:46:38.673", "data_type": "account", "id": id,
                     "created_on": "2013-07-23T18:49:38.547"}], "dataType": "account", "errors": null})
    .to_string()
}

fn get_account(host: &mut FakeHost) -> Result<Value, Error> {
    invoke(host, "getAccount", &connection(), &wrap(json!({"accountId": "1"})), &context("k1", 1))
}

// ---- check ----

#[test]
fn check_mints_and_caches_a_token_and_probes_the_events_api() {
    let mut host = FakeHost::new().token(TOKEN).answer(202, "");
    check(&mut host, &connection()).unwrap();
    assert_eq!(host.urls(), [format!("POST {BASE}/oauth/token"), format!("POST {BASE}/v2/events")]);
    assert_eq!(
        host.body(0),
        json!({"client_id": "client-id", "client_secret": CLIENT_SECRET, "audience": "https://api.mparticle.com",
               "grant_type": "client_credentials"})
    );
    assert_eq!(host.requests[0].header("content-type"), Some("application/json"));
    assert_eq!(host.cache["oauth-token"], (TOKEN.to_string(), 28_800 - 300));
    // The probe records nothing: no identities, no attributes, no events, development environment.
    let probe = host.body(1);
    assert_eq!(probe["environment"], "development");
    assert_eq!(probe["events"], json!([]));
    assert!(probe.get("user_identities").is_none() && probe.get("user_attributes").is_none());
    assert_eq!(host.requests[1].header("authorization"), Some("Basic YXBpLWtleTphcGktc2VjcmV0LWRvLW5vdC1sZWFr"));
    assert!(!host.log_text().contains(CLIENT_SECRET) && !host.log_text().contains(TOKEN));
}

#[test]
fn check_uses_only_the_pair_it_has() {
    let mut only_oauth = connection();
    only_oauth.as_object_mut().unwrap().retain(|k, _| k != "apiKey" && k != "apiSecret");
    let mut host = FakeHost::new().token(TOKEN);
    check(&mut host, &only_oauth).unwrap();
    assert_eq!(host.requests.len(), 1);

    let mut only_events = connection();
    only_events.as_object_mut().unwrap().retain(|k, _| k != "clientId" && k != "clientSecret");
    let mut host = FakeHost::new().answer(202, "");
    check(&mut host, &only_events).unwrap();
    assert_eq!(host.urls(), [format!("POST {BASE}/v2/events")]);
}

#[test]
fn check_without_credentials_is_invalid_config_naming_them() {
    let mut host = FakeHost::new();
    let Err(Error::InvalidConfig(message)) = check(&mut host, &json!({"pod": "EU1"})) else { panic!() };
    for name in ["clientId", "clientSecret", "apiKey", "apiSecret"] {
        assert!(message.contains(name), "{message}");
    }
    let Err(Error::InvalidConfig(message)) = check(&mut host, &json!({"clientId": "x", "apiSecret": "y"})) else {
        panic!()
    };
    assert!(message.contains("clientSecret") && message.contains("apiKey"), "{message}");
    assert!(host.requests.is_empty());
}

#[test]
fn check_reports_refused_credentials_without_leaking_them() {
    let mut host = FakeHost::new()
        .answer(401, &json!({"error": "access_denied", "error_description": "Unauthorized"}).to_string());
    let error = check(&mut host, &connection()).unwrap_err();
    let Error::Unauthorized(message) = &error else { panic!("{error:?}") };
    assert!(message.contains("clientId/clientSecret") && message.contains("Unauthorized"), "{message}");
    assert!(!format!("{error:?}").contains(CLIENT_SECRET));
    assert!(host.cache.is_empty());

    let mut host = FakeHost::new().token(TOKEN).answer(403, "");
    let Err(Error::Unauthorized(message)) = check(&mut host, &connection()) else { panic!() };
    assert!(message.contains("apiKey/apiSecret"), "{message}");
}

#[test]
fn a_token_endpoint_that_is_not_there_is_a_config_problem() {
    let mut host = FakeHost::new().answer(404, "");
    let Err(Error::InvalidConfig(message)) = check(&mut host, &connection()) else { panic!() };
    assert!(message.contains("authUrl"), "{message}");
    let mut host = FakeHost::new().answer(200, r#"{"token_type":"Bearer"}"#);
    assert!(matches!(check(&mut host, &connection()), Err(Error::Permanent { .. })));
    let mut host = FakeHost::new().answer(503, "");
    assert!(matches!(check(&mut host, &connection()), Err(Error::Transient(_))));
}

// ---- OAuth token caching ----

#[test]
fn the_token_is_minted_once_and_reused() {
    let mut host =
        FakeHost::new().token(TOKEN).answer(200, &account_envelope(1, "A")).answer(200, &account_envelope(1, "A"));
    get_account(&mut host).unwrap();
    get_account(&mut host).unwrap();
    assert_eq!(
        host.urls(),
        [
            format!("POST {BASE}/oauth/token"),
            format!("GET {BASE}/v1/accounts/1?accountId=1"),
            format!("GET {BASE}/v1/accounts/1?accountId=1"),
        ]
    );
    for request in &host.requests[1..] {
        assert_eq!(request.header("authorization"), Some(format!("Bearer {TOKEN}").as_str()));
    }
}

#[test]
fn the_cache_ttl_keeps_a_safety_margin() {
    use mparticle_core::oauth::cache_ttl;
    assert_eq!(cache_ttl(28_800), 28_500);
    assert_eq!(cache_ttl(3600), 3300);
    assert_eq!(cache_ttl(400), 200);
    assert_eq!(cache_ttl(1), 0);
    let mut host = FakeHost::new().answer(200, r#"{"access_token":"short","expires_in":1}"#).answer(202, "");
    check(&mut host, &connection()).unwrap();
    assert!(host.cache.is_empty(), "a token about to expire is not cached");
    let mut host = FakeHost::new().answer(200, r#"{"access_token":"t"}"#).answer(202, "");
    check(&mut host, &connection()).unwrap();
    assert_eq!(host.cache["oauth-token"].1, 28_500, "8 hours when expires_in is absent");
}

#[test]
fn a_refused_cached_token_is_replaced_and_the_request_retried_once() {
    let mut host = FakeHost::new()
        .with_cached_token("stale")
        .answer(401, r#"{"errors":[{"message":"expired"}]}"#)
        .token("fresh")
        .answer(200, &account_envelope(1, "My Account"));
    let account = get_account(&mut host).unwrap();
    assert_eq!(account["name"], "My Account");
    assert_eq!(host.requests.len(), 3);
    assert_eq!(host.requests[0].header("authorization"), Some("Bearer stale"));
    assert_eq!(host.requests[1].url, format!("{BASE}/oauth/token"));
    assert_eq!(host.requests[2].header("authorization"), Some("Bearer fresh"));
    assert_eq!(host.deleted, ["oauth-token"]);
    assert_eq!(host.cache["oauth-token"].0, "fresh");
    assert!(host.logs.iter().any(|(l, m)| *l == Level::Warn && m.contains("retrying once")));
}

#[test]
fn a_refresh_happens_at_most_once() {
    let mut host = FakeHost::new().with_cached_token("stale").answer(401, "").token("fresh").answer(401, "");
    assert!(matches!(get_account(&mut host), Err(Error::Unauthorized(_))));
    assert_eq!(host.requests.len(), 3);
    assert!(!host.cache.contains_key("oauth-token"), "a refused token is not kept");

    // A freshly minted token that is refused is not minted again.
    let mut host = FakeHost::new().token("fresh").answer(401, "");
    assert!(matches!(get_account(&mut host), Err(Error::Unauthorized(_))));
    assert_eq!(host.requests.len(), 2);

    // 403 is a permission problem, not an expired token: no refresh.
    let mut host = FakeHost::new().with_cached_token("cached").answer(403, "");
    assert!(matches!(get_account(&mut host), Err(Error::Unauthorized(_))));
    assert_eq!(host.requests.len(), 1);
}

// ---- Platform API capabilities ----

#[test]
fn account_capabilities_send_the_documented_requests() {
    let mut host = FakeHost::new().with_cached_token(TOKEN).answer(201, &account_envelope(7, "Firstname Lastname"));
    let created = invoke(
        &mut host,
        "createAccount",
        &connection(),
        &wrap(json!({"displayName": "Firstname Lastname"})),
        &context("k", 1),
    )
    .unwrap();
    assert_eq!(created["id"], 7);
    assert_eq!(host.urls(), [format!("POST {BASE}/v1/accounts")]);
    assert_eq!(host.body(0), json!({"name": "Firstname Lastname"}));

    let mut host = FakeHost::new().with_cached_token(TOKEN).answer(202, "");
    let updated = invoke(
        &mut host,
        "updateAccount",
        &connection(),
        &wrap(json!({"accountId": "1", "updatedName": "New"})),
        &context("k", 1),
    )
    .unwrap();
    assert_eq!(updated, json!({"id": "1", "name": "New"}));
    assert_eq!(host.urls(), [format!("PUT {BASE}/v1/accounts/1?accountId=1")]);
    assert_eq!(host.body(0), json!({"name": "New"}));

    let mut host = FakeHost::new().with_cached_token(TOKEN).answer(202, "");
    let deleted =
        invoke(&mut host, "deleteAccount", &connection(), &wrap(json!({"accountId": "1"})), &context("k", 1)).unwrap();
    assert_eq!(deleted, json!({"accountId": "1", "deleted": true, "status": 202}));
    assert_eq!(host.urls(), [format!("DELETE {BASE}/v1/accounts?accountId=1")]);
    assert_eq!(host.requests[0].body, None);
}

#[test]
fn get_account_returns_the_account_or_not_found() {
    let mut host = FakeHost::new().with_cached_token(TOKEN).answer(200, &account_envelope(1, "My Account"));
    let account = get_account(&mut host).unwrap();
    assert_eq!(account["name"], "My Account");
    assert_eq!(account["data_type"], "account");
    let mut host =
        FakeHost::new().with_cached_token(TOKEN).answer(200, r#"{"data":[],"dataType":"account","errors":null}"#);
    assert!(matches!(get_account(&mut host), Err(Error::NotFound(_))));
    let mut host = FakeHost::new().with_cached_token(TOKEN).answer(404, "");
    assert!(matches!(get_account(&mut host), Err(Error::NotFound(_))));
    let mut host = FakeHost::new().with_cached_token(TOKEN).answer(200, "not json");
    assert!(matches!(get_account(&mut host), Err(Error::Permanent { status: Some(200), .. })));
}

#[test]
fn audiences_and_calculated_attributes_come_as_lists() {
    let audience =
        json!({"name": "Abandoned Cart", "size": 342, "status": "active", "data_type": "audience", "id": 7622});
    let mut host = FakeHost::new().with_cached_token(TOKEN).answer(200, &json!([audience]).to_string());
    let out =
        invoke(&mut host, "getAudiences", &connection(), &wrap(json!({"accountId": "1"})), &context("k", 1)).unwrap();
    assert_eq!(out, json!({"audiences": [audience]}));
    assert_eq!(host.urls(), [format!("GET {BASE}/v1/audiences?accountId=1")]);

    let mut host = FakeHost::new()
        .with_cached_token(TOKEN)
        .answer(200, &json!({"data": [audience], "dataType": "audience", "errors": null}).to_string());
    let out =
        invoke(&mut host, "getAudiences", &connection(), &wrap(json!({"accountId": "1"})), &context("k", 1)).unwrap();
    assert_eq!(out["audiences"][0]["id"], 7622);

    let attributes = json!([
        {"id": 5, "name": "ca1", "active_definition": {"recipe_type": "event", "datapoint": {"event_name": "Purchase"}}},
        {"id": 6, "name": "ca2", "active_definition": {"recipe_type": "event", "data_point": {"event_name": "Checkout"}},
         "draft_definition": {"data_point": {"event_name": "Draft"}}},
    ]);
    let mut host = FakeHost::new().with_cached_token(TOKEN).answer(200, &attributes.to_string());
    let input = wrap(json!({"workspace": "1234", "nameOptional": "Firstname Lastname"}));
    let out = invoke(&mut host, "getCalculatedAttributes", &connection(), &input, &context("k", 1)).unwrap();
    assert_eq!(
        host.urls(),
        [format!("GET {BASE}/platform/v2/workspaces/1234/calculatedattributes?name=Firstname%20Lastname")]
    );
    let list = out["calculatedAttributes"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["active_definition"]["datapoint"]["event_name"], "Purchase");
    assert_eq!(list[1]["active_definition"]["datapoint"]["event_name"], "Checkout");
    assert_eq!(list[1]["draft_definition"]["datapoint"]["event_name"], "Draft");
}

#[test]
fn an_envelope_with_errors_and_no_data_fails() {
    let body = r#"{"data":null,"dataType":"account","errors":[{"code":"VALIDATION_ERROR","message":"Account name is not unique."}]}"#;
    let mut host = FakeHost::new().with_cached_token(TOKEN).answer(200, body);
    let input = wrap(json!({"accountId": "1", "updatedName": "Taken"}));
    let Err(Error::Permanent { message, .. }) =
        invoke(&mut host, "updateAccount", &connection(), &input, &context("k", 1))
    else {
        panic!()
    };
    assert!(message.contains("Account name is not unique."), "{message}");
}

// ---- status mapping, end to end ----

#[test]
fn statuses_map_to_error_kinds_for_both_apis() {
    let marketing = point_add();
    type Case = (u16, &'static [(&'static str, &'static str)], &'static str);
    let cases: Vec<Case> = vec![
        (429, &[("Retry-After", "30")], ""),
        (408, &[], ""),
        (500, &[], ""),
        (502, &[], ""),
        (503, &[], ""),
        (504, &[], ""),
        (401, &[], ""),
        (403, &[], ""),
        (404, &[], ""),
        (
            400,
            &[],
            r#"{"errors":[{"code":"BAD_REQUEST","message":"Required event field \"event_type\" is missing or empty."}]}"#,
        ),
        (
            422,
            &[],
            r#"{"errors":[{"code":"VALIDATION_ERROR","message":"All applications must be deleted before deleting account."}]}"#,
        ),
        (409, &[], "conflict"),
    ];
    for (status, headers, body) in cases {
        for capability in ["deleteAccount", "triggerMarketingCommunication"] {
            let input = if capability == "deleteAccount" { wrap(json!({"accountId": "1"})) } else { marketing.clone() };
            let mut host = FakeHost::new().with_cached_token(TOKEN).answer_with(status, headers, body);
            if status == 401 && capability == "deleteAccount" {
                // A 401 on the cached token is retried once with a new token.
                host = host.token("fresh").answer(401, body);
            }
            let error = invoke(&mut host, capability, &connection(), &input, &context("k", 1)).unwrap_err();
            match (status, &error) {
                (429, Error::RateLimited { retry_after_ms: Some(30_000), .. }) => {}
                (408 | 500..=599, Error::Transient(_)) => {}
                (401 | 403, Error::Unauthorized(_)) => {}
                (404, Error::NotFound(_)) => {}
                (400 | 409 | 422, Error::Permanent { status: Some(s), message, body: b }) if *s == status => {
                    assert_eq!(b, body);
                    if status != 409 {
                        assert!(message.contains("BAD_REQUEST") || message.contains("VALIDATION_ERROR"), "{message}");
                    }
                }
                _ => panic!("{capability} HTTP {status}: {error:?}"),
            }
            assert_eq!(error.is_retryable(), matches!(status, 408 | 429 | 500..=599), "{status}");
            let text = format!("{error:?}");
            assert!(!text.contains(API_SECRET) && !text.contains(TOKEN) && !text.contains(CLIENT_SECRET), "{text}");
        }
    }
}

#[test]
fn transport_failures_are_transient_except_refusals() {
    for (error, transient) in [
        (TransportError::Timeout("30s".into()), true),
        (TransportError::ConnectFailed("refused".into()), true),
        (TransportError::Other("reset".into()), true),
        (TransportError::Denied("not allowed".into()), false),
        (TransportError::InvalidRequest("bad url".into()), false),
        (TransportError::ResponseTooLarge("big".into()), false),
    ] {
        let mut host = FakeHost::new().fail(error.clone());
        let outcome = invoke(&mut host, "triggerMarketingCommunication", &connection(), &point_add(), &context("k", 1));
        assert_eq!(matches!(outcome, Err(Error::Transient(_))), transient, "{error:?}: {outcome:?}");
    }
}

#[test]
fn create_account_is_never_blindly_retried_after_a_timeout() {
    let input = wrap(json!({"displayName": "Firstname Lastname"}));
    for failure in [TransportError::Timeout("after 30000 ms".into()), TransportError::Other("connection reset".into())]
    {
        let mut host = FakeHost::new().with_cached_token(TOKEN).fail(failure);
        let error = invoke(&mut host, "createAccount", &connection(), &input, &context("k", 1)).unwrap_err();
        let Error::Permanent { status: None, message, .. } = &error else { panic!("{error:?}") };
        assert!(message.contains("may or may not have been created"), "{message}");
        assert!(message.contains("check with getAccount"), "{message}");
        assert!(!error.is_retryable());
        assert_eq!(host.requests.len(), 1, "not re-sent");
    }
    // A gateway timeout is just as ambiguous.
    let mut host = FakeHost::new().with_cached_token(TOKEN).answer(504, "");
    let Err(Error::Permanent { status: Some(504), message, .. }) =
        invoke(&mut host, "createAccount", &connection(), &input, &context("k", 1))
    else {
        panic!()
    };
    assert!(message.contains("may or may not have been created"), "{message}");
    // Nothing was sent when no connection could be made, so that stays retryable; so does minting the token.
    let mut host = FakeHost::new().with_cached_token(TOKEN).fail(TransportError::ConnectFailed("refused".into()));
    assert!(matches!(
        invoke(&mut host, "createAccount", &connection(), &input, &context("k", 1)),
        Err(Error::Transient(_))
    ));
    let mut host = FakeHost::new().fail(TransportError::Timeout("token".into()));
    assert!(matches!(
        invoke(&mut host, "createAccount", &connection(), &input, &context("k", 1)),
        Err(Error::Transient(_))
    ));
    // Other capabilities stay retryable on a timeout.
    let mut host = FakeHost::new().with_cached_token(TOKEN).fail(TransportError::Timeout("t".into()));
    assert!(matches!(get_account(&mut host), Err(Error::Transient(_))));
}

// ---- Events API capabilities ----

#[test]
fn a_marketing_event_is_one_custom_event_in_one_batch() {
    let mut host = FakeHost::new().answer(202, "");
    let out =
        invoke(&mut host, "triggerMarketingCommunication", &connection(), &point_add(), &context("node-run-7", 1))
            .unwrap();
    assert_eq!(host.urls(), [format!("POST {BASE}/v2/events")]);
    let request = &host.requests[0];
    assert_eq!(request.method, Method::Post);
    assert_eq!(request.header("authorization"), Some("Basic YXBpLWtleTphcGktc2VjcmV0LWRvLW5vdC1sZWFr"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    let batch = host.body(0);
    let id = batch["source_request_id"].as_str().unwrap().to_string();
    assert_eq!(
        batch,
        json!({
            "source_request_id": id,
            "environment": "development",
            "user_identities": {"customer_id": "member-42"},
            "events": [{"event_type": "custom_event", "data": {
                "event_name": "point_add",
                "custom_event_type": "transaction",
                "source_message_id": batch["events"][0]["data"]["source_message_id"],
                "custom_attributes": {"points": "100", "reason": "purchase", "double": "true", "ratio": "1.5"},
            }}],
        })
    );
    assert_eq!(
        out,
        json!({"status": 202, "sourceRequestId": id, "sourceRequestIds": [id], "batches": 1, "endpoint": "events"})
    );
}

#[test]
fn the_environment_comes_from_the_connection_and_defaults_to_production() {
    let mut production = connection();
    production.as_object_mut().unwrap().remove("environment");
    let mut host = FakeHost::new().answer(202, "");
    invoke(&mut host, "triggerMarketingCommunication", &production, &point_add(), &context("k", 1)).unwrap();
    assert_eq!(host.body(0)["environment"], "production");
}

#[test]
fn user_attributes_are_one_batch_without_events() {
    let mut host = FakeHost::new().answer(202, "");
    invoke(&mut host, "syncUserAttributes", &connection(), &profile_sync(), &context("k", 1)).unwrap();
    let batch = host.body(0);
    assert_eq!(batch["user_identities"], json!({"email": "ada@example.com"}));
    assert_eq!(
        batch["user_attributes"],
        json!({"$firstname": "Ada", "$zip": "10016", "tier": "gold", "points_balance": 1200, "vip": false,
               "interests": ["travel", "food"]})
    );
    assert_eq!(batch["deleted_user_attributes"], json!(["old_segment"]));
    assert!(batch.get("events").is_none());
}

#[test]
fn upload_sends_one_batch_to_events_and_arrays_to_bulkevents() {
    let batch = json!({"user_identities": {"customer_id": "1234"},
                       "events": [{"event_type": "custom_event", "data": {"event_name": "Points Earned", "custom_event_type": "transaction"}}]});
    let mut host = FakeHost::new().answer(202, "");
    let out =
        invoke(&mut host, "uploadEventBatch", &connection(), &wrap(json!({"eventBatch": batch})), &context("k", 1))
            .unwrap();
    assert_eq!(host.urls(), [format!("POST {BASE}/v2/events")]);
    assert_eq!(out["endpoint"], "events");
    let sent = host.body(0);
    assert_eq!(sent["environment"], "development", "filled from the connection");
    assert_eq!(sent["source_request_id"], out["sourceRequestId"]);

    // The DaVinci text area: JSON text.
    let mut host = FakeHost::new().answer(202, "");
    invoke(
        &mut host,
        "uploadEventBatch",
        &connection(),
        &wrap(json!({"eventBatch": batch.to_string()})),
        &context("k", 1),
    )
    .unwrap();
    assert_eq!(host.body(0), sent, "text and object give the same batch");

    let mut host = FakeHost::new().answer(202, "");
    let bulk = json!([batch, batch, {"environment": "production", "source_request_id": "mine", "user_identities": {"email": "a@b.c"}}]);
    let out =
        invoke(&mut host, "uploadEventBatch", &connection(), &wrap(json!({"eventBatch": bulk})), &context("k", 1))
            .unwrap();
    assert_eq!(host.urls(), [format!("POST {BASE}/v2/bulkevents")]);
    let sent = host.body(0);
    assert_eq!(sent.as_array().unwrap().len(), 3);
    assert_eq!(sent[2]["source_request_id"], "mine", "a given id is kept");
    assert_eq!(sent[2]["environment"], "production", "a given environment is kept");
    assert_ne!(sent[0]["source_request_id"], sent[1]["source_request_id"]);
    assert_eq!(out["batches"], 3);
    assert_eq!(out["endpoint"], "bulkevents");
    assert_eq!(out["sourceRequestIds"], json!([sent[0]["source_request_id"], sent[1]["source_request_id"], "mine"]));
}

// ---- idempotency ----

#[test]
fn a_retried_node_sends_the_same_source_request_ids() {
    for (capability, input) in [
        ("triggerMarketingCommunication", point_add()),
        ("syncUserAttributes", profile_sync()),
        (
            "uploadEventBatch",
            wrap(
                json!({"eventBatch": [{"user_identities": {"customer_id": "1"}}, {"user_identities": {"customer_id": "2"}}]}),
            ),
        ),
    ] {
        let mut host = FakeHost::new().answer(503, "").answer(202, "");
        let first = invoke(&mut host, capability, &connection(), &input, &context("run-9/node-3", 1));
        assert!(matches!(first, Err(Error::Transient(_))));
        let second = invoke(&mut host, capability, &connection(), &input, &context("run-9/node-3", 2)).unwrap();
        assert_eq!(host.requests[0].body, host.requests[1].body, "{capability}: byte-identical re-send");
        let ids: Vec<String> = serde_json::from_value(second["sourceRequestIds"].clone()).unwrap();
        assert!(ids.iter().all(|id| uuid_like(id)), "{ids:?}");

        let mut other = FakeHost::new().answer(202, "");
        let third = invoke(&mut other, capability, &connection(), &input, &context("run-9/node-4", 1)).unwrap();
        assert_ne!(third["sourceRequestIds"], second["sourceRequestIds"], "{capability}: another execution, other ids");
    }
}

#[test]
fn source_request_ids_are_derived_deterministically() {
    use mparticle_core::source_request_id;
    let key = "4b1c8c52-5b52-4a55-9e1e-1f5e9c1d2a77";
    assert_eq!(source_request_id(key, None), key, "a UUID key is used as is");
    assert_eq!(source_request_id(&key.to_uppercase(), None), key);
    let derived = source_request_id("run-1:node-1", None);
    assert_eq!(derived, source_request_id("run-1:node-1", None));
    assert!(uuid_like(&derived) && &derived[14..15] == "5", "a v5 UUID: {derived}");
    let bulk: Vec<_> = (0..3).map(|i| source_request_id(key, Some(i))).collect();
    assert_eq!(bulk, (0..3).map(|i| source_request_id(key, Some(i))).collect::<Vec<_>>());
    assert!(bulk[0] != bulk[1] && bulk[1] != bulk[2] && bulk[0] != key);
}

#[test]
fn without_an_idempotency_key_nothing_is_sent() {
    let mut host = FakeHost::new();
    let error =
        invoke(&mut host, "triggerMarketingCommunication", &connection(), &point_add(), &context("", 1)).unwrap_err();
    assert!(matches!(&error, Error::Permanent { message, .. } if message.contains("idempotency key")), "{error:?}");
    // Unless every batch brings its own id.
    let mut host = FakeHost::new().answer(202, "");
    let input = wrap(json!({"eventBatch": {"source_request_id": "given", "user_identities": {"customer_id": "1"}}}));
    invoke(&mut host, "uploadEventBatch", &connection(), &input, &context("", 1)).unwrap();
}

fn uuid_like(text: &str) -> bool {
    text.len() == 36
        && text
            .chars()
            .enumerate()
            .all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() })
}

// ---- config per capability ----

#[test]
fn each_capability_names_the_credentials_it_misses() {
    let events_only = json!({"apiKey": "k", "apiSecret": "s"});
    let oauth_only = json!({"clientId": "i", "clientSecret": "s"});
    let mut host = FakeHost::new();
    for capability in
        ["createAccount", "getAccount", "updateAccount", "deleteAccount", "getAudiences", "getCalculatedAttributes"]
    {
        let Err(Error::InvalidConfig(message)) =
            invoke(&mut host, capability, &events_only, &wrap(json!({})), &context("k", 1))
        else {
            panic!("{capability}")
        };
        assert!(message.contains("clientId and clientSecret"), "{message}");
    }
    for capability in ["uploadEventBatch", "triggerMarketingCommunication", "syncUserAttributes"] {
        let Err(Error::InvalidConfig(message)) =
            invoke(&mut host, capability, &oauth_only, &wrap(json!({})), &context("k", 1))
        else {
            panic!("{capability}")
        };
        assert!(message.contains("apiKey and apiSecret"), "{message}");
    }
    let Err(Error::InvalidConfig(message)) =
        invoke(&mut host, "getAccount", &json!({"clientId": "i"}), &wrap(json!({"accountId": "1"})), &context("k", 1))
    else {
        panic!()
    };
    assert!(message.contains("clientSecret") && !message.contains("clientId and"), "{message}");
    assert!(host.requests.is_empty());
}

#[test]
fn the_default_hosts_are_the_real_ones() {
    let connection = json!({"clientId": "i", "clientSecret": "s", "apiKey": "k", "apiSecret": "s2", "pod": "EU1"});
    let mut host = FakeHost::new().token(TOKEN).answer(200, &account_envelope(1, "A")).answer(202, "");
    invoke(&mut host, "getAccount", &connection, &wrap(json!({"accountId": "1"})), &context("k", 1)).unwrap();
    invoke(&mut host, "triggerMarketingCommunication", &connection, &point_add(), &context("k", 1)).unwrap();
    assert_eq!(
        host.urls(),
        [
            "POST https://sso.auth.mparticle.com/oauth/token",
            "GET https://api.mparticle.com/v1/accounts/1?accountId=1",
            "POST https://s2s.eu1.mparticle.com/v2/events",
        ]
    );
}

#[test]
fn unknown_capabilities_are_refused() {
    let mut host = FakeHost::new();
    let error = invoke(&mut host, "dropTables", &connection(), &wrap(json!({})), &context("k", 1)).unwrap_err();
    assert_eq!(pointers(&error), [""]);
}

#[test]
fn logs_never_carry_credentials() {
    let mut host = FakeHost::new()
        .token(TOKEN)
        .answer(200, &account_envelope(1, "A"))
        .answer(202, "")
        .answer(400, &format!(r#"{{"errors":[{{"message":"bad key {API_SECRET}"}}]}}"#));
    get_account(&mut host).unwrap();
    invoke(&mut host, "triggerMarketingCommunication", &connection(), &point_add(), &context("k", 1)).unwrap();
    let error = invoke(&mut host, "syncUserAttributes", &connection(), &profile_sync(), &context("k", 1)).unwrap_err();
    let everything = format!("{}\n{error:?}", host.log_text());
    for secret in [CLIENT_SECRET, API_SECRET, TOKEN, "YXBpLWtleTphcGktc2VjcmV0LWRvLW5vdC1sZWFr"] {
        assert!(!everything.contains(secret), "{secret} leaked: {everything}");
    }
}
