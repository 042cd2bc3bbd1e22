//! Support for flowhost's end-to-end tests and benchmarks: the test components, built by `build.rs`, and a
//! loopback HTTP fixture.

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Paths of the components built for the tests.
pub mod components {
    include!(concat!(env!("OUT_DIR"), "/components.rs"));
}

/// A small HTTP server on 127.0.0.1 with an ephemeral port, counting the requests it gets.
pub struct HttpFixture {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpFixture {
    /// Routes: `/ok` (200 "hello"), `/redirect?to=URL` (302 to URL), `/slow?ms=N`, `/big?bytes=N`,
    /// `/echo-auth` (200 with whether an Authorization header came).
    pub async fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/ok", get(|| async { "hello" }))
            .route("/redirect", get(redirect))
            .route("/slow", get(slow))
            .route("/big", get(big))
            .route("/echo-auth", get(echo_auth))
            .layer(axum::middleware::from_fn_with_state(hits.clone(), count))
            .with_state(());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HttpFixture { addr, hits, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// How many requests reached this server.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for HttpFixture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn count(
    State(hits): State<Arc<AtomicUsize>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    hits.fetch_add(1, Ordering::SeqCst);
    next.run(request).await
}

async fn redirect(Query(query): Query<HashMap<String, String>>) -> Response {
    let to = query.get("to").cloned().unwrap_or_default();
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

async fn slow(Query(query): Query<HashMap<String, String>>) -> &'static str {
    let ms = query.get("ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    "late"
}

async fn big(Query(query): Query<HashMap<String, String>>) -> String {
    let bytes = query.get("bytes").and_then(|v| v.parse().ok()).unwrap_or(1 << 20);
    "x".repeat(bytes)
}

async fn echo_auth(headers: HeaderMap) -> String {
    format!("authorization present: {}", headers.contains_key(header::AUTHORIZATION))
}
