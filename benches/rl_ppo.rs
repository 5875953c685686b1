//! PPO update throughput: decisions × epochs per second of one PPO iteration
//! (V-trace targets, then `update_epochs` epochs of shuffled minibatch updates) on the
//! synthetic tool-choice episodes of the RL tests, with the default config.
//!
//! `WHETSTONE_BENCH_TRANSITIONS` sets the batch size (default 100000).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use whetstone::rl::batch::ActionSpace;
use whetstone::rl::behavior::FrozenBehavior;
use whetstone::rl::features::FeatureSpec;
use whetstone::rl::policy::Architecture;
use whetstone::rl::report::BehaviorSource;
use whetstone::rl::transitions::{EpisodeDecisions, extract};
use whetstone::rl::{RlConfig, ppo, train};
use whetstone::rng::Rng;

#[path = "../tests/it/rl/synthetic.rs"]
mod synthetic;

fn ppo_update(c: &mut Criterion) {
    let n: usize = std::env::var("WHETSTONE_BENCH_TRANSITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let cfg = RlConfig::default();
    let episodes = synthetic::episodes(n, 1);
    let extraction = extract(&episodes, &cfg);
    let spec = FeatureSpec {
        text_hash_dim: cfg.text_hash_dim,
        action_hash_dim: cfg.action_hash_dim,
    };
    let architecture = Architecture {
        features: spec,
        hidden_dim: cfg.hidden_dim,
    };
    let space = ActionSpace::new(&extraction.tools, spec).unwrap();
    let mut checkpoint = train::fresh(architecture, &cfg).unwrap();
    let decisions: Vec<&EpisodeDecisions> = extraction.episodes.iter().collect();
    let mut behavior = BehaviorSource {
        trace: 0,
        policy_snapshot: 0,
        frozen_earlier: 0,
        snapshot_policy_version: 0,
        served_decisions: 0,
    };
    let data = train::training_data(
        &decisions,
        &space,
        spec,
        &checkpoint.promoted,
        &mut FrozenBehavior::default(),
        &mut behavior,
    )
    .unwrap();
    let mut rng = Rng::new(7);

    let mut group = c.benchmark_group("rl_ppo");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(
        (data.batch.len() * cfg.update_epochs) as u64,
    ));
    group.bench_function(format!("iteration/{}_decisions", data.batch.len()), |b| {
        b.iter(|| {
            black_box(
                ppo::iterate(
                    &checkpoint.learner,
                    &mut checkpoint.adam,
                    &mut rng,
                    &data,
                    &cfg,
                    &|| false,
                )
                .unwrap(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, ppo_update);
criterion_main!(benches);
