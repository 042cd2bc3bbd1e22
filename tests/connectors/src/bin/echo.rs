//! A well-behaved connector: echoes its input, exercises the log and cache imports, and returns any error
//! kind on request so the host's handling of each kind can be tested.

use flowhost_connector_sdk::*;
use serde_json::{Value, json};
use test_connectors::{capability, manifest, property};

struct Echo;

impl Guest for Echo {
    fn describe() -> ConnectorInfo {
        let mut echo = capability("echo", "Returns its input, the invocation context and the greeting.");
        echo.input_schema = r#"{"default":{"type":"object","properties":{"properties":{"type":"object","properties":{"message":{"type":"string","description":"What to echo."},"count":{"type":"integer","minimum":0}},"required":["message"]}},"example":{"properties":{"message":"hello"}}}}"#.to_string();
        echo.output_schema = r#"{"type":"object","required":["message"]}"#.to_string();
        manifest(
            "echo",
            vec![property("greeting", false, false), property("token", true, true)],
            &[],
            vec![
                echo,
                capability("cacheCounter", "Increments a counter kept in the connection's cache."),
                capability("fail", "Fails with the error kind named in the input."),
                capability("print", "Writes its input's text to stdout, stderr and the log."),
                capability("probeSandbox", "Reports what the sandbox lets it see: environment, files, sockets."),
            ],
        )
    }

    fn check(connection: String) -> Result<(), ConnectorError> {
        let connection = parse_connection(&connection)?;
        match connection["token"].as_str() {
            Some("let-me-in") => Ok(()),
            _ => Err(ConnectorError::Unauthorized("the token was not accepted".into())),
        }
    }

    fn invoke(
        capability: String,
        connection: String,
        input: String,
        context: InvocationContext,
    ) -> Result<String, ConnectorError> {
        let connection = parse_connection(&connection)?;
        let input = parse_input(&input)?;
        // A well-behaved connector refuses what its schemas refuse by itself, as the acceptance suite checks.
        if !input.is_object() {
            return Err(invalid_input("", "the input must be a JSON object"));
        }
        // As a service that says how much of its rate limit is used would.
        if let Some(used) = input["reportUsage"].as_u64() {
            report_usage(used);
        }
        let output = match capability.as_str() {
            "echo" => json!({
                "message": input["properties"]["message"].as_str().ok_or_else(|| invalid_input("/properties/message", "message must be a string"))?,
                "input": input,
                "greeting": connection["greeting"],
                "context": {
                    "runId": context.run_id,
                    "nodeId": context.node_id,
                    "idempotencyKey": context.idempotency_key,
                    "attempt": context.attempt,
                },
            }),
            "cacheCounter" => {
                let count = cache::get("counter").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
                cache::set("counter", &count.to_string(), 60);
                json!({ "count": count })
            }
            "fail" => return Err(error_named(&input)),
            "print" => {
                let text = input["text"].as_str().unwrap_or_default();
                println!("stdout: {text}");
                eprintln!("stderr: {text}");
                log::log(Level::Warn, &format!("log: {text}"));
                json!({ "printed": text })
            }
            "probeSandbox" => {
                let connect = input["connect"].as_str().unwrap_or("127.0.0.1:9");
                json!({
                    "envVars": std::env::vars().count(),
                    "args": std::env::args().count(),
                    "readRoot": std::fs::read_dir("/").map(|_| "allowed".to_string()).unwrap_or_else(|e| e.to_string()),
                    "readCwd": std::fs::read_dir(".").map(|_| "allowed".to_string()).unwrap_or_else(|e| e.to_string()),
                    "tcpConnect": std::net::TcpStream::connect(connect).map(|_| "connected".to_string()).unwrap_or_else(|e| e.to_string()),
                })
            }
            other => return Err(invalid_input("", format!("unknown capability {other}"))),
        };
        Ok(output.to_string())
    }
}

fn error_named(input: &Value) -> ConnectorError {
    let message = input["message"].as_str().unwrap_or("requested failure").to_string();
    match input["kind"].as_str().unwrap_or_default() {
        "invalid-input" => invalid_input("/properties/message", message),
        "invalid-config" => ConnectorError::InvalidConfig(message),
        "unauthorized" => ConnectorError::Unauthorized(message),
        "not-found" => ConnectorError::NotFound(message),
        "rate-limited" => ConnectorError::RateLimited(RateLimit {
            retry_after_ms: input["retryAfterMs"].as_u64(),
            message,
            percentage_used: input["percentageUsed"].as_u64().map(clamp_usage),
        }),
        "transient" => ConnectorError::Transient(message),
        _ => ConnectorError::Permanent(Failure {
            status: input["status"].as_u64().map(|s| s as u16),
            message,
            body: input["body"].as_str().unwrap_or_default().to_string(),
        }),
    }
}

export_connector!(Echo);

fn main() {}
