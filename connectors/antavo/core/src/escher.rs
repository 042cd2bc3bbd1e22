//! Escher request signing (Emarsys' generalisation of AWS Signature Version 4), written from its specification
//! (`emartech/escher`, `source/specification.rst`), with the parameters Antavo uses ([`Profile::antavo`]):
//! algorithm prefix `ANTAVO` (so `ANTAVO-HMAC-SHA256`), the signature in `Authorization`, the request time in
//! `Date`, credential scope `<environment>/api/antavo_request`, `date;host` signed.
//!
//! The steps, each a function here so that the tests can check it against the published vectors:
//!
//! 1. [`canonical_request`]: method, [`canonical_path`], [`canonical_query`], one `name:value` line per signed
//!    header ([`canonical_header_value`]), an empty line, the signed header names, the hex hash of the body;
//! 2. [`string_to_sign`]: `ANTAVO-HMAC-SHA256`, the long date, `<short date>/<scope>`, the hex hash of (1);
//! 3. [`signing_key`]: HMAC of the short date with `ANTAVO` + secret as the key, then of each scope part;
//! 4. [`signature`]: lower-hex HMAC of (2) with (3);
//! 5. [`authorization_header`]: `ANTAVO-HMAC-SHA256 Credential=<key>/<short date>/<scope>, SignedHeaders=date;host,
//!    Signature=<hex>`.
//!
//! [`sign`] does all of it for a request; [`verify`] is the server's side (used for Antavo's webhooks), in the
//! order Escher's verifiers check, with their messages. The secret is only ever an HMAC key here: no function
//! returns or formats it, and [`VerifyError`] never carries it.

use crate::time;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use std::fmt;

/// The hash algorithm of a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha512,
}

impl Hash {
    pub fn name(self) -> &'static str {
        match self {
            Hash::Sha256 => "SHA256",
            Hash::Sha512 => "SHA512",
        }
    }

    fn parse(name: &str) -> Option<Hash> {
        match name {
            "SHA256" => Some(Hash::Sha256),
            "SHA512" => Some(Hash::Sha512),
            _ => None,
        }
    }

    /// Lower-hex digest of `data`.
    pub fn hex(self, data: &[u8]) -> String {
        match self {
            Hash::Sha256 => hex::encode(Sha256::digest(data)),
            Hash::Sha512 => hex::encode(Sha512::digest(data)),
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            Hash::Sha512 => {
                let mut mac = Hmac::<Sha512>::new_from_slice(key).expect("HMAC takes a key of any length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }
}

/// The parameters a service fixes for Escher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// `ANTAVO` for Antavo (Escher's default is `ESR`, AWS's `AWS4`).
    pub algo_prefix: String,
    /// The header carrying the signature, lower case: `authorization` for Antavo.
    pub auth_header: String,
    /// The header carrying the request time, lower case: `date` for Antavo.
    pub date_header: String,
    pub hash: Hash,
}

/// Antavo's algorithm prefix.
pub const ANTAVO_PREFIX: &str = "ANTAVO";
/// The last two parts of Antavo's credential scope; the first is the environment.
pub const ANTAVO_SCOPE_SUFFIX: &str = "api/antavo_request";

impl Profile {
    /// Antavo's profile (the reference, §3.1).
    pub fn antavo() -> Profile {
        Profile {
            algo_prefix: ANTAVO_PREFIX.into(),
            auth_header: "authorization".into(),
            date_header: "date".into(),
            hash: Hash::Sha256,
        }
    }

    /// The algorithm id, e.g. `ANTAVO-HMAC-SHA256`.
    pub fn algorithm(&self) -> String {
        format!("{}-HMAC-{}", self.algo_prefix, self.hash.name())
    }
}

/// Antavo's credential scope for an environment (the `api.<environment>.antavo.com` label): e.g.
/// `st2/api/antavo_request`.
pub fn antavo_scope(environment: &str) -> String {
    format!("{environment}/{ANTAVO_SCOPE_SUFFIX}")
}

/// RFC 3986 unreserved characters: never escaped.
fn unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~')
}

/// Percent-encodes every byte except the unreserved ones, with upper-case hex (a space is `%20`, a `+`
/// `%2B`).
pub fn uri_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &byte in bytes {
        if unreserved(byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Decodes a query component: `%XX` escapes, and `+` as a space (form encoding). A `%` that does not start
/// a valid escape stands for itself.
fn query_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_value(bytes[i + 1]), hex_value(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    out
}

/// The canonical query: each `name=value` pair decoded and re-encoded with the unreserved set (`=` kept for
/// an empty value, duplicates kept), sorted by their encoded text, joined with `&`.
pub fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            format!("{}={}", uri_encode(&query_decode(name)), uri_encode(&query_decode(value)))
        })
        .collect();
    pairs.sort();
    pairs.join("&")
}

