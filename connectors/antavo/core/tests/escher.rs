//! Escher signing against published vectors: the AWS Signature Version 4 suite and Emarsys' own cases
//! (EscherAuth/test-cases, the shared suite of the Escher implementations; V1–V3 are the ones the project's
//! Antavo reference quotes), the AWS documentation's signing-key example, and the Antavo-profile vectors A1
//! and A2 of the reference (computed for it by two independent implementations). Each step is checked where
//! the vector gives it: canonical request, string to sign, signing key, Authorization header.

use antavo_core::escher::{
    self, Hash, Profile, Request, Verifier, VerifyError, canonical_path, canonical_query, canonical_request,
    signed_header_list, signing_key, string_to_sign,
};

const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const AWS_KEY: &str = "AKIDEXAMPLE";
const AWS_SCOPE: &str = "us-east-1/host/aws4_request";
const EMPTY_BODY_HASH: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const RFC1123: &str = "Mon, 09 Sep 2011 23:36:00 GMT";

fn profile(prefix: &str, auth: &str, date: &str) -> Profile {
    Profile { algo_prefix: prefix.into(), auth_header: auth.into(), date_header: date.into(), hash: Hash::Sha256 }
}

fn aws4() -> Profile {
    profile("AWS4", "authorization", "date")
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

/// One vector: the request, the headers signed, and what each step must give.
struct Vector<'a> {
    name: &'a str,
    profile: Profile,
    scope: &'a str,
    key: &'a str,
    secret: &'a str,
    long_date: &'a str,
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: Vec<(String, String)>,
    signed: &'a [&'a str],
    body: &'a str,
    canonical: Option<&'a str>,
    string_to_sign_hash: Option<&'a str>,
    signature: &'a str,
}

impl Vector<'_> {
    fn check(&self) {
        let signed = signed_header_list(self.signed);
        let canonical = canonical_request(
            self.method,
            self.path,
            self.query,
            &self.headers,
            &signed,
            self.body.as_bytes(),
            Hash::Sha256,
        )
        .unwrap();
        if let Some(expected) = self.canonical {
            assert_eq!(canonical, expected, "{}: canonical request", self.name);
        }
        let to_sign = string_to_sign(&self.profile, self.long_date, self.scope, &canonical);
        let lines: Vec<&str> = to_sign.lines().collect();
        assert_eq!(lines[0], self.profile.algorithm(), "{}", self.name);
        assert_eq!(lines[1], self.long_date, "{}", self.name);
        assert_eq!(lines[2], format!("{}/{}", &self.long_date[..8], self.scope), "{}", self.name);
        if let Some(expected) = self.string_to_sign_hash {
            assert_eq!(lines[3], expected, "{}: hash of the canonical request", self.name);
        }
        let key = signing_key(&self.profile, self.secret, &self.long_date[..8], self.scope);
        let signature = escher::signature(&self.profile, &key, &to_sign);
        assert_eq!(signature, self.signature, "{}: signature", self.name);
        let header = escher::authorization_header(
            &self.profile,
            self.key,
            &self.long_date[..8],
            self.scope,
            &signed,
            &signature,
        );
        assert_eq!(
            header,
            format!(
                "{} Credential={}/{}/{}, SignedHeaders={}, Signature={}",
                self.profile.algorithm(),
                self.key,
                &self.long_date[..8],
                self.scope,
                signed.join(";"),
                self.signature
            )
        );
        // The verifier accepts what was signed, at the signing time.
        let mut with_auth = self.headers.clone();
        with_auth.push((self.profile.auth_header.clone(), header));
        let request = Request {
            method: self.method,
            path: self.path,
            query: self.query,
            headers: &with_auth,
            body: self.body.as_bytes(),
        };
        let verifier = Verifier { profile: &self.profile, scope: self.scope, clock_skew_seconds: 300 };
        let time = antavo_core::time::parse_date(self.long_date).unwrap();
        assert_eq!(
            verifier.verify(&request, time, |k| (k == self.key).then(|| self.secret.to_string())),
            Ok(self.key.to_string()),
            "{}: verify",
            self.name
        );
    }
}

