//! Builds the connectors that ship inside the `flowhost` binary to components: the mParticle and Antavo
//! connectors (Rust) and the HTTP connector (TypeScript, which needs Node.js).

use connector_build::TypeScriptConnector;

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
    let http = TypeScriptConnector { name: "http", entry: "connectors/http/src/index.ts", wit: None };
    let [http] = &connector_build::build_typescript(&root, &[http])[..] else { unreachable!("one connector") };
    println!("cargo:rustc-env=FLOWHOST_HTTP_COMPONENT={}", http.path.display());
}
