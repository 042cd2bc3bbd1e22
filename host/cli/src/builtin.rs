//! Connectors built into the `flowhost` binary, compiled to components by `build.rs`.

/// The mParticle connector component (`connectors/mparticle`, Rust).
pub const MPARTICLE: &[u8] = include_bytes!(env!("FLOWHOST_MPARTICLE_COMPONENT"));

/// The Antavo connector component (`connectors/antavo`).
pub const ANTAVO: &[u8] = include_bytes!(env!("FLOWHOST_ANTAVO_COMPONENT"));

/// The generic HTTP connector component (`connectors/http`, TypeScript).
pub const HTTP: &[u8] = include_bytes!(env!("FLOWHOST_HTTP_COMPONENT"));

/// The components of the built-in connectors.
pub const COMPONENTS: &[&[u8]] = &[MPARTICLE, ANTAVO, HTTP];
