//! Sending batches to the Events API (HTTP Basic with the server-to-server key and secret).

use crate::batch::{EventsEndpoint, EventsPayload, ID_NAMESPACE};
use crate::config::{Config, EventsCredentials};
use crate::error::Error;
use crate::host::{Host, HttpRequest, Level, Method};
use crate::http::{self, Call, Idempotency, REQUEST_TIMEOUT_MS};
use crate::validate::{MAX_BATCHES_PER_REQUEST, MAX_REQUEST_BYTES};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_json::json;

/// The `Authorization` header value: `Basic base64(apiKey:apiSecret)`.
pub fn basic_auth(credentials: &EventsCredentials) -> String {
    format!("Basic {}", STANDARD.encode(format!("{}:{}", credentials.api_key, credentials.api_secret)))
}

/// The request that posts `body` to `endpoint`.
pub fn request(
    config: &Config,
    credentials: &EventsCredentials,
    endpoint: EventsEndpoint,
    body: Vec<u8>,
) -> HttpRequest {
    HttpRequest {
        method: Method::Post,
        url: format!("{}{}", config.events_api_url, endpoint.path()),
        headers: vec![
            ("authorization".into(), basic_auth(credentials)),
            ("content-type".into(), "application/json".into()),
            ("accept".into(), "application/json".into()),
        ],
        body: Some(body),
        timeout_ms: Some(REQUEST_TIMEOUT_MS),
    }
}

/// Sends `payload` and returns the capability output, as JSON text: `{"status", "sourceRequestId",
/// "sourceRequestIds", "batches", "endpoint"}`. Re-sending is safe: every batch carries a stable
/// `source_request_id`.
pub fn send(host: &mut dyn Host, config: &Config, capability: &str, payload: &EventsPayload) -> Result<String, Error> {
    host.log(
        Level::Info,
        &format!(
            "{capability}: sending {} batch(es) ({} bytes) to {}, source_request_id {}",
            payload.batch_count(),
            payload.body.len(),
            payload.endpoint.path(),
            payload.source_request_ids.first().map(String::as_str).unwrap_or_default()
        ),
    );
    let status = post(host, config, capability, payload.endpoint, payload.body.clone())?;
    output(status, payload, payload.endpoint)
}

/// Sends the payloads of several calls of `capability` together, as few `/bulkevents` requests as
/// mParticle's limits allow (at most 100 batches and 256 KB each; a call's batches never span two requests),
/// and returns each call's output, in order. Every call that shared a request gets that request's outcome;
/// each batch keeps its own `source_request_id`, so re-sending any of them is safe.
pub fn send_together(
    host: &mut dyn Host,
    config: &Config,
    capability: &str,
    payloads: &[&EventsPayload],
) -> Vec<Result<String, Error>> {
    let mut results = Vec::with_capacity(payloads.len());
    for group in pack(payloads) {
        let group = &payloads[group];
        if let [payload] = group {
            results.push(send(host, config, capability, payload));
            continue;
        }
        let batches: usize = group.iter().map(|p| p.batch_count()).sum();
        let mut body = Vec::with_capacity(group.iter().map(|p| p.body.len() + 1).sum::<usize>() + 1);
        body.push(b'[');
        for (i, payload) in group.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(batches_text(payload));
        }
        body.push(b']');
        host.log(
            Level::Info,
            &format!(
                "{capability}: sending {batches} batch(es) of {} calls ({} bytes) to {}",
                group.len(),
                body.len(),
                EventsEndpoint::BulkEvents.path()
            ),
        );
        match post(host, config, capability, EventsEndpoint::BulkEvents, body) {
            Ok(status) => results.extend(group.iter().map(|p| output(status, p, EventsEndpoint::BulkEvents))),
            Err(error) => results.extend(group.iter().map(|_| Err(error.clone()))),
        }
    }
    results
}

