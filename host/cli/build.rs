//! Builds the connectors that ship inside the `flowhost` binary (the mParticle connector) to components.

fn main() {
    let root = connector_build::workspace_root(env!("CARGO_MANIFEST_DIR"));
    let [mparticle] = &connector_build::build(&root, &["mparticle-connector"], &["mparticle_connector"])[..] else {
        unreachable!("one artifact was asked for")
    };
    println!("cargo:rustc-env=FLOWHOST_MPARTICLE_COMPONENT={}", mparticle.path.display());
}
