//! Adaptive choice of mutation operator, credited by improvement per call.
//!
//! Each operator is an arm. Every use of an operator is charged the calls it
//! cost (rewriter calls, then the evaluations of its child; a use that made
//! no child, or a duplicate, costs at least one nominal call) and credited
//! with how much its child beat its parent on the training examples (zero
//! when it did not, or never got that far). An arm's value is its gain per
//! call: an operator that wastes calls, whose children rarely pass or
//! reproduce a parent, loses its share even when it sometimes helps.
//!
//! Choice is a Boltzmann draw over the value relative to the best arm's,
//! `weight × exp((value / best − 1) / temperature)`, so the temperature is
//! unit-free: at 0.5 an arm with no gain yet is drawn e^2 ≈ 7 times less
//! often than the best one of the same weight. Untried arms count as the
//! best, so each gets tried; weight 0 switches an operator off.

use crate::rng::Rng;

/// Statistics of one operator, as reported in the summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArmStats {
    /// Children attempted: evaluated, rejected or not produced.
    pub uses: u64,
    /// Children that beat their parent.
    pub improvements: u64,
    /// Sum of gains over the parent (floored at 0).
    pub total_gain: f64,
    /// Calls charged to the arm (at least one per use).
    pub calls: u64,
    /// Uses that produced no child worth evaluating (failed call, nothing
    /// to change, duplicate, guardrail).
    pub failures: u64,
}

impl ArmStats {
    /// Gain per call charged, 0 before the first use.
    pub fn gain_per_call(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.total_gain / self.calls as f64
        }
    }
}

/// A softmax bandit over named arms.
#[derive(Debug, Clone)]
pub struct Bandit {
    names: Vec<String>,
    weights: Vec<f64>,
    stats: Vec<ArmStats>,
    temperature: f64,
}

impl Bandit {
    /// Arms with their prior weights; `temperature` is relative (see module docs).
    pub fn new(arms: Vec<(String, f64)>, temperature: f64) -> Self {
        let (names, weights): (Vec<_>, Vec<_>) = arms.into_iter().unzip();
        let stats = vec![ArmStats::default(); names.len()];
        Bandit {
            names,
            weights,
            stats,
            temperature,
        }
    }

    /// Draws an arm among those allowed by `eligible`; `None` when none is.
    pub fn choose(&self, rng: &mut Rng, eligible: impl Fn(&str) -> bool) -> Option<usize> {
        let best = self
            .stats
            .iter()
            .map(ArmStats::gain_per_call)
            .fold(0.0, f64::max);
        let scores: Vec<f64> = self
            .names
            .iter()
            .enumerate()
            .map(|(idx, name)| {
                if self.weights[idx] <= 0.0 || !eligible(name) {
                    return 0.0;
                }
                if best <= 0.0 || self.stats[idx].uses == 0 {
                    return self.weights[idx];
                }
                let relative = self.stats[idx].gain_per_call() / best;
                self.weights[idx] * ((relative - 1.0) / self.temperature).max(-50.0).exp()
            })
            .collect();
        let total: f64 = scores.iter().sum();
        if total <= 0.0 {
            return None;
        }
        let mut draw = rng.next_f64() * total;
        for (idx, score) in scores.iter().enumerate() {
            if *score > 0.0 && draw < *score {
                return Some(idx);
            }
            draw -= score;
        }
        scores.iter().rposition(|score| *score > 0.0)
    }

    /// Charges arm `idx` one use costing `calls`, whose child scored `child`
    /// against its parent's `parent` (`None`: never fully scored).
    pub fn credit(&mut self, idx: usize, calls: u64, child: Option<f64>, parent: f64) {
        let stats = &mut self.stats[idx];
        stats.uses += 1;
        stats.calls += calls.max(1);
        let gain = child.map_or(0.0, |child| child - parent);
        // Ignore float noise: a child scoring the same as its parent is no gain.
        if gain > 1e-9 {
            stats.improvements += 1;
            stats.total_gain += gain;
        }
    }

