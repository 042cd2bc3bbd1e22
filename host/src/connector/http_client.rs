//! `http.fetch` for connectors: every URL (redirects included) is checked against the connection's egress
//! policy and responses are capped in time and size ([`Fetcher`]), in front of a transport ([`HttpTransport`])
//! that only moves bytes. The default transport is reqwest ([`HttpClients`]), whose resolver drops private
//! addresses unless they are allowed.

use super::egress::{EgressPolicy, non_public_reason, origin_text};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{AUTHORIZATION, COOKIE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Transport limits of `http.fetch`.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub connect_timeout: Duration,
    /// The longest a single request may take; a connector may ask for less.
    pub request_timeout: Duration,
    pub max_response_bytes: usize,
    pub max_redirects: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
            max_response_bytes: 8 << 20,
            max_redirects: 5,
        }
    }
}

/// An HTTP request from a connector.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Option<Duration>,
}

/// The answer to a connector's request.
#[derive(Debug, Clone)]
pub struct FetchResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a request got no response. Messages name the origin, never the path, query, headers or body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    Denied(String),
    InvalidRequest(String),
    ConnectFailed(String),
    Timeout(String),
    ResponseTooLarge(String),
    Other(String),
}

/// The network leg of `http.fetch`: sends one request and returns its response as it is (a redirect included:
/// the host follows redirects itself).
///
/// The host does everything else, whatever the transport: it checks the URL of every hop against the
/// connection's egress policy (allow-lists, literal private addresses), validates the method (upper-cased) and
/// headers, follows redirects (checking each target, dropping `Authorization` and `Cookie` across origins),
/// enforces the request deadline and caps the response size. The transport is handed the request of one hop
/// with `timeout` set to what is left of the deadline, and the connection's policy so that a transport that
/// resolves names can check the addresses it connects to ([`EgressPolicy::check_address`]); the default,
/// [`HttpClients`], does (its resolver drops private and loopback addresses unless the policy allows them).
///
/// Tests and benchmarks give the runtime an in-process transport ([`Runtime::with_transport`]) to answer
/// `http.fetch` without a network.
///
/// [`Runtime::with_transport`]: crate::connector::Runtime::with_transport
pub trait HttpTransport: Send + Sync {
    fn send<'a>(&'a self, request: &'a FetchRequest, policy: &'a EgressPolicy) -> TransportFuture<'a>;
}

/// What [`HttpTransport::send`] returns.
pub type TransportFuture<'a> = Pin<Box<dyn Future<Output = Result<FetchResponse, FetchError>> + Send + 'a>>;

/// `http.fetch` as the sandbox sees it: the egress policy, request checks, redirects, deadline and size cap,
/// in front of a transport.
pub(crate) struct Fetcher {
    transport: Arc<dyn HttpTransport>,
    limits: HttpLimits,
}

impl Fetcher {
    pub fn new(transport: Arc<dyn HttpTransport>, limits: HttpLimits) -> Self {
        Fetcher { transport, limits }
    }

