//! The plugins one run uses, fixed for its duration.
//!
//! An APO or RL run takes a [`Plugins`] from the [`super::PluginSet`] when it
//! starts; a reload while it runs changes what the next run gets, not this
//! one. Calls go through the snapshot, which holds the runtime they run on.

use std::sync::Arc;

use super::host::{Plugin, PluginHost};
use super::wit::World;
use super::{ErrorKind, MutationContext, NamedScore, PluginError};

/// A fixed list of loaded plugins and the runtime that calls them.
#[derive(Clone, Default)]
pub struct Plugins {
    host: Option<Arc<PluginHost>>,
    loaded: Vec<Arc<Plugin>>,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.loaded.iter().map(|plugin| &plugin.name))
            .finish()
    }
}

impl Plugins {
    /// No plugins at all.
    pub fn none() -> Plugins {
        Plugins::default()
    }

    /// `loaded`, called on `host`.
    pub fn new(host: Arc<PluginHost>, loaded: Vec<Arc<Plugin>>) -> Plugins {
        Plugins {
            host: Some(host),
            loaded,
        }
    }

    /// Every plugin, by name.
    pub fn all(&self) -> &[Arc<Plugin>] {
        &self.loaded
    }

    /// The plugins providing `world`, by name.
    pub fn of(&self, world: World) -> Vec<Arc<Plugin>> {
        self.loaded
            .iter()
            .filter(|plugin| plugin.world == world)
            .cloned()
            .collect()
    }

    /// Scores `episode_json` with the reward plugin `plugin`.
    pub fn score(
        &self,
        plugin: &Plugin,
        episode_json: &str,
    ) -> Result<Vec<NamedScore>, PluginError> {
        self.host(plugin)?.score(plugin, episode_json)
    }

    /// Mutates `prompt` with the mutator plugin `plugin`.
    pub fn mutate(
        &self,
        plugin: &Plugin,
        prompt: &str,
        seed: u64,
        context: &MutationContext,
    ) -> Result<String, PluginError> {
        self.host(plugin)?.mutate(plugin, prompt, seed, context)
    }

    fn host(&self, plugin: &Plugin) -> Result<&PluginHost, PluginError> {
        self.host.as_deref().ok_or_else(|| {
            let reason = "is not part of a loaded plugin set".to_owned();
            plugin.error(ErrorKind::Load(reason))
        })
    }
}
