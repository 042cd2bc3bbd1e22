//! The flow format and its tools: the generated schema, the linter (data-driven broken flows), and the
//! executor's semantics with the echo connector (branches, loops, emits, failures, retries).

use flowhost::connector::{RuntimeConfig, SandboxLimits, SecretStore};
use flowhost::flow::{
    Checkpoint, CheckpointSink, NodeStatus, NodeTrace, Outcome, RunStatus, Severity, Stop, flow_schema,
};
use flowhost::{Host, HostConfig};
use flowhost_tests::components;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn flow_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("schema.json"))
        .collect();
    files.sort();
    files
}

pub async fn host_with_echo(cache: &Path) -> Host {
    let config = HostConfig {
        runtime: RuntimeConfig {
            cache_dir: Some(cache.to_path_buf()),
            max_instances: 32,
            limits: SandboxLimits { timeout: Duration::from_secs(5), ..SandboxLimits::default() },
            ..RuntimeConfig::default()
        },
        embedded_connectors: flowhost_cli::builtin::COMPONENTS.to_vec(),
        ..HostConfig::default()
    };
    let mut host = Host::new(config, SecretStore::from_pairs([("ECHO_TOKEN", "let-me-in")])).await.unwrap();
    host.add_connector_file(components::ECHO.as_ref()).await.unwrap();
    host
}

#[test]
fn schema_file_is_current() {
    let generated = serde_json::to_string_pretty(&flow_schema()).unwrap() + "\n";
    let committed = std::fs::read_to_string(repo("flows/schema.json")).unwrap();
    assert!(generated == committed, "flows/schema.json is stale: run `cargo run -- flow schema > flows/schema.json`");
}

#[tokio::test]
async fn example_flows_pass_check_and_fit_the_schema() {
    let cache = tempfile::tempdir().unwrap();
    let host = host_with_echo(cache.path()).await;
    let schema = jsonschema::validator_for(&flow_schema()).unwrap();
    let files = flow_files("flows");
    assert_eq!(files.len(), 11);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        if let Err(problems) = host.check(&text) {
            panic!("{}: {problems:?}", file.display());
        }
        let value: Value = serde_json::from_str(&text).unwrap();
        let errors: Vec<String> = schema.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", file.display());
    }
}

/// Each broken flow in tests/flows/broken has a `.expect` file of `POINTER<TAB>MESSAGE PART` lines; a message part
/// that starts with `warning: ` expects a warning. A flow whose expected problems are all warnings is not refused.
#[tokio::test]
async fn broken_flows_are_rejected_with_pointer_and_message() {
    let cache = tempfile::tempdir().unwrap();
    let host = host_with_echo(cache.path()).await;
    let files = flow_files("tests/flows/broken");
    assert!(files.len() >= 20, "one broken flow per lint rule");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expect = std::fs::read_to_string(file.with_extension("expect")).unwrap();
        let problems = match host.check_with_warnings(&text) {
            Ok((_, warnings)) => warnings,
            Err(problems) => problems,
        };
        let mut any_error = false;
        for line in expect.lines().filter(|l| !l.is_empty()) {
            let (pointer, message) = line.split_once('\t').unwrap();
            let (severity, message) = match message.strip_prefix("warning: ") {
                Some(message) => (Severity::Warning, message),
                None => (Severity::Error, message),
            };
            any_error |= severity == Severity::Error;
            assert!(
                problems.iter().any(|p| p.pointer == pointer && p.severity == severity && p.message.contains(message)),
                "{}: expected {severity:?} {pointer:?} {message:?}, got {problems:#?}",
                file.display()
            );
        }
        assert_eq!(host.check(&text).is_err(), any_error, "{}: refused only for errors", file.display());
    }
}

/// An input computed at run time is held to the same rule as a literal one: a property the capability's schema
/// does not declare fails the node before the call (invalid-input, not retried), unless the connection opts out.
#[tokio::test]
async fn undeclared_input_properties_are_refused_before_the_call_unless_the_connection_has_open_inputs() {
    let cache = tempfile::tempdir().unwrap();
    let host = host_with_echo(cache.path()).await;
    let node = json!({"id": "call", "connector": {"connection": "echo", "capability": "echo",
        "input": {"properties": "{{ trigger.props }}"}}});
    let event = json!({"n": 1, "props": {"message": "hi", "mesage": "typo"}});

    let strict = host.load(&echo_flow(json!([node.clone()]))).expect("the object comes from an expression");
    let run = host.run(&strict, event.clone()).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed, "{}", run.to_text());
    let error = run.nodes[0].error.as_ref().unwrap();
    assert_eq!(error.kind.to_string(), "invalid-input");
    assert!(
        error.message.contains("/properties/mesage: unknown property; did you mean `message`?"),
        "{}",
        error.message
    );
    assert_eq!(run.nodes[0].attempts.len(), 1, "an invalid input is not retried");

    let mut open: Value = serde_json::from_str(&echo_flow(json!([node]))).unwrap();
    open["connections"]["echo"]["openInputs"] = json!(true);
    let open = host.load(&open.to_string()).unwrap();
    let run = host.run(&open, event).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.to_text());
    assert_eq!(run.nodes[0].output.as_ref().unwrap()["input"]["properties"]["mesage"], "typo");
}

