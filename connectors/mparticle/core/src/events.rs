//! Sending batches to the Events API (HTTP Basic with the server-to-server key and secret).

use crate::batch::{EventsEndpoint, EventsPayload, ID_NAMESPACE};
use crate::config::{Config, EventsCredentials};
use crate::error::Error;
use crate::host::{Host, HttpRequest, Level, Method};
use crate::http::{self, Call, Idempotency, REQUEST_TIMEOUT_MS};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// The `Authorization` header value: `Basic base64(apiKey:apiSecret)`.
pub fn basic_auth(credentials: &EventsCredentials) -> String {
    format!("Basic {}", STANDARD.encode(format!("{}:{}", credentials.api_key, credentials.api_secret)))
}

/// The request that sends `payload`.
pub fn request(config: &Config, credentials: &EventsCredentials, payload: &EventsPayload) -> HttpRequest {
    HttpRequest {
        method: Method::Post,
        url: format!("{}{}", config.events_api_url, payload.endpoint.path()),
        headers: vec![
            ("authorization".into(), basic_auth(credentials)),
            ("content-type".into(), "application/json".into()),
            ("accept".into(), "application/json".into()),
        ],
        body: Some(payload.body.clone()),
        timeout_ms: Some(REQUEST_TIMEOUT_MS),
    }
}

/// Sends `payload` and returns the capability output `{"status", "sourceRequestId", "sourceRequestIds",
/// "batches", "endpoint"}`. Re-sending is safe: every batch carries a stable `source_request_id`.
pub fn send(host: &mut dyn Host, config: &Config, capability: &str, payload: &EventsPayload) -> Result<Value, Error> {
    let credentials = config.require_events()?;
    let call = Call { capability, idempotency: Idempotency::Safe };
    host.log(
        Level::Info,
        &format!(
            "{capability}: sending {} batch(es) ({} bytes) to {}, source_request_id {}",
            payload.batches.len(),
            payload.body.len(),
            payload.endpoint.path(),
            payload.source_request_ids.first().map(String::as_str).unwrap_or_default()
        ),
    );
    let response = http::send(host, request(config, credentials, payload)).map_err(|e| http::map_transport(e, call))?;
    if !response.is_success() {
        let authorization = basic_auth(credentials);
        let mut secrets = config.secrets();
        secrets.push(&authorization["Basic ".len()..]);
        return Err(http::map_status(&response, call, &secrets));
    }
    Ok(json!({
        "status": response.status,
        "sourceRequestId": payload.source_request_ids.first(),
        "sourceRequestIds": payload.source_request_ids,
        "batches": payload.batches.len(),
        "endpoint": payload.endpoint.name(),
    }))
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
        batches: vec![batch],
    };
    let call = Call { capability: "check (Events API)", idempotency: Idempotency::Safe };
    let response =
        http::send(host, request(config, credentials, &payload)).map_err(|e| http::map_transport(e, call))?;
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
