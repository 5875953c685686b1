//! The bounded training sample of a run read from the store: recent
//! decisions first, plus a stratified replay of older ones, so a run's time
//! and memory depend on `rl.max_training_decisions`, not on the history.
//!
//! Decisions are counted as the store counts them for the triggers: each
//! tool call plus each episode's final answer. Of the bound, the share
//! `1 - rl.replay_fraction` goes to the newest episodes (read newest first
//! by the id index until it is full). The older episodes' id range is cut
//! into [`STRATA`] equal strata; each gets an equal share of the rest,
//! filled by reading its episodes in id order from a seeded random point in
//! the stratum (wrapping to its start). A store whose decisions fit the
//! bound is read whole. Warm-started online rounds thus train on the new
//! decisions plus a bounded replay of every period before them.

use std::ops::ControlFlow;

use anyhow::Result;
use serde::Serialize;

use super::config::RlConfig;
use crate::rng::Rng;
use crate::store::{EpisodeFilter, Store};
use crate::trace::{Episode, StepKind};

/// Strata of the replay over older episodes.
pub const STRATA: usize = 8;

/// What was sampled, for the report.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SampleCounts {
    /// Episodes stored with an id up to the run's bound.
    pub episodes_considered: u64,
    /// The newest episodes taken.
    pub recent_episodes: usize,
    /// Older episodes taken by the stratified replay.
    pub replay_episodes: usize,
    /// Decisions in the sample (tool calls plus final answers).
    pub decisions: usize,
}

/// Decisions of an episode as the store counts them.
pub fn decision_count(episode: &Episode) -> usize {
    episode
        .steps
        .iter()
        .filter(|step| step.kind == StepKind::Tool)
        .count()
        + 1
}

/// The sample for a run over the episodes with ids up to `upto_id`: the
/// newest first, then the replay in id order.
pub fn training_episodes(
    store: &Store,
    upto_id: i64,
    cfg: &RlConfig,
) -> Result<(Vec<Episode>, SampleCounts)> {
    let Some((min_id, max_id)) = store.episode_id_range()? else {
        return Ok((Vec::new(), SampleCounts::default()));
    };
    let upto_id = upto_id.min(max_id);
    let bound = cfg.max_training_decisions;
    let replay_budget = (bound as f64 * cfg.replay_fraction).floor() as usize;
    let recent_budget = bound - replay_budget;
    let mut counts = SampleCounts {
        episodes_considered: store.episode_count_between(min_id, upto_id)?,
        ..SampleCounts::default()
    };

    let mut recent: Vec<(i64, Episode)> = Vec::new();
    let mut decisions = 0;
    store.visit_episodes(
        &EpisodeFilter {
            upto_id: Some(upto_id),
            newest_first: true,
            ..EpisodeFilter::default()
        },
        |stored| {
            // The whole store fits when nothing older than the bound is left.
            let n = decision_count(&stored.episode);
            if decisions + n > recent_budget && !recent.is_empty() {
                return ControlFlow::Break(());
            }
            decisions += n;
            recent.push((stored.id, stored.episode));
            ControlFlow::Continue(())
        },
    )?;
    let oldest_recent = recent.last().map_or(upto_id + 1, |(id, _)| *id);
    counts.recent_episodes = recent.len();

    let mut replay: Vec<Episode> = Vec::new();
    if oldest_recent > min_id && replay_budget > 0 {
        let older = (oldest_recent - min_id) as u64;
        let strata = (STRATA as u64).min(older);
        let share = replay_budget / strata as usize;
        let mut rng = Rng::new(cfg.seed ^ (upto_id as u64).rotate_left(17));
        for stratum in 0..strata {
            let start = min_id + (older * stratum / strata) as i64;
            let end = min_id + (older * (stratum + 1) / strata) as i64 - 1;
            let from = start + rng.below((end - start + 1) as usize) as i64;
            let mut taken = 0;
            // From the random point to the stratum's end, then its start.
            for (after, upto) in [(from - 1, end), (start - 1, from - 1)] {
                if taken >= share || upto <= after {
                    continue;
                }
                store.visit_episodes(
                    &EpisodeFilter {
                        after_id: Some(after),
                        upto_id: Some(upto),
                        ..EpisodeFilter::default()
                    },
                    |stored| {
                        let n = decision_count(&stored.episode);
                        if taken + n > share {
                            return ControlFlow::Break(());
                        }
                        taken += n;
                        replay.push(stored.episode);
                        ControlFlow::Continue(())
                    },
                )?;
            }
            decisions += taken;
        }
    }
    counts.replay_episodes = replay.len();
    counts.decisions = decisions;
    let mut episodes: Vec<Episode> = recent.into_iter().map(|(_, episode)| episode).collect();
    episodes.extend(replay);
    Ok((episodes, counts))
}
