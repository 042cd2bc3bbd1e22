//! The mParticle connector through the host against the mParticle emulator, on loopback only: the manifest
//! and the published DaVinci schemas, every capability against what the emulator holds, bad input, bad
//! credentials, 429 with Retry-After, 5xx, timeouts, token caching and refresh, and no secret anywhere.

use crate::test_runtime_with;
use flowhost::connector::{
    ConfigError, Connection, ConnectionOptions, Connector, ErrorKind, HttpLimits, Invocation, InvocationContext,
    InvokeError, LogSource, Runtime, SecretStore,
};
use flowhost_cli::builtin::MPARTICLE;
use mparticle_emulator::{
    DEMO_API_KEY, DEMO_API_SECRET, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, EmulatorConfig, FaultRule, RecordedBatch,
    RunningEmulator,
};
use serde_json::{Value, json};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

const WRONG_CLIENT_SECRET: &str = "wrong-client-secret-e2e";
const WRONG_API_SECRET: &str = "wrong-api-secret-e2e";

const CAPABILITIES: [&str; 9] = [
    "createAccount",
    "getAccount",
    "updateAccount",
    "deleteAccount",
    "getAudiences",
    "getCalculatedAttributes",
    "uploadEventBatch",
    "triggerMarketingCommunication",
    "syncUserAttributes",
];

/// One emulator on 127.0.0.1 and one runtime with the mParticle connector loaded.
struct Env {
    emulator: RunningEmulator,
    connector: Arc<Connector>,
    _runtime: Runtime,
    _cache: tempfile::TempDir,
}

impl Env {
    async fn start() -> Self {
        Self::start_with(Duration::from_secs(10), HttpLimits::default()).await
    }

    async fn start_with(timeout: Duration, http: HttpLimits) -> Self {
        let listen = "127.0.0.1:0".parse().unwrap();
        let emulator = mparticle_emulator::start(EmulatorConfig::default(), listen).await.expect("start the emulator");
        let (runtime, cache) = test_runtime_with(timeout, http);
        // tests/build.rs lists no mParticle constant in `components`; the host builds the same crate into
        // the binary as its built-in connector.
        let connector = runtime.load_bytes(MPARTICLE).await.unwrap_or_else(|e| panic!("loading mParticle: {e}"));
        Env { emulator, connector, _runtime: runtime, _cache: cache }
    }

    /// The connection config: every URL points at the emulator, every credential is a secret reference.
    fn config(&self) -> Value {
        let url = self.emulator.url();
        json!({
            "clientId": {"secret": "CID"},
            "clientSecret": {"secret": "CSECRET"},
            "apiKey": {"secret": "AKEY"},
            "apiSecret": {"secret": "ASECRET"},
            "environment": "development",
            "authUrl": format!("{url}/oauth/token"),
            "platformApiUrl": url,
            "eventsApiUrl": format!("{url}/v2"),
        })
    }

    fn connection(&self, name: &str, secrets: &SecretStore) -> Connection {
        self.connection_with(name, secrets, false)
    }

    fn connection_with(&self, name: &str, secrets: &SecretStore, open_inputs: bool) -> Connection {
        let options = ConnectionOptions { allow_private: true, open_inputs, ..ConnectionOptions::default() };
        self.connector.connection(name, &self.config(), secrets, &options).unwrap_or_else(|e| panic!("connection: {e}"))
    }

    fn good(&self) -> Connection {
        self.connection("mparticle", &secrets(DEMO_CLIENT_SECRET, DEMO_API_SECRET))
    }

    /// A good connection whose inputs may have properties the schemas do not declare.
    fn open(&self) -> Connection {
        self.connection_with("mparticle", &secrets(DEMO_CLIENT_SECRET, DEMO_API_SECRET), true)
    }

    /// Invokes with the input wrapped as `{"properties": ...}`; no secret may show in what comes back.
    async fn invoke(&self, connection: &Connection, capability: &str, properties: Value, key: &str) -> Invocation {
        self.invoke_raw(connection, capability, &json!({ "properties": properties }), &context(key, 1)).await
    }

    async fn invoke_raw(
        &self,
        connection: &Connection,
        capability: &str,
        input: &Value,
        context: &InvocationContext,
    ) -> Invocation {
        let invocation = self.connector.invoke(connection, capability, input, context).await;
        assert_no_secrets(&invocation);
        invocation
    }

    async fn ok(&self, connection: &Connection, capability: &str, properties: Value, key: &str) -> Value {
        let invocation = self.invoke(connection, capability, properties, key).await;
        invocation.result.unwrap_or_else(|e| panic!("{capability} failed: {e}\nlog: {:#?}", invocation.log))
    }

    async fn err(&self, connection: &Connection, capability: &str, properties: Value, key: &str) -> InvokeError {
        match self.invoke(connection, capability, properties, key).await.result {
            Ok(output) => panic!("{capability} should have failed, but returned {output}"),
            Err(error) => error,
        }
    }

    async fn check(&self, connection: &Connection) -> Invocation<()> {
        let invocation = self.connector.check(connection).await;
        assert_no_secrets(&invocation);
        invocation
    }

    fn batches(&self) -> Vec<RecordedBatch> {
        self.emulator.batches()
    }

    fn requests(&self, route: &str) -> u64 {
        self.emulator.stats().requests.get(route).copied().unwrap_or(0)
    }
}

