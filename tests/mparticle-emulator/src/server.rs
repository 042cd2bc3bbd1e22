//! HTTP routes and handlers.

// Helpers return a ready error `Response` as their `Err`: that is the idiom of axum handlers, and
// the size of the error value does not matter on this path.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use base64::Engine as _;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};

use crate::faults::{FaultKind, FaultRule};
use crate::state::{Account, CalculatedAttribute, RecordedBatch, Shared, lock};
use crate::throttle::Admission;
use crate::time::{now_unix_ms, platform_timestamp, rfc3339};
use crate::validate::{self, BatchError, Historical};

type App = Arc<Shared>;
type Q = Result<Query<HashMap<String, String>>, QueryRejection>;

/// The only audience the token endpoint accepts.
pub const AUDIENCE: &str = "https://api.mparticle.com";

/// Request bodies larger than this are not even drained before answering 413.
const DRAIN_MAX: u64 = 16 * 1024 * 1024;

pub(crate) fn router(app: App) -> Router {
    let mparticle = Router::new()
        .route("/oauth/token", post(oauth_token))
        .route("/v1/accounts", get(list_accounts).post(create_account).delete(delete_account))
        .route("/v1/accounts/{id}", get(get_account).put(update_account))
        .route("/v1/audiences", get(list_audiences))
        .route("/v1/audiences/{id}", delete(delete_audience))
        .route("/v1/workspace", get(list_workspaces))
        .route("/v1/workspace/{id}/audiences", get(workspace_audiences))
        .route("/platform/v2/workspaces/{ws}/calculatedattributes", get(list_calculated).head(head_calculated))
        .route("/platform/v2/workspaces/{ws}/calculatedattributes/{id}", get(get_calculated))
        .route("/v2/events", post(events_single))
        .route("/v2/bulkevents", post(events_bulk))
        .route("/v2/bulkevents/historical", post(events_historical))
        .route_layer(middleware::from_fn_with_state(app.clone(), mparticle_layer));
    let emulator = Router::new()
        .route("/_emulator/health", get(health))
        .route("/_emulator/batches", get(emu_batches))
        .route("/_emulator/stats", get(emu_stats))
        .route("/_emulator/faults", get(emu_faults).post(emu_add_faults).delete(emu_clear_faults))
        .route("/_emulator/throttle", get(emu_throttle).post(emu_set_throttle))
        .route("/_emulator/tokens/expire", post(emu_expire_tokens))
        .route("/_emulator/reset", post(emu_reset));
    mparticle.merge(emulator).method_not_allowed_fallback(method_not_allowed).fallback(not_found).with_state(app)
}

// ---------------------------------------------------------------------------------------------
// Response helpers.

/// Which API's error body to use.
#[derive(Clone, Copy, Debug)]
enum Style {
    /// `{"error": code, "error_description": message}` (Auth0 style).
    OAuth,
    /// `{"data": null, "dataType": dt, "errors": [{"code", "message"}]}`.
    Platform(&'static str),
    /// `{"errors": [{"code", "message"}]}`.
    Events,
}

fn style_for_path(path: &str) -> Style {
    if path.starts_with("/oauth/") {
        Style::OAuth
    } else if path.starts_with("/v1/accounts") {
        Style::Platform("account")
    } else if path.starts_with("/v1/audiences") || path.ends_with("/audiences") {
        Style::Platform("audience")
    } else if path.starts_with("/v1/workspace") {
        Style::Platform("workspace")
    } else if path.starts_with("/platform/") {
        Style::Platform("calculated_attribute")
    } else {
        Style::Events
    }
}

fn json_response(status: StatusCode, v: Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(style: Style, status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let message = message.into();
    tracing::debug!(status = status.as_u16(), code, %message, "mparticle emulator error response");
    let body = match style {
        Style::OAuth => json!({"error": code, "error_description": message}),
        Style::Platform(dt) => json!({"data": null, "dataType": dt, "errors": [{"code": code, "message": message}]}),
        Style::Events => json!({"errors": [{"code": code, "message": message}]}),
    };
    json_response(status, body)
}

fn envelope(status: StatusCode, data_type: &str, data: Vec<Value>) -> Response {
    json_response(status, json!({"data": data, "dataType": data_type, "errors": null}))
}

enum BodyError {
    TooLarge(u64),
    Read(String),
}

/// Reads a request body of at most `limit` bytes. A larger body is drained (up to 16 MiB) so
/// that the client reads the 413 answer instead of a connection reset.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(len) = declared
        && len > DRAIN_MAX
    {
        return Err(BodyError::TooLarge(len));
    }
    let mut body = body;
    let mut buf = Vec::with_capacity(declared.map_or(0, |l| l.min(limit as u64) as usize));
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            if total <= limit as u64 {
                buf.extend_from_slice(&data);
            } else if total > DRAIN_MAX {
                return Err(BodyError::TooLarge(total));
            }
        }
    }
    if total > limit as u64 { Err(BodyError::TooLarge(total)) } else { Ok(buf) }
}

