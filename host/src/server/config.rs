//! `flowhost.toml`: what `flowhost serve` (and `flowhost queue`) run with. Every field is optional except the
//! flows; unknown fields are errors, named with their line.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! store = "flowhost.db"                 # SQLite file, created on first start (relative to this file),
//!                                       # or a URL: "sqlite://data/flowhost.db", "sqlite:///var/lib/flowhost.db",
//!                                       # or PostgreSQL, shared by many processes:
//!                                       # "postgres://flowhost@db:5432/flowhost?pool_size=8&poll_only=false"
//! flows = ["flows/point-add-to-crm.json", "flows/inbound"]   # files, or directories of *.json
//! api_token = { secret = "FLOWHOST_API_TOKEN" }   # Bearer token for /v1/* (inbound excepted), /metrics
//! metrics_token = { secret = "FLOWHOST_METRICS_TOKEN" }   # a token for /metrics alone
//! insecure = false                      # true: serve without api_token beyond loopback
//! max_body_bytes = 1048576
//!
//! [server]
//! header_read_timeout = "10s"
//! body_read_timeout = "30s"
//! max_connections = 1024
//!
//! [secrets]                             # what flows may reference
//! allow = ["CRM_*"]                     # names or prefixes; without it, the secrets file's names
//! environment = false                   # true: also from the process environment
//!
//! [delivery]
//! concurrency = 256
//! lease_seconds = 30
//! shutdown_grace_seconds = 10
//! traces = "all"                        # or "failures": runs that succeeded keep no trace
//! pacing = true                         # pace connections whose service refuses calls for their rate (429)
//!
//! [retention]                           # finished runs, processed inbound messages, outbox events
//! max_age = "30d"                       # purged once older than this ("off": kept for ever)
//! interval = "5m"                       # how often the purge runs
//! batch = 500                           # rows of each kind per transaction
//! pause = "100ms"                       # between two batches, so accepts and claims go on
//!
//! [integrity]                           # the store's integrity check (at open, then on this schedule)
//! interval = "1h"                       # SQLite: PRAGMA quick_check, which reads the whole file
//!
//! [retry]                               # the default policy of connector nodes, as in flows
//! maxAttempts = 6
//! throttleBudgetMs = 86400000           # how long a run may wait on a service that refuses it for its rate
//!
//! [connectors]
//! builtin = true
//! dirs = []
//! allow_private = false
//! allowed_hosts = ["https://*.crm.example"]   # every connection, whatever flows say
//! override_builtin = []                 # built-in ids a component in `dirs` may replace, e.g. ["crm"]
//! max_output_bytes = 4194304            # a call's output (JSON) beyond this fails it: output-too-large
//! max_error_bytes = 65536               # a connector error's text beyond this fails it: output-too-large
//! max_log_bytes = 65536                 # log kept per call; stdout and stderr are each cut there too
//! cache_max_key_bytes = 1024            # per connection's cache: a key,
//! cache_max_value_bytes = 65536         # a value,
//! cache_max_bytes = 16777216            # keys and values together; a write past one is dropped
//!
//! [connections.crm]
//! inbound_token = { secret = "CRM_INBOUND_TOKEN" }
//! config = { eventsApiUrl = "https://api.eu.crm.example" }   # merged into the flows' connection config
//! allowed_hosts = ["https://api.eu.crm.example"]             # this connection, instead of [connectors]
//! ```

