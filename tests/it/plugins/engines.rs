//! Plugins at work in the engines: a mutator plugin as an APO operator, a
//! reward plugin as APO's scorer, and a reward plugin shaping what PPO
//! learns. Each test loads the real example components from a plugins
//! folder, the way `train` and the daemon do.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use whetstone::apo::{self, ApoConfig, ApoSummary, OPERATOR_NAMES, ScorerConfig};
use whetstone::llm::{Backoff, LlmClient};
use whetstone::plugin::{Limits, PluginSet, Plugins};
use whetstone::rl::{RlConfig, train};
use whetstone::rng::Rng;
use whetstone::trace::{Episode, LlmCall, PolicyChoice, RequestedToolCall, Source, Step, ToolCall};

use super::{guests, host};
use crate::support::apo_world::{self, WorldServer};
use crate::support::{self, TestServer};

/// A plugins folder holding `plugins` (crate name, `NAME.toml` text),
/// loaded.
fn plugins_folder(dir: &Path, plugins: &[(&str, &str)]) -> Plugins {
    for (crate_name, manifest) in plugins {
        std::fs::copy(
            guests::wasm(crate_name),
            dir.join(format!("{crate_name}.wasm")),
        )
        .unwrap();
        if !manifest.is_empty() {
            std::fs::write(dir.join(format!("{crate_name}.toml")), manifest).unwrap();
        }
    }
    let set = PluginSet::new(host(4), dir.to_path_buf(), Limits::default());
    let report = set.reload();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    set.current()
}

/// APO over `episodes` with `plugins` against the server of `settings`,
/// writing into `out`.
async fn run_apo(
    episodes: &[Episode],
    cfg: &ApoConfig,
    settings: whetstone::config::LlmConfig,
    plugins: &Plugins,
    out: &Path,
) -> anyhow::Result<ApoSummary> {
    let llm = LlmClient::new(settings).unwrap().with_backoff(Backoff {
        base: Duration::from_millis(5),
        max: Duration::from_millis(50),
    });
    let conn = Connection::open_in_memory().unwrap();
    apo::run(episodes, cfg, &llm, plugins, &conn, out, |_| {}).await
}

/// Only the mutator plugin runs (every built-in operator at weight 0), on
/// the APO benchmark world with its judge: the plugin turns the judge's
/// feedback into constraints, its children are in `all_variants.json`
/// under its operator name, and they raise the prompt's true quality.
#[tokio::test]
async fn a_mutator_plugin_is_an_apo_operator_that_improves_the_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_folder(dir.path(), &[("constraint_mutator", "")]);
    let server = WorldServer::start(7).await;
    let mut weights: BTreeMap<String, f64> = OPERATOR_NAMES
        .iter()
        .map(|name| (name.to_string(), 0.0))
        .collect();
    weights.insert("plugin:constraint_mutator".into(), 1.0);
    let cfg = ApoConfig {
        target_prompt: apo_world::PROMPT_NAME.into(),
        children_per_generation: 2,
        generations: Some(6),
        operator_weights: weights,
        min_validation_examples: 4,
        ..ApoConfig::default()
    };
    let out = dir.path().join("out");
    let summary = run_apo(
        &apo_world::episodes(),
        &cfg,
        server.settings(),
        &plugins,
        &out,
    )
    .await
    .unwrap();

    let all: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("all_variants.json")).unwrap()).unwrap();
    let from_plugin: Vec<&serde_json::Value> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|variant| variant["operator"] == "plugin:constraint_mutator")
        .collect();
    assert!(!from_plugin.is_empty(), "{all:#}");
    assert!(
        from_plugin
            .iter()
            .any(|variant| variant["status"] == "evaluated"),
        "no plugin child was accepted: {all:#}"
    );
    let operator = summary
        .operators
        .iter()
        .find(|op| op.name == "plugin:constraint_mutator")
        .unwrap();
    assert!(operator.improvements > 0, "{operator:?}");
    // Mutators cost no LLM call: every rewriter call is zero.
    assert_eq!(summary.rewriter_calls, 0);
    let (baseline, best) = (
        apo_world::true_score(apo_world::BASELINE),
        apo_world::true_score(&summary.best_prompt),
    );
    assert!(
        best > baseline + 0.05,
        "true quality {baseline:.3} -> {best:.3}:\n{}",
        summary.best_prompt
    );
}

