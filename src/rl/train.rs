//! One training run over logged episodes ([`train`]): resuming the
//! checkpoint, PPO in a trust region, gated promotion, report.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::batch::{ActionSpace, Batch, states_tensor};
use super::behavior::FrozenBehavior;
use super::checkpoint::{self, Checkpoint, TrainingState};
use super::config::{PromotionEstimator, RlConfig};
use super::features::{FeatureSpec, State, stable_hash};
use super::ope::{self, BootstrapParams, Estimator, LoggedStep};
use super::optimizer::Adam;
use super::plugin_rewards;
use super::policy::{Architecture, PolicyNet};
use super::ppo::{self, IterationStats, TrainingData};
use super::report::{
    self, ActionSummary, BehaviorSource, EpisodeCounts, OffPolicyEvaluation, PolicyEstimate,
    Promotion, TrainReport, TrainingSummary, UpdateSummary,
};
use super::transitions::{Decision, Ending, EpisodeDecisions, extract_with};
use crate::plugin::Plugins;
use crate::rng::Rng;
use crate::trace::Episode;

/// Behavior probabilities below this are raised to it, so a log never sees 0.
const MIN_BEHAVIOR_PROBABILITY: f64 = 1e-6;

/// File name of the promoted policy's weights in the output directory.
pub const POLICY_FILE: &str = "policy.safetensors";

/// Bootstrap resamples behind the promotion gate's confidence bound.
const BOOTSTRAP_RESAMPLES: usize = 500;
/// Mixed into `rl.seed` for the bootstrap's random stream.
const BOOTSTRAP_SEED: u64 = 0x6f70_655f_6273;

/// What a training run reports while it runs (the CLI draws it).
#[derive(Debug, Clone)]
pub enum TrainProgress {
    /// Decisions are extracted and featurized; iterations start now.
    Started {
        training_decisions: usize,
        /// Training decisions whose trace logged their behavior probability.
        logged_probabilities: usize,
        iterations: usize,
    },
    /// One PPO iteration finished (1-based).
    Iteration {
        iteration: usize,
        stats: IterationStats,
    },
}

/// Runs one training run: turns `episodes` into decisions, continues the
/// learner in `checkpoint_dir` (or starts one there) for
/// `rl.iterations_per_run` PPO iterations, evaluates it off-policy against the
/// promoted policy on held-out episodes, promotes it if not worse, saves the
/// checkpoint, and writes `learned_policy.json` and `policy.safetensors` (the
/// policy in effect after the run) to `out_dir`. `progress` hears of the start
/// and of every iteration.
pub fn train(
    episodes: &[Episode],
    cfg: &RlConfig,
    plugins: &Plugins,
    out_dir: &Path,
    checkpoint_dir: &Path,
    progress: &mut dyn FnMut(TrainProgress),
) -> Result<TrainReport> {
    train_until(
        episodes,
        cfg,
        plugins,
        out_dir,
        checkpoint_dir,
        &|| false,
        progress,
    )
}

