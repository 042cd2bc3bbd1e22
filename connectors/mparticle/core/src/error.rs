//! The connector's error kinds, mirroring the WIT `connector-error` variant.

use std::fmt;

/// One problem with one field of a JSON input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The JSON pointer (RFC 6901) of the offending value, e.g. `/properties/accountId`; empty for the root.
    pub pointer: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { pointer: pointer.into(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pointer = if self.pointer.is_empty() { "(root)" } else { &self.pointer };
        write!(f, "{pointer}: {}", self.message)
    }
}

/// Why a `check` or an `invoke` failed. Only `RateLimited` and `Transient` are retried by the host by default.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input does not fit the capability; each entry names the field by JSON pointer.
    #[error("invalid input: {}", join(.0))]
    InvalidInput(Vec<FieldError>),
    /// The connection configuration is wrong or incomplete.
    #[error("invalid connection config: {0}")]
    InvalidConfig(String),
    /// mParticle refused the credentials (HTTP 401/403).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The addressed entity does not exist (HTTP 404).
    #[error("not found: {0}")]
    NotFound(String),
    /// mParticle is throttling us (HTTP 429). Retryable.
    #[error("rate limited: {message}")]
    RateLimited { retry_after_ms: Option<u64>, message: String, percentage_used: Option<u64> },
    /// A timeout, a lost connection, a 408 or a 5xx. Retryable.
    #[error("transient failure: {0}")]
    Transient(String),
    /// Anything that will not succeed unchanged (HTTP 400, 422, ...).
    #[error("permanent failure{}: {message}", .status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Permanent { status: Option<u16>, message: String, body: String },
}

impl Error {
    /// An `InvalidInput` error for one field.
    pub fn invalid_input(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidInput(vec![FieldError::new(pointer, message)])
    }

    /// A `Permanent` error without an HTTP response.
    pub fn permanent(message: impl Into<String>) -> Self {
        Error::Permanent { status: None, message: message.into(), body: String::new() }
    }

    /// The field errors of an `InvalidInput`, empty for other kinds.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            Error::InvalidInput(errors) => errors,
            _ => &[],
        }
    }

    /// True for the kinds the host retries by default.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::RateLimited { .. } | Error::Transient(_))
    }
}

fn join(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}
