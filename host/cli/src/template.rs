//! `flowhost connector new`: a connector project that builds and passes `flowhost connector test` as generated,
//! in Rust or TypeScript. The project is self-contained: it carries a copy of the SDK and of the WIT it is
//! built against (the SDKs are not published to a registry), and the lockfile the repository builds with.

use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};

/// The languages a connector can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    Rust,
    Typescript,
}

/// The WIT each SDK is built against: the Rust SDK is on 0.2.0, the TypeScript SDK still on 0.1.0 (the host loads
/// both).
const WIT_V0_1: &str = include_str!("../../../wit/v0.1.0/connector.wit");
const WIT_V0_2: &str = include_str!("../../../wit/v0.2.0/connector.wit");

const TS_SDK: &[(&str, &str)] = &[
    ("sdk/src/index.ts", include_str!("../../../connectors/sdk-typescript/src/index.ts")),
    ("sdk/src/encoding.ts", include_str!("../../../connectors/sdk-typescript/src/encoding.ts")),
    ("sdk/tools/build.mjs", include_str!("../../../connectors/sdk-typescript/tools/build.mjs")),
    ("sdk/wit/worlds.wit", include_str!("../../../connectors/sdk-typescript/wit/worlds.wit")),
    ("sdk/wit/deps/flowhost-connector/connector.wit", WIT_V0_1),
];
const TS_PACKAGE: &str = include_str!("../../../connectors/sdk-typescript/package.json");
const TS_LOCK: &str = include_str!("../../../connectors/sdk-typescript/package-lock.json");
const TS_INDEX: &str = include_str!("../templates/typescript/index.ts");

const RUST_SDK: &[(&str, &str)] = &[
    ("sdk/src/lib.rs", include_str!("../../../connectors/sdk/src/lib.rs")),
    ("sdk/src/arena.rs", include_str!("../../../connectors/sdk/src/arena.rs")),
    ("sdk/wit/connector.wit", WIT_V0_2),
];
const RUST_LIB: &str = include_str!("../templates/rust/lib.rs");
const CARGO_LOCK: &str = include_str!("../../../Cargo.lock");
const RUST_TOOLCHAIN: &str = include_str!("../../../rust-toolchain.toml");

/// A connector id: lower case letters, digits and dashes, starting with a letter.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !valid {
        bail!(
            "{name:?} is not a connector id: use lower-case letters, digits and dashes, starting with a letter (e.g. acme-crm)"
        );
    }
    Ok(())
}

/// "acme-crm" → "Acme Crm".
fn title(name: &str) -> String {
    name.split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes a new connector project `name` into `dir` (which must not exist) and returns the files written.
pub fn generate(name: &str, language: Language, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    check_name(name)?;
    if dir.exists() {
        bail!("{} already exists: choose another directory (--dir) or remove it", dir.display());
    }
    let crate_name = name.replace('-', "_");
    let fill = |text: &str| {
        text.replace("{{name}}", name).replace("{{title}}", &title(name)).replace("{{crate}}", &crate_name)
    };
    let mut files: Vec<(String, String)> = Vec::new();
    match language {
        Language::Typescript => {
            for (path, text) in TS_SDK {
                files.push((path.to_string(), text.to_string()));
            }
            files.push(("src/index.ts".into(), fill(TS_INDEX)));
            let mut package: serde_json::Value = serde_json::from_str(TS_PACKAGE)?;
            package["name"] = name.into();
            package["description"] = format!("The {} flowhost connector", title(name)).into();
            package["scripts"] = serde_json::json!({
                "build": format!("node sdk/tools/build.mjs --entry src/index.ts --out dist/{name}.wasm"),
                "test": format!("flowhost connector test dist/{name}.wasm"),
            });
            files.push(("package.json".into(), serde_json::to_string_pretty(&package)? + "\n"));
            // The repository's lockfile, under the project's name: `npm ci` installs exactly what flowhost's own
            // connectors are built with.
            let mut lock: serde_json::Value = serde_json::from_str(TS_LOCK)?;
            lock["name"] = name.into();
            lock["packages"][""]["name"] = name.into();
            files.push(("package-lock.json".into(), serde_json::to_string_pretty(&lock)? + "\n"));
            files.push((".gitignore".into(), "node_modules/\ndist/\n".into()));
            files.push(("README.md".into(), fill(TS_README)));
        }
        Language::Rust => {
            for (path, text) in RUST_SDK {
                // The copied SDK reads the WIT beside it.
                files.push((path.to_string(), text.replace("\"../../wit/v0.2.0\"", "\"wit\"")));
            }
            files.push(("sdk/Cargo.toml".into(), RUST_SDK_MANIFEST.into()));
            files.push(("src/lib.rs".into(), fill(RUST_LIB)));
            files.push(("Cargo.toml".into(), fill(RUST_MANIFEST)));
            // The repository's lockfile: cargo keeps the versions of the crates the project uses and drops the rest.
            files.push(("Cargo.lock".into(), CARGO_LOCK.into()));
            files.push(("rust-toolchain.toml".into(), RUST_TOOLCHAIN.into()));
            files.push((".gitignore".into(), "target/\n".into()));
            files.push(("README.md".into(), fill(RUST_README)));
        }
    }
    let mut written = Vec::new();
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a file is in a directory"))
            .with_context(|| format!("cannot create {}", path.display()))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

const RUST_SDK_MANIFEST: &str = r#"[package]
name = "flowhost-connector-sdk"
description = "Guest-side bindings and helpers for writing flowhost connectors (a copy made by flowhost connector new)"
version = "0.1.0"
edition = "2024"
license = "Apache-2.0"
publish = false

[dependencies]
wit-bindgen = "0.61"
serde = { version = "1", features = ["derive"] }
serde_json = { version = "1", features = ["preserve_order", "raw_value"] }
"#;

const RUST_MANIFEST: &str = r#"[package]
name = "{{name}}"
description = "The {{title}} flowhost connector"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
flowhost-connector-sdk = { path = "sdk" }
serde_json = { version = "1", features = ["preserve_order", "raw_value"] }

# A project of its own, not a member of an enclosing workspace.
[workspace]

# The profile flowhost builds its own connectors with: small, and fast where it counts.
[profile.wasm]
inherits = "release"
opt-level = "s"
debug = false
strip = "debuginfo"
lto = true
codegen-units = 1

[profile.wasm.package.serde_json]
opt-level = 3
"#;

const TS_README: &str = r#"# {{title}}

A flowhost connector in TypeScript, made by `flowhost connector new {{name}} --lang typescript`.

```sh
npm ci                                        # the SDK's packages, exactly as locked
npm run build                                 # dist/{{name}}.wasm
flowhost connector test dist/{{name}}.wasm    # the acceptance suite
```

`src/index.ts` is the connector; `sdk/` is flowhost's TypeScript SDK (helpers, the build, the WIT).
"#;

const RUST_README: &str = r#"# {{title}}

A flowhost connector in Rust, made by `flowhost connector new {{name}} --lang rust`.

```sh
cargo build --target wasm32-wasip2 --profile wasm
flowhost connector test target/wasm32-wasip2/wasm/{{crate}}.wasm
```

`src/lib.rs` is the connector; `sdk/` is flowhost's Rust SDK with the WIT it is built against.
"#;
