//! `learned_policy.json`: what a training run learned and decided.
//!
//! This is the output boundary, so it owns the serializable shape; the field
//! names are the public contract users and dashboards read. Non-finite
//! numbers (an explained variance of constant returns, an estimate on no
//! data) are written as `null`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::plugin_rewards::PluginRewardStats;

/// The report of one training run (also returned to the caller).
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub format_version: u32,
    /// Whether training continued from an existing checkpoint.
    pub resumed_from_checkpoint: bool,
    pub episodes: EpisodeCounts,
    /// What each reward plugin added to the trace rewards; empty without
    /// reward plugins.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plugin_rewards: Vec<PluginRewardStats>,
    /// Where each decision's behavior probability came from.
    pub behavior_probability_source: BehaviorSource,
    pub training: TrainingSummary,
    /// Mean entropy (nats) of the trained policy over the training states.
    pub policy_entropy: f64,
    /// Per action: logged usage, advantage and what the trained policy does.
    pub actions: BTreeMap<String, ActionSummary>,
    /// Held-out evaluation; absent when no episode was held out.
    pub off_policy_evaluation: Option<OffPolicyEvaluation>,
    pub promotion: Promotion,
}

/// Episode counts of the run.
#[derive(Debug, Clone, Serialize)]
pub struct EpisodeCounts {
    pub received: usize,
    pub used: usize,
    pub training: usize,
    pub held_out: usize,
    /// Training decisions (transitions).
    pub training_decisions: usize,
    /// Skipped episodes by reason code.
    pub skipped: BTreeMap<String, usize>,
}

/// Behavior-probability provenance.
#[derive(Debug, Clone, Serialize)]
pub struct BehaviorSource {
    /// Decisions whose trace recorded the probability.
    pub trace: usize,
    /// Decisions scored in this run by the promoted policy, which is the
    /// snapshot current when their episodes were ingested (frozen from now on).
    pub policy_snapshot: usize,
    /// Decisions whose probability was frozen by an earlier run, under the
    /// snapshot current then (see `rl::behavior`).
    pub frozen_earlier: usize,
    /// Version of the promoted policy in this run.
    pub snapshot_policy_version: u64,
    /// Decisions whose trace carries the id `/v1/policy/act` gave them
    /// (`whetstone.policy.decision_id`): made by the served policy.
    pub served_decisions: usize,
}

/// PPO statistics (the last iteration's, as CleanRL logs them) and counters.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingSummary {
    pub iterations: usize,
    /// Epochs over the batch in this run, summed over iterations.
    pub epochs: usize,
    pub minibatch_updates: usize,
    /// Iterations whose epochs stopped early on `target_kl`.
    pub kl_early_stops: usize,
    pub policy_loss: f64,
    pub value_loss: f64,
    pub entropy: f64,
    pub approx_kl: f64,
    pub clip_fraction: f64,
    pub explained_variance: f64,
    /// Each PPO iteration (update) of this run, in order: how far it moved
    /// the policy and how much of the data hit the clip.
    pub updates: Vec<UpdateSummary>,
    /// Since the checkpoint was created.
    pub total_runs: u64,
    pub total_iterations: u64,
    pub total_epochs: u64,
    pub total_minibatch_updates: u64,
}

/// One PPO iteration's trust-region statistics.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateSummary {
    /// Epochs completed (fewer than `rl.update_epochs` after an early stop).
    pub epochs: usize,
    /// KL(π_old ‖ π_θ) from the policy at the iteration's start, over all
    /// actions, mean over its last minibatch's states (what `rl.target_kl`
    /// bounds).
    pub kl: f64,
    /// CleanRL's sampled estimate on the logged actions of that minibatch
    /// (weighs actions by the logging policy, so it can be huge off-policy).
    pub approx_kl: f64,
    /// Mean fraction of clipped ratios over its minibatches.
    pub clip_fraction: f64,
    /// Whether `rl.target_kl` stopped its epochs early.
    pub early_stopped: bool,
}

/// One action's statistics over the training decisions.
#[derive(Debug, Clone, Serialize)]
pub struct ActionSummary {
    /// Times the logged agent chose it.
    pub count: usize,
    /// `count` over all training decisions.
    pub usage_frequency: f64,
    /// Mean GAE advantage of the decisions that chose it (null if never chosen).
    pub average_advantage: Option<f64>,
    /// Mean probability the trained policy gives it.
    pub learned_probability: f64,
    /// Share of training states where it is the trained policy's top choice.
    pub greedy_frequency: f64,
}

/// Off-policy value estimates on the held-out episodes.
#[derive(Debug, Clone, Serialize)]
pub struct OffPolicyEvaluation {
    pub held_out_episodes: usize,
    pub held_out_decisions: usize,
    /// Held-out episodes the estimates use: those whose every decision has
    /// a logged probability (unless guesses are allowed).
    pub evaluated_episodes: usize,
    /// Held-out decisions with a logged probability.
    pub logged_probability_decisions: usize,
    pub importance_weight_clip: f64,
    /// Level of each one-sided bootstrap bound.
    pub confidence: f64,
    /// Mean discounted return the logged agent achieved.
    pub logging_policy_value: f64,
    /// The promoted policy before this run.
    pub current: PolicyEstimate,
    /// The policy this run trained.
    pub candidate: PolicyEstimate,
}

/// IPS, SNIPS, effective sample size and the bootstrap bounds of the
/// promotion estimator for one policy.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyEstimate {
    pub ips: f64,
    pub snips: f64,
    pub effective_sample_size: f64,
    pub lower_bound: f64,
    pub upper_bound: f64,
}

/// The promotion decision.
#[derive(Debug, Clone, Serialize)]
pub struct Promotion {
    pub promoted: bool,
    /// Why, in a sentence.
    pub reason: String,
    pub estimator: String,
    pub margin: f64,
    /// Version of the promoted policy after this run.
    pub policy_version: u64,
}

/// File name of the report.
pub const REPORT_FILE: &str = "learned_policy.json";

/// Writes `report` to `out_dir/learned_policy.json`.
pub fn write(out_dir: &Path, report: &TrainReport) -> Result<()> {
    let path = out_dir.join(REPORT_FILE);
    let mut text = serde_json::to_string_pretty(report)?;
    text.push('\n');
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}
