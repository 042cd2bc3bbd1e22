//! HTTP routes and handlers.

// Helpers return a ready error `Response` as their `Err`: the idiom of axum handlers.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use http_body_util::BodyExt as _;
use serde_json::{Map, Value, json};

use crate::faults::{FaultKind, FaultRule};
use crate::state::{ApiError, AsyncEvent, RecordedRequest, Shared, lock};
use crate::{ASYNC_ACTIONS, WebhookSubscription, escher};

type App = Arc<Shared>;

/// Bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The only OAuth scope.
pub const SCOPE: &str = "loyalty.async_events";

pub(crate) fn router(app: App) -> Router {
    let antavo = Router::new()
        .route("/events", post(post_event))
        .route("/events/bulk", post(post_bulk))
        .route("/customers", get(search_customers))
        .route("/customers/-/count", get(count_customers))
        .route("/customers/{id}", get(get_customer))
        .route("/customers/{id}/events", get(customer_events))
        .route("/v1/auth/token", post(token))
        .route("/v1/async/events", post(submit_async))
        .route("/v1/async/events/{id}", get(async_status))
        .route_layer(middleware::from_fn_with_state(app.clone(), antavo_layer));
    let emulator = Router::new()
        .route("/_emulator/health", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/_emulator/requests", get(emu_requests))
        .route("/_emulator/events", get(emu_events))
        .route("/_emulator/customers", get(emu_customers))
        .route("/_emulator/stats", get(emu_stats))
        .route("/_emulator/faults", get(emu_faults).post(emu_add_faults).delete(emu_clear_faults))
        .route("/_emulator/reset", post(emu_reset))
        .route("/_emulator/tokens/expire", post(emu_expire_tokens))
        .route("/_emulator/async/process", post(emu_process_async))
        .route("/_emulator/clock", get(emu_clock).post(emu_set_clock))
        .route("/_emulator/trigger", post(emu_trigger))
        .route("/_emulator/webhooks", get(emu_webhooks).post(emu_add_webhook))
        .route("/_emulator/deliveries", get(emu_deliveries));
    antavo
        .merge(emulator)
        .method_not_allowed_fallback(|| async {
            error(&ApiError::new(405, "MethodNotAllowedException", 0, "Method Not Allowed"))
        })
        .fallback(|| async { error(&ApiError::new(404, "NotFoundException", 0, "Not Found")) })
        .with_state(app)
}

fn json_response(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(e: &ApiError) -> Response {
    json_response(e.status, e.body())
}

/// The key whose signature a handler verified, for the request record.
#[derive(Clone)]
struct SignedBy(String);

// ---------------------------------------------------------------------------------------------
// Every Antavo route: counted, body read (413 over the limit), faults injected, recorded.

async fn antavo_layer(State(app): State<App>, req: Request, next: Next) -> Response {
    let received = app.now_ms();
    let (parts, body) = req.into_parts();
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| parts.uri.path().to_owned());
    app.count(|s| *s.requests.entry(format!("{} {route}", parts.method)).or_insert(0) += 1);
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let method = parts.method.to_string();
    let bytes = match read_body(body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let record = |status: u16, api_key: Option<String>, fault: Option<String>| {
        let seq = app.request_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(64 * 1024)]).into_owned();
        lock(&app.requests).push(RecordedRequest {
            seq,
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            status,
            api_key,
            body: text,
            fault,
            received_unix_ms: received,
        });
    };
    let fault = crate::faults::take(&mut lock(&app.faults), &path);
    let mut stall_after = None;
    if let Some(rule) = fault.clone() {
        app.count(|s| s.faults_injected += 1);
        match rule.kind {
            FaultKind::Status(status) => {
                record(status, None, Some(rule.kind.as_string()));
                return fault_response(&rule, status);
            }
            FaultKind::Stall if rule.stall_after_processing => stall_after = Some(Duration::from_millis(rule.stall_ms)),
            FaultKind::Stall => tokio::time::sleep(Duration::from_millis(rule.stall_ms)).await,
        }
    }
    let req = Request::from_parts(parts, Body::from(bytes.clone()));
    let response = next.run(req).await;
    let signed_by = response.extensions().get::<SignedBy>().map(|s| s.0.clone());
    record(response.status().as_u16(), signed_by, fault.map(|f| f.kind.as_string()));
    if let Some(pause) = stall_after {
        tokio::time::sleep(pause).await;
    }
    response
}