/// The reward plugin alone scores replays (`plugin_score_weight` 1): no
/// judge call is made, no reference answer is needed, and APO finds the
/// instruction that keeps answers within the plugin's length budget.
#[tokio::test]
async fn a_reward_plugin_alone_scores_apo_replays_without_a_judge() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_folder(
        dir.path(),
        &[("tool_errors_reward", "[settings]\nmax_answer_chars = 80\n")],
    );
    let server = TestServer::start().await;
    let cfg = ApoConfig {
        baseline_prompt_file: Some(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts/controller.txt"),
        ),
        generations: Some(3),
        children_per_generation: 2,
        scorer: ScorerConfig::LlmJudge { rubric_file: None },
        plugin_score_weight: 1.0,
        ..ApoConfig::default()
    };
    let out = dir.path().join("out");
    let summary = run_apo(
        &support::episodes(24),
        &cfg,
        server.settings(),
        &plugins,
        &out,
    )
    .await
    .unwrap();
    assert_eq!(server.requests_for("judge-model"), 0);
    assert_eq!(summary.judge_calls, 0);
    assert_eq!(summary.scorer, "1.00 × plugins (tool_errors_reward)");
    // The baseline's long answers break the 80-character budget
    // (answer_length 0, tool_success 1); one sentence keeps to it.
    assert_eq!(summary.baseline_reward, Some(0.5), "{summary:#?}");
    assert_eq!(summary.optimized_reward, Some(1.0), "{summary:#?}");
    assert!(
        summary
            .best_prompt
            .to_lowercase()
            .contains(support::ONE_SENTENCE),
        "{}",
        summary.best_prompt
    );
}

/// Without a reward plugin configured, a plugin score weight is an error
/// that says what is missing.
#[tokio::test]
async fn a_plugin_score_weight_without_reward_plugins_is_refused() {
    let server = TestServer::start().await;
    let cfg = ApoConfig {
        plugin_score_weight: 0.5,
        scorer: ScorerConfig::F1,
        ..ApoConfig::default()
    };
    let out = tempfile::tempdir().unwrap();
    let err = run_apo(
        &support::episodes(24),
        &cfg,
        server.settings(),
        &Plugins::none(),
        out.path(),
    )
    .await
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("apo.plugin_score_weight is 0.5 but no reward plugin is loaded"),
        "{err}"
    );
}

/// PPO over `episodes` with `plugins`, writing into `dir` (`out/`, `rl/`).
fn train_in(
    dir: &Path,
    episodes: &[Episode],
    cfg: &RlConfig,
    plugins: &Plugins,
) -> whetstone::rl::TrainReport {
    train(
        episodes,
        cfg,
        plugins,
        &dir.join("out"),
        &dir.join("rl"),
        &mut |_| {},
    )
    .unwrap()
}

const RELIABLE: &str = "weather_api";
const FLAKY: &str = "weather_scraper";

/// Weather questions for which the agent calls one of two tools, drawn
/// 50/50 and logged, and then hands over to a human. The scraper fails 60 %
/// of the time, yet every episode's trace reward is the same 1.0: the trace
/// alone cannot tell the tools apart.
pub(super) fn weather_episodes(n: usize, seed: u64) -> Vec<Episode> {
    let cities = ["Paris", "Oslo", "Lima", "Cairo", "Tokyo", "Perth"];
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|idx| {
            let city = cities[rng.below(cities.len())];
            let tool = if rng.next_f64() < 0.5 {
                RELIABLE
            } else {
                FLAKY
            };
            let failed = tool == FLAKY && rng.next_f64() < 0.6;
            let question = format!("What is the weather in {city}?");
            let policy = |probability: f64| {
                Some(PolicyChoice {
                    version: None,
                    probability,
                    decision_id: None,
                })
            };
            let ask = Step::llm(
                "model",
                LlmCall {
                    tools_available: vec![RELIABLE.into(), FLAKY.into()],
                    tool_calls: vec![RequestedToolCall {
                        id: None,
                        name: tool.into(),
                        arguments: serde_json::json!({"city": city}),
                    }],
                    ..LlmCall::default()
                },
            );
            let call = Step {
                error: failed,
                ..Step::tool(
                    tool,
                    ToolCall {
                        policy: policy(0.5),
                        ..ToolCall::default()
                    },
                )
            };
            let source = Source {
                file: "weather.jsonl".into(),
                line: idx as u64 + 1,
            };
            Episode {
                input: Some(question),
                rewards: BTreeMap::from([("success".to_string(), 1.0)]),
                ..Episode::new(format!("weather-{idx:04}"), vec![ask, call], source)
            }
        })
        .collect()
}

