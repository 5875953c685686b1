//! `whetstone daemon`, run as the real binary on temporary folders against
//! the local OpenAI-compatible test server: traces arriving in pieces, a
//! rotated file, rounds triggered, config edits, kill -9 mid-round, SIGTERM.

use crate::support;

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{TestServer, append, free_port};
use serde_json::{Value, json};

/// A Controller episode as a Whetstone JSONL line.
fn controller_line(idx: usize) -> String {
    const CITIES: [&str; 4] = ["Paris", "Oslo", "Lima", "Cairo"];
    let city = CITIES[idx % CITIES.len()];
    let episode = support::episode(
        &format!("ctl-{idx:04}"),
        &format!("What is the weather in {city} right now? (#{idx})"),
        &format!("it is {} degrees and clear in {city}", 10 + idx),
        true,
    );
    support::jsonl_line(&episode)
}

/// A tool-using episode of another prompt, for the PPO update.
fn tool_line(idx: usize) -> String {
    let (question, tool) = if idx.is_multiple_of(2) {
        ("what is 17 times 3", "calculator")
    } else {
        ("weather in Oslo", "weather")
    };
    json!({
        "id": format!("tool-{idx:04}"),
        "prompt": {"name": "Agent", "version": "1"},
        "input": format!("{question} (#{idx})"),
        "steps": [
            {"kind": "tool", "name": tool, "tool": {"arguments": {}, "result": "ok",
             "policy": {"probability": 0.5}}},
            {"kind": "llm", "name": "m", "llm": {"output_text": "done"}},
        ],
        "rewards": {"success": 1.0},
    })
    .to_string()
        + "\n"
}

struct Setup {
    dir: tempfile::TempDir,
    port: u16,
    base_url: String,
}

impl Setup {
    fn traces(&self) -> PathBuf {
        self.dir.path().join("traces")
    }

    /// The daemon's configuration; `generations` caps APO rounds (else the
    /// call budget alone does).
    fn config(&self, generations: Option<u32>, extra: &str) -> String {
        let generations = generations.map_or(String::new(), |g| format!("generations = {g}\n"));
        format!(
            r#"data_dir = "data"

[traces]
dir = "traces"
quiet_period_secs = 1

[llm]
base_url = "{base_url}"
api_key_env = "WHETSTONE_TEST_KEY_UNSET"
task_model = "task-model"
rewriter_model = "rewriter-model"
judge_model = "judge-model"
max_concurrency = 2
timeout_secs = 10

[apo]
{generations}patience = 0
scorer = {{ type = "f1" }}

[apo.budget]
max_llm_calls = 150

[daemon]
poll_interval_secs = 1
debounce_millis = 100
apo_min_new_episodes = 12
rl_min_new_decisions = 20
retry_backoff_secs = 1

[api]
listen = "127.0.0.1:{port}"

[otlp]
http_listen = ""
grpc_listen = ""
{extra}"#,
            base_url = self.base_url,
            port = self.port,
        )
    }

    fn write_config(&self, text: &str) {
        // Written aside and renamed, as editors save.
        let aside = self.dir.path().join(".config.toml.swp");
        fs::write(&aside, text).unwrap();
        fs::rename(&aside, self.dir.path().join("config.toml")).unwrap();
    }

    fn start(&self) -> Running {
        let log = fs::File::create(self.dir.path().join(format!(
            "daemon-{}.log",
            Instant::now().elapsed().as_nanos()
        )))
        .unwrap();
        Command::new(env!("CARGO_BIN_EXE_whetstone"))
            .arg("daemon")
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env_remove("WHETSTONE_API_TOKEN")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(Running)
            .unwrap()
    }

    async fn get(&self, path: &str) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let response = reqwest::get(url).await.ok()?;
        response.json().await.ok()
    }

    /// Polls `path` until `done` holds, or fails after `secs` seconds.
    async fn wait_for(&self, path: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Some(value) = self.get(path).await {
                if done(&value) {
                    return value;
                }
                last = value;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting on {path}; last answer: {last:#}");
    }
}

/// A daemon process, killed if the test ends early (a failed assertion
/// must not leave it running).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn succeeded(rounds: &Value, kind: &str) -> usize {
    rounds
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == kind && r["status"] == "succeeded")
        .count()
}

