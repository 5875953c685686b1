//! The plugins of one folder, swapped atomically on reload.
//!
//! Readers take a snapshot (an `Arc`) and call plugins from it, so a call
//! in flight during a reload finishes on the version it started with. A
//! reload builds the next snapshot beside the current one: unchanged files
//! keep their loaded plugin, changed and new ones are loaded, a file that
//! fails to load keeps its previous version (if any) and is reported, a
//! removed file is dropped. The daemon calls [`PluginSet::reload`] from its
//! watcher; commands call it once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use sha2::{Digest, Sha256};

use super::host::{LoadOptions, Plugin, PluginHost};
use super::limits::Limits;
use super::manifest::Manifest;
use super::snapshot::Plugins;
use super::{ErrorKind, PluginError};

/// A folder of plugins and the versions currently loaded from it.
pub struct PluginSet {
    host: Arc<PluginHost>,
    dir: PathBuf,
    defaults: Limits,
    current: RwLock<Arc<BTreeMap<String, Loaded>>>,
    /// Serializes reloads; readers never wait for it.
    reloading: Mutex<()>,
}

#[derive(Clone)]
struct Loaded {
    plugin: Arc<Plugin>,
    /// SHA-256 of the `.wasm` and `.toml` contents it was loaded from.
    fingerprint: [u8; 32],
}

/// What one reload changed.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Plugins loaded for the first time or in a new version.
    pub loaded: Vec<String>,
    /// Plugins whose file is gone.
    pub unloaded: Vec<String>,
    /// Plugins that failed to load; a previous version, if any, stays.
    pub failed: Vec<PluginError>,
    /// The folder could not be listed; nothing changed.
    pub dir_error: Option<String>,
}

impl PluginSet {
    /// An empty set over `dir`; call [`PluginSet::reload`] to load it.
    pub fn new(host: Arc<PluginHost>, dir: PathBuf, defaults: Limits) -> PluginSet {
        PluginSet {
            host,
            dir,
            defaults,
            current: RwLock::new(Arc::new(BTreeMap::new())),
            reloading: Mutex::new(()),
        }
    }

    /// The runtime the plugins run on.
    pub fn host(&self) -> &PluginHost {
        &self.host
    }

    /// The plugins loaded now, by name.
    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        self.snapshot()
            .values()
            .map(|loaded| loaded.plugin.clone())
            .collect()
    }

    /// The plugins loaded now, callable, for one run.
    pub fn current(&self) -> Plugins {
        Plugins::new(self.host.clone(), self.plugins())
    }

    /// The plugin named `name` (its file stem), if loaded.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.snapshot()
            .get(name)
            .map(|loaded| loaded.plugin.clone())
    }

    fn snapshot(&self) -> Arc<BTreeMap<String, Loaded>> {
        self.current
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Brings the set in line with the folder (see the module docs).
    pub fn reload(&self) -> ReloadReport {
        let _reloading = self
            .reloading
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let previous = self.snapshot();
        let mut report = ReloadReport::default();
        let files = match wasm_files(&self.dir) {
            Ok(files) => files,
            Err(err) => {
                report.dir_error = Some(format!("{}: {err}", self.dir.display()));
                return report;
            }
        };
        let mut next = BTreeMap::new();
        for (name, wasm_path) in files {
            let kept = previous.get(&name);
            match self.load(&name, &wasm_path, kept) {
                Ok(loaded) => {
                    if kept.is_none_or(|kept| !Arc::ptr_eq(&kept.plugin, &loaded.plugin)) {
                        report.loaded.push(name.clone());
                    }
                    next.insert(name, loaded);
                }
                Err(err) => {
                    tracing::warn!("{err}");
                    report.failed.push(err);
                    if let Some(kept) = kept {
                        next.insert(name, kept.clone());
                    }
                }
            }
        }
        report.unloaded = previous
            .keys()
            .filter(|name| !next.contains_key(*name))
            .cloned()
            .collect();
        for name in &report.loaded {
            tracing::info!(plugin = %name, "plugin loaded");
        }
        for name in &report.unloaded {
            tracing::info!(plugin = %name, "plugin unloaded");
        }
        *self
            .current
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Arc::new(next);
        report
    }

    /// Loads `name` unless its files are those `kept` was loaded from.
    fn load(
        &self,
        name: &str,
        wasm_path: &Path,
        kept: Option<&Loaded>,
    ) -> Result<Loaded, PluginError> {
        let load_error = |message: String| PluginError::new(name, None, ErrorKind::Load(message));
        let bytes = std::fs::read(wasm_path)
            .map_err(|err| load_error(format!("{}: cannot read: {err}", wasm_path.display())))?;
        let toml_path = wasm_path.with_extension("toml");
        let toml_bytes = std::fs::read(&toml_path).unwrap_or_default();
        let mut hasher = Sha256::new();
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
        hasher.update(&toml_bytes);
        let fingerprint: [u8; 32] = hasher.finalize().into();
        if let Some(kept) = kept.filter(|kept| kept.fingerprint == fingerprint) {
            return Ok(kept.clone());
        }
        let (manifest, limits) = Manifest::read(&toml_path, self.defaults).map_err(load_error)?;
        let options = LoadOptions {
            limits,
            weight: manifest.weight,
            settings_json: manifest.settings_json(),
        };
        let plugin = self.host.load(name, &bytes, options)?;
        Ok(Loaded {
            plugin: Arc::new(plugin),
            fingerprint,
        })
    }
}

/// `NAME.wasm` files directly in `dir`, by name. A missing folder has none.
fn wasm_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "wasm")
            && path.is_file()
            && let Some(stem) = path.file_stem().and_then(|stem| stem.to_str())
        {
            files.push((stem.to_owned(), path.clone()));
        }
    }
    files.sort();
    Ok(files)
}
