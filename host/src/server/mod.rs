//! The HTTP API of `flowhost serve` (axum), over a [`Service`]:
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/events` | one loyalty event, an array, or `{"events": [...]}`; 202 with the run ids once durable |
//! | `POST /v1/inbound/{connection}[/…]` | what a connection's sender posts, handed to its connector's `receive`; the connection's token, unless its connector verifies requests itself |
//! | `GET /v1/runs?customer=&flow=&status=&before=&limit=` | the workflow log, newest first |
//! | `GET /v1/runs/{id}` | one run with its trace |
//! | `GET /v1/queue?status=` | the resend queue: queued, leased, held and dead runs |
//! | `POST /v1/queue/{id}/retry`, `DELETE /v1/queue/{id}` | retry now / drop (kept for the record) |
//! | `GET /v1/outbox?after=&limit=` | events emitted for the platform, oldest first |
//! | `GET /v1/inbound?status=` | inbound messages, with what became of them (`failed` naming the runs that failed) |
//! | `POST /v1/connections/{name}/disconnect`, `.../reconnect` | stop / restart everything that uses a connection |
//! | `GET /healthz`, `GET /metrics` | liveness (store reachable), Prometheus metrics |
//!
//! Errors are JSON, `{"error": "...", "fields": [{"pointer", "message"}]}`, with 400 (malformed), 401 (token),
//! 404, 409, 413 (body over the limit) or 503 (store unavailable); none of them echoes a token.

pub mod config;

use crate::connector::ErrorKind;
use crate::connector::secrets::token_matches;
use crate::delivery::{
    AcceptError, ConnectionError, InboundError, InboundMessageView, InboundReceipt, LoyaltyEvent, Service,
};
use crate::inbound::InboundRequest;
use crate::store::{InboundFilter, InboundState, RunFilter, RunState, StoreError, StoredRun, now_ms, parse_states};
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::{Json, Router};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub service: Arc<Service>,
    pub max_body_bytes: usize,
    pub api_token: Option<Arc<SecretString>>,
}

/// The router of the whole API.
pub fn router(state: ApiState) -> Router {
    let admin = Router::new()
        .route("/v1/events", post(post_events))
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/queue", get(list_queue))
        .route("/v1/queue/{id}/retry", post(retry_run))
        .route("/v1/queue/{id}", delete(drop_run))
        .route("/v1/outbox", get(outbox))
        .route("/v1/inbound", get(list_inbound))
        .route("/v1/connections/{name}/disconnect", post(disconnect))
        .route("/v1/connections/{name}/reconnect", post(reconnect))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_api_token));
    Router::new()
        .merge(admin)
        .route("/v1/inbound/{connection}", any(inbound))
        .route("/v1/inbound/{connection}/{*path}", any(inbound_below))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "this route takes another method")
        })
        .with_state(state)
}

/// An error answer.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::Invalid { .. } => error(StatusCode::BAD_REQUEST, e.to_string()),
        StoreError::NotFound { .. } => error(StatusCode::NOT_FOUND, e.to_string()),
        other => {
            tracing::error!(error = %other, "store error");
            error(StatusCode::SERVICE_UNAVAILABLE, other.to_string())
        }
    }
}

async fn require_api_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if let Some(expected) = &state.api_token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !token_matches(presented, expected) {
            return error(StatusCode::UNAUTHORIZED, "missing or wrong API token: send `Authorization: Bearer <token>`");
        }
    }
    next.run(request).await
}

/// Reads a body within the size limit: 413 over it, 400 when it could not be read to its end.
async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, Response> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over_limit = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .any(|e| e.is::<http_body_util::LengthLimitError>());
        if over_limit {
            error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than the limit of {limit} bytes"))
        } else {
            error(StatusCode::BAD_REQUEST, format!("the body could not be read: {e}"))
        }
    })
}

/// Reads a JSON body within the size limit: 413 over it, 400 when it is not JSON (with where it broke).
async fn json_body(body: Body, limit: usize) -> Result<Value, Response> {
    let bytes = read_body(body, limit).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("the body is not valid JSON: {e}")))
}

async fn post_events(State(state): State<ApiState>, body: Body) -> Response {
    let value = match json_body(body, state.max_body_bytes).await {
        Ok(value) => value,
        Err(response) => return response,
    };
    let list = match value {
        Value::Array(list) => list,
        Value::Object(mut object) if object.contains_key("events") && !object.contains_key("event") => {
            match object.remove("events") {
                Some(Value::Array(list)) => list,
                _ => return error(StatusCode::BAD_REQUEST, "/events: must be an array of events"),
            }
        }
        object @ Value::Object(_) => vec![object],
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "the body must be an event object, an array of events, or {\"events\": [...]}",
            );
        }
    };
    let mut events = Vec::with_capacity(list.len());
    for (index, item) in list.into_iter().enumerate() {
        match serde_json::from_value::<LoyaltyEvent>(item) {
            Ok(event) => events.push(event),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("/{index}: {e}")),
        }
    }
    if events.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no events in the request");
    }
    match state.service.accept(&events).await {
        Ok(accepted) => (StatusCode::ACCEPTED, Json(json!({"accepted": accepted}))).into_response(),
        Err(AcceptError::Invalid(fields)) => (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": format!("{} problem(s) with the events; nothing was accepted", fields.len()),
                "fields": fields.iter().map(|f| json!({"pointer": f.pointer, "message": f.message})).collect::<Vec<_>>(),
            })),
        )
            .into_response(),
        Err(AcceptError::Queue(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn inbound(state: State<ApiState>, Path(connection): Path<String>, request: Request) -> Response {
    receive(state, connection, String::new(), request).await
}

async fn inbound_below(
    state: State<ApiState>,
    Path((connection, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    receive(state, connection, format!("/{path}"), request).await
}

/// An inbound request: admitted (connection, token) before its body is read, then handed to the connection's
/// connector, its events stored, and the connector's answer given.
async fn receive(State(state): State<ApiState>, connection: String, path: String, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let admission = match state.service.admit_inbound(&connection, authorization) {
        Ok(admission) => admission,
        Err(e) => return inbound_error(e),
    };
    let body = match read_body(body, admission.body_limit(state.max_body_bytes)).await {
        Ok(bytes) => Vec::from(bytes),
        Err(response) => return response,
    };
    // The connection's token is the host's alone: it never reaches the connector. An `Authorization` that is not
    // the token (a connection without one, whose connector verifies requests itself) is the sender's own
    // credential, e.g. a signature, and is handed over with the other headers.
    let token_sent = admission.authenticated();
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| !(token_sent && *name == header::AUTHORIZATION))
        .map(|(name, value)| (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let request = InboundRequest {
        method: parts.method.as_str().to_string(),
        path,
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers,
        body,
        authenticated: admission.authenticated(),
        received_at_ms: now_ms(),
    };
    match state.service.receive(&admission, request).await {
        Ok(receipt) => connector_answer(receipt),
        Err(e) => inbound_error(e),
    }
}

/// Headers of a connector's answer that are the server's to set: framing and connection management.
const SERVER_HEADERS: [HeaderName; 5] =
    [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::CONNECTION, header::UPGRADE, header::TRAILER];

/// The connector's answer as an HTTP response, with the stored message's id in `flowhost-inbound-id`. A
/// header the connector made up that HTTP cannot carry, or one that is the server's to set, is left out.
fn connector_answer(receipt: InboundReceipt) -> Response {
    let status = StatusCode::from_u16(receipt.response.status).unwrap_or(StatusCode::OK);
    let mut response = Response::new(Body::from(receipt.response.body));
    *response.status_mut() = status;
    for (name, value) in &receipt.response.headers {
        match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            (Ok(name), Ok(value)) if !SERVER_HEADERS.contains(&name) => {
                response.headers_mut().append(name, value);
            }
            _ => tracing::warn!(header = %name, "a header of the connector's answer is left out"),
        }
    }
    if let Some(id) = receipt.id.as_deref().and_then(|id| HeaderValue::from_str(id).ok()) {
        response.headers_mut().insert("flowhost-inbound-id", id);
    }
    response
}

fn inbound_error(e: InboundError) -> Response {
    match e {
        InboundError::UnknownConnection(_) | InboundError::NoInboundSide { .. } => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        InboundError::Unauthorized(_) => error(StatusCode::UNAUTHORIZED, e.to_string()),
        InboundError::Disconnected(_) => error(StatusCode::FORBIDDEN, e.to_string()),
        InboundError::Malformed(ref fields) => (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": e.to_string(),
                "fields": fields.iter().map(|f| json!({"pointer": f.pointer, "message": f.message})).collect::<Vec<_>>(),
            })),
        )
            .into_response(),
        InboundError::Connector(ref failure) => {
            // Whether the sender should come back: a throttled or unreachable service may take it later.
            let status = match failure.kind() {
                ErrorKind::RateLimited | ErrorKind::Transient => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            // The detail (a panic message, a trap) is the operator's, in the log; the sender learns the kind.
            tracing::warn!(error = %e, "an inbound request failed in its connector");
            error(status, format!("the connector could not receive the request ({})", failure.kind()))
        }
        InboundError::Store(e) => store_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunQuery {
    customer: Option<String>,
    flow: Option<String>,
    connection: Option<String>,
    /// Comma-separated states.
    status: Option<String>,
    before: Option<i64>,
    #[serde(default)]
    limit: usize,
}

impl RunQuery {
    /// The store filter; the error names a bad status.
    fn filter(self, default_states: &[RunState]) -> Result<RunFilter, String> {
        let statuses = match &self.status {
            Some(list) => parse_states(list).map_err(|e| e.to_string())?,
            None => default_states.to_vec(),
        };
        Ok(RunFilter {
            customer: self.customer,
            flow_id: self.flow,
            ordering_key: None,
            connection: self.connection,
            statuses,
            before_seq: self.before,
            limit: self.limit,
        })
    }
}

/// A run in a listing: everything but its trace and checkpoint.
fn run_summary(run: &StoredRun) -> Value {
    json!({
        "id": run.id, "seq": run.seq, "flow": run.flow_id, "flowVersion": run.flow_version,
        "customer": run.customer, "status": run.status, "attempts": run.attempts,
        "nextAttemptAt": run.next_attempt_at, "lastError": run.last_error,
        "connections": run.connections, "createdAt": run.created_at, "updatedAt": run.updated_at,
    })
}

fn run_page(runs: &[StoredRun]) -> Value {
    json!({"runs": runs.iter().map(run_summary).collect::<Vec<_>>(), "next": runs.last().map(|r| r.seq)})
}

async fn list_runs(
    State(state): State<ApiState>,
    query: Result<Query<RunQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "bad query: use customer, flow, connection, status, before, limit");
    };
    let filter = match query.filter(&[]) {
        Ok(filter) => filter,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match state.service.store().list(&filter).await {
        Ok(runs) => Json(run_page(&runs)).into_response(),
        Err(e) => store_error(e),
    }
}

async fn get_run(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match state.service.store().get(&id).await {
        Ok(Some(run)) => {
            let mut value = run_summary(&run);
            value["event"] = run.event;
            // A run not ended yet shows its progress so far; one that succeeded with `delivery.traces =
            // "failures"` has no trace, and its last checkpoint would be mistaken for one.
            value["trace"] = match (run.trace, run.checkpoint) {
                (Some(trace), _) => trace,
                (None, Some(checkpoint)) if run.status != RunState::Succeeded => json!({"checkpoint": checkpoint}),
                _ => Value::Null,
            };
            Json(value).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("run {id} not found")),
        Err(e) => store_error(e),
    }
}

