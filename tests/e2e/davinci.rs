//! `flowhost import davinci` on the DaVinci exports of `tests/davinci/` (fixtures written for these tests in the
//! export format DaVinci documents): each is imported, checked with `flowhost check` and run against the
//! mParticle emulator beside the hand-written flow it should equal (`tests/davinci/handwritten/`), comparing what
//! the emulator received and what the nodes returned.

use crate::cli::{Output, flowhost};
use flowhost::Host;
use flowhost::connector::{HttpLimits, RuntimeConfig, SandboxLimits};
use flowhost::flow::{NodeStatus, Run, RunStatus};
use flowhost_cli::demo::emulator_host_config;
use mparticle_emulator::{EmulatorConfig, FaultRule, RunningEmulator};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("davinci").join(name).display().to_string()
}

/// Imports a fixture into a fresh directory.
async fn import(name: &str, extra: &[&str]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap().to_string();
    let file = fixture(name);
    let args = [&["import", "davinci", file.as_str(), "--out", out.as_str()][..], extra].concat();
    (flowhost(&args).await, dir)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// One emulator and a host pointed at it (the `mparticle` connection, and the `http` one at the emulator too).
struct Side {
    host: Host,
    emulator: RunningEmulator,
}

async fn side(cache: &Path) -> Side {
    let emulator = mparticle_emulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let runtime = RuntimeConfig {
        cache_dir: Some(cache.to_path_buf()),
        max_instances: 16,
        limits: SandboxLimits { timeout: Duration::from_secs(20), ..SandboxLimits::default() },
        http: HttpLimits::default(),
        ..RuntimeConfig::default()
    };
    let (mut config, secrets) = emulator_host_config(&emulator.url(), runtime);
    let http: Map<String, Value> = [("baseUrl".to_string(), Value::String(emulator.url()))].into_iter().collect();
    config.connection_overrides.insert("http".into(), http);
    Side { host: Host::new(config, secrets).await.unwrap(), emulator }
}

async fn run_file(side: &Side, file: &Path, event: &Value) -> Run {
    let text = std::fs::read_to_string(file).unwrap();
    let flow = side.host.load(&text).unwrap_or_else(|problems| panic!("{}: {problems:?}", file.display()));
    side.host.run(&flow, event.clone()).await.unwrap()
}

/// What mParticle received, without what differs from run to run (ids derived from the run id, times).
fn received(emulator: &RunningEmulator) -> Vec<Value> {
    emulator.batches().into_iter().map(|b| stable(b.batch)).collect()
}

/// A node output or batch without run-specific fields.
fn stable(mut value: Value) -> Value {
    const VARYING: [&str; 7] = [
        "source_request_id",
        "source_message_id",
        "sourceRequestId",
        "sourceRequestIds",
        "timestamp_unixtime_ms",
        "created_on",
        "last_modified_on",
    ];
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.retain(|k, _| !VARYING.contains(&k.as_str()));
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut value);
    value
}

/// What each connector node did (the imported flow's condition nodes have no hand-written twin).
fn outputs(run: &Run) -> Vec<(String, NodeStatus, Value)> {
    run.nodes
        .iter()
        .filter(|n| n.kind == "connector")
        .map(|n| (n.node_id.clone(), n.status, stable(n.output.clone().unwrap_or(Value::Null))))
        .collect()
}

/// Runs an imported flow and its hand-written twin, each against its own fresh emulator, for the same event,
/// and asserts that the emulators received the same batches and the nodes returned the same outputs.
async fn same_as_handwritten(cache: &Path, imported: &Path, event: Value) -> (Run, Vec<Value>) {
    let name = imported.file_name().unwrap().to_str().unwrap();
    let handwritten = PathBuf::from(fixture("handwritten")).join(name);
    let (a, b) = (side(cache).await, side(cache).await);
    let ours = run_file(&a, imported, &event).await;
    let theirs = run_file(&b, &handwritten, &event).await;
    assert_eq!(ours.status, RunStatus::Succeeded, "{name}: {}", ours.to_text());
    assert_eq!(theirs.status, RunStatus::Succeeded, "{name} (hand-written): {}", theirs.to_text());
    let batches = received(&a.emulator);
    assert_eq!(batches, received(&b.emulator), "{name}: the batches differ");
    assert_eq!(outputs(&ours), outputs(&theirs), "{name}: the outputs differ");
    (ours, batches)
}

