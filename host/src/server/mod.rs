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
//! | `POST /v1/queue/retry?customer=&flow=`, `POST /v1/queue/drop?...` | retry / drop every dead run of a customer, a flow, or both |
//! | `GET /v1/outbox?after=&limit=` | events emitted for the platform, oldest first |
//! | `GET /v1/inbound?status=` | inbound messages, with what became of them (`failed` naming the runs that failed) |
//! | `POST /v1/connections/{name}/disconnect`, `.../reconnect` | stop / restart everything that uses a connection |
//! | `GET /healthz`, `GET /metrics` | liveness (store reachable and intact), Prometheus metrics |
//! | `GET /ui/…` | the web console ([`console`]): pages, and forms that post to `/ui/…` |
//!
//! Errors are JSON, `{"error": "...", "fields": [{"pointer", "message"}]}`, with 400 (malformed), 401 (token),
//! 404, 409, 413 (body over the limit) or 503 (store unavailable); none of them echoes a token.

pub mod config;
mod console;
pub mod limits;
mod openapi;

pub use limits::{ServerLimits, serve};
pub use openapi::openapi_document;

use crate::connector::secrets::token_matches;
use crate::connector::{ErrorKind, FieldError};
use crate::delivery::{
    AcceptError, AcceptedEvent, ConnectionError, FailedRun, InboundError, InboundMessageView, InboundReceipt,
    LoyaltyEvent, Service,
};
use crate::inbound::InboundRequest;
use crate::store::{
    BulkAction, HeldBy, InboundFilter, InboundState, MAX_LIST_LIMIT, OutboxEvent, RunCounts, RunFilter, RunState,
    StoreError, now_ms, parse_states,
};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, delete, get, on, post};
use axum::{Json, Router};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub service: Arc<Service>,
    pub max_body_bytes: usize,
    pub api_token: Option<Arc<SecretString>>,
    /// A token for `/metrics` alone (a scraper need not hold the API token); `/metrics` also takes the API token.
    pub metrics_token: Option<Arc<SecretString>>,
}

/// The router of the whole API.
pub fn router(state: ApiState) -> Router {
    let admin = Router::new()
        .route("/v1/events", post(post_events))
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/queue", get(list_queue))
        .route("/v1/queue/retry", post(bulk_retry))
        .route("/v1/queue/drop", post(bulk_drop))
        .route("/v1/queue/{id}/retry", post(retry_run))
        .route("/v1/queue/{id}", delete(drop_run))
        .route("/v1/outbox", get(outbox))
        .route("/v1/inbound", get(list_inbound))
        .route("/v1/connections/{name}/disconnect", post(disconnect))
        .route("/v1/connections/{name}/reconnect", post(reconnect))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_api_token));
    Router::new()
        .merge(admin)
        .route("/v1/inbound/{connection}", on(INBOUND_METHODS, inbound))
        .route("/v1/inbound/{connection}/{*path}", on(INBOUND_METHODS, inbound_below))
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(console::router(&state))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "this route takes another method")
        })
        .layer(axum::middleware::from_fn(refuse_cross_site))
        .with_state(state)
}

/// Whether a request comes from a web page of another origin, which a browser says in `Origin`: the service's
/// own origin is the host the request was sent to (`Host`, or the authority of an HTTP/2 request).
fn cross_origin(request: &Request) -> Option<String> {
    let origin = request.headers().get(header::ORIGIN)?;
    let own = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default();
    let origin_text = String::from_utf8_lossy(origin.as_bytes()).into_owned();
    let same = origin_text
        .strip_prefix("http://")
        .or_else(|| origin_text.strip_prefix("https://"))
        .is_some_and(|authority| !own.is_empty() && authority.eq_ignore_ascii_case(own));
    (!same).then_some(origin_text)
}

/// Whether a request to `/v1` that may change something carries what it says it does: JSON, or nothing. A web page
/// of another origin can send a form or `text/plain` without asking the browser first; it cannot send JSON so.
fn unsupported_content_type(request: &Request) -> Option<String> {
    let path = request.uri().path();
    let writes = matches!(request.method().as_str(), "POST" | "PUT" | "PATCH");
    if !writes || !path.starts_with("/v1/") || path.starts_with("/v1/inbound/") {
        return None;
    }
    match request.headers().get(header::CONTENT_TYPE) {
        Some(value) => {
            let text = value.to_str().unwrap_or_default();
            let essence = text.split(';').next().unwrap_or_default().trim();
            (!essence.eq_ignore_ascii_case("application/json")).then(|| text.to_string())
        }
        None => {
            let headers = request.headers();
            let empty = !headers.contains_key(header::TRANSFER_ENCODING)
                && headers.get(header::CONTENT_LENGTH).is_none_or(|length| length.as_bytes() == b"0");
            (!empty).then(|| "none".to_string())
        }
    }
}

