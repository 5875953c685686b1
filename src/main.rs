//! The `whetstone` binary: parses flags, runs the library, and turns the
//! outcome into an exit status. Exit codes: 0 success (including a closed
//! stdout pipe), 1 failure, 2 usage error, 78 configuration error (EX_CONFIG).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use whetstone::cli::{self, Cli};
use whetstone::config::ConfigError;

/// Ingestion allocates and frees many small strings across two threads;
/// mimalloc does that markedly faster than glibc's allocator (measured by
/// `benches/ingest.rs`, see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXIT_FAILURE: u8 = 1;
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    // Prints help/version (exit 0) or the usage error (exit 2) itself.
    let cli = Cli::try_parse().unwrap_or_else(|err| err.exit());
    let Err(err) = cli::run(cli) else {
        return ExitCode::SUCCESS;
    };
    // Like ripgrep: `whetstone ... | head` closing the pipe is not a failure.
    let broken_pipe = err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if broken_pipe {
        return ExitCode::SUCCESS;
    }
    let mut stderr = std::io::stderr().lock();
    if let Some(config_err) = err
        .chain()
        .find_map(|cause| cause.downcast_ref::<ConfigError>())
    {
        // One problem per line, compiler style, so editors can jump to each.
        let _ = writeln!(stderr, "{config_err}");
        let n_problems = config_err.problems().len();
        let plural = if n_problems == 1 { "" } else { "s" };
        let _ = writeln!(
            stderr,
            "whetstone: invalid configuration ({n_problems} problem{plural})"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let _ = writeln!(stderr, "whetstone: {err:#}");
    ExitCode::from(EXIT_FAILURE)
}