fn aws_vector<'a>(name: &'a str, method: &'a str, path: &'a str, query: &'a str) -> Vector<'a> {
    Vector {
        name,
        profile: aws4(),
        scope: AWS_SCOPE,
        key: AWS_KEY,
        secret: AWS_SECRET,
        long_date: "20110909T233600Z",
        method,
        path,
        query,
        headers: headers(&[("Date", RFC1123), ("Host", "host.foo.com")]),
        signed: &["date", "host"],
        body: "",
        canonical: None,
        string_to_sign_hash: None,
        signature: "",
    }
}

/// V1: aws4_testsuite/signrequest-get-vanilla.json.
#[test]
fn v1_get_vanilla() {
    Vector {
        canonical: Some(&format!("GET\n/\n\ndate:{RFC1123}\nhost:host.foo.com\n\ndate;host\n{EMPTY_BODY_HASH}")),
        string_to_sign_hash: Some("366b91fb121d72a00f46bbe8d395f53a102b06dfb7e79636515208ed3fa606b1"),
        signature: "b27ccfbfa7df52a200ff74193ca6e32d4b48b8856fab7ebf1c595d0670a7e470",
        ..aws_vector("V1", "GET", "/", "")
    }
    .check();
}

/// V2: emarsys_testsuite/signrequest-support-custom-config.json: another prefix, auth and date header.
#[test]
fn v2_custom_config() {
    let canonical = "POST\n/\n\ncontent-type:application/x-www-form-urlencoded; charset=utf-8\nhost:iam.amazonaws.com\n\
                     x-ems-date:20110909T233600Z\n\ncontent-type;host;x-ems-date\n\
                     b6359072c78d70ebee1e81adcbab4f01bf2c23245fa365ef83fe8f1f955085e2";
    Vector {
        name: "V2",
        profile: profile("EMS", "x-ems-auth", "x-ems-date"),
        scope: "us-east-1/iam/aws4_request",
        key: AWS_KEY,
        secret: AWS_SECRET,
        long_date: "20110909T233600Z",
        method: "POST",
        path: "/",
        query: "",
        headers: headers(&[
            ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),
            ("X-Ems-Date", "20110909T233600Z"),
            ("Host", "iam.amazonaws.com"),
        ]),
        signed: &["content-type", "host", "x-ems-date"],
        body: "Action=ListUsers&Version=2010-05-08",
        canonical: Some(canonical),
        string_to_sign_hash: None,
        signature: "f36c21c6e16a71a6e8dc56673ad6354aeef49c577a22fd58a190b5fcf8891dbd",
    }
    .check();
}

/// V3: emarsys_testsuite/signrequest-get-with-plus-signs.json: `+` stays in the path, is a space in the query.
#[test]
fn v3_plus_signs() {
    assert_eq!(canonical_path("/foo+bar/"), "/foo+bar/");
    assert_eq!(canonical_query("test=foo+bar"), "test=foo%20bar");
    Vector {
        canonical: Some(&format!(
            "GET\n/foo+bar/\ntest=foo%20bar\ndate:{RFC1123}\nhost:host.foo.com\n\ndate;host\n{EMPTY_BODY_HASH}"
        )),
        signature: "7f03e7bbb8353e56ef2f397688b9704968190b012cee20f5020a5e792f7360e1",
        ..aws_vector("V3", "GET", "/foo+bar/", "test=foo+bar")
    }
    .check();
}

