//! Integration tests of the RL policy learner (`whetstone::rl`).

mod synthetic;

// Shared with benches/rl_vs_bandit.rs, which uses the parts tests do not,
// and with the first run's sample (`first_run::sample`).
#[allow(dead_code)]
pub mod world;

mod learning;

mod checkpoint;

mod cli;

mod online;

mod serving;

use std::path::Path;

use whetstone::plugin::Plugins;
use whetstone::rl::{RlConfig, TrainReport, train};
use whetstone::trace::Episode;

/// `rl::train` without plugins, ignoring progress.
fn train_plain(
    episodes: &[Episode],
    cfg: &RlConfig,
    out_dir: &Path,
    checkpoint_dir: &Path,
) -> anyhow::Result<TrainReport> {
    train(
        episodes,
        cfg,
        &Plugins::none(),
        out_dir,
        checkpoint_dir,
        &mut |_| {},
    )
}
