//! The end of a run: the finalists (best training means that beat the
//! baseline there) and the baseline are scored on validation with the
//! reserve, a finalist wins only by a paired gain beyond noise, and the
//! summary is put together.

use std::time::Instant;

use super::generation::Search;
use crate::apo::dataset::{Dataset, Example};
use crate::apo::evaluate;
use crate::apo::output::ProgressEvent;
use crate::apo::output::{ApoSummary, OperatorReport, Variant, VariantStatus};
use crate::apo::replies::ReplyReport;
use crate::apo::select::Paired;
use crate::llm::ClientStats;

/// What validation decided.
pub(super) struct Finals {
    /// The variant returned (0: the baseline).
    pub best_idx: usize,
    /// `measured on N examples`, or `not measured: <why>`.
    pub validation_status: String,
    pub decision: String,
    pub baseline_reward: Option<f64>,
    pub optimized_reward: Option<f64>,
    /// Why validation was not measured, when it was not.
    pub warning: Option<String>,
}

/// Scores the finalists and the baseline on validation (the reserve is
/// spent now, and calls the search left over pay for more finalists), and
/// picks the returned prompt.
pub(super) async fn validate(
    search: &mut Search<'_>,
    dataset: &Dataset,
    progress: &impl Fn(ProgressEvent),
) -> anyhow::Result<Finals> {
    let budget = search.budget;
    let spare_finalists = if budget.exhausted() == Some("apo.budget.max_tokens reached") {
        0
    } else {
        usize::try_from(
            budget.calls_left()
                / (dataset.validation.len() as u64 * search.calls_per_example).max(1),
        )
        .unwrap_or(0)
    };
    budget.release_reserve();
    let population = &mut search.population;
    let variants = &mut population.variants;
    let mut finalists: Vec<usize> = population
        .pool
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
    finalists.truncate(search.cfg.finalists + spare_finalists);
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
    let outcome = evaluate::evaluate_all(&search.calls.evaluator, &texts, &validation).await;
    search.calls.settle()?;
    for (idx, scores) in contenders.iter().zip(outcome) {
        let variant = &mut variants[*idx];
        variant.validation_mean = evaluate::mean(&scores);
        variant.validation_scores = scores
            .into_iter()
            .map(|score| (score.example_id, score.score))
            .collect();
    }
    let complete = |idx: usize| variants[idx].validation_scores.len() == validation.len();
    let mut warning = None;
    let validation_status = if contenders.iter().all(|idx| complete(*idx)) {
        format!("measured on {} examples", validation.len())
    } else {
        let why = budget
            .exhausted()
            .map(str::to_string)
            .unwrap_or_else(|| "validation replays failed; see the LLM call ledger".to_string());
        let status = format!("not measured: {why}");
        warning = Some(format!("validation {status}"));
        status
    };
    let (best_idx, decision) = decide(variants, &finalists, &complete);
    let baseline_reward = complete(0).then(|| variants[0].validation_mean).flatten();
    let optimized_reward = if best_idx == 0 {
        baseline_reward
    } else {
        variants[best_idx].validation_mean
    };
    Ok(Finals {
        best_idx,
        validation_status,
        decision,
        baseline_reward,
        optimized_reward,
        warning,
    })
}

/// The returned variant (0: the baseline) and why: the finalist with the
/// largest paired validation gain over the baseline beyond noise, if any.
fn decide(
    variants: &[Variant],
    finalists: &[usize],
    complete: &impl Fn(usize) -> bool,
) -> (usize, String) {
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
        for idx in finalists {
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
    (best_idx, decision)
}

/// Everything the summary is made of.
pub(super) struct Summary<'a> {
    pub cfg: &'a crate::apo::config::ApoConfig,
    pub search: Search<'a>,
    pub finals: Finals,
    pub dataset: &'a Dataset,
    pub baseline_source: String,
    pub scorer_description: String,
    pub reserved_calls: u64,
    pub stats_before: ClientStats,
    pub started: Instant,
    pub stop_reason: String,
    pub warnings: Vec<String>,
    pub replies: ReplyReport,
}

/// The run's summary (`optimization_summary.json`).
pub(super) fn summary(parts: Summary<'_>) -> ApoSummary {
    let Summary {
        cfg,
        search,
        finals,
        dataset,
        baseline_source,
        scorer_description,
        reserved_calls,
        stats_before,
        started,
        stop_reason,
        warnings,
        replies,
    } = parts;
    let improvement_pct =
        finals
            .baseline_reward
            .zip(finals.optimized_reward)
            .map(|(base, best)| {
                if base.abs() > 1e-12 {
                    (best - base) / base.abs() * 100.0
                } else if best > base {
                    100.0
                } else {
                    0.0
                }
            });
    let stats = search.calls.llm.stats();
    let attempts = |role: usize| stats.attempts_by_role[role] - stats_before.attempts_by_role[role];
    let eval_stats = search.calls.evaluator.stats();
    let variants = search.population.variants;
    let count = |status: VariantStatus| variants.iter().filter(|v| v.status == status).count();
    let best_idx = finals.best_idx;
    ApoSummary {
        run_id: search.calls.run_id.to_string(),
        target_prompt: cfg.target_prompt.clone(),
        baseline_source,
        best_variant_id: variants[best_idx].id.clone(),
        baseline_reward: finals.baseline_reward,
        optimized_reward: finals.optimized_reward,
        improvement_pct,
        validation: finals.validation_status,
        decision: finals.decision,
        split: dataset.split.clone(),
        scorer: scorer_description,
        generations: search.generation,
        population_size: search.population.pool.len(),
        train_examples: dataset.train.len(),
        validation_examples: dataset.validation.len(),
        variants: variants.len(),
        rejected_by_guardrail: count(VariantStatus::RejectedByGuardrail),
        rejected_by_minibatch: count(VariantStatus::RejectedByMinibatch),
        duplicates: search.population.duplicates,
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
        cache_hits: eval_stats.cache_hits + search.calls.rewriter.cache_hits(),
        wall_time_secs: started.elapsed().as_secs_f64(),
        stop_reason,
        warnings,
        history: search.history,
        operators: search
            .bandit
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
    }
}
