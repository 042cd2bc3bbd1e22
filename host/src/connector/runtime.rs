//! The connector runtime: loads components (compiled once, cached in memory and on disk, pre-instantiated),
//! sets up connections (config validated, secrets resolved, egress policy built), and invokes capabilities
//! in a fresh sandboxed instance each time.

use super::batcher::{BatchFuture, BatchSender, Batcher};
use super::bindings::{self, WitVersion};
use super::component_cache::{DiskCache, LoadSource, compile_or_load, content_hash, default_cache_dir};
use super::egress::{EgressPolicy, HostPattern};
use super::engine::{build_engine, start_epoch_ticker};
use super::error::{ConfigError, FieldError, InvokeError, LoadError};
use super::http_client::{Fetcher, HttpClients, HttpLimits, HttpTransport};
use super::invocation::{Invocation, InvocationContext};
use super::invocation_pool::InvocationPool;
use super::kv_cache::KvCache;
use super::manifest::{Manifest, Validators};
use super::sandbox::{ConnectionScope, LogLevel, LogLine, LogSource, SandboxLimits, StoreState};
use super::secrets::{Redactor, SecretMissing, SecretStore, secret_reference};
use super::strict_inputs::InputError;
use crate::inbound::InboundInfo;
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
use wasmtime::component::Linker;
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

/// How a runtime is set up.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where precompiled components are kept; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// How many instances may run at once; further invocations wait for a slot.
    pub max_instances: u32,
    /// The threads connector code runs on, apart from the caller's async workers (see [`InvocationPool`]);
    /// by default one per core.
    pub invocation_threads: usize,
    pub limits: SandboxLimits,
    pub http: HttpLimits,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: default_cache_dir(),
            max_instances: 1000,
            invocation_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            limits: SandboxLimits::default(),
            http: HttpLimits::default(),
        }
    }
}

/// The versions of the `flowhost:connector` WIT package this host loads components of (`wit/`); see
/// [`bindings`] for how they meet.
pub const SUPPORTED_WIT_VERSIONS: &[&str] = &["0.1.0", "0.2.0"];

/// The prefix of the log line (level error) in which a connector that is about to trap says why: the SDKs of
/// languages whose exceptions trap without a message the host can read (TypeScript) write it, and the host
/// reports the line's rest as the crash's message.
pub const CRASH_LOG_PREFIX: &str = "crashed: ";

/// The version of the `flowhost:connector` interfaces a component imports and exports (`None` when it names
/// none, e.g. it imports nothing of the host). Refuses a version this host does not know, naming both versions
/// (wasmtime's own link error would name only an interface), and a component that mixes versions.
fn check_wit_version(
    component: &wasmtime::component::Component,
    engine: &Engine,
) -> Result<Option<WitVersion>, LoadError> {
    let ty = component.component_type();
    let names = ty.imports(engine).map(|(name, _)| name).chain(ty.exports(engine).map(|(name, _)| name));
    let mut found: Option<WitVersion> = None;
    for name in names {
        let Some(rest) = name.strip_prefix("flowhost:connector/") else { continue };
        let Some((_, version)) = rest.split_once('@') else { continue };
        let Some(version) = WitVersion::parse(version) else {
            return Err(LoadError::UnsupportedWitVersion {
                found: format!("flowhost:connector@{version}"),
                supported: SUPPORTED_WIT_VERSIONS.iter().map(|v| format!("flowhost:connector@{v}")).collect(),
            });
        };
        match found {
            Some(other) if other != version => {
                return Err(LoadError::Contract(format!(
                    "it uses interfaces of both flowhost:connector@{} and @{}; build it against one version",
                    other.as_str(),
                    version.as_str()
                )));
            }
            _ => found = Some(version),
        }
    }
    Ok(found)
}

/// The connector runtime. Cheap to clone; all clones share one engine and one set of caches.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