async fn read_body(body: Body) -> Result<Bytes, Response> {
    let mut body = body;
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| error(&ApiError::bad_request(0, format!("Could not read the body: {e}"))))?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > MAX_BODY_BYTES {
                return Err(error(&ApiError::new(413, "PayloadTooLargeException", 0, "Request Entity Too Large")));
            }
        }
    }
    Ok(Bytes::from(buf))
}

fn fault_response(rule: &FaultRule, status: u16) -> Response {
    let (kind, message) = match status {
        429 => ("TooManyRequestsException", "Too Many Requests (injected by the emulator)"),
        500 => ("InternalServerErrorException", "Internal Server Error (injected by the emulator)"),
        502 => ("BadGatewayException", "Bad Gateway (injected by the emulator)"),
        503 => ("ServiceUnavailableException", "Service Unavailable (injected by the emulator)"),
        504 => ("GatewayTimeoutException", "Gateway Timeout (injected by the emulator)"),
        _ => ("Exception", "Error injected by the emulator"),
    };
    let mut r = error(&ApiError::new(status, kind, 0, message));
    if let Some(secs) = rule.retry_after_secs
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Escher authentication and the rate limit.

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect()
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Verifies the Escher signature (or, in the unsigned mode, a bare `api_key`), then takes a token from the
/// key's rate-limit bucket. The key, or the answer to give.
fn authenticate(
    app: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, Response> {
    let query = uri.query().unwrap_or_default();
    let api_key_param = query_pairs(query).into_iter().find(|(k, _)| k == "api_key").map(|(_, v)| v);
    let unauthorized = |message: String| {
        app.count(|s| s.unauthorized += 1);
        error(&ApiError::new(401, "UnauthorizedException", 101_021, message))
    };
    let key_known = |k: &str| app.config.api_keys.iter().find(|(key, _)| key == k).map(|(_, s)| s.clone());
    let key = if headers.get(header::AUTHORIZATION).is_none() && app.config.allow_unsigned {
        match api_key_param.as_deref() {
            Some(k) if key_known(k).is_some() => k.to_string(),
            _ => return Err(unauthorized("Escher authentication is missing".into())),
        }
    } else {
        let scope = format!("{}/api/antavo_request", app.config.region);
        let settings = escher::Settings {
            algo_prefix: "ANTAVO",
            scope: &scope,
            clock_skew: app.config.clock_skew.as_secs() as i64,
        };
        let key = escher::verify(
            &settings,
            method.as_str(),
            uri.path(),
            query,
            &header_pairs(headers),
            body,
            app.now_ms() / 1000,
            &key_known,
        )
        .map_err(|refusal| unauthorized(refusal.message))?;
        if let Some(param) = api_key_param.filter(|p| *p != key) {
            return Err(unauthorized(format!(
                "The api_key parameter ({param}) is not the key that signed the request"
            )));
        }
        key
    };
    if !app.take_rate_token(&key) {
        app.count(|s| s.throttled += 1);
        let mut r = error(&ApiError::new(429, "TooManyRequestsException", 0, "Too Many Requests"));
        if let Some(secs) = app.config.retry_after_secs
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Err(r);
    }
    Ok(key)
}

fn signed(key: &str, mut response: Response) -> Response {
    response.extensions_mut().insert(SignedBy(key.to_string()));
    response
}

// ---------------------------------------------------------------------------------------------
// Events.

/// An event body: JSON, or form-urlencoded (`data[points]=10`).
fn parse_event_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    if form {
        let mut event = Map::new();
        let mut data = Map::new();
        for (k, v) in query_pairs(&String::from_utf8_lossy(body)) {
            match k.strip_prefix("data[").and_then(|r| r.strip_suffix(']')) {
                Some(name) => {
                    // Form values are text; a number stays a number for the `points` rule.
                    let value = v.parse::<i64>().map(Value::from).unwrap_or(Value::String(v));
                    data.insert(name.to_string(), value);
                }
                None => {
                    event.insert(k, Value::String(v));
                }
            }
        }
        event.insert("data".into(), Value::Object(data));
        return Ok(Value::Object(event));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(0, format!("Malformed JSON body: {e}")))
}

/// Applies an event and queues its webhooks; the customer after it, or Antavo's error.
fn apply(app: &Shared, event: &Value, via: &str, key: Option<&str>) -> Result<Value, ApiError> {
    let now = app.now_ms();
    let outcome = lock(&app.workspace).apply(&app.config, event, via, key, now);
    match outcome {
        Ok(applied) => {
            app.count(|s| s.accepted_events += 1);
            crate::webhooks::enqueue(app, &applied.accepted, &applied.customer);
            Ok(applied.customer)
        }
        Err(e) => {
            app.count(|s| s.refused_events += 1);
            Err(e)
        }
    }
}

async fn post_event(State(app): State<App>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let key = match authenticate(&app, &method, &uri, &headers, &body) {
        Ok(key) => key,
        Err(r) => return r,
    };
    let answer = parse_event_body(&headers, &body)
        .and_then(|event| apply(&app, &event, "events", Some(&key)))
        .map(|customer| json_response(200, customer))
        .unwrap_or_else(|e| error(&e));
    signed(&key, answer)
}

async fn post_bulk(State(app): State<App>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let key = match authenticate(&app, &method, &uri, &headers, &body) {
        Ok(key) => key,
        Err(r) => return r,
    };
    let parsed: Result<Vec<Value>, ApiError> = serde_json::from_slice::<Value>(&body)
        .map_err(|e| ApiError::bad_request(0, format!("Malformed JSON body: {e}")))
        .and_then(|v| match v.get("events") {
            Some(Value::Array(events)) => Ok(events.clone()),
            _ => Err(ApiError::bad_request(0, "Property events must be an array of events")),
        });
    let events = match parsed {
        Ok(events) => events,
        Err(e) => return signed(&key, error(&e)),
    };
    if events.len() > 50 {
        tracing::warn!(events = events.len(), "a bulk request above the 50 events Antavo designs it for");
    }
    let mut errors = 0;
    let results: Vec<Value> = events
        .iter()
        .map(|event| match apply(&app, event, "events/bulk", Some(&key)) {
            Ok(customer) => json!({"events": customer["events"]}),
            Err(e) => {
                errors += 1;
                e.body()
            }
        })
        .collect();
    signed(&key, json_response(200, json!({"results": results, "total": events.len(), "errors": errors})))
}

// ---------------------------------------------------------------------------------------------
// Customers.

/// `{field:value}`, or a plain id.
fn find_customer(app: &Shared, id: &str) -> Result<Value, ApiError> {
    let ws = lock(&app.workspace);
    let found = match id.strip_prefix('{').and_then(|r| r.strip_suffix('}')).and_then(|r| r.split_once(':')) {
        Some((field, value)) => {
            if !app.config.external_id_fields.iter().any(|f| f == field) {
                return Err(ApiError::bad_request(0, format!("Unknown external id field \"{field}\"")));
            }
            ws.customers.values().find(|c| c.profile.get(field).and_then(Value::as_str) == Some(value))
        }
        None => ws.customers.get(id),
    };
    found
        .filter(|c| c.status != "opted_out")
        .map(|c| c.to_json())
        .ok_or_else(|| ApiError::new(404, "NotFoundException", 160_212, "Customer not found"))
}

async fn get_customer(
    State(app): State<App>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let key = match authenticate(&app, &method, &uri, &headers, b"") {
        Ok(key) => key,
        Err(r) => return r,
    };
    let fields: Vec<String> = query_pairs(uri.query().unwrap_or_default())
        .into_iter()
        .filter(|(k, _)| k == "fields")
        .flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let answer = match find_customer(&app, &id) {
        Ok(mut customer) => {
            for field in fields {
                match field.as_str() {
                    "groups" => customer["groups"] = json!([]),
                    "purchases.ytd" => customer["purchases"] = json!({"ytd": 0}),
                    "expiring_points" => customer["expiring_points"] = json!(0),
                    "expiring_points.history" => customer["expiring_points_history"] = json!([]),
                    other => {
                        return signed(&key, error(&ApiError::bad_request(0, format!("Unknown field \"{other}\""))));
                    }
                }
            }
            json_response(200, customer)
        }
        Err(e) => error(&e),
    };
    signed(&key, answer)
}

async fn count_customers(State(app): State<App>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let key = match authenticate(&app, &method, &uri, &headers, b"") {
        Ok(key) => key,
        Err(r) => return r,
    };
    let active = lock(&app.workspace).customers.values().filter(|c| c.status == "active").count();
    signed(&key, json_response(200, json!({"active": active})))
}

fn page(uri: &Uri, offset: usize, limit: usize, total: usize) -> (Value, Value) {
    let path = uri.path();
    let others: Vec<String> = query_pairs(uri.query().unwrap_or_default())
        .into_iter()
        .filter(|(k, _)| k != "offset" && k != "limit")
        .map(|(k, v)| format!("{}={}", escher_escape(&k), escher_escape(&v)))
        .collect();
    let link = |at: usize| {
        let mut q = others.clone();
        q.push(format!("limit={limit}"));
        q.push(format!("offset={at}"));
        Value::String(format!("{path}?{}", q.join("&")))
    };
    let prev = if offset > 0 { link(offset.saturating_sub(limit)) } else { Value::Null };
    let next = if offset + limit < total { link(offset + limit) } else { Value::Null };
    (prev, next)
}

fn escher_escape(s: &str) -> String {
    s.bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~') {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

fn limit_offset(pairs: &[(String, String)], max: usize) -> Result<(usize, usize), ApiError> {
    let get = |name: &str, default: usize| match pairs.iter().find(|(k, _)| k == name) {
        None => Ok(default),
        Some((_, v)) => {
            v.parse::<usize>().map_err(|_| ApiError::bad_request(0, format!("Property {name} must be an integer")))
        }
    };
    let limit = get("limit", 100)?;
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request(0, format!("Property limit must be between 1 and {max}")));
    }
    Ok((limit, get("offset", 0)?))
}

