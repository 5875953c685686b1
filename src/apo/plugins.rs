//! Plugins in APO: mutator plugins become operators under the bandit, reward
//! plugins score replayed responses, alone or weighted with the scorer.
//!
//! A mutator plugin `NAME` is the arm `plugin:NAME`, drawn like any operator
//! (prior weight from `apo.operator_weights."plugin:NAME"`, else the
//! plugin's `weight` in `NAME.toml`) and credited by the gain its children
//! bring; it costs no LLM call. It sees the parent prompt and the parent's
//! weakest and strongest training examples with their responses, scores and
//! feedback.
//!
//! A reward plugin scores each replay as an episode (the candidate as the
//! system prompt, the recorded task messages, the response as the final
//! answer). Its score for the pair is the mean of its named scores, each
//! clamped to [0, 1]; several plugins are averaged by their weights. With
//! `apo.plugin_score_weight` w, a pair scores `(1 − w) × scorer + w ×
//! plugins`; at w = 1 the scorer is not called at all. Plugin calls run on
//! the blocking pool: each is bounded by its own limits.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::dataset::Example;
use super::output::Variant;
use crate::plugin::{self, ErrorKind, MutationContext, Plugin, PluginError, Plugins, World};
use crate::trace::{Episode, LlmCall, Message, PromptRef, Source, Step};

/// Prefix of a plugin operator's name.
pub const OPERATOR_PREFIX: &str = "plugin:";

/// How many of a parent's examples a mutator is shown, each way.
const CONTEXT_EXAMPLES: usize = 3;

/// The longest input or response shown to a mutator, in characters.
const CONTEXT_CHARS: usize = 2000;

/// Bandit arms for the mutator plugins: `plugin:NAME` with its prior weight.
pub fn operator_arms(plugins: &Plugins, weights: &BTreeMap<String, f64>) -> Vec<(String, f64)> {
    plugins
        .of(World::Mutator)
        .iter()
        .map(|plugin| {
            let name = format!("{OPERATOR_PREFIX}{}", plugin.name);
            let weight = weights.get(&name).copied().unwrap_or(plugin.weight);
            (name, weight)
        })
        .collect()
}

/// `plugin:NAME` keys of `operator_weights` naming no loaded mutator plugin.
pub fn unknown_operators(plugins: &Plugins, weights: &BTreeMap<String, f64>) -> Vec<String> {
    let arms = operator_arms(plugins, &BTreeMap::new());
    weights
        .keys()
        .filter(|key| key.starts_with(OPERATOR_PREFIX))
        .filter(|key| !arms.iter().any(|(name, _)| name == *key))
        .cloned()
        .collect()
}

/// What a mutator is shown about `parent`: the examples of `weakest_ids`
/// (its minibatch, worst first) and its best-scored examples.
pub fn mutation_context(
    parent: &Variant,
    weakest_ids: &[String],
    train: &[&Example],
) -> MutationContext {
    let example = |id: &String| -> Option<plugin::Example> {
        let score = *parent.scores.get(id)?;
        let example = train.iter().find(|example| &example.id == id)?;
        Some(plugin::Example {
            input: truncate(&example.input),
            output: truncate(parent.response(id).unwrap_or_default()),
            score,
            feedback: parent.feedback_on(id).unwrap_or_default().to_owned(),
        })
    };
    let mut weakest: Vec<plugin::Example> = weakest_ids.iter().filter_map(example).collect();
    weakest.sort_by(|a, b| a.score.total_cmp(&b.score));
    weakest.truncate(CONTEXT_EXAMPLES);
    let mut by_score: Vec<(&String, f64)> = parent
        .scores
        .iter()
        .filter(|(id, _)| !weakest_ids.contains(id))
        .map(|(id, score)| (id, *score))
        .collect();
    by_score.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    let strongest = by_score
        .into_iter()
        .filter_map(|(id, _)| example(id))
        .take(CONTEXT_EXAMPLES)
        .collect();
    MutationContext { weakest, strongest }
}

fn truncate(text: &str) -> String {
    text.chars().take(CONTEXT_CHARS).collect()
}

/// Runs the mutator plugin named by the operator `operator` (`plugin:NAME`).
pub async fn mutate(
    plugins: &Plugins,
    operator: &str,
    prompt: &str,
    seed: u64,
    context: MutationContext,
) -> Result<String, PluginError> {
    let name = operator.strip_prefix(OPERATOR_PREFIX).unwrap_or(operator);
    let Some(plugin) = plugins
        .of(World::Mutator)
        .into_iter()
        .find(|plugin| plugin.name == name)
    else {
        let reason = "is not a loaded mutator plugin".to_owned();
        return Err(PluginError::new(name, None, ErrorKind::Load(reason)));
    };
    let plugins = plugins.clone();
    let prompt = prompt.to_owned();
    tokio::task::spawn_blocking(move || plugins.mutate(&plugin, &prompt, seed, &context))
        .await
        .unwrap_or_else(|join| Err(panicked(name, &join)))
}

