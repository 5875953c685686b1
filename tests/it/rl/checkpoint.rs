//! Training state survives restarts: a run continues the previous one
//! exactly, and an inconsistent checkpoint is an error, never a fresh start.

use std::path::Path;

use whetstone::rl::RlConfig;
use whetstone::rl::checkpoint::read_state;
use whetstone::rl::features::stable_hash;
use whetstone::trace::{Episode, StepKind};

use super::{synthetic, train_plain};

/// Episodes whose every decision has a logged behavior probability, so
/// training does not depend on which policy is promoted.
fn logged_episodes() -> Vec<Episode> {
    synthetic::episodes(160, 5)
        .into_iter()
        .filter(|e| e.steps.iter().any(|s| s.kind == StepKind::Tool))
        .collect()
}

fn learner_hash(dir: &Path) -> String {
    let state = read_state(dir).unwrap().unwrap();
    state
        .files
        .iter()
        .find(|(name, _)| name.starts_with("learner-"))
        .unwrap()
        .1
        .clone()
}

#[test]
fn two_runs_equal_one_run_of_twice_the_iterations() {
    let episodes = logged_episodes();
    let tmp = tempfile::tempdir().unwrap();
    // No KL stop: where it cuts an iteration depends on the run's start,
    // and this compares step counts exactly.
    let cfg = RlConfig {
        iterations_per_run: 2,
        target_kl: None,
        ..RlConfig::default()
    };
    let first = train_plain(
        &episodes,
        &cfg,
        &tmp.path().join("out"),
        &tmp.path().join("split"),
    )
    .unwrap();
    assert!(!first.resumed_from_checkpoint);
    let second = train_plain(
        &episodes,
        &cfg,
        &tmp.path().join("out"),
        &tmp.path().join("split"),
    )
    .unwrap();
    assert!(second.resumed_from_checkpoint);
    assert_eq!(second.training.total_runs, 2);
    assert_eq!(second.training.total_iterations, 4);
    assert_eq!(
        second.training.total_minibatch_updates,
        2 * first.training.total_minibatch_updates
    );
    let state = read_state(&tmp.path().join("split")).unwrap().unwrap();
    assert_eq!(state.adam_step, second.training.total_minibatch_updates);

    let once = RlConfig {
        iterations_per_run: 4,
        ..cfg.clone()
    };
    train_plain(
        &episodes,
        &once,
        &tmp.path().join("out"),
        &tmp.path().join("once"),
    )
    .unwrap();
    assert_eq!(
        learner_hash(&tmp.path().join("split")),
        learner_hash(&tmp.path().join("once"))
    );
    // The old generation's files were cleaned up.
    let files = std::fs::read_dir(tmp.path().join("split")).unwrap().count();
    assert_eq!(files, 4, "state.json and three weight files");
}