/// `openInputs` lets `check` pass a literal undeclared property too; schema errors are still found.
#[tokio::test]
async fn open_inputs_let_check_pass_undeclared_literal_properties() {
    let cache = tempfile::tempdir().unwrap();
    let host = host_with_echo(cache.path()).await;
    let node = json!({"id": "call", "connector": {"connection": "echo", "capability": "echo",
        "input": {"properties": {"message": "hi", "colour": "red"}}}});
    let strict = host.check(&echo_flow(json!([node.clone()]))).unwrap_err();
    assert_eq!(strict.len(), 1, "{strict:#?}");
    assert_eq!(strict[0].pointer, "/nodes/0/connector/input/properties/colour");
    assert_eq!(strict[0].message, "unknown property; the declared properties are `message`, `count`");

    let mut open: Value = serde_json::from_str(&echo_flow(json!([node]))).unwrap();
    open["connections"]["echo"]["openInputs"] = json!(true);
    assert!(host.check(&open.to_string()).is_ok());
    open["nodes"][0]["connector"]["input"]["properties"]["count"] = json!(-1);
    let problems = host.check(&open.to_string()).unwrap_err();
    assert_eq!(problems[0].pointer, "/nodes/0/connector/input/properties/count", "{problems:#?}");
}

fn echo_flow(nodes: Value) -> String {
    json!({
        "id": "echo-test", "version": "1.0.0",
        "trigger": {"type": "event", "event": "test", "schema": {"type": "object", "required": ["n"]}},
        "connections": {"echo": {"connector": "echo", "config": {"token": {"secret": "ECHO_TOKEN"}, "greeting": "hi"}}},
        "nodes": nodes
    })
    .to_string()
}

fn echo_node(id: &str, message: &str) -> Value {
    json!({"id": id, "connector": {"connection": "echo", "capability": "echo", "input": {"properties": {"message": message}}}})
}

#[tokio::test]
async fn branches_loops_and_emits_run_in_order() {
    let cache = tempfile::tempdir().unwrap();
    let mut host = host_with_echo(cache.path()).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    host.on_emit(move |event| sink.lock().unwrap().push(event.event.clone()));
    let mut first = echo_node("first", "n={{ trigger.n }}");
    first["next"] = json!("big");
    let text = echo_flow(json!([
        first,
        {"id": "big", "condition": {"if": "trigger.n > 2", "then": "each", "else": "small"}},
        {"id": "each", "forEach": {"items": "trigger.items", "do": [
            {"id": "say", "connector": {"connection": "echo", "capability": "echo",
              "input": {"properties": {"message": "{{ item }}-{{ index }}"}}}, "next": "tell"},
            {"id": "tell", "emit": {"event": "item_{{ index }}", "payload": {"echoed": "{{ nodes.say.output.message }}"}}}
        ]}, "next": "done"},
        {"id": "small", "emit": {"event": "small", "payload": {"n": "{{ trigger.n }}"}}},
        {"id": "done", "emit": {"event": "done", "payload": {"first": "{{ nodes.first.output.message }}", "loop": "{{ size(nodes.each.output) }}"}}}
    ]));
    let flow = host.load(&text).unwrap();
    let run = host.run(&flow, json!({"n": 3, "items": ["a", "b"]})).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    let order: Vec<(String, Option<usize>)> = run.nodes.iter().map(|n| (n.node_id.clone(), n.iteration)).collect();
    let expected: Vec<(String, Option<usize>)> = [
        ("first", None),
        ("big", None),
        ("each", None),
        ("say", Some(0)),
        ("tell", Some(0)),
        ("say", Some(1)),
        ("tell", Some(1)),
        ("done", None),
    ]
    .iter()
    .map(|(n, i)| (n.to_string(), *i))
    .collect();
    assert_eq!(order, expected);
    assert_eq!(run.nodes[0].input, Some(json!({"properties": {"message": "n=3"}})));
    assert_eq!(*seen.lock().unwrap(), ["item_0", "item_1", "done"]);
    assert_eq!(run.emitted[1].payload, json!({"echoed": "b-1"}));
    assert_eq!(run.emitted[2].payload, json!({"first": "n=3", "loop": 2}));
    // Idempotency keys: stable per node execution, distinct per iteration.
    let keys: Vec<&Value> =
        run.nodes.iter().filter_map(|n| n.output.as_ref()?.pointer("/context/idempotencyKey")).collect();
    assert_eq!(keys[0], &json!(format!("{}/first", run.id)));
    assert_eq!(keys[1], &json!(format!("{}/each/0/say", run.id)));
    assert_eq!(keys[2], &json!(format!("{}/each/1/say", run.id)));

    let small = host.run(&flow, json!({"n": 1, "items": []})).await.unwrap();
    assert_eq!(small.emitted.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(), ["small"]);

    let invalid = host.run(&flow, json!({"items": []})).await.unwrap_err();
    assert!(invalid.to_string().contains("\"n\" is a required property"), "{invalid}");
}