pub(super) struct RuntimeInner {
    engine: Engine,
    linker: Linker<StoreState>,
    disk: Option<DiskCache>,
    /// Connectors loaded by content hash, held weakly: a connector holds its runtime, so a strong reference
    /// here would keep both alive forever.
    loaded: Mutex<HashMap<String, Weak<Connector>>>,
    http: Arc<Fetcher>,
    cache: Arc<KvCache>,
    pub(super) limits: SandboxLimits,
    slots: Semaphore,
    pool: InvocationPool,
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
        bindings::add_to_linker(&mut linker).map_err(|e| format!("cannot link the connector imports: {e}"))?;
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
                cache: Arc::new(KvCache::new(config.limits.cache.clone())),
                limits: config.limits,
                slots: Semaphore::new(config.max_instances as usize),
                pool: InvocationPool::new(config.invocation_threads)?,
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
        self.load(bytes, false).await
    }

    /// Loads a component built into the program (a built-in connector) as [`Runtime::load_bytes`] does, and
    /// keeps its compiled form for the life of the process: another runtime of the same engine settings in
    /// this process (a second host, a command run in-process, a test) deserializes it instead of compiling
    /// it again, even without a disk cache.
    pub async fn load_embedded(&self, bytes: &'static [u8]) -> Result<Arc<Connector>, LoadError> {
        self.load(bytes, true).await
    }

    async fn load(&self, bytes: &[u8], embedded: bool) -> Result<Arc<Connector>, LoadError> {
        let hash = content_hash(bytes);
        if let Some(loaded) =
            self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner()).get(&hash).and_then(Weak::upgrade)
        {
            return Ok(loaded);
        }
        let inner = self.inner.clone();
        let owned = bytes.to_vec();
        let key = hash.clone();
        let (component, source, load_time) = tokio::task::spawn_blocking(move || {
            compile_or_load(&inner.engine, inner.disk.as_ref(), &key, &owned, embedded)
        })
        .await
        .map_err(|e| LoadError::Compile(e.to_string()))?
        .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let version = check_wit_version(&component, &self.inner.engine)?;
        let instance_pre =
            self.inner.linker.instantiate_pre(&component).map_err(|e| LoadError::Contract(format!("{e:#}")))?;
        let pre = bindings::ConnectorPre::new(instance_pre.clone(), version)
            .map_err(|e| LoadError::Contract(format!("{e:#}")))?;
        let version = Some(pre.version());
        // A component that also exports `invoke-batch` (the `batch-connector` world) gets calls in batches.
        let batch_pre = bindings::batch::BatchConnectorPre::new(instance_pre.clone(), version);
        let batched_capabilities = match &batch_pre {
            None => Vec::new(),
            Some(batch_pre) => run_sandboxed(&self.inner, batch_pre, deny_all_scope(), |instance, store| {
                Box::pin(instance.call_batched_capabilities(store))
            })
            .await
            .result
            .map_err(|e| LoadError::Describe(format!("batched-capabilities: {e}")))?,
        };
        // A component that also exports the `inbound` interface receives its vendor's requests; one that
        // exports it in another shape breaks the contract.
        let inbound_interface = pre.version().inbound_interface();
        let inbound_pre = match component.get_export_index(None, &inbound_interface) {
            None => None,
            Some(_) => Some(
                bindings::inbound::InboundConnectorPre::new(instance_pre, pre.version())
                    .map_err(|e| LoadError::Contract(format!("{inbound_interface}: {e:#}")))?,
            ),
        };
        let inbound = match &inbound_pre {
            None => None,
            Some(inbound_pre) => Some(describe_inbound(&self.inner, inbound_pre).await?),
        };

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
            batch_pre: batch_pre.filter(|_| !batched_capabilities.is_empty()),
            batched_capabilities,
            inbound_pre,
            inbound,
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
    pub(super) runtime: Arc<RuntimeInner>,
    hash: String,
    manifest: Manifest,
    validators: Validators,
    pre: bindings::ConnectorPre,
    /// Present when the component exports `invoke-batch`.
    batch_pre: Option<bindings::batch::BatchConnectorPre>,
    /// The capabilities whose calls are batched (from `batched-capabilities`).
    batched_capabilities: Vec<String>,
    /// Present when the component exports the `inbound` interface.
    pub(super) inbound_pre: Option<bindings::inbound::InboundConnectorPre>,
    /// What its inbound side produces (from `describe-inbound`).
    pub(super) inbound: Option<InboundInfo>,
    load_source: LoadSource,
    load_time: Duration,
}

impl Connector {
    /// The version of the `flowhost:connector` WIT package the component was built for, e.g. `0.2.0`.
    pub fn wit_version(&self) -> &'static str {
        self.pre.version().as_str()
    }
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
    /// The hosts the operator lets this connection reach, whatever the flow says (intersected with both lists
    /// above); `None` adds no restriction.
    pub operator_hosts: Option<Vec<String>>,
    /// Allow loopback and private addresses (tests, the emulator, on-premises services), and a plain-`http`
    /// origin taken from a connection property (`{property}` hosts are `https` only otherwise).
    pub allow_private: bool,
    /// Send input properties that the capability's schema does not declare instead of refusing them, for a
    /// connector that needs open inputs (a flow connection's `"openInputs": true`).
    pub open_inputs: bool,
}

/// A configured connection of one connector: validated config with secrets resolved and held as secrets,
/// its egress policy and its cache scope. `Debug` shows the config with secret references, never values.
pub struct Connection {
    name: String,
    connector_id: String,
    public_config: Value,
    pub(super) resolved_config: SecretString,
    egress: Arc<EgressPolicy>,
    cache_scope: String,
    redactor: Arc<Redactor>,
    /// Whether inputs may have properties their capability's schema does not declare.
    open_inputs: bool,
    /// Gathers concurrent calls on this connection into batches.
    batcher: Batcher,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("name", &self.name)
            .field("connector", &self.connector_id)
            .field("config", &self.public_config)
            .field("open_inputs", &self.open_inputs)
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

    /// Whether inputs on this connection may have properties their capability's schema does not declare.
    pub fn open_inputs(&self) -> bool {
        self.open_inputs
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
        self.connection_with(name, config, secrets, options, true)
    }

