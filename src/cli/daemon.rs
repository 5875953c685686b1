//! `whetstone daemon`: the always-on service (see `crate::daemon`).

use std::io::Write;

use clap::Args;

use super::GlobalArgs;
use crate::daemon::{self, DaemonOptions};

/// Flags of `whetstone daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Catch up on the trace folder, run one PPO update and one APO round
    /// (if the LLM endpoint answers), print what was learned, and exit
    /// (useful from cron).
    #[arg(long)]
    pub once: bool,
}

/// Runs the daemon with the configuration `global` names (or
/// `./config.toml`, or the embedded defaults), watching that file for edits.
pub fn run(args: &DaemonArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let config_file = global.config_file();
    // The first line says which configuration runs, and so which file edits
    // will be picked up from.
    tracing::info!(
        config = %config_file
            .as_deref()
            .map_or("embedded defaults (no ./config.toml)".to_string(), |f| f.display().to_string()),
        "whetstone daemon configuration"
    );
    let config = global.load_config()?;
    let config_file = config_file.map(std::path::absolute).transpose()?;
    let mut out = std::io::stdout().lock();
    daemon::run(
        config,
        DaemonOptions {
            config_file,
            once: args.once,
        },
        &mut out,
    )?;
    out.flush()?;
    Ok(())
}
