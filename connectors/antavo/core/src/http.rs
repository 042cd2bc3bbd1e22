//! Sending requests to Antavo (Escher-signed or with a bearer token) and mapping what comes back, or does
//! not, to the connector's error kinds.

use crate::config::Config;
use crate::error::Error;
use crate::escher::{self, Profile};
use crate::host::{Host, HttpRequest, HttpResponse, Level, Method, TransportError};
use serde_json::Value;

/// The timeout the connector asks for on every Antavo call; the host may cap it.
pub const REQUEST_TIMEOUT_MS: u32 = 30_000;
/// How much of a response body an error carries.
const MAX_BODY_IN_ERROR: usize = 4096;
/// How much of Antavo's own message an error carries.
const MAX_MESSAGE: usize = 512;

/// Antavo's error codes the connector acts on.
pub mod codes {
    /// 404: the customer does not exist.
    pub const CUSTOMER_NOT_FOUND: i64 = 160_212;
    /// The transaction id of a checkout was already used.
    pub const TRANSACTION_ID_USED: i64 = 5003;
    /// An `opt_in` for a customer who already opted in.
    pub const ALREADY_OPTED_IN: i64 = 112_101;
    /// A non-repeatable action was repeated.
    pub const ACTION_NOT_REPEATABLE: i64 = 10_001;
    /// A malformed auth header (Antavo's published list).
    pub const AUTH_HEADER_INVALID: i64 = 101_021;
    /// Async events: the correlation id is unknown.
    pub const CORRELATION_ID_NOT_FOUND: i64 = 203_408;
    /// Async events: the bearer token was refused.
    pub const BEARER_REFUSED: i64 = 220_052;
}

/// Whether a request may be re-sent after its fate became unknown (a timeout, a lost connection, a 504).
/// Antavo has no idempotency key: a re-sent `POST /events` records the event twice, unless Antavo refuses the
/// repeat itself (a checkout's `transaction_id`, a second `opt_in`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Reads, and writes Antavo refuses to repeat.
    Safe,
    /// Writes that a re-send would repeat.
    NotIdempotent,
}

/// What the request was, for messages.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub capability: &'a str,
    pub idempotency: Idempotency,
}

/// Antavo's error object: `{"error": {"type", "code", "message"}}` (also flat, and with a string `error` and a
/// `details` object on the token endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AntavoError {
    pub kind: Option<String>,
    pub code: Option<i64>,
    pub message: Option<String>,
}

impl AntavoError {
    /// Reads the error of a response body, if it has one.
    pub fn parse(body: &[u8]) -> Option<AntavoError> {
        let value: Value = serde_json::from_slice(body).ok()?;
        Self::from_value(&value)
    }

    /// Reads an error object (the envelope or the inner object).
    pub fn from_value(value: &Value) -> Option<AntavoError> {
        let inner = match value.get("error") {
            Some(error @ Value::Object(_)) => error,
            Some(Value::String(_)) => value.get("details").filter(|d| d.is_object()).unwrap_or(value),
            _ => value,
        };
        let kind = inner.get("type").and_then(Value::as_str).map(str::to_string);
        let code = inner.get("code").and_then(|c| c.as_i64().or_else(|| c.as_str().and_then(|s| s.parse().ok())));
        let message = inner
            .get("message")
            .and_then(Value::as_str)
            .or_else(|| value.get("error").and_then(Value::as_str))
            .map(|m| truncate(m.trim(), MAX_MESSAGE).to_string())
            .filter(|m| !m.is_empty());
        (kind.is_some() || code.is_some() || message.is_some()).then_some(AntavoError { kind, code, message })
    }

    /// `160212 Customer not found` or what there is of it.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(code) = self.code.filter(|c| *c != 0) {
            parts.push(code.to_string());
        }
        if let Some(message) = &self.message {
            parts.push(message.clone());
        } else if let Some(kind) = &self.kind {
            parts.push(kind.clone());
        }
        parts.join(" ")
    }
}

/// The `host` value a client sends for a URL: the authority, without the scheme's default port.
pub fn host_of(url: &str) -> Option<(&str, &str, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = match (scheme.to_ascii_lowercase().as_str(), authority.rsplit_once(':')) {
        ("https", Some((h, "443"))) | ("http", Some((h, "80"))) => h.to_string(),
        _ => authority.to_string(),
    };
    let after = &rest[end..];
    let (path, query) = after.split_once('?').unwrap_or((after, ""));
    Some((path, query, host.to_ascii_lowercase()))
}

