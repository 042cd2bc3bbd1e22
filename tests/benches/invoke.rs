//! Invocation overhead: one mParticle `triggerMarketingCommunication` through the host (fresh pooled instance,
//! input schema validation, the call, the batch built and handed to `http.fetch`, egress checks, answered 202
//! by an in-process transport) against the same `mparticle-core` code compiled natively and called as a plain
//! function; plus instantiate-only and the echo connector. Nothing leaves the process.
//!
//! `cargo bench -p flowhost-tests --bench invoke` (full) or `... --bench invoke -- --quick` (CI smoke test).
//! After criterion's own report it prints the medians and the wasm/native ratio.

use criterion::Criterion;
use flowhost::connector::egress::EgressPolicy;
use flowhost::connector::{
    ConnectionOptions, FetchRequest, FetchResponse, HttpTransport, InvocationContext, Runtime, RuntimeConfig,
    SecretStore, TransportFuture,
};
use flowhost_tests::components;
use mparticle_core::{Context, Host, HttpRequest, HttpResponse, Level, TransportError};
use serde_json::{Value, json};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The allocator the `flowhost` binary runs with (host/src/main.rs), for the host and the native code alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS_API_URL: &str = "https://s2s.us1.mparticle.com/v2";
const API_KEY: &str = "bench-api-key";
const API_SECRET: &str = "bench-api-secret";
const CAPABILITY: &str = "triggerMarketingCommunication";
/// Calls per batched invocation in the batch benchmarks.
const BATCH: usize = 50;

/// The input of the Antavo `point_add` use case.
fn input() -> Value {
    json!({"properties": {
        "eventName": "point_add",
        "eventType": "transaction",
        "payload": {"points": 100, "reason": "purchase", "double": true, "ratio": 1.5},
        "identityType": "customer_id",
        "identityValue": "member-42",
    }})
}

/// Answers every request 202 with an empty body, as mParticle's Events API does; counts what it gets.
#[derive(Default)]
struct Accepted {
    requests: AtomicUsize,
}

impl HttpTransport for Accepted {
    fn send<'a>(&'a self, request: &'a FetchRequest, _policy: &'a EgressPolicy) -> TransportFuture<'a> {
        Box::pin(async move {
            debug_assert!(request.url.starts_with(EVENTS_API_URL), "{}", request.url);
            self.requests.fetch_add(1, Ordering::Relaxed);
            Ok(FetchResponse { status: 202, headers: Vec::new(), body: Vec::new() })
        })
    }
}

/// The native `Host`: answers 202 and keeps the log, like the host does.
#[derive(Default)]
struct NativeHost {
    log: Vec<String>,
    requests: usize,
}

impl Host for NativeHost {
    fn fetch(&mut self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        black_box(&request);
        self.requests += 1;
        Ok(HttpResponse { status: 202, headers: Vec::new(), body: Vec::new() })
    }

    fn cache_get(&mut self, _key: &str) -> Option<String> {
        None
    }

    fn cache_set(&mut self, _key: &str, _value: &str, _ttl_seconds: u32) {}

    fn cache_delete(&mut self, _key: &str) {}

    fn report_usage(&mut self, _percentage_used: u64) {}

    fn log(&mut self, _level: Level, message: &str) {
        self.log.push(message.to_string());
    }
}

