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

/// One TypeScript connector: the component's name and its entry module, relative to the workspace root.
pub struct TypeScriptConnector<'a> {
    pub name: &'a str,
    pub entry: &'a str,
    /// The WIT directory to build against, when not the SDK's own (tests build for a WIT version the host does
    /// not know).
    pub wit: Option<PathBuf>,
}

/// The TypeScript SDK, relative to the workspace root.
const TYPESCRIPT_SDK: &str = "connectors/sdk-typescript";

/// Builds TypeScript connectors to components with the SDK's build (`tools/build.mjs`): its npm packages are
/// installed with `npm ci` from the SDK's lockfile into `<target>/typescript/node_modules`, once per lockfile;
/// each component is rebuilt when its sources, the SDK, the WIT or the lockfile change. Needs Node.js 18 or
/// later with npm on the PATH, and fails with a message saying so without it.
pub fn build_typescript(workspace_root: &Path, connectors: &[TypeScriptConnector]) -> Vec<Component> {
    let sdk = workspace_root.join(TYPESCRIPT_SDK);
    println!("cargo:rerun-if-changed={}", workspace_root.join("wit").display());
    for dir in ["src", "tools", "wit", "package.json", "package-lock.json"] {
        println!("cargo:rerun-if-changed={}", sdk.join(dir).display());
    }
    for connector in connectors {
        let dir = workspace_root.join(connector.entry);
        let dir = dir.parent().expect("an entry is a file in a directory");
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    println!("cargo:rerun-if-env-changed=PATH");
    check_node();

    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root.join("target"))
        .join("typescript");
    std::fs::create_dir_all(&dir).expect("cannot create the TypeScript build directory");
    // Build scripts of several crates may build TypeScript at once: one at a time in this directory.
    let lock = std::fs::File::create(dir.join(".lock")).expect("cannot create the TypeScript build lock");
    lock.lock().expect("cannot lock the TypeScript build directory");

    let lockfile = std::fs::read(sdk.join("package-lock.json")).expect("connectors/sdk-typescript/package-lock.json");
    if std::fs::read(dir.join("package-lock.json")).ok().as_ref() != Some(&lockfile)
        || !dir.join("node_modules/.package-lock.json").exists()
    {
        std::fs::copy(sdk.join("package.json"), dir.join("package.json")).expect("copy package.json");
        std::fs::copy(sdk.join("package-lock.json"), dir.join("package-lock.json")).expect("copy package-lock.json");
        run(
            Command::new(npm()).current_dir(&dir).args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]),
            "npm ci (the TypeScript SDK's packages, from connectors/sdk-typescript/package-lock.json)",
        );
    }

    let mut inputs = Vec::new();
    for path in [sdk.join("src"), sdk.join("tools"), sdk.join("wit"), sdk.join("package-lock.json")] {
        collect_files(&path, &mut inputs);
    }
    connectors
        .iter()
        .map(|connector| {
            let entry = workspace_root.join(connector.entry);
            let out = dir.join("components").join(format!("{}.wasm", connector.name));
            let mut files = inputs.clone();
            collect_files(entry.parent().unwrap(), &mut files);
            if let Some(wit) = &connector.wit {
                collect_files(wit, &mut files);
            }
            let stamp = stamp_of(&files);
            let stamp_path = out.with_extension("stamp");
            if !out.exists() || std::fs::read_to_string(&stamp_path).ok().as_deref() != Some(stamp.as_str()) {
                let mut command = Command::new("node");
                command
                    .current_dir(workspace_root)
                    .arg(sdk.join("tools/build.mjs"))
                    .arg("--entry")
                    .arg(&entry)
                    .arg("--out")
                    .arg(&out)
                    .arg("--work")
                    .arg(dir.join("work").join(connector.name))
                    .arg("--node-modules")
                    .arg(dir.join("node_modules"));
                if let Some(wit) = &connector.wit {
                    command.arg("--wit").arg(wit);
                }
                run(&mut command, &format!("building the TypeScript connector {}", connector.entry));
                std::fs::write(&stamp_path, &stamp).expect("write the build stamp");
            }
            Component { name: connector.name.to_string(), path: out }
        })
        .collect()
}

/// The directory of the TypeScript SDK's installed packages (after [`build_typescript`]).
pub fn typescript_node_modules(workspace_root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root.join("target"))
        .join("typescript/node_modules")
}

fn npm() -> &'static str {
    if cfg!(windows) { "npm.cmd" } else { "npm" }
}

/// Fails the build with a clear message when Node.js (18 or later) or npm is missing.
fn check_node() {
    const NEEDED: &str = "flowhost's HTTP connector and TypeScript test connectors are written in TypeScript: \
        building them needs Node.js 18 or later and npm on the PATH (https://nodejs.org, or your system's \
        `nodejs` and `npm` packages)";
    let version = match Command::new("node").arg("--version").output() {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout).trim().to_string(),
        Ok(output) => panic!("{NEEDED}; `node --version` failed ({})", output.status),
        Err(error) => panic!("{NEEDED}; Node.js was not found ({error})"),
    };
    let major: u32 = version.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    assert!(major >= 18, "{NEEDED}; found Node.js {version}");
    if let Err(error) = Command::new(npm()).arg("--version").output() {
        panic!("{NEEDED}; npm was not found ({error})");
    }
}

/// Runs a command, its output captured and shown only when it fails.
fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", command.get_program()));
    if !output.status.success() {
        panic!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) {
    match std::fs::read_dir(path) {
        Ok(entries) => {
            let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for path in paths {
                collect_files(&path, out);
            }
        }
        Err(_) if path.is_file() => out.push(path.to_path_buf()),
        Err(_) => {}
    }
}

/// A digest of the files' paths and contents: a component is rebuilt when it changes.
fn stamp_of(files: &[PathBuf]) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    for file in files {
        file.hash(&mut hasher);
        std::fs::read(file).unwrap_or_default().hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}
