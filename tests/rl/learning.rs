//! The learner actually learns: on synthetic logged data with a known best
//! action per task, the trained greedy policy is right on unseen tasks and
//! its off-policy value beats the logging policy's.

use whetstone::rl::{ActRequest, RlConfig, act, train};
use whetstone::rng::Rng;

use crate::synthetic;

#[test]
fn learns_the_best_tool_per_task_from_uniform_logs() {
    let episodes = synthetic::episodes(1200, 11);
    let dir = tempfile::tempdir().unwrap();
    let cfg = RlConfig::default();
    let report = train(
        &episodes,
        &cfg,
        &dir.path().join("out"),
        &dir.path().join("rl"),
    )
    .unwrap();

    assert!(report.promotion.promoted, "{:?}", report.promotion);
    assert!(report.episodes.skipped.is_empty());
    // Tool calls carry their probability; answers without a tool do not.
    let source = &report.behavior_probability_source;
    assert!(source.trace > 0 && source.policy_snapshot > 0, "{source:?}");
    assert_eq!(source.trace + source.policy_snapshot, report.episodes.used);

    let ope = report.off_policy_evaluation.as_ref().unwrap();
    assert!(ope.held_out_episodes > 100, "{ope:?}");
    assert!(
        ope.candidate.ips > ope.logging_policy_value + 0.05,
        "candidate IPS {} vs logging {}",
        ope.candidate.ips,
        ope.logging_policy_value
    );
    assert!(ope.candidate.snips > ope.current.snips);

    let mut rng = Rng::new(99);
    let n = 300;
    let mut correct = 0;
    for _ in 0..n {
        let (input, best) = synthetic::task(&mut rng, true);
        let ranked = act(
            &dir.path().join("rl"),
            &ActRequest {
                input,
                ..ActRequest::default()
            },
        )
        .unwrap();
        assert_eq!(ranked.len(), 4);
        assert!((ranked.iter().map(|(_, p)| p).sum::<f64>() - 1.0).abs() < 1e-5);
        if ranked[0].0 == best {
            correct += 1;
        }
    }
    let accuracy = correct as f64 / n as f64;
    assert!(
        accuracy >= 0.95,
        "greedy accuracy on held-out tasks {accuracy}"
    );

    let written: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/learned_policy.json")).unwrap(),
    )
    .unwrap();
    for key in [
        "actions",
        "policy_entropy",
        "training",
        "off_policy_evaluation",
        "promotion",
        "behavior_probability_source",
    ] {
        assert!(
            written.get(key).is_some(),
            "learned_policy.json lacks {key}"
        );
    }
    assert!(
        written["actions"]["get_weather"]["usage_frequency"]
            .as_f64()
            .unwrap()
            > 0.15
    );
    assert!(dir.path().join("out/policy.safetensors").exists());
}
