//! Off-policy evaluation: what a policy would earn, estimated from decisions
//! another (behavior) policy made.
//!
//! Per-decision importance sampling (PDIS, Precup et al. 2000): the reward at
//! decision t is weighted by the product of π/μ over decisions 0..=t, clipped
//! to `weight_clip`. The self-normalized variant divides, at each t, by the
//! sum of weights instead of the episode count (an episode that already ended
//! keeps its last weight and earns 0). For single-decision episodes these are
//! plain IPS and SNIPS. The effective sample size of the final trajectory
//! weights, (Σw)²/Σw², says how much of the data the estimate really uses.
//!
//! [`bootstrap`] gives percentile bounds of either estimate by resampling
//! episodes, which is what the promotion gate compares: a policy is promoted
//! on its lower bound, not on a point estimate that one lucky weight can make.

use crate::rng::Rng;

/// One logged decision seen by an evaluated policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoggedStep {
    /// π(a|s) of the evaluated policy for the logged action.
    pub target_probability: f64,
    /// μ(a|s) of the behavior policy.
    pub behavior_probability: f64,
    pub reward: f64,
}

/// Value estimates of one policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub ips: f64,
    pub snips: f64,
    pub effective_sample_size: f64,
}

/// PDIS and weighted PDIS estimates over `episodes` (each non-empty). A
/// step with a non-finite probability or reward makes every estimate NaN
/// (clipping would otherwise turn a NaN weight into the clip: `NaN.min(c)`
/// is `c`), so a broken policy can never look good.
pub fn estimate(episodes: &[&[LoggedStep]], gamma: f64, weight_clip: f64) -> Estimate {
    let n = episodes.len();
    let broken = episodes.iter().flat_map(|steps| steps.iter()).any(|step| {
        !(step.target_probability.is_finite()
            && step.behavior_probability.is_finite()
            && step.reward.is_finite())
    });
    if n == 0 || broken {
        return Estimate {
            ips: f64::NAN,
            snips: f64::NAN,
            effective_sample_size: 0.0,
        };
    }
    // Cumulative clipped weights per episode and decision.
    let weights: Vec<Vec<f64>> = episodes
        .iter()
        .map(|steps| {
            let mut cumulative = 1.0;
            steps
                .iter()
                .map(|step| {
                    cumulative = (cumulative * step.target_probability / step.behavior_probability)
                        .min(weight_clip);
                    cumulative
                })
                .collect()
        })
        .collect();
    let horizon = episodes.iter().map(|steps| steps.len()).max().unwrap_or(0);
    let mut ips = 0.0;
    let mut snips = 0.0;
    let mut discount = 1.0;
    for t in 0..horizon {
        let mut weighted_reward = 0.0;
        let mut weight_sum = 0.0;
        for (steps, weights) in episodes.iter().zip(&weights) {
            let weight = weights[t.min(weights.len() - 1)];
            weight_sum += weight;
            if let Some(step) = steps.get(t) {
                weighted_reward += weight * step.reward;
            }
        }
        ips += discount * weighted_reward / n as f64;
        if weight_sum > 0.0 {
            snips += discount * weighted_reward / weight_sum;
        }
        discount *= gamma;
    }
    let finals: Vec<f64> = weights.iter().map(|w| w[w.len() - 1]).collect();
    let sum: f64 = finals.iter().sum();
    let sum_sq: f64 = finals.iter().map(|w| w * w).sum();
    let effective_sample_size = if sum_sq > 0.0 {
        sum * sum / sum_sq
    } else {
        0.0
    };
    Estimate {
        ips,
        snips,
        effective_sample_size,
    }
}

/// Which estimate [`bootstrap`] bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimator {
    Ips,
    Snips,
}

/// Percentile bounds of an estimate from `resamples` bootstrap resamples of
/// the episodes: the `1 - confidence` and `confidence` quantiles; NaN when
/// any resample's estimate is not finite.
pub fn bootstrap(episodes: &[&[LoggedStep]], params: BootstrapParams, rng: &mut Rng) -> (f64, f64) {
    if episodes.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut draws: Vec<f64> = (0..params.resamples)
        .map(|_| {
            let sample: Vec<&[LoggedStep]> = (0..episodes.len())
                .map(|_| episodes[rng.below(episodes.len())])
                .collect();
            let e = estimate(&sample, params.gamma, params.weight_clip);
            match params.estimator {
                Estimator::Ips => e.ips,
                Estimator::Snips => e.snips,
            }
        })
        .collect();
    if draws.iter().any(|d| !d.is_finite()) {
        return (f64::NAN, f64::NAN);
    }
    draws.sort_by(f64::total_cmp);
    let at = |q: f64| draws[((q * draws.len() as f64) as usize).min(draws.len() - 1)];
    (at(1.0 - params.confidence), at(params.confidence))
}

/// Settings of [`bootstrap`].
#[derive(Debug, Clone, Copy)]
pub struct BootstrapParams {
    pub estimator: Estimator,
    pub gamma: f64,
    pub weight_clip: f64,
    /// Level of each one-sided bound, in (0, 1).
    pub confidence: f64,
    pub resamples: usize,
}

