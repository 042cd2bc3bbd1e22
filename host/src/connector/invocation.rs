//! What one call of a connector is given and gives back, shared by the runtime and the batcher.

use super::error::InvokeError;
use super::sandbox::LogLine;
use serde_json::Value;
use std::time::Duration;

/// Where an invocation comes from; the idempotency key stays the same across retries of one node
/// execution.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvocationContext {
    pub run_id: String,
    pub node_id: String,
    pub idempotency_key: String,
    pub attempt: u32,
}

/// The outcome of one `invoke` or `check`, with what the connector logged and how long it took.
#[derive(Debug, Clone)]
pub struct Invocation<T = Value> {
    pub result: Result<T, InvokeError>,
    pub log: Vec<LogLine>,
    pub duration: Duration,
    /// The percentage of its rate limit the service said was used, as the connector reported it (through
    /// `pacing.report-usage`, or in a `rate-limited` error), for the connection's pacer.
    pub usage_percent: Option<u8>,
}
