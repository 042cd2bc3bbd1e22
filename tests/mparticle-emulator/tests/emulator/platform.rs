//! Platform API v1 and calculated attributes v2.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{self, client};

struct Api {
    url: String,
    token: String,
}

impl Api {
    async fn new(emu: &mparticle_emulator::RunningEmulator) -> Api {
        Api { url: emu.url(), token: common::token(emu).await }
    }

    async fn call(&self, method: Method, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut rb = client().request(method, format!("{}{path}", self.url)).bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.header("content-type", "application/json").body(b.to_owned());
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let v = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, v)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, None).await
    }
}

fn error_message(v: &Value) -> &str {
    assert_eq!(v["data"], Value::Null, "{v}");
    v["errors"][0]["message"].as_str().unwrap_or_else(|| panic!("no error message in {v}"))
}

fn is_platform_timestamp(s: &str) -> bool {
    // 2014-11-14T22:46:38.673: no zone designator.
    s.len() >= 19 && s.as_bytes()[10] == b'T' && !s.ends_with('Z') && !s.contains('+')
}

#[tokio::test]
async fn accounts_get_one_and_all() {
    let emu = common::start().await;
    let api = Api::new(&emu).await;
    let (s, v) = api.get("/v1/accounts/1?accountId=1").await;
    assert_eq!(s, 200);
    assert_eq!(v["dataType"], "account");
    assert_eq!(v["errors"], Value::Null);
    let a = &v["data"][0];
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(a["name"], "Antavo Loyalty Demo");
    assert_eq!(a["id"], 1);
    assert_eq!(a["data_type"], "account");
    let keys: Vec<&str> = a.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["name", "last_modified_on", "data_type", "id", "created_on"]);
    assert!(is_platform_timestamp(a["created_on"].as_str().unwrap()));
    assert!(is_platform_timestamp(a["last_modified_on"].as_str().unwrap()));

    let (s, v) = api.get("/v1/accounts?accountId=1").await;
    assert_eq!(s, 200);
    assert!(v["data"].as_array().unwrap().len() >= 3);

    assert_eq!(api.get("/v1/accounts/999?accountId=1").await.0, 404);
    assert_eq!(api.get("/v1/accounts/abc?accountId=1").await.0, 404);
    let (s, v) = api.get("/v1/accounts/1").await;
    assert_eq!(s, 401, "missing accountId");
    assert!(error_message(&v).contains("accountId"));
    assert_eq!(api.get("/v1/accounts?accountId=").await.0, 401);
    assert_eq!(api.get("/v1/accounts?accountId=42").await.0, 404);
    let (s, v) = api.get("/v1/accounts?accountId=one").await;
    assert_eq!(s, 400);
    assert_eq!(v["errors"][0]["code"], "VALIDATION_ERROR");
}

