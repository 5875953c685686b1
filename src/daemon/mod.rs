//! The always-on service: `whetstone daemon`.
//!
//! It watches the trace folder, ingests what arrives (exactly once, through
//! `ingest::ingest_paths`), starts an APO round or a PPO update when enough
//! new data came in, serves the local HTTP API (`crate::api`), and reloads
//! `config.toml` when it is edited. Everything happens in one loop over a
//! closed set of [`Event`]s; nothing in the loop blocks, the slow parts run
//! elsewhere and report back with an event or an awaited reply:
//!
//! ```text
//!  watcher (notify) ─┐                          ┌─► ingest thread (owns a Store) ──┐
//!  poll timer ───────┤                          ├─► round threads (APO, PPO) ──────┤
//!  SIGINT/SIGTERM ───┼─► Event ─► daemon loop ──┼─► endpoint probe task ───────────┼─► Event
//!  plugin reloads ───┘              │   ▲       └─► plugin reload (blocking) ──────┘
//!                                   │   └── awaits ── store thread (Store + registry)
//!                                   └─► watch<Status> ─► api (reads only)
//! ```
//!
//! The daemon's store and registry connections belong to one thread
//! ([`Owner`]), fed closures by channel. Ingestion never waits for a round:
//! rounds run on their own threads with their own store connections, one at
//! a time per kind. A failed round is retried with backoff; so is a step of
//! the loop's own that fails on the store (another process holding the
//! database longer than `daemon.store_busy_timeout_secs`, say): the error is
//! shown in `/v1/status` (`store_error`) and the daemon keeps running.

mod once;
mod reload;
mod report;
mod rounds;
mod triggers;
mod watcher;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, watch};

use crate::api::{self, ApiState, RunningRound, Status};
use crate::config::Config;
use crate::ingest::{self, IngestOptions, IngestReport};
use crate::otlp;
use crate::owner::Owner;
use crate::plugin::PluginSet;
use crate::registry::PromptRegistry;
use crate::store::{NewRound, Store, StoreError, now_unix_ms};

pub use reload::{Reload, reload};
pub use rounds::{RoundKind, publish_latest};

use rounds::{RoundJob, RoundResult};
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
    PluginsReloaded(PluginsLoaded),
    /// The LLM endpoint was probed before an APO round that is `due`:
    /// `unreachable` says why not, when it did not answer.
    EndpointProbed {
        due: Due,
        unreachable: Option<String>,
    },
    RoundProgress {
        kind: RoundKind,
        message: String,
    },
    RoundEnded {
        kind: RoundKind,
        id: i64,
        result: Result<RoundResult, String>,
    },
    Shutdown,
}

/// The plugins loaded after a reload, and the failures, for the status.
#[derive(Debug, Default)]
struct PluginsLoaded {
    plugins: Vec<String>,
    errors: Vec<String>,
}

