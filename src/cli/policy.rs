//! `whetstone policy ...`: asking the learned tool-selection policy.

use clap::Subcommand;

use super::{GlobalArgs, write_stdout};
use crate::rl::{self, ActRequest};

/// Policy commands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the promoted policy's probability for each action in a state,
    /// most likely first (`<no_tool>` is answering without a tool).
    Act {
        /// The task text.
        #[arg(long)]
        input: String,
        /// The tool the agent called last in this episode.
        #[arg(long, value_name = "NAME")]
        previous_tool: Option<String>,
        /// The previous tool call failed.
        #[arg(long, requires = "previous_tool")]
        previous_tool_failed: bool,
        /// A tool available now (repeatable) [default: every tool the policy knows]
        #[arg(long = "tool", value_name = "NAME")]
        tools: Vec<String>,
    },
}

/// Runs one policy command.
pub fn run(command: &PolicyCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Act {
            input,
            previous_tool,
            previous_tool_failed,
            tools,
        } => {
            let config = global.load_config()?;
            let request = ActRequest {
                input: input.clone(),
                previous_tool: previous_tool.clone(),
                previous_tool_error: *previous_tool_failed,
                step_index: usize::from(previous_tool.is_some()),
                tools: tools.clone(),
            };
            let ranked = rl::act(&config.data_dir.join("rl"), &request)?;
            let text: String = ranked
                .iter()
                .map(|(action, p)| format!("{p:.4}\t{action}\n"))
                .collect();
            write_stdout(&text)?;
            Ok(())
        }
    }
}