#[tokio::test]
async fn accounts_create_update_delete() {
    let emu = common::start().await;
    let api = Api::new(&emu).await;
    let (s, v) = api.call(Method::POST, "/v1/accounts", Some(r#"{"name":"New Account"}"#)).await;
    assert_eq!(s, 201, "{v}");
    let id = v["data"][0]["id"].as_i64().unwrap();
    assert_eq!(v["data"][0]["name"], "New Account");
    assert_eq!(v["dataType"], "account");

    let (s, v) = api.call(Method::POST, "/v1/accounts", Some(r#"{"name":"new account"}"#)).await;
    assert_eq!(s, 422);
    assert_eq!(error_message(&v), "Account name is not unique.");
    assert_eq!(v["errors"][0]["code"], "VALIDATION_ERROR");

    for (body, status) in [
        (r#"{"name":""}"#, 422),
        (r#"{"name":"   "}"#, 422),
        ("{}", 422),
        (r#"{"name":null}"#, 422),
        (r#"{"name":5}"#, 400),
        ("{bad json", 400),
        ("[]", 400),
        ("", 400),
    ] {
        let (s, v) = api.call(Method::POST, "/v1/accounts", Some(body)).await;
        assert_eq!(s, status, "body {body:?}: {v}");
        assert!(!error_message(&v).is_empty());
    }
    assert_eq!(api.call(Method::POST, "/v1/accounts?accountId=77", Some(r#"{"name":"X"}"#)).await.0, 404);

    let path = format!("/v1/accounts/{id}?accountId={id}");
    let (s, v) = api.call(Method::PUT, &path, Some(r#"{"name":"Updated Name"}"#)).await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["data"][0]["name"], "Updated Name");
    let (_, v) = api.get(&path).await;
    assert_eq!(v["data"][0]["name"], "Updated Name");
    let (s, v) = api.call(Method::PUT, &path, Some(r#"{"name":"Antavo Loyalty Demo"}"#)).await;
    assert_eq!((s, error_message(&v)), (422, "Account name is not unique."));
    assert_eq!(api.call(Method::PUT, &path, Some(r#"{"name":"Updated Name"}"#)).await.0, 202, "same name again");
    assert_eq!(api.call(Method::PUT, &path, Some("nope")).await.0, 400);
    assert_eq!(api.call(Method::PUT, "/v1/accounts/999?accountId=1", Some(r#"{"name":"Z"}"#)).await.0, 404);
    assert_eq!(api.call(Method::PUT, &format!("/v1/accounts/{id}"), Some(r#"{"name":"Z"}"#)).await.0, 401);

    // DELETE names the account in accountId only (no id in the path).
    let (s, v) = api.call(Method::DELETE, "/v1/accounts?accountId=1", None).await;
    assert_eq!(s, 422);
    assert_eq!(error_message(&v), "All applications must be deleted before deleting account.");
    let (s, v) = api.call(Method::DELETE, &format!("/v1/accounts?accountId={id}"), None).await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(api.get(&format!("/v1/accounts/{id}?accountId=1")).await.0, 404);
    assert_eq!(api.call(Method::DELETE, &format!("/v1/accounts?accountId={id}"), None).await.0, 404);
    assert_eq!(api.call(Method::DELETE, "/v1/accounts", None).await.0, 401);

    // Wrong methods.
    let (s, v) = api.call(Method::PATCH, "/v1/accounts?accountId=1", None).await;
    assert_eq!(s, 405);
    assert_eq!(v["dataType"], "account");
    assert_eq!(api.call(Method::DELETE, "/v1/accounts/1?accountId=1", None).await.0, 405);
    assert_eq!(api.call(Method::POST, "/v1/audiences?accountId=1", Some("{}")).await.0, 405);
}

#[tokio::test]
async fn audiences_and_workspaces() {
    let emu = common::start().await;
    let api = Api::new(&emu).await;
    let (s, v) = api.get("/v1/audiences?accountId=1").await;
    assert_eq!(s, 200);
    let list = v.as_array().expect("audiences are a bare array");
    assert!(list.len() >= 3);
    let first = &list[0];
    for key in [
        "name",
        "external_name",
        "size",
        "created_by",
        "last_modified_by",
        "last_modified_on",
        "is_calculated",
        "added_last_24_hours",
        "dropped_last_24_hours",
        "status",
        "workspaces",
        "connected_outputs",
        "data_type",
        "id",
    ] {
        assert!(first.get(key).is_some(), "audience lacks {key}: {first}");
    }
    assert_eq!(first["data_type"], "audience");
    assert!(first["workspaces"][0]["id"].is_i64(), "workspace ids are integers inside audiences");
    assert_eq!(first["connected_outputs"][0]["data_type"], "audience_output");
    assert_eq!(api.get("/v1/audiences").await.0, 401);
    assert_eq!(api.get("/v1/audiences?accountId=99").await.0, 404);
    let (s, v) = api.get("/v1/audiences?accountId=3").await;
    assert_eq!((s, v), (200, json!([])));

    let (s, v) = api.get("/v1/workspace?accountId=1").await;
    assert_eq!(s, 200);
    assert_eq!(v["dataType"], "workspace");
    let ws = v["data"].as_array().unwrap();
    assert!(ws.iter().any(|w| w["id"] == "1234"), "workspace ids are strings here: {v}");
    assert_eq!(ws[0]["data_type"], "workspace");
    assert_eq!(api.get("/v1/workspace").await.0, 401);

    let (s, v) = api.get("/v1/workspace/1235/audiences?accountId=1").await;
    assert_eq!(s, 200);
    assert!(v.as_array().unwrap().iter().all(|a| a["workspaces"].as_array().unwrap().iter().any(|w| w["id"] == 1235)));
    assert_eq!(api.get("/v1/workspace/4302/audiences?accountId=1").await.0, 404, "other account's workspace");

    let (s, _) = api.call(Method::DELETE, "/v1/audiences/7622?accountId=1", None).await;
    assert_eq!(s, 202);
    let (_, v) = api.get("/v1/audiences?accountId=1").await;
    assert!(v.as_array().unwrap().iter().all(|a| a["id"] != 7622));
    assert_eq!(api.call(Method::DELETE, "/v1/audiences/7622?accountId=1", None).await.0, 404);
}

#[tokio::test]
async fn calculated_attributes() {
    let emu = common::start().await;
    let api = Api::new(&emu).await;
    let base = "/platform/v2/workspaces/1234/calculatedattributes";
    let (s, v) = api.get(base).await;
    assert_eq!(s, 200);
    let list = v.as_array().expect("bare array");
    let names: Vec<&str> = list.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for expected in ["Lifetime Points", "Last Purchase Date", "Checkout Step Count"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    let ca = list.iter().find(|c| c["name"] == "Checkout Step Count").unwrap();
    assert_eq!(ca["active_definition"]["calculation_type"], "count");
    assert_eq!(ca["active_definition"]["conditions"][0]["attribute_name"], "Checkout Step");
    assert!(ca["active_definition"]["datapoint"].is_object());
    for key in
        ["id", "description", "created_by", "created_on", "last_modified_on", "draft_definition", "audience_count"]
    {
        assert!(ca.get(key).is_some(), "missing {key}");
    }

    let (s, v) = api.get(&format!("{base}?name=lifetime%20points")).await;
    assert_eq!(s, 200);
    assert_eq!(v.as_array().unwrap().len(), 1, "exact, case-insensitive: {v}");
    assert_eq!(v[0]["name"], "Lifetime Points");
    let (s, v) = api.get(&format!("{base}?name=Lifetime")).await;
    assert_eq!((s, v), (200, json!([])), "no substring match");

    let id = list[0]["id"].as_i64().unwrap();
    let (s, v) = api.get(&format!("{base}/{id}")).await;
    assert_eq!((s, &v["id"]), (200, &json!(id)));
    assert_eq!(api.get(&format!("{base}/999999")).await.0, 404);

    assert_eq!(api.get("/platform/v2/workspaces/9999/calculatedattributes").await.0, 404);
    assert_eq!(api.get("/platform/v2/workspaces/abc/calculatedattributes").await.0, 404);
    let (s, v) = api.get("/platform/v2/workspaces/4302/calculatedattributes").await;
    assert_eq!((s, v), (200, json!([])));
    assert_eq!(api.call(Method::HEAD, &format!("{base}?name=Lifetime%20Points"), None).await.0, 204);
    assert_eq!(api.call(Method::HEAD, &format!("{base}?name=Nope"), None).await.0, 404);
    let r = client().get(format!("{}{base}", emu.url())).send().await.unwrap();
    assert_eq!(r.status(), 401, "Bearer required");
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let emu = common::start().await;
    let r = client().get(format!("{}/v1/nothing", emu.url())).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "NOT_FOUND");
}

#[tokio::test]
async fn unseeded_emulator_has_no_accounts() {
    let cfg = mparticle_emulator::EmulatorConfig { seed_data: false, ..Default::default() };
    let emu = common::start_with(cfg).await;
    let api = Api::new(&emu).await;
    assert_eq!(api.get("/v1/accounts?accountId=1").await.0, 404);
    let (s, v) = api.call(Method::POST, "/v1/accounts", Some(r#"{"name":"First"}"#)).await;
    assert_eq!((s, &v["data"][0]["id"]), (201, &json!(1)));
}
