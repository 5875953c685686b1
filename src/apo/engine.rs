//! The search: reflective evolution of a prompt under a call budget.
//!
//! The loop follows GEPA ("Reflective Prompt Evolution Can Outperform
//! Reinforcement Learning") where it is sample-efficient, and spends fewer
//! calls where it can:
//!
//! 1. The baseline is scored on every training example. Enough budget for
//!    the final validation (finalists and baseline on every validation
//!    example) is **reserved** before anything else is spent.
//! 2. Each generation proposes `children_per_generation` children at once.
//!    The bandit picks an operator (credited by improvement per call spent).
//!    A single-parent operator takes its parent from the **Pareto frontier**
//!    of per-example training scores, drawn by how many examples it is best
//!    on, and works on the parent's **weakest examples** (the minibatch): the
//!    critique sees their inputs, responses, reference answers and the
//!    judge's feedback. Crossover merges two candidates that are each better
//!    on examples where the other is worse, on a minibatch of those examples.
//! 3. A child is **deduplicated** by normalized text and checked against the
//!    **guardrails** before any evaluation is paid for; then it is scored on
//!    its minibatch only. The parent's scores there are known, so this costs
//!    the child's calls alone. Only a child that beats its parent(s) on the
//!    minibatch goes on to the rest of the training examples.
//! 4. A child is proposed only while the budget left (the reserve aside) can
//!    pay for its full scoring, so no candidate is left half-scored by the
//!    budget; one left so by failed calls is never selected. The budget is
//!    the main stopping rule; `generations`, `patience` and `target_score`
//!    are optional ones.
//! 5. The finalists (best training means) and the baseline are scored on the
//!    validation examples; a finalist wins only if its **paired** per-example
//!    gain over the baseline is beyond noise, else the baseline is kept.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use futures::future::join_all;
use rusqlite::Connection;
use serde::Serialize;

use super::bandit::Bandit;
use super::budget::{Budget, CallError};
use super::cache;
use super::config::{ApoConfig, OPERATOR_NAMES, ScorerConfig};
use super::dataset::{Dataset, DatasetSpec, Example};
use super::evaluate::{self, Evaluator, ExampleScore, Scorer};
use super::guardrails::{self, Guardrails};
use super::mutate;
use super::operators::{Failure, MetaPrompt, MetaPrompts, Rewrite, Rewriter};
use super::output;
use super::plugins::{self, PluginScorer};
use super::replies::{ReplyMonitor, ReplyReport};
use super::select::{self, Paired, ScoreMap};
use crate::llm::LlmClient;
use crate::plugin::Plugins;
use crate::rng::Rng;
use crate::trace::Episode;

/// What a run reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum ProgressEvent {
    /// The dataset is built.
    DatasetReady { train: usize, validation: usize },
    /// A generation is about to make `candidates` children.
    GenerationStarted { generation: u32, candidates: usize },
    /// A generation is done.
    GenerationFinished {
        generation: u32,
        best: f64,
        mean: f64,
        llm_calls: u64,
    },
    /// The search stopped, and why.
    Stopped { reason: String },
    /// The finalists and the baseline are being scored on validation.
    ValidationStarted { candidates: usize },
}

/// Where a variant ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VariantStatus {
    /// Scored on every training example.
    Evaluated,
    /// Did not beat its parent(s) on its minibatch; not scored further.
    RejectedByMinibatch,
    /// Some training examples could not be scored (failed calls); never
    /// selected.
    PartiallyScored,
    /// Broke a guardrail; never evaluated.
    RejectedByGuardrail,
    /// Every evaluation of it failed.
    Unscored,
}

/// One prompt variant and everything known about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Variant {
    pub id: String,
    pub parent_ids: Vec<String>,
    /// `baseline` or the operator that made it.
    pub operator: String,
    pub generation: u32,
    pub text: String,
    pub status: VariantStatus,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<String>,
    /// Prohibitions of the baseline the rewrite dropped and the engine put back.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restored: Vec<String>,
    /// The examples its acceptance test was run on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub minibatch: Vec<String>,
    /// Training score per example id.
    pub scores: BTreeMap<String, f64>,
    /// Mean training score over the examples it was scored on.
    pub mean: Option<f64>,
    /// Validation score per example id (finalists and baseline only).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub validation_scores: BTreeMap<String, f64>,
    pub validation_mean: Option<f64>,
    #[serde(skip)]
    responses: BTreeMap<String, String>,
    #[serde(skip)]
    feedback: BTreeMap<String, String>,
}

impl Variant {
    fn new(id: usize, text: String, operator: &str, generation: u32) -> Variant {
        Variant {
            id: format!("v{id}"),
            parent_ids: Vec::new(),
            operator: operator.to_string(),
            generation,
            text,
            status: VariantStatus::Unscored,
            violations: Vec::new(),
            restored: Vec::new(),
            minibatch: Vec::new(),
            scores: BTreeMap::new(),
            mean: None,
            validation_scores: BTreeMap::new(),
            validation_mean: None,
            responses: BTreeMap::new(),
            feedback: BTreeMap::new(),
        }
    }

