//! The Antavo connector end to end: the component against the Antavo emulator (every capability, the error
//! kinds, batching into /events/bulk, no secret anywhere), and the two-way loop between Antavo and mParticle
//! through both connectors and both emulators, served over HTTP, with faults on each side.

use crate::test_runtime;
use antavo_emulator::{FaultRule as AntavoFault, WebhookSigning, WebhookSubscription};
use flowhost::connector::{Connection, ConnectionOptions, Connector, Invocation, InvocationContext, SecretStore};
use flowhost::delivery::{InboundConnection, Service, ServiceConfig};
use flowhost::server::{ApiState, router};
use flowhost::store::{InboundFilter, SqliteStore, Store};
use flowhost::{Host, HostConfig};
use flowhost_cli::builtin::{ANTAVO, COMPONENTS};
use mparticle_emulator::FaultRule as MParticleFault;
use secrecy::SecretString;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WRONG_SECRET: &str = "wrong-antavo-secret-e2e";
const MPARTICLE_TOKEN: &str = "mp-loop-token-5e1";

fn repo_flow(name: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../flows").join(name)).unwrap()
}

fn client() -> reqwest::Client {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap()
}

// ---- the component against the emulator ----

struct Env {
    emulator: antavo_emulator::RunningEmulator,
    connector: Arc<Connector>,
    _runtime: flowhost::connector::Runtime,
    _cache: tempfile::TempDir,
}

