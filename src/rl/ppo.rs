//! The PPO update for logged data. Per iteration: π_old is the policy at its
//! start; [`vtrace`] gives value targets v and advantages A = r + γ v' - V(s)
//! of π_old from the decisions the logging policy μ made; then, per
//! minibatch,
//!
//! ```text
//! L = -mean(w · min(r A, clip(r, 1-ε, 1+ε) A)) + vf_coef · L_V - ent_coef · H
//! r = π_θ(a|s) / π_old(a|s),   w = max(1, min(ρ̄, π_old(a|s) / μ(a|s)))
//! ```
//!
//! The clip is against π_old, not μ, so each iteration may move the policy ε
//! from the last one and a run of iterations far from μ (the old objective,
//! clipped against μ itself, could never leave μ's neighbourhood). The
//! weight w is an importance weight from the data's distribution μ towards
//! π_old, truncated above at ρ̄ (bounded variance, as in V-trace) and below
//! at 1: the gradient on a state's logits is Σ_a max(μ, min(ρ̄μ, π_old)) ·
//! A(s,a) · (e_a - π), a positive weighting of every logged action, so its
//! fixed point is the greedy policy of π_old's advantages on μ's support
//! (a policy-iteration step, as in CRR/AWR). The untruncated-below ratio
//! π_old/μ would make it the on-policy gradient of π_old, which vanishes on
//! good actions π_old has stopped taking and strands the policy there (on
//! the synthetic world of the tests it reached 0.67 of 0.87 instead of
//! 0.78+). The rest follows CleanRL's `ppo.py`: shuffled minibatches over
//! several epochs, per-minibatch advantage normalization, the clipped value
//! loss, an entropy bonus, global gradient-norm clipping, Adam, and the
//! KL early stop (`rl.target_kl`), checked after every minibatch so an
//! iteration never takes a step from outside the trust region. The KL is
//! the exact KL(π_old ‖ π_θ) over all actions of each state: CleanRL's
//! sampled estimator is only right on-policy.

use std::ops::Range;

use anyhow::{Result, bail};
use candle_core::{D, Device, Tensor};

use super::batch::{ActionSpace, Batch};
use super::config::RlConfig;
use super::optimizer::{Adam, clip_coefficient};
use super::policy::PolicyNet;
use super::vtrace::{self, vtrace};
use crate::rng::Rng;

/// Everything PPO needs about the logged decisions.
pub struct TrainingData {
    pub space: ActionSpace,
    pub batch: Batch,
    /// log μ(a|s) of each logged action.
    pub behavior_log_probs: Vec<f32>,
    /// Whether each decision's μ was logged in its trace (else a snapshot's).
    pub logged: Vec<bool>,
    /// Reward of each decision.
    pub rewards: Vec<f64>,
    /// Rows of each episode, in decision order.
    pub episodes: Vec<Range<usize>>,
    /// Per episode: row in `bootstrap_states` when it was truncated.
    pub bootstrap_rows: Vec<Option<usize>>,
    /// States the truncated episodes were cut in, (T, state_dim); `None` when
    /// no episode was truncated.
    pub bootstrap_states: Option<Tensor>,
}

/// What one PPO iteration did, for the report (CleanRL's logged scalars).
#[derive(Debug, Clone, Default)]
pub struct IterationStats {
    /// Epochs completed (fewer than configured after a KL early stop).
    pub epochs: usize,
    pub minibatch_updates: usize,
    pub early_stopped: bool,
    /// Of the last minibatch.
    pub policy_loss: f64,
    pub value_loss: f64,
    pub entropy: f64,
    pub approx_kl: f64,
    /// KL(π_old ‖ π_θ) over all actions, mean over the last minibatch's
    /// states, before its step: what `rl.target_kl` bounds.
    pub kl: f64,
    /// Mean over all minibatches of the fraction of clipped ratios.
    pub clip_fraction: f64,
    /// 1 - Var(returns - values) / Var(returns) before the update.
    pub explained_variance: f64,
    /// Share of decisions whose importance ratio π_old/μ was truncated.
    pub truncated_fraction: f64,
    /// Raw (unnormalized) V-trace advantages per decision.
    pub advantages: Vec<f64>,
}