    /// A connection whose config is not validated against the connection properties (secret references are
    /// still resolved): for the acceptance suite, which hands a connector's `check` configs the host would
    /// refuse, to see that the connector refuses them itself.
    #[doc(hidden)]
    pub fn connection_unvalidated(
        &self,
        name: &str,
        config: &Value,
        secrets: &SecretStore,
        options: &ConnectionOptions,
    ) -> Result<Connection, ConfigError> {
        self.connection_with(name, config, secrets, options, false)
    }

    fn connection_with(
        &self,
        name: &str,
        config: &Value,
        secrets: &SecretStore,
        options: &ConnectionOptions,
        validate: bool,
    ) -> Result<Connection, ConfigError> {
        let Value::Object(given) = config else {
            return Err(ConfigError::Invalid(vec![FieldError {
                pointer: String::new(),
                message: "the connection config must be a JSON object".into(),
            }]));
        };
        let mut resolved = Map::new();
        let mut secret_values = Vec::new();
        let mut from_secrets = Vec::new();
        for (key, value) in given {
            let declared_secret = self.manifest.connection_properties.iter().any(|p| p.name == *key && p.secret);
            if let Some(secret_name) = secret_reference(value) {
                let secret = secrets.lookup(secret_name).map_err(|missing| {
                    let (property, name) = (key.clone(), secret_name.to_string());
                    match missing {
                        SecretMissing::NotAllowed => ConfigError::SecretNotAllowed { property, name },
                        SecretMissing::NotSet => ConfigError::MissingSecret { property, name },
                    }
                })?;
                resolved.insert(key.clone(), Value::String(secret.expose_secret().to_string()));
                secret_values.push(secret);
                from_secrets.push(key.clone());
            } else if declared_secret {
                return Err(ConfigError::InlineSecret { property: key.clone() });
            } else {
                resolved.insert(key.clone(), value.clone());
            }
        }
        let resolved = Value::Object(resolved);
        let redactor = Redactor::new(secret_values);
        // What is wrong is named by property; a message never shows a secret's value, in any form.
        let invalid = |errors: Vec<FieldError>| {
            ConfigError::Invalid(
                errors
                    .into_iter()
                    .map(|e| FieldError { pointer: e.pointer, message: redactor.redact(&e.message) })
                    .collect(),
            )
        };
        if validate {
            self.validators.validate_connection(&resolved, &from_secrets).map_err(invalid)?;
        }

        let mut connector_hosts = Vec::new();
        for entry in &self.manifest.allowed_hosts {
            match entry.strip_prefix('{').and_then(|e| e.strip_suffix('}')) {
                Some(property) => {
                    if let Some(url) = resolved.get(property).and_then(Value::as_str) {
                        match HostPattern::origin_of(url) {
                            // A flow may set the property: only the operator may point it at plain HTTP.
                            Ok(pattern) if pattern.scheme() != "https" && !options.allow_private && validate => {
                                return Err(invalid(vec![FieldError {
                                    pointer: format!("/{property}"),
                                    message: format!(
                                        "the connector takes its host from `{property}`, which must be an https URL \
                                         (plain http only where the operator allows private targets: \
                                         `[connectors] allow_private = true`, `--allow-private`)"
                                    ),
                                }]));
                            }
                            Ok(pattern) => connector_hosts.push(pattern),
                            Err(message) if validate => {
                                return Err(invalid(vec![FieldError { pointer: format!("/{property}"), message }]));
                            }
                            // Unvalidated: a URL that is none allows no host.
                            Err(_) => {}
                        }
                    }
                }
                None => connector_hosts.push(HostPattern::parse(entry).expect("checked when the manifest was loaded")),
            }
        }
        let patterns = |hosts: &Option<Vec<String>>| {
            hosts
                .as_ref()
                .map(|hosts| {
                    hosts
                        .iter()
                        .map(|h| {
                            HostPattern::parse(h)
                                .map_err(|reason| ConfigError::AllowedHost { pattern: h.clone(), reason })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()
        };
        let connection_hosts = patterns(&options.allowed_hosts)?;
        let operator_hosts = patterns(&options.operator_hosts)?;

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
            egress: Arc::new(EgressPolicy {
                connector_hosts,
                connection_hosts,
                operator_hosts,
                allow_private: options.allow_private,
            }),
            cache_scope: hex::encode(hasher.finalize()),
            redactor: Arc::new(redactor),
            open_inputs: options.open_inputs,
            batcher: Batcher::default(),
        })
    }

    /// Validates an input against the capability's schema (DaVinci wrapper unwrapped), strictly: a property
    /// the schema does not declare is refused, named with the nearest declared name.
    pub fn validate_input(&self, capability: &str, input: &Value) -> Result<(), InvokeError> {
        self.validate(capability, input, false)
    }

    /// Validates an input as [`Connector::validate_input`] does, leaving undeclared properties be on a
    /// connection with open inputs.
    pub fn validate_input_for(
        &self,
        connection: &Connection,
        capability: &str,
        input: &Value,
    ) -> Result<(), InvokeError> {
        self.validate(capability, input, connection.open_inputs)
    }

    /// Every way an input does not fit its capability (undeclared properties included unless `open`), each
    /// saying whether it is an undeclared property; `None` when the capability does not exist. For the linter,
    /// which must tell problems in literal values from those in values expressions will compute.
    pub fn input_errors(&self, capability: &str, input: &Value, open: bool) -> Option<Vec<InputError>> {
        self.validators.input_errors(capability, input, open)
    }

    fn validate(&self, capability: &str, input: &Value, open: bool) -> Result<(), InvokeError> {
        match self.validators.input_errors(capability, input, open) {
            None => Err(InvokeError::UnknownCapability {
                capability: capability.to_string(),
                offered: self.manifest.capability_ids(),
            }),
            Some(errors) if errors.is_empty() => Ok(()),
            Some(errors) => Err(InvokeError::InvalidInput { errors: errors.into_iter().map(|e| e.field).collect() }),
        }
    }

    /// Runs the connector's `check` for a connection.
    pub async fn check(&self, connection: &Connection) -> Invocation<()> {
        let config = connection.resolved_config.expose_secret().to_string();
        let outcome = run_sandboxed(&self.runtime, &self.pre, self.scope(connection), move |instance, store| {
            Box::pin(async move { instance.call_check(store, &config).await })
        })
        .await;
        flatten(outcome, connection.redactor(), &self.runtime.limits, |()| Ok(()))
    }

    /// Validates the input, then invokes a capability in a fresh instance.
    pub async fn invoke(
        &self,
        connection: &Connection,
        capability: &str,
        input: &Value,
        context: &InvocationContext,
    ) -> Invocation {
        if let Err(error) = self.validate_input_for(connection, capability, input) {
            return Invocation { result: Err(error), log: Vec::new(), duration: Duration::ZERO, usage_percent: None };
        }
        self.invoke_unvalidated(connection, capability, input, context).await
    }

    /// Invokes a capability without validating the input first: for the acceptance suite, which checks that
    /// a connector refuses invalid inputs itself.
    #[doc(hidden)]
    pub async fn invoke_unvalidated(
        &self,
        connection: &Connection,
        capability: &str,
        input: &Value,
        context: &InvocationContext,
    ) -> Invocation {
        let config = connection.resolved_config.expose_secret().to_string();
        let input = serde_json::to_string(input).expect("a JSON value always serialises");
        let capability = capability.to_string();
        let context = wit_context(context);
        let outcome = run_sandboxed(&self.runtime, &self.pre, self.scope(connection), move |instance, store| {
            Box::pin(async move { instance.call_invoke(store, &capability, &config, &input, &context).await })
        })
        .await;
        let limits = &self.runtime.limits;
        flatten(outcome, connection.redactor(), limits, |output| parse_output(output, limits))
    }

    /// Whether concurrent calls of `capability` share invocations (`invoke-batch`): the component exports the
    /// `batch-connector` world and lists the capability in `batched-capabilities`.
    pub fn batches(&self, capability: &str) -> bool {
        self.batch_pre.is_some() && self.batched_capabilities.iter().any(|c| c == capability)
    }

    /// Invokes a capability like [`Connector::invoke`], but shares one invocation (`invoke-batch`) with the
    /// calls of the same capability on the same connection that are waiting at the same moment, when the
    /// connector supports it. Each call keeps its own input, context and result; the log and duration are the
    /// shared invocation's. A call that finds nothing to share with is a plain `invoke`.
    pub async fn invoke_batched(
        &self,
        connection: &Connection,
        capability: &str,
        input: &Value,
        context: &InvocationContext,
    ) -> Invocation {
        if !self.batches(capability) {
            return self.invoke(connection, capability, input, context).await;
        }
        let sender = BatchOf { connector: self, connection, capability };
        connection.batcher.call(&sender, capability, input, context).await
    }

    /// Invokes a capability once for each `(input, context)` item: one `invoke-batch` for the items whose
    /// input is valid when the capability [is batched](Connector::batches), else (or for a single item) one
    /// `invoke` each. Returns one invocation per item, in order.
    pub async fn invoke_batch(
        &self,
        connection: &Connection,
        capability: &str,
        items: &[(&Value, &InvocationContext)],
    ) -> Vec<Invocation> {
        // One item (the batcher's common case on a quiet connection) is a plain `invoke`, validated there.
        if let [(input, context)] = items {
            return vec![self.invoke(connection, capability, input, context).await];
        }
        let Some(batch_pre) = self.batch_pre.as_ref().filter(|_| self.batches(capability)) else {
            let mut results = Vec::with_capacity(items.len());
            for (input, context) in items {
                results.push(self.invoke(connection, capability, input, context).await);
            }
            return results;
        };
        self.invoke_batch_with(connection, capability, items, batch_pre, true).await
    }

    /// One `invoke-batch` of a batched capability for all items, none validated first (`None` when the
    /// capability is not batched): for the acceptance suite, which checks that each item gets its own result,
    /// in order.
    #[doc(hidden)]
    pub async fn invoke_batch_unvalidated(
        &self,
        connection: &Connection,
        capability: &str,
        items: &[(&Value, &InvocationContext)],
    ) -> Option<Vec<Invocation>> {
        let batch_pre = self.batch_pre.as_ref().filter(|_| self.batches(capability))?;
        Some(self.invoke_batch_with(connection, capability, items, batch_pre, false).await)
    }

    async fn invoke_batch_with(
        &self,
        connection: &Connection,
        capability: &str,
        items: &[(&Value, &InvocationContext)],
        batch_pre: &bindings::batch::BatchConnectorPre,
        validate: bool,
    ) -> Vec<Invocation> {
        let mut results: Vec<Option<Invocation>> = Vec::with_capacity(items.len());
        let mut batch = Vec::new();
        for (input, context) in items {
            let valid = if validate { self.validate_input_for(connection, capability, input) } else { Ok(()) };
            match valid {
                Ok(()) => {
                    batch.push(bindings::types::BatchItem {
                        input: serde_json::to_string(input).expect("a JSON value always serialises"),
                        context: wit_context(context),
                    });
                    results.push(None);
                }
                Err(error) => results.push(Some(Invocation {
                    result: Err(error),
                    log: Vec::new(),
                    duration: Duration::ZERO,
                    usage_percent: None,
                })),
            }
        }
        if batch.is_empty() {
            // Every input was refused: nothing to instantiate for.
            return results.into_iter().flatten().collect();
        }
        let sent = batch.len();
        let config = connection.resolved_config.expose_secret().to_string();
        let batch_capability = capability.to_string();
        let outcome = run_sandboxed(&self.runtime, batch_pre, self.scope(connection), move |instance, store| {
            Box::pin(async move { instance.call_invoke_batch(store, &batch_capability, &config, &batch).await })
        })
        .await;
        if matches!(outcome.result, Err(InvokeError::MemoryLimit { .. })) {
            // Many calls together can need more memory than any one alone: run each alone rather than fail
            // them all. A call whose request went out before the memory ran out is sent again with the same
            // idempotency key, as on any retry.
            let note = format!(
                "{sent} calls of {capability} together reached the memory limit ({} MiB); this call ran alone",
                self.runtime.limits.memory_bytes >> 20
            );
            for (result, (input, context)) in results.iter_mut().zip(items) {
                if result.is_none() {
                    let mut invocation = self.invoke(connection, capability, input, context).await;
                    let line =
                        LogLine { at_ms: 0, level: LogLevel::Warn, source: LogSource::Host, message: note.clone() };
                    invocation.log.insert(0, line);
                    *result = Some(invocation);
                }
            }
            return results.into_iter().flatten().collect();
        }
        let mut outputs = split_batch(outcome, sent, connection.redactor(), &self.runtime.limits).into_iter();
        results
            .into_iter()
            .map(|result| result.unwrap_or_else(|| outputs.next().expect("one result per item sent")))
            .collect()
    }

    /// Creates a fresh instance and drops it without calling anything: the fixed cost of every invocation,
    /// for benchmarks.
    #[doc(hidden)]
    pub async fn instantiate_only(&self) -> Result<(), InvokeError> {
        run_sandboxed(&self.runtime, &self.pre, deny_all_scope(), |_, _| Box::pin(async { Ok(()) })).await.result
    }

    pub(super) fn scope(&self, connection: &Connection) -> ConnectionScope {
        ConnectionScope {
            connection: connection.name.clone(),
            egress: connection.egress.clone(),
            cache_scope: Some(connection.cache_scope.clone()),
            redactor: connection.redactor.clone(),
        }
    }
}

/// Sends the batches of one capability on one connection through `invoke-batch`.
struct BatchOf<'a> {
    connector: &'a Connector,
    connection: &'a Connection,
    capability: &'a str,
}

impl BatchSender for BatchOf<'_> {
    fn send<'a>(&'a self, items: &'a [(&'a Value, &'a InvocationContext)]) -> BatchFuture<'a> {
        Box::pin(self.connector.invoke_batch(self.connection, self.capability, items))
    }
}