async fn check(cache: &Path, dir: &Path) -> Output {
    flowhost(&["--cache-dir", cache.to_str().unwrap(), "check", dir.to_str().unwrap()]).await
}

#[tokio::test]
async fn every_mparticle_capability_imports_checks_and_runs_like_a_handwritten_flow() {
    let connection = "8f1c2a7b9d0e4f6a8b1c3d5e7f9a0b2c";
    let mapping = format!("{connection}=mparticle");
    let (import, dir) = import("mparticle-capabilities.json", &["--map-connection", &mapping]).await;
    assert_eq!(import.code, ExitCode::SUCCESS, "{}{}", import.out, import.err);
    let ids = [
        "create-an-account",
        "get-a-single-account",
        "update-an-account",
        "delete-an-account",
        "get-all-audiences",
        "get-all-calculated-attributes",
        "upload-an-event-batch",
        "trigger-marketing-communication",
        "sync-user-attributes",
    ];
    let mut expected: Vec<String> = ids.iter().map(|id| format!("{id}.json")).collect();
    expected.push("schema.json".into());
    expected.sort();
    assert_eq!(files_in(dir.path()), expected);
    // The report: every node, what it became; the connection as mapped.
    assert!(
        import.out.contains("node get (mparticleConnector/getSingleAccount) \"mParticle\": imported as connector node get (mparticle.getAccount)"),
        "{}",
        import.out
    );
    assert!(import.out.contains("is the connection `mparticle` (mapped by --map-connection)"), "{}", import.out);

    // Formatted, with `$schema`, positions kept in `ui`.
    let text = std::fs::read_to_string(dir.path().join("upload-an-event-batch.json")).unwrap();
    assert!(text.starts_with("{\n  \"$schema\": \"./schema.json\",\n  \"id\": \"upload-an-event-batch\""), "{text}");
    let flow: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(flow["nodes"][0]["ui"], json!({"position": {"x": 200.0, "y": 100.0}}));
    assert_eq!(flow["trigger"]["schema"]["required"], json!(["customerId", "eventName", "points"]));

    let cache = tempfile::tempdir().unwrap();
    let checked = check(cache.path(), dir.path()).await;
    assert_eq!(checked.code, ExitCode::SUCCESS, "{}{}", checked.out, checked.err);
    assert_eq!(checked.out.lines().filter(|l| l.contains(": ok (")).count(), 9, "{}", checked.out);

    let path = |id: &str| dir.path().join(format!("{id}.json"));
    let c = cache.path();
    let (run, _) = same_as_handwritten(c, &path("create-an-account"), json!({"displayName": "Brand Y"})).await;
    assert_eq!(run.nodes[0].output.as_ref().unwrap()["name"], "Brand Y");
    let (run, _) = same_as_handwritten(c, &path("get-a-single-account"), json!({"accountId": "1"})).await;
    assert_eq!(run.nodes[0].output.as_ref().unwrap()["name"], "Antavo Loyalty Demo");
    let (run, _) = same_as_handwritten(c, &path("update-an-account"), json!({"accountId": "3", "name": "Box"})).await;
    assert_eq!(run.nodes[0].output.as_ref().unwrap()["name"], "Box (renamed)");
    let (run, _) = same_as_handwritten(c, &path("delete-an-account"), json!({"accountId": "3"})).await;
    assert_eq!(run.nodes[0].output.as_ref().unwrap()["deleted"], true);
    let (run, _) = same_as_handwritten(c, &path("get-all-audiences"), json!({"accountId": "1"})).await;
    assert!(!run.nodes[0].output.as_ref().unwrap()["audiences"].as_array().unwrap().is_empty());
    let (run, _) =
        same_as_handwritten(c, &path("get-all-calculated-attributes"), json!({"name": "Lifetime Points"})).await;
    assert_eq!(run.nodes[0].output.as_ref().unwrap()["calculatedAttributes"].as_array().unwrap().len(), 1);

    let event = json!({"customerId": "c-9", "eventName": "point_add", "points": "150"});
    let (_, batches) = same_as_handwritten(c, &path("upload-an-event-batch"), event).await;
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0]["user_identities"], json!({"customer_id": "c-9"}));
    assert_eq!(batches[0]["events"][0]["data"]["custom_attributes"], json!({"points": "150"}));
    let event = json!({"customerId": "c-9", "points": "150"});
    let (_, batches) = same_as_handwritten(c, &path("trigger-marketing-communication"), event).await;
    assert_eq!(batches[0]["events"][0]["data"]["event_name"], "point_add");
    let event = json!({"customerId": "c-9", "firstName": "Ada", "tier": "gold"});
    let (_, batches) = same_as_handwritten(c, &path("sync-user-attributes"), event).await;
    assert_eq!(batches[0]["user_attributes"], json!({"$firstname": "Ada", "tier": "gold"}));
}

