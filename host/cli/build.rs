//! Builds the connectors that ship inside the `flowhost` binary (mParticle and Antavo) to components.

fn main() {
    let root = connector_build::workspace_root(env!("CARGO_MANIFEST_DIR"));
    let components = connector_build::build(
        &root,
        &["mparticle-connector", "antavo-connector"],
        &["mparticle_connector", "antavo_connector"],
    );
    let [mparticle, antavo] = &components[..] else { unreachable!("two artifacts were asked for") };
    println!("cargo:rustc-env=FLOWHOST_MPARTICLE_COMPONENT={}", mparticle.path.display());
    println!("cargo:rustc-env=FLOWHOST_ANTAVO_COMPONENT={}", antavo.path.display());
}
