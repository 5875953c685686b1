//! Sandboxed WebAssembly plugins: user reward functions and mutation
//! strategies.
//!
//! A plugin is a WebAssembly component implementing a world of the WIT
//! package `whetstone:plugin` (`plugins/wit/`): `reward` (score an episode)
//! or `mutator` (rewrite a prompt). Users drop `NAME.wasm`, optionally with
//! `NAME.toml`, into the plugins folder (`[plugins] dir`).
//!
//! - [`wit`]: the interface versions this host supports, and which one a
//!   component implements.
//! - [`host`]: the sandbox — engine, compile cache, one fresh store per call
//!   with memory, fuel, time and output limits.
//! - [`set`]: the plugins of a folder, reloaded atomically.
//! - [`manifest`]: the optional `NAME.toml` beside a plugin.
//! - [`snapshot`]: the plugins one run uses, fixed while it runs.
//!
//! This module knows nothing of APO or RL: a run takes [`Plugins`] from a
//! [`PluginSet`] and calls [`Plugins::score`] and [`Plugins::mutate`].

pub mod config;
pub mod host;
pub mod limits;
pub mod manifest;
pub mod set;
pub mod snapshot;
pub mod wit;

pub use config::PluginsConfig;

pub use host::{HostOptions, LoadOptions, Plugin, PluginHost};
pub use limits::{Limit, Limits};
pub use set::{PluginSet, ReloadReport};
pub use snapshot::Plugins;
pub use wit::{WitVersion, World};

/// One named score a reward plugin gave.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedScore {
    pub name: String,
    pub value: f64,
}

/// One training example shown to a mutator.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Example {
    pub input: String,
    pub output: String,
    /// 0.0 to 1.0.
    pub score: f64,
    /// Why it got that score, possibly empty.
    pub feedback: String,
}

/// What a mutator is shown besides the prompt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MutationContext {
    /// The weakest examples, worst first.
    pub weakest: Vec<Example>,
    /// The strongest examples, best first.
    pub strongest: Vec<Example>,
}

/// A plugin failed to load or a call failed. Names the plugin and, once
/// known, the interface version it implements.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("plugin `{plugin}`{}: {kind}", version.map(|v| format!(" (whetstone:plugin@{})", v.as_str())).unwrap_or_default())]
pub struct PluginError {
    /// The plugin's name (its file stem).
    pub plugin: String,
    /// The interface version, when the component got that far.
    pub version: Option<WitVersion>,
    /// What went wrong.
    pub kind: ErrorKind,
}

impl PluginError {
    /// An error of the plugin named `plugin`.
    pub fn new(plugin: &str, version: Option<WitVersion>, kind: ErrorKind) -> PluginError {
        PluginError {
            plugin: plugin.to_owned(),
            version,
            kind,
        }
    }
}

/// What went wrong with a plugin. A trap (the sandbox stopped the plugin)
/// is kept apart from an error the plugin returned itself.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ErrorKind {
    /// Not loadable: unreadable, invalid bytes, wrong world or version,
    /// bad `NAME.toml`.
    #[error("{0}")]
    Load(String),
    /// The call ran into one of its limits.
    #[error("exceeded its {detail} (limits.{})", limit.key())]
    Limit { limit: Limit, detail: String },
    /// The plugin trapped (a panic, an unreachable instruction, ...).
    #[error("trapped: {message}{}", if stderr_tail.is_empty() { String::new() } else { format!("; stderr: {stderr_tail}") })]
    Trap {
        message: String,
        stderr_tail: String,
    },
    /// The plugin returned an error of its own.
    #[error("returned an error: {0}")]
    Returned(String),
    /// The plugin returned something the caller cannot use (a NaN score,
    /// no score at all).
    #[error("returned an unusable result: {0}")]
    Unusable(String),
}
