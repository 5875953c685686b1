//! The `[apo]` configuration section: what to optimize and how hard to try.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Checker, Invalid};

/// Settings for one APO run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApoConfig {
    /// Name of the prompt to optimize, as traces record it.
    pub target_prompt: String,
    /// File holding the baseline text of that prompt.
    pub baseline_prompt_file: PathBuf,
    /// Folder holding the meta-prompts (`apo_critique.txt`, ...).
    pub meta_prompt_dir: PathBuf,
    /// Generations to run at most.
    pub generations: u32,
    /// Candidates evaluated per generation (survivors plus new children).
    pub population_size: usize,
    /// Survivors kept from one generation to the next.
    pub top_k: usize,
    /// Seed for every random choice the engine makes.
    pub seed: u64,
    /// Generations without improvement of the best score before stopping.
    pub patience: u32,
    /// Stop once the best training score reaches this value.
    pub target_score: Option<f64>,
    /// Share of episodes held out for validation.
    pub validation_fraction: f64,
    /// Fewest training examples a run accepts.
    pub min_train_examples: usize,
    /// Fewest validation examples a run accepts.
    pub min_validation_examples: usize,
    /// An episode's output is a reference answer when its reward is at least this.
    pub reference_min_reward: f64,
    /// Budget caps for the whole run.
    pub budget: BudgetConfig,
    /// Successive-halving settings.
    pub racing: RacingConfig,
    /// Relative weight of each mutation operator; 0 disables one.
    pub operator_weights: BTreeMap<String, f64>,
    /// Bandit temperature: lower means operator choice follows credit more greedily.
    pub bandit_temperature: f64,
    /// Phrases every candidate must contain.
    pub protected_phrases: Vec<String>,
    /// Longest candidate accepted, in characters.
    pub max_prompt_chars: usize,
    /// Keep Pareto-optimal candidates (per-example scores, then length) besides the top-k.
    pub pareto: bool,
    /// How a replayed response is scored.
    pub scorer: ScorerConfig,
    /// Token cap for each task-model response.
    pub max_response_tokens: u32,
}

/// Budget caps; a run stops starting new calls once one is reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// LLM requests (all roles, cache hits excluded).
    pub max_llm_calls: u64,
    /// Input plus output tokens.
    pub max_tokens: u64,
}

/// Successive halving over growing minibatches of training examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RacingConfig {
    /// Race new candidates instead of evaluating each on every training example.
    pub enabled: bool,
    /// Examples in the first rung.
    pub initial_examples: usize,
    /// Each rung multiplies the examples and divides the candidates by this.
    pub reduction_factor: usize,
}

/// How a replayed response is scored, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScorerConfig {
    /// The judge model rates the response against the reference answer.
    LlmJudge {
        /// Rubric meta-prompt file, relative to the working directory.
        #[serde(default = "default_rubric_file")]
        rubric_file: PathBuf,
    },
    /// 1 when the normalized response equals the reference, else 0.
    ExactMatch,
    /// Token-level F1 between response and reference.
    F1,
}

fn default_rubric_file() -> PathBuf {
    PathBuf::from("prompts/apo_judge.txt")
}

/// Names of the mutation operators, as `operator_weights` keys.
pub const OPERATOR_NAMES: [&str; 8] = [
    "add_emphasis",
    "add_constraint",
    "reorder_instructions",
    "add_example",
    "simplify",
    "critique_edit",
    "paraphrase",
    "crossover",
];

impl Default for ApoConfig {
    fn default() -> Self {
        ApoConfig {
            target_prompt: "Controller".to_string(),
            baseline_prompt_file: PathBuf::from("prompts/controller.txt"),
            meta_prompt_dir: PathBuf::from("prompts"),
            generations: 5,
            population_size: 8,
            top_k: 3,
            seed: 42,
            patience: 2,
            target_score: None,
            validation_fraction: 0.3,
            min_train_examples: 4,
            min_validation_examples: 2,
            reference_min_reward: 0.5,
            budget: BudgetConfig::default(),
            racing: RacingConfig::default(),
            operator_weights: OPERATOR_NAMES
                .iter()
                .map(|name| (name.to_string(), 1.0))
                .collect(),
            bandit_temperature: 0.1,
            protected_phrases: Vec::new(),
            max_prompt_chars: 8000,
            pareto: false,
            scorer: ScorerConfig::LlmJudge {
                rubric_file: default_rubric_file(),
            },
            max_response_tokens: 512,
        }
    }
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            max_llm_calls: 2000,
            max_tokens: 2_000_000,
        }
    }
}

impl Default for RacingConfig {
    fn default() -> Self {
        RacingConfig {
            enabled: true,
            initial_examples: 2,
            reduction_factor: 2,
        }
    }
}

