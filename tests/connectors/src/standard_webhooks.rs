//! Standard Webhooks signatures (<https://www.standardwebhooks.com>), symmetric scheme: verifying a request
//! and signing one.
//!
//! A sender signs `{webhook-id}.{webhook-timestamp}.{body}` with HMAC-SHA256, the key being the base64-decoded
//! part of a `whsec_<base64>` secret, and sends three headers: `webhook-id`, `webhook-timestamp` (Unix seconds)
//! and `webhook-signature`, a space-separated list of `v1,<base64 signature>` (several during a key rotation).
//! A receiver accepts the request when one `v1` signature matches (compared in constant time) and the
//! timestamp is within [`TOLERANCE_SECONDS`] of the time of receipt, either way.
//!
//! Plain Rust with no WIT types: the `signed_webhook` component verifies with it, and the host's tests can
//! sign the requests they send with [`sign`] or [`signed_headers`], from a dependency on this crate or by
//! including this file with `#[path]` (it needs `base64` 0.22, `hmac` 0.12 and `sha2` 0.10).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// The header that carries the message id, the same for every delivery attempt of one message.
pub const ID_HEADER: &str = "webhook-id";
/// The header that carries the time of the delivery attempt, in seconds since the Unix epoch.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// The header that carries the space-separated signatures.
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// The prefix of a symmetric signing secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// How far the timestamp may be from the time of receipt, in the past or in the future.
pub const TOLERANCE_SECONDS: i64 = 300;

type HmacSha256 = Hmac<Sha256>;

/// A symmetric signing secret: the key of a `whsec_<base64>` secret. Its `Debug` output hides the key.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
}

/// Why a signing secret cannot be used. The messages never quote the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretError {
    /// The secret does not start with `whsec_`.
    MissingPrefix,
    /// What follows `whsec_` is not base64.
    NotBase64,
    /// What follows `whsec_` decodes to no bytes.
    Empty,
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::MissingPrefix => write!(f, "the signing secret does not start with {SECRET_PREFIX}"),
            SecretError::NotBase64 => write!(f, "the signing secret is not base64 after {SECRET_PREFIX}"),
            SecretError::Empty => write!(f, "the signing secret has no key after {SECRET_PREFIX}"),
        }
    }
}

impl std::error::Error for SecretError {}

/// Why a request's signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// A header is absent or empty; it holds the header's name.
    MissingHeader(&'static str),
    /// The timestamp header is not a whole number of seconds; it holds the header's value.
    InvalidTimestamp(String),
    /// The timestamp is more than [`TOLERANCE_SECONDS`] before the time of receipt.
    TooOld { timestamp: i64, age_seconds: i64 },
    /// The timestamp is more than [`TOLERANCE_SECONDS`] after the time of receipt.
    TooNew { timestamp: i64, ahead_seconds: i64 },
    /// No `v1` signature of the header matches; it holds how many the header listed.
    NoMatch { v1_signatures: usize },
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::MissingHeader(name) => {
                write!(f, "the {name} header is missing: Standard Webhooks requests carry {ID_HEADER}, ")?;
                write!(f, "{TIMESTAMP_HEADER} and {SIGNATURE_HEADER}")
            }
            VerifyError::InvalidTimestamp(value) => {
                write!(f, "{TIMESTAMP_HEADER} {value:?} is not a Unix time in whole seconds")
            }
            VerifyError::TooOld { timestamp, age_seconds } => write!(
                f,
                "{TIMESTAMP_HEADER} {timestamp} is {age_seconds} s older than the time of receipt, beyond the \
                 {TOLERANCE_SECONDS} s tolerance"
            ),
            VerifyError::TooNew { timestamp, ahead_seconds } => write!(
                f,
                "{TIMESTAMP_HEADER} {timestamp} is {ahead_seconds} s later than the time of receipt, beyond the \
                 {TOLERANCE_SECONDS} s tolerance"
            ),
            VerifyError::NoMatch { v1_signatures: 0 } => {
                write!(f, "{SIGNATURE_HEADER} does not match: it lists no v1 signature")
            }
            VerifyError::NoMatch { v1_signatures } => write!(
                f,
                "{SIGNATURE_HEADER} does not match: none of its {v1_signatures} v1 signature(s) was made over this \
                 request with the connection's signing secret"
            ),
        }
    }
}

impl std::error::Error for VerifyError {}