impl Env {
    async fn start(config: antavo_emulator::EmulatorConfig) -> Env {
        let emulator = antavo_emulator::start(config, "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let (runtime, cache) = test_runtime(Duration::from_secs(10));
        let connector = runtime.load_bytes(ANTAVO).await.unwrap();
        Env { emulator, connector, _runtime: runtime, _cache: cache }
    }

    fn connection(&self, api_secret: &str) -> Connection {
        let config = json!({
            "environment": "st2",
            "apiKey": {"secret": "AKEY"}, "apiSecret": {"secret": "ASECRET"},
            "clientId": {"secret": "CID"}, "clientSecret": {"secret": "CSECRET"},
            "apiUrl": self.emulator.url(),
        });
        let secrets = SecretStore::from_pairs([
            ("AKEY", antavo_emulator::DEMO_API_KEY),
            ("ASECRET", api_secret),
            ("CID", antavo_emulator::DEMO_CLIENT_ID),
            ("CSECRET", antavo_emulator::DEMO_CLIENT_SECRET),
        ]);
        let options = ConnectionOptions { allow_private: true, ..ConnectionOptions::default() };
        self.connector.connection("antavo", &config, &secrets, &options).unwrap()
    }

    async fn invoke(&self, connection: &Connection, capability: &str, properties: Value, attempt: u32) -> Invocation {
        let context = InvocationContext {
            run_id: "run-1".into(),
            node_id: "n".into(),
            idempotency_key: "run-1/n".into(),
            attempt,
        };
        let invocation =
            self.connector.invoke(connection, capability, &json!({"properties": properties}), &context).await;
        assert_no_secrets(&invocation);
        invocation
    }

    async fn ok(&self, connection: &Connection, capability: &str, properties: Value) -> Value {
        let invocation = self.invoke(connection, capability, properties, 1).await;
        invocation.result.unwrap_or_else(|e| panic!("{capability}: {e}\n{:#?}", invocation.log))
    }

    async fn kind(&self, connection: &Connection, capability: &str, properties: Value) -> String {
        match self.invoke(connection, capability, properties, 1).await.result {
            Ok(output) => panic!("{capability} should have failed: {output}"),
            Err(error) => error.kind().to_string(),
        }
    }
}

fn assert_no_secrets<T: std::fmt::Debug>(invocation: &Invocation<T>) {
    let text = format!("{invocation:?}");
    for secret in [antavo_emulator::DEMO_API_SECRET, antavo_emulator::DEMO_CLIENT_SECRET, WRONG_SECRET] {
        assert!(!text.contains(secret), "a secret leaked: {text}");
    }
}

fn point_add(customer: &str, points: i64) -> Value {
    json!({"customer": customer, "action": "point_add", "data": {"points": points}})
}

#[tokio::test]
async fn every_capability_against_the_emulator() {
    let env = Env::start(antavo_emulator::EmulatorConfig::default()).await;
    let good = env.connection(antavo_emulator::DEMO_API_SECRET);
    let checked = env.connector.check(&good).await;
    assert_no_secrets(&checked);
    checked.result.unwrap();

    let sent = env.ok(&good, "sendEvent", point_add("cust-1001", 25)).await;
    assert_eq!((sent["customer"]["spendable"].as_i64(), sent["events"][0]["points"].as_i64()), (Some(1275), Some(25)));
    let opted = env
        .ok(
            &good,
            "optIn",
            json!({"customer": "cust-2001", "attributes": {"email": "new@example.com", "first_name": "Nia"}}),
        )
        .await;
    assert_eq!(opted["customer"]["status"], "active");
    env.ok(&good, "updateProfile", json!({"customer": "cust-2001", "attributes": {"last_name": "Moss"}})).await;
    let customer = env
        .ok(
            &good,
            "getCustomer",
            json!({"customerId": "new@example.com", "externalIdField": "email", "fields": ["groups"]}),
        )
        .await;
    assert_eq!((customer["id"].as_str(), customer["last_name"].as_str()), (Some("cust-2001"), Some("Moss")));
    let since = antavo_core::time::iso8601(env.emulator.now_ms() / 1000 - 5);
    let changed = env.ok(&good, "listChangedCustomers", json!({"since": since})).await;
    assert!(changed["customerIds"].as_array().unwrap().contains(&json!("cust-2001")), "{changed}");
    let bulk = env
        .ok(
            &good,
            "sendEvents",
            json!({"events": [point_add("cust-1002", 1), point_add("ghost", 1), point_add("cust-1003", 2)]}),
        )
        .await;
    assert_eq!((bulk["recorded"].as_u64(), bulk["errors"].as_u64()), (Some(2), Some(1)), "{bulk}");
    let queued = env.ok(&good, "sendAsyncEvent", point_add("cust-1003", 3)).await;
    let status = env.ok(&good, "getAsyncEventStatus", json!({"correlationId": queued["correlationId"]})).await;
    assert_eq!((status["status"].as_str(), status["done"].as_bool()), (Some("processed"), Some(true)), "{status}");
    env.ok(&good, "optOut", json!({"customer": "cust-2001"})).await;

    // The error kinds: unknown customer, unknown correlation id, the signature, a throttle, an outage.
    assert_eq!(env.kind(&good, "sendEvent", point_add("nobody", 1)).await, "not-found");
    assert_eq!(env.kind(&good, "getCustomer", json!({"customerId": "nobody"})).await, "not-found");
    assert_eq!(env.kind(&good, "getAsyncEventStatus", json!({"correlationId": "nope"})).await, "not-found");
    let wrong = env.connection(WRONG_SECRET);
    match env.invoke(&wrong, "sendEvent", point_add("cust-1001", 1), 1).await.result {
        Err(error) => {
            assert_eq!(error.kind().to_string(), "unauthorized");
            assert!(error.to_string().contains("apiSecret"), "{error}");
        }
        Ok(output) => panic!("{output}"),
    }
    let checked = env.connector.check(&wrong).await;
    assert_eq!(checked.result.unwrap_err().kind().to_string(), "unauthorized");
    env.emulator.add_fault(AntavoFault::status(429).times(1).path_prefix("/events"));
    assert_eq!(env.kind(&good, "sendEvent", point_add("cust-1001", 1)).await, "rate-limited");
    env.emulator.add_fault(AntavoFault::status(503).times(1).path_prefix("/events"));
    assert_eq!(env.kind(&good, "sendEvent", point_add("cust-1001", 1)).await, "transient");
    // A duplicate transaction id on a retry: the earlier attempt was recorded.
    let checkout =
        json!({"customer": "cust-1001", "action": "checkout", "data": {"transaction_id": "tx-e2e", "total": 10}});
    env.ok(&good, "sendEvent", checkout.clone()).await;
    let retried = env.invoke(&good, "sendEvent", checkout.clone(), 2).await.result.unwrap();
    assert_eq!(retried["duplicate"], true);
    assert_eq!(
        env.kind(&good, "sendEvent", checkout).await,
        "permanent",
        "a first attempt's duplicate is the caller's"
    );
    let requests = env.emulator.requests();
    assert!(requests.iter().all(|r| !r.body.contains(antavo_emulator::DEMO_API_SECRET)));
    assert_eq!(env.emulator.stats().unauthorized, 2);
}

#[tokio::test]
async fn concurrent_event_calls_share_a_bulk_request() {
    let env = Env::start(antavo_emulator::EmulatorConfig::default()).await;
    let good = env.connection(antavo_emulator::DEMO_API_SECRET);
    assert!(env.connector.batches("sendEvent"));
    let inputs: Vec<Value> = (1..=5).map(|i| json!({"properties": point_add("cust-1002", i)})).collect();
    let contexts: Vec<InvocationContext> = (1..=5)
        .map(|i| InvocationContext {
            run_id: format!("r{i}"),
            node_id: "n".into(),
            idempotency_key: format!("r{i}/n"),
            attempt: 1,
        })
        .collect();
    let items: Vec<(&Value, &InvocationContext)> = inputs.iter().zip(&contexts).collect();
    let results = env.connector.invoke_batch(&good, "sendEvent", &items).await;
    for result in &results {
        let output = result.result.as_ref().unwrap();
        assert_eq!(output["endpoint"], "events/bulk");
    }
    let requests = env.emulator.requests();
    assert_eq!(requests.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(), ["/events/bulk"]);
    let points: Vec<i64> = env.emulator.events().iter().map(|e| e.points).collect();
    assert_eq!(points, [1, 2, 3, 4, 5], "in order");
}

// ---- the loop ----

struct Loop {
    base: String,
    mparticle: mparticle_emulator::RunningEmulator,
    antavo: antavo_emulator::RunningEmulator,
    store: Arc<dyn Store>,
    _service: Arc<Service>,
    _dir: tempfile::TempDir,
}

impl Loop {
    async fn start() -> Loop {
        let mparticle = mparticle_emulator::start(Default::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let antavo = antavo_emulator::start(Default::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let url = mparticle.url();
        let mparticle_urls: Map<String, Value> = [
            ("eventsApiUrl", format!("{url}/v2")),
            ("authUrl", format!("{url}/oauth/token")),
            ("platformApiUrl", url.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::String(v)))
        .collect();
        let antavo_url: Map<String, Value> =
            [("apiUrl".to_string(), Value::String(antavo.url()))].into_iter().collect();
        let dir = tempfile::tempdir().unwrap();
        let config = HostConfig {
            runtime: flowhost::connector::RuntimeConfig {
                cache_dir: Some(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("antavo-compile-cache")),
                max_instances: 64,
                ..Default::default()
            },
            embedded_connectors: COMPONENTS.to_vec(),
            allow_private: true,
            connection_overrides: BTreeMap::from([
                ("mparticle".to_string(), mparticle_urls),
                ("antavo".to_string(), antavo_url),
            ]),
            ..HostConfig::default()
        };
        let secrets = SecretStore::from_pairs([
            ("MPARTICLE_API_KEY", mparticle_emulator::DEMO_API_KEY),
            ("MPARTICLE_API_SECRET", mparticle_emulator::DEMO_API_SECRET),
            ("ANTAVO_API_KEY", antavo_emulator::DEMO_API_KEY),
            ("ANTAVO_API_SECRET", antavo_emulator::DEMO_API_SECRET),
        ]);
        let host = Host::new(config, secrets).await.unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("flowhost.db")).await.unwrap());
        let flows: Vec<(String, String)> = [
            "antavo-point-add-to-mparticle.json",
            "antavo-profile-to-mparticle.json",
            "mparticle-coupon-to-antavo.json",
            "inbound-coupon-redeemed.json",
        ]
        .iter()
        .map(|name| (name.to_string(), repo_flow(name)))
        .collect();
        // mParticle sends its token; Antavo signs with Escher, so its connection has none.
        let tokens = vec![InboundConnection { name: "mparticle".into(), token: SecretString::from(MPARTICLE_TOKEN) }];
        let service_config = ServiceConfig { idle_poll: Duration::from_millis(50), ..ServiceConfig::default() };
        let service = Arc::new(Service::start(host, store.clone(), &flows, tokens, service_config).await.unwrap());
        let state =
            ApiState { service: service.clone(), max_body_bytes: 1 << 20, api_token: None, metrics_token: None };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router(state)).await });
        antavo.add_webhook(WebhookSubscription {
            url: format!("{base}/v1/inbound/antavo"),
            actions: vec!["point_add".into(), "profile".into()],
            signing: WebhookSigning::Escher {
                key: antavo_emulator::DEMO_API_KEY.into(),
                secret: antavo_emulator::DEMO_API_SECRET.into(),
            },
            max_attempts: 5,
            retry_interval_ms: 200,
        });
        Loop { base, mparticle, antavo, store, _service: service, _dir: dir }
    }

    /// mParticle's Webhook output: one coupon_redeemed custom event for the customer.
    async fn coupon_from_mparticle(&self, customer: &str, n: usize) {
        let batch = json!({
            "batch_id": format!("b-{customer}-{n}"), "mpid": 8_675_309, "environment": "production",
            "user_identities": [{"identity_type": "customer_id", "identity": customer}],
            "events": [{"event_type": "custom_event", "message_id": format!("m-{customer}-{n}"),
                        "data": {"event_name": "coupon_redeemed", "custom_event_type": "transaction",
                                 "custom_attributes": {"coupon_code": format!("C-{customer}-{n}"), "store_id": "store-7"}}}]
        });
        let response = client()
            .post(format!("{}/v1/inbound/mparticle", self.base))
            .bearer_auth(MPARTICLE_TOKEN)
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202, "{}", response.text().await.unwrap());
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const CUSTOMERS: [&str; 3] = ["cust-1001", "cust-1002", "cust-1003"];
const ROUNDS: usize = 4;

