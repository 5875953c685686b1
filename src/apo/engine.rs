//! The generation loop: evaluate, select, mutate, repeat.
//!
//! The baseline is evaluated on the training examples first. Each generation
//! then refills the population from the survivors (the top-k) with children
//! made by operators the bandit picks, rejects children that break a
//! guardrail before paying for them, races the rest on the training
//! examples, credits each operator with its children's improvement, and
//! selects the next survivors. The loop stops after `generations`, when the
//! target score is reached, after `patience` generations without
//! improvement, or when the budget runs out. Finally the baseline and the
//! survivors are evaluated on the held-out validation examples, and the best
//! of them there is the result.

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
use super::evaluate::{Evaluator, Scorer};
use super::guardrails::Guardrails;
use super::mutate;
use super::operators::{Failure, MetaPrompts, Rewriter};
use super::output;
use super::race::{self, RaceOutcome};
use super::select::{self, Contender};
use crate::llm::LlmClient;
use crate::rng::Rng;
use crate::trace::Episode;

/// What a run reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum ProgressEvent {
    /// The dataset is built.
    DatasetReady { train: usize, validation: usize },
    /// A generation is about to evaluate `candidates` new children.
    GenerationStarted { generation: u32, candidates: usize },
    /// A generation is done.
    GenerationFinished {
        generation: u32,
        best: f64,
        mean: f64,
        llm_calls: u64,
    },
    /// The loop stopped early, and why.
    Stopped { reason: String },
    /// The survivors are being scored on the validation examples.
    ValidationStarted { candidates: usize },
}

/// Where a variant ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VariantStatus {
    /// Scored on every training example.
    Evaluated,
    /// Stopped early by racing.
    EliminatedByRace,
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
    /// Training score per example id.
    pub scores: BTreeMap<String, f64>,
    /// Mean training score.
    pub mean: Option<f64>,
    /// Validation score per example id (survivors and baseline only).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub validation_scores: BTreeMap<String, f64>,
    pub validation_mean: Option<f64>,
    #[serde(skip)]
    responses: BTreeMap<String, String>,
}

/// Statistics of one operator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperatorReport {
    pub name: String,
    pub uses: u64,
    pub improvements: u64,
    pub mean_credit: f64,
    pub failures: u64,
}

/// Best and mean training score of one generation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationReport {
    pub generation: u32,
    pub best: f64,
    pub mean: f64,
}

/// The outcome of a run (also `optimization_summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApoSummary {
    pub run_id: String,
    pub target_prompt: String,
    pub best_variant_id: String,
    /// Mean validation score of the baseline.
    pub baseline_reward: f64,
    /// Mean validation score of the best variant.
    pub optimized_reward: f64,
    pub improvement_pct: f64,
    pub generations: u32,
    pub population_size: usize,
    pub train_examples: usize,
    pub validation_examples: usize,
    pub variants: usize,
    pub rejected_by_guardrail: usize,
    pub llm_calls: u64,
    pub task_calls: u64,
    pub judge_calls: u64,
    pub rewriter_calls: u64,
    pub failed_attempts: u64,
    pub failed_calls: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cache_hits: u64,
    pub wall_time_secs: f64,
    pub stop_reason: String,
    pub history: Vec<GenerationReport>,
    pub operators: Vec<OperatorReport>,
    #[serde(skip)]
    pub best_prompt: String,
    #[serde(skip)]
    pub all_variants: Vec<Variant>,
}

/// A child the engine has decided to make.
struct Plan {
    arm: usize,
    parents: Vec<usize>,
    seed: u64,
}

