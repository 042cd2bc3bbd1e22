//! The Platform API capabilities: accounts, audiences and calculated attributes (OAuth bearer token).

use crate::config::Config;
use crate::error::Error;
use crate::host::{Host, HttpRequest, HttpResponse, Method};
use crate::http::{self, Call, Idempotency, REQUEST_TIMEOUT_MS};
use crate::input::{Problems, properties};
use crate::oauth;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value, json};

/// Everything but RFC 3986 unreserved characters is encoded, in paths and in query values alike.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encodes one path segment or query value.
pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

/// A Platform API request (the bearer token is added when it is sent).
pub fn request(config: &Config, method: Method, path_and_query: &str, body: Option<&Value>) -> HttpRequest {
    let mut headers = vec![("accept".to_string(), "application/json".to_string())];
    if body.is_some() {
        headers.push(("content-type".into(), "application/json".into()));
    }
    HttpRequest {
        method,
        url: format!("{}{path_and_query}", config.platform_api_url),
        headers,
        body: body.map(|b| b.to_string().into_bytes()),
        timeout_ms: Some(REQUEST_TIMEOUT_MS),
    }
}

/// The request a Platform API capability sends, built from its input; the input is checked first.
pub fn build_request(config: &Config, capability: &str, input: &Value) -> Result<HttpRequest, Error> {
    let props = properties(input)?;
    let mut problems = Problems::default();
    let request = match capability {
        "createAccount" => {
            let name = problems.required_string(props, "displayName");
            name.map(|name| request(config, Method::Post, "/v1/accounts", Some(&json!({ "name": name }))))
        }
        "getAccount" => problems.required_string(props, "accountId").map(|id| {
            let id = encode(id);
            request(config, Method::Get, &format!("/v1/accounts/{id}?accountId={id}"), None)
        }),
        "updateAccount" => {
            let id = problems.required_string(props, "accountId");
            let name = problems.required_string(props, "updatedName");
            id.zip(name).map(|(id, name)| {
                let id = encode(id);
                let path = format!("/v1/accounts/{id}?accountId={id}");
                request(config, Method::Put, &path, Some(&json!({ "name": name })))
            })
        }
        "deleteAccount" => problems
            .required_string(props, "accountId")
            .map(|id| request(config, Method::Delete, &format!("/v1/accounts?accountId={}", encode(id)), None)),
        "getAudiences" => problems
            .required_string(props, "accountId")
            .map(|id| request(config, Method::Get, &format!("/v1/audiences?accountId={}", encode(id)), None)),
        "getCalculatedAttributes" => {
            let workspace = problems.required_string(props, "workspace");
            let name = problems.optional_string(props, "nameOptional");
            workspace.map(|workspace| {
                let mut path = format!("/platform/v2/workspaces/{}/calculatedattributes", encode(workspace));
                if let Some(name) = name {
                    path.push_str("?name=");
                    path.push_str(&encode(name));
                }
                request(config, Method::Get, &path, None)
            })
        }
        other => return Err(Error::invalid_input("", format!("{other} is not a Platform API capability"))),
    };
    let request = problems.into_result(request)?;
    Ok(request.expect("a request is built whenever the input has no problems"))
}

/// Runs one Platform API capability.
pub fn invoke(host: &mut dyn Host, config: &Config, capability: &str, input: &Value) -> Result<Value, Error> {
    config.require_oauth()?;
    let request = build_request(config, capability, input)?;
    let idempotency = if capability == "createAccount" { Idempotency::NotIdempotent } else { Idempotency::Safe };
    let call = Call { capability, idempotency };
    let response = oauth::send_authorized(host, config, call, &request)?;
    read_output(config, capability, input, &response)
}

