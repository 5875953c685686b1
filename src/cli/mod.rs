//! The `whetstone` command line: flags shared by every command, and dispatch
//! to one module per command group.
//!
//! Each group lives in its own file with its own clap `Subcommand` enum and a
//! `run` function; this module only wires them together, so adding a group is
//! one variant and one match arm here.

mod config_cmd;
mod daemon;
mod plugins;
mod policy;
mod prompts;
mod status;
pub mod traces;
mod train;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config, ConfigError};

/// Whetstone: learns better prompts and a tool-selection policy from an LLM
/// agent's traces.
#[derive(Debug, Parser)]
#[command(name = "whetstone", version, about, long_about = None)]
pub struct Cli {
    /// Flags accepted by every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before or after any subcommand.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Configuration file [default: built-in defaults, as in config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More log output on stderr: -v debug, -vv trace [default: RUST_LOG, else info]
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log format on stderr: human-readable lines, or one JSON object per line
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// The configuration file a command uses when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "config.toml";

impl GlobalArgs {
    /// The configuration file in use: `--config`, else `./config.toml` when
    /// it exists, else none (the embedded defaults).
    pub fn config_file(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| {
            let local = Path::new(DEFAULT_CONFIG_FILE);
            local.is_file().then(|| local.to_path_buf())
        })
    }

    /// Loads [`GlobalArgs::config_file`], or the embedded defaults.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let file = self.config_file();
        tracing::debug!(
            config = %file.as_deref().map_or("embedded defaults".into(), |f| f.display().to_string()),
            "configuration"
        );
        config::load(file.as_deref())
    }
}

/// The command groups.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check and show the configuration.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// List the plugins folder; check one plugin.
    #[command(subcommand)]
    Plugins(plugins::PluginsCommand),
    /// Ask the learned tool-selection policy.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Read trace files: print their episodes, import them into the store, summarize the store.
    #[command(subcommand)]
    Traces(traces::TracesCommand),
    /// Run one optimization (APO, RL or both) over the collected traces and
    /// write its results.
    Train(train::TrainArgs),
    /// Run the always-on service: watch the trace folder, learn as traces
    /// arrive, serve the local HTTP API; reloads the configuration on edit.
    Daemon(daemon::DaemonArgs),
    /// Show what the running daemon is doing (or, without one, what the
    /// store holds).
    Status(status::StatusArgs),
    /// The prompt registry: versions, A/B tests, rollout and rollback.
    #[command(subcommand)]
    Prompts(prompts::PromptsCommand),
}

/// Runs a parsed command line. Errors carry their cause chain; a
/// [`ConfigError`] anywhere in it means the configuration was at fault.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    init_logging(cli.global.verbose, cli.global.log_format);
    match &cli.command {
        Command::Config(command) => config_cmd::run(command, &cli.global),
        Command::Plugins(command) => plugins::run(command, &cli.global.load_config()?),
        Command::Policy(command) => policy::run(command, &cli.global),
        Command::Traces(command) => traces::run(command, &cli.global.load_config()?),
        Command::Train(args) => train::run(args, &cli.global.load_config()?),
        Command::Daemon(args) => daemon::run(args, &cli.global),
        Command::Status(args) => status::run(args, &cli.global.load_config()?),
        Command::Prompts(command) => prompts::run(command, &cli.global.load_config()?),
    }
}

/// Sends `tracing` output to stderr, keeping stdout for command output.
fn init_logging(verbose: u8, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = match verbose {
        0 => EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("warn,whetstone=info")),
        1 => EnvFilter::new("warn,whetstone=debug"),
        _ => EnvFilter::new("info,whetstone=trace"),
    };
    // Fails only if a subscriber is already installed (run called twice in
    // one process); the first one keeps working.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Writes `text` to stdout. A closed pipe surfaces as an `io::Error` of kind
/// `BrokenPipe`, which the binary treats as success.
fn write_stdout(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// The path a command should load: its own FILE argument wins over
/// [`GlobalArgs::config_file`].
fn config_path(file: Option<&Path>, global: &GlobalArgs) -> Option<PathBuf> {
    file.map(Path::to_path_buf).or_else(|| global.config_file())
}
