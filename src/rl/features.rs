//! Fixed-size numeric features for states and actions.
//!
//! Everything is hashed (the "hashing trick") so the network's input size
//! never depends on the vocabulary: a new word in a task, or a tool the agent
//! gains tomorrow, maps to existing inputs instead of breaking the model. The
//! hash is FNV-1a, spelled out here, because a checkpoint trained today must
//! see the same features after a compiler upgrade (std's hasher promises no
//! stability).

use crate::rng::mix64;

/// Step indices at or beyond this share the last one-hot bucket.
pub const STEP_BUCKETS: usize = 8;

/// Outcome slots of the previous tool: none, ok, error.
const OUTCOME_SLOTS: usize = 3;

/// The decision context a policy scores actions in.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// The task text (the episode's input).
    pub input: String,
    /// The tool chosen at the previous decision, if it was a tool.
    pub previous_tool: Option<String>,
    /// Whether that previous tool call failed.
    pub previous_tool_error: bool,
    /// How many decisions came before this one in the episode.
    pub step_index: usize,
}

/// Sizes of the hashed feature blocks; part of a checkpoint's architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureSpec {
    pub text_hash_dim: usize,
    pub action_hash_dim: usize,
}

impl FeatureSpec {
    /// Length of a state feature vector: text, previous tool, its outcome,
    /// step index.
    pub fn state_dim(&self) -> usize {
        self.text_hash_dim + self.action_hash_dim + OUTCOME_SLOTS + STEP_BUCKETS
    }

    /// Length of an action feature vector: hashed name plus a "no tool" flag.
    pub fn action_dim(&self) -> usize {
        self.action_hash_dim + 1
    }

    /// Appends the features of `state` to `out` (`state_dim` values).
    pub fn push_state(&self, state: &State, out: &mut Vec<f32>) {
        let start = out.len();
        out.resize(start + self.state_dim(), 0.0);
        let block = &mut out[start..];
        let (text, rest) = block.split_at_mut(self.text_hash_dim);
        let (previous_tool, rest) = rest.split_at_mut(self.action_hash_dim);
        let (outcome, step) = rest.split_at_mut(OUTCOME_SLOTS);

        let words = words(&state.input);
        for word in &words {
            add_hashed(text, stable_hash(0x7465_7874, word));
        }
        for pair in words.windows(2) {
            let bigram = format!("{} {}", pair[0], pair[1]);
            add_hashed(text, stable_hash(0x6269_6772, &bigram));
        }
        // What a word means for the next decision depends on what was just
        // done ("French" after a search means translate it): each word is
        // also crossed with the previous tool and its outcome.
        if let Some(name) = &state.previous_tool {
            let outcome = if state.previous_tool_error {
                "err"
            } else {
                "ok"
            };
            for word in &words {
                let crossed = format!("{name}/{outcome}/{word}");
                add_hashed(text, stable_hash(0x6372_6f73, &crossed));
            }
        }
        let norm = text.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            text.iter_mut().for_each(|x| *x /= norm);
        }

        match &state.previous_tool {
            None => outcome[0] = 1.0,
            Some(name) => {
                hash_name(previous_tool, name);
                outcome[if state.previous_tool_error { 2 } else { 1 }] = 1.0;
            }
        }
        step[state.step_index.min(STEP_BUCKETS - 1)] = 1.0;
    }

    /// Appends the features of action `name` to `out` (`action_dim` values).
    pub fn push_action(&self, name: &str, is_no_tool: bool, out: &mut Vec<f32>) {
        let start = out.len();
        out.resize(start + self.action_dim(), 0.0);
        let block = &mut out[start..];
        hash_name(&mut block[..self.action_hash_dim], name);
        block[self.action_hash_dim] = if is_no_tool { 1.0 } else { 0.0 };
    }
}

/// Lowercased alphanumeric words; numbers all become one `<num>` token, since
/// that a task has numbers says more about the tool it needs than which.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            if w.chars().all(|c| c.is_ascii_digit()) {
                "<num>".to_string()
            } else {
                w.to_lowercase()
            }
        })
        .collect()
}

/// A name lands on two hashed slots so that two names rarely share both.
fn hash_name(block: &mut [f32], name: &str) {
    let weight = std::f32::consts::FRAC_1_SQRT_2;
    for seed in [0x6e61_6d65_u64, 0x6e61_6d66] {
        let hash = stable_hash(seed, name);
        let slot = (hash % block.len() as u64) as usize;
        block[slot] += weight;
    }
}

/// Signed feature hashing: the sign bit removes collision bias in expectation.
fn add_hashed(block: &mut [f32], hash: u64) {
    let slot = ((hash >> 1) % block.len() as u64) as usize;
    block[slot] += if hash & 1 == 0 { 1.0 } else { -1.0 };
}

/// FNV-1a over the bytes, finalized with a seed-dependent mixer; stable
/// across platforms and compiler versions.
pub fn stable_hash(seed: u64, text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(hash ^ seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: FeatureSpec = FeatureSpec {
        text_hash_dim: 32,
        action_hash_dim: 16,
    };

    fn state(input: &str, previous_tool: Option<&str>, error: bool, step_index: usize) -> Vec<f32> {
        let mut out = Vec::new();
        let state = State {
            input: input.to_string(),
            previous_tool: previous_tool.map(str::to_string),
            previous_tool_error: error,
            step_index,
        };
        SPEC.push_state(&state, &mut out);
        out
    }

    #[test]
    fn state_layout_and_stability() {
        let features = state("What is the Weather in Paris?", Some("search"), true, 11);
        assert_eq!(features.len(), SPEC.state_dim());
        let text_norm: f32 = features[..32].iter().map(|x| x * x).sum();
        assert!((text_norm - 1.0).abs() < 1e-5);
        // Case and punctuation do not matter; word order does (bigrams).
        assert_eq!(
            features[..32],
            state("what is the weather in paris", Some("search"), true, 0)[..32]
        );
        assert_ne!(
            features[..32],
            state("paris in weather the is what", Some("search"), true, 0)[..32]
        );
        // Words are crossed with the previous tool and its outcome.
        let plain = state("what is the weather in paris", None, false, 0);
        assert_ne!(features[..32], plain[..32]);
        assert_ne!(
            features[..32],
            state("what is the weather in paris", Some("search"), false, 0)[..32]
        );
        assert_eq!(
            state("add 12 and 7", None, false, 0),
            state("add 940 and 31", None, false, 0)
        );
        let outcome = &features[48..51];
        assert_eq!(outcome, [0.0, 0.0, 1.0]);
        assert_eq!(features[51 + STEP_BUCKETS - 1], 1.0);
        assert_eq!(state("", None, false, 0)[48..51], [1.0, 0.0, 0.0]);
        assert!(state("", None, false, 0)[..32].iter().all(|x| *x == 0.0));
    }

    #[test]
    fn actions_differ_and_flag_no_tool() {
        let mut a = Vec::new();
        SPEC.push_action("get_weather", false, &mut a);
        let mut b = Vec::new();
        SPEC.push_action("calculator", false, &mut b);
        assert_eq!(a.len(), SPEC.action_dim());
        assert_ne!(a, b);
        let mut c = Vec::new();
        SPEC.push_action("<no_tool>", true, &mut c);
        assert_eq!(c[16], 1.0);
        // Pinned values: the hash must never change under a checkpoint.
        assert_eq!(stable_hash(0, "get_weather"), stable_hash(0, "get_weather"));
        assert_eq!(stable_hash(1, "abc"), mix64(0xe71fa2190541574b ^ 1));
    }
}