/// Runs APO over `episodes` and writes its outputs into `out_dir`.
pub async fn run(
    episodes: &[Episode],
    cfg: &ApoConfig,
    llm: &LlmClient,
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
    let started = Instant::now();
    let stats_before = llm.stats();
    // The store creates these tables (migration 2); a connection to any
    // other database (tests, a scratch file) gets them here. Idempotent.
    conn.execute_batch(cache::SCHEMA)
        .context("creating the APO cache tables")?;
    let baseline = std::fs::read_to_string(&cfg.baseline_prompt_file).with_context(|| {
        format!(
            "reading the baseline prompt {} (apo.baseline_prompt_file)",
            cfg.baseline_prompt_file.display()
        )
    })?;
    let baseline = baseline.trim_end().to_string();
    let meta = MetaPrompts::load(&cfg.meta_prompt_dir)?;
    let scorer = match &cfg.scorer {
        ScorerConfig::LlmJudge { rubric_file } => Scorer::LlmJudge {
            rubric: std::fs::read_to_string(rubric_file).with_context(|| {
                format!(
                    "reading the judge rubric {} (apo.scorer.rubric_file)",
                    rubric_file.display()
                )
            })?,
        },
        ScorerConfig::ExactMatch => Scorer::ExactMatch,
        ScorerConfig::F1 => Scorer::F1,
    };
    let dataset = Dataset::build(
        episodes,
        &DatasetSpec {
            prompt_name: &cfg.target_prompt,
            validation_fraction: cfg.validation_fraction,
            min_train: cfg.min_train_examples,
            min_validation: cfg.min_validation_examples,
            reference_min_reward: cfg.reference_min_reward,
            require_reference: !matches!(scorer, Scorer::LlmJudge { .. }),
        },
    )?;
    progress(ProgressEvent::DatasetReady {
        train: dataset.train.len(),
        validation: dataset.validation.len(),
    });
    let guardrails = Guardrails::new(&baseline, &cfg.protected_phrases, cfg.max_prompt_chars);
    let baseline_violations = guardrails.check(&baseline);
    if !baseline_violations.is_empty() {
        anyhow::bail!(
            "the baseline prompt {} breaks its own guardrails: {}",
            cfg.baseline_prompt_file.display(),
            baseline_violations.join("; ")
        );
    }

    let budget = Budget::new(
        cfg.budget.max_llm_calls,
        cfg.budget.max_tokens,
        llm.config().max_concurrency,
    );
    let evaluator = Evaluator::new(llm, &budget, conn, scorer, cfg.max_response_tokens);
    let rewriter = Rewriter::new(llm, &budget, conn, &meta);
    let run_id = format!(
        "apo-{}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
        cfg.seed
    );
    let flush_ledger = || -> anyhow::Result<()> {
        cache::append_ledger(conn, &run_id, &llm.take_records())
            .context("writing the LLM call ledger")
    };
    let mut rng = Rng::new(cfg.seed);
    let mut bandit = Bandit::new(
        OPERATOR_NAMES
            .iter()
            .map(|name| {
                let weight = cfg.operator_weights.get(*name).copied().unwrap_or(0.0);
                (name.to_string(), weight)
            })
            .collect(),
        cfg.bandit_temperature,
    );
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

    let mut variants = vec![Variant {
        id: "v0".to_string(),
        parent_ids: Vec::new(),
        operator: "baseline".to_string(),
        generation: 0,
        text: baseline.clone(),
        status: VariantStatus::Unscored,
        violations: Vec::new(),
        scores: BTreeMap::new(),
        mean: None,
        validation_scores: BTreeMap::new(),
        validation_mean: None,
        responses: BTreeMap::new(),
    }];
    let mut seen_texts: BTreeSet<String> = BTreeSet::from([baseline.clone()]);
    let train: Vec<&Example> = dataset.train.iter().collect();
    let outcome = race::evaluate_all(&evaluator, &[baseline.as_str()], &train).await;
    apply_outcome(&mut variants, &[0], outcome);
    flush_ledger()?;
    if variants[0].mean.is_none() {
        anyhow::bail!(
            "could not score the baseline on any training example: {}",
            budget
                .exhausted()
                .unwrap_or("every replay failed; see the warnings and the LLM call ledger")
        );
    }
    let mut elites: Vec<usize> = vec![0];
    let mut best_so_far = variants[0].mean.unwrap_or(0.0);
    let mut stale_generations = 0u32;
    let mut history = Vec::new();
    let mut stop_reason = format!("completed {} generations", cfg.generations);
    let mut generations_run = 0u32;

    for generation in 1..=cfg.generations {
        if let Some(reason) = budget.exhausted() {
            stop_reason = reason.to_string();
            break;
        }
        let wanted = cfg.population_size.saturating_sub(elites.len());
        let mut children: Vec<usize> = Vec::new();
        for _round in 0..3 {
            let missing = wanted.saturating_sub(children.len());
            if missing == 0 || budget.exhausted().is_some() {
                break;
            }
            let plans: Vec<Plan> = (0..missing)
                .filter_map(|_| {
                    plan_child(&mut rng, &bandit, &variants, &elites, !exemplars.is_empty())
                })
                .collect();
            if plans.is_empty() {
                break;
            }
            let texts =
                join_all(plans.iter().map(|plan| {
                    make_child(plan, &bandit, &variants, &train, &exemplars, &rewriter)
                }))
                .await;
            for (plan, text) in plans.iter().zip(texts) {
                let Some(text) = text.map(|text| text.trim_end().to_string()) else {
                    bandit.fail(plan.arm);
                    continue;
                };
                if !seen_texts.insert(text.clone()) {
                    bandit.fail(plan.arm);
                    continue;
                }
                let violations = guardrails.check(&text);
                let status = if violations.is_empty() {
                    children.push(variants.len());
                    VariantStatus::Unscored
                } else {
                    bandit.fail(plan.arm);
                    VariantStatus::RejectedByGuardrail
                };
                variants.push(Variant {
                    id: format!("v{}", variants.len()),
                    parent_ids: plan
                        .parents
                        .iter()
                        .map(|idx| variants[*idx].id.clone())
                        .collect(),
                    operator: bandit.name(plan.arm).to_string(),
                    generation,
                    text,
                    status,
                    violations,
                    scores: BTreeMap::new(),
                    mean: None,
                    validation_scores: BTreeMap::new(),
                    validation_mean: None,
                    responses: BTreeMap::new(),
                });
            }
        }
        flush_ledger()?;
        progress(ProgressEvent::GenerationStarted {
            generation,
            candidates: children.len(),
        });
        generations_run = generation;

        let mut order = train.clone();
        rng.shuffle(&mut order);
        let prompts: Vec<&str> = children
            .iter()
            .map(|idx| variants[*idx].text.as_str())
            .collect();
        let outcome = if cfg.racing.enabled && children.len() > 1 {
            race::race(
                &evaluator,
                &prompts,
                &order,
                cfg.racing.initial_examples,
                cfg.racing.reduction_factor,
            )
            .await
        } else {
            race::evaluate_all(&evaluator, &prompts, &order).await
        };
        apply_outcome(&mut variants, &children, outcome);
        flush_ledger()?;
        for child in &children {
            let Some(child_mean) = variants[*child].mean else {
                continue;
            };
            let parent_best = variants[*child]
                .parent_ids
                .iter()
                .filter_map(|id| variants.iter().find(|v| &v.id == id))
                .filter_map(|parent| parent.mean)
                .fold(f64::NEG_INFINITY, f64::max);
            let arm = OPERATOR_NAMES
                .iter()
                .position(|name| *name == variants[*child].operator)
                .expect("children are made by known operators");
            bandit.credit(arm, child_mean, parent_best);
        }

        let pool: Vec<usize> = elites
            .iter()
            .copied()
            .chain(
                children
                    .iter()
                    .copied()
                    .filter(|idx| variants[*idx].status == VariantStatus::Evaluated),
            )
            .collect();
        let contenders: Vec<Contender<'_>> = pool
            .iter()
            .map(|idx| Contender {
                mean: variants[*idx].mean.unwrap_or(0.0),
                scores: &variants[*idx].scores,
                chars: variants[*idx].text.chars().count(),
            })
            .collect();
        elites = select::select(&contenders, cfg.top_k, cfg.pareto)
            .into_iter()
            .map(|slot| pool[slot])
            .take(cfg.population_size.saturating_sub(1).max(1))
            .collect();

        let best = variants[elites[0]].mean.unwrap_or(0.0);
        let scored: Vec<f64> = elites
            .iter()
            .chain(&children)
            .filter_map(|idx| variants[*idx].mean)
            .collect();
        let mean = scored.iter().sum::<f64>() / scored.len().max(1) as f64;
        history.push(GenerationReport {
            generation,
            best,
            mean,
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
        if let Some(target) = cfg.target_score
            && best >= target
        {
            stop_reason = format!("reached apo.target_score ({target})");
            progress(ProgressEvent::Stopped {
                reason: stop_reason.clone(),
            });
            break;
        }
        if cfg.patience > 0 && stale_generations >= cfg.patience {
            stop_reason = format!(
                "no improvement for {} generations (apo.patience)",
                cfg.patience
            );
            progress(ProgressEvent::Stopped {
                reason: stop_reason.clone(),
            });
            break;
        }
        if let Some(reason) = budget.exhausted() {
            stop_reason = reason.to_string();
            progress(ProgressEvent::Stopped {
                reason: stop_reason.clone(),
            });
            break;
        }
    }

    let mut finalists: Vec<usize> = elites.clone();
    if !finalists.contains(&0) {
        finalists.push(0);
    }
    progress(ProgressEvent::ValidationStarted {
        candidates: finalists.len(),
    });
    let validation: Vec<&Example> = dataset.validation.iter().collect();
    let prompts: Vec<&str> = finalists
        .iter()
        .map(|idx| variants[*idx].text.as_str())
        .collect();
    let outcome = race::evaluate_all(&evaluator, &prompts, &validation).await;
    flush_ledger()?;
    for (slot, scores) in finalists.iter().zip(outcome.scores) {
        let variant = &mut variants[*slot];
        variant.validation_mean = race::mean(&scores);
        variant.validation_scores = scores
            .into_iter()
            .map(|score| (score.example_id, score.score))
            .collect();
    }
    // The best finalist on validation. Elites are ordered by training score
    // and `max_by` keeps the last of equals, so scanning them in reverse
    // lets the better training score win a tie; the baseline wins only
    // when strictly better.
    let best_idx = elites
        .iter()
        .rev()
        .copied()
        .max_by(|a, b| {
            variants[*a]
                .validation_mean
                .partial_cmp(&variants[*b].validation_mean)
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .unwrap_or(0);
    let best_idx = if variants[best_idx].validation_mean < variants[0].validation_mean {
        0
    } else {
        best_idx
    };
    let baseline_reward = variants[0].validation_mean.unwrap_or(0.0);
    let optimized_reward = variants[best_idx]
        .validation_mean
        .unwrap_or(baseline_reward);
    let improvement_pct = if baseline_reward.abs() > 1e-12 {
        (optimized_reward - baseline_reward) / baseline_reward.abs() * 100.0
    } else if optimized_reward > baseline_reward {
        100.0
    } else {
        0.0
    };

    let stats = llm.stats();
    let eval_stats = evaluator.stats();
    let summary = ApoSummary {
        run_id: run_id.clone(),
        target_prompt: cfg.target_prompt.clone(),
        best_variant_id: variants[best_idx].id.clone(),
        baseline_reward,
        optimized_reward,
        improvement_pct,
        generations: generations_run,
        population_size: cfg.population_size,
        train_examples: dataset.train.len(),
        validation_examples: dataset.validation.len(),
        variants: variants.len(),
        rejected_by_guardrail: variants
            .iter()
            .filter(|v| v.status == VariantStatus::RejectedByGuardrail)
            .count(),
        llm_calls: stats.requests.iter().sum::<u64>() - stats_before.requests.iter().sum::<u64>(),
        task_calls: stats.requests[0] - stats_before.requests[0],
        rewriter_calls: stats.requests[1] - stats_before.requests[1],
        judge_calls: stats.requests[2] - stats_before.requests[2],
        failed_attempts: stats.failed_attempts - stats_before.failed_attempts,
        failed_calls: stats.failed_requests - stats_before.failed_requests,
        tokens_in: stats.usage.input_tokens - stats_before.usage.input_tokens,
        tokens_out: stats.usage.output_tokens - stats_before.usage.output_tokens,
        cache_hits: eval_stats.cache_hits + rewriter.cache_hits(),
        wall_time_secs: started.elapsed().as_secs_f64(),
        stop_reason,
        history,
        operators: bandit
            .stats()
            .map(|(name, arm)| OperatorReport {
                name: name.to_string(),
                uses: arm.uses,
                improvements: arm.improvements,
                mean_credit: arm.mean_credit(),
                failures: arm.failures,
            })
            .collect(),
        best_prompt: variants[best_idx].text.clone(),
        all_variants: variants,
    };
    output::write_all(out_dir, &summary)?;
    Ok(summary)
}

/// Stores race results on the variants they belong to.
fn apply_outcome(variants: &mut [Variant], indices: &[usize], outcome: RaceOutcome) {
    for ((idx, scores), complete) in indices.iter().zip(outcome.scores).zip(outcome.complete) {
        let variant = &mut variants[*idx];
        variant.mean = race::mean(&scores);
        variant.status = match (variant.mean.is_some(), complete) {
            (false, _) => VariantStatus::Unscored,
            (true, true) => VariantStatus::Evaluated,
            (true, false) => VariantStatus::EliminatedByRace,
        };
        for score in scores {
            variant
                .responses
                .insert(score.example_id.clone(), score.response);
            variant.scores.insert(score.example_id, score.score);
        }
    }
}

/// Picks an operator and parents for one child.
fn plan_child(
    rng: &mut Rng,
    bandit: &Bandit,
    variants: &[Variant],
    elites: &[usize],
    have_exemplars: bool,
) -> Option<Plan> {
    let parent = elites[rng.below(elites.len())];
    let has_failures = variants[parent].scores.values().any(|score| *score < 1.0);
    let arm = bandit.choose(rng, |name| match name {
        "crossover" => elites.len() >= 2,
        "add_example" => have_exemplars,
        "critique_edit" => has_failures,
        _ => true,
    })?;
    let parents = if bandit.name(arm) == "crossover" {
        let mut other = elites[rng.below(elites.len() - 1)];
        if other == parent {
            other = *elites.last().unwrap();
        }
        vec![parent, other]
    } else {
        vec![parent]
    };
    Some(Plan {
        arm,
        parents,
        seed: rng.next_u64(),
    })
}

/// Runs the planned operator; `None` when it does not apply or its call failed.
async fn make_child(
    plan: &Plan,
    bandit: &Bandit,
    variants: &[Variant],
    train: &[&Example],
    exemplars: &[&Example],
    rewriter: &Rewriter<'_>,
) -> Option<String> {
    let parent = &variants[plan.parents[0]];
    let mut rng = Rng::new(plan.seed);
    let res: Result<Option<String>, CallError> = match bandit.name(plan.arm) {
        "add_emphasis" => Ok(mutate::add_emphasis(&parent.text, &mut rng)),
        "add_constraint" => Ok(mutate::add_constraint(&parent.text, &mut rng)),
        "reorder_instructions" => Ok(mutate::reorder_instructions(&parent.text, &mut rng)),
        "simplify" => Ok(mutate::simplify(&parent.text, &mut rng)),
        "add_example" => {
            let example = exemplars[rng.below(exemplars.len().min(5))];
            Ok(mutate::add_example(
                &parent.text,
                &example.input,
                example.reference.as_deref().unwrap_or_default(),
            ))
        }
        "critique_edit" => {
            let mut failures: Vec<(&String, &f64)> = parent
                .scores
                .iter()
                .filter(|(_, score)| **score < 1.0)
                .collect();
            failures.sort_by(|a, b| a.1.partial_cmp(b.1).unwrap_or(std::cmp::Ordering::Equal));
            let failures: Vec<Failure> = failures
                .into_iter()
                .take(3)
                .filter_map(|(id, score)| {
                    let example = train.iter().find(|example| &example.id == id).copied()?;
                    Some(Failure {
                        input: example.input.clone(),
                        response: parent.responses.get(id).cloned().unwrap_or_default(),
                        reference: example.reference.clone(),
                        score: *score,
                    })
                })
                .collect();
            rewriter
                .critique_edit(&parent.text, &failures)
                .await
                .map(Some)
        }
        "paraphrase" => rewriter.paraphrase(&parent.text).await.map(Some),
        "crossover" => rewriter
            .crossover(&parent.text, &variants[plan.parents[1]].text)
            .await
            .map(Some),
        other => unreachable!("unknown operator {other}"),
    };
    match res {
        Ok(text) => text.filter(|text| !text.trim().is_empty()),
        Err(err) => {
            tracing::warn!(operator = bandit.name(plan.arm), error = %err, "operator failed");
            None
        }
    }
}
