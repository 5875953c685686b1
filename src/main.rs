//! The `whetstone` binary: parses the command line, runs the command, maps
//! the result to an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use whetstone::cli::traces::TracesCommand;
use whetstone::ingest::IngestOptions;

#[derive(Debug, Parser)]
#[command(
    name = "whetstone",
    version,
    about = "Learns better prompts and tool policies from an agent's traces"
)]
struct Cli {
    /// Directory holding Whetstone's state (the SQLite database).
    #[arg(long, global = true, default_value = ".whetstone")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Import and inspect traces.
    #[command(subcommand)]
    Traces(TracesCommand),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WHETSTONE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Traces(command) => {
            whetstone::cli::traces::run(command, &cli.data_dir, IngestOptions::default())
        }
    };
    match res {
        Ok(code) => code,
        // Output piped into `head` and closed early is not a failure.
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("whetstone: {err:#}");
            ExitCode::FAILURE
        }
    }
}
