//! The state of one sandboxed instance: a WASI context with no filesystem, environment or sockets, a
//! memory limiter, the invocation log, and the host imports (`http`, `log`, `cache`) bound to one
//! connection's policy.

use super::bindings::{cache, http, log, types};
use super::egress::EgressPolicy;
use super::http_client::{FetchError, FetchRequest, Fetcher};
use super::kv_cache::{CacheLimits, KvCache};
use super::secrets::Redactor;
use crate::ByteSize;
use serde::{Deserialize, Serialize};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use url::Url;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// How bad a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// The connector's `log` import.
    Connector,
    /// The connector's stdout.
    Stdout,
    /// The connector's stderr (panic messages land here).
    Stderr,
    /// An `http.fetch` call, logged by the host.
    Http,
    /// The host, about the sandbox (limits hit, egress refused).
    Host,
}

/// One line of an invocation's log. Secrets are redacted before a line is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    /// Milliseconds since the invocation started.
    pub at_ms: u64,
    pub level: LogLevel,
    pub source: LogSource,
    pub message: String,
}

/// Limits of one sandboxed instance.
#[derive(Debug, Clone)]
pub struct SandboxLimits {
    /// Linear memory per instance.
    pub memory_bytes: usize,
    /// Wall-clock budget of one invocation, host calls included.
    pub timeout: Duration,
    /// Bytes of log (stdout, stderr and `log`) kept per invocation; stdout and stderr are each cut there too
    /// (what follows is dropped, not an error).
    pub max_log_bytes: usize,
    /// The largest output (JSON text) of an `invoke`, or of one item of an `invoke-batch`, the host accepts:
    /// a larger one fails the call with `output-too-large` and is not kept.
    pub max_output_bytes: usize,
    /// The largest `connector-error` (its messages, field errors and body together) the host accepts: a
    /// larger one fails the call with `output-too-large` instead and is not kept.
    pub max_error_bytes: usize,
    /// The bounds of each connection's `cache`.
    pub cache: CacheLimits,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(30),
            max_log_bytes: 64 * 1024,
            max_output_bytes: 4 << 20,
            max_error_bytes: 64 * 1024,
            cache: CacheLimits::default(),
        }
    }
}

/// What the connection contributes to an instance.
pub(crate) struct ConnectionScope {
    /// The connection's name, for the service's log.
    pub connection: String,
    pub egress: Arc<EgressPolicy>,
    pub cache_scope: Option<String>,
    pub redactor: Arc<Redactor>,
}

pub(crate) struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryLimiter,
    scope: ConnectionScope,
    http: Arc<Fetcher>,
    cache: Arc<KvCache>,
    stdout: CappedPipe,
    stderr: CappedPipe,
    log: Vec<LogLine>,
    log_bytes: usize,
    max_log_bytes: usize,
    started: Instant,
    /// The first request the egress policy refused, if any.
    pub denied_egress: Option<String>,
    /// Whether a `cache.set` was refused during this invocation.
    cache_refused: bool,
    /// The percentage of its rate limit the service said was used, as the connector last reported it.
    pub usage_percent: Option<u8>,
}

