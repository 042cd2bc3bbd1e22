//! A hostile inbound side: `receive` misbehaves as the request's body asks (`trap`, `loop`, `oom`, `flood`
//! (5 MiB of events), `bad-attributes`, `bad-status`), and otherwise returns one event per line of the body, so that the host's
//! handling of each failure can be tested beside a request that works.

use flowhost_connector_sdk::inbound::{self, InboundEvent, InboundInfo, Received, Request};
use flowhost_connector_sdk::*;
use test_connectors::manifest;

struct Hostile;

impl Guest for Hostile {
    fn describe() -> ConnectorInfo {
        manifest("hostile-inbound", vec![], &[], vec![])
    }

    fn check(_connection: String) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn invoke(capability: String, _: String, _: String, _: InvocationContext) -> Result<String, ConnectorError> {
        Err(permanent(format!("no capability {capability}")))
    }
}

impl inbound::Guest for Hostile {
    fn describe_inbound() -> InboundInfo {
        InboundInfo {
            event_types: vec!["line".into()],
            identities: vec!["customer_id".into()],
            public_requests: vec![],
            verifies_requests: false,
        }
    }

    fn receive(_connection: String, request: Request) -> Result<Received, ConnectorError> {
        let body = String::from_utf8_lossy(&request.body).into_owned();
        let event = |line: &str, attributes: &str| InboundEvent {
            source: "hostile".into(),
            event_type: "line".into(),
            event_name: None,
            identities: vec![("customer_id".into(), line.to_string())],
            attributes: attributes.into(),
            user_attributes: "{}".into(),
            environment: None,
            message_id: None,
            timestamp_ms: None,
            extra: "{}".into(),
            raw: serde_json::Value::String(line.to_string()).to_string(),
        };
        let mut status = 202;
        let events = match body.trim() {
            "trap" => panic!("receive exploded on purpose"),
            "loop" => loop {
                std::hint::black_box(&body);
            },
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "flood" => {
                let mut flood = event("c-1", "{}");
                flood.raw = serde_json::Value::String("x".repeat(1 << 20)).to_string();
                vec![flood; 5]
            }
            "bad-attributes" => vec![event("c-1", "[1, 2]")],
            "bad-status" => {
                status = 42;
                Vec::new()
            }
            lines => lines.lines().map(|line| event(line.trim(), "{}")).collect(),
        };
        Ok(Received { events, message_id: None, response: inbound::json_response(status, &serde_json::json!({})) })
    }
}

export_connector!(Hostile);
export_inbound!(Hostile);

fn main() {}
