//! The `flowhost connector` commands, run in-process exactly as the binary runs them.

use flowhost_tests::components;
use std::path::Path;
use std::process::ExitCode;

/// What an in-process `flowhost` command printed, and its exit status.
pub(crate) struct Output {
    pub(crate) code: ExitCode,
    pub(crate) out: String,
    pub(crate) err: String,
}

/// Runs the CLI in process, as `flowhost <args>`.
pub(crate) async fn flowhost(args: &[&str]) -> Output {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let argv = std::iter::once("flowhost").chain(args.iter().copied());
    let code = flowhost_cli::run(argv, &mut out, &mut err).await;
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
    assert!(bad.err.contains("error: invalid input: /properties:"), "{}", bad.err);
    assert!(bad.err.contains("/properties/count"), "{}", bad.err);

    let kind = flowhost(
        &[&base[..], &["fail", "--config", CONFIG, "--input", r#"{"kind":"permanent","status":400,"body":"nope"}"#]]
            .concat(),
    )
    .await;
    assert_eq!(kind.code, ExitCode::from(1));
    assert!(kind.err.contains("error: permanent failure (HTTP 400)"), "{}", kind.err);
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
    assert!(bad.err.contains("error: unauthorized: the token was not accepted"), "{}", bad.err);
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

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path).display().to_string()
}

#[tokio::test]
async fn check_lists_every_problem_and_sets_the_exit_status() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let good = flowhost(&[
        "--cache-dir",
        dir,
        "check",
        &repo("flows/point-add-to-mparticle.json"),
        &repo("flows/profile-sync.json"),
    ])
    .await;
    assert_eq!(good.code, ExitCode::SUCCESS, "{}", good.err);
    assert!(
        good.out.contains("point-add-to-mparticle.json: ok (point-add-to-mparticle 1.0.0, 1 node(s))"),
        "{}",
        good.out
    );

    let broken = repo("tests/flows/broken/unknown-capability.json");
    let bad = flowhost(&["--cache-dir", dir, "check", &repo("flows/profile-sync.json"), &broken]).await;
    assert_eq!(bad.code, ExitCode::from(1));
    assert!(
        bad.err.contains(&format!("{broken}: /nodes/0/connector/capability: connector mparticle has no capability")),
        "{}",
        bad.err
    );

    let missing = flowhost(&["--cache-dir", dir, "check", "/nonexistent/flow.json"]).await;
    assert_eq!(missing.code, ExitCode::from(1));
    assert!(missing.err.contains("/nonexistent/flow.json: cannot read"), "{}", missing.err);
}