#[tokio::test]
async fn retries_follow_the_policy_and_show_in_the_trace() {
    let cache = tempfile::tempdir().unwrap();
    let host = host_with_echo(cache.path()).await;
    let fail = |kind: &str, retry: Value| {
        json!({"id": "call", "connector": {"connection": "echo", "capability": "fail",
            "input": {"kind": kind, "message": "remote said no", "retryAfterMs": 30}}, "retry": retry})
    };
    let policy = json!({"maxAttempts": 3, "initialDelayMs": 10, "jitter": 0});
    let flow = host.load(&echo_flow(json!([fail("transient", policy.clone())]))).unwrap();
    let run = host.run(&flow, json!({"n": 1})).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    let attempts = &run.nodes[0].attempts;
    assert_eq!(attempts.len(), 3, "{attempts:#?}");
    assert_eq!(attempts.iter().map(|a| a.retry_after_ms).collect::<Vec<_>>(), [Some(10), Some(20), None]);

    // A throttled call spends no attempt: it waits (Retry-After winning over a shorter backoff) until the node's
    // throttling budget is spent, then fails saying so.
    let mut throttled_policy = policy.clone();
    throttled_policy["throttleBudgetMs"] = json!(400);
    let limited = host.load(&echo_flow(json!([fail("rate-limited", throttled_policy)]))).unwrap();
    let run = host.run(&limited, json!({"n": 1})).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    let waits = &run.nodes[0].throttled;
    assert!(waits.len() > 3, "more tries than maxAttempts, none spent: {waits:#?}");
    // The connection's pause, read back a moment after it was set: just under the 30 ms asked, far over the 10 ms
    // backoff.
    assert_eq!(waits[0].retry_after_ms, Some(30), "{waits:#?}");
    assert!((20..=30).contains(&waits[0].waited_ms), "{waits:#?}");
    let message = &run.error.as_ref().unwrap().message;
    assert!(message.contains("throttling budget"), "{message}");

    let permanent = host.load(&echo_flow(json!([fail("permanent", policy)]))).unwrap();
    let run = host.run(&permanent, json!({"n": 1})).await.unwrap();
    assert_eq!(run.nodes[0].attempts.len(), 1, "a permanent error is not retried");
    assert_eq!(run.error.as_ref().unwrap().kind.to_string(), "permanent");
}

#[tokio::test]
async fn error_edges_and_the_flow_handler() {
    let cache = tempfile::tempdir().unwrap();
    let host = host_with_echo(cache.path()).await;
    let text = json!({
        "id": "errors", "version": "1.0.0",
        "trigger": {"type": "event", "event": "test"},
        "connections": {"echo": {"connector": "echo", "config": {"token": {"secret": "ECHO_TOKEN"}}}},
        "onError": "alert",
        "nodes": [
            {"id": "call", "connector": {"connection": "echo", "capability": "fail", "input": {"kind": "not-found", "message": "no such account"}},
             "onError": "recover"},
            {"id": "recover", "emit": {"event": "recovered", "payload": {"why": "{{ nodes.call.error.message }}", "kind": "{{ nodes.call.error.kind }}"}},
             "next": "stop"},
            {"id": "stop", "fail": {"message": "giving up after {{ nodes.call.error.kind }}"}},
            {"id": "alert", "emit": {"event": "flow_failed", "payload": {"node": "{{ error.node }}", "message": "{{ error.message }}"}}}
        ]
    })
    .to_string();
    let flow = host.load(&text).unwrap();
    let run = host.run(&flow, json!({})).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.nodes[0].status, NodeStatus::Failed);
    assert_eq!(run.nodes[0].next.as_deref(), Some("recover"));
    assert_eq!(run.emitted[0].payload, json!({"why": "not found: no such account", "kind": "not-found"}));
    assert_eq!(run.emitted[1].payload, json!({"node": "stop", "message": "giving up after not-found"}));
    let error = run.error.unwrap();
    assert_eq!((error.node_id.as_str(), error.kind.to_string().as_str()), ("stop", "fail"));
}