/// Refuses what a web page of another origin could make a browser send: requests whose `Origin` is not the
/// service's own (403), and writes to `/v1` whose body is not JSON (415). Inbound routes take what their
/// connection's sender posts, from wherever it is: their connector checks them.
async fn refuse_cross_site(request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with("/v1/inbound/")
        && let Some(origin) = cross_origin(&request)
    {
        return error(
            StatusCode::FORBIDDEN,
            format!("cross-origin requests are refused: Origin `{origin}` is not this service's own"),
        );
    }
    if let Some(content_type) = unsupported_content_type(&request) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("the body must be JSON, sent as `Content-Type: application/json` (it is {content_type})"),
        );
    }
    next.run(request).await
}

/// Whether a request carries `token` as `Authorization: Bearer <token>`, compared in constant time.
fn bearer_matches(request: &Request, token: &SecretString) -> bool {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    token_matches(presented, token)
}

/// Every error answer of the API.
#[derive(Debug, Serialize, ToSchema)]
struct ErrorBody {
    /// What is wrong, for people.
    error: String,
    /// The fields at fault, by JSON pointer, when there are some.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    fields: Vec<FieldError>,
}

/// An error answer.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    error_with_fields(status, message, Vec::new())
}

fn error_with_fields(status: StatusCode, message: impl Into<String>, fields: Vec<FieldError>) -> Response {
    (status, Json(ErrorBody { error: message.into(), fields })).into_response()
}

/// A page size within what the store lists at once, or why not, with what is accepted.
fn page_limit(limit: u32) -> Result<usize, String> {
    match usize::try_from(limit) {
        Ok(limit) if limit <= MAX_LIST_LIMIT => Ok(limit),
        _ => Err(format!("limit: {limit} is too large; take 1 to {MAX_LIST_LIMIT}, or 0 for the default")),
    }
}

/// A query string that does not parse: what broke, and the parameters the route takes.
fn bad_query(rejection: QueryRejection, accepted: &str) -> Response {
    error(StatusCode::BAD_REQUEST, format!("bad query: {}; this route takes {accepted}", rejection.body_text()))
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
    if let Some(expected) = &state.api_token
        && !bearer_matches(&request, expected)
    {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong API token: send `Authorization: Bearer <token>`");
    }
    next.run(request).await
}

/// Reads a body within the size limit: 413 over it, 400 when it could not be read to its end.
async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, Response> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over_limit = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .any(|e| e.is::<http_body_util::LengthLimitError>());
        let timed_out = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .any(|e| e.is::<limits::BodyTimeout>());
        if timed_out {
            error(StatusCode::REQUEST_TIMEOUT, format!("{e}"))
        } else if over_limit {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than the limit of {}", crate::ByteSize::from(limit)),
            )
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

/// The body of `POST /v1/events`: one event, an array of events, or `{"events": [...]}`.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
enum EventsRequest {
    One(LoyaltyEvent),
    Many(EventList),
    Wrapped(EventsWrapped),
}

#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
struct EventsWrapped {
    events: EventList,
}

/// One event or more (utoipa derives no `minItems` for a variant's array).
struct EventList;

impl utoipa::PartialSchema for EventList {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ArrayBuilder::new()
            .items(utoipa::openapi::Ref::from_schema_name(LoyaltyEvent::name()))
            .min_items(Some(1))
            .into()
    }
}

impl ToSchema for EventList {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        schemas.push((LoyaltyEvent::name().into(), <LoyaltyEvent as utoipa::PartialSchema>::schema()));
        LoyaltyEvent::schemas(schemas);
    }
}

/// What became of each accepted event, in the order sent.
#[derive(Debug, Serialize, ToSchema)]
struct AcceptedEvents {
    accepted: Vec<AcceptedEvent>,
}

