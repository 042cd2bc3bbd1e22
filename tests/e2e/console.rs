//! The web console in a real browser: Debian's chromium, headless, driven through chromedriver (WebDriver, with
//! fantoccini), against `flowhost serve` and the mParticle emulator on loopback. It logs in (a wrong token is
//! refused), reads the queue counts, a flow's graph and a failed run, retries a dead run from the queue page
//! (mParticle receives it), disconnects and reconnects, and checks that no page shows a secret. Every page is
//! saved as a screenshot under the test's output directory (`console-screenshots`).
//!
//! Without chromium and chromedriver the test says SKIPPED and why, except under `CI`, where it fails.

use crate::serve::{INBOUND_TOKEN, ServiceDir, client, delivered_points, eventually, repo_flow, send};
use fantoccini::{Client, ClientBuilder, Locator};
use mparticle_emulator::{DEMO_API_KEY, DEMO_API_SECRET, EmulatorConfig, FaultRule};
use serde_json::{Value, json};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const API_TOKEN: &str = "console-api-token-9b3e";

/// chromium and chromedriver, from `PATH` or where Debian puts them.
fn browser_tools() -> Result<(PathBuf, PathBuf), String> {
    let find = |names: &[&str]| -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        names.iter().find_map(|name| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .chain([Path::new("/usr/bin").join(name), Path::new("/usr/lib/chromium").join(name)])
                .find(|candidate| candidate.is_file())
        })
    };
    let chromium = find(&["chromium", "chromium-browser"]).ok_or("chromium is not installed")?;
    let driver = find(&["chromedriver"]).ok_or("chromedriver is not installed (Debian's chromium-driver)")?;
    Ok((chromium, driver))
}

/// chromedriver on a loopback port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(path: &Path, log: &Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, chromium: &Path, profile: &Path) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--no-proxy-server",
        "--window-size=1360,900",
    ];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), json!({"binary": chromium, "args": args}));
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a chromium session through chromedriver")
}

/// The pages seen, for the secrets check, and their screenshots.
struct Visits {
    dir: PathBuf,
    sources: Vec<(String, String)>,
}

impl Visits {
    /// Saves the page (grown to its full height, up to a limit) as `<name>.png` and keeps its HTML.
    async fn capture(&mut self, browser: &Client, name: &str) {
        let height = browser
            .execute("return Math.min(document.documentElement.scrollHeight, 2400);", vec![])
            .await
            .unwrap()
            .as_u64()
            .unwrap_or(900);
        browser.set_window_size(1360, u32::try_from(height.max(600)).unwrap()).await.unwrap();
        let png = browser.screenshot().await.unwrap();
        std::fs::write(self.dir.join(format!("{name}.png")), png).unwrap();
        browser.set_window_size(1360, 900).await.unwrap();
        self.sources.push((name.to_string(), browser.source().await.unwrap()));
    }
}

/// Waits for an element: a click that submits a form may return before the next page has loaded.
async fn element(browser: &Client, css: &str) -> fantoccini::elements::Element {
    browser
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
}

async fn text(browser: &Client, css: &str) -> String {
    element(browser, css).await.text().await.unwrap()
}

async fn click(browser: &Client, css: &str) {
    element(browser, css).await.click().await.unwrap();
}