/// The behavior policy's own value: the mean discounted return observed.
pub fn logged_value(episodes: &[&[LoggedStep]], gamma: f64) -> f64 {
    let total: f64 = episodes
        .iter()
        .map(|steps| {
            steps
                .iter()
                .rev()
                .fold(0.0, |future, step| step.reward + gamma * future)
        })
        .sum();
    total / episodes.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(target_probability: f64, behavior_probability: f64, reward: f64) -> LoggedStep {
        LoggedStep {
            target_probability,
            behavior_probability,
            reward,
        }
    }

    #[test]
    fn single_decision_ips_snips_ess() {
        // weights 2, 0.5, 0; rewards 1, 1, 0
        let episodes: [&[LoggedStep]; 3] = [
            &[step(0.5, 0.25, 1.0)],
            &[step(0.25, 0.5, 1.0)],
            &[step(0.0, 0.5, 0.0)],
        ];
        let e = estimate(&episodes, 0.99, 10.0);
        assert!((e.ips - 2.5 / 3.0).abs() < 1e-12);
        assert!((e.snips - 1.0).abs() < 1e-12);
        assert!((e.effective_sample_size - 2.5 * 2.5 / 4.25).abs() < 1e-12);
        // Clipping the weight 2 to 1.5.
        let clipped = estimate(&episodes, 0.99, 1.5);
        assert!((clipped.ips - 2.0 / 3.0).abs() < 1e-12);
        assert!((logged_value(&episodes, 0.99) - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn per_decision_weights_accumulate_and_ended_episodes_keep_theirs() {
        // Episode A: w0 = 2, w1 = 2 * 0.5 = 1; rewards 0 then 1.
        // Episode B: one decision, w0 = 0.5, reward 1.
        let episodes: [&[LoggedStep]; 2] = [
            &[step(0.5, 0.25, 0.0), step(0.25, 0.5, 1.0)],
            &[step(0.25, 0.5, 1.0)],
        ];
        let e = estimate(&episodes, 0.9, 10.0);
        // IPS: t0: (2*0 + 0.5*1)/2 = 0.25; t1: 0.9 * (1*1)/2 = 0.45
        assert!((e.ips - 0.7).abs() < 1e-12, "{e:?}");
        // SNIPS: t0: 0.5 / 2.5 = 0.2; t1: 0.9 * 1 / (1 + 0.5) = 0.6
        assert!((e.snips - 0.8).abs() < 1e-12, "{e:?}");
        // ESS of final weights 1 and 0.5: 2.25 / 1.25
        assert!((e.effective_sample_size - 1.8).abs() < 1e-12);
        // Observed: A = 0 + 0.9 * 1, B = 1
        assert!((logged_value(&episodes, 0.9) - 0.95).abs() < 1e-12);
    }

    #[test]
    fn a_non_finite_policy_is_never_estimated_at_the_clip() {
        // Issue 23, item 5: NaN.min(clip) is the clip, so a NaN policy was
        // rated as if every weight were at the clip.
        let episodes: [&[LoggedStep]; 2] = [&[step(f64::NAN, 0.5, 1.0)], &[step(0.5, 0.5, 1.0)]];
        let e = estimate(&episodes, 0.99, 10.0);
        assert!(e.ips.is_nan() && e.snips.is_nan() && e.effective_sample_size == 0.0);
        let params = BootstrapParams {
            estimator: Estimator::Snips,
            gamma: 0.99,
            weight_clip: 10.0,
            confidence: 0.95,
            resamples: 50,
        };
        let (lower, upper) = bootstrap(&episodes, params, &mut Rng::new(1));
        assert!(lower.is_nan() && upper.is_nan());
    }

    #[test]
    fn bootstrap_bounds_bracket_the_estimate_and_narrow_with_data() {
        // Behavior uniform over two actions; the target always takes the
        // first, which pays 1 three times in four.
        let make = |n: usize| -> Vec<Vec<LoggedStep>> {
            (0..n)
                .map(|i| match i % 8 {
                    0..=2 => vec![step(1.0, 0.5, 1.0)],
                    3 => vec![step(1.0, 0.5, 0.0)],
                    _ => vec![step(0.0, 0.5, 0.3)],
                })
                .collect()
        };
        let params = BootstrapParams {
            estimator: Estimator::Snips,
            gamma: 1.0,
            weight_clip: 10.0,
            confidence: 0.95,
            resamples: 400,
        };
        let width = |n: usize| {
            let episodes = make(n);
            let refs: Vec<&[LoggedStep]> = episodes.iter().map(Vec::as_slice).collect();
            let point = estimate(&refs, 1.0, 10.0).snips;
            assert!((point - 0.75).abs() < 1e-12);
            let (lower, upper) = bootstrap(&refs, params, &mut Rng::new(5));
            assert!(lower < point && point < upper, "{lower} {point} {upper}");
            upper - lower
        };
        let (small, large) = (width(40), width(4000));
        assert!(small > 0.2 && large < 0.05, "{small} {large}");
    }
}
