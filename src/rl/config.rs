//! The `[rl]` section of `config.toml`: PPO hyper-parameters, reward shaping,
//! network size and the off-policy promotion gate.
//!
//! Defaults are CleanRL's `ppo.py` where CleanRL has the knob (so results are
//! comparable with the reference implementation) and documented choices
//! elsewhere. Every key is optional; unknown keys are errors so typos fail.

use serde::Deserialize;

/// Which off-policy estimate gates promotion of a newly trained policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromotionEstimator {
    /// Importance sampling with clipped weights.
    Ips,
    /// Self-normalized importance sampling (lower variance, small bias).
    Snips,
}

impl PromotionEstimator {
    /// The name used in config and output.
    pub fn as_str(self) -> &'static str {
        match self {
            PromotionEstimator::Ips => "ips",
            PromotionEstimator::Snips => "snips",
        }
    }
}

/// Reinforcement-learning configuration (`[rl]` in `config.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlConfig {
    /// Discount factor γ.
    pub gamma: f64,
    /// GAE λ.
    pub gae_lambda: f64,
    /// PPO surrogate clipping coefficient ε.
    pub clip_coef: f64,
    /// Clip the value loss around the pre-update value predictions.
    pub clip_vloss: bool,
    /// Entropy bonus coefficient.
    pub ent_coef: f64,
    /// Value loss coefficient.
    pub vf_coef: f64,
    /// Normalize advantages within each minibatch.
    pub norm_adv: bool,
    /// Minibatches per epoch.
    pub num_minibatches: usize,
    /// Epochs over the batch per PPO iteration.
    pub update_epochs: usize,
    /// Global gradient-norm clipping threshold.
    pub max_grad_norm: f64,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Adam ε.
    pub adam_eps: f64,
    /// Stop an iteration's epochs early when the approximate KL exceeds this.
    pub target_kl: Option<f64>,
    /// PPO iterations per training run; each recomputes values and advantages
    /// and then runs `update_epochs` epochs.
    pub iterations_per_run: usize,
    /// Hidden layer width of the policy and value networks.
    pub hidden_dim: usize,
    /// Hashed task-text features (word unigrams and bigrams).
    pub text_hash_dim: usize,
    /// Hashed action-name features.
    pub action_hash_dim: usize,
    /// Reward to learn from; unset sums every named reward.
    pub reward_name: Option<String>,
    /// Reward subtracted for each tool call that failed.
    pub tool_error_penalty: f64,
    /// Fraction of episodes held out for off-policy evaluation.
    pub holdout_fraction: f64,
    /// Importance weights are clipped to at most this value.
    pub importance_weight_clip: f64,
    /// Estimate that gates promotion.
    pub promotion_estimator: PromotionEstimator,
    /// Promote when candidate estimate >= current estimate - margin.
    pub promotion_margin: f64,
    /// Seed for weight initialization, held-out split and minibatch shuffling.
    pub seed: u64,
}

impl Default for RlConfig {
    fn default() -> Self {
        RlConfig {
            gamma: 0.99,
            gae_lambda: 0.95,
            clip_coef: 0.2,
            clip_vloss: true,
            ent_coef: 0.01,
            vf_coef: 0.5,
            norm_adv: true,
            num_minibatches: 4,
            update_epochs: 4,
            max_grad_norm: 0.5,
            learning_rate: 2.5e-4,
            adam_eps: 1e-5,
            target_kl: None,
            iterations_per_run: 10,
            hidden_dim: 64,
            text_hash_dim: 256,
            action_hash_dim: 64,
            reward_name: None,
            tool_error_penalty: 0.1,
            holdout_fraction: 0.2,
            importance_weight_clip: 10.0,
            promotion_estimator: PromotionEstimator::Snips,
            promotion_margin: 0.0,
            seed: 0,
        }
    }
}

