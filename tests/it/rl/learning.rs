//! The learner actually learns (issue 9): on the synthetic world's logged
//! OTLP traces, the default run's greedy policy beats the logging policy by a
//! clear margin and reaches 90 % of the best value any policy over (task
//! text, previous tool, previous error, step) can reach, on tasks it never
//! saw.

use whetstone::rl::RlConfig;

use super::train_plain;
use super::world::{self, HeldOut};

#[test]
fn default_run_beats_the_logging_policy_and_nears_the_optimum() {
    let tmp = tempfile::tempdir().unwrap();
    let episodes = world::logged_otlp_episodes(tmp.path(), 4000, 1);
    assert_eq!(episodes.len(), 4000);
    let checkpoint_dir = tmp.path().join("rl");
    let report = train_plain(
        &episodes,
        &RlConfig::default(),
        &tmp.path().join("out"),
        &checkpoint_dir,
    )
    .unwrap();
    assert!(report.episodes.skipped.is_empty(), "{:?}", report.episodes);
    let source = &report.behavior_probability_source;
    assert_eq!(
        source.policy_snapshot + source.frozen_earlier,
        0,
        "{source:?}"
    );

    let held_out = HeldOut::new(300, 99);
    let ceiling = held_out.ceiling();
    let logging = held_out.score_fn(world::logging_policy, false);
    let uniform = held_out.score_fn(|_, _| [1.0 / 6.0; 6], false);
    let learned = held_out.score(
        &world::learned_probabilities(&checkpoint_dir, &held_out),
        true,
    );
    eprintln!(
        "ceiling {ceiling:.3}, logging {logging:?}, uniform {uniform:?}, learned greedy {learned:?}, promotion {:?}, ope {:?}",
        report.promotion, report.off_policy_evaluation
    );
    assert!(
        learned.value > logging.value + 0.1,
        "greedy value {} vs logging {}",
        learned.value,
        logging.value
    );
    assert!(
        learned.value >= 0.9 * ceiling,
        "greedy value {} < 90% of the ceiling {ceiling}",
        learned.value
    );
    assert!(report.promotion.promoted, "{:?}", report.promotion);
}
