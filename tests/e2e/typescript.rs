//! Connectors written in TypeScript: the generic HTTP connector against a loopback server (auth, paths, query,
//! bodies, statuses and their error kinds, batches, allowed hosts) and in a flow; a connector that throws; a
//! component built for a WIT version the host does not know; and the acceptance suite over every connector of
//! the repository.

use crate::{context, test_runtime};
use axum::Router;
use axum::extract::{Json, Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use flowhost::connector::{ConnectionOptions, ErrorKind, InvokeError, LoadError, RuntimeConfig, SecretStore};
use flowhost::flow::RunStatus;
use flowhost::{Host, HostConfig};
use flowhost_cli::acceptance::{self, SuiteOptions};
use flowhost_tests::components;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// Every connector of the repository, which CI holds to the acceptance suite. A new connector is one line here.
fn repository_connectors() -> Vec<(&'static str, &'static [u8])> {
    let echo: &'static [u8] = Box::leak(std::fs::read(components::ECHO).unwrap().into_boxed_slice());
    vec![
        ("mparticle", flowhost_cli::builtin::MPARTICLE),
        ("antavo", flowhost_cli::builtin::ANTAVO),
        ("http", flowhost_cli::builtin::HTTP),
        ("echo (test)", echo),
    ]
}

#[tokio::test]
async fn every_connector_in_the_repository_passes_the_acceptance_suite() {
    let cache = tempfile::tempdir().unwrap();
    for (name, bytes) in repository_connectors() {
        let options = SuiteOptions {
            config: None,
            secrets: SecretStore::default(),
            runtime: RuntimeConfig { cache_dir: Some(cache.path().to_path_buf()), ..RuntimeConfig::default() },
        };
        let report = acceptance::run(bytes, name, options).await;
        assert!(report.passed(), "{name} fails the acceptance suite:\n{}", report.render());
        assert!(report.count(acceptance::Outcome::Pass) >= 10, "{}", report.render());
    }
}

#[tokio::test]
async fn the_acceptance_suite_fails_a_connector_that_crashes_or_breaks_the_contract() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = RuntimeConfig { cache_dir: Some(cache.path().to_path_buf()), ..RuntimeConfig::default() };
    for (path, failing) in [(components::PANIC, "invalid input: run"), (components::FUTURE_WIT, "load")] {
        let bytes: &'static [u8] = Box::leak(std::fs::read(path).unwrap().into_boxed_slice());
        let options = SuiteOptions { config: None, secrets: SecretStore::default(), runtime: runtime.clone() };
        let report = acceptance::run(bytes, path, options).await;
        assert!(!report.passed(), "{}", report.render());
        let failed: Vec<&str> =
            report.checks.iter().filter(|c| c.outcome == acceptance::Outcome::Fail).map(|c| c.name.as_str()).collect();
        assert!(failed.contains(&failing), "{failed:?}\n{}", report.render());
    }
}

#[tokio::test]
async fn a_typescript_connector_that_throws_is_crashed_with_its_message_and_the_host_keeps_serving() {
    let (runtime, _cache) = test_runtime(Duration::from_secs(10));
    let connector = crate::load(&runtime, components::THROWS).await;
    let connection = crate::connect(&connector, json!({}), ConnectionOptions::default());
    let crashed = connector.invoke(&connection, "explode", &json!({}), &context("explode")).await;
    let Err(InvokeError::Crashed { message }) = &crashed.result else { panic!("{:?}", crashed.result) };
    assert!(message.contains("TypeError") && message.contains("'name'"), "{message}");
    for _ in 0..2 {
        let ok = connector.invoke(&connection, "ok", &json!({}), &context("ok")).await;
        assert_eq!(ok.result.unwrap(), json!({"ok": true}));
    }
}

#[tokio::test]
async fn a_component_built_for_an_unknown_wit_version_is_refused_naming_both_versions() {
    let (runtime, _cache) = test_runtime(Duration::from_secs(10));
    let error = runtime.load_file(components::FUTURE_WIT.as_ref()).await.unwrap_err();
    assert!(matches!(error, LoadError::UnsupportedWitVersion { .. }), "{error:?}");
    let message = error.to_string();
    for version in ["0.9.0", "0.1.0", "0.2.0"] {
        assert!(message.contains(&format!("flowhost:connector@{version}")), "{message}");
    }
}