/// Accepts loyalty events: all of them, durably, or none.
#[utoipa::path(post, path = "/v1/events", tag = "events", request_body = EventsRequest,
    responses(
        (status = 202, description = "Durably accepted, with the runs each event started", body = AcceptedEvents),
        (status = 400, description = "Not JSON, not events, or events that do not fit their flows' trigger \
            schemas (each field named); nothing was accepted", body = ErrorBody),
        (status = 401, description = "A missing or wrong API token", body = ErrorBody),
        (status = 413, description = "The body is over the limit", body = ErrorBody),
        (status = 503, description = "The store cannot take them now; nothing was accepted", body = ErrorBody),
    ))]
async fn post_events(State(state): State<ApiState>, body: Body) -> Response {
    let value = match json_body(body, state.max_body_bytes).await {
        Ok(value) => value,
        Err(response) => return response,
    };
    let list = match value {
        Value::Array(list) => list,
        Value::Object(mut object) if object.contains_key("events") && !object.contains_key("event") => {
            if let Some(other) = object.keys().find(|key| *key != "events") {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("/{other}: unknown property; the body is an event, an array, or {{\"events\": [...]}}"),
                );
            }
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
        Ok(accepted) => (StatusCode::ACCEPTED, Json(AcceptedEvents { accepted })).into_response(),
        Err(AcceptError::Invalid(fields)) => error_with_fields(
            StatusCode::BAD_REQUEST,
            format!("{} problem(s) with the events; nothing was accepted", fields.len()),
            fields,
        ),
        Err(AcceptError::Queue(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// The methods a connection's sender may use: what webhooks and their verification handshakes send.
const INBOUND_METHODS: MethodFilter =
    MethodFilter::GET.or(MethodFilter::POST).or(MethodFilter::PUT).or(MethodFilter::PATCH).or(MethodFilter::DELETE);

/// What a connection's sender sends, handed to the connection's connector with the method, the path below the
/// connection (`/v1/inbound/{connection}/...`), the query, the headers and the body; its answer is the
/// connector's.
#[utoipa::path(method(get, post, put, patch, delete), path = "/v1/inbound/{connection}", tag = "inbound",
    params(("connection" = String, Path, description = "The connection the sender posts to")),
    request_body(content = String, description = "Whatever the connection's sender posts", content_type = "*/*"),
    responses(
        (status = "2XX", description = "The connector's answer (its status, headers and body); \
            `flowhost-inbound-id` names the stored message"),
        (status = 400, description = "A request the connector refused as malformed", body = ErrorBody),
        (status = 401, description = "A missing or wrong token", body = ErrorBody),
        (status = 403, description = "The connection is disconnected", body = ErrorBody),
        (status = 404, description = "No such connection, or it has no inbound side", body = ErrorBody),
        (status = 413, description = "The body is over the limit", body = ErrorBody),
        (status = 503, description = "The connector's service or the store cannot take it now; send it again",
            body = ErrorBody),
    ))]
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
        InboundError::Malformed(ref fields) => {
            error_with_fields(StatusCode::BAD_REQUEST, e.to_string(), fields.clone())
        }
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

/// Which runs to list, newest first.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RunQuery {
    /// Only this customer's runs.
    customer: Option<String>,
    /// Only this flow's runs.
    flow: Option<String>,
    /// Only the runs of flows that use this connection.
    connection: Option<String>,
    /// Only these states, comma-separated: queued, leased, succeeded, failed, dead, held, dropped.
    #[param(
        pattern = r"^ *(queued|leased|succeeded|failed|dead|held|dropped) *(, *(queued|leased|succeeded|failed|dead|held|dropped) *)*$"
    )]
    status: Option<String>,
    /// Only runs older than this `seq`: the `next` of the previous page.
    before: Option<i64>,
    /// At most this many: 1 to 1000, or 0 for the default, 100.
    #[serde(default)]
    #[param(minimum = 0, maximum = 1000)]
    limit: u32,
}

const RUN_QUERY: &str = "customer, flow, connection, status, before and limit";

impl RunQuery {
    /// The store filter; the error names a bad status or limit.
    fn filter(self, default_states: &[RunState]) -> Result<RunFilter, String> {
        let statuses = match &self.status {
            Some(list) => parse_states(list).map_err(|e| e.to_string())?,
            None => default_states.to_vec(),
        };
        let limit = page_limit(self.limit)?;
        Ok(RunFilter {
            customer: self.customer,
            flow_id: self.flow,
            ordering_key: None,
            connection: self.connection,
            statuses,
            before_seq: self.before,
            created_from: None,
            created_until: None,
            limit,
        })
    }
}

