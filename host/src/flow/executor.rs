//! Runs a loaded flow for one event: walks the nodes from the start, evaluates templates, calls
//! connectors with retries, branches, loops, emits, and records the run trace.
//!
//! Two modes. [`LoadedFlow::execute`] runs a flow to its end in memory, sleeping between retries (the CLI
//! and the library's direct calls). [`LoadedFlow::execute_durable`] is what the durable service runs: it
//! never sleeps, and instead *stops* — for a resend later, when retries are exhausted, or when its progress
//! cannot be saved — returning a [`Checkpoint`] of every connector call made so far. Running the flow again
//! with that checkpoint replays it: nodes are evaluated again (they are deterministic), but a connector call
//! the checkpoint has is not made again; its recorded result is used. A call that was in flight when the
//! host died is made again with the same idempotency key, so the remote side de-duplicates it.

use super::expression::{Expression, Scope, Template};
use super::model::{Action, Flow, Node};
use super::retry::RetryPolicy;
use super::trace::{
    Attempt, EmittedEvent, FlowFailure, NodeError, NodeStatus, NodeTrace, Run, RunStatus, ThrottledWait,
};
use crate::connector::pacing::{Admission, Pacer, Pacing};
use crate::connector::{Connection, Connector, ErrorKind, InvocationContext, InvokeError, Redactor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A runaway guard: no run executes more node steps than this (forEach iterations included).
pub const MAX_STEPS: usize = 100_000;

/// The longest a durable run waits in place for its connection (pacing, a pause after a refusal); a longer wait
/// stops the run for a resend at the end of it instead, so that it does not hold a worker (no attempt is spent).
pub const DURABLE_MAX_WAIT: Duration = Duration::from_secs(5);

/// A durable run's saved progress: the connector calls it has made, by node path (`send_event`, or
/// `each_item/3/send` inside a forEach), so a resumed run does not make them again.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// Calls that ended (succeeded, or failed for good and took an error edge).
    #[serde(default)]
    pub calls: BTreeMap<String, CallRecord>,
    /// The failed attempts of calls that are waiting for a resend, or whose attempts ran out (a dead letter).
    #[serde(default)]
    pub failed_attempts: BTreeMap<String, Vec<Attempt>>,
    /// Attempts made before an operator retried the run: kept in the calls' traces, not counted against their
    /// retry policy.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub earlier_attempts: BTreeMap<String, Vec<Attempt>>,
    /// The throttled waits of calls that are waiting for a resend (they are not attempts).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub throttled: BTreeMap<String, Vec<ThrottledWait>>,
    /// When a call of the run was first refused for its rate (milliseconds since the Unix epoch): the start of
    /// the run's throttling budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled_since_ms: Option<i64>,
}

impl Checkpoint {
    /// Starts a fresh count of attempts for every call, as an operator's retry of a dead run asks, keeping the
    /// attempts made so far as history.
    pub fn start_over(&mut self) {
        for (path, attempts) in std::mem::take(&mut self.failed_attempts) {
            self.earlier_attempts.entry(path).or_default().extend(attempts);
        }
        // A fresh throttling budget too.
        self.throttled_since_ms = None;
    }
}

/// One finished connector call: its trace, and what expressions see of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub trace: NodeTrace,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<NodeError>,
}

/// Why a durable run stopped before its end.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// A connector call failed with a retryable error and may be tried again after `delay` (a resend).
    Resend { error: NodeError, delay: Duration },
    /// A connector call was refused for its rate, or its connection is paused: try again after `delay`, without
    /// spending an attempt.
    Throttled { error: NodeError, delay: Duration },
    /// A connector call failed with a retryable error and its attempts are used up (or its throttling budget):
    /// a dead letter.
    Exhausted { error: NodeError },
    /// The checkpoint could not be saved (e.g. the run's lease was lost): the run must stop here.
    Aborted { reason: String },
}

/// How a durable execution ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The run reached its end, succeeded or failed.
    Finished(Run),
    /// The run stopped early; `run` is the trace so far, and `checkpoint` resumes it.
    Stopped { stop: Stop, run: Run, checkpoint: Box<Checkpoint> },
}

/// Saves a durable run's checkpoint before its next connector call, so that a crash does not repeat the
/// calls it has made.
#[async_trait::async_trait]
pub trait CheckpointSink: Send + Sync {
    async fn save(&self, checkpoint: &Checkpoint) -> Result<(), String>;
}

/// Why a node did not lead to a next node.
enum Halt {
    /// The node failed; its error edge or the flow's handler takes over.
    Failed(NodeError),
    /// Durable mode: the run stops here and resumes later (or is dead-lettered).
    Stopped(Stop),
}

impl From<NodeError> for Halt {
    fn from(error: NodeError) -> Self {
        Halt::Failed(error)
    }
}