/// Antavo -> flowhost -> mParticle and mParticle -> flowhost -> Antavo at the same time, with 503s and a 429 on
/// each side: every event arrives once, and each customer's in the order it happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_runs_both_ways_and_every_event_arrives_once_in_order() {
    let l = Loop::start().await;
    l.mparticle.add_fault(MParticleFault::status(503).times(2).path_prefix("/v2/"));
    l.mparticle.add_fault(MParticleFault::status(429).times(1).path_prefix("/v2/").retry_after(Some(1)));
    l.antavo.add_fault(AntavoFault::status(503).times(2).path_prefix("/events"));
    l.antavo.add_fault(AntavoFault::status(429).times(1).path_prefix("/events"));

    // Loyalty happens in Antavo (points at the till, a profile edit): Antavo posts its signed webhooks. Meanwhile
    // mParticle posts coupon redemptions.
    for round in 1..=ROUNDS {
        for (i, customer) in CUSTOMERS.iter().enumerate() {
            let points = (round * 10 + i) as i64;
            l.antavo.trigger(json!({"customer": customer, "action": "point_add", "data": {"points": points}})).unwrap();
            l.coupon_from_mparticle(customer, round).await;
        }
    }
    l.antavo
        .trigger(json!({"customer": "cust-1002", "action": "profile", "data": {"first_name": "Grace B.", "mobile_phone": "+15550100"}}))
        .unwrap();

    // mParticle gets every point_add as a custom event and the profile as user attributes.
    let point_adds = |batches: &[mparticle_emulator::RecordedBatch]| -> Vec<(String, String)> {
        batches
            .iter()
            .flat_map(|b| {
                let customer = b.batch["user_identities"]["customer_id"].as_str().unwrap_or_default().to_string();
                b.batch["events"].as_array().cloned().unwrap_or_default().into_iter().filter_map(move |e| {
                    (e["data"]["event_name"] == "point_add").then(|| {
                        (customer.clone(), e["data"]["custom_attributes"]["points"].as_str().unwrap().to_string())
                    })
                })
            })
            .collect()
    };
    wait_until("mParticle to get every point_add and the profile", || {
        let batches = l.mparticle.batches();
        point_adds(&batches).len() >= CUSTOMERS.len() * ROUNDS
            && batches.iter().any(|b| !b.batch["user_attributes"].is_null())
    })
    .await;
    // Antavo gets every coupon redemption.
    wait_until("Antavo to get every coupon_redeem", || {
        l.antavo.events().iter().filter(|e| e.action == "coupon_redeem").count() >= CUSTOMERS.len() * ROUNDS
    })
    .await;
    // Let anything late arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let batches = l.mparticle.batches();
    let received = point_adds(&batches);
    assert_eq!(received.len(), CUSTOMERS.len() * ROUNDS, "each point_add once: {received:?}");
    for (i, customer) in CUSTOMERS.iter().enumerate() {
        let theirs: Vec<&str> = received.iter().filter(|(c, _)| c == customer).map(|(_, p)| p.as_str()).collect();
        let expected: Vec<String> = (1..=ROUNDS).map(|round| (round * 10 + i).to_string()).collect();
        assert_eq!(theirs, expected, "{customer}: in order");
    }
    let profile = batches.iter().find(|b| !b.batch["user_attributes"].is_null()).unwrap();
    assert_eq!(profile.batch["user_identities"]["customer_id"], "cust-1002");
    let attributes = &profile.batch["user_attributes"];
    assert_eq!(
        (attributes["$firstname"].as_str(), attributes["$mobile"].as_str()),
        (Some("Grace B."), Some("+15550100"))
    );
    assert_eq!(attributes["antavo_customer_id"], "cust-1002");
    let mparticle_stats = l.mparticle.stats();
    assert_eq!(mparticle_stats.faults_injected, 3, "{mparticle_stats:?}");

    let coupons: Vec<(String, String)> = l
        .antavo
        .events()
        .iter()
        .filter(|e| e.action == "coupon_redeem")
        .map(|e| (e.customer.clone(), e.data["coupon_code"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(coupons.len(), CUSTOMERS.len() * ROUNDS, "each coupon once: {coupons:?}");
    for customer in CUSTOMERS {
        let theirs: Vec<&str> = coupons.iter().filter(|(c, _)| c == customer).map(|(_, code)| code.as_str()).collect();
        let expected: Vec<String> = (1..=ROUNDS).map(|n| format!("C-{customer}-{n}")).collect();
        assert_eq!(theirs, expected, "{customer}: in order");
    }
    let coupon = l.antavo.events().into_iter().find(|e| e.data["coupon_code"] == "C-cust-1001-1").unwrap();
    assert_eq!(coupon.data, json!({"coupon_code": "C-cust-1001-1", "store_id": "store-7", "channel": "mparticle"}));
    assert_eq!(l.antavo.stats().faults_injected, 3);

    // The outbox stays: the same coupons reach it as loyalty events, for a platform that embeds flowhost.
    let outbox = l.store.outbox(0, 100).await.unwrap();
    assert_eq!(outbox.iter().filter(|e| e.event == "coupon_redeem").count(), CUSTOMERS.len() * ROUNDS);
    // Antavo's webhooks were stored once each (12 point_add, 1 profile).
    let from_antavo = l
        .store
        .list_inbound(&InboundFilter { connection: Some("antavo".into()), ..InboundFilter::default() })
        .await
        .unwrap();
    assert_eq!(from_antavo.len(), CUSTOMERS.len() * ROUNDS + 1);
}

/// Antavo's webhook route takes only what Antavo signed: anything else is 401 and stored nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_with_a_bad_signature_is_refused_and_stored_nowhere() {
    let l = Loop::start().await;
    let url = format!("{}/v1/inbound/antavo", l.base);
    let authority = l.base.trim_start_matches("http://").to_string();
    let body = json!({"id": "evt-x", "action": "point_add", "customer": {"id": "cust-1001"}, "data": {"points": 5}})
        .to_string();
    let sign = |secret: &str, time: i64, body: &str| {
        let headers = vec![("host".to_string(), authority.clone())];
        let request = antavo_core::escher::Request {
            method: "POST",
            path: "/v1/inbound/antavo",
            query: "",
            headers: &headers,
            body: body.as_bytes(),
        };
        let signed = antavo_core::escher::sign(
            &antavo_core::escher::Profile::antavo(),
            "st2/api/antavo_request",
            antavo_emulator::DEMO_API_KEY,
            secret,
            &request,
            &[],
            time,
        )
        .unwrap();
        (signed.date.1, signed.authorization.1)
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let post = |date: Option<String>, auth: Option<String>, body: String| {
        let url = url.clone();
        async move {
            let mut request = client().post(url).header("content-type", "application/json").body(body);
            if let Some(date) = date {
                request = request.header("date", date);
            }
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (date, auth) = sign(WRONG_SECRET, now, &body);
    assert_eq!(post(Some(date), Some(auth), body.clone()).await.0, 401, "wrong secret");
    let (date, auth) = sign(antavo_emulator::DEMO_API_SECRET, now - 600, &body);
    assert_eq!(post(Some(date), Some(auth), body.clone()).await.0, 401, "outside the clock skew");
    let (date, auth) = sign(antavo_emulator::DEMO_API_SECRET, now, &body);
    assert_eq!(post(Some(date.clone()), Some(auth.clone()), body.replace("5}", "500}")).await.0, 401, "altered body");
    assert_eq!(post(None, None, body.clone()).await.0, 401, "unsigned");
    assert_eq!(
        post(Some(date.clone()), Some("Bearer guess".into()), body.clone()).await.0,
        401,
        "a token it does not have"
    );
    assert!(l.store.list_inbound(&InboundFilter::default()).await.unwrap().is_empty(), "nothing stored");

    let (status, text) = post(Some(date.clone()), Some(auth.clone()), body.clone()).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = post(Some(date), Some(auth), body).await;
    assert_eq!(status, 401, "a replay: {text}");
    assert_eq!(l.store.list_inbound(&InboundFilter::default()).await.unwrap().len(), 1);
    wait_until("the signed point_add to reach mParticle", || !l.mparticle.batches().is_empty()).await;
}
