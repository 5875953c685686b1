//! `[plugins]`: where plugins are found and their default limits.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use anyhow::Context;

use super::host::{HostOptions, PluginHost};
use super::limits::Limits;
use super::set::PluginSet;
use crate::section::{Checker, Section};

/// Folder of the compile cache, in the data directory.
const CACHE_DIR: &str = "plugin-cache";

/// Plugin settings. Defaults are documented in `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Folder of `NAME.wasm` components (and optional `NAME.toml`);
    /// relative to the config file's directory.
    pub dir: PathBuf,
    /// Plugin calls running at once; more wait their turn.
    pub max_concurrent_calls: u32,
    /// Default limits of every call.
    pub limits: Limits,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: PathBuf::from("plugins"),
            max_concurrent_calls: 8,
            limits: Limits::default(),
        }
    }
}

impl PluginsConfig {
    /// Range checks, reported into `check`.
    pub fn validate(&self, check: &mut Checker) {
        check.not_empty_path("dir", &self.dir);
        check.in_range("max_concurrent_calls", self.max_concurrent_calls, 1..=1024);
        check.section("limits", |check| self.limits.validate(check));
    }

    /// A plugin runtime for these settings (compile cache in
    /// `data_dir/plugin-cache`) and an empty set over `dir`: call
    /// [`PluginSet::reload`] to load it.
    pub fn open(&self, data_dir: &Path) -> anyhow::Result<PluginSet> {
        let host = PluginHost::new(&HostOptions {
            cache_dir: Some(data_dir.join(CACHE_DIR)),
            max_concurrent_calls: self.max_concurrent_calls,
        })
        .context("cannot start the plugin runtime")?;
        Ok(PluginSet::new(host, self.dir.clone(), self.limits))
    }

    /// Makes `dir` absolute against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        self.dir = base.join(&self.dir);
    }
}

impl Section for PluginsConfig {
    /// The plugin runtime (pool sizes, limits) and the watched folder are
    /// set up when the daemon starts.
    const RESTART_ONLY: &'static [&'static str] = &[""];

    fn check(&self, check: &mut Checker) {
        self.validate(check);
    }

    fn resolve_paths(&mut self, base: &Path) {
        PluginsConfig::resolve_paths(self, base);
    }
}