/// A request to the API signed with Escher (Antavo's profile) with the connection's key and secret.
/// `path_and_query` is percent-encoded, e.g. `/customers/c-1?fields=groups`.
pub fn signed_request(
    host: &mut dyn Host,
    config: &Config,
    method: Method,
    path_and_query: &str,
    body: Option<Vec<u8>>,
) -> Result<HttpRequest, Error> {
    let credentials = config.require_api()?;
    let url = format!("{}{path_and_query}", config.api_url);
    let (path, query, authority) =
        host_of(&url).ok_or_else(|| Error::InvalidConfig(format!("connection property apiUrl: bad URL {url:?}")))?;
    let mut headers = vec![("accept".to_string(), "application/json".to_string())];
    if body.is_some() {
        headers.push(("content-type".into(), "application/json".into()));
    }
    // `host` is signed as the transport sends it; it is not set here (the transport derives it from the URL).
    let mut to_sign = headers.clone();
    to_sign.push(("host".into(), authority));
    let profile = Profile::antavo();
    let signed = escher::sign(
        &profile,
        &config.scope(),
        &credentials.key,
        &credentials.secret,
        &escher::Request {
            method: method.as_str(),
            path: if path.is_empty() { "/" } else { path },
            query,
            headers: &to_sign,
            body: body.as_deref().unwrap_or_default(),
        },
        &[],
        host.now_ms().div_euclid(1000),
    )
    .map_err(|e| Error::permanent(format!("could not sign the request: {e}")))?;
    headers.push(signed.date);
    headers.push(signed.authorization);
    Ok(HttpRequest { method, url, headers, body, timeout_ms: Some(REQUEST_TIMEOUT_MS) })
}

/// Sends a request; logs the method and URL (which never carry credentials) and the status.
pub fn send(host: &mut dyn Host, request: HttpRequest) -> Result<HttpResponse, TransportError> {
    let line = format!("{} {}", request.method, request.url);
    host.log(Level::Debug, &line);
    let outcome = host.fetch(request);
    match &outcome {
        Ok(response) => host.log(Level::Debug, &format!("{line} -> HTTP {}", response.status)),
        Err(error) => host.log(Level::Warn, &format!("{line} -> {error}")),
    }
    outcome
}

fn ambiguous_message(capability: &str, what: &str) -> String {
    format!(
        "{capability}: {what} after the request was sent, so Antavo may or may not have recorded it. It was not \
         retried: Antavo has no idempotency key and would record a re-sent event twice. Check the customer's \
         history in Antavo before sending it again"
    )
}

/// Maps a transport failure. A timeout or a lost connection of a request Antavo would repeat is permanent:
/// it may have taken effect.
pub fn map_transport(error: TransportError, call: Call<'_>) -> Error {
    let ambiguous = matches!(error, TransportError::Timeout(_) | TransportError::Other(_));
    if ambiguous && call.idempotency == Idempotency::NotIdempotent {
        return Error::Permanent {
            status: None,
            message: ambiguous_message(call.capability, &error.to_string()),
            body: String::new(),
        };
    }
    match error {
        TransportError::Timeout(_) | TransportError::ConnectFailed(_) | TransportError::Other(_) => {
            Error::Transient(format!("{}: {error}", call.capability))
        }
        TransportError::Denied(_) | TransportError::InvalidRequest(_) | TransportError::ResponseTooLarge(_) => {
            Error::permanent(format!("{}: {error}", call.capability))
        }
    }
}

/// What a refused signature means for the connection.
pub const SIGNATURE_HINT: &str = "check the connection properties apiKey and apiSecret (Management UI > Settings > API \
                                   settings; regenerating the secret invalidates the old one) and environment, which \
                                   is the signing region";

