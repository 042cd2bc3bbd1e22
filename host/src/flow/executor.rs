//! Runs a loaded flow for one event: walks the nodes from the start, evaluates templates, calls
//! connectors with retries, branches, loops, emits, and records the run trace.

use super::expression::{Expression, Scope, Template};
use super::model::{Action, Flow, Node, RetryPolicy};
use super::trace::{Attempt, EmittedEvent, FlowFailure, NodeError, NodeStatus, NodeTrace, Run, RunStatus};
use crate::connector::{Connection, Connector, InvocationContext, Redactor};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// A runaway guard: no run executes more node steps than this (forEach iterations included).
pub const MAX_STEPS: usize = 100_000;

/// A flow checked, compiled and connected, ready to run many times.
pub struct LoadedFlow {
    pub(crate) flow: Flow,
    nodes: HashMap<String, CompiledNode>,
    start: Option<String>,
    on_error: Option<String>,
    pub(crate) connections: HashMap<String, (Arc<Connector>, Connection)>,
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
    Emit { event: Template, payload: Template },
    Fail { message: Template },
}

impl LoadedFlow {
    /// Compiles a flow that passed the linter. `connections` are already set up.
    pub(crate) fn compile(
        flow: Flow,
        connections: HashMap<String, (Arc<Connector>, Connection)>,
        default_retry: &RetryPolicy,
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
        Ok(LoadedFlow {
            start: flow.start.clone().or_else(|| flow.nodes.first().map(|n| n.id.clone())),
            on_error: flow.on_error.clone(),
            vars: Value::Object(flow.vars.clone()),
            redactor: Redactor::merge(&secrets),
            nodes,
            connections,
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

    /// Runs the flow for one event (already validated). `emit` receives each emitted event as it happens.
    pub async fn execute(&self, run_id: String, event: Value, emit: &(dyn Fn(&EmittedEvent) + Send + Sync)) -> Run {
        let started_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut state = RunState {
            run_id: run_id.clone(),
            started: Instant::now(),
            trigger: event.clone(),
            results: Map::new(),
            traces: Vec::new(),
            emitted: Vec::new(),
            steps: 0,
            error: Value::Null,
        };
        let mut result = self.run_scope(&mut state, self.start.clone(), None, emit).await;
        if let Err(failure) = &result
            && let Some(handler) = &self.on_error
        {
            state.error = failure.as_value();
            // The handler's own failure replaces nothing: the run failed with the original error.
            let _ = self.run_scope(&mut state, Some(handler.clone()), None, emit).await;
        }
        if let Err(failure) = &mut result {
            failure.message = self.redactor.redact(&failure.message);
        }
        Run {
            id: run_id,
            flow_id: self.flow.id.clone(),
            flow_version: self.flow.version.clone(),
            status: if result.is_ok() { RunStatus::Succeeded } else { RunStatus::Failed },
            started_at,
            duration_ms: state.started.elapsed().as_millis() as u64,
            trigger: self.redactor.redact_json(&event),
            nodes: state.traces,
            emitted: state.emitted,
            error: result.err(),
        }
    }

    fn run_scope<'s>(
        &'s self,
        state: &'s mut RunState,
        start: Option<String>,
        frame: Option<&'s Frame>,
        emit: &'s (dyn Fn(&EmittedEvent) + Send + Sync),
    ) -> Pin<Box<dyn Future<Output = Result<(), NodeError>> + Send + 's>> {
        Box::pin(async move {
            let mut current = start;
            while let Some(id) = current {
                state.steps += 1;
                if state.steps > MAX_STEPS {
                    return Err(NodeError::flow(&id, FlowFailure::StepLimit, format!("more than {MAX_STEPS} steps")));
                }
                let node = &self.nodes[&id];
                match self.run_node(node, state, frame, emit).await {
                    Ok(next) => current = next,
                    Err(failure) => {
                        state.results.insert(id.clone(), json!({"status": "failed", "error": failure.as_value()}));
                        match &node.on_error {
                            Some(handler) => current = Some(handler.clone()),
                            None => return Err(failure),
                        }
                    }
                }
            }
            Ok(())
        })
    }

    /// Runs one node; returns the next node, or the failure.
    async fn run_node(
        &self,
        node: &CompiledNode,
        state: &mut RunState,
        frame: Option<&Frame>,
        emit: &(dyn Fn(&EmittedEvent) + Send + Sync),
    ) -> Result<Option<String>, NodeError> {
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
        match &result {
            Ok((next, output)) => {
                trace.next = next.clone();
                trace.output = output.as_ref().map(|o| self.redactor.redact_json(o));
                state.results.insert(node.id.clone(), json!({"status": "succeeded", "output": output}));
            }
            Err(failure) => {
                trace.status = NodeStatus::Failed;
                trace.next = node.on_error.clone();
                let mut failure = failure.clone();
                failure.message = self.redactor.redact(&failure.message);
                trace.error = Some(failure);
            }
        }
        state.traces[slot] = trace;
        result.map(|(next, _)| next)
    }

    async fn perform(
        &self,
        node: &CompiledNode,
        state: &mut RunState,
        frame: Option<&Frame>,
        emit: &(dyn Fn(&EmittedEvent) + Send + Sync),
        trace: &mut NodeTrace,
    ) -> Result<(Option<String>, Option<Value>), NodeError> {
        let id = node.id.as_str();
        let expression_error = |message: String| NodeError::flow(id, FlowFailure::Expression, message);
        match &node.action {
            CompiledAction::Connector { connection, capability, input } => {
                trace.call = Some(format!("{connection}.{capability}"));
                let scope = state.scope(&self.vars, frame);
                let input = input.render(&scope).map_err(|e| expression_error(format!("input: {e}")))?;
                trace.input = Some(self.redactor.redact_json(&input));
                let (connector, connection) = &self.connections[connection];
                let output = self.call(node, connector, connection, capability, &input, state, frame, trace).await?;
                Ok((node.next.clone(), Some(output)))
            }
            CompiledAction::Condition { expression, then, otherwise } => {
                let scope = state.scope(&self.vars, frame);
                let value = expression.evaluate(&scope).map_err(expression_error)?;
                let Value::Bool(taken) = value else {
                    return Err(expression_error(format!("`{}` gave {value}, not true or false", expression.source())));
                };
                let target = if taken { then } else { otherwise };
                Ok((target.clone().or_else(|| node.next.clone()), Some(json!(taken))))
            }
            CompiledAction::ForEach { items, body_start } => {
                let scope = state.scope(&self.vars, frame);
                let list = match items.evaluate(&scope).map_err(expression_error)? {
                    Value::Array(list) => list,
                    Value::Null => Vec::new(),
                    other => return Err(expression_error(format!("`{}` gave {other}, not a list", items.source()))),
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
                    if let Err(failure) = result {
                        return Err(NodeError::flow(
                            id,
                            FlowFailure::Iteration,
                            format!("item {index} failed at node {}: {}", failure.node_id, failure.message),
                        ));
                    }
                }
                Ok((node.next.clone(), Some(Value::Array(outputs))))
            }
            CompiledAction::Emit { event, payload } => {
                let scope = state.scope(&self.vars, frame);
                let event = match event.render(&scope).map_err(expression_error)? {
                    Value::String(name) if !name.is_empty() => name,
                    other => return Err(expression_error(format!("the event name evaluated to {other}"))),
                };
                let payload = payload.render(&scope).map_err(expression_error)?;
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
                let message = match message.render(&scope).map_err(expression_error)? {
                    Value::String(text) => text,
                    other => other.to_string(),
                };
                Err(NodeError::flow(id, FlowFailure::Fail, message))
            }
        }
    }

    /// Calls a connector, retrying per the node's policy; every attempt goes into the trace.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        node: &CompiledNode,
        connector: &Connector,
        connection: &Connection,
        capability: &str,
        input: &Value,
        state: &RunState,
        frame: Option<&Frame>,
        trace: &mut NodeTrace,
    ) -> Result<Value, NodeError> {
        let mut attempt = 1;
        loop {
            let context = InvocationContext {
                run_id: state.run_id.clone(),
                node_id: node.id.clone(),
                // The same for every attempt of this node execution, so the remote side can de-duplicate.
                idempotency_key: format!("{}/{}", state.run_id, node_path(frame, &node.id)),
                attempt,
            };
            let started_ms = state.elapsed_ms();
            let invocation = connector.invoke(connection, capability, input, &context).await;
            trace.log.extend(invocation.log);
            let mut record = Attempt {
                attempt,
                started_ms,
                duration_ms: invocation.duration.as_millis() as u64,
                error: None,
                retry_after_ms: None,
            };
            match invocation.result {
                Ok(output) => {
                    trace.attempts.push(record);
                    return Ok(output);
                }
                Err(error) => {
                    let failure = NodeError::from_invoke(&node.id, &error);
                    record.error = Some(failure.clone());
                    if !node.retry.should_retry(error.kind(), attempt) {
                        trace.attempts.push(record);
                        return Err(failure);
                    }
                    let delay = node.retry.delay(attempt, error.retry_after());
                    record.retry_after_ms = Some(delay.as_millis() as u64);
                    trace.attempts.push(record);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }
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

/// The path of a node execution in idempotency keys: its id, prefixed by the iterations it runs in.
fn node_path(frame: Option<&Frame>, node_id: &str) -> String {
    match frame {
        Some(f) => format!("{}/{node_id}", f.key_prefix),
        None => node_id.to_string(),
    }
}

struct RunState {
    run_id: String,
    started: Instant,
    trigger: Value,
    /// `nodes.<id>` as expressions see it: status, output, error.
    results: Map<String, Value>,
    traces: Vec<NodeTrace>,
    emitted: Vec<EmittedEvent>,
    steps: usize,
    /// The failure being handled by the flow's onError handler.
    error: Value,
}

impl RunState {
    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn scope(&self, vars: &Value, frame: Option<&Frame>) -> Scope {
        let mut scope = Scope::default();
        scope.set("trigger", &self.trigger);
        scope.set("vars", vars);
        scope.set("nodes", &Value::Object(self.results.clone()));
        scope.set("run", &json!({"id": self.run_id}));
        scope.set("error", &self.error);
        if let Some(frame) = frame {
            scope.set("item", &frame.item);
            scope.set("index", &json!(frame.index));
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
