//! Which candidates survive a generation.
//!
//! Top-k by mean score, ties going to the shorter prompt. Optionally (as GEPA
//! does) every candidate on the Pareto frontier over per-example scores also
//! survives: one that is best on some example keeps its idea alive even when
//! its mean is not in the top k. Prompt length is an extra objective of the
//! frontier, so a shorter prompt scoring the same is not dominated.

use std::collections::BTreeMap;

/// A fully evaluated candidate, as selection sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Contender<'a> {
    pub mean: f64,
    /// Score per example id.
    pub scores: &'a BTreeMap<String, f64>,
    /// Prompt length in characters.
    pub chars: usize,
}

/// Indices of survivors, best first.
pub fn select(contenders: &[Contender<'_>], top_k: usize, pareto: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..contenders.len()).collect();
    order.sort_by(|a, b| {
        let (ca, cb) = (&contenders[*a], &contenders[*b]);
        cb.mean
            .partial_cmp(&ca.mean)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(ca.chars.cmp(&cb.chars))
            .then(a.cmp(b))
    });
    let mut chosen: Vec<usize> = order.iter().copied().take(top_k).collect();
    if pareto {
        for idx in order.iter().skip(top_k) {
            let dominated = contenders
                .iter()
                .enumerate()
                .any(|(other, c)| other != *idx && dominates(c, &contenders[*idx]));
            if !dominated {
                chosen.push(*idx);
            }
        }
    }
    chosen
}

/// `a` is at least as good as `b` everywhere (examples both were scored on,
/// and length) and strictly better somewhere.
fn dominates(a: &Contender<'_>, b: &Contender<'_>) -> bool {
    let mut strictly = a.chars < b.chars;
    if a.chars > b.chars {
        return false;
    }
    let mut shared = 0;
    for (example, score_b) in b.scores {
        let Some(score_a) = a.scores.get(example) else {
            continue;
        };
        shared += 1;
        if score_a < score_b {
            return false;
        }
        if score_a > score_b {
            strictly = true;
        }
    }
    shared > 0 && strictly
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(values: &[f64]) -> BTreeMap<String, f64> {
        values
            .iter()
            .enumerate()
            .map(|(idx, value)| (format!("e{idx}"), *value))
            .collect()
    }

    #[test]
    fn top_k_by_mean_then_shorter() {
        let (a, b, c) = (scores(&[1.0]), scores(&[1.0]), scores(&[0.5]));
        let contenders = [
            Contender {
                mean: 1.0,
                scores: &a,
                chars: 50,
            },
            Contender {
                mean: 1.0,
                scores: &b,
                chars: 20,
            },
            Contender {
                mean: 0.5,
                scores: &c,
                chars: 10,
            },
        ];
        assert_eq!(select(&contenders, 2, false), [1, 0]);
    }

    #[test]
    fn pareto_keeps_a_specialist() {
        let strong = scores(&[0.9, 0.9, 0.0]);
        let also = scores(&[0.8, 0.8, 0.0]);
        let specialist = scores(&[0.0, 0.0, 1.0]);
        let dominated = scores(&[0.1, 0.1, 0.0]);
        let contenders = [
            Contender {
                mean: 0.6,
                scores: &strong,
                chars: 10,
            },
            Contender {
                mean: 0.53,
                scores: &also,
                chars: 10,
            },
            Contender {
                mean: 0.33,
                scores: &specialist,
                chars: 10,
            },
            Contender {
                mean: 0.07,
                scores: &dominated,
                chars: 10,
            },
        ];
        assert_eq!(select(&contenders, 1, false), [0]);
        assert_eq!(select(&contenders, 1, true), [0, 2]);
    }
}