/// Runs `describe-inbound` on a freshly loaded component.
async fn describe_inbound(
    runtime: &RuntimeInner,
    pre: &bindings::inbound::InboundConnectorPre,
) -> Result<InboundInfo, LoadError> {
    let described = run_sandboxed(runtime, pre, deny_all_scope(), |instance, store| {
        Box::pin(instance.call_describe_inbound(store))
    })
    .await;
    let info = described.result.map_err(|e| LoadError::Describe(format!("describe-inbound: {e}")))?;
    Ok(InboundInfo {
        event_types: info.event_types,
        identities: info.identities,
        public_requests: info.public_requests,
        verifies_requests: info.verifies_requests,
    })
}

fn wit_context(context: &InvocationContext) -> bindings::types::InvocationContext {
    bindings::types::InvocationContext {
        run_id: context.run_id.clone(),
        node_id: context.node_id.clone(),
        idempotency_key: context.idempotency_key.clone(),
        attempt: context.attempt,
    }
}

/// The output of one call as JSON, unless it is larger than the host accepts (checked before it is parsed).
fn parse_output(output: String, limits: &SandboxLimits) -> Result<Value, InvokeError> {
    check_output_size("output", output.len(), limits)?;
    serde_json::from_str(&output).map_err(|e| InvokeError::Crashed {
        message: format!("the connector broke the contract: its output is not valid JSON ({e})"),
    })
}

