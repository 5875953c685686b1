//! The `[apo]` configuration section: what to optimize and how hard to try.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::operators::MetaPrompt;
use super::plugins::OPERATOR_PREFIX;
use super::replies::ReplyConfig;
use crate::config::{Checker, Invalid};

/// Settings for one APO run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApoConfig {
    /// Name of the prompt to optimize, as traces record it.
    pub target_prompt: String,
    /// File holding the baseline text of that prompt; unset, the most recent
    /// text the stored episodes record for it.
    pub baseline_prompt_file: Option<PathBuf>,
    /// Folder holding meta-prompt overrides (`apo_critique.txt`, ...); unset,
    /// the meta-prompts embedded in the binary.
    pub meta_prompt_dir: Option<PathBuf>,
    /// Generations to run at most; unset, the budget decides.
    pub generations: Option<u32>,
    /// Children proposed (concurrently) per generation.
    pub children_per_generation: usize,
    /// Examples a child is first scored on, against its parent's scores there.
    pub minibatch_size: usize,
    /// Best candidates (by training score) scored on validation with the baseline.
    pub finalists: usize,
    /// Seed for every random choice the engine makes.
    pub seed: u64,
    /// Generations without a better best training score before stopping; 0 never.
    pub patience: u32,
    /// Stop once the best training score reaches this value.
    pub target_score: Option<f64>,
    /// Share of examples held out for validation.
    pub validation_fraction: f64,
    /// Fewest training examples a run accepts.
    pub min_train_examples: usize,
    /// Fewest validation examples: the split holds out at least this many.
    pub min_validation_examples: usize,
    /// Most examples a run uses; more are sampled down, stratified by kind.
    pub max_examples: usize,
    /// File listing the trace ids or inputs to hold out for validation.
    pub validation_ids_file: Option<PathBuf>,
    /// An episode's output is a reference answer when its reward is at least this.
    pub reference_min_reward: f64,
    /// Budget caps for the whole run.
    pub budget: BudgetConfig,
    /// Relative weight of each mutation operator; 0 disables one. A mutator
    /// plugin `NAME` is the operator `plugin:NAME` (unset, the `weight` of
    /// its `NAME.toml`).
    pub operator_weights: BTreeMap<String, f64>,
    /// Bandit temperature, relative to the best operator's gain per call.
    pub bandit_temperature: f64,
    /// Phrases every candidate must contain.
    pub protected_phrases: Vec<String>,
    /// Every candidate must keep the baseline's prohibitions (never, do not, ...).
    pub protect_prohibitions: bool,
    /// Longest candidate accepted, in characters.
    pub max_prompt_chars: usize,
    /// How a replayed response is scored.
    pub scorer: ScorerConfig,
    /// Share of each score that comes from the reward plugins, 0 to 1: 0
    /// ignores them, 1 uses them alone (the scorer is not called).
    pub plugin_score_weight: f64,
    /// Token cap for each task-model response.
    pub max_response_tokens: u32,
    /// Output limits of the rewriter's and the judge's replies, and when to
    /// stop paying for unusable ones.
    pub replies: ReplyConfig,
}

/// Budget caps; a run stops starting new calls once one is reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// HTTP attempts to the endpoint (all roles, retries included, cache
    /// hits excluded).
    pub max_llm_calls: u64,
    /// Input plus output tokens.
    pub max_tokens: u64,
}

/// How a replayed response is scored, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScorerConfig {
    /// The judge model rates the response against the reference answer.
    LlmJudge {
        /// Rubric file overriding the embedded rubric.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rubric_file: Option<PathBuf>,
    },
    /// 1 when the normalized response equals the reference, else 0.
    ExactMatch,
    /// Token-level F1 between response and reference.
    F1,
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
            baseline_prompt_file: None,
            meta_prompt_dir: None,
            generations: None,
            children_per_generation: 1,
            minibatch_size: 3,
            finalists: 1,
            seed: 42,
            patience: 0,
            target_score: None,
            validation_fraction: 0.3,
            min_train_examples: 4,
            min_validation_examples: 5,
            max_examples: 60,
            validation_ids_file: None,
            reference_min_reward: 0.5,
            budget: BudgetConfig::default(),
            operator_weights: OPERATOR_NAMES
                .iter()
                .map(|name| (name.to_string(), default_weight(name)))
                .collect(),
            bandit_temperature: 0.5,
            protected_phrases: Vec::new(),
            protect_prohibitions: true,
            max_prompt_chars: 8000,
            scorer: ScorerConfig::LlmJudge { rubric_file: None },
            plugin_score_weight: 0.0,
            max_response_tokens: 512,
            replies: ReplyConfig::default(),
        }
    }
}

