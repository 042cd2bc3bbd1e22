//! A connector written in TypeScript (the built-in HTTP connector: QuickJS, componentize-qjs) against one in
//! Rust (the echo test connector): cold compile, cached load, one call, and one call of a batch of 50. The
//! HTTP connector's requests are answered 200 by an in-process transport; nothing leaves the process.
//!
//! `cargo bench -p flowhost-tests --bench typescript`. After criterion's report it prints the component sizes
//! and the compiled sizes.

use criterion::Criterion;
use flowhost::connector::egress::EgressPolicy;
use flowhost::connector::{
    ConnectionOptions, FetchRequest, FetchResponse, HttpTransport, InvocationContext, Runtime, RuntimeConfig,
    SecretStore, TransportFuture,
};
use flowhost_tests::components;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The allocator the `flowhost` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 50;

/// Answers every request 200 with a small JSON body.
struct Ok200;

impl HttpTransport for Ok200 {
    fn send<'a>(&'a self, _request: &'a FetchRequest, _policy: &'a EgressPolicy) -> TransportFuture<'a> {
        Box::pin(async {
            Ok(FetchResponse {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: br#"{"id":42,"name":"Ada"}"#.to_vec(),
            })
        })
    }
}

fn runtime(cache_dir: Option<std::path::PathBuf>) -> Runtime {
    let config = RuntimeConfig { cache_dir, max_instances: 256, ..RuntimeConfig::default() };
    Runtime::with_transport(config, Arc::new(Ok200)).unwrap()
}

fn context(i: usize) -> InvocationContext {
    InvocationContext { run_id: format!("r{i}"), node_id: "n".into(), idempotency_key: format!("k{i}"), attempt: 1 }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let echo_bytes = std::fs::read(components::ECHO).unwrap();
    let http_bytes = flowhost_cli::builtin::HTTP.to_vec();
    let cache = tempfile::tempdir().unwrap();

    let mut load = c.benchmark_group("ts_load");
    load.sample_size(10).measurement_time(Duration::from_secs(20));
    for (name, bytes) in [("echo_rust", &echo_bytes), ("http_ts", &http_bytes)] {
        load.bench_function(format!("{name}_cold_compile"), |b| {
            b.to_async(&tokio).iter(|| async { runtime(None).load_bytes(bytes).await.unwrap() })
        });
        tokio.block_on(runtime(Some(cache.path().to_path_buf())).load_bytes(bytes)).unwrap();
        load.bench_function(format!("{name}_cached_load"), |b| {
            b.to_async(&tokio)
                .iter(|| async { runtime(Some(cache.path().to_path_buf())).load_bytes(bytes).await.unwrap() })
        });
    }
    load.finish();

    // Compiled above: loaded from the cache.
    let runtime = runtime(Some(cache.path().to_path_buf()));
    let echo = tokio.block_on(runtime.load_bytes(&echo_bytes)).unwrap();
    let http = tokio.block_on(runtime.load_bytes(&http_bytes)).unwrap();
    let secrets = SecretStore::from_pairs([("TOKEN", "let-me-in")]);
    let options = ConnectionOptions::default();
    let echo_connection = echo.connection("bench", &json!({"token": {"secret": "TOKEN"}}), &secrets, &options).unwrap();
    let http_config =
        json!({"baseUrl": "https://api.example.com/v1", "authType": "bearer", "token": {"secret": "TOKEN"}});
    let http_connection = http.connection("bench", &http_config, &secrets, &options).unwrap();
    let echo_input = json!({"properties": {"message": "hello"}});
    let http_input =
        json!({"method": "POST", "path": "/customers", "query": {"notify": true}, "json": {"name": "Ada"}});
    let contexts: Vec<InvocationContext> = (0..BATCH).map(context).collect();

    let mut invoke = c.benchmark_group("ts_invoke");
    invoke.bench_function("echo_rust_call", |b| {
        b.to_async(&tokio)
            .iter(|| async { echo.invoke(&echo_connection, "echo", &echo_input, &contexts[0]).await.result.unwrap() })
    });
    invoke.bench_function("http_ts_call", |b| {
        b.to_async(&tokio).iter(|| async {
            http.invoke(&http_connection, "request", &http_input, &contexts[0]).await.result.unwrap()
        })
    });
    // A batch of 50: one invoke-batch for the HTTP connector (a batch connector), 50 invokes for echo.
    let echo_items: Vec<(&Value, &InvocationContext)> = contexts.iter().map(|c| (&echo_input, c)).collect();
    let http_items: Vec<(&Value, &InvocationContext)> = contexts.iter().map(|c| (&http_input, c)).collect();
    invoke.bench_function("echo_rust_batch_of_50", |b| {
        b.to_async(&tokio).iter(|| async {
            let results = echo.invoke_batch(&echo_connection, "echo", &echo_items).await;
            assert!(results.iter().all(|r| r.result.is_ok()));
        })
    });
    invoke.bench_function("http_ts_batch_of_50", |b| {
        b.to_async(&tokio).iter(|| async {
            let results = http.invoke_batch(&http_connection, "request", &http_items).await;
            assert!(results.iter().all(|r| r.result.is_ok()));
        })
    });
    // Other JavaScript components to compare (e.g. the same echo connector built with componentize-js and
    // with componentize-qjs): FLOWHOST_BENCH_JS=a.wasm,b.wasm, each exporting an `echo` capability.
    let extra: Vec<String> =
        std::env::var("FLOWHOST_BENCH_JS").map(|v| v.split(',').map(String::from).collect()).unwrap_or_default();
    let mut extra_figures = Vec::new();
    for path in &extra {
        let bytes = std::fs::read(path).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let js_runtime = self::runtime(Some(dir.path().to_path_buf()));
        let started = std::time::Instant::now();
        let js = tokio.block_on(js_runtime.load_bytes(&bytes)).unwrap();
        let compile = started.elapsed();
        let compiled: u64 = std::fs::read_dir(dir.path().join("components"))
            .unwrap()
            .flatten()
            .map(|e| e.metadata().unwrap().len())
            .sum();
        let connection = js.connection("bench", &json!({}), &SecretStore::default(), &options).unwrap();
        let input = json!({"message": "hello"});
        let name = std::path::Path::new(path).file_stem().unwrap().to_string_lossy().into_owned();
        invoke.bench_function(format!("js_{name}_call"), |b| {
            b.to_async(&tokio)
                .iter(|| async { js.invoke(&connection, "echo", &input, &contexts[0]).await.result.unwrap() })
        });
        extra_figures.push((name, bytes.len(), compiled, compile));
    }
    invoke.finish();
    c.final_summary();
    for (name, size, compiled, compile) in extra_figures {
        println!(
            "{name}: {:.1} MiB, compiled {:.1} MiB, cold compile {:.2} s",
            size as f64 / 1048576.0,
            compiled as f64 / 1048576.0,
            compile.as_secs_f64()
        );
    }

    let compiled: Vec<(String, u64)> = std::fs::read_dir(cache.path().join("components"))
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    println!(
        "component sizes: echo (Rust) {} KiB, http (TypeScript) {} KiB",
        echo_bytes.len() / 1024,
        http_bytes.len() / 1024
    );
    for (name, bytes) in compiled {
        println!("compiled: {name}: {:.1} MiB", bytes as f64 / (1 << 20) as f64);
    }
}
