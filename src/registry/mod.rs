//! The prompt registry: versions, A/B tests, staged rollout and rollback.
//!
//! Prompts are registered as immutable versions with their lineage. Agents
//! ask which version to use for a request key ([`PromptRegistry::resolve`]:
//! sticky, deterministic assignment while a test runs, the `production`
//! label otherwise), record the version they used on their traces
//! (`whetstone.prompt.version`), and the outcomes come back through
//! ingestion. [`PromptRegistry::step`], run by the daemon after each
//! ingestion pass, compares the arms with an always-valid test
//! (`stats.rs`), checks the guardrails, and moves the rollout on, stops it
//! with a winner, or rolls it back.
//!
//! The library API mirrors the seed's: `register_prompt`, `start_ab_test`,
//! `stop_ab_test`, plus `start_rollout` and `rollback`.

mod assign;
mod automation;
mod config;
pub mod stats;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Serialize;

pub use assign::{bucket, is_treatment};
pub use automation::Winner;
pub use config::{Guardrail, RegistryConfig, TOOL_ERROR_RATE};
pub use stats::{Comparison, Summary, compare};

use crate::store::{AbTestRow, Change, EpisodeFilter, PromptVersion, Store};
use crate::trace::Episode;

/// Why the registry could not answer a lookup.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no prompt `{0}` is registered")]
    UnknownPrompt(String),
    #[error("prompt `{name}` has no version `{version}` (it has: {known})")]
    UnknownVersion {
        name: String,
        version: String,
        known: String,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl RegistryError {
    /// The prompt or version does not exist (not a failure of the store).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            RegistryError::UnknownPrompt(_) | RegistryError::UnknownVersion { .. }
        )
    }

    /// The store was busy (another connection held a lock past the busy
    /// timeout); asking again later may succeed.
    pub fn is_busy(&self) -> bool {
        matches!(self, RegistryError::Store(err) if err.is_busy())
    }
}

/// The label agents get when no test runs.
pub const PRODUCTION: &str = "production";
/// The label of a version waiting for a test.
pub const CANDIDATE: &str = "candidate";

/// Where a registered version came from.
#[derive(Debug, Clone, Default)]
pub struct Lineage {
    pub parent_version: Option<String>,
    pub operator: Option<String>,
    pub round_id: Option<i64>,
    /// Scores known at registration (JSON object).
    pub scores: Option<String>,
}

/// The version a request key gets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resolved {
    pub prompt: String,
    pub version: String,
    pub text: String,
    /// The running test that assigned it, and the arm.
    pub test_id: Option<i64>,
    pub arm: Option<&'static str>,
}

/// Outcomes of one version, from its ingested episodes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VersionStats {
    pub version: String,
    pub episodes: u64,
    /// The compared metric (see `registry.metric`); episodes without it are
    /// not counted here.
    pub metric: SummaryView,
    /// Final rewards by name.
    pub rewards: BTreeMap<String, SummaryView>,
    /// Share of tool calls that failed.
    pub tool_error_rate: SummaryView,
    pub latency_ms: SummaryView,
    pub tokens: SummaryView,
    #[serde(skip)]
    samples: Samples,
}

/// Per-episode values kept for the comparison.
#[derive(Debug, Clone, Default)]
struct Samples {
    metric: Summary,
    rewards: BTreeMap<String, Summary>,
    tool_error_rate: Summary,
}

/// A summary as shown: count, mean and a 95 % interval.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SummaryView {
    pub n: u64,
    pub mean: f64,
    pub low: f64,
    pub high: f64,
}

impl From<&Summary> for SummaryView {
    fn from(summary: &Summary) -> Self {
        let (low, high) = summary.interval95();
        SummaryView {
            n: summary.n,
            mean: summary.mean,
            low,
            high,
        }
    }
}

/// A running test as seen now.
#[derive(Debug, Clone, Serialize)]
pub struct TestStatus {
    pub id: i64,
    pub prompt: String,
    pub control: VersionStats,
    pub treatment: VersionStats,
    pub split: f64,
    pub stage: usize,
    pub stages: Vec<f64>,
    pub comparison: Option<ComparisonView>,
    /// Guardrails breached, each with why.
    pub breaches: Vec<String>,
}

/// A [`Comparison`] as shown.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ComparisonView {
    pub difference: f64,
    pub low: f64,
    pub high: f64,
    pub p_value: f64,
    pub significant: bool,
}

