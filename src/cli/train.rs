//! `whetstone train --mode apo|rl|all --output-dir DIR [--traces PATH...]`:
//! one offline optimization over the episodes in the store (after importing
//! `--traces`, if given), writing its results into DIR. `all` runs APO, then
//! RL, into the same directory; a failure of one is reported and the other
//! still runs, and the command fails if either did.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::apo::{self, ProgressEvent};
use crate::config::Config;
use crate::ingest::{self, IngestOptions};
use crate::llm::LlmClient;
use crate::plugin::Plugins;
use crate::rl;
use crate::store::{self, EpisodeFilter, Store};
use crate::trace::Episode;

/// What to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Automatic prompt optimization of the prompt named in `[apo]`.
    Apo,
    /// The tool-selection policy, with PPO.
    Rl,
    /// APO, then RL.
    All,
}

/// Arguments of `train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// What to optimize.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Directory for the results: best_prompt.txt, all_variants.json,
    /// optimization_summary.json and progress.svg (APO); learned_policy.json
    /// and policy.safetensors (RL).
    #[arg(long, value_name = "DIR")]
    pub output_dir: PathBuf,
    /// Trace files or directories to import into the store first (only what
    /// is new since the last import is read; pending traces are assembled).
    #[arg(long, value_name = "PATH")]
    pub traces: Vec<PathBuf>,
}