/// How retries are waited for.
#[derive(Clone, Copy)]
enum Mode {
    /// Sleep between attempts and run to the end.
    Inline,
    /// Stop on a retryable error; the caller resends later.
    Durable,
}

/// A flow checked, compiled and connected, ready to run many times.
pub struct LoadedFlow {
    pub(crate) flow: Flow,
    nodes: HashMap<String, CompiledNode>,
    start: Option<String>,
    on_error: Option<String>,
    pub(crate) connections: HashMap<String, (Arc<Connector>, Connection)>,
    /// Each connection's limiter, shared with every flow that names the connection.
    pacers: HashMap<String, Arc<Pacer>>,
    pub(crate) event_schema: Option<jsonschema::Validator>,
    redactor: Redactor,
    vars: Value,
}

impl std::fmt::Debug for LoadedFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedFlow").field("id", &self.flow.id).field("version", &self.flow.version).finish()
    }
}

struct CompiledNode {
    id: String,
    action: CompiledAction,
    next: Option<String>,
    on_error: Option<String>,
    retry: RetryPolicy,
}

enum CompiledAction {
    Connector { connection: String, capability: String, input: Template },
    Condition { expression: Expression, then: Option<String>, otherwise: Option<String> },
    ForEach { items: Expression, body_start: Option<String> },
    Emit { event: Template, payload: Template, fields: Map<String, Value> },
    Fail { message: Template },
}

impl LoadedFlow {
    /// Compiles a flow that passed the linter. `connections` are already set up.
    pub(crate) fn compile(
        flow: Flow,
        connections: HashMap<String, (Arc<Connector>, Connection)>,
        default_retry: &RetryPolicy,
        pacing: &Pacing,
    ) -> Result<Self, String> {
        let mut nodes = HashMap::new();
        compile_nodes(&flow.nodes, default_retry, &mut nodes)?;
        let event_schema = match &flow.trigger {
            super::model::Trigger::Event { schema: Some(schema), .. } => {
                Some(jsonschema::validator_for(schema).map_err(|e| format!("trigger schema: {e}"))?)
            }
            _ => None,
        };
        let secrets: Vec<Redactor> = connections.values().map(|(_, c)| c.redactor().clone()).collect();
        let pacers = connections.keys().map(|name| (name.clone(), pacing.pacer(name))).collect();
        Ok(LoadedFlow {
            start: flow.start.clone().or_else(|| flow.nodes.first().map(|n| n.id.clone())),
            on_error: flow.on_error.clone(),
            vars: Value::Object(flow.vars.clone()),
            redactor: Redactor::merge(&secrets),
            nodes,
            connections,
            pacers,
            event_schema,
            flow,
        })
    }

    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    pub fn id(&self) -> &str {
        &self.flow.id
    }

    /// Redacts the secrets of every connection of the flow (for what is shown besides the trace).
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// The connector and the set-up connection of one of the flow's connections.
    pub fn connection(&self, name: &str) -> Option<(&Arc<Connector>, &Connection)> {
        self.connections.get(name).map(|(connector, connection)| (connector, connection))
    }