fn secrets(client_secret: &str, api_secret: &str) -> SecretStore {
    SecretStore::from_pairs([
        ("CID", DEMO_CLIENT_ID),
        ("CSECRET", client_secret),
        ("AKEY", DEMO_API_KEY),
        ("ASECRET", api_secret),
    ])
}

fn context(key: &str, attempt: u32) -> InvocationContext {
    InvocationContext { run_id: "run-1".into(), node_id: "node".into(), idempotency_key: key.into(), attempt }
}

/// Standard base64 with padding, to look for the Basic credentials.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// No secret value (client secret, API secret, wrong secrets, the Basic credentials) appears
/// in the result, the error message or the log.
fn assert_no_secrets<T: Debug>(invocation: &Invocation<T>) {
    let text = format!("{invocation:?}");
    let basic = [DEMO_API_SECRET, WRONG_API_SECRET].map(|s| base64(format!("{DEMO_API_KEY}:{s}").as_bytes()));
    for secret in [
        DEMO_CLIENT_SECRET,
        DEMO_API_SECRET,
        WRONG_CLIENT_SECRET,
        WRONG_API_SECRET,
        basic[0].as_str(),
        basic[1].as_str(),
    ] {
        assert!(!text.contains(secret), "a secret value leaked: {text}");
    }
    if let Err(error) = &invocation.result {
        let message = error.to_string();
        assert!(!message.contains(DEMO_CLIENT_SECRET) && !message.contains(DEMO_API_SECRET), "{message}");
    }
}

fn pointers(error: &InvokeError) -> Vec<&str> {
    match error {
        InvokeError::InvalidInput { errors } => errors.iter().map(|e| e.pointer.as_str()).collect(),
        other => panic!("expected invalid input, got {other}"),
    }
}

fn ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v["id"].as_i64().unwrap())
        .collect()
}

/// The published DaVinci input schemas by capability title, parsed from the seed page.
fn published_schemas() -> Vec<(String, Value)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/seeds/davinci-mparticle-connector.txt");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let marker = "Input Schema:";
    let mut schemas = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find(marker) {
        // "<title>\n\n<description>\n\nInput Schema:\n\n{...}"
        let lines: Vec<&str> = rest[..at].lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let title = lines[lines.len() - 2].to_string();
        let after = &rest[at + marker.len()..];
        let mut stream = serde_json::Deserializer::from_str(after).into_iter::<Value>();
        let schema = stream.next().expect("a schema after the marker").expect("the published schema is JSON");
        rest = &after[stream.byte_offset()..];
        schemas.push((title, schema));
    }
    schemas
}

#[tokio::test]
async fn manifest_lists_the_capabilities_with_the_davinci_schemas() {
    let env = Env::start().await;
    let manifest = env.connector.manifest();
    assert_eq!(manifest.id, "mparticle");
    let listed: Vec<&str> = manifest.capabilities.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(listed, CAPABILITIES, "exactly the nine capabilities, in order");

    let published = published_schemas();
    let titles: Vec<&str> = published.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        titles,
        [
            "Create an account",
            "Get a single account",
            "Update an account",
            "Delete an account",
            "Get all audiences",
            "Get all calculated attributes"
        ],
        "the seed publishes six schemas (uploadEventBatch has none)"
    );
    for ((title, schema), id) in published.iter().zip(CAPABILITIES) {
        let capability = manifest.capability(id).unwrap();
        assert_eq!(&capability.title, title, "{id}");
        assert_eq!(&capability.input_schema, schema, "{id}: the input schema must be the published one");
    }
    // The seventh DaVinci capability has a text area instead of a published schema: the same wrapper, and
    // JSON text accepted.
    let upload = &manifest.capability("uploadEventBatch").unwrap().input_schema;
    assert_eq!(upload["default"]["properties"]["properties"]["required"], json!(["eventBatch"]), "{upload}");
    let accepted = &upload["default"]["properties"]["properties"]["properties"]["eventBatch"]["type"];
    assert!(accepted.as_array().unwrap().contains(&json!("string")), "{upload}");
    for id in CAPABILITIES {
        let schema = &manifest.capability(id).unwrap().input_schema;
        let example = &schema["default"]["example"];
        assert!(example["properties"].is_object(), "{id}: the example is wrapped in properties: {schema}");
        assert!(env.connector.validate_input(id, example).is_ok(), "{id}: its own example must validate");
    }

    let secret: Vec<&str> =
        manifest.connection_properties.iter().filter(|p| p.secret).map(|p| p.name.as_str()).collect();
    assert_eq!(secret, ["clientSecret", "apiSecret"]);
    let names: Vec<&str> = manifest.connection_properties.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "clientId",
            "clientSecret",
            "pod",
            "apiKey",
            "apiSecret",
            "environment",
            "authUrl",
            "platformApiUrl",
            "eventsApiUrl"
        ]
    );
    let inline = env
        .connector
        .connection("c", &json!({"clientSecret": "inline"}), &SecretStore::default(), &ConnectionOptions::default())
        .unwrap_err();
    assert_eq!(inline, ConfigError::InlineSecret { property: "clientSecret".into() });
}

