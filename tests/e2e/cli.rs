//! The `flowhost connector` commands, run in-process exactly as the binary runs them.

use flowhost_tests::components;
use std::path::Path;
use std::process::ExitCode;

struct Output {
    code: ExitCode,
    out: String,
    err: String,
}

async fn flowhost(args: &[&str]) -> Output {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let argv = std::iter::once("flowhost").chain(args.iter().copied());
    let code = flowhost::cli::run(argv, &mut out, &mut err).await;
    Output { code, out: String::from_utf8(out).unwrap(), err: String::from_utf8(err).unwrap() }
}

fn secrets_file(dir: &Path) -> String {
    let path = dir.join("secrets.env");
    std::fs::write(&path, "ECHO_TOKEN=let-me-in\nBAD_TOKEN=nope\n").unwrap();
    path.display().to_string()
}

const CONFIG: &str = r#"{"token": {"secret": "ECHO_TOKEN"}, "greeting": "hi"}"#;

#[tokio::test]
async fn inspect_compiles_once_then_loads_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let first = flowhost(&["--cache-dir", dir, "connector", "inspect", components::ECHO]).await;
    assert_eq!(first.code, ExitCode::SUCCESS, "{}", first.err);
    assert!(first.out.starts_with("echo 0.1.0 (Test connector echo)"), "{}", first.out);
    assert!(first.out.contains("token     [required, secret]"), "{}", first.out);
    assert!(first.out.contains("(compiled in"), "{}", first.out);

    let second = flowhost(&["--cache-dir", dir, "connector", "inspect", components::ECHO]).await;
    assert!(second.out.contains("(loaded from the compile cache in"), "{}", second.out);

    let json = flowhost(&["--cache-dir", dir, "connector", "inspect", "--json", components::ECHO]).await;
    let manifest: serde_json::Value = serde_json::from_str(&json.out).unwrap();
    assert_eq!(manifest["id"], "echo");
    assert_eq!(manifest["connectionProperties"][1]["secret"], true);
    assert_eq!(manifest["capabilities"][0]["id"], "echo");
}

#[tokio::test]
async fn call_prints_the_output_or_the_error_kind() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_file(dir.path());
    let base = ["--no-cache", "--secrets-file", secrets.as_str(), "connector", "call", components::ECHO];

    let ok =
        flowhost(&[&base[..], &["echo", "--config", CONFIG, "--input", r#"{"properties":{"message":"yo"}}"#]].concat())
            .await;
    assert_eq!(ok.code, ExitCode::SUCCESS, "{}", ok.err);
    let output: serde_json::Value = serde_json::from_str(&ok.out).unwrap();
    assert_eq!(output["message"], "yo");

    let input_file = dir.path().join("input.json");
    std::fs::write(&input_file, r#"{"properties":{"count":"x"}}"#).unwrap();
    let input_arg = format!("@{}", input_file.display());
    let bad = flowhost(&[&base[..], &["echo", "--config", CONFIG, "--input", &input_arg]].concat()).await;
    assert_eq!(bad.code, ExitCode::from(1));
    assert!(bad.err.contains("error: invalid-input: invalid input: /properties:"), "{}", bad.err);
    assert!(bad.err.contains("/properties/count"), "{}", bad.err);

    let kind = flowhost(
        &[&base[..], &["fail", "--config", CONFIG, "--input", r#"{"kind":"permanent","status":400,"body":"nope"}"#]]
            .concat(),
    )
    .await;
    assert_eq!(kind.code, ExitCode::from(1));
    assert!(kind.err.contains("error: permanent: permanent failure (HTTP 400)"), "{}", kind.err);
    assert!(kind.err.contains("response body: nope"), "{}", kind.err);
}

#[tokio::test]
async fn bad_arguments_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_file(dir.path());
    let call = ["--no-cache", "--secrets-file", secrets.as_str(), "connector", "call", components::ECHO, "echo"];

    let not_json = flowhost(&[&call[..], &["--config", "{oops", "--input", "{}"]].concat()).await;
    assert_eq!(not_json.code, ExitCode::from(2));
    assert!(not_json.err.contains("--config is not valid JSON"), "{}", not_json.err);

    let inline = flowhost(&[&call[..], &["--config", r#"{"token":"let-me-in"}"#, "--input", "{}"]].concat()).await;
    assert_eq!(inline.code, ExitCode::from(2));
    assert!(inline.err.contains("\"token\" is a secret and must be given by reference"), "{}", inline.err);
    assert!(!inline.err.contains("let-me-in"), "{}", inline.err);

    let missing = flowhost(&["--no-cache", "connector", "inspect", "/nonexistent.wasm"]).await;
    assert_eq!(missing.code, ExitCode::from(2));
    assert!(missing.err.contains("cannot read /nonexistent.wasm"), "{}", missing.err);

    let usage = flowhost(&["connector", "call"]).await;
    assert_eq!(usage.code, ExitCode::from(2));
    assert!(usage.err.contains("Usage"), "{}", usage.err);
}

#[tokio::test]
async fn check_reports_whether_the_connection_works() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets_file(dir.path());
    let check = ["--no-cache", "--secrets-file", secrets.as_str(), "connector", "check", components::ECHO];
    let ok = flowhost(&[&check[..], &["--config", CONFIG]].concat()).await;
    assert_eq!(ok.code, ExitCode::SUCCESS, "{}", ok.err);
    assert!(ok.out.contains("ok: the connection works"));
    let bad = flowhost(&[&check[..], &["--config", r#"{"token":{"secret":"BAD_TOKEN"}}"#]].concat()).await;
    assert_eq!(bad.code, ExitCode::from(1));
    assert!(bad.err.contains("error: unauthorized: unauthorized: the token was not accepted"), "{}", bad.err);
}

#[tokio::test]
async fn timeout_option_bounds_a_call() {
    let started = std::time::Instant::now();
    let looped = flowhost(&[
        "--no-cache",
        "--timeout",
        "0.5",
        "connector",
        "call",
        components::INFINITE_LOOP,
        "run",
        "--config",
        "{}",
        "--input",
        "{}",
    ])
    .await;
    assert_eq!(looped.code, ExitCode::from(1));
    assert!(looped.err.contains("error: timeout: timed out after 500 ms"), "{}", looped.err);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
