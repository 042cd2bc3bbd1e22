//! What one hostile client, flow author or connector must not get from `flowhost serve` (issue 22, the API's
//! half): the real binary on loopback, refusing cross-site requests and non-JSON writes, keeping `/metrics` and
//! the details of `/healthz` behind a token, listening beyond loopback only with a token, giving flows only the
//! secrets and the egress the operator allows, and dropping clients that are slow or idle; and the CLI printing
//! no secret in any form.

use crate::serve::{ServiceDir, client, flowhost_bin, repo_flow, send};
use base64::Engine as _;
use flowhost_tests::components;
use mparticle_emulator::EmulatorConfig;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const API_TOKEN: &str = "api-token-7d2e9b";
const METRICS_TOKEN: &str = "metrics-token-51c0";

async fn emulator() -> mparticle_emulator::RunningEmulator {
    mparticle_emulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

fn point_add() -> Value {
    json!({"event": "point_add", "customer": "c-1", "data": {"customerId": "c-1", "points": 5, "balance": 50}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_cross_site_requests_and_keeps_details_behind_the_token() {
    let emulator = emulator().await;
    let tokens =
        "api_token = { secret = \"FLOWHOST_API_TOKEN\" }\nmetrics_token = { secret = \"FLOWHOST_METRICS_TOKEN\" }";
    let service = ServiceDir::new(&emulator, &[("point-add.json", repo_flow("point-add-to-mparticle.json"))], tokens);
    let server = service.start_with(&[("FLOWHOST_API_TOKEN", API_TOKEN), ("FLOWHOST_METRICS_TOKEN", METRICS_TOKEN)]);
    let base = &server.url;
    let bearer = format!("Bearer {API_TOKEN}");
    let events = format!("{base}/v1/events");
    let body = point_add().to_string();

    // A form or text/plain POST, which a web page may send anywhere without asking, is not taken.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let request = client().post(&events).header("authorization", &bearer).header("content-type", content_type);
        let (status, answer) = send(request.body(body.clone())).await;
        assert_eq!(status, 415, "{content_type}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains("application/json"), "{answer}");
    }
    let (status, _) = send(client().post(&events).header("authorization", &bearer).body(body.clone())).await;
    assert_eq!(status, 415, "a body without a content type");

    // A request from another origin is refused, whatever it carries: the token does not make it the service's.
    let evil = "http://evil.example";
    let request = client().post(&events).header("authorization", &bearer).header("origin", evil).json(&point_add());
    let (status, answer) = send(request).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("evil.example"), "{answer}");
    let disconnect = format!("{base}/v1/connections/mparticle/disconnect");
    let (status, _) = send(client().post(&disconnect).header("authorization", &bearer).header("origin", evil)).await;
    assert_eq!(status, 403, "a cross-site disconnect");

    // The service's own origin, JSON, and the token: accepted. A write without a body needs no content type.
    let request = client().post(&events).header("authorization", &bearer).header("origin", base).json(&point_add());
    let (status, answer) = send(request).await;
    assert_eq!(status, 202, "{answer}");
    let (status, answer) = send(client().post(format!("{base}/v1/queue/retry")).header("authorization", &bearer)).await;
    assert_eq!(status, 200, "{answer}");
    let health = send(client().get(format!("{base}/healthz")).header("authorization", &bearer)).await.1;
    assert!(health["stoppedFlows"].as_object().unwrap().is_empty(), "the cross-site disconnect did nothing: {health}");

    // The inbound route takes what the connection's sender posts, content type and all: its connector decides.
    let inbound = client()
        .post(format!("{base}/v1/inbound/mparticle"))
        .header("authorization", "Bearer inbound-token-4f1c")
        .header("content-type", "text/plain")
        .body("{}");
    let (status, answer) = send(inbound).await;
    assert!(status != 415 && status != 403, "{status} {answer}");

    // /healthz: up or down to anyone, the flows and the queue only with the token.
    let (status, anonymous) = send(client().get(format!("{base}/healthz"))).await;
    assert_eq!(status, 200);
    assert_eq!(anonymous, json!({"status": "ok"}));
    assert!(health["flows"].as_array().is_some_and(|f| !f.is_empty()) && health["queue"].is_object(), "{health}");

    // /metrics: the metrics token or the API token, nothing else.
    let metrics = format!("{base}/metrics");
    assert_eq!(send(client().get(&metrics)).await.0, 401);
    assert_eq!(send(client().get(&metrics).header("authorization", "Bearer wrong")).await.0, 401);
    for token in [METRICS_TOKEN, API_TOKEN] {
        let (status, text) = send(client().get(&metrics).header("authorization", format!("Bearer {token}"))).await;
        assert_eq!(status, 200);
        assert!(text.as_str().unwrap().contains("flowhost_events_accepted_total"), "{text}");
    }
    // The metrics token opens /metrics only.
    let runs = client().get(format!("{base}/v1/runs")).header("authorization", format!("Bearer {METRICS_TOKEN}"));
    assert_eq!(send(runs).await.0, 401);
}

/// Runs `flowhost serve` expecting it to refuse to start; returns what it said.
fn refused_start(config: &std::path::Path, env: &[(&str, &str)]) -> String {
    let mut command = std::process::Command::new(flowhost_bin());
    command.args(["serve", "--config"]).arg(config).env_remove("FLOWHOST_STORE").env("RUST_LOG", "warn");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = crate::output_within(&mut command, Duration::from_secs(120));
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "serve started: {said}");
    assert!(!said.contains("serving on"), "{said}");
    said
}

#[test]
fn an_open_api_does_not_listen_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("flows")).unwrap();
    let config = dir.path().join("flowhost.toml");
    // Refused before anything listens: no traffic, no port taken.
    std::fs::write(&config, "listen = \"0.0.0.0:0\"\nstore = \"f.db\"\nflows = [\"flows\"]\n").unwrap();
    let said = refused_start(&config, &[]);
    assert!(said.contains("refusing to serve on 0.0.0.0:0 without an api_token"), "{said}");
    assert!(said.contains("insecure = true"), "{said}");
}

