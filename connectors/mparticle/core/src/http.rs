//! Sending requests and mapping what comes back (or does not) to the connector's error kinds.

use crate::error::Error;
use crate::host::{Host, HttpRequest, HttpResponse, Level, TransportError};
use serde_json::Value;

/// The timeout the connector asks for on every mParticle call; the host may cap it.
pub const REQUEST_TIMEOUT_MS: u32 = 30_000;
/// How much of a response body an error carries.
const MAX_BODY_IN_ERROR: usize = 4096;
/// How much of mParticle's own message an error carries.
const MAX_MESSAGE: usize = 512;

/// Whether a request may be re-sent after its fate became unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Re-sending is harmless (reads, PUT, DELETE, Events API batches with a stable `source_request_id`).
    Safe,
    /// Re-sending may repeat the effect (creating an account).
    NotIdempotent,
}

/// What the request was, for messages: e.g. `createAccount (POST /v1/accounts)`.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub capability: &'a str,
    pub idempotency: Idempotency,
}

/// Sends a request; logs the method and URL (which never carry credentials) and the status, and reports the
/// share of the rate limit used when mParticle says it (on 2xx answers of throttled resources, and on 429s).
pub fn send(host: &mut dyn Host, request: HttpRequest) -> Result<HttpResponse, TransportError> {
    let line = format!("{} {}", request.method, request.url);
    host.log(Level::Debug, &line);
    let outcome = host.fetch(request);
    match &outcome {
        Ok(response) => {
            host.log(Level::Debug, &format!("{line} -> HTTP {}", response.status));
            if let Some(used) = percentage_used(response) {
                host.report_usage(used);
            }
        }
        Err(error) => host.log(Level::Warn, &format!("{line} -> {error}")),
    }
    outcome
}

/// `X-mp-rate-limit-percentage-used`: a non-negative number (a fraction is rounded); anything else is ignored.
pub fn percentage_used(response: &HttpResponse) -> Option<u64> {
    let value: f64 = response.header("x-mp-rate-limit-percentage-used")?.trim().parse().ok()?;
    (value.is_finite() && value >= 0.0).then(|| value.round().min(u64::MAX as f64) as u64)
}

/// Maps a transport failure. A timeout or lost connection of a non-idempotent request is permanent: it may
/// have taken effect, and blindly retrying could repeat it.
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

fn ambiguous_message(capability: &str, what: &str) -> String {
    if capability == "createAccount" {
        format!(
            "createAccount: {what} after the request was sent, so the account may or may not have been created. \
             It was not retried because creating an account is not idempotent: check with getAccount (or the \
             mParticle UI) before retrying"
        )
    } else {
        format!(
            "{capability}: {what} after the request was sent; it may or may not have taken effect, check before retrying"
        )
    }
}

/// Maps a non-2xx response to an error kind. `secrets` are scrubbed from the message and the body.
pub fn map_status(response: &HttpResponse, call: Call<'_>, secrets: &[&str]) -> Error {
    let status = response.status;
    let detail = mparticle_message(&response.body).map(|m| redact(&m, secrets));
    let said = detail.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
    let capability = call.capability;
    match status {
        429 => {
            let scope = response
                .header("x-mp-rate-limit-exceeded")
                .map(|s| format!(" ({} limit)", redact(s, secrets)))
                .unwrap_or_default();
            // A Retry-After that is not a non-negative number of seconds is not used, and the message says so.
            let unusable = response
                .header("retry-after")
                .filter(|_| retry_after_ms(response).is_none())
                .map(|v| {
                    format!(
                        "; its Retry-After {:?} is not a whole number of seconds, so it was ignored",
                        truncate(&redact(v.trim(), secrets), 64)
                    )
                })
                .unwrap_or_default();
            Error::RateLimited {
                retry_after_ms: retry_after_ms(response),
                percentage_used: percentage_used(response),
                message: format!("{capability}: mParticle is rate limiting requests{scope} (HTTP 429){said}{unusable}"),
            }
        }
        504 if call.idempotency == Idempotency::NotIdempotent => Error::Permanent {
            status: Some(status),
            message: ambiguous_message(capability, "the gateway timed out (HTTP 504)"),
            body: body_excerpt(&response.body, secrets),
        },
        408 | 500..=599 => Error::Transient(format!(
            "{capability}: mParticle answered HTTP {status}{said}; trying again later may succeed"
        )),
        401 | 403 => {
            Error::Unauthorized(format!("{capability}: mParticle refused the credentials (HTTP {status}){said}"))
        }
        404 => Error::NotFound(format!("{capability}: mParticle found no such entity (HTTP 404){said}")),
        _ => Error::Permanent {
            status: Some(status),
            message: format!("{capability}: mParticle rejected the request (HTTP {status}){said}"),
            body: body_excerpt(&response.body, secrets),
        },
    }
}

