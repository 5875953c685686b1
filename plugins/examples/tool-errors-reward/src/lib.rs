//! Example reward plugin: how cleanly the agent used its tools, and whether
//! its answer stayed within a length budget.
//!
//! Scores:
//! - `tool_success`: share of tool calls that did not fail (1.0 without
//!   tool calls);
//! - `answer_length`: 1.0 for a non-empty answer up to `max_answer_chars`
//!   characters, falling linearly to 0.0 at twice that; 0.0 without an
//!   answer.
//!
//! Settings (`[settings]` in `tool_errors_reward.toml`): `max_answer_chars`
//! (default 2000).

use serde::Deserialize;
use whetstone_plugin::{Episode, Score};

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    max_answer_chars: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_answer_chars: 2000,
        }
    }
}

/// Scores one episode (see the crate docs).
pub fn score(episode: &Episode) -> Result<Vec<Score>, String> {
    let settings: Settings = whetstone_plugin::settings()?;
    let tools = episode.steps.iter().filter(|step| step.kind == "tool");
    let (n_tools, n_failed) = tools.fold((0usize, 0usize), |(n, failed), step| {
        (n + 1, failed + usize::from(step.error))
    });
    let tool_success = if n_tools == 0 {
        1.0
    } else {
        1.0 - n_failed as f64 / n_tools as f64
    };
    let budget = settings.max_answer_chars.max(1) as f64;
    let answer_length = match episode.final_answer() {
        None | Some("") => 0.0,
        Some(answer) => {
            let n_chars = answer.chars().count() as f64;
            (1.0 - (n_chars - budget).max(0.0) / budget).max(0.0)
        }
    };
    Ok(vec![
        Score::new("tool_success", tool_success),
        Score::new("answer_length", answer_length),
    ])
}

whetstone_plugin::reward_plugin! {
    name: "tool-errors",
    description: "Share of tool calls that succeeded, and whether the answer kept to its length budget.",
    score: score,
}