    /// Records training scores and refreshes the mean.
    fn add_scores(&mut self, scores: Vec<ExampleScore>) {
        for score in scores {
            self.responses
                .insert(score.example_id.clone(), score.response);
            if let Some(feedback) = score.feedback {
                self.feedback.insert(score.example_id.clone(), feedback);
            }
            self.scores.insert(score.example_id, score.score);
        }
        self.mean = (!self.scores.is_empty())
            .then(|| self.scores.values().sum::<f64>() / self.scores.len() as f64);
    }

    /// Its response on the training example `id`, once scored there.
    pub fn response(&self, id: &str) -> Option<&str> {
        self.responses.get(id).map(String::as_str)
    }

    /// The feedback on its response to `id`, when the scorer gave some.
    pub fn feedback_on(&self, id: &str) -> Option<&str> {
        self.feedback.get(id).map(String::as_str)
    }

    /// Sum of its scores on `examples` it was scored on.
    fn sum_on(&self, examples: &[String]) -> f64 {
        examples.iter().filter_map(|id| self.scores.get(id)).sum()
    }
}

/// Statistics of one operator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperatorReport {
    pub name: String,
    pub uses: u64,
    pub improvements: u64,
    /// Calls charged to it: its rewrites and its children's evaluations.
    pub calls: u64,
    pub gain_per_call: f64,
    pub failures: u64,
}

/// Best and mean training score of the candidates kept after one generation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationReport {
    pub generation: u32,
    pub best: f64,
    pub mean: f64,
    /// Calls spent so far.
    pub llm_calls: u64,
}

/// The outcome of a run (also `optimization_summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApoSummary {
    pub run_id: String,
    pub target_prompt: String,
    /// Where the baseline text came from (traces and version, or a file).
    pub baseline_source: String,
    pub best_variant_id: String,
    /// Mean validation score of the baseline; `None` when not measured.
    pub baseline_reward: Option<f64>,
    /// Mean validation score of the returned prompt; `None` when not measured.
    pub optimized_reward: Option<f64>,
    pub improvement_pct: Option<f64>,
    /// `measured on N examples`, or `not measured: <why>`.
    pub validation: String,
    /// Why the returned prompt was chosen.
    pub decision: String,
    /// How the examples were split.
    pub split: String,
    /// How each replay was scored: the scorer, and the reward plugins' share.
    pub scorer: String,
    pub generations: u32,
    /// Candidates scored on every training example (the baseline included).
    pub population_size: usize,
    pub train_examples: usize,
    pub validation_examples: usize,
    pub variants: usize,
    pub rejected_by_guardrail: usize,
    pub rejected_by_minibatch: usize,
    /// Children dropped before evaluation as copies of an earlier variant.
    pub duplicates: u64,
    /// HTTP attempts, all roles (what `apo.budget.max_llm_calls` caps).
    pub llm_calls: u64,
    pub task_calls: u64,
    pub judge_calls: u64,
    pub rewriter_calls: u64,
    /// Calls kept back for validation while searching.
    pub reserved_calls: u64,
    pub failed_attempts: u64,
    pub failed_calls: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// What the models sent back: output limits, replies cut at them and
    /// unusable replies, by role and model.
    pub replies: ReplyReport,
    pub cache_hits: u64,
    pub wall_time_secs: f64,
    pub stop_reason: String,
    pub warnings: Vec<String>,
    pub history: Vec<GenerationReport>,
    pub operators: Vec<OperatorReport>,
    #[serde(skip)]
    pub best_prompt: String,
    #[serde(skip)]
    pub all_variants: Vec<Variant>,
}

/// The prompt to optimize and where it came from.
struct Baseline {
    text: String,
    source: String,
    warning: Option<String>,
}

/// A child the engine has decided to make.
struct Plan {
    arm: usize,
    parents: Vec<usize>,
    /// Training examples the child is first scored on.
    minibatch: Vec<String>,
    seed: u64,
}

