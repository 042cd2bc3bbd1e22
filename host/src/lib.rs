//! flowhost: runs JSON flows whose nodes call connectors compiled as WebAssembly components.
//!
//! The library is what the `flowhost` binary runs; platforms embed it the same way.

pub mod cli;
pub mod connector;
