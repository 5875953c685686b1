//! The sample traces shipped in `traces/` — what the README's first command
//! (`whetstone daemon --once` on the embedded defaults) learns from — are
//! this world's logged episodes, exported as OTLP/JSON. This test keeps the
//! file and the world in step; `WHETSTONE_UPDATE_SAMPLES=1 cargo test
//! samples` writes it anew after the world changes.

use std::path::Path;

use super::world;

/// Episodes in the sample: enough for PPO to learn from (about a thousand
/// decisions), small enough to ship.
const SAMPLE_EPISODES: usize = 1000;
const SAMPLE_SEED: u64 = 2026;

#[test]
fn shipped_sample_traces_are_the_worlds_logged_episodes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces/sample_agent.jsonl");
    let episodes = world::logged_episodes(SAMPLE_EPISODES, SAMPLE_SEED);
    if std::env::var_os("WHETSTONE_UPDATE_SAMPLES").is_some() {
        world::write_otlp(&path, &episodes, SAMPLE_SEED);
    }
    let expected: String = episodes
        .iter()
        .enumerate()
        .map(|(idx, episode)| world::otlp_line(episode, SAMPLE_SEED, idx) + "\n")
        .collect();
    let shipped = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        shipped == expected,
        "{} is not the world's current sample; regenerate it with \
         WHETSTONE_UPDATE_SAMPLES=1 cargo test samples",
        path.display()
    );
}
