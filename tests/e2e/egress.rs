//! `http.fetch` under the egress policy, with loopback servers only: the allow-list, the private-address
//! block (tested by refusing loopback), redirects to a second loopback port outside the allow-list, timeouts
//! and the response size cap.

use crate::{connect, context, load, test_runtime, test_runtime_with};
use flowhost::connector::{ConnectionOptions, ErrorKind, HttpLimits, LogSource};
use flowhost_tests::{HttpFixture, components};
use serde_json::json;
use std::time::Duration;

fn private_allowed() -> ConnectionOptions {
    ConnectionOptions { allowed_hosts: None, allow_private: true, ..ConnectionOptions::default() }
}

/// A refused request fails fast, long before the invocation deadline.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(1);

/// After a refusal the same runtime still serves a good call.
async fn assert_serves_good_call(runtime: &flowhost::connector::Runtime, server: &HttpFixture) {
    let fetcher = load(runtime, components::FETCHER).await;
    let connection = connect(&fetcher, json!({"baseUrl": server.url("/")}), private_allowed());
    let output = fetcher.invoke(&connection, "get", &json!({"url": server.url("/ok")}), &context("good")).await;
    assert_eq!(output.result.unwrap(), json!({"status": 200, "body": "hello"}));
}

#[tokio::test]
async fn allowed_host_is_fetched_and_logged_without_credentials() {
    let server = HttpFixture::start().await;
    let (runtime, _cache) = test_runtime(Duration::from_secs(5));
    let fetcher = load(&runtime, components::FETCHER).await;
    let connection = connect(&fetcher, json!({"baseUrl": server.url("/")}), private_allowed());
    let invocation =
        fetcher.invoke(&connection, "get", &json!({"url": server.url("/ok?token=abc")}), &context("f")).await;
    assert_eq!(invocation.result.unwrap(), json!({"status": 200, "body": "hello"}));
    let http: Vec<&str> =
        invocation.log.iter().filter(|l| l.source == LogSource::Http).map(|l| l.message.as_str()).collect();
    assert_eq!(http.len(), 1, "{http:?}");
    assert!(http[0].starts_with(&format!("GET http://{}", server.addr)) && http[0].contains("-> 200"), "{http:?}");
    let log = format!("{:?}", invocation.log);
    assert!(!log.contains("do-not-log-me") && !log.contains("token=abc"), "{log}");
}

#[tokio::test]
async fn host_outside_the_allow_list_is_refused_before_connecting() {
    let allowed = HttpFixture::start().await;
    let other = HttpFixture::start().await;
    let (runtime, _cache) = test_runtime(Duration::from_secs(5));
    let fetcher = load(&runtime, components::FETCHER).await;
    let connection = connect(&fetcher, json!({"baseUrl": allowed.url("/")}), private_allowed());
    let error =
        fetcher.invoke(&connection, "get", &json!({"url": other.url("/ok")}), &context("f")).await.result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::EgressDenied, "{error}");
    assert!(error.to_string().contains("not among the hosts the connector declares"), "{error}");
    assert_eq!(other.hits(), 0);

    // The connection's own allow-list narrows what the connector declares.
    let narrowed = ConnectionOptions {
        allowed_hosts: Some(vec!["https://api.example.com".into()]),
        allow_private: true,
        ..ConnectionOptions::default()
    };
    let connection = connect(&fetcher, json!({"baseUrl": allowed.url("/")}), narrowed);
    let error = fetcher
        .invoke(&connection, "get", &json!({"url": allowed.url("/ok")}), &context("f"))
        .await
        .result
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::EgressDenied);
    assert!(error.to_string().contains("not in the connection's allowed hosts"), "{error}");
    assert_eq!(allowed.hits(), 0);
    assert_serves_good_call(&runtime, &allowed).await;
}

