//! `flowhost connector test`: the acceptance suite every connector passes, whatever its language (in the spirit
//! of Airbyte's connector acceptance tests). It loads the component in a runtime whose `http.fetch` never
//! leaves the process (a stub remote answers), and checks:
//! - `describe`: a semantic version, unique capability ids, every schema compiles, every schema's `example`
//!   validates against it, credential-like properties marked secret;
//! - `check` with a missing config, and with one of the wrong types, fails with `invalid-config` or
//!   `unauthorized`, without crashing; with credentials the remote refuses (401), `unauthorized`;
//! - every capability refuses an input its schema refuses, by itself (the host's validation skipped), with
//!   JSON pointers;
//! - every capability's example runs within the sandbox's limits (no crash, timeout or memory limit), and a
//!   successful output fits the output schema;
//! - a batched capability's `invoke-batch` returns one result per item, in order;
//! - no secret of the connection appears in any output, error or log line.

use flowhost::connector::egress::EgressPolicy;
use flowhost::connector::{
    ConnectionOptions, Connector, FetchRequest, FetchResponse, HttpTransport, Invocation, InvocationContext,
    InvokeError, Manifest, Runtime, RuntimeConfig, SecretStore, TransportFuture, unwrap_davinci,
};
use serde_json::{Map, Value, json};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    /// Not a failure, but worth a look (e.g. a capability without an example).
    Warn,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub outcome: Outcome,
    pub name: String,
    pub detail: String,
}

/// What the suite found.
#[derive(Debug, Default)]
pub struct Report {
    pub connector: String,
    pub checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, outcome: Outcome, name: impl Into<String>, detail: impl Into<String>) {
        self.checks.push(Check { outcome, name: name.into(), detail: detail.into() });
    }

    fn pass(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.add(Outcome::Pass, name, detail)
    }

    fn fail(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.add(Outcome::Fail, name, detail)
    }

    fn warn(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.add(Outcome::Warn, name, detail)
    }

    fn check(&mut self, ok: bool, name: impl Into<String>, detail: impl Into<String>) {
        self.add(if ok { Outcome::Pass } else { Outcome::Fail }, name, detail)
    }

    /// Whether every check passed (warnings allowed).
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.outcome != Outcome::Fail)
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.checks.iter().filter(|c| c.outcome == outcome).count()
    }

    /// The report as printed.
    pub fn render(&self) -> String {
        let mut out = format!("Acceptance suite: {}\n\n", self.connector);
        for check in &self.checks {
            let tag = match check.outcome {
                Outcome::Pass => "PASS",
                Outcome::Fail => "FAIL",
                Outcome::Warn => "WARN",
            };
            let _ = writeln!(out, "{tag}  {}: {}", check.name, check.detail);
        }
        let _ = writeln!(
            out,
            "\n{}: {} checks passed, {} failed, {} warnings",
            if self.passed() { "passed" } else { "FAILED" },
            self.count(Outcome::Pass),
            self.count(Outcome::Fail),
            self.count(Outcome::Warn)
        );
        out
    }
}

/// The stub remote: answers every request with `status` (200 and `{}` by default), counting requests.
struct StubRemote {
    status: AtomicU16,
    requests: AtomicUsize,
}

impl HttpTransport for StubRemote {
    fn send<'a>(&'a self, _request: &'a FetchRequest, _policy: &'a EgressPolicy) -> TransportFuture<'a> {
        Box::pin(async move {
            self.requests.fetch_add(1, Ordering::SeqCst);
            let status = self.status.load(Ordering::SeqCst);
            let body =
                if status == 200 { b"{}".to_vec() } else { br#"{"error":"refused by the acceptance suite"}"#.to_vec() };
            Ok(FetchResponse { status, headers: vec![("content-type".into(), "application/json".into())], body })
        })
    }
}

/// What the suite runs with.
pub struct SuiteOptions {
    /// A working connection config (secrets by reference, resolved from `secrets`); without it, one is made
    /// from the connection properties' schemas, with marker values for the secrets.
    pub config: Option<Value>,
    pub secrets: SecretStore,
    pub runtime: RuntimeConfig,
}