impl StoreState {
    pub fn new(scope: ConnectionScope, http: Arc<Fetcher>, cache: Arc<KvCache>, limits: &SandboxLimits) -> Self {
        let stdout = CappedPipe::new(limits.max_log_bytes);
        let stderr = CappedPipe::new(limits.max_log_bytes);
        // No preopened directories, no environment, no arguments, no sockets, no name lookups.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        StoreState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter { limit: limits.memory_bytes, hit: false },
            scope,
            http,
            cache,
            stdout,
            stderr,
            log: Vec::new(),
            log_bytes: 0,
            max_log_bytes: limits.max_log_bytes,
            started: Instant::now(),
            denied_egress: None,
            cache_refused: false,
            usage_percent: None,
        }
    }

    pub fn redactor(&self) -> &Redactor {
        &self.scope.redactor
    }

    pub fn push_log(&mut self, level: LogLevel, source: LogSource, message: &str) {
        if self.log_bytes >= self.max_log_bytes {
            return;
        }
        let mut message = self.scope.redactor.redact(message);
        let room = self.max_log_bytes - self.log_bytes;
        if message.len() > room {
            let mut cut = room;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [log truncated]");
        }
        self.log_bytes += message.len();
        let at_ms = self.started.elapsed().as_millis() as u64;
        self.log.push(LogLine { at_ms, level, source, message });
    }

    /// The invocation log with stdout and stderr appended, consuming the state. A stream that was cut gets a
    /// note saying so, even when the log is full.
    pub fn into_log(mut self) -> Vec<LogLine> {
        for (name, source, level, pipe) in [
            ("stdout", LogSource::Stdout, LogLevel::Info, self.stdout.clone()),
            ("stderr", LogSource::Stderr, LogLevel::Warn, self.stderr.clone()),
        ] {
            let text = String::from_utf8_lossy(&pipe.contents()).into_owned();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                self.push_log(level, source, line);
            }
            let dropped = pipe.dropped();
            if dropped > 0 {
                let message = format!(
                    "{name} cut at {} (max_log_bytes): the next {} the connector wrote were dropped",
                    ByteSize::from(self.max_log_bytes),
                    ByteSize(dropped)
                );
                tracing::warn!(connection = %self.scope.connection, "{message}");
                let at_ms = self.started.elapsed().as_millis() as u64;
                self.log.push(LogLine { at_ms, level: LogLevel::Warn, source: LogSource::Host, message });
            }
        }
        self.log
    }

    /// Why the connector said it is about to crash: the last error line of its log that starts with
    /// [`CRASH_LOG_PREFIX`](super::runtime::CRASH_LOG_PREFIX) (already redacted), without the prefix.
    pub fn crash_report(&self) -> Option<String> {
        self.log.iter().rev().find_map(|line| {
            (line.source == LogSource::Connector && line.level == LogLevel::Error)
                .then(|| line.message.strip_prefix(super::runtime::CRASH_LOG_PREFIX))
                .flatten()
                .map(str::to_string)
        })
    }

    /// What the connector wrote to stderr, e.g. a panic message.
    pub fn stderr_text(&self) -> String {
        self.scope.redactor.redact(&String::from_utf8_lossy(&self.stderr.contents()))
    }
}

/// A connector's stdout or stderr: keeps the first `capacity` bytes and counts the rest, which it drops. A write
/// never fails: wasmtime-wasi's `MemoryOutputPipe` fails writes past its capacity, and a guest's `println!`
/// then panics, so a chatty connector would crash instead of having its output cut.
#[derive(Clone)]
pub(crate) struct CappedPipe {
    captured: Arc<Mutex<Captured>>,
}

struct Captured {
    bytes: Vec<u8>,
    capacity: usize,
    dropped: u64,
}

impl CappedPipe {
    /// How much a guest may write at once: any amount is taken, so this only sizes the guest's chunks.
    const PERMIT: usize = 64 * 1024;

    pub fn new(capacity: usize) -> Self {
        CappedPipe { captured: Arc::new(Mutex::new(Captured { bytes: Vec::new(), capacity, dropped: 0 })) }
    }

    fn take(&self, data: &[u8]) {
        let mut captured = self.captured.lock().unwrap_or_else(|e| e.into_inner());
        let kept = data.len().min(captured.capacity - captured.bytes.len());
        captured.bytes.extend_from_slice(&data[..kept]);
        captured.dropped += (data.len() - kept) as u64;
    }

    /// The bytes kept.
    pub fn contents(&self) -> Vec<u8> {
        self.captured.lock().unwrap_or_else(|e| e.into_inner()).bytes.clone()
    }

