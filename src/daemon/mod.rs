//! The always-on service: `whetstone daemon`.
//!
//! It watches the trace folder, ingests what arrives (exactly once, through
//! `ingest::ingest_paths`), starts an APO round or a PPO update when enough
//! new data came in, serves the local HTTP API (`crate::api`), and reloads
//! `config.toml` when it is edited. Everything happens in one loop over a
//! closed set of [`Event`]s; the slow parts run elsewhere and report back
//! with an event:
//!
//! ```text
//!  watcher (notify) ─┐                       ┌─► ingest thread (owns a Store) ─┐
//!  poll timer ───────┼─► Event ─► daemon loop┤                                 ├─► Event
//!  SIGINT/SIGTERM ───┘              │        └─► round threads (APO, PPO) ─────┘
//!                                   └─► Status (shared with the API)
//! ```
//!
//! Ingestion never waits for a round: rounds run on their own threads with
//! their own store connections, one at a time per kind. A failed round is
//! retried with backoff; the daemon keeps running.

mod reload;
mod report;
mod rounds;
pub mod status;
mod triggers;
mod watcher;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, watch};

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::ingest::{self, IngestOptions, IngestReport};
use crate::otlp;
use crate::plugin::PluginSet;
use crate::registry::{self, Decision, Lineage, PromptRegistry};
use crate::store::{NewRound, Store, now_unix_ms};

pub use reload::{Reload, reload};
pub use rounds::{RoundKind, publish_latest};
pub use status::Status;

use rounds::{Candidate, RoundJob, RoundResult};
use triggers::{Backoff, Due};
use watcher::Change;

/// How `whetstone daemon` was started.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The configuration file to watch for edits; `None` when running on
    /// the embedded defaults.
    pub config_file: Option<PathBuf>,
    /// Catch up, run one PPO update and one APO round (if the endpoint
    /// answers), then exit.
    pub once: bool,
}

/// What the loop reacts to.
#[derive(Debug)]
enum Event {
    Change(Change),
    PollTick,
    DebounceElapsed,
    Ingested(Result<IngestReport, String>),
    PluginsReloaded,
    RoundEnded {
        kind: RoundKind,
        id: i64,
        result: Result<RoundResult, String>,
    },
    Shutdown,
}

/// Runs the daemon until SIGINT or SIGTERM (or, with `once`, until its one
/// pass is done). Lines for people go to `out`.
pub fn run(config: Config, options: DaemonOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut daemon = Daemon::start(config, options).await?;
        daemon.run(out).await
    })
}

struct Daemon {
    config: Config,
    options: DaemonOptions,
    store: Store,
    registry: PromptRegistry,
    /// The plugins of `[plugins] dir`, reloaded on change.
    plugins: Arc<PluginSet>,
    plugins_reloading: bool,
    shared: Arc<ApiState>,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    ingest_jobs: std::sync::mpsc::Sender<IngestOptions>,
    ingest_busy: bool,
    ingest_again: bool,
    debounce_until: Option<Instant>,
    running: BTreeMap<RoundKind, i64>,
    backoff: BTreeMap<RoundKind, Backoff>,
    started: Instant,
    cancel: watch::Sender<bool>,
    _watcher: Option<notify::RecommendedWatcher>,
    api_task: Option<tokio::task::JoinHandle<()>>,
    /// The OTLP receivers, when on.
    otlp: Option<otlp::Receiver>,
    /// Rounds interrupted by a crash, to run again first.
    resume: Vec<RoundJob>,
}