async fn search_customers(State(app): State<App>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let key = match authenticate(&app, &method, &uri, &headers, b"") {
        Ok(key) => key,
        Err(r) => return r,
    };
    let pairs = query_pairs(uri.query().unwrap_or_default());
    let answer = (|| {
        let (limit, offset) = limit_offset(&pairs, 1000)?;
        let criteria: Vec<&(String, String)> =
            pairs.iter().filter(|(k, _)| !matches!(k.as_str(), "limit" | "offset" | "match" | "api_key")).collect();
        if criteria.is_empty() {
            return Err(ApiError::bad_request(160_211, "Empty search criteria"));
        }
        let ws = lock(&app.workspace);
        let mut found = Vec::new();
        'customers: for c in ws.customers.values().filter(|c| c.status != "opted_out") {
            for (field, value) in &criteria {
                let matches = match field.as_str() {
                    "updated_at.gt" => {
                        let since = crate::time::parse_iso(value)
                            .or_else(|| crate::time::parse_http_date(value))
                            .ok_or_else(|| ApiError::bad_request(0, format!("Invalid date: {value}")))?;
                        c.updated_at > since
                    }
                    "id" | "_id" => c.id == *value,
                    f if app.config.searchable_fields.iter().any(|s| s == f) => {
                        c.profile.get(f).and_then(Value::as_str) == Some(value.as_str())
                    }
                    f => return Err(ApiError::bad_request(0, format!("Field \"{f}\" is not searchable"))),
                };
                if !matches {
                    continue 'customers;
                }
            }
            found.push(json!({"id": c.id, "updated_at": c.updated_at}));
        }
        let total = found.len();
        let (prev, next) = page(&uri, offset, limit, total);
        let data: Vec<Value> = found.into_iter().skip(offset).take(limit).collect();
        Ok(json!({"data": data, "prev": prev, "next": next}))
    })();
    signed(&key, answer.map(|v| json_response(200, v)).unwrap_or_else(|e| error(&e)))
}

