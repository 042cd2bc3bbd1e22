//! Builds the test connectors to components (Rust, and TypeScript with Node.js) and writes their paths into
//! `components.rs` as constants.

use connector_build::TypeScriptConnector;
use std::fmt::Write;

const COMPONENTS: &[&str] = &[
    "echo",
    "fetcher",
    "infinite_loop",
    "memory_bomb",
    "stack_overflow",
    "panic",
    "signed_webhook",
    "hostile_inbound",
    "flood",
    "mparticle_connector",
];

fn main() {
    let root = connector_build::workspace_root(env!("CARGO_MANIFEST_DIR"));
    let mut components = connector_build::build(&root, &["test-connectors", "mparticle-connector"], COMPONENTS);
    // A WIT version the host does not know: wit/v0.1.0 with another version number.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let future_wit = out.join("future-wit");
    let deps = future_wit.join("deps/flowhost-connector");
    std::fs::create_dir_all(&deps).unwrap();
    let sdk_wit = root.join("connectors/sdk-typescript/wit");
    for (from, to) in [
        (root.join("wit/v0.1.0/connector.wit"), deps.join("connector.wit")),
        (sdk_wit.join("worlds.wit"), future_wit.join("worlds.wit")),
    ] {
        let text = std::fs::read_to_string(from).unwrap();
        std::fs::write(
            to,
            text.replace("flowhost:connector@0.1.0", "flowhost:connector@0.9.0").replace("@0.1.0;", "@0.9.0;"),
        )
        .unwrap();
    }
    components.extend(connector_build::build_typescript(
        &root,
        &[
            TypeScriptConnector { name: "throws", entry: "tests/connectors/typescript/throws/index.ts", wit: None },
            TypeScriptConnector {
                name: "future_wit",
                entry: "tests/connectors/typescript/future-wit/index.ts",
                wit: Some(future_wit),
            },
        ],
    ));
    let mut code = String::new();
    for component in components {
        let constant = component.name.to_uppercase();
        writeln!(code, "/// Path of the `{}` component.", component.name).unwrap();
        writeln!(code, "pub const {constant}: &str = {:?};", component.path.display().to_string()).unwrap();
    }
    // For the tests of `flowhost connector new`, which build generated projects with what the workspace uses.
    println!("cargo:rustc-env=FLOWHOST_TS_NODE_MODULES={}", connector_build::typescript_node_modules(&root).display());
    let wasm_target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("wasm-components");
    println!("cargo:rustc-env=FLOWHOST_WASM_TARGET_DIR={}", wasm_target.display());
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("components.rs");
    std::fs::write(out, code).unwrap();
}