/// Waits until the browser is at `expected` (path and query), for the same reason.
async fn arrives_at(browser: &Client, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let path = path_of(browser).await;
        if path == expected {
            return;
        }
        assert!(Instant::now() < deadline, "the browser is at {path}, not {expected}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn path_of(browser: &Client) -> String {
    let url = browser.current_url().await.unwrap();
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let (chromium, chromedriver) = match browser_tools() {
        Ok(tools) => tools,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("CI runs the console's browser test, but {why}: install chromium and chromium-driver")
        }
        Err(why) => {
            eprintln!("SKIPPED the_console_in_a_real_browser: {why} (apt-get install chromium chromium-driver)");
            return;
        }
    };
    let emulator = mparticle_emulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let handle = emulator.handle();
    let mut point_add: Value = serde_json::from_str(&repo_flow("point-add-to-mparticle.json")).unwrap();
    point_add["nodes"][0]["retry"] = json!({"maxAttempts": 2, "initialDelayMs": 50, "jitter": 0});
    let service = ServiceDir::new(
        &emulator,
        &[
            ("point-add.json", point_add.to_string()),
            ("profile-sync.json", repo_flow("profile-sync.json")),
            ("reward-claim.json", repo_flow("reward-claim-external-event.json")),
            ("coupon.json", repo_flow("inbound-coupon-redeemed.json")),
        ],
        "api_token = { secret = \"FLOWHOST_API_TOKEN\" }",
    )
    .env("FLOWHOST_API_TOKEN", API_TOKEN);
    let server = service.start();
    let base = server.url.clone();
    let api = |request: reqwest::RequestBuilder| send(request.bearer_auth(API_TOKEN));

    // mParticle is down: three events, two dead letters (cust-a's first, cust-b's), cust-a's second waits.
    handle.set_faults(vec![FaultRule::status(503).fraction(1.0).path_prefix("/v2/")]);
    let events = json!([
        {"event": "point_add", "id": "c-1", "data": {"customerId": "cust-a", "points": 1, "balance": 1}},
        {"event": "point_add", "id": "c-2", "data": {"customerId": "cust-a", "points": 2, "balance": 3}},
        {"event": "point_add", "id": "c-3", "data": {"customerId": "cust-b", "points": 5, "balance": 5}}
    ]);
    let (status, body) = api(client().post(format!("{base}/v1/events")).json(&events)).await;
    assert_eq!(status, 202, "{body}");
    let run_id = |i: usize| body["accepted"][i]["runs"][0]["runId"].as_str().unwrap().to_string();
    let (first, second, third) = (run_id(0), run_id(1), run_id(2));
    eventually(Duration::from_secs(30), "two dead letters", || async {
        let (_, queue) = api(client().get(format!("{base}/v1/queue?status=dead"))).await;
        queue["runs"].as_array().is_some_and(|runs| runs.len() == 2)
    })
    .await;
    // An inbound message that maps, and one that does not.
    let inbound = |batch: &str, name: &str| {
        json!({"batch_id": batch, "mpid": 8_675_309, "timestamp_unixtime_ms": 1_714_592_744_066_i64,
               "environment": "production",
               "user_identities": [{"identity_type": "customer_id", "identity": "cust-a",
                                    "timestamp_unixtime_ms": 1_714_592_744_066_i64}],
               "events": [{"event_type": "custom_event", "message_id": format!("m-{batch}"),
                           "data": {"event_name": name, "custom_event_type": "other",
                                    "custom_attributes": {"coupon_code": "SUMMER24", "store_id": "s-17"},
                                    "timestamp_unixtime_ms": 1_714_592_744_066_i64}}]})
    };
    for (batch, name) in [("b-1", "coupon_redeemed"), ("b-2", "page_viewed")] {
        let request = client()
            .post(format!("{base}/v1/inbound/mparticle"))
            .header("Authorization", format!("Bearer {INBOUND_TOKEN}"))
            .json(&inbound(batch, name));
        let (status, body) = send(request).await;
        assert_eq!(status, 202, "{body}");
    }
    // The pages below show what became of both messages and of the run the first one started: wait until the
    // inbound worker has handled them and no run is leased, so a loaded machine does not change the counts.
    eventually(Duration::from_secs(60), "the inbound messages to be handled", || async {
        let (_, processed) = api(client().get(format!("{base}/v1/inbound?status=processed"))).await;
        let (_, unmatched) = api(client().get(format!("{base}/v1/inbound?status=unmatched"))).await;
        let (_, leased) = api(client().get(format!("{base}/v1/queue?status=leased"))).await;
        let count = |page: &serde_json::Value, key: &str| page[key].as_array().map_or(0, Vec::len);
        count(&processed, "messages") == 1 && count(&unmatched, "messages") == 1 && count(&leased, "runs") == 0
    })
    .await;

    let output = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&output).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let driver = Driver::start(&chromedriver, &output.join("chromedriver.log"));
    let browser = browser(&driver, &chromium, profile.path()).await;
    let mut visits = Visits { dir: output.clone(), sources: Vec::new() };

    // Log in: the console asks for the token; a wrong one is refused and sets no session.
    browser.goto(&format!("{base}/ui/queue")).await.unwrap();
    assert!(path_of(&browser).await.starts_with("/ui/login?next="), "{}", path_of(&browser).await);
    element(&browser, "#token").await.send_keys("not-the-token").await.unwrap();
    click(&browser, "form button[type=submit]").await;
    assert!(text(&browser, ".notice.bad").await.contains("not the API token"));
    visits.capture(&browser, "login-refused").await;
    browser.goto(&format!("{base}/ui")).await.unwrap();
    assert!(path_of(&browser).await.starts_with("/ui/login"), "still not logged in");
    element(&browser, "#token").await.send_keys(API_TOKEN).await.unwrap();
    click(&browser, "form button[type=submit]").await;
    arrives_at(&browser, "/ui").await;

    // The overview shows the queue as the store has it.
    assert_eq!(text(&browser, "[data-count=dead] .n").await, "2");
    assert_eq!(text(&browser, "[data-count=queued] .n").await, "1");
    assert!(text(&browser, "tr[data-connection=mparticle]").await.contains("connected"));
    visits.capture(&browser, "overview").await;

    // Flows: the list, a flow's graph with its nodes, the integration mapping read from the flows.
    browser.goto(&format!("{base}/ui/flows")).await.unwrap();
    assert_eq!(browser.find_all(Locator::Css("tr[data-flow]")).await.unwrap().len(), 4);
    visits.capture(&browser, "flows").await;
    browser.goto(&format!("{base}/ui/flows/point-add-to-mparticle")).await.unwrap();
    element(&browser, "#flow-graph g.node[data-trigger]").await;
    let node = "#flow-graph g.node[data-node=trigger_marketing_communication]";
    let drawn = element(&browser, node).await.html(true).await.unwrap();
    assert!(drawn.contains("mparticle.triggerMarketingCommunication"), "{drawn}");
    visits.capture(&browser, "flow").await;
    browser.goto(&format!("{base}/ui/mappings")).await.unwrap();
    let sync = text(&browser, "#sync-fields").await;
    assert!(sync.contains("$firstname") && sync.contains("reserved") && sync.contains("field firstName"), "{sync}");
    assert!(text(&browser, "#external-events").await.contains("reward_claim"));
    let inbound_mapping = text(&browser, "#inbound-mapping").await;
    assert!(inbound_mapping.contains("coupon_redeemed") && inbound_mapping.contains("{coupon_code}"));
    visits.capture(&browser, "mappings").await;

    // A failed run: its node is red on the graph, and the page says why.
    browser.goto(&format!("{base}/ui/runs/{first}")).await.unwrap();
    element(&browser, "#run-graph g.node.failed[data-node=trigger_marketing_communication]").await;
    assert!(text(&browser, "#last-error").await.contains("transient"), "the error is shown");
    assert!(text(&browser, "li[data-timeline-node=trigger_marketing_communication]").await.contains("503"));
    visits.capture(&browser, "run-failed").await;
    // The run behind it says so and links to it.
    browser.goto(&format!("{base}/ui/runs/{second}")).await.unwrap();
    let behind = element(&browser, "#held-behind a").await;
    assert_eq!(behind.attr("href").await.unwrap().as_deref(), Some(format!("/ui/runs/{first}").as_str()));
    // The workflow logs, filtered, and a customer's page.
    browser.goto(&format!("{base}/ui/runs?status=dead")).await.unwrap();
    assert_eq!(browser.find_all(Locator::Css("tr[data-run]")).await.unwrap().len(), 2);
    visits.capture(&browser, "workflow-logs").await;
    browser.goto(&format!("{base}/ui/customers/cust-a")).await.unwrap();
    // Two point_add runs and the run of the coupon they redeemed (inbound).
    assert_eq!(browser.find_all(Locator::Css("tr[data-run]")).await.unwrap().len(), 3);
    visits.capture(&browser, "customer").await;
    browser.goto(&format!("{base}/ui/inbound")).await.unwrap();
    assert_eq!(browser.find_all(Locator::Css("tr[data-inbound]")).await.unwrap().len(), 2);
    visits.capture(&browser, "inbound").await;

    // mParticle is back: retry cust-b's dead run from the queue page, through its confirmation.
    handle.clear_faults();
    browser.goto(&format!("{base}/ui/queue")).await.unwrap();
    visits.capture(&browser, "queue").await;
    click(&browser, &format!("tr[data-run=\"{third}\"] a[data-action=retry]")).await;
    visits.capture(&browser, "queue-confirm").await;
    click(&browser, "#confirm").await;
    arrives_at(&browser, "/ui/queue?done=retried&n=1").await;
    eventually(Duration::from_secs(30), "cust-b's run to reach mParticle", || async {
        delivered_points(&handle.batches()).contains(&("cust-b".to_string(), 5))
    })
    .await;
    // Then every dead run of cust-a at once: both of its events go, in order.
    browser.goto(&format!("{base}/ui/queue-bulk/retry?customer=cust-a")).await.unwrap();
    assert!(text(&browser, "h1").await.contains("Retry 1 dead run"));
    click(&browser, "#confirm").await;
    eventually(Duration::from_secs(30), "cust-a's runs to reach mParticle", || async {
        let delivered = delivered_points(&handle.batches());
        delivered.iter().filter(|(c, _)| c == "cust-a").map(|(_, p)| *p).collect::<Vec<_>>() == [1, 2]
    })
    .await;

    // Disconnect and reconnect, each after its confirmation.
    browser.goto(&format!("{base}/ui/connections")).await.unwrap();
    click(&browser, "tr[data-connection=mparticle] a[data-action=disconnect]").await;
    assert!(text(&browser, ".confirm").await.contains("What is kept"));
    visits.capture(&browser, "disconnect-confirm").await;
    click(&browser, "#confirm").await;
    let row = element(&browser, "tr[data-connection=mparticle]").await;
    assert_eq!(row.attr("data-state").await.unwrap().as_deref(), Some("disconnected"));
    let (_, health) = api(client().get(format!("{base}/healthz"))).await;
    assert_eq!(health["stoppedFlows"]["point-add-to-mparticle"], "mparticle", "{health}");
    visits.capture(&browser, "connections").await;

    // A form posted without the session's CSRF token does nothing, even with the session's cookie.
    let cookie = browser.get_named_cookie("flowhost_console").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    let forged = client()
        .post(format!("{base}/ui/connections/mparticle/reconnect"))
        .header("Cookie", format!("flowhost_console={}", cookie.value()))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("csrf=forged");
    assert_eq!(send(forged).await.0, 403);
    let anonymous = client()
        .post(format!("{base}/ui/connections/mparticle/reconnect"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("csrf=x");
    assert_eq!(send(anonymous).await.0, 401);
    let (_, health) = api(client().get(format!("{base}/healthz"))).await;
    assert_eq!(health["stoppedFlows"]["point-add-to-mparticle"], "mparticle", "still disconnected: {health}");

    click(&browser, "tr[data-connection=mparticle] a[data-action=reconnect]").await;
    click(&browser, "#confirm").await;
    let row = element(&browser, "tr[data-connection=mparticle]").await;
    assert_eq!(row.attr("data-state").await.unwrap().as_deref(), Some("connected"));
    let (_, health) = api(client().get(format!("{base}/healthz"))).await;
    assert!(health["stoppedFlows"].as_object().unwrap().is_empty(), "{health}");
    browser.goto(&format!("{base}/ui/runs/{first}")).await.unwrap();
    visits.capture(&browser, "run-retried").await;
    browser.goto(&format!("{base}/ui")).await.unwrap();
    // The three point_add runs and the inbound coupon's run.
    assert_eq!(text(&browser, "[data-count=succeeded] .n").await, "4");
    visits.capture(&browser, "overview-after").await;

    // No page shows a secret: the API token, the connection's credentials, the inbound token.
    for (name, html) in &visits.sources {
        for secret in [API_TOKEN, DEMO_API_KEY, DEMO_API_SECRET, INBOUND_TOKEN] {
            assert!(!html.contains(secret), "page {name} shows a secret");
        }
    }
    println!("console screenshots in {}", output.display());
    browser.close().await.unwrap();
    drop(driver);
    drop(server);
    assert!(!service.log().contains(DEMO_API_SECRET), "no secret in the server's log");
}