/// A run in a listing: everything but its event, trace and checkpoint.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct RunSummary {
    id: String,
    seq: i64,
    flow: String,
    flow_version: String,
    customer: Option<String>,
    status: RunState,
    /// Attempts made since the run was enqueued or last retried by an operator (earlier ones are in its trace).
    attempts: u32,
    /// For a run that will be tried again: when it is due (or when its lease ends).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<Value>,
    /// For a queued or held run that waits behind an earlier run of its customer and flow: that run.
    #[serde(skip_serializing_if = "Option::is_none")]
    held_by: Option<HeldBy>,
    connections: Vec<String>,
    created_at: i64,
    updated_at: i64,
}

impl RunSummary {
    fn new(run: &crate::store::RunSummary, held_by: Option<HeldBy>) -> Self {
        RunSummary {
            id: run.id.clone(),
            seq: run.seq,
            flow: run.flow_id.clone(),
            flow_version: run.flow_version.clone(),
            customer: run.customer.clone(),
            status: run.status,
            attempts: run.attempts_made(),
            next_attempt_at: run.next_attempt(),
            last_error: run.error_to_show().cloned(),
            held_by,
            connections: run.connections.clone(),
            created_at: run.created_at,
            updated_at: run.updated_at,
        }
    }
}

/// A page of runs, newest first; `next` is the `before` of the next page.
#[derive(Debug, Serialize, ToSchema)]
struct RunPage {
    runs: Vec<RunSummary>,
    next: Option<i64>,
}

/// The runs with what each waits behind.
async fn summaries(state: &ApiState, runs: &[crate::store::RunSummary]) -> Result<Vec<RunSummary>, StoreError> {
    let ids: Vec<String> = runs.iter().map(|run| run.id.clone()).collect();
    let mut held_by = state.service.store().held_by(&ids).await?;
    Ok(runs.iter().map(|run| RunSummary::new(run, held_by.remove(&run.id))).collect())
}

async fn run_page(state: &ApiState, filter: &RunFilter) -> Response {
    let page = async {
        let runs = state.service.store().list_summaries(filter).await?;
        Ok(RunPage { runs: summaries(state, &runs).await?, next: runs.last().map(|r| r.seq) })
    };
    match page.await {
        Ok(page) => Json(page).into_response(),
        Err(e) => store_error(e),
    }
}

/// The workflow log: runs, newest first, paged.
#[utoipa::path(get, path = "/v1/runs", tag = "runs", params(RunQuery),
    responses(
        (status = 200, description = "A page of runs", body = RunPage),
        (status = 400, description = "A bad query, named", body = ErrorBody),
        (status = 401, description = "A missing or wrong API token", body = ErrorBody),
        (status = 503, description = "The store is not reachable", body = ErrorBody),
    ))]
async fn list_runs(State(state): State<ApiState>, query: Result<Query<RunQuery>, QueryRejection>) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return bad_query(rejection, RUN_QUERY),
    };
    match query.filter(&[]) {
        Ok(filter) => run_page(&state, &filter).await,
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

/// One run: its summary, event and trace.
#[derive(Debug, Serialize, ToSchema)]
struct RunDetail {
    #[serde(flatten)]
    summary: RunSummary,
    event: Value,
    /// The run's trace; for a run not ended yet, `{"checkpoint": ...}`, its progress so far.
    trace: Value,
}

/// One run, with its event and trace.
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "runs", params(("id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run", body = RunDetail),
        (status = 401, description = "A missing or wrong API token", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 503, description = "The store is not reachable", body = ErrorBody),
    ))]
async fn get_run(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let run = match state.service.store().get(&id).await {
        Ok(Some(run)) => run,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("run {id} not found")),
        Err(e) => return store_error(e),
    };
    let mut summary = match summaries(&state, &[run.summary()]).await {
        Ok(summary) => summary,
        Err(e) => return store_error(e),
    };
    // A run not ended yet shows its progress so far; one that succeeded with `delivery.traces = "failures"` has
    // no trace, and its last checkpoint would be mistaken for one.
    let trace = match (run.trace, run.checkpoint) {
        (Some(trace), _) => trace,
        (None, Some(checkpoint)) if run.status != RunState::Succeeded => json!({"checkpoint": checkpoint}),
        _ => Value::Null,
    };
    Json(RunDetail { summary: summary.remove(0), event: run.event, trace }).into_response()
}

