//! One round: an APO round on the target prompt, or a PPO update of the
//! tool policy, over the episodes stored up to a given id, with outputs in a
//! folder of its own and the newest of each file copied into `latest/`.
//!
//! A round runs on a blocking thread with its own store connection, so
//! ingestion never waits for it. It is recorded in the store when it starts
//! (with the settings it runs with) and when it ends; a round still marked
//! running at startup was interrupted and is run again with the same
//! episodes and settings, which APO's evaluation cache answers without
//! paying again for the calls already made.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::sync::watch;

use crate::apo::{self, ProgressEvent, ReplyReport};
use crate::config::Config;
use crate::llm::LlmClient;
use crate::plugin::Plugins;
use crate::registry::Winner;
use crate::rl;
use crate::store::{self, EpisodeFilter, Store};
use crate::trace::Episode;

/// Which engine a round runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RoundKind {
    Apo,
    Rl,
}

impl RoundKind {
    /// The stored name (`apo`, `rl`).
    pub fn as_str(self) -> &'static str {
        match self {
            RoundKind::Apo => "apo",
            RoundKind::Rl => "rl",
        }
    }

    /// The stored name back to the kind.
    pub fn parse(text: &str) -> Option<RoundKind> {
        match text {
            "apo" => Some(RoundKind::Apo),
            "rl" => Some(RoundKind::Rl),
            _ => None,
        }
    }

    /// What a round of this kind works on: the target prompt, or `policy`.
    pub fn subject(self, config: &Config) -> String {
        match self {
            RoundKind::Apo => config.apo.target_prompt.clone(),
            RoundKind::Rl => "policy".to_string(),
        }
    }
}

/// A round to run: its store id and everything it needs.
#[derive(Debug, Clone)]
pub struct RoundJob {
    pub id: i64,
    pub kind: RoundKind,
    pub upto_episode_id: i64,
    /// The configuration it runs with (for a resumed round, the one it
    /// started with).
    pub config: Config,
    pub output_dir: PathBuf,
}

/// What a finished round produced.
#[derive(Debug, Clone)]
pub struct RoundResult {
    /// The engine's summary (JSON), as stored.
    pub summary: String,
    /// One line for people.
    pub headline: String,
    /// What was learned, a line each (shown by `daemon --once`).
    pub details: Vec<String>,
    pub llm_calls: u64,
    pub llm_tokens: u64,
    pub policy_version: Option<u64>,
    /// What an APO round's models sent back, for `/v1/status`.
    pub replies: Option<ReplyReport>,
    /// What an APO round found, for the prompt registry.
    pub winner: Option<Winner>,
}

/// Runs `job` to its end (or until `cancel` turns true) with
/// `plugins`, writing its outputs to `job.output_dir` and then into
/// `latest`. `progress` receives the engine's progress messages.
pub fn run_round(
    job: &RoundJob,
    plugins: &Plugins,
    latest: &Path,
    cancel: watch::Receiver<bool>,
    progress: &(dyn Fn(String) + Sync),
) -> anyhow::Result<RoundResult> {
    fs::create_dir_all(&job.output_dir)
        .with_context(|| format!("creating {}", job.output_dir.display()))?;
    let store = Store::open(&job.config.data_dir)?;
    let result = match job.kind {
        RoundKind::Apo => run_apo(job, plugins, &store, cancel, progress)?,
        RoundKind::Rl => run_rl(job, plugins, &store, cancel, progress)?,
    };
    publish_latest(&job.output_dir, latest)?;
    Ok(result)
}

/// The episodes a round covers: up to `upto`, of `prompt` when given.
fn episodes_upto(store: &Store, prompt: Option<&str>, upto: i64) -> anyhow::Result<Vec<Episode>> {
    let filter = EpisodeFilter {
        prompt_name: prompt.map(str::to_string),
        upto_id: Some(upto),
        ..EpisodeFilter::default()
    };
    Ok(store
        .load_episodes(&filter)?
        .into_iter()
        .map(|stored| stored.episode)
        .collect())
}