/// aws4_testsuite/signrequest-get-relative-relative.json: dot segments resolve to `/`.
#[test]
fn relative_paths_normalise() {
    assert_eq!(canonical_path("/foo/bar/../.."), "/");
    assert_eq!(canonical_path("/foo//bar/./baz/"), "/foo/bar/baz/");
    assert_eq!(canonical_path(""), "/");
    assert_eq!(canonical_path("/a%2fb"), "/a%2Fb");
    Vector {
        string_to_sign_hash: Some("366b91fb121d72a00f46bbe8d395f53a102b06dfb7e79636515208ed3fa606b1"),
        signature: "b27ccfbfa7df52a200ff74193ca6e32d4b48b8856fab7ebf1c595d0670a7e470",
        ..aws_vector("relative-relative", "GET", "/foo/bar/../..", "")
    }
    .check();
}

/// aws4_testsuite/signrequest-get-vanilla-empty-query-key.json.
#[test]
fn a_query() {
    Vector {
        string_to_sign_hash: Some("0846c2945b0832deb7a463c66af5c4f8bd54ec28c438e67a214445b157c9ddf8"),
        signature: "56c054473fd260c13e4e7393eb203662195f5d4a1fada5314b8b52b23f985e9f",
        ..aws_vector("empty-query-key", "GET", "/", "foo=bar")
    }
    .check();
}

/// aws4_testsuite/signrequest-post-vanilla-query-nonunreserved.json: everything outside the unreserved set is
/// escaped, a lone `%` included, and pairs sort by their escaped text.
#[test]
fn a_query_of_reserved_characters() {
    let query = "@#$%^&+=/,?><`\";:\\|][{}";
    assert_eq!(canonical_query(query), "%20=%2F%2C%3F%3E%3C%60%22%3B%3A%5C%7C%5D%5B%7B%7D&%40%23%24%25%5E=");
    Vector {
        string_to_sign_hash: Some("eb3f16b23b20c91e1b5d6f3cd1c1f8c32a6ddcae6024e44bcfa980fbf8561f6c"),
        signature: "28675d93ac1d686ab9988d6617661da4dffe7ba848a2285cb75eac6512e861f9",
        ..aws_vector("query-nonunreserved", "POST", "/", query)
    }
    .check();
}

/// emarsys_testsuite/signrequest-post-header-value-spaces.json: runs of spaces become one.
#[test]
fn header_value_spaces_collapse() {
    Vector {
        headers: headers(&[
            ("Content-Type", "application/x-www-form-urlencoded;         charset=utf8"),
            ("Date", RFC1123),
            ("Host", "host.foo.com"),
        ]),
        signed: &["content-type", "date", "host"],
        body: "foo=bar",
        canonical: Some(&format!(
            "POST\n/\n\ncontent-type:application/x-www-form-urlencoded; charset=utf8\ndate:{RFC1123}\n\
             host:host.foo.com\n\ncontent-type;date;host\n3ba8907e7a252327488df390ed517c45b96dead033600219bdca7107d1d3f88a"
        )),
        string_to_sign_hash: Some("c4115f9e54b5cecf192b1eaa23b8e88ed8dc5391bd4fde7b3fff3d9c9fe0af1f"),
        signature: "b105eb10c6d318d2294de9d49dd8b031b55e3c3fe139f2e637da70511e9e7b71",
        ..aws_vector("header-value-spaces", "POST", "/", "")
    }
    .check();
}

/// emarsys_testsuite/signrequest-post-header-value-spaces-within-quotes.json: spaces inside quotes stay.
#[test]
fn header_value_spaces_within_quotes_stay() {
    Vector {
        headers: headers(&[("A-Funny-Header", "\"   foo   bar   \""), ("Date", RFC1123), ("Host", "host.foo.com")]),
        signed: &["a-funny-header", "date", "host"],
        canonical: Some(&format!(
            "POST\n/\n\na-funny-header:\"   foo   bar   \"\ndate:{RFC1123}\nhost:host.foo.com\n\n\
             a-funny-header;date;host\n{EMPTY_BODY_HASH}"
        )),
        string_to_sign_hash: Some("18ede26dfe222a2f36faf047b1ba8014bce2ab0c22d4b6544509088c0ddaab10"),
        signature: "5d63db6df1454e99cdff20966ac2fe0c6ed6cd330b0c7dbcb0e3155e164e49d7",
        ..aws_vector("spaces-within-quotes", "POST", "/", "")
    }
    .check();
}

