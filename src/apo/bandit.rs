//! Adaptive choice of mutation operator.
//!
//! Each operator is an arm. When a child is evaluated, its operator is
//! credited with how much it beat its best parent (zero when it did not).
//! Choice is a Boltzmann draw over mean credit, scaled by the operator's
//! configured weight, so operators whose children improve get picked more,
//! the others keep a chance, and weight 0 switches an operator off.

use crate::rng::Rng;

/// Statistics of one operator, as reported in the summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArmStats {
    /// Children attempted: evaluated, rejected or not produced.
    pub uses: u64,
    /// Children that beat their best parent.
    pub improvements: u64,
    /// Sum of credit (improvement over the best parent, floored at 0).
    pub total_credit: f64,
    /// Children rejected by guardrails or that could not be produced.
    pub failures: u64,
}

impl ArmStats {
    /// Mean credit per use (a failed use earns 0), 0 before the first use.
    pub fn mean_credit(&self) -> f64 {
        if self.uses == 0 {
            0.0
        } else {
            self.total_credit / self.uses as f64
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
    /// Arms with their prior weights; `temperature` is in credit units.
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
        let scores: Vec<f64> = self
            .names
            .iter()
            .enumerate()
            .map(|(idx, name)| {
                if self.weights[idx] <= 0.0 || !eligible(name) {
                    return 0.0;
                }
                // An untried arm is treated as promising so each gets a try.
                let credit = if self.stats[idx].uses == 0 {
                    self.best_mean_credit()
                } else {
                    self.stats[idx].mean_credit()
                };
                self.weights[idx] * (credit / self.temperature).min(50.0).exp()
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

    fn best_mean_credit(&self) -> f64 {
        self.stats
            .iter()
            .map(ArmStats::mean_credit)
            .fold(0.0, f64::max)
    }

    /// Credits arm `idx` with a child that scored `child` against parents' best `parent`.
    pub fn credit(&mut self, idx: usize, child: f64, parent: f64) {
        let stats = &mut self.stats[idx];
        stats.uses += 1;
        let gain = child - parent;
        // Ignore float noise: a child scoring the same as its parent is no gain.
        if gain > 1e-9 {
            stats.improvements += 1;
            stats.total_credit += gain;
        }
    }

    /// Counts a child of arm `idx` that was rejected or not produced: a use
    /// that earns no credit, so an operator that keeps failing is picked less.
    pub fn fail(&mut self, idx: usize) {
        self.stats[idx].uses += 1;
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
        let mut bandit = Bandit::new(arms, 0.04);
        let mut rng = Rng::new(11);
        let mut late_good = 0;
        for round in 0..400 {
            let idx = bandit.choose(&mut rng, |_| true).unwrap();
            let gain = if bandit.name(idx) == "good" {
                0.2
            } else {
                -0.1
            };
            bandit.credit(idx, 0.5 + gain, 0.5);
            if round >= 300 && bandit.name(idx) == "good" {
                late_good += 1;
            }
        }
        assert!(late_good > 90, "good chosen {late_good}/100 late rounds");
        let good = bandit.stats().find(|(name, _)| *name == "good").unwrap().1;
        assert!((good.mean_credit() - 0.2).abs() < 1e-9);
    }

    #[test]
    fn failures_dilute_credit_and_noise_is_no_improvement() {
        let mut bandit = Bandit::new(vec![("a".into(), 1.0)], 0.1);
        bandit.credit(0, 0.9, 0.5);
        bandit.fail(0);
        bandit.credit(0, 0.5 + 1e-15, 0.5);
        let (_, stats) = bandit.stats().next().unwrap();
        assert_eq!((stats.uses, stats.improvements, stats.failures), (3, 1, 1));
        assert!((stats.mean_credit() - 0.4 / 3.0).abs() < 1e-9);
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
