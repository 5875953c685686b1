//! `whetstone train --mode rl` and `whetstone policy act`, run as the binary.

use std::process::Command;

use crate::synthetic;

fn whetstone(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_whetstone"))
        .args(["--config", "config.toml"])
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn train_from_jsonl_then_act() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("config.toml"), "data_dir = \"state\"\n").unwrap();
    std::fs::create_dir(dir.join("traces")).unwrap();
    let mut jsonl: String = synthetic::episodes(800, 3)
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect();
    jsonl.push_str("{not json\n");
    std::fs::write(dir.join("traces/agent.jsonl"), jsonl).unwrap();

    let out = whetstone(dir, &["policy", "act", "--input", "hi"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no trained policy"),
        "{out:?}"
    );

    let out = whetstone(
        dir,
        &[
            "train",
            "--mode",
            "rl",
            "--output-dir",
            "out",
            "--traces",
            "traces",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("RL: 800 episodes") && stdout.contains("promoted policy version 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("imported 800 new episodes (0 duplicates skipped, 1 rejected"),
        "the garbage line is reported: {stdout}"
    );
    assert!(
        dir.join("out/learned_policy.json").exists() && dir.join("out/policy.safetensors").exists()
    );
    assert!(dir.join("state/rl/state.json").exists());

    let out = whetstone(
        dir,
        &["policy", "act", "--input", "What's the weather in Berlin?"],
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[0].ends_with("\tget_weather"), "{stdout}");
}
