//! A connector that fetches the URL it is given. The tests point it at hosts outside the allow-list, at
//! loopback without the private-address switch, and at redirects to unlisted hosts.

use flowhost_connector_sdk::*;
use serde_json::json;
use test_connectors::{capability, manifest, property};

struct Fetcher;

impl Guest for Fetcher {
    fn describe() -> ConnectorInfo {
        manifest(
            "fetcher",
            vec![property("baseUrl", false, true)],
            &["{baseUrl}"],
            vec![capability("get", "GETs the URL in the input and returns the status and body.")],
        )
    }

    fn check(_connection: String) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn invoke(
        _capability: String,
        _connection: String,
        input: String,
        _context: InvocationContext,
    ) -> Result<String, ConnectorError> {
        let input = parse_input(&input)?;
        let url = input["url"].as_str().ok_or_else(|| invalid_input("/url", "url is required"))?;
        let response = http::fetch(&Request {
            method: "GET".into(),
            url: url.into(),
            headers: vec![("authorization".into(), "Bearer do-not-log-me".into())],
            body: None,
            timeout_ms: None,
        })?;
        let body = String::from_utf8_lossy(&response.body).into_owned();
        Ok(json!({ "status": response.status, "body": body }).to_string())
    }
}

export_connector!(Fetcher);

fn main() {}
