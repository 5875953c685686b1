//! Decisions as tensors: state features, the action space with its features,
//! and per-decision masks of which actions were available.
//!
//! The action space is every tool known to the learner plus "answer without
//! a tool"; a decision whose LLM call declared its tools may choose only among
//! those (and answering), one whose trace does not say may choose any.

use std::collections::BTreeSet;

use anyhow::{Result, bail};
use candle_core::{Device, Tensor};

use super::features::{FeatureSpec, State};
use super::transitions::{Decision, NO_TOOL};

/// Mask value for unavailable actions: softmax gives them probability 0.
const UNAVAILABLE: f32 = -1e9;

/// The actions a batch scores, as columns.
#[derive(Clone)]
pub struct ActionSpace {
    /// Column names: the tools in sorted order, then [`NO_TOOL`].
    pub names: Vec<String>,
    /// (columns, action_dim) action features.
    pub features: Tensor,
}

impl ActionSpace {
    /// The space of `tools` plus answering without a tool.
    pub fn new(tools: &BTreeSet<String>, spec: FeatureSpec) -> Result<Self> {
        let mut names: Vec<String> = tools.iter().filter(|t| *t != NO_TOOL).cloned().collect();
        names.push(NO_TOOL.to_string());
        let mut values = Vec::with_capacity(names.len() * spec.action_dim());
        for name in &names {
            spec.push_action(name, name == NO_TOOL, &mut values);
        }
        let features = Tensor::from_vec(values, (names.len(), spec.action_dim()), &Device::Cpu)?;
        Ok(ActionSpace { names, features })
    }

    /// Column of action `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

/// A set of decisions ready for the network.
pub struct Batch {
    /// (N, state_dim) state features.
    pub states: Tensor,
    /// (N, columns) additive mask: 0 available, -1e9 not.
    pub mask: Tensor,
    /// (N) chosen action column, u32.
    pub actions: Tensor,
    /// The chosen columns as plain numbers.
    pub action_columns: Vec<usize>,
}

impl Batch {
    /// Number of decisions.
    pub fn len(&self) -> usize {
        self.action_columns.len()
    }

    /// Whether the batch holds no decision.
    pub fn is_empty(&self) -> bool {
        self.action_columns.is_empty()
    }

    /// Featurizes `decisions`; every chosen action must be in `space`.
    pub fn new(decisions: &[&Decision], space: &ActionSpace, spec: FeatureSpec) -> Result<Self> {
        let n = decisions.len();
        let columns = space.names.len();
        let mut mask = vec![0f32; n * columns];
        let mut action_columns = Vec::with_capacity(n);
        for (row, decision) in decisions.iter().enumerate() {
            let Some(column) = space.column(&decision.action) else {
                bail!("action {} is not in the action space", decision.action);
            };
            action_columns.push(column);
            if !decision.declared_tools.is_empty() {
                let row_mask = &mut mask[row * columns..(row + 1) * columns];
                for (column, name) in space.names.iter().enumerate() {
                    if name != NO_TOOL && !decision.declared_tools.contains(name) {
                        row_mask[column] = UNAVAILABLE;
                    }
                }
            }
        }
        let states = states_tensor(decisions.iter().map(|d| &d.state), spec)?;
        let actions: Vec<u32> = action_columns.iter().map(|&c| c as u32).collect();
        Ok(Batch {
            states,
            mask: Tensor::from_vec(mask, (n, columns), &Device::Cpu)?,
            actions: Tensor::from_vec(actions, n, &Device::Cpu)?,
            action_columns,
        })
    }

    /// The rows at `rows` (a u32 tensor), for a minibatch.
    pub fn select(&self, rows: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        Ok((
            self.states.index_select(rows, 0)?,
            self.mask.index_select(rows, 0)?,
            self.actions.index_select(rows, 0)?,
        ))
    }
}

/// (N, state_dim) features of `states`.
pub fn states_tensor<'a>(
    states: impl ExactSizeIterator<Item = &'a State>,
    spec: FeatureSpec,
) -> Result<Tensor> {
    let n = states.len();
    let mut values = Vec::with_capacity(n * spec.state_dim());
    for state in states {
        spec.push_state(state, &mut values);
    }
    Ok(Tensor::from_vec(
        values,
        (n, spec.state_dim()),
        &Device::Cpu,
    )?)
}