#[tokio::test]
async fn accounts_round_trip_through_the_emulator() {
    let env = Env::start().await;
    let c = env.good();

    let seeded = env.ok(&c, "getAccount", json!({"accountId": "1"}), "k").await;
    assert_eq!((&seeded["id"], &seeded["name"]), (&json!(1), &json!("Antavo Loyalty Demo")), "{seeded}");

    let created = env.ok(&c, "createAccount", json!({"displayName": "E2E Loyalty"}), "k").await;
    assert_eq!(created["name"], "E2E Loyalty", "{created}");
    assert_eq!(created["data_type"], "account", "{created}");
    let id = created["id"].as_i64().unwrap_or_else(|| panic!("an integer id: {created}")).to_string();

    let read = env.ok(&c, "getAccount", json!({"accountId": id}), "k").await;
    assert_eq!(read, created, "getAccount returns what createAccount created");

    let updated = env.ok(&c, "updateAccount", json!({"accountId": id, "updatedName": "E2E Renamed"}), "k").await;
    assert_eq!((updated["id"].to_string(), &updated["name"]), (id.clone(), &json!("E2E Renamed")), "{updated}");
    let read = env.ok(&c, "getAccount", json!({"accountId": id}), "k").await;
    assert_eq!(read["name"], "E2E Renamed", "the emulator holds the new name: {read}");

    let duplicate = env.err(&c, "createAccount", json!({"displayName": "sandbox"}), "k").await;
    let InvokeError::Permanent { status, ref message, .. } = duplicate else {
        panic!("expected permanent: {duplicate}")
    };
    assert_eq!(status, Some(422));
    assert!(message.contains("Account name is not unique."), "mParticle's message is kept: {message}");

    let deleted = env.ok(&c, "deleteAccount", json!({"accountId": id}), "k").await;
    assert_eq!(deleted, json!({"accountId": id, "deleted": true, "status": 202}));
    let gone = env.err(&c, "getAccount", json!({"accountId": id}), "k").await;
    assert_eq!(gone.kind(), ErrorKind::NotFound, "the emulator no longer has the account: {gone}");
    assert_eq!(env.emulator.stats().tokens_issued, 1, "one token for the whole connection");
}

#[tokio::test]
async fn audiences_and_calculated_attributes_come_from_the_emulator() {
    let env = Env::start().await;
    let c = env.good();

    let audiences = env.ok(&c, "getAudiences", json!({"accountId": "1"}), "k").await;
    assert_eq!(ids(&audiences["audiences"]), [7622, 7623, 7624, 7625], "{audiences}");
    assert_eq!(audiences["audiences"][1]["name"], "Gold Tier Members");
    assert_eq!(audiences["audiences"][1]["size"], 1874);
    let missing = env.err(&c, "getAudiences", json!({"accountId": "999"}), "k").await;
    assert_eq!(missing.kind(), ErrorKind::NotFound, "{missing}");

    let all = env.ok(&c, "getCalculatedAttributes", json!({"workspace": "1234"}), "k").await;
    assert_eq!(ids(&all["calculatedAttributes"]), [5, 6, 7, 8, 9], "{all}");
    let filtered = env
        .ok(&c, "getCalculatedAttributes", json!({"workspace": "1234", "nameOptional": "Lifetime Points"}), "k")
        .await;
    let items = &filtered["calculatedAttributes"];
    assert_eq!(ids(items), [5], "only workspace 1234's Lifetime Points: {filtered}");
    assert_eq!(items[0]["name"], "Lifetime Points");
    assert_eq!(items[0]["active_definition"]["datapoint"]["event_name"], "Points Earned", "{filtered}");
    let empty = env.ok(&c, "getCalculatedAttributes", json!({"workspace": "1234", "nameOptional": "Nope"}), "k").await;
    assert_eq!(empty, json!({"calculatedAttributes": []}));
    let unknown = env.err(&c, "getCalculatedAttributes", json!({"workspace": "777"}), "k").await;
    assert_eq!(unknown.kind(), ErrorKind::NotFound, "{unknown}");
}

fn points_batch() -> Value {
    json!({
        "user_identities": {"customer_id": "1234"},
        "events": [{"event_type": "custom_event", "data": {
            "event_name": "Points Earned", "custom_event_type": "transaction", "custom_attributes": {"points": "100"}
        }}]
    })
}