#[tokio::test]
async fn run_prints_the_trace_against_the_emulator() {
    let emulator =
        mparticle_emulator::start(mparticle_emulator::EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.env");
    std::fs::write(
        &secrets,
        format!(
            "MPARTICLE_API_KEY={}\nMPARTICLE_API_SECRET={}\n",
            mparticle_emulator::DEMO_API_KEY,
            mparticle_emulator::DEMO_API_SECRET
        ),
    )
    .unwrap();
    let overrides = format!(r#"mparticle={{"eventsApiUrl":"{}/v2"}}"#, emulator.url());
    let cache = dir.path().join("cache");
    let flow = repo("flows/point-add-to-mparticle.json");
    let args = |event: &'static str, json: bool| {
        let mut args = vec![
            "--cache-dir".to_string(),
            cache.display().to_string(),
            "--secrets-file".to_string(),
            secrets.display().to_string(),
            "run".to_string(),
            flow.clone(),
            "--event".to_string(),
            event.to_string(),
            "--allow-private".to_string(),
            "--connection-config".to_string(),
            overrides.clone(),
        ];
        if json {
            args.push("--json".to_string());
        }
        args
    };
    let event = r#"{"customerId":"c-9","points":5,"balance":10}"#;
    let text_args = args(event, false);
    let text = flowhost(&text_args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(text.code, ExitCode::SUCCESS, "{}{}", text.out, text.err);
    assert!(text.out.contains("of point-add-to-mparticle 1.0.0: succeeded"), "{}", text.out);
    assert!(
        text.out.contains("trigger_marketing_communication  (connector mparticle.triggerMarketingCommunication"),
        "{}",
        text.out
    );
    assert!(!text.out.contains(mparticle_emulator::DEMO_API_SECRET), "{}", text.out);

    let json_args = args(event, true);
    let json = flowhost(&json_args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let run: serde_json::Value =
        serde_json::from_str(&json.out).unwrap_or_else(|e| panic!("{e}: {}{}", json.out, json.err));
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["nodes"][0]["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(emulator.batches().len(), 2);

    let bad_event = args(r#"{"customerId":"c-9"}"#, false);
    let refused = flowhost(&bad_event.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(refused.code, ExitCode::from(2));
    assert!(refused.err.contains("the event does not fit the trigger's schema"), "{}", refused.err);
}

#[tokio::test]
async fn flow_schema_prints_the_committed_schema() {
    let printed = flowhost(&["flow", "schema"]).await;
    assert_eq!(printed.code, ExitCode::SUCCESS);
    assert_eq!(printed.out, std::fs::read_to_string(repo("flows/schema.json")).unwrap());
}

/// The repository's inbound example flow with one webhook batch, run offline through the mParticle
/// connector's `receive`.
#[tokio::test]
async fn run_inbound_maps_a_vendor_payload_offline() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.env");
    std::fs::write(&secrets, "MPARTICLE_API_KEY=k\nMPARTICLE_API_SECRET=s\n").unwrap();
    let payload = dir.path().join("payload.json");
    let batch = serde_json::json!({
        "batch_id": "b-1", "environment": "production",
        "user_identities": [{"identity_type": "customer_id", "identity": "cust-7"}],
        "events": [
            {"event_type": "custom_event", "data": {"event_name": "coupon_redeemed",
             "custom_attributes": {"coupon_code": "SPRING", "store_id": "s-1"}}},
            {"event_type": "screen_view", "data": {"screen_name": "Home"}}
        ]
    });
    std::fs::write(&payload, batch.to_string()).unwrap();
    let flow = Path::new(env!("CARGO_MANIFEST_DIR")).join("../flows/inbound-coupon-redeemed.json");
    let flow = flow.to_str().unwrap();
    let secrets = secrets.to_str().unwrap();
    let inbound = format!("@{}", payload.display());
    let run = flowhost(&["--no-cache", "--secrets-file", secrets, "run", flow, "--inbound", &inbound, "--json"]).await;
    assert_eq!(run.code, ExitCode::SUCCESS, "{}{}", run.out, run.err);
    let report: serde_json::Value = serde_json::from_str(&run.out).unwrap();
    let emitted = &report["runs"][0]["emitted"][0];
    assert_eq!(emitted["payload"]["coupon"], "SPRING", "{report}");
    assert_eq!(emitted["payload"]["customer"], "cust-7");
    assert!(report["skipped"][0].as_str().unwrap().contains("screen_view"), "{report}");
    assert_eq!(report["response"]["status"], 202);

    // A body the connector cannot read: its error, exit 2.
    let bad = flowhost(&["--no-cache", "--secrets-file", secrets, "run", flow, "--inbound", "{"]).await;
    assert_eq!(bad.code, ExitCode::from(2), "{}", bad.out);
    assert!(bad.err.contains("not valid JSON") || bad.err.contains("not JSON"), "{}", bad.err);
    // --event and --inbound together: a usage error.
    let both = flowhost(&["run", flow, "--inbound", "{}", "--event", "{}"]).await;
    assert_eq!(both.code, ExitCode::from(2));
}

#[tokio::test]
async fn check_refuses_an_inbound_trigger_asking_for_what_its_connector_does_not_declare() {
    let dir = tempfile::tempdir().unwrap();
    let original: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../flows/inbound-coupon-redeemed.json"))
            .unwrap(),
    )
    .unwrap();
    let mut flow = original.clone();
    flow["trigger"]["eventType"] = "coupon_event".into();
    flow["trigger"]["customerIdentity"] = "loyalty_id".into();
    flow["trigger"]["environment"] = "staging".into();
    let path = dir.path().join("flow.json");
    std::fs::write(&path, flow.to_string()).unwrap();
    let check = flowhost(&["--no-cache", "check", path.to_str().unwrap()]).await;
    assert_eq!(check.code, ExitCode::from(1), "{}", check.out);
    for expected in [
        "/trigger/eventType: connector mparticle produces no \"coupon_event\"; its event types: custom_event,",
        "/trigger/customerIdentity: connector mparticle produces no \"loyalty_id\"; its identities: ",
        "/trigger/environment: \"staging\" is not an environment",
    ] {
        assert!(check.err.contains(expected), "missing {expected:?} in:\n{}", check.err);
    }
    // A trigger on a connector without an inbound side.
    let mut flow = original;
    flow["connections"]["mparticle"] = serde_json::json!({"connector": "echo", "config": {"token": {"secret": "T"}}});
    std::fs::write(&path, flow.to_string()).unwrap();
    let check = flowhost(&["--no-cache", "check", "--connectors", connector_dir(), path.to_str().unwrap()]).await;
    assert!(check.err.contains("uses connector echo, which has no inbound side"), "{}", check.err);
}

/// The folder of the test components (the echo connector among them).
fn connector_dir() -> &'static str {
    Path::new(components::ECHO).parent().unwrap().to_str().unwrap()
}

#[tokio::test]
async fn inspect_shows_the_inbound_side() {
    let signed = flowhost(&["--no-cache", "connector", "inspect", components::SIGNED_WEBHOOK]).await;
    assert_eq!(signed.code, ExitCode::SUCCESS, "{}", signed.err);
    assert!(signed.out.contains("event types: points.earned, reward.redeemed, member.updated"), "{}", signed.out);
    assert!(signed.out.contains("verifies requests itself: yes"), "{}", signed.out);
    let json = flowhost(&["--no-cache", "connector", "inspect", "--json", components::SIGNED_WEBHOOK]).await;
    let manifest: serde_json::Value = serde_json::from_str(&json.out).unwrap();
    assert_eq!(manifest["inbound"]["identities"], serde_json::json!(["member_id", "email"]));
    let echo = flowhost(&["--no-cache", "connector", "inspect", "--json", components::ECHO]).await;
    let manifest: serde_json::Value = serde_json::from_str(&echo.out).unwrap();
    assert!(manifest["inbound"].is_null(), "echo has no inbound side");
}

/// The misspellings a new user met fail `check`, each named by its pointer with the nearest declared name (or,
/// when none is near, the declared names): mParticle would otherwise ignore them without a word.
#[tokio::test]
async fn check_refuses_misspelled_input_properties_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cases = [
        (
            "point-add-to-mparticle.json",
            "identityType",
            "identitytype",
            "unknown property; did you mean `identityType`?",
        ),
        ("point-add-to-mparticle.json", "payload", "paylod", "unknown property; did you mean `payload`?"),
        (
            "calculated-attributes.json",
            "nameOptional",
            "name",
            "unknown property; the declared properties are `workspace`, `nameOptional`",
        ),
    ];
    let mut paths = Vec::new();
    let mut expected = Vec::new();
    for (example, declared, typo, message) in cases {
        let mut flow: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(repo(&format!("flows/{example}"))).unwrap()).unwrap();
        let input = flow["nodes"][0]["connector"]["input"]["properties"].as_object_mut().unwrap();
        let value = input.remove(declared).unwrap();
        input.insert(typo.to_string(), value);
        let path = dir.path().join(format!("{typo}.json")).display().to_string();
        std::fs::write(&path, flow.to_string()).unwrap();
        expected.push(format!("{path}: /nodes/0/connector/input/properties/{typo}: {message}"));
        paths.push(path);
    }
    let args = [
        &["--cache-dir", cache.path().to_str().unwrap(), "check"][..],
        &paths.iter().map(String::as_str).collect::<Vec<_>>(),
    ]
    .concat();
    let check = flowhost(&args).await;
    assert_eq!(check.code, ExitCode::from(1), "{}", check.out);
    for line in expected {
        assert!(check.err.lines().any(|l| l == line), "missing {line:?} in:\n{}", check.err);
    }
    assert_eq!(check.err.lines().count(), 3, "one problem per misspelling:\n{}", check.err);
}

/// `check <dir>` checks every `*.json` in it in name order, says which files it skipped as JSON Schemas, prints
/// warnings without failing, and fails for a directory without flows.
#[tokio::test]
async fn check_takes_directories_skips_json_schemas_and_prints_warnings() {
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().to_str().unwrap();
    let flows = flowhost(&["--cache-dir", cache, "check", &repo("flows")]).await;
    assert_eq!(flows.code, ExitCode::SUCCESS, "{}", flows.err);
    let files: Vec<&str> = flows.out.lines().map(|l| l.split(": ").next().unwrap()).collect();
    let mut sorted = files.clone();
    sorted.sort();
    assert_eq!(files, sorted, "name order");
    assert_eq!(files.len(), 12, "{}", flows.out);
    assert!(
        flows.out.lines().any(|l| l == format!("{}: skipped (a JSON Schema, not a flow)", repo("flows/schema.json"))),
        "{}",
        flows.out
    );
    assert_eq!(flows.out.lines().filter(|l| l.contains(": ok (")).count(), 11, "{}", flows.out);
    // The schema named alone is skipped too.
    let schema = flowhost(&["--cache-dir", cache, "check", &repo("flows/schema.json")]).await;
    assert_eq!(schema.code, ExitCode::SUCCESS, "{}", schema.err);

    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("tier.json");
    std::fs::copy(repo("tests/flows/broken/trigger-field-undeclared.json"), &flow).unwrap();
    let warned = flowhost(&["--cache-dir", cache, "check", dir.path().to_str().unwrap()]).await;
    assert_eq!(warned.code, ExitCode::SUCCESS, "a warning does not fail check: {}", warned.err);
    assert!(
        warned.out.contains(&format!("{}: ok (point-add-to-mparticle 1.0.0, 1 node(s), 1 warning)", flow.display())),
        "{}",
        warned.out
    );
    let expected = format!(
        "{}: /nodes/0/connector/input/properties/payload/tier: warning: `trigger.loyaltyTier`: the trigger's schema \
         does not declare `loyaltyTier`, so it may be absent",
        flow.display()
    );
    assert!(warned.err.contains(&expected), "{}", warned.err);

    let empty = tempfile::tempdir().unwrap();
    let none = flowhost(&["--cache-dir", cache, "check", empty.path().to_str().unwrap()]).await;
    assert_eq!(none.code, ExitCode::from(1));
    assert!(none.err.contains("no flow files (*.json) in this directory"), "{}", none.err);
}

/// The real binary, for what only a process shows: its exit status when its reader goes away, and its log.
fn flowhost_process() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_flowhost-e2e"))
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    let mut child = flowhost_process()
        .args(["flow", "schema"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -0`: the reader closes before the schema is written.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(output.stderr.is_empty(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_log_that_is_not_a_terminal_has_no_colour_codes() {
    let output =
        flowhost_process().args(["-v", "--no-cache", "connector", "inspect", components::ECHO]).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("INFO"), "the -v log: {log}");
    assert!(!log.contains('\u{1b}'), "colour codes in: {log:?}");
}

#[tokio::test]
async fn commands_describe_their_arguments_and_inspect_finds_a_built_in_connector_by_id() {
    for (command, argument) in [
        (&["check", "--help"][..], "Flow files, or directories"),
        (&["run", "--help"][..], "The flow file"),
        (&["connector", "call", "--help"][..], "The capability to call"),
        (&["connector", "inspect", "--help"][..], "the id of a connector built into flowhost"),
        (&["queue", "retry", "--help"][..], "The run's id"),
        (&["queue", "drop", "--help"][..], "The run's id"),
    ] {
        let help = flowhost(command).await;
        assert!(help.out.contains(argument), "{command:?}:\n{}", help.out);
    }
    let builtin = flowhost(&["--no-cache", "connector", "inspect", "mparticle"]).await;
    assert_eq!(builtin.code, ExitCode::SUCCESS, "{}", builtin.err);
    assert!(builtin.out.contains("Inbound (POST /v1/inbound/<connection>)"), "{}", builtin.out);
    let unknown = flowhost(&["--no-cache", "connector", "inspect", "nope"]).await;
    assert!(
        unknown.err.contains("no built-in connector has that id (built in: mparticle, antavo, http)"),
        "{}",
        unknown.err
    );
}

/// `flowhost connector inspect antavo`: the built-in Antavo connector, every capability with its input (with an
/// example) and output schema, its connection (the secrets marked) and its inbound side.
#[tokio::test]
async fn inspect_antavo_lists_every_capability_with_its_schemas() {
    let text = flowhost(&["--no-cache", "connector", "inspect", "antavo"]).await;
    assert_eq!(text.code, ExitCode::SUCCESS, "{}", text.err);
    for needle in [
        "antavo 0.1.0 (Antavo)",
        "apiSecret     [optional, secret]",
        "environment   [required]",
        "verifies requests itself: yes",
    ] {
        assert!(text.out.contains(needle), "{needle}:\n{}", text.out);
    }
    let json = flowhost(&["--no-cache", "connector", "inspect", "--json", "antavo"]).await;
    assert_eq!(json.code, ExitCode::SUCCESS, "{}", json.err);
    let manifest: serde_json::Value = serde_json::from_str(&json.out).unwrap();
    let capabilities = manifest["capabilities"].as_array().unwrap();
    let ids: Vec<&str> = capabilities.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "sendEvent",
            "sendEvents",
            "sendAsyncEvent",
            "getAsyncEventStatus",
            "getCustomer",
            "listChangedCustomers",
            "optIn",
            "updateProfile",
            "optOut"
        ]
    );
    for capability in capabilities {
        let id = capability["id"].as_str().unwrap();
        assert!(capability["inputSchema"]["default"]["example"].is_object(), "{id}: {capability}");
        assert_eq!(capability["outputSchema"]["type"], "object", "{id}");
        assert!(capability["outputSchema"]["example"].is_object(), "{id}");
        assert!(text.out.contains(&format!("  {id} — ")), "{id} in the text form");
    }
    assert_eq!(manifest["inbound"]["eventTypes"], serde_json::json!(["loyalty_event", "profile_change"]));
}

#[tokio::test]
async fn a_command_shows_and_takes_only_the_options_it_uses() {
    let runtime = ["--cache-dir", "--no-cache", "--timeout"];
    for (command, shown) in [
        (&["connector", "inspect", "--help"][..], &["--cache-dir", "--no-cache", "--timeout", "--secrets-file"][..]),
        (&["check", "--help"][..], &["--cache-dir", "--no-cache", "--timeout", "--secrets-file"][..]),
        (&["serve", "--help"][..], &["--cache-dir", "--no-cache", "--timeout", "--secrets-file"][..]),
        (&["demo", "--help"][..], &runtime[..]),
        (&["queue", "list", "--help"][..], &[][..]),
        (&["flow", "schema", "--help"][..], &[][..]),
        (&["bench", "--help"][..], &[][..]),
    ] {
        let help = flowhost(command).await.out;
        for option in ["--cache-dir", "--no-cache", "--timeout", "--secrets-file"] {
            assert_eq!(help.contains(option), shown.contains(&option), "{command:?} and {option}:\n{help}");
        }
    }
    assert!(!flowhost(&["demo", "--help"]).await.out.contains("--secrets-file"), "the demo needs no secrets");
    // After the command, where it is shown; before it, as once when they were global; refused where ignored.
    for args in
        [&["connector", "inspect", "mparticle", "--no-cache"][..], &["--no-cache", "connector", "inspect", "mparticle"]]
    {
        let inspect = flowhost(args).await;
        assert_eq!(inspect.code, ExitCode::SUCCESS, "{args:?}: {}", inspect.err);
    }
    let ignored = flowhost(&["flow", "schema", "--no-cache"]).await;
    assert_eq!(ignored.code, ExitCode::from(2));
    assert!(ignored.err.contains("unexpected argument '--no-cache'"), "{}", ignored.err);
    let timeout = flowhost(&["connector", "inspect", "mparticle", "--timeout", "0"]).await;
    assert!(timeout.err.contains("--timeout must be a positive number of seconds"), "{}", timeout.err);
}
