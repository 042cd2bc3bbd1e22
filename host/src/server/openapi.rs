//! The API's OpenAPI 3.1 document, generated from the handlers' annotations and the types they answer with
//! (utoipa), served at `/v1/openapi.json` and kept in the repository as `host/openapi.json`, which a test keeps
//! current.

use super::*;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flowhost",
        description = "The HTTP API of `flowhost serve`: events in, the workflow log, the resend queue, the outbox, \
            inbound requests for connections, and connections' disconnect and reconnect. Every route under `/v1` \
            but `/v1/inbound/{connection}` and `/v1/openapi.json` takes `Authorization: Bearer <api_token>` when \
            the service has an `api_token`. Requests whose `Origin` is not the service's own are refused (403), and \
            so are writes to `/v1` whose body is not `application/json` (415); `/v1/inbound/{connection}` takes \
            what its connection's sender posts."
    ),
    paths(
        post_events, inbound, list_runs, get_run, list_queue, bulk_retry, bulk_drop, retry_run, drop_run, outbox,
        list_inbound, disconnect, reconnect, serve, healthz, metrics
    ),
    modifiers(&BearerToken, &BrowserRules),
    tags(
        (name = "events", description = "Loyalty events in"),
        (name = "inbound", description = "What connections' senders post, and what became of it"),
        (name = "runs", description = "The workflow log"),
        (name = "queue", description = "The resend queue and operators' actions"),
        (name = "outbox", description = "Events emitted for the platform"),
        (name = "connections", description = "Disconnect and reconnect"),
        (name = "service", description = "Health, metrics and this document"),
    )
)]
struct ApiDoc;

/// Declares the API token, for the routes that take it.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
        components.add_security_scheme("apiToken", SecurityScheme::Http(bearer));
        // The routes behind `require_api_token` (see `router`).
        for (path, item) in openapi.paths.paths.iter_mut() {
            let open = path.starts_with("/v1/inbound/") || path == "/v1/openapi.json" || !path.starts_with("/v1/");
            if open {
                continue;
            }
            for operation in [&mut item.get, &mut item.post, &mut item.delete].into_iter().flatten() {
                operation.security = Some(vec![SecurityRequirement::new("apiToken", Vec::<String>::new())]);
            }
        }
    }
}

/// Declares the answers of `refuse_cross_site` (see `router`): 415 for a write to `/v1` that is not JSON.
struct BrowserRules;

impl utoipa::Modify for BrowserRules {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let unsupported = ResponseBuilder::new()
            .description("The body is not `application/json`")
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") || path.starts_with("/v1/inbound/") {
                continue;
            }
            for operation in [&mut item.post, &mut item.put, &mut item.patch].into_iter().flatten() {
                operation.responses.responses.insert("415".into(), unsupported.clone().into());
            }
        }
    }
}

/// The API's OpenAPI document.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    // The crate's version, not the API's: the API is `/v1`.
    document.info.version = "1".into();
    document
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "service",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)))]
pub(super) async fn serve() -> Response {
    Json(openapi_document()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `FLOWHOST_UPDATE_OPENAPI=1 cargo test -p flowhost openapi` rewrites it.
    #[test]
    fn the_committed_document_is_the_generated_one() {
        let generated = openapi_document().to_pretty_json().unwrap() + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        if std::env::var_os("FLOWHOST_UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "host/openapi.json is stale: run `FLOWHOST_UPDATE_OPENAPI=1 cargo test -p flowhost openapi` and commit it"
        );
    }

    #[test]
    fn every_route_is_described() {
        let document = openapi_document();
        let described: Vec<&str> = document.paths.paths.keys().map(String::as_str).collect();
        for route in [
            "/v1/events",
            "/v1/inbound/{connection}",
            "/v1/runs",
            "/v1/runs/{id}",
            "/v1/queue",
            "/v1/queue/retry",
            "/v1/queue/drop",
            "/v1/queue/{id}/retry",
            "/v1/queue/{id}",
            "/v1/outbox",
            "/v1/inbound",
            "/v1/connections/{name}/disconnect",
            "/v1/connections/{name}/reconnect",
            "/v1/openapi.json",
            "/healthz",
            "/metrics",
        ] {
            assert!(described.contains(&route), "{route} is not in the document: {described:?}");
        }
        let json = document.to_json().unwrap();
        assert!(json.starts_with(r#"{"openapi":"3.1.0""#), "{json}");
    }
}
