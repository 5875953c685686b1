//! The candidates of a run: every variant made, the pool of those scored on
//! every training example, what was merged and tried, and how the next
//! generation's children are planned (parents from the Pareto frontier,
//! minibatches of their weakest examples, crossover partners).

use std::collections::BTreeSet;

use super::calls::Calls;
use crate::apo::bandit::Bandit;
use crate::apo::budget::Budget;
use crate::apo::config::ApoConfig;
use crate::apo::dataset::Example;
use crate::apo::evaluate::{self, ExampleScore};
use crate::apo::guardrails;
use crate::apo::output::{Variant, VariantStatus};
use crate::apo::select::{self, ScoreMap};
use crate::rng::Rng;

/// A child the engine has decided to make.
pub(super) struct Plan {
    pub arm: usize,
    pub parents: Vec<usize>,
    /// Training examples the child is first scored on.
    pub minibatch: Vec<String>,
    pub seed: u64,
}

/// Every variant of a run and the bookkeeping that plans the next ones.
pub(super) struct Population {
    pub variants: Vec<Variant>,
    /// Candidates fully scored on training: the baseline and accepted
    /// children.
    pub pool: Vec<usize>,
    /// Normalized texts made so far, to drop copies.
    pub seen: BTreeSet<String>,
    /// Pairs already crossed over.
    pub merged: BTreeSet<(usize, usize)>,
    /// (parent, arm, rewrite key) already asked of the rewriter.
    pub tried: BTreeSet<(usize, usize, Vec<String>)>,
    /// Children dropped as copies of an earlier variant.
    pub duplicates: u64,
}

impl Population {
    /// The population holding the baseline, scored on every training
    /// example; then validation's token share is reserved too, now that
    /// tokens per call are known.
    pub async fn score_baseline(
        text: &str,
        calls: &Calls<'_>,
        budget: &Budget,
        train: &[&Example],
        reserved_calls: u64,
    ) -> anyhow::Result<Population> {
        let mut variants = vec![Variant::new(0, text.to_string(), "baseline", 0)];
        let outcome = evaluate::evaluate_all(&calls.evaluator, &[text], train).await;
        calls.settle()?;
        add_scores(
            &mut variants[0],
            outcome.into_iter().next().unwrap_or_default(),
        );
        if variants[0].mean.is_none() {
            let unusable = calls.replies.report("", 0).warnings();
            anyhow::bail!(
                "could not score the baseline on any training example: {}",
                match budget.exhausted() {
                    _ if !unusable.is_empty() => unusable.join("; "),
                    Some(reason) => reason.to_string(),
                    None =>
                        "every replay failed; see the warnings and the LLM call ledger".to_string(),
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
        Ok(Population {
            variants,
            pool: vec![0],
            seen: BTreeSet::from([guardrails::normalize(text)]),
            merged: BTreeSet::new(),
            tried: BTreeSet::new(),
            duplicates: 0,
        })
    }

    /// The best training mean among fully scored candidates.
    pub fn best_mean(&self) -> f64 {
        self.pool
            .iter()
            .filter_map(|idx| self.variants[*idx].mean)
            .fold(0.0, f64::max)
    }

    /// Plans up to `children_per_generation` children whose worst-case cost (the
    /// rewriter's calls and a full scoring) fits in `calls_left`.
    pub fn plan_generation(
        &mut self,
        cfg: &ApoConfig,
        rng: &mut Rng,
        bandit: &Bandit,
        have_exemplars: bool,
        calls_left: u64,
        full_cost: u64,
    ) -> Vec<Plan> {
        let Population {
            variants,
            pool,
            merged,
            tried,
            ..
        } = self;
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
                    let minibatch =
                        disagreement(&variants[a], &variants[b], cfg.minibatch_size.max(2));
                    (vec![a, b], minibatch)
                }
                _ => {
                    // A rewrite is a function of its request: the same parent
                    // and minibatch would get the same (cached) reply, so draw
                    // minibatches this parent has not been rewritten on yet.
                    let Some(minibatch) = (0..8)
                        .map(|attempt| {
                            weakest(&variants[parent], cfg.minibatch_size, attempt > 0, rng)
                        })
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
}

/// Records training scores on `variant`.
pub(super) fn add_scores(variant: &mut Variant, scores: Vec<ExampleScore>) {
    for score in scores {
        variant.add_score(
            score.example_id,
            score.score,
            score.response,
            score.feedback,
        );
    }
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