/// A loopback API: `/api/echo/*` answers what it got (method, path, query, headers, body); `/api/status/{n}`
/// answers `n` (429 with Retry-After: 7); `/api/text` answers text.
async fn api() -> (String, tokio::task::JoinHandle<()>) {
    async fn echo(
        method: axum::http::Method,
        Path(rest): Path<String>,
        Query(query): Query<Vec<(String, String)>>,
        headers: HeaderMap,
        body: String,
    ) -> impl IntoResponse {
        let headers: BTreeMap<String, String> =
            headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string())).collect();
        let status = if method == axum::http::Method::POST { StatusCode::CREATED } else { StatusCode::OK };
        (
            status,
            Json(json!({"method": method.as_str(), "path": rest, "query": query, "headers": headers, "body": body})),
        )
    }
    async fn status(Path(code): Path<u16>) -> impl IntoResponse {
        let status = StatusCode::from_u16(code).unwrap();
        let mut headers = HeaderMap::new();
        if code == 429 {
            headers.insert("retry-after", "7".parse().unwrap());
        }
        (status, headers, format!("status {code}"))
    }
    let app = Router::new()
        .route("/api/echo/{*rest}", any(echo))
        .route("/api/status/{code}", get(status))
        .route("/api/text", get(|| async { "plain text ✓" }))
        .route("/elsewhere", get(|| async { "outside the base URL" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, task)
}

fn loopback() -> ConnectionOptions {
    ConnectionOptions { allow_private: true, ..ConnectionOptions::default() }
}

#[tokio::test]
async fn the_http_connector_sends_requests_below_its_base_url_with_the_connections_auth() {
    let (base, server) = api().await;
    let (runtime, _cache) = test_runtime(Duration::from_secs(10));
    let http = runtime.load_embedded(flowhost_cli::builtin::HTTP).await.unwrap();
    let secrets = SecretStore::from_pairs([("TOKEN", "t0ken-value"), ("PASSWORD", "pässword"), ("KEY", "k3y")]);
    let call = |config: Value, input: Value| {
        let http = http.clone();
        let secrets = &secrets;
        async move {
            let connection = http.connection("api", &config, secrets, &loopback()).unwrap();
            http.invoke(&connection, "request", &input, &context("call")).await
        }
    };

    // Bearer, a JSON body, query parameters (repeated, encoded), a header of the input.
    let bearer = json!({"baseUrl": base, "authType": "bearer", "token": {"secret": "TOKEN"}});
    let input = json!({"method": "POST", "path": "/echo/customers/42", "query": {"q": "a b&c", "tag": ["x", "y"]},
        "headers": {"X-Trace": "abc"}, "json": {"name": "Ada"}, "expectedStatuses": [201]});
    let invocation = call(bearer.clone(), input).await;
    let output = invocation.result.unwrap();
    assert_eq!(output["status"], 201);
    let got = &output["body"];
    assert_eq!(got["method"], "POST");
    assert_eq!(got["path"], "customers/42");
    assert_eq!(got["query"], json!([["q", "a b&c"], ["tag", "x"], ["tag", "y"]]));
    assert_eq!(got["headers"]["authorization"], "Bearer t0ken-value");
    assert_eq!(got["headers"]["x-trace"], "abc");
    assert_eq!(got["headers"]["content-type"], "application/json");
    assert_eq!(got["body"], r#"{"name":"Ada"}"#);
    assert_eq!(output["headers"]["content-type"], "application/json");
    assert!(invocation.log.iter().all(|line| !line.message.contains("t0ken-value")), "{:?}", invocation.log);

    // Basic (UTF-8 password), a text body.
    let basic = json!({"baseUrl": base, "authType": "basic", "username": "ada", "password": {"secret": "PASSWORD"}});
    let output = call(basic, json!({"method": "PUT", "path": "/echo/notes", "text": "héllo"})).await.result.unwrap();
    assert_eq!(output["body"]["headers"]["authorization"], "Basic YWRhOnDDpHNzd29yZA==");
    assert_eq!(output["body"]["body"], "héllo");
    assert_eq!(output["body"]["headers"]["content-type"], "text/plain; charset=utf-8");

    // An API key in a header of the connection's choosing; a text response stays text.
    let api_key =
        json!({"baseUrl": base, "authType": "apiKey", "apiKeyHeader": "X-Api-Token", "apiKey": {"secret": "KEY"}});
    let output = call(api_key.clone(), json!({"path": "/echo/me"})).await.result.unwrap();
    assert_eq!(output["body"]["headers"]["x-api-token"], "k3y");
    let text = call(api_key, json!({"path": "/text"})).await.result.unwrap();
    assert_eq!(text["body"], "plain text ✓");

    // Statuses: 429 rate-limited with its Retry-After, 5xx transient, 404 not-found, 401 unauthorized, 400
    // permanent with the body; an expected status is a success.
    let kinds = [
        (429, ErrorKind::RateLimited),
        (503, ErrorKind::Transient),
        (500, ErrorKind::Transient),
        (404, ErrorKind::NotFound),
        (401, ErrorKind::Unauthorized),
        (400, ErrorKind::Permanent),
    ];
    for (status, kind) in kinds {
        let error = call(bearer.clone(), json!({"path": format!("/status/{status}")})).await.result.unwrap_err();
        assert_eq!(error.kind(), kind, "{status}: {error}");
        if let InvokeError::RateLimited { retry_after_ms, .. } = &error {
            assert_eq!(*retry_after_ms, Some(7000));
        }
        if let InvokeError::Permanent { status: Some(400), body, .. } = &error {
            assert_eq!(body, "status 400");
        }
    }
    let expected = call(bearer.clone(), json!({"path": "/status/404", "expectedStatuses": [404]})).await;
    assert_eq!(expected.result.unwrap()["status"], 404);
    server.abort();
}

#[tokio::test]
async fn the_http_connector_stays_below_its_base_url_and_refuses_bad_input_with_pointers() {
    let (base, server) = api().await;
    let (runtime, _cache) = test_runtime(Duration::from_secs(10));
    let http = runtime.load_embedded(flowhost_cli::builtin::HTTP).await.unwrap();
    let connection = http.connection("api", &json!({"baseUrl": base}), &SecretStore::default(), &loopback()).unwrap();
    for (input, pointer) in [
        (json!({"path": "/../elsewhere"}), "/path"),
        (json!({"path": "//evil.example/x"}), "/path"),
        (json!({"path": "/echo/x?injected=1"}), "/path"),
        (json!({"path": "/echo/x", "headers": {"Host": "evil.example"}}), "/headers/Host"),
        (json!({"path": "/echo/x", "expectedStatuses": [99]}), "/expectedStatuses/0"),
    ] {
        // The connector's own check, the host's validation skipped.
        let invocation = http.invoke_unvalidated(&connection, "request", &input, &context("bad")).await;
        let Err(InvokeError::InvalidInput { errors }) = &invocation.result else {
            panic!("{input}: {:?}", invocation.result)
        };
        assert!(errors.iter().any(|e| e.pointer == pointer), "{input}: {errors:?}");
    }
    // The allowed hosts come from the base URL: a connection cannot be narrowed to a host the base URL is not on.
    let narrowed = ConnectionOptions { allowed_hosts: Some(vec!["api.example.com".into()]), ..loopback() };
    let connection = http.connection("api", &json!({"baseUrl": base}), &SecretStore::default(), &narrowed).unwrap();
    let denied = http.invoke(&connection, "request", &json!({"path": "/echo/x"}), &context("denied")).await;
    assert_eq!(denied.result.unwrap_err().kind(), ErrorKind::EgressDenied);

    // A batch: one invocation, one result per item, in order.
    let connection = http.connection("api", &json!({"baseUrl": base}), &SecretStore::default(), &loopback()).unwrap();
    let inputs = [json!({"path": "/echo/1"}), json!({"path": "/status/503"}), json!({"path": "/echo/3"})];
    let contexts: Vec<_> = (0..3).map(|i| context(&format!("n{i}"))).collect();
    let items: Vec<_> = inputs.iter().zip(&contexts).collect();
    let results = http.invoke_batch(&connection, "request", &items).await;
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].result.as_ref().unwrap()["body"]["path"], "1");
    assert_eq!(results[1].result.as_ref().unwrap_err().kind(), ErrorKind::Transient);
    assert_eq!(results[2].result.as_ref().unwrap()["body"]["path"], "3");
    server.abort();
}