async fn customer_events(
    State(app): State<App>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let key = match authenticate(&app, &method, &uri, &headers, b"") {
        Ok(key) => key,
        Err(r) => return r,
    };
    let pairs = query_pairs(uri.query().unwrap_or_default());
    let answer = (|| {
        let customer = find_customer(&app, &id)?;
        let id = customer["id"].as_str().unwrap_or_default().to_string();
        let (limit, offset) = limit_offset(&pairs, 1000)?;
        let descending = pairs.iter().any(|(k, v)| k == "order" && v == "desc");
        let ws = lock(&app.workspace);
        let mut events: Vec<Value> = ws
            .events
            .iter()
            .filter(|e| e.customer == id)
            .map(|e| {
                let properties: Vec<Value> = e
                    .data
                    .as_object()
                    .map(|d| d.iter().map(|(k, v)| json!({"name": k, "label": k, "value": v})).collect())
                    .unwrap_or_default();
                json!({"id": e.id, "action": e.action, "label": e.action, "points": e.points,
                       "timestamp": crate::time::iso(e.received_unix_ms / 1000), "properties": properties,
                       "expdate": null, "account": {"id": "default", "name": "Default"}})
            })
            .collect();
        if descending {
            events.reverse();
        }
        let total = events.len();
        let (prev, next) = page(&uri, offset, limit, total);
        Ok::<Value, ApiError>(
            json!({"data": events.into_iter().skip(offset).take(limit).collect::<Vec<_>>(), "prev": prev, "next": next}),
        )
    })();
    signed(&key, answer.map(|v| json_response(200, v)).unwrap_or_else(|e| error(&e)))
}

