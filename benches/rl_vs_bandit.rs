//! Whetstone's RL learner versus a contextual bandit (Vowpal Wabbit
//! `--cb_explore_adf`), the logging policy and the optimum, on the same
//! logged data (issue 9).
//!
//! Logs runs of the synthetic agent of `tests/it/rl/world.rs` (ε-greedy keyword
//! router, probabilities on the chat spans) as OTLP/JSON, ingests them
//! through the real import path, trains with the default `[rl]` config, and
//! gives VW the same training decisions (`train`'s held-out split removed)
//! as cb_adf examples: the state (task words, previous tool and outcome,
//! step), the logged action and probability, and as cost the negated
//! return from that decision on. Every policy is then scored exactly (by
//! dynamic programming over the world's model) on tasks with slot values
//! never seen in training: true value of the greedy policy and best-action
//! accuracy on the optimal policy's states. Training wall time and peak RSS
//! at 10 and 100 iterations come from child processes (this binary run with
//! `--train-child N`), so each peak is its own. Prints markdown.
//!
//! `WHETSTONE_BENCH_EPISODES` (default 4000) sets the logged runs,
//! `WHETSTONE_BENCH_HELD_OUT` (default 300) the evaluation tasks,
//! `WHETSTONE_VW_PYTHON` (default `python3`) the interpreter with
//! `vowpalwabbit` installed; VW is skipped, with a message, without it.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use whetstone::plugin::Plugins;
use whetstone::rl::features::stable_hash;
use whetstone::rl::{RlConfig, train};

#[allow(dead_code)]
#[path = "../tests/it/rl/world.rs"]
mod world;

use world::{ACTIONS, ANSWER, HeldOut, LoggedEpisode, Obs, Score};

/// Seed of the logged runs (the trace ids depend on it).
const SEED: u64 = 1;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Peak resident set size of this process in MiB (`VmHWM`).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// `--train-child N`: ingest, train N iterations, print `secs peak_rss_mib`.
fn train_child(iterations: usize, episodes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let logged = world::logged_otlp_episodes(dir.path(), episodes, SEED);
    let cfg = RlConfig {
        iterations_per_run: iterations,
        ..RlConfig::default()
    };
    let start = Instant::now();
    train(
        &logged,
        &cfg,
        &Plugins::none(),
        &dir.path().join("out"),
        &dir.path().join("rl"),
        &mut |_| {},
    )
    .unwrap();
    println!("{} {}", start.elapsed().as_secs_f64(), peak_rss_mib());
}

/// VW's view of a state: task words, then previous tool, outcome and step.
fn vw_shared(text: &str, obs: Obs) -> String {
    let words: Vec<String> = text
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            if w.chars().all(|c| c.is_ascii_digit()) {
                "NUM".to_string()
            } else {
                w.to_string()
            }
        })
        .collect();
    let previous = match obs.previous {
        None => "none".to_string(),
        Some((tool, error)) => format!("{}_{}", ACTIONS[tool], if error { "err" } else { "ok" }),
    };
    format!(
        "shared |s {} |p prev_{previous} step_{}",
        words.join(" "),
        obs.step
    )
}

fn vw_action(idx: usize) -> String {
    format!("|a {}", ACTIONS[idx].replace(['<', '>'], ""))
}

/// The training decisions as VW cb_adf text, cost = -(return from there).
fn write_vw_train(path: &Path, episodes: &[&LoggedEpisode]) {
    let mut out = String::new();
    for episode in episodes {
        let rewards: Vec<f64> = episode
            .decisions
            .iter()
            .map(|d| {
                if d.action == ANSWER {
                    0.0
                } else {
                    world::CALL_COST + if d.error { world::ERROR_COST } else { 0.0 }
                }
            })
            .collect();
        let mut to_go = episode.success;
        let mut returns = vec![0.0; rewards.len()];
        for t in (0..rewards.len()).rev() {
            to_go += rewards[t];
            returns[t] = to_go;
        }
        for (decision, ret) in episode.decisions.iter().zip(returns) {
            writeln!(out, "{}", vw_shared(&episode.task.text, decision.obs)).unwrap();
            for action in 0..ACTIONS.len() {
                if action == decision.action {
                    write!(out, "0:{}:{} ", -ret, decision.probability).unwrap();
                }
                writeln!(out, "{}", vw_action(action)).unwrap();
            }
            out.push('\n');
        }
    }
    std::fs::write(path, out).unwrap();
}

