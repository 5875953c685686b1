//! `daemon --once`: catch up on the trace folder, run one PPO update and one
//! APO round (if the endpoint answers), print what was learned, and exit.

use std::io::Write;

use super::rounds::{RoundKind, RoundResult};
use super::{Daemon, Event, triggers};
use crate::ingest::{IngestOptions, IngestReport};
use crate::registry;

impl Daemon {
    /// Runs the one pass; a failed round makes the whole command fail after
    /// everything planned ran.
    pub(super) async fn run_once(&mut self, out: &mut dyn Write) -> anyhow::Result<()> {
        let options = IngestOptions {
            finalize: true,
            ..IngestOptions::from(&self.config.traces)
        };
        self.ingest_busy = true;
        self.ingest_jobs.send(options)?;
        let mut planned: Vec<RoundKind> = Vec::new();
        loop {
            let next = match self.events.recv().await {
                Some(Event::Ingested(report)) => {
                    let report = self.ingested(report);
                    planned = self.plan_once(report.as_ref(), out).await?;
                    planned.reverse();
                    planned.pop()
                }
                Some(Event::RoundEnded { kind, id, result }) => {
                    self.print_round(kind, id, &result, out)?;
                    let succeeded = result.is_ok();
                    self.round_ended(kind, id, result).await;
                    if succeeded && kind == RoundKind::Apo {
                        writeln!(out, "  {}", self.registered_by(id).await)?;
                    }
                    if succeeded {
                        writeln!(out, "  outputs: {}", self.round_dir(id, kind).display())?;
                    }
                    planned.pop()
                }
                Some(Event::Shutdown) => return self.shutdown().await,
                Some(_) => continue,
                None => None,
            };
            let Some(kind) = next else {
                break;
            };
            if !self.launch_new(kind, "daemon --once").await {
                let err = self.status.borrow().store_error.clone().unwrap_or_default();
                anyhow::bail!("cannot record the {} round: {err}", kind.as_str());
            }
        }
        writeln!(
            out,
            "latest outputs: {}",
            self.config.output_dir().join("latest").display()
        )?;
        let failed: u64 = self.status.borrow().rounds_failed.values().sum();
        if failed > 0 {
            anyhow::bail!("{failed} round(s) failed (listed above)");
        }
        Ok(())
    }

    /// Prints what the catch-up ingested and decides which rounds to run,
    /// in order.
    async fn plan_once(
        &mut self,
        report: Option<&IngestReport>,
        out: &mut dyn Write,
    ) -> anyhow::Result<Vec<RoundKind>> {
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
        let target = self.config.apo.target_prompt.clone();
        let subject = target.clone();
        let (decisions, target_episodes) = self
            .store(move |db| {
                Ok((
                    db.store.arrivals_since(0, None)?.decisions,
                    db.store.arrivals_since(0, Some(&subject))?.episodes,
                ))
            })
            .await?;
        let mut planned = Vec::new();
        if decisions > 0 {
            planned.push(RoundKind::Rl);
        }
        if target_episodes == 0 {
            writeln!(
                out,
                "APO skipped: no episode of prompt `{target}` (apo.target_prompt)"
            )?;
        } else if let Some(why) = triggers::endpoint_unreachable(&self.config.llm).await {
            writeln!(out, "APO skipped: {why}")?;
        } else {
            planned.push(RoundKind::Apo);
        }
        Ok(planned)
    }

    fn print_round(
        &self,
        kind: RoundKind,
        id: i64,
        result: &Result<RoundResult, String>,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        match result {
            Ok(result) => {
                writeln!(out, "{}", result.headline)?;
                for line in &result.details {
                    writeln!(out, "  {line}")?;
                }
            }
            Err(err) => writeln!(out, "{} round {id} failed: {err}", kind.as_str())?,
        }
        Ok(())
    }

    /// What the registry holds from APO round `id`, in one line.
    async fn registered_by(&self, id: i64) -> String {
        let prompt = self.config.apo.target_prompt.clone();
        let name = prompt.clone();
        let versions = self.store(move |db| db.store.prompt_versions(&name)).await;
        match versions {
            Ok(versions) => match versions.iter().find(|v| v.round_id == Some(id)) {
                Some(version) => format!(
                    "registered: prompt `{prompt}` version {} labelled `{}` (`whetstone prompts show {prompt} {}`)",
                    version.version,
                    registry::CANDIDATE,
                    version.version
                ),
                None => format!("registered: nothing (the baseline of `{prompt}` stays)"),
            },
            Err(err) => format!("registered: unknown, the registry cannot be read ({err:#})"),
        }
    }
}