    /// Validates an event against the trigger's schema; errors name the field by JSON pointer.
    pub fn validate_event(&self, event: &Value) -> Result<(), Vec<crate::connector::FieldError>> {
        let Some(validator) = &self.event_schema else { return Ok(()) };
        let errors: Vec<_> = validator
            .iter_errors(event)
            .map(|e| crate::connector::FieldError {
                pointer: e.instance_path().as_str().to_string(),
                message: e.to_string(),
            })
            .collect();
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// Runs the flow for one event (already validated) to its end, sleeping between retries. `emit` receives
    /// each emitted event as it happens.
    pub async fn execute(&self, run_id: String, event: Value, emit: &(dyn Fn(&EmittedEvent) + Send + Sync)) -> Run {
        let mut state = RunState::new(run_id, event, Mode::Inline, Checkpoint::default(), None);
        match self.run_to_end(&mut state, emit).await {
            Ok(run) => run,
            // Inline mode never stops early; were it to, the trace says where it got to.
            Err(_) => self.finish(state, Err(None)),
        }
    }

    /// Runs the flow for one event (already validated) durably: from `checkpoint` (empty for a new run),
    /// never sleeping, saving progress through `sink` before each connector call that follows a finished
    /// one. Emitted events are in the finished run's trace (the caller writes them to the outbox).
    pub async fn execute_durable(
        &self,
        run_id: String,
        event: Value,
        checkpoint: Checkpoint,
        sink: Option<&dyn CheckpointSink>,
    ) -> Outcome {
        let mut state = RunState::new(run_id, event, Mode::Durable, checkpoint, sink);
        match self.run_to_end(&mut state, &|_| {}).await {
            Ok(run) => Outcome::Finished(run),
            Err(stop) => {
                state.record_pending_calls();
                let checkpoint = Box::new(std::mem::take(&mut state.memo));
                Outcome::Stopped { stop, run: self.finish(state, Err(None)), checkpoint }
            }
        }
    }

    async fn run_to_end(
        &self,
        state: &mut RunState<'_>,
        emit: &(dyn Fn(&EmittedEvent) + Send + Sync),
    ) -> Result<Run, Stop> {
        let result = match self.run_scope(state, self.start.clone(), None, emit).await {
            Ok(()) => Ok(()),
            Err(Halt::Stopped(stop)) => return Err(stop),
            Err(Halt::Failed(failure)) => {
                if let Some(handler) = &self.on_error {
                    state.error = failure.as_value();
                    // The handler's own failure replaces nothing: the run failed with the original error.
                    if let Err(Halt::Stopped(stop)) = self.run_scope(state, Some(handler.clone()), None, emit).await {
                        return Err(stop);
                    }
                }
                Err(failure)
            }
        };
        let state = std::mem::replace(
            state,
            RunState::new(String::new(), Value::Null, Mode::Inline, Checkpoint::default(), None),
        );
        Ok(self.finish(state, result.map_err(Some)))
    }

    /// The run's trace. `result` is `Ok` when it succeeded, `Err(Some)` when it failed, `Err(None)` when it
    /// stopped before its end.
    fn finish(&self, state: RunState<'_>, result: Result<(), Option<NodeError>>) -> Run {
        let (status, error) = match result {
            Ok(()) => (RunStatus::Succeeded, None),
            Err(Some(mut failure)) => {
                failure.message = self.redactor.redact(&failure.message);
                (RunStatus::Failed, Some(failure))
            }
            Err(None) => (RunStatus::Incomplete, None),
        };
        Run {
            id: state.run_id,
            flow_id: self.flow.id.clone(),
            flow_version: self.flow.version.clone(),
            status,
            started_at: state.started_at,
            duration_ms: state.started.elapsed().as_millis() as u64,
            trigger: {
                // The run's own copy of the event: redacted where it is, not copied again.
                let mut trigger = state.trigger;
                self.redactor.redact_json_in_place(&mut trigger);
                trigger
            },
            nodes: state.traces,
            emitted: state.emitted,
            error,
        }
    }

    fn run_scope<'s, 'r: 's>(
        &'s self,
        state: &'s mut RunState<'r>,
        start: Option<String>,
        frame: Option<&'s Frame>,
        emit: &'s (dyn Fn(&EmittedEvent) + Send + Sync),
    ) -> Pin<Box<dyn Future<Output = Result<(), Halt>> + Send + 's>> {
        Box::pin(async move {
            let mut current = start;
            while let Some(id) = current {
                state.steps += 1;
                if state.steps > MAX_STEPS {
                    let message = format!("more than {MAX_STEPS} steps");
                    return Err(NodeError::flow(&id, FlowFailure::StepLimit, message).into());
                }
                let node = &self.nodes[&id];
                match self.run_node(node, state, frame, emit).await {
                    Ok(next) => current = next,
                    Err(Halt::Failed(failure)) => {
                        state.results.insert(id.clone(), json!({"status": "failed", "error": failure.as_value()}));
                        match &node.on_error {
                            Some(handler) => current = Some(handler.clone()),
                            None => return Err(Halt::Failed(failure)),
                        }
                    }
                    Err(stopped) => return Err(stopped),
                }
            }
            Ok(())
        })
    }

    /// Runs one node; returns the next node, or the failure.
    async fn run_node(
        &self,
        node: &CompiledNode,
        state: &mut RunState<'_>,
        frame: Option<&Frame>,
        emit: &(dyn Fn(&EmittedEvent) + Send + Sync),
    ) -> Result<Option<String>, Halt> {
        let path = node_path(frame, &node.id);
        if state.pending_calls.iter().any(|(pending, ..)| *pending == path) {
            // A node reached again in the same execution (through an error handler) replays its call too.
            state.record_pending_calls();
        }
        if let Some(record) = state.memo.calls.get(&path) {
            // Replaying a resumed run: this call was made before; its result stands.
            state.traces.push(record.trace.clone());
            return match &record.error {
                None => {
                    let output = record.output.clone().unwrap_or(Value::Null);
                    state.results.insert(node.id.clone(), succeeded(output));
                    Ok(record.trace.next.clone())
                }
                Some(failure) => Err(Halt::Failed(failure.clone())),
            };
        }
        let started_ms = state.elapsed_ms();
        let started = Instant::now();
        let mut trace = NodeTrace {
            node_id: node.id.clone(),
            kind: node.action.kind().to_string(),
            call: None,
            iteration: frame.map(|f| f.index),
            status: NodeStatus::Succeeded,
            started_ms,
            duration_ms: 0,
            attempts: Vec::new(),
            earlier_attempts: Vec::new(),
            throttled: Vec::new(),
            paced_ms: 0,
            input: None,
            output: None,
            error: None,
            next: None,
            log: Vec::new(),
        };
        // Reserve the trace's place so that a forEach comes before the traces of its body.
        let slot = state.traces.len();
        state.traces.push(trace.clone());
        let result = self.perform(node, state, frame, emit, &mut trace).await;
        trace.duration_ms = started.elapsed().as_millis() as u64;
        let is_call = matches!(node.action, CompiledAction::Connector { .. });
        let result = match result {
            Ok((next, output)) => {
                trace.next = next.clone();
                trace.output = output.as_ref().map(|o| self.redactor.redact_json(o));
                state.results.insert(node.id.clone(), succeeded(output.unwrap_or(Value::Null)));
                if is_call {
                    state.record_call(path, slot);
                }
                Ok(next)
            }
            Err(Halt::Failed(failure)) => {
                trace.status = NodeStatus::Failed;
                trace.next = node.on_error.clone();
                let mut redacted = failure.clone();
                redacted.message = self.redactor.redact(&redacted.message);
                trace.error = Some(redacted);
                if is_call && !trace.attempts.is_empty() {
                    state.record_call(path, slot);
                }
                Err(Halt::Failed(failure))
            }
            Err(halt) => {
                if let Halt::Stopped(Stop::Resend { error, .. } | Stop::Exhausted { error }) = &halt {
                    trace.status = NodeStatus::Failed;
                    let mut failure = error.clone();
                    failure.message = self.redactor.redact(&failure.message);
                    trace.error = Some(failure);
                }
                Err(halt)
            }
        };
        state.traces[slot] = trace;
        result
    }

    async fn perform(
        &self,
        node: &CompiledNode,
        state: &mut RunState<'_>,
        frame: Option<&Frame>,
        emit: &(dyn Fn(&EmittedEvent) + Send + Sync),
        trace: &mut NodeTrace,
    ) -> Result<(Option<String>, Option<Value>), Halt> {
        let id = node.id.as_str();
        let expression_error = |message: String| NodeError::flow(id, FlowFailure::Expression, message);
        match &node.action {
            CompiledAction::Connector { connection, capability, input } => {
                trace.call = Some(format!("{connection}.{capability}"));
                let scope = state.scope(&self.vars, frame);
                let input = input.render_blocking(&scope).map_err(|e| expression_error(format!("input: {e}")))?;
                trace.input = Some(self.redactor.redact_json(&input));
                let (connector, connection) = &self.connections[connection];
                let output = self.call(node, connector, connection, capability, &input, state, frame, trace).await?;
                Ok((node.next.clone(), Some(output)))
            }
            CompiledAction::Condition { expression, then, otherwise } => {
                let scope = state.scope(&self.vars, frame);
                let value = expression.evaluate_blocking(&scope).map_err(expression_error)?;
                let Value::Bool(taken) = value else {
                    let message = format!("`{}` gave {value}, not true or false", expression.source());
                    return Err(expression_error(message).into());
                };
                let target = if taken { then } else { otherwise };
                Ok((target.clone().or_else(|| node.next.clone()), Some(json!(taken))))
            }
            CompiledAction::ForEach { items, body_start } => {
                let scope = state.scope(&self.vars, frame);
                let list = match items.evaluate_blocking(&scope).map_err(expression_error)? {
                    Value::Array(list) => list,
                    Value::Null => Vec::new(),
                    other => {
                        return Err(expression_error(format!("`{}` gave {other}, not a list", items.source())).into());
                    }
                };
                trace.input = Some(json!({"items": list.len()}));
                let mut outputs = Vec::new();
                for (index, item) in list.into_iter().enumerate() {
                    let inner = Frame { item, index, key_prefix: format!("{}/{index}", node_path(frame, id)) };
                    let before = state.results.clone();
                    let result = self.run_scope(state, body_start.clone(), Some(&inner), emit).await;
                    // What the body's nodes produced in this iteration, by node id.
                    let produced: Map<String, Value> = state
                        .results
                        .iter()
                        .filter(|(k, v)| before.get(*k) != Some(*v))
                        .map(|(k, v)| (k.clone(), v.get("output").cloned().unwrap_or(Value::Null)))
                        .collect();
                    outputs.push(Value::Object(produced));
                    match result {
                        Ok(()) => {}
                        Err(Halt::Failed(failure)) => {
                            let message =
                                format!("item {index} failed at node {}: {}", failure.node_id, failure.message);
                            return Err(NodeError::flow(id, FlowFailure::Iteration, message).into());
                        }
                        Err(stopped) => return Err(stopped),
                    }
                }
                Ok((node.next.clone(), Some(Value::Array(outputs))))
            }
            CompiledAction::Emit { event, payload, fields } => {
                let scope = state.scope(&self.vars, frame);
                let event = match event.render_blocking(&scope).map_err(expression_error)? {
                    Value::String(name) if !name.is_empty() => name,
                    other => return Err(expression_error(format!("the event name evaluated to {other}")).into()),
                };
                let mut payload = payload.render_blocking(&scope).map_err(expression_error)?;
                if !fields.is_empty() {
                    let mapped = super::emit_mapping::map_fields(fields, &state.trigger)
                        .map_err(|e| expression_error(e.to_string()))?;
                    match &mut payload {
                        Value::Object(object) => object.extend(mapped),
                        Value::Null => payload = Value::Object(mapped),
                        other => {
                            let message = format!("the payload is {other}, not an object, so fields cannot be merged");
                            return Err(expression_error(message).into());
                        }
                    }
                }
                let emitted = EmittedEvent {
                    run_id: state.run_id.clone(),
                    flow_id: self.flow.id.clone(),
                    node_id: id.to_string(),
                    event,
                    payload: self.redactor.redact_json(&payload),
                };
                emit(&emitted);
                let output = json!({"event": emitted.event, "payload": emitted.payload});
                state.emitted.push(emitted);
                Ok((node.next.clone(), Some(output)))
            }
            CompiledAction::Fail { message } => {
                let scope = state.scope(&self.vars, frame);
                let message = match message.render_blocking(&scope).map_err(expression_error)? {
                    Value::String(text) => text,
                    other => other.to_string(),
                };
                Err(NodeError::flow(id, FlowFailure::Fail, message).into())
            }
        }
    }

    /// Calls a connector, retrying per the node's policy; every attempt goes into the trace. Inline, it sleeps
    /// between attempts; durable, it stops the run for a resend instead.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        node: &CompiledNode,
        connector: &Connector,
        connection: &Connection,
        capability: &str,
        input: &Value,
        state: &mut RunState<'_>,
        frame: Option<&Frame>,
        trace: &mut NodeTrace,
    ) -> Result<Value, Halt> {
        let path = node_path(frame, &node.id);
        state.save_checkpoint().await?;
        // Attempts made before a resend count against the node's policy, and stay in its trace.
        trace.attempts = state.memo.failed_attempts.remove(&path).unwrap_or_default();
        // Kept in the checkpoint too, for the traces of later resends.
        trace.earlier_attempts = state.memo.earlier_attempts.get(&path).cloned().unwrap_or_default();
        trace.throttled = state.memo.throttled.remove(&path).unwrap_or_default();
        let pacer = self.pacers.get(connection.name());
        let mut attempt = trace.attempts.len() as u32 + 1;
        loop {
            if let Some(pacer) = pacer
                && let Err(delay) = pace(pacer, state.mode, trace).await
            {
                // Durable, and the connection is paused (or paced) for longer than a run waits in place: a wait
                // for the service's rate like a refusal, within the run's throttling budget.
                let message = format!(
                    "connection {} is paused: its service refused calls for their rate; the call waits its turn",
                    connection.name()
                );
                let now = crate::store::now_ms();
                let since = *state.memo.throttled_since_ms.get_or_insert(now);
                let spent = Duration::from_millis(now.saturating_sub(since).max(0) as u64);
                let budget = node.retry.throttle_budget();
                if spent >= budget {
                    let error = InvokeError::RateLimited { retry_after_ms: None, message };
                    return Err(self.budget_spent(node, &path, state, trace, attempt, &error, spent));
                }
                let delay = delay.min(budget - spent);
                return Err(self.throttled_stop(node, path, state, trace, attempt, message, None, delay, None));
            }
            let context = InvocationContext {
                run_id: state.run_id.clone(),
                node_id: node.id.clone(),
                // The same for every attempt of this node execution, so the remote side can de-duplicate.
                idempotency_key: format!("{}/{path}", state.run_id),
                attempt,
            };
            let started_ms = state.elapsed_ms();
            let invocation = connector.invoke_batched(connection, capability, input, &context).await;
            trace.log.extend(invocation.log);
            let usage = invocation.usage_percent;
            let mut record = Attempt {
                attempt,
                started_ms,
                duration_ms: invocation.duration.as_millis() as u64,
                error: None,
                retry_after_ms: None,
            };
            let error = match invocation.result {
                Ok(output) => {
                    if let Some(pacer) = pacer {
                        pacer.accepted(usage);
                    }
                    trace.attempts.push(record);
                    return Ok(output);
                }
                Err(error) => error,
            };
            if error.kind() == ErrorKind::RateLimited && node.retry.retries(ErrorKind::RateLimited) {
                match self.throttled(node, &path, state, trace, pacer, attempt, &error, usage) {
                    Ok(delay) => {
                        tokio::time::sleep(delay).await;
                        // The same attempt again: a refusal for the rate does not spend one.
                        continue;
                    }
                    Err(halt) => return Err(halt),
                }
            }
            if let Some(pacer) = pacer {
                // Any other answer reached the service without a refusal for its rate.
                pacer.accepted(usage);
            }
            let mut failure = NodeError::from_invoke(&node.id, &error);
            failure.message = self.redactor.redact(&failure.message);
            record.error = Some(failure.clone());
            let retryable = node.retry.should_retry(error.kind(), 1);
            if !node.retry.should_retry(error.kind(), attempt) {
                trace.attempts.push(record);
                if let (Mode::Durable, true) = (&state.mode, retryable) {
                    // A dead letter: its attempts stay in the checkpoint, the history of an operator's retry.
                    state.memo.failed_attempts.insert(path, trace.attempts.clone());
                }
                return Err(match state.mode {
                    Mode::Durable if retryable => Halt::Stopped(Stop::Exhausted { error: failure }),
                    _ => Halt::Failed(failure),
                });
            }
            let delay = node.retry.delay(attempt, error.retry_after());
            record.retry_after_ms = Some(delay.as_millis() as u64);
            trace.attempts.push(record);
            if let Mode::Durable = state.mode {
                state.memo.failed_attempts.insert(path, trace.attempts.clone());
                return Err(Halt::Stopped(Stop::Resend { error: failure, delay }));
            }
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

impl LoadedFlow {
    /// Handles a refusal for the rate: pauses the connection, records the wait in the trace, and returns how long
    /// to wait in place before the same attempt again — or stops the run (a resend without spending an attempt,
    /// or a dead letter once the run's throttling budget is spent).
    // `Halt` is what every step of a run returns on its way out; boxing it here alone would help nothing.
    #[allow(clippy::too_many_arguments, clippy::result_large_err)]
    fn throttled(
        &self,
        node: &CompiledNode,
        path: &str,
        state: &mut RunState<'_>,
        trace: &mut NodeTrace,
        pacer: Option<&Arc<Pacer>>,
        attempt: u32,
        error: &InvokeError,
        usage: Option<u8>,
    ) -> Result<Duration, Halt> {
        let message = self.redactor.redact(&error.to_string());
        let asked = error.retry_after();
        // A Retry-After beyond what the host honours is capped, and the trace says so.
        let (retry_after, note) = match asked {
            Some(after) if after > super::retry::MAX_RETRY_AFTER => (
                Some(super::retry::MAX_RETRY_AFTER),
                Some(format!(
                    "the service asked to wait {}, more than the longest wait honoured ({}); waiting that",
                    humantime::format_duration(after),
                    humantime::format_duration(super::retry::MAX_RETRY_AFTER)
                )),
            ),
            other => (other, None),
        };
        let pause = pacer.map_or(Duration::ZERO, |p| p.refused(retry_after, usage));
        let now = crate::store::now_ms();
        let since = *state.memo.throttled_since_ms.get_or_insert(now);
        let spent = Duration::from_millis(now.saturating_sub(since).max(0) as u64);
        let budget = node.retry.throttle_budget();
        if spent >= budget {
            return Err(self.budget_spent(node, path, state, trace, attempt, error, spent));
        }
        // Paced, the connection's pause says when to try again (it is the same for every run of the connection);
        // unpaced, the run's own backoff, honouring Retry-After.
        let wait = match pacer {
            Some(p) if !pause.is_zero() || p.pause_left() > Duration::ZERO => p.pause_left(),
            _ => node.retry.delay(trace.throttled.len() as u32 + 1, retry_after),
        };
        // Never past the end of the budget: the last try comes before the dead letter.
        let wait = wait.min(budget - spent);
        if wait > DURABLE_MAX_WAIT && matches!(state.mode, Mode::Durable) {
            return Err(self.throttled_stop(node, path.to_string(), state, trace, attempt, message, asked, wait, note));
        }
        trace.throttled.push(ThrottledWait {
            at_unix_ms: now,
            attempt,
            message,
            retry_after_ms: asked.map(|d| d.as_millis() as u64),
            waited_ms: wait.as_millis() as u64,
            note,
        });
        Ok(wait)
    }

    /// The run's throttling budget is spent: the call fails (inline) or the run is dead-lettered (durable), with
    /// the reason.
    #[allow(clippy::too_many_arguments)]
    fn budget_spent(
        &self,
        node: &CompiledNode,
        path: &str,
        state: &mut RunState<'_>,
        trace: &mut NodeTrace,
        attempt: u32,
        error: &InvokeError,
        spent: Duration,
    ) -> Halt {
        let mut failure = NodeError::from_invoke(&node.id, error);
        failure.message = self.redactor.redact(&format!(
            "{}; the service has refused the run's calls for their rate for {}: its throttling budget ({}) is spent",
            failure.message,
            humantime::format_duration(Duration::from_secs(spent.as_secs())),
            humantime::format_duration(node.retry.throttle_budget())
        ));
        let record = Attempt {
            attempt,
            started_ms: state.elapsed_ms(),
            duration_ms: 0,
            error: Some(failure.clone()),
            retry_after_ms: None,
        };
        trace.attempts.push(record);
        if let Mode::Durable = state.mode {
            state.memo.failed_attempts.insert(path.to_string(), trace.attempts.clone());
            state.memo.throttled.insert(path.to_string(), trace.throttled.clone());
            return Halt::Stopped(Stop::Exhausted { error: failure });
        }
        Halt::Failed(failure)
    }

    /// Stops a durable run for a resend after `delay` without spending an attempt, recording the wait.
    #[allow(clippy::too_many_arguments)]
    fn throttled_stop(
        &self,
        node: &CompiledNode,
        path: String,
        state: &mut RunState<'_>,
        trace: &mut NodeTrace,
        attempt: u32,
        message: String,
        asked: Option<Duration>,
        delay: Duration,
        note: Option<String>,
    ) -> Halt {
        trace.throttled.push(ThrottledWait {
            at_unix_ms: crate::store::now_ms(),
            attempt,
            message: message.clone(),
            retry_after_ms: asked.map(|d| d.as_millis() as u64),
            waited_ms: delay.as_millis() as u64,
            note,
        });
        state.memo.failed_attempts.insert(path.clone(), trace.attempts.clone());
        state.memo.throttled.insert(path, trace.throttled.clone());
        let error = NodeError::from_invoke(&node.id, &InvokeError::RateLimited { retry_after_ms: None, message });
        Halt::Stopped(Stop::Throttled { error, delay })
    }
}

/// Waits for the connection's pacing before a call, adding the wait to the trace. Durable, a wait longer than
/// [`DURABLE_MAX_WAIT`] is not waited: it is returned, and nothing is reserved.
async fn pace(pacer: &Pacer, mode: Mode, trace: &mut NodeTrace) -> Result<(), Duration> {
    let max_wait = match mode {
        Mode::Inline => Duration::MAX,
        Mode::Durable => DURABLE_MAX_WAIT,
    };
    let started = Instant::now();
    match pacer.admit(max_wait) {
        Admission::Go => return Ok(()),
        Admission::Wait(wait) => tokio::time::sleep(wait).await,
        Admission::TooLong(wait) => return Err(wait),
    }
    // A refusal while we waited paused the connection: our slot comes after the pause.
    for _ in 0..3 {
        let left = pacer.pause_left();
        if left.is_zero() {
            break;
        }
        if matches!(mode, Mode::Durable) && left > DURABLE_MAX_WAIT {
            return Err(left);
        }
        tokio::time::sleep(left).await;
    }
    trace.paced_ms += started.elapsed().as_millis() as u64;
    Ok(())
}

impl CompiledAction {
    fn kind(&self) -> &'static str {
        match self {
            CompiledAction::Connector { .. } => "connector",
            CompiledAction::Condition { .. } => "condition",
            CompiledAction::ForEach { .. } => "forEach",
            CompiledAction::Emit { .. } => "emit",
            CompiledAction::Fail { .. } => "fail",
        }
    }
}

/// The current forEach item.
struct Frame {
    item: Value,
    index: usize,
    /// Identifies the iteration in idempotency keys: `loop/3`, or `outer/1/inner/3` when nested.
    key_prefix: String,
}

/// A node's result as `nodes.<id>` shows it, for a node that succeeded. (Built directly: `json!` would serialize
/// the output into a new value rather than move it.)
fn succeeded(output: Value) -> Value {
    let mut result = Map::new();
    result.insert("status".into(), "succeeded".into());
    result.insert("output".into(), output);
    Value::Object(result)
}

/// The path of a node execution in idempotency keys: its id, prefixed by the iterations it runs in.
fn node_path(frame: Option<&Frame>, node_id: &str) -> String {
    match frame {
        Some(f) => format!("{}/{node_id}", f.key_prefix),
        None => node_id.to_string(),
    }
}

struct RunState<'a> {
    run_id: String,
    started_at: String,
    started: Instant,
    trigger: Value,
    mode: Mode,
    /// `nodes.<id>` as expressions see it: status, output, error.
    results: Map<String, Value>,
    traces: Vec<NodeTrace>,
    emitted: Vec<EmittedEvent>,
    steps: usize,
    /// The failure being handled by the flow's onError handler.
    error: Value,
    /// The calls made so far (and those replayed), for durable runs.
    memo: Checkpoint,
    /// Calls made since `memo` was last brought up to date: each one's path and its trace's slot in `traces`. Its
    /// record is built from its trace only when a checkpoint is saved or returned, so a run that ends without
    /// another call copies none of its traces.
    pending_calls: Vec<(String, usize)>,
    /// Whether `memo` has calls that are not saved yet.
    unsaved: bool,
    sink: Option<&'a dyn CheckpointSink>,
}