#[tokio::test]
async fn an_eval_node_becomes_conditions_over_the_success_of_the_node_before_it() {
    let (import, dir) = import("eval-branch.json", &[]).await;
    assert_eq!(import.code, ExitCode::SUCCESS, "{}{}", import.out, import.err);
    assert!(
        import.out.contains(
            "node check (EVAL) \"Evaluator\": imported as condition node check (if nodes.create.status == \"succeeded\" \
             then readback) and condition node check_failed, the onError of create"
        ),
        "{}",
        import.out
    );
    // Unmapped, the connection is named `mparticle` and the report says how to map it.
    assert!(import.out.contains("is the connection `mparticle` (not mapped: --map-connection ID=NAME names it)"));
    let cache = tempfile::tempdir().unwrap();
    let checked = check(cache.path(), dir.path()).await;
    assert_eq!(checked.code, ExitCode::SUCCESS, "{}{}", checked.out, checked.err);

    let file = dir.path().join("create-account-or-report.json");
    let event = json!({"displayName": "Brand Z", "customerId": "c-1"});
    // Success: the account is read back, nothing is reported.
    let (run, batches) = same_as_handwritten(cache.path(), &file, event.clone()).await;
    let path: Vec<&str> = run.nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(path, ["create", "check", "readback"]);
    assert_eq!(run.nodes[2].output.as_ref().unwrap()["name"], "Brand Z");
    assert!(batches.is_empty());

    // Failure: mParticle refuses the account; the failure branch reports it, in both flows alike.
    let handwritten = PathBuf::from(fixture("handwritten")).join("create-account-or-report.json");
    let (a, b) = (side(cache.path()).await, side(cache.path()).await);
    for s in [&a, &b] {
        s.emulator.add_fault(FaultRule::status(400).times(1).path_prefix("/v1/accounts"));
    }
    let ours = run_file(&a, &file, &event).await;
    let theirs = run_file(&b, &handwritten, &event).await;
    assert_eq!(ours.status, RunStatus::Succeeded, "{}", ours.to_text());
    let path: Vec<&str> = ours.nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(path, ["create", "check_failed", "report"]);
    assert_eq!(ours.nodes[0].status, NodeStatus::Failed);
    let batches = received(&a.emulator);
    assert_eq!(batches, received(&b.emulator));
    assert_eq!(batches[0]["events"][0]["data"]["event_name"], "account_create_failed");
    assert_eq!(batches[0]["events"][0]["data"]["custom_attributes"], json!({"display_name": "Brand Z"}));
    assert_eq!(theirs.status, RunStatus::Succeeded);
}

