//! Hostile connectors: each fails with its own error kind, within the deadline, and the host then serves
//! a good call.

use crate::{connect, context, load, test_runtime};
use flowhost::connector::{
    CacheLimits, ConnectionOptions, ErrorKind, Invocation, LogLevel, LogSource, Runtime, RuntimeConfig, SandboxLimits,
    SecretStore,
};
use flowhost_tests::components;
use serde_json::json;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(2);
/// The epoch ticks every 10 ms and the ticker thread may be scheduled late on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(1500);

async fn assert_hostile(component: &str, expected: ErrorKind, message_part: &str) {
    let (runtime, _cache) = test_runtime(DEADLINE);
    let connector = load(&runtime, component).await;
    let connection = connect(&connector, json!({}), ConnectionOptions::default());
    let started = Instant::now();
    let invocation = connector.invoke(&connection, "run", &json!({}), &context("hostile")).await;
    let elapsed = started.elapsed();
    let error = invocation.result.expect_err("a hostile connector must fail");
    assert_eq!(error.kind(), expected, "{component}: {error}");
    assert!(error.to_string().contains(message_part), "{component}: {error}");
    assert!(elapsed <= DEADLINE + SLACK, "{component} took {elapsed:?}");
    assert_serves_good_call(&runtime).await;
}

/// The same runtime still serves a well-behaved connector.
async fn assert_serves_good_call(runtime: &Runtime) {
    let echo = load(runtime, components::ECHO).await;
    let secrets = SecretStore::from_pairs([("TOKEN", "let-me-in")]);
    let connection = echo
        .connection("good", &json!({"token": {"secret": "TOKEN"}}), &secrets, &ConnectionOptions::default())
        .unwrap();
    let invocation =
        echo.invoke(&connection, "echo", &json!({"properties": {"message": "still here"}}), &context("good")).await;
    assert_eq!(invocation.result.unwrap()["message"], "still here");
}

#[tokio::test]
async fn infinite_loop_times_out() {
    assert_hostile(components::INFINITE_LOOP, ErrorKind::Timeout, "timed out after 2000 ms").await;
}

#[tokio::test]
async fn memory_bomb_hits_the_memory_limit() {
    assert_hostile(components::MEMORY_BOMB, ErrorKind::MemoryLimit, "memory limit of 32 MiB").await;
}

#[tokio::test]
async fn stack_overflow_crashes_cleanly() {
    assert_hostile(components::STACK_OVERFLOW, ErrorKind::Crashed, "stack overflow").await;
}

#[tokio::test]
async fn panic_reports_its_message() {
    assert_hostile(components::PANIC, ErrorKind::Crashed, "the connector exploded on purpose").await;
}

/// A runtime like [`test_runtime`]'s with the size limits `limits` sets.
fn runtime_with(limits: impl FnOnce(&mut SandboxLimits)) -> (Runtime, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let mut config = RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        max_instances: 16,
        limits: SandboxLimits { memory_bytes: 32 << 20, timeout: DEADLINE, ..SandboxLimits::default() },
        ..RuntimeConfig::default()
    };
    limits(&mut config.limits);
    (Runtime::new(config).unwrap(), cache)
}

/// Calls a capability of the `flood` component on a connection of its own.
async fn flood(runtime: &Runtime, connection: &str, capability: &str, input: serde_json::Value) -> Invocation {
    let connector = load(runtime, components::FLOOD).await;
    let connection =
        connector.connection(connection, &json!({}), &SecretStore::default(), &Default::default()).unwrap();
    connector.invoke(&connection, capability, &input, &context(capability)).await
}

fn host_lines(invocation: &Invocation, level: LogLevel) -> Vec<&str> {
    invocation
        .log
        .iter()
        .filter(|line| line.source == LogSource::Host && line.level == level)
        .map(|line| line.message.as_str())
        .collect()
}