impl ApoConfig {
    /// Every out-of-range value, by full key path (`apo.top_k`, ...).
    pub fn validate(&self) -> Vec<Invalid> {
        let mut check = Checker::default();
        check.section("apo", |check| self.check(check));
        check.finish()
    }

    /// Reports out-of-range values into `check`, keys relative to `[apo]`.
    pub fn check(&self, check: &mut Checker) {
        check.not_empty("target_prompt", &self.target_prompt);
        check.not_empty_path("baseline_prompt_file", &self.baseline_prompt_file);
        check.not_empty_path("meta_prompt_dir", &self.meta_prompt_dir);
        check.at_least("generations", self.generations, 1);
        check.at_least("top_k", self.top_k, 1);
        if self.population_size <= self.top_k {
            check.fail(
                "population_size",
                format!(
                    "must be greater than top_k ({}), got {}",
                    self.top_k, self.population_size
                ),
            );
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            check.fail(
                "validation_fraction",
                format!(
                    "must be between 0.0 and 1.0 (exclusive), got {:?}",
                    self.validation_fraction
                ),
            );
        }
        check.at_least("min_train_examples", self.min_train_examples, 1);
        check.at_least("min_validation_examples", self.min_validation_examples, 1);
        check.in_range(
            "reference_min_reward",
            self.reference_min_reward,
            f64::MIN..=f64::MAX,
        );
        check.section("budget", |check| {
            check.at_least("max_llm_calls", self.budget.max_llm_calls, 1);
            check.at_least("max_tokens", self.budget.max_tokens, 1);
        });
        check.section("racing", |check| {
            check.at_least("initial_examples", self.racing.initial_examples, 1);
            check.at_least("reduction_factor", self.racing.reduction_factor, 2);
        });
        check.section("operator_weights", |check| {
            for (name, weight) in &self.operator_weights {
                if !OPERATOR_NAMES.contains(&name.as_str()) {
                    check.fail(
                        name,
                        format!("unknown operator; known: {}", OPERATOR_NAMES.join(", ")),
                    );
                }
                check.in_range(name, *weight, 0.0..=f64::MAX);
            }
        });
        if !self.operator_weights.values().any(|weight| *weight > 0.0) {
            check.fail(
                "operator_weights",
                "at least one operator needs a weight > 0",
            );
        }
        if !(self.bandit_temperature.is_finite() && self.bandit_temperature > 0.0) {
            check.fail(
                "bandit_temperature",
                format!("must be > 0, got {:?}", self.bandit_temperature),
            );
        }
        check.at_least("max_prompt_chars", self.max_prompt_chars, 1);
        check.at_least("max_response_tokens", self.max_response_tokens, 1);
        if let Some(target) = self.target_score {
            check.in_range("target_score", target, f64::MIN..=f64::MAX);
        }
        if let ScorerConfig::LlmJudge { rubric_file } = &self.scorer {
            check.section("scorer", |check| {
                check.not_empty_path("rubric_file", rubric_file)
            });
        }
    }

    /// Makes relative file paths absolute by joining them onto `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        self.baseline_prompt_file = base.join(&self.baseline_prompt_file);
        self.meta_prompt_dir = base.join(&self.meta_prompt_dir);
        if let ScorerConfig::LlmJudge { rubric_file } = &mut self.scorer {
            *rubric_file = base.join(&*rubric_file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_parse_from_empty_toml() {
        let cfg: ApoConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, ApoConfig::default());
        assert!(cfg.validate().is_empty());
        assert_eq!(cfg.top_k, 3);
        assert_eq!(cfg.target_prompt, "Controller");
    }

    #[test]
    fn scorer_is_tagged_by_type_and_unknown_keys_fail() {
        let cfg: ApoConfig = toml::from_str("scorer = { type = \"f1\" }").unwrap();
        assert_eq!(cfg.scorer, ScorerConfig::F1);
        assert!(toml::from_str::<ApoConfig>("generationz = 3").is_err());
    }

    #[test]
    fn validate_names_every_bad_key() {
        let mut cfg = ApoConfig {
            top_k: 0,
            validation_fraction: 1.5,
            ..ApoConfig::default()
        };
        cfg.operator_weights.insert("teleport".into(), 1.0);
        let errors: Vec<String> = cfg
            .validate()
            .into_iter()
            .map(|invalid| invalid.key)
            .collect();
        let errors = errors.join("\n");
        assert!(errors.contains("apo.top_k"), "{errors}");
        assert!(errors.contains("apo.validation_fraction"), "{errors}");
        assert!(errors.contains("apo.operator_weights.teleport"), "{errors}");
    }
}