/// Reward plugins scoring replays, with the weight of their score.
#[derive(Clone)]
pub struct PluginScorer {
    plugins: Plugins,
    reward: Vec<Arc<Plugin>>,
    /// Share of a pair's score that comes from the plugins, in (0, 1].
    pub weight: f64,
}

/// One pair to score: the candidate, its example and the response it got.
pub struct Replay<'a> {
    pub prompt: &'a str,
    pub example: &'a Example,
    pub response: &'a str,
    pub model: &'a str,
}

impl PluginScorer {
    /// The reward plugins of `plugins` at `weight`; `None` at weight 0.
    /// Fails when `weight` > 0 and there is no reward plugin.
    pub fn new(plugins: &Plugins, weight: f64) -> anyhow::Result<Option<PluginScorer>> {
        if weight <= 0.0 {
            return Ok(None);
        }
        let reward = plugins.of(World::Reward);
        if reward.is_empty() {
            anyhow::bail!(
                "apo.plugin_score_weight is {weight} but no reward plugin is loaded (check [plugins] dir and `whetstone plugins list`)"
            );
        }
        Ok(Some(PluginScorer {
            plugins: plugins.clone(),
            reward,
            weight,
        }))
    }

    /// How scores are made, for the summary: `0.5 × plugins (a, b)`.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self
            .reward
            .iter()
            .map(|plugin| plugin.name.as_str())
            .collect();
        format!("{:.2} × plugins ({})", self.weight, names.join(", "))
    }

    /// Scores each replay on the blocking pool: per replay, the plugins'
    /// weighted score in [0, 1] and a feedback line naming every score.
    pub async fn score_all(
        &self,
        replays: &[Replay<'_>],
    ) -> Vec<Result<(f64, String), PluginError>> {
        let episodes: Vec<String> = replays.iter().map(replay_episode_json).collect();
        let scorer = self.clone();
        tokio::task::spawn_blocking(move || {
            episodes
                .iter()
                .map(|episode| scorer.score(episode))
                .collect()
        })
        .await
        .unwrap_or_else(|join| {
            let err = panicked("reward plugins", &join);
            replays.iter().map(|_| Err(err.clone())).collect()
        })
    }

    fn score(&self, episode_json: &str) -> Result<(f64, String), PluginError> {
        let mut weighted = 0.0;
        let mut total_weight = 0.0;
        let mut parts = Vec::new();
        for plugin in &self.reward {
            let scores = self.plugins.score(plugin, episode_json)?;
            if scores.is_empty() {
                let reason = "no score".to_owned();
                return Err(PluginError::new(
                    &plugin.name,
                    Some(plugin.version),
                    ErrorKind::Unusable(reason),
                ));
            }
            let mean = scores
                .iter()
                .map(|score| score.value.clamp(0.0, 1.0))
                .sum::<f64>()
                / scores.len() as f64;
            weighted += plugin.weight * mean;
            total_weight += plugin.weight;
            let named: Vec<String> = scores
                .iter()
                .map(|score| format!("{}={:.2}", score.name, score.value))
                .collect();
            parts.push(format!("{}: {}", plugin.name, named.join(", ")));
        }
        let score = if total_weight > 0.0 {
            weighted / total_weight
        } else {
            0.0
        };
        Ok((score, format!("Plugin scores: {}", parts.join("; "))))
    }
}

/// The replay as an episode in the documented JSON: the candidate as the
/// prompt text, one LLM step with the messages sent and the response.
fn replay_episode_json(replay: &Replay<'_>) -> String {
    let mut messages = vec![Message {
        role: "system".to_owned(),
        content: replay.prompt.to_owned(),
    }];
    messages.extend(replay.example.messages.iter().cloned());
    let step = Step::llm(
        replay.model,
        LlmCall {
            input_messages: messages,
            output_text: Some(replay.response.to_owned()),
            ..LlmCall::default()
        },
    );
    let source = Source {
        file: "apo replay".to_owned(),
        line: 0,
    };
    let episode = Episode {
        prompt: PromptRef {
            name: None,
            version: None,
            text: Some(replay.prompt.to_owned()),
        },
        input: Some(replay.example.input.clone()),
        ..Episode::new(replay.example.id.clone(), vec![step], source)
    };
    serde_json::to_string(&episode).expect("an episode serializes")
}

fn panicked(plugin: &str, join: &tokio::task::JoinError) -> PluginError {
    let kind = ErrorKind::Trap {
        message: format!("the host task calling it failed: {join}"),
        stderr_tail: String::new(),
    };
    PluginError::new(plugin, None, kind)
}