#[tokio::test]
async fn a_call_the_flow_handler_reaches_again_is_replayed_not_made_twice() {
    let cache = tempfile::tempdir().unwrap();
    let host = host_with_echo(cache.path()).await;
    let mut first = echo_node("first", "n={{ trigger.n }}");
    first["next"] = json!("stop");
    let mut text: Value =
        serde_json::from_str(&echo_flow(json!([first, {"id": "stop", "fail": {"message": "no"}}]))).unwrap();
    text["onError"] = json!("first");
    let flow = host.load(&text.to_string()).unwrap();
    let saved = Saved::default();
    let Outcome::Finished(run) =
        flow.execute_durable("run-1".into(), json!({"n": 3}), Checkpoint::default(), Some(&saved)).await
    else {
        panic!("expected the run to finish")
    };
    assert_eq!(run.status, RunStatus::Failed);
    let firsts: Vec<&NodeTrace> = run.nodes.iter().filter(|node| node.node_id == "first").collect();
    assert_eq!(firsts.len(), 2, "the handler ran the node again");
    // Replayed from the run's own record: the same trace, and no checkpoint saved, as one is before a new call.
    assert_eq!(serde_json::to_value(firsts[0]).unwrap(), serde_json::to_value(firsts[1]).unwrap());
    assert!(saved.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn expression_failures_name_the_node_and_the_expression() {
    let cache = tempfile::tempdir().unwrap();
    let host = host_with_echo(cache.path()).await;
    let flow = host.load(&echo_flow(json!([echo_node("call", "{{ trigger.missing.deeper }}")]))).unwrap();
    let run = host.run(&flow, json!({"n": 1})).await.unwrap();
    let error = run.error.unwrap();
    assert_eq!(error.kind.to_string(), "expression");
    assert!(error.message.contains("trigger.missing.deeper"), "{}", error.message);
}

/// Random damage to the example flows (keys removed, values replaced by other types, broken expressions)
/// must give problems or a clean pass, never a panic.
#[tokio::test]
async fn damaged_flows_never_panic_the_linter() {
    let cache = tempfile::tempdir().unwrap();
    let host = host_with_echo(cache.path()).await;
    let replacements = [
        json!(null),
        json!(42),
        json!("{{ nodes.nope.output }}"),
        json!("{{ }}"),
        json!("{{ trigger.x ? }}"),
        json!({"secret": "NOT_SET"}),
        json!([]),
        json!({"id": "x", "emit": {"event": "e"}}),
        json!("plain"),
    ];
    let mut seed: u64 = 0x5eed;
    let mut next = move |bound: usize| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 33) as usize) % bound.max(1)
    };
    let mut checked = 0;
    for file in flow_files("flows") {
        let original: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for _ in 0..60 {
            let mut flow = original.clone();
            let mut paths = Vec::new();
            collect_paths(&flow, String::new(), &mut paths);
            let target = &paths[next(paths.len())];
            let damage = next(3);
            if let Some(value) = flow.pointer_mut(target) {
                match damage {
                    0 => *value = replacements[next(replacements.len())].clone(),
                    1 => *value = json!({}),
                    _ => *value = json!(format!("{{{{ {} }}}}", target.replace('/', "."))),
                }
            }
            let _ = host.check(&flow.to_string());
            checked += 1;
        }
    }
    assert_eq!(checked, 660);
}