use crate::HostConfig;
use crate::connector::secrets::secret_reference;
use crate::connector::{RuntimeConfig, SandboxLimits, SecretStore};
use crate::delivery::{InboundConnection, RetentionConfig, ServiceConfig, TraceRetention};
use crate::flow::RetryPolicy;
use crate::store::{StoreError, StoreLocation, redact_store_setting};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The configuration file, as written. Its `Debug` shows the store without a password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the store is: a SQLite file's path, a `sqlite://` URL or a `postgres://` URL ([`StoreLocation`]); a
    /// relative path is relative to this file. A PostgreSQL URL may hold a password: show it with
    /// [`redact_store_setting`].
    #[serde(default = "default_store")]
    pub store: String,
    pub flows: Vec<PathBuf>,
    /// `{ secret = "NAME" }`: clients of `/v1/*` (but the inbound webhook, which has its own tokens) must
    /// send `Authorization: Bearer <token>`.
    #[serde(default)]
    pub api_token: Option<toml::Value>,
    /// `{ secret = "NAME" }`: a token for `/metrics` alone; `/metrics` takes the API token too.
    #[serde(default)]
    pub metrics_token: Option<toml::Value>,
    /// Serve without an `api_token` on an address beyond loopback: anyone who reaches it may send events and
    /// manage the queue. Off by default: such a `serve` refuses to start.
    #[serde(default)]
    pub insecure: bool,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    #[serde(default)]
    pub delivery: DeliverySection,
    #[serde(default)]
    pub retention: RetentionSection,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    #[serde(default)]
    pub connectors: ConnectorsSection,
    #[serde(default)]
    pub connections: BTreeMap<String, ConnectionSection>,
    #[serde(default)]
    pub secrets: SecretsSection,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub integrity: IntegritySection,
    /// Where relative paths are resolved: the config file's directory.
    #[serde(skip)]
    pub base: PathBuf,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("listen", &self.listen)
            .field("store", &redact_store_setting(&self.store))
            .field("flows", &self.flows)
            .field("api_token", &self.api_token)
            .field("metrics_token", &self.metrics_token)
            .field("insecure", &self.insecure)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("delivery", &self.delivery)
            .field("retry", &self.retry)
            .field("connectors", &self.connectors)
            .field("connections", &self.connections)
            .field("secrets", &self.secrets)
            .field("server", &self.server)
            .field("integrity", &self.integrity)
            .field("base", &self.base)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_lease")]
    pub lease_seconds: u64,
    #[serde(default = "default_grace")]
    pub shutdown_grace_seconds: u64,
    /// `"all"` (the default) or `"failures"`: runs that succeeded keep no trace.
    #[serde(default)]
    pub traces: TraceRetention,
    /// Pace each connection whose service refuses calls for their rate (default true); false lets every run
    /// resend on its own schedule.
    #[serde(default = "yes")]
    pub pacing: bool,
}

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            concurrency: default_concurrency(),
            lease_seconds: default_lease(),
            shutdown_grace_seconds: default_grace(),
            traces: TraceRetention::default(),
            pacing: true,
        }
    }
}

/// `[retention]`, as written: durations in humantime form (`30d`, `12h`, `5m`, `100ms`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    /// Finished runs, processed inbound messages and outbox events older than this are purged; `"off"` keeps
    /// them for ever.
    #[serde(default = "default_max_age")]
    pub max_age: String,
    #[serde(default = "default_purge_interval")]
    pub interval: String,
    #[serde(default = "default_purge_batch")]
    pub batch: usize,
    #[serde(default = "default_purge_pause")]
    pub pause: String,
}

impl Default for RetentionSection {
    fn default() -> Self {
        RetentionSection {
            max_age: default_max_age(),
            interval: default_purge_interval(),
            batch: default_purge_batch(),
            pause: default_purge_pause(),
        }
    }
}

/// The shortest `max_age`: what finished within the last hour is still being looked at.
const MIN_MAX_AGE: Duration = Duration::from_secs(3600);
/// The largest batch: a batch is one transaction, during which nothing else writes.
const MAX_PURGE_BATCH: usize = 10_000;

impl RetentionSection {
    /// The service's retention, or what is wrong with the section, naming the field.
    pub fn config(&self) -> Result<RetentionConfig, String> {
        let duration = |field: &str, text: &str| {
            humantime::parse_duration(text.trim()).map_err(|e| {
                format!("retention.{field}: `{text}` is not a duration such as \"30d\", \"12h\" or \"100ms\": {e}")
            })
        };
        let max_age = match self.max_age.trim() {
            "off" => None,
            text => {
                let age = duration("max_age", text)?;
                if age < MIN_MAX_AGE {
                    return Err(format!(
                        "retention.max_age must be at least 1h, or \"off\" to keep everything (it is `{}`)",
                        self.max_age
                    ));
                }
                Some(age)
            }
        };
        let interval = duration("interval", &self.interval)?;
        if interval < Duration::from_secs(1) {
            return Err(format!("retention.interval must be at least 1s (it is `{}`)", self.interval));
        }
        if !(1..=MAX_PURGE_BATCH).contains(&self.batch) {
            return Err(format!("retention.batch must be from 1 to {MAX_PURGE_BATCH} (it is {})", self.batch));
        }
        let pause = duration("pause", &self.pause)?;
        if pause > interval {
            return Err(format!(
                "retention.pause (`{}`) must not be longer than retention.interval (`{}`)",
                self.pause, self.interval
            ));
        }
        Ok(RetentionConfig { max_age, interval, batch: self.batch, pause })
    }
}

