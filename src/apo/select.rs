//! Choosing among scored candidates: parents from the Pareto frontier, merge
//! partners that are strong on different examples, and the paired
//! comparison that decides whether a finalist beats the baseline.
//!
//! All comparisons are **paired**: two candidates are compared only on the
//! examples both were scored on, never on means over different examples.

use std::collections::BTreeMap;

use crate::rng::Rng;

/// Score per example id.
pub type ScoreMap = BTreeMap<String, f64>;

/// Scores within this of each other are equal.
const TIE: f64 = 1e-9;

/// The Pareto frontier over per-example scores, as GEPA keeps it: for each
/// example, the candidates with the best score on it; of those, the ones no
/// other candidate dominates. Returns `(candidate, examples it is best on)`,
/// in candidate order.
pub fn frontier(candidates: &[&ScoreMap]) -> Vec<(usize, usize)> {
    let mut wins = vec![0usize; candidates.len()];
    let examples: std::collections::BTreeSet<&String> =
        candidates.iter().flat_map(|scores| scores.keys()).collect();
    for example in examples {
        let best = candidates
            .iter()
            .filter_map(|scores| scores.get(example))
            .fold(f64::NEG_INFINITY, |a, b| a.max(*b));
        for (idx, scores) in candidates.iter().enumerate() {
            if scores
                .get(example)
                .is_some_and(|score| *score >= best - TIE)
            {
                wins[idx] += 1;
            }
        }
    }
    (0..candidates.len())
        .filter(|idx| wins[*idx] > 0)
        .filter(|idx| {
            !candidates
                .iter()
                .enumerate()
                .any(|(other, scores)| other != *idx && dominates(scores, candidates[*idx]))
        })
        .map(|idx| (idx, wins[idx]))
        .collect()
}

/// Draws a frontier member with probability proportional to the examples it
/// is best on.
pub fn pick_weighted(frontier: &[(usize, usize)], rng: &mut Rng) -> Option<usize> {
    let total: usize = frontier.iter().map(|(_, wins)| wins).sum();
    if total == 0 {
        return None;
    }
    let mut draw = rng.below(total);
    for (idx, wins) in frontier {
        if draw < *wins {
            return Some(*idx);
        }
        draw -= wins;
    }
    None
}

/// `a` is at least as good as `b` on every example both were scored on, and
/// strictly better on one.
pub fn dominates(a: &ScoreMap, b: &ScoreMap) -> bool {
    let mut strictly = false;
    let mut shared = 0;
    for (example, score_b) in b {
        let Some(score_a) = a.get(example) else {
            continue;
        };
        shared += 1;
        if *score_a < score_b - TIE {
            return false;
        }
        if *score_a > score_b + TIE {
            strictly = true;
        }
    }
    shared > 0 && strictly
}

/// Examples on which `a` scores strictly higher than `b`.
pub fn better_on<'s>(a: &'s ScoreMap, b: &ScoreMap) -> Vec<&'s String> {
    a.iter()
        .filter(|(example, score)| b.get(*example).is_some_and(|other| **score > other + TIE))
        .map(|(example, _)| example)
        .collect()
}

/// The paired difference of `candidate` over `baseline` on the examples both
/// were scored on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paired {
    /// Examples compared.
    pub n: usize,
    /// Mean per-example difference (candidate − baseline).
    pub mean: f64,
    /// Standard error of that mean.
    pub std_err: f64,
}

impl Paired {
    /// Compares two candidates example by example.
    pub fn compare(candidate: &ScoreMap, baseline: &ScoreMap) -> Paired {
        let diffs: Vec<f64> = candidate
            .iter()
            .filter_map(|(example, score)| baseline.get(example).map(|base| score - base))
            .collect();
        let n = diffs.len();
        if n == 0 {
            return Paired {
                n,
                mean: 0.0,
                std_err: 0.0,
            };
        }
        let mean = diffs.iter().sum::<f64>() / n as f64;
        let variance = if n > 1 {
            diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Paired {
            n,
            mean,
            std_err: (variance / n as f64).sqrt(),
        }
    }

    /// Better beyond noise: the mean gain is positive and larger than one
    /// standard error of it.
    pub fn beats_noise(&self) -> bool {
        self.n > 0 && self.mean > TIE && self.mean > self.std_err + 1e-6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(values: &[f64]) -> ScoreMap {
        values
            .iter()
            .enumerate()
            .map(|(idx, value)| (format!("e{idx}"), *value))
            .collect()
    }

    #[test]
    fn frontier_keeps_specialists_and_drops_the_dominated() {
        let strong = scores(&[0.9, 0.9, 0.0]);
        let also = scores(&[0.8, 0.8, 0.0]);
        let specialist = scores(&[0.0, 0.0, 1.0]);
        let copy = scores(&[0.9, 0.9, 0.0]);
        let front = frontier(&[&strong, &also, &specialist, &copy]);
        assert_eq!(front, [(0, 2), (2, 1), (3, 2)]);
        let mut rng = Rng::new(1);
        let mut picked = [0; 4];
        for _ in 0..600 {
            picked[pick_weighted(&front, &mut rng).unwrap()] += 1;
        }
        assert_eq!(picked[1], 0);
        assert!(picked[0] > picked[2] && picked[3] > picked[2], "{picked:?}");
    }

    /// Regression test for issue 8: a half-scored candidate is compared on
    /// the examples it shares with the other, not by its mean over fewer.
    #[test]
    fn comparisons_are_paired_on_shared_examples() {
        let full = scores(&[0.9, 0.9, 0.9, 0.1]);
        let half = ScoreMap::from([("e0".to_string(), 0.8), ("e9".to_string(), 1.0)]);
        // Its mean (0.9) is above the other's (0.7), but where both were
        // scored it is worse.
        let paired = Paired::compare(&half, &full);
        assert_eq!(paired.n, 1);
        assert!((paired.mean + 0.1).abs() < 1e-9);
        assert!(dominates(&full, &half));
        assert!(!dominates(&half, &full));
        assert_eq!(better_on(&full, &half), [&"e0".to_string()]);
    }

    #[test]
    fn paired_gain_must_beat_its_noise() {
        let baseline = scores(&[0.5, 0.5, 0.5, 0.5, 0.5]);
        let steady = scores(&[0.7, 0.6, 0.7, 0.6, 0.7]);
        assert!(Paired::compare(&steady, &baseline).beats_noise());
        let lucky = scores(&[1.0, 0.5, 0.5, 0.5, 0.5]);
        assert!(!Paired::compare(&lucky, &baseline).beats_noise());
        let same = baseline.clone();
        assert!(!Paired::compare(&same, &baseline).beats_noise());
        let worse = scores(&[0.4, 0.4, 0.4, 0.4, 0.4]);
        assert!(!Paired::compare(&worse, &baseline).beats_noise());
    }
}