async fn list_queue(
    State(state): State<ApiState>,
    query: Result<Query<RunQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "bad query: use customer, flow, connection, status, before, limit");
    };
    let filter = match query.filter(&[RunState::Queued, RunState::Leased, RunState::Held, RunState::Dead]) {
        Ok(filter) => filter,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match state.service.store().list(&filter).await {
        Ok(runs) => Json(run_page(&runs)).into_response(),
        Err(e) => store_error(e),
    }
}

async fn retry_run(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match state.service.store().retry_now(&id).await {
        Ok(true) => {
            state.service.wake();
            Json(json!({"id": id, "retried": true})).into_response()
        }
        Ok(false) => {
            error(StatusCode::NOT_FOUND, format!("run {id} is not in the queue (dead, failed, held or queued)"))
        }
        Err(e) => store_error(e),
    }
}

async fn drop_run(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match state.service.store().drop_run(&id).await {
        Ok(true) => Json(json!({"id": id, "dropped": true})).into_response(),
        Ok(false) => {
            error(StatusCode::NOT_FOUND, format!("run {id} is not in the queue (queued, leased, held or dead)"))
        }
        Err(e) => store_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboxQuery {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    limit: usize,
}

async fn outbox(
    State(state): State<ApiState>,
    query: Result<Query<OutboxQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else { return error(StatusCode::BAD_REQUEST, "bad query: use after, limit") };
    match state.service.store().outbox(query.after, query.limit).await {
        Ok(events) => {
            let next = events.last().map(|e| e.seq).unwrap_or(query.after);
            Json(json!({"events": events, "next": next})).into_response()
        }
        Err(e) => store_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InboundQuery {
    connection: Option<String>,
    status: Option<String>,
    before: Option<i64>,
    #[serde(default)]
    limit: usize,
}

fn inbound_summary(message: &InboundMessageView) -> Value {
    let stored = &message.message;
    json!({
        "id": stored.id, "seq": stored.seq, "connection": stored.connection, "source": stored.source,
        "externalId": stored.external_id, "status": message.status, "detail": stored.detail,
        "runIds": stored.run_ids, "failedRuns": message.failed_runs, "receivedAt": stored.received_at,
    })
}

async fn list_inbound(
    State(state): State<ApiState>,
    query: Result<Query<InboundQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "bad query: use connection, status, before, limit");
    };
    let statuses = match &query.status {
        Some(list) => match parse_states::<InboundState>(list) {
            Ok(statuses) => statuses,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        },
        None => Vec::new(),
    };
    let filter = InboundFilter { connection: query.connection, statuses, before_seq: query.before, limit: query.limit };
    match state.service.inbound_messages(&filter).await {
        Ok((messages, next)) => {
            Json(json!({"messages": messages.iter().map(inbound_summary).collect::<Vec<_>>(), "next": next}))
                .into_response()
        }
        Err(e) => store_error(e),
    }
}

fn connection_error(e: ConnectionError) -> Response {
    match e {
        ConnectionError::Unknown(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        ConnectionError::Incomplete { .. } => error(StatusCode::CONFLICT, e.to_string()),
        ConnectionError::Store(e) => store_error(e),
    }
}

async fn disconnect(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    match state.service.disconnect(&name).await {
        Ok(hold) => Json(json!({
            "connection": name, "disconnected": true,
            "held": {"runs": hold.runs, "inbound": hold.inbound},
            "stoppedFlows": state.service.flows().1.into_iter().filter(|(_, c)| *c == name).map(|(f, _)| f).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => connection_error(e),
    }
}

async fn reconnect(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    match state.service.reconnect(&name).await {
        Ok(release) => Json(json!({
            "connection": name, "disconnected": false,
            "released": {"runs": release.runs, "inbound": release.inbound},
        }))
        .into_response(),
        Err(e) => connection_error(e),
    }
}

async fn healthz(State(state): State<ApiState>) -> Response {
    match state.service.store().counts().await {
        Ok(counts) => {
            let (running, stopped) = state.service.flows();
            Json(json!({"status": "ok", "flows": running, "stoppedFlows": stopped, "queue": counts.runs}))
                .into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("the store is not reachable: {e}")),
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    match state.service.render_metrics().await {
        Ok(text) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(e) => store_error(e),
    }
}
