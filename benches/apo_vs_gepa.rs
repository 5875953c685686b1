//! Whetstone's APO against GEPA on the shared benchmark world
//! (`tests/it/support/apo_world.rs`), at equal caps on total LLM calls.
//!
//! For each budget and seed, each optimizer gets a fresh world server seeded
//! alike: Whetstone runs `apo::run` with the default `[apo]` settings (judge
//! scorer, the shipped meta-prompts) on the world's episodes, capped by
//! `apo.budget.max_llm_calls`; GEPA runs `benches/gepa_baseline.py` against
//! the same server, capped by a ledger over all of its calls. The measure is
//! the true score (`apo_world::true_score`, noise-free) of the prompt each
//! returns, and the calls the server saw by role.
//!
//! Run with `benches/apo_vs_gepa.sh` (it installs GEPA in a virtual
//! environment and sets `WHETSTONE_GEPA_PYTHON`); without that variable only
//! Whetstone runs. `APO_BENCH_BUDGETS` (default `150,300`),
//! `APO_BENCH_SEEDS` (default 5) and `APO_BENCH_FIRST_SEED` (default 1) choose
//! the grid; `APO_BENCH_GEPA_ARGS` adds arguments to the GEPA script
//! (`--split all`, `--merge`). One CSV row per run goes to stdout, then a
//! Markdown table of means.
//!
//! With `APO_WORLD_SERVE=<seed>` it only serves that world, for other
//! optimizers to drive by hand: it prints the base URL and writes the
//! examples JSON the GEPA script reads, then prints the calls by role on
//! Ctrl-C.

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::Connection;
use support::apo_world::{self, Calls, WorldServer};
use whetstone::apo::{self, ApoConfig};
use whetstone::llm::LlmClient;
use whetstone::plugin::Plugins;

/// One optimizer run.
struct Run {
    optimizer: &'static str,
    budget: u64,
    seed: u64,
    true_score: f64,
    calls: Calls,
    wall_secs: f64,
    /// Why the run ended, as the optimizer says.
    stop_reason: String,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_list(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|item| {
            item.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: `{item}` is not a number"))
        })
        .collect()
}