/// Turns a 2xx answer into the capability's output.
pub fn read_output(config: &Config, capability: &str, input: &Value, response: &HttpResponse) -> Result<Value, Error> {
    let call = Call { capability, idempotency: Idempotency::Safe };
    let secrets = config.secrets();
    let body = http::json_body(response, call, &secrets)?;
    if let Some(error) = envelope_error(body.as_ref()) {
        return Err(Error::Permanent {
            status: Some(response.status),
            message: format!("{capability}: mParticle reported an error: {error}"),
            body: http::body_excerpt(&response.body, &secrets),
        });
    }
    let props = properties(input)?;
    let field = |name: &str| props.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
    let unexpected = || Error::Permanent {
        status: Some(response.status),
        message: format!("{capability}: mParticle answered HTTP {} with an unexpected body", response.status),
        body: http::body_excerpt(&response.body, &secrets),
    };
    let items = match body {
        None => Vec::new(),
        Some(body) => items(body).ok_or_else(unexpected)?,
    };
    match capability {
        "createAccount" => Ok(first_object(items).unwrap_or_else(|| json!({ "name": field("displayName") }))),
        "getAccount" => first_object(items).ok_or_else(|| {
            Error::NotFound(format!("getAccount: mParticle returned no account with id {}", field("accountId")))
        }),
        "updateAccount" => {
            Ok(first_object(items).unwrap_or_else(|| json!({ "id": field("accountId"), "name": field("updatedName") })))
        }
        "deleteAccount" => Ok(json!({ "accountId": field("accountId"), "deleted": true, "status": response.status })),
        "getAudiences" => Ok(json!({ "audiences": items })),
        "getCalculatedAttributes" => {
            let items: Vec<Value> = items.into_iter().map(normalize_calculated_attribute).collect();
            Ok(json!({ "calculatedAttributes": items }))
        }
        _ => Err(unexpected()),
    }
}

/// The entities of a Platform API answer: the envelope's `data` (`{"data":[...],"dataType","errors"}`), a
/// bare array (audiences, calculated attributes) or a bare entity.
pub fn items(body: Value) -> Option<Vec<Value>> {
    match body {
        Value::Array(items) => Some(items),
        Value::Object(mut map) => match map.remove("data") {
            Some(Value::Array(items)) => Some(items),
            Some(entity @ Value::Object(_)) => Some(vec![entity]),
            Some(Value::Null) => Some(Vec::new()),
            Some(_) => None,
            None => Some(vec![Value::Object(map)]),
        },
        Value::Null => Some(Vec::new()),
        _ => None,
    }
}

/// The first message of a non-empty `errors` list in an envelope that carries no data.
fn envelope_error(body: Option<&Value>) -> Option<String> {
    let body = body?.as_object()?;
    let errors = body.get("errors")?.as_array().filter(|e| !e.is_empty())?;
    let has_data = body.get("data").is_some_and(|d| d.as_array().is_none_or(|a| !a.is_empty()) && !d.is_null());
    if has_data {
        return None;
    }
    let first = &errors[0];
    let message = first.get("message").and_then(Value::as_str).unwrap_or("(no message)");
    Some(match first.get("code").and_then(Value::as_str) {
        Some(code) => format!("{code}: {message}"),
        None => message.to_string(),
    })
}

fn first_object(items: Vec<Value>) -> Option<Value> {
    items.into_iter().find(Value::is_object)
}

