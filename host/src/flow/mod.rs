//! Flows: the JSON format (defined as Rust types), the linter, expressions and templates, retries, the `{field}`
//! mapping of emit nodes, the executor and the run trace.

pub mod emit_mapping;
pub mod executor;
pub mod expression;
pub mod lint;
pub mod model;
pub mod retry;
pub mod trace;

pub use executor::{CallRecord, Checkpoint, CheckpointSink, LoadedFlow, Outcome, Stop};
pub use lint::{Problem, Severity, is_json_schema, lint, parse};
pub use model::{Flow, NodeUi, Trigger, UiPosition, flow_schema};
pub use retry::{MAX_RETRY_AFTER, RetryPolicy};
pub use trace::{EmittedEvent, NodeError, NodeStatus, NodeTrace, Run, RunStatus, ThrottledWait};