#[tokio::test]
async fn uploaded_batches_are_recorded_once_per_idempotency_key() {
    let env = Env::start().await;
    let c = env.good();

    let first = env.ok(&c, "uploadEventBatch", json!({"eventBatch": points_batch()}), "run-1/upload").await;
    assert_eq!((&first["status"], &first["batches"], &first["endpoint"]), (&json!(202), &json!(1), &json!("events")));
    let id = first["sourceRequestId"].as_str().unwrap().to_string();
    let batches = env.batches();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].endpoint, "/v2/events");
    assert_eq!(batches[0].api_key, DEMO_API_KEY);
    let mut expected = points_batch();
    expected["environment"] = json!("development");
    expected["source_request_id"] = json!(id);
    assert_eq!(batches[0].batch, expected, "the batch as given, with environment and source_request_id filled in");

    // A retry of the same node execution sends the same source_request_id: the emulator drops it.
    let retry = env
        .invoke_raw(
            &c,
            "uploadEventBatch",
            &json!({"properties": {"eventBatch": points_batch()}}),
            &context("run-1/upload", 2),
        )
        .await
        .result
        .unwrap();
    assert_eq!(retry["sourceRequestId"], id.as_str());
    let stats = env.emulator.stats();
    assert_eq!((stats.accepted, stats.duplicates), (1, 1), "{stats:?}");
    assert_eq!(env.batches().len(), 1);

    // Another execution, another id.
    let other = env.ok(&c, "uploadEventBatch", json!({"eventBatch": points_batch()}), "run-2/upload").await;
    assert_ne!(other["sourceRequestId"], id.as_str());
    assert_eq!(env.batches().len(), 2);
    assert_eq!(env.batches()[1].batch["source_request_id"], other["sourceRequestId"]);

    // Bulk, as DaVinci's text area: JSON text of an array; a given environment and id are kept.
    let given = json!({"environment": "production", "source_request_id": "1f0e4a52-8a4e-4d0a-9d3f-6f1c2b3a4d5e",
                       "user_identities": {"email": "ada@example.com"}, "user_attributes": {"$city": "Budapest"}});
    let text = json!([points_batch(), given]).to_string();
    let bulk = env.ok(&c, "uploadEventBatch", json!({"eventBatch": text}), "run-1/bulk").await;
    assert_eq!((&bulk["batches"], &bulk["endpoint"]), (&json!(2), &json!("bulkevents")), "{bulk}");
    let recorded: Vec<RecordedBatch> = env.batches().into_iter().skip(2).collect();
    assert_eq!(recorded.len(), 2);
    assert!(recorded.iter().all(|b| b.endpoint == "/v2/bulkevents"));
    let sent_ids: Vec<&Value> = recorded.iter().map(|b| &b.batch["source_request_id"]).collect();
    assert_eq!(bulk["sourceRequestIds"], json!(sent_ids));
    assert_eq!(sent_ids[1], "1f0e4a52-8a4e-4d0a-9d3f-6f1c2b3a4d5e");
    assert_ne!(sent_ids[0], &json!(id), "a bulk batch gets its own id");
    assert_eq!(recorded[0].batch["environment"], "development");
    assert_eq!(recorded[1].batch["environment"], "production");
    assert_eq!(recorded[1].batch["user_attributes"], json!({"$city": "Budapest"}));
    assert_eq!(env.emulator.stats().rejected, 0);
}

#[tokio::test]
async fn marketing_events_and_user_attributes_reach_the_emulator() {
    let env = Env::start().await;
    let c = env.good();

    let payload = json!({"points": 100, "reason": "purchase", "double": true});
    let props = json!({"eventName": "point_add", "eventType": "transaction", "payload": payload,
                       "identityType": "email", "identityValue": "ada@example.com"});
    let out = env.ok(&c, "triggerMarketingCommunication", props.clone(), "run-1/notify").await;
    let id = out["sourceRequestId"].as_str().unwrap().to_string();
    assert_eq!(
        out,
        json!({"status": 202, "sourceRequestId": id, "sourceRequestIds": [id], "batches": 1, "endpoint": "events"})
    );
    let batch = &env.batches()[0].batch;
    assert_eq!(batch["source_request_id"], id.as_str());
    assert_eq!(batch["environment"], "development");
    assert_eq!(batch["user_identities"], json!({"email": "ada@example.com"}));
    let events = batch["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{batch}");
    assert_eq!(events[0]["event_type"], "custom_event");
    let data = &events[0]["data"];
    assert_eq!((&data["event_name"], &data["custom_event_type"]), (&json!("point_add"), &json!("transaction")));
    assert_eq!(data["custom_attributes"], json!({"points": "100", "reason": "purchase", "double": "true"}));

    // The same key again: the same id, counted as a duplicate, not recorded twice.
    let again = env.ok(&c, "triggerMarketingCommunication", props, "run-1/notify").await;
    assert_eq!(again["sourceRequestId"], id.as_str());
    assert_eq!(env.emulator.stats().duplicates, 1);
    assert_eq!(env.batches().len(), 1);

    // A UUID idempotency key is used as the source_request_id itself.
    let key = "4b1c8c52-5b52-4a55-9e1e-1f5e9c1d2a77";
    let attributes = json!({"$FirstName": "Ada", "$zip": "10016", "tier": "gold", "points_balance": 1200,
                            "interests": ["travel", "food"], "old_segment": null});
    let synced =
        env.ok(&c, "syncUserAttributes", json!({"identityValue": "member-42", "attributes": attributes}), key).await;
    assert_eq!(synced["sourceRequestId"], key);
    let batches = env.batches();
    assert_eq!(batches.len(), 2);
    let batch = &batches[1].batch;
    assert_eq!(batch["source_request_id"], key);
    assert_eq!(batch["environment"], "development");
    assert_eq!(batch["user_identities"], json!({"customer_id": "member-42"}), "customer_id by default");
    assert_eq!(
        batch["user_attributes"],
        json!({"$firstname": "Ada", "$zip": "10016", "tier": "gold", "points_balance": 1200, "interests": ["travel", "food"]}),
        "reserved $ names are kept (in mParticle's spelling)"
    );
    assert_eq!(batch["deleted_user_attributes"], json!(["old_segment"]));
    assert!(batch.get("events").is_none(), "{batch}");
    assert_eq!(env.emulator.stats().rejected, 0);
}

