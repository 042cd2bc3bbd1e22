//! The connector runtime: loads components (compiled once, cached in memory and on disk, pre-instantiated),
//! sets up connections (config validated, secrets resolved, egress policy built), and invokes capabilities
//! in a fresh sandboxed instance each time.

use super::bindings;
use super::component_cache::{DiskCache, LoadSource, compile_or_load, content_hash, default_cache_dir};
use super::egress::{EgressPolicy, HostPattern};
use super::engine::{EPOCH_TICK, build_engine, start_epoch_ticker};
use super::error::{ConfigError, FieldError, InvokeError, LoadError};
use super::http_client::{Fetcher, HttpClients, HttpLimits, HttpTransport};
use super::kv_cache::KvCache;
use super::manifest::{Manifest, Validators};
use super::sandbox::{ConnectionScope, LogLevel, LogLine, LogSource, SandboxLimits, StoreState};
use super::secrets::{Redactor, SecretStore, secret_reference};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store, Trap};

/// How a runtime is set up.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where precompiled components are kept; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// How many instances may run at once; further invocations wait for a slot.
    pub max_instances: u32,
    pub limits: SandboxLimits,
    pub http: HttpLimits,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: default_cache_dir(),
            max_instances: 1000,
            limits: SandboxLimits::default(),
            http: HttpLimits::default(),
        }
    }
}

/// Where an invocation comes from; the idempotency key stays the same across retries of one node
/// execution.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvocationContext {
    pub run_id: String,
    pub node_id: String,
    pub idempotency_key: String,
    pub attempt: u32,
}

/// The outcome of one `invoke` or `check`, with what the connector logged and how long it took.
#[derive(Debug, Clone)]
pub struct Invocation<T = Value> {
    pub result: Result<T, InvokeError>,
    pub log: Vec<LogLine>,
    pub duration: Duration,
}