/// [`train`] that stops when `cancelled` says so, asked between PPO
/// minibatches: the run then fails with an error and leaves the checkpoint
/// as it was (what a daemon round does on shutdown).
pub fn train_until(
    episodes: &[Episode],
    cfg: &RlConfig,
    plugins: &Plugins,
    out_dir: &Path,
    checkpoint_dir: &Path,
    cancelled: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(TrainProgress),
) -> Result<TrainReport> {
    let problems = cfg.problems();
    if !problems.is_empty() {
        bail!("invalid configuration: {}", problems.join("; "));
    }
    let architecture = Architecture {
        features: FeatureSpec {
            text_hash_dim: cfg.text_hash_dim,
            action_hash_dim: cfg.action_hash_dim,
        },
        hidden_dim: cfg.hidden_dim,
    };
    let spec = architecture.features;
    let (mut checkpoint, resumed) = match checkpoint::load(
        checkpoint_dir,
        architecture,
        cfg.learning_rate,
        cfg.adam_eps,
    )? {
        Some(checkpoint) => (checkpoint, true),
        None => (fresh(architecture, cfg)?, false),
    };
    checkpoint.adam.learning_rate = cfg.learning_rate;
    checkpoint.adam.eps = cfg.adam_eps;
    let mut rng = Rng::new(checkpoint.state.rng_state);

    let plugin_rewards = plugin_rewards::compute(
        episodes,
        plugins,
        &cfg.plugin_reward_weights,
        cfg.max_abs_reward,
    );
    let extraction = extract_with(episodes, cfg, &plugin_rewards.per_episode);
    checkpoint
        .state
        .tools
        .extend(extraction.tools.iter().cloned());
    let space = ActionSpace::new(&checkpoint.state.tools, spec)?;
    let (held_out, training): (Vec<&EpisodeDecisions>, Vec<&EpisodeDecisions>) =
        extraction.episodes.iter().partition(|e| {
            ((stable_hash(cfg.seed, &e.trace_id) >> 11) as f64 / (1u64 << 53) as f64)
                < cfg.holdout_fraction
        });

    let mut behavior = BehaviorSource {
        trace: 0,
        policy_snapshot: 0,
        frozen_earlier: 0,
        snapshot_policy_version: checkpoint.state.promoted_version,
        served_decisions: 0,
    };
    let mut frozen = FrozenBehavior::load(checkpoint_dir)?;
    let snapshot = &checkpoint.promoted;
    let train_data = training_data(
        &training,
        &space,
        spec,
        snapshot,
        &mut frozen,
        &mut behavior,
    )?;
    let held_out_data = training_data(
        &held_out,
        &space,
        spec,
        snapshot,
        &mut frozen,
        &mut behavior,
    )?;
    frozen.save()?;

    let mut runs: Vec<IterationStats> = Vec::new();
    if !train_data.batch.is_empty() {
        progress(TrainProgress::Started {
            training_decisions: train_data.batch.len(),
            logged_probabilities: train_data.logged.iter().filter(|l| **l).count(),
            iterations: cfg.iterations_per_run,
        });
        for iteration in 0..cfg.iterations_per_run {
            let stats = ppo::iterate(
                &checkpoint.learner,
                &mut checkpoint.adam,
                &mut rng,
                &train_data,
                cfg,
                cancelled,
            )
            .with_context(|| {
                format!(
                    "PPO iteration {} of {}: the checkpoint in {} is left as it was",
                    iteration + 1,
                    cfg.iterations_per_run,
                    checkpoint_dir.display()
                )
            })?;
            progress(TrainProgress::Iteration {
                iteration: iteration + 1,
                stats: stats.clone(),
            });
            runs.push(stats);
        }
    }

    let evaluation = if held_out_data.batch.is_empty() {
        None
    } else {
        Some(evaluate(
            &held_out_data,
            &checkpoint.promoted,
            &checkpoint.learner,
            cfg,
            // Its own stream, so evaluation leaves training's untouched.
            &mut Rng::new(cfg.seed ^ BOOTSTRAP_SEED),
        )?)
    };
    let promotion = decide(
        cfg,
        runs.is_empty(),
        held_out.is_empty(),
        evaluation.as_ref(),
        checkpoint.state.promoted_version,
    );
    if promotion.promoted {
        checkpoint.promoted = checkpoint.learner.snapshot()?;
        checkpoint.state.promoted_version += 1;
    }
    let promotion = Promotion {
        policy_version: checkpoint.state.promoted_version,
        ..promotion
    };

    let (actions, policy_entropy) =
        summarize_actions(&train_data, &checkpoint.learner, runs.last())?;
    let state = &mut checkpoint.state;
    state.runs += 1;
    state.iterations += runs.len() as u64;
    state.epochs += runs.iter().map(|r| r.epochs as u64).sum::<u64>();
    state.minibatch_updates += runs.iter().map(|r| r.minibatch_updates as u64).sum::<u64>();
    state.decisions_trained += if runs.is_empty() {
        0
    } else {
        train_data.batch.len() as u64
    };
    state.rng_state = rng.state();
    checkpoint::save(checkpoint_dir, &mut checkpoint)?;

    let last = runs.last().cloned().unwrap_or_default();
    let state = &checkpoint.state;
    let report = TrainReport {
        format_version: 1,
        resumed_from_checkpoint: resumed,
        episodes: EpisodeCounts {
            received: episodes.len(),
            used: extraction.episodes.len(),
            training: training.len(),
            held_out: held_out.len(),
            training_decisions: train_data.batch.len(),
            skipped: extraction
                .skipped
                .iter()
                .map(|(reason, n)| (reason.as_str().to_string(), *n))
                .collect(),
        },
        plugin_rewards: plugin_rewards.stats,
        behavior_probability_source: behavior,
        training: TrainingSummary {
            iterations: runs.len(),
            epochs: runs.iter().map(|r| r.epochs).sum(),
            minibatch_updates: runs.iter().map(|r| r.minibatch_updates).sum(),
            kl_early_stops: runs.iter().filter(|r| r.early_stopped).count(),
            policy_loss: last.policy_loss,
            value_loss: last.value_loss,
            entropy: last.entropy,
            approx_kl: last.approx_kl,
            clip_fraction: last.clip_fraction,
            explained_variance: last.explained_variance,
            updates: runs
                .iter()
                .map(|r| UpdateSummary {
                    epochs: r.epochs,
                    kl: r.kl,
                    approx_kl: r.approx_kl,
                    clip_fraction: r.clip_fraction,
                    early_stopped: r.early_stopped,
                })
                .collect(),
            total_runs: state.runs,
            total_iterations: state.iterations,
            total_epochs: state.epochs,
            total_minibatch_updates: state.minibatch_updates,
        },
        policy_entropy,
        actions,
        off_policy_evaluation: evaluation,
        promotion,
    };
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    checkpoint.promoted.save(&out_dir.join(POLICY_FILE))?;
    report::write(out_dir, &report)?;
    Ok(report)
}

