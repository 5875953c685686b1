//! A run's setup, all checked before any call is paid for: the baseline and
//! its source, the scorer, the dataset and its split, the guardrails, the
//! budget with validation's reserve, and the operators the bandit draws.

use anyhow::Context;

use crate::apo::bandit::Bandit;
use crate::apo::budget::Budget;
use crate::apo::config::{ApoConfig, OPERATOR_NAMES, ScorerConfig};
use crate::apo::dataset::{Dataset, DatasetSpec, Example};
use crate::apo::evaluate::Scorer;
use crate::apo::guardrails::{self, Guardrails};
use crate::apo::operators::{MetaPrompt, MetaPrompts};
use crate::apo::plugins::{self, PluginScorer};
use crate::llm::LlmClient;
use crate::plugin::Plugins;
use crate::trace::Episode;

/// The prompt to optimize and where it came from.
pub(super) struct Baseline {
    pub text: String,
    pub source: String,
    pub warning: Option<String>,
}

/// What a run works with, prepared from its configuration and episodes.
pub(super) struct Setup {
    pub baseline: Baseline,
    /// Warnings so far (the baseline's, operators naming no plugin).
    pub warnings: Vec<String>,
    pub meta: MetaPrompts,
    pub scorer: Scorer,
    pub plugin_scorer: Option<PluginScorer>,
    pub scorer_description: String,
    /// Calls one replay of one example costs (2 with the judge).
    pub calls_per_example: u64,
    pub dataset: Dataset,
    pub guardrails: Guardrails,
    pub budget: Budget,
    /// Calls kept back for the final validation.
    pub reserved_calls: u64,
    pub bandit: Bandit,
}

impl Setup {
    pub fn prepare(
        cfg: &ApoConfig,
        episodes: &[Episode],
        llm: &LlmClient,
        plugins: &Plugins,
    ) -> anyhow::Result<Setup> {
        let baseline = baseline(cfg, episodes)?;
        let mut warnings: Vec<String> = baseline.warning.iter().cloned().collect();
        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        let meta = MetaPrompts::load(cfg.meta_prompt_dir.as_deref())?;
        let plugin_scorer = PluginScorer::new(plugins, cfg.plugin_score_weight)?;
        let scorer = match &cfg.scorer {
            _ if cfg.plugin_score_weight >= 1.0 => Scorer::PluginsOnly,
            ScorerConfig::LlmJudge { rubric_file } => Scorer::LlmJudge {
                rubric: MetaPrompt::Rubric
                    .load(rubric_file.as_deref())
                    .context("loading the judge rubric (apo.scorer.rubric_file)")?,
            },
            ScorerConfig::ExactMatch => Scorer::ExactMatch,
            ScorerConfig::F1 => Scorer::F1,
        };
        let calls_per_example: u64 = match scorer {
            Scorer::LlmJudge { .. } => 2,
            _ => 1,
        };
        let dataset = dataset(cfg, episodes, &scorer)?;
        let guardrails = Guardrails::new(
            &baseline.text,
            &cfg.protected_phrases,
            cfg.protect_prohibitions,
            cfg.max_prompt_chars,
        );
        let baseline_violations = guardrails.check(&baseline.text);
        if !baseline_violations.is_empty() {
            anyhow::bail!(
                "the baseline prompt ({}) breaks its own guardrails: {}",
                baseline.source,
                baseline_violations.join("; ")
            );
        }
        let budget = Budget::new(
            cfg.budget.max_llm_calls,
            cfg.budget.max_tokens,
            llm.config().max_concurrency,
        );
        let reserved_calls =
            (cfg.finalists as u64 + 1) * dataset.validation.len() as u64 * calls_per_example;
        budget.reserve(reserved_calls, 0);
        let scorer_description = describe_scorer(&scorer, plugin_scorer.as_ref());
        let bandit = bandit(cfg, plugins, &mut warnings)?;
        Ok(Setup {
            baseline,
            warnings,
            meta,
            scorer,
            plugin_scorer,
            scorer_description,
            calls_per_example,
            dataset,
            guardrails,
            budget,
            reserved_calls,
            bandit,
        })
    }
}

/// The examples and their split (pinned by `apo.validation_ids_file`, or
/// stratified).
fn dataset(cfg: &ApoConfig, episodes: &[Episode], scorer: &Scorer) -> anyhow::Result<Dataset> {
    let pinned: Option<Vec<String>> = match &cfg.validation_ids_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading {} (apo.validation_ids_file)", path.display()))?
                .lines()
                .map(str::to_string)
                .collect(),
        ),
        None => None,
    };
    Dataset::build(
        episodes,
        &DatasetSpec {
            prompt_name: &cfg.target_prompt,
            validation_fraction: cfg.validation_fraction,
            min_train: cfg.min_train_examples,
            min_validation: cfg.min_validation_examples,
            pinned: pinned.as_deref(),
            reference_min_reward: cfg.reference_min_reward,
            require_reference: matches!(scorer, Scorer::ExactMatch | Scorer::F1),
            max_examples: cfg.max_examples,
        },
    )
}

