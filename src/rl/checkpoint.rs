//! The learner's durable state, so a restart continues training.
//!
//! A checkpoint directory holds `state.json` (architecture, step counters,
//! RNG state, known tools, promoted version, and the names and SHA-256 of the
//! weight files) and three safetensors files: the learner's weights, its Adam
//! moments, and the promoted policy's weights (what `act` serves). Weight
//! files get a new generation number on every save and `state.json` is
//! replaced atomically last, so a crash mid-save leaves the previous
//! checkpoint intact. Anything inconsistent (weights without `state.json`, a
//! hash mismatch, another architecture) is an error: training never silently
//! starts over. Nothing non-finite is written (a save with a NaN or an
//! infinity anywhere fails and the previous checkpoint stays), and a
//! checkpoint holding one is refused on load with an error naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::features::FeatureSpec;
use super::optimizer::Adam;
use super::policy::{Architecture, PolicyNet};

const STATE_FILE: &str = "state.json";
const FORMAT_VERSION: u32 = 1;

/// Counters and metadata stored in `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingState {
    pub format_version: u32,
    pub text_hash_dim: usize,
    pub action_hash_dim: usize,
    pub hidden_dim: usize,
    /// Save generation; weight file names carry it.
    pub generation: u64,
    /// Training runs completed.
    pub runs: u64,
    pub iterations: u64,
    pub epochs: u64,
    pub minibatch_updates: u64,
    /// Decisions trained on, summed over runs.
    pub decisions_trained: u64,
    pub adam_step: u64,
    pub rng_state: u64,
    /// Every tool seen or declared so far.
    pub tools: BTreeSet<String>,
    /// Version of the promoted policy (0 is the untrained initial one).
    pub promoted_version: u64,
    /// Weight file name to its SHA-256 (hex).
    pub files: BTreeMap<String, String>,
}

/// Everything needed to continue training.
pub struct Checkpoint {
    pub state: TrainingState,
    pub learner: PolicyNet,
    pub adam: Adam,
    pub promoted: PolicyNet,
}

impl TrainingState {
    /// Counters at zero for `architecture`.
    pub fn new(architecture: Architecture, rng_state: u64) -> Self {
        TrainingState {
            format_version: FORMAT_VERSION,
            text_hash_dim: architecture.features.text_hash_dim,
            action_hash_dim: architecture.features.action_hash_dim,
            hidden_dim: architecture.hidden_dim,
            generation: 0,
            runs: 0,
            iterations: 0,
            epochs: 0,
            minibatch_updates: 0,
            decisions_trained: 0,
            adam_step: 0,
            rng_state,
            tools: BTreeSet::new(),
            promoted_version: 0,
            files: BTreeMap::new(),
        }
    }

    /// The architecture the checkpoint was trained with.
    pub fn architecture(&self) -> Architecture {
        Architecture {
            features: FeatureSpec {
                text_hash_dim: self.text_hash_dim,
                action_hash_dim: self.action_hash_dim,
            },
            hidden_dim: self.hidden_dim,
        }
    }
}

/// Reads `state.json`; `Ok(None)` when the directory holds no checkpoint at all.
pub fn read_state(dir: &Path) -> Result<Option<TrainingState>> {
    let path = dir.join(STATE_FILE);
    if !path.exists() {
        let leftovers = match fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .count(),
            Err(_) => 0,
        };
        if leftovers > 0 {
            bail!(
                "{} holds {leftovers} weight file(s) but no {STATE_FILE}: refusing to start training over; \
                 restore {STATE_FILE} or move the directory away",
                dir.display()
            );
        }
        return Ok(None);
    }
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let state: TrainingState =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if state.format_version != FORMAT_VERSION {
        bail!(
            "{}: format_version {} is not supported (expected {FORMAT_VERSION})",
            path.display(),
            state.format_version
        );
    }
    Ok(Some(state))
}