async fn wait_exit(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not exit within {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_ingests_runs_rounds_reloads_config_and_survives_kill_9() {
    let server = TestServer::start().await;
    server.set_latency(Duration::from_millis(5));
    let setup = Setup {
        dir: tempfile::tempdir().unwrap(),
        port: free_port(),
        base_url: server.base_url(),
    };
    fs::create_dir(setup.traces()).unwrap();
    setup.write_config(&setup.config(Some(2), ""));
    let mut daemon = setup.start();
    setup
        .wait_for("/v1/status", 30, |s| {
            s["ingest"]["passes"].as_u64() > Some(0)
        })
        .await;

    // Traces arrive the way agents write them: a line in two writes, a
    // garbage line, a file rotated with an unread tail.
    let live = setup.traces().join("agent.jsonl");
    let first = controller_line(0);
    let (head, tail) = first.split_at(first.len() / 2);
    append(&live, head);
    tokio::time::sleep(Duration::from_millis(400)).await;
    append(&live, tail);
    append(&live, "{ this is not json\n");
    for idx in 1..8 {
        append(&live, &controller_line(idx));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    for idx in 8..12 {
        append(&live, &controller_line(idx));
    }
    fs::rename(&live, setup.traces().join("agent.jsonl.1")).unwrap();
    let tools = setup.traces().join("tools.jsonl");
    for idx in 0..12 {
        append(&tools, &tool_line(idx));
    }
    let status = setup
        .wait_for("/v1/status", 30, |s| s["ingest"]["episodes_new"] == 24)
        .await;
    assert_eq!(status["ingest"]["rejects"]["invalid_json"], 1, "{status:#}");

    // 12 new Controller episodes start an APO round, 12 + 24 decisions a
    // PPO update; both publish into latest/.
    let rounds = setup
        .wait_for("/v1/rounds", 120, |r| {
            succeeded(r, "apo") >= 1 && succeeded(r, "rl") >= 1
        })
        .await;
    let latest = setup.dir.path().join("data/output/latest");
    for file in [
        "best_prompt.txt",
        "optimization_summary.json",
        "learned_policy.json",
    ] {
        assert!(
            latest.join(file).is_file(),
            "latest/{file} missing: {rounds:#}"
        );
    }
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", setup.port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("whetstone_ingest_episodes_total 24"),
        "{metrics}"
    );
    let act = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/v1/policy/act", setup.port))
        .json(&json!({"input": "weather in Paris", "step": 0}))
        .send()
        .await
        .unwrap();
    let act_status = act.status();
    let act: Value = act.json().await.unwrap();
    // The policy is served only once a trained one passed the promotion
    // gate; until then the agent is told to keep its own (503).
    let report: Value =
        serde_json::from_str(&fs::read_to_string(latest.join("learned_policy.json")).unwrap())
            .unwrap();
    let version = report["promotion"]["policy_version"].as_u64().unwrap();
    if version == 0 {
        assert_eq!(
            act_status,
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            "{act:#}"
        );
        assert!(act.to_string().contains("promotion gate"), "{act:#}");
    } else {
        assert!(act_status.is_success(), "{act:#}");
        let probability = act["probability"].as_f64().unwrap();
        assert!(probability > 0.0 && probability <= 1.0, "{act:#}");
        let decision_id = act["decision_id"].as_str().unwrap();
        assert!(decision_id.starts_with(&format!("{version}-")), "{act:#}");
    }

    let status = Command::new(env!("CARGO_BIN_EXE_whetstone"))
        .arg("status")
        .current_dir(setup.dir.path())
        .output()
        .unwrap();
    let status = String::from_utf8(status.stdout).unwrap();
    assert!(status.contains("ingested: 24 episodes"), "{status}");

    // A plugin dropped into the plugins folder loads without a restart; a
    // broken one is reported and the daemon keeps serving.
    let plugins = setup.dir.path().join("plugins");
    fs::create_dir_all(&plugins).unwrap();
    fs::copy(
        crate::plugins::guests::wasm("tool_errors_reward"),
        plugins.join("tool_errors_reward.wasm"),
    )
    .unwrap();
    fs::write(plugins.join("broken.wasm"), b"not a component").unwrap();
    let status = setup
        .wait_for("/v1/status", 60, |s| {
            s["plugins"].as_array().is_some_and(|p| !p.is_empty())
                && s["plugin_errors"].as_array().is_some_and(|e| !e.is_empty())
        })
        .await;
    assert!(
        status["plugins"][0]
            .as_str()
            .unwrap()
            .starts_with("tool_errors_reward (reward"),
        "{status:#}"
    );
    assert!(
        status["plugin_errors"][0]
            .as_str()
            .unwrap()
            .contains("`broken`"),
        "{status:#}"
    );

    // A valid edit applies from the next round; an invalid one is reported
    // with every problem and the running configuration stays.
    setup.write_config(&setup.config(Some(1), ""));
    setup
        .wait_for("/v1/status", 30, |s| s["config_reloads"] == 1)
        .await;
    setup.write_config(&setup.config(Some(1), "\n[rl]\ngamma = 7.0\nclip_coef = -1.0\n"));
    let status = setup
        .wait_for("/v1/status", 30, |s| s["config_reload_errors"] == 1)
        .await;
    let errors = status["config_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{status:#}");
    assert!(
        errors[0].as_str().unwrap().contains("config.toml:"),
        "{status:#}"
    );
    setup.write_config(&setup.config(Some(1), ""));

    // The next round runs with generations = 1. It is slow enough to be
    // killed in the middle.
    server.set_latency(Duration::from_millis(150));
    let before = server.requests();
    for idx in 12..24 {
        append(&setup.traces().join("agent.jsonl"), &controller_line(idx));
    }
    setup
        .wait_for("/v1/status", 60, |s| s["running"]["apo"]["id"].is_i64())
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.requests() < before + 6 {
        assert!(Instant::now() < deadline, "the round made no calls");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.0.kill().unwrap(); // SIGKILL
    daemon.0.wait().unwrap();

    // Restarted: the interrupted round resumes on the same episodes and
    // settings, finding the calls it paid for in the cache.
    server.set_latency(Duration::from_millis(5));
    let mut daemon = setup.start();
    let rounds = setup
        .wait_for("/v1/rounds", 120, |r| succeeded(r, "apo") >= 2)
        .await;
    let resumed = rounds
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "apo" && r["attempts"] == 2)
        .unwrap_or_else(|| panic!("no resumed round: {rounds:#}"));
    assert_eq!(resumed["status"], "succeeded");
    assert_eq!(resumed["summary"]["generations"], 1, "{resumed:#}");
    // At most the calls in flight at the kill (llm.max_concurrency) are
    // made again.
    assert!(
        server.repeated_requests() <= 2,
        "{} calls repeated",
        server.repeated_requests()
    );

    // A PPO update on new tool episodes runs with the reward plugin loaded
    // since the first one.
    for idx in 12..24 {
        append(&tools, &tool_line(idx));
    }
    let rounds = setup
        .wait_for("/v1/rounds", 120, |r| succeeded(r, "rl") >= 2)
        .await;
    let newest_rl = rounds
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "rl" && r["status"] == "succeeded")
        .max_by_key(|r| r["id"].as_i64())
        .unwrap();
    assert_eq!(
        newest_rl["summary"]["plugin_rewards"][0]["plugin"], "tool_errors_reward",
        "{newest_rl:#}"
    );

    // SIGTERM: a clean exit, quickly.
    let pid = daemon.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let exit = wait_exit(&mut daemon.0, 10).await;
    assert!(exit.success(), "{exit:?}");

    // Every episode exactly once.
    let stats = Command::new(env!("CARGO_BIN_EXE_whetstone"))
        .args(["traces", "stats", "--json"])
        .current_dir(setup.dir.path())
        .output()
        .unwrap();
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["episodes"], 48, "{stats:#}");
}