/// Maps a non-2xx answer of a key-signed API to an error kind. `secrets` are scrubbed from the message and
/// the body.
pub fn map_status(response: &HttpResponse, call: Call<'_>, secrets: &[&str]) -> Error {
    let status = response.status;
    let error = AntavoError::parse(&response.body);
    let said = error.as_ref().map(|e| format!(": {}", redact(&e.describe(), secrets))).unwrap_or_default();
    let capability = call.capability;
    match status {
        429 => Error::RateLimited {
            retry_after_ms: retry_after_ms(response),
            message: format!(
                "{capability}: Antavo is rate limiting this API key (HTTP 429{}){said}",
                if response.header("retry-after").is_some() { "" } else { ", no Retry-After" }
            ),
        },
        504 if call.idempotency == Idempotency::NotIdempotent => Error::Permanent {
            status: Some(status),
            message: ambiguous_message(capability, "the gateway timed out (HTTP 504)"),
            body: body_excerpt(&response.body, secrets),
        },
        408 | 500..=599 => Error::Transient(format!(
            "{capability}: Antavo answered HTTP {status}{said}; trying again later may succeed"
        )),
        401 => Error::Unauthorized(format!(
            "{capability}: Antavo refused the request's signature (HTTP 401){said}; {SIGNATURE_HINT}"
        )),
        403 => Error::Unauthorized(format!(
            "{capability}: Antavo refused the request (HTTP 403){said}; the API key's IP allow-list (API settings) \
             may not include this host, or signature enforcement refuses the request"
        )),
        404 => match error.as_ref().and_then(|e| e.code) {
            Some(codes::CUSTOMER_NOT_FOUND) => {
                Error::NotFound(format!("{capability}: Antavo knows no such customer (HTTP 404){said}"))
            }
            _ => Error::NotFound(format!(
                "{capability}: Antavo found no such entity (HTTP 404){said}; a module that is not enabled in the \
                 workspace also answers 404"
            )),
        },
        _ => Error::Permanent {
            status: Some(status),
            message: format!("{capability}: Antavo rejected the request (HTTP {status}){said}"),
            body: body_excerpt(&response.body, secrets),
        },
    }
}

/// `Retry-After` as milliseconds, when Antavo sends one (it documents none: the host then backs off
/// exponentially).
pub fn retry_after_ms(response: &HttpResponse) -> Option<u64> {
    let value = response.header("retry-after")?.trim();
    value.parse::<u64>().ok().map(|s| s.saturating_mul(1000))
}

/// The body as text, shortened and with secrets scrubbed, for an error's `body`.
pub fn body_excerpt(body: &[u8], secrets: &[&str]) -> String {
    let text = String::from_utf8_lossy(body);
    let short = truncate(&text, MAX_BODY_IN_ERROR);
    let mut out = redact(short, secrets);
    if short.len() < text.len() {
        out.push_str("...");
    }
    out
}

/// Replaces every occurrence of a secret (of 4 characters or more) with `[redacted]`.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        if out.contains(secret) {
            out = out.replace(secret, "[redacted]");
        }
    }
    out
}

/// The longest prefix of `text` of at most `max` bytes that ends on a char boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Parses a JSON response body; an empty body is `Null`.
pub fn json_body(response: &HttpResponse, call: Call<'_>, secrets: &[&str]) -> Result<Value, Error> {
    if response.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&response.body).map_err(|e| Error::Permanent {
        status: Some(response.status),
        message: format!(
            "{}: Antavo answered HTTP {} with a body that is not JSON: {e}",
            call.capability, response.status
        ),
        body: body_excerpt(&response.body, secrets),
    })
}

/// Sends a signed request and returns the response when it is a 2xx; anything else is mapped.
pub fn send_signed(
    host: &mut dyn Host,
    config: &Config,
    call: Call<'_>,
    method: Method,
    path_and_query: &str,
    body: Option<Vec<u8>>,
) -> Result<HttpResponse, Error> {
    let request = signed_request(host, config, method, path_and_query, body)?;
    let response = send(host, request).map_err(|e| map_transport(e, call))?;
    if response.is_success() { Ok(response) } else { Err(map_status(&response, call, &config.secrets())) }
}

