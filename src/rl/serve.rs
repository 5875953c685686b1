//! Serving the promoted policy: [`ServedPolicy`] is loaded once from the
//! checkpoint and asked many times (the API keeps one and swaps it when a
//! round promotes a new version); [`act`] is the one-shot form.
//!
//! Only a policy that passed the promotion gate is served. Version 0 is the
//! untrained initial policy (uniform-ish over tools): asking before any
//! promotion is an error that says so, and the agent keeps its own policy.

use std::path::Path;

use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor};

use super::batch::{ActionSpace, states_tensor};
use super::checkpoint;
use super::features::{FeatureSpec, State};
use super::policy::PolicyNet;

/// The state [`ServedPolicy::act`] scores actions in.
#[derive(Debug, Clone, Default)]
pub struct ActRequest {
    /// The task text.
    pub input: String,
    /// The tool chosen at the previous decision, if any.
    pub previous_tool: Option<String>,
    /// Whether that tool call failed.
    pub previous_tool_error: bool,
    /// Decisions made so far in this episode.
    pub step_index: usize,
    /// Tools available now; empty means every tool the policy knows.
    pub tools: Vec<String>,
}

/// The promoted policy, in memory.
pub struct ServedPolicy {
    version: u64,
    spec: FeatureSpec,
    known: ActionSpace,
    net: PolicyNet,
}

impl ServedPolicy {
    /// Loads the promoted policy of the checkpoint in `checkpoint_dir`. An
    /// error when there is no checkpoint, when no trained policy has passed
    /// the promotion gate yet (version 0), or when the weights are not
    /// finite.
    pub fn load(checkpoint_dir: &Path) -> Result<ServedPolicy> {
        let (state, net) = checkpoint::load_promoted(checkpoint_dir)?;
        if state.promoted_version == 0 {
            bail!(
                "no trained policy has passed the promotion gate yet in {} (version 0 is the \
                 untrained initial policy, never served): keep the agent's own policy",
                checkpoint_dir.display()
            );
        }
        let spec = state.architecture().features;
        Ok(ServedPolicy {
            version: state.promoted_version,
            spec,
            known: ActionSpace::new(&state.tools, spec)?,
            net,
        })
    }

    /// The promoted version this policy is.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The probability of each available action (including answering
    /// without a tool) in each requested state, most likely first. Never
    /// returns a non-finite probability: that is an error.
    pub fn act(&self, requests: &[ActRequest]) -> Result<Vec<Vec<(String, f64)>>> {
        requests
            .iter()
            .map(|request| {
                let space = if request.tools.is_empty() {
                    self.known.clone()
                } else {
                    ActionSpace::new(&request.tools.iter().cloned().collect(), self.spec)?
                };
                let query = State {
                    input: request.input.clone(),
                    previous_tool: request.previous_tool.clone(),
                    previous_tool_error: request.previous_tool_error,
                    step_index: request.step_index,
                };
                let states = states_tensor(std::iter::once(&query), self.spec)?;
                let mask = Tensor::zeros((1, space.names.len()), DType::F32, &Device::Cpu)?;
                let probabilities = self
                    .net
                    .action_log_probs(&states, &space.features, &mask)?
                    .exp()?
                    .squeeze(0)?
                    .to_vec1::<f32>()?;
                if probabilities.iter().any(|p| !p.is_finite()) {
                    bail!(
                        "policy version {} gives non-finite probabilities: not served",
                        self.version
                    );
                }
                let mut out: Vec<(String, f64)> = space
                    .names
                    .into_iter()
                    .zip(probabilities.into_iter().map(f64::from))
                    .collect();
                out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                Ok(out)
            })
            .collect()
    }
}

/// The promoted policy's probabilities for `requests` (see
/// [`ServedPolicy::act`]), reading the checkpoint once for all of them.
pub fn act(checkpoint_dir: &Path, requests: &[ActRequest]) -> Result<Vec<Vec<(String, f64)>>> {
    ServedPolicy::load(checkpoint_dir)?.act(requests)
}

/// The promoted version recorded in the checkpoint in `checkpoint_dir`, or
/// `None` when there is no checkpoint yet.
pub fn promoted_version(checkpoint_dir: &Path) -> Result<Option<u64>> {
    Ok(checkpoint::read_state(checkpoint_dir)?.map(|state| state.promoted_version))
}

/// One decision made with the served policy: what the agent takes and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedDecision {
    /// Every available action, most likely first.
    pub probabilities: Vec<(String, f64)>,
    /// The sampled action and its probability (the agent logs it as
    /// `whetstone.policy.probability`).
    pub sampled: String,
    pub probability: f64,
    /// `<policy version>-<16 hex digits>`, logged as
    /// `whetstone.policy.decision_id`; the trace reader takes the policy
    /// version back from it (docs/TRACE_FORMAT.md).
    pub decision_id: String,
    pub policy_version: u64,
}

impl ServedPolicy {
    /// Samples an action for `request` with `draw` (uniform in [0, 1)) and
    /// names the decision with `id_bits`.
    pub fn decide(&self, request: ActRequest, draw: f64, id_bits: u64) -> Result<ServedDecision> {
        let probabilities = self
            .act(std::slice::from_ref(&request))?
            .pop()
            .unwrap_or_default();
        let mut cumulative = 0.0;
        let Some((sampled, probability)) = probabilities
            .iter()
            .find(|(_, p)| {
                cumulative += p;
                draw < cumulative
            })
            .or(probabilities.last())
            .cloned()
        else {
            bail!("the policy has no action to choose from");
        };
        Ok(ServedDecision {
            probabilities,
            sampled,
            probability,
            decision_id: format!("{}-{id_bits:016x}", self.version),
            policy_version: self.version,
        })
    }
}