/// Loads the checkpoint in `dir`, or `Ok(None)` when there is none yet.
/// `architecture` is what the config asks for; a checkpoint of another shape
/// is an error naming the differing keys.
pub fn load(
    dir: &Path,
    architecture: Architecture,
    learning_rate: f64,
    adam_eps: f64,
) -> Result<Option<Checkpoint>> {
    let Some(state) = read_state(dir)? else {
        return Ok(None);
    };
    let stored = state.architecture();
    let mut differences = Vec::new();
    for (key, want, got) in [
        (
            "rl.text_hash_dim",
            architecture.features.text_hash_dim,
            stored.features.text_hash_dim,
        ),
        (
            "rl.action_hash_dim",
            architecture.features.action_hash_dim,
            stored.features.action_hash_dim,
        ),
        ("rl.hidden_dim", architecture.hidden_dim, stored.hidden_dim),
    ] {
        if want != got {
            differences.push(format!("{key} is {want} but the checkpoint has {got}"));
        }
    }
    if !differences.is_empty() {
        bail!(
            "checkpoint {} was trained with another network shape ({}); set the keys back or move the checkpoint away",
            dir.display(),
            differences.join(", ")
        );
    }
    let learner = PolicyNet::load(stored, &verified(dir, &state, "learner")?)?;
    finite(dir, "learner", &learner.tensors())?;
    let promoted = PolicyNet::load(stored, &verified(dir, &state, "promoted")?)?;
    finite(dir, "promoted", &promoted.tensors())?;
    let optimizer_path = verified(dir, &state, "optimizer")?;
    let tensors = candle_core::safetensors::load(&optimizer_path, &candle_core::Device::Cpu)
        .with_context(|| format!("reading {}", optimizer_path.display()))?;
    finite(dir, "optimizer", &tensors)?;
    let adam = Adam::restore(&learner, tensors, state.adam_step, learning_rate, adam_eps)
        .with_context(|| format!("restoring {}", optimizer_path.display()))?;
    Ok(Some(Checkpoint {
        state,
        learner,
        adam,
        promoted,
    }))
}

/// Loads only the promoted policy (for serving).
pub fn load_promoted(dir: &Path) -> Result<(TrainingState, PolicyNet)> {
    let Some(state) = read_state(dir)? else {
        bail!(
            "no trained policy in {}: run `whetstone train --mode rl` first",
            dir.display()
        );
    };
    let promoted = PolicyNet::load(state.architecture(), &verified(dir, &state, "promoted")?)?;
    finite(dir, "promoted", &promoted.tensors())?;
    Ok((state, promoted))
}

/// An error naming the first tensor of `kind` with a NaN or an infinity.
fn finite(
    dir: &Path,
    kind: &str,
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let values = tensors[name]
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        if let Some(value) = values.iter().find(|v| !v.is_finite()) {
            bail!(
                "checkpoint {}: the {kind} tensor `{name}` holds {value}: refusing a non-finite \
                 checkpoint (training diverged); move the directory away to start over",
                dir.display()
            );
        }
    }
    Ok(())
}

/// The path of the `kind` weight file, after checking its hash.
fn verified(dir: &Path, state: &TrainingState, kind: &str) -> Result<PathBuf> {
    let name = file_name(kind, state.generation);
    let Some(want) = state.files.get(&name) else {
        bail!("{}: {STATE_FILE} does not list {name}", dir.display());
    };
    let path = dir.join(&name);
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let got = hex::encode(Sha256::digest(&bytes));
    if &got != want {
        bail!(
            "{}: SHA-256 {got} does not match {want} recorded in {STATE_FILE}",
            path.display()
        );
    }
    Ok(path)
}

fn file_name(kind: &str, generation: u64) -> String {
    format!("{kind}-{generation:08}.safetensors")
}

/// Writes `checkpoint` as the next generation, then removes the previous one.
pub fn save(dir: &Path, checkpoint: &mut Checkpoint) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let previous: Vec<String> = checkpoint.state.files.keys().cloned().collect();
    let generation = checkpoint.state.generation + 1;
    let mut files = BTreeMap::new();
    let tensors = [
        ("learner", checkpoint.learner.tensors()),
        ("optimizer", checkpoint.adam.tensors(&checkpoint.learner)),
        ("promoted", checkpoint.promoted.tensors()),
    ];
    for (kind, tensors) in &tensors {
        finite(dir, kind, tensors).context("not saved; the previous checkpoint is kept")?;
    }
    for (kind, tensors) in tensors {
        let name = file_name(kind, generation);
        let path = dir.join(&name);
        candle_core::safetensors::save(&tensors, &path)
            .with_context(|| format!("writing {}", path.display()))?;
        let bytes = fs::read(&path).with_context(|| format!("reading back {}", path.display()))?;
        fs::File::open(&path)?.sync_all()?;
        files.insert(name, hex::encode(Sha256::digest(&bytes)));
    }
    let mut state = checkpoint.state.clone();
    state.generation = generation;
    state.files = files;
    state.adam_step = checkpoint.adam.step;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    fs::write(&tmp, serde_json::to_vec_pretty(&state)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, dir.join(STATE_FILE))
        .with_context(|| format!("replacing {}", dir.join(STATE_FILE).display()))?;
    checkpoint.state = state;
    for name in previous {
        // A leftover old generation is harmless; it is listed nowhere.
        let _ = fs::remove_file(dir.join(name));
    }
    Ok(())
}
