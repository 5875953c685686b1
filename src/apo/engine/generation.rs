//! One generation of the search: plan children, make them (operators run
//! concurrently), drop copies and guardrail breaches, score each on its
//! minibatch, score the accepted ones on the rest of training, and record
//! how the population moved. [`Search::run`] repeats it until a stopping
//! rule holds.

use std::collections::BTreeMap;

use futures::future::join_all;

use super::calls::Calls;
use super::population::{Plan, Population, add_scores};
use crate::apo::bandit::Bandit;
use crate::apo::budget::{Budget, CallError};
use crate::apo::config::ApoConfig;
use crate::apo::dataset::Example;
use crate::apo::evaluate::ExampleScore;
use crate::apo::guardrails::{self, Guardrails};
use crate::apo::mutate;
use crate::apo::operators::{Failure, Rewrite, Rewriter};
use crate::apo::output::ProgressEvent;
use crate::apo::output::{GenerationReport, Variant, VariantStatus};
use crate::apo::plugins;
use crate::apo::select;
use crate::plugin::Plugins;
use crate::rng::Rng;

/// The search's state between generations.
pub(super) struct Search<'a> {
    pub cfg: &'a ApoConfig,
    plugins: &'a Plugins,
    pub calls: &'a Calls<'a>,
    pub budget: &'a Budget,
    guardrails: &'a Guardrails,
    train: &'a [&'a Example],
    exemplars: Vec<&'a Example>,
    pub bandit: Bandit,
    rng: Rng,
    pub population: Population,
    pub calls_per_example: u64,
    reserved_calls: u64,
    /// A full scoring of one candidate on training, in calls.
    full_cost: u64,
    best_so_far: f64,
    stale_generations: u32,
    idle_generations: u32,
    pub history: Vec<GenerationReport>,
    pub generation: u32,
}

/// A child that passed the copy and guardrail checks: its variant index,
/// its plan, and the calls spent on it so far.
type Child<'p> = (usize, &'p Plan, u64);