/// Percent-encodes one path segment or query value (everything but the unreserved characters).
pub fn encode(text: &str) -> String {
    escher::uri_encode(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAFE: Call<'static> = Call { capability: "getCustomer", idempotency: Idempotency::Safe };
    const EVENT: Call<'static> = Call { capability: "sendEvent", idempotency: Idempotency::NotIdempotent };

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> HttpResponse {
        HttpResponse {
            status,
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn every_status_maps_to_its_kind() {
        let not_found = r#"{"error":{"type":"NotFoundException","code":160212,"message":"Customer not found"}}"#;
        let Error::NotFound(message) = map_status(&response(404, &[], not_found), EVENT, &[]) else { panic!() };
        assert!(message.contains("160212 Customer not found"), "{message}");
        let flat = r#"{"type":"NotFoundException","code":160212,"message":"Customer not found"}"#;
        assert!(matches!(map_status(&response(404, &[], flat), EVENT, &[]), Error::NotFound(_)));
        let Error::RateLimited { retry_after_ms: None, message } = map_status(&response(429, &[], ""), EVENT, &[])
        else {
            panic!()
        };
        assert!(message.contains("no Retry-After"), "{message}");
        let Error::RateLimited { retry_after_ms: Some(2000), .. } =
            map_status(&response(429, &[("Retry-After", "2")], ""), EVENT, &[])
        else {
            panic!()
        };
        for status in [408, 500, 502, 503, 599] {
            assert!(matches!(map_status(&response(status, &[], ""), EVENT, &[]), Error::Transient(_)), "{status}");
        }
        assert!(matches!(map_status(&response(504, &[], ""), SAFE, &[]), Error::Transient(_)));
        assert!(matches!(map_status(&response(504, &[], ""), EVENT, &[]), Error::Permanent { .. }));
        let unauthorized =
            r#"{"error":{"type":"UnauthorizedException","code":101021,"message":"Auth header format is invalid"}}"#;
        let Error::Unauthorized(message) = map_status(&response(401, &[], unauthorized), SAFE, &[]) else { panic!() };
        assert!(message.contains("apiKey") && message.contains("apiSecret") && message.contains("environment"));
        assert!(matches!(map_status(&response(403, &[], ""), SAFE, &[]), Error::Unauthorized(_)));
        let opted =
            r#"{"error":{"type":"BadRequestException","code":112101,"message":"Customer has already been opted-in."}}"#;
        let Error::Permanent { status: Some(400), message, body } = map_status(&response(400, &[], opted), EVENT, &[])
        else {
            panic!()
        };
        assert!(message.contains("112101 Customer has already been opted-in."), "{message}");
        assert_eq!(body, opted);
    }

    #[test]
    fn errors_are_read_from_every_documented_shape() {
        let token = r#"{"status":"error","error":"invalid_client","details":{"type":"UnauthorizedException","code":220010,"message":"Client authentication failed"}}"#;
        let error = AntavoError::parse(token.as_bytes()).unwrap();
        assert_eq!((error.code, error.message.as_deref()), (Some(220_010), Some("Client authentication failed")));
        let asynchronous = r#"{"status":"error","error":{"type":"BadRequestException","code":203408,"message":"Correlation ID not found."}}"#;
        assert_eq!(AntavoError::parse(asynchronous.as_bytes()).unwrap().code, Some(203_408));
        assert_eq!(AntavoError::parse(b"<html>"), None);
    }

    #[test]
    fn ambiguous_failures_of_events_are_not_retried() {
        for error in [TransportError::Timeout("t".into()), TransportError::Other("reset".into())] {
            let Error::Permanent { message, .. } = map_transport(error.clone(), EVENT) else { panic!() };
            assert!(message.contains("may or may not have recorded it"), "{message}");
            assert!(matches!(map_transport(error, SAFE), Error::Transient(_)));
        }
        // Nothing was sent: safe to retry even an event.
        assert!(matches!(map_transport(TransportError::ConnectFailed("x".into()), EVENT), Error::Transient(_)));
    }

    #[test]
    fn secrets_never_reach_errors() {
        let body = r#"{"error":{"type":"X","code":1,"message":"secret s3cr3t-value is wrong"}}"#;
        let text = format!("{:?}", map_status(&response(400, &[], body), SAFE, &["s3cr3t-value"]));
        assert!(!text.contains("s3cr3t-value") && text.contains("[redacted]"), "{text}");
    }

    #[test]
    fn hosts_are_signed_as_sent() {
        assert_eq!(
            host_of("https://api.st2.antavo.com/events"),
            Some(("/events", "", "api.st2.antavo.com".to_string()))
        );
        assert_eq!(
            host_of("https://API.st2.antavo.com:443/customers/c-1?fields=groups"),
            Some(("/customers/c-1", "fields=groups", "api.st2.antavo.com".to_string()))
        );
        assert_eq!(host_of("http://127.0.0.1:8088"), Some(("", "", "127.0.0.1:8088".to_string())));
    }
}
