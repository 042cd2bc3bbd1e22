//! Builds the connectors that ship inside the `flowhost` binary to components: the mParticle connector (Rust)
//! and the HTTP connector (TypeScript, which needs Node.js).

use connector_build::TypeScriptConnector;

fn main() {
    let root = connector_build::workspace_root(env!("CARGO_MANIFEST_DIR"));
    let [mparticle] = &connector_build::build(&root, &["mparticle-connector"], &["mparticle_connector"])[..] else {
        unreachable!("one artifact was asked for")
    };
    println!("cargo:rustc-env=FLOWHOST_MPARTICLE_COMPONENT={}", mparticle.path.display());
    let http = TypeScriptConnector { name: "http", entry: "connectors/http/src/index.ts", wit: None };
    let [http] = &connector_build::build_typescript(&root, &[http])[..] else { unreachable!("one connector") };
    println!("cargo:rustc-env=FLOWHOST_HTTP_COMPONENT={}", http.path.display());
}
