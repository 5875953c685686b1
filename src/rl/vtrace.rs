//! V-trace targets (Espeholt et al. 2018, IMPALA) for one logged episode.
//!
//! The decisions were made by the logging policy μ, the learner improves π.
//! With truncated importance ratios ρ̄_t = min(ρ̄, π(a_t|s_t)/μ(a_t|s_t)) and
//! trace coefficients c_t = λ min(c̄, π/μ), the value target is
//!
//! ```text
//! v_t - V(s_t) = ρ̄_t δ_t + γ c_t (v_{t+1} - V(s_{t+1})),   δ_t = r_t + γ V(s_{t+1}) - V(s_t)
//! ```
//!
//! and the policy-gradient advantage is `r_t + γ v_{t+1} - V(s_t)` (weighted
//! by ρ̄_t in the loss). On-policy (all ratios 1, clips at least 1) the
//! targets are GAE(γ, λ)'s λ-returns. Kept apart from the network so the
//! recursion, and the difference between an episode that ended (no value
//! after the last decision) and one cut off (bootstrap from the value of the
//! state it was cut in), is tested against hand-computed numbers.

/// Per-episode inputs of [`vtrace`].
#[derive(Debug, Clone, Copy)]
pub struct Episode<'a> {
    pub rewards: &'a [f64],
    /// V(s_t) of each decision.
    pub values: &'a [f64],
    /// `None` for an episode that ended, `Some(V(s_T))` for one truncated
    /// after its last decision.
    pub bootstrap: Option<f64>,
    /// π(a_t|s_t) / μ(a_t|s_t), untruncated.
    pub ratios: &'a [f64],
}

/// Discounting and truncation parameters.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub gamma: f64,
    pub lambda: f64,
    /// ρ̄: truncation of the importance ratio of the TD error.
    pub rho_clip: f64,
    /// c̄: truncation of the trace coefficients.
    pub trace_clip: f64,
}

/// Advantages and value targets of one episode's decisions.
#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    /// `r_t + γ v_{t+1} - V(s_t)`.
    pub advantages: Vec<f64>,
    /// `v_t`: the critic's regression target.
    pub values: Vec<f64>,
}

/// V-trace over one episode.
pub fn vtrace(episode: Episode, params: Params) -> Targets {
    let n = episode.rewards.len();
    assert!(
        episode.values.len() == n && episode.ratios.len() == n,
        "one value and ratio per reward"
    );
    let Params {
        gamma,
        lambda,
        rho_clip,
        trace_clip,
    } = params;
    let mut advantages = vec![0.0; n];
    let mut values = vec![0.0; n];
    let mut next_value = episode.bootstrap.unwrap_or(0.0);
    let mut next_target = next_value;
    let mut next_correction = 0.0;
    for t in (0..n).rev() {
        let ratio = episode.ratios[t];
        let delta = episode.rewards[t] + gamma * next_value - episode.values[t];
        let correction =
            rho_clip.min(ratio) * delta + gamma * lambda * trace_clip.min(ratio) * next_correction;
        advantages[t] = episode.rewards[t] + gamma * next_target - episode.values[t];
        values[t] = episode.values[t] + correction;
        next_value = episode.values[t];
        next_target = values[t];
        next_correction = correction;
    }
    Targets { advantages, values }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
        }
    }

    const ON_POLICY: [f64; 3] = [1.0, 1.0, 1.0];

    #[test]
    fn on_policy_targets_are_lambda_returns() {
        let (gamma, lambda) = (0.9, 0.5);
        let rewards = [0.0, 1.0, 2.0];
        let values = [0.5, 0.25, 1.0];
        let params = Params {
            gamma,
            lambda,
            rho_clip: 1.0,
            trace_clip: 1.0,
        };
        let out = vtrace(
            Episode {
                rewards: &rewards,
                values: &values,
                bootstrap: None,
                ratios: &ON_POLICY,
            },
            params,
        );
        // GAE by hand: deltas, then A_t = δ_t + γλ A_{t+1}, target = A + V.
        let d2 = 2.0 - 1.0;
        let d1 = 1.0 + 0.9 * 1.0 - 0.25;
        let d0 = 0.0 + 0.9 * 0.25 - 0.5;
        let a2 = d2;
        let a1 = d1 + 0.45 * a2;
        let a0 = d0 + 0.45 * a1;
        assert_close(&out.values, &[a0 + 0.5, a1 + 0.25, a2 + 1.0]);
        // Policy advantage: r_t + γ v_{t+1} - V(s_t).
        assert_close(
            &out.advantages,
            &[
                0.9 * (a1 + 0.25) - 0.5,
                1.0 + 0.9 * (a2 + 1.0) - 0.25,
                2.0 - 1.0,
            ],
        );

        // Cut off after the last decision: bootstrap from V(s_T) = 4.
        let out = vtrace(
            Episode {
                rewards: &rewards[2..],
                values: &values[2..],
                bootstrap: Some(4.0),
                ratios: &ON_POLICY[..1],
            },
            params,
        );
        assert_close(&out.values, &[2.0 + 0.9 * 4.0]);
        assert_close(&out.advantages, &[2.0 + 0.9 * 4.0 - 1.0]);
    }

    #[test]
    fn truncated_ratios_cut_the_trace_and_scale_the_error() {
        // ratios 3 (truncated to 1) and 0.5; λ = 1, γ = 1.
        let params = Params {
            gamma: 1.0,
            lambda: 1.0,
            rho_clip: 1.0,
            trace_clip: 1.0,
        };
        let out = vtrace(
            Episode {
                rewards: &[0.0, 1.0],
                values: &[0.2, 0.6],
                bootstrap: None,
                ratios: &[3.0, 0.5],
            },
            params,
        );
        // t=1: δ = 1 - 0.6 = 0.4, correction = 0.5 * 0.4 = 0.2, v1 = 0.8.
        // t=0: δ = 0 + 0.6 - 0.2 = 0.4, correction = 1 * 0.4 + 1 * 1 * 0.2 = 0.6, v0 = 0.8.
        assert_close(&out.values, &[0.8, 0.8]);
        // advantages: 0 + v1 - 0.2 = 0.6; 1 + 0 - 0.6 = 0.4.
        assert_close(&out.advantages, &[0.6, 0.4]);
        // An action π never takes (ratio 0) leaves the target at V.
        let out = vtrace(
            Episode {
                rewards: &[5.0],
                values: &[0.3],
                bootstrap: None,
                ratios: &[0.0],
            },
            params,
        );
        assert_close(&out.values, &[0.3]);
    }
}
