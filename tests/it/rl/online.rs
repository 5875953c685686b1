//! The online loop (issue 23, items 5–7): an agent asks the served policy
//! at every decision of the multi-step, noisy tool world, logs what it was
//! given (probability, policy version, decision id) as OTLP traces, and
//! rounds of warm-started PPO at the default `[rl]` settings (but `target_kl = 0.03`) run on what it
//! logged. Nothing non-finite may appear, nothing is served before a gated
//! promotion, and once something is served its true value is at least the
//! logging policy's and never falls. (Before the trust region, the KL per
//! update reached 1e22 by the fourth round and the run turned NaN.)

use std::time::Instant;

use whetstone::plugin::Plugins;
use whetstone::rl::sample::training_episodes;
use whetstone::rl::{RlConfig, ServedPolicy, train};
use whetstone::rng::Rng;
use whetstone::store::Store;

use super::world::{self, HeldOut, LoggedEpisode, Served};

/// Rounds of the loop.
const ROUNDS: usize = 5;
/// Agent runs between two rounds (about 500 decisions).
const RUNS_PER_ROUND: usize = 250;
/// Uniform noise on the logged final reward.
const REWARD_NOISE: f64 = 0.2;

/// What one round left behind, for the table in docs/BENCHMARKS.md.
#[derive(Debug)]
struct RoundRow {
    episodes_in_store: usize,
    training_decisions: usize,
    served_version: Option<u64>,
    served_value: Option<f64>,
    approx_kl: Vec<f64>,
    seconds: f64,
}

/// Runs the agent for a round: the served policy's decisions when one is
/// served, else its own (the logging policy).
fn agent_runs(rng: &mut Rng, served: Option<&ServedPolicy>, round: usize) -> Vec<LoggedEpisode> {
    let ids = std::cell::Cell::new(round as u64 * 1_000_000);
    let policy = |text: &str, obs: world::Obs| match served {
        None => (world::logging_policy(text, obs), None),
        Some(policy) => {
            ids.set(ids.get() + 1);
            let decision = policy
                .decide(world::request(text, obs), 0.0, ids.get())
                .unwrap();
            assert!(
                decision
                    .decision_id
                    .starts_with(&format!("{}-", policy.version()))
            );
            (
                world::in_action_order(&decision.probabilities),
                Some(Served {
                    policy_version: decision.policy_version,
                    decision_id: decision.decision_id,
                }),
            )
        }
    };
    (0..RUNS_PER_ROUND)
        .map(|_| world::simulate_with(rng, &policy, REWARD_NOISE))
        .collect()
}

#[test]
fn online_rounds_serve_only_gated_finite_policies_that_beat_logging_and_improve() {
    let tmp = tempfile::tempdir().unwrap();
    let traces = tmp.path().join("traces");
    let data_dir = tmp.path().join("store");
    let checkpoint_dir = data_dir.join("rl");
    std::fs::create_dir_all(&traces).unwrap();
    // Not yet the default (0.1): at 0.1 round 4's loss turns non-finite
    // (the run fails and keeps the checkpoint, nothing NaN is saved or
    // served, but the loop stops learning); at 0.03 the first-run sample
    // does not promote. Reconciling both is open work.
    let cfg = RlConfig {
        target_kl: Some(0.03),
        ..RlConfig::default()
    };
    let held_out = HeldOut::new(200, 99);
    let logging = held_out.score_fn(world::logging_policy, false).value;
    let ceiling = held_out.ceiling();
    let mut rng = Rng::new(11);
    let mut served: Option<ServedPolicy> = None;
    let mut rows: Vec<RoundRow> = Vec::new();
    for round in 0..ROUNDS {
        let runs = agent_runs(&mut rng, served.as_ref(), round);
        let file = traces.join(format!("agent-{round}.jsonl"));
        world::write_otlp(&file, &runs, 1000 + round as u64);
        world::ingest(&data_dir, &file);
        // The round the daemon runs: the bounded sample, then PPO.
        let started = Instant::now();
        let store = Store::open(&data_dir).unwrap();
        let (episodes, sample) = training_episodes(&store, i64::MAX, &cfg).unwrap();
        drop(store);
        let report = train(
            &episodes,
            &cfg,
            &Plugins::none(),
            &tmp.path().join("out"),
            &checkpoint_dir,
            &mut |_| {},
        )
        .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let kl: Vec<f64> = report.training.updates.iter().map(|u| u.kl).collect();
        assert!(
            kl.iter().all(|k| k.is_finite())
                && report.training.policy_loss.is_finite()
                && report.training.value_loss.is_finite(),
            "round {round}: non-finite training: {:?}",
            report.training
        );
        if let Some(evaluation) = &report.off_policy_evaluation {
            assert!(
                evaluation.candidate.snips.is_finite() && evaluation.current.snips.is_finite(),
                "round {round}: {evaluation:?}"
            );
        }

        let next = ServedPolicy::load(&checkpoint_dir);
        match (&next, report.promotion.policy_version) {
            (Err(err), 0) => assert!(
                err.to_string().contains("promotion gate"),
                "round {round}: {err:#}"
            ),
            (Ok(policy), version) => assert_eq!(policy.version(), version),
            (Err(err), version) => panic!("round {round}: version {version} not served: {err:#}"),
        }
        served = next.ok();
        let served_value = served.as_ref().map(|policy| {
            held_out
                .score(&world::served_probabilities(policy, &held_out), false)
                .value
        });
        rows.push(RoundRow {
            episodes_in_store: sample.episodes_considered as usize,
            training_decisions: report.episodes.training_decisions,
            served_version: served.as_ref().map(ServedPolicy::version),
            served_value,
            approx_kl: kl,
            seconds,
        });
        eprintln!(
            "round {round}: {:?} promotion {:?}",
            rows.last().unwrap(),
            report.promotion
        );
    }
    eprintln!("logging {logging:.3}, ceiling {ceiling:.3}");
    eprintln!(
        "| round | episodes in store | training decisions | served version | served true value | approx KL per update (first–last) | round time (s) |"
    );
    for (round, row) in rows.iter().enumerate() {
        eprintln!(
            "| {round} | {} | {} | {} | {} | {:.3}–{:.3} | {:.1} |",
            row.episodes_in_store,
            row.training_decisions,
            row.served_version.map_or("none".into(), |v| v.to_string()),
            row.served_value.map_or("—".into(), |v| format!("{v:.3}")),
            row.approx_kl.first().copied().unwrap_or(f64::NAN),
            row.approx_kl.last().copied().unwrap_or(f64::NAN),
            row.seconds
        );
    }

    let values: Vec<f64> = rows.iter().filter_map(|r| r.served_value).collect();
    assert!(!values.is_empty(), "nothing was ever promoted: {rows:?}");
    for value in &values {
        assert!(
            *value >= logging,
            "served {value:.3} below the logging policy's {logging:.3}: {rows:?}"
        );
    }
    // Once served, a policy is only ever replaced by one the gate found
    // better: the served value never falls.
    for pair in values.windows(2) {
        assert!(pair[1] >= pair[0] - 0.02, "served value fell: {values:?}");
    }
}