impl<'a> RunState<'a> {
    fn new(run_id: String, trigger: Value, mode: Mode, memo: Checkpoint, sink: Option<&'a dyn CheckpointSink>) -> Self {
        RunState {
            run_id,
            started_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            started: Instant::now(),
            trigger,
            mode,
            results: Map::new(),
            traces: Vec::new(),
            emitted: Vec::new(),
            steps: 0,
            error: Value::Null,
            memo,
            pending_calls: Vec::new(),
            unsaved: false,
            sink,
        }
    }

    /// Records a finished call of a durable run: the call whose trace is (or will be, once its node ends) at `slot`
    /// of `traces`. What expressions saw of it is in that trace: its output if it succeeded, its error if it failed
    /// (a node's trace has only the one or the other).
    fn record_call(&mut self, path: String, slot: usize) {
        if let Mode::Durable = self.mode {
            self.pending_calls.push((path, slot));
            self.unsaved = true;
        }
    }

    /// Brings `memo` up to date with the calls recorded since, from their traces.
    fn record_pending_calls(&mut self) {
        for (path, slot) in self.pending_calls.drain(..) {
            let Some(trace) = self.traces.get(slot) else { continue };
            let record = CallRecord { trace: trace.clone(), output: trace.output.clone(), error: trace.error.clone() };
            self.memo.calls.insert(path, record);
        }
    }