/// The tool-errors reward plugin adds `tool_success` to each episode's
/// reward: trained on the same episodes, the policy moves from
/// indifference to the reliable tool, and the report says what the plugin
/// added.
#[test]
fn a_reward_plugin_changes_the_learned_policy() {
    let dir = tempfile::tempdir().unwrap();
    let plugins_dir = dir.path().join("plugins");
    std::fs::create_dir(&plugins_dir).unwrap();
    let plugins = plugins_folder(&plugins_dir, &[("tool_errors_reward", "weight = 2.0\n")]);
    let episodes = weather_episodes(600, 5);
    // Without the KL stop, as this test was calibrated (the trust region
    // slows how far 15 iterations move the policy).
    let cfg = RlConfig {
        iterations_per_run: 15,
        target_kl: None,
        ..RlConfig::default()
    };
    let preference = |name: &str, plugins: &Plugins| {
        let report = train_in(&dir.path().join(name), &episodes, &cfg, plugins);
        assert!(report.episodes.skipped.is_empty(), "{:?}", report.episodes);
        let learned = |tool: &str| report.actions[tool].learned_probability;
        (learned(RELIABLE) - learned(FLAKY), report)
    };
    let (without, _) = preference("trace-only", &Plugins::none());
    let (with, report) = preference("with-plugin", &plugins);
    eprintln!("reliable minus flaky probability: trace only {without:.3}, with plugin {with:.3}");
    assert!(
        without.abs() < 0.1,
        "trace rewards alone prefer a tool: {without:.3}"
    );
    assert!(
        with > 0.25,
        "the plugin's reward did not move the policy: {with:.3}"
    );

    let stats = &report.plugin_rewards;
    assert_eq!(stats.len(), 1, "{stats:?}");
    assert_eq!(stats[0].plugin, "tool_errors_reward");
    assert_eq!(stats[0].weight, 2.0);
    assert_eq!((stats[0].scored, stats[0].failed), (600, 0));
    // tool_success (1, or 0 on a failure) plus answer_length (0: no
    // answer), times 2: about 2 × (1 − 0.5 × 0.6).
    let mean = stats[0].mean_reward.unwrap();
    assert!((1.2..1.6).contains(&mean), "{mean}");
}

/// `rl.plugin_reward_weights` overrides the manifest weight, and 0 leaves
/// the plugin out.
#[test]
fn a_zero_plugin_reward_weight_leaves_the_plugin_out() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_folder(dir.path(), &[("tool_errors_reward", "")]);
    let cfg = RlConfig {
        iterations_per_run: 1,
        plugin_reward_weights: BTreeMap::from([("tool_errors_reward".to_string(), 0.0)]),
        ..RlConfig::default()
    };
    let report = train_in(dir.path(), &weather_episodes(50, 1), &cfg, &plugins);
    assert!(
        report.plugin_rewards.is_empty(),
        "{:?}",
        report.plugin_rewards
    );
}

/// A reward plugin that fails (here, panics) on an episode gets that
/// episode skipped, not trained on with part of its reward missing; the
/// report names the plugin, counts its failures and quotes the first.
#[test]
fn episodes_a_reward_plugin_fails_on_are_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_folder(
        dir.path(),
        &[("tool_errors_reward", ""), ("hostile_panic", "")],
    );
    let cfg = RlConfig {
        iterations_per_run: 1,
        ..RlConfig::default()
    };
    let report = train_in(dir.path(), &weather_episodes(40, 2), &cfg, &plugins);
    assert_eq!(report.episodes.used, 0, "{:?}", report.episodes);
    assert_eq!(report.episodes.skipped["plugin_reward_failed"], 40);
    let by_name: BTreeMap<&str, _> = report
        .plugin_rewards
        .iter()
        .map(|stats| (stats.plugin.as_str(), stats))
        .collect();
    assert_eq!(
        (
            by_name["hostile_panic"].scored,
            by_name["hostile_panic"].failed
        ),
        (0, 40)
    );
    let first = by_name["hostile_panic"].first_error.as_deref().unwrap();
    assert!(first.contains("plugin `hostile_panic`"), "{first}");
    assert!(
        first.contains("hostile plugin panicked on purpose"),
        "{first}"
    );
    assert_eq!(by_name["tool_errors_reward"].scored, 40);
}
