//! Reward plugins in RL: each loaded reward plugin scores every episode, and
//! the weighted sum of its named scores is added to the episode's final
//! reward (its last decision), on top of the rewards the trace carries.
//!
//! A plugin's weight is `rl.plugin_reward_weights.NAME`, else the `weight`
//! of its `NAME.toml`; weight 0 leaves it out. Scores are used as returned
//! (a plugin may return penalties), so the scale is the plugin author's to
//! choose. An episode a plugin fails on (a trap, a limit, an error it
//! returns, a non-finite score) is skipped whole, so the policy never learns
//! from a reward that is missing a part; the report counts the failures per
//! plugin and quotes the first.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::plugin::{Plugin, Plugins, World};
use crate::trace::Episode;

/// What the reward plugins added, per episode and per plugin.
#[derive(Debug, Clone, Default)]
pub struct PluginRewards {
    /// Per episode (in input order): the reward to add, or `None` when a
    /// plugin failed on it. Empty when no reward plugin is used.
    pub per_episode: Vec<Option<f64>>,
    /// Per plugin used, by name.
    pub stats: Vec<PluginRewardStats>,
}

/// One reward plugin's part in a training run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PluginRewardStats {
    pub plugin: String,
    /// The weight its scores were added with.
    pub weight: f64,
    /// Episodes it scored.
    pub scored: usize,
    /// Episodes it failed on (skipped from training).
    pub failed: usize,
    /// Mean weighted reward it added over the episodes it scored.
    pub mean_reward: Option<f64>,
    /// The first failure, as the plugin host reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// Scores `episodes` with the reward plugins of `plugins`, spread over the
/// machine's cores (the plugin host bounds how many calls run at once).
pub fn compute(
    episodes: &[Episode],
    plugins: &Plugins,
    weights: &BTreeMap<String, f64>,
    max_abs_reward: f64,
) -> PluginRewards {
    let used: Vec<(Arc<Plugin>, f64)> = plugins
        .of(World::Reward)
        .into_iter()
        .map(|plugin| {
            let weight = weights.get(&plugin.name).copied().unwrap_or(plugin.weight);
            (plugin, weight)
        })
        .filter(|(_, weight)| *weight != 0.0)
        .collect();
    if used.is_empty() {
        return PluginRewards::default();
    }
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = episodes.len().div_ceil(threads).max(1);
    // Per episode, per plugin: the weighted reward or the error.
    let results: Vec<Vec<Result<f64, String>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = episodes
            .chunks(chunk)
            .map(|chunk| {
                let used = &used;
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|episode| score_episode(plugins, used, episode, max_abs_reward))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });

    let mut stats: Vec<PluginRewardStats> = used
        .iter()
        .map(|(plugin, weight)| PluginRewardStats {
            plugin: plugin.name.clone(),
            weight: *weight,
            scored: 0,
            failed: 0,
            mean_reward: None,
            first_error: None,
        })
        .collect();
    let mut sums = vec![0.0; used.len()];
    let per_episode = results
        .into_iter()
        .map(|parts| {
            let mut total = Some(0.0);
            for (idx, part) in parts.into_iter().enumerate() {
                match part {
                    Ok(reward) => {
                        stats[idx].scored += 1;
                        sums[idx] += reward;
                        total = total.map(|total| total + reward);
                    }
                    Err(err) => {
                        stats[idx].failed += 1;
                        stats[idx].first_error.get_or_insert(err);
                        total = None;
                    }
                }
            }
            total
        })
        .collect();
    for (stat, sum) in stats.iter_mut().zip(sums) {
        stat.mean_reward = (stat.scored > 0).then(|| sum / stat.scored as f64);
        if let Some(err) = &stat.first_error {
            tracing::warn!(
                plugin = %stat.plugin,
                failed = stat.failed,
                "reward plugin failed on episodes, which are skipped: first failure: {err}"
            );
        }
    }
    PluginRewards { per_episode, stats }
}

/// Each plugin's weighted reward for `episode`.
fn score_episode(
    plugins: &Plugins,
    used: &[(Arc<Plugin>, f64)],
    episode: &Episode,
    max_abs_reward: f64,
) -> Vec<Result<f64, String>> {
    let json = match serde_json::to_string(episode) {
        Ok(json) => json,
        Err(err) => {
            let err = format!("episode {} cannot be serialized: {err}", episode.trace_id);
            return used.iter().map(|_| Err(err.clone())).collect();
        }
    };
    used.iter()
        .map(|(plugin, weight)| {
            let scores = plugins
                .score(plugin, &json)
                .map_err(|err| format!("episode {}: {err}", episode.trace_id))?;
            // Each score is finite (the host checks); their weighted sum
            // can still overflow.
            let reward = weight * scores.iter().map(|score| score.value).sum::<f64>();
            if !reward.is_finite() || reward.abs() > max_abs_reward {
                return Err(format!(
                    "episode {}: plugin `{}`: its weighted scores add up to {reward}, outside \
                     ±{max_abs_reward} (rl.max_abs_reward)",
                    episode.trace_id, plugin.name
                ));
            }
            Ok(reward)
        })
        .collect()
}