    /// Saves the calls made since the last save, before another call is made: only a call that was in
    /// flight can be made twice after a crash (and its idempotency key covers that).
    async fn save_checkpoint(&mut self) -> Result<(), Halt> {
        if !self.unsaved {
            return Ok(());
        }
        self.record_pending_calls();
        if let Some(sink) = self.sink {
            sink.save(&self.memo).await.map_err(|reason| Halt::Stopped(Stop::Aborted { reason }))?;
        }
        self.unsaved = false;
        Ok(())
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn scope<'s>(&'s self, vars: &'s Value, frame: Option<&'s Frame>) -> Scope<'s> {
        let mut scope = Scope::default();
        scope.set("trigger", &self.trigger);
        scope.set("vars", vars);
        scope.set_owned("nodes", Value::Object(self.results.clone()));
        scope.set_owned("run", json!({"id": self.run_id}));
        scope.set("error", &self.error);
        if let Some(frame) = frame {
            scope.set("item", &frame.item);
            scope.set_owned("index", json!(frame.index));
        }
        scope
    }
}

fn compile_nodes(
    nodes: &[Node],
    default_retry: &RetryPolicy,
    out: &mut HashMap<String, CompiledNode>,
) -> Result<(), String> {
    for node in nodes {
        let at = |e: Vec<super::expression::TemplateError>| {
            format!("node {}: {}", node.id, e.into_iter().map(|e| e.message).collect::<Vec<_>>().join("; "))
        };
        let action = match node.action()? {
            Action::Connector(call) => CompiledAction::Connector {
                connection: call.connection.clone(),
                capability: call.capability.clone(),
                input: Template::compile(&call.input).map_err(at)?,
            },
            Action::Condition(c) => CompiledAction::Condition {
                expression: Expression::compile(&c.expression)?,
                then: c.then.clone(),
                otherwise: c.otherwise.clone(),
            },
            Action::ForEach(f) => {
                compile_nodes(&f.body, default_retry, out)?;
                CompiledAction::ForEach {
                    items: Expression::compile(&f.items)?,
                    body_start: f.body.first().map(|n| n.id.clone()),
                }
            }
            Action::Emit(e) => CompiledAction::Emit {
                event: Template::compile_text(&e.event).map_err(at)?,
                payload: Template::compile(&e.payload).map_err(at)?,
                fields: e.fields.clone(),
            },
            Action::Fail(f) => CompiledAction::Fail { message: Template::compile_text(&f.message).map_err(at)? },
        };
        out.insert(
            node.id.clone(),
            CompiledNode {
                id: node.id.clone(),
                action,
                next: node.next.clone(),
                on_error: node.on_error.clone(),
                retry: node.retry.clone().unwrap_or_else(|| default_retry.clone()),
            },
        );
    }
    Ok(())
}