/// Scalar pieces of the PPO loss of one minibatch.
pub struct Losses {
    /// What gets differentiated.
    pub total: Tensor,
    pub policy_loss: f64,
    pub value_loss: f64,
    pub entropy: f64,
    pub approx_kl: f64,
    pub clip_fraction: f64,
}

/// Inputs of the PPO loss for one minibatch, all shape (M).
pub struct LossInputs<'a> {
    pub new_log_probs: &'a Tensor,
    pub old_log_probs: &'a Tensor,
    /// Already normalized when `norm_adv` is on.
    pub advantages: &'a Tensor,
    pub new_values: &'a Tensor,
    pub old_values: &'a Tensor,
    pub returns: &'a Tensor,
    pub entropy: &'a Tensor,
    /// Importance weights w of the logged actions (see the module docs).
    pub importance_weights: &'a Tensor,
}

/// CleanRL's loss `pg_loss - ent_coef * entropy + vf_coef * v_loss`, with the
/// surrogate importance-weighted: `pg_loss = mean(w max(-A r, -A clip(r,
/// 1-ε, 1+ε)))` and, when `clip_vloss`,
/// `v_loss = 0.5 mean(max((V-R)², (V_old + clip(V-V_old, -ε, ε) - R)²))`.
pub fn ppo_loss(inputs: &LossInputs, cfg: &RlConfig) -> Result<Losses> {
    let clip = cfg.clip_coef;
    let log_ratio = (inputs.new_log_probs - inputs.old_log_probs)?;
    let ratio = log_ratio.exp()?;
    let unclipped = (inputs.advantages.neg()? * &ratio)?;
    let clipped = (inputs.advantages.neg()? * ratio.clamp(1.0 - clip, 1.0 + clip)?)?;
    let policy_loss = (unclipped.maximum(&clipped)? * inputs.importance_weights)?.mean_all()?;

    let value_error = (inputs.new_values - inputs.returns)?.sqr()?;
    let value_loss = if cfg.clip_vloss {
        let delta = (inputs.new_values - inputs.old_values)?.clamp(-clip, clip)?;
        let clipped_error = ((inputs.old_values + delta)? - inputs.returns)?.sqr()?;
        (value_error.maximum(&clipped_error)?.mean_all()? * 0.5)?
    } else {
        (value_error.mean_all()? * 0.5)?
    };
    let entropy = inputs.entropy.mean_all()?;
    let total = ((&policy_loss - (&entropy * cfg.ent_coef)?)? + (&value_loss * cfg.vf_coef)?)?;

    let ratio_values = ratio.to_vec1::<f32>()?;
    let log_ratio_values = log_ratio.to_vec1::<f32>()?;
    let m = ratio_values.len().max(1) as f64;
    let approx_kl = ratio_values
        .iter()
        .zip(&log_ratio_values)
        .map(|(r, lr)| f64::from((r - 1.0) - lr))
        .sum::<f64>()
        / m;
    let clip_fraction = ratio_values
        .iter()
        .filter(|r| (f64::from(**r) - 1.0).abs() > clip)
        .count() as f64
        / m;
    Ok(Losses {
        policy_loss: scalar(&policy_loss)?,
        value_loss: scalar(&value_loss)?,
        entropy: scalar(&entropy)?,
        total,
        approx_kl,
        clip_fraction,
    })
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(f64::from(t.to_scalar::<f32>()?))
}

/// Normalizes advantages to zero mean and unit (sample) standard deviation,
/// as `(A - mean) / (std + 1e-8)`; a single advantage is left as is.
pub fn normalize(advantages: &mut [f64]) {
    let n = advantages.len();
    if n < 2 {
        return;
    }
    let mean = advantages.iter().sum::<f64>() / n as f64;
    let var = advantages.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let std = var.sqrt();
    advantages
        .iter_mut()
        .for_each(|a| *a = (*a - mean) / (std + 1e-8));
}

/// Entropy of each row of log-probabilities (masked entries contribute 0).
pub fn entropy(log_probs: &Tensor) -> Result<Tensor> {
    Ok((log_probs.exp()? * log_probs)?.sum(D::Minus1)?.neg()?)
}

/// Log-probability of each row's chosen column.
pub fn chosen(log_probs: &Tensor, actions: &Tensor) -> Result<Tensor> {
    Ok(log_probs.gather(&actions.unsqueeze(1)?, 1)?.squeeze(1)?)
}

