//! Connectors: WebAssembly components that the host loads, describes, validates input for and invokes in
//! a sandbox. See `wit/v0.2.0/connector.wit` for the contract (and `bindings` for the versions loaded).

mod batcher;
mod bindings;
pub mod component_cache;
pub mod egress;
mod engine;
pub mod error;
pub mod http_client;
mod invocation;
mod invocation_pool;
mod kv_cache;
pub mod manifest;
pub mod pacing;
mod receive;
pub mod registry;
mod runtime;
pub mod sandbox;
pub mod secrets;
pub mod strict_inputs;

pub use batcher::MAX_BATCH;
pub use component_cache::LoadSource;
pub use error::{ConfigError, ErrorKind, FieldError, InvokeError, LoadError};
pub use http_client::{FetchError, FetchRequest, FetchResponse, HttpLimits, HttpTransport, TransportFuture};
pub use invocation::{Invocation, InvocationContext};
pub use kv_cache::CacheLimits;
pub use manifest::{CapabilityInfo, ConnectionProperty, Manifest, unwrap_davinci};
pub use registry::ConnectorRegistry;
pub use runtime::{
    CRASH_LOG_PREFIX, Connection, ConnectionOptions, Connector, Runtime, RuntimeConfig, SUPPORTED_WIT_VERSIONS,
};
pub use sandbox::{LogLevel, LogLine, LogSource, SandboxLimits};
pub use secrets::{Redactor, SecretStore};
pub use strict_inputs::InputError;