/// The operators, built-in and plugin ones, with their weights; a weight
/// naming no loaded plugin is a warning.
fn bandit(
    cfg: &ApoConfig,
    plugins: &Plugins,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Bandit> {
    let mut arms: Vec<(String, f64)> = OPERATOR_NAMES
        .iter()
        .map(|name| {
            let weight = cfg.operator_weights.get(*name).copied().unwrap_or(0.0);
            (name.to_string(), weight)
        })
        .collect();
    arms.extend(plugins::operator_arms(plugins, &cfg.operator_weights));
    for name in plugins::unknown_operators(plugins, &cfg.operator_weights) {
        let warning = format!(
            "apo.operator_weights.\"{name}\" names no loaded mutator plugin; it is not used"
        );
        tracing::warn!("{warning}");
        warnings.push(warning);
    }
    if !arms.iter().any(|(_, weight)| *weight > 0.0) {
        anyhow::bail!("no operator has a weight > 0 (apo.operator_weights)");
    }
    Ok(Bandit::new(arms, cfg.bandit_temperature))
}

/// Training examples with a reference answer, best-rewarded first: what
/// `add_example` draws from.
pub(super) fn exemplars(dataset: &Dataset) -> Vec<&Example> {
    let mut with_reference: Vec<&Example> = dataset
        .train
        .iter()
        .filter(|example| example.reference.is_some())
        .collect();
    with_reference.sort_by(|a, b| {
        b.reward
            .partial_cmp(&a.reward)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.id.cmp(&b.id))
    });
    with_reference
}

/// Picks the baseline: the configured file, else the most recent text the
/// episodes record for the target prompt.
fn baseline(cfg: &ApoConfig, episodes: &[Episode]) -> anyhow::Result<Baseline> {
    let recorded: Vec<(usize, &Episode)> = episodes
        .iter()
        .enumerate()
        .filter(|(_, episode)| {
            episode.prompt.name.as_deref() == Some(cfg.target_prompt.as_str())
                && episode
                    .prompt
                    .text
                    .as_deref()
                    .is_some_and(|text| !text.trim().is_empty())
        })
        .collect();
    let latest = recorded
        .iter()
        .max_by_key(|(idx, episode)| (episode.start_time_unix_nano.unwrap_or(0), *idx))
        .map(|(_, episode)| *episode);
    let describe = |episode: &Episode| {
        format!(
            "version {} (trace {})",
            episode.prompt.version.as_deref().unwrap_or("unknown"),
            episode.trace_id
        )
    };
    match (&cfg.baseline_prompt_file, latest) {
        (Some(path), latest) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| {
                    format!(
                        "reading the baseline prompt {} (apo.baseline_prompt_file)",
                        path.display()
                    )
                })?
                .trim_end()
                .to_string();
            let warning = latest
                .filter(|episode| {
                    guardrails::normalize(episode.prompt.text.as_deref().unwrap_or_default())
                        != guardrails::normalize(&text)
                })
                .map(|episode| {
                    format!(
                        "apo.baseline_prompt_file {} differs from the most recent text of prompt `{}` in the traces, {}; optimizing the file's text",
                        path.display(),
                        cfg.target_prompt,
                        describe(episode)
                    )
                });
            Ok(Baseline {
                text,
                source: format!("file {} (apo.baseline_prompt_file)", path.display()),
                warning,
            })
        }
        (None, Some(episode)) => Ok(Baseline {
            text: episode
                .prompt
                .text
                .as_deref()
                .unwrap_or_default()
                .trim_end()
                .to_string(),
            source: format!(
                "traces: the most recent text of prompt `{}` among {} episodes recording it, {}",
                cfg.target_prompt,
                recorded.len(),
                describe(episode)
            ),
            warning: None,
        }),
        (None, None) => anyhow::bail!(
            "no stored episode records the text of prompt `{}`; set apo.baseline_prompt_file to a file holding it",
            cfg.target_prompt
        ),
    }
}

/// `llm_judge`, `f1`, `0.7 × f1 + 0.3 × plugins (a, b)`, ...
fn describe_scorer(scorer: &Scorer, plugins: Option<&PluginScorer>) -> String {
    let base = match scorer {
        Scorer::LlmJudge { .. } => "llm_judge",
        Scorer::ExactMatch => "exact_match",
        Scorer::F1 => "f1",
        Scorer::PluginsOnly => "",
    };
    match plugins {
        None => base.to_owned(),
        Some(plugins) if base.is_empty() => plugins.describe(),
        Some(plugins) => format!(
            "{:.2} × {base} + {}",
            1.0 - plugins.weight,
            plugins.describe()
        ),
    }
}
