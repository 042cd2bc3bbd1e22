//! The state of one sandboxed instance: a WASI context with no filesystem, environment or sockets, a
//! memory limiter, the invocation log, and the host imports (`http`, `log`, `cache`) bound to one
//! connection's policy.

use super::bindings::{cache, http, log, types};
use super::egress::EgressPolicy;
use super::http_client::{FetchError, FetchRequest, Fetcher};
use super::kv_cache::KvCache;
use super::secrets::Redactor;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use url::Url;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
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
    /// Bytes of log (stdout, stderr and `log`) kept per invocation.
    pub max_log_bytes: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits { memory_bytes: 64 << 20, timeout: Duration::from_secs(30), max_log_bytes: 64 * 1024 }
    }
}

/// What the connection contributes to an instance.
pub(crate) struct ConnectionScope {
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
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    log: Vec<LogLine>,
    log_bytes: usize,
    max_log_bytes: usize,
    started: Instant,
    /// The first request the egress policy refused, if any.
    pub denied_egress: Option<String>,
    /// The percentage of its rate limit the service said was used, as the connector last reported it.
    pub usage_percent: Option<u8>,
}

impl StoreState {
    pub fn new(scope: ConnectionScope, http: Arc<Fetcher>, cache: Arc<KvCache>, limits: &SandboxLimits) -> Self {
        let stdout = MemoryOutputPipe::new(limits.max_log_bytes);
        let stderr = MemoryOutputPipe::new(limits.max_log_bytes);
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

    /// The invocation log with stdout and stderr appended, consuming the state.
    pub fn into_log(mut self) -> Vec<LogLine> {
        for (source, level, pipe) in [
            (LogSource::Stdout, LogLevel::Info, self.stdout.clone()),
            (LogSource::Stderr, LogLevel::Warn, self.stderr.clone()),
        ] {
            let text = String::from_utf8_lossy(&pipe.contents()).into_owned();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                self.push_log(level, source, line);
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
            && let Err(reason) = self.cache.set(scope, &key, &value, Duration::from_secs(ttl_seconds.into()))
        {
            self.push_log(LogLevel::Warn, LogSource::Host, &format!("cache: {reason}"));
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
