//! The mParticle connector component: a thin adapter between the WIT contract (through the flowhost SDK)
//! and `mparticle-core`, which holds all the logic. It maps the WIT imports to the core `Host` trait and the
//! types both ways; nothing else.
//!
//! It exports the `batch-connector` world, so the host can hand it many calls at once (`invoke-batch`), which
//! the core sends to the Events API as `/bulkevents` requests, and the `inbound-connector` world (the SDK's
//! `inbound` bindings): `receive` parses what mParticle posts (Webhook output, Firehose) into normalized events.

use flowhost_connector_sdk::*;
use mparticle_core as core;

/// Bindings of the `batch-connector` world, sharing the SDK's imports and types.
#[allow(clippy::too_many_arguments)] // generated code
mod batch {
    flowhost_connector_sdk::wit_bindgen::generate!({
        path: "../../wit/v0.2.0",
        world: "batch-connector",
        with: {
            "flowhost:connector/types@0.2.0": flowhost_connector_sdk::bindings::flowhost::connector::types,
            "flowhost:connector/http@0.2.0": flowhost_connector_sdk::bindings::flowhost::connector::http,
            "flowhost:connector/log@0.2.0": flowhost_connector_sdk::bindings::flowhost::connector::log,
            "flowhost:connector/cache@0.2.0": flowhost_connector_sdk::bindings::flowhost::connector::cache,
            "flowhost:connector/pacing@0.2.0": flowhost_connector_sdk::bindings::flowhost::connector::pacing,
        },
        runtime_path: "flowhost_connector_sdk::wit_bindgen::rt",
    });
}

/// Instances live for one invocation (or one `invoke-batch`), so a bump allocator is enough and cheaper.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: InvocationArena = InvocationArena::new();

struct MParticle;

impl batch::Guest for MParticle {
    fn describe() -> ConnectorInfo {
        let manifest = core::describe();
        ConnectorInfo {
            id: manifest.id,
            version: manifest.version,
            display_name: manifest.display_name,
            description: manifest.description,
            connection_properties: manifest
                .connection_properties
                .into_iter()
                .map(|p| ConnectionProperty {
                    name: p.name,
                    title: p.title,
                    description: p.description,
                    secret: p.secret,
                    required: p.required,
                    schema: p.schema,
                })
                .collect(),
            allowed_hosts: manifest.allowed_hosts,
            capabilities: manifest
                .capabilities
                .into_iter()
                .map(|c| Capability {
                    id: c.id,
                    title: c.title,
                    description: c.description,
                    input_schema: c.input_schema,
                    output_schema: c.output_schema,
                })
                .collect(),
        }
    }

    fn check(connection: String) -> Result<(), ConnectorError> {
        let connection = parse_connection(&connection)?;
        core::check(&mut WitHost, &connection).map_err(to_wit)
    }

    fn invoke(
        capability: String,
        connection: String,
        input: String,
        context: InvocationContext,
    ) -> Result<String, ConnectorError> {
        let connection = parse_connection(&connection)?;
        let input = parse_input(&input)?;
        core::invoke(&mut WitHost, &capability, &connection, &input, &to_core(context)).map_err(to_wit)
    }

    fn batched_capabilities() -> Vec<String> {
        core::EVENT_CAPABILITIES.iter().map(|c| c.to_string()).collect()
    }

    fn invoke_batch(
        capability: String,
        connection: String,
        items: Vec<BatchItem>,
    ) -> Vec<Result<String, ConnectorError>> {
        let connection = match parse_connection(&connection) {
            Ok(connection) => connection,
            Err(error) => return items.iter().map(|_| Err(error.clone())).collect(),
        };
        // Inputs that are not JSON fail alone; the others go through the core together.
        let mut parsed = Vec::with_capacity(items.len());
        let mut results: Vec<Option<Result<String, ConnectorError>>> = Vec::with_capacity(items.len());
        for item in items {
            match parse_input(&item.input) {
                Ok(input) => {
                    parsed.push((input, to_core(item.context)));
                    results.push(None);
                }
                Err(error) => results.push(Some(Err(error))),
            }
        }
        let mut outputs = core::invoke_batch(&mut WitHost, &capability, &connection, &parsed).into_iter();
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| outputs.next().expect("one output per parsed input").map_err(to_wit))
            })
            .collect()
    }
}

impl inbound::Guest for MParticle {
    fn describe_inbound() -> inbound::InboundInfo {
        let info = core::describe_inbound();
        inbound::InboundInfo {
            event_types: info.event_types,
            identities: info.identities,
            public_requests: info.public_requests,
            // Requests carry the connection's token; mParticle does not sign them.
            verifies_requests: false,
        }
    }

