//! Connectors built into the `flowhost` binary, compiled to components by `build.rs`.

/// The mParticle connector component (`connectors/mparticle`).
pub const MPARTICLE: &[u8] = include_bytes!(env!("FLOWHOST_MPARTICLE_COMPONENT"));

/// The Antavo connector component (`connectors/antavo`).
pub const ANTAVO: &[u8] = include_bytes!(env!("FLOWHOST_ANTAVO_COMPONENT"));

/// The components of the built-in connectors.
pub const COMPONENTS: &[&[u8]] = &[MPARTICLE, ANTAVO];