#[tokio::test]
async fn references_between_nodes_and_variables_become_cel() {
    let (import, dir) = import("references.json", &[]).await;
    assert_eq!(import.code, ExitCode::SUCCESS, "{}{}", import.out, import.err);
    let out = &import.out;
    assert!(
        out.contains("node start (httpConnector/httpTrigger) \"API call\": imported as the flow's trigger"),
        "{out}"
    );
    assert!(out.contains("node note1 (ANNOTATION) \"Annotation\": annotation: its text is in the flow's description"));
    assert!(out.contains("node note2 (ANNOTATION) \"Annotation\": dropped: an annotation without text"), "{out}");
    let file = dir.path().join("account-created-tell-mparticle.json");
    let flow: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(
        flow["description"],
        "Imported from the DaVinci fixtures.\n\nCreates an mParticle account for a new loyalty member and records it as \
         an event."
    );
    assert_eq!(flow["vars"], json!({"eventName": "account_created", "tier": "gold", "region": "EU"}));
    assert_eq!(
        flow["nodes"][0]["connector"]["input"]["properties"]["displayName"],
        "Loyalty account of {{ trigger.customerId }} ({{ vars.tier }})"
    );
    let batch = flow["nodes"][1]["connector"]["input"]["properties"]["eventBatch"].as_str().unwrap();
    assert!(batch.contains("\"account_id\": \"{{ nodes.create.output.id }}\""), "{batch}");
    assert!(batch.contains(r#""created": "{{ nodes.create.status == "succeeded" }}""#), "{batch}");

    let cache = tempfile::tempdir().unwrap();
    let checked = check(cache.path(), dir.path()).await;
    assert_eq!(checked.code, ExitCode::SUCCESS, "{}{}", checked.out, checked.err);
    let (run, batches) = same_as_handwritten(cache.path(), &file, json!({"customerId": "c-42"})).await;
    assert_eq!(run.nodes[0].output.as_ref().unwrap()["name"], "Loyalty account of c-42 (gold)");
    let data = &batches[0]["events"][0]["data"];
    assert_eq!(data["event_name"], "account_created");
    assert_eq!(data["custom_attributes"]["account_name"], "Loyalty account of c-42 (gold)");
    assert_eq!(data["custom_attributes"]["created"], "true");
    assert_eq!(batches[0]["user_attributes"], json!({"region": "EU"}));
}

#[tokio::test]
async fn unsupported_nodes_are_refused_or_with_partial_become_fail_nodes() {
    let (refused, dir) = import("unsupported.json", &[]).await;
    assert_eq!(refused.code, ExitCode::from(1), "{}{}", refused.out, refused.err);
    assert!(files_in(dir.path()).is_empty(), "nothing is written for a flow that would do less");
    let out = &refused.out;
    assert!(out.contains("-> NOT WRITTEN: 4 node(s) without a faithful translation"), "{out}");
    assert!(
        out.contains("node upload (mparticleConnector/uploadEventBatch) \"Upload batch\": imported as connector node")
    );
    assert!(out.contains("the mParticle capability name \"getUserProfile\" is not in the importer's table"), "{out}");
    assert!(out.contains("the connector \"functionsConnector\" has no flowhost counterpart"), "{out}");
    assert!(out.contains("a subflow (nodeConnector/startSubFlow)"), "{out}");
    assert!(out.contains("\"createSuccessResponse\" answers DaVinci's caller or shows a page"), "{out}");

    // An extended capability table maps the unknown name; the others stay refused.
    let (mapped, _dir) = import("unsupported.json", &["--map-capability", "getUserProfile=getAccount"]).await;
    assert!(mapped.out.contains("node profile (mparticleConnector/getUserProfile) \"Get a profile\": imported as"));
    assert!(mapped.out.contains("NOT WRITTEN: 3 node(s)"), "{}", mapped.out);

    let (partial, dir) = import("unsupported.json", &["--partial"]).await;
    assert_eq!(partial.code, ExitCode::SUCCESS, "{}{}", partial.out, partial.err);
    assert!(partial.out.contains("in its place: fail node profile"), "{}", partial.out);
    assert!(
        partial.out.contains(
            "node answer (httpConnector/createSuccessResponse) \"Send success JSON response\": NOT IMPORTED: the HTTP \
             connector's capability \"createSuccessResponse\" answers DaVinci's caller or shows a page (a UI-only \
             capability); a flowhost flow has no such caller; not reachable from the flow's start once the nodes before \
             it were not imported\n"
        ),
        "{}",
        partial.out
    );
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("unsupported-nodes.json")).unwrap()).unwrap();
    let ids: Vec<&str> = written["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["upload", "profile"]);
    let cache = tempfile::tempdir().unwrap();
    let checked = check(cache.path(), dir.path()).await;
    assert_eq!(checked.code, ExitCode::SUCCESS, "{}{}", checked.out, checked.err);
    let s = side(cache.path()).await;
    let event = json!({"customerId": "c-3", "eventName": "point_add", "points": "5"});
    let run = run_file(&s, &dir.path().join("unsupported-nodes.json"), &event).await;
    // The supported node ran; the run then stops, failed, with the reason: it never silently does less.
    assert_eq!(run.status, RunStatus::Failed, "{}", run.to_text());
    assert_eq!(s.emulator.batches().len(), 1);
    let error = run.error.unwrap().message;
    assert!(error.contains("not imported from DaVinci (node profile)") && error.contains("getUserProfile"), "{error}");
}

#[tokio::test]
async fn an_http_rest_call_becomes_the_http_connector() {
    let (import, dir) = import("http-request.json", &[]).await;
    assert_eq!(import.code, ExitCode::SUCCESS, "{}{}", import.out, import.err);
    assert!(import.out.contains("imported as connector node post (http.request)"), "{}", import.out);
    let file = dir.path().join("post-a-batch-over-http.json");
    let flow: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(
        flow["connections"]["http"]["config"],
        json!({"baseUrl": "https://s2s.us1.mparticle.com", "authType": "none"})
    );
    assert_eq!(flow["nodes"][0]["connector"]["input"]["path"], "/v2/events");
    let cache = tempfile::tempdir().unwrap();
    let checked = check(cache.path(), dir.path()).await;
    assert_eq!(checked.code, ExitCode::SUCCESS, "{}{}", checked.out, checked.err);
    // Pointed at the emulator, the request sends the batch the hand-written uploadEventBatch flow sends.
    let (a, b) = (side(cache.path()).await, side(cache.path()).await);
    let event = json!({"customerId": "c-7", "eventName": "reward_claim", "points": "20"});
    let ours = run_file(&a, &file, &event).await;
    assert_eq!(ours.status, RunStatus::Succeeded, "{}", ours.to_text());
    let theirs = run_file(&b, &PathBuf::from(fixture("handwritten")).join("post-a-batch-over-http.json"), &event).await;
    assert_eq!(theirs.status, RunStatus::Succeeded, "{}", theirs.to_text());
    let batches = received(&a.emulator);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches, received(&b.emulator));
}

#[tokio::test]
async fn malformed_exports_are_refused_with_a_pointer_and_nothing_written() {
    let cases = [
        ("malformed/not-an-export.json", "(root): not a DaVinci flow export"),
        (
            "malformed/missing-edge-node.json",
            "/graphData/elements/edges/1/data/target: the edge's target \"ghost\" is not a node of this graph",
        ),
        ("malformed/cycle.json", "/graphData/elements/edges/1: the edges form a cycle: a -> b -> a"),
        (
            "malformed/duplicate-node-id.json",
            "/flows/1/graphData/elements/nodes/2/data/id: duplicate node id \"a\" (also at \
             /flows/1/graphData/elements/nodes/0/data/id)",
        ),
    ];
    for (file, message) in cases {
        let (result, dir) = import(file, &[]).await;
        assert_eq!(result.code, ExitCode::from(2), "{file}: {}{}", result.out, result.err);
        assert!(result.err.contains(message), "{file}: {}", result.err);
        assert!(result.err.contains("nothing was written"), "{file}: {}", result.err);
        assert!(files_in(dir.path()).is_empty(), "{file}");
    }
}
