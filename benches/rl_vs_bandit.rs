//! Policy value of the PPO learner versus a contextual-bandit baseline
//! (Vowpal Wabbit `--cb_explore_adf`) on the same logged data.
//!
//! Generates the synthetic tool-choice episodes of the RL tests (uniform
//! logging policy over 4 actions, reward 1 for the right one), trains PPO with
//! `whetstone::rl::train` (default `[rl]` config), writes the episodes PPO
//! trained on (its own held-out split removed) as VW cb_adf text, and runs
//! `benches/vw_cb_baseline.py` on them. Both are then scored on unseen tasks
//! (slot values disjoint from training) whose best action is known: greedy
//! accuracy (= true value of the greedy policy) and the true value of the
//! stochastic policy (mean probability on the best action). Prints a markdown
//! table. VW is skipped, with a message, if `python3` or `vowpalwabbit` is
//! missing.
//!
//! `WHETSTONE_BENCH_EPISODES` (default 20000) sets the logged episodes,
//! `WHETSTONE_BENCH_HELD_OUT` (default 2000) the evaluation states,
//! `WHETSTONE_BENCH_VW_PASSES` (default 1) the passes VW makes over the log.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use whetstone::rl::features::stable_hash;
use whetstone::rl::{ActRequest, NO_TOOL, RlConfig, act, train};
use whetstone::rng::Rng;
use whetstone::trace::Episode;