/// What [`PromptRegistry::step`] did to a running test.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Not enough data, or nothing decided yet.
    Wait(String),
    /// Moved to the next rollout stage.
    Advanced { stage: usize, split: f64 },
    /// Stopped with a winner (the `production` label moved to it).
    Stopped { winner: String, why: String },
    /// A guardrail was breached or the treatment lost: back to the control.
    RolledBack { why: String },
}

/// The registry over one store connection.
pub struct PromptRegistry {
    store: Store,
    config: RegistryConfig,
    actor: String,
}

impl PromptRegistry {
    /// The registry in `data_dir`'s store, acting as `actor` in the audit log.
    pub fn open(data_dir: &Path, config: RegistryConfig, actor: &str) -> anyhow::Result<Self> {
        Ok(PromptRegistry::new(Store::open(data_dir)?, config, actor))
    }

    /// The registry over an open `store` connection.
    pub fn new(store: Store, config: RegistryConfig, actor: &str) -> Self {
        PromptRegistry {
            store,
            config,
            actor: actor.to_string(),
        }
    }

    /// The store underneath, for reads the registry does not wrap.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Takes new settings (a reloaded configuration).
    pub fn set_config(&mut self, config: RegistryConfig) {
        self.config = config;
    }

    /// Registers `text` as a new version of prompt `name`: `variant` names
    /// it, or the next number does. The same text registered again returns
    /// the existing version. The first version of a prompt becomes its
    /// `production` version.
    pub fn register_prompt(
        &mut self,
        variant: Option<&str>,
        name: &str,
        text: &str,
        lineage: Lineage,
    ) -> anyhow::Result<PromptVersion> {
        if let Some(existing) = self.store.prompt_version_with_text(name, text)? {
            return Ok(existing);
        }
        if let Some(variant) = variant
            && self.store.prompt_version(name, variant)?.is_some()
        {
            bail!("prompt `{name}` already has a version `{variant}` (versions are immutable)");
        }
        let version = PromptVersion {
            prompt: name.to_string(),
            version: variant.unwrap_or_default().to_string(),
            text: text.to_string(),
            parent_version: lineage.parent_version,
            operator: lineage.operator,
            round_id: lineage.round_id,
            scores: lineage.scores,
            created_at_unix_ms: 0,
            created_by: self.actor.clone(),
        };
        let stored = self.store.insert_prompt_version(
            &version,
            Some(PRODUCTION),
            Change {
                actor: &self.actor,
                why: "registered",
            },
        )?;
        Ok(stored)
    }

    /// Points `label` at `version`.
    pub fn set_label(
        &mut self,
        name: &str,
        label: &str,
        version: &str,
        why: &str,
    ) -> anyhow::Result<()> {
        self.version(name, version)?;
        self.store.set_prompt_label(
            name,
            label,
            version,
            Change {
                actor: &self.actor,
                why,
            },
        )?;
        Ok(())
    }

    /// The version `label` points at.
    pub fn labelled(&self, name: &str, label: &str) -> Result<Option<String>, RegistryError> {
        Ok(self
            .store
            .prompt_labels(name)?
            .into_iter()
            .find(|(l, _)| l == label)
            .map(|(_, version)| version))
    }

    /// One version, or an error naming the versions there are.
    pub fn version(&self, name: &str, version: &str) -> Result<PromptVersion, RegistryError> {
        if let Some(found) = self.store.prompt_version(name, version)? {
            return Ok(found);
        }
        let known: Vec<String> = self
            .store
            .prompt_versions(name)?
            .into_iter()
            .map(|v| v.version)
            .collect();
        if known.is_empty() {
            return Err(RegistryError::UnknownPrompt(name.to_string()));
        }
        Err(RegistryError::UnknownVersion {
            name: name.to_string(),
            version: version.to_string(),
            known: known.join(", "),
        })
    }

    /// Starts an A/B test sending `traffic_split` of requests to `treatment`
    /// and the rest to `control`; it stops with a winner once decided.
    pub fn start_ab_test(
        &mut self,
        name: &str,
        control: &str,
        treatment: &str,
        traffic_split: f64,
    ) -> anyhow::Result<i64> {
        if !(traffic_split > 0.0 && traffic_split <= 1.0) {
            bail!("traffic split must be above 0 and at most 1, got {traffic_split}");
        }
        self.start_test(
            name,
            control,
            treatment,
            vec![traffic_split],
            "A/B test started",
        )
    }

