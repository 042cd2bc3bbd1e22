//! The runtime with a well-behaved connector: manifest, config and secrets, input validation, error kinds,
//! the invocation context, the log, the cache, the sandbox, and the compile cache.

use crate::{context, load, test_runtime};
use flowhost::connector::{
    ConfigError, ConnectionOptions, ErrorKind, InvokeError, LoadSource, LogSource, Runtime, RuntimeConfig, SecretStore,
};
use flowhost_tests::components;
use serde_json::{Value, json};
use std::time::Duration;

const TOKEN: &str = "let-me-in";

fn secrets() -> SecretStore {
    SecretStore::from_pairs([("ECHO_TOKEN", TOKEN), ("WRONG_TOKEN", "not-the-token")])
}

async fn echo() -> (Runtime, tempfile::TempDir, std::sync::Arc<flowhost::connector::Connector>) {
    let (runtime, cache) = test_runtime(Duration::from_secs(5));
    let connector = load(&runtime, components::ECHO).await;
    (runtime, cache, connector)
}

fn config() -> Value {
    json!({"token": {"secret": "ECHO_TOKEN"}, "greeting": "hello"})
}

#[tokio::test]
async fn manifest_describes_the_connector() {
    let (_runtime, _cache, connector) = echo().await;
    let manifest = connector.manifest();
    assert_eq!(manifest.id, "echo");
    assert_eq!(manifest.version, "0.1.0");
    let token = manifest.connection_properties.iter().find(|p| p.name == "token").unwrap();
    assert!(token.secret && token.required);
    let echo = manifest.capability("echo").unwrap();
    assert_eq!(echo.input_schema["default"]["example"], json!({"properties": {"message": "hello"}}));
    assert!(manifest.capability("probeSandbox").is_some());
}

#[tokio::test]
async fn invoke_passes_input_config_and_context() {
    let (_runtime, _cache, connector) = echo().await;
    let connection = connector.connection("main", &config(), &secrets(), &ConnectionOptions::default()).unwrap();
    let input = json!({"properties": {"message": "hi", "count": 2}});
    let invocation = connector.invoke(&connection, "echo", &input, &crate::context("node-a")).await;
    let output = invocation.result.unwrap();
    assert_eq!(output["message"], "hi");
    assert_eq!(output["greeting"], "hello");
    assert_eq!(output["input"], input);
    assert_eq!(
        output["context"],
        json!({"runId": "run-1", "nodeId": "node-a", "idempotencyKey": "run-1/node-a", "attempt": 1})
    );
}

#[tokio::test]
async fn input_is_validated_with_json_pointers_before_the_call() {
    let (_runtime, _cache, connector) = echo().await;
    let connection = connector.connection("main", &config(), &secrets(), &ConnectionOptions::default()).unwrap();
    let invocation = connector.invoke(&connection, "echo", &json!({"properties": {"count": -1}}), &context("n")).await;
    let InvokeError::InvalidInput { errors } = invocation.result.unwrap_err() else { panic!("expected invalid input") };
    let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
    assert_eq!(pointers, ["/properties", "/properties/count"], "{errors:?}");
    assert!(errors[0].message.contains("\"message\" is a required property"), "{errors:?}");
    assert!(invocation.log.is_empty(), "no instance is created for an invalid input");

    let unknown = connector.invoke(&connection, "nope", &json!({}), &context("n")).await.result.unwrap_err();
    assert_eq!(unknown.kind(), ErrorKind::UnknownCapability);
    assert!(unknown.to_string().contains("echo, cacheCounter, fail, print, probeSandbox"), "{unknown}");
}

#[tokio::test]
async fn connection_config_is_validated_and_secrets_are_by_reference() {
    let (_runtime, _cache, connector) = echo().await;
    let options = ConnectionOptions::default();
    let inline = connector.connection("c", &json!({"token": TOKEN}), &secrets(), &options).unwrap_err();
    assert_eq!(inline, ConfigError::InlineSecret { property: "token".into() });

    let missing =
        connector.connection("c", &json!({"token": {"secret": "NOT_SET_ANYWHERE"}}), &secrets(), &options).unwrap_err();
    assert!(matches!(missing, ConfigError::MissingSecret { ref name, .. } if name == "NOT_SET_ANYWHERE"));

    let ConfigError::Invalid(errors) =
        connector.connection("c", &json!({"greeting": 5, "extra": true}), &secrets(), &options).unwrap_err()
    else {
        panic!("expected schema errors")
    };
    let text: String = errors.iter().map(|e| format!("{e}\n")).collect();
    assert!(text.contains("\"token\" is a required property"), "{text}");
    assert!(text.contains("/greeting"), "{text}");
    assert!(text.contains("extra"), "{text}");

    let not_object = connector.connection("c", &json!([1]), &secrets(), &options).unwrap_err();
    assert!(not_object.to_string().contains("must be a JSON object"), "{not_object}");

    let connection = connector.connection("c", &config(), &secrets(), &options).unwrap();
    let debug = format!("{connection:?}");
    assert!(!debug.contains(TOKEN) && debug.contains("ECHO_TOKEN"), "{debug}");
}

