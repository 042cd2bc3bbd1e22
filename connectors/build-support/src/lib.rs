//! Compiles connector crates of this workspace to WebAssembly components from a build script, so that
//! `cargo build` and `cargo test` on a fresh machine need nothing done by hand.
//!
//! The nested `cargo build` uses its own target directory (`<target>/wasm-components`): the outer build
//! holds the lock on the main one.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "wasm";

/// One compiled component: the cargo target name and the path of the `.wasm` file.
pub struct Component {
    pub name: String,
    pub path: PathBuf,
}

/// Builds `packages` (members of the workspace at `workspace_root`) for wasm32-wasip2 and returns the
/// components named in `artifacts` (binary names, or library names with underscores).
pub fn build(workspace_root: &Path, packages: &[&str], artifacts: &[&str]) -> Vec<Component> {
    for watched in ["wit", "connectors", "tests/connectors", "Cargo.lock", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", workspace_root.join(watched).display());
    }
    ensure_target_installed();

    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root.join("target"))
        .join("wasm-components");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root)
        .args(["build", "--target", TARGET, "--profile", PROFILE])
        .env("CARGO_TARGET_DIR", &target_dir);
    for package in packages {
        command.args(["--package", package]);
    }
    // The outer build's flags and wrappers (clippy, coverage) are for the host, not for the components.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        command.env_remove(var);
    }
    let status = command.status().expect("could not run cargo to build the wasm components");
    assert!(status.success(), "building the wasm components {packages:?} failed ({status})");

    let out = target_dir.join(TARGET).join(PROFILE);
    artifacts
        .iter()
        .map(|name| {
            let path = out.join(format!("{name}.wasm"));
            assert!(path.exists(), "the build produced no {}", path.display());
            Component { name: name.to_string(), path }
        })
        .collect()
}

/// Installs the wasm32-wasip2 standard library through rustup when it is missing. `rust-toolchain.toml`
/// lists the target, but a toolchain that was installed before may lack it.
fn ensure_target_installed() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(output) = Command::new(rustc).args(["--print", "sysroot"]).output() else { return };
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if Path::new(&sysroot).join("lib/rustlib").join(TARGET).exists() {
        return;
    }
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").ok();
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", TARGET]);
    if let Some(toolchain) = toolchain {
        rustup.args(["--toolchain", &toolchain]);
    }
    let status = rustup.status().expect("the wasm32-wasip2 target is missing and rustup could not be run");
    assert!(status.success(), "rustup target add {TARGET} failed");
}

/// The workspace root, two levels above a crate at `<root>/<dir>/<crate>` or one above `<root>/<crate>`.
pub fn workspace_root(manifest_dir: &str) -> PathBuf {
    Path::new(manifest_dir)
        .ancestors()
        .find(|dir| dir.join("rust-toolchain.toml").exists())
        .expect("the workspace root holds rust-toolchain.toml")
        .to_path_buf()
}