/// Splits payloads, in order, into runs that fit one `/bulkevents` request each.
fn pack(payloads: &[&EventsPayload]) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut batches, mut bytes) = (0, 0, 2);
    for (i, payload) in payloads.iter().enumerate() {
        let more_batches = payload.batch_count();
        let more_bytes = batches_text(payload).len() + 1;
        if i > start && (batches + more_batches > MAX_BATCHES_PER_REQUEST || bytes + more_bytes > MAX_REQUEST_BYTES) {
            groups.push(start..i);
            (start, batches, bytes) = (i, 0, 2);
        }
        batches += more_batches;
        bytes += more_bytes;
    }
    if start < payloads.len() {
        groups.push(start..payloads.len());
    }
    groups
}

/// A payload's batches as the elements of a JSON array, without the brackets: the body of a single batch,
/// or the inside of a bulk body.
fn batches_text(payload: &EventsPayload) -> &[u8] {
    match payload.endpoint {
        EventsEndpoint::Events => &payload.body,
        EventsEndpoint::BulkEvents => &payload.body[1..payload.body.len() - 1],
    }
}

/// Posts a body to an Events API endpoint; the HTTP status when mParticle accepted it.
fn post(
    host: &mut dyn Host,
    config: &Config,
    capability: &str,
    endpoint: EventsEndpoint,
    body: Vec<u8>,
) -> Result<u16, Error> {
    let credentials = config.require_events()?;
    let call = Call { capability, idempotency: Idempotency::Safe };
    let response =
        http::send(host, request(config, credentials, endpoint, body)).map_err(|e| http::map_transport(e, call))?;
    if !response.is_success() {
        let authorization = basic_auth(credentials);
        let mut secrets = config.secrets();
        secrets.push(&authorization["Basic ".len()..]);
        return Err(http::map_status(&response, call, &secrets));
    }
    Ok(response.status)
}

/// A call's output: the status, its own `source_request_id`s and batch count, and the endpoint it went to.
/// Serialized straight from the payload's strings: it is made for every event the loyalty integration sends.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SentOutput<'a> {
    status: u16,
    source_request_id: Option<&'a str>,
    source_request_ids: &'a [String],
    batches: usize,
    endpoint: &'static str,
}

fn output(status: u16, payload: &EventsPayload, endpoint: EventsEndpoint) -> Result<String, Error> {
    let output = SentOutput {
        status,
        source_request_id: payload.source_request_ids.first().map(String::as_str),
        source_request_ids: &payload.source_request_ids,
        batches: payload.batch_count(),
        endpoint: endpoint.name(),
    };
    serde_json::to_string(&output).map_err(|e| Error::permanent(format!("could not encode the output: {e}")))
}

/// The `source_request_id` of the connection check's probe batch; fixed, so mParticle keeps at most one.
pub fn probe_source_request_id() -> String {
    uuid::Uuid::new_v5(&ID_NAMESPACE, b"connection-check").hyphenated().to_string()
}

/// Verifies the key and secret with a batch that records nothing: no user identities, no user attributes,
/// no events, in the development environment, with a fixed `source_request_id`.
pub fn check(host: &mut dyn Host, config: &Config) -> Result<(), Error> {
    let credentials = config.require_events()?;
    let batch = json!({"source_request_id": probe_source_request_id(), "environment": "development", "events": []});
    let payload = EventsPayload {
        endpoint: EventsEndpoint::Events,
        body: batch.to_string().into_bytes(),
        source_request_ids: vec![probe_source_request_id()],
    };
    let call = Call { capability: "check (Events API)", idempotency: Idempotency::Safe };
    let response = http::send(host, request(config, credentials, payload.endpoint, payload.body))
        .map_err(|e| http::map_transport(e, call))?;
    if response.is_success() {
        host.log(Level::Info, "mParticle's Events API accepted the apiKey/apiSecret");
        return Ok(());
    }
    let authorization = basic_auth(credentials);
    let mut secrets = config.secrets();
    secrets.push(&authorization["Basic ".len()..]);
    Err(match http::map_status(&response, call, &secrets) {
        Error::Unauthorized(message) => {
            Error::Unauthorized(format!("{message} (the connection's apiKey/apiSecret were not accepted)"))
        }
        other => other,
    })
}