/// What the store thread owns: the daemon's store connection and registry.
struct DaemonDb {
    store: Store,
    registry: PromptRegistry,
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
    db: Owner<DaemonDb>,
    /// The plugins of `[plugins] dir`, reloaded on change.
    plugins: Arc<PluginSet>,
    plugins_reloading: bool,
    /// The status, published to the API; only the loop writes it.
    status: watch::Sender<Status>,
    api: Arc<ApiState>,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    ingest_jobs: std::sync::mpsc::Sender<IngestOptions>,
    ingest_busy: bool,
    ingest_again: bool,
    debounce_until: Option<Instant>,
    running: BTreeMap<RoundKind, i64>,
    /// An endpoint probe before an APO round is in flight.
    probing: bool,
    backoff: BTreeMap<RoundKind, Backoff>,
    /// Retry timing of the loop's own store steps after a store error.
    store_backoff: Backoff,
    /// The step whose store error is reported; its next success clears it.
    failed_step: Option<&'static str>,
    /// Round outcomes the store could not record yet, retried on each poll.
    unrecorded: Vec<(i64, Result<String, String>)>,
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
        let busy_timeout = Duration::from_secs(config.daemon.store_busy_timeout_secs);
        let store = Store::open_with_busy_timeout(&config.data_dir, busy_timeout)?;
        let resume = interrupted_rounds(&store)?;
        let registry = PromptRegistry::new(
            Store::open_with_busy_timeout(&config.data_dir, busy_timeout)?,
            config.registry.clone(),
            "daemon",
        );
        let db = Owner::spawn("daemon-store", DaemonDb { store, registry })?;
        let (events_tx, events) = mpsc::channel(256);
        let (status, status_rx) = watch::channel(Status {
            started_at_unix_ms: now_unix_ms(),
            config_source: options
                .config_file
                .as_ref()
                .map_or("embedded defaults".to_string(), |f| f.display().to_string()),
            // The promoted version survives restarts with its checkpoint.
            policy_version: crate::rl::serve::promoted_version(&config.data_dir.join("rl"))?,
            ..Status::default()
        });
        let api = Arc::new(ApiState::new(&config, status_rx)?);
        let ingest_jobs = spawn_ingest_thread(&config, events_tx.clone())?;
        let watcher = if config.daemon.watch_events && !options.once {
            spawn_watcher(&config, &options, events_tx.clone())
        } else {
            None
        };
        let api_task = if options.once {
            None
        } else {
            Some(api::serve(&config.api, Arc::clone(&api)).await?)
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
            let spooled = events_tx.clone();
            let appended = Box::new(move || {
                let _ = spooled.try_send(Event::Change(Change::Traces));
            });
            otlp::Receiver::start(&config.otlp, &config.data_dir, token, appended).await?
        };
        let plugins = Arc::new(config.plugins.open(&config.data_dir)?);
        let (cancel, _) = watch::channel(false);
        Ok(Daemon {
            config,
            options,
            db,
            plugins,
            plugins_reloading: false,
            status,
            api,
            events_tx,
            events,
            ingest_jobs,
            ingest_busy: false,
            ingest_again: false,
            debounce_until: None,
            running: BTreeMap::new(),
            probing: false,
            backoff: BTreeMap::new(),
            store_backoff: Backoff::default(),
            failed_step: None,
            unrecorded: Vec::new(),
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
            config = %self.status.borrow().config_source,
            traces = %self.config.traces.dir.display(),
            outputs = %self.config.output_dir().display(),
            "daemon started"
        );
        spawn_signal_listener(self.events_tx.clone());
        // Rounds (resumed ones too) use the plugins, so they load first.
        let loaded = tokio::task::spawn_blocking(self.plugin_reload()).await?;
        self.plugins_loaded(loaded);
        if self.options.once {
            return self.run_once(out).await;
        }
        for job in std::mem::take(&mut self.resume) {
            tracing::info!(
                round = job.id,
                kind = job.kind.as_str(),
                "resuming an interrupted round"
            );
            let id = job.id;
            // Only counts the attempt: the round runs again either way.
            if let Err(err) = self.store(move |db| db.store.resume_round(id)).await {
                self.store_failed("resuming a round", err);
            }
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
            if let Event::Shutdown = event {
                return self.shutdown().await;
            }
            self.handle(event).await;
        }
    }

    /// One event of the running loop.
    async fn handle(&mut self, event: Event) {
        match event {
            Event::Change(Change::Traces) => {
                if self.debounce_until.is_none() {
                    self.debounce_until = Some(
                        Instant::now() + Duration::from_millis(self.config.daemon.debounce_millis),
                    );
                }
            }
            Event::Change(Change::Config) => self.reload_config().await,
            Event::Change(Change::Plugins) => self.reload_plugins(),
            Event::PluginsReloaded(loaded) => {
                self.plugins_reloading = false;
                self.plugins_loaded(loaded);
            }
            Event::DebounceElapsed => {
                self.debounce_until = None;
                self.request_ingest(false);
            }
            Event::PollTick => {
                self.request_ingest(false);
                self.reload_plugins();
                self.record_unrecorded().await;
                self.start_due_rounds().await;
            }
            Event::Ingested(report) => {
                self.ingested(report);
                self.step_tests().await;
                self.start_due_rounds().await;
            }
            Event::EndpointProbed { due, unreachable } => {
                self.probing = false;
                self.endpoint_probed(due, unreachable).await;
            }
            Event::RoundProgress { kind, message } => self.status.send_modify(|status| {
                if let Some(round) = status.running.get_mut(kind.as_str()) {
                    round.progress = message;
                }
            }),
            Event::RoundEnded { kind, id, result } => {
                self.round_ended(kind, id, result).await;
                self.start_due_rounds().await;
            }
            Event::Shutdown => {}
        }
    }