#[tokio::test]
async fn check_verifies_the_credentials() {
    let (_runtime, _cache, connector) = echo().await;
    let options = ConnectionOptions::default();
    let good = connector.connection("c", &config(), &secrets(), &options).unwrap();
    assert!(connector.check(&good).await.result.is_ok());
    let bad = connector.connection("c", &json!({"token": {"secret": "WRONG_TOKEN"}}), &secrets(), &options).unwrap();
    assert_eq!(connector.check(&bad).await.result.unwrap_err().kind(), ErrorKind::Unauthorized);
}

#[tokio::test]
async fn every_connector_error_kind_reaches_the_host() {
    let (_runtime, _cache, connector) = echo().await;
    let connection = connector.connection("c", &config(), &secrets(), &ConnectionOptions::default()).unwrap();
    let cases = [
        ("invalid-input", ErrorKind::InvalidInput),
        ("invalid-config", ErrorKind::InvalidConfig),
        ("unauthorized", ErrorKind::Unauthorized),
        ("not-found", ErrorKind::NotFound),
        ("rate-limited", ErrorKind::RateLimited),
        ("transient", ErrorKind::Transient),
        ("permanent", ErrorKind::Permanent),
    ];
    for (kind, expected) in cases {
        let input = json!({"kind": kind, "message": "boom", "retryAfterMs": 1500, "status": 422, "body": "{\"e\":1}"});
        let error = connector.invoke(&connection, "fail", &input, &context("f")).await.result.unwrap_err();
        assert_eq!(error.kind(), expected, "{kind}: {error}");
        assert_eq!(error.kind().is_retryable(), matches!(kind, "rate-limited" | "transient"));
        match error {
            InvokeError::RateLimited { .. } => assert_eq!(error.retry_after(), Some(Duration::from_millis(1500))),
            InvokeError::Permanent { status, ref body, .. } => {
                assert_eq!(status, Some(422));
                assert_eq!(body, "{\"e\":1}");
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn secrets_are_redacted_from_logs_and_errors() {
    let (_runtime, _cache, connector) = echo().await;
    let connection = connector.connection("c", &config(), &secrets(), &ConnectionOptions::default()).unwrap();
    let printed =
        connector.invoke(&connection, "print", &json!({"text": format!("token={TOKEN}")}), &context("p")).await;
    assert!(printed.result.is_ok());
    let sources: Vec<LogSource> = printed.log.iter().map(|l| l.source).collect();
    for source in [LogSource::Connector, LogSource::Stdout, LogSource::Stderr] {
        assert!(sources.contains(&source), "{:?}", printed.log);
    }
    let log = format!("{:?}", printed.log);
    assert!(!log.contains(TOKEN) && log.contains("token=[REDACTED]"), "{log}");

    let failed = connector
        .invoke(&connection, "fail", &json!({"kind": "transient", "message": format!("bad {TOKEN}")}), &context("f"))
        .await;
    let message = failed.result.unwrap_err().to_string();
    assert!(!message.contains(TOKEN) && message.contains("[REDACTED]"), "{message}");
}

#[tokio::test]
async fn cache_is_scoped_to_one_connection() {
    let (_runtime, _cache, connector) = echo().await;
    let options = ConnectionOptions::default();
    let a = connector.connection("a", &config(), &secrets(), &options).unwrap();
    let b = connector.connection("b", &config(), &secrets(), &options).unwrap();
    let count = |value: Value| value["count"].as_u64().unwrap();
    for expected in 1..=3 {
        let output = connector.invoke(&a, "cacheCounter", &json!({}), &context("c")).await.result.unwrap();
        assert_eq!(count(output), expected);
    }
    let output = connector.invoke(&b, "cacheCounter", &json!({}), &context("c")).await.result.unwrap();
    assert_eq!(count(output), 1, "another connection has its own cache");
}

#[tokio::test]
async fn the_sandbox_has_no_environment_files_or_sockets() {
    let (_runtime, _cache, connector) = echo().await;
    let connection = connector.connection("c", &config(), &secrets(), &ConnectionOptions::default()).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let output =
        connector.invoke(&connection, "probeSandbox", &json!({"connect": target}), &context("s")).await.result.unwrap();
    assert_eq!(output["envVars"], 0, "{output}");
    assert_eq!(output["args"], 0, "{output}");
    assert_ne!(output["readRoot"], "allowed", "{output}");
    assert_ne!(output["readCwd"], "allowed", "{output}");
    assert_ne!(output["tcpConnect"], "connected", "{output}");
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "the guest must not have reached the listener");
}

#[tokio::test]
async fn instances_are_fresh_and_concurrent() {
    let (_runtime, _cache, connector) = echo().await;
    let connection = connector.connection("c", &config(), &secrets(), &ConnectionOptions::default()).unwrap();
    let calls = (0..40).map(|i| {
        let connection = &connection;
        let connector = &connector;
        async move {
            let input = json!({"properties": {"message": format!("m{i}")}});
            connector.invoke(connection, "echo", &input, &context(&format!("n{i}"))).await
        }
    });
    for (i, invocation) in futures::future::join_all(calls).await.into_iter().enumerate() {
        assert_eq!(invocation.result.unwrap()["message"], format!("m{i}"));
    }
}

#[tokio::test]
async fn a_second_runtime_loads_from_the_compile_cache() {
    let cache = tempfile::tempdir().unwrap();
    let config =
        || RuntimeConfig { cache_dir: Some(cache.path().to_path_buf()), max_instances: 8, ..Default::default() };
    let first = Runtime::new(config()).unwrap();
    let connector = load(&first, components::ECHO).await;
    assert_eq!(connector.load_source().0, LoadSource::Compiled);
    let again = load(&first, components::ECHO).await;
    assert!(std::sync::Arc::ptr_eq(&connector, &again), "loaded once per runtime");

    let second = Runtime::new(config()).unwrap();
    let cached = load(&second, components::ECHO).await;
    assert_eq!(cached.load_source().0, LoadSource::DiskCache);
    assert_eq!(cached.hash(), connector.hash());

    // A corrupted artifact is ignored and replaced, never trusted.
    for entry in std::fs::read_dir(cache.path().join("components")).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let third = Runtime::new(config()).unwrap();
    assert_eq!(load(&third, components::ECHO).await.load_source().0, LoadSource::Compiled);
}

#[tokio::test]
async fn bytes_that_are_not_a_connector_are_refused_clearly() {
    let (runtime, _cache) = test_runtime(Duration::from_secs(5));
    let error = runtime.load_bytes(b"not wasm at all").await.unwrap_err();
    assert!(error.to_string().starts_with("not a valid connector component"), "{error}");
    let missing = runtime.load_file("/nonexistent/connector.wasm".as_ref()).await.unwrap_err();
    assert!(missing.to_string().contains("cannot read /nonexistent/connector.wasm"), "{missing}");
}

/// Each runtime reserves address space for its whole instance pool (terabytes at the default size);
/// dropping it must give that back at once, or an embedder that makes runtimes runs out.
#[tokio::test]
async fn dropped_runtimes_free_their_instance_pools() {
    let cache = tempfile::tempdir().unwrap();
    // 60 pools of the default size would need more address space than x86-64 gives a process.
    for round in 0..60 {
        let runtime =
            Runtime::new(RuntimeConfig { cache_dir: Some(cache.path().to_path_buf()), ..RuntimeConfig::default() })
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let connector = load(&runtime, components::ECHO).await;
        assert!(connector.instantiate_only().await.is_ok());
        drop((runtime, connector));
    }
}

#[tokio::test]
async fn a_0_2_0_connector_reports_the_share_of_its_rate_limit_used_and_a_0_1_0_one_still_loads() {
    let (runtime, _cache, connector) = echo().await;
    assert_eq!(connector.wit_version(), "0.2.0");
    let connection = connector.connection("c", &config(), &secrets(), &ConnectionOptions::default()).unwrap();
    // On a call that succeeds (`pacing.report-usage`), clamped to what the WIT carries.
    for (reported, expected) in [(Some(97), Some(97)), (Some(1000), Some(255)), (None, None)] {
        let input = match reported {
            Some(used) => json!({"reportUsage": used}),
            None => json!({}),
        };
        let invocation = connector.invoke(&connection, "cacheCounter", &input, &context("c")).await;
        assert!(invocation.result.is_ok(), "{:?}", invocation.result);
        assert_eq!(invocation.usage_percent, expected, "{reported:?}");
    }
    // On a refusal, in the `rate-limited` error.
    let input = json!({"kind": "rate-limited", "message": "slow down", "retryAfterMs": 1000, "percentageUsed": 130});
    let refused = connector.invoke(&connection, "fail", &input, &context("f")).await;
    assert_eq!(refused.result.unwrap_err().kind(), ErrorKind::RateLimited);
    assert_eq!(refused.usage_percent, Some(130));

    // A connector built for 0.1.0 (the TypeScript SDK's) loads and runs beside it; it reports no usage.
    let old = load(&runtime, components::THROWS).await;
    assert_eq!(old.wit_version(), "0.1.0");
    let connection = crate::connect(&old, json!({}), ConnectionOptions::default());
    let ok = old.invoke(&connection, "ok", &json!({}), &context("ok")).await;
    assert_eq!((ok.result.unwrap(), ok.usage_percent), (json!({"ok": true}), None));
}