impl Daemon {
    async fn start(config: Config, options: DaemonOptions) -> anyhow::Result<Daemon> {
        for dir in [&config.data_dir, &config.traces.dir, &config.output_dir()] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let store = Store::open(&config.data_dir)?;
        let (events_tx, events) = mpsc::channel(256);
        let status = Status {
            started_at_unix_ms: now_unix_ms(),
            config_source: options
                .config_file
                .as_ref()
                .map_or("embedded defaults".to_string(), |f| f.display().to_string()),
            // The promoted version survives restarts with its checkpoint.
            policy_version: crate::rl::serve::promoted_version(&config.data_dir.join("rl"))?,
            ..Status::default()
        };
        let shared = Arc::new(ApiState::new(&config, status)?);

        // The ingest thread owns a store connection of its own.
        let (ingest_jobs, ingest_rx) = std::sync::mpsc::channel::<IngestOptions>();
        let mut ingest_store = Store::open(&config.data_dir)?;
        // Spans the OTLP receivers made durable are read from their spool
        // like any trace file.
        let spool_dir = otlp::spool_dir(&config.data_dir);
        std::fs::create_dir_all(&spool_dir)
            .with_context(|| format!("creating {}", spool_dir.display()))?;
        let ingest_paths = [config.traces.dir.clone(), spool_dir.clone()];
        let ingest_events = events_tx.clone();
        std::thread::Builder::new()
            .name("ingest".into())
            .spawn(move || {
                for options in ingest_rx {
                    let report = ingest::ingest_paths(
                        &mut ingest_store,
                        &ingest_paths,
                        &options,
                        &mut |_| {},
                    )
                    .and_then(|report| {
                        otlp::remove_ingested(&mut ingest_store, &spool_dir)?;
                        Ok(report)
                    })
                    .map_err(|err| format!("{:#}", anyhow::Error::from(err)));
                    if ingest_events
                        .blocking_send(Event::Ingested(report))
                        .is_err()
                    {
                        return;
                    }
                }
            })?;

        let (change_tx, mut change_rx) = mpsc::channel(16);
        let spooled = change_tx.clone();
        let watcher = if config.daemon.watch_events && !options.once {
            match watcher::watch(
                &config.traces.dir,
                options.config_file.as_deref(),
                Some(&config.plugins.dir),
                change_tx,
            ) {
                Ok(watcher) => Some(watcher),
                Err(err) => {
                    tracing::warn!(error = %err, "no filesystem events; polling every {}s", config.daemon.poll_interval_secs);
                    None
                }
            }
        } else {
            None
        };
        let forward = events_tx.clone();
        tokio::spawn(async move {
            while let Some(change) = change_rx.recv().await {
                if forward.send(Event::Change(change)).await.is_err() {
                    return;
                }
            }
        });

        let api_task = if options.once {
            None
        } else {
            Some(api::serve(&config.api, Arc::clone(&shared)).await?)
        };
        let otlp = if options.once {
            None
        } else {
            let token = otlp::Token {
                env: &config.api.token_env,
                value: std::env::var(&config.api.token_env)
                    .ok()
                    .filter(|token| !token.is_empty()),
            };
            let appended = Box::new(move || {
                let _ = spooled.try_send(Change::Traces);
            });
            otlp::Receiver::start(&config.otlp, &config.data_dir, token, appended).await?
        };
        let resume = interrupted_rounds(&store)?;
        let registry = PromptRegistry::open(&config.data_dir, config.registry.clone(), "daemon")?;
        let plugins = Arc::new(config.plugins.open(&config.data_dir)?);
        let (cancel, _) = watch::channel(false);
        Ok(Daemon {
            config,
            options,
            store,
            registry,
            plugins,
            plugins_reloading: false,
            shared,
            events_tx,
            events,
            ingest_jobs,
            ingest_busy: false,
            ingest_again: false,
            debounce_until: None,
            running: BTreeMap::new(),
            backoff: BTreeMap::new(),
            started: Instant::now(),
            cancel,
            _watcher: watcher,
            api_task,
            otlp,
            resume,
        })
    }

