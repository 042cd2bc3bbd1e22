//! The connectors a host can run, by id and version: the ones built into the binary and the components
//! found in connector directories.

use super::{Connector, LoadError, Runtime};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Default, Clone)]
pub struct ConnectorRegistry {
    connectors: Vec<Arc<Connector>>,
    /// The ids of the built-in connectors: reserved, so that a component found in a directory cannot take
    /// one (and with it the connections, and secrets, that flows give the built-in).
    builtin: BTreeSet<String>,
    /// Built-in ids the operator lets a component take.
    overridable: BTreeSet<String>,
}

impl ConnectorRegistry {
    /// Loads every `*.wasm` in each directory (not recursively).
    pub async fn load_dirs(&mut self, runtime: &Runtime, dirs: &[PathBuf]) -> Result<(), LoadError> {
        for dir in dirs {
            let entries =
                std::fs::read_dir(dir).map_err(|source| LoadError::Read { path: dir.display().to_string(), source })?;
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
                .collect();
            paths.sort();
            for path in paths {
                let connector = runtime.load_file(&path).await.map_err(|e| with_path(&path, e))?;
                self.add_component(connector).map_err(|e| LoadError::Manifest(format!("{}: {e}", path.display())))?;
            }
        }
        Ok(())
    }

    /// Adds a built-in connector and reserves its id.
    pub fn add_builtin(&mut self, connector: Arc<Connector>) {
        self.builtin.insert(connector.manifest().id.clone());
        self.add(connector);
    }

    /// Lets components take these built-in ids (`[connectors] override_builtin` in flowhost.toml).
    pub fn allow_overrides(&mut self, ids: &[String]) {
        self.overridable.extend(ids.iter().cloned());
    }

    /// Adds a component from outside the binary (a connector directory, a file). One whose id is a built-in
    /// connector's is refused unless the operator allowed it (then it replaces the built-in), or unless it is
    /// byte for byte the built-in.
    pub fn add_component(&mut self, connector: Arc<Connector>) -> Result<(), String> {
        let id = connector.manifest().id.clone();
        if self.builtin.contains(&id) {
            // The same bytes as the built-in (a build's copy in a connector folder) are the built-in: nothing to take.
            if self.connectors.iter().any(|c| c.manifest().id == id && c.hash() == connector.hash()) {
                return Ok(());
            }
            if !self.overridable.contains(&id) {
                return Err(format!(
                    "connector id {id:?} is a built-in connector's, and a component may take it only when the operator \
                     says so (`[connectors] override_builtin = [\"{id}\"]` in flowhost.toml): give the component \
                     another id"
                ));
            }
            self.connectors.retain(|c| c.manifest().id != id);
            self.builtin.remove(&id);
        }
        self.add(connector);
        Ok(())
    }

    pub fn add(&mut self, connector: Arc<Connector>) {
        let manifest = connector.manifest();
        self.connectors.retain(|c| !(c.manifest().id == manifest.id && c.manifest().version == manifest.version));
        self.connectors.push(connector);
    }

    pub fn all(&self) -> &[Arc<Connector>] {
        &self.connectors
    }

    /// The highest version of connector `id` that satisfies `requirement` (a semver requirement, `*` for any).
    pub fn resolve(&self, id: &str, requirement: &str) -> Result<&Arc<Connector>, String> {
        let requirement = semver::VersionReq::parse(requirement)
            .map_err(|e| format!("version requirement {requirement:?} is not valid: {e}"))?;
        let candidates: Vec<&Arc<Connector>> = self.connectors.iter().filter(|c| c.manifest().id == id).collect();
        if candidates.is_empty() {
            let known: Vec<&str> = self.connectors.iter().map(|c| c.manifest().id.as_str()).collect();
            return Err(format!("unknown connector {id:?}; known connectors: {}", known.join(", ")));
        }
        candidates
            .iter()
            .filter_map(|c| semver::Version::parse(&c.manifest().version).ok().map(|v| (v, *c)))
            .filter(|(v, _)| requirement.matches(v))
            .max_by(|(a, _), (b, _)| a.cmp(b))
            .map(|(_, c)| c)
            .ok_or_else(|| {
                let versions: Vec<&str> = candidates.iter().map(|c| c.manifest().version.as_str()).collect();
                format!("no version of connector {id:?} matches {requirement}; available: {}", versions.join(", "))
            })
    }
}

fn with_path(path: &Path, error: LoadError) -> LoadError {
    match error {
        LoadError::Read { .. } => error,
        other => LoadError::Manifest(format!("{}: {other}", path.display())),
    }
}