fn bench(c: &mut Criterion) {
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let transport = Arc::new(Accepted::default());
    let config = RuntimeConfig { cache_dir: None, max_instances: 256, ..RuntimeConfig::default() };
    let runtime = Runtime::with_transport(config, transport.clone()).unwrap();
    let mparticle = tokio
        .block_on(runtime.load_bytes(&std::fs::read(components::MPARTICLE_CONNECTOR).unwrap()))
        .expect("load the mParticle component");
    let echo = tokio.block_on(runtime.load_bytes(&std::fs::read(components::ECHO).unwrap())).expect("load echo");

    let secrets = SecretStore::from_pairs([("MP_KEY", API_KEY), ("MP_SECRET", API_SECRET), ("TOKEN", "let-me-in")]);
    let connection = mparticle
        .connection(
            "bench",
            &json!({"apiKey": {"secret": "MP_KEY"}, "apiSecret": {"secret": "MP_SECRET"}, "eventsApiUrl": EVENTS_API_URL}),
            &secrets,
            &ConnectionOptions::default(),
        )
        .unwrap();
    let echo_connection = echo
        .connection("bench", &json!({"token": {"secret": "TOKEN"}}), &secrets, &ConnectionOptions::default())
        .unwrap();
    let input = input();
    let echo_input = json!({"properties": {"message": "hello"}});
    let context = InvocationContext {
        run_id: "run-1".into(),
        node_id: "trigger_marketing_communication".into(),
        idempotency_key: "run-1/trigger_marketing_communication".into(),
        attempt: 1,
    };

    // Both sides must do the whole job before they are timed.
    let wasm_output = tokio.block_on(mparticle.invoke(&connection, CAPABILITY, &input, &context)).result.unwrap();
    assert_eq!(wasm_output["status"], 202, "{wasm_output}");
    assert_eq!(transport.requests.load(Ordering::Relaxed), 1, "one batch reached the stub transport");
    let native_connection = json!({"apiKey": API_KEY, "apiSecret": API_SECRET, "eventsApiUrl": EVENTS_API_URL});
    let native_context = Context {
        run_id: context.run_id.clone(),
        node_id: context.node_id.clone(),
        idempotency_key: context.idempotency_key.clone(),
        attempt: context.attempt,
    };
    let mut host = NativeHost::default();
    let native_output = mparticle_core::invoke(&mut host, CAPABILITY, &native_connection, &input, &native_context);
    let native_output: Value = serde_json::from_str(&native_output.unwrap()).expect("the output is JSON");
    assert_eq!(native_output, wasm_output, "native and wasm give the same output");
    assert_eq!(host.requests, 1);

    let mut group = c.benchmark_group("mparticle");
    group.warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(5));
    group.bench_function("wasm_trigger_marketing_communication", |b| {
        b.to_async(&tokio).iter(|| async {
            let invocation = mparticle.invoke(&connection, CAPABILITY, &input, &context).await;
            invocation.result.unwrap()
        })
    });
    group.bench_function("native_trigger_marketing_communication", |b| {
        b.iter(|| {
            host.log.clear();
            mparticle_core::invoke(&mut host, CAPABILITY, black_box(&native_connection), &input, &native_context)
                .unwrap()
        })
    });
    // Fifty calls sharing one invocation (`invoke-batch`, one `/bulkevents` request), as concurrent flow runs
    // on one connection do; the summary divides by fifty.
    let contexts: Vec<InvocationContext> =
        (0..BATCH).map(|i| InvocationContext { idempotency_key: format!("run-{i}/send"), ..context.clone() }).collect();
    let items: Vec<(&Value, &InvocationContext)> = contexts.iter().map(|c| (&input, c)).collect();
    let native_items: Vec<(Value, Context)> = contexts
        .iter()
        .map(|c| (input.clone(), Context { idempotency_key: c.idempotency_key.clone(), ..native_context.clone() }))
        .collect();
    let before = transport.requests.load(Ordering::Relaxed);
    let outputs = tokio.block_on(mparticle.invoke_batch(&connection, CAPABILITY, &items));
    assert!(outputs.iter().all(|o| o.result.as_ref().is_ok_and(|v| v["endpoint"] == "bulkevents")));
    assert_eq!(transport.requests.load(Ordering::Relaxed), before + 1, "fifty calls, one request");
    group.bench_function("wasm_batch_of_50", |b| {
        b.to_async(&tokio).iter(|| async {
            let invocations = mparticle.invoke_batch(&connection, CAPABILITY, &items).await;
            assert!(invocations.iter().all(|i| i.result.is_ok()));
            invocations
        })
    });
    group.bench_function("native_batch_of_50", |b| {
        b.iter(|| {
            host.log.clear();
            let results =
                mparticle_core::invoke_batch(&mut host, CAPABILITY, black_box(&native_connection), &native_items);
            assert!(results.iter().all(Result::is_ok));
            results
        })
    });
    group.bench_function("wasm_instantiate_only", |b| {
        b.to_async(&tokio).iter(|| async { mparticle.instantiate_only().await.unwrap() })
    });
    group.finish();

    let mut group = c.benchmark_group("echo");
    group.warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(5));
    group.bench_function("wasm_invoke", |b| {
        b.to_async(&tokio)
            .iter(|| async { echo.invoke(&echo_connection, "echo", &echo_input, &context).await.result.unwrap() })
    });
    group.finish();
}

/// Where criterion writes its estimates: `$CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else the
/// `criterion` directory of the target directory this binary runs from.
fn criterion_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(home.into());
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(target).join("criterion"));
    }
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/invoke-<hash>
    Some(exe.parent()?.parent()?.parent()?.join("criterion"))
}

/// The median of one benchmark in nanoseconds, from criterion's `estimates.json`.
fn median_ns(dir: &std::path::Path, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(id).join("new").join("estimates.json")).ok()?;
    serde_json::from_str::<Value>(&text).ok()?["median"]["point_estimate"].as_f64()
}

fn print_summary() {
    let Some(dir) = criterion_dir() else { return };
    let ids = [
        "mparticle/wasm_trigger_marketing_communication",
        "mparticle/native_trigger_marketing_communication",
        "mparticle/wasm_instantiate_only",
        "echo/wasm_invoke",
        "mparticle/wasm_batch_of_50",
        "mparticle/native_batch_of_50",
    ];
    let medians: Vec<Option<f64>> = ids.iter().map(|id| median_ns(&dir, id)).collect();
    println!("\nmedians (criterion estimates in {}):", dir.display());
    for (id, median) in ids.iter().zip(&medians) {
        match median {
            Some(ns) => println!("  {id:<50} {:>10.2} µs", ns / 1000.0),
            None => println!("  {id:<50} {:>10}", "n/a"),
        }
    }
    if let (Some(wasm), Some(native)) = (medians[0], medians[1]) {
        println!("  wasm/native: {:.2}x (targets: wasm median <= 25 µs, <= 3x native)", wasm / native);
    }
    if let (Some(wasm), Some(native)) = (medians[4], medians[5]) {
        let (wasm, native) = (wasm / BATCH as f64, native / BATCH as f64);
        println!(
            "  batched, per call: wasm {:.2} µs, native {:.2} µs, {:.2}x",
            wasm / 1000.0,
            native / 1000.0,
            wasm / native
        );
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
    // Under `cargo test --benches` each benchmark runs once, untimed: there are no figures to sum up.
    if std::env::args().any(|arg| arg == "--bench") {
        print_summary();
    }
}
