//! `[registry]`: how A/B tests decide and how rollouts proceed.

use serde::{Deserialize, Serialize};

use crate::section::{Checker, Section};

/// Statistics, guardrails and rollout of the prompt registry. Defaults are
/// documented in `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// The reward (by name, as in the traces) an A/B test compares; `None`
    /// means the sum of an episode's final rewards.
    pub metric: Option<String>,
    /// Level of the always-valid test: the chance of declaring a winner
    /// when there is no difference, however often the test is looked at.
    pub alpha: f64,
    /// Size of difference the test is most sensitive to (the standard
    /// deviation of the mSPRT's normal mixture), in units of the metric.
    pub expected_effect: f64,
    /// Episodes each arm needs (in the test, and in each rollout stage)
    /// before anything is decided.
    pub min_samples_per_arm: u64,
    /// Treatment's share of traffic at each rollout stage; the last is 1.0.
    pub rollout_stages: Vec<f64>,
    /// Metrics that must not get worse; a breach rolls back.
    pub guardrails: Vec<Guardrail>,
    /// Whether the daemon puts each APO winner into a staged rollout (it is
    /// registered as a candidate either way).
    pub auto_rollout: bool,
}

/// A metric that must not get worse under the treatment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guardrail {
    /// A reward name (higher is better), or `tool_error_rate` (lower is
    /// better).
    pub metric: String,
    /// Largest tolerated worsening; a breach needs the always-valid interval
    /// of the difference to lie entirely beyond it.
    #[serde(default)]
    pub max_drop: f64,
}

/// The guardrail metric measured on tool errors instead of a reward.
pub const TOOL_ERROR_RATE: &str = "tool_error_rate";

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            metric: None,
            alpha: 0.05,
            expected_effect: 0.1,
            min_samples_per_arm: 100,
            rollout_stages: vec![0.1, 0.25, 0.5, 1.0],
            guardrails: Vec::new(),
            auto_rollout: false,
        }
    }
}

impl RegistryConfig {
    /// Adds every out-of-range value to `check`.
    pub fn validate(&self, check: &mut Checker) {
        if !(self.alpha > 0.0 && self.alpha < 0.5) {
            check.fail(
                "alpha",
                format!("must be above 0.0 and below 0.5, got {:?}", self.alpha),
            );
        }
        if !(self.expected_effect.is_finite() && self.expected_effect > 0.0) {
            check.fail(
                "expected_effect",
                format!(
                    "must be a finite number above 0.0, got {:?}",
                    self.expected_effect
                ),
            );
        }
        check.at_least("min_samples_per_arm", self.min_samples_per_arm, 2);
        let stages = &self.rollout_stages;
        let increasing = stages.windows(2).all(|w| w[0] < w[1]);
        let in_range = stages.iter().all(|s| *s > 0.0 && *s <= 1.0);
        if stages.last() != Some(&1.0) || !increasing || !in_range {
            check.fail(
                "rollout_stages",
                format!("must rise strictly from above 0.0 to end at 1.0, got {stages:?}"),
            );
        }
        for (idx, guardrail) in self.guardrails.iter().enumerate() {
            if guardrail.metric.is_empty() {
                check.fail(
                    &format!("guardrails.{idx}.metric"),
                    "must name a reward or tool_error_rate",
                );
            }
            if !(guardrail.max_drop.is_finite() && guardrail.max_drop >= 0.0) {
                check.fail(
                    &format!("guardrails.{idx}.max_drop"),
                    format!("must be at least 0.0, got {:?}", guardrail.max_drop),
                );
            }
        }
    }
}

impl Section for RegistryConfig {
    fn check(&self, check: &mut Checker) {
        self.validate(check);
    }
}