/// The optional inputs a new user misspelled: each would have been sent and silently ignored by the connector
/// (the event under the default identity, without attributes; every calculated attribute, unfiltered). The
/// host refuses them before the call, naming the field and what is declared.
#[tokio::test]
async fn misspelled_optional_inputs_are_refused_before_the_call() {
    let env = Env::start().await;
    let c = env.good();
    let event = json!({"eventName": "point_add", "eventType": "transaction", "identityValue": "m-1"});
    let cases = [
        ("triggerMarketingCommunication", "identitytype", json!("email"), "did you mean `identityType`?"),
        ("triggerMarketingCommunication", "paylod", json!({"points": 5}), "did you mean `payload`?"),
        (
            "getCalculatedAttributes",
            "name",
            json!("Lifetime Points"),
            "the declared properties are `workspace`, `nameOptional`",
        ),
    ];
    for (capability, typo, value, hint) in cases {
        let mut properties =
            if capability == "getCalculatedAttributes" { json!({"workspace": "1234"}) } else { event.clone() };
        properties[typo] = value;
        let invocation = env.invoke(&c, capability, properties, "k").await;
        assert!(invocation.log.is_empty(), "refused before the connector ran: {:?}", invocation.log);
        let error = invocation.result.unwrap_err();
        assert_eq!(pointers(&error), [format!("/properties/{typo}").as_str()], "{error}");
        assert_eq!(error.to_string(), format!("invalid input: /properties/{typo}: unknown property; {hint}"));
    }
    assert!(env.batches().is_empty());
    assert_eq!(env.emulator.stats().requests.values().sum::<u64>(), 0, "nothing reached mParticle");
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field() {
    let env = Env::start().await;
    let c = env.good();

    // Host level: the schema, before any instance runs.
    let missing = env.invoke(&c, "getAccount", json!({}), "k").await;
    assert!(missing.log.is_empty(), "refused before the connector ran: {:?}", missing.log);
    let error = missing.result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert_eq!(pointers(&error), ["/properties"]);
    assert!(error.to_string().contains("/properties: \"accountId\" is a required property"), "{error}");
    let wrong_type = env.err(&c, "createAccount", json!({"displayName": 5}), "k").await;
    assert_eq!(pointers(&wrong_type), ["/properties/displayName"], "{wrong_type}");
    let long_name = json!({"eventName": "x".repeat(300), "eventType": "transaction", "identityValue": "m"});
    let too_long = env.err(&c, "triggerMarketingCommunication", long_name, "k").await;
    assert_eq!(pointers(&too_long), ["/properties/eventName"], "{too_long}");

    // An input not wrapped in `properties` has a property the schema does not declare.
    let unwrapped = env.invoke_raw(&c, "getAccount", &json!({"accountId": "1"}), &context("k", 1)).await;
    assert!(unwrapped.log.is_empty(), "refused before the connector ran: {:?}", unwrapped.log);
    let error = unwrapped.result.unwrap_err();
    assert_eq!(pointers(&error), ["/accountId"]);
    assert!(
        error.to_string().contains("/accountId: unknown property; the declared properties are `properties`"),
        "{error}"
    );

    // Connector level: a connection with open inputs lets it through to the connector's own check.
    let unwrapped = env.invoke_raw(&env.open(), "getAccount", &json!({"accountId": "1"}), &context("k", 1)).await;
    let error = unwrapped.result.unwrap_err();
    assert_eq!(pointers(&error), ["/properties"]);
    assert!(error.to_string().contains("is required: the input is shaped {\"properties\": {...}}"), "{error}");

    let attributes = json!({"$tier": "gold", "tier": "gold"});
    let reserved =
        env.err(&c, "syncUserAttributes", json!({"identityValue": "m", "attributes": attributes}), "k").await;
    assert_eq!(pointers(&reserved), ["/properties/attributes/$tier"], "{reserved}");
    assert!(reserved.to_string().contains("not one of mParticle's reserved user attributes"), "{reserved}");

    let mut long_event = points_batch();
    long_event["events"][0]["data"]["event_name"] = json!("é".repeat(257));
    let error = env.err(&c, "uploadEventBatch", json!({"eventBatch": long_event}), "k").await;
    assert_eq!(pointers(&error), ["/properties/eventBatch/events/0/data/event_name"], "{error}");
    assert!(error.to_string().contains("the event name is 257 characters"), "{error}");

    let mut bogus = points_batch();
    bogus["events"][0]["data"]["custom_event_type"] = json!("bogus");
    let text = json!([points_batch(), bogus]).to_string();
    let error = env.err(&c, "uploadEventBatch", json!({"eventBatch": text}), "k").await;
    assert_eq!(pointers(&error), ["/properties/eventBatch/1/events/0/data/custom_event_type"], "{error}");
    let mut extra = points_batch();
    extra["schema_version"] = json!(2);
    let error = env.err(&c, "uploadEventBatch", json!({"eventBatch": extra}), "k").await;
    assert_eq!(pointers(&error), ["/properties/eventBatch/schema_version"], "{error}");
    let error = env.err(&c, "uploadEventBatch", json!({"eventBatch": "{not json"}), "k").await;
    assert_eq!(pointers(&error), ["/properties/eventBatch"], "{error}");
    assert!(error.to_string().contains("is not valid JSON"), "{error}");

    let stats = env.emulator.stats();
    assert!(stats.requests.is_empty(), "nothing is sent for an invalid input: {stats:?}");
}

#[tokio::test]
async fn bad_credentials_are_unauthorized() {
    let env = Env::start().await;

    let good = env.good();
    let checked = env.check(&good).await;
    assert!(checked.result.is_ok(), "check with good credentials: {:?}", checked);
    assert_eq!(env.requests("POST /oauth/token"), 1, "check mints a token");
    assert_eq!(env.requests("POST /v2/events"), 1, "check probes the Events API");

    let wrong_client = env.connection("wrong-client", &secrets(WRONG_CLIENT_SECRET, DEMO_API_SECRET));
    let error = env.err(&wrong_client, "getAccount", json!({"accountId": "1"}), "k").await;
    assert_eq!(error.kind(), ErrorKind::Unauthorized, "{error}");
    assert!(error.to_string().contains("clientId/clientSecret"), "{error}");
    let error = env.check(&wrong_client).await.result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unauthorized, "{error}");
    assert_eq!(env.emulator.stats().tokens_issued, 1, "no token for a wrong secret");

    let wrong_api = env.connection("wrong-api", &secrets(DEMO_CLIENT_SECRET, WRONG_API_SECRET));
    let accepted_before = env.emulator.stats().accepted;
    for (capability, properties) in [
        ("uploadEventBatch", json!({"eventBatch": points_batch()})),
        ("triggerMarketingCommunication", json!({"eventName": "e", "eventType": "other", "identityValue": "m"})),
        ("syncUserAttributes", json!({"identityValue": "m", "attributes": {"tier": "gold"}})),
    ] {
        let error = env.err(&wrong_api, capability, properties, "k").await;
        assert_eq!(error.kind(), ErrorKind::Unauthorized, "{capability}: {error}");
    }
    let error = env.check(&wrong_api).await.result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unauthorized, "{error}");
    assert!(error.to_string().contains("apiKey/apiSecret"), "{error}");
    assert_eq!(env.emulator.stats().accepted, accepted_before, "nothing recorded with a wrong API secret");

    // The good connection still works: a refused credential does not poison anything.
    assert!(env.invoke(&good, "getAccount", json!({"accountId": "1"}), "k").await.result.is_ok());
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retryable_kinds() {
    let env = Env::start().await;
    let c = env.good();

    env.emulator.add_fault(FaultRule::status(429).times(1).retry_after(Some(2)).path_prefix("/v1/"));
    let error = env.err(&c, "getAudiences", json!({"accountId": "1"}), "k").await;
    assert_eq!(error.kind(), ErrorKind::RateLimited, "{error}");
    assert_eq!(error.retry_after(), Some(Duration::from_secs(2)), "Retry-After: 2 -> 2 s");
    assert!(error.kind().is_retryable());

    env.emulator.add_fault(FaultRule::status(429).times(1).retry_after(Some(7)).path_prefix("/v2/"));
    let error = env.err(&c, "uploadEventBatch", json!({"eventBatch": points_batch()}), "run-1/limited").await;
    assert_eq!(error.kind(), ErrorKind::RateLimited, "{error}");
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
    assert!(env.batches().is_empty(), "a throttled batch is not recorded");

    for status in [500, 503] {
        env.emulator.add_fault(FaultRule::status(status).times(1).path_prefix("/v1/"));
        let error = env.err(&c, "getAccount", json!({"accountId": "1"}), "k").await;
        assert_eq!(error.kind(), ErrorKind::Transient, "{status}: {error}");
        assert!(error.to_string().contains(&format!("HTTP {status}")), "{error}");
        assert_eq!(error.retry_after(), None);

        env.emulator.add_fault(FaultRule::status(status).times(1).path_prefix("/v2/"));
        let error = env.err(&c, "uploadEventBatch", json!({"eventBatch": points_batch()}), "run-1/limited").await;
        assert_eq!(error.kind(), ErrorKind::Transient, "{status}: {error}");
    }
    assert_eq!(env.emulator.stats().faults_injected, 6);

    // Once the faults are gone, the retry of the node goes through, recorded once.
    let out = env.ok(&c, "uploadEventBatch", json!({"eventBatch": points_batch()}), "run-1/limited").await;
    assert_eq!(out["status"], 202);
    assert_eq!(env.batches().len(), 1);
    assert!(env.emulator.faults().is_empty());
}

