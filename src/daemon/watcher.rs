//! Filesystem events for the trace folder and the configuration file.
//!
//! Events only say "look again": ingestion is incremental, so one pass reads
//! whatever changed, however many events there were. The daemon debounces
//! them and also passes on a timer, which covers filesystems that send none.

use std::path::{Path, PathBuf};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Something under the trace folder.
    Traces,
    /// The configuration file (written, replaced, or removed).
    Config,
    /// Something in the plugins folder.
    Plugins,
}

/// Watches `traces_dir` recursively, the file `config_file` (through its
/// folder, so an editor's save-by-rename is seen) and the folder
/// `plugins_dir` when it exists, sending [`Change`]s.
/// Errors are returned for the caller to report; the daemon then relies on
/// polling.
pub fn watch(
    traces_dir: &Path,
    config_file: Option<&Path>,
    plugins_dir: Option<&Path>,
    sender: mpsc::Sender<Change>,
) -> notify::Result<RecommendedWatcher> {
    let traces = traces_dir.to_path_buf();
    let config: Option<PathBuf> = config_file.map(Path::to_path_buf);
    let config_for_events = config.clone();
    let plugins: Option<PathBuf> = plugins_dir
        .filter(|dir| dir.is_dir())
        .map(Path::to_path_buf);
    let plugins_for_events = plugins.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let touches = |wanted: &dyn Fn(&Path) -> bool| event.paths.iter().any(|p| wanted(p));
        if let Some(config) = &config_for_events
            && touches(&|p| p == config)
        {
            // A full channel already holds a wake-up; dropping is fine.
            let _ = sender.try_send(Change::Config);
        }
        if let Some(plugins) = &plugins_for_events
            && touches(&|p| p.parent() == Some(plugins.as_path()))
        {
            let _ = sender.try_send(Change::Plugins);
        }
        if touches(&|p| p.starts_with(&traces)) {
            let _ = sender.try_send(Change::Traces);
        }
    })?;
    watcher.watch(traces_dir, RecursiveMode::Recursive)?;
    if let Some(parent) = config
        .as_deref()
        .and_then(Path::parent)
        .filter(|parent| *parent != traces_dir)
    {
        watcher.watch(parent, RecursiveMode::NonRecursive)?;
    }
    if let Some(plugins) = &plugins {
        watcher.watch(plugins, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}
