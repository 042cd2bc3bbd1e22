//! The connector's only way to the outside world: outbound HTTP, a per-connection cache and a log.
//!
//! The component implements [`Host`] over the WIT imports; tests and benchmarks implement it natively.

use std::fmt;

/// An HTTP method the connector uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One outbound HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: Method,
    /// An absolute `http` or `https` URL.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// A total timeout in milliseconds; the host may cap it.
    pub timeout_ms: Option<u32>,
}

impl HttpRequest {
    /// The value of a request header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// One HTTP response; any status, 4xx and 5xx included.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The value of a response header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// True for 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Why a request got no response (mirrors the WIT `http-error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The host refused the request (allow-list, private address, redirect to an unlisted host).
    #[error("request refused by the host: {0}")]
    Denied(String),
    /// The request was malformed (bad URL, method or header).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No connection could be made; nothing was sent.
    #[error("could not connect: {0}")]
    ConnectFailed(String),
    /// The request did not complete in time; it may or may not have reached the server.
    #[error("request timed out: {0}")]
    Timeout(String),
    /// The response body exceeded the host's size limit.
    #[error("response too large: {0}")]
    ResponseTooLarge(String),
    /// Any other transport failure (e.g. a connection lost mid-request).
    #[error("request failed: {0}")]
    Other(String),
}

/// A log level (mirrors the WIT `log.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// What the connector needs from its host.
pub trait Host {
    /// Sends a request and waits for its response.
    fn fetch(&mut self, request: HttpRequest) -> Result<HttpResponse, TransportError>;
    /// The cached value under `key` (scoped to the connection by the host), unless it expired or was evicted.
    fn cache_get(&mut self, key: &str) -> Option<String>;
    /// Stores `value` under `key` for `ttl_seconds`.
    fn cache_set(&mut self, key: &str, value: &str, ttl_seconds: u32);
    /// Removes `key`.
    fn cache_delete(&mut self, key: &str);
    /// Writes one line to the invocation log. Never pass credentials.
    fn log(&mut self, level: Level, message: &str);
    /// Tells the host how much of its rate limit mParticle says is used, in percent
    /// (`X-mp-rate-limit-percentage-used`), so that it paces the connection before mParticle answers 429.
    fn report_usage(&mut self, percentage_used: u64);
}
