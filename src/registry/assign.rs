//! Sticky, deterministic traffic assignment.
//!
//! A request key (a user or session id) and the test id hash to a point in
//! [0, 1); the key gets the treatment when that point is below the
//! treatment's share. The same key in the same test always lands on the same
//! side, and as a rollout raises the share, keys already on the treatment
//! stay there: only keys from the control move over.

use sha2::{Digest, Sha256};

/// The point in [0, 1) of `key` in test `test_id`.
pub fn bucket(test_id: i64, key: &str) -> f64 {
    let mut hasher = Sha256::new();
    hasher.update(test_id.to_le_bytes());
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 bits: exactly representable in an f64.
    (u64::from_le_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether `key` gets the treatment at share `split`.
pub fn is_treatment(test_id: i64, key: &str, split: f64) -> bool {
    bucket(test_id, key) < split
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pearson's χ² of treatment/control counts against the split.
    fn chi_square(n: u64, treated: u64, split: f64) -> f64 {
        let expected_t = n as f64 * split;
        let expected_c = n as f64 - expected_t;
        let control = (n - treated) as f64;
        (treated as f64 - expected_t).powi(2) / expected_t
            + (control - expected_c).powi(2) / expected_c
    }

    #[test]
    fn split_is_accurate_over_100k_keys_and_sticky() {
        for (test_id, split) in [(1, 0.1), (2, 0.25), (3, 0.5), (4, 0.9)] {
            let n = 100_000u64;
            let treated = (0..n)
                .filter(|i| is_treatment(test_id, &format!("user-{i}"), split))
                .count() as u64;
            // χ² with 1 degree of freedom: 10.83 is the 0.1 % critical value.
            let chi2 = chi_square(n, treated, split);
            assert!(chi2 < 10.83, "split {split}: {treated} of {n}, chi2 {chi2}");
        }
        for i in 0..1000 {
            let key = format!("session-{i}");
            assert_eq!(is_treatment(9, &key, 0.3), is_treatment(9, &key, 0.3));
        }
    }

    #[test]
    fn raising_the_share_only_moves_keys_from_control_to_treatment() {
        for i in 0..10_000 {
            let key = format!("k{i}");
            if is_treatment(5, &key, 0.1) {
                assert!(is_treatment(5, &key, 0.25) && is_treatment(5, &key, 1.0));
            }
        }
        // Tests are independent: another test splits the same keys anew.
        let same = (0..10_000)
            .filter(|i| {
                let key = format!("k{i}");
                is_treatment(5, &key, 0.5) == is_treatment(6, &key, 0.5)
            })
            .count();
        assert!((4500..5500).contains(&same), "{same}");
    }
}
