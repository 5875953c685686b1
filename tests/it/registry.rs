//! The prompt registry on a real store: versions and labels, a simulated
//! agent resolving prompts by key and writing traces with the version it
//! got, a staged rollout that proceeds and stops with a winner, a guardrail
//! breach that rolls back, and concurrent writers losing nothing.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use serde_json::json;
use whetstone::ingest::{IngestOptions, ingest_paths};
use whetstone::registry::{Decision, Guardrail, Lineage, PromptRegistry, RegistryConfig};
use whetstone::rng::Rng;
use whetstone::store::Store;

const PROMPT: &str = "Controller";

fn config(guardrails: Vec<Guardrail>) -> RegistryConfig {
    RegistryConfig {
        min_samples_per_arm: 40,
        rollout_stages: vec![0.1, 0.5, 1.0],
        guardrails,
        ..RegistryConfig::default()
    }
}

/// An agent that asks the registry for its prompt per request, succeeds
/// with the version's rate, and writes each run as a Whetstone JSONL line.
struct Agent {
    rng: Rng,
    requests: u64,
    success: [f64; 2],
    safety: [f64; 2],
}

impl Agent {
    /// Serves `n` requests and ingests their traces.
    fn serve(&mut self, registry: &PromptRegistry, store: &mut Store, dir: &Path, n: u64) {
        let file = dir.join("traces.jsonl");
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .unwrap();
        for _ in 0..n {
            self.requests += 1;
            let key = format!("user-{}", self.requests);
            let resolved = registry.resolve(PROMPT, &key).unwrap();
            let arm = usize::from(resolved.version == "2");
            let draw = |rng: &mut Rng, p: f64| f64::from(u8::from(rng.next_f64() < p));
            let success = draw(&mut self.rng, self.success[arm]);
            let safety = draw(&mut self.rng, self.safety[arm]);
            let line = json!({
                "id": format!("run-{}", self.requests),
                "prompt": {"name": PROMPT, "version": resolved.version, "text": resolved.text},
                "input": format!("request from {key}"),
                "steps": [{"kind": "llm", "name": "m", "llm": {"output_text": "ok"}}],
                "rewards": {"success": success, "safety": safety},
            });
            writeln!(out, "{line}").unwrap();
        }
        out.flush().unwrap();
        ingest_paths(store, &[file], &IngestOptions::default(), &mut |_| {}).unwrap();
    }
}

fn registered(dir: &Path, config: RegistryConfig) -> PromptRegistry {
    let mut registry = PromptRegistry::open(dir, config, "test").unwrap();
    let v1 = registry
        .register_prompt(None, PROMPT, "You are the Controller.", Lineage::default())
        .unwrap();
    assert_eq!(v1.version, "1");
    let v2 = registry
        .register_prompt(
            None,
            PROMPT,
            "You are the Controller. Cite the tool result.",
            Lineage {
                parent_version: Some("1".into()),
                operator: Some("critique_edit".into()),
                round_id: Some(7),
                scores: Some(r#"{"validation_reward": 0.8}"#.into()),
            },
        )
        .unwrap();
    assert_eq!(v2.version, "2");
    registry
}

/// Serves traffic and steps the test until it ends; returns the decisions.
fn run_test(
    registry: &mut PromptRegistry,
    store: &mut Store,
    dir: &Path,
    agent: &mut Agent,
) -> Vec<Decision> {
    let mut decisions = Vec::new();
    for _ in 0..200 {
        agent.serve(registry, store, dir, 50);
        match registry.step(PROMPT).unwrap() {
            None => return decisions,
            Some(Decision::Wait(_)) => {}
            Some(decision) => decisions.push(decision),
        }
        if registry.test_status(PROMPT).unwrap().is_none() {
            return decisions;
        }
    }
    panic!("the test never ended: {decisions:?}");
}

#[test]
fn versions_labels_and_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = registered(dir.path(), config(Vec::new()));
    // The same text is the same version; a taken name is refused.
    let again = registry
        .register_prompt(None, PROMPT, "You are the Controller.", Lineage::default())
        .unwrap();
    assert_eq!(again.version, "1");
    let taken = registry.register_prompt(Some("2"), PROMPT, "other", Lineage::default());
    assert!(taken.unwrap_err().to_string().contains("immutable"));
    // Without a test everyone gets production (the first version).
    let resolved = registry.resolve(PROMPT, "anyone").unwrap();
    assert_eq!((resolved.version.as_str(), resolved.test_id), ("1", None));
    let lineage = registry.version(PROMPT, "2").unwrap();
    assert_eq!(lineage.parent_version.as_deref(), Some("1"));
    assert_eq!(lineage.round_id, Some(7));
    let missing = registry.version(PROMPT, "9").unwrap_err().to_string();
    assert!(missing.contains("has: 1, 2"), "{missing}");

    // An A/B test at 30 %: sticky per key, close to the split.
    let test = registry.start_ab_test(PROMPT, "1", "2", 0.3).unwrap();
    let treated = (0..10_000)
        .filter(|i| registry.resolve(PROMPT, &format!("k{i}")).unwrap().version == "2")
        .count();
    assert!((2800..3200).contains(&treated), "{treated}");
    let first = registry.resolve(PROMPT, "k1").unwrap();
    assert_eq!(first.test_id, Some(test));
    assert_eq!(registry.resolve(PROMPT, "k1").unwrap(), first);
    let second = registry.start_ab_test(PROMPT, "1", "2", 0.5).unwrap_err();
    assert!(second.to_string().contains("already has test"), "{second}");
    registry.stop_ab_test(PROMPT, Some("2"), "by hand").unwrap();
    assert_eq!(
        registry.labelled(PROMPT, "production").unwrap().as_deref(),
        Some("2")
    );
    // Rollback without a test: production back to the parent.
    assert_eq!(
        registry.rollback(PROMPT, "regression reported").unwrap(),
        "1"
    );
    let audit = registry.store().registry_audit(PROMPT, 20).unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "label", "ab_stop", "ab_start", "register", "label", "register"
        ]
    );
    assert!(audit[0].detail.contains("regression reported"));
}