fn collect_paths(value: &Value, pointer: String, out: &mut Vec<String>) {
    out.push(pointer.clone());
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                collect_paths(child, format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                collect_paths(child, format!("{pointer}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Records the checkpoints a durable run saves.
#[derive(Default)]
struct Saved(Mutex<Vec<Checkpoint>>);

#[async_trait::async_trait]
impl CheckpointSink for Saved {
    async fn save(&self, checkpoint: &Checkpoint) -> Result<(), String> {
        self.0.lock().unwrap().push(checkpoint.clone());
        Ok(())
    }
}

#[tokio::test]
async fn durable_runs_stop_for_resends_and_replay_their_checkpoint() {
    let cache = tempfile::tempdir().unwrap();
    let host = host_with_echo(cache.path()).await;
    let mut first = echo_node("first", "n={{ trigger.n }}");
    first["next"] = json!("each");
    let text = echo_flow(json!([
        first,
        {"id": "each", "forEach": {"items": "trigger.items", "do": [echo_node("say", "{{ item }}")]}, "next": "flaky"},
        {"id": "flaky", "connector": {"connection": "echo", "capability": "fail",
            "input": {"kind": "transient", "message": "try later"}},
         "retry": {"maxAttempts": 3, "initialDelayMs": 1000, "jitter": 0}, "next": "done"},
        {"id": "done", "emit": {"event": "done", "payload": {"first": "{{ nodes.first.output.message }}"}}}
    ]));
    let flow = host.load(&text).unwrap();
    let event = json!({"n": 7, "items": ["a", "b"]});
    let saved = Saved::default();

    // First execution: three calls succeed, the fourth fails and the run stops for a resend (no sleeping).
    let Outcome::Stopped { stop: Stop::Resend { error, delay }, run, checkpoint } =
        flow.execute_durable("run-1".into(), event.clone(), Checkpoint::default(), Some(&saved)).await
    else {
        panic!("expected a resend")
    };
    assert_eq!((error.node_id.as_str(), delay), ("flaky", Duration::from_secs(1)));
    assert_eq!(run.status, RunStatus::Incomplete);
    assert_eq!(checkpoint.calls.keys().collect::<Vec<_>>(), ["each/0/say", "each/1/say", "first"]);
    assert_eq!(checkpoint.failed_attempts["flaky"].len(), 1);
    // Each record is its node's trace, with what expressions saw of the call.
    let first_trace = run.nodes.iter().find(|node| node.node_id == "first").unwrap();
    let record = &checkpoint.calls["first"];
    assert_eq!(serde_json::to_value(&record.trace).unwrap(), serde_json::to_value(first_trace).unwrap());
    assert!(record.output.is_some() && record.error.is_none());
    assert_eq!(record.output, first_trace.output);
    // Saved before each call that followed a finished one, never after the last.
    let saves = saved.0.lock().unwrap().iter().map(|c| c.calls.len()).collect::<Vec<_>>();
    assert_eq!(saves, [1, 2, 3]);

    // Resuming replays the recorded calls instead of making them: a doctored record shows through.
    let mut resumed = *checkpoint.clone();
    resumed.calls.get_mut("first").unwrap().output = Some(json!({"message": "from the checkpoint"}));
    let Outcome::Stopped { stop: Stop::Resend { .. }, run, checkpoint } =
        flow.execute_durable("run-1".into(), event.clone(), resumed, Some(&saved)).await
    else {
        panic!("expected a second resend")
    };
    let flaky = run.nodes.iter().find(|n| n.node_id == "flaky").unwrap();
    assert_eq!(flaky.attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(), [1, 2], "attempts carry over");
    assert_eq!(saved.0.lock().unwrap().len(), 3, "nothing new to save: replayed calls are already saved");

    // The third attempt is the policy's last: retries exhausted, a dead letter.
    let outcome = flow.execute_durable("run-1".into(), event.clone(), *checkpoint, Some(&saved)).await;
    let Outcome::Stopped { stop: Stop::Exhausted { error }, run, .. } = outcome else { panic!("expected exhaustion") };
    assert_eq!(error.kind.to_string(), "transient");
    assert_eq!(run.nodes.iter().find(|n| n.node_id == "flaky").unwrap().attempts.len(), 3);

    // A flow whose calls succeed finishes in one execution, with its emitted events in the trace.
    let fine = host.load(&echo_flow(json!([echo_node("only", "hello")]))).unwrap();
    let Outcome::Finished(run) =
        fine.execute_durable("run-2".into(), json!({"n": 1}), Checkpoint::default(), None).await
    else {
        panic!("expected the run to finish")
    };
    assert_eq!(run.status, RunStatus::Succeeded);

    // A checkpoint that cannot be saved stops the run before its next call.
    struct Refuse;
    #[async_trait::async_trait]
    impl CheckpointSink for Refuse {
        async fn save(&self, _: &Checkpoint) -> Result<(), String> {
            Err("lease lost".into())
        }
    }
    let outcome = flow.execute_durable("run-3".into(), event, Checkpoint::default(), Some(&Refuse)).await;
    let Outcome::Stopped { stop: Stop::Aborted { reason }, run, .. } = outcome else { panic!("expected an abort") };
    assert_eq!(reason, "lease lost");
    assert_eq!(run.nodes.iter().filter(|n| n.kind == "connector").count(), 2, "first, then the refused save");
}