    /// Charges arm `idx` a use costing `calls` that produced no child worth
    /// evaluating.
    pub fn fail(&mut self, idx: usize, calls: u64) {
        self.credit(idx, calls, None, 0.0);
        self.stats[idx].failures += 1;
    }

    /// Name of arm `idx`.
    pub fn name(&self, idx: usize) -> &str {
        &self.names[idx]
    }

    /// Per-arm statistics, in arm order.
    pub fn stats(&self) -> impl Iterator<Item = (&str, &ArmStats)> {
        self.names.iter().map(String::as_str).zip(&self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Synthetic task: arm "good" improves children by 0.2, the others never.
    /// The bandit must learn to pick "good" most of the time.
    #[test]
    fn learns_to_prefer_the_arm_that_improves() {
        let arms = ["bad_a", "good", "bad_b", "bad_c"]
            .iter()
            .map(|name| (name.to_string(), 1.0))
            .collect();
        let mut bandit = Bandit::new(arms, 0.25);
        let mut rng = Rng::new(11);
        let mut late_good = 0;
        for round in 0..400 {
            let idx = bandit.choose(&mut rng, |_| true).unwrap();
            let gain = if bandit.name(idx) == "good" {
                0.2
            } else {
                -0.1
            };
            bandit.credit(idx, 8, Some(0.5 + gain), 0.5);
            if round >= 300 && bandit.name(idx) == "good" {
                late_good += 1;
            }
        }
        assert!(late_good > 90, "good chosen {late_good}/100 late rounds");
        let good = bandit.stats().find(|(name, _)| *name == "good").unwrap().1;
        assert!((good.gain_per_call() - 0.2 / 8.0).abs() < 1e-9);
    }

    /// Regression test for issue 8: two operators that improve children by
    /// the same amount, one at four times the calls (as crossover did when
    /// most of its children were paid-for copies of a parent): the cheap one
    /// must win most of the draws.
    #[test]
    fn credit_is_per_call_so_the_wasteful_operator_loses_its_share() {
        let arms = vec![("cheap".into(), 1.0), ("wasteful".into(), 1.0)];
        let mut bandit = Bandit::new(arms, 0.5);
        let mut rng = Rng::new(3);
        let mut late_cheap = 0;
        for round in 0..300 {
            let idx = bandit.choose(&mut rng, |_| true).unwrap();
            let calls = if bandit.name(idx) == "cheap" { 6 } else { 24 };
            bandit.credit(idx, calls, Some(0.6), 0.5);
            if round >= 200 && bandit.name(idx) == "cheap" {
                late_cheap += 1;
            }
        }
        assert!(late_cheap > 75, "cheap chosen {late_cheap}/100 late rounds");
    }

    #[test]
    fn failures_cost_calls_and_noise_is_no_improvement() {
        let mut bandit = Bandit::new(vec![("a".into(), 1.0)], 0.1);
        bandit.credit(0, 4, Some(0.9), 0.5);
        bandit.fail(0, 0);
        bandit.credit(0, 3, Some(0.5 + 1e-15), 0.5);
        let (_, stats) = bandit.stats().next().unwrap();
        assert_eq!(
            (stats.uses, stats.improvements, stats.failures, stats.calls),
            (3, 1, 1, 8)
        );
        assert!((stats.gain_per_call() - 0.4 / 8.0).abs() < 1e-9);
    }

    #[test]
    fn zero_weight_and_ineligible_arms_are_never_chosen() {
        let bandit = Bandit::new(vec![("off".into(), 0.0), ("on".into(), 1.0)], 0.1);
        let mut rng = Rng::new(1);
        for _ in 0..50 {
            assert_eq!(bandit.choose(&mut rng, |_| true), Some(1));
        }
        assert_eq!(bandit.choose(&mut rng, |name| name != "on"), None);
    }
}