#[tokio::test]
async fn loopback_is_refused_unless_private_addresses_are_allowed() {
    let server = HttpFixture::start().await;
    let (runtime, _cache) = test_runtime(Duration::from_secs(5));
    let fetcher = load(&runtime, components::FETCHER).await;

    // An IP literal is refused by the policy check (https: a `{property}` host is https only without the switch).
    let https = |url: String| url.replacen("http://", "https://", 1);
    let connection = connect(&fetcher, json!({"baseUrl": https(server.url("/"))}), ConnectionOptions::default());
    let refused = fetcher.invoke(&connection, "get", &json!({"url": https(server.url("/ok"))}), &context("f")).await;
    assert!(refused.duration < REFUSAL_DEADLINE, "{:?}", refused.duration);
    let error = refused.result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::EgressDenied);
    assert!(error.to_string().contains("loopback (127.0.0.0/8)"), "{error}");

    // A name is refused by the resolver once it resolves to loopback (`localhost` comes from /etc/hosts).
    let by_name = format!("https://localhost:{}/", server.addr.port());
    let connection = connect(&fetcher, json!({"baseUrl": by_name}), ConnectionOptions::default());
    let error = fetcher
        .invoke(&connection, "get", &json!({"url": format!("{by_name}ok")}), &context("f"))
        .await
        .result
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::EgressDenied, "{error}");
    assert!(error.to_string().contains("localhost resolves to"), "{error}");
    assert_eq!(server.hits(), 0);
    assert_serves_good_call(&runtime, &server).await;
}

#[tokio::test]
async fn redirect_to_an_unlisted_port_is_not_followed() {
    let allowed = HttpFixture::start().await;
    let unlisted = HttpFixture::start().await;
    let (runtime, _cache) = test_runtime(Duration::from_secs(5));
    let fetcher = load(&runtime, components::FETCHER).await;
    let connection = connect(&fetcher, json!({"baseUrl": allowed.url("/")}), private_allowed());

    let to_unlisted = allowed.url(&format!("/redirect?to={}", unlisted.url("/ok")));
    let refused = fetcher.invoke(&connection, "get", &json!({"url": to_unlisted}), &context("f")).await;
    assert!(refused.duration < REFUSAL_DEADLINE, "{:?}", refused.duration);
    let error = refused.result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::EgressDenied, "{error}");
    assert!(error.to_string().contains("redirect from"), "{error}");
    assert_eq!(unlisted.hits(), 0, "the unlisted server must never be contacted");
    assert_eq!(allowed.hits(), 1);

    // A redirect within the allow-list is followed.
    let within = allowed.url(&format!("/redirect?to={}", allowed.url("/ok")));
    let output = fetcher.invoke(&connection, "get", &json!({"url": within}), &context("f")).await.result.unwrap();
    assert_eq!(output, json!({"status": 200, "body": "hello"}));
}

#[tokio::test]
async fn slow_and_oversized_responses_are_cut_off() {
    let server = HttpFixture::start().await;
    let limits =
        HttpLimits { request_timeout: Duration::from_millis(300), max_response_bytes: 1024, ..HttpLimits::default() };
    let (runtime, _cache) = test_runtime_with(Duration::from_secs(5), limits);
    let fetcher = load(&runtime, components::FETCHER).await;
    let connection = connect(&fetcher, json!({"baseUrl": server.url("/")}), private_allowed());

    let slow = fetcher.invoke(&connection, "get", &json!({"url": server.url("/slow?ms=3000")}), &context("f")).await;
    let error = slow.result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Transient, "a timeout may succeed later: {error}");
    assert!(slow.duration < Duration::from_secs(2), "{:?}", slow.duration);

    let big = fetcher
        .invoke(&connection, "get", &json!({"url": server.url("/big?bytes=5000")}), &context("f"))
        .await
        .result
        .unwrap_err();
    assert_eq!(big.kind(), ErrorKind::Permanent, "{big}");
    assert!(big.to_string().contains("exceeds 1 KiB"), "{big}");
}

#[tokio::test]
async fn a_hung_host_call_is_stopped_by_the_invocation_deadline() {
    let server = HttpFixture::start().await;
    let (runtime, _cache) = test_runtime(Duration::from_millis(800));
    let fetcher = load(&runtime, components::FETCHER).await;
    let connection = connect(&fetcher, json!({"baseUrl": server.url("/")}), private_allowed());
    let invocation =
        fetcher.invoke(&connection, "get", &json!({"url": server.url("/slow?ms=5000")}), &context("f")).await;
    assert_eq!(invocation.result.unwrap_err().kind(), ErrorKind::Timeout);
    assert!(invocation.duration < Duration::from_secs(2), "{:?}", invocation.duration);
}
