//! flowhost: runs JSON flows whose nodes call connectors compiled as WebAssembly components.
//!
//! The library is what the `flowhost` binary runs; platforms embed it the same way: a [`Host`] loads
//! connectors, checks and loads [`Flow`]s, and runs them for events, producing a [`Run`] trace.

mod byte_size;
pub mod connector;
pub mod delivery;
pub mod flow;
mod host;
pub mod inbound;
pub mod server;
pub mod store;
mod suggest;

pub use byte_size::ByteSize;

pub use flow::{Flow, LoadedFlow, Run};
pub use host::{Host, HostConfig, HostError, InboundRuns, RunError};