#[test]
fn flows_get_only_the_secrets_and_the_origins_the_operator_allows() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("flows")).unwrap();
    let config = dir.path().join("flowhost.toml");
    let mut flow: Value = serde_json::from_str(&repo_flow("point-add-to-mparticle.json")).unwrap();
    let flow_path = dir.path().join("flows/point-add.json");
    let base = "listen = \"127.0.0.1:0\"\nstore = \"f.db\"\nflows = [\"flows\"]\n";
    let secret_value = "env-s3cret-value-9";
    let env = [
        ("MPARTICLE_API_KEY", "key-1234"),
        ("MPARTICLE_API_SECRET", "secret-1234"),
        ("SERVICE_DATABASE_PASSWORD", secret_value),
    ];

    // A flow reading a variable of the service's environment that the operator did not list.
    flow["connections"]["mparticle"]["config"]["apiSecret"] = json!({"secret": "SERVICE_DATABASE_PASSWORD"});
    std::fs::write(&flow_path, flow.to_string()).unwrap();
    std::fs::write(&config, format!("{base}[secrets]\nenvironment = true\nallow = [\"MPARTICLE_*\"]\n")).unwrap();
    let said = refused_start(&config, &env);
    assert!(said.contains("\"SERVICE_DATABASE_PASSWORD\"") && said.contains("[secrets] allow"), "{said}");
    assert!(!said.contains(secret_value), "{said}");
    // Without `environment = true`, even a listed name is not read from the environment.
    flow["connections"]["mparticle"]["config"]["apiSecret"] = json!({"secret": "MPARTICLE_API_SECRET"});
    std::fs::write(&flow_path, flow.to_string()).unwrap();
    std::fs::write(&config, format!("{base}[secrets]\nallow = [\"MPARTICLE_*\"]\n")).unwrap();
    let said = refused_start(&config, &env);
    assert!(said.contains("\"MPARTICLE_API_KEY\"") && said.contains("is not set"), "{said}");

    // A flow pointing the connector's `{eventsApiUrl}` host at plain HTTP, without the operator's switch.
    flow["connections"]["mparticle"]["config"]["eventsApiUrl"] = json!("http://collector.example/v2");
    std::fs::write(&flow_path, flow.to_string()).unwrap();
    std::fs::write(&config, format!("{base}[secrets]\nenvironment = true\nallow = [\"MPARTICLE_*\"]\n")).unwrap();
    let said = refused_start(&config, &env);
    assert!(said.contains("/connections/mparticle/config") && said.contains("eventsApiUrl"), "{said}");
    assert!(said.contains("must be an https URL"), "{said}");

    // A secret the operator allowed that is not a URL, put where a URL goes: named, never shown.
    flow["connections"]["mparticle"]["config"]["eventsApiUrl"] = json!({"secret": "MPARTICLE_LEAK"});
    std::fs::write(&flow_path, flow.to_string()).unwrap();
    let said = refused_start(&config, &[env[0], env[1], ("MPARTICLE_LEAK", "leaked s3cret, not a url")]);
    assert!(said.contains("eventsApiUrl"), "{said}");
    assert!(!said.contains("s3cret") && !said.contains("S3CRET"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_pinned_hosts_hold_whatever_the_flow_says() {
    let emulator = emulator().await;
    let mut flow: Value = serde_json::from_str(&repo_flow("point-add-to-mparticle.json")).unwrap();
    // The flow lists the emulator itself; the operator pins the connection to mParticle's real hosts.
    flow["connections"]["mparticle"]["allowedHosts"] = json!([emulator.url()]);
    let service = ServiceDir::new(&emulator, &[("point-add.json", flow.to_string())], "")
        .connection("allowed_hosts = [\"https://*.mparticle.com\"]");
    let server = service.start();
    let (status, accepted) = send(client().post(format!("{}/v1/events", server.url)).json(&point_add())).await;
    assert_eq!(status, 202, "{accepted}");
    let run_id = accepted["accepted"][0]["runs"][0]["runId"].as_str().unwrap().to_string();
    let run_url = format!("{}/v1/runs/{run_id}", server.url);
    crate::serve::eventually(Duration::from_secs(60), "the run to fail", || {
        let run_url = run_url.clone();
        async move { send(client().get(&run_url)).await.1["status"] == "failed" }
    })
    .await;
    let run = send(client().get(&run_url)).await.1;
    let text = run.to_string();
    assert!(text.contains("egress-denied") && text.contains("the operator allows"), "{text}");
    assert!(emulator.handle().batches().is_empty(), "nothing reached the emulator");
}

/// Reads until the server closes the connection (or `limit` passes); what it sent.
fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) => panic!("the server kept the connection open for {limit:?}: {e}"),
        }
    }
    (String::from_utf8_lossy(&received).into_owned(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_idle_and_lying_clients_are_dropped_and_cannot_lock_others_out() {
    let emulator = emulator().await;
    let service = ServiceDir::new(
        &emulator,
        &[("point-add.json", repo_flow("point-add-to-mparticle.json"))],
        "api_token = { secret = \"FLOWHOST_API_TOKEN\" }\n\n[server]\nheader_read_timeout = \"1s\"\nbody_read_timeout = \"1s\"\nmax_connections = 4\n",
    );
    let server = service.start_with(&[("FLOWHOST_API_TOKEN", API_TOKEN)]);
    let address = server.url.trim_start_matches("http://").to_string();
    let limit = Duration::from_secs(20);

    // Half-open: headers that never end.
    let mut half_open = TcpStream::connect(&address).unwrap();
    half_open.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: appl").unwrap();
    let (_, after) = read_to_close(&mut half_open, limit);
    assert!(after >= Duration::from_millis(500), "closed after {after:?}, before the timeout");

    // A Content-Length the body never reaches: 408, and the connection closes.
    let mut lying = TcpStream::connect(&address).unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {API_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"event\": "
    );
    lying.write_all(head.as_bytes()).unwrap();
    let (answer, _) = read_to_close(&mut lying, limit);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // As many idle connections as the server takes: the next client waits, and gets through once they are dropped.
    let mut idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&address).unwrap()).collect();
    let started = Instant::now();
    let runs = client().get(format!("{}/v1/runs", server.url)).header("authorization", format!("Bearer {API_TOKEN}"));
    let (status, answer) = send(runs).await;
    assert_eq!(status, 200, "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(500), "it did not wait: {:?}", started.elapsed());
    for stream in &mut idle {
        let (sent, _) = read_to_close(stream, limit);
        assert!(sent.is_empty(), "an idle connection is closed without an answer: {sent}");
    }
}

async fn flowhost_cli(args: &[&str]) -> (ExitCode, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let argv = std::iter::once("flowhost").chain(args.iter().copied());
    let code = flowhost_cli::run(argv, &mut out, &mut err).await;
    (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
}

#[tokio::test]
async fn connector_call_prints_no_secret_in_any_form() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.env");
    std::fs::write(&secrets, "ECHO_TOKEN=let-me-in\nGREETING=hello-s3cret-greeting\n").unwrap();
    let secrets = secrets.display().to_string();
    let config = r#"{"token": {"secret": "ECHO_TOKEN"}, "greeting": {"secret": "GREETING"}}"#;
    // The connector hands back the secret it was configured with, and the caller's input with its base64.
    let encoded = base64::engine::general_purpose::STANDARD.encode("hello-s3cret-greeting");
    let input = json!({"properties": {"message": format!("token {encoded}")}}).to_string();
    let call = ["--no-cache", "--secrets-file", &secrets, "connector", "call", components::ECHO, "echo"];
    let (code, out, err) = flowhost_cli(&[&call[..], &["--config", config, "--input", &input]].concat()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert!(!out.contains("s3cret") && !out.contains(&encoded), "{out}");
    let output: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(output["greeting"], "[REDACTED]", "{out}");
    assert_eq!(output["message"], "token [REDACTED]", "{out}");

    // A connection whose `{baseUrl}` host is a secret that is no URL: the property is named, the value is not.
    std::fs::write(dir.path().join("secrets.env"), "LEAK=leaked-s3cret-value\n").unwrap();
    let check = ["--no-cache", "--secrets-file", &secrets, "connector", "check", components::FETCHER];
    let (code, _, err) =
        flowhost_cli(&[&check[..], &["--config", r#"{"baseUrl": {"secret": "LEAK"}}"#]].concat()).await;
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("/baseUrl") && err.contains("not a URL"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    // Plain HTTP from a property only with the operator's switch.
    let plain = r#"{"baseUrl": "http://127.0.0.1:9/"}"#;
    let (code, _, err) = flowhost_cli(&[&check[..], &["--config", plain]].concat()).await;
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("/baseUrl") && err.contains("https"), "{err}");
    let (code, _, err) = flowhost_cli(&[&check[..], &["--config", plain, "--allow-private"]].concat()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
}
