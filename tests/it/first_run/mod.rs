//! The README's first command, `whetstone daemon --once`, on a fresh clone:
//! the bundled sample (`traces/`, written by [`sample`]) and the embedded
//! defaults, with an LLM endpoint answering (the local test server) and
//! without one (issue 25).

pub mod sample;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{TestServer, free_port};

/// A folder laid out like a fresh clone: the bundled sample in `traces/`,
/// and a `config.toml` holding only `llm` (absent: the embedded defaults).
fn fresh_clone(llm: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("traces")).unwrap();
    fs::copy(
        sample::sample_path(),
        dir.path().join("traces/sample_agent.jsonl"),
    )
    .unwrap();
    if let Some(llm) = llm {
        fs::write(dir.path().join("config.toml"), llm).unwrap();
    }
    dir
}

/// Runs `whetstone daemon --once` in `dir`, as the README's first command does.
fn daemon_once(dir: &Path) -> (Output, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_whetstone"))
        .args(["daemon", "--once"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, stdout)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// The PPO part of the first run: a policy trained on the sample and promoted.
fn assert_ppo_promoted(dir: &Path, stdout: &str) {
    let headline = stdout
        .lines()
        .find(|line| line.starts_with("PPO: "))
        .unwrap_or_else(|| panic!("no PPO round:\n{stdout}"));
    assert!(headline.contains(" promoted "), "{headline}");
    let policy = read_json(&dir.join(".whetstone/output/latest/learned_policy.json"));
    assert_eq!(policy["promotion"]["promoted"], true, "{policy:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_with_a_model_runs_apo_on_the_sample_and_ppo_promotes() {
    let server = TestServer::start().await;
    // What the README's "Point it at a model" asks a user to write.
    let config = format!(
        "[llm]\nbase_url = \"{}\"\napi_key_env = \"OPENAI_API_KEY\"\n\
         task_model = \"task-model\"\nrewriter_model = \"rewriter-model\"\njudge_model = \"judge-model\"\n",
        server.base_url()
    );
    let dir = fresh_clone(Some(&config));
    let (output, stdout) = tokio::task::spawn_blocking({
        let path = dir.path().to_path_buf();
        move || daemon_once(&path)
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("ingested 600 new episodes"), "{stdout}");
    assert_ppo_promoted(dir.path(), &stdout);

    // One APO round on `Controller`, within the default budget.
    assert!(stdout.contains("APO on `Controller`"), "{stdout}");
    let summary = read_json(
        &dir.path()
            .join(".whetstone/output/latest/optimization_summary.json"),
    );
    let calls = summary["llm_calls"].as_u64().unwrap();
    assert!(calls > 0 && calls <= 2000, "{summary:#}");
    assert_eq!(calls, server.requests(), "every request counted");
    assert!(
        stdout.contains(&format!("LLM calls: {calls} of 2000")),
        "{stdout}"
    );
    // The winner scored better than the baseline on the validation replays
    // (the test server's task model answers best when told to cite the tool
    // result in one sentence, which the sample's prompt does not say).
    let baseline = summary["baseline_reward"].as_f64().unwrap();
    let best = summary["optimized_reward"].as_f64().unwrap();
    assert!(best > baseline, "{summary:#}");
    assert!(stdout.contains("baseline v0: "), "{stdout}");
    assert!(stdout.contains("change to the prompt"), "{stdout}");
    let best_prompt =
        fs::read_to_string(dir.path().join(".whetstone/output/latest/best_prompt.txt")).unwrap();
    assert!(
        best_prompt.to_lowercase().contains("cite the tool result"),
        "{best_prompt}"
    );
    // Registered in the prompt registry as a candidate.
    let registered = stdout
        .lines()
        .find(|line| line.trim_start().starts_with("registered: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(registered.contains("labelled `candidate`"), "{registered}");
    assert!(stdout.contains(".whetstone/output/rounds/"), "{stdout}");
}

#[test]
fn first_run_without_a_model_says_how_to_point_at_one_and_still_learns_a_policy() {
    // Nothing listens at the configured URL: a user without a model yet.
    let config = format!(
        "[llm]\nbase_url = \"http://127.0.0.1:{}/v1\"\n",
        free_port()
    );
    let dir = fresh_clone(Some(&config));
    let (output, stdout) = daemon_once(dir.path());
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let skipped: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("APO skipped: "))
        .collect();
    assert_eq!(skipped.len(), 1, "{stdout}");
    for needed in ["[llm]", "base_url", "api_key_env", "11434/v1", "llama.cpp"] {
        assert!(skipped[0].contains(needed), "{needed}: {}", skipped[0]);
    }
    assert!(!stdout.contains("APO on "), "{stdout}");
    assert_ppo_promoted(dir.path(), &stdout);
}