/// `output-too-large` when a call's `what` (`size` bytes) is larger than `max_output_bytes`: the host would keep it.
pub(super) fn check_output_size(what: &str, size: usize, limits: &SandboxLimits) -> Result<(), InvokeError> {
    if size > limits.max_output_bytes {
        return Err(InvokeError::OutputTooLarge {
            what: what.into(),
            size_bytes: size as u64,
            limit_bytes: limits.max_output_bytes as u64,
            limit: "max_output_bytes".into(),
        });
    }
    Ok(())
}

/// One invocation per item of a batch: each item's own result, and the batch's log and duration. A batch
/// that failed as a whole (a trap, a timeout) or broke the contract fails every item.
fn split_batch(
    outcome: Outcome<Vec<Result<String, bindings::types::ConnectorError>>>,
    items: usize,
    redactor: &Redactor,
    limits: &SandboxLimits,
) -> Vec<Invocation> {
    let Outcome { result, log, duration, denied_egress, usage_percent } = outcome;
    let failed = |error: InvokeError| Invocation { result: Err(error), log: log.clone(), duration, usage_percent };
    match result {
        // Each item gets the shared log, and its own line if its output or error was refused.
        Ok(results) if results.len() == items => results
            .into_iter()
            .map(|result| {
                let outcome = Outcome {
                    result: Ok(result),
                    log: log.clone(),
                    duration,
                    denied_egress: denied_egress.clone(),
                    usage_percent,
                };
                flatten(outcome, redactor, limits, |output| parse_output(output, limits))
            })
            .collect(),
        Ok(results) => {
            let message = format!(
                "the connector broke the contract: invoke-batch returned {} results for {items} items",
                results.len()
            );
            (0..items).map(|_| failed(InvokeError::Crashed { message: message.clone() })).collect()
        }
        Err(error) => (0..items).map(|_| failed(error.clone())).collect(),
    }
}

