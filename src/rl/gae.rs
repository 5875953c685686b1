//! Generalized Advantage Estimation (Schulman et al. 2016) for one episode.
//!
//! Kept apart from the network so the recursion, and above all the
//! difference between an episode that ended (no value after the last step)
//! and one that was cut off (bootstrap from the value of the state it was cut
//! in), is tested against hand-computed numbers.

/// Advantages and value targets of one episode's decisions.
#[derive(Debug, Clone, PartialEq)]
pub struct Advantages {
    pub advantages: Vec<f64>,
    /// `advantage + value`: the critic's regression target.
    pub returns: Vec<f64>,
}

/// GAE(γ, λ) over one episode.
///
/// `values[t]` is V(s_t); `bootstrap` is `None` for a terminal episode and
/// `Some(V(s_T))` for one truncated after its last decision.
pub fn gae(
    rewards: &[f64],
    values: &[f64],
    bootstrap: Option<f64>,
    gamma: f64,
    lambda: f64,
) -> Advantages {
    assert_eq!(rewards.len(), values.len(), "one value per reward");
    let n = rewards.len();
    let mut advantages = vec![0.0; n];
    let mut next_value = bootstrap.unwrap_or(0.0);
    let mut next_advantage = 0.0;
    for t in (0..n).rev() {
        let delta = rewards[t] + gamma * next_value - values[t];
        next_advantage = delta + gamma * lambda * next_advantage;
        advantages[t] = next_advantage;
        next_value = values[t];
    }
    let returns = advantages.iter().zip(values).map(|(a, v)| a + v).collect();
    Advantages {
        advantages,
        returns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn single_step_terminal() {
        let out = gae(&[1.0], &[0.4], None, 0.99, 0.95);
        assert_close(&out.advantages, &[0.6]);
        assert_close(&out.returns, &[1.0]);
    }

    #[test]
    fn single_step_truncated_bootstraps() {
        // δ = 0 + 0.99 * 1.0 - 0.5
        let out = gae(&[0.0], &[0.5], Some(1.0), 0.99, 0.95);
        assert_close(&out.advantages, &[0.49]);
        assert_close(&out.returns, &[0.99]);
    }

    #[test]
    fn multi_step_terminal() {
        // γ = 0.9, λ = 0.8, γλ = 0.72
        // δ2 = 1 - 0.7 = 0.3                 A2 = 0.3
        // δ1 = 0.9 * 0.7 - 0.6 = 0.03         A1 = 0.03 + 0.72 * 0.3 = 0.246
        // δ0 = 0.9 * 0.6 - 0.5 = 0.04         A0 = 0.04 + 0.72 * 0.246 = 0.21712
        let out = gae(&[0.0, 0.0, 1.0], &[0.5, 0.6, 0.7], None, 0.9, 0.8);
        assert_close(&out.advantages, &[0.21712, 0.246, 0.3]);
        assert_close(&out.returns, &[0.71712, 0.846, 1.0]);
    }

    #[test]
    fn multi_step_truncated() {
        // δ1 = 0 + 0.9 * 0.5 - 0.3 = 0.15     A1 = 0.15
        // δ0 = 1 + 0.9 * 0.3 - 0.2 = 1.07     A0 = 1.07 + 0.72 * 0.15 = 1.178
        let out = gae(&[1.0, 0.0], &[0.2, 0.3], Some(0.5), 0.9, 0.8);
        assert_close(&out.advantages, &[1.178, 0.15]);
        // The same episode treated as terminal loses the bootstrap.
        let terminal = gae(&[1.0, 0.0], &[0.2, 0.3], None, 0.9, 0.8);
        assert_close(&terminal.advantages, &[1.07 - 0.72 * 0.3, -0.3]);
    }

    #[test]
    fn lambda_one_is_monte_carlo_and_zero_is_td() {
        let mc = gae(&[1.0, 2.0], &[0.5, 0.5], None, 0.5, 1.0);
        assert_close(&mc.returns, &[2.0, 2.0]);
        let td = gae(&[1.0, 2.0], &[0.5, 0.5], None, 0.5, 0.0);
        assert_close(&td.advantages, &[1.0 + 0.25 - 0.5, 1.5]);
    }
}