/// A new learner with the initial policy as the promoted version 0.
pub fn fresh(architecture: Architecture, cfg: &RlConfig) -> Result<Checkpoint> {
    let mut rng = Rng::new(cfg.seed);
    let learner = PolicyNet::init(architecture, &mut rng)?;
    let promoted = learner.snapshot()?;
    let adam = Adam::new(&learner, cfg.learning_rate, cfg.adam_eps)?;
    Ok(Checkpoint {
        state: TrainingState::new(architecture, rng.state()),
        learner,
        adam,
        promoted,
    })
}

/// Featurizes episodes and resolves behavior probabilities: the logged one
/// when the trace has it, else the one frozen when the learner first saw the
/// episode, else the `snapshot` policy's, which is then frozen (counted in
/// `behavior`).
pub fn training_data(
    episodes: &[&EpisodeDecisions],
    space: &ActionSpace,
    spec: FeatureSpec,
    snapshot: &PolicyNet,
    frozen: &mut FrozenBehavior,
    behavior: &mut BehaviorSource,
) -> Result<TrainingData> {
    let decisions: Vec<&Decision> = episodes.iter().flat_map(|e| &e.decisions).collect();
    let batch = Batch::new(&decisions, space, spec)?;
    let snapshot_probabilities = chosen_probabilities(snapshot, &batch, space)?;
    let mut behavior_log_probs = Vec::with_capacity(decisions.len());
    let mut logged = Vec::with_capacity(decisions.len());
    let mut row = 0;
    for episode in episodes {
        let n = episode.decisions.len();
        let snapshot_rows = &snapshot_probabilities[row..row + n];
        row += n;
        let needs_snapshot = episode
            .decisions
            .iter()
            .any(|d| d.logged_probability.is_none());
        let earlier = frozen.get(&episode.trace_id, n).map(<[f64]>::to_vec);
        if needs_snapshot && earlier.is_none() {
            frozen.freeze(
                &episode.trace_id,
                behavior.snapshot_policy_version,
                snapshot_rows.to_vec(),
            )?;
        }
        for (idx, decision) in episode.decisions.iter().enumerate() {
            logged.push(decision.logged_probability.is_some());
            behavior.served_decisions += usize::from(decision.served);
            let probability = match (decision.logged_probability, &earlier) {
                (Some(p), _) => {
                    behavior.trace += 1;
                    p
                }
                (None, Some(earlier)) => {
                    behavior.frozen_earlier += 1;
                    earlier[idx]
                }
                (None, None) => {
                    behavior.policy_snapshot += 1;
                    snapshot_rows[idx]
                }
            };
            behavior_log_probs.push(probability.max(MIN_BEHAVIOR_PROBABILITY).ln() as f32);
        }
    }
    let mut ranges = Vec::with_capacity(episodes.len());
    let mut bootstrap_rows = Vec::with_capacity(episodes.len());
    let mut cut_states: Vec<&State> = Vec::new();
    let mut start = 0;
    for episode in episodes {
        ranges.push(start..start + episode.decisions.len());
        start += episode.decisions.len();
        bootstrap_rows.push(match &episode.ending {
            Ending::Terminal => None,
            Ending::Truncated(state) => {
                cut_states.push(state);
                Some(cut_states.len() - 1)
            }
        });
    }
    let bootstrap_states = if cut_states.is_empty() {
        None
    } else {
        Some(states_tensor(cut_states.into_iter(), spec)?)
    };
    Ok(TrainingData {
        rewards: decisions.iter().map(|d| d.reward).collect(),
        space: space.clone(),
        batch,
        behavior_log_probs,
        logged,
        episodes: ranges,
        bootstrap_rows,
        bootstrap_states,
    })
}