#[tokio::test]
async fn an_output_over_the_limit_fails_with_output_too_large_and_is_not_kept() {
    let (runtime, _cache) = runtime_with(|_| {});
    // 5 MiB, over the default of 4 MiB.
    let invocation = flood(&runtime, "big", "hugeOutput", json!({"bytes": 5 << 20})).await;
    let error = invocation.result.as_ref().expect_err("refused");
    assert_eq!(error.kind(), ErrorKind::OutputTooLarge, "{error}");
    assert!(!error.kind().is_retryable());
    let message = error.to_string();
    assert!(message.contains("output is 5.0 MiB, over the limit of 4 MiB (max_output_bytes)"), "{message}");
    assert!(host_lines(&invocation, LogLevel::Error).contains(&message.as_str()), "{:?}", invocation.log);
    assert!(invocation.log.iter().all(|line| line.message.len() < 1024), "nothing of the output is kept");
    // Under the limit, the same capability works.
    let fits = flood(&runtime, "big", "hugeOutput", json!({"bytes": 1 << 20})).await;
    assert_eq!(fits.result.unwrap()["data"].as_str().unwrap().len(), 1 << 20);
    assert_serves_good_call(&runtime).await;
}

#[tokio::test]
async fn an_error_over_the_limit_fails_with_output_too_large_not_as_the_kind_it_claims() {
    let (runtime, _cache) = runtime_with(|_| {});
    for (kind, claimed) in [("transient", "transient error"), ("permanent", "permanent error")] {
        let invocation = flood(&runtime, "errors", "hugeError", json!({"bytes": 1 << 20, "kind": kind})).await;
        let error = invocation.result.expect_err("refused");
        assert_eq!(error.kind(), ErrorKind::OutputTooLarge, "not retried as {kind}: {error}");
        let message = error.to_string();
        assert!(message.contains(&format!("the connector's {claimed} is 1")), "{message}");
        assert!(message.contains("MiB, over the limit of 64 KiB (max_error_bytes)"), "{message}");
        assert!(!message.contains("eee"), "the refused text is not kept: {message}");
    }
    let small = flood(&runtime, "errors", "hugeError", json!({"bytes": 1000, "kind": "transient"})).await;
    assert_eq!(small.result.unwrap_err().kind(), ErrorKind::Transient, "an error within the limit keeps its kind");
    assert_serves_good_call(&runtime).await;
}

#[tokio::test]
async fn output_and_error_limits_are_the_embedders_to_set() {
    let (runtime, _cache) = runtime_with(|limits| {
        limits.max_output_bytes = 1024;
        limits.max_error_bytes = 100;
    });
    let output = flood(&runtime, "small", "hugeOutput", json!({"bytes": 2000})).await.result.unwrap_err();
    assert!(output.to_string().contains("over the limit of 1 KiB (max_output_bytes)"), "{output}");
    let error = flood(&runtime, "small", "hugeError", json!({"bytes": 101, "kind": "invalid-input"})).await;
    let error = error.result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OutputTooLarge);
    assert!(error.to_string().contains("invalid-input error is 114 bytes, over the limit of 100 bytes"), "{error}");
    assert!(flood(&runtime, "small", "hugeOutput", json!({"bytes": 1000})).await.result.is_ok());
}