fn deny_all_scope() -> ConnectionScope {
    ConnectionScope {
        connection: String::new(),
        egress: Arc::new(EgressPolicy::deny_all()),
        cache_scope: None,
        redactor: Arc::default(),
    }
}

/// What `run_sandboxed` reports besides the call's own result.
pub(super) struct Outcome<R> {
    result: Result<R, InvokeError>,
    log: Vec<LogLine>,
    duration: Duration,
    /// Why the egress policy refused a request during the call, if it did.
    denied_egress: Option<String>,
    /// The percentage of its rate limit the service said was used (`pacing.report-usage`), if reported.
    usage_percent: Option<u8>,
}

/// Maps a connector's own error, and the host's knowledge of refused egress, onto the invocation result. An
/// output or error over its limit is refused here, before anything keeps it (the log says so).
pub(super) fn flatten<R, T>(
    outcome: Outcome<Result<R, bindings::types::ConnectorError>>,
    redactor: &Redactor,
    limits: &SandboxLimits,
    convert: impl FnOnce(R) -> Result<T, InvokeError>,
) -> Invocation<T> {
    // A refusal's own figure is the freshest.
    let usage_percent = match &outcome.result {
        Ok(Err(bindings::types::ConnectorError::RateLimited(limit))) => limit.percentage_used.or(outcome.usage_percent),
        _ => outcome.usage_percent,
    };
    let result = match (outcome.result, outcome.denied_egress) {
        (Ok(Ok(value)), _) => convert(value),
        // A refused request explains the failure better than whatever the connector made of it, and must
        // not be retried as if it were transient.
        (Ok(Err(_)), Some(reason)) => Err(InvokeError::EgressDenied { message: reason }),
        (Ok(Err(error)), None) => match error_too_large(&error, limits) {
            Some(too_large) => Err(too_large),
            None => Err(connector_error(error, redactor)),
        },
        (Err(error), _) => Err(error),
    };
    let mut log = outcome.log;
    if let Err(error @ InvokeError::OutputTooLarge { .. }) = &result {
        let at_ms = outcome.duration.as_millis() as u64;
        log.push(LogLine { at_ms, level: LogLevel::Error, source: LogSource::Host, message: error.to_string() });
    }
    Invocation { result, log, duration: outcome.duration, usage_percent }
}