/// Characters a path keeps as they are besides the unreserved ones: the sub-delimiters, `:`, `@`, `/` and
/// `%` (escapes are kept, their hex upper-cased).
fn path_keeps(byte: u8) -> bool {
    unreserved(byte) || b"!$&'()*+,;=:@/%".contains(&byte)
}

/// The canonical path: dot segments resolved and repeated slashes collapsed (as a path normalisation does:
/// `/foo/bar/../..` is `/`, a trailing slash stays), percent escapes upper-cased, other bytes escaped; empty
/// is `/`. A literal `+` stays `+`.
pub fn canonical_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut normalized = format!("/{}", segments.join("/"));
    if normalized.len() > 1 && (path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..")) {
        normalized.push('/');
    }
    let bytes = normalized.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        let escape = byte == b'%'
            && i + 2 < bytes.len()
            && hex_value(bytes[i + 1]).is_some()
            && hex_value(bytes[i + 2]).is_some();
        if escape {
            out.push('%');
            out.push(bytes[i + 1].to_ascii_uppercase() as char);
            out.push(bytes[i + 2].to_ascii_uppercase() as char);
            i += 3;
            continue;
        } else if byte == b'%' {
            out.push_str("%25");
        } else if path_keeps(byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
        i += 1;
    }
    out
}

/// A header value as it is signed: trimmed, every run of whitespace outside double quotes made one space.
pub fn canonical_header_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut quoted = false;
    let mut pending_space = false;
    for c in value.trim().chars() {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && c.is_whitespace() {
            pending_space = true;
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    }
    out
}

/// The signed header names, lower case, sorted, without duplicates.
pub fn signed_header_list(names: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = names.iter().map(|n| n.trim().to_ascii_lowercase()).collect();
    names.sort();
    names.dedup();
    names
}

/// The canonical request of the spec, §2.1. `headers` are the request's headers (any case, repeated ones
/// joined with `,` in order); only those in `signed_headers` (lower case, sorted: see [`signed_header_list`])
/// are included, and each of them must be there (else `Err` naming it).
pub fn canonical_request(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
    signed_headers: &[String],
    body: &[u8],
    hash: Hash,
) -> Result<String, String> {
    let mut lines = vec![method.to_ascii_uppercase(), canonical_path(path), canonical_query(query)];
    for name in signed_headers {
        let values: Vec<String> = headers
            .iter()
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| canonical_header_value(v))
            .collect();
        if values.is_empty() {
            return Err(format!("the {name} header is missing"));
        }
        lines.push(format!("{name}:{}", values.join(",")));
    }
    lines.push(String::new());
    lines.push(signed_headers.join(";"));
    lines.push(hash.hex(body));
    Ok(lines.join("\n"))
}

/// The string to sign of the spec, §2.2.5: algorithm, long date, `<short date>/<scope>`, hash of the canonical
/// request.
pub fn string_to_sign(profile: &Profile, long_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{}\n{long_date}\n{}/{scope}\n{}",
        profile.algorithm(),
        &long_date[..long_date.len().min(8)],
        profile.hash.hex(canonical_request.as_bytes())
    )
}

/// The signing key of the spec, §2.2.6: `prefix + secret` as the first key, then an HMAC of the short date and
/// of each `/`-separated part of the scope.
pub fn signing_key(profile: &Profile, secret: &str, short_date: &str, scope: &str) -> Vec<u8> {
    let mut key = profile.hash.hmac(format!("{}{secret}", profile.algo_prefix).as_bytes(), short_date.as_bytes());
    for part in scope.split('/') {
        key = profile.hash.hmac(&key, part.as_bytes());
    }
    key
}

/// The signature: lower-hex HMAC of the string to sign with the signing key.
pub fn signature(profile: &Profile, signing_key: &[u8], string_to_sign: &str) -> String {
    hex::encode(profile.hash.hmac(signing_key, string_to_sign.as_bytes()))
}

/// The value of the auth header.
pub fn authorization_header(
    profile: &Profile,
    key: &str,
    short_date: &str,
    scope: &str,
    signed_headers: &[String],
    signature: &str,
) -> String {
    format!(
        "{} Credential={key}/{short_date}/{scope}, SignedHeaders={}, Signature={signature}",
        profile.algorithm(),
        signed_headers.join(";")
    )
}

/// A request to sign or verify.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as sent, percent-encoded.
    pub path: &'a str,
    /// The query as sent, without `?`.
    pub query: &'a str,
    /// The headers as sent. For signing they must include `host`; the date header is added by [`sign`].
    pub headers: &'a [(String, String)],
    /// The exact body bytes (empty when there is none).
    pub body: &'a [u8],
}

