//! `whetstone train --mode apo`, run as the real binary against the local
//! OpenAI-compatible test server.

use crate::support;

use std::path::Path;
use std::process::{Command, Output};

use crate::support::TestServer;

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
    write_traces(dir.path());
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
generations = 3
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
    assert!(stdout.contains("APO decision: "), "{stdout}");
    let requests = server.requests();
    assert!(requests > 0);

    // Same store, same seed: every evaluation and rewrite is in the cache.
    let second = whetstone(dir.path(), &args[..args.len() - 2]).await;
    assert!(second.status.success());
    assert_eq!(server.requests(), requests);
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(stdout.contains("0 LLM calls"), "{stdout}");
}

/// The support episodes as Whetstone JSONL in `dir/traces.jsonl`.
fn write_traces(dir: &Path) {
    let lines: String = support::episodes(24)
        .iter()
        .map(support::jsonl_line)
        .collect();
    std::fs::write(dir.join("traces.jsonl"), lines).unwrap();
}

/// Regression test for issue 8 (items 8 and 9): outside the checkout, with
/// no prompt file anywhere, `config check` passes and `train` runs on the
/// embedded meta-prompts and rubric and the baseline the traces record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_apo_outside_the_checkout_needs_no_prompt_files() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_traces(dir.path());
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "data_dir = \"data\"\n[llm]\nbase_url = \"{}\"\ntask_model = \"task-model\"\n\
             rewriter_model = \"rewriter-model\"\njudge_model = \"judge-model\"\n\
             [apo]\ngenerations = 2\n",
            server.base_url()
        ),
    )
    .unwrap();
    let check = whetstone(dir.path(), &["config", "check", "config.toml"]).await;
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let run = whetstone(
        dir.path(),
        &[
            "--config",
            "config.toml",
            "train",
            "--mode",
            "apo",
            "--output-dir",
            "out",
            "--traces",
            "traces.jsonl",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("APO baseline: traces: the most recent text of prompt `Controller`")
            && stdout.contains("version 1"),
        "{stdout}"
    );
    assert!(server.requests_for("judge-model") > 0);
}

/// Regression test for issue 8 (item 8): `config check` reads every file the
/// configuration names and lists every problem at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_lists_every_missing_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[apo]\nbaseline_prompt_file = \"nope/baseline.txt\"\nmeta_prompt_dir = \"nope\"\n\
         scorer = { type = \"llm_judge\", rubric_file = \"nope/rubric.txt\" }\n",
    )
    .unwrap();
    let check = whetstone(dir.path(), &["config", "check", "config.toml"]).await;
    assert_eq!(check.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains("config.toml:2:1: apo.baseline_prompt_file: cannot read"),
        "{stderr}"
    );
    for file in [
        "apo_critique.txt",
        "apo_edit.txt",
        "apo_paraphrase.txt",
        "apo_crossover.txt",
        "rubric.txt",
    ] {
        assert!(stderr.contains(file), "{file}: {stderr}");
    }
    assert!(
        stderr.contains("invalid configuration (6 problems)"),
        "{stderr}"
    );
}

/// Regression test for issue 8 (item 12): when APO fails in `--mode all`, RL
/// still runs, the exit status says something failed, and the message says
/// where the call ledger is and how to read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_all_runs_rl_after_apo_fails_and_points_to_the_ledger() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    write_traces(dir.path());
    std::fs::write(
        dir.path().join("config.toml"),
        format!("data_dir = \"data\"\n[llm]\nbase_url = \"http://{addr}/v1\"\n"),
    )
    .unwrap();
    let run = whetstone(
        dir.path(),
        &[
            "--config",
            "config.toml",
            "train",
            "--mode",
            "all",
            "--output-dir",
            "out",
            "--traces",
            "traces.jsonl",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("from 24 of 24 episodes"), "{stdout}");
    assert!(stderr.contains("APO failed"), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach the LLM endpoint http://{addr}/v1")),
        "{stderr}"
    );
    assert!(
        stderr.contains("llm_call_ledger") && stderr.contains("data/whetstone.db"),
        "{stderr}"
    );
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
