//! `whetstone traces ...`: import trace files into the store and summarize it.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::config::Config;
use crate::ingest::{self, IngestOptions, IngestReport, Progress};
use crate::store::{Stats, Store, StoredReject};

/// Rejects listed in full by `traces import` (the rest are counted).
const SHOWN_REJECTS: usize = 5;

/// Trace commands.
#[derive(Debug, Subcommand)]
pub enum TracesCommand {
    /// Print the episodes in trace files, one JSON object per line, without
    /// storing anything. Rejected input is reported on stderr.
    Parse(ParseArgs),
    /// Read trace files or directories into the store: only what is new since
    /// the last import, each episode exactly once.
    Import(ImportArgs),
    /// Summarize what the store holds.
    Stats {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `traces parse`.
#[derive(Debug, Args)]
pub struct ParseArgs {
    /// Trace files, or directories read recursively as `import` reads them.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// Arguments of `traces import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Trace files, or directories read recursively (files ending in .json,
    /// .jsonl, .ndjson, .log or .txt; hidden files skipped)
    /// [default: `traces.dir`]
    pub paths: Vec<PathBuf>,
    /// Assemble every pending trace now instead of waiting for its root span
    /// or the quiet period.
    #[arg(long)]
    pub finalize: bool,
    /// Lines per store transaction (overrides `traces.batch_lines`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_lines: Option<u64>,
    /// Longest accepted line (overrides `traces.max_line_bytes`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_line_bytes: Option<u64>,
}

/// Runs a trace command against the store in the configured `data_dir`.
pub fn run(command: &TracesCommand, config: &Config) -> anyhow::Result<()> {
    if let TracesCommand::Parse(args) = command {
        return parse(args, config);
    }
    match command {
        TracesCommand::Parse(_) => unreachable!("handled above: needs no store"),
        TracesCommand::Import(args) => import(&mut Store::open(&config.data_dir)?, args, config),
        TracesCommand::Stats { json } => {
            let store = Store::open_for_reading(&config.data_dir)?;
            let stats = store.stats()?;
            let first_rejects = store.rejects(SHOWN_REJECTS as u64)?;
            let mut out = io::stdout().lock();
            if *json {
                let text = serde_json::to_string_pretty(&stats_json(&stats, &first_rejects))?;
                writeln!(out, "{text}")?;
            } else {
                write_stats(&mut out, &stats, &first_rejects)?;
            }
            out.flush()?;
            Ok(())
        }
    }
}

fn parse(args: &ParseArgs, config: &Config) -> anyhow::Result<()> {
    let options = IngestOptions::from(&config.traces);
    let mut out = io::BufWriter::new(io::stdout().lock());
    let report = ingest::scan_paths(&args.paths, &options, &mut |episode| {
        serde_json::to_writer(&mut out, &episode)?;
        out.write_all(b"\n")
    })?;
    out.flush()?;
    let mut err = io::stderr().lock();
    for diagnostic in &report.rejects {
        writeln!(err, "{diagnostic}")?;
    }
    for (path, error) in &report.unreadable {
        writeln!(err, "cannot read {}: {error}", path.display())?;
    }
    for (path, why) in &report.skipped {
        writeln!(err, "skipped {}: {why}", path.display())?;
    }
    if !report.unreadable.is_empty() {
        bail!(
            "{} of the given paths could not be read",
            report.unreadable.len()
        );
    }
    if report.episodes == 0 && !report.rejects.is_empty() {
        bail!(
            "no episode could be read ({} rejected, listed above)",
            report.rejects.len()
        );
    }
    Ok(())
}

fn import(store: &mut Store, args: &ImportArgs, config: &Config) -> anyhow::Result<()> {
    let mut options = IngestOptions::from(&config.traces);
    options.finalize = args.finalize;
    if let Some(batch_lines) = args.batch_lines {
        options.batch_lines = usize::try_from(batch_lines).unwrap_or(usize::MAX);
    }
    if let Some(max_line_bytes) = args.max_line_bytes {
        options.max_line_bytes = max_line_bytes;
    }
    let bar = if io::stderr().is_terminal() {
        ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "{spinner} importing [{bar:40}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta})",
            )
            .expect("valid progress template")
            .progress_chars("=> "),
        )
    } else {
        ProgressBar::hidden()
    };
    let paths = if args.paths.is_empty() {
        vec![config.traces.dir.clone()]
    } else {
        args.paths.clone()
    };
    let report = ingest::ingest_paths(store, &paths, &options, &mut |event| match event {
        Progress::Total(total) => bar.set_length(total),
        Progress::Advanced(bytes) => bar.inc(bytes),
    })
    .context("importing traces")?;
    bar.finish_and_clear();
    let mut out = io::stdout().lock();
    write_report(&mut out, &report, &options)?;
    out.flush()?;
    if !report.file_errors.is_empty() {
        bail!(
            "{} of the given paths could not be read (listed above); everything else was imported",
            report.file_errors.len()
        );
    }
    Ok(())
}