/// Words that mark a property as a credential.
/// (Not `apiKey` alone: some services pair a public key with a secret, as mParticle's Events API does.)
const CREDENTIAL_WORDS: &[&str] = &["secret", "password", "token", "privatekey", "credential", "passphrase"];

/// Runs the suite over a component's bytes. They live as long as the process (as a built-in connector's do),
/// so that runs over the same component in one process compile it once.
pub async fn run(bytes: &'static [u8], name: &str, options: SuiteOptions) -> Report {
    let mut report = Report { connector: name.to_string(), ..Report::default() };
    let remote = Arc::new(StubRemote { status: AtomicU16::new(200), requests: AtomicUsize::new(0) });
    let runtime = match Runtime::with_transport(options.runtime.clone(), remote.clone()) {
        Ok(runtime) => runtime,
        Err(error) => {
            report.fail("runtime", error);
            return report;
        }
    };
    let connector = match runtime.load_embedded(bytes).await {
        Ok(connector) => connector,
        Err(error) => {
            report.fail("load", format!("the component cannot be loaded: {error}"));
            return report;
        }
    };
    let manifest = connector.manifest().clone();
    report.connector = format!("{} {} ({name})", manifest.id, manifest.version);
    report.pass("load", "the component loads, describes itself, and its input and config schemas compile");
    describe_checks(&manifest, &mut report);

    let mut suite = Suite { connector, remote, report, seen: Vec::new(), secrets: Vec::new() };
    let (config, secrets) = match options.config {
        Some(config) => (config, options.secrets),
        None => {
            // Every property if the host accepts that config, else the required ones and those with examples.
            let (full, secrets) = synthesize_config(&manifest, true);
            if connector_accepts(&suite.connector, &full, &secrets) {
                (full, secrets)
            } else {
                synthesize_config(&manifest, false)
            }
        }
    };
    suite.secrets = secret_values(&manifest, &config, &secrets);
    suite.check_checks(&config, &secrets).await;
    suite.input_checks(&config, &secrets).await;
    suite.example_checks(&config, &secrets).await;
    suite.secret_checks();
    suite.report
}

struct Suite {
    connector: Arc<Connector>,
    remote: Arc<StubRemote>,
    report: Report,
    /// Every output, error and log line the connector produced, for the secrets check.
    seen: Vec<String>,
    secrets: Vec<String>,
}

fn context(node: &str, n: u32) -> InvocationContext {
    InvocationContext {
        run_id: format!("acceptance-{n}"),
        node_id: node.to_string(),
        idempotency_key: format!("acceptance-{n}/{node}"),
        attempt: 1,
    }
}

/// Whether an error means the connector broke down rather than answered.
fn broke(error: &InvokeError) -> bool {
    matches!(
        error,
        InvokeError::Crashed { .. }
            | InvokeError::Timeout { .. }
            | InvokeError::MemoryLimit { .. }
            | InvokeError::OutputTooLarge { .. }
    )
}

impl Suite {
    fn record<T: std::fmt::Debug>(&mut self, invocation: &Invocation<T>) {
        match &invocation.result {
            Ok(value) => self.seen.push(format!("{value:?}")),
            Err(error) => self.seen.push(format!("{error:?}")),
        }
        self.seen.extend(invocation.log.iter().map(|line| line.message.clone()));
    }

    fn options() -> ConnectionOptions {
        // The stub remote answers every request, so private addresses in a config cannot reach anything.
        ConnectionOptions { allow_private: true, ..ConnectionOptions::default() }
    }

    async fn check_with(&mut self, config: &Value, secrets: &SecretStore) -> Result<Invocation<()>, String> {
        let connection = self
            .connector
            .connection_unvalidated("acceptance", config, secrets, &Self::options())
            .map_err(|e| e.to_string())?;
        let invocation = self.connector.check(&connection).await;
        self.record(&invocation);
        Ok(invocation)
    }