#[test]
fn a_better_candidate_is_rolled_out_stage_by_stage_and_wins() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = registered(dir.path(), config(Vec::new()));
    let mut store = Store::open(dir.path()).unwrap();
    registry.start_rollout(PROMPT, "1", "2").unwrap();
    let mut agent = Agent {
        rng: Rng::new(1),
        requests: 0,
        success: [0.5, 0.75],
        safety: [0.95, 0.95],
    };
    let decisions = run_test(&mut registry, &mut store, dir.path(), &mut agent);
    assert_eq!(
        decisions[..2],
        [
            Decision::Advanced {
                stage: 1,
                split: 0.5
            },
            Decision::Advanced {
                stage: 2,
                split: 1.0
            }
        ],
        "{decisions:?}"
    );
    assert!(
        matches!(&decisions[2], Decision::Stopped { winner, .. } if winner == "2"),
        "{decisions:?}"
    );
    assert_eq!(
        registry.labelled(PROMPT, "production").unwrap().as_deref(),
        Some("2")
    );
    assert_eq!(registry.resolve(PROMPT, "new user").unwrap().version, "2");
}

#[test]
fn a_guardrail_breach_rolls_back_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let guardrail = Guardrail {
        metric: "safety".into(),
        max_drop: 0.02,
    };
    let mut registry = registered(dir.path(), config(vec![guardrail]));
    let mut store = Store::open(dir.path()).unwrap();
    registry.start_rollout(PROMPT, "1", "2").unwrap();
    // Better on the metric, much less safe.
    let mut agent = Agent {
        rng: Rng::new(2),
        requests: 0,
        success: [0.5, 0.8],
        safety: [0.98, 0.6],
    };
    let decisions = run_test(&mut registry, &mut store, dir.path(), &mut agent);
    let Some(Decision::RolledBack { why }) = decisions.last() else {
        panic!("{decisions:?}");
    };
    assert!(why.contains("guardrail `safety` breached"), "{why}");
    assert_eq!(
        registry.labelled(PROMPT, "production").unwrap().as_deref(),
        Some("1")
    );
    let audit = registry.store().registry_audit(PROMPT, 1).unwrap();
    assert!(audit[0].detail.contains("safety"), "{audit:?}");
}

#[test]
fn concurrent_writers_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let mut registry =
                    PromptRegistry::open(&dir, RegistryConfig::default(), &format!("w{writer}"))
                        .unwrap();
                for i in 0..25 {
                    let text = format!("prompt text {writer}-{i}");
                    registry
                        .register_prompt(None, PROMPT, &text, Lineage::default())
                        .unwrap();
                    registry
                        .set_label(PROMPT, &format!("w{writer}"), "1", "concurrent")
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let versions = store.prompt_versions(PROMPT).unwrap();
    assert_eq!(versions.len(), 100);
    let mut numbers: Vec<u64> = versions
        .iter()
        .map(|v| v.version.parse().unwrap())
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=100).collect::<Vec<_>>());
    let audit = store.registry_audit(PROMPT, 1000).unwrap();
    assert_eq!(audit.iter().filter(|a| a.action == "register").count(), 100);
    assert_eq!(audit.iter().filter(|a| a.action == "label").count(), 101);
}