    /// Starts a staged rollout of `treatment` against `control`
    /// (`registry.rollout_stages`), each stage gated by the test.
    pub fn start_rollout(
        &mut self,
        name: &str,
        control: &str,
        treatment: &str,
    ) -> anyhow::Result<i64> {
        let stages = self.config.rollout_stages.clone();
        self.start_test(name, control, treatment, stages, "staged rollout started")
    }

    fn start_test(
        &mut self,
        name: &str,
        control: &str,
        treatment: &str,
        stages: Vec<f64>,
        why: &str,
    ) -> anyhow::Result<i64> {
        self.version(name, control)?;
        self.version(name, treatment)?;
        if control == treatment {
            bail!("control and treatment are the same version `{control}`");
        }
        if let Some(running) = self.store.running_ab_test(name)? {
            bail!(
                "prompt `{name}` already has test {} running ({} vs {}); stop it first",
                running.id,
                running.control,
                running.treatment
            );
        }
        let test = AbTestRow {
            id: 0,
            prompt: name.to_string(),
            control: control.to_string(),
            treatment: treatment.to_string(),
            split: stages[0],
            stages,
            stage: 0,
            status: "running".into(),
            winner: None,
            reason: None,
            start_episode_id: self.store.max_episode_id()?,
            stage_episode_id: 0,
            started_at_unix_ms: 0,
            stopped_at_unix_ms: None,
        };
        Ok(self.store.insert_ab_test(
            &test,
            Change {
                actor: &self.actor,
                why,
            },
        )?)
    }

    /// Stops the running test of `name`; `winner` (control or treatment)
    /// becomes the `production` version.
    pub fn stop_ab_test(
        &mut self,
        name: &str,
        winner: Option<&str>,
        why: &str,
    ) -> anyhow::Result<()> {
        let test = self.running(name)?;
        if let Some(winner) = winner
            && winner != test.control
            && winner != test.treatment
        {
            bail!(
                "winner `{winner}` is neither the control `{}` nor the treatment `{}`",
                test.control,
                test.treatment
            );
        }
        self.store.stop_ab_test(
            test.id,
            winner,
            Change {
                actor: &self.actor,
                why,
            },
        )?;
        Ok(())
    }

    /// Rolls back: stops the running test with its control as winner, or,
    /// without one, moves `production` back to the parent of its version.
    pub fn rollback(&mut self, name: &str, why: &str) -> anyhow::Result<String> {
        if let Some(test) = self.store.running_ab_test(name)? {
            self.store.stop_ab_test(
                test.id,
                Some(&test.control),
                Change {
                    actor: &self.actor,
                    why,
                },
            )?;
            return Ok(test.control);
        }
        let current = self
            .labelled(name, PRODUCTION)?
            .with_context(|| format!("prompt `{name}` has no production version"))?;
        let parent = self
            .version(name, &current)?
            .parent_version
            .with_context(|| {
                format!("production version `{current}` of `{name}` has no parent to roll back to")
            })?;
        self.set_label(name, PRODUCTION, &parent, why)?;
        Ok(parent)
    }

    /// Moves the running test of `name` to rollout stage `stage` by hand.
    pub fn set_stage(&mut self, name: &str, stage: usize, why: &str) -> anyhow::Result<f64> {
        let test = self.running(name)?;
        let Some(&split) = test.stages.get(stage) else {
            bail!("test {} has stages 0..{}", test.id, test.stages.len() - 1);
        };
        let episode_id = self.store.max_episode_id()?;
        self.store.set_ab_stage(
            test.id,
            stage,
            split,
            episode_id,
            Change {
                actor: &self.actor,
                why,
            },
        )?;
        Ok(split)
    }

    fn running(&self, name: &str) -> anyhow::Result<AbTestRow> {
        self.store
            .running_ab_test(name)?
            .with_context(|| format!("prompt `{name}` has no running test"))
    }