#[tokio::test]
async fn stalls_past_the_request_timeout_are_transient_but_create_is_not_retried() {
    let limits = HttpLimits { request_timeout: Duration::from_millis(500), ..HttpLimits::default() };
    let env = Env::start_with(Duration::from_secs(5), limits).await;
    let c = env.good();

    env.emulator.add_fault(FaultRule::stall(2_000).path_prefix("/v1/"));
    let stalled = env.invoke(&c, "getAccount", json!({"accountId": "1"}), "k").await;
    let error = stalled.result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Transient, "a timed-out read may succeed later: {error}");
    assert!(stalled.duration < Duration::from_millis(1_800), "cut off by the request timeout: {:?}", stalled.duration);

    env.emulator.add_fault(FaultRule::stall(2_000).path_prefix("/v2/"));
    let error =
        env.err(&c, "syncUserAttributes", json!({"identityValue": "m", "attributes": {"tier": "gold"}}), "k").await;
    assert_eq!(error.kind(), ErrorKind::Transient, "a batch with a stable id may be re-sent: {error}");

    env.emulator.add_fault(FaultRule::stall(2_000).path_prefix("/v1/"));
    let error = env.err(&c, "createAccount", json!({"displayName": "Maybe Created"}), "k").await;
    let InvokeError::Permanent { status: None, ref message, .. } = error else { panic!("expected permanent: {error}") };
    assert!(message.contains("may or may not have been created"), "{message}");
    assert!(message.contains("check with getAccount"), "{message}");
    assert!(!error.kind().is_retryable());
    assert_eq!(env.requests("POST /v1/accounts"), 1, "createAccount was sent once, not retried");

    // Without a fault the same connection works again.
    assert!(env.invoke(&c, "getAccount", json!({"accountId": "1"}), "k").await.result.is_ok());
}