/// The AWS documentation's example of a derived signing key (secret above, 20120215, us-east-1, iam).
#[test]
fn the_signing_key_is_the_chain_of_hmacs() {
    let key = signing_key(&aws4(), AWS_SECRET, "20120215", "us-east-1/iam/aws4_request");
    assert_eq!(hex::encode(key), "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d");
}

const A_HEADERS: [(&str, &str); 2] = [("Date", "20240115T103000Z"), ("Host", "api.st2.antavo.com")];
const A1_BODY: &str = r#"{"customer":"c-1","action":"point_add","data":{"points":10}}"#;
/// 2024-01-15T10:30:00Z.
const A_TIME: i64 = 1_705_314_600;

fn antavo_vector<'a>(name: &'a str, method: &'a str, path: &'a str, query: &'a str) -> Vector<'a> {
    Vector {
        name,
        profile: Profile::antavo(),
        scope: "st2/api/antavo_request",
        key: "test_key",
        secret: "test_secret",
        long_date: "20240115T103000Z",
        method,
        path,
        query,
        headers: headers(&A_HEADERS),
        signed: &["date", "host"],
        body: "",
        canonical: None,
        string_to_sign_hash: None,
        signature: "",
    }
}

/// A1 of the reference: `POST /events` with a body.
#[test]
fn a1_antavo_post_events() {
    Vector {
        body: A1_BODY,
        canonical: Some(
            "POST\n/events\n\ndate:20240115T103000Z\nhost:api.st2.antavo.com\n\ndate;host\n\
             ebc156bf69e8de612ab474226bda69b27f034243233b8404d62e3aaec213b304",
        ),
        signature: "390d9c5492e694daf46aa76fa1212801bb08d3b2ca323a6d7726944003d78449",
        ..antavo_vector("A1", "POST", "/events", "")
    }
    .check();
}

/// A2 of the reference: a GET whose query is sorted.
#[test]
fn a2_antavo_get_customer() {
    assert_eq!(canonical_query("fields=groups&api_key=test_key"), "api_key=test_key&fields=groups");
    Vector {
        signature: "a137e19aac4e381db41ce4e41e40117a89756c684695e955071824601278c7fa",
        ..antavo_vector("A2", "GET", "/customers/c-1", "fields=groups&api_key=test_key")
    }
    .check();
}

/// `sign` puts it together: the Date and Authorization headers of A1, from the time alone.
#[test]
fn sign_makes_the_antavo_headers() {
    let request = Request {
        method: "POST",
        path: "/events",
        query: "",
        headers: &headers(&[("Host", "api.st2.antavo.com"), ("Content-Type", "application/json")]),
        body: A1_BODY.as_bytes(),
    };
    let signed =
        escher::sign(&Profile::antavo(), "st2/api/antavo_request", "test_key", "test_secret", &request, &[], A_TIME)
            .unwrap();
    assert_eq!(signed.date, ("date".to_string(), "20240115T103000Z".to_string()));
    assert_eq!(
        signed.authorization,
        (
            "authorization".to_string(),
            "ANTAVO-HMAC-SHA256 Credential=test_key/20240115/st2/api/antavo_request, SignedHeaders=date;host, \
             Signature=390d9c5492e694daf46aa76fa1212801bb08d3b2ca323a6d7726944003d78449"
                .to_string()
        )
    );
    assert!(!format!("{signed:?}").contains("390d9c"), "Debug shows no signature");
}