/// mParticle's own error message: `errors[0].message` (Platform and Events API), `error_description` or
/// `error` (OAuth), or `message`.
pub fn mparticle_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let first_error = value.get("errors").and_then(|e| e.get(0));
    let message = first_error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .or_else(|| value.get("error_description").and_then(Value::as_str))
        .or_else(|| value.get("error").and_then(Value::as_str))
        .or_else(|| value.get("message").and_then(Value::as_str))
        .filter(|m| !m.trim().is_empty())?;
    let code = first_error.and_then(|e| e.get("code")).and_then(Value::as_str);
    let message = truncate(message.trim(), MAX_MESSAGE);
    Some(match code {
        Some(code) if !message.contains(code) => format!("{code}: {message}"),
        _ => message.to_string(),
    })
}

/// `Retry-After` as milliseconds; mParticle sends non-negative integer seconds.
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

/// Parses a JSON response body; an empty body is `None`.
pub fn json_body(response: &HttpResponse, call: Call<'_>, secrets: &[&str]) -> Result<Option<Value>, Error> {
    if response.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&response.body).map(Some).map_err(|e| Error::Permanent {
        status: Some(response.status),
        message: format!(
            "{}: mParticle answered HTTP {} with a body that is not JSON: {e}",
            call.capability, response.status
        ),
        body: body_excerpt(&response.body, secrets),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAFE: Call<'static> = Call { capability: "getAccount", idempotency: Idempotency::Safe };
    const CREATE: Call<'static> = Call { capability: "createAccount", idempotency: Idempotency::NotIdempotent };

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> HttpResponse {
        HttpResponse {
            status,
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn every_status_maps_to_its_kind() {
        let body = r#"{"errors":[{"code":"VALIDATION_ERROR","message":"Account name is not unique."}]}"#;
        let rate =
            map_status(&response(429, &[("Retry-After", "7"), ("X-MP-Rate-Limit-Exceeded", "app")], ""), SAFE, &[]);
        let Error::RateLimited { retry_after_ms, message, percentage_used: None } = rate else { panic!("{rate:?}") };
        assert_eq!(retry_after_ms, Some(7000));
        assert!(message.contains("app limit"), "{message}");
        let Error::RateLimited { retry_after_ms: None, .. } = map_status(&response(429, &[], ""), SAFE, &[]) else {
            panic!()
        };
        let Error::RateLimited { retry_after_ms: None, .. } =
            map_status(&response(429, &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")], ""), SAFE, &[])
        else {
            panic!()
        };
        // A Retry-After that is negative or not a number is ignored, and the message says so.
        for bad in ["-5", "soon", "1.5"] {
            let Error::RateLimited { retry_after_ms: None, message, .. } =
                map_status(&response(429, &[("retry-after", bad)], ""), SAFE, &[])
            else {
                panic!("{bad}")
            };
            assert!(message.contains(&format!("Retry-After \"{bad}\" is not a whole number of seconds")), "{message}");
        }
        for status in [408, 500, 502, 503, 504, 599] {
            assert!(matches!(map_status(&response(status, &[], ""), SAFE, &[]), Error::Transient(_)), "{status}");
        }
        for status in [401, 403] {
            assert!(matches!(map_status(&response(status, &[], body), SAFE, &[]), Error::Unauthorized(_)), "{status}");
        }
        assert!(matches!(map_status(&response(404, &[], ""), SAFE, &[]), Error::NotFound(_)));
        for status in [400, 405, 409, 413, 422, 302] {
            let error = map_status(&response(status, &[], body), SAFE, &[]);
            let Error::Permanent { status: Some(s), message, body: b } = error else { panic!("{status}") };
            assert_eq!(s, status);
            assert!(message.contains("VALIDATION_ERROR: Account name is not unique."), "{message}");
            assert_eq!(b, body);
        }
    }

    #[test]
    fn messages_come_from_every_documented_shape() {
        assert_eq!(
            mparticle_message(br#"{"errors":[{"code":"BAD_REQUEST","message":"Required event field \"event_type\" is missing or empty."}]}"#)
                .unwrap(),
            r#"BAD_REQUEST: Required event field "event_type" is missing or empty."#
        );
        assert_eq!(
            mparticle_message(br#"{"error":"access_denied","error_description":"Unauthorized"}"#).unwrap(),
            "Unauthorized"
        );
        assert_eq!(mparticle_message(br#"{"error":"invalid_client"}"#).unwrap(), "invalid_client");
        assert_eq!(mparticle_message(b"<html>oops</html>"), None);
        assert_eq!(mparticle_message(br#"{"errors":null,"data":[]}"#), None);
    }

    #[test]
    fn transport_failures_map_by_kind_and_idempotency() {
        let t = |e: TransportError, c| map_transport(e, c);
        assert!(matches!(t(TransportError::Timeout("x".into()), SAFE), Error::Transient(_)));
        assert!(matches!(t(TransportError::ConnectFailed("x".into()), SAFE), Error::Transient(_)));
        assert!(matches!(t(TransportError::Other("x".into()), SAFE), Error::Transient(_)));
        assert!(matches!(t(TransportError::Denied("x".into()), SAFE), Error::Permanent { .. }));
        assert!(matches!(t(TransportError::InvalidRequest("x".into()), SAFE), Error::Permanent { .. }));
        assert!(matches!(t(TransportError::ResponseTooLarge("x".into()), SAFE), Error::Permanent { .. }));
        // Nothing was sent when the connection could not be made: safe to retry even a create.
        assert!(matches!(t(TransportError::ConnectFailed("x".into()), CREATE), Error::Transient(_)));
        for error in [TransportError::Timeout("x".into()), TransportError::Other("reset".into())] {
            let Error::Permanent { status: None, message, .. } = t(error, CREATE) else { panic!() };
            assert!(
                message.contains("may or may not have been created") && message.contains("getAccount"),
                "{message}"
            );
        }
        let Error::Permanent { status: Some(504), message, .. } = map_status(&response(504, &[], ""), CREATE, &[])
        else {
            panic!()
        };
        assert!(message.contains("may or may not have been created"), "{message}");
    }

    #[test]
    fn secrets_never_reach_errors() {
        let body = r#"{"error":"access_denied","error_description":"client_secret s3cr3t-value is wrong"}"#;
        let error = map_status(&response(400, &[], body), SAFE, &["s3cr3t-value"]);
        let text = format!("{error:?}");
        assert!(!text.contains("s3cr3t-value") && text.contains("[redacted]"), "{text}");
    }

    #[test]
    fn bodies_are_truncated_on_char_boundaries() {
        let long = "é".repeat(5000);
        let excerpt = body_excerpt(long.as_bytes(), &[]);
        assert!(excerpt.len() <= MAX_BODY_IN_ERROR + 3 && excerpt.ends_with("..."));
        assert_eq!(truncate("héllo", 2), "h");
    }
}