    /// Checks `request` against `policy`, sends it through the transport and follows redirects, checking
    /// every hop. `url` is `request.url`, already parsed.
    pub async fn fetch(
        &self,
        policy: &EgressPolicy,
        mut request: FetchRequest,
        url: Result<Url, url::ParseError>,
    ) -> Result<FetchResponse, FetchError> {
        let mut url = url.map_err(|e| FetchError::InvalidRequest(format!("the URL is not valid: {e}")))?;
        policy.check_url(&url).map_err(FetchError::Denied)?;
        if !request.method.bytes().all(|b| b.is_ascii_uppercase()) {
            request.method.make_ascii_uppercase();
        }
        if !METHODS.contains(&request.method.as_str()) {
            return Err(FetchError::InvalidRequest(format!(
                "{:?} is not a method a connector may use ({})",
                request.method,
                METHODS.join(", ")
            )));
        }
        for (name, value) in &request.headers {
            if !valid_header_name(name) {
                return Err(FetchError::InvalidRequest(format!("{name:?} is not a valid header name")));
            }
            if !valid_header_value(value) {
                return Err(FetchError::InvalidRequest(format!("the value of header {name} is not valid")));
            }
            // Another `Host` would reach another virtual host behind the allowed address.
            if name.eq_ignore_ascii_case("host") && !value.trim().eq_ignore_ascii_case(&authority(&url)) {
                return Err(FetchError::InvalidRequest(format!(
                    "the Host header must be the URL's authority ({}), if it is given at all",
                    authority(&url)
                )));
            }
        }
        // The transport sets `Host` from the URL of each hop, redirects included.
        request.headers.retain(|(name, _)| !name.eq_ignore_ascii_case("host"));
        let timeout = request.timeout.map_or(self.limits.request_timeout, |t| t.min(self.limits.request_timeout));
        let deadline = tokio::time::Instant::now() + timeout;
        let too_large = |url: &Url| {
            FetchError::ResponseTooLarge(format!(
                "the response of {} exceeds {}",
                origin_text(url),
                crate::ByteSize::from(self.limits.max_response_bytes)
            ))
        };

        for _hop in 0..=self.limits.max_redirects {
            request.timeout = Some(deadline.saturating_duration_since(tokio::time::Instant::now()));
            let response = tokio::time::timeout_at(deadline, self.transport.send(&request, policy))
                .await
                .map_err(|_| FetchError::Timeout(format!("{} did not answer in time", origin_text(&url))))??;
            if response.body.len() > self.limits.max_response_bytes {
                return Err(too_large(&url));
            }
            let location = (300..400).contains(&response.status).then(|| find_header(&response.headers, "location"));
            let Some(Some(location)) = location else { return Ok(response) };
            let next = url
                .join(location)
                .map_err(|_| FetchError::Other(format!("{} sent an invalid redirect", origin_text(&url))))?;
            policy.check_url(&next).map_err(|reason| {
                FetchError::Denied(format!("redirect from {} refused: {reason}", origin_text(&url)))
            })?;
            let status = response.status;
            if status == StatusCode::SEE_OTHER.as_u16()
                || (matches!(status, 301 | 302) && request.method == Method::POST.as_str())
            {
                request.method = Method::GET.to_string();
                request.body = None;
            }
            if origin_text(&next) != origin_text(&url) {
                request.headers.retain(|(name, _)| {
                    !name.eq_ignore_ascii_case(AUTHORIZATION.as_str()) && !name.eq_ignore_ascii_case(COOKIE.as_str())
                });
            }
            request.url = next.to_string();
            url = next;
        }
        Err(FetchError::Other(format!("more than {} redirects", self.limits.max_redirects)))
    }
}

/// The methods of `http.request` in the WIT (`wit/v0.1.0/connector.wit`).
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"];

/// `host[:port]` of a URL, the port only when it is not the scheme's default: what `Host` says.
fn authority(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        (None, _) => String::new(),
    }
}

/// What `http::HeaderName::from_bytes` accepts (a token, either case), checked without allocating.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 1 << 16
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// What `http::HeaderValue::from_str` accepts (visible ASCII, space and tab), checked without allocating.
fn valid_header_value(value: &str) -> bool {
    value.bytes().all(|b| (32..127).contains(&b) || b == b'\t')
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// The default transport, on reqwest: two clients that differ only in whether their resolver lets private
/// addresses through (so that a public name cannot lead into the private network); redirects are not
/// followed here but returned to [`Fetcher`], which checks every hop.
#[derive(Clone)]
pub struct HttpClients {
    public_only: reqwest::Client,
    private_allowed: reqwest::Client,
    limits: HttpLimits,
}

impl HttpClients {
    pub fn new(limits: HttpLimits) -> Result<Self, String> {
        let build = |allow_private| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(limits.connect_timeout)
                .pool_idle_timeout(Duration::from_secs(90))
                .dns_resolver(Arc::new(PolicyResolver { allow_private }))
                .no_proxy()
                .user_agent(concat!("flowhost/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))
        };
        Ok(HttpClients { public_only: build(false)?, private_allowed: build(true)?, limits })
    }

    pub fn limits(&self) -> &HttpLimits {
        &self.limits
    }

    async fn send_one(&self, request: &FetchRequest, policy: &EgressPolicy) -> Result<FetchResponse, FetchError> {
        let url =
            Url::parse(&request.url).map_err(|e| FetchError::InvalidRequest(format!("the URL is not valid: {e}")))?;
        let method = Method::from_bytes(request.method.as_bytes())
            .map_err(|_| FetchError::InvalidRequest(format!("{:?} is not an HTTP method", request.method)))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &request.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| FetchError::InvalidRequest(format!("{name:?} is not a valid header name")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| FetchError::InvalidRequest(format!("the value of header {name} is not valid")))?;
            headers.append(name, value);
        }
        let client = if policy.allow_private() { &self.private_allowed } else { &self.public_only };
        let mut builder = client.request(method, url.clone()).headers(headers);
        builder = builder.timeout(request.timeout.unwrap_or(self.limits.request_timeout));
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        let response = builder.send().await.map_err(|e| transport_error(&url, e))?;
        read_response(response, self.limits.max_response_bytes, &url).await
    }
}

impl HttpTransport for HttpClients {
    fn send<'a>(&'a self, request: &'a FetchRequest, policy: &'a EgressPolicy) -> TransportFuture<'a> {
        Box::pin(self.send_one(request, policy))
    }
}