/// The verifier's refusals, in Escher's order, none of them naming the secret.
#[test]
fn verification_refuses_what_does_not_hold() {
    let profile = Profile::antavo();
    let sign_at = |time: i64, secret: &str, scope: &str| {
        let request = Request {
            method: "POST",
            path: "/events",
            query: "",
            headers: &headers(&A_HEADERS[1..]),
            body: A1_BODY.as_bytes(),
        };
        escher::sign(&profile, scope, "test_key", secret, &request, &[], time).unwrap()
    };
    let verify = |headers: Vec<(String, String)>, body: &str, now: i64| {
        let request = Request { method: "POST", path: "/events", query: "", headers: &headers, body: body.as_bytes() };
        Verifier { profile: &profile, scope: "st2/api/antavo_request", clock_skew_seconds: 300 }.verify(
            &request,
            now,
            |k| (k == "test_key").then(|| "test_secret".to_string()),
        )
    };
    let with = |signed: &escher::Signed| {
        let mut h = headers(&A_HEADERS[1..]);
        h.push(signed.date.clone());
        h.push(signed.authorization.clone());
        h
    };
    let good = sign_at(A_TIME, "test_secret", "st2/api/antavo_request");
    assert_eq!(verify(with(&good), A1_BODY, A_TIME + 299), Ok("test_key".into()));
    assert_eq!(verify(with(&good), A1_BODY, A_TIME - 299), Ok("test_key".into()));

    assert_eq!(verify(with(&good), &A1_BODY.replace("10", "99"), A_TIME), Err(VerifyError::Mismatch), "altered body");
    let wrong_secret = sign_at(A_TIME, "not_the_secret", "st2/api/antavo_request");
    assert_eq!(verify(with(&wrong_secret), A1_BODY, A_TIME), Err(VerifyError::Mismatch));
    assert_eq!(
        verify(with(&good), A1_BODY, A_TIME + 301),
        Err(VerifyError::TimeRange { skew_seconds: 301, allowed: 300 }),
        "clock skew"
    );
    let other_region = sign_at(A_TIME, "test_secret", "eu6/api/antavo_request");
    assert!(matches!(verify(with(&other_region), A1_BODY, A_TIME), Err(VerifyError::Scope { .. })));
    // The Date header says another day than the credential.
    let mut wrong_date = with(&good);
    wrong_date.retain(|(n, _)| n != "date");
    wrong_date.push(("date".into(), "20240116T103000Z".into()));
    assert_eq!(verify(wrong_date, A1_BODY, A_TIME + 86_400), Err(VerifyError::CredentialDate));
    // The same instant in another Date format is the same request time, but another signed value.
    let mut reformatted = with(&good);
    reformatted.retain(|(n, _)| n != "date");
    reformatted.push(("date".into(), "Mon, 15 Jan 2024 10:30:00 GMT".into()));
    assert_eq!(verify(reformatted, A1_BODY, A_TIME), Err(VerifyError::Mismatch));

    let auth = good.authorization.1.clone();
    for (value, error) in [
        (auth.replace("ANTAVO-HMAC-SHA256", "ANTAVO-HMAC-MD5"), VerifyError::Algorithm),
        (auth.replace("ANTAVO-", "ESR-"), VerifyError::Format),
        (auth.replace(", SignedHeaders", " SignedHeaders"), VerifyError::Format),
        (auth.replace("date;host", "host"), VerifyError::DateNotSigned),
        (auth.replace("date;host", "date"), VerifyError::HostNotSigned),
        (auth.replace("test_key/", "other_key/"), VerifyError::Key("other_key".into())),
    ] {
        let mut h = with(&good);
        h.retain(|(n, _)| n != "authorization");
        h.push(("authorization".into(), value.clone()));
        assert_eq!(verify(h, A1_BODY, A_TIME), Err(error), "{value}");
    }
    let mut no_auth = with(&good);
    no_auth.retain(|(n, _)| n != "authorization");
    assert_eq!(verify(no_auth, A1_BODY, A_TIME), Err(VerifyError::Missing("authorization".into())));
    for error in
        [VerifyError::Mismatch, VerifyError::Key("k".into()), VerifyError::TimeRange { skew_seconds: 1, allowed: 0 }]
    {
        assert!(!error.to_string().contains("test_secret"));
    }
}