#[tokio::test]
async fn a_flooded_cache_keeps_its_bounds_drops_the_writes_past_them_and_says_so() {
    // The case: 4 MiB keys, then 4 MiB values; none is stored under the default limits.
    let (runtime, _cache) = runtime_with(|_| {});
    let keys = flood(&runtime, "keys", "floodCache", json!({"keys": 32, "keyBytes": 4 << 20, "valueBytes": 1})).await;
    assert_eq!(keys.result.as_ref().unwrap()["kept"], 0);
    let refused = host_lines(&keys, LogLevel::Warn);
    assert!(
        refused[0].contains("a key of 4 MiB is longer than the limit of 1 KiB (cache_max_key_bytes)"),
        "{refused:?}"
    );
    assert!(refused[0].ends_with("the write was dropped"), "{refused:?}");
    let values = flood(&runtime, "values", "floodCache", json!({"keys": 32, "valueBytes": 4 << 20})).await;
    assert_eq!(values.result.as_ref().unwrap()["kept"], 0);
    assert!(host_lines(&values, LogLevel::Warn)[0].contains("(cache_max_value_bytes)"));

    // Under a total of 1 MiB per connection, 60 KiB values: the first 17 fit, the rest are dropped.
    let (runtime, _cache) = runtime_with(|limits| {
        limits.cache = CacheLimits { max_bytes: 1 << 20, ..CacheLimits::default() };
    });
    let flooded = flood(&runtime, "flooded", "floodCache", json!({"keys": 100, "valueBytes": 60 * 1024})).await;
    let kept = flooded.result.as_ref().unwrap();
    assert_eq!(kept["kept"], 17, "{kept}");
    assert!(kept["keptBytes"].as_u64().unwrap() <= 1 << 20);
    let refused = host_lines(&flooded, LogLevel::Warn);
    assert_eq!(refused.len(), 83, "one line per dropped write");
    assert!(refused[0].contains("holds 1020.1 KiB of its limit of 1 MiB (cache_max_bytes)"), "{refused:?}");
    // Another connection has its own room.
    let other = flood(&runtime, "other", "floodCache", json!({"keys": 10, "valueBytes": 60 * 1024})).await;
    assert_eq!(other.result.unwrap()["kept"], 10);
    assert_serves_good_call(&runtime).await;
}

#[tokio::test]
async fn stdout_and_stderr_past_the_log_limit_are_cut_not_fatal() {
    // Twenty thousand writes, each a host call: time enough for them on a loaded machine in a debug build.
    let (runtime, _cache) = runtime_with(|limits| limits.timeout = Duration::from_secs(30));
    // 1 MiB to each stream: 16 times the 64 KiB that used to end the call.
    let invocation = flood(&runtime, "chatty", "floodStdout", json!({"bytes": 1 << 20})).await;
    assert_eq!(invocation.result.as_ref().expect("the call succeeds")["lines"], 10485);
    let cut = host_lines(&invocation, LogLevel::Warn);
    assert_eq!(cut.len(), 2, "{cut:?}");
    assert!(
        cut[0].starts_with("stdout cut at 64 KiB (max_log_bytes): the next 959.9 KiB the connector wrote were dropped"),
        "{cut:?}"
    );
    assert!(cut[1].starts_with("stderr cut at 64 KiB"), "{cut:?}");
    let kept: usize = invocation.log.iter().filter(|l| l.source == LogSource::Stdout).map(|l| l.message.len()).sum();
    assert!(kept > 0 && kept <= 64 * 1024, "the first bytes are kept: {kept}");
    assert_serves_good_call(&runtime).await;
}

#[tokio::test]
async fn many_hostile_calls_in_parallel_leave_the_host_serving() {
    let (runtime, _cache) = test_runtime(DEADLINE);
    let bomb = load(&runtime, components::MEMORY_BOMB).await;
    let panic = load(&runtime, components::PANIC).await;
    let connection_bomb = connect(&bomb, json!({}), ConnectionOptions::default());
    let connection_panic = connect(&panic, json!({}), ConnectionOptions::default());
    let (input, invocation_context) = (json!({}), context("parallel"));
    let mut calls = Vec::new();
    for i in 0..8 {
        let (connector, connection) = if i % 2 == 0 { (&bomb, &connection_bomb) } else { (&panic, &connection_panic) };
        calls.push(connector.invoke(connection, "run", &input, &invocation_context));
    }
    for invocation in futures::future::join_all(calls).await {
        assert!(matches!(invocation.result.unwrap_err().kind(), ErrorKind::MemoryLimit | ErrorKind::Crashed));
    }
    assert_serves_good_call(&runtime).await;
}

