//! The run trace: what happened in one run of a flow, node by node, with attempts, resolved inputs,
//! outputs and errors. Secrets are redacted before anything is recorded.

use crate::connector::{ErrorKind, InvokeError, LogLine};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Succeeded,
    Failed,
    /// A durable run that stopped before its end (waiting for a resend, or dead-lettered): the store's
    /// state of the run says which.
    Incomplete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Succeeded,
    Failed,
}

/// One run of a flow.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub id: String,
    pub flow_id: String,
    pub flow_version: String,
    pub status: RunStatus,
    /// RFC 3339 time the run started.
    pub started_at: String,
    pub duration_ms: u64,
    /// The event that started the run.
    pub trigger: Value,
    /// Every node execution in order (forEach bodies once per item).
    pub nodes: Vec<NodeTrace>,
    /// Events handed back to the embedding platform by emit nodes.
    pub emitted: Vec<EmittedEvent>,
    /// Why the run failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<NodeError>,
}

/// An event an emit node handed to the embedding platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmittedEvent {
    pub run_id: String,
    pub flow_id: String,
    pub node_id: String,
    pub event: String,
    pub payload: Value,
}

/// One execution of one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeTrace {
    pub node_id: String,
    /// `connector`, `condition`, `forEach`, `emit` or `fail`.
    pub kind: String,
    /// For connector nodes: `connection.capability`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    /// The forEach item index, for nodes inside a forEach body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iteration: Option<usize>,
    pub status: NodeStatus,
    /// Milliseconds from the start of the run.
    pub started_ms: u64,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// Attempts made before an operator retried the run (its attempts had run out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_attempts: Vec<Attempt>,
    /// Every time the remote service refused the call for its rate (`rate-limited`), and how long the run
    /// waited: these do not count as attempts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throttled: Vec<ThrottledWait>,
    /// Milliseconds the call waited for its connection's pacing before it was sent (beyond the waits above).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub paced_ms: u64,
    /// The input after expressions were evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<NodeError>,
    /// The node the run went to next, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// What the connector logged (and the HTTP calls it made).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<LogLine>,
}

/// One attempt of a connector call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub attempt: u32,
    pub started_ms: u64,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<NodeError>,
    /// How long the executor waited after this attempt before the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One wait of a connector call whose remote service refused it for its rate (or whose connection was paused
/// for that reason): not a failed attempt, and bounded by the run's throttling budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThrottledWait {
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: i64,
    /// The attempt that was refused, or that waited for the paused connection (it was not spent).
    pub attempt: u32,
    /// What the connector said (redacted); or why the call did not go out.
    pub message: String,
    /// The Retry-After the remote service sent, as the connector read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// How long the run waited before trying again.
    pub waited_ms: u64,
    /// Anything the host did not take as given, e.g. a Retry-After longer than it honours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A node's failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeError {
    /// The node that failed.
    pub node_id: String,
    pub kind: FailureKind,
    pub message: String,
    /// The connector's error in full (status, body, field errors), for connector failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

/// What kind of failure stopped a node: a connector error kind, or one of the flow's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", untagged)]
pub enum FailureKind {
    Connector(ErrorKind),
    Flow(FlowFailure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowFailure {
    /// An expression could not be evaluated (a missing field, a wrong type).
    Expression,
    /// A fail node stopped the run.
    Fail,
    /// A forEach body failed for one item.
    Iteration,
    /// The run exceeded the host's step limit.
    StepLimit,
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureKind::Connector(kind) => write!(f, "{kind}"),
            FailureKind::Flow(kind) => write!(
                f,
                "{}",
                serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
            ),
        }
    }
}

impl NodeError {
    pub fn from_invoke(node_id: &str, error: &InvokeError) -> Self {
        NodeError {
            node_id: node_id.to_string(),
            kind: FailureKind::Connector(error.kind()),
            message: error.to_string(),
            detail: serde_json::to_value(error).ok(),
        }
    }

    pub fn flow(node_id: &str, kind: FlowFailure, message: impl Into<String>) -> Self {
        NodeError { node_id: node_id.to_string(), kind: FailureKind::Flow(kind), message: message.into(), detail: None }
    }

    /// The error as expressions see it: `nodes.<id>.error`.
    pub fn as_value(&self) -> Value {
        serde_json::json!({"kind": self.kind.to_string(), "message": self.message, "node": self.node_id, "detail": self.detail})
    }
}

impl Run {
    /// The trace for people: one block per node execution.
    pub fn to_text(&self) -> String {
        render(self)
    }
}

fn render(run: &Run) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let status = match run.status {
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "FAILED",
        RunStatus::Incomplete => "incomplete",
    };
    let _ =
        writeln!(text, "run {} of {} {}: {status} in {} ms", run.id, run.flow_id, run.flow_version, run.duration_ms);
    for node in &run.nodes {
        let mark = match node.status {
            NodeStatus::Succeeded => "ok    ",
            NodeStatus::Failed => "FAILED",
        };
        let what = node.call.as_ref().map(|c| format!("{} {c}", node.kind)).unwrap_or_else(|| node.kind.clone());
        let iteration = node.iteration.map(|i| format!(" [item {i}]")).unwrap_or_default();
        let attempts = match node.attempts.len() {
            0 => String::new(),
            1 => ", 1 attempt".to_string(),
            n => format!(", {n} attempts"),
        };
        let _ = writeln!(text, "  {mark} {}{iteration}  ({what}, {} ms{attempts})", node.node_id, node.duration_ms);
        for attempt in node.attempts.iter().filter(|a| a.error.is_some()) {
            let error = attempt.error.as_ref().map(|e| format!("{}: {}", e.kind, e.message)).unwrap_or_default();
            let retry = attempt.retry_after_ms.map(|ms| format!("; retried after {ms} ms")).unwrap_or_default();
            let _ = writeln!(
                text,
                "         attempt {} failed in {} ms: {error}{retry}",
                attempt.attempt, attempt.duration_ms
            );
        }
        for wait in &node.throttled {
            let note = wait.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default();
            let _ = writeln!(
                text,
                "         throttled (attempt {} not spent): {}; waited {} ms{note}",
                wait.attempt, wait.message, wait.waited_ms
            );
        }
        if node.paced_ms > 0 {
            let _ = writeln!(text, "         paced: waited {} ms for the connection's rate", node.paced_ms);
        }
        if let Some(input) = &node.input {
            let _ = writeln!(text, "         input:  {input}");
        }
        if let Some(output) = &node.output {
            let _ = writeln!(text, "         output: {}", truncate(&output.to_string(), 600));
        }
        if let Some(error) = &node.error {
            let _ = writeln!(text, "         error:  {}: {}", error.kind, error.message);
        }
        if let Some(next) = &node.next {
            let _ = writeln!(text, "         next:   {next}");
        }
    }
    for emitted in &run.emitted {
        let _ = writeln!(text, "  emitted {} {}", emitted.event, emitted.payload);
    }
    if let Some(error) = &run.error {
        let _ = writeln!(text, "  the run failed at node {}: {}: {}", error.node_id, error.kind, error.message);
    }
    text
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} in all)", &text[..cut], crate::ByteSize::from(text.len()))
}