/// Runs APO over `episodes` and writes its outputs into `out_dir`. Every LLM
/// call made is in the ledger (`llm_call_ledger`) whether the run succeeds
/// or fails.
pub async fn run(
    episodes: &[Episode],
    cfg: &ApoConfig,
    llm: &LlmClient,
    plugins: &Plugins,
    conn: &Connection,
    out_dir: &Path,
    progress: impl Fn(ProgressEvent),
) -> anyhow::Result<ApoSummary> {
    let errors: Vec<String> = cfg
        .validate()
        .into_iter()
        .map(|invalid| format!("{}: {}", invalid.key, invalid.message))
        .collect();
    if !errors.is_empty() {
        anyhow::bail!("invalid APO configuration: {}", errors.join("; "));
    }
    // The store creates these tables (migrations 2 and 6); a connection to
    // any other database (tests, a scratch file) gets them here.
    cache::create_tables(conn).context("creating the APO cache tables")?;
    let run_id = format!(
        "apo-{}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
        cfg.seed
    );
    let res = search(episodes, cfg, llm, plugins, conn, &run_id, &progress).await;
    let ledger = cache::append_ledger(conn, &run_id, &llm.take_records())
        .context("writing the LLM call ledger");
    let summary = res.with_context(|| format!("APO run {run_id}"))?;
    ledger?;
    output::write_all(out_dir, &summary)?;
    Ok(summary)
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

async fn search(
    episodes: &[Episode],
    cfg: &ApoConfig,
    llm: &LlmClient,
    plugins: &Plugins,
    conn: &Connection,
    run_id: &str,
    progress: &impl Fn(ProgressEvent),
) -> anyhow::Result<ApoSummary> {
    let started = Instant::now();
    let stats_before = llm.stats();
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
    let dataset = Dataset::build(
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
    )?;
    progress(ProgressEvent::DatasetReady {
        train: dataset.train.len(),
        validation: dataset.validation.len(),
    });
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
    let replies = ReplyMonitor::new(&cfg.replies, cfg.max_prompt_chars, &budget);
    let evaluator = Evaluator::new(llm, &budget, conn, scorer, cfg.max_response_tokens)
        .with_plugins(plugin_scorer)
        .with_replies(&replies);
    let rewriter = Rewriter::new(llm, &budget, conn, &meta, &replies);
    let flush_ledger = || -> anyhow::Result<()> {
        cache::append_ledger(conn, run_id, &llm.take_records())
            .context("writing the LLM call ledger")
    };
    let fail_if_unreachable = || -> anyhow::Result<()> {
        match llm.unreachable().or_else(|| replies.stop_error()) {
            Some(reason) => Err(anyhow::anyhow!(reason)),
            None => Ok(()),
        }
    };
    let mut rng = Rng::new(cfg.seed);
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
    let mut bandit = Bandit::new(arms, cfg.bandit_temperature);
    let exemplars: Vec<&Example> = {
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
    };
    let train: Vec<&Example> = dataset.train.iter().collect();
    let full_cost = train.len() as u64 * calls_per_example;

    let mut variants = vec![Variant::new(0, baseline.text.clone(), "baseline", 0)];
    let outcome = evaluate::evaluate_all(&evaluator, &[baseline.text.as_str()], &train).await;
    flush_ledger()?;
    fail_if_unreachable()?;
    variants[0].add_scores(outcome.into_iter().next().unwrap_or_default());
    if variants[0].mean.is_none() {
        let unusable = replies.report("", 0).warnings();
        anyhow::bail!(
            "could not score the baseline on any training example: {}",
            match budget.exhausted() {
                _ if !unusable.is_empty() => unusable.join("; "),
                Some(reason) => reason.to_string(),
                None => "every replay failed; see the warnings and the LLM call ledger".to_string(),
            }
        );
    }
    variants[0].status = if variants[0].scores.len() == train.len() {
        VariantStatus::Evaluated
    } else {
        VariantStatus::PartiallyScored
    };
    // Tokens per call are known now: keep validation's share of the token
    // cap back as well (with a margin, responses vary).
    if budget.calls() > 0 {
        let per_call = budget.tokens().div_ceil(budget.calls());
        budget.reserve(reserved_calls, reserved_calls * per_call * 5 / 4);
    }

    // Candidates fully scored on training: the baseline and accepted children.
    let mut pool: Vec<usize> = vec![0];
    let mut seen: BTreeSet<String> = BTreeSet::from([guardrails::normalize(&baseline.text)]);
    let mut merged: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut tried: BTreeSet<(usize, usize, Vec<String>)> = BTreeSet::new();
    let mut duplicates = 0u64;
    let mut best_so_far = variants[0].mean.unwrap_or(0.0);
    let mut stale_generations = 0u32;
    let mut idle_generations = 0u32;
    let mut history = Vec::new();
    let mut generation = 0u32;
    let stop_reason = loop {
        if let Some(max) = cfg.generations
            && generation >= max
        {
            break format!("completed {max} generations (apo.generations)");
        }
        if let Some(reason) = budget.exhausted() {
            break format!("{reason} ({reserved_calls} calls kept for validation)");
        }
        let best = best_mean(&variants, &pool);
        if best >= 1.0 - 1e-9 {
            break "a candidate scores 1.0 on every training example".to_string();
        }
        generation += 1;
        let calls_before = budget.calls();

        let plans = plan_generation(
            cfg,
            &mut rng,
            &bandit,
            &variants,
            &pool,
            &merged,
            &mut tried,
            !exemplars.is_empty(),
            budget.calls_left(),
            full_cost,
        );
        if plans.is_empty() {
            generation -= 1;
            if budget.calls_left() < full_cost + 2 {
                break format!(
                    "apo.budget.max_llm_calls reached: the {} calls left cannot score another candidate on the {} training examples ({reserved_calls} calls kept for validation)",
                    budget.calls_left(),
                    train.len()
                );
            }
            idle_generations += 1;
            if idle_generations >= IDLE_GENERATIONS {
                break idle_reason();
            }
            continue;
        }
        progress(ProgressEvent::GenerationStarted {
            generation,
            candidates: plans.len(),
        });
        for plan in &plans {
            if plan.parents.len() == 2 {
                merged.insert((plan.parents[0], plan.parents[1]));
                merged.insert((plan.parents[1], plan.parents[0]));
            }
        }
        let rewrites = join_all(plans.iter().map(|plan| {
            make_child(
                plan,
                &bandit,
                &variants,
                &train,
                &exemplars,
                &rewriter,
                plugins,
                &guardrails,
            )
        }))
        .await;
        flush_ledger()?;
        fail_if_unreachable()?;

        // Children worth scoring, with the calls spent on each so far.
        let mut children: Vec<(usize, &Plan, u64)> = Vec::new();
        for (plan, rewrite) in plans.iter().zip(rewrites) {
            let Some(Rewrite { text, paid_calls }) = rewrite else {
                bandit.fail(plan.arm, 0);
                continue;
            };
            // An unusable reply (counted by the reply monitor) is no child,
            // not even once the baseline's prohibitions are put back into it.
            if text.trim().is_empty() {
                bandit.fail(plan.arm, paid_calls);
                continue;
            }
            // A prohibition the rewrite dropped is put back, word for word.
            let mut text = text.trim_end().to_string();
            let restored: Vec<String> = guardrails
                .missing_prohibitions(&text)
                .into_iter()
                .map(str::to_string)
                .collect();
            let mut rng = Rng::new(plan.seed);
            for prohibition in &restored {
                text = mutate::insert_instruction(&text, prohibition, &mut rng);
            }
            if !seen.insert(guardrails::normalize(&text)) {
                duplicates += 1;
                bandit.fail(plan.arm, paid_calls);
                continue;
            }
            let mut child = Variant::new(variants.len(), text, bandit.name(plan.arm), generation);
            child.parent_ids = plan
                .parents
                .iter()
                .map(|idx| variants[*idx].id.clone())
                .collect();
            child.minibatch = plan.minibatch.clone();
            child.restored = restored;
            child.violations = guardrails.check(&child.text);
            if child.violations.is_empty() {
                children.push((variants.len(), plan, paid_calls));
            } else {
                child.status = VariantStatus::RejectedByGuardrail;
                bandit.fail(plan.arm, paid_calls);
            }
            variants.push(child);
        }

        // The acceptance test: each child on its minibatch.
        let by_id: BTreeMap<&str, &Example> = train
            .iter()
            .map(|example| (example.id.as_str(), *example))
            .collect();
        let texts: Vec<String> = children
            .iter()
            .map(|(idx, ..)| variants[*idx].text.clone())
            .collect();
        let pairs: Vec<(&str, &Example)> = children
            .iter()
            .zip(&texts)
            .flat_map(|((_, plan, _), text)| {
                plan.minibatch.iter().filter_map(|id| {
                    by_id
                        .get(id.as_str())
                        .map(|example| (text.as_str(), *example))
                })
            })
            .collect();
        let mut results = evaluator.evaluate(&pairs).await.into_iter();
        flush_ledger()?;
        fail_if_unreachable()?;
        let mut accepted: Vec<(usize, &Plan, u64)> = Vec::new();
        for (idx, plan, paid) in children {
            let scores: Vec<ExampleScore> = results
                .by_ref()
                .take(plan.minibatch.len())
                .flatten()
                .collect();
            let paid = paid + scores.iter().map(|score| score.paid_calls).sum::<u64>();
            let scored: Vec<String> = scores
                .iter()
                .map(|score| score.example_id.clone())
                .collect();
            variants[idx].add_scores(scores);
            let child_sum = variants[idx].sum_on(&scored);
            let parents_best = plan
                .parents
                .iter()
                .map(|parent| variants[*parent].sum_on(&scored))
                .fold(f64::NEG_INFINITY, f64::max);
            if !scored.is_empty() && child_sum > parents_best + 1e-9 {
                accepted.push((idx, plan, paid));
            } else {
                variants[idx].status = if scored.is_empty() {
                    VariantStatus::Unscored
                } else {
                    VariantStatus::RejectedByMinibatch
                };
                bandit.credit(plan.arm, paid, None, 0.0);
            }
        }

        // Full evaluation of the accepted children on the rest of training.
        let texts: Vec<String> = accepted
            .iter()
            .map(|(idx, ..)| variants[*idx].text.clone())
            .collect();
        let rest: Vec<Vec<&Example>> = accepted
            .iter()
            .map(|(idx, ..)| {
                train
                    .iter()
                    .copied()
                    .filter(|example| !variants[*idx].scores.contains_key(&example.id))
                    .collect()
            })
            .collect();
        let pairs: Vec<(&str, &Example)> = texts
            .iter()
            .zip(&rest)
            .flat_map(|(text, examples)| examples.iter().map(|example| (text.as_str(), *example)))
            .collect();
        let mut results = evaluator.evaluate(&pairs).await.into_iter();
        flush_ledger()?;
        fail_if_unreachable()?;
        let mut evaluated = 0usize;
        for ((idx, plan, paid), examples) in accepted.into_iter().zip(&rest) {
            let scores: Vec<ExampleScore> =
                results.by_ref().take(examples.len()).flatten().collect();
            let paid = paid + scores.iter().map(|score| score.paid_calls).sum::<u64>();
            variants[idx].add_scores(scores);
            let parent_mean = plan
                .parents
                .iter()
                .filter_map(|parent| variants[*parent].mean)
                .fold(f64::NEG_INFINITY, f64::max);
            if variants[idx].scores.len() == train.len() {
                variants[idx].status = VariantStatus::Evaluated;
                pool.push(idx);
                evaluated += 1;
                bandit.credit(plan.arm, paid, variants[idx].mean, parent_mean);
            } else {
                variants[idx].status = VariantStatus::PartiallyScored;
                bandit.credit(plan.arm, paid, None, parent_mean);
            }
        }

        let best = best_mean(&variants, &pool);
        let means: Vec<f64> = pool.iter().filter_map(|idx| variants[*idx].mean).collect();
        let mean = means.iter().sum::<f64>() / means.len().max(1) as f64;
        history.push(GenerationReport {
            generation,
            best,
            mean,
            llm_calls: budget.calls(),
        });
        progress(ProgressEvent::GenerationFinished {
            generation,
            best,
            mean,
            llm_calls: budget.calls(),
        });
        if best > best_so_far + 1e-9 {
            best_so_far = best;
            stale_generations = 0;
        } else {
            stale_generations += 1;
        }
        idle_generations = if evaluated == 0 && budget.calls() == calls_before {
            idle_generations + 1
        } else {
            0
        };
        if let Some(target) = cfg.target_score
            && best >= target
        {
            break format!("reached apo.target_score ({target})");
        }
        if cfg.patience > 0 && stale_generations >= cfg.patience {
            break format!(
                "no improvement for {} generations (apo.patience)",
                cfg.patience
            );
        }
        if idle_generations >= IDLE_GENERATIONS {
            break idle_reason();
        }
    };
    progress(ProgressEvent::Stopped {
        reason: stop_reason.clone(),
    });

    // Validation: the reserve is spent now, and calls the search left over
    // pay for more finalists.
    let spare_finalists = if budget.exhausted() == Some("apo.budget.max_tokens reached") {
        0
    } else {
        usize::try_from(
            budget.calls_left() / (dataset.validation.len() as u64 * calls_per_example).max(1),
        )
        .unwrap_or(0)
    };
    budget.release_reserve();
    let mut finalists: Vec<usize> = pool
        .iter()
        .copied()
        .filter(|idx| *idx != 0)
        .filter(|idx| Paired::compare(&variants[*idx].scores, &variants[0].scores).mean > 1e-9)
        .collect();
    finalists.sort_by(|a, b| {
        let (va, vb) = (&variants[*a], &variants[*b]);
        vb.mean
            .partial_cmp(&va.mean)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(va.text.chars().count().cmp(&vb.text.chars().count()))
            .then(a.cmp(b))
    });
    finalists.truncate(cfg.finalists + spare_finalists);
    let contenders: Vec<usize> = std::iter::once(0)
        .chain(finalists.iter().copied())
        .collect();
    progress(ProgressEvent::ValidationStarted {
        candidates: contenders.len(),
    });
    let validation: Vec<&Example> = dataset.validation.iter().collect();
    let texts: Vec<&str> = contenders
        .iter()
        .map(|idx| variants[*idx].text.as_str())
        .collect();
    let outcome = evaluate::evaluate_all(&evaluator, &texts, &validation).await;
    flush_ledger()?;
    fail_if_unreachable()?;
    for (idx, scores) in contenders.iter().zip(outcome) {
        let variant = &mut variants[*idx];
        variant.validation_mean = evaluate::mean(&scores);
        variant.validation_scores = scores
            .into_iter()
            .map(|score| (score.example_id, score.score))
            .collect();
    }
    let complete = |idx: usize| variants[idx].validation_scores.len() == validation.len();
    let validation_status = if contenders.iter().all(|idx| complete(*idx)) {
        format!("measured on {} examples", validation.len())
    } else {
        let why = budget
            .exhausted()
            .map(str::to_string)
            .unwrap_or_else(|| "validation replays failed; see the LLM call ledger".to_string());
        let status = format!("not measured: {why}");
        warnings.push(format!("validation {status}"));
        status
    };
    let mut best_idx = 0;
    let mut best_gain: Option<Paired> = None;
    let mut decision = if finalists.is_empty() {
        "kept the baseline: no candidate beat it on the training examples".to_string()
    } else if !complete(0) {
        "kept the baseline: its validation score was not measured".to_string()
    } else {
        String::new()
    };
    if complete(0) {
        for idx in &finalists {
            if !complete(*idx) {
                continue;
            }
            let paired = Paired::compare(
                &variants[*idx].validation_scores,
                &variants[0].validation_scores,
            );
            if paired.beats_noise() && best_gain.is_none_or(|best| paired.mean > best.mean) {
                best_idx = *idx;
                best_gain = Some(paired);
            }
        }
        if let Some(gain) = best_gain {
            decision = format!(
                "{} beats the baseline by {:+.3} ± {:.3} (standard error) per example on {} validation examples",
                variants[best_idx].id, gain.mean, gain.std_err, gain.n
            );
        } else if let Some(first) = finalists.first() {
            let paired = Paired::compare(
                &variants[*first].validation_scores,
                &variants[0].validation_scores,
            );
            decision = format!(
                "kept the baseline: the best finalist {} differs from it by {:+.3} ± {:.3} per example on {} validation examples, within noise",
                variants[*first].id, paired.mean, paired.std_err, paired.n
            );
        }
    }
    let baseline_reward = complete(0).then(|| variants[0].validation_mean).flatten();
    let optimized_reward = if best_idx == 0 {
        baseline_reward
    } else {
        variants[best_idx].validation_mean
    };
    let improvement_pct = baseline_reward.zip(optimized_reward).map(|(base, best)| {
        if base.abs() > 1e-12 {
            (best - base) / base.abs() * 100.0
        } else if best > base {
            100.0
        } else {
            0.0
        }
    });

    let stats = llm.stats();
    let attempts = |role: usize| stats.attempts_by_role[role] - stats_before.attempts_by_role[role];
    let eval_stats = evaluator.stats();
    let replies = replies.report(llm.limit_field().as_str(), baseline.text.chars().count());
    warnings.extend(replies.warnings());
    let count = |status: VariantStatus| variants.iter().filter(|v| v.status == status).count();
    Ok(ApoSummary {
        run_id: run_id.to_string(),
        target_prompt: cfg.target_prompt.clone(),
        baseline_source: baseline.source,
        best_variant_id: variants[best_idx].id.clone(),
        baseline_reward,
        optimized_reward,
        improvement_pct,
        validation: validation_status,
        decision,
        split: dataset.split.clone(),
        scorer: scorer_description,
        generations: generation,
        population_size: pool.len(),
        train_examples: dataset.train.len(),
        validation_examples: dataset.validation.len(),
        variants: variants.len(),
        rejected_by_guardrail: count(VariantStatus::RejectedByGuardrail),
        rejected_by_minibatch: count(VariantStatus::RejectedByMinibatch),
        duplicates,
        llm_calls: stats.attempts - stats_before.attempts,
        task_calls: attempts(0),
        rewriter_calls: attempts(1),
        judge_calls: attempts(2),
        reserved_calls,
        failed_attempts: stats.failed_attempts - stats_before.failed_attempts,
        failed_calls: stats.failed_requests - stats_before.failed_requests,
        tokens_in: stats.usage.input_tokens - stats_before.usage.input_tokens,
        tokens_out: stats.usage.output_tokens - stats_before.usage.output_tokens,
        replies,
        cache_hits: eval_stats.cache_hits + rewriter.cache_hits(),
        wall_time_secs: started.elapsed().as_secs_f64(),
        stop_reason,
        warnings,
        history,
        operators: bandit
            .stats()
            .map(|(name, arm)| OperatorReport {
                name: name.to_string(),
                uses: arm.uses,
                improvements: arm.improvements,
                calls: arm.calls,
                gain_per_call: arm.gain_per_call(),
                failures: arm.failures,
            })
            .collect(),
        best_prompt: variants[best_idx].text.clone(),
        all_variants: variants,
    })
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

/// Generations in a row that made no new candidate and spent no call before
/// the search gives up: every operator keeps reproducing known prompts.
const IDLE_GENERATIONS: u32 = 20;

fn idle_reason() -> String {
    format!(
        "the operators proposed nothing new to score in {IDLE_GENERATIONS} generations in a row"
    )
}

/// The best training mean among fully scored candidates.
fn best_mean(variants: &[Variant], pool: &[usize]) -> f64 {
    pool.iter()
        .filter_map(|idx| variants[*idx].mean)
        .fold(0.0, f64::max)
}

/// What a rewrite's request depends on besides the parent: the failures a
/// critique is shown; nothing for a paraphrase.
fn rewrite_key(operator: &str, minibatch: &[String]) -> Vec<String> {
    if operator == "critique_edit" {
        minibatch.to_vec()
    } else {
        Vec::new()
    }
}

/// Rewriter calls an operator makes.
fn rewriter_calls(operator: &str) -> u64 {
    match operator {
        "critique_edit" => 2,
        "paraphrase" | "crossover" => 1,
        _ => 0,
    }
}

/// Plans up to `children_per_generation` children whose worst-case cost (the
/// rewriter's calls and a full scoring) fits in `calls_left`.
#[allow(clippy::too_many_arguments)]
fn plan_generation(
    cfg: &ApoConfig,
    rng: &mut Rng,
    bandit: &Bandit,
    variants: &[Variant],
    pool: &[usize],
    merged: &BTreeSet<(usize, usize)>,
    tried: &mut BTreeSet<(usize, usize, Vec<String>)>,
    have_exemplars: bool,
    calls_left: u64,
    full_cost: u64,
) -> Vec<Plan> {
    let scores: Vec<&ScoreMap> = pool.iter().map(|idx| &variants[*idx].scores).collect();
    let frontier: Vec<(usize, usize)> = select::frontier(&scores)
        .into_iter()
        .map(|(slot, wins)| (pool[slot], wins))
        .collect();
    let mut pairs_taken: BTreeSet<(usize, usize)> = merged.clone();
    let mut plans = Vec::new();
    let mut committed = 0u64;
    for _ in 0..cfg.children_per_generation {
        let merge_pair = merge_partners(variants, pool, &frontier, &pairs_taken, rng);
        let Some(parent) = select::pick_weighted(&frontier, rng) else {
            break;
        };
        let has_failures = variants[parent].scores.values().any(|score| *score < 1.0);
        let Some(arm) = bandit.choose(rng, |name| match name {
            "crossover" => merge_pair.is_some(),
            "add_example" => have_exemplars,
            "critique_edit" => has_failures,
            _ => true,
        }) else {
            break;
        };
        let operator = bandit.name(arm);
        let cost = rewriter_calls(operator) + full_cost;
        if committed + cost > calls_left {
            break;
        }
        let (parents, minibatch) = match (operator, merge_pair) {
            ("crossover", Some((a, b))) => {
                pairs_taken.insert((a, b));
                pairs_taken.insert((b, a));
                let minibatch = disagreement(&variants[a], &variants[b], cfg.minibatch_size.max(2));
                (vec![a, b], minibatch)
            }
            _ => {
                // A rewrite is a function of its request: the same parent
                // and minibatch would get the same (cached) reply, so draw
                // minibatches this parent has not been rewritten on yet.
                let Some(minibatch) = (0..8)
                    .map(|attempt| weakest(&variants[parent], cfg.minibatch_size, attempt > 0, rng))
                    .find(|minibatch| {
                        rewriter_calls(operator) == 0
                            || !tried.contains(&(parent, arm, rewrite_key(operator, minibatch)))
                    })
                else {
                    continue;
                };
                tried.insert((parent, arm, rewrite_key(operator, &minibatch)));
                (vec![parent], minibatch)
            }
        };
        committed += cost;
        plans.push(Plan {
            arm,
            parents,
            minibatch,
            seed: rng.next_u64(),
        });
    }
    plans
}

/// Two fully scored candidates, one from the frontier, each better than the
/// other on some example and not merged before; the partner is the one
/// better than the first on the most examples.
fn merge_partners(
    variants: &[Variant],
    pool: &[usize],
    frontier: &[(usize, usize)],
    taken: &BTreeSet<(usize, usize)>,
    rng: &mut Rng,
) -> Option<(usize, usize)> {
    let mut options: Vec<(usize, usize, usize)> = Vec::new();
    for (a, _) in frontier {
        let best_partner = pool
            .iter()
            .copied()
            .filter(|b| b != a && !taken.contains(&(*a, *b)))
            .filter(|b| !select::better_on(&variants[*a].scores, &variants[*b].scores).is_empty())
            .map(|b| {
                (
                    b,
                    select::better_on(&variants[b].scores, &variants[*a].scores).len(),
                )
            })
            .filter(|(_, wins)| *wins > 0)
            .max_by_key(|(b, wins)| (*wins, std::cmp::Reverse(*b)));
        if let Some((b, wins)) = best_partner {
            options.push((*a, b, wins));
        }
    }
    if options.is_empty() {
        return None;
    }
    let (a, b, _) = options[rng.below(options.len())];
    Some((a, b))
}

/// Up to `size` examples on which `a` and `b` disagree, alternating the
/// examples each is better on.
fn disagreement(a: &Variant, b: &Variant, size: usize) -> Vec<String> {
    let a_wins = select::better_on(&a.scores, &b.scores);
    let b_wins = select::better_on(&b.scores, &a.scores);
    let mut out = Vec::new();
    for idx in 0..a_wins.len().max(b_wins.len()) {
        for side in [&a_wins, &b_wins] {
            if let Some(id) = side.get(idx)
                && out.len() < size
            {
                out.push((*id).clone());
            }
        }
    }
    out
}

/// `size` training examples `parent` does worst on. The first draw (`spread`
/// false) takes the lowest scores, ties broken at random; later draws pick
/// each example (without replacement) with probability proportional to how
/// far its score is below 1, so that the critic is shown other failures once
/// the weakest have been tried.
fn weakest(parent: &Variant, size: usize, spread: bool, rng: &mut Rng) -> Vec<String> {
    let mut pool: Vec<(&String, f64, u64)> = parent
        .scores
        .iter()
        .map(|(id, score)| (id, (1.0 - score).max(0.0) + 0.02, rng.next_u64()))
        .collect();
    let mut out = Vec::new();
    if !spread {
        pool.sort_by(|a, b| {
            b.1.partial_cmp(&a.1)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.2.cmp(&b.2))
        });
        out.extend(pool.into_iter().take(size).map(|(id, ..)| id.clone()));
        out.sort();
        return out;
    }
    while out.len() < size && !pool.is_empty() {
        let total: f64 = pool.iter().map(|(_, weight, _)| weight).sum();
        let mut draw = rng.next_f64() * total;
        let mut pick = pool.len() - 1;
        for (idx, (_, weight, _)) in pool.iter().enumerate() {
            if draw < *weight {
                pick = idx;
                break;
            }
            draw -= weight;
        }
        out.push(pool.swap_remove(pick).0.clone());
    }
    out.sort();
    out
}

/// Runs the planned operator; `None` when it does not apply or its call failed.
#[allow(clippy::too_many_arguments)]
async fn make_child(
    plan: &Plan,
    bandit: &Bandit,
    variants: &[Variant],
    train: &[&Example],
    exemplars: &[&Example],
    rewriter: &Rewriter<'_>,
    plugins: &Plugins,
    guardrails: &Guardrails,
) -> Option<Rewrite> {
    let parent = &variants[plan.parents[0]];
    let mut rng = Rng::new(plan.seed);
    let free = |text: Option<String>| {
        Ok(text.map(|text| Rewrite {
            text,
            paid_calls: 0,
        }))
    };
    let res: Result<Option<Rewrite>, CallError> = match bandit.name(plan.arm) {
        "add_emphasis" => free(mutate::add_emphasis(&parent.text, &mut rng)),
        "add_constraint" => free(mutate::add_constraint(&parent.text, &mut rng)),
        "reorder_instructions" => free(mutate::reorder_instructions(&parent.text, &mut rng)),
        "simplify" => free(mutate::simplify(&parent.text, &mut rng, |instruction| {
            guardrails.is_protected(instruction)
        })),
        "add_example" => {
            // The best-rewarded reference among the parent's weakest examples
            // when it has one, else among the best-rewarded overall.
            let example = plan
                .minibatch
                .iter()
                .find_map(|id| exemplars.iter().find(|example| &example.id == id))
                .unwrap_or(&exemplars[rng.below(exemplars.len().min(5))]);
            free(mutate::add_example(
                &parent.text,
                &example.input,
                example.reference.as_deref().unwrap_or_default(),
            ))
        }
        "critique_edit" => {
            let failures: Vec<Failure> = plan
                .minibatch
                .iter()
                .filter_map(|id| {
                    let score = *parent.scores.get(id)?;
                    let example = train.iter().find(|example| &example.id == id)?;
                    (score < 1.0).then(|| Failure {
                        input: example.input.clone(),
                        response: parent.responses.get(id).cloned().unwrap_or_default(),
                        reference: example.reference.clone(),
                        score,
                        feedback: parent.feedback.get(id).cloned(),
                    })
                })
                .collect();
            rewriter
                .critique_edit(&parent.text, &failures)
                .await
                .map(Some)
        }
        "paraphrase" => rewriter.paraphrase(&parent.text).await.map(Some),
        "crossover" => {
            let other = &variants[plan.parents[1]];
            rewriter
                .crossover(&parent.text, &other.text, &strengths(parent, other, train))
                .await
                .map(Some)
        }
        operator if operator.starts_with(plugins::OPERATOR_PREFIX) => {
            let context = plugins::mutation_context(parent, &plan.minibatch, train);
            return match plugins::mutate(plugins, operator, &parent.text, plan.seed, context).await
            {
                Ok(text) => Some(Rewrite {
                    text,
                    paid_calls: 0,
                }),
                Err(err) => {
                    tracing::info!(operator, error = %err, "plugin operator made no child");
                    None
                }
            };
        }
        other => unreachable!("unknown operator {other}"),
    };
    match res {
        Ok(rewrite) => rewrite,
        Err(err) => {
            tracing::warn!(operator = bandit.name(plan.arm), error = %err, "operator failed");
            None
        }
    }
}

/// What each of two merge parents got right that the other did not, for the
/// crossover meta-prompt.
fn strengths(a: &Variant, b: &Variant, train: &[&Example]) -> String {
    let describe = |label: &str, better: &Variant, worse: &Variant| -> String {
        let cases: Vec<String> = select::better_on(&better.scores, &worse.scores)
            .into_iter()
            .take(3)
            .filter_map(|id| {
                let example = train.iter().find(|example| &example.id == id)?;
                let input: String = example.input.chars().take(300).collect();
                Some(format!(
                    "- {input} (Prompt {label}: {:.2}, the other: {:.2})",
                    better.scores[id], worse.scores[id]
                ))
            })
            .collect();
        format!(
            "Cases Prompt {label} got right where the other fell short:\n{}",
            cases.join("\n")
        )
    };
    format!("{}\n\n{}", describe("A", a, b), describe("B", b, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variant(scores: &[f64]) -> Variant {
        let mut variant = Variant::new(1, "p".into(), "test", 1);
        variant.scores = scores
            .iter()
            .enumerate()
            .map(|(idx, score)| (format!("e{idx}"), *score))
            .collect();
        variant
    }

    #[test]
    fn the_first_minibatch_is_the_weakest_and_later_ones_spread() {
        let parent = variant(&[1.0, 0.2, 0.9, 0.0, 0.5, 1.0]);
        let mut rng = Rng::new(4);
        assert_eq!(weakest(&parent, 3, false, &mut rng), ["e1", "e3", "e4"]);
        let mut seen = BTreeSet::new();
        for _ in 0..50 {
            let draw = weakest(&parent, 3, true, &mut rng);
            assert_eq!(draw.len(), 3);
            seen.extend(draw);
        }
        assert!(seen.contains("e2"), "{seen:?}");
        assert!(seen.contains("e1") && seen.contains("e3"));
    }

    #[test]
    fn a_merge_minibatch_alternates_what_each_parent_got_right() {
        let a = variant(&[1.0, 1.0, 0.0, 0.5, 0.3]);
        let b = variant(&[0.0, 0.5, 1.0, 0.5, 0.9]);
        assert_eq!(disagreement(&a, &b, 3), ["e0", "e2", "e1"]);
        assert_eq!(disagreement(&a, &b, 10), ["e0", "e2", "e1", "e4"]);
    }
}
