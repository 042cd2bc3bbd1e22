//! Hostile connectors: each fails with its own error kind, within the deadline, and the host then serves
//! a good call.

use crate::{connect, context, load, test_runtime};
use flowhost::connector::{ConnectionOptions, ErrorKind, Runtime, SecretStore};
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
