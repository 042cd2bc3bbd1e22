//! `http.fetch` for connectors, on reqwest: every URL (redirects included) is checked against the
//! connection's egress policy, names are resolved by a resolver that drops private addresses unless they are
//! allowed, and responses are capped in time and size.

use super::egress::{EgressPolicy, non_public_reason, origin_text};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{AUTHORIZATION, COOKIE, HeaderMap, HeaderName, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode};
use std::net::SocketAddr;
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

/// Two clients that differ only in whether their resolver lets private addresses through; redirects are
/// followed by hand so that every hop is checked against the policy of the calling connection.
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

    pub async fn fetch(&self, policy: &EgressPolicy, request: FetchRequest) -> Result<FetchResponse, FetchError> {
        let mut url =
            Url::parse(&request.url).map_err(|e| FetchError::InvalidRequest(format!("the URL is not valid: {e}")))?;
        policy.check_url(&url).map_err(FetchError::Denied)?;
        let mut method = Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| FetchError::InvalidRequest(format!("{:?} is not an HTTP method", request.method)))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &request.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| FetchError::InvalidRequest(format!("{name:?} is not a valid header name")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| FetchError::InvalidRequest(format!("the value of header {name} is not valid")))?;
            headers.append(name, value);
        }
        let mut body = request.body;
        let timeout = request.timeout.map_or(self.limits.request_timeout, |t| t.min(self.limits.request_timeout));
        let deadline = tokio::time::Instant::now() + timeout;
        let client = if policy.allow_private() { &self.private_allowed } else { &self.public_only };

        for _hop in 0..=self.limits.max_redirects {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let mut builder = client.request(method.clone(), url.clone()).headers(headers.clone()).timeout(remaining);
            if let Some(body) = &body {
                builder = builder.body(body.clone());
            }
            let response = builder.send().await.map_err(|e| transport_error(&url, e))?;
            let status = response.status();
            if status.is_redirection()
                && let Some(location) = response.headers().get(LOCATION)
            {
                let next = location
                    .to_str()
                    .ok()
                    .and_then(|l| url.join(l).ok())
                    .ok_or_else(|| FetchError::Other(format!("{} sent an invalid redirect", origin_text(&url))))?;
                policy.check_url(&next).map_err(|reason| {
                    FetchError::Denied(format!("redirect from {} refused: {reason}", origin_text(&url)))
                })?;
                if status == StatusCode::SEE_OTHER
                    || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND) && method == Method::POST)
                {
                    method = Method::GET;
                    body = None;
                }
                if origin_text(&next) != origin_text(&url) {
                    headers.remove(AUTHORIZATION);
                    headers.remove(COOKIE);
                }
                url = next;
                continue;
            }
            return read_response(response, self.limits.max_response_bytes, &url).await;
        }
        Err(FetchError::Other(format!("more than {} redirects", self.limits.max_redirects)))
    }
}

async fn read_response(
    mut response: reqwest::Response,
    max_bytes: usize,
    url: &Url,
) -> Result<FetchResponse, FetchError> {
    let too_large =
        || FetchError::ResponseTooLarge(format!("the response of {} exceeds {max_bytes} bytes", origin_text(url)));
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
                    "{host} resolves to {} ({reason}); private and loopback addresses are refused unless the operator allows them",
                    resolved[0].ip()
                ))) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}