// ---------------------------------------------------------------------------------------------
// OAuth and the Async Events API.

fn oauth_error(status: u16, error: &str, code: i64, message: &str) -> Response {
    let kind = if status == 401 { "UnauthorizedException" } else { "BadRequestException" };
    let mut r = json_response(
        status,
        json!({"status": "error", "error": error, "details": {"type": kind, "code": code, "message": message}}),
    );
    if status == 401 {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"OAuth2 Token Endpoint\""));
    }
    r
}

async fn token(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let Some((id, secret)) = basic.as_deref().and_then(|b| b.split_once(':')) else {
        return oauth_error(401, "invalid_client", 220_010, "Client authentication failed");
    };
    if !app.config.oauth_clients.iter().any(|(i, s)| i == id && s == secret) {
        return oauth_error(401, "invalid_client", 220_010, "Client authentication failed");
    }
    let form: HashMap<String, String> = query_pairs(&String::from_utf8_lossy(&body)).into_iter().collect();
    match (form.get("grant_type").map(String::as_str), form.get("scope").map(String::as_str)) {
        (None, _) | (_, None) => {
            return oauth_error(400, "invalid_request", 220_011, "The request is missing a required parameter");
        }
        (Some("client_credentials"), Some(SCOPE)) => {}
        (Some("client_credentials"), Some(_)) => {
            return oauth_error(400, "invalid_scope", 220_015, "The requested scope is invalid");
        }
        (Some(_), _) => return oauth_error(400, "unsupported_grant_type", 220_014, "The grant type is not supported"),
    }
    let token: String = (0..32).map(|_| format!("{:x}", rand::random::<u8>() % 16)).collect();
    let lifetime = app.config.token_lifetime.as_secs();
    lock(&app.workspace).tokens.insert(token.clone(), app.now_ms() + lifetime as i64 * 1000);
    app.count(|s| s.tokens_issued += 1);
    json_response(200, json!({"access_token": token, "token_type": "Bearer", "expires_in": lifetime, "scope": SCOPE}))
}