    async fn check_checks(&mut self, config: &Value, secrets: &SecretStore) {
        let manifest = self.connector.manifest().clone();
        let requires = manifest.connection_properties.iter().any(|p| p.required);

        // A missing config.
        match self.check_with(&json!({}), secrets).await {
            Err(error) => self.report.fail("check: missing config", error),
            Ok(invocation) => match invocation.result {
                Err(InvokeError::InvalidConfig { .. } | InvokeError::Unauthorized { .. }) => {
                    self.report.pass("check: missing config", "refused with invalid-config or unauthorized")
                }
                Ok(()) if !requires => self.report.pass("check: missing config", "accepted: no property is required"),
                Ok(()) => self.report.fail("check: missing config", "accepted although properties are required"),
                Err(error) => self.report.fail(
                    "check: missing config",
                    format!("expected invalid-config or unauthorized, got {}: {error}", error.kind()),
                ),
            },
        }

        // Every property of the wrong type (a secret, given by reference, is a string: a wrong one).
        let wrong_secret = SecretStore::from_pairs([("ACCEPTANCE_WRONG_SECRET", "not-the-secret")]);
        let wrong: Map<String, Value> = manifest
            .connection_properties
            .iter()
            .map(|p| {
                let value = match p.schema.get("type").and_then(Value::as_str) {
                    _ if p.secret => json!({"secret": "ACCEPTANCE_WRONG_SECRET"}),
                    Some("string") | None => json!(12345),
                    _ => json!("not-the-right-type"),
                };
                (p.name.clone(), value)
            })
            .collect();
        if !wrong.is_empty() {
            match self.check_with(&Value::Object(wrong), &wrong_secret).await {
                Err(error) => self.report.fail("check: config of the wrong types", error),
                Ok(invocation) => match invocation.result {
                    Err(InvokeError::InvalidConfig { .. } | InvokeError::Unauthorized { .. }) => self
                        .report
                        .pass("check: config of the wrong types", "refused with invalid-config or unauthorized"),
                    Ok(()) => self.report.fail("check: config of the wrong types", "accepted"),
                    Err(error) => self.report.fail(
                        "check: config of the wrong types",
                        format!("expected invalid-config or unauthorized, got {}: {error}", error.kind()),
                    ),
                },
            }
        }

        // Credentials the remote refuses.
        self.remote.status.store(401, Ordering::SeqCst);
        let before = self.remote.requests.load(Ordering::SeqCst);
        let refused = self.check_with(config, secrets).await;
        let asked = self.remote.requests.load(Ordering::SeqCst) > before;
        self.remote.status.store(200, Ordering::SeqCst);
        match refused {
            Err(error) => self.report.fail("check: refused credentials", format!("the config cannot be used: {error}")),
            Ok(invocation) => match invocation.result {
                Err(InvokeError::Unauthorized { .. }) => {
                    self.report.pass("check: refused credentials", "a 401 from the remote is unauthorized")
                }
                Ok(()) if !asked => self.report.warn(
                    "check: refused credentials",
                    "check sent no request with this config, so it cannot tell whether the credentials work",
                ),
                Err(error) if !broke(&error) && !asked => self.report.pass(
                    "check: refused credentials",
                    format!("refused without a request ({}): {error}", error.kind()),
                ),
                Ok(()) => self.report.fail("check: refused credentials", "accepted although the remote answered 401"),
                Err(error) => self.report.fail(
                    "check: refused credentials",
                    format!("a 401 should be unauthorized, got {}: {error}", error.kind()),
                ),
            },
        }

        // The working config, against a remote that accepts everything.
        match self.check_with(config, secrets).await {
            Err(error) => self.report.fail("check: working config", error),
            Ok(invocation) => match invocation.result {
                Ok(()) => self.report.pass("check: working config", "accepted"),
                Err(error) if broke(&error) => {
                    self.report.fail("check: working config", format!("{}: {error}", error.kind()))
                }
                Err(error) => self.report.warn(
                    "check: working config",
                    format!("refused ({}: {error}); give a working config with --config", error.kind()),
                ),
            },
        }
    }

