//! Flows: the JSON format (defined as Rust types), the linter, expressions and templates, the executor
//! and the run trace.

pub mod executor;
pub mod expression;
pub mod lint;
pub mod model;
pub mod trace;

pub use executor::{CallRecord, Checkpoint, CheckpointSink, LoadedFlow, Outcome, Stop};
pub use lint::{Problem, lint, parse};
pub use model::{Flow, RetryPolicy, Trigger, flow_schema};
pub use trace::{EmittedEvent, NodeError, NodeStatus, NodeTrace, Run, RunStatus};