    fn receive(connection: String, request: inbound::Request) -> Result<inbound::Received, ConnectorError> {
        let connection = parse_connection(&connection)?;
        let request = core::InboundRequest {
            method: request.method,
            path: request.path,
            query: request.query,
            headers: request.headers,
            body: request.body,
            authenticated: request.authenticated,
            received_at_ms: request.received_at_ms,
        };
        let received = core::receive(&connection, &request).map_err(to_wit)?;
        Ok(inbound::Received {
            events: received.events.into_iter().map(to_wit_event).collect(),
            message_id: received.message_id,
            response: inbound::Response {
                status: received.response.status,
                headers: received.response.headers,
                body: received.response.body,
            },
        })
    }
}

fn to_wit_event(event: core::InboundEvent) -> inbound::InboundEvent {
    inbound::InboundEvent {
        source: event.source,
        event_type: event.event_type,
        event_name: event.event_name,
        identities: event.identities,
        attributes: serde_json::Value::Object(event.attributes).to_string(),
        user_attributes: serde_json::Value::Object(event.user_attributes).to_string(),
        environment: event.environment.map(|e| e.as_str().to_string()),
        message_id: event.message_id,
        timestamp_ms: event.timestamp_ms,
        extra: serde_json::Value::Object(event.extra).to_string(),
        raw: event.raw.to_string(),
    }
}

fn to_core(context: InvocationContext) -> core::Context {
    core::Context {
        run_id: context.run_id,
        node_id: context.node_id,
        idempotency_key: context.idempotency_key,
        attempt: context.attempt,
    }
}

/// The WIT imports as the core's `Host`.
struct WitHost;

impl core::Host for WitHost {
    fn fetch(&mut self, request: core::HttpRequest) -> Result<core::HttpResponse, core::TransportError> {
        let request = Request {
            method: request.method.as_str().to_string(),
            url: request.url,
            headers: request.headers,
            body: request.body,
            timeout_ms: request.timeout_ms,
        };
        match http::fetch(&request) {
            Ok(response) => {
                Ok(core::HttpResponse { status: response.status, headers: response.headers, body: response.body })
            }
            Err(error) => Err(match error {
                HttpError::Denied(m) => core::TransportError::Denied(m),
                HttpError::InvalidRequest(m) => core::TransportError::InvalidRequest(m),
                HttpError::ConnectFailed(m) => core::TransportError::ConnectFailed(m),
                HttpError::Timeout(m) => core::TransportError::Timeout(m),
                HttpError::ResponseTooLarge(m) => core::TransportError::ResponseTooLarge(m),
                HttpError::Other(m) => core::TransportError::Other(m),
            }),
        }
    }

    fn report_usage(&mut self, percentage_used: u64) {
        flowhost_connector_sdk::report_usage(percentage_used);
    }

    fn cache_get(&mut self, key: &str) -> Option<String> {
        cache::get(key)
    }

    fn cache_set(&mut self, key: &str, value: &str, ttl_seconds: u32) {
        cache::set(key, value, ttl_seconds);
    }

    fn cache_delete(&mut self, key: &str) {
        cache::delete(key);
    }

    fn log(&mut self, level: core::Level, message: &str) {
        let level = match level {
            core::Level::Trace => Level::Trace,
            core::Level::Debug => Level::Debug,
            core::Level::Info => Level::Info,
            core::Level::Warn => Level::Warn,
            core::Level::Error => Level::Error,
        };
        log::log(level, message);
    }
}

fn to_wit(error: core::Error) -> ConnectorError {
    match error {
        core::Error::InvalidInput(errors) => ConnectorError::InvalidInput(
            errors.into_iter().map(|e| FieldError { pointer: e.pointer, message: e.message }).collect(),
        ),
        core::Error::InvalidConfig(m) => ConnectorError::InvalidConfig(m),
        core::Error::Unauthorized(m) => ConnectorError::Unauthorized(m),
        core::Error::NotFound(m) => ConnectorError::NotFound(m),
        core::Error::RateLimited { retry_after_ms, message, percentage_used } => {
            ConnectorError::RateLimited(RateLimit {
                retry_after_ms,
                message,
                percentage_used: percentage_used.map(clamp_usage),
            })
        }
        core::Error::Transient(m) => ConnectorError::Transient(m),
        core::Error::Permanent { status, message, body } => {
            ConnectorError::Permanent(Failure { status, message, body })
        }
    }
}

batch::export!(MParticle with_types_in batch);
flowhost_connector_sdk::export_inbound!(MParticle);
