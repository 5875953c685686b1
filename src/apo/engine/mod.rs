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

//!
//! The parts: `setup.rs` (baseline, scorer, dataset, guardrails, budget and
//! operators, checked before any call), `population.rs` (the candidates and
//! how the next children are planned), `generation.rs` (one generation:
//! propose, accept on the minibatch, score fully) and `finals.rs`
//! (validation and the summary).

mod calls;
mod finals;
mod generation;
mod population;
mod setup;

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use rusqlite::Connection;

use super::cache;
use super::config::ApoConfig;
use super::evaluate::Evaluator;
use super::operators::Rewriter;
use super::output::{self, ApoSummary, ProgressEvent};
use super::replies::ReplyMonitor;
use crate::llm::LlmClient;
use crate::plugin::Plugins;
use crate::trace::Episode;

use calls::Calls;
use generation::Search;
use population::Population;
use setup::Setup;

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
    let Setup {
        baseline,
        mut warnings,
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
    } = Setup::prepare(cfg, episodes, llm, plugins)?;
    progress(ProgressEvent::DatasetReady {
        train: dataset.train.len(),
        validation: dataset.validation.len(),
    });
    let replies = ReplyMonitor::new(&cfg.replies, cfg.max_prompt_chars, &budget);
    let calls = Calls {
        llm,
        conn,
        run_id,
        evaluator: Evaluator::new(llm, &budget, conn, scorer, cfg.max_response_tokens)
            .with_plugins(plugin_scorer)
            .with_replies(&replies),
        rewriter: Rewriter::new(llm, &budget, conn, &meta, &replies),
        replies: &replies,
    };
    let train: Vec<_> = dataset.train.iter().collect();
    let population =
        Population::score_baseline(&baseline.text, &calls, &budget, &train, reserved_calls).await?;
    let mut search = Search::new(
        cfg,
        plugins,
        &calls,
        &budget,
        &guardrails,
        &train,
        setup::exemplars(&dataset),
        bandit,
        population,
        calls_per_example,
        reserved_calls,
    );
    let stop_reason = search.run(progress).await?;
    progress(ProgressEvent::Stopped {
        reason: stop_reason.clone(),
    });
    let finals = finals::validate(&mut search, &dataset, progress).await?;
    warnings.extend(finals.warning.clone());
    let replies = replies.report(llm.limit_field().as_str(), baseline.text.chars().count());
    warnings.extend(replies.warnings());
    Ok(finals::summary(finals::Summary {
        cfg,
        search,
        finals,
        dataset: &dataset,
        baseline_source: baseline.source,
        scorer_description,
        reserved_calls,
        stats_before,
        started,
        stop_reason,
        warnings,
        replies,
    }))
}