/// One PPO iteration: π_old, values and V-trace targets from the current
/// networks, then `update_epochs` epochs of shuffled minibatch updates,
/// stopped early (as CleanRL's `target_kl`) once the approximate KL to
/// π_old passes `rl.target_kl`. `cancelled` is asked before every
/// minibatch; when it says so the iteration stops with an error (the
/// caller discards the learner). A non-finite loss is an error too, before
/// it reaches the weights.
pub fn iterate(
    net: &PolicyNet,
    adam: &mut Adam,
    rng: &mut Rng,
    data: &TrainingData,
    cfg: &RlConfig,
    cancelled: &dyn Fn() -> bool,
) -> Result<IterationStats> {
    let n = data.batch.len();
    let to_f64 = |t: Tensor| -> Result<Vec<f64>> {
        Ok(t.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
    };
    let values = to_f64(net.values(&data.batch.states)?)?;
    let bootstrap = match &data.bootstrap_states {
        Some(states) => to_f64(net.values(states)?)?,
        None => Vec::new(),
    };
    // π_old over every action of every row, for the exact KL.
    let old_all = net
        .action_log_probs(&data.batch.states, &data.space.features, &data.batch.mask)?
        .detach();
    let old_log_probs = to_f64(chosen(&old_all, &data.batch.actions)?)?;
    let ratios: Vec<f64> = old_log_probs
        .iter()
        .zip(&data.behavior_log_probs)
        .map(|(old, behavior)| (old - f64::from(*behavior)).exp())
        .collect();
    let params = vtrace::Params {
        gamma: cfg.gamma,
        lambda: cfg.gae_lambda,
        rho_clip: cfg.rho_clip,
        trace_clip: cfg.trace_clip,
    };
    let mut advantages = vec![0.0; n];
    let mut returns = vec![0.0; n];
    for (rows, bootstrap_row) in data.episodes.iter().zip(&data.bootstrap_rows) {
        let out = vtrace(
            vtrace::Episode {
                rewards: &data.rewards[rows.clone()],
                values: &values[rows.clone()],
                bootstrap: bootstrap_row.map(|row| bootstrap[row]),
                ratios: &ratios[rows.clone()],
            },
            params,
        );
        advantages[rows.clone()].copy_from_slice(&out.advantages);
        returns[rows.clone()].copy_from_slice(&out.values);
    }
    // The actor's weight of each logged decision: the truncated ratio, but
    // never below 1 (see the module docs).
    let weights: Vec<f64> = ratios
        .iter()
        .map(|r| r.min(cfg.rho_clip).max(1.0))
        .collect();
    let mut stats = IterationStats {
        explained_variance: explained_variance(&values, &returns),
        truncated_fraction: ratios.iter().filter(|r| **r > cfg.rho_clip).count() as f64
            / n.max(1) as f64,
        ..IterationStats::default()
    };

    let minibatch_size = n.div_ceil(cfg.num_minibatches).max(1);
    let mut order: Vec<usize> = (0..n).collect();
    let mut clip_fractions = Vec::new();
    'epochs: for _ in 0..cfg.update_epochs {
        rng.shuffle(&mut order);
        for rows in order.chunks(minibatch_size) {
            if cancelled() {
                bail!("interrupted between PPO minibatches");
            }
            let gather = |source: &[f64]| -> Result<Tensor> {
                let picked: Vec<f32> = rows.iter().map(|&r| source[r] as f32).collect();
                Ok(Tensor::from_vec(picked, rows.len(), &Device::Cpu)?)
            };
            let mut minibatch_advantages: Vec<f64> = rows.iter().map(|&r| advantages[r]).collect();
            if cfg.norm_adv {
                normalize(&mut minibatch_advantages);
            }
            let index = Tensor::from_vec(
                rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                rows.len(),
                &Device::Cpu,
            )?;
            let (states, mask, actions) = data.batch.select(&index)?;
            let log_probs = net.action_log_probs(&states, &data.space.features, &mask)?;
            let losses = ppo_loss(
                &LossInputs {
                    new_log_probs: &chosen(&log_probs, &actions)?,
                    old_log_probs: &gather(&old_log_probs)?,
                    advantages: &Tensor::from_vec(
                        minibatch_advantages.iter().map(|&a| a as f32).collect(),
                        rows.len(),
                        &Device::Cpu,
                    )?,
                    new_values: &net.values(&states)?,
                    old_values: &gather(&values)?,
                    returns: &gather(&returns)?,
                    entropy: &entropy(&log_probs)?,
                    importance_weights: &gather(&weights)?,
                },
                cfg,
            )?;
            // KL(π_old ‖ π_θ) summed over actions, averaged over the
            // minibatch's states: on logged data CleanRL's sampled estimator
            // (`approx_kl`) weighs actions by μ, not π_old, and explodes on
            // actions π_old all but ruled out.
            let old_rows = old_all.index_select(&index, 0)?;
            let kl = f64::from(
                (old_rows.exp()? * (&old_rows - log_probs.detach())?)?
                    .sum(D::Minus1)?
                    .mean_all()?
                    .to_scalar::<f32>()?,
            );
            let total = scalar(&losses.total)?;
            if !total.is_finite() || !kl.is_finite() {
                bail!(
                    "PPO loss became non-finite (loss {total}, KL {kl}) after {} minibatch \
                     updates: this run is discarded and the checkpoint kept",
                    stats.minibatch_updates
                );
            }
            let grads = losses.total.backward()?;
            let (_, scale) = clip_coefficient(net, &grads, cfg.max_grad_norm)?;
            adam.step(net, &grads, scale)?;
            stats.minibatch_updates += 1;
            clip_fractions.push(losses.clip_fraction);
            stats.policy_loss = losses.policy_loss;
            stats.value_loss = losses.value_loss;
            stats.entropy = losses.entropy;
            stats.approx_kl = losses.approx_kl;
            stats.kl = kl;
            // The trust region: no further step once the policy left it.
            if cfg.target_kl.is_some_and(|target| kl > target) {
                stats.early_stopped = true;
                break 'epochs;
            }
        }
        stats.epochs += 1;
    }
    stats.clip_fraction = clip_fractions.iter().sum::<f64>() / clip_fractions.len().max(1) as f64;
    stats.advantages = advantages;
    Ok(stats)
}