/// The resend queue: queued, leased, held and dead runs (other states with `status`), newest first.
#[utoipa::path(get, path = "/v1/queue", tag = "queue", params(RunQuery),
    responses(
        (status = 200, description = "A page of runs", body = RunPage),
        (status = 400, description = "A bad query, named", body = ErrorBody),
        (status = 401, description = "A missing or wrong API token", body = ErrorBody),
        (status = 503, description = "The store is not reachable", body = ErrorBody),
    ))]
async fn list_queue(State(state): State<ApiState>, query: Result<Query<RunQuery>, QueryRejection>) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return bad_query(rejection, RUN_QUERY),
    };
    match query.filter(&[RunState::Queued, RunState::Leased, RunState::Held, RunState::Dead]) {
        Ok(filter) => run_page(&state, &filter).await,
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

/// Which dead runs an operator's bulk action takes: those of a customer, of a flow, of both, or all of them.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct BulkQuery {
    /// Every dead run of this customer.
    customer: Option<String>,
    /// Every dead run of this flow.
    flow: Option<String>,
}

/// What a bulk retry or drop did.
#[derive(Debug, Serialize, ToSchema)]
struct BulkResult {
    /// How many dead runs it retried or dropped.
    count: usize,
    /// Their ids, newest first.
    ids: Vec<String>,
}

/// Retries every dead run of a customer, a flow, or both (every dead run when neither is given): due now, with a
/// fresh count of attempts.
#[utoipa::path(post, path = "/v1/queue/retry", tag = "queue", params(BulkQuery),
    responses(
        (status = 200, description = "The runs retried", body = BulkResult),
        (status = 400, description = "A bad query, named", body = ErrorBody),
        (status = 401, description = "A missing or wrong API token", body = ErrorBody),
        (status = 503, description = "The store is not reachable", body = ErrorBody),
    ))]
async fn bulk_retry(state: State<ApiState>, query: Result<Query<BulkQuery>, QueryRejection>) -> Response {
    bulk(state, query, BulkAction::Retry).await
}

/// Drops every dead run of a customer, a flow, or both (every dead run when neither is given); they are kept for
/// the record as `dropped`.
#[utoipa::path(post, path = "/v1/queue/drop", tag = "queue", params(BulkQuery),
    responses(
        (status = 200, description = "The runs dropped", body = BulkResult),
        (status = 400, description = "A bad query, named", body = ErrorBody),
        (status = 401, description = "A missing or wrong API token", body = ErrorBody),
        (status = 503, description = "The store is not reachable", body = ErrorBody),
    ))]
async fn bulk_drop(state: State<ApiState>, query: Result<Query<BulkQuery>, QueryRejection>) -> Response {
    bulk(state, query, BulkAction::Drop).await
}

async fn bulk(
    State(state): State<ApiState>,
    query: Result<Query<BulkQuery>, QueryRejection>,
    action: BulkAction,
) -> Response {
    let filter = match query {
        Ok(Query(BulkQuery { customer, flow })) => RunFilter { customer, flow_id: flow, ..RunFilter::default() },
        Err(rejection) => return bad_query(rejection, "customer and flow"),
    };
    match state.service.store().bulk_dead(&filter, action).await {
        Ok(ids) => {
            if action == BulkAction::Retry && !ids.is_empty() {
                state.service.wake();
            }
            Json(BulkResult { count: ids.len(), ids }).into_response()
        }
        Err(e) => store_error(e),
    }
}

/// What an operator's action on one run did.
#[derive(Debug, Serialize, ToSchema)]
struct RunAction {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    retried: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped: Option<bool>,
}

/// Makes a dead, failed, held or waiting run due now, with a fresh count of attempts.
#[utoipa::path(post, path = "/v1/queue/{id}/retry", tag = "queue",
    params(("id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run is due now", body = RunAction),
        (status = 401, description = "A missing or wrong API token", body = ErrorBody),
        (status = 404, description = "No such run in a state that can be retried", body = ErrorBody),
        (status = 503, description = "The store is not reachable", body = ErrorBody),
    ))]
async fn retry_run(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match state.service.store().retry_now(&id).await {
        Ok(true) => {
            state.service.wake();
            Json(RunAction { id, retried: Some(true), dropped: None }).into_response()
        }
        Ok(false) => {
            error(StatusCode::NOT_FOUND, format!("run {id} is not in the queue (dead, failed, held or queued)"))
        }
        Err(e) => store_error(e),
    }
}