#[tokio::test]
async fn the_example_flow_calls_an_api_through_the_http_connector() {
    let (base, server) = api().await;
    let cache = tempfile::tempdir().unwrap();
    let mut overrides = BTreeMap::new();
    overrides.insert(
        "crm".to_string(),
        serde_json::Map::from_iter([("baseUrl".to_string(), json!(format!("{base}/echo")))]),
    );
    let config = HostConfig {
        runtime: RuntimeConfig { cache_dir: Some(cache.path().to_path_buf()), ..RuntimeConfig::default() },
        embedded_connectors: flowhost_cli::builtin::COMPONENTS.to_vec(),
        allow_private: true,
        connection_overrides: overrides,
        ..HostConfig::default()
    };
    let host = Host::new(config, SecretStore::from_pairs([("CRM_API_TOKEN", "crm-token")])).await.unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../flows/http-notify-crm.json")).unwrap();
    let flow = host.load(&text).unwrap_or_else(|problems| panic!("{problems:?}"));
    let run = host.run(&flow, json!({"customerId": "c-7", "rewardId": "r-1", "points": 50})).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.to_text());
    let trace = serde_json::to_value(&run).unwrap();
    let text = trace.to_string();
    assert!(text.contains("customers/c-7/activities"), "{text}");
    assert!(!text.contains("crm-token"), "the token leaked into the trace: {text}");
    server.abort();
}