    async fn input_checks(&mut self, config: &Value, secrets: &SecretStore) {
        let connection = match self.connector.connection_unvalidated("acceptance", config, secrets, &Self::options()) {
            Ok(connection) => connection,
            Err(error) => return self.report.fail("inputs", format!("the config cannot be used: {error}")),
        };
        let capabilities = self.connector.manifest().capabilities.clone();
        for (n, capability) in capabilities.iter().enumerate() {
            let name = format!("invalid input: {}", capability.id);
            let Some(input) = invalid_input(&self.connector, &capability.id, &capability.input_schema) else {
                self.report.warn(name, "its schema accepts any input: nothing to refuse");
                continue;
            };
            let invocation = self
                .connector
                .invoke_unvalidated(&connection, &capability.id, &input, &context("invalid", n as u32))
                .await;
            self.record(&invocation);
            match invocation.result {
                Err(InvokeError::InvalidInput { errors }) => {
                    let bad: Vec<&str> = errors
                        .iter()
                        .map(|e| e.pointer.as_str())
                        .filter(|p| !(p.is_empty() || p.starts_with('/')))
                        .collect();
                    if errors.is_empty() {
                        self.report.fail(name, "invalid-input without any field");
                    } else if !bad.is_empty() {
                        self.report.fail(name, format!("not JSON pointers: {bad:?}"));
                    } else {
                        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
                        self.report.pass(name, format!("{input} refused at {pointers:?}"));
                    }
                }
                Ok(_) => self.report.fail(name, format!("{input} was accepted")),
                Err(error) => {
                    self.report.fail(name, format!("{input}: expected invalid-input, got {}: {error}", error.kind()))
                }
            }
        }
    }

    async fn example_checks(&mut self, config: &Value, secrets: &SecretStore) {
        let connection = match self.connector.connection("acceptance", config, secrets, &Self::options()) {
            Ok(connection) => connection,
            Err(error) => return self.report.fail("examples", format!("the config is refused: {error}")),
        };
        let capabilities = self.connector.manifest().capabilities.clone();
        for (n, capability) in capabilities.iter().enumerate() {
            let name = format!("example: {}", capability.id);
            let Some(example) = unwrap_davinci(&capability.input_schema).get("example").cloned() else {
                self.report.warn(name, "no example in the input schema: nothing to run");
                continue;
            };
            let invocation =
                self.connector.invoke(&connection, &capability.id, &example, &context("example", n as u32)).await;
            self.record(&invocation);
            let ms = invocation.duration.as_secs_f64() * 1e3;
            match &invocation.result {
                Ok(output) => match output_errors(&capability.output_schema, output) {
                    None => self.report.pass(name, format!("succeeded in {ms:.1} ms, output fits the output schema")),
                    Some(errors) => {
                        self.report.fail(name, format!("the output does not fit the output schema: {errors}"))
                    }
                },
                Err(error) if broke(error) => self.report.fail(name, format!("{}: {error}", error.kind())),
                Err(error) => self.report.pass(
                    name,
                    format!("answered {} in {ms:.1} ms within the sandbox's limits ({error})", error.kind()),
                ),
            }
            if self.connector.batches(&capability.id) {
                self.batch_check(&connection, &capability.id, &example).await;
            }
        }
    }

    /// Three items, the middle one invalid: three results, the middle one invalid-input, the others not.
    async fn batch_check(&mut self, connection: &flowhost::connector::Connection, capability: &str, example: &Value) {
        let name = format!("batch order: {capability}");
        let invalid = json!("not an object");
        let contexts: Vec<InvocationContext> = (0..3).map(|i| context("batch", 100 + i)).collect();
        let items = [(example, &contexts[0]), (&invalid, &contexts[1]), (example, &contexts[2])];
        let Some(results) = self.connector.invoke_batch_unvalidated(connection, capability, &items).await else {
            return;
        };
        for invocation in &results {
            self.record(invocation);
        }
        let kinds: Vec<String> =
            results.iter().map(|i| i.result.as_ref().map_or_else(|e| e.kind().to_string(), |_| "ok".into())).collect();
        let ordered = results.len() == 3
            && matches!(results[1].result, Err(InvokeError::InvalidInput { .. }))
            && [&results[0], &results[2]]
                .iter()
                .all(|i| !matches!(&i.result, Err(e) if matches!(e, InvokeError::InvalidInput { .. }) || broke(e)));
        self.report.check(ordered, name, format!("[example, invalid, example] gave {kinds:?}"));
    }