/// Drops a queued, leased, held or dead run (kept for the record as `dropped`).
#[utoipa::path(delete, path = "/v1/queue/{id}", tag = "queue",
    params(("id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run is dropped", body = RunAction),
        (status = 401, description = "A missing or wrong API token", body = ErrorBody),
        (status = 404, description = "No such run in the queue", body = ErrorBody),
        (status = 503, description = "The store is not reachable", body = ErrorBody),
    ))]
async fn drop_run(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match state.service.store().drop_run(&id).await {
        Ok(true) => Json(RunAction { id, retried: None, dropped: Some(true) }).into_response(),
        Ok(false) => {
            error(StatusCode::NOT_FOUND, format!("run {id} is not in the queue (queued, leased, held or dead)"))
        }
        Err(e) => store_error(e),
    }
}

/// Which outbox events to read, oldest first.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct OutboxQuery {
    /// Only events after this `seq`: the `next` of the previous read.
    #[serde(default)]
    after: i64,
    /// At most this many: 1 to 1000, or 0 for the default, 100.
    #[serde(default)]
    #[param(minimum = 0, maximum = 1000)]
    limit: u32,
}

/// Events emitted for the platform, oldest first.
#[derive(Debug, Serialize, ToSchema)]
struct OutboxPage {
    events: Vec<OutboxEvent>,
    /// The `after` of the next read.
    next: i64,
}

/// The outbox: loyalty events emitted by flows, oldest first.
#[utoipa::path(get, path = "/v1/outbox", tag = "outbox", params(OutboxQuery),
    responses(
        (status = 200, description = "The events after `after`", body = OutboxPage),
        (status = 400, description = "A bad query, named", body = ErrorBody),
        (status = 401, description = "A missing or wrong API token", body = ErrorBody),
        (status = 503, description = "The store is not reachable", body = ErrorBody),
    ))]
async fn outbox(State(state): State<ApiState>, query: Result<Query<OutboxQuery>, QueryRejection>) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return bad_query(rejection, "after and limit"),
    };
    let limit = match page_limit(query.limit) {
        Ok(limit) => limit,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match state.service.store().outbox(query.after, limit).await {
        Ok(events) => {
            let next = events.last().map(|e| e.seq).unwrap_or(query.after);
            Json(OutboxPage { events, next }).into_response()
        }
        Err(e) => store_error(e),
    }
}

/// Which inbound messages to list, newest first.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct InboundQuery {
    /// Only this connection's messages.
    connection: Option<String>,
    /// Only these states, comma-separated: received, leased, processed, unmatched, failed, held.
    #[param(
        pattern = r"^ *(received|leased|processed|unmatched|failed|held) *(, *(received|leased|processed|unmatched|failed|held) *)*$"
    )]
    status: Option<String>,
    /// Only messages older than this `seq`: the `next` of the previous page.
    before: Option<i64>,
    /// At most this many: 1 to 1000, or 0 for the default, 100.
    #[serde(default)]
    #[param(minimum = 0, maximum = 1000)]
    limit: u32,
}

/// An inbound message and what became of it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct InboundSummary {
    id: String,
    seq: i64,
    connection: String,
    /// What sent it, in which format.
    source: String,
    /// The sender's id of the message.
    external_id: Option<String>,
    /// `failed` also when a run it started failed.
    status: InboundState,
    /// Why it was unmatched or failed.
    detail: Option<Value>,
    /// The runs it started.
    run_ids: Vec<String>,
    /// Those of its runs that failed or were dead-lettered.
    failed_runs: Vec<FailedRun>,
    received_at: i64,
}

impl From<&InboundMessageView> for InboundSummary {
    fn from(message: &InboundMessageView) -> Self {
        let stored = &message.message;
        InboundSummary {
            id: stored.id.clone(),
            seq: stored.seq,
            connection: stored.connection.clone(),
            source: stored.source.clone(),
            external_id: stored.external_id.clone(),
            status: message.status,
            detail: stored.detail.clone(),
            run_ids: stored.run_ids.clone(),
            failed_runs: message.failed_runs.clone(),
            received_at: stored.received_at,
        }
    }
}