/// The connector runtime. Cheap to clone; all clones share one engine and one set of caches.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<StoreState>,
    disk: Option<DiskCache>,
    /// Connectors loaded by content hash, held weakly: a connector holds its runtime, so a strong reference
    /// here would keep both alive forever.
    loaded: Mutex<HashMap<String, Weak<Connector>>>,
    http: Arc<Fetcher>,
    cache: Arc<KvCache>,
    limits: SandboxLimits,
    slots: Semaphore,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self, String> {
        Self::build(config, None)
    }

    /// A runtime whose `http.fetch` goes out through `transport` instead of the network (reqwest), e.g. an
    /// in-process stub in tests and benchmarks. Only the network leg is replaced: the egress policy (allow-lists,
    /// private addresses, every redirect hop), request checks, deadline and size cap still apply in the host
    /// before and after the transport is called; see [`HttpTransport`].
    pub fn with_transport(config: RuntimeConfig, transport: Arc<dyn HttpTransport>) -> Result<Self, String> {
        Self::build(config, Some(transport))
    }

    fn build(config: RuntimeConfig, transport: Option<Arc<dyn HttpTransport>>) -> Result<Self, String> {
        // reqwest is built without a default TLS provider; ring is the one we ship. A second call is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let engine = build_engine(&config.limits, config.max_instances)
            .map_err(|e| format!("cannot create the WebAssembly engine: {e}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| format!("cannot link WASI: {e}"))?;
        bindings::Connector::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |state| state)
            .map_err(|e| format!("cannot link the connector imports: {e}"))?;
        let disk = match &config.cache_dir {
            Some(dir) => match DiskCache::new(dir, &engine) {
                Ok(disk) => Some(disk),
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), %error, "compiled-component cache disabled");
                    None
                }
            },
            None => None,
        };
        let transport = match transport {
            Some(transport) => transport,
            None => Arc::new(HttpClients::new(config.http.clone())?),
        };
        let http = Arc::new(Fetcher::new(transport, config.http.clone()));
        start_epoch_ticker(&engine);
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                disk,
                loaded: Mutex::new(HashMap::new()),
                http,
                cache: Arc::new(KvCache::default()),
                limits: config.limits,
                slots: Semaphore::new(config.max_instances as usize),
            }),
        })
    }

    /// Loads a component file.
    pub async fn load_file(&self, path: &Path) -> Result<Arc<Connector>, LoadError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| LoadError::Read { path: path.display().to_string(), source })?;
        self.load_bytes(&bytes).await
    }

    /// Loads a component from its bytes: from memory if already loaded, else from the disk cache, else
    /// compiled. Then it is described once and its schemas compiled.
    pub async fn load_bytes(&self, bytes: &[u8]) -> Result<Arc<Connector>, LoadError> {
        let hash = content_hash(bytes);
        if let Some(loaded) =
            self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner()).get(&hash).and_then(Weak::upgrade)
        {
            return Ok(loaded);
        }
        let inner = self.inner.clone();
        let owned = bytes.to_vec();
        let key = hash.clone();
        let (component, source, load_time) =
            tokio::task::spawn_blocking(move || compile_or_load(&inner.engine, inner.disk.as_ref(), &key, &owned))
                .await
                .map_err(|e| LoadError::Compile(e.to_string()))?
                .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let instance_pre =
            self.inner.linker.instantiate_pre(&component).map_err(|e| LoadError::Contract(format!("{e:#}")))?;
        let pre = bindings::ConnectorPre::new(instance_pre).map_err(|e| LoadError::Contract(format!("{e:#}")))?;

        let describe = run_sandboxed(&self.inner, &pre, deny_all_scope(), |instance, store| {
            Box::pin(instance.call_describe(store))
        })
        .await;
        let info = describe.result.map_err(|e| LoadError::Describe(e.to_string()))?;
        let manifest = Manifest::from_wit(info)?;
        let validators = Validators::compile(&manifest)?;
        let connector = Arc::new(Connector {
            runtime: self.inner.clone(),
            hash: hash.clone(),
            manifest,
            validators,
            pre,
            load_source: source,
            load_time,
        });
        let mut loaded = self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner());
        loaded.retain(|_, connector| connector.strong_count() > 0);
        loaded.insert(hash, Arc::downgrade(&connector));
        Ok(connector)
    }
}

/// A loaded connector component, ready to invoke.
pub struct Connector {
    runtime: Arc<RuntimeInner>,
    hash: String,
    manifest: Manifest,
    validators: Validators,
    pre: bindings::ConnectorPre<StoreState>,
    load_source: LoadSource,
    load_time: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").field("id", &self.manifest.id).field("hash", &self.hash).finish()
    }
}

/// How the operator restricts a connection beyond what the connector declares.
#[derive(Debug, Clone, Default)]
pub struct ConnectionOptions {
    /// The hosts this connection may reach (intersected with the connector's); `None` adds no restriction.
    pub allowed_hosts: Option<Vec<String>>,
    /// Allow loopback and private addresses (tests, the emulator, on-premises services).
    pub allow_private: bool,
}

/// A configured connection of one connector: validated config with secrets resolved and held as secrets,
/// its egress policy and its cache scope. `Debug` shows the config with secret references, never values.
pub struct Connection {
    name: String,
    connector_id: String,
    public_config: Value,
    resolved_config: SecretString,
    egress: Arc<EgressPolicy>,
    cache_scope: String,
    redactor: Arc<Redactor>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("name", &self.name)
            .field("connector", &self.connector_id)
            .field("config", &self.public_config)
            .finish()
    }
}

impl Connection {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The config as given, secret references in place of secret values.
    pub fn public_config(&self) -> &Value {
        &self.public_config
    }

    /// Redacts this connection's secret values from text or JSON (for traces and messages).
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }
}