fn bearer(app: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    let token =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let now = app.now_ms();
    let valid = token.is_some_and(|t| lock(&app.workspace).tokens.get(t.trim()).is_some_and(|expires| *expires > now));
    if valid {
        Ok(())
    } else {
        app.count(|s| s.unauthorized += 1);
        Err(json_response(
            401,
            json!({"error": {"type": "UnauthorizedException", "code": 220_052, "message": "Bearer token authentication failed"}}),
        ))
    }
}

fn async_error(code: i64, message: String) -> Response {
    json_response(
        400,
        json!({"status": "error", "error": {"type": "BadRequestException", "code": code, "message": message}}),
    )
}

async fn submit_async(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = bearer(&app, &headers) {
        return r;
    }
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        return async_error(203_401, "Property '' cannot be empty".into());
    };
    for property in ["customer", "action"] {
        if event.get(property).and_then(Value::as_str).is_none_or(|v| v.trim().is_empty()) {
            return async_error(203_401, format!("Property '{property}' cannot be empty"));
        }
    }
    let action = event["action"].as_str().unwrap_or_default();
    if !ASYNC_ACTIONS.contains(&action) {
        return async_error(203_404, format!("Invalid action: {action}"));
    }
    let id: String = (0..24).map(|_| format!("{:x}", rand::random::<u8>() % 16)).collect();
    lock(&app.workspace)
        .async_events
        .insert(id.clone(), AsyncEvent { event, submitted_ms: app.now_ms(), result: None });
    json_response(
        200,
        json!({"status": "success", "metadata": {}, "payload": {"correlation_id": id, "status": "queued"}}),
    )
}

/// Processes the queued async events (in submission order) that are due.
pub(crate) fn process_async(app: &Shared, all: bool) -> usize {
    let now = app.now_ms();
    let delay = app.config.async_delay.as_millis() as i64;
    let mut due: Vec<(String, Value, i64)> = lock(&app.workspace)
        .async_events
        .iter()
        .filter(|(_, e)| e.result.is_none() && (all || e.submitted_ms + delay <= now))
        .map(|(id, e)| (id.clone(), e.event.clone(), e.submitted_ms))
        .collect();
    due.sort_by_key(|(_, _, at)| *at);
    for (id, event, _) in &due {
        // Business errors come back with HTTP 200 and status `error`.
        let result = match apply(app, event, "async", None) {
            Ok(customer) => ("processed".to_string(), json!({"success": customer, "error": []})),
            Err(e) => ("error".to_string(), json!({"success": [], "error": e.body()["error"]})),
        };
        if let Some(queued) = lock(&app.workspace).async_events.get_mut(id) {
            queued.result = Some(result);
        }
    }
    due.len()
}

async fn async_status(State(app): State<App>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = bearer(&app, &headers) {
        return r;
    }
    if !lock(&app.workspace).async_events.contains_key(&id) {
        return async_error(203_408, "Correlation ID not found.".into());
    }
    process_async(&app, false);
    let result = lock(&app.workspace).async_events.get(&id).and_then(|e| e.result.clone());
    let (status, response) = result.unwrap_or_else(|| ("queued".into(), json!({"success": [], "error": []})));
    json_response(
        200,
        json!({"status": "success", "metadata": [], "payload": {"status": status, "response": response}}),
    )
}

// ---------------------------------------------------------------------------------------------
// The emulator's own routes.