/// A page of inbound messages, newest first; `next` is the `before` of the next page.
#[derive(Debug, Serialize, ToSchema)]
struct InboundPage {
    messages: Vec<InboundSummary>,
    next: Option<i64>,
}

/// Inbound messages and what became of them, newest first.
#[utoipa::path(get, path = "/v1/inbound", tag = "inbound", params(InboundQuery),
    responses(
        (status = 200, description = "A page of messages", body = InboundPage),
        (status = 400, description = "A bad query, named", body = ErrorBody),
        (status = 401, description = "A missing or wrong API token", body = ErrorBody),
        (status = 503, description = "The store is not reachable", body = ErrorBody),
    ))]
async fn list_inbound(State(state): State<ApiState>, query: Result<Query<InboundQuery>, QueryRejection>) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return bad_query(rejection, "connection, status, before and limit"),
    };
    let statuses = match &query.status {
        Some(list) => match parse_states::<InboundState>(list) {
            Ok(statuses) => statuses,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        },
        None => Vec::new(),
    };
    let limit = match page_limit(query.limit) {
        Ok(limit) => limit,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let filter = InboundFilter { connection: query.connection, statuses, before_seq: query.before, limit };
    match state.service.inbound_messages(&filter).await {
        Ok((messages, next)) => {
            Json(InboundPage { messages: messages.iter().map(InboundSummary::from).collect(), next }).into_response()
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

/// Runs and inbound messages a disconnect held, or a reconnect released.
#[derive(Debug, Serialize, ToSchema)]
struct Moved {
    runs: u64,
    inbound: u64,
}

/// What a disconnect did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Disconnected {
    connection: String,
    disconnected: bool,
    held: Moved,
    /// The flows that stopped with it.
    stopped_flows: Vec<String>,
}

/// What a reconnect did.
#[derive(Debug, Serialize, ToSchema)]
struct Reconnected {
    connection: String,
    disconnected: bool,
    released: Moved,
}

/// Disconnects a connection: the flows that use it stop, their queued work is held (kept, not sent), and its
/// inbound requests are refused.
#[utoipa::path(post, path = "/v1/connections/{name}/disconnect", tag = "connections",
    params(("name" = String, Path, description = "The connection")),
    responses(
        (status = 200, description = "Disconnected", body = Disconnected),
        (status = 401, description = "A missing or wrong API token", body = ErrorBody),
        (status = 404, description = "No such connection", body = ErrorBody),
        (status = 503, description = "The store is not reachable", body = ErrorBody),
    ))]
async fn disconnect(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    match state.service.disconnect(&name).await {
        Ok(hold) => {
            let stopped_flows =
                state.service.flows().1.into_iter().filter(|(_, c)| *c == name).map(|(f, _)| f).collect();
            Json(Disconnected {
                connection: name,
                disconnected: true,
                held: Moved { runs: hold.runs, inbound: hold.inbound },
                stopped_flows,
            })
            .into_response()
        }
        Err(e) => connection_error(e),
    }
}

/// Reconnects a connection: its flows run again and the work held for it goes back to the queue.
#[utoipa::path(post, path = "/v1/connections/{name}/reconnect", tag = "connections",
    params(("name" = String, Path, description = "The connection")),
    responses(
        (status = 200, description = "Reconnected", body = Reconnected),
        (status = 401, description = "A missing or wrong API token", body = ErrorBody),
        (status = 404, description = "No such connection", body = ErrorBody),
        (status = 409, description = "The connection's configuration is incomplete for a direction it is \
            configured for", body = ErrorBody),
        (status = 503, description = "The store is not reachable", body = ErrorBody),
    ))]
async fn reconnect(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    match state.service.reconnect(&name).await {
        Ok(release) => Json(Reconnected {
            connection: name,
            disconnected: false,
            released: Moved { runs: release.runs, inbound: release.inbound },
        })
        .into_response(),
        Err(e) => connection_error(e),
    }
}

/// The service's health: to a caller without the API token (when the service has one), only `status`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Health {
    /// `ok`.
    status: String,
    /// The flows that run.
    #[serde(skip_serializing_if = "Option::is_none")]
    flows: Option<Vec<String>>,
    /// The flows stopped by a disconnect, with the connection that stopped each.
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped_flows: Option<BTreeMap<String, String>>,
    /// Runs per state.
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<RunCounts>,
    /// The connections whose service refused calls for their rate in the last 10 seconds, or that are paused
    /// for it, with their pacing.
    #[serde(skip_serializing_if = "Option::is_none")]
    throttled_connections: Option<BTreeMap<String, crate::connector::pacing::PacerStatus>>,
    /// The store's latest integrity check.
    #[serde(skip_serializing_if = "Option::is_none")]
    store_integrity: Option<StoreIntegrity>,
}