/// Prior weight of an operator. Reflection (critique then edit) is what
/// finds missing instructions, so it is drawn most; merging combines what
/// reflection found on different examples; rewording and the cheap heuristic
/// edits rarely help a capable task model and start with small shares. The bandit then
/// moves choice toward whatever gains most per call.
fn default_weight(operator: &str) -> f64 {
    match operator {
        "critique_edit" => 6.0,
        "crossover" => 2.0,
        "paraphrase" => 0.5,
        _ => 0.2,
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

impl ApoConfig {
    /// Every out-of-range value, by full key path (`apo.finalists`, ...).
    pub fn validate(&self) -> Vec<Invalid> {
        let mut check = Checker::default();
        check.section("apo", |check| self.check(check));
        check.finish()
    }

    /// Reports out-of-range values into `check`, keys relative to `[apo]`.
    pub fn check(&self, check: &mut Checker) {
        check.not_empty("target_prompt", &self.target_prompt);
        for (key, path) in [
            ("baseline_prompt_file", &self.baseline_prompt_file),
            ("meta_prompt_dir", &self.meta_prompt_dir),
            ("validation_ids_file", &self.validation_ids_file),
        ] {
            if let Some(path) = path {
                check.not_empty_path(key, path);
            }
        }
        if let Some(generations) = self.generations {
            check.at_least("generations", generations, 1);
        }
        check.at_least("children_per_generation", self.children_per_generation, 1);
        check.at_least("minibatch_size", self.minibatch_size, 1);
        check.at_least("finalists", self.finalists, 1);
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
        check.at_least("max_examples", self.max_examples, 2);
        check.in_range(
            "reference_min_reward",
            self.reference_min_reward,
            f64::MIN..=f64::MAX,
        );
        check.section("budget", |check| {
            check.at_least("max_llm_calls", self.budget.max_llm_calls, 1);
            check.at_least("max_tokens", self.budget.max_tokens, 1);
        });
        check.section("replies", |check| self.replies.check(check));
        check.section("operator_weights", |check| {
            for (name, weight) in &self.operator_weights {
                let plugin = name
                    .strip_prefix(OPERATOR_PREFIX)
                    .is_some_and(|plugin| !plugin.is_empty());
                if !plugin && !OPERATOR_NAMES.contains(&name.as_str()) {
                    check.fail(
                        name,
                        format!(
                            "unknown operator; known: {}, or {OPERATOR_PREFIX}NAME for the mutator plugin NAME",
                            OPERATOR_NAMES.join(", ")
                        ),
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
        check.in_range("plugin_score_weight", self.plugin_score_weight, 0.0..=1.0);
        check.at_least("max_prompt_chars", self.max_prompt_chars, 1);
        check.at_least("max_response_tokens", self.max_response_tokens, 1);
        if let Some(target) = self.target_score {
            check.in_range("target_score", target, f64::MIN..=f64::MAX);
        }
        if let ScorerConfig::LlmJudge {
            rubric_file: Some(rubric_file),
        } = &self.scorer
        {
            check.section("scorer", |check| {
                check.not_empty_path("rubric_file", rubric_file)
            });
        }
    }

    /// Makes relative file paths absolute by joining them onto `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let paths = [
            &mut self.baseline_prompt_file,
            &mut self.meta_prompt_dir,
            &mut self.validation_ids_file,
        ];
        for path in paths.into_iter().flatten() {
            *path = base.join(&*path);
        }
        if let ScorerConfig::LlmJudge {
            rubric_file: Some(rubric_file),
        } = &mut self.scorer
        {
            *rubric_file = base.join(&*rubric_file);
        }
    }

    /// Every problem with the files this section names (baseline, meta-prompt
    /// overrides, rubric, validation ids), all of them at once, by key. Call
    /// it once paths are resolved.
    pub fn check_files(&self) -> Vec<Invalid> {
        let mut check = Checker::default();
        check.section("apo", |check| {
            if let Some(path) = &self.baseline_prompt_file
                && let Some(text) = read_named(check, "baseline_prompt_file", path)
                && text.trim().is_empty()
            {
                check.fail(
                    "baseline_prompt_file",
                    format!("{} is empty", path.display()),
                );
            }
            if let Some(path) = &self.validation_ids_file {
                read_named(check, "validation_ids_file", path);
            }
            if let Some(dir) = &self.meta_prompt_dir {
                for meta in MetaPrompt::OPERATORS {
                    let path = dir.join(meta.file_name());
                    if let Some(text) = read_named(check, "meta_prompt_dir", &path) {
                        for placeholder in meta.missing_placeholders(&text) {
                            check.fail(
                                "meta_prompt_dir",
                                format!("{} lacks the placeholder {placeholder}", path.display()),
                            );
                        }
                    }
                }
            }
            if let ScorerConfig::LlmJudge {
                rubric_file: Some(path),
            } = &self.scorer
                && let Some(text) = read_named(check, "scorer.rubric_file", path)
            {
                for placeholder in MetaPrompt::Rubric.missing_placeholders(&text) {
                    check.fail(
                        "scorer.rubric_file",
                        format!("{} lacks the placeholder {placeholder}", path.display()),
                    );
                }
            }
        });
        check.finish()
    }
}

/// Reads the file a setting names, reporting it under `key` when unreadable.
fn read_named(check: &mut Checker, key: &str, path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(err) => {
            check.fail(key, format!("cannot read {}: {err}", path.display()));
            None
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
        assert!(cfg.check_files().is_empty());
        assert_eq!(cfg.baseline_prompt_file, None);
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
            finalists: 0,
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
        assert!(errors.contains("apo.finalists"), "{errors}");
        assert!(errors.contains("apo.validation_fraction"), "{errors}");
        assert!(errors.contains("apo.operator_weights.teleport"), "{errors}");
    }

    #[test]
    fn plugin_operators_and_the_plugin_score_weight_are_checked() {
        let cfg: ApoConfig = toml::from_str(
            "plugin_score_weight = 0.3\n[operator_weights]\n\"plugin:my_mutator\" = 2.0\n",
        )
        .unwrap();
        assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
        assert_eq!(cfg.operator_weights["plugin:my_mutator"], 2.0);
        let mut bad = ApoConfig {
            plugin_score_weight: 1.5,
            ..ApoConfig::default()
        };
        bad.operator_weights.insert("plugin:".into(), 1.0);
        let errors: Vec<String> = bad
            .validate()
            .into_iter()
            .map(|invalid| format!("{}: {}", invalid.key, invalid.message))
            .collect();
        let errors = errors.join("\n");
        assert!(
            errors.contains("apo.plugin_score_weight: must be between 0.0 and 1.0, got 1.5"),
            "{errors}"
        );
        assert!(errors.contains("apo.operator_weights.plugin:"), "{errors}");
    }

    /// Regression test for issue 8: every file the section names is checked,
    /// and every problem is reported in one pass.
    #[test]
    fn check_files_reports_every_missing_or_broken_file_at_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("apo_critique.txt"), "no placeholders").unwrap();
        let cfg = ApoConfig {
            baseline_prompt_file: Some(dir.path().join("missing_baseline.txt")),
            meta_prompt_dir: Some(dir.path().to_path_buf()),
            validation_ids_file: Some(dir.path().join("missing_ids.txt")),
            scorer: ScorerConfig::LlmJudge {
                rubric_file: Some(dir.path().join("missing_rubric.txt")),
            },
            ..ApoConfig::default()
        };
        let problems: Vec<String> = cfg
            .check_files()
            .into_iter()
            .map(|invalid| format!("{}: {}", invalid.key, invalid.message))
            .collect();
        let all = problems.join("\n");
        assert!(
            all.contains("apo.baseline_prompt_file: cannot read"),
            "{all}"
        );
        assert!(all.contains("missing_baseline.txt"), "{all}");
        assert!(
            all.contains("apo.validation_ids_file: cannot read"),
            "{all}"
        );
        assert!(all.contains("apo.scorer.rubric_file: cannot read"), "{all}");
        assert!(
            all.contains("apo_critique.txt lacks the placeholder {{prompt}}"),
            "{all}"
        );
        for missing in ["apo_edit.txt", "apo_paraphrase.txt", "apo_crossover.txt"] {
            assert!(all.contains(missing), "{all}");
        }
        assert_eq!(problems.len(), 8, "{all}");
    }
}