/// Runs the VW script; `None` (with a message) when VW is not installed.
fn run_vw(
    dir: &Path,
    training: &[&LoggedEpisode],
    held_out: &HeldOut,
) -> Option<(Vec<[f64; 6]>, serde_json::Value)> {
    let train_path = dir.join("train.vw");
    let held_out_path = dir.join("held_out.jsonl");
    write_vw_train(&train_path, training);
    let mut lines = String::new();
    for (text, obs) in held_out.queries() {
        let record = serde_json::json!({
            "shared": vw_shared(text, obs),
            "actions": (0..ACTIONS.len()).map(vw_action).collect::<Vec<_>>(),
        });
        writeln!(lines, "{record}").unwrap();
    }
    std::fs::write(&held_out_path, lines).unwrap();
    let python = std::env::var("WHETSTONE_VW_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/vw_cb_baseline.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(&train_path)
        .arg(&held_out_path)
        .output();
    let summary: serde_json::Value = match output {
        Ok(out) if out.status.success() => {
            serde_json::from_slice(&out.stdout).expect("VW script prints JSON")
        }
        Ok(out) if out.status.code() == Some(3) => {
            println!("VW baseline skipped: pip install vowpalwabbit");
            return None;
        }
        Ok(out) => panic!(
            "VW script failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            println!("VW baseline skipped: {python} not runnable ({e})");
            return None;
        }
    };
    let pmfs = summary["pmfs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pmf| {
            let values: Vec<f64> = pmf
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_f64().unwrap())
                .collect();
            std::array::from_fn(|i| values[i])
        })
        .collect();
    Some((pmfs, summary))
}

fn row(name: &str, score: Score, ceiling: f64, time: &str) {
    println!(
        "| {name} | {:.3} | {:.0}% | {:.3} | {time} |",
        score.value,
        100.0 * score.value / ceiling,
        score.best_action_accuracy
    );
}

fn main() {
    let n = env_usize("WHETSTONE_BENCH_EPISODES", 4000);
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--train-child") {
        train_child(args[pos + 1].parse().unwrap(), n);
        return;
    }
    let held_out_n = env_usize("WHETSTONE_BENCH_HELD_OUT", 300);
    let cfg = RlConfig::default();
    let dir = tempfile::tempdir().unwrap();
    let logged = world::logged_episodes(n, SEED);
    let traces = dir.path().join("traces");
    std::fs::create_dir_all(&traces).unwrap();
    world::write_otlp(&traces.join("agent.jsonl"), &logged, SEED);
    let episodes = world::ingest(&dir.path().join("store"), &traces);

    let start = Instant::now();
    let report = train(
        &episodes,
        &cfg,
        &Plugins::none(),
        &dir.path().join("out"),
        &dir.path().join("rl"),
        &mut |_| {},
    )
    .unwrap();
    let train_secs = start.elapsed().as_secs_f64();
    let held_out = HeldOut::new(held_out_n, 99);
    let ceiling = held_out.ceiling();
    let learned = held_out.score(
        &world::learned_probabilities(&dir.path().join("rl"), &held_out),
        true,
    );
    let logging = held_out.score_fn(world::logging_policy, false);

    // VW trains on the decisions train() trained on (its held-out split out).
    let training: Vec<&LoggedEpisode> = logged
        .iter()
        .enumerate()
        .filter(|(idx, _)| {
            let trace_id = format!("{SEED:016x}{idx:016x}");
            ((stable_hash(cfg.seed, &trace_id) >> 11) as f64 / (1u64 << 53) as f64)
                >= cfg.holdout_fraction
        })
        .map(|(_, e)| e)
        .collect();
    assert_eq!(training.len(), report.episodes.training);
    let vw = run_vw(dir.path(), &training, &held_out);

    let exe = std::env::current_exe().unwrap();
    let child = |iterations: usize| -> (f64, f64) {
        let out = Command::new(&exe)
            .args(["--train-child", &iterations.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().unwrap());
        (fields.next().unwrap(), fields.next().unwrap())
    };
    let (secs_10, rss_10) = child(10);
    let (secs_100, rss_100) = child(100);

    println!(
        "{n} logged runs as OTLP/JSON ({} decisions, {} training, {:.0}% with a logged \
         probability); {held_out_n} held-out tasks with unseen slot values",
        report.behavior_probability_source.trace,
        report.episodes.training_decisions,
        100.0 * report.behavior_probability_source.trace as f64
            / (report.behavior_probability_source.trace
                + report.behavior_probability_source.policy_snapshot)
                .max(1) as f64
    );
    println!(
        "Whetstone: {} iterations, promoted: {} ({})",
        report.training.iterations, report.promotion.promoted, report.promotion.reason
    );
    println!();
    println!(
        "| policy | true value (greedy) | of ceiling | best-action accuracy | training wall time |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| ceiling: optimal over (text, previous tool, previous error, step) | {ceiling:.3} | 100% | 1.000 | — |"
    );
    row(
        &format!(
            "Whetstone, default `[rl]` ({} iterations)",
            cfg.iterations_per_run
        ),
        learned,
        ceiling,
        &format!("{train_secs:.1} s"),
    );
    if let Some((pmfs, summary)) = vw {
        row(
            &format!(
                "VW {} `{}`",
                summary["vowpalwabbit_version"].as_str().unwrap_or("?"),
                summary["vw_args"].as_str().unwrap_or("?")
            ),
            held_out.score(&pmfs, true),
            ceiling,
            &format!("{:.1} s", summary["train_secs"].as_f64().unwrap()),
        );
    }
    row(
        &format!(
            "logging policy (ε = {} over the keyword router; as logged, not greedy)",
            world::EPSILON
        ),
        logging,
        ceiling,
        "—",
    );
    println!();
    println!("| Whetstone iterations | training wall time | peak RSS (whole process) |");
    println!("|---|---|---|");
    println!("| 10 | {secs_10:.1} s | {rss_10:.0} MiB |");
    println!("| 100 | {secs_100:.1} s | {rss_100:.0} MiB |");
}