#[tokio::test]
async fn a_component_cannot_take_a_built_in_connectors_id_unless_the_operator_says_so() {
    use flowhost::{Host, HostConfig};
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The echo component stands for a built-in here; an impostor claims its id with other bytes (the same
    // component with a custom section appended), while a byte-for-byte copy is the built-in itself.
    let builtin: &'static [u8] = Box::leak(std::fs::read(components::ECHO).unwrap().into_boxed_slice());
    let mut impostor = builtin.to_vec();
    impostor.extend_from_slice(b"\x00\x09\x08impostor");
    std::fs::write(dir.path().join("impostor.wasm"), &impostor).unwrap();
    let config = |override_builtin: Vec<String>| HostConfig {
        runtime: flowhost::connector::RuntimeConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            ..Default::default()
        },
        embedded_connectors: vec![builtin],
        connector_dirs: vec![dir.path().to_path_buf()],
        override_builtin,
        ..HostConfig::default()
    };
    let error = Host::new(config(Vec::new()), SecretStore::default()).await.err().expect("the id is reserved");
    let message = error.to_string();
    assert!(message.contains("impostor.wasm") && message.contains("built-in"), "{message}");
    assert!(message.contains("override_builtin = [\"echo\"]"), "says how to allow it: {message}");
    let host = Host::new(config(vec!["echo".into()]), SecretStore::default()).await.unwrap();
    assert_eq!(host.registry().all().iter().filter(|c| c.manifest().id == "echo").count(), 1, "replaced, not added");
    std::fs::write(dir.path().join("impostor.wasm"), builtin).unwrap();
    let host =
        Host::new(config(Vec::new()), SecretStore::default()).await.expect("a copy of the built-in is the built-in");
    assert_eq!(host.registry().all().iter().filter(|c| c.manifest().id == "echo").count(), 1);
}

#[tokio::test]
async fn a_flow_whose_connector_returns_too_much_fails_once_and_its_run_stays_small() {
    use flowhost::flow::RunStatus;
    use flowhost::{Host, HostConfig};
    let cache = tempfile::tempdir().unwrap();
    let config = HostConfig {
        runtime: RuntimeConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            max_instances: 16,
            // The default memory limit (64 MiB): room for a 40 MiB output.
            limits: SandboxLimits { timeout: Duration::from_secs(20), ..Default::default() },
            ..RuntimeConfig::default()
        },
        ..HostConfig::default()
    };
    let mut host = Host::new(config, SecretStore::default()).await.unwrap();
    host.add_connector_file(components::FLOOD.as_ref()).await.unwrap();
    // The case: a 40 MiB output (and then a 40 MiB error) under a policy that retries three times.
    for (capability, input) in
        [("hugeOutput", json!({"bytes": 40 << 20})), ("hugeError", json!({"bytes": 40 << 20, "kind": "transient"}))]
    {
        let flow = json!({
            "id": "flood", "version": "1.0.0",
            "trigger": {"type": "event", "event": "test"},
            "connections": {"flood": {"connector": "flood", "config": {}}},
            "nodes": [{"id": "call", "connector": {"connection": "flood", "capability": capability, "input": input},
                       "retry": {"maxAttempts": 3, "initialDelayMs": 10, "jitter": 0}}]
        });
        let flow = host.load(&flow.to_string()).unwrap();
        let run = host.run(&flow, json!({})).await.unwrap();
        assert_eq!(run.status, RunStatus::Failed, "{capability}");
        assert_eq!(run.nodes[0].attempts.len(), 1, "{capability}: not retried");
        let error = run.error.as_ref().unwrap();
        assert_eq!(error.kind.to_string(), "output-too-large", "{capability}: {error:?}");
        let stored = serde_json::to_string(&run).unwrap().len();
        assert!(stored < 64 * 1024, "{capability}: the run's trace is {stored} bytes");
    }
}
