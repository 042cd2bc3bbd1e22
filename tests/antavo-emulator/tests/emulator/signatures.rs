//! Escher verification: what passes and every way it fails, with Antavo's 401 body; the unsigned mode; the
//! rate limit.

use crate::*;
use antavo_emulator::{EmulatorConfig, FaultRule};
use serde_json::json;

const POINT_ADD: &str = r#"{"customer":"cust-1001","action":"point_add","data":{"points":10}}"#;

fn assert_unauthorized(status: u16, body: &serde_json::Value, message: &str) {
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["type"], "UnauthorizedException", "{body}");
    assert_eq!(body["error"]["code"], 101021, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains(message), "{message}: {body}");
}

#[tokio::test]
async fn a_signed_request_passes() {
    let emu = start_default().await;
    let (status, body) = post(&emu, "/events", POINT_ADD).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["spendable"], 1260);
    let requests = emu.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].api_key.as_deref(), Some(DEMO_API_KEY));
    assert_eq!(requests[0].body, POINT_ADD);
}

#[tokio::test]
async fn every_broken_signature_is_refused_with_antavos_error() {
    let emu = start_default().await;
    let good = Signing::now(&emu);
    let wrong_secret = Signing { secret: "not-the-secret".into(), ..good.clone() };
    let (status, body) = send_signed(&emu, &wrong_secret, "POST", "/events", POINT_ADD).await;
    assert_unauthorized(status, &body, "The signatures do not match");
    let unknown_key = Signing { key: "someone-else".into(), ..good.clone() };
    let (status, body) = send_signed(&emu, &unknown_key, "POST", "/events", POINT_ADD).await;
    assert_unauthorized(status, &body, "Invalid Escher key");
    let wrong_region = Signing { region: "eu6".into(), ..good.clone() };
    let (status, body) = send_signed(&emu, &wrong_region, "POST", "/events", POINT_ADD).await;
    assert_unauthorized(status, &body, "Credential scope is invalid");
    // Signed 310 s in the past, and in the future: beyond the 300 s window (with room for the clock to tick).
    for skew in [-310, 310] {
        let skewed = Signing { time: good.time + skew, ..good.clone() };
        let (status, body) = send_signed(&emu, &skewed, "POST", "/events", POINT_ADD).await;
        assert_unauthorized(status, &body, "not within the accepted time range");
    }
    let within = Signing { time: good.time - 250, ..good.clone() };
    assert_eq!(send_signed(&emu, &within, "POST", "/events", POINT_ADD).await.0, 200);
    // The emulator's clock moves instead: the same.
    emu.set_clock_offset_ms(400_000);
    let (status, body) = send_signed(&emu, &good, "POST", "/events", POINT_ADD).await;
    assert_unauthorized(status, &body, "not within the accepted time range");
    emu.set_clock_offset_ms(0);

    // An altered body, and a wrong date: re-sent by hand with a good signature of something else.
    let (date, authorization) = sign_for(&emu, &good, "POST", "/events", "", POINT_ADD);
    let altered = POINT_ADD.replace("10", "1000");
    let (status, body, _) = raw(
        reqwest::Method::POST,
        format!("{}/events", emu.url()),
        &[("date", &date), ("authorization", &authorization), ("content-type", "application/json")],
        &altered,
    )
    .await;
    assert_unauthorized(status, &body, "The signatures do not match");
    // The Date header names another day than the credential.
    let tomorrow = antavo_core::time::long_date(good.time + 86_400);
    let (status, body, _) = raw(
        reqwest::Method::POST,
        format!("{}/events", emu.url()),
        &[("date", &tomorrow), ("authorization", &authorization)],
        POINT_ADD,
    )
    .await;
    assert_unauthorized(status, &body, "The credential date does not match");
    for (headers, message) in [
        (vec![("date", date.as_str())], "Escher authentication is missing"),
        (vec![("authorization", authorization.as_str())], "The date header is missing"),
        (
            vec![("date", date.as_str()), ("authorization", "ANTAVO-HMAC-SHA256 nonsense")],
            "Auth header format is invalid",
        ),
        (vec![("date", "yesterday"), ("authorization", authorization.as_str())], "Date header is invalid"),
    ] {
        let (status, body, _) = raw(reqwest::Method::POST, format!("{}/events", emu.url()), &headers, POINT_ADD).await;
        assert_unauthorized(status, &body, message);
    }
    let stats = emu.stats();
    assert_eq!(stats.accepted_events, 1, "only the request within the window was accepted: {stats:?}");
    assert_eq!(emu.events().len(), 1);
    assert!(stats.unauthorized >= 10, "{stats:?}");
}

