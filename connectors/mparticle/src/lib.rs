//! Placeholder until the mParticle connector lands.