/// A connector error larger than the host accepts becomes `output-too-large`, its text dropped unread: it must
/// not be kept, nor retried as the kind it claimed.
fn error_too_large(error: &bindings::types::ConnectorError, limits: &SandboxLimits) -> Option<InvokeError> {
    use bindings::types::ConnectorError as E;
    let (kind, size) = match error {
        E::InvalidInput(errors) => {
            ("invalid-input", errors.iter().map(|e| e.pointer.len() + e.message.len()).sum::<usize>())
        }
        E::InvalidConfig(message) => ("invalid-config", message.len()),
        E::Unauthorized(message) => ("unauthorized", message.len()),
        E::NotFound(message) => ("not-found", message.len()),
        E::RateLimited(limit) => ("rate-limited", limit.message.len()),
        E::Transient(message) => ("transient", message.len()),
        E::Permanent(failure) => ("permanent", failure.message.len() + failure.body.len()),
    };
    (size > limits.max_error_bytes).then(|| InvokeError::OutputTooLarge {
        what: format!("{kind} error"),
        size_bytes: size as u64,
        limit_bytes: limits.max_error_bytes as u64,
        limit: "max_error_bytes".into(),
    })
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

pub(super) type CallFuture<'a, R> = Pin<Box<dyn Future<Output = wasmtime::Result<R>> + Send + 'a>>;

/// The pre-instantiated bindings of one world (`connector` or `batch-connector`).
pub(super) trait WorldPre: Sync {
    type Instance: Send + Sync;
    fn instantiate<'a>(&'a self, store: &'a mut Store<StoreState>) -> CallFuture<'a, Self::Instance>;
}

impl WorldPre for bindings::ConnectorPre {
    type Instance = bindings::Connector;
    fn instantiate<'a>(&'a self, store: &'a mut Store<StoreState>) -> CallFuture<'a, Self::Instance> {
        Box::pin(self.instantiate_async(store))
    }
}

impl WorldPre for bindings::inbound::InboundConnectorPre {
    type Instance = bindings::inbound::InboundConnector;
    fn instantiate<'a>(&'a self, store: &'a mut Store<StoreState>) -> CallFuture<'a, Self::Instance> {
        Box::pin(self.instantiate_async(store))
    }
}

impl WorldPre for bindings::batch::BatchConnectorPre {
    type Instance = bindings::batch::BatchConnector;
    fn instantiate<'a>(&'a self, store: &'a mut Store<StoreState>) -> CallFuture<'a, Self::Instance> {
        Box::pin(self.instantiate_async(store))
    }
}

/// Runs one call in a fresh instance from the pool, under the memory limit and the deadline, on the connector
/// threads ([`InvocationPool`]), never on the caller's. The wasm yields to those threads on every epoch tick,
/// and is stopped at the first tick past its deadline, read from the monotonic clock (not counted in ticks,
/// which come late when the ticker thread is not scheduled on time). The deadline also bounds the time spent
/// in host calls. A trap or a timeout drops the instance; the runtime goes on serving.
pub(super) async fn run_sandboxed<P, R, F>(
    runtime: &RuntimeInner,
    pre: &P,
    scope: ConnectionScope,
    call: F,
) -> Outcome<R>
where
    P: WorldPre + Clone + Send + 'static,
    R: Send + 'static,
    F: for<'a> FnOnce(&'a P::Instance, &'a mut Store<StoreState>) -> CallFuture<'a, R> + Send + 'static,
{
    let _slot = runtime.slots.acquire().await.expect("the instance semaphore is never closed");
    let started = Instant::now();
    let engine = runtime.engine.clone();
    let limits = runtime.limits.clone();
    let state = StoreState::new(scope, runtime.http.clone(), runtime.cache.clone(), &limits);
    let pre = pre.clone();
    let sandboxed = async move {
        let mut store = Store::new(&engine, state);
        store.limiter(|state| &mut state.limiter);
        let deadline = started + limits.timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
        });
        let called = tokio::time::timeout_at(deadline.into(), async {
            let instance = pre.instantiate(&mut store).await?;
            call(&instance, &mut store).await
        })
        .await;
        let timeout_ms = limits.timeout.as_millis() as u64;
        let mut state = store.into_data();
        let result = match called {
            Ok(Ok(value)) => Ok(value),
            Err(_elapsed) => Err(InvokeError::Timeout { after_ms: timeout_ms }),
            Ok(Err(error)) => Err(classify_trap(&error, &state, &limits, timeout_ms)),
        };
        if let Err(error) = &result
            && matches!(
                error,
                InvokeError::Timeout { .. } | InvokeError::MemoryLimit { .. } | InvokeError::Crashed { .. }
            )
        {
            state.push_log(LogLevel::Error, LogSource::Host, &error.to_string());
        }
        let denied_egress = state.denied_egress.take();
        let usage_percent = state.usage_percent;
        Outcome { result, log: state.into_log(), duration: started.elapsed(), denied_egress, usage_percent }
    };
    runtime.pool.run(sandboxed).await.unwrap_or_else(|| Outcome {
        result: Err(InvokeError::Crashed { message: "the connector runtime is shutting down".into() }),
        log: Vec::new(),
        duration: started.elapsed(),
        denied_egress: None,
        usage_percent: None,
    })
}