/// What a verified request's headers said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<'a> {
    /// The `webhook-id`: the message id, for idempotency and replay checks.
    pub id: &'a str,
    /// The `webhook-timestamp`, in seconds since the Unix epoch.
    pub timestamp: i64,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// Parses a `whsec_<base64>` secret.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let encoded = text.trim().strip_prefix(SECRET_PREFIX).ok_or(SecretError::MissingPrefix)?;
        let key = BASE64.decode(encoded).map_err(|_| SecretError::NotBase64)?;
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Secret { key })
    }

    /// The HMAC of `{id}.{timestamp}.{body}`, the timestamp as its header text.
    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        // HMAC takes a key of any length.
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` value for one message: `v1,<base64 HMAC-SHA256>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let signature = self.mac(id, &timestamp.to_string(), body).finalize().into_bytes();
        format!("v1,{}", BASE64.encode(signature))
    }

    /// Verifies a request: its three headers (looked up without case) are present, its timestamp is within
    /// [`TOLERANCE_SECONDS`] of `received_at_ms` (milliseconds since the Unix epoch), and one of its `v1`
    /// signatures is the HMAC of its id, timestamp and `body` under this secret. Other signature versions
    /// (`v1a`, asymmetric) are skipped.
    pub fn verify<'a>(
        &self,
        headers: &'a [(String, String)],
        body: &[u8],
        received_at_ms: i64,
    ) -> Result<Verified<'a>, VerifyError> {
        let id = header(headers, ID_HEADER)?;
        let timestamp_text = header(headers, TIMESTAMP_HEADER)?;
        let signatures = header(headers, SIGNATURE_HEADER)?;

        let timestamp = parse_timestamp(timestamp_text)?;
        let now = received_at_ms.div_euclid(1000);
        if timestamp < now - TOLERANCE_SECONDS {
            return Err(VerifyError::TooOld { timestamp, age_seconds: now - timestamp });
        }
        if timestamp > now + TOLERANCE_SECONDS {
            return Err(VerifyError::TooNew { timestamp, ahead_seconds: timestamp - now });
        }

        let expected = self.mac(id, timestamp_text, body);
        let mut v1_signatures = 0;
        for candidate in signatures.split_whitespace() {
            let Some(encoded) = candidate.strip_prefix("v1,") else { continue };
            v1_signatures += 1;
            // `verify_slice` compares in constant time (and refuses a slice of another length).
            if let Ok(signature) = BASE64.decode(encoded)
                && expected.clone().verify_slice(&signature).is_ok()
            {
                return Ok(Verified { id, timestamp });
            }
        }
        Err(VerifyError::NoMatch { v1_signatures })
    }
}

/// The `webhook-signature` value a sender holding `secret` (`whsec_<base64>`) puts on a message: `v1,<base64
/// HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
///
/// # Panics
///
/// If `secret` is not a `whsec_` secret: this is a helper for tests, which give it a valid one.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let secret = Secret::parse(secret).unwrap_or_else(|e| panic!("cannot sign: {e}"));
    secret.sign(id, timestamp, body)
}

