//! The Async Events API: `POST /v1/async/events` queues one event and answers a correlation id; `GET
//! /v1/async/events/{id}` reads its result. Both take an OAuth bearer token of the client-credentials grant
//! (`POST /v1/auth/token`, HTTP Basic with the client id and secret, scope `loyalty.async_events`), which the
//! connector caches through the host for its lifetime less a margin, and mints again when Antavo refuses it.

use crate::config::{Config, OAuthCredentials};
use crate::error::Error;
use crate::events::Event;
use crate::host::{Host, HttpRequest, HttpResponse, Level, Method};
use crate::http::{self, AntavoError, Call, Idempotency, REQUEST_TIMEOUT_MS, codes, encode};
use crate::input::{Fields, properties};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// The token endpoint, on the API host.
pub const TOKEN_PATH: &str = "/v1/auth/token";
/// The only scope there is.
pub const SCOPE: &str = "loyalty.async_events";
/// The cache key of the token (the host scopes the cache to one connection).
pub const TOKEN_CACHE_KEY: &str = "antavo-oauth-token";
/// Used when the token endpoint does not say (its documented maximum).
pub const DEFAULT_EXPIRES_IN_SECONDS: u64 = 3600;
/// The actions the Async Events API takes.
pub const ASYNC_ACTIONS: [&str; 14] = [
    "point_add",
    "checkout",
    "checkout_item",
    "checkout_update",
    "checkout_update_item",
    "checkout_accept",
    "checkout_accept_item",
    "checkout_reject",
    "partial_refund",
    "refund_item",
    "refund",
    "opt_in",
    "opt_out",
    "profile",
];

/// How long to cache a token that lives `expires_in` seconds: a minute less (a fifth less for short ones).
pub fn cache_ttl(expires_in: u64) -> u32 {
    let margin = (expires_in / 5).min(60);
    u32::try_from(expires_in.saturating_sub(margin)).unwrap_or(u32::MAX)
}

/// A bearer token and whether it was just minted.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub access_token: String,
    pub fresh: bool,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("access_token", &"***").field("fresh", &self.fresh).finish()
    }
}

/// The cached token, or a newly minted one.
pub fn token(host: &mut dyn Host, config: &Config) -> Result<Token, Error> {
    let credentials = config.require_oauth()?;
    if let Some(access_token) = host.cache_get(TOKEN_CACHE_KEY).filter(|t| !t.is_empty()) {
        host.log(Level::Debug, "using the cached Antavo OAuth token");
        return Ok(Token { access_token, fresh: false });
    }
    mint(host, config, credentials)
}

/// Mints a token with the client credentials and caches it.
pub fn mint(host: &mut dyn Host, config: &Config, credentials: &OAuthCredentials) -> Result<Token, Error> {
    let basic = STANDARD.encode(format!("{}:{}", credentials.client_id, credentials.client_secret));
    let request = HttpRequest {
        method: Method::Post,
        url: format!("{}{TOKEN_PATH}", config.api_url),
        headers: vec![
            ("authorization".into(), format!("Basic {basic}")),
            ("content-type".into(), "application/x-www-form-urlencoded".into()),
            ("accept".into(), "application/json".into()),
        ],
        body: Some(format!("grant_type=client_credentials&scope={}", encode(SCOPE)).into_bytes()),
        timeout_ms: Some(REQUEST_TIMEOUT_MS),
    };
    let call = Call { capability: "OAuth token request", idempotency: Idempotency::Safe };
    let mut secrets = config.secrets();
    secrets.push(&basic);
    let response = http::send(host, request).map_err(|e| http::map_transport(e, call))?;
    if !response.is_success() {
        return Err(token_error(&response, call, &secrets));
    }
    let value = http::json_body(&response, call, &secrets)?;
    let Some(access_token) = value.get("access_token").and_then(Value::as_str).filter(|t| !t.is_empty()) else {
        return Err(Error::Permanent {
            status: Some(response.status),
            message: "Antavo's token endpoint answered without an access_token".into(),
            body: String::new(),
        });
    };
    let expires_in = value.get("expires_in").and_then(Value::as_u64).unwrap_or(DEFAULT_EXPIRES_IN_SECONDS);
    let ttl = cache_ttl(expires_in);
    if ttl > 0 {
        host.cache_set(TOKEN_CACHE_KEY, access_token, ttl);
    }
    host.log(Level::Info, &format!("minted an Antavo OAuth token (valid {expires_in} s, cached {ttl} s)"));
    Ok(Token { access_token: access_token.to_string(), fresh: true })
}

fn token_error(response: &HttpResponse, call: Call<'_>, secrets: &[&str]) -> Error {
    let error = AntavoError::parse(&response.body);
    let said = error.as_ref().map(|e| format!(": {}", http::redact(&e.describe(), secrets))).unwrap_or_default();
    let oauth_error = serde_json::from_slice::<Value>(&response.body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string));
    match (response.status, oauth_error.as_deref()) {
        (401, _) | (400, Some("invalid_client")) => Error::Unauthorized(format!(
            "Antavo did not accept the connection's clientId/clientSecret (HTTP {}){said}; the client may be revoked \
             or expired (Authentication Manager)",
            response.status
        )),
        (400, Some("invalid_scope" | "unauthorized_client")) => Error::Unauthorized(format!(
            "the OAuth client of the connection's clientId may not use the scope {SCOPE} (HTTP 400){said}"
        )),
        (404 | 405, _) => Error::InvalidConfig(format!(
            "Antavo's token endpoint {TOKEN_PATH} answered HTTP {}: check the connection properties environment and \
             apiUrl",
            response.status
        )),
        _ => http::map_status(response, call, secrets),
    }
}