fn body_error(style: Style, e: BodyError, limit: usize) -> Response {
    match e {
        BodyError::TooLarge(n) => error(
            style,
            StatusCode::PAYLOAD_TOO_LARGE,
            if matches!(style, Style::OAuth) { "invalid_request" } else { "REQUEST_TOO_LARGE" },
            format!(
                "Request body is larger than the limit of {limit} bytes (mParticle: 256 KB per request); {n} bytes seen."
            ),
        ),
        BodyError::Read(m) => error(
            style,
            StatusCode::BAD_REQUEST,
            if matches!(style, Style::OAuth) { "invalid_request" } else { "BAD_REQUEST" },
            format!("Could not read the request body: {m}"),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Middleware for every mParticle route: request counting, then fault injection.

async fn mparticle_layer(State(app): State<App>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_else(|| path.clone());
    app.count_request(format!("{} {route}", req.method()));
    if let Some(rule) = app.take_fault(&path) {
        tracing::debug!(?rule, %path, "injecting fault");
        match rule.kind {
            FaultKind::Status(status) => return fault_response(&rule, status, &path),
            FaultKind::Stall => {
                let pause = Duration::from_millis(rule.stall_ms);
                if rule.stall_after_processing {
                    let response = next.run(req).await;
                    tokio::time::sleep(pause).await;
                    return response;
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
    next.run(req).await
}

fn fault_response(rule: &FaultRule, status: u16, path: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let style = style_for_path(path);
    let (code, message) = match status {
        StatusCode::TOO_MANY_REQUESTS => ("TOO_MANY_REQUESTS", "Rate limit exceeded (injected by the emulator)."),
        StatusCode::SERVICE_UNAVAILABLE => ("SERVICE_UNAVAILABLE", "Service unavailable (injected by the emulator)."),
        StatusCode::INTERNAL_SERVER_ERROR => ("INTERNAL_SERVER_ERROR", "Internal error (injected by the emulator)."),
        _ => ("INJECTED_FAULT", "Error injected by the emulator."),
    };
    let code = if matches!(style, Style::OAuth) { "temporarily_unavailable" } else { code };
    let mut r = error(style, status, code, message);
    if let Some(secs) = rule.retry_after_secs {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if status == StatusCode::TOO_MANY_REQUESTS
        && let Ok(v) = HeaderValue::from_str(&rule.rate_limit_scope)
    {
        r.headers_mut().insert("x-mp-rate-limit-exceeded", v);
    }
    r
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    let style = style_for_path(uri.path());
    let code = if matches!(style, Style::OAuth) { "invalid_request" } else { "METHOD_NOT_ALLOWED" };
    error(style, StatusCode::METHOD_NOT_ALLOWED, code, format!("Method {method} is not allowed on {}.", uri.path()))
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    error(
        style_for_path(uri.path()),
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        format!("No route for {method} {}.", uri.path()),
    )
}

// ---------------------------------------------------------------------------------------------
// OAuth.

async fn oauth_token(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let style = Style::OAuth;
    let bad = |desc: String| error(style, StatusCode::BAD_REQUEST, "invalid_request", desc);
    let bytes = match read_body(&headers, body, app.config.max_request_bytes).await {
        Ok(b) => b,
        Err(e) => return body_error(style, e, app.config.max_request_bytes),
    };
    let v: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return bad(format!("The request body must be JSON ({e}).")),
    };
    let Some(m) = v.as_object() else {
        return bad(
            "The request body must be a JSON object with client_id, client_secret, audience and grant_type.".into()
        );
    };
    let field = |k: &str| -> Result<Option<&str>, Response> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(bad(format!("{k} must be a string."))),
        }
    };
    let (grant_type, client_id, client_secret, audience) =
        match (field("grant_type"), field("client_id"), field("client_secret"), field("audience")) {
            (Ok(g), Ok(i), Ok(s), Ok(a)) => (g, i, s, a),
            (Err(r), ..) | (_, Err(r), ..) | (_, _, Err(r), _) | (.., Err(r)) => return r,
        };
    match grant_type {
        None => return bad("Missing required parameter: grant_type".into()),
        Some("client_credentials") => {}
        Some(other) => {
            return error(
                style,
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("Grant type '{other}' not allowed; use client_credentials."),
            );
        }
    }
    let (Some(client_id), Some(client_secret)) = (client_id, client_secret) else {
        return bad("Missing required parameters: client_id and client_secret".into());
    };
    match audience {
        Some(AUDIENCE) => {}
        None => return bad(format!("Missing required parameter: audience (must be {AUDIENCE})")),
        Some(other) => return bad(format!("Unknown audience '{other}'; the Platform API audience is {AUDIENCE}")),
    }
    if !app.config.oauth_clients.iter().any(|(i, s)| i == client_id && s == client_secret) {
        return error(style, StatusCode::UNAUTHORIZED, "access_denied", "Unauthorized");
    }
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let lifetime = app.config.token_lifetime;
    {
        let mut tokens = lock(&app.tokens);
        if tokens.len() > 10_000 {
            // Forget tokens that expired more than a day ago, to bound memory.
            let horizon = Instant::now().checked_sub(Duration::from_secs(86_400));
            if let Some(h) = horizon {
                tokens.retain(|_, exp| *exp > h);
            }
        }
        tokens.insert(token.clone(), Instant::now() + lifetime);
    }
    app.tokens_issued.fetch_add(1, Ordering::Relaxed);
    let mut r = json_response(
        StatusCode::OK,
        json!({"access_token": token, "expires_in": lifetime.as_secs(), "token_type": "Bearer"}),
    );
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Checks `Authorization: Bearer <token>`.
fn bearer(app: &Shared, headers: &HeaderMap, style: Style) -> Result<(), Response> {
    let deny = |msg: &str| {
        let mut r = error(style, StatusCode::UNAUTHORIZED, "UNAUTHORIZED", msg);
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    };
    let Some(h) = headers.get(header::AUTHORIZATION) else {
        return Err(deny(
            "Missing Authorization header; send \"Authorization: Bearer <access_token>\" with a token from POST /oauth/token.",
        ));
    };
    let Ok(h) = h.to_str() else {
        return Err(deny("The Authorization header is not valid text."));
    };
    let Some((scheme, token)) = h.trim().split_once(' ') else {
        return Err(deny("The Authorization header must be \"Bearer <access_token>\"."));
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(deny("The Authorization header must use the Bearer scheme."));
    }
    match lock(&app.tokens).get(token.trim()) {
        None => Err(deny("Invalid access token.")),
        Some(exp) if *exp <= Instant::now() => {
            Err(deny("The access token has expired; request a new one from POST /oauth/token."))
        }
        Some(_) => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Platform API v1.

fn query_map(q: &Q) -> Option<&HashMap<String, String>> {
    q.as_ref().ok().map(|Query(m)| m)
}

/// The `accountId` query parameter, which must name an existing account.
fn account_param(app: &Shared, q: &Q, style: Style) -> Result<i64, Response> {
    let Some(raw) = query_map(q).and_then(|m| m.get("accountId")).map(|s| s.trim()).filter(|s| !s.is_empty()) else {
        return Err(error(
            style,
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "The accountId query parameter is required.",
        ));
    };
    let Ok(id) = raw.parse::<i64>() else {
        return Err(error(
            style,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            format!("accountId must be an integer, got {raw:?}."),
        ));
    };
    if lock(&app.platform).account(id).is_none() {
        return Err(account_not_found(style, id));
    }
    Ok(id)
}

fn account_not_found(style: Style, id: impl std::fmt::Display) -> Response {
    error(
        style,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        format!("Account {id} was not found or is not accessible with these credentials."),
    )
}

async fn list_accounts(State(app): State<App>, headers: HeaderMap, q: Q) -> Response {
    let style = Style::Platform("account");
    if let Err(r) = bearer(&app, &headers, style).and_then(|_| account_param(&app, &q, style)) {
        return r;
    }
    let p = lock(&app.platform);
    envelope(StatusCode::OK, "account", p.accounts.iter().map(Account::to_json).collect())
}

async fn get_account(State(app): State<App>, headers: HeaderMap, Path(id): Path<String>, q: Q) -> Response {
    let style = Style::Platform("account");
    if let Err(r) = bearer(&app, &headers, style).and_then(|_| account_param(&app, &q, style)) {
        return r;
    }
    let p = lock(&app.platform);
    match id.parse::<i64>().ok().and_then(|i| p.account(i)) {
        Some(a) => envelope(StatusCode::OK, "account", vec![a.to_json()]),
        None => account_not_found(style, id),
    }
}

/// Reads `{"name": "..."}`. Bad JSON or a non-string name: 400; missing or blank name: 422.
async fn read_name(app: &Shared, headers: &HeaderMap, body: Body, style: Style) -> Result<String, Response> {
    let bytes = read_body(headers, body, app.config.max_request_bytes)
        .await
        .map_err(|e| body_error(style, e, app.config.max_request_bytes))?;
    let bad = |m: String| error(style, StatusCode::BAD_REQUEST, "VALIDATION_ERROR", m);
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("The request body is not valid JSON: {e}")))?;
    let Some(m) = v.as_object() else {
        return Err(bad("The request body must be a JSON object like {\"name\": \"Account name\"}.".into()));
    };
    match m.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(error(style, StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR", "Account name is required."))
        }
        Some(other) => Err(bad(format!("name must be a string, not {other}."))),
    }
}

fn name_taken(accounts: &[Account], name: &str, except: Option<i64>) -> bool {
    accounts.iter().any(|a| Some(a.id) != except && a.name.trim().eq_ignore_ascii_case(name))
}

fn not_unique() -> Response {
    error(
        Style::Platform("account"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "VALIDATION_ERROR",
        "Account name is not unique.",
    )
}

async fn create_account(State(app): State<App>, headers: HeaderMap, q: Q, body: Body) -> Response {
    let style = Style::Platform("account");
    if let Err(r) = bearer(&app, &headers, style) {
        return r;
    }
    // The documented example sends no accountId; when one is given it must be valid.
    if query_map(&q).is_some_and(|m| m.contains_key("accountId"))
        && let Err(r) = account_param(&app, &q, style)
    {
        return r;
    }
    let name = match read_name(&app, &headers, body, style).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let mut p = lock(&app.platform);
    if name_taken(&p.accounts, &name, None) {
        return not_unique();
    }
    let now = platform_timestamp(now_unix_ms());
    let id = p.accounts.iter().map(|a| a.id).max().unwrap_or(0) + 1;
    let a = Account { id, name, created_on: now.clone(), last_modified_on: now, applications: 0 };
    let out = a.to_json();
    p.accounts.push(a);
    envelope(StatusCode::CREATED, "account", vec![out])
}

async fn update_account(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Q,
    body: Body,
) -> Response {
    let style = Style::Platform("account");
    if let Err(r) = bearer(&app, &headers, style).and_then(|_| account_param(&app, &q, style)) {
        return r;
    }
    let Some(id) = id.parse::<i64>().ok().filter(|i| lock(&app.platform).account(*i).is_some()) else {
        return account_not_found(style, id);
    };
    let name = match read_name(&app, &headers, body, style).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let mut p = lock(&app.platform);
    if name_taken(&p.accounts, &name, Some(id)) {
        return not_unique();
    }
    let Some(a) = p.accounts.iter_mut().find(|a| a.id == id) else {
        return account_not_found(style, id);
    };
    a.name = name;
    a.last_modified_on = platform_timestamp(now_unix_ms());
    envelope(StatusCode::ACCEPTED, "account", vec![a.to_json()])
}

async fn delete_account(State(app): State<App>, headers: HeaderMap, q: Q) -> Response {
    let style = Style::Platform("account");
    let id = match bearer(&app, &headers, style).and_then(|_| account_param(&app, &q, style)) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let mut p = lock(&app.platform);
    if p.account(id).is_some_and(|a| a.applications > 0) {
        return error(
            style,
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_ERROR",
            "All applications must be deleted before deleting account.",
        );
    }
    let workspaces: Vec<i64> = p.workspaces.iter().filter(|w| w.account_id == id).map(|w| w.id).collect();
    p.accounts.retain(|a| a.id != id);
    p.workspaces.retain(|w| w.account_id != id);
    p.audiences.retain(|a| a.account_id != id);
    p.calculated_attributes.retain(|c| !workspaces.contains(&c.workspace_id));
    json_response(StatusCode::ACCEPTED, json!({"data": null, "dataType": "account", "errors": null}))
}

async fn list_audiences(State(app): State<App>, headers: HeaderMap, q: Q) -> Response {
    let style = Style::Platform("audience");
    let account = match bearer(&app, &headers, style).and_then(|_| account_param(&app, &q, style)) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let p = lock(&app.platform);
    let list: Vec<Value> = p.audiences.iter().filter(|a| a.account_id == account).map(|a| a.json.clone()).collect();
    json_response(StatusCode::OK, Value::Array(list))
}

async fn delete_audience(State(app): State<App>, headers: HeaderMap, Path(id): Path<String>, q: Q) -> Response {
    let style = Style::Platform("audience");
    let account = match bearer(&app, &headers, style).and_then(|_| account_param(&app, &q, style)) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let mut p = lock(&app.platform);
    let before = p.audiences.len();
    let target = id.parse::<i64>().ok();
    p.audiences.retain(|a| !(Some(a.id) == target && a.account_id == account));
    if p.audiences.len() == before {
        return error(
            style,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("Audience {id} was not found in account {account}."),
        );
    }
    json_response(StatusCode::ACCEPTED, json!({"data": null, "dataType": "audience", "errors": null}))
}

async fn list_workspaces(State(app): State<App>, headers: HeaderMap, q: Q) -> Response {
    let style = Style::Platform("workspace");
    let account = match bearer(&app, &headers, style).and_then(|_| account_param(&app, &q, style)) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let p = lock(&app.platform);
    envelope(
        StatusCode::OK,
        "workspace",
        p.workspaces.iter().filter(|w| w.account_id == account).map(|w| w.to_json()).collect(),
    )
}

async fn workspace_audiences(State(app): State<App>, headers: HeaderMap, Path(ws): Path<String>, q: Q) -> Response {
    let style = Style::Platform("audience");
    let account = match bearer(&app, &headers, style).and_then(|_| account_param(&app, &q, style)) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let p = lock(&app.platform);
    let Some(ws) =
        ws.parse::<i64>().ok().filter(|w| p.workspaces.iter().any(|x| x.id == *w && x.account_id == account))
    else {
        return error(
            style,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("Workspace {ws} was not found in account {account}."),
        );
    };
    let list: Vec<Value> = p
        .audiences
        .iter()
        .filter(|a| a.account_id == account && a.workspace_ids.contains(&ws))
        .map(|a| a.json.clone())
        .collect();
    json_response(StatusCode::OK, Value::Array(list))
}

// ---------------------------------------------------------------------------------------------
// Platform API v2: calculated attributes.

fn calculated_matches(
    app: &Shared,
    headers: &HeaderMap,
    ws: &str,
    q: &Q,
) -> Result<Vec<CalculatedAttribute>, Response> {
    let style = Style::Platform("calculated_attribute");
    bearer(app, headers, style)?;
    let p = lock(&app.platform);
    let Some(ws) = ws.parse::<i64>().ok().filter(|w| p.workspaces.iter().any(|x| x.id == *w)) else {
        return Err(error(style, StatusCode::NOT_FOUND, "NOT_FOUND", format!("Workspace {ws} was not found.")));
    };
    let name = query_map(q).and_then(|m| m.get("name")).map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty());
    Ok(p.calculated_attributes
        .iter()
        .filter(|c| c.workspace_id == ws && name.as_deref().is_none_or(|n| c.name.to_lowercase() == n))
        .cloned()
        .collect())
}

async fn list_calculated(State(app): State<App>, headers: HeaderMap, Path(ws): Path<String>, q: Q) -> Response {
    match calculated_matches(&app, &headers, &ws, &q) {
        Ok(list) => json_response(StatusCode::OK, Value::Array(list.into_iter().map(|c| c.json).collect())),
        Err(r) => r,
    }
}

async fn head_calculated(State(app): State<App>, headers: HeaderMap, Path(ws): Path<String>, q: Q) -> Response {
    match calculated_matches(&app, &headers, &ws, &q) {
        Ok(list) if !list.is_empty() => StatusCode::NO_CONTENT.into_response(),
        Ok(_) => StatusCode::NOT_FOUND.into_response(),
        Err(r) => r.status().into_response(),
    }
}

async fn get_calculated(
    State(app): State<App>,
    headers: HeaderMap,
    Path((ws, id)): Path<(String, String)>,
    q: Q,
) -> Response {
    let list = match calculated_matches(&app, &headers, &ws, &q) {
        Ok(l) => l,
        Err(r) => return r,
    };
    match list.into_iter().find(|c| c.id.to_string() == id) {
        Some(c) => json_response(StatusCode::OK, c.json),
        None => error(
            Style::Platform("calculated_attribute"),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("Calculated attribute {id} was not found in workspace {ws}."),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Events API.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Single,
    Bulk,
    Historical,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Single => "/v2/events",
            Endpoint::Bulk => "/v2/bulkevents",
            Endpoint::Historical => "/v2/bulkevents/historical",
        }
    }
}

async fn events_single(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    ingest(app, headers, body, Endpoint::Single).await
}

async fn events_bulk(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    ingest(app, headers, body, Endpoint::Bulk).await
}

async fn events_historical(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    ingest(app, headers, body, Endpoint::Historical).await
}

/// Checks `Authorization: Basic base64(key:secret)`; returns the API key.
fn basic_auth(app: &Shared, headers: &HeaderMap) -> Result<String, Response> {
    let unauthorized = |m: &str| {
        let mut r = error(Style::Events, StatusCode::UNAUTHORIZED, "UNAUTHORIZED", m);
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"mParticle\""));
        r
    };
    let forbidden = |m: &str| error(Style::Events, StatusCode::FORBIDDEN, "FORBIDDEN", m);
    let Some(h) = headers.get(header::AUTHORIZATION).filter(|h| !h.as_bytes().iter().all(u8::is_ascii_whitespace))
    else {
        return Err(unauthorized(
            "Missing Authorization header; the Events API expects HTTP Basic auth with the API key and secret.",
        ));
    };
    let Ok(h) = h.to_str() else {
        return Err(forbidden("The Authorization header is not valid text."));
    };
    let Some((scheme, encoded)) = h.trim().split_once(' ') else {
        return Err(forbidden("The Authorization header must be \"Basic base64(api_key:api_secret)\"."));
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(forbidden("The Authorization header must use the Basic scheme."));
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return Err(forbidden("The Basic credentials are not valid base64."));
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return Err(forbidden("The Basic credentials are not valid UTF-8."));
    };
    let Some((key, secret)) = decoded.split_once(':') else {
        return Err(forbidden("The Basic credentials must be \"api_key:api_secret\"."));
    };
    if !app.config.api_keys.iter().any(|(k, s)| k == key && s == secret) {
        return Err(forbidden("Invalid API key or secret."));
    }
    Ok(key.to_owned())
}

async fn ingest(app: App, headers: HeaderMap, body: Body, ep: Endpoint) -> Response {
    let api_key = match basic_auth(&app, &headers) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let reject = |n: u64, r: Response| {
        app.count_rejected(n);
        r
    };
    let bad = |m: String| error(Style::Events, StatusCode::BAD_REQUEST, "BAD_REQUEST", m);
    if let Some(ct) = headers.get(header::CONTENT_TYPE)
        && !ct.to_str().is_ok_and(|s| s.to_ascii_lowercase().contains("json"))
    {
        return reject(
            1,
            error(
                Style::Events,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                format!("Content-Type {ct:?} is not supported; send application/json."),
            ),
        );
    }
    let limit = app.config.max_request_bytes;
    let bytes = match read_body(&headers, body, limit).await {
        Ok(b) => b,
        Err(e) => return reject(1, body_error(Style::Events, e, limit)),
    };
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return reject(1, bad(format!("The request body is not valid JSON: {e}"))),
    };
    drop(bytes);
    let limits = &app.config.limits;
    let batches = match (ep, value) {
        (Endpoint::Single, v @ Value::Object(_)) => {
            if let Err(e) = validate::validate_batch_at(&v, limits, None, None) {
                return reject(1, bad(e.to_string()));
            }
            vec![v]
        }
        (Endpoint::Single, other) => {
            let hint = if other.is_array() { " (send arrays of batches to /v2/bulkevents)" } else { "" };
            return reject(
                1,
                bad(format!("$: expected one batch (a JSON object), found {}{hint}.", json_kind(&other))),
            );
        }
        (_, Value::Array(items)) => {
            let n = items.len() as u64;
            if items.len() > limits.max_bulk_batches {
                return reject(
                    n,
                    bad(format!(
                        "$: bulk request has {} batches; mParticle accepts at most {} per request.",
                        items.len(),
                        limits.max_bulk_batches
                    )),
                );
            }
            let historical = (ep == Endpoint::Historical).then(|| Historical { now_unix_ms: now_unix_ms() });
            for (i, b) in items.iter().enumerate() {
                if let Err(e) = validate::validate_batch_at(b, limits, Some(i), historical) {
                    return reject(n, bad(bulk_message(i, &e)));
                }
            }
            items
        }
        (_, other) => {
            return reject(1, bad(format!("$: expected a JSON array of batches, found {}.", json_kind(&other))));
        }
    };
    let admission = lock(&app.throttle).admit(&api_key, batches.len() as u64, Instant::now());
    match admission {
        Admission::Throttled { retry_after_secs } => {
            app.throttled_requests.fetch_add(1, Ordering::Relaxed);
            app.throttled_batches.fetch_add(batches.len() as u64, Ordering::Relaxed);
            let mut r = error(
                Style::Events,
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_REQUESTS",
                "Rate limit exceeded: the provisioned throughput of this workspace is used up.",
            );
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            r.headers_mut().insert("x-mp-rate-limit-exceeded", HeaderValue::from_static("workspace"));
            r
        }
        Admission::Admitted { percentage_used } => {
            app.record(&api_key, ep.path(), batches);
            let mut r = StatusCode::ACCEPTED.into_response();
            r.headers_mut().insert("x-mp-rate-limit-percentage-used", HeaderValue::from(percentage_used));
            r
        }
        Admission::Unlimited => {
            app.record(&api_key, ep.path(), batches);
            StatusCode::ACCEPTED.into_response()
        }
    }
}

fn bulk_message(i: usize, e: &BatchError) -> String {
    format!("Batch at index {i} is invalid (no batch of this request was accepted): {e}")
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Shared {
    fn count_rejected(&self, n: u64) {
        let mut e = lock(&self.events);
        e.received += n.max(1);
        e.rejected += n.max(1);
    }

    fn record(&self, api_key: &str, endpoint: &str, batches: Vec<Value>) {
        let now = now_unix_ms();
        let received_at = rfc3339(now);
        let mut guard = lock(&self.events);
        let e = &mut *guard;
        for batch in batches {
            e.received += 1;
            if let Some(id) = dedup_key(&batch)
                && !e.seen.entry(api_key.to_owned()).or_default().insert(id)
            {
                e.duplicates += 1;
                continue;
            }
            e.next_seq += 1;
            e.accepted += 1;
            e.batches.push(RecordedBatch {
                seq: e.next_seq,
                api_key: api_key.to_owned(),
                endpoint: endpoint.to_owned(),
                received_at: received_at.clone(),
                received_unix_ms: now,
                batch,
            });
        }
    }
}

/// The de-duplication key of a batch: its `source_request_id`, if any.
fn dedup_key(batch: &Value) -> Option<String> {
    match batch.get("source_request_id")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Emulator endpoints.

async fn health() -> Response {
    json_response(StatusCode::OK, json!({"status": "ok"}))
}

async fn emu_batches(State(app): State<App>, q: Q) -> Response {
    let since = query_map(&q).and_then(|m| m.get("since")).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let e = lock(&app.events);
    let start = e.batches.partition_point(|b| b.seq <= since);
    let body = serde_json::to_string(&e.batches[start..]).unwrap_or_else(|_| "[]".to_owned());
    drop(e);
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

async fn emu_stats(State(app): State<App>) -> Response {
    json_response(StatusCode::OK, serde_json::to_value(app.stats()).unwrap_or(Value::Null))
}

fn faults_json(rules: &[FaultRule]) -> Value {
    json!({"faults": serde_json::to_value(rules).unwrap_or(Value::Null)})
}

async fn emu_faults(State(app): State<App>) -> Response {
    let rules = lock(&app.faults).clone();
    json_response(StatusCode::OK, faults_json(&rules))
}

async fn emu_add_faults(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let bad = |m: String| json_response(StatusCode::BAD_REQUEST, json!({"error": m}));
    let bytes = match read_body(&headers, body, 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => return bad("could not read the request body (limit 1 MiB)".into()),
    };
    let v: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return bad(format!("body is not valid JSON: {e}")),
    };
    let items = match v {
        Value::Array(items) => items,
        Value::Object(mut m) if m.contains_key("faults") => match m.remove("faults") {
            Some(Value::Array(items)) => items,
            _ => return bad("\"faults\" must be an array of fault rules".into()),
        },
        other @ Value::Object(_) => vec![other],
        _ => return bad("expected a fault rule object or an array of them".into()),
    };
    let mut rules = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match FaultRule::from_json(item) {
            Ok(r) => rules.push(r),
            Err(e) => return bad(format!("fault rule {i}: {e}")),
        }
    }
    let all = app.add_faults(rules);
    json_response(StatusCode::OK, faults_json(&all))
}

async fn emu_clear_faults(State(app): State<App>) -> Response {
    app.set_faults(Vec::new());
    json_response(StatusCode::OK, faults_json(&[]))
}

async fn emu_throttle(State(app): State<App>) -> Response {
    json_response(StatusCode::OK, lock(&app.throttle).describe())
}

/// `{"batches_per_second": N}` sets every key's limit; `{"api_key": K, "batches_per_second": N}` one key's.
/// `null` or 0 turns the limit off.
async fn emu_set_throttle(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Setting {
        #[serde(default)]
        api_key: Option<String>,
        batches_per_second: Option<u32>,
    }
    let bad = |m: String| json_response(StatusCode::BAD_REQUEST, json!({"error": m}));
    let bytes = match read_body(&headers, body, 64 * 1024).await {
        Ok(b) => b,
        Err(_) => return bad("could not read the request body (limit 64 KiB)".into()),
    };
    let setting: Setting = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => {
            return bad(format!(
                "expected {{\"batches_per_second\": N}} or {{\"api_key\": \"K\", \"batches_per_second\": N}} (N a \
                 whole number or null): {e}"
            ));
        }
    };
    let mut throttle = lock(&app.throttle);
    match &setting.api_key {
        Some(key) => throttle.set_key(key, setting.batches_per_second),
        None => throttle.set_default(setting.batches_per_second),
    }
    json_response(StatusCode::OK, throttle.describe())
}

async fn emu_expire_tokens(State(app): State<App>) -> Response {
    let n = app.expire_tokens();
    json_response(StatusCode::OK, json!({"expired": n}))
}

async fn emu_reset(State(app): State<App>) -> Response {
    app.reset();
    json_response(StatusCode::OK, json!({"reset": true}))
}
