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
mod isolation;
mod mparticle;
mod pacing;
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