impl<'a> Search<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &'a ApoConfig,
        plugins: &'a Plugins,
        calls: &'a Calls<'a>,
        budget: &'a Budget,
        guardrails: &'a Guardrails,
        train: &'a [&'a Example],
        exemplars: Vec<&'a Example>,
        bandit: Bandit,
        population: Population,
        calls_per_example: u64,
        reserved_calls: u64,
    ) -> Search<'a> {
        let best_so_far = population.variants[0].mean.unwrap_or(0.0);
        Search {
            cfg,
            plugins,
            calls,
            budget,
            guardrails,
            train,
            exemplars,
            bandit,
            rng: Rng::new(cfg.seed),
            population,
            calls_per_example,
            reserved_calls,
            full_cost: train.len() as u64 * calls_per_example,
            best_so_far,
            stale_generations: 0,
            idle_generations: 0,
            history: Vec::new(),
            generation: 0,
        }
    }

    /// Runs generations until a stopping rule holds, and says which.
    pub async fn run(&mut self, progress: &impl Fn(ProgressEvent)) -> anyhow::Result<String> {
        let reserved_calls = self.reserved_calls;
        loop {
            if let Some(max) = self.cfg.generations
                && self.generation >= max
            {
                return Ok(format!("completed {max} generations (apo.generations)"));
            }
            if let Some(reason) = self.budget.exhausted() {
                return Ok(format!(
                    "{reason} ({reserved_calls} calls kept for validation)"
                ));
            }
            if self.population.best_mean() >= 1.0 - 1e-9 {
                return Ok("a candidate scores 1.0 on every training example".to_string());
            }
            if let Some(reason) = self.step(progress).await? {
                return Ok(reason);
            }
        }
    }

    /// One generation; `Some(reason)` when the search should stop after it.
    async fn step(&mut self, progress: &impl Fn(ProgressEvent)) -> anyhow::Result<Option<String>> {
        let calls_before = self.budget.calls();
        let plans = self.population.plan_generation(
            self.cfg,
            &mut self.rng,
            &self.bandit,
            !self.exemplars.is_empty(),
            self.budget.calls_left(),
            self.full_cost,
        );
        if plans.is_empty() {
            if self.budget.calls_left() < self.full_cost + 2 {
                return Ok(Some(format!(
                    "apo.budget.max_llm_calls reached: the {} calls left cannot score another candidate on the {} training examples ({} calls kept for validation)",
                    self.budget.calls_left(),
                    self.train.len(),
                    self.reserved_calls
                )));
            }
            self.idle_generations += 1;
            return Ok((self.idle_generations >= IDLE_GENERATIONS).then(idle_reason));
        }
        self.generation += 1;
        progress(ProgressEvent::GenerationStarted {
            generation: self.generation,
            candidates: plans.len(),
        });
        let children = self.propose(&plans).await?;
        let accepted = self.accept_on_minibatch(children).await?;
        let evaluated = self.score_fully(accepted).await?;
        Ok(self.record(evaluated, calls_before, progress))
    }

    /// Makes the planned children and keeps those worth scoring: not a copy
    /// of an earlier variant, within the guardrails (a prohibition the
    /// rewrite dropped is put back first).
    async fn propose<'p>(&mut self, plans: &'p [Plan]) -> anyhow::Result<Vec<Child<'p>>> {
        for plan in plans {
            if plan.parents.len() == 2 {
                let merged = &mut self.population.merged;
                merged.insert((plan.parents[0], plan.parents[1]));
                merged.insert((plan.parents[1], plan.parents[0]));
            }
        }
        let rewrites = join_all(plans.iter().map(|plan| {
            make_child(
                plan,
                &self.bandit,
                &self.population.variants,
                self.train,
                &self.exemplars,
                &self.calls.rewriter,
                self.plugins,
                self.guardrails,
            )
        }))
        .await;
        self.calls.settle()?;

        let guardrails = self.guardrails;
        let population = &mut self.population;
        let mut children: Vec<Child<'p>> = Vec::new();
        for (plan, rewrite) in plans.iter().zip(rewrites) {
            let Some(Rewrite { text, paid_calls }) = rewrite else {
                self.bandit.fail(plan.arm, 0);
                continue;
            };
            // An unusable reply (counted by the reply monitor) is no child,
            // not even once the baseline's prohibitions are put back into it.
            if text.trim().is_empty() {
                self.bandit.fail(plan.arm, paid_calls);
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
            if !population.seen.insert(guardrails::normalize(&text)) {
                population.duplicates += 1;
                self.bandit.fail(plan.arm, paid_calls);
                continue;
            }
            let variants = &mut population.variants;
            let mut child = Variant::new(
                variants.len(),
                text,
                self.bandit.name(plan.arm),
                self.generation,
            );
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
                self.bandit.fail(plan.arm, paid_calls);
            }
            variants.push(child);
        }
        Ok(children)
    }

    /// The acceptance test: each child on its minibatch, where its
    /// parents' scores are known; only a child that beats them goes on.
    async fn accept_on_minibatch<'p>(
        &mut self,
        children: Vec<Child<'p>>,
    ) -> anyhow::Result<Vec<Child<'p>>> {
        let by_id: BTreeMap<&str, &Example> = self
            .train
            .iter()
            .map(|example| (example.id.as_str(), *example))
            .collect();
        let variants = &mut self.population.variants;
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
        let mut results = self.calls.evaluator.evaluate(&pairs).await.into_iter();
        self.calls.settle()?;
        let mut accepted: Vec<Child<'p>> = Vec::new();
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
            add_scores(&mut variants[idx], scores);
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
                self.bandit.credit(plan.arm, paid, None, 0.0);
            }
        }
        Ok(accepted)
    }

    /// Scores the accepted children on the rest of training; a child scored
    /// on every example joins the pool. Returns how many did.
    async fn score_fully(&mut self, accepted: Vec<Child<'_>>) -> anyhow::Result<usize> {
        let train = self.train;
        let variants = &mut self.population.variants;
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
        let mut results = self.calls.evaluator.evaluate(&pairs).await.into_iter();
        self.calls.settle()?;
        let mut evaluated = 0usize;
        for ((idx, plan, paid), examples) in accepted.into_iter().zip(&rest) {
            let scores: Vec<ExampleScore> =
                results.by_ref().take(examples.len()).flatten().collect();
            let paid = paid + scores.iter().map(|score| score.paid_calls).sum::<u64>();
            add_scores(&mut variants[idx], scores);
            let parent_mean = plan
                .parents
                .iter()
                .filter_map(|parent| variants[*parent].mean)
                .fold(f64::NEG_INFINITY, f64::max);
            if variants[idx].scores.len() == train.len() {
                variants[idx].status = VariantStatus::Evaluated;
                self.population.pool.push(idx);
                evaluated += 1;
                self.bandit
                    .credit(plan.arm, paid, variants[idx].mean, parent_mean);
            } else {
                variants[idx].status = VariantStatus::PartiallyScored;
                self.bandit.credit(plan.arm, paid, None, parent_mean);
            }
        }
        Ok(evaluated)
    }

    /// Records the generation in the history and the progress, and applies
    /// the stopping rules that look at progress (target, patience, idling).
    fn record(
        &mut self,
        evaluated: usize,
        calls_before: u64,
        progress: &impl Fn(ProgressEvent),
    ) -> Option<String> {
        let population = &self.population;
        let best = population.best_mean();
        let means: Vec<f64> = population
            .pool
            .iter()
            .filter_map(|idx| population.variants[*idx].mean)
            .collect();
        let mean = means.iter().sum::<f64>() / means.len().max(1) as f64;
        let generation = self.generation;
        self.history.push(GenerationReport {
            generation,
            best,
            mean,
            llm_calls: self.budget.calls(),
        });
        progress(ProgressEvent::GenerationFinished {
            generation,
            best,
            mean,
            llm_calls: self.budget.calls(),
        });
        if best > self.best_so_far + 1e-9 {
            self.best_so_far = best;
            self.stale_generations = 0;
        } else {
            self.stale_generations += 1;
        }
        self.idle_generations = if evaluated == 0 && self.budget.calls() == calls_before {
            self.idle_generations + 1
        } else {
            0
        };
        if let Some(target) = self.cfg.target_score
            && best >= target
        {
            return Some(format!("reached apo.target_score ({target})"));
        }
        if self.cfg.patience > 0 && self.stale_generations >= self.cfg.patience {
            return Some(format!(
                "no improvement for {} generations (apo.patience)",
                self.cfg.patience
            ));
        }
        (self.idle_generations >= IDLE_GENERATIONS).then(idle_reason)
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
                        response: parent.response(id).unwrap_or_default().to_string(),
                        reference: example.reference.clone(),
                        score,
                        feedback: parent.feedback_on(id).map(str::to_string),
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