/// The three headers of a message signed with `secret` (`whsec_<base64>`), to add to a request as they are.
///
/// # Panics
///
/// If `secret` is not a `whsec_` secret, as [`sign`].
pub fn signed_headers(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> [(&'static str, String); 3] {
    [
        (ID_HEADER, id.to_string()),
        (TIMESTAMP_HEADER, timestamp.to_string()),
        (SIGNATURE_HEADER, sign(secret, id, timestamp, body)),
    ]
}

/// The value of the first header named `name` (compared without case), unless it is absent or blank.
fn header<'a>(headers: &'a [(String, String)], name: &'static str) -> Result<&'a str, VerifyError> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
        .ok_or(VerifyError::MissingHeader(name))
}

/// A timestamp header: decimal digits only (no sign, no fraction), as senders write Unix seconds.
fn parse_timestamp(text: &str) -> Result<i64, VerifyError> {
    let invalid = || VerifyError::InvalidTimestamp(text.to_string());
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    text.parse().map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The secret, id, timestamp and body of the Standard Webhooks libraries' own signing test.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const OTHER_SECRET: &str = "whsec_c2VjcmV0LW9mLWFub3RoZXItZW5kcG9pbnQ=";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const NOW_MS: i64 = TIMESTAMP * 1000 + 250;

    fn headers(id: &str, timestamp: &str, signature: &str) -> Vec<(String, String)> {
        vec![
            ("webhook-id".into(), id.into()),
            ("webhook-timestamp".into(), timestamp.into()),
            ("webhook-signature".into(), signature.into()),
        ]
    }

    fn signed(secret: &str, timestamp: i64) -> Vec<(String, String)> {
        headers(ID, &timestamp.to_string(), &sign(secret, ID, timestamp, BODY))
    }

    fn verify<'a>(headers: &'a [(String, String)], body: &[u8], now_ms: i64) -> Result<Verified<'a>, VerifyError> {
        Secret::parse(SECRET).unwrap().verify(headers, body, now_ms)
    }

    #[test]
    fn signs_as_the_reference_libraries_do() {
        // The expected value of the Standard Webhooks libraries' own test vector for these inputs.
        assert_eq!(sign(SECRET, ID, TIMESTAMP, BODY), "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_valid_signature_is_accepted() {
        let headers = signed(SECRET, TIMESTAMP);
        assert_eq!(verify(&headers, BODY, NOW_MS), Ok(Verified { id: ID, timestamp: TIMESTAMP }));
    }

    #[test]
    fn header_names_are_compared_without_case() {
        let headers: Vec<_> =
            signed(SECRET, TIMESTAMP).into_iter().map(|(name, value)| (name.to_uppercase(), value)).collect();
        assert!(verify(&headers, BODY, NOW_MS).is_ok());
    }

    #[test]
    fn one_matching_signature_among_several_is_enough() {
        let valid = sign(SECRET, ID, TIMESTAMP, BODY);
        let rotated = sign(OTHER_SECRET, ID, TIMESTAMP, BODY);
        let list = format!("v1a,aGVsbG8= {rotated} v1,not-base64! {valid} v2,{}", &valid[3..]);
        let headers = headers(ID, &TIMESTAMP.to_string(), &list);
        assert_eq!(verify(&headers, BODY, NOW_MS), Ok(Verified { id: ID, timestamp: TIMESTAMP }));
    }

    #[test]
    fn a_wrong_signature_is_refused() {
        let headers =
            headers(ID, &TIMESTAMP.to_string(), "v1,Ympvcmtib3Jr v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=");
        let error = verify(&headers, BODY, NOW_MS).unwrap_err();
        assert_eq!(error, VerifyError::NoMatch { v1_signatures: 2 });
        assert_eq!(
            error.to_string(),
            "webhook-signature does not match: none of its 2 v1 signature(s) was made over this request with the \
             connection's signing secret"
        );
    }

    #[test]
    fn a_header_without_v1_signatures_is_refused() {
        let valid = sign(SECRET, ID, TIMESTAMP, BODY);
        let headers = headers(ID, &TIMESTAMP.to_string(), &format!("v1a,{}", &valid[3..]));
        let error = verify(&headers, BODY, NOW_MS).unwrap_err();
        assert_eq!(error, VerifyError::NoMatch { v1_signatures: 0 });
        assert_eq!(error.to_string(), "webhook-signature does not match: it lists no v1 signature");
    }

    #[test]
    fn a_signature_made_with_another_secret_is_refused() {
        let headers = signed(OTHER_SECRET, TIMESTAMP);
        assert_eq!(verify(&headers, BODY, NOW_MS), Err(VerifyError::NoMatch { v1_signatures: 1 }));
    }

    #[test]
    fn a_body_changed_after_signing_is_refused() {
        let headers = signed(SECRET, TIMESTAMP);
        assert_eq!(
            verify(&headers, br#"{"test": 2432232315}"#, NOW_MS),
            Err(VerifyError::NoMatch { v1_signatures: 1 })
        );
        assert_eq!(verify(&headers, br#"{"test":2432232314}"#, NOW_MS), Err(VerifyError::NoMatch { v1_signatures: 1 }));
    }

    #[test]
    fn the_id_and_timestamp_are_signed_too() {
        let valid = sign(SECRET, ID, TIMESTAMP, BODY);
        let other_id = headers("msg_other", &TIMESTAMP.to_string(), &valid);
        assert_eq!(verify(&other_id, BODY, NOW_MS), Err(VerifyError::NoMatch { v1_signatures: 1 }));
        let other_time = headers(ID, &(TIMESTAMP + 1).to_string(), &valid);
        assert_eq!(verify(&other_time, BODY, NOW_MS), Err(VerifyError::NoMatch { v1_signatures: 1 }));
    }

    #[test]
    fn timestamps_within_the_tolerance_are_accepted_up_to_the_boundary() {
        let now_ms = TIMESTAMP * 1000;
        for timestamp in [TIMESTAMP - TOLERANCE_SECONDS, TIMESTAMP, TIMESTAMP + TOLERANCE_SECONDS] {
            let headers = signed(SECRET, timestamp);
            assert_eq!(verify(&headers, BODY, now_ms), Ok(Verified { id: ID, timestamp }), "{timestamp}");
            // Milliseconds of the time of receipt count as within its second.
            assert!(verify(&headers, BODY, now_ms + 999).is_ok(), "{timestamp}");
        }
    }

    #[test]
    fn a_stale_timestamp_is_refused_one_second_past_the_boundary() {
        let timestamp = TIMESTAMP - TOLERANCE_SECONDS - 1;
        let headers = signed(SECRET, timestamp);
        let error = verify(&headers, BODY, TIMESTAMP * 1000).unwrap_err();
        assert_eq!(error, VerifyError::TooOld { timestamp, age_seconds: 301 });
        assert_eq!(
            error.to_string(),
            "webhook-timestamp 1614265029 is 301 s older than the time of receipt, beyond the 300 s tolerance"
        );
    }

    #[test]
    fn a_future_timestamp_is_refused_one_second_past_the_boundary() {
        let timestamp = TIMESTAMP + TOLERANCE_SECONDS + 1;
        let headers = signed(SECRET, timestamp);
        let error = verify(&headers, BODY, TIMESTAMP * 1000 + 999).unwrap_err();
        assert_eq!(error, VerifyError::TooNew { timestamp, ahead_seconds: 301 });
        assert_eq!(
            error.to_string(),
            "webhook-timestamp 1614265631 is 301 s later than the time of receipt, beyond the 300 s tolerance"
        );
    }

    #[test]
    fn a_timestamp_that_is_not_whole_seconds_is_refused() {
        for value in ["1614265330.5", "-1614265330", "+1614265330", "1614265330000000000000", "yesterday"] {
            let headers = headers(ID, value, &sign(SECRET, ID, TIMESTAMP, BODY));
            let error = verify(&headers, BODY, NOW_MS).unwrap_err();
            assert_eq!(error, VerifyError::InvalidTimestamp(value.to_string()));
        }
        let headers = headers(ID, "soon", "v1,x");
        assert_eq!(
            verify(&headers, BODY, NOW_MS).unwrap_err().to_string(),
            r#"webhook-timestamp "soon" is not a Unix time in whole seconds"#
        );
    }

    #[test]
    fn each_missing_or_blank_header_is_named() {
        let complete = signed(SECRET, TIMESTAMP);
        for name in [ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER] {
            let without: Vec<_> = complete.iter().filter(|(key, _)| key != name).cloned().collect();
            assert_eq!(verify(&without, BODY, NOW_MS), Err(VerifyError::MissingHeader(name)));
            let blank: Vec<_> = complete
                .iter()
                .map(|(key, value)| (key.clone(), if key == name { " ".to_string() } else { value.clone() }))
                .collect();
            assert_eq!(verify(&blank, BODY, NOW_MS), Err(VerifyError::MissingHeader(name)));
        }
        assert_eq!(
            VerifyError::MissingHeader(SIGNATURE_HEADER).to_string(),
            "the webhook-signature header is missing: Standard Webhooks requests carry webhook-id, webhook-timestamp \
             and webhook-signature"
        );
    }

    #[test]
    fn a_secret_needs_its_prefix_and_a_base64_key() {
        assert_eq!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(), SecretError::MissingPrefix);
        assert_eq!(Secret::parse("whsec_not base64!").unwrap_err(), SecretError::NotBase64);
        assert_eq!(Secret::parse("whsec_").unwrap_err(), SecretError::Empty);
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err().to_string(),
            "the signing secret does not start with whsec_"
        );
        assert!(Secret::parse(" whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").is_ok(), "surrounding blanks are trimmed");
    }

    #[test]
    fn a_secret_never_shows_in_debug_output_or_errors() {
        let secret = Secret::parse(SECRET).unwrap();
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        let error = Secret::parse("whsec_MfKQ9r8GKYqrTwjU-PD8ILPZIo2LaLaSw").unwrap_err().to_string();
        assert!(!error.contains("MfKQ"), "{error}");
    }

    #[test]
    #[should_panic(expected = "cannot sign: the signing secret does not start with whsec_")]
    fn signing_with_an_invalid_secret_panics_with_the_reason() {
        sign("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", ID, TIMESTAMP, BODY);
    }

    #[test]
    fn signed_headers_verify() {
        let headers: Vec<_> =
            signed_headers(SECRET, ID, TIMESTAMP, BODY).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(verify(&headers, BODY, NOW_MS), Ok(Verified { id: ID, timestamp: TIMESTAMP }));
    }
}