fn since(uri: &Uri) -> u64 {
    query_pairs(uri.query().unwrap_or_default())
        .into_iter()
        .find(|(k, _)| k == "since")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

async fn emu_requests(State(app): State<App>, uri: Uri) -> Response {
    let after = since(&uri);
    let requests: Vec<_> = lock(&app.requests).iter().filter(|r| r.seq > after).cloned().collect();
    json_response(200, serde_json::to_value(requests).unwrap_or_default())
}

async fn emu_events(State(app): State<App>, uri: Uri) -> Response {
    let after = since(&uri);
    let events: Vec<_> = lock(&app.workspace).events.iter().filter(|e| e.seq > after).cloned().collect();
    json_response(200, serde_json::to_value(events).unwrap_or_default())
}

async fn emu_customers(State(app): State<App>) -> Response {
    let customers: Vec<Value> = lock(&app.workspace).customers.values().map(|c| c.to_json()).collect();
    json_response(200, Value::Array(customers))
}

async fn emu_stats(State(app): State<App>) -> Response {
    json_response(200, serde_json::to_value(lock(&app.stats).clone()).unwrap_or_default())
}

async fn emu_faults(State(app): State<App>) -> Response {
    json_response(200, json!({"faults": *lock(&app.faults)}))
}

async fn emu_add_faults(State(app): State<App>, body: Bytes) -> Response {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return json_response(400, json!({"error": format!("invalid JSON: {e}")})),
    };
    let items = match value {
        Value::Array(items) => items,
        Value::Object(ref o) if o.get("faults").is_some_and(Value::is_array) => {
            o["faults"].as_array().cloned().unwrap_or_default()
        }
        other => vec![other],
    };
    let mut rules = Vec::new();
    for item in &items {
        match FaultRule::from_json(item) {
            Ok(rule) => rules.push(rule),
            Err(e) => return json_response(400, json!({"error": e})),
        }
    }
    lock(&app.faults).extend(rules);
    emu_faults(State(app)).await
}

async fn emu_clear_faults(State(app): State<App>) -> Response {
    lock(&app.faults).clear();
    json_response(200, json!({"faults": []}))
}

async fn emu_reset(State(app): State<App>) -> Response {
    app.reset();
    json_response(200, json!({"reset": true}))
}

async fn emu_expire_tokens(State(app): State<App>) -> Response {
    let now = app.now_ms();
    let mut ws = lock(&app.workspace);
    let mut expired = 0;
    for expires in ws.tokens.values_mut() {
        if *expires > now {
            *expires = now;
            expired += 1;
        }
    }
    json_response(200, json!({"expired": expired}))
}

async fn emu_process_async(State(app): State<App>) -> Response {
    let processed = process_async(&app, true);
    json_response(200, json!({"processed": processed}))
}

async fn emu_clock(State(app): State<App>) -> Response {
    json_response(200, json!({"offset_ms": app.clock_offset_ms.load(Ordering::Relaxed), "now_ms": app.now_ms()}))
}

async fn emu_set_clock(State(app): State<App>, body: Bytes) -> Response {
    match serde_json::from_slice::<Value>(&body).ok().and_then(|v| v.get("offset_ms").and_then(Value::as_i64)) {
        Some(offset) => {
            app.clock_offset_ms.store(offset, Ordering::Relaxed);
            emu_clock(State(app)).await
        }
        None => json_response(400, json!({"error": "send {\"offset_ms\": N}"})),
    }
}

/// An event that happens inside Antavo (a purchase at the till, an admin's change, a workflow): applied without
/// a signature, and delivered to the webhook subscriptions like any other.
async fn emu_trigger(State(app): State<App>, body: Bytes) -> Response {
    let event = match serde_json::from_slice::<Value>(&body) {
        Ok(event) => event,
        Err(e) => return error(&ApiError::bad_request(0, format!("Malformed JSON body: {e}"))),
    };
    match apply(&app, &event, "trigger", None) {
        Ok(customer) => json_response(200, customer),
        Err(e) => error(&e),
    }
}

async fn emu_webhooks(State(app): State<App>) -> Response {
    let subscriptions: Vec<Value> = lock(&app.subscriptions).iter().map(WebhookSubscription::redacted).collect();
    json_response(200, json!({"webhooks": subscriptions, "pending": app.webhooks_pending.load(Ordering::SeqCst)}))
}

async fn emu_add_webhook(State(app): State<App>, body: Bytes) -> Response {
    match serde_json::from_slice::<WebhookSubscription>(&body) {
        Ok(subscription) => {
            lock(&app.subscriptions).push(subscription);
            emu_webhooks(State(app)).await
        }
        Err(e) => json_response(400, json!({"error": format!("invalid webhook subscription: {e}")})),
    }
}

async fn emu_deliveries(State(app): State<App>) -> Response {
    json_response(200, serde_json::to_value(lock(&app.deliveries).clone()).unwrap_or_default())
}