impl RlConfig {
    /// Checks every value and lists each out-of-range one by key path
    /// (`rl.<key>: ...`). Empty when the config is usable.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, key: &str, want: &str, got: String| {
            if !ok {
                problems.push(format!("rl.{key}: must be {want}, got {got}"));
            }
        };
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let non_negative = |x: f64| x.is_finite() && x >= 0.0;
        check(unit(self.gamma), "gamma", "in [0, 1]", self.gamma.to_string());
        check(unit(self.gae_lambda), "gae_lambda", "in [0, 1]", self.gae_lambda.to_string());
        check(positive(self.clip_coef), "clip_coef", "> 0", self.clip_coef.to_string());
        check(non_negative(self.ent_coef), "ent_coef", ">= 0", self.ent_coef.to_string());
        check(non_negative(self.vf_coef), "vf_coef", ">= 0", self.vf_coef.to_string());
        check(self.num_minibatches >= 1, "num_minibatches", ">= 1", self.num_minibatches.to_string());
        check(self.update_epochs >= 1, "update_epochs", ">= 1", self.update_epochs.to_string());
        check(positive(self.max_grad_norm), "max_grad_norm", "> 0", self.max_grad_norm.to_string());
        check(positive(self.learning_rate), "learning_rate", "> 0", self.learning_rate.to_string());
        check(positive(self.adam_eps), "adam_eps", "> 0", self.adam_eps.to_string());
        if let Some(target_kl) = self.target_kl {
            check(positive(target_kl), "target_kl", "> 0 (omit the key to disable)", target_kl.to_string());
        }
        check(self.iterations_per_run >= 1, "iterations_per_run", ">= 1", self.iterations_per_run.to_string());
        check((1..=4096).contains(&self.hidden_dim), "hidden_dim", "in 1..=4096", self.hidden_dim.to_string());
        check((1..=1 << 20).contains(&self.text_hash_dim), "text_hash_dim", "in 1..=1048576", self.text_hash_dim.to_string());
        check((2..=1 << 16).contains(&self.action_hash_dim), "action_hash_dim", "in 2..=65536", self.action_hash_dim.to_string());
        if let Some(name) = &self.reward_name {
            check(!name.is_empty(), "reward_name", "a non-empty name (omit the key to sum all rewards)", "\"\"".to_string());
        }
        check(non_negative(self.tool_error_penalty), "tool_error_penalty", ">= 0", self.tool_error_penalty.to_string());
        check(
            (0.0..1.0).contains(&self.holdout_fraction),
            "holdout_fraction",
            "in [0, 1)",
            self.holdout_fraction.to_string(),
        );
        check(
            self.importance_weight_clip.is_finite() && self.importance_weight_clip >= 1.0,
            "importance_weight_clip",
            ">= 1",
            self.importance_weight_clip.to_string(),
        );
        check(non_negative(self.promotion_margin), "promotion_margin", ">= 0", self.promotion_margin.to_string());
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_cleanrl_and_valid() {
        let cfg = RlConfig::default();
        assert_eq!((cfg.gamma, cfg.gae_lambda, cfg.clip_coef), (0.99, 0.95, 0.2));
        assert_eq!((cfg.ent_coef, cfg.vf_coef, cfg.max_grad_norm), (0.01, 0.5, 0.5));
        assert_eq!((cfg.num_minibatches, cfg.update_epochs), (4, 4));
        assert_eq!(cfg.learning_rate, 2.5e-4);
        assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    }

    #[test]
    fn empty_section_is_default_and_unknown_keys_fail() {
        let cfg: RlConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, RlConfig::default());
        let cfg: RlConfig = toml::from_str("target_kl = 0.015\npromotion_estimator = \"ips\"").unwrap();
        assert_eq!(cfg.target_kl, Some(0.015));
        assert_eq!(cfg.promotion_estimator, PromotionEstimator::Ips);
        let err = toml::from_str::<RlConfig>("clip_coeff = 0.1").unwrap_err();
        assert!(err.to_string().contains("clip_coeff"), "{err}");
    }

    #[test]
    fn validate_lists_every_bad_key() {
        let cfg = RlConfig {
            gamma: 1.5,
            num_minibatches: 0,
            learning_rate: f64::NAN,
            holdout_fraction: 1.0,
            target_kl: Some(-1.0),
            ..RlConfig::default()
        };
        let problems = cfg.validate();
        let keys: Vec<&str> = problems.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            ["rl.gamma", "rl.num_minibatches", "rl.learning_rate", "rl.target_kl", "rl.holdout_fraction"]
        );
    }
}
