//! POST /oauth/token and Bearer token handling.

use std::time::Duration;

use mparticle_emulator::EmulatorConfig;
use serde_json::{Value, json};

use crate::common::{self, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, client};

fn body(id: &str, secret: &str) -> Value {
    json!({"client_id": id, "client_secret": secret, "audience": "https://api.mparticle.com",
           "grant_type": "client_credentials"})
}

async fn post_token(url: &str, body: impl Into<reqwest::Body>, ct: &str) -> (u16, Value) {
    let r = client().post(format!("{url}/oauth/token")).header("content-type", ct).body(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn issues_a_bearer_token() {
    let emu = common::start().await;
    let (status, v) =
        post_token(&emu.url(), body(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET).to_string(), "application/json").await;
    assert_eq!(status, 200);
    assert_eq!(v["expires_in"], 28800);
    assert_eq!(v["token_type"], "Bearer");
    let token = v["access_token"].as_str().unwrap();
    assert!(token.len() >= 32);
    let (_, v2) =
        post_token(&emu.url(), body(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET).to_string(), "application/json").await;
    assert_ne!(v2["access_token"], v["access_token"], "tokens are random");
    let r = client().get(format!("{}/v1/accounts?accountId=1", emu.url())).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(emu.stats().tokens_issued, 2);
}

#[tokio::test]
async fn refuses_bad_credentials_and_requests() {
    let emu = common::start().await;
    let url = emu.url();
    let (s, v) = post_token(&url, body(DEMO_CLIENT_ID, "wrong").to_string(), "application/json").await;
    assert_eq!((s, v.clone()), (401, json!({"error": "access_denied", "error_description": "Unauthorized"})));
    let (s, _) = post_token(&url, body("nobody", DEMO_CLIENT_SECRET).to_string(), "application/json").await;
    assert_eq!(s, 401);

    let mut b = body(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET);
    b["grant_type"] = json!("password");
    let (s, v) = post_token(&url, b.to_string(), "application/json").await;
    assert_eq!((s, v["error"].as_str()), (400, Some("unsupported_grant_type")));

    let mut b = body(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET);
    b["audience"] = json!("https://api.example.com");
    let (s, v) = post_token(&url, b.to_string(), "application/json").await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_request")));
    assert!(v["error_description"].as_str().unwrap().contains("audience"));

    let mut b = body(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET);
    b.as_object_mut().unwrap().remove("audience");
    let (s, _) = post_token(&url, b.to_string(), "application/json").await;
    assert_eq!(s, 400);

    let mut b = body(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET);
    b.as_object_mut().unwrap().remove("client_secret");
    let (s, _) = post_token(&url, b.to_string(), "application/json").await;
    assert_eq!(s, 400);

    for (raw, what) in [
        ("{not json", "malformed"),
        ("[1,2]", "array"),
        ("", "empty"),
        (
            r#"{"client_id": 5, "client_secret": "x", "audience": "https://api.mparticle.com", "grant_type": "client_credentials"}"#,
            "number id",
        ),
        ("grant_type=client_credentials&client_id=demo-client-id", "form body"),
    ] {
        let (s, v) = post_token(&url, raw.to_owned(), "application/json").await;
        assert_eq!(s, 400, "{what}: {v}");
        assert_eq!(v["error"], "invalid_request", "{what}");
    }
    let (s, _) = post_token(&url, vec![0xff, 0xfe, 0x00], "application/json").await;
    assert_eq!(s, 400, "bad UTF-8");

    let r = client().get(format!("{url}/oauth/token")).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn bearer_errors_on_the_platform_api() {
    let emu = common::start().await;
    let url = format!("{}/v1/accounts?accountId=1", emu.url());
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401, "no token");
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"], Value::Null);
    assert_eq!(v["dataType"], "account");
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("Authorization"));
    let r = client().get(&url).bearer_auth("made-up").send().await.unwrap();
    assert_eq!(r.status(), 401, "unknown token");
    let r = client().get(&url).header("authorization", "Basic abc").send().await.unwrap();
    assert_eq!(r.status(), 401, "wrong scheme");
}

#[tokio::test]
async fn expired_tokens_are_refused_until_refreshed() {
    let emu = common::start().await;
    let token = common::token(&emu).await;
    let url = format!("{}/v1/workspace?accountId=1", emu.url());
    assert_eq!(client().get(&url).bearer_auth(&token).send().await.unwrap().status(), 200);

    let r = client().post(format!("{}/_emulator/tokens/expire", emu.url())).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"expired": 1}));
    let r = client().get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("expired"), "{v}");

    let fresh = common::token(&emu).await;
    assert_eq!(client().get(&url).bearer_auth(&fresh).send().await.unwrap().status(), 200);
    assert_eq!(emu.expire_tokens(), 1, "the Rust handle expires tokens too");
    assert_eq!(client().get(&url).bearer_auth(&fresh).send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn tokens_expire_after_their_lifetime() {
    let emu = common::start_with(EmulatorConfig { token_lifetime: Duration::from_secs(2), ..Default::default() }).await;
    let r = client()
        .post(format!("{}/oauth/token", emu.url()))
        .json(&body(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["expires_in"], 2);
    let token = v["access_token"].as_str().unwrap().to_owned();
    let url = format!("{}/v1/accounts?accountId=1", emu.url());
    assert_eq!(client().get(&url).bearer_auth(&token).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = client().get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("expired"));
}

#[tokio::test]
async fn configured_clients_are_used() {
    let cfg = EmulatorConfig { oauth_clients: vec![("a".into(), "b".into())], ..Default::default() };
    let emu = common::start_with(cfg).await;
    let (s, _) = post_token(&emu.url(), body("a", "b").to_string(), "application/json").await;
    assert_eq!(s, 200);
    let (s, _) = post_token(&emu.url(), body(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET).to_string(), "application/json").await;
    assert_eq!(s, 401);
}