/// The store's latest integrity check, as `/healthz` shows it (a failed one makes `/healthz` answer 503).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct StoreIntegrity {
    /// `ok`; `pending` until the first check since the service started has ended; `error` when the latest check
    /// could not run (the store was not reachable).
    status: String,
    /// What was checked (SQLite: `PRAGMA quick_check`; PostgreSQL: the schema's migrations and tables).
    #[serde(skip_serializing_if = "Option::is_none")]
    check: Option<String>,
    /// When the latest check ended (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    checked_at: Option<String>,
    /// Why the latest check could not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl StoreIntegrity {
    fn of(status: Option<&crate::delivery::IntegrityStatus>) -> Self {
        let Some(status) = status else {
            return StoreIntegrity { status: "pending".into(), check: None, checked_at: None, error: None };
        };
        let checked_at = Some(rfc3339_ms(status.checked_at_ms));
        match &status.result {
            Ok(found) => StoreIntegrity {
                status: if found.ok() { "ok" } else { "failed" }.into(),
                check: Some(found.check.clone()),
                checked_at,
                error: None,
            },
            Err(error) => {
                StoreIntegrity { status: "error".into(), check: None, checked_at, error: Some(error.clone()) }
            }
        }
    }
}

fn rfc3339_ms(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

/// Liveness: the store is reachable, and its latest integrity check did not find it damaged. With the API token (or
/// when the service has none), also the running and stopped flows, the queue's sizes and the integrity check, or
/// what the check found; an anonymous caller learns only up or down.
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses(
        (status = 200, description = "Healthy", body = Health),
        (status = 503, description = "The store is not reachable, or its latest integrity check found it damaged",
            body = ErrorBody),
    ))]
async fn healthz(State(state): State<ApiState>, request: Request) -> Response {
    let details = state.api_token.as_ref().is_none_or(|token| bearer_matches(&request, token));
    let integrity = state.service.integrity();
    if let Some(status) = &integrity
        && let Ok(found) = &status.result
        && !found.ok()
    {
        if !details {
            return error(StatusCode::SERVICE_UNAVAILABLE, "down");
        }
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the store failed its integrity check ({}, at {}): {}; restore it from a backup",
                found.check,
                rfc3339_ms(status.checked_at_ms),
                found.problems.join("; ")
            ),
        );
    }
    match state.service.store().counts().await {
        Ok(counts) if details => {
            let (flows, stopped_flows) = state.service.flows();
            let mut throttled = state.service.host().pacing().status();
            throttled.retain(|_, status| status.throttled_now);
            Json(Health {
                status: "ok".into(),
                flows: Some(flows),
                stopped_flows: Some(stopped_flows),
                queue: Some(counts.runs),
                throttled_connections: Some(throttled),
                store_integrity: Some(StoreIntegrity::of(integrity.as_ref())),
            })
            .into_response()
        }
        Ok(_) => Json(Health {
            status: "ok".into(),
            flows: None,
            stopped_flows: None,
            queue: None,
            throttled_connections: None,
            store_integrity: None,
        })
        .into_response(),
        Err(e) if details => error(StatusCode::SERVICE_UNAVAILABLE, format!("the store is not reachable: {e}")),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "down"),
    }
}

/// The service's metrics, in the OpenMetrics text format. When the service has an API token or a metrics token,
/// either is required.
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses(
        (status = 200, description = "Prometheus metrics", body = String,
            content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        (status = 401, description = "A missing or wrong token", body = ErrorBody),
        (status = 503, description = "The store is not reachable", body = ErrorBody),
    ))]
async fn metrics(State(state): State<ApiState>, request: Request) -> Response {
    let tokens: Vec<&Arc<SecretString>> = state.api_token.iter().chain(&state.metrics_token).collect();
    if !tokens.is_empty() && !tokens.iter().any(|token| bearer_matches(&request, token)) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send `Authorization: Bearer <token>` (the metrics token or the API token)",
        );
    }
    match state.service.render_metrics().await {
        Ok(text) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(e) => store_error(e),
    }
}