/// π(a|s) of each row's chosen action under `net`.
fn chosen_probabilities(net: &PolicyNet, batch: &Batch, space: &ActionSpace) -> Result<Vec<f64>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let log_probs = net.action_log_probs(&batch.states, &space.features, &batch.mask)?;
    Ok(ppo::chosen(&log_probs, &batch.actions)?
        .exp()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// IPS/SNIPS, bootstrap bounds and effective sample size of the current and
/// the candidate policy on the held-out episodes whose every decision has a
/// logged probability (all held-out episodes when
/// `promote_without_logged_propensities` allows guessed ones).
fn evaluate(
    data: &TrainingData,
    current: &PolicyNet,
    candidate: &PolicyNet,
    cfg: &RlConfig,
    rng: &mut Rng,
) -> Result<OffPolicyEvaluation> {
    let usable: Vec<std::ops::Range<usize>> = data
        .episodes
        .iter()
        .filter(|rows| {
            cfg.promote_without_logged_propensities
                || data.logged[(*rows).clone()].iter().all(|l| *l)
        })
        .cloned()
        .collect();
    let logged = |net: &PolicyNet| -> Result<Vec<Vec<LoggedStep>>> {
        let target = chosen_probabilities(net, &data.batch, &data.space)?;
        Ok(usable
            .iter()
            .map(|rows| {
                rows.clone()
                    .map(|row| LoggedStep {
                        target_probability: target[row],
                        behavior_probability: f64::from(data.behavior_log_probs[row]).exp(),
                        reward: data.rewards[row],
                    })
                    .collect()
            })
            .collect())
    };
    let params = BootstrapParams {
        estimator: match cfg.promotion_estimator {
            PromotionEstimator::Ips => Estimator::Ips,
            PromotionEstimator::Snips => Estimator::Snips,
        },
        gamma: cfg.gamma,
        weight_clip: cfg.importance_weight_clip,
        confidence: cfg.promotion_confidence,
        resamples: BOOTSTRAP_RESAMPLES,
    };
    let mut estimate = |net: &PolicyNet| -> Result<(PolicyEstimate, f64)> {
        let steps = logged(net)?;
        let refs: Vec<&[LoggedStep]> = steps.iter().map(Vec::as_slice).collect();
        let e = ope::estimate(&refs, cfg.gamma, cfg.importance_weight_clip);
        let (lower_bound, upper_bound) = ope::bootstrap(&refs, params, rng);
        Ok((
            PolicyEstimate {
                ips: e.ips,
                snips: e.snips,
                effective_sample_size: e.effective_sample_size,
                lower_bound,
                upper_bound,
            },
            ope::logged_value(&refs, cfg.gamma),
        ))
    };
    let (current, logging_policy_value) = estimate(current)?;
    let (candidate, _) = estimate(candidate)?;
    Ok(OffPolicyEvaluation {
        held_out_episodes: data.episodes.len(),
        held_out_decisions: data.batch.len(),
        evaluated_episodes: usable.len(),
        logged_probability_decisions: data.logged.iter().filter(|l| **l).count(),
        importance_weight_clip: cfg.importance_weight_clip,
        confidence: cfg.promotion_confidence,
        logging_policy_value,
        current,
        candidate,
    })
}

/// Whether the trained policy replaces the promoted one, and why: only when
/// every estimate is finite and the candidate's lower confidence bound
/// beats both the current policy's estimate and the logging policy's
/// observed value on enough held-out data with logged probabilities.
fn decide(
    cfg: &RlConfig,
    untrained: bool,
    nothing_held_out: bool,
    evaluation: Option<&OffPolicyEvaluation>,
    version: u64,
) -> Promotion {
    let promotion = |promoted: bool, reason: String| Promotion {
        promoted,
        reason,
        estimator: cfg.promotion_estimator.as_str().to_string(),
        margin: cfg.promotion_margin,
        policy_version: version,
    };
    if untrained {
        return promotion(
            false,
            "no training decisions: the promoted policy is unchanged".into(),
        );
    }
    if cfg.holdout_fraction == 0.0 {
        return promotion(
            true,
            "off-policy evaluation is off (rl.holdout_fraction = 0): promoted unchecked".into(),
        );
    }
    let Some(evaluation) = evaluation.filter(|_| !nothing_held_out) else {
        return promotion(
            false,
            "no held-out episodes to evaluate the candidate on: not promoted".into(),
        );
    };
    if evaluation.evaluated_episodes == 0 {
        return promotion(
            false,
            "no held-out episode carries logged probabilities for all its decisions: \
             off-policy evaluation needs them (set rl.promote_without_logged_propensities \
             to evaluate with guessed ones): not promoted"
                .into(),
        );
    }
    let ess = evaluation.candidate.effective_sample_size;
    if ess < cfg.min_effective_sample_size {
        return promotion(
            false,
            format!(
                "not enough held-out data: effective sample size {ess:.1} < \
                 rl.min_effective_sample_size {}: not promoted",
                cfg.min_effective_sample_size
            ),
        );
    }
    let pick = |e: &PolicyEstimate| match cfg.promotion_estimator {
        PromotionEstimator::Ips => e.ips,
        PromotionEstimator::Snips => e.snips,
    };
    let current = pick(&evaluation.current);
    let logging = evaluation.logging_policy_value;
    let candidate = &evaluation.candidate;
    let level = cfg.promotion_confidence * 100.0;
    let interval = format!(
        "candidate {} {:.4}, {level}% bounds [{:.4}, {:.4}]",
        cfg.promotion_estimator.as_str(),
        pick(candidate),
        candidate.lower_bound,
        candidate.upper_bound
    );
    if ![pick(candidate), candidate.lower_bound, current, logging]
        .iter()
        .all(|v| v.is_finite())
    {
        return promotion(
            false,
            format!(
                "{interval}, current {current:.4}, logging policy {logging:.4}: an estimate is \
                 not finite: not promoted"
            ),
        );
    }
    // The bar: the promoted policy and the policy that logged the data.
    let (bar, bar_name) = if logging > current {
        (logging, "the logging policy's value")
    } else {
        (current, "the current policy's")
    };
    let comparison = format!(
        "current {current:.4}, logging policy {logging:.4}: lower bound {} {bar_name} {bar:.4} + margin {}",
        if candidate.lower_bound > bar + cfg.promotion_margin {
            ">"
        } else {
            "<="
        },
        cfg.promotion_margin
    );
    if candidate.lower_bound > bar + cfg.promotion_margin {
        promotion(true, format!("{interval}; {comparison}"))
    } else {
        promotion(false, format!("{interval}; {comparison}: not promoted"))
    }
}

/// Per-action statistics and the trained policy's mean entropy.
fn summarize_actions(
    data: &TrainingData,
    net: &PolicyNet,
    last: Option<&IterationStats>,
) -> Result<(BTreeMap<String, ActionSummary>, f64)> {
    let n = data.batch.len();
    let columns = data.space.names.len();
    let mut counts = vec![0usize; columns];
    let mut advantage_sums = vec![0.0f64; columns];
    for (row, &column) in data.batch.action_columns.iter().enumerate() {
        counts[column] += 1;
        if let Some(stats) = last {
            advantage_sums[column] += stats.advantages[row];
        }
    }
    let mut mean_probability = vec![0.0f64; columns];
    let mut greedy = vec![0usize; columns];
    let mut entropy = f64::NAN;
    if n > 0 {
        let log_probs =
            net.action_log_probs(&data.batch.states, &data.space.features, &data.batch.mask)?;
        entropy = f64::from(ppo::entropy(&log_probs)?.mean_all()?.to_scalar::<f32>()?);
        for row in log_probs.exp()?.to_vec2::<f32>()? {
            for (column, p) in row.iter().enumerate() {
                mean_probability[column] += f64::from(*p) / n as f64;
            }
            greedy[argmax(&row)] += 1;
        }
    }
    let actions = data
        .space
        .names
        .iter()
        .enumerate()
        .map(|(column, name)| {
            let summary = ActionSummary {
                count: counts[column],
                usage_frequency: counts[column] as f64 / n.max(1) as f64,
                average_advantage: (counts[column] > 0 && last.is_some())
                    .then(|| advantage_sums[column] / counts[column] as f64),
                learned_probability: mean_probability[column],
                greedy_frequency: greedy[column] as f64 / n.max(1) as f64,
            };
            (name.clone(), summary)
        })
        .collect();
    Ok((actions, entropy))
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold(0, |best, (i, v)| if *v > values[best] { i } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimate(snips: f64, lower_bound: f64) -> PolicyEstimate {
        PolicyEstimate {
            ips: snips,
            snips,
            effective_sample_size: 100.0,
            lower_bound,
            upper_bound: snips + 0.1,
        }
    }

    fn evaluation(logging: f64, current: f64, candidate: PolicyEstimate) -> OffPolicyEvaluation {
        OffPolicyEvaluation {
            held_out_episodes: 100,
            held_out_decisions: 200,
            evaluated_episodes: 100,
            logged_probability_decisions: 200,
            importance_weight_clip: 10.0,
            confidence: 0.95,
            logging_policy_value: logging,
            current: estimate(current, current - 0.1),
            candidate,
        }
    }

    #[test]
    fn the_gate_needs_the_logging_policy_beaten_and_finite_estimates() {
        let cfg = RlConfig::default();
        let gate = |e: &OffPolicyEvaluation| decide(&cfg, false, false, Some(e), 0);
        // Beats the (untrained) current policy but not what the agent
        // logged with: issue 23, item 6.
        let worse_than_logging = evaluation(0.6, 0.3, estimate(0.55, 0.5));
        let decision = gate(&worse_than_logging);
        assert!(!decision.promoted, "{decision:?}");
        assert!(decision.reason.contains("logging policy"), "{decision:?}");
        assert!(gate(&evaluation(0.6, 0.3, estimate(0.7, 0.65))).promoted);
        // A NaN anywhere is a failure, never a pass: item 5.
        let nan = evaluation(0.6, 0.3, estimate(f64::NAN, 0.9));
        let decision = gate(&nan);
        assert!(!decision.promoted && decision.reason.contains("not finite"));
        assert!(!gate(&evaluation(f64::NAN, 0.3, estimate(0.9, 0.9))).promoted);
    }
}