/// The docs spell the definition's data point `datapoint` in one place and `data_point` in another: the
/// output always uses `datapoint`.
pub fn normalize_calculated_attribute(mut item: Value) -> Value {
    for key in ["active_definition", "draft_definition"] {
        if let Some(Value::Object(definition)) = item.get_mut(key)
            && definition.contains_key("data_point")
            && !definition.contains_key("datapoint")
        {
            let renamed: Map<String, Value> = std::mem::take(definition)
                .into_iter()
                .map(|(k, v)| if k == "data_point" { ("datapoint".to_string(), v) } else { (k, v) })
                .collect();
            *definition = renamed;
        }
    }
    item
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(&json!({"platformApiUrl": "http://127.0.0.1:9/"})).unwrap()
    }

    fn built(capability: &str, props: Value) -> HttpRequest {
        build_request(&config(), capability, &json!({ "properties": props })).unwrap()
    }

    #[test]
    fn requests_follow_the_reference() {
        let r = built("createAccount", json!({"displayName": "Firstname Lastname"}));
        assert_eq!((r.method, r.url.as_str()), (Method::Post, "http://127.0.0.1:9/v1/accounts"));
        assert_eq!(r.body.as_deref(), Some(br#"{"name":"Firstname Lastname"}"#.as_slice()));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let r = built("getAccount", json!({"accountId": "1"}));
        assert_eq!((r.method, r.url.as_str()), (Method::Get, "http://127.0.0.1:9/v1/accounts/1?accountId=1"));
        assert_eq!(r.body, None);
        let r = built("updateAccount", json!({"accountId": "1", "updatedName": "New"}));
        assert_eq!((r.method, r.url.as_str()), (Method::Put, "http://127.0.0.1:9/v1/accounts/1?accountId=1"));
        assert_eq!(r.body.as_deref(), Some(br#"{"name":"New"}"#.as_slice()));
        let r = built("deleteAccount", json!({"accountId": "1"}));
        assert_eq!((r.method, r.url.as_str()), (Method::Delete, "http://127.0.0.1:9/v1/accounts?accountId=1"));
        let r = built("getAudiences", json!({"accountId": "1"}));
        assert_eq!(r.url, "http://127.0.0.1:9/v1/audiences?accountId=1");
        let r = built("getCalculatedAttributes", json!({"workspace": "1234"}));
        assert_eq!(r.url, "http://127.0.0.1:9/platform/v2/workspaces/1234/calculatedattributes");
        let r =
            built("getCalculatedAttributes", json!({"workspace": "1234", "nameOptional": "Firstname Lastname&x=1"}));
        assert_eq!(
            r.url,
            "http://127.0.0.1:9/platform/v2/workspaces/1234/calculatedattributes?name=Firstname%20Lastname%26x%3D1"
        );
        let r = built("getCalculatedAttributes", json!({"workspace": "1234", "nameOptional": ""}));
        assert!(!r.url.contains('?'));
        let r = built("getAccount", json!({"accountId": "../1?x"}));
        assert_eq!(r.url, "http://127.0.0.1:9/v1/accounts/..%2F1%3Fx?accountId=..%2F1%3Fx");
    }

    #[test]
    fn inputs_are_checked_with_pointers() {
        let pointers = |capability: &str, input: Value| -> Vec<String> {
            let error = build_request(&config(), capability, &input).unwrap_err();
            error.field_errors().iter().map(|e| e.pointer.clone()).collect()
        };
        assert_eq!(pointers("createAccount", json!({"properties": {}})), ["/properties/displayName"]);
        assert_eq!(pointers("getAccount", json!({"properties": {"accountId": 1}})), ["/properties/accountId"]);
        assert_eq!(
            pointers("updateAccount", json!({"properties": {"accountId": ""}})),
            ["/properties/accountId", "/properties/updatedName"]
        );
        assert_eq!(pointers("getCalculatedAttributes", json!({"properties": {"nameOptional": 3}})).len(), 2);
        assert_eq!(pointers("getAudiences", json!({"accountId": "1"})), ["/properties"]);
    }

    #[test]
    fn envelopes_and_bare_arrays_are_read() {
        let account = json!({"name": "My Account", "id": 1, "data_type": "account"});
        let expected = vec![account.clone()];
        assert_eq!(items(json!({"data": [account], "dataType": "account", "errors": null})).unwrap(), expected);
        assert_eq!(items(json!([account])).unwrap(), expected);
        assert_eq!(items(account.clone()).unwrap(), expected);
        assert_eq!(items(json!({"data": null})).unwrap(), Vec::<Value>::new());
        assert_eq!(items(json!("text")), None);
        let failed =
            json!({"data": [], "errors": [{"code": "VALIDATION_ERROR", "message": "Account name is not unique."}]});
        assert_eq!(envelope_error(Some(&failed)).unwrap(), "VALIDATION_ERROR: Account name is not unique.");
        assert_eq!(envelope_error(Some(&json!({"data": [account], "errors": null}))), None);
    }

    #[test]
    fn both_datapoint_spellings_are_accepted() {
        let a = normalize_calculated_attribute(json!({"id": 5, "active_definition": {"recipe_type": "event",
            "data_point": {"event_name": "Purchase"}, "calculation_type": "sum"}, "draft_definition": null}));
        assert_eq!(a["active_definition"]["datapoint"]["event_name"], "Purchase");
        assert!(a["active_definition"].get("data_point").is_none());
        let keys: Vec<_> = a["active_definition"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["recipe_type", "datapoint", "calculation_type"]);
        let b = json!({"active_definition": {"datapoint": {"event_name": "X"}}});
        assert_eq!(normalize_calculated_attribute(b.clone()), b);
    }
}
