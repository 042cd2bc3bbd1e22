//! Builds the connectors that ship inside the `flowhost` binary. (The mParticle connector joins once it lands.)

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