fn write_report(
    out: &mut impl Write,
    report: &IngestReport,
    options: &IngestOptions,
) -> io::Result<()> {
    writeln!(
        out,
        "imported {} new episodes ({} duplicates skipped) from {} files: {} lines, {} bytes",
        report.episodes_new, report.episodes_duplicate, report.files, report.lines, report.bytes
    )?;
    if report.files_reread > 0 {
        writeln!(
            out,
            "re-read {} truncated or replaced files from the start",
            report.files_reread
        )?;
    }
    if report.spans_new > 0 || report.pending_spans > 0 {
        writeln!(
            out,
            "spans: {} new, {} already known; pending: {} spans in {} traces (assembled when \
             their root span arrives, after {}s without new spans, or with --finalize)",
            report.spans_new,
            report.spans_duplicate,
            report.pending_spans,
            report.pending_traces,
            options.quiet_period_secs
        )?;
    }
    let total = report.rejects_total();
    if total > 0 {
        let by_reason: Vec<String> = report
            .rejects
            .iter()
            .map(|(reason, n)| format!("{} {n}", reason.as_str()))
            .collect();
        writeln!(out, "rejected {total}: {}", by_reason.join(", "))?;
        for diagnostic in report.first_rejects.iter().take(SHOWN_REJECTS) {
            writeln!(out, "  {diagnostic}")?;
        }
        if total as usize > SHOWN_REJECTS {
            writeln!(out, "  ... (`whetstone traces stats` counts all rejects)")?;
        }
    }
    for error in &report.file_errors {
        writeln!(out, "cannot read {}: {}", error.path.display(), error.error)?;
    }
    for skipped in &report.skipped {
        writeln!(out, "skipped {}: {}", skipped.path.display(), skipped.error)?;
    }
    Ok(())
}

fn write_stats(
    out: &mut impl Write,
    stats: &Stats,
    first_rejects: &[StoredReject],
) -> io::Result<()> {
    let pairs = |pairs: &[(String, u64)]| {
        if pairs.is_empty() {
            return "none".to_string();
        }
        pairs
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    writeln!(out, "episodes: {}", stats.episodes)?;
    writeln!(out, "  by format: {}", pairs(&stats.episodes_by_format))?;
    writeln!(out, "  by status: {}", pairs(&stats.episodes_by_status))?;
    if !stats.episodes_by_prompt.is_empty() {
        writeln!(out, "prompts (name, version, episodes):")?;
        for prompt in &stats.episodes_by_prompt {
            writeln!(
                out,
                "  {:<30} {:<12} {}",
                prompt.name.as_deref().unwrap_or("-"),
                prompt.version.as_deref().unwrap_or("-"),
                prompt.episodes
            )?;
        }
    }
    if !stats.tools.is_empty() {
        writeln!(out, "tools (name, calls, errors, episodes):")?;
        for tool in &stats.tools {
            writeln!(
                out,
                "  {:<30} {:>8} {:>8} {:>8}",
                tool.name, tool.calls, tool.errors, tool.episodes
            )?;
        }
    }
    if !stats.rewards.is_empty() {
        writeln!(out, "final rewards (name, count, mean, min, max):")?;
        for reward in &stats.rewards {
            writeln!(
                out,
                "  {:<30} {:>8} {:>10.4} {:>10.4} {:>10.4}",
                reward.name, reward.count, reward.mean, reward.min, reward.max
            )?;
        }
    }
    if !stats.step_rewards.is_empty() {
        writeln!(out, "step rewards (name, steps, mean):")?;
        for reward in &stats.step_rewards {
            writeln!(
                out,
                "  {:<30} {:>8} {:>10.4}",
                reward.name, reward.count, reward.mean
            )?;
        }
    }
    for attribute in &stats.unknown_attributes {
        writeln!(
            out,
            "warning: unknown attribute `{}` on {} spans (first at {}); Whetstone reads \
             whetstone.prompt.name/version, whetstone.reward.<name>, whetstone.policy.version/probability",
            attribute.name, attribute.places, attribute.example
        )?;
    }
    writeln!(
        out,
        "pending: {} spans in {} traces",
        stats.pending_spans, stats.pending_traces
    )?;
    writeln!(out, "rejects: {}", pairs(&stats.rejects_by_reason))?;
    for reject in first_rejects {
        writeln!(
            out,
            "  {}:{}: {}: {}",
            reject.file, reject.line, reject.reason, reject.detail
        )?;
    }
    writeln!(out, "files tracked: {}", stats.files)?;
    Ok(())
}

fn stats_json(stats: &Stats, first_rejects: &[StoredReject]) -> serde_json::Value {
    let counts = |pairs: &[(String, u64)]| -> serde_json::Map<String, serde_json::Value> {
        pairs
            .iter()
            .map(|(name, n)| (name.clone(), json!(n)))
            .collect()
    };
    json!({
        "episodes": stats.episodes,
        "episodes_by_format": counts(&stats.episodes_by_format),
        "episodes_by_status": counts(&stats.episodes_by_status),
        "episodes_by_prompt": stats.episodes_by_prompt.iter().map(|p| json!({
            "name": p.name, "version": p.version, "episodes": p.episodes,
        })).collect::<Vec<_>>(),
        "tools": stats.tools.iter().map(|t| json!({
            "name": t.name, "calls": t.calls, "errors": t.errors, "episodes": t.episodes,
        })).collect::<Vec<_>>(),
        "rewards": stats.rewards.iter().map(|r| json!({
            "name": r.name, "count": r.count, "mean": r.mean, "min": r.min, "max": r.max,
        })).collect::<Vec<_>>(),
        "step_rewards": stats.step_rewards.iter().map(|r| json!({
            "name": r.name, "count": r.count, "mean": r.mean,
        })).collect::<Vec<_>>(),
        "unknown_attributes": stats.unknown_attributes.iter().map(|a| json!({
            "name": a.name, "places": a.places, "example": a.example,
        })).collect::<Vec<_>>(),
        "pending_spans": stats.pending_spans,
        "pending_traces": stats.pending_traces,
        "rejects_by_reason": counts(&stats.rejects_by_reason),
        "first_rejects": first_rejects.iter().map(|r| json!({
            "file": r.file, "line": r.line, "reason": r.reason, "detail": r.detail,
        })).collect::<Vec<_>>(),
        "files": stats.files,
    })
}