    fn secret_checks(&mut self) {
        if self.secrets.is_empty() {
            self.report.pass("secrets", "the connection has no secret values to leak");
            return;
        }
        let leaked = self.seen.iter().find(|line| {
            line.contains(flowhost::connector::secrets::REDACTED)
                || self.secrets.iter().any(|s| line.contains(s.as_str()))
        });
        match leaked {
            None => {
                self.report.pass("secrets", format!("no secret in {} outputs, errors and log lines", self.seen.len()))
            }
            Some(line) => self.report.fail(
                "secrets",
                format!("a secret of the connection appeared (the host redacted it): {}", truncate(line, 200)),
            ),
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// The checks of the manifest alone.
fn describe_checks(manifest: &Manifest, report: &mut Report) {
    report.check(
        semver::Version::parse(&manifest.version).is_ok(),
        "describe: version",
        format!(
            "{:?} {} a semantic version",
            manifest.version,
            if semver::Version::parse(&manifest.version).is_ok() { "is" } else { "is not" }
        ),
    );
    let id_ok = !manifest.id.is_empty()
        && manifest.id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !manifest.id.starts_with('-');
    report.check(id_ok, "describe: id", format!("{:?} (lower case, digits and dashes)", manifest.id));

    let mut ids: Vec<&str> = manifest.capabilities.iter().map(|c| c.id.as_str()).collect();
    ids.sort_unstable();
    let duplicates: Vec<&str> = ids.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
    report.check(
        duplicates.is_empty() && !ids.is_empty() && ids.iter().all(|id| !id.is_empty()),
        "describe: capability ids",
        if duplicates.is_empty() { format!("{} unique ids", ids.len()) } else { format!("repeated: {duplicates:?}") },
    );

    let mut schemas = 0;
    let mut problems = Vec::new();
    let mut examples = 0;
    let mut all: Vec<(String, &Value)> = Vec::new();
    for property in &manifest.connection_properties {
        all.push((format!("connection property {}", property.name), &property.schema));
    }
    for capability in &manifest.capabilities {
        all.push((format!("{} input", capability.id), unwrap_davinci(&capability.input_schema)));
        all.push((format!("{} output", capability.id), &capability.output_schema));
    }
    for (what, schema) in all {
        schemas += 1;
        let validator = match jsonschema::validator_for(schema) {
            Ok(validator) => validator,
            Err(error) => {
                problems.push(format!("{what}: the schema does not compile: {error}"));
                continue;
            }
        };
        let mut listed: Vec<&Value> =
            schema.get("examples").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default();
        listed.extend(schema.get("example"));
        for example in listed {
            examples += 1;
            if let Some(error) = validator.iter_errors(example).next() {
                problems.push(format!(
                    "{what}: its example does not validate: {error} at {:?}",
                    error.instance_path().to_string()
                ));
            }
        }
    }
    report.check(
        problems.is_empty(),
        "describe: schemas and examples",
        if problems.is_empty() {
            format!("{schemas} schemas compile, {examples} examples validate")
        } else {
            problems.join("; ")
        },
    );

    let unmarked: Vec<&str> = manifest
        .connection_properties
        .iter()
        .filter(|p| !p.secret)
        .filter(|p| {
            let name = p.name.to_ascii_lowercase().replace(['_', '-'], "");
            CREDENTIAL_WORDS.iter().any(|word| name.contains(word))
        })
        .map(|p| p.name.as_str())
        .collect();
    report.check(
        unmarked.is_empty(),
        "describe: secret properties",
        if unmarked.is_empty() {
            let secret: Vec<&str> =
                manifest.connection_properties.iter().filter(|p| p.secret).map(|p| p.name.as_str()).collect();
            format!("credentials marked secret: {secret:?}")
        } else {
            format!("credential-like properties not marked secret: {unmarked:?}")
        },
    );
}

/// A config made from the connection properties' schemas: each secret a marker value (by reference), each
/// other property its schema's example, default, first enum value, or a value of its type.
fn synthesize_config(manifest: &Manifest, every_property: bool) -> (Value, SecretStore) {
    let mut config = Map::new();
    let mut pairs = Vec::new();
    for property in &manifest.connection_properties {
        if property.secret {
            let name = format!("ACCEPTANCE_{}", property.name.to_ascii_uppercase());
            pairs.push((name.clone(), format!("acceptance-secret-{}-7f3a9c", property.name)));
            config.insert(property.name.clone(), json!({ "secret": name }));
            continue;
        }
        let schema = &property.schema;
        let value = schema
            .get("example")
            .or_else(|| schema.get("examples").and_then(|e| e.get(0)))
            .or_else(|| schema.get("default"))
            .or_else(|| schema.get("const"))
            .or_else(|| schema.get("enum").and_then(|e| e.get(0)))
            .cloned()
            .or_else(|| match schema.get("type").and_then(Value::as_str) {
                Some("integer") | Some("number") => Some(json!(1)),
                Some("boolean") => Some(json!(false)),
                Some("string") if property.required || every_property => {
                    let pattern = schema.get("pattern").and_then(Value::as_str).unwrap_or_default();
                    let url = schema.get("format").and_then(Value::as_str) == Some("uri")
                        || pattern.to_ascii_lowercase().contains("http")
                        || pattern.contains("[Hh][Tt][Tt][Pp]");
                    // The stub remote answers every request: this host is never resolved.
                    Some(if url {
                        json!("https://acceptance.example.com")
                    } else {
                        json!(format!("acceptance-{}", property.name))
                    })
                }
                _ => None,
            });
        if let Some(value) = value {
            config.insert(property.name.clone(), value);
        }
    }
    (Value::Object(config), SecretStore::from_pairs(pairs))
}

fn connector_accepts(connector: &Connector, config: &Value, secrets: &SecretStore) -> bool {
    connector.connection("acceptance", config, secrets, &Suite::options()).is_ok()
}

/// The values of a config's secret references, to look for in what the connector prints.
fn secret_values(manifest: &Manifest, config: &Value, secrets: &SecretStore) -> Vec<String> {
    use secrecy::ExposeSecret;
    manifest
        .connection_properties
        .iter()
        .filter(|p| p.secret)
        .filter_map(|p| config.get(&p.name)?.get("secret")?.as_str())
        .filter_map(|name| secrets.get(name).map(|s| s.expose_secret().to_string()))
        .filter(|value| value.len() >= 4)
        .collect()
}

/// An input the capability's schema refuses: its example with one value of the wrong type, else `{}`, else a
/// JSON string. `None` when the schema refuses none of them.
fn invalid_input(connector: &Connector, capability: &str, schema: &Value) -> Option<Value> {
    let refused = |input: &Value| connector.input_errors(capability, input, false).is_some_and(|e| !e.is_empty());
    let mut candidates = Vec::new();
    if let Some(example) = unwrap_davinci(schema).get("example") {
        mutations(example, &mut Vec::new(), example, &mut candidates);
    }
    candidates.push(json!({}));
    candidates.push(json!("not an object"));
    candidates.into_iter().find(|c| refused(c))
}

/// Copies of `root` with the value at each path of `value` replaced by one of another type.
fn mutations(root: &Value, path: &mut Vec<String>, value: &Value, out: &mut Vec<Value>) {
    if let Value::Object(map) = value {
        for (key, child) in map {
            path.push(key.clone());
            let wrong = match child {
                Value::String(_) => json!(12345),
                _ => json!("wrong type"),
            };
            let mut copy = root.clone();
            let pointer: String =
                path.iter().map(|k| format!("/{}", k.replace('~', "~0").replace('/', "~1"))).collect();
            if let Some(slot) = copy.pointer_mut(&pointer) {
                *slot = wrong;
                out.push(copy);
            }
            mutations(root, path, child, out);
            path.pop();
        }
    }
}

/// Why an output does not fit its schema; `None` when it does (or the schema does not compile, which the
/// describe checks report).
fn output_errors(schema: &Value, output: &Value) -> Option<String> {
    let validator = jsonschema::validator_for(schema).ok()?;
    let errors: Vec<String> =
        validator.iter_errors(output).map(|e| format!("{} at {:?}", e, e.instance_path().to_string())).collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}