    /// The version (and text) request `key` gets for prompt `name`.
    pub fn resolve(&self, name: &str, key: &str) -> Result<Resolved, RegistryError> {
        let (version, test_id, arm) = match self.store.running_ab_test(name)? {
            Some(test) if is_treatment(test.id, key, test.split) => {
                (test.treatment, Some(test.id), Some("treatment"))
            }
            Some(test) => (test.control, Some(test.id), Some("control")),
            None => {
                let production = match self.labelled(name, PRODUCTION)? {
                    Some(version) => version,
                    None => self
                        .store
                        .prompt_versions(name)?
                        .pop()
                        .map(|v| v.version)
                        .ok_or_else(|| RegistryError::UnknownPrompt(name.to_string()))?,
                };
                (production, None, None)
            }
        };
        let text = self.version(name, &version)?.text;
        Ok(Resolved {
            prompt: name.to_string(),
            version,
            text,
            test_id,
            arm,
        })
    }

    /// Outcomes of `version` from its episodes stored after `after_id`.
    pub fn version_stats(
        &self,
        name: &str,
        version: &str,
        after_id: i64,
    ) -> anyhow::Result<VersionStats> {
        let filter = EpisodeFilter {
            prompt_name: Some(name.to_string()),
            prompt_version: Some(version.to_string()),
            after_id: Some(after_id),
            ..EpisodeFilter::default()
        };
        let mut samples = Samples::default();
        let (mut latency, mut tokens) = (Summary::default(), Summary::default());
        let mut episodes = 0;
        self.store.visit_episodes(&filter, |stored| {
            episodes += 1;
            let episode = &stored.episode;
            if let Some(value) = metric_of(episode, self.config.metric.as_deref()) {
                samples.metric.add(value);
            }
            for (name, value) in &episode.rewards {
                samples.rewards.entry(name.clone()).or_default().add(*value);
            }
            let tools: Vec<bool> = episode
                .steps
                .iter()
                .filter(|step| step.tool.is_some())
                .map(|step| step.error)
                .collect();
            if !tools.is_empty() {
                let failed = tools.iter().filter(|e| **e).count();
                samples
                    .tool_error_rate
                    .add(failed as f64 / tools.len() as f64);
            }
            if let Some(ms) = episode.duration_ms {
                latency.add(ms);
            }
            tokens.add((episode.usage.input_tokens + episode.usage.output_tokens) as f64);
            ControlFlow::Continue(())
        })?;
        Ok(VersionStats {
            version: version.to_string(),
            episodes,
            metric: (&samples.metric).into(),
            rewards: samples
                .rewards
                .iter()
                .map(|(k, v)| (k.clone(), v.into()))
                .collect(),
            tool_error_rate: (&samples.tool_error_rate).into(),
            latency_ms: (&latency).into(),
            tokens: (&tokens).into(),
            samples,
        })
    }

    /// The running test of `name` with both arms' outcomes, the comparison
    /// and any guardrail breach; `None` when no test runs.
    pub fn test_status(&self, name: &str) -> anyhow::Result<Option<TestStatus>> {
        let Some(test) = self.store.running_ab_test(name)? else {
            return Ok(None);
        };
        Ok(Some(self.status_of(&test)?))
    }

    fn status_of(&self, test: &AbTestRow) -> anyhow::Result<TestStatus> {
        let control = self.version_stats(&test.prompt, &test.control, test.start_episode_id)?;
        let treatment = self.version_stats(&test.prompt, &test.treatment, test.start_episode_id)?;
        let min = self.config.min_samples_per_arm;
        let enough = |a: &Summary, b: &Summary| a.n >= min && b.n >= min;
        let (alpha, tau) = (self.config.alpha, self.config.expected_effect);
        let comparison = enough(&treatment.samples.metric, &control.samples.metric).then(|| {
            let c = compare(
                &treatment.samples.metric,
                &control.samples.metric,
                alpha,
                tau,
            );
            ComparisonView {
                difference: c.difference,
                low: c.low,
                high: c.high,
                p_value: c.p_value,
                significant: c.significant,
            }
        });
        let mut breaches = Vec::new();
        for guardrail in &self.config.guardrails {
            let (t, c, higher_is_better) = if guardrail.metric == TOOL_ERROR_RATE {
                (
                    treatment.samples.tool_error_rate,
                    control.samples.tool_error_rate,
                    false,
                )
            } else {
                let of = |stats: &VersionStats| {
                    stats
                        .samples
                        .rewards
                        .get(&guardrail.metric)
                        .copied()
                        .unwrap_or_default()
                };
                (of(&treatment), of(&control), true)
            };
            if !enough(&t, &c) {
                continue;
            }
            let cmp = compare(&t, &c, alpha, tau);
            // Worse beyond the tolerance, with always-valid confidence.
            let breached = if higher_is_better {
                cmp.high < -guardrail.max_drop
            } else {
                cmp.low > guardrail.max_drop
            };
            if breached {
                breaches.push(format!(
                    "guardrail `{}` breached: treatment {:.3} vs control {:.3} (difference {:+.3}, \
                     always-valid interval [{:+.3}, {:+.3}], tolerance {})",
                    guardrail.metric,
                    t.mean,
                    c.mean,
                    cmp.difference,
                    cmp.low,
                    cmp.high,
                    guardrail.max_drop
                ));
            }
        }
        Ok(TestStatus {
            id: test.id,
            prompt: test.prompt.clone(),
            control,
            treatment,
            split: test.split,
            stage: test.stage,
            stages: test.stages.clone(),
            comparison,
            breaches,
        })
    }

