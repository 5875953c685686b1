//! `whetstone train`: one offline optimization run over collected traces.
//!
//! Until the store lands, traces are read straight from files: every file
//! under `--traces` (default: `traces.dir` of the config), each line or
//! whole-file document parsed by the trace readers, spans grouped by trace
//! and assembled. Rejected input is counted and summarized, never fatal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::{GlobalArgs, write_stdout};
use crate::rl;
use crate::trace::{self, Diagnostic, Episode, Record, Source, Span};

/// What `train` optimizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TrainMode {
    /// Learn the tool-selection policy with PPO.
    Rl,
}

/// Flags of `whetstone train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// What to optimize.
    #[arg(long, value_enum)]
    pub mode: TrainMode,
    /// Directory for learned_policy.json and policy.safetensors.
    #[arg(long, value_name = "DIR")]
    pub output_dir: PathBuf,
    /// Trace file or directory to learn from [default: traces.dir]
    #[arg(long, value_name = "PATH")]
    pub traces: Option<PathBuf>,
}

/// Runs one training run and prints its outcome.
pub fn run(args: &TrainArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let config = global.load_config()?;
    let traces = args
        .traces
        .clone()
        .unwrap_or_else(|| config.traces.dir.clone());
    let (episodes, diagnostics) = read_episodes(&traces)?;
    let mut rejected: BTreeMap<&str, usize> = BTreeMap::new();
    for diagnostic in &diagnostics {
        tracing::debug!(file = %diagnostic.file, line = diagnostic.line, reason = diagnostic.reason.as_str(), "{}", diagnostic.detail);
        *rejected.entry(diagnostic.reason.as_str()).or_default() += 1;
    }
    if !diagnostics.is_empty() {
        tracing::warn!(
            ?rejected,
            "some trace input was rejected (run with -v for each file and line)"
        );
    }
    match args.mode {
        TrainMode::Rl => {
            let checkpoint_dir = config.data_dir.join("rl");
            let report = rl::train(&episodes, &config.rl, &args.output_dir, &checkpoint_dir)?;
            let skipped: usize = report.episodes.skipped.values().sum();
            let text = format!(
                "rl: {} episodes read ({} skipped: {:?}), {} training decisions, {} PPO iterations\n\
                 rl: {} policy version {}: {}\n\
                 rl: wrote {}\n",
                report.episodes.received,
                skipped,
                report.episodes.skipped,
                report.episodes.training_decisions,
                report.training.iterations,
                if report.promotion.promoted {
                    "promoted"
                } else {
                    "kept"
                },
                report.promotion.policy_version,
                report.promotion.reason,
                args.output_dir.join(rl::report::REPORT_FILE).display(),
            );
            write_stdout(&text)?;
        }
    }
    Ok(())
}

/// Every episode in the trace files under `path`, and what was rejected.
fn read_episodes(path: &Path) -> anyhow::Result<(Vec<Episode>, Vec<Diagnostic>)> {
    let mut files = Vec::new();
    collect_files(path, &mut files)?;
    files.sort();
    let mut episodes = Vec::new();
    let mut spans: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    let mut diagnostics = Vec::new();
    let mut keep = |record: Record| match record {
        Record::Episode(episode) => episodes.push(*episode),
        Record::Spans(list) => {
            for span in list {
                spans.entry(span.trace_id.clone()).or_default().push(span);
            }
        }
    };
    for file in files {
        let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let name = file.display().to_string();
        if trace::is_document(&bytes) {
            match trace::parse_document(&bytes, &name) {
                Ok(record) => keep(record),
                Err(diagnostic) => diagnostics.push(diagnostic),
            }
            continue;
        }
        for (index, line) in bytes.split(|b| *b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match trace::parse_line(
                line,
                &Source {
                    file: name.clone(),
                    line: index as u64 + 1,
                },
            ) {
                Ok(record) => keep(record),
                Err(diagnostic) => diagnostics.push(diagnostic),
            }
        }
    }
    for (_, trace_spans) in spans {
        match trace::assemble(trace_spans) {
            Ok(episode) => episodes.push(episode),
            Err(diagnostic) => diagnostics.push(diagnostic),
        }
    }
    Ok((episodes, diagnostics))
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("reading traces from {}", path.display()))?;
    if !metadata.is_dir() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
        collect_files(&entry?.path(), out)?;
    }
    Ok(())
}