fn explained_variance(values: &[f64], returns: &[f64]) -> f64 {
    let variance = |xs: &mut dyn Iterator<Item = f64>| {
        let xs: Vec<f64> = xs.collect();
        let mean = xs.iter().sum::<f64>() / xs.len().max(1) as f64;
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len().max(1) as f64
    };
    let var_returns = variance(&mut returns.iter().copied());
    if var_returns == 0.0 {
        return f64::NAN;
    }
    1.0 - variance(&mut returns.iter().zip(values).map(|(r, v)| r - v)) / var_returns
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    #[test]
    fn clipped_objective_matches_hand_computation() {
        let cfg = RlConfig::default(); // ε = 0.2, ent 0.01, vf 0.5
        // ratios 1.5 (A=+1, clipped to 1.2), 0.5 (A=+1, not clipped: min picks 0.5),
        // 0.5 (A=-1, clipped to 0.8), 1.1 (A=-2, inside the band).
        let ratios = [1.5f32, 0.5, 0.5, 1.1];
        let old = [-1.0f32, -1.0, -2.0, -0.5];
        let new: Vec<f32> = ratios.iter().zip(old).map(|(r, o)| r.ln() + o).collect();
        let advantages = [1.0f32, 1.0, -1.0, -2.0];
        // per-sample max(-A r, -A clip(r)):
        //   max(-1.5, -1.2) = -1.2; max(-0.5, -0.8) = -0.5; max(0.5, 0.8) = 0.8; max(2.2, 2.2) = 2.2
        let want_pg = (-1.2 - 0.5 + 0.8 + 2.2) / 4.0;
        // values: new 1.0 vs old 0.5 (clipped to 0.7), return 0.0 -> max(1.0, 0.49) = 1.0
        //         new 0.0 vs old 0.5 (clipped to 0.3), return 1.0 -> max(1.0, 0.49) = 1.0
        //         new 0.6 vs old 0.5 (inside), return 0.6            -> 0
        //         new 0.0 vs old 1.0 (clipped to 0.8), return 0.0 -> max(0, 0.64) = 0.64
        let want_v = 0.5 * (1.0 + 1.0 + 0.0 + 0.64) / 4.0;
        let entropy = [1.0f32, 0.5, 0.5, 0.0];
        let losses = ppo_loss(
            &LossInputs {
                new_log_probs: &t(&new),
                old_log_probs: &t(&old),
                advantages: &t(&advantages),
                new_values: &t(&[1.0, 0.0, 0.6, 0.0]),
                old_values: &t(&[0.5, 0.5, 0.5, 1.0]),
                returns: &t(&[0.0, 1.0, 0.6, 0.0]),
                entropy: &t(&entropy),
                importance_weights: &t(&[1.0; 4]),
            },
            &cfg,
        )
        .unwrap();
        assert!(
            (losses.policy_loss - want_pg).abs() < 1e-5,
            "{} vs {want_pg}",
            losses.policy_loss
        );
        assert!(
            (losses.value_loss - want_v).abs() < 1e-5,
            "{} vs {want_v}",
            losses.value_loss
        );
        assert!((losses.entropy - 0.5).abs() < 1e-6);
        let total = f64::from(losses.total.to_scalar::<f32>().unwrap());
        assert!((total - (want_pg - 0.01 * 0.5 + 0.5 * want_v)).abs() < 1e-5);
        assert_eq!(losses.clip_fraction, 0.75);
        // approx KL = mean((r - 1) - ln r)
        let want_kl = ratios
            .iter()
            .map(|r| f64::from(*r - 1.0) - f64::from(*r).ln())
            .sum::<f64>()
            / 4.0;
        assert!((losses.approx_kl - want_kl).abs() < 1e-5);

        let unclipped_v = RlConfig {
            clip_vloss: false,
            ..RlConfig::default()
        };
        let losses = ppo_loss(
            &LossInputs {
                new_log_probs: &t(&new),
                old_log_probs: &t(&old),
                advantages: &t(&advantages),
                new_values: &t(&[1.0, 0.0, 0.6, 0.0]),
                old_values: &t(&[0.5, 0.5, 0.5, 1.0]),
                returns: &t(&[0.0, 1.0, 0.6, 0.0]),
                entropy: &t(&entropy),
                importance_weights: &t(&[1.0; 4]),
            },
            &unclipped_v,
        )
        .unwrap();
        assert!((losses.value_loss - 0.5 * 2.0 / 4.0).abs() < 1e-6);
    }

    #[test]
    fn clipped_surrogate_has_no_gradient_outside_the_band() {
        let cfg = RlConfig::default();
        let new = candle_core::Var::new(&[1.5f32.ln(), 1.1f32.ln()], &Device::Cpu).unwrap();
        let zeros = t(&[0.0, 0.0]);
        let losses = ppo_loss(
            &LossInputs {
                new_log_probs: new.as_tensor(),
                old_log_probs: &zeros,
                advantages: &t(&[1.0, 1.0]),
                new_values: &zeros,
                old_values: &zeros,
                returns: &zeros,
                entropy: &zeros,
                importance_weights: &t(&[1.0, 1.0]),
            },
            &cfg,
        )
        .unwrap();
        let grad = losses
            .total
            .backward()
            .unwrap()
            .get(&new)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // d/dlogp of -A r / 2 = -r / 2 inside the band; 0 once clipped.
        assert_eq!(grad[0], 0.0);
        assert!((grad[1] + 1.1 / 2.0).abs() < 1e-5, "{grad:?}");
    }

    #[test]
    fn normalization_and_entropy() {
        let mut a = [1.0, 2.0, 3.0];
        normalize(&mut a);
        assert!((a[0] + 1.0).abs() < 1e-7 && a[1].abs() < 1e-12 && (a[2] - 1.0).abs() < 1e-7);
        let mut single = [5.0];
        normalize(&mut single);
        assert_eq!(single, [5.0]);
        let log_probs = Tensor::new(&[[0.5f32.ln(), 0.5f32.ln(), -1e9]], &Device::Cpu).unwrap();
        let h = entropy(&log_probs).unwrap().to_vec1::<f32>().unwrap();
        assert!((h[0] - std::f32::consts::LN_2).abs() < 1e-6, "{h:?}");
        assert!((explained_variance(&[1.0, 2.0], &[1.0, 2.0]) - 1.0).abs() < 1e-12);
    }
}