/// Sends a request with the bearer token; a 401 on a cached token mints a new one and sends once more.
fn send_authorized(
    host: &mut dyn Host,
    config: &Config,
    call: Call<'_>,
    request: &HttpRequest,
) -> Result<HttpResponse, Error> {
    let mut token = token(host, config)?;
    let mut response = send_with(host, &token, call, request)?;
    if response.status == 401 && !token.fresh {
        host.log(Level::Warn, "Antavo refused the cached OAuth token (HTTP 401): minting a new one and retrying once");
        host.cache_delete(TOKEN_CACHE_KEY);
        token = mint(host, config, config.require_oauth()?)?;
        response = send_with(host, &token, call, request)?;
    }
    if response.status == 401 {
        host.cache_delete(TOKEN_CACHE_KEY);
        let mut secrets = config.secrets();
        secrets.push(&token.access_token);
        let said = AntavoError::parse(&response.body).map(|e| format!(": {}", http::redact(&e.describe(), &secrets)));
        return Err(Error::Unauthorized(format!(
            "{}: Antavo refused a fresh OAuth token (HTTP 401){}; check the OAuth client's scope ({SCOPE}) and token \
             audience",
            call.capability,
            said.unwrap_or_default()
        )));
    }
    Ok(response)
}

fn send_with(host: &mut dyn Host, token: &Token, call: Call<'_>, request: &HttpRequest) -> Result<HttpResponse, Error> {
    let mut request = request.clone();
    request.headers.push(("authorization".into(), format!("Bearer {}", token.access_token)));
    http::send(host, request).map_err(|e| http::map_transport(e, call))
}

/// `sendAsyncEvent`: queues one event. Output: `{"correlationId", "status"}`.
pub fn submit(host: &mut dyn Host, config: &Config, input: &Value) -> Result<String, Error> {
    let map = properties(input)?;
    let event: Event = crate::events::event_from_input("sendEvent", input)?;
    let mut fields = Fields::default();
    let callback = fields.text(map, "/properties", "callbackUrl", false);
    fields.finish()?;
    if !ASYNC_ACTIONS.contains(&event.action.as_str()) {
        return Err(Error::invalid_input(
            "/properties/action",
            format!(
                "the Async Events API takes only {}; send {:?} with sendEvent",
                ASYNC_ACTIONS.join(", "),
                event.action
            ),
        ));
    }
    let mut body = event.to_json();
    if let Some(callback) = callback {
        body["callback_url"] = Value::String(callback);
    }
    let call = Call { capability: "sendAsyncEvent", idempotency: Idempotency::NotIdempotent };
    let request = HttpRequest {
        method: Method::Post,
        url: format!("{}/v1/async/events", config.api_url),
        headers: vec![("content-type".into(), "application/json".into()), ("accept".into(), "application/json".into())],
        body: Some(body.to_string().into_bytes()),
        timeout_ms: Some(REQUEST_TIMEOUT_MS),
    };
    let response = send_authorized(host, config, call, &request)?;
    if !response.is_success() {
        return Err(http::map_status(&response, call, &config.secrets()));
    }
    let value = http::json_body(&response, call, &config.secrets())?;
    let payload = value.get("payload").unwrap_or(&value);
    let Some(correlation_id) = payload.get("correlation_id").and_then(Value::as_str) else {
        return Err(Error::Permanent {
            status: Some(response.status),
            message: "sendAsyncEvent: Antavo answered without a correlation_id".into(),
            body: http::body_excerpt(&response.body, &config.secrets()),
        });
    };
    let status = payload.get("status").and_then(Value::as_str).unwrap_or("queued");
    host.log(Level::Info, &format!("sendAsyncEvent: {} queued as {correlation_id}", event.action));
    Ok(json!({"correlationId": correlation_id, "status": status}).to_string())
}

/// `getAsyncEventStatus`: the result of a queued event. Output: `{"correlationId", "status", "done", "success",
/// "error"}`; an unknown correlation id is not-found.
pub fn status(host: &mut dyn Host, config: &Config, input: &Value) -> Result<String, Error> {
    let map = properties(input)?;
    let mut fields = Fields::default();
    let id = fields.text(map, "/properties", "correlationId", true);
    fields.finish()?;
    let id = id.unwrap_or_default();
    let call = Call { capability: "getAsyncEventStatus", idempotency: Idempotency::Safe };
    let request = HttpRequest {
        method: Method::Get,
        url: format!("{}/v1/async/events/{}", config.api_url, encode(&id)),
        headers: vec![("accept".into(), "application/json".into())],
        body: None,
        timeout_ms: Some(REQUEST_TIMEOUT_MS),
    };
    let response = send_authorized(host, config, call, &request)?;
    if !response.is_success() {
        if AntavoError::parse(&response.body).and_then(|e| e.code) == Some(codes::CORRELATION_ID_NOT_FOUND) {
            return Err(Error::NotFound(format!("getAsyncEventStatus: Antavo knows no correlation id {id:?}")));
        }
        return Err(http::map_status(&response, call, &config.secrets()));
    }
    let value = http::json_body(&response, call, &config.secrets())?;
    let payload = value.get("payload").unwrap_or(&value);
    let status = payload.get("status").and_then(Value::as_str).unwrap_or("unknown").to_string();
    let result = payload.get("response").cloned().unwrap_or(Value::Null);
    let error = result.get("error").filter(|e| match e {
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Null => false,
        _ => true,
    });
    let success = result.get("success").filter(|s| !matches!(s, Value::Array(a) if a.is_empty()));
    Ok(json!({
        "correlationId": id,
        "status": status,
        "done": !matches!(status.as_str(), "queued" | "retried"),
        "success": success.cloned().unwrap_or(Value::Null),
        "error": error.cloned().unwrap_or(Value::Null),
    })
    .to_string())
}
