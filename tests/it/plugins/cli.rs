//! `whetstone plugins list` and `plugins check` on real components.

use std::process::Command;

use super::guests;

fn whetstone(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_whetstone"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn list_shows_loaded_plugins_and_load_failures_and_check_runs_a_smoke_call() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for name in ["tool_errors_reward", "hostile_wrong_version"] {
        std::fs::copy(guests::wasm(name), plugins.join(format!("{name}.wasm"))).unwrap();
    }
    let config = dir.path().join("whetstone.toml");
    std::fs::write(
        &config,
        "data_dir = \"state\"\n[plugins]\ndir = \"plugins\"\n",
    )
    .unwrap();

    let (ok, stdout, stderr) = whetstone(&config, &["plugins", "list"]);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with(
            "tool_errors_reward: world reward (whetstone:plugin@0.1.0), \"tool-errors\""
        ),
        "{stdout}"
    );
    assert!(
        lines[0].ends_with("timeout_ms=1000 output_bytes=1048576 log_bytes=65536"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with(
            "failed: plugin `hostile_wrong_version`: exports whetstone:plugin/scoring@9.0.0"
        ),
        "{stdout}"
    );

    let mutator = guests::wasm("constraint_mutator");
    let (ok, stdout, stderr) = whetstone(&config, &["plugins", "check", mutator.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("world mutator (whetstone:plugin@0.1.0)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("smoke call: mutate(sample prompt) = "),
        "{stdout}"
    );
    assert!(stdout.contains("timing: load "), "{stdout}");

    let panics = guests::wasm("hostile_panic");
    let (ok, _, stderr) = whetstone(&config, &["plugins", "check", panics.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("whetstone: plugin `hostile_panic` (whetstone:plugin@0.1.0): trapped: "),
        "{stderr}"
    );
}

#[test]
fn new_scaffolds_a_crate_that_builds_with_one_cargo_command_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_whetstone"))
        .args(["plugins", "new", "reward", "my-reward"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let crate_dir = dir.path().join("my-reward");
    let target_dir = guests::workspace().join("target");
    // Shares the guest workspace's target dir (and, offline, its crates).
    let build = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--offline"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(&crate_dir)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let wasm = target_dir.join("wasm32-wasip2/release/my_reward.wasm");
    let config = dir.path().join("whetstone.toml");
    std::fs::write(&config, "data_dir = \"state\"\n").unwrap();
    let (ok, stdout, stderr) = whetstone(&config, &["plugins", "check", wasm.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("smoke call: score(sample episode) = [steps_ok=1]"),
        "{stdout}"
    );

    let again = Command::new(env!("CARGO_BIN_EXE_whetstone"))
        .args(["plugins", "new", "reward", "my-reward"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "an existing folder is not overwritten"
    );
}

/// `train --mode rl` loads `[plugins] dir`, names the plugins it uses, and
/// reports what the reward plugin added; `learned_policy.json` has it too.
#[test]
fn train_uses_the_plugins_folder() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for name in ["tool_errors_reward", "constraint_mutator"] {
        std::fs::copy(guests::wasm(name), plugins.join(format!("{name}.wasm"))).unwrap();
    }
    let traces = dir.path().join("traces.jsonl");
    let jsonl: String = super::engines::weather_episodes(60, 3)
        .iter()
        .map(|episode| serde_json::to_string(episode).unwrap() + "\n")
        .collect();
    std::fs::write(&traces, jsonl).unwrap();
    let config = dir.path().join("whetstone.toml");
    std::fs::write(
        &config,
        "data_dir = \"state\"\n[plugins]\ndir = \"plugins\"\n[rl]\niterations_per_run = 2\n\
         plugin_reward_weights = { tool_errors_reward = 0.5 }\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let (ok, stdout, stderr) = whetstone(
        &config,
        &[
            "train",
            "--mode",
            "rl",
            "--output-dir",
            out.to_str().unwrap(),
            "--traces",
            traces.to_str().unwrap(),
        ],
    );
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("plugin constraint_mutator (mutator, NAME.toml weight 1)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "RL reward plugin tool_errors_reward (weight 0.5): scored 60 episodes, mean reward added"
        ),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("learned_policy.json")).unwrap()).unwrap();
    assert_eq!(report["plugin_rewards"][0]["plugin"], "tool_errors_reward");
    assert_eq!(report["plugin_rewards"][0]["scored"], 60);
}
