use flowhost::connector::{ConnectionOptions, InvocationContext, Runtime, RuntimeConfig, SecretStore};
use serde_json::json;
use std::time::Instant;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let mut paths: Vec<String> = std::env::var("MEASURE").unwrap().split(',').map(String::from).collect();
    paths.insert(0, flowhost_tests::components::ECHO.to_string());
    for path in paths {
        let bytes = std::fs::read(&path).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let rt = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache.path().into()),
            max_instances: 16,
            ..RuntimeConfig::default()
        })
        .unwrap();
        let t = Instant::now();
        let c = tokio.block_on(rt.load_bytes(&bytes)).unwrap();
        let compile = t.elapsed();
        drop(c);
        drop(rt);
        let compiled: u64 = std::fs::read_dir(cache.path().join("components"))
            .unwrap()
            .flatten()
            .map(|e| e.metadata().unwrap().len())
            .sum();
        let rt = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache.path().into()),
            max_instances: 16,
            ..RuntimeConfig::default()
        })
        .unwrap();
        let t = Instant::now();
        let c = tokio.block_on(rt.load_bytes(&bytes)).unwrap();
        let cached = t.elapsed();
        let secrets = SecretStore::from_pairs([("TOKEN", "let-me-in")]);
        let conn =
            c.connection("m", &json!({"token": {"secret": "TOKEN"}}), &secrets, &ConnectionOptions::default()).unwrap();
        let input = if path.contains("echo.wasm") {
            json!({"properties": {"message": "hello"}})
        } else {
            json!({"message": "hello"})
        };
        let ctx =
            InvocationContext { run_id: "r".into(), node_id: "n".into(), idempotency_key: "k".into(), attempt: 1 };
        for _ in 0..50 {
            tokio.block_on(c.invoke(&conn, "echo", &input, &ctx)).result.unwrap();
        }
        let n = 1000;
        let t = Instant::now();
        for _ in 0..n {
            tokio.block_on(c.invoke(&conn, "echo", &input, &ctx)).result.unwrap();
        }
        let per = t.elapsed() / n;
        println!(
            "{path}: size {} KiB, compiled {} KiB, compile {:?}, cached load {:?}, per call {:?}",
            bytes.len() / 1024,
            compiled / 1024,
            compile,
            cached,
            per
        );
    }
}