fn run_apo(
    job: &RoundJob,
    plugins: &Plugins,
    store: &Store,
    mut cancel: watch::Receiver<bool>,
    progress: &(dyn Fn(String) + Sync),
) -> anyhow::Result<RoundResult> {
    let config = &job.config;
    let episodes = episodes_upto(store, Some(&config.apo.target_prompt), job.upto_episode_id)?;
    let db_path = config.data_dir.join(store::DB_FILE_NAME);
    let conn = rusqlite::Connection::open(&db_path)
        .with_context(|| format!("opening {}", db_path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    let llm = LlmClient::new(config.llm.clone())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let run = apo::run(
        &episodes,
        &config.apo,
        &llm,
        plugins,
        &conn,
        &job.output_dir,
        |event| progress(apo_progress(&event)),
    );
    let summary = runtime.block_on(async {
        tokio::select! {
            summary = run => summary,
            _ = cancel.wait_for(|stop| *stop) => {
                anyhow::bail!("interrupted by shutdown; resumed from the evaluation cache at the next start")
            }
        }
    })?;
    // A winner is only worth registering when its gain was measured.
    let variant = |id: &str| summary.all_variants.iter().find(|v| v.id == id);
    let measured = summary.baseline_reward.zip(summary.optimized_reward);
    let winner = variant(&summary.best_variant_id).zip(measured).map(
        |(best, (baseline_reward, optimized_reward))| Winner {
            prompt: summary.target_prompt.clone(),
            baseline_text: summary
                .all_variants
                .iter()
                .find(|v| v.operator == "baseline")
                .map_or_else(String::new, |v| v.text.clone()),
            text: summary.best_prompt.clone(),
            operator: best.operator.clone(),
            baseline_reward,
            optimized_reward,
        },
    );
    let rewards = match measured {
        Some((baseline, optimized)) => format!(
            "validation reward {baseline:.3} -> {optimized:.3} ({:+.1}%)",
            summary.improvement_pct.unwrap_or(0.0)
        ),
        None => format!("validation reward {}", summary.validation),
    };
    let mut details = super::report::apo_details(&summary, config.apo.budget.max_llm_calls);
    details.extend(summary.replies.warnings());
    Ok(RoundResult {
        winner,
        details,
        headline: format!(
            "APO on `{}`: {rewards}, {} LLM calls, stopped: {}; {}",
            summary.target_prompt, summary.llm_calls, summary.stop_reason, summary.decision
        ),
        llm_calls: summary.llm_calls,
        llm_tokens: summary.tokens_in + summary.tokens_out,
        policy_version: None,
        replies: Some(summary.replies.clone()),
        summary: serde_json::to_string(&summary)?,
    })
}

fn apo_progress(event: &ProgressEvent) -> String {
    match event {
        ProgressEvent::DatasetReady { train, validation } => {
            format!("{train} train / {validation} validation examples")
        }
        ProgressEvent::GenerationStarted {
            generation,
            candidates,
        } => format!("generation {generation}: {candidates} new candidates"),
        ProgressEvent::GenerationFinished {
            generation,
            best,
            llm_calls,
            ..
        } => format!("generation {generation} done: best {best:.3}, {llm_calls} LLM calls"),
        ProgressEvent::ValidationStarted { candidates } => {
            format!("validating {candidates} finalists")
        }
        ProgressEvent::Stopped { reason } => format!("stopped: {reason}"),
    }
}

fn run_rl(
    job: &RoundJob,
    plugins: &Plugins,
    store: &Store,
    cancel: watch::Receiver<bool>,
    progress: &(dyn Fn(String) + Sync),
) -> anyhow::Result<RoundResult> {
    let config = &job.config;
    let (episodes, sample) = rl::sample::training_episodes(store, job.upto_episode_id, &config.rl)?;
    progress(format!(
        "sampled {} episodes ({} newest, {} replayed) of {}",
        episodes.len(),
        sample.recent_episodes,
        sample.replay_episodes,
        sample.episodes_considered
    ));
    let report = rl::train_until(
        &episodes,
        &config.rl,
        plugins,
        &job.output_dir,
        &config.data_dir.join("rl"),
        // Asked between PPO minibatches, so shutdown never waits for a
        // whole update.
        &|| *cancel.borrow(),
        &mut |event| match event {
            rl::TrainProgress::Started {
                training_decisions,
                logged_probabilities,
                iterations,
            } => progress(format!(
                "PPO on {training_decisions} decisions ({logged_probabilities} with a logged \
                 probability), {iterations} iterations"
            )),
            rl::TrainProgress::Iteration { iteration, .. } => {
                progress(format!("PPO iteration {iteration}"))
            }
        },
    )?;
    let mut actions: Vec<_> = report.actions.iter().collect();
    actions.sort_by(|a, b| b.1.greedy_frequency.total_cmp(&a.1.greedy_frequency));
    let details = actions
        .iter()
        .map(|(action, summary)| {
            format!(
                "{action}: chosen in {:.0}% of logged decisions; the learned policy's top choice in {:.0}% of states (mean probability {:.2})",
                summary.usage_frequency * 100.0,
                summary.greedy_frequency * 100.0,
                summary.learned_probability
            )
        })
        .collect();
    Ok(RoundResult {
        details,
        headline: format!(
            "PPO: {} training decisions, {} iterations; policy version {} {} ({})",
            report.episodes.training_decisions,
            report.training.iterations,
            report.promotion.policy_version,
            if report.promotion.promoted {
                "promoted"
            } else {
                "kept"
            },
            report.promotion.reason
        ),
        llm_calls: 0,
        llm_tokens: 0,
        policy_version: Some(report.promotion.policy_version),
        replies: None,
        winner: None,
        summary: serde_json::to_string(&report)?,
    })
}

/// Copies every file of `round_dir` into `latest`, each through a temporary
/// name and a rename, so a reader never sees a half-written file.
pub fn publish_latest(round_dir: &Path, latest: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(latest).with_context(|| format!("creating {}", latest.display()))?;
    for entry in fs::read_dir(round_dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name();
        let temporary = latest.join(format!(".{}.tmp", name.to_string_lossy()));
        fs::copy(entry.path(), &temporary).with_context(|| {
            format!("copying {} to {}", entry.path().display(), latest.display())
        })?;
        fs::File::open(&temporary)?.sync_all()?;
        fs::rename(&temporary, latest.join(&name))?;
    }
    Ok(())
}