async fn read_response(
    mut response: reqwest::Response,
    max_bytes: usize,
    url: &Url,
) -> Result<FetchResponse, FetchError> {
    let too_large = || {
        FetchError::ResponseTooLarge(format!(
            "the response of {} exceeds {}",
            origin_text(url),
            crate::ByteSize::from(max_bytes)
        ))
    };
    if response.content_length().is_some_and(|len| len > max_bytes as u64) {
        return Err(too_large());
    }
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(url, e))? {
        if body.len() + chunk.len() > max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(FetchResponse { status, headers, body })
}

fn transport_error(url: &Url, error: reqwest::Error) -> FetchError {
    let origin = origin_text(url);
    if let Some(denied) = find_source::<ResolveDenied>(&error) {
        return FetchError::Denied(denied.0.clone());
    }
    let error = error.without_url();
    if error.is_timeout() {
        FetchError::Timeout(format!("{origin} did not answer in time"))
    } else if error.is_connect() {
        FetchError::ConnectFailed(format!("cannot connect to {origin}: {}", root_cause(&error)))
    } else {
        FetchError::Other(format!("request to {origin} failed: {}", root_cause(&error)))
    }
}

fn find_source<'a, E: std::error::Error + 'static>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a E> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// A name that resolved only to refused addresses.
#[derive(Debug)]
struct ResolveDenied(String);

impl std::fmt::Display for ResolveDenied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ResolveDenied {}

/// Resolves with the system resolver, then drops private and loopback addresses unless they are allowed, so
/// that a public name cannot lead into the private network (DNS rebinding included: the connection is made
/// to the checked address).
struct PolicyResolver {
    allow_private: bool,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|addr| allow_private || non_public_reason(addr.ip()).is_none())
                .collect();
            if allowed.is_empty() && !resolved.is_empty() {
                let reason = non_public_reason(resolved[0].ip()).unwrap_or("not allowed");
                return Err(Box::new(ResolveDenied(format!(
                    "{host} resolves to {} ({reason}); private and loopback addresses are refused unless the operator allows them (`[connectors] allow_private = true` in flowhost.toml, `--allow-private` on the command line, `HostConfig::allow_private` when embedded)",
                    resolved[0].ip()
                ))) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::egress::HostPattern;
    use std::sync::Mutex;

    /// Answers 200 to everything and keeps the headers it was sent; no network.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Vec<(String, String)>>>);

    impl HttpTransport for Recorder {
        fn send<'a>(&'a self, request: &'a FetchRequest, _: &'a EgressPolicy) -> TransportFuture<'a> {
            self.0.lock().unwrap().push(request.headers.clone());
            Box::pin(async { Ok(FetchResponse { status: 200, headers: Vec::new(), body: Vec::new() }) })
        }
    }

    async fn fetch(recorder: &Arc<Recorder>, method: &str, headers: &[(&str, &str)]) -> Result<u16, FetchError> {
        let policy = EgressPolicy {
            connector_hosts: vec![HostPattern::parse("https://api.crm.example").unwrap()],
            connection_hosts: None,
            allow_private: false,
            ..Default::default()
        };
        let fetcher = Fetcher::new(recorder.clone(), HttpLimits::default());
        let url = "https://api.crm.example/v1/x".to_string();
        let request = FetchRequest {
            method: method.into(),
            url: url.clone(),
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body: None,
            timeout: None,
        };
        fetcher.fetch(&policy, request, Url::parse(&url)).await.map(|r| r.status)
    }

    #[tokio::test]
    async fn only_the_wit_methods_and_the_urls_own_host_go_out() {
        let recorder = Arc::new(Recorder::default());
        for method in ["GET", "post", "Put", "DELETE", "PATCH", "HEAD"] {
            assert_eq!(fetch(&recorder, method, &[]).await, Ok(200), "{method}");
        }
        for method in ["TRACE", "CONNECT", "PROPFIND", "OPTIONS"] {
            let Err(FetchError::InvalidRequest(message)) = fetch(&recorder, method, &[]).await else {
                panic!("{method} must be refused");
            };
            assert!(message.contains(method) && message.contains("GET, POST, PUT, DELETE, PATCH, HEAD"), "{message}");
        }
        // Another virtual host behind the allowed address is refused; the URL's own is let be, and left to the
        // transport to set.
        for host in ["internal.crm.example", "api.crm.example:8443", "localhost"] {
            let Err(FetchError::InvalidRequest(message)) = fetch(&recorder, "GET", &[("Host", host)]).await else {
                panic!("Host {host} must be refused");
            };
            assert!(message.contains("Host header must be the URL's authority (api.crm.example)"), "{message}");
        }
        recorder.0.lock().unwrap().clear();
        assert_eq!(fetch(&recorder, "GET", &[("host", "API.crm.example"), ("x-a", "1")]).await, Ok(200));
        assert_eq!(*recorder.0.lock().unwrap(), [vec![("x-a".to_string(), "1".to_string())]]);
    }
}