/// `[integrity]`, as written: how often the service checks the store's integrity
/// ([`Store::check_integrity`](crate::store::Store::check_integrity); the store checks it when it opens, too).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegritySection {
    #[serde(default = "default_integrity_interval")]
    pub interval: String,
}

impl Default for IntegritySection {
    fn default() -> Self {
        IntegritySection { interval: default_integrity_interval() }
    }
}

fn default_integrity_interval() -> String {
    humantime::format_duration(ServiceConfig::DEFAULT_INTEGRITY_CHECK).to_string()
}

impl IntegritySection {
    /// The interval, or what is wrong with it.
    pub fn interval(&self) -> Result<Duration, String> {
        let interval = humantime::parse_duration(self.interval.trim()).map_err(|e| {
            format!("integrity.interval: `{}` is not a duration such as \"1h\" or \"30m\": {e}", self.interval)
        })?;
        if interval < Duration::from_secs(1) {
            return Err(format!("integrity.interval must be at least 1s (it is `{}`)", self.interval));
        }
        Ok(interval)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorsSection {
    #[serde(default = "yes")]
    pub builtin: bool,
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// Let connections reach loopback and private addresses, and take a plain-`http` origin from a connection
    /// property (a connector's `{property}` host).
    #[serde(default)]
    pub allow_private: bool,
    /// The hosts every connection may reach (`scheme://host[:port]` patterns), whatever a flow says: a flow's
    /// `allowedHosts` can narrow them, never widen them. `[connections.X] allowed_hosts` replaces it for X.
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
    /// Built-in connector ids a component in `dirs` may take (its connections then get that component);
    /// any other built-in id is refused to such a component, so that it cannot take a built-in's secrets.
    #[serde(default)]
    pub override_builtin: Vec<String>,
    /// The largest output (JSON text) of a connector call, in bytes; a larger one fails the call
    /// (`output-too-large`). The runtime's default ([`SandboxLimits`]) when absent, and so below.
    #[serde(default)]
    pub max_output_bytes: Option<usize>,
    /// The largest error a connector may return (its messages and body), in bytes.
    #[serde(default)]
    pub max_error_bytes: Option<usize>,
    /// The log (stdout, stderr and `log` lines) kept per connector call, in bytes; what follows is dropped.
    #[serde(default)]
    pub max_log_bytes: Option<usize>,
    /// The longest key of a connection's cache, in bytes.
    #[serde(default)]
    pub cache_max_key_bytes: Option<usize>,
    /// The largest value of a connection's cache, in bytes.
    #[serde(default)]
    pub cache_max_value_bytes: Option<usize>,
    /// The keys and values one connection's cache holds together, in bytes.
    #[serde(default)]
    pub cache_max_bytes: Option<usize>,
}

impl Default for ConnectorsSection {
    fn default() -> Self {
        ConnectorsSection {
            builtin: true,
            dirs: Vec::new(),
            allow_private: false,
            allowed_hosts: None,
            override_builtin: Vec::new(),
            max_output_bytes: None,
            max_error_bytes: None,
            max_log_bytes: None,
            cache_max_key_bytes: None,
            cache_max_value_bytes: None,
            cache_max_bytes: None,
        }
    }
}

impl ConnectorsSection {
    /// `limits` with the sizes this section sets, or what is wrong with one, naming it.
    pub fn sandbox_limits(&self, mut limits: SandboxLimits) -> Result<SandboxLimits, String> {
        for (field, value, target) in [
            ("max_output_bytes", self.max_output_bytes, &mut limits.max_output_bytes),
            ("max_error_bytes", self.max_error_bytes, &mut limits.max_error_bytes),
            ("max_log_bytes", self.max_log_bytes, &mut limits.max_log_bytes),
            ("cache_max_key_bytes", self.cache_max_key_bytes, &mut limits.cache.max_key_bytes),
            ("cache_max_value_bytes", self.cache_max_value_bytes, &mut limits.cache.max_value_bytes),
            ("cache_max_bytes", self.cache_max_bytes, &mut limits.cache.max_bytes),
        ] {
            match value {
                Some(0) => return Err(format!("connectors.{field} must be at least 1")),
                Some(value) => *target = value,
                None => {}
            }
        }
        Ok(limits)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSection {
    /// `{ secret = "NAME" }`: the token this connection's inbound sender presents.
    #[serde(default)]
    pub inbound_token: Option<toml::Value>,
    /// Config merged into the flows' connection of this name.
    #[serde(default)]
    pub config: Map<String, Value>,
    /// The hosts this connection may reach, whatever its flows say (instead of `[connectors] allowed_hosts`).
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
}

/// `[secrets]`: which secrets flows may reference, and where their values come from. The operator's own
/// references in this file (`api_token`, `metrics_token`, `inbound_token`) are not limited by it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsSection {
    /// The names flows may reference; a name ending in `*` is a prefix (`"CRM_*"`). Without it, the names
    /// the secrets file (`--secrets-file`) defines.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Also look the names flows may reference up in the process environment, after the secrets file. Off by
    /// default: a flow must not read the service's environment.
    #[serde(default)]
    pub environment: bool,
}

impl SecretsSection {
    /// The secrets flows see: `secrets` (the secrets file, and the environment) narrowed by this section.
    pub fn for_flows(&self, secrets: &SecretStore) -> SecretStore {
        secrets.restricted(self.allow.clone(), self.environment)
    }
}

/// `[server]`: how long a client may take and how many connections may be open, so that slow or idle clients
/// cannot lock everyone out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// The time a client has to send a request's headers (from when the connection opens or goes idle).
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout: String,
    /// The time a client has to send a request's whole body.
    #[serde(default = "default_body_timeout")]
    pub body_read_timeout: String,
    /// Connections open at once; further clients wait to be accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            header_read_timeout: default_header_timeout(),
            body_read_timeout: default_body_timeout(),
            max_connections: default_max_connections(),
        }
    }
}

