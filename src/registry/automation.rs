//! What the daemon asks of the registry without a person: register an APO
//! round's winner as a `candidate` (and with `registry.auto_rollout` start
//! its staged rollout), and step every running test after an ingestion
//! pass. The policy lives here, beside the registry it drives; the daemon
//! only calls it.

use super::{CANDIDATE, Decision, Lineage, PRODUCTION, PromptRegistry};

/// An APO round's winner and the baseline it was measured against.
#[derive(Debug, Clone)]
pub struct Winner {
    pub prompt: String,
    pub baseline_text: String,
    pub text: String,
    /// The operator that made the winner.
    pub operator: String,
    pub baseline_reward: f64,
    pub optimized_reward: f64,
}

impl PromptRegistry {
    /// Registers `winner` of round `round_id` as a `candidate` version of its
    /// prompt (the baseline too, if the prompt has no version yet), and with
    /// `registry.auto_rollout` starts a staged rollout of it unless a test
    /// already runs. A winner no better than its baseline is not registered.
    pub fn register_winner(&mut self, winner: &Winner, round_id: i64) -> anyhow::Result<()> {
        let prompt = &winner.prompt;
        if winner.text == winner.baseline_text || winner.optimized_reward <= winner.baseline_reward
        {
            tracing::info!(%prompt, "APO kept the baseline; nothing to register");
            return Ok(());
        }
        let baseline = self.register_prompt(
            None,
            prompt,
            &winner.baseline_text,
            Lineage {
                operator: Some("baseline".into()),
                ..Lineage::default()
            },
        )?;
        let control = self
            .labelled(prompt, PRODUCTION)?
            .unwrap_or(baseline.version);
        let scores = serde_json::json!({
            "baseline_reward": winner.baseline_reward,
            "optimized_reward": winner.optimized_reward,
        });
        let version = self.register_prompt(
            None,
            prompt,
            &winner.text,
            Lineage {
                parent_version: Some(control.clone()),
                operator: Some(winner.operator.clone()),
                round_id: Some(round_id),
                scores: Some(scores.to_string()),
            },
        )?;
        self.set_label(prompt, CANDIDATE, &version.version, "APO winner")?;
        tracing::info!(%prompt, version = %version.version, "APO winner registered as candidate");
        if !self.config.auto_rollout || version.version == control {
            return Ok(());
        }
        if self.store.running_ab_test(prompt)?.is_some() {
            tracing::info!(%prompt, "a test is running; the candidate waits");
            return Ok(());
        }
        let id = self.start_rollout(prompt, &control, &version.version)?;
        tracing::info!(%prompt, test = id, control = %control, treatment = %version.version, "staged rollout started");
        Ok(())
    }

    /// Lets every running test act on what was ingested ([`Self::step`]),
    /// logging each decision. A test whose step fails is logged and the
    /// others still step; only failing to list the tests is an error.
    pub fn step_running_tests(&mut self) -> anyhow::Result<()> {
        for test in self.store.running_ab_tests()? {
            match self.step(&test.prompt) {
                Ok(Some(Decision::Wait(_)) | None) => {}
                Ok(Some(decision)) => {
                    tracing::info!(prompt = %test.prompt, test = test.id, ?decision, "A/B test");
                }
                Err(err) => {
                    tracing::error!(prompt = %test.prompt, error = %format!("{err:#}"), "A/B test step failed");
                }
            }
        }
        Ok(())
    }
}