fn main() {
    if let Ok(seed) = std::env::var("APO_WORLD_SERVE") {
        let seed = seed
            .parse()
            .unwrap_or_else(|_| panic!("APO_WORLD_SERVE: `{seed}` is not a seed"));
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(serve(seed));
        return;
    }
    let budgets = env_list("APO_BENCH_BUDGETS", "150,300");
    let seeds = env_list("APO_BENCH_SEEDS", "5")[0];
    let first_seed = env_list("APO_BENCH_FIRST_SEED", "1")[0];
    let gepa_args: Vec<String> = std::env::var("APO_BENCH_GEPA_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let python = std::env::var("WHETSTONE_GEPA_PYTHON").ok();
    if python.is_none() {
        eprintln!(
            "WHETSTONE_GEPA_PYTHON is not set: running Whetstone only (see benches/apo_vs_gepa.sh)"
        );
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    println!(
        "# baseline true score {:.3}, full prompt {:.3}",
        apo_world::true_score(apo_world::BASELINE),
        apo_world::true_score(&apo_world::full_prompt())
    );
    println!(
        "optimizer,budget,seed,true_score,task_calls,judge_calls,rewriter_calls,total_calls,wall_secs,stop_reason"
    );
    let mut runs = Vec::new();
    for &budget in &budgets {
        for seed in first_seed..first_seed + seeds {
            let mut pair = vec![runtime.block_on(whetstone(budget, seed, scratch.path()))];
            if let Some(python) = &python {
                pair.push(runtime.block_on(gepa(python, &gepa_args, budget, seed, scratch.path())));
            }
            for run in pair {
                println!(
                    "{},{},{},{:.4},{},{},{},{},{:.2},\"{}\"",
                    run.optimizer,
                    run.budget,
                    run.seed,
                    run.true_score,
                    run.calls.task,
                    run.calls.judge,
                    run.calls.rewriter,
                    run.calls.total(),
                    run.wall_secs,
                    run.stop_reason.replace('"', "'")
                );
                runs.push(run);
            }
        }
    }
    println!();
    println!(
        "| optimizer | budget | seeds | mean true score | min–max | task / judge / rewriter calls (mean) | wall s (mean) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &budget in &budgets {
        for optimizer in ["whetstone", "gepa"] {
            let group: Vec<&Run> = runs
                .iter()
                .filter(|r| r.optimizer == optimizer && r.budget == budget)
                .collect();
            if group.is_empty() {
                continue;
            }
            let n = group.len() as f64;
            let mean = |f: &dyn Fn(&Run) -> f64| group.iter().map(|r| f(r)).sum::<f64>() / n;
            let scores = group.iter().map(|r| r.true_score);
            let (min, max) =
                scores.fold((f64::MAX, f64::MIN), |(lo, hi), s| (lo.min(s), hi.max(s)));
            println!(
                "| {optimizer} | {budget} | {} | {:.3} | {min:.3}–{max:.3} | {:.0} / {:.0} / {:.0} | {:.2} |",
                group.len(),
                mean(&|r| r.true_score),
                mean(&|r| r.calls.task as f64),
                mean(&|r| r.calls.judge as f64),
                mean(&|r| r.calls.rewriter as f64),
                mean(&|r| r.wall_secs),
            );
        }
    }
}

/// Serves `World::new(seed)` until Ctrl-C.
async fn serve(seed: u64) {
    let server = WorldServer::start(seed).await;
    let data = std::env::temp_dir().join(format!("apo_world_examples_{seed}.json"));
    std::fs::write(&data, apo_world::examples_json().to_string()).unwrap();
    println!("base_url {}", server.base_url());
    println!("examples {}", data.display());
    println!(
        "models: task {}, judge {}, rewriter {}; Ctrl-C to stop",
        apo_world::TASK_MODEL,
        apo_world::JUDGE_MODEL,
        apo_world::REWRITER_MODEL
    );
    tokio::signal::ctrl_c().await.unwrap();
    println!("calls {:?}", server.calls());
}

/// Whetstone's `apo::run` with default settings under the call cap.
async fn whetstone(budget: u64, seed: u64, scratch: &Path) -> Run {
    let server = WorldServer::start(seed).await;
    let out = scratch.join(format!("whetstone-{budget}-{seed}"));
    std::fs::create_dir_all(&out).unwrap();
    // The defaults: the baseline is the text the traces record, the
    // meta-prompts and rubric the embedded ones.
    let mut cfg = ApoConfig {
        seed,
        ..ApoConfig::default()
    };
    cfg.budget.max_llm_calls = budget;
    let llm = LlmClient::new(server.settings()).unwrap();
    let conn = Connection::open_in_memory().unwrap();
    let started = Instant::now();
    let summary = apo::run(
        &apo_world::episodes(),
        &cfg,
        &llm,
        &Plugins::none(),
        &conn,
        &out,
        |_| {},
    )
    .await
    .unwrap_or_else(|err| panic!("whetstone budget {budget} seed {seed}: {err:#}"));
    Run {
        optimizer: "whetstone",
        budget,
        seed,
        true_score: apo_world::true_score(&summary.best_prompt),
        calls: server.calls(),
        wall_secs: started.elapsed().as_secs_f64(),
        stop_reason: summary.stop_reason,
    }
}

/// GEPA through `benches/gepa_baseline.py` against a fresh world server.
async fn gepa(python: &str, extra: &[String], budget: u64, seed: u64, scratch: &Path) -> Run {
    let server = WorldServer::start(seed).await;
    let data = scratch.join("world_examples.json");
    std::fs::write(&data, apo_world::examples_json().to_string()).unwrap();
    let out = scratch.join(format!("gepa-{budget}-{seed}.json"));
    let started = Instant::now();
    let status = tokio::process::Command::new(python)
        .arg(repo().join("benches/gepa_baseline.py"))
        .args(["--base-url", &server.base_url()])
        .arg("--data")
        .arg(&data)
        .arg("--rubric")
        .arg(repo().join("prompts/apo_judge.txt"))
        .args(["--budget", &budget.to_string(), "--seed", &seed.to_string()])
        .arg("--out")
        .arg(&out)
        .args(extra)
        .status()
        .await
        .unwrap_or_else(|err| panic!("running {python}: {err}"));
    let wall_secs = started.elapsed().as_secs_f64();
    assert!(status.success(), "gepa_baseline.py failed: {status}");
    let result: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let best = result["best_prompt"]
        .as_str()
        .expect("gepa_baseline.py writes best_prompt");
    let calls = server.calls();
    assert!(
        calls.total() <= budget,
        "GEPA spent {calls:?} over {budget}"
    );
    Run {
        optimizer: "gepa",
        budget,
        seed,
        true_score: apo_world::true_score(best),
        calls,
        wall_secs,
        stop_reason: format!("{} candidates", result["candidates"]),
    }
}