    async fn run(&mut self, out: &mut dyn Write) -> anyhow::Result<()> {
        tracing::info!(
            config = %self.shared.status().config_source,
            traces = %self.config.traces.dir.display(),
            outputs = %self.config.output_dir().display(),
            "daemon started"
        );
        spawn_signal_listener(self.events_tx.clone());
        // Rounds (resumed ones too) use the plugins, so they load first.
        tokio::task::spawn_blocking(self.plugin_reload()).await?;
        if self.options.once {
            return self.run_once(out).await;
        }
        for job in std::mem::take(&mut self.resume) {
            tracing::info!(
                round = job.id,
                kind = job.kind.as_str(),
                "resuming an interrupted round"
            );
            self.store.resume_round(job.id)?;
            self.launch(job);
        }
        self.request_ingest(false);
        let mut poll =
            tokio::time::interval(Duration::from_secs(self.config.daemon.poll_interval_secs));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let debounce = self.debounce_until;
            let event = tokio::select! {
                Some(event) = self.events.recv() => event,
                _ = poll.tick() => Event::PollTick,
                _ = sleep_until(debounce), if debounce.is_some() => Event::DebounceElapsed,
            };
            match event {
                Event::Change(Change::Traces) => {
                    if self.debounce_until.is_none() {
                        self.debounce_until = Some(
                            Instant::now()
                                + Duration::from_millis(self.config.daemon.debounce_millis),
                        );
                    }
                }
                Event::Change(Change::Config) => self.reload_config(),
                Event::Change(Change::Plugins) => self.reload_plugins(),
                Event::PluginsReloaded => self.plugins_reloading = false,
                Event::DebounceElapsed => {
                    self.debounce_until = None;
                    self.request_ingest(false);
                }
                Event::PollTick => {
                    self.request_ingest(false);
                    self.reload_plugins();
                    self.start_due_rounds().await?;
                }
                Event::Ingested(report) => {
                    self.ingested(report);
                    self.step_tests();
                    self.start_due_rounds().await?;
                }
                Event::RoundEnded { kind, id, result } => {
                    self.round_ended(kind, id, result)?;
                    self.start_due_rounds().await?;
                }
                Event::Shutdown => return self.shutdown().await,
            }
        }
    }

    /// `daemon --once`: catch up, one PPO update, one APO round if the
    /// endpoint answers, then report and exit.
    async fn run_once(&mut self, out: &mut dyn Write) -> anyhow::Result<()> {
        let options = IngestOptions {
            finalize: true,
            ..IngestOptions::from(&self.config.traces)
        };
        self.ingest_busy = true;
        self.ingest_jobs.send(options)?;
        let mut planned: Vec<RoundKind> = Vec::new();
        loop {
            match self.events.recv().await {
                Some(Event::Ingested(report)) => {
                    let report = self.ingested(report);
                    if let Some(report) = report {
                        writeln!(
                            out,
                            "ingested {} new episodes from {} ({} duplicates skipped, {} rejected)",
                            report.episodes_new,
                            self.config.traces.dir.display(),
                            report.episodes_duplicate,
                            report.rejects_total()
                        )?;
                    }
                    let arrivals = self.store.arrivals_since(0, None)?;
                    if arrivals.decisions > 0 {
                        planned.push(RoundKind::Rl);
                    }
                    let target = &self.config.apo.target_prompt;
                    if self.store.arrivals_since(0, Some(target))?.episodes == 0 {
                        writeln!(
                            out,
                            "APO skipped: no episode of prompt `{target}` (apo.target_prompt)"
                        )?;
                    } else if let Some(why) = triggers::endpoint_unreachable(&self.config.llm).await
                    {
                        writeln!(out, "APO skipped: {why}")?;
                    } else {
                        planned.push(RoundKind::Apo);
                    }
                    planned.reverse();
                    match planned.pop() {
                        Some(kind) => self.launch_new(kind, "daemon --once")?,
                        None => break,
                    }
                }
                Some(Event::RoundEnded { kind, id, result }) => {
                    let round_dir = self.round_dir(id, kind);
                    match &result {
                        Ok(result) => {
                            writeln!(out, "{}", result.headline)?;
                            for line in &result.details {
                                writeln!(out, "  {line}")?;
                            }
                        }
                        Err(err) => writeln!(out, "{} round {id} failed: {err}", kind.as_str())?,
                    }
                    let succeeded = result.is_ok();
                    self.round_ended(kind, id, result)?;
                    if succeeded && kind == RoundKind::Apo {
                        writeln!(out, "  {}", self.registered_by(id))?;
                    }
                    if succeeded {
                        writeln!(out, "  outputs: {}", round_dir.display())?;
                    }
                    match planned.pop() {
                        Some(kind) => self.launch_new(kind, "daemon --once")?,
                        None => break,
                    }
                }
                Some(Event::Shutdown) => return self.shutdown().await,
                Some(_) => {}
                None => break,
            }
        }
        writeln!(
            out,
            "latest outputs: {}",
            self.config.output_dir().join("latest").display()
        )?;
        let failed: u64 = self.shared.status().rounds_failed.values().sum();
        if failed > 0 {
            anyhow::bail!("{failed} round(s) failed (listed above)");
        }
        Ok(())
    }

    /// What the registry holds from APO round `id`, in one line.
    fn registered_by(&self, id: i64) -> String {
        let prompt = &self.config.apo.target_prompt;
        match self.registry.store().prompt_versions(prompt) {
            Ok(versions) => match versions.iter().find(|v| v.round_id == Some(id)) {
                Some(version) => format!(
                    "registered: prompt `{prompt}` version {} labelled `{}` (`whetstone prompts show {prompt} {}`)",
                    version.version,
                    registry::CANDIDATE,
                    version.version
                ),
                None => format!("registered: nothing (the baseline of `{prompt}` stays)"),
            },
            Err(err) => format!("registered: unknown, the registry cannot be read ({err})"),
        }
    }

    fn request_ingest(&mut self, finalize: bool) {
        if self.ingest_busy {
            self.ingest_again = true;
            return;
        }
        let options = IngestOptions {
            finalize,
            ..IngestOptions::from(&self.config.traces)
        };
        if self.ingest_jobs.send(options).is_ok() {
            self.ingest_busy = true;
        }
    }

    fn ingested(&mut self, report: Result<IngestReport, String>) -> Option<IngestReport> {
        self.ingest_busy = false;
        if std::mem::take(&mut self.ingest_again) {
            self.request_ingest(false);
        }
        let mut status = self.shared.status_mut();
        match report {
            Ok(report) => {
                if report.episodes_new > 0 || report.rejects_total() > 0 {
                    tracing::info!(
                        episodes = report.episodes_new,
                        rejects = report.rejects_total(),
                        lines = report.lines,
                        "ingested"
                    );
                }
                for problem in report.file_errors.iter().chain(&report.skipped) {
                    tracing::debug!(path = %problem.path.display(), why = %problem.error, "trace path not read");
                }
                status.ingest.add(&report, now_unix_ms());
                Some(report)
            }
            Err(err) => {
                tracing::error!(error = %err, "ingestion pass failed; retrying at the next one");
                status.ingest.last_error = Some(err);
                None
            }
        }
    }

    /// Starts every round whose trigger fired and that is not already running
    /// or waiting for a retry.
    async fn start_due_rounds(&mut self) -> anyhow::Result<()> {
        for kind in [RoundKind::Rl, RoundKind::Apo] {
            if self.running.contains_key(&kind)
                || self.backoff.get(&kind).is_some_and(|b| !b.ready())
            {
                continue;
            }
            let Some(due) = triggers::due(kind, &self.config, &self.store, self.started.elapsed())?
            else {
                continue;
            };
            if kind == RoundKind::Apo {
                let unreachable = triggers::endpoint_unreachable(&self.config.llm).await;
                if let Some(why) = &unreachable {
                    let mut status = self.shared.status_mut();
                    if status.apo_disabled.as_ref() != Some(why) {
                        tracing::warn!("APO round not started: {why}");
                    }
                    status.apo_disabled = unreachable;
                    self.backoff.entry(kind).or_default().failed(&self.config);
                    continue;
                }
                self.shared.status_mut().apo_disabled = None;
            }
            let Due { reason } = due;
            self.launch_new(kind, &reason)?;
        }
        Ok(())
    }

    fn round_dir(&self, id: i64, kind: RoundKind) -> PathBuf {
        self.config
            .output_dir()
            .join("rounds")
            .join(format!("{id}-{}", kind.as_str()))
    }

    /// Records a new round over everything stored now, and starts it.
    fn launch_new(&mut self, kind: RoundKind, trigger: &str) -> anyhow::Result<()> {
        let upto_episode_id = self.store.max_episode_id()?;
        let settings = serde_json::to_string(&self.config)?;
        let subject = kind.subject(&self.config);
        // The id names the folder, so the row is written first.
        let id = self.store.start_round(&NewRound {
            kind: kind.as_str(),
            subject: &subject,
            trigger,
            upto_episode_id,
            settings: &settings,
            output_dir: "",
        })?;
        let output_dir = self.round_dir(id, kind);
        self.store
            .set_round_output_dir(id, &output_dir.to_string_lossy())?;
        tracing::info!(round = id, kind = kind.as_str(), %trigger, "round started");
        self.launch(RoundJob {
            id,
            kind,
            upto_episode_id,
            config: self.config.clone(),
            output_dir,
        });
        Ok(())
    }

    /// Runs `job` on a blocking thread; its end arrives as an event.
    fn launch(&mut self, job: RoundJob) {
        self.running.insert(job.kind, job.id);
        self.shared.status_mut().running.insert(
            job.kind.as_str().to_string(),
            status::RunningRound {
                id: job.id,
                subject: job.kind.subject(&job.config),
                started_at_unix_ms: now_unix_ms(),
                progress: "starting".into(),
            },
        );
        let latest = self.config.output_dir().join("latest");
        let events = self.events_tx.clone();
        let shared = Arc::clone(&self.shared);
        let cancel = self.cancel.subscribe();
        let plugins = self.plugins.current();
        tokio::task::spawn_blocking(move || {
            let kind_name = job.kind.as_str();
            let _span = tracing::info_span!("round", id = job.id, kind = kind_name).entered();
            let progress = |message: String| {
                if let Some(round) = shared.status_mut().running.get_mut(kind_name) {
                    round.progress = message;
                }
            };
            let result = rounds::run_round(&job, &plugins, &latest, cancel, &progress)
                .map_err(|err| format!("{err:#}"));
            let _ = events.blocking_send(Event::RoundEnded {
                kind: job.kind,
                id: job.id,
                result,
            });
        });
    }

    fn round_ended(
        &mut self,
        kind: RoundKind,
        id: i64,
        result: Result<RoundResult, String>,
    ) -> anyhow::Result<()> {
        self.running.remove(&kind);
        let mut status = self.shared.status_mut();
        status.running.remove(kind.as_str());
        status.llm_max_tokens_fields = crate::llm::limit_field::learned()
            .into_iter()
            .map(|(endpoint, field)| (endpoint, field.to_string()))
            .collect();
        match result {
            Ok(result) => {
                tracing::info!(round = id, kind = kind.as_str(), "{}", result.headline);
                self.store.finish_round(id, Ok(&result.summary))?;
                *status
                    .rounds_succeeded
                    .entry(kind.as_str().into())
                    .or_default() += 1;
                status.llm_calls += result.llm_calls;
                status.llm_tokens += result.llm_tokens;
                if result.replies.is_some() {
                    status.apo_replies = result.replies.clone();
                }
                if result.policy_version.is_some() {
                    status.policy_version = result.policy_version;
                }
                drop(status);
                if let Some(candidate) = &result.candidate {
                    self.register_candidate(candidate, id);
                }
                let mut status = self.shared.status_mut();
                status.retry_at_unix_ms.remove(kind.as_str());
                self.backoff.remove(&kind);
            }
            Err(err) => {
                if *self.cancel.borrow() {
                    // Interrupted by shutdown: stays `running`, resumed at
                    // the next start.
                    return Ok(());
                }
                let backoff = self.backoff.entry(kind).or_default();
                let delay = backoff.failed(&self.config);
                tracing::error!(round = id, kind = kind.as_str(), error = %err, retry_in_secs = delay.as_secs(), "round failed");
                self.store.finish_round(id, Err(&err))?;
                *status
                    .rounds_failed
                    .entry(kind.as_str().into())
                    .or_default() += 1;
                status.retry_at_unix_ms.insert(
                    kind.as_str().into(),
                    now_unix_ms() + delay.as_millis() as i64,
                );
            }
        }
        Ok(())
    }

    /// Registers an APO round's winner as a `candidate` version of its
    /// prompt (the baseline too, if the prompt has no version yet), and with
    /// `registry.auto_rollout` starts a staged rollout of it. Registry
    /// trouble is logged, never fatal to the round.
    fn register_candidate(&mut self, candidate: &Candidate, round_id: i64) {
        if let Err(err) = self.try_register_candidate(candidate, round_id) {
            tracing::error!(error = %format!("{err:#}"), prompt = %candidate.prompt, "cannot register the APO winner");
        }
    }

    fn try_register_candidate(
        &mut self,
        candidate: &Candidate,
        round_id: i64,
    ) -> anyhow::Result<()> {
        let prompt = &candidate.prompt;
        if candidate.text == candidate.baseline_text
            || candidate.optimized_reward <= candidate.baseline_reward
        {
            tracing::info!(%prompt, "APO kept the baseline; nothing to register");
            return Ok(());
        }
        let baseline = self.registry.register_prompt(
            None,
            prompt,
            &candidate.baseline_text,
            Lineage {
                operator: Some("baseline".into()),
                ..Lineage::default()
            },
        )?;
        let control = self
            .registry
            .labelled(prompt, registry::PRODUCTION)?
            .unwrap_or(baseline.version);
        let scores = serde_json::json!({
            "baseline_reward": candidate.baseline_reward,
            "optimized_reward": candidate.optimized_reward,
        });
        let version = self.registry.register_prompt(
            None,
            prompt,
            &candidate.text,
            Lineage {
                parent_version: Some(control.clone()),
                operator: Some(candidate.operator.clone()),
                round_id: Some(round_id),
                scores: Some(scores.to_string()),
            },
        )?;
        self.registry
            .set_label(prompt, registry::CANDIDATE, &version.version, "APO winner")?;
        tracing::info!(%prompt, version = %version.version, "APO winner registered as candidate");
        if self.config.registry.auto_rollout && version.version != control {
            if self.registry.store().running_ab_test(prompt)?.is_some() {
                tracing::info!(%prompt, "a test is running; the candidate waits");
            } else {
                let id = self
                    .registry
                    .start_rollout(prompt, &control, &version.version)?;
                tracing::info!(%prompt, test = id, control = %control, treatment = %version.version, "staged rollout started");
            }
        }
        Ok(())
    }

    /// Reloads `[plugins] dir` on a blocking thread (compiling a changed
    /// plugin takes a while): changed files load anew, a failed load keeps
    /// the previous version, a removed file unloads. The outcome goes to
    /// the status and the log.
    fn reload_plugins(&mut self) {
        if self.plugins_reloading {
            return;
        }
        self.plugins_reloading = true;
        let reload = self.plugin_reload();
        let events = self.events_tx.clone();
        tokio::task::spawn_blocking(move || {
            reload();
            let _ = events.blocking_send(Event::PluginsReloaded);
        });
    }

    /// A reload of the plugin set that reports into the status when run.
    fn plugin_reload(&self) -> impl FnOnce() + Send + 'static {
        let plugins = Arc::clone(&self.plugins);
        let shared = Arc::clone(&self.shared);
        let dir = self.config.plugins.dir.clone();
        move || {
            // The set logs what it loaded, unloaded and failed to load.
            let report = plugins.reload();
            let mut status = shared.status_mut();
            status.plugins = plugins
                .plugins()
                .iter()
                .map(|p| {
                    format!(
                        "{} ({}, whetstone:plugin@{})",
                        p.name,
                        p.world.as_str(),
                        p.version.as_str()
                    )
                })
                .collect();
            status.plugin_errors = report
                .failed
                .iter()
                .map(ToString::to_string)
                // No folder means no plugins, not a problem.
                .chain(report.dir_error.filter(|_| dir.exists()))
                .collect();
        }
    }

    /// Lets every running A/B test act on what was just ingested.
    fn step_tests(&mut self) {
        let tests = match self.registry.store().running_ab_tests() {
            Ok(tests) => tests,
            Err(err) => return tracing::error!(error = %err, "cannot read the running A/B tests"),
        };
        for test in tests {
            match self.registry.step(&test.prompt) {
                Ok(Some(Decision::Wait(_)) | None) => {}
                Ok(Some(decision)) => {
                    tracing::info!(prompt = %test.prompt, test = test.id, ?decision, "A/B test");
                }
                Err(err) => {
                    tracing::error!(prompt = %test.prompt, error = %format!("{err:#}"), "A/B test step failed");
                }
            }
        }
    }

    fn reload_config(&mut self) {
        let Some(file) = self.options.config_file.clone() else {
            return;
        };
        let mut status = self.shared.status_mut();
        match reload(&file, &self.config) {
            Reload::Unchanged => {}
            Reload::Applied {
                config,
                restart_required,
            } => {
                tracing::info!(file = %file.display(), "configuration reloaded; it applies from the next round");
                if !restart_required.is_empty() {
                    tracing::warn!(keys = ?restart_required, "these changes need a restart; their old values stay in force");
                }
                status.config_reloads += 1;
                status.config_errors.clear();
                status.restart_required = restart_required;
                self.config = *config;
                drop(status);
                self.shared.set_config(&self.config);
                self.registry.set_config(self.config.registry.clone());
            }
            // One save often sends several events: the same refusal is
            // reported once.
            Reload::Refused(problems) if problems == status.config_errors => {}
            Reload::Refused(problems) => {
                for problem in &problems {
                    tracing::error!("configuration edit refused, the running one stays: {problem}");
                }
                status.config_reload_errors += 1;
                status.config_errors = problems;
            }
        }
    }

    /// Stops intake, lets rounds stop at their next safe point (APO: at
    /// once, its cache holds every call made; PPO: up to a few seconds),
    /// then returns.
    async fn shutdown(&mut self) -> anyhow::Result<()> {
        tracing::info!("shutting down");
        self._watcher = None;
        let _ = self.cancel.send(true);
        if let Some(task) = self.api_task.take() {
            task.abort();
        }
        if let Some(receiver) = self.otlp.take() {
            receiver.shutdown().await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.running.is_empty() || self.ingest_busy {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Event::RoundEnded { kind, id, result })) => {
                    self.round_ended(kind, id, result)?;
                }
                Ok(Some(Event::Ingested(report))) => {
                    self.ingest_again = false;
                    self.ingested(report);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Rounds a crash left marked running, as jobs with the settings they
/// started with.
fn interrupted_rounds(store: &Store) -> anyhow::Result<Vec<RoundJob>> {
    let mut jobs = Vec::new();
    for round in store.running_rounds()? {
        let (Some(kind), Ok(config)) = (
            RoundKind::parse(&round.kind),
            serde_json::from_str::<Config>(&round.settings),
        ) else {
            tracing::warn!(
                round = round.id,
                "cannot resume a round of unknown kind or settings"
            );
            continue;
        };
        jobs.push(RoundJob {
            id: round.id,
            kind,
            upto_episode_id: round.upto_episode_id,
            config,
            output_dir: PathBuf::from(round.output_dir),
        });
    }
    Ok(jobs)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Sends [`Event::Shutdown`] on SIGINT (Ctrl-C) or SIGTERM.
fn spawn_signal_listener(events: mpsc::Sender<Event>) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        let _ = events.send(Event::Shutdown).await;
    });
}
