//! `whetstone train --mode rl` and `whetstone policy act`, run as the binary.

use std::process::Command;

use super::synthetic;

fn whetstone(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_whetstone"))
        .args(["--config", "config.toml"])
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn train(dir: &std::path::Path) -> std::process::Output {
    whetstone(
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
    )
}

#[test]
fn train_from_jsonl_then_act() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("config.toml"),
        "data_dir = \"state\"\n[rl]\niterations_per_run = 10\n",
    )
    .unwrap();
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

    let out = train(dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("imported 800 new episodes (0 duplicates skipped, 1 rejected"),
        "the garbage line is reported: {stdout}"
    );
    // Issue 9, items 1, 2 and 10: every decision (answers too, from the LLM
    // step's `policy`) has its logged probability, said before training;
    // one result line with the estimate, its interval and the decision;
    // no per-iteration INFO lines without -v.
    let started = stdout
        .lines()
        .find(|l| l.starts_with("RL: training on "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let counts: Vec<usize> = started
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(counts.len(), 2, "{started}");
    assert_eq!(counts[0], counts[1], "{started}");
    let result = stdout
        .lines()
        .find(|l| l.starts_with("RL: ") && l.contains("policy version"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        result.contains("of 800 episodes (0 skipped)")
            && result.contains("logged propensities 100%")
            && result.contains("95% bounds [")
            && result.contains("promoted policy version 1"),
        "{result}"
    );
    assert!(!stderr.contains("value_loss"), "{stderr}");
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

    // Issue 9, item 8: --json with full precision, --step, and a batch of
    // states in one process, one JSON line each, the same as one by one.
    let act_json = |extra: &[&str]| -> String {
        let mut args = vec![
            "policy",
            "act",
            "--json",
            "--input",
            "Look up jazz",
            "--previous-tool",
            "search",
        ];
        args.extend_from_slice(extra);
        let out = whetstone(dir, &args);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let step_3 = act_json(&["--step", "3"]);
    let default_step = act_json(&[]);
    assert_ne!(step_3, default_step, "--step changes the state");
    assert_eq!(default_step, act_json(&["--step", "1"]));
    let parsed: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&step_3).unwrap();
    assert_eq!(parsed.len(), 4);
    let total: f64 = parsed.values().map(|p| p.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-6, "{step_3}");
    assert!(
        parsed
            .values()
            .any(|p| p.to_string().split('.').nth(1).is_some_and(|d| d.len() > 4)),
        "full precision: {step_3}"
    );

    std::fs::write(
        dir.join("states.jsonl"),
        "{\"input\": \"Look up jazz\", \"previous_tool\": \"search\", \"step\": 3}\n\
         \n\
         {\"input\": \"Look up jazz\", \"previous_tool\": \"search\"}\n",
    )
    .unwrap();
    let out = whetstone(dir, &["policy", "act", "--states", "states.jsonl"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{step_3}{default_step}")
    );
    std::fs::write(
        dir.join("bad.jsonl"),
        "{\"input\": \"hi\"}\n{\"input\": \"hi\", \"step\": \"two\"}\n",
    )
    .unwrap();
    let out = whetstone(dir, &["policy", "act", "--states", "bad.jsonl"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.jsonl:2: invalid state"),
        "{out:?}"
    );
}

/// Issue 9, items 1 and 6: traces without logged probabilities are trained
/// on with a loud warning, and the result is not promoted.
#[test]
fn without_logged_probabilities_training_warns_and_does_not_promote() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("config.toml"),
        "data_dir = \"state\"\n[rl]\niterations_per_run = 2\n",
    )
    .unwrap();
    std::fs::create_dir(dir.join("traces")).unwrap();
    let jsonl: String = synthetic::episodes(300, 4)
        .into_iter()
        .map(|mut episode| {
            for step in &mut episode.steps {
                if let Some(tool) = step.tool.as_mut() {
                    tool.policy = None;
                }
                if let Some(llm) = step.llm.as_mut() {
                    llm.policy = None;
                }
            }
            serde_json::to_string(&episode).unwrap() + "\n"
        })
        .collect();
    std::fs::write(dir.join("traces/agent.jsonl"), jsonl).unwrap();
    let out = train(dir);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("WARNING: no decision carries a logged behavior probability"),
        "{out:?}"
    );
    assert!(
        stdout.contains("with a logged behavior probability")
            && stdout.contains("logged propensities 0%")
            && stdout.contains("kept policy version 0")
            && stdout.contains("off-policy evaluation needs them"),
        "{stdout}"
    );
}
