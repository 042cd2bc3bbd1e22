//! The server side of Escher as Antavo runs it, written for the emulator on its own (it shares no code with
//! the connector, so that a mistake in one does not hide in the other): the checks of Escher's PHP verifier,
//! in its order, with its messages; and a signer, for the webhooks the emulator sends.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

/// Why a signature was refused: Escher's PHP error code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Escher's own code (1001, 2002, 5001, 6001, ...).
    pub escher_code: u32,
    pub message: String,
}

fn refuse(code: u32, message: impl Into<String>) -> Refusal {
    Refusal { escher_code: code, message: message.into() }
}

/// What the verifier needs to know.
pub struct Settings<'a> {
    /// `ANTAVO`.
    pub algo_prefix: &'a str,
    /// The scope every request must carry, e.g. `st2/api/antavo_request`.
    pub scope: &'a str,
    /// Allowed distance between the request's date and now, seconds.
    pub clock_skew: i64,
}

fn mac(sha512: bool, key: &[u8], data: &[u8]) -> Vec<u8> {
    if sha512 {
        let mut m = Hmac::<Sha512>::new_from_slice(key).expect("any key length");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    } else {
        let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }
}

fn digest(sha512: bool, data: &[u8]) -> String {
    if sha512 { hex::encode(Sha512::digest(data)) } else { hex::encode(Sha256::digest(data)) }
}

fn is_unreserved(c: u8) -> bool {
    matches!(c, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~')
}

fn escape(bytes: &[u8]) -> String {
    bytes.iter().map(|&c| if is_unreserved(c) { (c as char).to_string() } else { format!("%{c:02X}") }).collect()
}

fn unescape_query(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            out.push(b' ');
        } else if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 2;
        } else {
            out.push(b[i]);
        }
        i += 1;
    }
    out
}

/// RFC 3986 path normalisation as Escher does it: dot segments and empty segments dropped, a trailing slash
/// kept; escapes upper-cased.
pub fn canonical_path(raw: &str) -> String {
    let mut stack: Vec<&str> = Vec::new();
    for seg in raw.split('/') {
        if seg == ".." {
            stack.pop();
        } else if !seg.is_empty() && seg != "." {
            stack.push(seg);
        }
    }
    let trailing = !stack.is_empty() && (raw.ends_with('/') || raw.ends_with("/.") || raw.ends_with("/.."));
    let joined = format!("/{}{}", stack.join("/"), if trailing { "/" } else { "" });
    let mut out = String::new();
    let chars: Vec<char> = joined.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '%'
            && i + 2 < chars.len()
            && chars[i + 1].is_ascii_hexdigit()
            && chars[i + 2].is_ascii_hexdigit()
        {
            out.push('%');
            out.push(chars[i + 1].to_ascii_uppercase());
            out.push(chars[i + 2].to_ascii_uppercase());
            i += 3;
            continue;
        }
        let c = chars[i];
        if c.is_ascii() && (is_unreserved(c as u8) || "!$&'()*+,;=:@/".contains(c)) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            out.push_str(&escape(c.encode_utf8(&mut buf).as_bytes()));
        }
        i += 1;
    }
    out
}

/// Query: pairs decoded and re-escaped, sorted as text, joined by `&`.
pub fn canonical_query(raw: &str) -> String {
    let mut pairs: Vec<String> = raw
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = match p.find('=') {
                Some(i) => (&p[..i], &p[i + 1..]),
                None => (p, ""),
            };
            format!("{}={}", escape(&unescape_query(k)), escape(&unescape_query(v)))
        })
        .collect();
    pairs.sort();
    pairs.join("&")
}