/// The three Date forms Antavo's own clients send all verify when the signature covers the value sent.
#[tokio::test]
async fn every_date_form_antavo_clients_send_verifies() {
    use antavo_core::escher::{Hash, canonical_request, signature, signed_header_list, signing_key, string_to_sign};
    let emu = start_default().await;
    let now = emu.now_ms() / 1000;
    let long = antavo_core::time::long_date(now);
    let iso = antavo_core::time::iso8601(now).replace('Z', "+00:00");
    let days = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (y, m, d) = antavo_core::time::civil_from_days(now.div_euclid(86_400));
    let sod = now.rem_euclid(86_400);
    let rfc1123 = format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        days[now.div_euclid(86_400).rem_euclid(7) as usize],
        months[m as usize - 1],
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    for date in [long.clone(), iso, rfc1123] {
        let headers = vec![("date".to_string(), date.clone()), ("host".to_string(), emu.addr().to_string())];
        let signed = signed_header_list(&["date", "host"]);
        let canonical =
            canonical_request("POST", "/events", "", &headers, &signed, POINT_ADD.as_bytes(), Hash::Sha256).unwrap();
        let profile = antavo_core::escher::Profile::antavo();
        let to_sign = string_to_sign(&profile, &long, "st2/api/antavo_request", &canonical);
        let key = signing_key(&profile, DEMO_API_SECRET, &long[..8], "st2/api/antavo_request");
        let auth = format!(
            "ANTAVO-HMAC-SHA256 Credential={DEMO_API_KEY}/{}/st2/api/antavo_request, SignedHeaders=date;host, Signature={}",
            &long[..8],
            signature(&profile, &key, &to_sign)
        );
        let (status, body, _) = raw(
            reqwest::Method::POST,
            format!("{}/events", emu.url()),
            &[("date", &date), ("authorization", &auth)],
            POINT_ADD,
        )
        .await;
        assert_eq!(status, 200, "{date}: {body}");
    }
}

#[tokio::test]
async fn the_unsigned_mode_takes_a_bare_api_key() {
    let emu = start(EmulatorConfig { allow_unsigned: true, ..EmulatorConfig::default() }).await;
    let url = |key: &str| format!("{}/customers/cust-1001?api_key={key}", emu.url());
    assert_eq!(raw(reqwest::Method::GET, url(DEMO_API_KEY), &[], "").await.0, 200);
    assert_eq!(raw(reqwest::Method::GET, url("nope"), &[], "").await.0, 401);
    let strict = start_default().await;
    let (status, body, _) =
        raw(reqwest::Method::GET, format!("{}/customers/cust-1001?api_key={DEMO_API_KEY}", strict.url()), &[], "")
            .await;
    assert_unauthorized(status, &body, "Escher authentication is missing");
}

#[tokio::test]
async fn the_rate_limit_answers_429_per_key_without_retry_after() {
    let emu = start(EmulatorConfig { rate_limit_per_minute: 3, ..EmulatorConfig::default() }).await;
    for _ in 0..3 {
        assert_eq!(get(&emu, "/customers/cust-1001").await.0, 200);
    }
    let (date, authorization) = sign_for(&emu, &Signing::now(&emu), "GET", "/customers/cust-1001", "", "");
    let (status, body, headers) = raw(
        reqwest::Method::GET,
        format!("{}/customers/cust-1001", emu.url()),
        &[("date", &date), ("authorization", &authorization)],
        "",
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "TooManyRequestsException");
    assert!(headers.get("retry-after").is_none(), "Antavo documents no Retry-After");
    assert_eq!(emu.stats().throttled, 1);
    // A minute later (3 per minute: one every 20 s) a request goes through again.
    emu.set_clock_offset_ms(21_000);
    assert_eq!(send_signed(&emu, &Signing::now(&emu), "GET", "/customers/cust-1001", "").await.0, 200);

    let paced =
        start(EmulatorConfig { rate_limit_per_minute: 1, retry_after_secs: Some(60), ..EmulatorConfig::default() })
            .await;
    assert_eq!(get(&paced, "/customers/-/count").await.0, 200);
    let (date, authorization) = sign_for(&paced, &Signing::now(&paced), "GET", "/customers/-/count", "", "");
    let url = format!("{}/customers/-/count", paced.url());
    let (status, _, headers) =
        raw(reqwest::Method::GET, url, &[("date", &date), ("authorization", &authorization)], "").await;
    assert_eq!((status, headers.get("retry-after").map(|v| v.to_str().unwrap().to_string())), (429, Some("60".into())));
}

#[tokio::test]
async fn faults_answer_before_the_signature_and_stalls_can_follow_processing() {
    let emu = start_default().await;
    emu.add_fault(FaultRule::status(503).times(1).path_prefix("/events"));
    let (status, body) = post(&emu, "/events", POINT_ADD).await;
    assert_eq!((status, body["error"]["type"].as_str()), (503, Some("ServiceUnavailableException")));
    assert!(emu.events().is_empty());
    assert_eq!(post(&emu, "/events", POINT_ADD).await.0, 200);

    // Over HTTP: a 429 with a Retry-After, for two requests.
    let (status, _, _) = raw(
        reqwest::Method::POST,
        format!("{}/_emulator/faults", emu.url()),
        &[("content-type", "application/json")],
        &json!({"kind": "429", "count": 2, "retry_after_secs": 3}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    for _ in 0..2 {
        let (status, _, headers) =
            raw(reqwest::Method::GET, format!("{}/customers/cust-1001", emu.url()), &[], "").await;
        assert_eq!((status, headers.get("retry-after").unwrap().to_str().unwrap()), (429, "3"));
    }
    assert!(emu.faults().is_empty());

    // A stall after processing: the event is recorded, the caller gives up.
    emu.add_fault(FaultRule::stall(2_000).after_processing().times(1));
    let (date, authorization) = sign_for(&emu, &Signing::now(&emu), "POST", "/events", "", POINT_ADD);
    let quick = reqwest::Client::builder().no_proxy().timeout(std::time::Duration::from_millis(500)).build().unwrap();
    let outcome = quick
        .post(format!("{}/events", emu.url()))
        .header("date", date)
        .header("authorization", authorization)
        .body(POINT_ADD)
        .send()
        .await;
    assert!(outcome.is_err(), "the caller timed out");
    assert_eq!(emu.events().len(), 2, "but the event was recorded");
    assert_eq!(emu.stats().faults_injected, 4);
}