/// The headers [`sign`] adds.
#[derive(Clone, PartialEq, Eq)]
pub struct Signed {
    /// `(date header name, long date)`.
    pub date: (String, String),
    /// `(auth header name, value)`.
    pub authorization: (String, String),
}

impl fmt::Debug for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The signature is no secret, but it is a credential for this request until the clock skew passes.
        f.debug_struct("Signed").field("date", &self.date).field("authorization", &"<signature>").finish()
    }
}

/// Signs a request at `unix_seconds` with `date` and `host` (and `extra_signed` headers, which must be among
/// the request's headers). Returns the date and auth headers to add.
pub fn sign(
    profile: &Profile,
    scope: &str,
    key: &str,
    secret: &str,
    request: &Request<'_>,
    extra_signed: &[&str],
    unix_seconds: i64,
) -> Result<Signed, String> {
    let long_date = time::long_date(unix_seconds);
    let short_date = &long_date[..8];
    let mut headers: Vec<(String, String)> =
        request.headers.iter().filter(|(n, _)| !n.eq_ignore_ascii_case(&profile.date_header)).cloned().collect();
    headers.push((profile.date_header.clone(), long_date.clone()));
    let mut names = vec![profile.date_header.as_str(), "host"];
    names.extend_from_slice(extra_signed);
    let signed_headers = signed_header_list(&names);
    let canonical = canonical_request(
        request.method,
        request.path,
        request.query,
        &headers,
        &signed_headers,
        request.body,
        profile.hash,
    )?;
    let to_sign = string_to_sign(profile, &long_date, scope, &canonical);
    let key_bytes = signing_key(profile, secret, short_date, scope);
    let signature = signature(profile, &key_bytes, &to_sign);
    Ok(Signed {
        date: (profile.date_header.clone(), long_date.clone()),
        authorization: (
            profile.auth_header.clone(),
            authorization_header(profile, key, short_date, scope, &signed_headers, &signature),
        ),
    })
}

/// Why a signed request was refused: Escher's verifier errors, with the codes and messages of its PHP
/// implementation (which Antavo forks). None of them carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("Escher authentication is missing (no {0} header)")]
    Missing(String),
    #[error("The host header is missing")]
    HostMissing,
    #[error("The date header is missing ({0})")]
    DateMissing(String),
    #[error("Date header is invalid, the expected format is Wed, 04 Nov 2015 09:20:22 GMT or 20151104T092022Z")]
    DateInvalid,
    #[error("Auth header format is invalid")]
    Format,
    #[error("The host header is not signed")]
    HostNotSigned,
    #[error("The date header is not signed")]
    DateNotSigned,
    #[error("Invalid hash algorithm, only SHA256 and SHA512 are allowed")]
    Algorithm,
    #[error("The credential date does not match with the request date")]
    CredentialDate,
    #[error("The request date is not within the accepted time range ({skew_seconds} s apart, {allowed} s allowed)")]
    TimeRange { skew_seconds: i64, allowed: i64 },
    #[error("Credential scope is invalid (expected {expected})")]
    Scope { expected: String },
    #[error("Invalid Escher key ({0})")]
    Key(String),
    #[error("The signatures do not match")]
    Mismatch,
}

impl VerifyError {
    /// The numeric code Escher's PHP verifier gives.
    pub fn code(&self) -> u32 {
        match self {
            VerifyError::Missing(_) => 1001,
            VerifyError::HostMissing => 1102,
            VerifyError::DateMissing(_) => 2001,
            VerifyError::Format => 2002,
            VerifyError::DateInvalid => 2004,
            VerifyError::Key(_) => 3001,
            VerifyError::Algorithm => 3002,
            VerifyError::Scope { .. } => 3003,
            VerifyError::CredentialDate => 3004,
            VerifyError::HostNotSigned => 4001,
            VerifyError::DateNotSigned => 4002,
            VerifyError::TimeRange { .. } => 5001,
            VerifyError::Mismatch => 6001,
        }
    }
}

/// The parts of an auth header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHeader {
    pub algo_prefix: String,
    pub hash: String,
    pub key: String,
    pub short_date: String,
    pub scope: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// Parses `<PREFIX>-HMAC-<HASH> Credential=<key>/<YYYYMMDD>/<scope>, SignedHeaders=<a;b>, Signature=<hex>`