fn normalize_value(v: &str) -> String {
    let mut out = String::new();
    let mut in_quotes = false;
    let mut last_space = false;
    for c in v.trim().chars() {
        if c == '"' {
            in_quotes = !in_quotes;
        }
        if c.is_whitespace() && !in_quotes {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
    out
}

/// The canonical request; `headers` are (lower-case name, value) pairs as received.
pub fn canonical_request(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
    signed: &[String],
    body: &[u8],
    sha512: bool,
) -> String {
    let mut text = format!("{}\n{}\n{}\n", method.to_uppercase(), canonical_path(path), canonical_query(query));
    for name in signed {
        let values: Vec<String> = headers.iter().filter(|(n, _)| n == name).map(|(_, v)| normalize_value(v)).collect();
        text.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    text.push('\n');
    text.push_str(&signed.join(";"));
    text.push('\n');
    text.push_str(&digest(sha512, body));
    text
}

/// The signature of a canonical request.
pub fn signature(prefix: &str, sha512: bool, secret: &str, long_date: &str, scope: &str, canonical: &str) -> String {
    let algorithm = format!("{prefix}-HMAC-{}", if sha512 { "SHA512" } else { "SHA256" });
    let short = &long_date[..8];
    let to_sign = format!("{algorithm}\n{long_date}\n{short}/{scope}\n{}", digest(sha512, canonical.as_bytes()));
    let mut key = mac(sha512, format!("{prefix}{secret}").as_bytes(), short.as_bytes());
    for part in scope.split('/') {
        key = mac(sha512, &key, part.as_bytes());
    }
    hex::encode(mac(sha512, &key, to_sign.as_bytes()))
}

/// Verifies a request; `headers` are (lower-case name, value). Returns the API key that signed it.
#[allow(clippy::too_many_arguments)]
pub fn verify(
    settings: &Settings<'_>,
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
    body: &[u8],
    now_s: i64,
    secret_of: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Refusal> {
    let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.trim());
    let auth = get("authorization").ok_or_else(|| refuse(1001, "Escher authentication is missing"))?;
    let date = get("date").ok_or_else(|| refuse(2001, "The date header is missing"))?;
    if get("host").is_none() {
        return Err(refuse(1102, "The host header is missing"));
    }
    // ^<PREFIX>-HMAC-(SHA256|SHA512) Credential=<key>/<date>/<scope>, SignedHeaders=<list>, Signature=<hex>$
    let format = || refuse(2002, "Auth header format is invalid");
    let rest = auth.strip_prefix(settings.algo_prefix).and_then(|r| r.strip_prefix("-HMAC-")).ok_or_else(format)?;
    let (algorithm, rest) = rest.split_once(" Credential=").ok_or_else(format)?;
    let (credential, rest) = rest.split_once(", SignedHeaders=").ok_or_else(format)?;
    let (signed_list, given) = rest.split_once(", Signature=").ok_or_else(format)?;
    let mut credential_parts = credential.splitn(3, '/');
    let key = credential_parts.next().filter(|k| !k.is_empty()).ok_or_else(format)?;
    let credential_date =
        credential_parts.next().filter(|d| d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit())).ok_or_else(format)?;
    let scope = credential_parts.next().filter(|s| !s.is_empty()).ok_or_else(format)?;
    if !algorithm.bytes().all(|b| b.is_ascii_alphanumeric())
        || signed_list.is_empty()
        || !signed_list.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b';')
        || given.is_empty()
        || !given.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(format());
    }
    let signed: Vec<String> = signed_list.split(';').map(str::to_string).collect();
    if !signed.iter().any(|h| h == "host") {
        return Err(refuse(4001, "The host header is not signed"));
    }
    if !signed.iter().any(|h| h == "date") {
        return Err(refuse(4002, "The date header is not signed"));
    }
    let sha512 = match algorithm {
        "SHA256" => false,
        "SHA512" => true,
        _ => return Err(refuse(3002, "Invalid hash algorithm, only SHA256 and SHA512 are allowed")),
    };
    let request_time = crate::time::parse_http_date(date)
        .ok_or_else(|| refuse(2004, "Date header is invalid, the expected format is Wed, 04 Nov 2015 09:20:22 GMT"))?;
    let long_date = crate::time::basic_iso(request_time);
    if long_date[..8] != *credential_date {
        return Err(refuse(3004, "The credential date does not match with the request date"));
    }
    if (now_s - request_time).abs() > settings.clock_skew {
        return Err(refuse(5001, "The request date is not within the accepted time range"));
    }
    if scope != settings.scope {
        return Err(refuse(3003, "Credential scope is invalid"));
    }
    let secret = secret_of(key).ok_or_else(|| refuse(3001, "Invalid Escher key"))?;
    let mut sorted = signed.clone();
    sorted.sort();
    let canonical = canonical_request(method, path, query, headers, &sorted, body, sha512);
    let expected = signature(settings.algo_prefix, sha512, &secret, &long_date, scope, &canonical);
    let given = given.to_ascii_lowercase();
    let same = expected.len() == given.len()
        && expected.bytes().zip(given.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same { Ok(key.to_string()) } else { Err(refuse(6001, "The signatures do not match")) }
}

/// The `Date` and `Authorization` headers of a request the emulator sends (its webhooks), signed with `date`
/// and `host`.
#[allow(clippy::too_many_arguments)]
pub fn sign(
    prefix: &str,
    scope: &str,
    key: &str,
    secret: &str,
    method: &str,
    url: &str,
    body: &[u8],
    now_s: i64,
) -> (String, String) {
    let after_scheme = url.split_once("://").map_or(url, |(_, r)| r);
    let split = after_scheme.find('/').unwrap_or(after_scheme.len());
    let (host, path_query) = after_scheme.split_at(split);
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    let long_date = crate::time::basic_iso(now_s);
    let headers = vec![("date".to_string(), long_date.clone()), ("host".to_string(), host.to_ascii_lowercase())];
    let signed = vec!["date".to_string(), "host".to_string()];
    let canonical =
        canonical_request(method, if path.is_empty() { "/" } else { path }, query, &headers, &signed, body, false);
    let signature = signature(prefix, false, secret, &long_date, scope, &canonical);
    let authorization = format!(
        "{prefix}-HMAC-SHA256 Credential={key}/{}/{scope}, SignedHeaders=date;host, Signature={signature}",
        &long_date[..8]
    );
    (long_date, authorization)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    /// The reference's vectors: V1 and V3 (AWS4 profile) and A1, A2 (Antavo's).
    #[test]
    fn the_published_vectors_verify() {
        let aws = Settings { algo_prefix: "AWS4", scope: "us-east-1/host/aws4_request", clock_skew: 300 };
        let aws_secret = |k: &str| (k == "AKIDEXAMPLE").then(|| "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string());
        let aws_time = 1_315_611_360;
        for (path, query, sig) in [
            ("/", "", "b27ccfbfa7df52a200ff74193ca6e32d4b48b8856fab7ebf1c595d0670a7e470"),
            ("/foo+bar/", "test=foo+bar", "7f03e7bbb8353e56ef2f397688b9704968190b012cee20f5020a5e792f7360e1"),
        ] {
            let auth = format!(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20110909/us-east-1/host/aws4_request, SignedHeaders=date;host, Signature={sig}"
            );
            let headers =
                h(&[("date", "Mon, 09 Sep 2011 23:36:00 GMT"), ("host", "host.foo.com"), ("authorization", &auth)]);
            assert_eq!(
                verify(&aws, "GET", path, query, &headers, b"", aws_time, &aws_secret),
                Ok("AKIDEXAMPLE".into()),
                "{path}"
            );
        }
        let antavo = Settings { algo_prefix: "ANTAVO", scope: "st2/api/antavo_request", clock_skew: 300 };
        let secret = |k: &str| (k == "test_key").then(|| "test_secret".to_string());
        let time = 1_705_314_600;
        let a1 = "ANTAVO-HMAC-SHA256 Credential=test_key/20240115/st2/api/antavo_request, SignedHeaders=date;host, Signature=390d9c5492e694daf46aa76fa1212801bb08d3b2ca323a6d7726944003d78449";
        let headers = h(&[("date", "20240115T103000Z"), ("host", "api.st2.antavo.com"), ("authorization", a1)]);
        let body = br#"{"customer":"c-1","action":"point_add","data":{"points":10}}"#;
        assert_eq!(verify(&antavo, "POST", "/events", "", &headers, body, time, &secret), Ok("test_key".into()));
        let a2 = "ANTAVO-HMAC-SHA256 Credential=test_key/20240115/st2/api/antavo_request, SignedHeaders=date;host, Signature=a137e19aac4e381db41ce4e41e40117a89756c684695e955071824601278c7fa";
        let headers = h(&[("date", "20240115T103000Z"), ("host", "api.st2.antavo.com"), ("authorization", a2)]);
        assert_eq!(
            verify(&antavo, "GET", "/customers/c-1", "fields=groups&api_key=test_key", &headers, b"", time, &secret),
            Ok("test_key".into())
        );
        // The signer makes A1 again.
        let (date, auth) = sign(
            "ANTAVO",
            "st2/api/antavo_request",
            "test_key",
            "test_secret",
            "POST",
            "https://api.st2.antavo.com/events",
            body,
            time,
        );
        assert_eq!((date.as_str(), auth.as_str()), ("20240115T103000Z", a1));
    }
}