#[test]
fn inconsistent_checkpoints_are_errors_not_fresh_starts() {
    let episodes = logged_episodes();
    let cfg = RlConfig {
        iterations_per_run: 1,
        ..RlConfig::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let dir = tmp.path().join("rl");
    train_plain(&episodes, &cfg, &out, &dir).unwrap();

    let bigger = RlConfig {
        hidden_dim: 32,
        ..cfg.clone()
    };
    let err = format!(
        "{:#}",
        train_plain(&episodes, &bigger, &out, &dir).unwrap_err()
    );
    assert!(
        err.contains("rl.hidden_dim is 32 but the checkpoint has 64"),
        "{err}"
    );

    let state = read_state(&dir).unwrap().unwrap();
    let learner = state
        .files
        .keys()
        .find(|n| n.starts_with("learner-"))
        .unwrap();
    let mut bytes = std::fs::read(dir.join(learner)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(dir.join(learner), &bytes).unwrap();
    let err = format!(
        "{:#}",
        train_plain(&episodes, &cfg, &out, &dir).unwrap_err()
    );
    assert!(err.contains("SHA-256"), "{err}");

    std::fs::remove_file(dir.join("state.json")).unwrap();
    let err = format!(
        "{:#}",
        train_plain(&episodes, &cfg, &out, &dir).unwrap_err()
    );
    assert!(err.contains("refusing to start training over"), "{err}");
}

#[test]
fn bad_episodes_are_counted_in_the_report() {
    let mut episodes = logged_episodes();
    let mut no_reward = episodes[0].clone();
    no_reward.rewards.clear();
    let mut nan_reward = episodes[1].clone();
    nan_reward.rewards.insert("correct".into(), f64::NAN);
    let mut unknown_tool = episodes[2].clone();
    unknown_tool.steps[1].name = "format_disk".into();
    let mut empty = episodes[3].clone();
    empty.steps.clear();
    episodes.extend([no_reward, nan_reward, unknown_tool, empty]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = RlConfig {
        iterations_per_run: 1,
        ..RlConfig::default()
    };
    let report = train_plain(
        &episodes,
        &cfg,
        &tmp.path().join("out"),
        &tmp.path().join("rl"),
    )
    .unwrap();
    let skipped: Vec<(&str, usize)> = report
        .episodes
        .skipped
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        skipped,
        [
            ("no_actions", 1),
            ("no_rewards", 1),
            ("non_finite_reward", 1),
            ("undeclared_tool", 1)
        ]
    );
    assert_eq!(report.episodes.used, episodes.len() - 4);
    assert!(!report.actions.contains_key("format_disk"));
}

/// Without logged probabilities, a decision's behavior probability is the
/// promoted policy's when the learner first sees the episode, frozen for
/// every later run even after a newer policy is promoted.
#[test]
fn unlogged_behavior_probabilities_are_frozen_at_first_sight() {
    let mut episodes = logged_episodes();
    for episode in &mut episodes {
        for step in &mut episode.steps {
            if let Some(tool) = step.tool.as_mut() {
                tool.policy = None;
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    let cfg = RlConfig {
        iterations_per_run: 2,
        holdout_fraction: 0.0,
        ..RlConfig::default()
    };
    let first = train_plain(&episodes, &cfg, &tmp.path().join("out"), &dir).unwrap();
    let source = &first.behavior_probability_source;
    assert!(source.policy_snapshot > 0);
    assert_eq!((source.trace, source.frozen_earlier), (0, 0));
    assert_eq!(
        first.promotion.policy_version, 1,
        "a new policy was promoted"
    );
    let frozen = std::fs::read_to_string(dir.join("behavior.jsonl")).unwrap();
    assert_eq!(frozen.lines().count(), episodes.len());
    // The untrained policy is uniform over the available tools.
    let line: serde_json::Value = serde_json::from_str(frozen.lines().next().unwrap()).unwrap();
    assert_eq!(line["policy_version"], 0);
    let p = line["probabilities"][0].as_f64().unwrap();
    assert!(
        p > 0.0 && p < 0.5 && (1.0 / p).fract().abs() < 1e-6,
        "uniform: {p}"
    );

    let second = train_plain(&episodes, &cfg, &tmp.path().join("out"), &dir).unwrap();
    let source = &second.behavior_probability_source;
    assert_eq!(
        source.policy_snapshot, 0,
        "not rescored by the promoted policy 1"
    );
    assert_eq!(
        source.frozen_earlier,
        first.behavior_probability_source.policy_snapshot
    );
    let again = std::fs::read_to_string(dir.join("behavior.jsonl")).unwrap();
    assert_eq!(again, frozen, "nothing new to freeze");
}

/// Issue 9, item 6: a newly trained policy that is worse than the promoted
/// one is not promoted, and the interval behind the decision is reported.
#[test]
fn a_worse_candidate_is_not_promoted() {
    let episodes = synthetic::episodes(800, 8);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rl");
    let out = tmp.path().join("out");
    let cfg = RlConfig {
        iterations_per_run: 10,
        ..RlConfig::default()
    };
    let first = train_plain(&episodes, &cfg, &out, &dir).unwrap();
    assert!(first.promotion.promoted, "{:?}", first.promotion);
    let weights = std::fs::read(out.join("policy.safetensors")).unwrap();
    // Training episodes (not the held-out ones) with the reward inverted:
    // the learner is taught the wrong tools.
    let poisoned: Vec<Episode> = episodes
        .iter()
        .cloned()
        .map(|mut episode| {
            let held_out = ((stable_hash(cfg.seed, &episode.trace_id) >> 11) as f64
                / (1u64 << 53) as f64)
                < cfg.holdout_fraction;
            if !held_out {
                for reward in episode.rewards.values_mut() {
                    *reward = 1.0 - *reward;
                }
            }
            episode
        })
        .collect();
    let second = train_plain(&poisoned, &cfg, &out, &dir).unwrap();
    let ope = second.off_policy_evaluation.as_ref().unwrap();
    assert!(ope.candidate.snips < ope.current.snips, "{ope:?}");
    assert!(!second.promotion.promoted, "{:?}", second.promotion);
    assert_eq!(second.promotion.policy_version, 1);
    assert!(
        second.promotion.reason.contains("95% bounds [")
            && second.promotion.reason.contains("not promoted"),
        "{}",
        second.promotion.reason
    );
    assert_eq!(
        std::fs::read(out.join("policy.safetensors")).unwrap(),
        weights
    );
}

/// Issue 9, item 9: below the minimum effective sample size the gate says
/// there is not enough held-out data and does not promote.
#[test]
fn too_little_held_out_data_does_not_promote() {
    let episodes = synthetic::episodes(40, 9);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = RlConfig {
        iterations_per_run: 1,
        ..RlConfig::default()
    };
    let report = train_plain(
        &episodes,
        &cfg,
        &tmp.path().join("out"),
        &tmp.path().join("rl"),
    )
    .unwrap();
    assert!(!report.promotion.promoted, "{:?}", report.promotion);
    assert!(
        report
            .promotion
            .reason
            .starts_with("not enough held-out data: effective sample size"),
        "{}",
        report.promotion.reason
    );
}

/// Issue 19, "finite but absurd values": a reward of -1e308 passes a NaN
/// check but turned every weight into NaN; it is now out of range and its
/// episode skipped, counted, and the checkpoint stays finite.
#[test]
fn absurd_rewards_are_rejected_and_counted() {
    let mut episodes = logged_episodes();
    let absurd = episodes.len() / 3;
    for episode in episodes.iter_mut().take(absurd) {
        episode.rewards.insert("success".into(), -1e308);
    }
    let cfg = RlConfig {
        iterations_per_run: 2,
        ..RlConfig::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rl");
    let report = train_plain(&episodes, &cfg, &tmp.path().join("out"), &dir).unwrap();
    assert_eq!(
        report.episodes.skipped.get("reward_out_of_range"),
        Some(&absurd),
        "{:?}",
        report.episodes
    );
    assert!(
        report.training.value_loss.is_finite(),
        "{:?}",
        report.training
    );
    // Resuming works: the checkpoint holds finite numbers only.
    train_plain(&episodes, &cfg, &tmp.path().join("out"), &dir).unwrap();
}

/// Overwrites tensor `name` of the `kind` weight file with NaN and records
/// the new hash, as a diverged run of an older version left it.
fn poison(dir: &Path, kind: &str) {
    use sha2::Digest;
    let state_path = dir.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    let file = state["files"]
        .as_object()
        .unwrap()
        .keys()
        .find(|n| n.starts_with(&format!("{kind}-")))
        .unwrap()
        .clone();
    let path = dir.join(&file);
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let name = tensors.keys().min().unwrap().clone();
    let nan = (tensors[&name].ones_like().unwrap() * f64::NAN).unwrap();
    tensors.insert(name, nan);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let hash = hex::encode(sha2::Sha256::digest(std::fs::read(&path).unwrap()));
    state["files"][&file] = serde_json::json!(hash);
    std::fs::write(&state_path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
}

/// Issue 19: a non-finite checkpoint is never resumed from (nor served);
/// the error says why and the checkpoint is left as it was.
#[test]
fn a_non_finite_checkpoint_is_refused_and_kept() {
    let episodes = logged_episodes();
    let cfg = RlConfig {
        iterations_per_run: 1,
        ..RlConfig::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let dir = tmp.path().join("rl");
    train_plain(&episodes, &cfg, &out, &dir).unwrap();
    poison(&dir, "learner");
    let before = std::fs::read(dir.join("state.json")).unwrap();
    let err = format!(
        "{:#}",
        train_plain(&episodes, &cfg, &out, &dir).unwrap_err()
    );
    assert!(
        err.contains("learner tensor") && err.contains("refusing a non-finite checkpoint"),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.join("state.json")).unwrap(), before);

    poison(&dir, "promoted");
    let err = whetstone::rl::serve::promoted_version(&dir)
        .and_then(|_| whetstone::rl::ServedPolicy::load(&dir).map(|_| ()))
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("promoted tensor") || err.contains("promotion gate"),
        "{err}"
    );
}
