//! Behavior probabilities frozen when the learner first sees an episode.
//!
//! PPO's ratio needs the probability with which the logged tool was chosen.
//! When the trace does not record it, the brief asks for the probability
//! under the policy snapshot current when the episode was ingested. Every
//! training run trains on all stored episodes and only training runs promote
//! policies, so the first run after an episode arrives scores it with exactly
//! that snapshot. Those probabilities are frozen here, so later runs (after
//! later promotions) do not rescore old episodes with a newer policy.
//!
//! Stored as `behavior.jsonl` in the checkpoint directory, one line per
//! episode: `{"trace_id": .., "policy_version": N, "probabilities": [..]}`;
//! new lines are appended after each run.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// File name in the checkpoint directory.
pub const BEHAVIOR_FILE: &str = "behavior.jsonl";

#[derive(Serialize, Deserialize)]
struct Line {
    trace_id: String,
    policy_version: u64,
    probabilities: Vec<f64>,
}

/// Frozen per-decision behavior probabilities, by trace id.
#[derive(Debug, Default)]
pub struct FrozenBehavior {
    path: Option<PathBuf>,
    by_trace: HashMap<String, Vec<f64>>,
    unsaved: Vec<String>,
}

impl FrozenBehavior {
    /// Reads the frozen probabilities of `checkpoint_dir` (none yet is fine;
    /// a damaged line is an error naming it, never a silent rescoring).
    pub fn load(checkpoint_dir: &Path) -> Result<FrozenBehavior> {
        let path = checkpoint_dir.join(BEHAVIOR_FILE);
        let mut frozen = FrozenBehavior {
            path: Some(path.clone()),
            ..FrozenBehavior::default()
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(frozen),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        for (idx, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let parsed: Line = serde_json::from_str(line).with_context(|| {
                format!(
                    "{}:{}: damaged frozen behavior probabilities",
                    path.display(),
                    idx + 1
                )
            })?;
            if parsed
                .probabilities
                .iter()
                .any(|p| !(*p > 0.0 && *p <= 1.0))
            {
                bail!("{}:{}: probability outside (0, 1]", path.display(), idx + 1);
            }
            frozen
                .by_trace
                .insert(parsed.trace_id, parsed.probabilities);
        }
        Ok(frozen)
    }

    /// The frozen probabilities of an episode's `n_decisions` decisions.
    pub fn get(&self, trace_id: &str, n_decisions: usize) -> Option<&[f64]> {
        self.by_trace
            .get(trace_id)
            .map(Vec::as_slice)
            .filter(|p| p.len() == n_decisions)
    }

    /// Freezes an episode's probabilities under policy `policy_version`.
    pub fn freeze(
        &mut self,
        trace_id: &str,
        policy_version: u64,
        probabilities: Vec<f64>,
    ) -> Result<()> {
        let line = Line {
            trace_id: trace_id.to_string(),
            policy_version,
            probabilities,
        };
        self.unsaved.push(serde_json::to_string(&line)?);
        self.by_trace.insert(line.trace_id, line.probabilities);
        Ok(())
    }

    /// Appends what was frozen since loading (nothing for an in-memory set).
    pub fn save(&mut self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if self.unsaved.is_empty() {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut text = self.unsaved.join("\n");
        text.push('\n');
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
        self.unsaved.clear();
        Ok(())
    }
}