impl ServerSection {
    /// The limits, or what is wrong with the section, naming the field.
    pub fn limits(&self) -> Result<super::limits::ServerLimits, String> {
        let duration = |field: &str, text: &str| {
            let duration = humantime::parse_duration(text.trim())
                .map_err(|e| format!("server.{field}: `{text}` is not a duration such as \"10s\": {e}"))?;
            if duration.is_zero() {
                return Err(format!("server.{field} must be longer than 0"));
            }
            Ok(duration)
        };
        if self.max_connections == 0 {
            return Err("server.max_connections must be at least 1".into());
        }
        Ok(super::limits::ServerLimits {
            header_read_timeout: duration("header_read_timeout", &self.header_read_timeout)?,
            body_read_timeout: duration("body_read_timeout", &self.body_read_timeout)?,
            max_connections: self.max_connections,
        })
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_store() -> String {
    "flowhost.db".into()
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_concurrency() -> usize {
    256
}
fn default_lease() -> u64 {
    30
}
fn default_grace() -> u64 {
    10
}
fn default_max_age() -> String {
    "30d".into()
}
fn default_purge_interval() -> String {
    "5m".into()
}
fn default_purge_batch() -> usize {
    RetentionConfig::DEFAULT_BATCH
}
fn default_purge_pause() -> String {
    "100ms".into()
}
fn default_header_timeout() -> String {
    "10s".into()
}
fn default_body_timeout() -> String {
    "30s".into()
}
fn default_max_connections() -> usize {
    1024
}
fn yes() -> bool {
    true
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl ServeConfig {
    /// Reads and checks a `flowhost.toml`.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigFileError::Read { path: path.display().to_string(), message: e.to_string() })?;
        let mut config = Self::parse(&text)
            .map_err(|message| ConfigFileError::Invalid { path: path.display().to_string(), message })?;
        config.base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(config)
    }

    /// Parses the text of a configuration; relative paths stay relative to the working directory.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: ServeConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if config.flows.is_empty() {
            return Err("`flows` names no flow file or directory".into());
        }
        if config.delivery.concurrency == 0 {
            return Err("delivery.concurrency must be at least 1".into());
        }
        if config.delivery.lease_seconds < 3 {
            return Err("delivery.lease_seconds must be at least 3".into());
        }
        config.retention.config()?;
        config.integrity.interval()?;
        config.server.limits()?;
        config.connectors.sandbox_limits(SandboxLimits::default())?;
        for (field, hosts) in std::iter::once(("connectors".to_string(), &config.connectors.allowed_hosts))
            .chain(config.connections.iter().map(|(name, c)| (format!("connections.{name}"), &c.allowed_hosts)))
        {
            for host in hosts.iter().flatten() {
                crate::connector::egress::HostPattern::parse(host)
                    .map_err(|reason| format!("{field}.allowed_hosts: `{host}`: {reason}"))?;
            }
        }
        if let Some(policy) = &config.retry
            && let Some(problem) = policy.problems().into_iter().next()
        {
            return Err(format!("retry: {problem}"));
        }
        Ok(config)
    }

    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() { path.to_path_buf() } else { self.base.join(path) }
    }