/// Runs `train`.
pub fn run(args: &TrainArgs, config: &Config) -> anyhow::Result<()> {
    let mut store = Store::open(&config.data_dir)?;
    let mut out = io::stdout().lock();
    if !args.traces.is_empty() {
        let mut options = IngestOptions::from(&config.traces);
        options.finalize = true;
        let report = ingest::ingest_paths(&mut store, &args.traces, &options, &mut |_| {})
            .context("importing --traces")?;
        writeln!(
            out,
            "imported {} new episodes ({} duplicates skipped, {} rejected: see `whetstone traces stats`)",
            report.episodes_new,
            report.episodes_duplicate,
            report.rejects_total()
        )?;
        for error in &report.file_errors {
            writeln!(out, "cannot read {}: {}", error.path.display(), error.error)?;
        }
    }
    let plugins = load_plugins(config, &mut out)?;
    let mut failed: Vec<anyhow::Error> = Vec::new();
    if matches!(args.mode, Mode::Apo | Mode::All)
        && let Err(err) = train_apo(&store, &plugins, args, config, &mut out)
    {
        let db = config.data_dir.join(store::DB_FILE_NAME);
        failed.push(err.context(format!(
            "APO failed; every LLM call it made is in the ledger, table llm_call_ledger of {db}: \
             `sqlite3 {db} \"SELECT role, outcome, COUNT(*) FROM llm_call_ledger \
             WHERE run_id = (SELECT run_id FROM llm_call_ledger ORDER BY id DESC LIMIT 1) \
             GROUP BY role, outcome\"`",
            db = db.display()
        )));
    }
    if matches!(args.mode, Mode::Rl | Mode::All)
        && let Err(err) = train_rl(&store, &plugins, args, config, &mut out)
    {
        failed.push(err.context("RL failed"));
    }
    out.flush()?;
    // With both modes failed, the first is printed here and the second is
    // the command's error.
    let last = failed.pop();
    for err in failed {
        eprintln!("whetstone: {err:#}");
    }
    match last {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

fn load(store: &Store, prompt_name: Option<&str>) -> anyhow::Result<Vec<Episode>> {
    let filter = EpisodeFilter {
        prompt_name: prompt_name.map(str::to_string),
        ..EpisodeFilter::default()
    };
    Ok(store
        .load_episodes(&filter)?
        .into_iter()
        .map(|stored| stored.episode)
        .collect())
}

/// The plugins of `[plugins] dir`, named on `out`; one that fails to load
/// is reported and left out.
fn load_plugins(config: &Config, out: &mut impl Write) -> anyhow::Result<Plugins> {
    let set = config.plugins.open(&config.data_dir)?;
    let report = set.reload();
    if let Some(err) = report.dir_error {
        bail!("cannot list the plugins folder ([plugins] dir): {err}");
    }
    for err in &report.failed {
        writeln!(out, "plugin not used: {err}")?;
    }
    let plugins = set.current();
    for plugin in plugins.all() {
        writeln!(
            out,
            "plugin {} ({}, NAME.toml weight {})",
            plugin.name,
            plugin.world.as_str(),
            plugin.weight
        )?;
    }
    Ok(plugins)
}

fn train_rl(
    store: &Store,
    plugins: &Plugins,
    args: &TrainArgs,
    config: &Config,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (episodes, sample) = rl::sample::training_episodes(store, i64::MAX, &config.rl)?;
    if episodes.is_empty() {
        bail!(
            "the store in {} holds no episode; import traces with --traces or `whetstone traces import`",
            config.data_dir.display()
        );
    }
    if sample.episodes_considered > episodes.len() as u64 {
        writeln!(
            out,
            "RL: sampled {} of {} stored episodes ({} newest, {} replayed; {} decisions, \
             rl.max_training_decisions = {})",
            episodes.len(),
            sample.episodes_considered,
            sample.recent_episodes,
            sample.replay_episodes,
            sample.decisions,
            config.rl.max_training_decisions
        )?;
    }
    let checkpoint_dir = config.data_dir.join("rl");
    let bar = if io::stderr().is_terminal() {
        ProgressBar::new(config.rl.iterations_per_run as u64).with_style(
            ProgressStyle::with_template("{spinner} RL [{bar:30}] iteration {pos}/{len} {msg}")
                .expect("valid progress template")
                .progress_chars("=> "),
        )
    } else {
        ProgressBar::hidden()
    };
    let mut started = Ok(());
    let report = rl::train(
        &episodes,
        &config.rl,
        plugins,
        &args.output_dir,
        &checkpoint_dir,
        &mut |event| match event {
            rl::TrainProgress::Started {
                training_decisions,
                logged_probabilities,
                ..
            } => {
                started = writeln!(
                    out,
                    "RL: training on {training_decisions} decisions, {logged_probabilities} with a logged behavior probability"
                );
                if logged_probabilities == 0 {
                    bar.suspend(|| {
                        eprintln!(
                            "whetstone: WARNING: no decision carries a logged behavior probability \
                             (`whetstone.policy.probability` on the chat or tool span, `policy` in \
                             Whetstone JSONL): training corrects against a policy snapshot's guess \
                             and the new policy will not be promoted"
                        );
                    });
                }
            }
            rl::TrainProgress::Iteration { iteration, stats } => {
                bar.set_position(iteration as u64);
                bar.set_message(format!("value loss {:.4}", stats.value_loss));
                tracing::debug!(
                    iteration,
                    policy_loss = stats.policy_loss,
                    value_loss = stats.value_loss,
                    entropy = stats.entropy,
                    approx_kl = stats.approx_kl,
                    clip_fraction = stats.clip_fraction,
                    truncated_fraction = stats.truncated_fraction,
                    "rl: PPO iteration done"
                );
            }
        },
    )?;
    started?;
    bar.finish_and_clear();
    for stats in &report.plugin_rewards {
        writeln!(
            out,
            "RL reward plugin {} (weight {}): scored {} episodes, mean reward added {}, failed on {}{}",
            stats.plugin,
            stats.weight,
            stats.scored,
            stats
                .mean_reward
                .map_or_else(|| "n/a".to_owned(), |mean| format!("{mean:.3}")),
            stats.failed,
            stats
                .first_error
                .as_ref()
                .map_or_else(String::new, |err| format!(" (first: {err})")),
        )?;
    }
    writeln!(out, "{}", rl_summary(&report))?;
    writeln!(
        out,
        "wrote {}",
        args.output_dir.join(rl::report::REPORT_FILE).display()
    )?;
    Ok(())
}

/// The one-line result of an RL run.
fn rl_summary(report: &rl::TrainReport) -> String {
    let episodes = &report.episodes;
    let skipped: usize = episodes.skipped.values().sum();
    let reasons: Vec<String> = episodes
        .skipped
        .iter()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    let source = &report.behavior_probability_source;
    let decisions = source.trace + source.policy_snapshot + source.frozen_earlier;
    let share = 100.0 * source.trace as f64 / decisions.max(1) as f64;
    let estimate = match &report.off_policy_evaluation {
        // No held-out decision with a logged propensity: nothing was
        // estimated (the reason below says so).
        Some(ope)
            if !ope.candidate.effective_sample_size.is_finite()
                || ope.candidate.effective_sample_size == 0.0 =>
        {
            String::new()
        }
        Some(ope) => {
            let candidate = &ope.candidate;
            let point = match report.promotion.estimator.as_str() {
                "ips" => candidate.ips,
                _ => candidate.snips,
            };
            format!(
                "{} {point:.3} [{:.3}, {:.3}] (ESS {:.0}), ",
                report.promotion.estimator,
                candidate.lower_bound,
                candidate.upper_bound,
                candidate.effective_sample_size
            )
        }
        None => String::new(),
    };
    format!(
        "RL: {} decisions from {} of {} episodes ({skipped} skipped{}), logged propensities {share:.0}%, {estimate}{} policy version {}: {}",
        episodes.training_decisions,
        episodes.used,
        episodes.received,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(": {}", reasons.join(", "))
        },
        if report.promotion.promoted {
            "promoted"
        } else {
            "kept"
        },
        report.promotion.policy_version,
        report.promotion.reason,
    )
}

fn train_apo(
    store: &Store,
    plugins: &Plugins,
    args: &TrainArgs,
    config: &Config,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let episodes = load(store, Some(&config.apo.target_prompt))?;
    if episodes.is_empty() {
        bail!(
            "the store in {} holds no episode for prompt `{}` (apo.target_prompt); \
             import traces with --traces or `whetstone traces import`",
            config.data_dir.display(),
            config.apo.target_prompt
        );
    }
    // APO keeps its cache and ledger next to the episodes, on a connection
    // of its own (the store's is busy being the store).
    let db_path = config.data_dir.join(store::DB_FILE_NAME);
    let conn = rusqlite::Connection::open(&db_path)
        .with_context(|| format!("opening {}", db_path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let llm = LlmClient::new(config.llm.clone())?;

    let bar = if io::stderr().is_terminal() {
        ProgressBar::new(config.apo.budget.max_llm_calls).with_style(
            ProgressStyle::with_template("{spinner} APO [{bar:30}] {pos}/{len} LLM calls {msg}")
                .expect("valid progress template")
                .progress_chars("=> "),
        )
    } else {
        ProgressBar::hidden()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let summary = runtime.block_on(apo::run(
        &episodes,
        &config.apo,
        &llm,
        plugins,
        &conn,
        &args.output_dir,
        |event| match event {
            ProgressEvent::DatasetReady { train, validation } => {
                bar.set_message(format!("{train} train / {validation} validation examples"));
            }
            ProgressEvent::GenerationStarted {
                generation,
                candidates,
            } => bar.set_message(format!("gen {generation}: {candidates} new candidates")),
            ProgressEvent::GenerationFinished {
                generation,
                best,
                mean,
                llm_calls,
            } => {
                bar.set_position(llm_calls);
                bar.set_message(format!("gen {generation}: best {best:.3}, mean {mean:.3}"));
            }
            ProgressEvent::Stopped { reason } => bar.set_message(format!("stopped: {reason}")),
            ProgressEvent::ValidationStarted { candidates } => {
                bar.set_message(format!("validating {candidates} finalists"));
            }
        },
    ))?;
    bar.finish_and_clear();
    for warning in &summary.warnings {
        writeln!(out, "APO warning: {warning}")?;
    }
    writeln!(out, "APO baseline: {}", summary.baseline_source)?;
    let rewards = match (summary.baseline_reward, summary.optimized_reward) {
        (Some(baseline), Some(optimized)) => format!(
            "validation reward {baseline:.3} -> {optimized:.3} ({:+.1}%)",
            summary.improvement_pct.unwrap_or(0.0)
        ),
        _ => format!("validation reward {}", summary.validation),
    };
    writeln!(
        out,
        "APO on `{}`: {rewards}, best variant {} after {} generations (stopped: {})",
        summary.target_prompt, summary.best_variant_id, summary.generations, summary.stop_reason
    )?;
    writeln!(out, "APO decision: {}", summary.decision)?;
    writeln!(out, "APO scorer: {}", summary.scorer)?;
    writeln!(
        out,
        "APO: {} LLM calls ({} failed), {} tokens in, {} tokens out, {} cache hits, {:.1}s",
        summary.llm_calls,
        summary.failed_calls,
        summary.tokens_in,
        summary.tokens_out,
        summary.cache_hits,
        summary.wall_time_secs
    )?;
    writeln!(out, "wrote {}", args.output_dir.display())?;
    Ok(())
}
