//! Racing: spend evaluation calls on contenders, not on clear losers.
//!
//! Successive halving: every candidate is scored on a small first minibatch;
//! the best `1/reduction_factor` go on to a minibatch `reduction_factor`
//! times larger (a superset, so earlier scores come from the cache), and so
//! on until the survivors have seen every example. Survivors' means are then
//! comparable with fully evaluated candidates of earlier generations.

use super::dataset::Example;
use super::evaluate::{Evaluator, ExampleScore};

/// What evaluating a set of candidates produced.
#[derive(Debug, Clone, PartialEq)]
pub struct RaceOutcome {
    /// Per candidate, the scores of every example it was evaluated on.
    pub scores: Vec<Vec<ExampleScore>>,
    /// Per candidate, whether it was evaluated on every example.
    pub complete: Vec<bool>,
}

/// Mean of the scores, `None` when there are none.
pub fn mean(scores: &[ExampleScore]) -> Option<f64> {
    (!scores.is_empty())
        .then(|| scores.iter().map(|score| score.score).sum::<f64>() / scores.len() as f64)
}

/// Evaluates every candidate on every example.
pub async fn evaluate_all(
    evaluator: &Evaluator<'_>,
    prompts: &[&str],
    examples: &[&Example],
) -> RaceOutcome {
    let pairs: Vec<(&str, &Example)> = prompts
        .iter()
        .flat_map(|prompt| examples.iter().map(move |example| (*prompt, *example)))
        .collect();
    let results = evaluator.evaluate(&pairs).await;
    let mut scores = vec![Vec::new(); prompts.len()];
    for (idx, result) in results.into_iter().enumerate() {
        if let Some(score) = result {
            scores[idx / examples.len().max(1)].push(score);
        }
    }
    RaceOutcome {
        scores,
        complete: vec![true; prompts.len()],
    }
}

/// Successive halving over `examples` in the given order.
pub async fn race(
    evaluator: &Evaluator<'_>,
    prompts: &[&str],
    examples: &[&Example],
    initial_examples: usize,
    reduction_factor: usize,
) -> RaceOutcome {
    let mut alive: Vec<usize> = (0..prompts.len()).collect();
    let mut scores: Vec<Vec<ExampleScore>> = vec![Vec::new(); prompts.len()];
    let mut complete = vec![false; prompts.len()];
    let mut batch_len = initial_examples.max(1);
    loop {
        let batch = &examples[..batch_len.min(examples.len())];
        let alive_prompts: Vec<&str> = alive.iter().map(|idx| prompts[*idx]).collect();
        let rung = evaluate_all(evaluator, &alive_prompts, batch).await;
        for (slot, candidate) in alive.iter().enumerate() {
            scores[*candidate] = rung.scores[slot].clone();
        }
        if batch.len() == examples.len() {
            for candidate in &alive {
                complete[*candidate] = true;
            }
            break;
        }
        let keep = alive.len().div_ceil(reduction_factor).max(1);
        alive.sort_by(|a, b| {
            let (ma, mb) = (mean(&scores[*a]), mean(&scores[*b]));
            mb.partial_cmp(&ma)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(b))
        });
        alive.truncate(keep);
        alive.sort_unstable();
        batch_len = batch_len.saturating_mul(reduction_factor);
    }
    RaceOutcome { scores, complete }
}
