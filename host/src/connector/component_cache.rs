//! Compiled components, cached on disk as precompiled artifacts in a directory only the host writes,
//! keyed by the component's content hash and the engine's compatibility hash, so that a second start
//! loads in milliseconds instead of compiling for seconds.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a loaded component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadSource {
    /// Compiled now with Cranelift.
    Compiled,
    /// Deserialized from the on-disk cache.
    DiskCache,
    /// Already loaded in this process.
    Memory,
}

/// The SHA-256 of a component's bytes, in hex.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The default cache directory: `$FLOWHOST_CACHE_DIR`, else `$XDG_CACHE_HOME/flowhost`, else
/// `~/.cache/flowhost`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("FLOWHOST_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("flowhost"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("flowhost"))
}

pub struct DiskCache {
    dir: PathBuf,
    engine_key: String,
}

impl DiskCache {
    pub fn new(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        let dir = dir.join("components");
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        Ok(DiskCache { dir, engine_key: format!("{:016x}", hasher.finish()) })
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}-{}.cwasm", self.engine_key))
    }

    /// Loads the precompiled artifact for `hash`, if there is a usable one. The file is read into memory
    /// rather than mapped, so that another process truncating it cannot fault this one.
    pub fn load(&self, engine: &Engine, hash: &str) -> Option<Component> {
        let path = self.path(hash);
        let bytes = std::fs::read(&path).ok()?;
        // SAFETY: the file is in the host-owned cache directory (mode 0700) and was written by `store`
        // below from `Component::serialize` with the same engine configuration (the engine key is part of
        // its name); wasmtime also checks the artifact's header and version before using it.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "ignoring an unusable precompiled component");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Writes the precompiled artifact atomically (temporary file, then rename).
    pub fn store(&self, hash: &str, component: &Component) {
        let result = component.serialize().map_err(|e| e.to_string()).and_then(|bytes| {
            let path = self.path(hash);
            let temporary = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&temporary, bytes)
                .and_then(|()| std::fs::rename(&temporary, &path))
                .map_err(|e| e.to_string())
        });
        if let Err(error) = result {
            tracing::warn!(%error, "could not write the precompiled component to the cache");
        }
    }
}

/// Precompiled built-in components of this process, by content hash and engine compatibility hash.
type EmbeddedArtifacts = Mutex<HashMap<(String, u64), Arc<Vec<u8>>>>;
static EMBEDDED: OnceLock<EmbeddedArtifacts> = OnceLock::new();

fn engine_hash(engine: &Engine) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}

/// Compiles `bytes`, or loads the precompiled artifact from the disk cache (or, for a component `embedded` in
/// the program, from this process's memory, where it is kept after its first load).
pub fn compile_or_load(
    engine: &Engine,
    disk: Option<&DiskCache>,
    hash: &str,
    bytes: &[u8],
    embedded: bool,
) -> wasmtime::Result<(Component, LoadSource, Duration)> {
    let started = Instant::now();
    let key = (hash.to_string(), engine_hash(engine));
    let artifacts = EMBEDDED.get_or_init(Default::default);
    if embedded && let Some(artifact) = artifacts.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned() {
        // SAFETY: the artifact was made by `Component::serialize` in this process, for an engine of the same
        // compatibility hash; it never left memory.
        let component = unsafe { Component::deserialize(engine, &artifact[..])? };
        return Ok((component, LoadSource::Memory, started.elapsed()));
    }
    let (component, source, elapsed) = compile_or_load_uncached(engine, disk, hash, bytes, started)?;
    if embedded && let Ok(artifact) = component.serialize() {
        artifacts.lock().unwrap_or_else(|e| e.into_inner()).insert(key, Arc::new(artifact));
    }
    Ok((component, source, elapsed))
}

fn compile_or_load_uncached(
    engine: &Engine,
    disk: Option<&DiskCache>,
    hash: &str,
    bytes: &[u8],
    started: Instant,
) -> wasmtime::Result<(Component, LoadSource, Duration)> {
    if let Some(component) = disk.and_then(|d| d.load(engine, hash)) {
        let elapsed = started.elapsed();
        tracing::info!(
            hash = &hash[..12],
            ms = elapsed.as_secs_f64() * 1e3,
            "loaded precompiled component from the cache"
        );
        return Ok((component, LoadSource::DiskCache, elapsed));
    }
    let component = Component::new(engine, bytes)?;
    let elapsed = started.elapsed();
    tracing::info!(hash = &hash[..12], ms = elapsed.as_secs_f64() * 1e3, "compiled component");
    if let Some(disk) = disk {
        disk.store(hash, &component);
    }
    Ok((component, LoadSource::Compiled, elapsed))
}