    /// Looks at the running test of `name` and acts: rolls back on a
    /// guardrail breach or a significantly worse treatment; otherwise, once
    /// the current stage has `min_samples_per_arm` episodes per arm, moves to
    /// the next stage, where reaching the last (all traffic) needs the
    /// treatment significantly better; at the last stage, or in a plain A/B
    /// test, a significant difference stops the test with its winner.
    pub fn step(&mut self, name: &str) -> anyhow::Result<Option<Decision>> {
        let Some(test) = self.store.running_ab_test(name)? else {
            return Ok(None);
        };
        let status = self.status_of(&test)?;
        if let Some(breach) = status.breaches.first() {
            let why = breach.clone();
            self.rollback(name, &why)?;
            return Ok(Some(Decision::RolledBack { why }));
        }
        let Some(comparison) = status.comparison else {
            return Ok(Some(Decision::Wait(format!(
                "{} control / {} treatment episodes of the {} needed per arm",
                status.control.metric.n, status.treatment.metric.n, self.config.min_samples_per_arm
            ))));
        };
        if comparison.significant && comparison.difference < 0.0 {
            let why = format!(
                "treatment worse: {:+.3} (always-valid p {:.4})",
                comparison.difference, comparison.p_value
            );
            self.rollback(name, &why)?;
            return Ok(Some(Decision::RolledBack { why }));
        }
        let last_stage = test.stage + 1 >= test.stages.len();
        if comparison.significant && (last_stage || test.stages.len() == 1) {
            let why = format!(
                "treatment better: {:+.3} (always-valid interval [{:+.3}, {:+.3}], p {:.4})",
                comparison.difference, comparison.low, comparison.high, comparison.p_value
            );
            self.stop_ab_test(name, Some(&test.treatment), &why)?;
            return Ok(Some(Decision::Stopped {
                winner: test.treatment,
                why,
            }));
        }
        if last_stage {
            return Ok(Some(Decision::Wait("no significant difference yet".into())));
        }
        // The stage gate: enough episodes in this stage on both arms.
        let min = self.config.min_samples_per_arm;
        let in_stage = |version: &str| self.version_stats(name, version, test.stage_episode_id);
        let (control_n, treatment_n) = (
            in_stage(&test.control)?.metric.n,
            in_stage(&test.treatment)?.metric.n,
        );
        if control_n < min || treatment_n < min {
            return Ok(Some(Decision::Wait(format!(
                "stage {}: {control_n} control / {treatment_n} treatment episodes of the {min} needed per arm",
                test.stage
            ))));
        }
        let next = test.stage + 1;
        if next + 1 == test.stages.len() && !comparison.significant {
            return Ok(Some(Decision::Wait(
                "all traffic needs the treatment significantly better; not yet".into(),
            )));
        }
        let why = format!(
            "stage {} passed: {treatment_n} treatment episodes, difference {:+.3}, no guardrail breached",
            test.stage, comparison.difference
        );
        let split = self.set_stage(name, next, &why)?;
        Ok(Some(Decision::Advanced { stage: next, split }))
    }
}

/// The compared value of an episode: the named reward, or the sum of its
/// final rewards; `None` when it has none.
fn metric_of(episode: &Episode, metric: Option<&str>) -> Option<f64> {
    match metric {
        Some(name) => episode.rewards.get(name).copied(),
        None if episode.rewards.is_empty() => None,
        None => Some(episode.rewards.values().sum()),
    }
}
