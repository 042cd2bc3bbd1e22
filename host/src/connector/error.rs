//! The errors of connector invocations and of loading connectors, with the kinds flows act on.

use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// One problem with one field of a JSON document, named by JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub pointer: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pointer = if self.pointer.is_empty() { "(root)" } else { &self.pointer };
        write!(f, "{pointer}: {}", self.message)
    }
}

/// The kind of a failed invocation: what a flow's retry policy and error edges act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The input does not fit the capability's schema, or the connector rejected it.
    InvalidInput,
    /// The connection configuration is wrong: schema, missing secret, or refused by the connector.
    InvalidConfig,
    /// The remote service refused the credentials.
    Unauthorized,
    /// The addressed entity does not exist.
    NotFound,
    /// The remote service is throttling; retry after a delay.
    RateLimited,
    /// A timeout, lost connection or 5xx inside the connector; retry later.
    Transient,
    /// The remote service refused the request for good.
    Permanent,
    /// The invocation ran past its deadline (a CPU loop, or a host call that never returned).
    Timeout,
    /// The connector tried to use more memory than its limit.
    MemoryLimit,
    /// The connector trapped: a panic, a stack overflow, or an invalid operation.
    Crashed,
    /// The connector tried to reach a host or address its policy does not allow.
    EgressDenied,
    /// The capability does not exist in this connector.
    UnknownCapability,
    /// The connector returned an output or an error larger than the host accepts; it was not kept.
    OutputTooLarge,
}

impl ErrorKind {
    /// Whether an attempt that failed with this kind may succeed when tried again unchanged.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::RateLimited | ErrorKind::Transient | ErrorKind::Timeout)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid-input",
            ErrorKind::InvalidConfig => "invalid-config",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NotFound => "not-found",
            ErrorKind::RateLimited => "rate-limited",
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Timeout => "timeout",
            ErrorKind::MemoryLimit => "memory-limit",
            ErrorKind::Crashed => "crashed",
            ErrorKind::EgressDenied => "egress-denied",
            ErrorKind::UnknownCapability => "unknown-capability",
            ErrorKind::OutputTooLarge => "output-too-large",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an invocation failed. Messages never carry secrets: the host redacts the connection's secret
/// values from everything a connector says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum InvokeError {
    #[error("invalid input: {}", join(.errors))]
    InvalidInput { errors: Vec<FieldError> },
    #[error("invalid connection config: {message}")]
    InvalidConfig { message: String },
    #[error("unauthorized: {message}")]
    Unauthorized { message: String },
    #[error("not found: {message}")]
    NotFound { message: String },
    #[error("rate limited{}: {message}", retry_after_ms.map(|ms| format!(" (retry after {ms} ms)")).unwrap_or_default())]
    RateLimited { retry_after_ms: Option<u64>, message: String },
    #[error("transient failure: {message}")]
    Transient { message: String },
    #[error("permanent failure{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Permanent { status: Option<u16>, message: String, body: String },
    #[error("timed out after {after_ms} ms")]
    Timeout { after_ms: u64 },
    #[error("exceeded its memory limit of {}", crate::ByteSize(*limit_bytes))]
    MemoryLimit { limit_bytes: u64 },
    #[error("connector crashed: {message}")]
    Crashed { message: String },
    #[error("egress denied: {message}")]
    EgressDenied { message: String },
    #[error("unknown capability {capability:?}; the connector offers: {offered}")]
    UnknownCapability { capability: String, offered: String },
    /// `what` is `output`, or the kind of the connector's error (`transient error`); `limit` names the setting.
    #[error(
        "the connector's {what} is {}, over the limit of {} ({limit}); it was refused, not kept",
        crate::ByteSize(*size_bytes), crate::ByteSize(*limit_bytes)
    )]
    OutputTooLarge { what: String, size_bytes: u64, limit_bytes: u64, limit: String },
}

fn join(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl InvokeError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            InvokeError::InvalidInput { .. } => ErrorKind::InvalidInput,
            InvokeError::InvalidConfig { .. } => ErrorKind::InvalidConfig,
            InvokeError::Unauthorized { .. } => ErrorKind::Unauthorized,
            InvokeError::NotFound { .. } => ErrorKind::NotFound,
            InvokeError::RateLimited { .. } => ErrorKind::RateLimited,
            InvokeError::Transient { .. } => ErrorKind::Transient,
            InvokeError::Permanent { .. } => ErrorKind::Permanent,
            InvokeError::Timeout { .. } => ErrorKind::Timeout,
            InvokeError::MemoryLimit { .. } => ErrorKind::MemoryLimit,
            InvokeError::Crashed { .. } => ErrorKind::Crashed,
            InvokeError::EgressDenied { .. } => ErrorKind::EgressDenied,
            InvokeError::UnknownCapability { .. } => ErrorKind::UnknownCapability,
            InvokeError::OutputTooLarge { .. } => ErrorKind::OutputTooLarge,
        }
    }

    /// The delay the remote service asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            InvokeError::RateLimited { retry_after_ms: Some(ms), .. } => Some(Duration::from_millis(*ms)),
            _ => None,
        }
    }
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("not a valid connector component: {0}")]
    Compile(String),
    #[error("the component does not implement the flowhost:connector contract: {0}")]
    Contract(String),
    /// The component was built for a version of the WIT contract this host does not know.
    #[error(
        "the component was built for {found}, which this host does not support: it supports {}; rebuild the \
         connector against one of those (wit/ in flowhost's repository)", supported.join(", ")
    )]
    UnsupportedWitVersion { found: String, supported: Vec<String> },
    #[error("describe failed: {0}")]
    Describe(String),
    #[error("invalid manifest: {0}")]
    Manifest(String),
}

/// Why a connection could not be set up from its configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid connection config: {}", join(.0))]
    Invalid(Vec<FieldError>),
    #[error(
        "connection property {property:?} is a secret and must be given by reference, \
         e.g. {{\"secret\": \"MY_SECRET\"}}, never inline"
    )]
    InlineSecret { property: String },
    #[error(
        "secret {name:?} (for property {property:?}) is not set: define it in the secrets file or the environment (under `flowhost serve`, the environment counts only with `[secrets] environment = true`)"
    )]
    MissingSecret { property: String, name: String },
    #[error(
        "secret {name:?} (for property {property:?}) is not one the operator lets flows use: list it in flowhost.toml's `[secrets] allow`, or define it in the secrets file"
    )]
    SecretNotAllowed { property: String, name: String },
    #[error("invalid allowed host {pattern:?}: {reason}")]
    AllowedHost { pattern: String, reason: String },
}