    /// Runs `f` on the store thread.
    async fn store<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DaemonDb) -> Result<R, StoreError> + Send + 'static,
    ) -> anyhow::Result<R> {
        Ok(self.db.call(f).await??)
    }

    /// `step` of the loop failed on the store: reported in the status, and
    /// the loop's store steps pause for the backoff.
    fn store_failed(&mut self, step: &'static str, err: anyhow::Error) {
        let delay = self.store_backoff.failed(&self.config);
        self.failed_step = Some(step);
        let message = format!("{step}: {err:#}");
        tracing::error!(error = %message, retry_in_secs = delay.as_secs(), "store error; the daemon keeps running and retries");
        self.status.send_modify(|status| {
            status.store_error = Some(message);
            status.store_errors += 1;
        });
    }

    /// `step` succeeded: the store error it reported is over. (Another
    /// step's success proves nothing: reads go on while another process
    /// holds the write lock.)
    fn store_recovered(&mut self, step: &'static str) {
        if self.failed_step != Some(step) {
            return;
        }
        tracing::info!(step, "store steps succeed again");
        self.failed_step = None;
        self.status.send_modify(|status| status.store_error = None);
        self.store_backoff = Backoff::default();
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
                self.status
                    .send_modify(|status| status.ingest.add(&report, now_unix_ms()));
                Some(report)
            }
            Err(err) => {
                tracing::error!(error = %err, "ingestion pass failed; retrying at the next one");
                self.status
                    .send_modify(|status| status.ingest.last_error = Some(err));
                None
            }
        }
    }

    /// Starts every round whose trigger fired and that is not already running
    /// or waiting for a retry; an APO round first probes the endpoint (the
    /// answer comes back as [`Event::EndpointProbed`]).
    async fn start_due_rounds(&mut self) {
        if !self.store_backoff.ready() {
            return;
        }
        for kind in [RoundKind::Rl, RoundKind::Apo] {
            if self.running.contains_key(&kind)
                || (kind == RoundKind::Apo && self.probing)
                || self.backoff.get(&kind).is_some_and(|b| !b.ready())
            {
                continue;
            }
            let config = self.config.clone();
            let uptime = self.started.elapsed();
            const STEP: &str = "checking whether a round is due";
            let due = match self
                .store(move |db| triggers::due(kind, &config, &db.store, uptime))
                .await
            {
                Ok(due) => due,
                Err(err) => return self.store_failed(STEP, err),
            };
            self.store_recovered(STEP);
            let Some(due) = due else {
                continue;
            };
            match kind {
                RoundKind::Rl => {
                    if !self.launch_new(kind, &due.reason).await {
                        return;
                    }
                }
                RoundKind::Apo => self.probe_endpoint(due),
            }
        }
    }

    /// Probes the LLM endpoint on a task of its own (up to 3 s), so the loop
    /// goes on meanwhile.
    fn probe_endpoint(&mut self, due: Due) {
        self.probing = true;
        let llm = self.config.llm.clone();
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let unreachable = triggers::endpoint_unreachable(&llm).await;
            let _ = events
                .send(Event::EndpointProbed { due, unreachable })
                .await;
        });
    }

    async fn endpoint_probed(&mut self, due: Due, unreachable: Option<String>) {
        if let Some(why) = &unreachable {
            if self.status.borrow().apo_disabled.as_ref() != Some(why) {
                tracing::warn!("APO round not started: {why}");
            }
            self.status
                .send_modify(|status| status.apo_disabled = unreachable);
            self.backoff
                .entry(RoundKind::Apo)
                .or_default()
                .failed(&self.config);
            return;
        }
        self.status.send_modify(|status| status.apo_disabled = None);
        if !self.running.contains_key(&RoundKind::Apo) {
            self.launch_new(RoundKind::Apo, &due.reason).await;
        }
    }

    fn round_dir(&self, id: i64, kind: RoundKind) -> PathBuf {
        round_dir(&self.config, id, kind)
    }

    /// Records a new round over everything stored now, and starts it; a
    /// store error is reported (and retried by the caller after the
    /// backoff). Whether it started.
    async fn launch_new(&mut self, kind: RoundKind, trigger: &str) -> bool {
        const STEP: &str = "starting a round";
        match self.record_new_round(kind, trigger).await {
            Ok(job) => {
                self.store_recovered(STEP);
                tracing::info!(round = job.id, kind = kind.as_str(), %trigger, "round started");
                self.launch(job);
                true
            }
            Err(err) => {
                self.store_failed(STEP, err);
                false
            }
        }
    }

    async fn record_new_round(&self, kind: RoundKind, trigger: &str) -> anyhow::Result<RoundJob> {
        let settings = serde_json::to_string(&self.config)?;
        let subject = kind.subject(&self.config);
        let trigger = trigger.to_string();
        let config = self.config.clone();
        let (id, upto_episode_id, output_dir) = self
            .store(move |db| {
                let upto_episode_id = db.store.max_episode_id()?;
                // The id names the folder, so the row is written first.
                let id = db.store.start_round(&NewRound {
                    kind: kind.as_str(),
                    subject: &subject,
                    trigger: &trigger,
                    upto_episode_id,
                    settings: &settings,
                    output_dir: "",
                })?;
                let output_dir = round_dir(&config, id, kind);
                db.store
                    .set_round_output_dir(id, &output_dir.to_string_lossy())?;
                Ok((id, upto_episode_id, output_dir))
            })
            .await?;
        Ok(RoundJob {
            id,
            kind,
            upto_episode_id,
            config: self.config.clone(),
            output_dir,
        })
    }

    /// Runs `job` on a blocking thread; its progress and end arrive as
    /// events.
    fn launch(&mut self, job: RoundJob) {
        self.running.insert(job.kind, job.id);
        let round = RunningRound {
            id: job.id,
            subject: job.kind.subject(&job.config),
            started_at_unix_ms: now_unix_ms(),
            progress: "starting".into(),
        };
        self.status.send_modify(|status| {
            status.running.insert(job.kind.as_str().to_string(), round);
        });
        let latest = self.config.output_dir().join("latest");
        let events = self.events_tx.clone();
        let cancel = self.cancel.subscribe();
        let plugins = self.plugins.current();
        tokio::task::spawn_blocking(move || {
            let kind = job.kind;
            let _span = tracing::info_span!("round", id = job.id, kind = kind.as_str()).entered();
            // Progress is a latest-value report: one lost to a full queue
            // is replaced by the next.
            let progress = |message: String| {
                let _ = events.try_send(Event::RoundProgress { kind, message });
            };
            let result = rounds::run_round(&job, &plugins, &latest, cancel, &progress)
                .map_err(|err| format!("{err:#}"));
            let _ = events.blocking_send(Event::RoundEnded {
                kind,
                id: job.id,
                result,
            });
        });
    }

    async fn round_ended(&mut self, kind: RoundKind, id: i64, result: Result<RoundResult, String>) {
        self.running.remove(&kind);
        self.status.send_modify(|status| {
            status.running.remove(kind.as_str());
            status.llm_max_tokens_fields = crate::llm::limit_field::learned()
                .into_iter()
                .map(|(endpoint, field)| (endpoint, field.to_string()))
                .collect();
        });
        match result {
            Ok(result) => {
                tracing::info!(round = id, kind = kind.as_str(), "{}", result.headline);
                self.record_outcome(id, Ok(result.summary.clone())).await;
                self.status.send_modify(|status| {
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
                    status.retry_at_unix_ms.remove(kind.as_str());
                });
                if let Some(winner) = result.winner {
                    self.register_winner(winner, id).await;
                }
                self.backoff.remove(&kind);
            }
            Err(err) => {
                if *self.cancel.borrow() {
                    // Interrupted by shutdown: stays `running`, resumed at
                    // the next start.
                    return;
                }
                let backoff = self.backoff.entry(kind).or_default();
                let delay = backoff.failed(&self.config);
                tracing::error!(round = id, kind = kind.as_str(), error = %err, retry_in_secs = delay.as_secs(), "round failed");
                self.record_outcome(id, Err(err)).await;
                self.status.send_modify(|status| {
                    *status
                        .rounds_failed
                        .entry(kind.as_str().into())
                        .or_default() += 1;
                    status.retry_at_unix_ms.insert(
                        kind.as_str().into(),
                        now_unix_ms() + delay.as_millis() as i64,
                    );
                });
            }
        }
    }

    /// Stores a round's outcome; when the store fails, the outcome waits in
    /// `unrecorded` for the next poll (the row stays `running` meanwhile).
    async fn record_outcome(&mut self, id: i64, outcome: Result<String, String>) {
        let stored = outcome.clone();
        let res = self
            .store(move |db| {
                db.store
                    .finish_round(id, stored.as_deref().map_err(String::as_str))
            })
            .await;
        const STEP: &str = "recording a round's outcome";
        match res {
            Ok(()) => self.store_recovered(STEP),
            Err(err) => {
                self.store_failed(STEP, err);
                self.unrecorded.push((id, outcome));
            }
        }
    }

    async fn record_unrecorded(&mut self) {
        if !self.store_backoff.ready() {
            return;
        }
        for (id, outcome) in std::mem::take(&mut self.unrecorded) {
            self.record_outcome(id, outcome).await;
        }
    }

    /// Registers an APO round's winner in the registry (see
    /// [`PromptRegistry::register_winner`]). Registry trouble is logged,
    /// never fatal to the round.
    async fn register_winner(&mut self, winner: crate::registry::Winner, round_id: i64) {
        let prompt = winner.prompt.clone();
        let res = self
            .db
            .call(move |db| db.registry.register_winner(&winner, round_id))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|res| res);
        if let Err(err) = res {
            tracing::error!(error = %format!("{err:#}"), %prompt, "cannot register the APO winner");
        }
    }

    /// Lets every running A/B test act on what was just ingested.
    async fn step_tests(&mut self) {
        if !self.store_backoff.ready() {
            return;
        }
        let res = self
            .db
            .call(|db| db.registry.step_running_tests())
            .await
            .map_err(anyhow::Error::from)
            .and_then(|res| res);
        const STEP: &str = "stepping the running A/B tests";
        match res {
            Ok(()) => self.store_recovered(STEP),
            Err(err) => self.store_failed(STEP, err),
        }
    }

    /// Reloads `[plugins] dir` on a blocking thread (compiling a changed
    /// plugin takes a while): changed files load anew, a failed load keeps
    /// the previous version, a removed file unloads. The outcome comes back
    /// as [`Event::PluginsReloaded`].
    fn reload_plugins(&mut self) {
        if self.plugins_reloading {
            return;
        }
        self.plugins_reloading = true;
        let reload = self.plugin_reload();
        let events = self.events_tx.clone();
        tokio::task::spawn_blocking(move || {
            let _ = events.blocking_send(Event::PluginsReloaded(reload()));
        });
    }

    /// A reload of the plugin set, to run on a blocking thread.
    fn plugin_reload(&self) -> impl FnOnce() -> PluginsLoaded + Send + 'static {
        let plugins = Arc::clone(&self.plugins);
        let dir = self.config.plugins.dir.clone();
        move || {
            // The set logs what it loaded, unloaded and failed to load.
            let report = plugins.reload();
            PluginsLoaded {
                plugins: plugins
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
                    .collect(),
                errors: report
                    .failed
                    .iter()
                    .map(ToString::to_string)
                    // No folder means no plugins, not a problem.
                    .chain(report.dir_error.filter(|_| dir.exists()))
                    .collect(),
            }
        }
    }

    fn plugins_loaded(&mut self, loaded: PluginsLoaded) {
        self.status.send_modify(|status| {
            status.plugins = loaded.plugins;
            status.plugin_errors = loaded.errors;
        });
    }

    async fn reload_config(&mut self) {
        let Some(file) = self.options.config_file.clone() else {
            return;
        };
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
                self.status.send_modify(|status| {
                    status.config_reloads += 1;
                    status.config_errors.clear();
                    status.restart_required = restart_required;
                });
                self.config = *config;
                self.api.set_config(&self.config).await;
                let registry = self.config.registry.clone();
                // Fails only when the store thread is gone.
                let _ = self
                    .db
                    .call(move |db| db.registry.set_config(registry))
                    .await;
            }
            // One save often sends several events: the same refusal is
            // reported once.
            Reload::Refused(problems) if problems == self.status.borrow().config_errors => {}
            Reload::Refused(problems) => {
                for problem in &problems {
                    tracing::error!("configuration edit refused, the running one stays: {problem}");
                }
                self.status.send_modify(|status| {
                    status.config_reload_errors += 1;
                    status.config_errors = problems;
                });
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
                    self.round_ended(kind, id, result).await;
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

/// Where round `id` of `kind` writes its outputs.
fn round_dir(config: &Config, id: i64, kind: RoundKind) -> PathBuf {
    config
        .output_dir()
        .join("rounds")
        .join(format!("{id}-{}", kind.as_str()))
}

/// The thread that owns the ingestion store connection and runs one pass per
/// job, reporting each as [`Event::Ingested`].
fn spawn_ingest_thread(
    config: &Config,
    events: mpsc::Sender<Event>,
) -> anyhow::Result<std::sync::mpsc::Sender<IngestOptions>> {
    let (ingest_jobs, ingest_rx) = std::sync::mpsc::channel::<IngestOptions>();
    let mut ingest_store = Store::open(&config.data_dir)?;
    // Spans the OTLP receivers made durable are read from their spool like
    // any trace file.
    let spool_dir = otlp::spool_dir(&config.data_dir);
    std::fs::create_dir_all(&spool_dir)
        .with_context(|| format!("creating {}", spool_dir.display()))?;
    let ingest_paths = [config.traces.dir.clone(), spool_dir.clone()];
    std::thread::Builder::new()
        .name("ingest".into())
        .spawn(move || {
            for options in ingest_rx {
                let report =
                    ingest::ingest_paths(&mut ingest_store, &ingest_paths, &options, &mut |_| {})
                        .and_then(|report| {
                            otlp::remove_ingested(&mut ingest_store, &spool_dir)?;
                            Ok(report)
                        })
                        .map_err(|err| format!("{:#}", anyhow::Error::from(err)));
                if events.blocking_send(Event::Ingested(report)).is_err() {
                    return;
                }
            }
        })?;
    Ok(ingest_jobs)
}

/// Filesystem events of the trace folder, the config file and the plugins
/// folder, forwarded as [`Event::Change`]; `None` (and a warning) where the
/// platform gives none, leaving the poll timer.
fn spawn_watcher(
    config: &Config,
    options: &DaemonOptions,
    events: mpsc::Sender<Event>,
) -> Option<notify::RecommendedWatcher> {
    let (change_tx, mut change_rx) = mpsc::channel(16);
    let watcher = match watcher::watch(
        &config.traces.dir,
        options.config_file.as_deref(),
        Some(&config.plugins.dir),
        change_tx,
    ) {
        Ok(watcher) => watcher,
        Err(err) => {
            tracing::warn!(error = %err, "no filesystem events; polling every {}s", config.daemon.poll_interval_secs);
            return None;
        }
    };
    tokio::spawn(async move {
        while let Some(change) = change_rx.recv().await {
            if events.send(Event::Change(change)).await.is_err() {
                return;
            }
        }
    });
    Some(watcher)
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