#[path = "../tests/rl/synthetic.rs"]
mod synthetic;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Lowercased alphanumeric words: VW feature names may not hold spaces, `|`
/// or `:`.
fn words(text: &str) -> String {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The action an episode logged and its probability.
fn logged_choice(episode: &Episode) -> (String, f64) {
    match episode
        .steps
        .iter()
        .find_map(|s| s.tool.as_ref().map(|t| (s, t)))
    {
        Some((step, tool)) => (
            step.name.clone(),
            tool.policy.as_ref().map_or(0.25, |p| p.probability),
        ),
        // The generator logs "no tool" with the same uniform probability.
        None => (NO_TOOL.to_string(), 1.0 / ACTIONS.len() as f64),
    }
}

/// Action order shared by the VW files.
const ACTIONS: [&str; 4] = ["calculator", "get_weather", "search", NO_TOOL];

fn vw_name(action: &str) -> String {
    action
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Writes the logged training decisions as VW cb_adf text (cost = −reward).
fn write_vw_train(path: &Path, episodes: &[&Episode]) {
    let mut out = String::new();
    for episode in episodes {
        let (chosen, probability) = logged_choice(episode);
        let reward = episode.rewards.values().sum::<f64>();
        writeln!(
            out,
            "shared |s {}",
            words(episode.input.as_deref().unwrap_or(""))
        )
        .unwrap();
        for action in ACTIONS {
            if action == chosen {
                write!(out, "0:{}:{} ", -reward, probability).unwrap();
            }
            writeln!(out, "|a {}", vw_name(action)).unwrap();
        }
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

struct Scores {
    accuracy: f64,
    value: f64,
}

fn main() {
    let n = env_usize("WHETSTONE_BENCH_EPISODES", 20_000);
    let held_out_n = env_usize("WHETSTONE_BENCH_HELD_OUT", 2_000);
    let passes = env_usize("WHETSTONE_BENCH_VW_PASSES", 1);
    let cfg = RlConfig::default();
    let episodes = synthetic::episodes(n, 1);
    let mut rng = Rng::new(99);
    let held_out: Vec<(String, &str)> = (0..held_out_n)
        .map(|_| synthetic::task(&mut rng, true))
        .collect();

    // PPO.
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let report = train(
        &episodes,
        &cfg,
        &dir.path().join("out"),
        &dir.path().join("rl"),
    )
    .unwrap();
    let ppo_secs = start.elapsed().as_secs_f64();
    let mut ppo = Scores {
        accuracy: 0.0,
        value: 0.0,
    };
    for (input, best) in &held_out {
        let ranked = act(
            &dir.path().join("rl"),
            &ActRequest {
                input: input.clone(),
                ..ActRequest::default()
            },
        )
        .unwrap();
        ppo.accuracy += f64::from(u8::from(ranked[0].0 == *best));
        ppo.value += ranked
            .iter()
            .find(|(a, _)| a == best)
            .map_or(0.0, |(_, p)| *p);
    }
    ppo.accuracy /= held_out_n as f64;
    ppo.value /= held_out_n as f64;

    // The same training episodes for VW: train()'s held-out split removed.
    let training: Vec<&Episode> = episodes
        .iter()
        .filter(|e| {
            ((stable_hash(cfg.seed, &e.trace_id) >> 11) as f64 / (1u64 << 53) as f64)
                >= cfg.holdout_fraction
        })
        .collect();
    assert_eq!(training.len(), report.episodes.training);
    let train_path = dir.path().join("train.vw");
    let held_out_path = dir.path().join("held_out.jsonl");
    write_vw_train(&train_path, &training);
    let mut lines = String::new();
    for (input, best) in &held_out {
        let record = serde_json::json!({
            "input_words": words(input),
            "actions": ACTIONS.iter().map(|a| vw_name(a)).collect::<Vec<_>>(),
            "best": ACTIONS.iter().position(|a| a == best).unwrap(),
        });
        writeln!(lines, "{record}").unwrap();
    }
    std::fs::write(&held_out_path, lines).unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/vw_cb_baseline.py");
    let start = Instant::now();
    let output = Command::new("python3")
        .arg(&script)
        .arg(&train_path)
        .arg(&held_out_path)
        .arg("--passes")
        .arg(passes.to_string())
        .output();
    let vw_process_secs = start.elapsed().as_secs_f64();
    let vw: Option<serde_json::Value> = match output {
        Ok(out) if out.status.success() => {
            Some(serde_json::from_slice(&out.stdout).expect("VW script prints JSON"))
        }
        Ok(out) if out.status.code() == Some(3) => {
            println!("VW baseline skipped: pip install vowpalwabbit");
            None
        }
        Ok(out) => panic!(
            "VW script failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            println!("VW baseline skipped: python3 not runnable ({e}); pip install vowpalwabbit");
            None
        }
    };

    let epochs = report.training.epochs;
    let decisions = report.episodes.training_decisions;
    println!(
        "{n} logged episodes ({} training decisions, uniform logging over {} actions); \
         {held_out_n} held-out tasks with unseen slot values",
        decisions,
        ACTIONS.len()
    );
    println!(
        "PPO: {} iterations, {epochs} epochs, promoted: {} ({}); \
         {:.1} K decisions × epochs / s over the whole train() call",
        report.training.iterations,
        report.promotion.promoted,
        report.promotion.reason,
        (decisions * epochs) as f64 / ppo_secs / 1e3
    );
    println!();
    println!(
        "| policy | greedy accuracy (= greedy value) | stochastic policy value | train wall time |"
    );
    println!("|---|---|---|---|");
    println!(
        "| logging (uniform) | {:.3} | {:.3} | — |",
        1.0 / ACTIONS.len() as f64,
        1.0 / ACTIONS.len() as f64
    );
    println!(
        "| PPO (whetstone, default `[rl]`) | {:.3} | {:.3} | {:.1} s |",
        ppo.accuracy, ppo.value, ppo_secs
    );
    if let Some(vw) = vw {
        println!(
            "| VW {} `{}`, {} pass(es) | {:.3} | {:.3} | {:.1} s ({:.1} s with process start and scoring) |",
            vw["vowpalwabbit_version"].as_str().unwrap_or("?"),
            vw["vw_args"].as_str().unwrap_or("?"),
            vw["passes"],
            vw["greedy_accuracy"].as_f64().unwrap(),
            vw["stochastic_value"].as_f64().unwrap(),
            vw["train_secs"].as_f64().unwrap(),
            vw_process_secs
        );
    }
}