impl Connector {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The SHA-256 of the component's bytes.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Whether the component was compiled or loaded from the disk cache, and how long that took.
    pub fn load_source(&self) -> (LoadSource, Duration) {
        (self.load_source, self.load_time)
    }

    /// Sets up a connection from its config: secret references resolved, inline secrets refused, the config
    /// validated against the connection properties, and the egress policy built.
    pub fn connection(
        &self,
        name: &str,
        config: &Value,
        secrets: &SecretStore,
        options: &ConnectionOptions,
    ) -> Result<Connection, ConfigError> {
        let Value::Object(given) = config else {
            return Err(ConfigError::Invalid(vec![FieldError {
                pointer: String::new(),
                message: "the connection config must be a JSON object".into(),
            }]));
        };
        let mut resolved = Map::new();
        let mut secret_values = Vec::new();
        for (key, value) in given {
            let declared_secret = self.manifest.connection_properties.iter().any(|p| p.name == *key && p.secret);
            if let Some(secret_name) = secret_reference(value) {
                let secret = secrets
                    .get(secret_name)
                    .ok_or_else(|| ConfigError::MissingSecret { property: key.clone(), name: secret_name.into() })?;
                resolved.insert(key.clone(), Value::String(secret.expose_secret().to_string()));
                secret_values.push(secret);
            } else if declared_secret {
                return Err(ConfigError::InlineSecret { property: key.clone() });
            } else {
                resolved.insert(key.clone(), value.clone());
            }
        }
        let resolved = Value::Object(resolved);
        self.validators.validate_connection(&resolved).map_err(ConfigError::Invalid)?;

        let mut connector_hosts = Vec::new();
        for entry in &self.manifest.allowed_hosts {
            match entry.strip_prefix('{').and_then(|e| e.strip_suffix('}')) {
                Some(property) => {
                    if let Some(url) = resolved.get(property).and_then(Value::as_str) {
                        let pattern = HostPattern::origin_of(url).map_err(|message| {
                            ConfigError::Invalid(vec![FieldError { pointer: format!("/{property}"), message }])
                        })?;
                        connector_hosts.push(pattern);
                    }
                }
                None => connector_hosts.push(HostPattern::parse(entry).expect("checked when the manifest was loaded")),
            }
        }
        let connection_hosts = options
            .allowed_hosts
            .as_ref()
            .map(|hosts| {
                hosts
                    .iter()
                    .map(|h| {
                        HostPattern::parse(h).map_err(|reason| ConfigError::AllowedHost { pattern: h.clone(), reason })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;

        let resolved_text = resolved.to_string();
        let mut hasher = Sha256::new();
        for part in [self.manifest.id.as_str(), name, resolved_text.as_str()] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        Ok(Connection {
            name: name.to_string(),
            connector_id: self.manifest.id.clone(),
            public_config: config.clone(),
            resolved_config: SecretString::from(resolved_text),
            egress: Arc::new(EgressPolicy { connector_hosts, connection_hosts, allow_private: options.allow_private }),
            cache_scope: hex::encode(hasher.finalize()),
            redactor: Arc::new(Redactor::new(secret_values)),
        })
    }

    /// Validates an input against the capability's schema (DaVinci wrapper unwrapped).
    pub fn validate_input(&self, capability: &str, input: &Value) -> Result<(), InvokeError> {
        match self.validators.validate_input(capability, input) {
            None => Err(InvokeError::UnknownCapability {
                capability: capability.to_string(),
                offered: self.manifest.capability_ids(),
            }),
            Some(result) => result.map_err(|errors| InvokeError::InvalidInput { errors }),
        }
    }

    /// Runs the connector's `check` for a connection.
    pub async fn check(&self, connection: &Connection) -> Invocation<()> {
        let config = connection.resolved_config.expose_secret().to_string();
        let outcome = run_sandboxed(&self.runtime, &self.pre, self.scope(connection), move |instance, store| {
            Box::pin(async move { instance.call_check(store, &config).await })
        })
        .await;
        flatten(outcome, connection.redactor(), |()| Ok(()))
    }

    /// Validates the input, then invokes a capability in a fresh instance.
    pub async fn invoke(
        &self,
        connection: &Connection,
        capability: &str,
        input: &Value,
        context: &InvocationContext,
    ) -> Invocation {
        if let Err(error) = self.validate_input(capability, input) {
            return Invocation { result: Err(error), log: Vec::new(), duration: Duration::ZERO };
        }
        let config = connection.resolved_config.expose_secret().to_string();
        let input = serde_json::to_string(input).expect("a JSON value always serialises");
        let capability = capability.to_string();
        let context = bindings::types::InvocationContext {
            run_id: context.run_id.clone(),
            node_id: context.node_id.clone(),
            idempotency_key: context.idempotency_key.clone(),
            attempt: context.attempt,
        };
        let outcome = run_sandboxed(&self.runtime, &self.pre, self.scope(connection), move |instance, store| {
            Box::pin(async move { instance.call_invoke(store, &capability, &config, &input, &context).await })
        })
        .await;
        flatten(outcome, connection.redactor(), |output| {
            serde_json::from_str(&output).map_err(|e| InvokeError::Crashed {
                message: format!("the connector broke the contract: its output is not valid JSON ({e})"),
            })
        })
    }

    /// Creates a fresh instance and drops it without calling anything: the fixed cost of every invocation,
    /// for benchmarks.
    #[doc(hidden)]
    pub async fn instantiate_only(&self) -> Result<(), InvokeError> {
        run_sandboxed(&self.runtime, &self.pre, deny_all_scope(), |_, _| Box::pin(async { Ok(()) })).await.result
    }

    fn scope(&self, connection: &Connection) -> ConnectionScope {
        ConnectionScope {
            egress: connection.egress.clone(),
            cache_scope: Some(connection.cache_scope.clone()),
            redactor: connection.redactor.clone(),
        }
    }
}

fn deny_all_scope() -> ConnectionScope {
    ConnectionScope { egress: Arc::new(EgressPolicy::deny_all()), cache_scope: None, redactor: Arc::default() }
}

/// What `run_sandboxed` reports besides the call's own result.
struct Outcome<R> {
    result: Result<R, InvokeError>,
    log: Vec<LogLine>,
    duration: Duration,
    /// Why the egress policy refused a request during the call, if it did.
    denied_egress: Option<String>,
}

/// Maps a connector's own error, and the host's knowledge of refused egress, onto the invocation result.
fn flatten<R, T>(
    outcome: Outcome<Result<R, bindings::types::ConnectorError>>,
    redactor: &Redactor,
    convert: impl FnOnce(R) -> Result<T, InvokeError>,
) -> Invocation<T> {
    let result = match (outcome.result, outcome.denied_egress) {
        (Ok(Ok(value)), _) => convert(value),
        // A refused request explains the failure better than whatever the connector made of it, and must
        // not be retried as if it were transient.
        (Ok(Err(_)), Some(reason)) => Err(InvokeError::EgressDenied { message: reason }),
        (Ok(Err(error)), None) => Err(connector_error(error, redactor)),
        (Err(error), _) => Err(error),
    };
    Invocation { result, log: outcome.log, duration: outcome.duration }
}

fn connector_error(error: bindings::types::ConnectorError, redactor: &Redactor) -> InvokeError {
    use bindings::types::ConnectorError as E;
    let r = |text: String| redactor.redact(&text);
    match error {
        E::InvalidInput(errors) => InvokeError::InvalidInput {
            errors: errors.into_iter().map(|e| FieldError { pointer: e.pointer, message: r(e.message) }).collect(),
        },
        E::InvalidConfig(message) => InvokeError::InvalidConfig { message: r(message) },
        E::Unauthorized(message) => InvokeError::Unauthorized { message: r(message) },
        E::NotFound(message) => InvokeError::NotFound { message: r(message) },
        E::RateLimited(limit) => {
            InvokeError::RateLimited { retry_after_ms: limit.retry_after_ms, message: r(limit.message) }
        }
        E::Transient(message) => InvokeError::Transient { message: r(message) },
        E::Permanent(failure) => {
            InvokeError::Permanent { status: failure.status, message: r(failure.message), body: r(failure.body) }
        }
    }
}

type CallFuture<'a, R> = Pin<Box<dyn Future<Output = wasmtime::Result<R>> + Send + 'a>>;

/// Runs one call in a fresh instance from the pool, under the memory limit, the epoch deadline and the
/// wall-clock timeout. A trap or a timeout drops the instance; the runtime goes on serving.
async fn run_sandboxed<R, F>(
    runtime: &RuntimeInner,
    pre: &bindings::ConnectorPre<StoreState>,
    scope: ConnectionScope,
    call: F,
) -> Outcome<R>
where
    R: Send,
    F: for<'a> FnOnce(&'a bindings::Connector, &'a mut Store<StoreState>) -> CallFuture<'a, R> + Send,
{
    let _slot = runtime.slots.acquire().await.expect("the instance semaphore is never closed");
    let started = Instant::now();
    let limits = &runtime.limits;
    let state = StoreState::new(scope, runtime.http.clone(), runtime.cache.clone(), limits);
    let mut store = Store::new(&runtime.engine, state);
    store.limiter(|state| &mut state.limiter);
    store.set_epoch_deadline(limits.timeout.as_millis() as u64 / EPOCH_TICK.as_millis() as u64 + 1);
    store.epoch_deadline_trap();

    let called = tokio::time::timeout(limits.timeout, async {
        let instance = pre.instantiate_async(&mut store).await?;
        call(&instance, &mut store).await
    })
    .await;
    let timeout_ms = limits.timeout.as_millis() as u64;
    let mut state = store.into_data();
    let result = match called {
        Ok(Ok(value)) => Ok(value),
        Err(_elapsed) => Err(InvokeError::Timeout { after_ms: timeout_ms }),
        Ok(Err(error)) => Err(classify_trap(&error, &state, limits, timeout_ms)),
    };
    if let Err(error) = &result
        && matches!(error, InvokeError::Timeout { .. } | InvokeError::MemoryLimit { .. } | InvokeError::Crashed { .. })
    {
        state.push_log(LogLevel::Error, LogSource::Host, &error.to_string());
    }
    let denied_egress = state.denied_egress.take();
    Outcome { result, log: state.into_log(), duration: started.elapsed(), denied_egress }
}

fn classify_trap(error: &wasmtime::Error, state: &StoreState, limits: &SandboxLimits, timeout_ms: u64) -> InvokeError {
    if state.limiter.hit {
        return InvokeError::MemoryLimit { limit_bytes: limits.memory_bytes as u64 };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => InvokeError::Timeout { after_ms: timeout_ms },
        Some(Trap::StackOverflow) => InvokeError::Crashed { message: "stack overflow".into() },
        Some(trap) => {
            let message = panic_message(&state.stderr_text()).unwrap_or_else(|| format!("trap: {trap}"));
            InvokeError::Crashed { message }
        }
        None => InvokeError::Crashed { message: state.redactor().redact(&format!("{error:#}")) },
    }
}

/// The message of a Rust panic, as the guest's standard library prints it to stderr.
fn panic_message(stderr: &str) -> Option<String> {
    let mut lines = stderr.lines();
    let location = lines.find(|line| line.contains("panicked at"))?;
    let location = location.split("panicked at").nth(1).unwrap_or_default().trim().trim_end_matches(':');
    let message: Vec<&str> = lines.take_while(|line| !line.starts_with("note:")).collect();
    Some(format!("panicked at {location}: {}", message.join(" ").trim()))
}
