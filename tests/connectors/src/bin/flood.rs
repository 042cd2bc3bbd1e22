//! A hostile connector. Returns, writes or caches as many bytes as its input asks, to test the host's size
//! limits: outputs, errors, the cache and stdout/stderr.

use flowhost_connector_sdk::*;
use serde_json::{Value, json};
use test_connectors::{capability, manifest};

struct Flood;

impl Guest for Flood {
    fn describe() -> ConnectorInfo {
        manifest(
            "flood",
            vec![],
            &[],
            vec![
                capability("hugeOutput", "Returns an output of about `bytes` bytes."),
                capability("hugeError", "Fails with an error of the `kind` given whose text is `bytes` bytes long."),
                capability(
                    "floodCache",
                    "Sets `keys` cache entries, keys of `keyBytes` bytes and values of `valueBytes`, then reports \
                     how many it reads back.",
                ),
                capability("floodStdout", "Writes `bytes` bytes to stdout and to stderr, in lines."),
            ],
        )
    }

    fn check(_connection: String) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn invoke(
        capability: String,
        _connection: String,
        input: String,
        _context: InvocationContext,
    ) -> Result<String, ConnectorError> {
        let input: Value = parse_input(&input)?;
        let number = |name: &str| input[name].as_u64().unwrap_or(0) as usize;
        let output = match capability.as_str() {
            "hugeOutput" => {
                // Written in place: the output is the only copy, so it may take most of the memory limit.
                let mut output = String::with_capacity(number("bytes") + 16);
                output.push_str("{\"data\":\"");
                output.extend(std::iter::repeat_n('x', number("bytes")));
                output.push_str("\"}");
                return Ok(output);
            }
            "hugeError" => {
                let text = "e".repeat(number("bytes"));
                return Err(match input["kind"].as_str().unwrap_or_default() {
                    "permanent" => {
                        ConnectorError::Permanent(Failure { status: Some(500), message: "failed".into(), body: text })
                    }
                    "invalid-input" => invalid_input("/properties/x", text),
                    _ => ConnectorError::Transient(text),
                });
            }
            "floodCache" => {
                let (keys, key_bytes) = (number("keys"), number("keyBytes").max(8));
                let value = "v".repeat(number("valueBytes"));
                let key = |i: usize| format!("{}{i:08}", "k".repeat(key_bytes - 8));
                for i in 0..keys {
                    cache::set(&key(i), &value, 3600);
                }
                let kept: Vec<usize> = (0..keys).filter(|i| cache::get(&key(*i)).is_some()).collect();
                json!({ "kept": kept.len(), "keptBytes": kept.len() * (key_bytes + value.len()) })
            }
            "floodStdout" => {
                let line = "o".repeat(99);
                let lines = number("bytes") / 100;
                for _ in 0..lines {
                    println!("{line}");
                    eprintln!("{line}");
                }
                json!({ "lines": lines })
            }
            other => return Err(invalid_input("", format!("unknown capability {other}"))),
        };
        Ok(output.to_string())
    }
}

export_connector!(Flood);

fn main() {}