/// strictly.
pub fn parse_authorization(value: &str) -> Result<AuthHeader, VerifyError> {
    let (algorithm, rest) = value.split_once(' ').ok_or(VerifyError::Format)?;
    let (algo_prefix, hash) = algorithm.split_once("-HMAC-").ok_or(VerifyError::Format)?;
    let rest = rest.strip_prefix("Credential=").ok_or(VerifyError::Format)?;
    let (credential, rest) = rest.split_once(", SignedHeaders=").ok_or(VerifyError::Format)?;
    let (signed, signature) = rest.split_once(", Signature=").ok_or(VerifyError::Format)?;
    let mut credential_parts = credential.splitn(3, '/');
    let (Some(key), Some(short_date), Some(scope)) =
        (credential_parts.next(), credential_parts.next(), credential_parts.next())
    else {
        return Err(VerifyError::Format);
    };
    let word = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let valid = word(algo_prefix)
        && hash.bytes().all(|b| b.is_ascii_alphanumeric())
        && !key.is_empty()
        && short_date.len() == 8
        && short_date.bytes().all(|b| b.is_ascii_digit())
        && !scope.is_empty()
        && !scope.contains([',', ' '])
        && !signed.is_empty()
        && signed.split(';').all(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        && !signature.is_empty()
        && signature.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return Err(VerifyError::Format);
    }
    Ok(AuthHeader {
        algo_prefix: algo_prefix.into(),
        hash: hash.into(),
        key: key.into(),
        short_date: short_date.into(),
        scope: scope.into(),
        signed_headers: signed.split(';').map(|h| h.to_ascii_lowercase()).collect(),
        signature: signature.to_ascii_lowercase(),
    })
}

/// What a verifier accepts.
#[derive(Debug, Clone)]
pub struct Verifier<'a> {
    pub profile: &'a Profile,
    /// The credential scope every request must carry, e.g. `st2/api/antavo_request`.
    pub scope: &'a str,
    /// How far the request time may be from now, in seconds (Escher's libraries: 300).
    pub clock_skew_seconds: i64,
}

impl Verifier<'_> {
    /// Verifies a signed request received at `now_seconds`; `secret_of` gives the secret of a key it knows.
    /// Returns the key that signed. The checks, in order: the auth header is there and well-formed; `host`
    /// and the date header are signed; the algorithm is this profile's (SHA256 or SHA512); the credential's
    /// date is the date header's day; the request time is within the skew; the scope is the expected one;
    /// the key is known; the signature recomputed over the raw path, query and body matches (compared in
    /// constant time).
    pub fn verify(
        &self,
        request: &Request<'_>,
        now_seconds: i64,
        secret_of: impl FnOnce(&str) -> Option<String>,
    ) -> Result<String, VerifyError> {
        let header = |name: &str| {
            request.headers.iter().find(|(n, _)| n.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        };
        let profile = self.profile;
        let auth = header(&profile.auth_header).ok_or_else(|| VerifyError::Missing(profile.auth_header.clone()))?;
        let auth = parse_authorization(auth.trim())?;
        let date = header(&profile.date_header).ok_or_else(|| VerifyError::DateMissing(profile.date_header.clone()))?;
        if header("host").is_none() {
            return Err(VerifyError::HostMissing);
        }
        if !auth.signed_headers.iter().any(|h| h == "host") {
            return Err(VerifyError::HostNotSigned);
        }
        if !auth.signed_headers.contains(&profile.date_header) {
            return Err(VerifyError::DateNotSigned);
        }
        if auth.algo_prefix != profile.algo_prefix {
            return Err(VerifyError::Format);
        }
        let hash = Hash::parse(&auth.hash).ok_or(VerifyError::Algorithm)?;
        let request_time = time::parse_date(date).ok_or(VerifyError::DateInvalid)?;
        if time::long_date(request_time)[..8] != auth.short_date {
            return Err(VerifyError::CredentialDate);
        }
        let skew = (now_seconds - request_time).abs();
        if skew > self.clock_skew_seconds {
            return Err(VerifyError::TimeRange {
                skew_seconds: now_seconds - request_time,
                allowed: self.clock_skew_seconds,
            });
        }
        if auth.scope != self.scope {
            return Err(VerifyError::Scope { expected: self.scope.to_string() });
        }
        let secret = secret_of(&auth.key).ok_or_else(|| VerifyError::Key(auth.key.clone()))?;
        let profile = Profile { hash, ..profile.clone() };
        let mut signed = auth.signed_headers.clone();
        signed.sort();
        signed.dedup();
        let canonical = canonical_request(
            request.method,
            request.path,
            request.query,
            request.headers,
            &signed,
            request.body,
            hash,
        )
        .map_err(|_| VerifyError::Mismatch)?;
        let long_date = time::long_date(request_time);
        let to_sign = string_to_sign(&profile, &long_date, &auth.scope, &canonical);
        let key = signing_key(&profile, &secret, &auth.short_date, &auth.scope);
        let expected = signature(&profile, &key, &to_sign);
        if constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
            Ok(auth.key)
        } else {
            Err(VerifyError::Mismatch)
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
