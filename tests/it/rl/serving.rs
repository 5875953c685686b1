//! The daemon serves the promoted policy from memory and keeps its version
//! across restarts (issue 19: `policy_version: null` after every restart),
//! and SIGTERM in the middle of a PPO update exits within 10 s (issue 19:
//! the update ran on for 50 s).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use whetstone::rl::RlConfig;

use super::train_plain;
use super::world;
use crate::support::free_port;

struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_daemon_serves_its_promoted_version_and_sigterm_stops_ppo_quickly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A promoted policy, as an earlier daemon run left it in data/rl.
    let episodes = world::logged_otlp_episodes(&dir.join("logged"), 2000, 5);
    let report = train_plain(
        &episodes,
        &RlConfig::default(),
        &dir.join("out"),
        &dir.join("data/rl"),
    )
    .unwrap();
    assert!(report.promotion.promoted, "{:?}", report.promotion);
    let version = report.promotion.policy_version;
    // Its store becomes the daemon's: every decision in it is new to the
    // daemon, so a PPO round starts at once; a long one.
    std::fs::rename(
        dir.join("logged/store/whetstone.db"),
        dir.join("data/whetstone.db"),
    )
    .unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::rename(
            dir.join(format!("logged/store/whetstone.db{suffix}")),
            dir.join(format!("data/whetstone.db{suffix}")),
        );
    }
    std::fs::create_dir(dir.join("traces")).unwrap();
    let port = free_port();
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "data_dir = \"data\"\n[traces]\ndir = \"traces\"\n[daemon]\npoll_interval_secs = 1\n\
             rl_min_new_decisions = 20\napo_min_new_episodes = 0\napo_interval_secs = 0\n\
             [rl]\niterations_per_run = 100000\n[api]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    let mut daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_whetstone"))
            .arg("daemon")
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .env_remove("WHETSTONE_API_TOKEN")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        assert!(Instant::now() < deadline, "no PPO iteration within 120 s");
        if let Ok(response) = client.get(format!("{base}/v1/status")).send().await
            && let Ok(status) = response.json::<Value>().await
            && status["running"]["rl"]["progress"]
                .as_str()
                .is_some_and(|p| p.starts_with("PPO iteration"))
        {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status["policy_version"], json!(version), "{status:#}");

    let act: Value = client
        .post(format!("{base}/v1/policy/act"))
        .json(&json!({"input": "What's the weather in Berlin?"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(act["policy_version"], json!(version), "{act:#}");
    assert!(
        act["decision_id"]
            .as_str()
            .is_some_and(|id| id.starts_with(&format!("{version}-"))),
        "{act:#}"
    );
    assert!(
        act["probability"]
            .as_f64()
            .is_some_and(|p| p > 0.0 && p <= 1.0)
    );

    let sent = Instant::now();
    Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status()
        .unwrap();
    let exit = loop {
        if let Some(exit) = daemon.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "the daemon did not exit within 10 s of SIGTERM during a PPO update"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");
    // The interrupted update left the checkpoint as it was.
    let state = whetstone::rl::checkpoint::read_state(&dir.join("data/rl"))
        .unwrap()
        .unwrap();
    assert_eq!(state.promoted_version, version);
    assert_eq!(state.runs, 1);
}
