//! `whetstone policy ...`: asking the learned tool-selection policy.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use serde::Deserialize;

use super::{GlobalArgs, write_stdout};
use crate::rl::{self, ActRequest};

/// Policy commands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the promoted policy's probability for each action in a state,
    /// most likely first (`<no_tool>` is answering without a tool).
    Act {
        /// The task text.
        #[arg(long, required_unless_present = "states", conflicts_with = "states")]
        input: Option<String>,
        /// The tool the agent called last in this episode.
        #[arg(long, value_name = "NAME")]
        previous_tool: Option<String>,
        /// The previous tool call failed.
        #[arg(long, requires = "previous_tool")]
        previous_tool_failed: bool,
        /// Decisions already made in this episode [default: 1 after a tool, else 0]
        #[arg(long, value_name = "N")]
        step: Option<usize>,
        /// A tool available now (repeatable) [default: every tool the policy knows]
        #[arg(long = "tool", value_name = "NAME")]
        tools: Vec<String>,
        /// Score every state in FILE, one JSON object per line
        /// (`{"input": .., "previous_tool": .., "previous_tool_failed": ..,
        /// "step": .., "tools": [..]}`, all but `input` optional), printing
        /// one JSON line of probabilities per state.
        #[arg(long, value_name = "FILE.jsonl")]
        states: Option<PathBuf>,
        /// Print `{"action": probability, ...}` as JSON with full precision.
        #[arg(long)]
        json: bool,
    },
}

/// One line of `--states`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateLine {
    input: String,
    #[serde(default)]
    previous_tool: Option<String>,
    #[serde(default)]
    previous_tool_failed: bool,
    #[serde(default)]
    step: Option<usize>,
    #[serde(default)]
    tools: Vec<String>,
}

impl StateLine {
    fn request(self) -> ActRequest {
        ActRequest {
            step_index: self
                .step
                .unwrap_or(usize::from(self.previous_tool.is_some())),
            input: self.input,
            previous_tool: self.previous_tool,
            previous_tool_error: self.previous_tool_failed,
            tools: self.tools,
        }
    }
}

fn read_states(path: &Path) -> anyhow::Result<Vec<ActRequest>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut requests = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let state: StateLine = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: invalid state", path.display(), idx + 1))?;
        if state.previous_tool_failed && state.previous_tool.is_none() {
            bail!(
                "{}:{}: field `previous_tool_failed` needs `previous_tool`",
                path.display(),
                idx + 1
            );
        }
        requests.push(state.request());
    }
    Ok(requests)
}

/// `{"action": probability, ...}` with full precision, on one line.
fn json_line(ranked: &[(String, f64)]) -> String {
    let object: serde_json::Map<String, serde_json::Value> = ranked
        .iter()
        .map(|(action, p)| (action.clone(), serde_json::json!(p)))
        .collect();
    serde_json::Value::Object(object).to_string() + "\n"
}

/// Runs one policy command.
pub fn run(command: &PolicyCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Act {
            input,
            previous_tool,
            previous_tool_failed,
            step,
            tools,
            states,
            json,
        } => {
            let config = global.load_config()?;
            let checkpoint_dir = config.data_dir.join("rl");
            if let Some(path) = states {
                let requests = read_states(path)?;
                let text: String = rl::act(&checkpoint_dir, &requests)?
                    .iter()
                    .map(|ranked| json_line(ranked))
                    .collect();
                write_stdout(&text)?;
                return Ok(());
            }
            let request = StateLine {
                input: input.clone().unwrap_or_default(),
                previous_tool: previous_tool.clone(),
                previous_tool_failed: *previous_tool_failed,
                step: *step,
                tools: tools.clone(),
            }
            .request();
            let ranked = rl::act(&checkpoint_dir, &[request])?.remove(0);
            let text = if *json {
                json_line(&ranked)
            } else {
                ranked
                    .iter()
                    .map(|(action, p)| format!("{p:.4}\t{action}\n"))
                    .collect()
            };
            write_stdout(&text)?;
            Ok(())
        }
    }
}
