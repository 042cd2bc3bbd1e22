//! Builds the test connectors to components and writes their paths into `components.rs` as constants.

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
    "mparticle_connector",
];

fn main() {
    let root = connector_build::workspace_root(env!("CARGO_MANIFEST_DIR"));
    let components = connector_build::build(&root, &["test-connectors", "mparticle-connector"], COMPONENTS);
    let mut code = String::new();
    for component in components {
        let constant = component.name.to_uppercase();
        writeln!(code, "/// Path of the `{}` component.", component.name).unwrap();
        writeln!(code, "pub const {constant}: &str = {:?};", component.path.display().to_string()).unwrap();
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("components.rs");
    std::fs::write(out, code).unwrap();
}