/// Runs `flowhost` in-process; returns the exit code's success, stdout and stderr.
async fn flowhost(args: &[&str]) -> (bool, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = flowhost_cli::run(std::iter::once("flowhost").chain(args.iter().copied()), &mut out, &mut err).await;
    (code == std::process::ExitCode::SUCCESS, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
}

fn run(command: &mut std::process::Command) {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_new_typescript_connector_builds_and_passes_the_acceptance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("acme-crm");
    let (ok, out, err) =
        flowhost(&["connector", "new", "acme-crm", "--lang", "typescript", "--dir", project.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    assert!(out.contains("npm ci") && out.contains("flowhost connector test dist/acme-crm.wasm"), "{out}");
    // `npm ci` would install exactly the workspace's packages (the same lockfile): share them instead of
    // downloading them again.
    let lock: Value =
        serde_json::from_str(&std::fs::read_to_string(project.join("package-lock.json")).unwrap()).unwrap();
    let sdk_lock: Value =
        serde_json::from_str(include_str!("../../connectors/sdk-typescript/package-lock.json")).unwrap();
    assert_eq!(
        lock["packages"]["node_modules/componentize-qjs"],
        sdk_lock["packages"]["node_modules/componentize-qjs"]
    );
    std::os::unix::fs::symlink(env!("FLOWHOST_TS_NODE_MODULES"), project.join("node_modules")).unwrap();
    run(std::process::Command::new("npm").args(["run", "build"]).current_dir(&project));

    let wasm = project.join("dist/acme-crm.wasm");
    let cache = dir.path().join("cache");
    let (ok, out, err) =
        flowhost(&["--cache-dir", cache.to_str().unwrap(), "connector", "test", wasm.to_str().unwrap()]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("acme-crm 0.1.0") && out.contains("passed:") && out.contains("0 failed"), "{out}");

    // The same name twice is refused, naming the directory.
    let (ok, _, err) =
        flowhost(&["connector", "new", "acme-crm", "--lang", "typescript", "--dir", project.to_str().unwrap()]).await;
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = flowhost(&["connector", "new", "Acme CRM", "--lang", "rust"]).await;
    assert!(!ok && err.contains("is not a connector id"), "{err}");
}

#[tokio::test]
async fn a_new_rust_connector_builds_and_passes_the_acceptance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("acme-rs");
    let (ok, out, err) =
        flowhost(&["connector", "new", "acme-rs", "--lang", "rust", "--dir", project.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    assert!(out.contains("target/wasm32-wasip2/wasm/acme_rs.wasm"), "{out}");
    // The workspace's wasm target directory: the SDK's dependencies (same lockfile, same profile) are built there
    // already, so only the project's own two crates compile.
    let target = env!("FLOWHOST_WASM_TARGET_DIR");
    let mut cargo = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .args(["build", "--target", "wasm32-wasip2", "--profile", "wasm"])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", target);
    for var in
        ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "CARGO_BUILD_TARGET"]
    {
        cargo.env_remove(var);
    }
    run(&mut cargo);

    let wasm = std::path::Path::new(target).join("wasm32-wasip2/wasm/acme_rs.wasm");
    let cache = dir.path().join("cache");
    let (ok, out, err) =
        flowhost(&["--cache-dir", cache.to_str().unwrap(), "connector", "test", wasm.to_str().unwrap()]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("acme-rs 0.1.0") && out.contains("passed:") && out.contains("0 failed"), "{out}");
}
