//! `whetstone config ...`: checking a configuration before deploying it.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::{GlobalArgs, config_path, write_stdout};
use crate::config;

/// Configuration commands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file and print the effective configuration.
    ///
    /// The effective configuration is printed as TOML, with defaults filled
    /// in and paths made absolute. On problems, every one is listed on stderr
    /// as `file:line:col: key: message` and the exit status is 78.
    Check {
        /// File to check; overrides --config. Without either, the built-in
        /// defaults are checked.
        file: Option<PathBuf>,
    },
}

/// Runs one configuration command.
pub fn run(command: &ConfigCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Check { file } => {
            let config = config::load(config_path(file.as_deref(), global).as_deref())?;
            let text = toml::to_string_pretty(&config)
                .context("cannot show the configuration as TOML (is a path not UTF-8?)")?;
            write_stdout(&text)?;
            Ok(())
        }
    }
}
