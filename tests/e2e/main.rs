//! flowhost's end-to-end tests: one binary, one module per topic.

mod antavo;
mod cli;
mod console;
mod davinci;
mod egress;
mod examples;
mod flows;
mod hostile;
mod inbound;
mod integrity;
mod isolation;
mod mparticle;
mod pacing;
mod precision;
mod runtime;
mod scale;
mod security;
mod serve;
mod typescript;

use flowhost::connector::{
    Connection, ConnectionOptions, Connector, HttpLimits, InvocationContext, Runtime, RuntimeConfig, SandboxLimits,
    SecretStore,
};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// A runtime for tests: its own compile cache, a small pool, short deadlines.
pub fn test_runtime(timeout: Duration) -> (Runtime, tempfile::TempDir) {
    test_runtime_with(timeout, HttpLimits::default())
}

pub fn test_runtime_with(timeout: Duration, http: HttpLimits) -> (Runtime, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        max_instances: 64,
        limits: SandboxLimits { memory_bytes: 32 << 20, timeout, ..SandboxLimits::default() },
        http,
        ..RuntimeConfig::default()
    };
    (Runtime::new(config).unwrap(), cache)
}

pub async fn load(runtime: &Runtime, path: &str) -> Arc<Connector> {
    runtime.load_file(path.as_ref()).await.unwrap_or_else(|e| panic!("loading {path}: {e}"))
}

/// A connection without secrets.
pub fn connect(connector: &Connector, config: Value, options: ConnectionOptions) -> Connection {
    connector.connection("test", &config, &SecretStore::default(), &options).unwrap()
}

pub fn context(node: &str) -> InvocationContext {
    InvocationContext {
        run_id: "run-1".into(),
        node_id: node.into(),
        idempotency_key: format!("run-1/{node}"),
        attempt: 1,
    }
}

/// Runs `command` to its end, like `Command::output`, but gives up after `limit`: the process is killed and the test
/// fails with what it printed, so a process that never ends fails its test instead of holding the whole suite.
pub fn output_within(command: &mut std::process::Command, limit: Duration) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child =
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let status = wait_within(&mut child, limit);
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    match status {
        Some(status) => std::process::Output { status, stdout, stderr },
        None => panic!(
            "{command:?} did not end within {limit:?} (killed); it printed:\n{}\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// Runs `flowhost bench` with `args` and `--json` (within ten minutes, on the default store unless `args` say
/// otherwise), requires it to succeed, and returns its report.
pub fn bench_report(args: &[&str]) -> serde_json::Value {
    let output = output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_flowhost-e2e"))
            .arg("bench")
            .args(args)
            .arg("--json")
            .env_remove("FLOWHOST_STORE"),
        Duration::from_secs(600),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("the report is not JSON ({e}): {stdout}"))
}

/// Waits up to `limit` for `child` to end; kills it and returns `None` when it does not.
pub fn wait_within(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
