//! Connector runtime figures: cold compile, cached load, instantiate only, and instantiate + invoke of the
//! echo connector. Run with `cargo bench -p flowhost-tests --bench connector`.

use criterion::{Criterion, criterion_group, criterion_main};
use flowhost::connector::{ConnectionOptions, InvocationContext, Runtime, RuntimeConfig, SecretStore};
use flowhost_tests::components;
use serde_json::json;
use std::time::Duration;

fn runtime(cache_dir: Option<std::path::PathBuf>) -> Runtime {
    Runtime::new(RuntimeConfig { cache_dir, max_instances: 256, ..RuntimeConfig::default() }).unwrap()
}

fn bench(c: &mut Criterion) {
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let bytes = std::fs::read(components::ECHO).unwrap();
    let cache = tempfile::tempdir().unwrap();

    let mut load = c.benchmark_group("load");
    load.sample_size(10).measurement_time(Duration::from_secs(10));
    load.bench_function("echo_cold_compile", |b| {
        b.to_async(&tokio).iter(|| async { runtime(None).load_bytes(&bytes).await.unwrap() })
    });
    tokio.block_on(runtime(Some(cache.path().to_path_buf())).load_bytes(&bytes)).unwrap();
    load.bench_function("echo_cached_load", |b| {
        b.to_async(&tokio)
            .iter(|| async { runtime(Some(cache.path().to_path_buf())).load_bytes(&bytes).await.unwrap() })
    });
    load.finish();

    let runtime = runtime(None);
    let echo = tokio.block_on(runtime.load_bytes(&bytes)).unwrap();
    let secrets = SecretStore::from_pairs([("TOKEN", "let-me-in")]);
    let connection = echo
        .connection("bench", &json!({"token": {"secret": "TOKEN"}}), &secrets, &ConnectionOptions::default())
        .unwrap();
    let input = json!({"properties": {"message": "hello"}});
    let context =
        InvocationContext { run_id: "r".into(), node_id: "n".into(), idempotency_key: "k".into(), attempt: 1 };
    let mut invoke = c.benchmark_group("invoke");
    invoke.bench_function("echo_instantiate_only", |b| {
        b.to_async(&tokio).iter(|| async { echo.instantiate_only().await.unwrap() })
    });
    invoke.bench_function("echo_instantiate_and_invoke", |b| {
        b.to_async(&tokio).iter(|| async { echo.invoke(&connection, "echo", &input, &context).await.result.unwrap() })
    });
    invoke.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