/// Serves `n` requests as an agent would: asks the daemon which version of
/// the Controller prompt to use for each user, runs, and writes the run with
/// the version it got. Success and safety rates depend on the version.
async fn serve_requests(
    setup: &Setup,
    first: usize,
    n: usize,
    rates: &dyn Fn(&str) -> (f64, f64),
    rng: &mut whetstone::rng::Rng,
) {
    let mut lines = String::new();
    for idx in first..first + n {
        let resolved = setup
            .get(&format!("/v1/prompts/Controller/resolve?key=user-{idx}"))
            .await
            .expect("resolve answers");
        let version = resolved["version"].as_str().unwrap().to_string();
        let (success, safety) = rates(&version);
        let mut draw = |p: f64| f64::from(u8::from(rng.next_f64() < p));
        let line = json!({
            "id": format!("served-{idx:05}"),
            "prompt": {"name": "Controller", "version": version},
            "input": format!("request {idx}"),
            "steps": [{"kind": "llm", "name": "m", "llm": {"output_text": "ok"}}],
            "rewards": {"success": draw(success), "safety": draw(safety)},
        });
        lines.push_str(&format!("{line}\n"));
    }
    append(&setup.traces().join("served.jsonl"), &lines);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_rolls_out_an_apo_winner_stage_by_stage_and_rolls_back_a_breach() {
    let server = TestServer::start().await;
    let setup = Setup {
        dir: tempfile::tempdir().unwrap(),
        port: free_port(),
        base_url: server.base_url(),
    };
    fs::create_dir(setup.traces()).unwrap();
    let registry = "\n[registry]\nmetric = \"success\"\nmin_samples_per_arm = 30\n\
                    rollout_stages = [0.2, 0.5, 1.0]\nauto_rollout = true\n\
                    guardrails = [{ metric = \"safety\", max_drop = 0.05 }]\n";
    setup.write_config(&setup.config(None, registry));
    let _daemon = setup.start();
    setup
        .wait_for("/v1/status", 30, |s| {
            s["ingest"]["passes"].as_u64() > Some(0)
        })
        .await;
    for idx in 0..12 {
        append(&setup.traces().join("agent.jsonl"), &controller_line(idx));
    }
    // The APO round's winner becomes version 2, in a staged rollout against
    // the baseline (version 1).
    setup
        .wait_for("/v1/rounds", 120, |r| succeeded(r, "apo") >= 1)
        .await;
    // No further APO rounds while the agent serves traffic.
    let no_more_rounds = setup.config(None, registry).replace(
        "apo_min_new_episodes = 12",
        "apo_min_new_episodes = 0\napo_interval_secs = 0",
    );
    setup.write_config(&no_more_rounds);
    setup
        .wait_for("/v1/status", 30, |s| s["config_reloads"] == 1)
        .await;
    let data = setup.dir.path().join("data");
    let store = whetstone::store::Store::open(&data).unwrap();
    let test = store
        .running_ab_test("Controller")
        .unwrap()
        .expect("the daemon started a rollout of the APO winner");
    assert_eq!((test.control.as_str(), test.treatment.as_str()), ("1", "2"));
    assert_eq!(
        store
            .prompt_version("Controller", "2")
            .unwrap()
            .unwrap()
            .round_id,
        Some(1)
    );

    // The candidate is better and as safe: it passes stage by stage.
    let mut rng = whetstone::rng::Rng::new(11);
    let better = |version: &str| {
        if version == "2" {
            (0.85, 0.95)
        } else {
            (0.45, 0.95)
        }
    };
    let mut served = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while store.running_ab_test("Controller").unwrap().is_some() {
        assert!(Instant::now() < deadline, "the rollout never ended");
        serve_requests(&setup, served, 60, &better, &mut rng).await;
        served += 60;
        let expected = served as u64;
        setup
            .wait_for("/v1/status", 30, |s| {
                s["ingest"]["episodes_new"].as_u64() >= Some(12 + expected)
            })
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let audit = store.registry_audit("Controller", 50).unwrap();
    let trail: Vec<String> = audit
        .iter()
        .rev()
        .map(|a| format!("{}: {}", a.action, a.detail))
        .collect();
    let stages: Vec<&String> = trail.iter().filter(|t| t.starts_with("rollout")).collect();
    assert_eq!(stages.len(), 2, "{trail:#?}");
    assert!(
        stages[0].contains("stage 1, 50%") && stages[1].contains("stage 2, 100%"),
        "{trail:#?}"
    );
    assert!(trail.last().unwrap().contains("winner 2"), "{trail:#?}");
    assert_eq!(
        setup
            .get("/v1/prompts/Controller/resolve?key=anyone")
            .await
            .unwrap()["version"],
        "2"
    );

    // A hand-registered version 3 that is less safe: the daemon rolls it back.
    let candidate = setup.dir.path().join("v3.txt");
    fs::write(&candidate, "You are the Controller. Answer at any cost.").unwrap();
    for args in [
        vec![
            "prompts",
            "register",
            "Controller",
            "v3.txt",
            "--parent",
            "2",
        ],
        vec!["prompts", "rollout", "Controller", "3"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_whetstone"))
            .args(&args)
            .current_dir(setup.dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let unsafe_candidate = |version: &str| {
        if version == "3" {
            (0.9, 0.5)
        } else {
            (0.85, 0.95)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while store.running_ab_test("Controller").unwrap().is_some() {
        assert!(Instant::now() < deadline, "the breach was never acted on");
        serve_requests(&setup, served, 60, &unsafe_candidate, &mut rng).await;
        served += 60;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let last = &store.registry_audit("Controller", 1).unwrap()[0];
    assert_eq!(last.actor, "daemon");
    assert!(
        last.detail.contains("guardrail `safety` breached"),
        "{last:?}"
    );
    assert_eq!(
        setup
            .get("/v1/prompts/Controller/resolve?key=anyone")
            .await
            .unwrap()["version"],
        "2"
    );
}

/// Issue 18: a store error in one of the daemon's own steps (here another
/// process holding the database's write lock for longer than
/// `daemon.store_busy_timeout_secs` when an APO round is due) used to end
/// the daemon through `?`. It must keep running, report the error in
/// `/v1/status`, and start the round once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_is_reported_and_the_daemon_keeps_running() {
    let server = TestServer::start().await;
    let setup = Setup {
        dir: tempfile::tempdir().unwrap(),
        port: free_port(),
        base_url: server.base_url(),
    };
    fs::create_dir(setup.traces()).unwrap();
    let config = |apo_min_new_episodes: u64| {
        setup
            .config(Some(1), "")
            .replace(
                "rl_min_new_decisions = 20",
                "rl_min_new_decisions = 0\nstore_busy_timeout_secs = 1",
            )
            .replace(
                "apo_min_new_episodes = 12",
                &format!("apo_min_new_episodes = {apo_min_new_episodes}\napo_interval_secs = 0"),
            )
    };
    setup.write_config(&config(0));
    let mut daemon = setup.start();
    let live = setup.traces().join("agent.jsonl");
    for idx in 0..12 {
        append(&live, &controller_line(idx));
    }
    setup
        .wait_for("/v1/status", 30, |s| s["ingest"]["episodes_new"] == 12)
        .await;

    // Another process (this test) takes the write lock and keeps it.
    let db = rusqlite::Connection::open(setup.dir.path().join("data/whetstone.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    setup.write_config(&config(1));
    let status = setup
        .wait_for("/v1/status", 30, |s| s["store_error"].is_string())
        .await;
    assert!(
        status["store_error"]
            .as_str()
            .unwrap()
            .contains("database is locked"),
        "{status:#}"
    );
    // Still running, serving, and reporting after retries.
    let status = setup
        .wait_for("/v1/status", 30, |s| s["store_errors"].as_u64() >= Some(2))
        .await;
    assert!(status["store_error"].is_string(), "{status:#}");
    assert!(daemon.0.try_wait().unwrap().is_none(), "the daemon exited");
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", setup.port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("whetstone_store_errors_total"),
        "{metrics}"
    );

    // The lock goes: the round starts and runs, and the error clears.
    db.execute_batch("COMMIT").unwrap();
    drop(db);
    setup
        .wait_for("/v1/rounds", 60, |r| succeeded(r, "apo") >= 1)
        .await;
    setup
        .wait_for("/v1/status", 10, |s| s["store_error"].is_null())
        .await;
}
