//! `whetstone train --mode apo`, run as the real binary against the local
//! OpenAI-compatible test server.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::TestServer;

async fn whetstone(dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_whetstone"));
    command.args(args).current_dir(dir).env_remove("RUST_LOG");
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_apo_imports_optimizes_writes_outputs_and_reruns_from_cache() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
    let lines: Vec<String> = support::episodes(24)
        .iter()
        .map(|episode| {
            let mut value = serde_json::to_value(episode).unwrap();
            let object = value.as_object_mut().unwrap();
            object.remove("format");
            object.remove("source");
            value.to_string()
        })
        .collect();
    std::fs::write(dir.path().join("traces.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            r#"data_dir = "data"

[llm]
base_url = "{base_url}"
api_key_env = "WHETSTONE_TEST_KEY_UNSET"
task_model = "task-model"
rewriter_model = "rewriter-model"
judge_model = "judge-model"

[apo]
baseline_prompt_file = "{prompts}/controller.txt"
meta_prompt_dir = "{prompts}"
generations = 3
population_size = 6
patience = 0
scorer = {{ type = "f1" }}
"#,
            base_url = server.base_url(),
            prompts = prompts.display()
        ),
    )
    .unwrap();

    let args = [
        "--config",
        "config.toml",
        "train",
        "--mode",
        "apo",
        "--output-dir",
        "out",
        "--traces",
        "traces.jsonl",
    ];
    let first = whetstone(dir.path(), &args).await;
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(stdout.contains("imported 24 new episodes"), "{stdout}");
    assert!(stdout.contains("APO on `Controller`"), "{stdout}");
    for file in [
        "best_prompt.txt",
        "all_variants.json",
        "optimization_summary.json",
        "progress.svg",
    ] {
        assert!(dir.path().join("out").join(file).exists(), "{file} missing");
    }
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("out/optimization_summary.json")).unwrap(),
    )
    .unwrap();
    assert!(
        summary["optimized_reward"].as_f64().unwrap()
            > summary["baseline_reward"].as_f64().unwrap()
    );
    let requests = server.requests();
    assert!(requests > 0);

    // Same store, same seed: every evaluation and rewrite is in the cache.
    let second = whetstone(dir.path(), &args[..args.len() - 2]).await;
    assert!(second.status.success());
    assert_eq!(server.requests(), requests);
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(stdout.contains("0 LLM calls"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_apo_without_episodes_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let output = whetstone(
        dir.path(),
        &["train", "--mode", "apo", "--output-dir", "out"],
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no episode for prompt `Controller`"),
        "{stderr}"
    );
}