#[tokio::test]
async fn the_token_is_cached_and_refreshed_once_after_expiry() {
    let env = Env::start().await;
    let c = env.good();

    env.ok(&c, "getAccount", json!({"accountId": "1"}), "k").await;
    env.ok(&c, "getAudiences", json!({"accountId": "1"}), "k").await;
    assert_eq!(env.emulator.stats().tokens_issued, 1, "two calls on one connection, one token");

    assert_eq!(env.emulator.expire_tokens(), 1);
    let refreshed = env.invoke(&c, "getCalculatedAttributes", json!({"workspace": "1234"}), "k").await;
    assert!(refreshed.result.is_ok(), "{:?}", refreshed);
    assert_eq!(env.emulator.stats().tokens_issued, 2, "refreshed once after the 401");
    let log = format!("{:?}", refreshed.log);
    assert!(log.contains("refused the cached OAuth token"), "{log}");
    assert_eq!(env.requests("GET /platform/v2/workspaces/{ws}/calculatedattributes"), 2, "sent, refused, re-sent");

    env.ok(&c, "getAccount", json!({"accountId": "1"}), "k").await;
    assert_eq!(env.emulator.stats().tokens_issued, 2, "the new token is cached");
    assert_eq!(env.requests("POST /oauth/token"), 2);
}

#[tokio::test]
async fn no_secret_appears_in_errors_logs_or_outputs() {
    let env = Env::start().await;
    let stores = [
        ("good", secrets(DEMO_CLIENT_SECRET, DEMO_API_SECRET)),
        ("wrong", secrets(WRONG_CLIENT_SECRET, WRONG_API_SECRET)),
    ];
    // Every path: success, refused credentials, invalid input, a fault with a body. `Env::invoke` and
    // `Env::check` assert that no secret shows in the result, the error message or the log.
    let mut texts = Vec::new();
    for (name, store) in &stores {
        let connection = env.connection(name, store);
        let debug = format!("{connection:?}");
        assert!(debug.contains("CSECRET") && debug.contains("ASECRET"), "references are shown: {debug}");
        for secret in [DEMO_CLIENT_SECRET, DEMO_API_SECRET, WRONG_CLIENT_SECRET, WRONG_API_SECRET] {
            assert!(!debug.contains(secret), "{debug}");
        }
        texts.push(format!("{:?}", env.check(&connection).await));
        for (capability, properties) in [
            ("getAccount", json!({"accountId": "1"})),
            ("uploadEventBatch", json!({"eventBatch": points_batch()})),
            ("syncUserAttributes", json!({"identityValue": "m", "attributes": {"$nope": 1}})),
        ] {
            texts.push(format!("{:?}", env.invoke(&connection, capability, properties, "k").await));
        }
        env.emulator.add_fault(FaultRule::status(503).path_prefix("/oauth/"));
        let fresh = env.connection(&format!("fresh-{name}"), store);
        let faulted = env.invoke(&fresh, "getAccount", json!({"accountId": "1"}), "k").await;
        assert_eq!(faulted.result.as_ref().unwrap_err().kind(), ErrorKind::Transient, "{faulted:?}");
        texts.push(format!("{faulted:?}"));
    }
    let all = texts.join("\n");
    // check, getAccount and uploadEventBatch of the wrong connection (its syncUserAttributes input is invalid).
    assert_eq!(all.matches("Unauthorized {").count(), 3, "the wrong secrets were refused: {all}");
    assert!(all.contains("source: Http"), "the HTTP calls were logged: {all}");
}

fn member_event(member: &str) -> Value {
    json!({"properties": {"eventName": "point_add", "eventType": "transaction", "payload": {"points": 5},
                          "identityType": "customer_id", "identityValue": member}})
}

#[tokio::test]
async fn concurrent_event_calls_share_bulk_requests_and_keep_their_own_results() {
    let env = Env::start().await;
    let c = env.good();
    assert!(env.connector.batches("triggerMarketingCommunication"));
    assert!(!env.connector.batches("getAccount"), "Platform API calls are not batched");

    // Forty calls at once from forty runs: the first goes out alone, the rest gather behind it.
    let inputs: Vec<Value> = (0..40).map(|i| member_event(&format!("m{i}"))).collect();
    let contexts: Vec<InvocationContext> = (0..40).map(|i| context(&format!("run-{i}/send"), 1)).collect();
    let calls = inputs
        .iter()
        .zip(&contexts)
        .map(|(input, context)| env.connector.invoke_batched(&c, "triggerMarketingCommunication", input, context));
    let invocations = futures::future::join_all(calls).await;
    let mut ids = Vec::new();
    for invocation in &invocations {
        assert_no_secrets(invocation);
        let output = invocation.result.as_ref().unwrap_or_else(|e| panic!("{e}\n{:#?}", invocation.log));
        assert_eq!(output["batches"], 1);
        ids.push(output["sourceRequestId"].as_str().unwrap().to_string());
    }
    let requests = env.requests("POST /v2/events") + env.requests("POST /v2/bulkevents");
    assert!(env.requests("POST /v2/bulkevents") >= 1 && requests <= 3, "40 calls took {requests} requests");
    let recorded = env.batches();
    assert_eq!(recorded.len(), 40);
    let mut recorded_ids: Vec<String> =
        recorded.iter().map(|r| r.batch["source_request_id"].as_str().unwrap().to_string()).collect();
    recorded_ids.sort();
    ids.sort();
    assert_eq!(recorded_ids, ids, "each call's batch carries its own source_request_id");
    assert!(
        invocations
            .iter()
            .any(|i| i.log.iter().any(|l| l.message.contains("calls") && l.message.contains("/bulkevents")))
    );
}