fn classify_trap(error: &wasmtime::Error, state: &StoreState, limits: &SandboxLimits, timeout_ms: u64) -> InvokeError {
    if state.limiter.hit {
        return InvokeError::MemoryLimit { limit_bytes: limits.memory_bytes as u64 };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => InvokeError::Timeout { after_ms: timeout_ms },
        Some(Trap::StackOverflow) => InvokeError::Crashed { message: "stack overflow".into() },
        Some(trap) => {
            let message = panic_message(&state.stderr_text())
                .or_else(|| state.crash_report())
                .unwrap_or_else(|| format!("trap: {trap}"));
            InvokeError::Crashed { message }
        }
        None => InvokeError::Crashed {
            message: state.crash_report().unwrap_or_else(|| state.redactor().redact(&format!("{error:#}"))),
        },
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

#[cfg(test)]
mod tests {
    use super::*;
    use bindings::types::ConnectorError;

    fn outcome(
        result: Result<Vec<Result<String, ConnectorError>>, InvokeError>,
    ) -> Outcome<Vec<Result<String, ConnectorError>>> {
        let log =
            vec![LogLine { at_ms: 1, level: LogLevel::Info, source: LogSource::Connector, message: "sent".into() }];
        Outcome { result, log, duration: Duration::from_millis(3), denied_egress: None, usage_percent: None }
    }

    #[test]
    fn a_batch_gives_each_item_its_own_result_and_the_shared_log() {
        let results = vec![Ok("{\"n\":1}".to_string()), Err(ConnectorError::Transient("busy".into()))];
        let split = split_batch(outcome(Ok(results)), 2, &Redactor::default(), &SandboxLimits::default());
        assert_eq!(split[0].result.as_ref().unwrap(), &serde_json::json!({"n": 1}));
        assert_eq!(split[1].result.as_ref().unwrap_err().kind(), super::super::ErrorKind::Transient);
        assert!(split.iter().all(|i| i.log.len() == 1 && i.duration == Duration::from_millis(3)));
    }

    #[test]
    fn a_batch_with_the_wrong_number_of_results_breaks_the_contract_for_every_item() {
        let split =
            split_batch(outcome(Ok(vec![Ok("{}".to_string())])), 3, &Redactor::default(), &SandboxLimits::default());
        assert_eq!(split.len(), 3);
        for invocation in split {
            let error = invocation.result.unwrap_err();
            assert!(error.to_string().contains("returned 1 results for 3 items"), "{error}");
        }
    }

    #[test]
    fn a_batch_that_trapped_fails_every_item_with_the_trap() {
        let split = split_batch(
            outcome(Err(InvokeError::Timeout { after_ms: 10 })),
            2,
            &Redactor::default(),
            &SandboxLimits::default(),
        );
        assert!(split.iter().all(|i| matches!(i.result, Err(InvokeError::Timeout { after_ms: 10 }))));
    }

    #[test]
    fn an_output_or_error_over_its_limit_is_refused_with_its_size_and_the_limits_name() {
        let limits = SandboxLimits { max_output_bytes: 16, max_error_bytes: 8, ..SandboxLimits::default() };
        let results = vec![
            Ok(format!("{{\"a\":\"{}\"}}", "x".repeat(20))),
            Ok("{\"a\":1}".to_string()),
            Err(ConnectorError::Transient("busy, busy, busy".into())),
            Err(ConnectorError::Permanent(bindings::types::Failure {
                status: Some(400),
                message: "no".into(),
                body: "x".repeat(7),
            })),
        ];
        let split = split_batch(outcome(Ok(results)), 4, &Redactor::default(), &limits);
        let error = split[0].result.as_ref().unwrap_err();
        assert_eq!(error.kind(), super::super::ErrorKind::OutputTooLarge);
        assert!(!error.kind().is_retryable());
        assert_eq!(
            error.to_string(),
            "the connector's output is 28 bytes, over the limit of 16 bytes (max_output_bytes); it was refused, not kept"
        );
        assert_eq!(split[0].log.last().unwrap().message, error.to_string(), "the item's log says why");
        assert_eq!(split[0].log.last().unwrap().source, LogSource::Host);
        assert_eq!(split[1].result.as_ref().unwrap(), &serde_json::json!({"a": 1}), "items within the limit pass");
        assert_eq!(split[1].log.len(), 1, "the shared log alone");
        let error = split[2].result.as_ref().unwrap_err();
        assert_eq!(error.kind(), super::super::ErrorKind::OutputTooLarge, "not retried as transient");
        assert!(
            error.to_string().contains("transient error is 16 bytes") && error.to_string().contains("max_error_bytes")
        );
        assert!(!error.to_string().contains("busy"), "the refused text is not kept");
        let error = split[3].result.as_ref().unwrap_err();
        assert!(error.to_string().contains("permanent error is 9 bytes"), "message and body count: {error}");
    }

    #[test]
    fn output_that_is_not_json_breaks_the_contract() {
        let split = split_batch(
            outcome(Ok(vec![Ok("not json".to_string())])),
            1,
            &Redactor::default(),
            &SandboxLimits::default(),
        );
        assert!(split[0].result.as_ref().unwrap_err().to_string().contains("not valid JSON"));
    }
}