    /// How many bytes were written past the capacity.
    pub fn dropped(&self) -> u64 {
        self.captured.lock().unwrap_or_else(|e| e.into_inner()).dropped
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(Self::PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Caps linear memory and remembers that the cap was hit, so a trap that follows is reported as a memory
/// limit rather than a crash.
pub(crate) struct MemoryLimiter {
    limit: usize,
    pub hit: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        Ok(maximum.is_none_or(|max| desired <= max))
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20 && maximum.is_none_or(|max| desired <= max))
    }
}

impl types::Host for StoreState {}

impl http::Host for StoreState {
    async fn fetch(&mut self, request: http::Request) -> Result<http::Response, http::HttpError> {
        let method = request.method.clone();
        let url = Url::parse(&request.url);
        // The origin goes to the service's log: a secret in the host name (a tenant label, say) is redacted.
        let origin = self.scope.redactor.redact(&url.as_ref().map(super::egress::origin_text).unwrap_or_default());
        let started = Instant::now();
        let fetch = FetchRequest {
            method: request.method,
            url: request.url,
            headers: request.headers,
            body: request.body,
            timeout: request.timeout_ms.map(|ms| Duration::from_millis(ms.into())),
        };
        let result = self.http.fetch(&self.scope.egress, fetch, url).await;
        let elapsed = started.elapsed().as_millis();
        match &result {
            Ok(response) => {
                let message = format!("{method} {origin} -> {} in {elapsed} ms", response.status);
                tracing::info!(target: "flowhost::http", %method, host = %origin, status = response.status, latency_ms = elapsed as u64);
                self.push_log(LogLevel::Info, LogSource::Http, &message);
            }
            Err(error) => {
                let message = format!("{method} {origin} failed after {elapsed} ms: {}", describe_fetch_error(error));
                tracing::warn!(target: "flowhost::http", %method, host = %origin, latency_ms = elapsed as u64, error = %self.scope.redactor.redact(&message));
                if let FetchError::Denied(reason) = error
                    && self.denied_egress.is_none()
                {
                    self.denied_egress = Some(self.scope.redactor.redact(reason));
                }
                self.push_log(LogLevel::Warn, LogSource::Http, &message);
            }
        }
        result.map(|r| http::Response { status: r.status, headers: r.headers, body: r.body }).map_err(|e| match e {
            FetchError::Denied(m) => http::HttpError::Denied(m),
            FetchError::InvalidRequest(m) => http::HttpError::InvalidRequest(m),
            FetchError::ConnectFailed(m) => http::HttpError::ConnectFailed(m),
            FetchError::Timeout(m) => http::HttpError::Timeout(m),
            FetchError::ResponseTooLarge(m) => http::HttpError::ResponseTooLarge(m),
            FetchError::Other(m) => http::HttpError::Other(m),
        })
    }
}

fn describe_fetch_error(error: &FetchError) -> String {
    match error {
        FetchError::Denied(m) => format!("denied: {m}"),
        FetchError::InvalidRequest(m) => format!("invalid request: {m}"),
        FetchError::ConnectFailed(m) => format!("connect failed: {m}"),
        FetchError::Timeout(m) => format!("timeout: {m}"),
        FetchError::ResponseTooLarge(m) => format!("response too large: {m}"),
        FetchError::Other(m) => m.clone(),
    }
}

impl log::Host for StoreState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        self.push_log(level, LogSource::Connector, &message);
        Ok(())
    }
}

impl cache::Host for StoreState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.scope.cache_scope.as_ref().and_then(|scope| self.cache.get(scope, &key)))
    }

    fn set(&mut self, key: String, value: String, ttl_seconds: u32) -> wasmtime::Result<()> {
        if let Some(scope) = &self.scope.cache_scope
            && let Err(refused) = self.cache.set(scope, &key, &value, Duration::from_secs(ttl_seconds.into()))
        {
            // `set` has no error in the WIT: the write is dropped, and the connection's log and the service's
            // say why.
            let message = self.scope.redactor.redact(&format!("cache: {refused}"));
            // Once per invocation in the service's log: a connector flooding its cache must not flood that too.
            if !self.cache_refused {
                self.cache_refused = true;
                tracing::warn!(connection = %self.scope.connection, "{message}");
            }
            self.push_log(LogLevel::Warn, LogSource::Host, &message);
        }
        Ok(())
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        if let Some(scope) = &self.scope.cache_scope {
            self.cache.delete(scope, &key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_pipe_keeps_the_first_bytes_counts_the_rest_and_never_fails() {
        let mut pipe = CappedPipe::new(8);
        OutputStream::write(&mut pipe, bytes::Bytes::from_static(b"hello ")).unwrap();
        OutputStream::write(&mut pipe, bytes::Bytes::from_static(b"world!")).unwrap();
        OutputStream::write(&mut pipe, bytes::Bytes::from_static(b"more")).unwrap();
        assert_eq!(pipe.contents(), b"hello wo");
        assert_eq!(pipe.dropped(), 8);
        assert!(pipe.check_write().unwrap() > 0, "a full pipe still takes writes");
    }
}