    /// The store the `store` setting names, a relative file path taken from this file's directory.
    pub fn store_location(&self) -> Result<StoreLocation, StoreError> {
        Ok(StoreLocation::parse(&self.store)?.relative_to(&self.base))
    }

    /// The flow files, `(display name, text)`, directories expanded to their `*.json` files in name order.
    pub fn flow_files(&self) -> Result<Vec<(String, String)>, ConfigFileError> {
        let read_error = |path: &Path, e: std::io::Error| ConfigFileError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let mut files = Vec::new();
        for entry in &self.flows {
            let path = self.resolve(entry);
            if path.is_dir() {
                let mut inner: Vec<PathBuf> = std::fs::read_dir(&path)
                    .map_err(|e| read_error(&path, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.extension().is_some_and(|x| x == "json") && p.file_name() != Some("schema.json".as_ref())
                    })
                    .collect();
                inner.sort();
                files.extend(inner);
            } else {
                files.push(path);
            }
        }
        files
            .into_iter()
            .map(|path| {
                let text = std::fs::read_to_string(&path).map_err(|e| read_error(&path, e))?;
                Ok((path.display().to_string(), text))
            })
            .collect()
    }

    /// The host's configuration: `runtime` with the sizes `[connectors]` sets (checked by
    /// [`ServeConfig::parse`]). `builtin` are the components the program embeds, loaded when `connectors.builtin`
    /// is true.
    pub fn host_config(&self, mut runtime: RuntimeConfig, builtin: &[&'static [u8]]) -> HostConfig {
        if let Ok(limits) = self.connectors.sandbox_limits(runtime.limits.clone()) {
            runtime.limits = limits;
        }
        HostConfig {
            runtime,
            embedded_connectors: if self.connectors.builtin { builtin.to_vec() } else { Vec::new() },
            connector_dirs: self.connectors.dirs.iter().map(|d| self.resolve(d)).collect(),
            override_builtin: self.connectors.override_builtin.clone(),
            allow_private: self.connectors.allow_private,
            operator_hosts: self.operator_hosts(),
            default_retry: self.retry.clone().unwrap_or_default(),
            connection_overrides: self
                .connections
                .iter()
                .filter(|(_, c)| !c.config.is_empty())
                .map(|(name, c)| (name.clone(), c.config.clone()))
                .collect(),
            no_pacing: !self.delivery.pacing,
        }
    }

    /// The hosts the operator pins per connection name (`""`: every connection without its own list).
    fn operator_hosts(&self) -> BTreeMap<String, Vec<String>> {
        let every = self.connectors.allowed_hosts.iter().map(|hosts| (String::new(), hosts.clone()));
        let own = self.connections.iter().filter_map(|(name, c)| Some((name.clone(), c.allowed_hosts.clone()?)));
        every.chain(own).collect()
    }

    /// Whether the service may listen on `address`: beyond loopback only with an API token, or when the operator
    /// says `insecure = true`. Checked before anything listens.
    pub fn check_listen(&self, address: SocketAddr, has_api_token: bool) -> Result<(), String> {
        if has_api_token || self.insecure || address.ip().is_loopback() {
            return Ok(());
        }
        Err(format!(
            "refusing to serve on {address} without an api_token: anyone who reaches it could send events and manage \
             the queue. Set api_token, listen on loopback (127.0.0.1), or set `insecure = true` to serve it open"
        ))
    }

    /// The metrics token, resolved from the secrets.
    pub fn metrics_token(&self, secrets: &SecretStore) -> Result<Option<SecretString>, String> {
        self.metrics_token.as_ref().map(|reference| resolve_secret(reference, secrets, "metrics_token")).transpose()
    }

    /// The service's configuration; `retention` was checked by [`ServeConfig::parse`].
    pub fn service_config(&self) -> Result<ServiceConfig, String> {
        Ok(ServiceConfig {
            concurrency: self.delivery.concurrency,
            lease: Duration::from_secs(self.delivery.lease_seconds),
            traces: self.delivery.traces,
            retention: self.retention.config()?,
            integrity_check: self.integrity.interval()?,
            ..ServiceConfig::default()
        })
    }

    /// The inbound tokens, resolved from the secrets.
    pub fn inbound_connections(&self, secrets: &SecretStore) -> Result<Vec<InboundConnection>, String> {
        let mut connections = Vec::new();
        for (name, section) in &self.connections {
            if let Some(reference) = &section.inbound_token {
                let token = resolve_secret(reference, secrets, &format!("connections.{name}.inbound_token"))?;
                connections.push(InboundConnection { name: name.clone(), token });
            }
        }
        Ok(connections)
    }

    pub fn api_token(&self, secrets: &SecretStore) -> Result<Option<SecretString>, String> {
        self.api_token.as_ref().map(|reference| resolve_secret(reference, secrets, "api_token")).transpose()
    }
}

/// A `{ secret = "NAME" }` value, resolved; inline tokens are refused so they never sit in a config file.
fn resolve_secret(reference: &toml::Value, secrets: &SecretStore, field: &str) -> Result<SecretString, String> {
    let json: Value = serde_json::to_value(reference).map_err(|e| format!("{field}: {e}"))?;
    let name = secret_reference(&json)
        .ok_or_else(|| format!("{field} must be a secret reference, {{ secret = \"NAME\" }}, not a value"))?;
    secrets.get(name).ok_or_else(|| format!("{field}: secret {name} is not set (secrets file or environment)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_is_a_path_or_a_sqlite_url_relative_to_the_config_file() {
        let at = |store: &str| {
            let mut config = ServeConfig::parse(&format!("store = \"{store}\"\nflows = [\"f\"]\n")).unwrap();
            config.base = PathBuf::from("/etc/flowhost");
            config.store_location()
        };
        let sqlite = |path: &str| StoreLocation::Sqlite(PathBuf::from(path));
        assert_eq!(at("data/flowhost.db").unwrap(), sqlite("/etc/flowhost/data/flowhost.db"));
        assert_eq!(at("sqlite://data/flowhost.db").unwrap(), sqlite("/etc/flowhost/data/flowhost.db"));
        assert_eq!(at("sqlite:///var/lib/flowhost.db").unwrap(), sqlite("/var/lib/flowhost.db"));
        let postgres = at("postgres://flowhost:hunter2@db:5432/flowhost").unwrap();
        assert_eq!(
            postgres.to_string(),
            "PostgreSQL at postgres://flowhost@db:5432/flowhost",
            "not relative to the file"
        );
        let config = ServeConfig::parse("store = \"postgres://flowhost:hunter2@db/q\"\nflows = [\"f\"]\n").unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2") && shown.contains("postgres://flowhost:redacted@db/q"), "{shown}");
        let defaults = ServeConfig::parse("flows = [\"f\"]\n").unwrap();
        assert_eq!(defaults.store_location().unwrap(), sqlite("flowhost.db"));
    }

    #[test]
    fn the_integrity_check_runs_hourly_unless_the_file_says_otherwise() {
        let defaults = ServeConfig::parse("flows = [\"f\"]\n").unwrap().service_config().unwrap();
        assert_eq!(defaults.integrity_check, Duration::from_secs(3600));
        let config = ServeConfig::parse("flows = [\"f\"]\n[integrity]\ninterval = \"10m\"\n").unwrap();
        assert_eq!(config.service_config().unwrap().integrity_check, Duration::from_secs(600));
        for (interval, expected) in [
            ("\"10\"", "integrity.interval: `10` is not a duration"),
            ("\"100ms\"", "integrity.interval must be at least 1s (it is `100ms`)"),
        ] {
            let error =
                ServeConfig::parse(&format!("flows = [\"f\"]\n[integrity]\ninterval = {interval}\n")).unwrap_err();
            assert!(error.to_string().contains(expected), "{interval}: {error}");
        }
    }

    #[test]
    fn retention_defaults_to_30_days_and_takes_durations_or_off() {
        let defaults = ServeConfig::parse("flows = [\"f\"]\n").unwrap().service_config().unwrap().retention;
        assert_eq!(defaults, RetentionConfig::default());
        assert_eq!(defaults.max_age, Some(Duration::from_secs(30 * 24 * 3600)));
        assert_eq!((defaults.interval, defaults.batch), (Duration::from_secs(300), 500));
        let config = ServeConfig::parse(
            "flows = [\"f\"]\n[retention]\nmax_age = \"7d 12h\"\ninterval = \"1m\"\nbatch = 50\npause = \"20ms\"\n",
        )
        .unwrap();
        let retention = config.service_config().unwrap().retention;
        assert_eq!(retention.max_age, Some(Duration::from_secs(7 * 24 * 3600 + 12 * 3600)));
        assert_eq!(
            (retention.interval, retention.batch, retention.pause),
            (Duration::from_secs(60), 50, Duration::from_millis(20))
        );
        let off = ServeConfig::parse("flows = [\"f\"]\n[retention]\nmax_age = \"off\"\n").unwrap();
        assert_eq!(off.service_config().unwrap().retention.max_age, None);

        for (section, expected) in [
            ("max_age = \"30\"", "retention.max_age: `30` is not a duration"),
            ("max_age = \"forever\"", "retention.max_age: `forever` is not a duration"),
            ("max_age = \"10m\"", "retention.max_age must be at least 1h, or \"off\""),
            ("interval = \"0s\"", "retention.interval must be at least 1s"),
            ("interval = 5", "invalid type: integer `5`, expected a string"),
            ("batch = 0", "retention.batch must be from 1 to 10000 (it is 0)"),
            ("batch = 20000", "retention.batch must be from 1 to 10000"),
            ("pause = \"1h\"", "retention.pause (`1h`) must not be longer than retention.interval (`5m`)"),
            ("days = 30", "unknown field `days`"),
        ] {
            let error = ServeConfig::parse(&format!("flows = [\"f\"]\n[retention]\n{section}\n")).unwrap_err();
            assert!(error.contains(expected), "{section}: {error}");
        }
    }

    #[test]
    fn parses_a_full_config_and_refuses_mistakes() {
        let config = ServeConfig::parse(
            r#"
            listen = "127.0.0.1:0"
            flows = ["flows"]
            [delivery]
            concurrency = 8
            traces = "failures"
            [retry]
            maxAttempts = 4
            [connections.crm]
            inbound_token = { secret = "TOKEN" }
            config = { eventsApiUrl = "http://127.0.0.1:1" }
            "#,
        )
        .unwrap();
        assert_eq!(config.delivery.concurrency, 8);
        assert_eq!(config.service_config().unwrap().traces, TraceRetention::Failures);
        let defaults = ServeConfig::parse("flows = [\"f\"]\n").unwrap();
        assert_eq!(defaults.service_config().unwrap().traces, TraceRetention::All);
        assert_eq!(config.retry.as_ref().unwrap().max_attempts, 4);
        let secrets = SecretStore::from_pairs([("TOKEN", "t0ken")]);
        let inbound = config.inbound_connections(&secrets).unwrap();
        assert_eq!(inbound[0].name, "crm");
        assert!(!format!("{inbound:?}").contains("t0ken"));
        assert_eq!(
            config.host_config(RuntimeConfig::default(), &[]).connection_overrides["crm"]["eventsApiUrl"],
            "http://127.0.0.1:1"
        );

        let unknown = ServeConfig::parse("flows = [\"f\"]\nlisten_port = 1\n").unwrap_err();
        assert!(unknown.contains("listen_port"), "{unknown}");
        assert!(ServeConfig::parse("flows = []").unwrap_err().contains("flows"));
        let bad_retry = ServeConfig::parse("flows = [\"f\"]\n[retry]\nmaxAttempts = 0\n").unwrap_err();
        assert!(bad_retry.contains("maxAttempts"), "{bad_retry}");
        let bad_traces = ServeConfig::parse("flows = [\"f\"]\n[delivery]\ntraces = \"some\"\n").unwrap_err();
        assert!(bad_traces.contains("traces") && bad_traces.contains("failures"), "{bad_traces}");
        let inline = ServeConfig::parse("flows = [\"f\"]\n[connections.m]\ninbound_token = \"plain\"\n").unwrap();
        let error = inline.inbound_connections(&secrets).unwrap_err();
        assert!(error.contains("secret reference") && !error.contains("plain"), "{error}");
    }

    #[test]
    fn an_open_api_listens_on_loopback_only_unless_the_operator_says_insecure() {
        let open = ServeConfig::parse("flows = [\"f\"]\n").unwrap();
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        for loopback in ["127.0.0.1:8080", "127.9.0.1:1", "[::1]:8080"] {
            assert!(open.check_listen(loopback.parse().unwrap(), false).is_ok(), "{loopback}");
        }
        let refused = open.check_listen(any, false).unwrap_err();
        assert!(refused.contains("0.0.0.0:8080") && refused.contains("insecure = true"), "{refused}");
        assert!(open.check_listen("[::]:8080".parse().unwrap(), false).is_err());
        assert!(open.check_listen(any, true).is_ok(), "with an api_token");
        let insecure = ServeConfig::parse("flows = [\"f\"]\ninsecure = true\n").unwrap();
        assert!(insecure.check_listen(any, false).is_ok());
    }

    #[test]
    fn server_limits_default_and_refuse_mistakes() {
        let defaults = ServeConfig::parse("flows = [\"f\"]\n").unwrap().server.limits().unwrap();
        assert_eq!(defaults, crate::server::ServerLimits::default());
        let config = ServeConfig::parse(
            "flows = [\"f\"]\n[server]\nheader_read_timeout = \"2s\"\nbody_read_timeout = \"1m\"\nmax_connections = 8\n",
        )
        .unwrap();
        let limits = config.server.limits().unwrap();
        assert_eq!(limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(limits.body_read_timeout, Duration::from_secs(60));
        assert_eq!(limits.max_connections, 8);
        for (section, expected) in [
            ("header_read_timeout = \"soon\"", "server.header_read_timeout: `soon` is not a duration"),
            ("body_read_timeout = \"0s\"", "server.body_read_timeout must be longer than 0"),
            ("max_connections = 0", "server.max_connections must be at least 1"),
        ] {
            let error = ServeConfig::parse(&format!("flows = [\"f\"]\n[server]\n{section}\n")).unwrap_err();
            assert!(error.contains(expected), "{section}: {error}");
        }
    }

    #[test]
    fn connector_size_limits_default_to_the_runtimes_and_refuse_zero() {
        let defaults = ServeConfig::parse("flows = [\"f\"]\n").unwrap();
        assert_eq!(defaults.host_config(RuntimeConfig::default(), &[]).runtime.limits.max_output_bytes, 4 << 20);
        let config = ServeConfig::parse(
            "flows = [\"f\"]\n[connectors]\nmax_output_bytes = 1000\nmax_error_bytes = 100\nmax_log_bytes = 50\n\
             cache_max_key_bytes = 10\ncache_max_value_bytes = 20\ncache_max_bytes = 30\n",
        )
        .unwrap();
        let limits = config.host_config(RuntimeConfig::default(), &[]).runtime.limits;
        assert_eq!((limits.max_output_bytes, limits.max_error_bytes, limits.max_log_bytes), (1000, 100, 50));
        assert_eq!(
            limits.cache,
            crate::connector::CacheLimits { max_key_bytes: 10, max_value_bytes: 20, max_bytes: 30 }
        );
        assert_eq!(limits.memory_bytes, SandboxLimits::default().memory_bytes, "the rest is the runtime's");
        let error = ServeConfig::parse("flows = [\"f\"]\n[connectors]\ncache_max_bytes = 0\n").unwrap_err();
        assert!(error.contains("connectors.cache_max_bytes must be at least 1"), "{error}");
    }

    #[test]
    fn the_operator_lists_the_secrets_and_pins_the_hosts_of_flows() {
        let config = ServeConfig::parse(
            r#"
            flows = ["f"]
            api_token = { secret = "API_TOKEN" }
            [secrets]
            allow = ["CRM_*"]
            [connectors]
            allowed_hosts = ["https://*.crm.example"]
            [connections.billing]
            allowed_hosts = ["https://billing.example"]
            "#,
        )
        .unwrap();
        let secrets = SecretStore::from_pairs([("API_TOKEN", "t0ken-1"), ("CRM_KEY", "k"), ("OTHER", "o")]);
        // The operator's own references see every secret; flows only the listed ones.
        assert!(config.api_token(&secrets).unwrap().is_some());
        let flows = config.secrets.for_flows(&secrets);
        assert!(flows.get("CRM_KEY").is_some());
        assert!(flows.get("API_TOKEN").is_none() && flows.get("OTHER").is_none());
        let hosts = config.host_config(RuntimeConfig::default(), &[]).operator_hosts;
        assert_eq!(hosts[""], ["https://*.crm.example"]);
        assert_eq!(hosts["billing"], ["https://billing.example"]);

        let bad = ServeConfig::parse("flows = [\"f\"]\n[connections.x]\nallowed_hosts = [\"ftp://x\"]\n").unwrap_err();
        assert!(bad.contains("connections.x.allowed_hosts: `ftp://x`"), "{bad}");
        let unknown = ServeConfig::parse("flows = [\"f\"]\n[secrets]\nenv = true\n").unwrap_err();
        assert!(unknown.contains("unknown field `env`"), "{unknown}");
    }
}