#[tokio::test]
async fn a_batch_fails_its_bad_calls_alone_and_a_throttled_request_all_of_its_calls() {
    let env = Env::start().await;
    let c = env.good();
    let mut inputs: Vec<Value> = (0..5).map(|i| member_event(&format!("m{i}"))).collect();
    inputs[2] = json!({"properties": {"eventName": "point_add", "identityValue": "m2", "identityType": "nope"}});
    let contexts: Vec<InvocationContext> = (0..5).map(|i| context(&format!("run-{i}/send"), 1)).collect();
    let items: Vec<(&Value, &InvocationContext)> = inputs.iter().zip(&contexts).collect();

    env.emulator.add_fault(FaultRule::status(429).times(1).retry_after(Some(4)).path_prefix("/v2/"));
    let throttled = env.connector.invoke_batch(&c, "triggerMarketingCommunication", &items).await;
    assert_eq!(throttled.len(), 5);
    assert_eq!(throttled[2].result.as_ref().unwrap_err().kind(), ErrorKind::InvalidInput, "refused by the schema");
    for (i, invocation) in throttled.iter().enumerate().filter(|(i, _)| *i != 2) {
        let error = invocation.result.as_ref().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::RateLimited, "call {i}: {error}");
        assert_eq!(error.retry_after(), Some(Duration::from_secs(4)));
    }
    assert!(env.batches().is_empty());

    // The resend of the same calls goes through as one bulk request; a second resend is de-duplicated.
    for round in 0..2 {
        let sent = env.connector.invoke_batch(&c, "triggerMarketingCommunication", &items).await;
        assert!(sent.iter().enumerate().all(|(i, s)| (i == 2) != s.result.is_ok()), "round {round}");
    }
    assert_eq!(env.requests("POST /v2/bulkevents"), 3);
    assert_eq!(env.batches().len(), 4);
    assert_eq!(env.emulator.stats().duplicates, 4);
}

#[tokio::test]
async fn a_batch_that_runs_out_of_memory_runs_each_call_alone() {
    let env = Env::start().await;
    let c = env.good();
    // 100 calls (a full batch) of about 120 KB each: together far over the test runtime's 32 MiB, each alone well under.
    let inputs: Vec<Value> = (0..100)
        .map(|i| {
            let mut input = member_event(&format!("m{i}"));
            let payload: serde_json::Map<String, Value> =
                (0..30).map(|a| (format!("a{a}"), json!(format!("{i}-{a}-").repeat(1000)[..3900]))).collect();
            input["properties"]["payload"] = Value::Object(payload);
            input
        })
        .collect();
    let contexts: Vec<InvocationContext> = (0..100).map(|i| context(&format!("run-{i}/send"), 1)).collect();
    let items: Vec<(&Value, &InvocationContext)> = inputs.iter().zip(&contexts).collect();

    let sent = env.connector.invoke_batch(&c, "triggerMarketingCommunication", &items).await;
    assert_eq!(sent.len(), 100);
    for (i, invocation) in sent.iter().enumerate() {
        assert_no_secrets(invocation);
        let output = invocation.result.as_ref().unwrap_or_else(|e| panic!("call {i}: {e}\n{:#?}", invocation.log));
        assert_eq!(output["endpoint"], "events", "call {i} ran alone");
        let note = &invocation.log[0];
        assert!(note.message.contains("100 calls of triggerMarketingCommunication together reached the memory limit"));
        assert_eq!(note.source, LogSource::Host);
    }
    let recorded = env.batches();
    assert_eq!(recorded.len(), 100, "each call's batch reached mParticle once");
    let attributes = recorded[7].batch["events"][0]["data"]["custom_attributes"].as_object().unwrap();
    assert_eq!((attributes.len(), attributes["a3"].as_str().unwrap().len()), (30, 3900));
}

#[tokio::test]
async fn a_call_whose_batch_was_stopped_midway_is_told_to_retry() {
    let env = Env::start().await;
    let connection = Arc::new(env.good());
    // Every request stalls, so that batches are in flight long enough to be stopped.
    env.emulator.add_fault(FaultRule::stall(800).times(2).path_prefix("/v2/"));
    let call = |key: &str| {
        let (connector, connection) = (env.connector.clone(), connection.clone());
        let (input, context) = (member_event(key), context(&format!("{key}/send"), 1));
        tokio::spawn(async move {
            connector.invoke_batched(&connection, "triggerMarketingCommunication", &input, &context).await
        })
    };
    let first = call("a");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // b and c gather behind a's request; b, first in line, sends both, and is stopped while it waits.
    let sender = call("b");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let passenger = call("c");
    assert!(first.await.unwrap().result.is_ok());
    tokio::time::sleep(Duration::from_millis(300)).await;
    sender.abort();
    let error = passenger.await.unwrap().result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Transient, "{error}");
    assert!(error.to_string().contains("stopped before it finished"), "{error}");
    assert_eq!(env.requests("POST /v2/bulkevents"), 1, "b and c went out together");
}
