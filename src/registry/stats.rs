//! Statistics that stay valid while someone watches them continuously.
//!
//! A/B tests here are looked at after every ingestion pass, so a fixed-
//! sample test (a t-test read whenever it looks good) would find "winners"
//! far more often than its nominal α. Instead the difference of means is
//! tested with the mixture sequential probability ratio test (mSPRT) of
//! Johari, Pekelis and Walsh ("Always Valid Inference", 2017), in its normal
//! approximation: with θ̂ the observed difference, V its variance estimate
//! and τ the mixture's standard deviation,
//!
//! ```text
//! Λ = sqrt(V / (V + τ²)) · exp(θ̂² τ² / (2 V (V + τ²)))
//! ```
//!
//! and H0 (no difference) is rejected the first time Λ ≥ 1/α. The matching
//! always-valid confidence sequence for θ is
//! `θ̂ ± sqrt(V (V + τ²) / τ² · (2 ln(1/α) + ln((V + τ²) / V)))`.
//! Both hold at every sample size at once, so stopping whenever they decide
//! keeps the false-positive rate at most α.

/// Count, mean and variance of a stream (Welford's algorithm).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub n: u64,
    pub mean: f64,
    m2: f64,
}

impl Summary {
    /// Adds one observation.
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// The summary of `values`.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Summary {
        let mut summary = Summary::default();
        for x in values {
            summary.add(x);
        }
        summary
    }

    /// Sample variance (0 below two observations).
    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            self.m2 / (self.n - 1) as f64
        }
    }

    /// A 95 % normal confidence interval of the mean (fixed-sample: for
    /// display, not for decisions).
    pub fn interval95(&self) -> (f64, f64) {
        let half = 1.96 * (self.variance() / self.n.max(1) as f64).sqrt();
        (self.mean - half, self.mean + half)
    }
}

/// The outcome of comparing treatment with control.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// Treatment mean minus control mean.
    pub difference: f64,
    /// Always-valid confidence sequence of the difference at level 1 − α.
    pub low: f64,
    pub high: f64,
    /// Always-valid p-value at this look (1 / Λ, capped at 1).
    pub p_value: f64,
    /// Whether H0 (no difference) is rejected at level α.
    pub significant: bool,
}

/// Compares two arms with the mSPRT at level `alpha`, mixture standard
/// deviation `tau`. Variances are floored at `1e-6` so a constant arm does
/// not make V zero.
pub fn compare(treatment: &Summary, control: &Summary, alpha: f64, tau: f64) -> Comparison {
    let (n_t, n_c) = (treatment.n.max(1) as f64, control.n.max(1) as f64);
    let v = treatment.variance().max(1e-6) / n_t + control.variance().max(1e-6) / n_c;
    let tau2 = tau * tau;
    let difference = treatment.mean - control.mean;
    let log_lambda =
        0.5 * (v / (v + tau2)).ln() + difference * difference * tau2 / (2.0 * v * (v + tau2));
    let half = (v * (v + tau2) / tau2 * (2.0 * (1.0 / alpha).ln() + ((v + tau2) / v).ln())).sqrt();
    Comparison {
        difference,
        low: difference - half,
        high: difference + half,
        p_value: (-log_lambda).exp().min(1.0),
        significant: log_lambda >= (1.0 / alpha).ln(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn bernoulli(rng: &mut Rng, p: f64) -> f64 {
        f64::from(u8::from(rng.next_f64() < p))
    }

    /// Runs `experiments` A/B tests with success rates `p_control` and
    /// `p_treatment`, looking after every `look_every` observations per arm
    /// up to `max_n`, stopping at the first significant look. Returns the
    /// share that stopped significant.
    fn rejection_rate(experiments: usize, p_control: f64, p_treatment: f64, max_n: u64) -> f64 {
        let (alpha, tau, look_every, min_n) = (0.05, 0.1, 10, 30);
        let mut rng = Rng::new(17);
        let mut rejected = 0;
        for _ in 0..experiments {
            let (mut control, mut treatment) = (Summary::default(), Summary::default());
            while control.n < max_n {
                for _ in 0..look_every {
                    control.add(bernoulli(&mut rng, p_control));
                    treatment.add(bernoulli(&mut rng, p_treatment));
                }
                if control.n >= min_n && compare(&treatment, &control, alpha, tau).significant {
                    rejected += 1;
                    break;
                }
            }
        }
        rejected as f64 / experiments as f64
    }

    #[test]
    fn a_a_tests_watched_continuously_keep_the_false_positive_rate_below_alpha() {
        // 400 experiments, each looked at 200 times: a fixed-sample test read
        // this way rejects in far more than 5 % of them.
        let rate = rejection_rate(400, 0.5, 0.5, 2000);
        // α = 0.05; the binomial sd over 400 runs is about 0.011.
        assert!(rate <= 0.05 + 0.02, "false-positive rate {rate}");
    }

    #[test]
    fn a_known_effect_is_detected_with_the_expected_power() {
        // 0.5 -> 0.6 with up to 2000 per arm: a fixed test at that size has
        // power ~1; the always-valid one pays for peeking but still finds it.
        let power = rejection_rate(200, 0.5, 0.6, 2000);
        assert!(power >= 0.9, "power {power}");
        // A smaller effect is found less often at the same size: the test
        // is not rejecting everything.
        let weak = rejection_rate(200, 0.5, 0.52, 500);
        assert!(weak < 0.5, "power on a 2-point effect at 500/arm {weak}");
    }

    #[test]
    fn the_confidence_sequence_covers_the_difference_and_narrows() {
        let mut rng = Rng::new(3);
        let (mut control, mut treatment) = (Summary::default(), Summary::default());
        let mut widths = Vec::new();
        for n in 1..=5000 {
            control.add(bernoulli(&mut rng, 0.3));
            treatment.add(bernoulli(&mut rng, 0.4));
            if n % 1000 == 0 {
                let c = compare(&treatment, &control, 0.05, 0.1);
                assert!(c.low <= 0.1 && 0.1 <= c.high, "{c:?}");
                widths.push(c.high - c.low);
            }
        }
        assert!(widths.windows(2).all(|w| w[1] < w[0]), "{widths:?}");
    }

    #[test]
    fn summary_matches_the_textbook_formulas() {
        let s = Summary::of([1.0, 2.0, 3.0, 4.0]);
        assert_eq!((s.n, s.mean), (4, 2.5));
        assert!((s.variance() - 5.0 / 3.0).abs() < 1e-12);
    }
}
