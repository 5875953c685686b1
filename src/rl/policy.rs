//! The policy and value networks (candle, CPU).
//!
//! The actor scores (state, action) pairs: a two-layer tanh MLP embeds the
//! state, a linear map embeds the hashed action features, and the logit is
//! their dot product plus an action bias. Because actions enter through
//! features, a tool added after training still gets a score, and the softmax
//! runs only over the actions available in each state (the rest are masked).
//! The critic is a separate two-layer tanh MLP on the state, as in CleanRL.
//!
//! The action head starts at zero, so a fresh policy is exactly uniform over
//! the available actions: the behavior probabilities assigned to logged
//! decisions before any training are then the honest "no preference" ones.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{D, DType, Device, Tensor, Var};

use super::features::FeatureSpec;
use crate::rng::Rng;

/// Network shape; a checkpoint only loads into the same shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Architecture {
    pub features: FeatureSpec,
    pub hidden_dim: usize,
}

/// Actor and critic parameters.
pub struct PolicyNet {
    pub architecture: Architecture,
    /// Parameters by name, in a fixed order (the optimizer relies on it).
    params: Vec<(&'static str, Var)>,
}

const NAMES: [&str; 12] = [
    "actor.l1.weight",
    "actor.l1.bias",
    "actor.l2.weight",
    "actor.l2.bias",
    "actor.action_embedding",
    "actor.action_bias",
    "critic.l1.weight",
    "critic.l1.bias",
    "critic.l2.weight",
    "critic.l2.bias",
    "critic.out.weight",
    "critic.out.bias",
];

impl PolicyNet {
    /// Fresh parameters: scaled-normal hidden layers (gain √2, as CleanRL's
    /// orthogonal init), a zero action head and a unit-gain value head.
    pub fn init(architecture: Architecture, rng: &mut Rng) -> Result<Self> {
        let mut params = Vec::with_capacity(NAMES.len());
        for name in NAMES {
            let shape = shape_of(architecture, name);
            let (fan_in, gain) = match name {
                "actor.action_embedding" | "actor.action_bias" => (1, 0.0),
                "critic.out.weight" => (shape.0, 1.0),
                _ if name.ends_with(".weight") => (shape.0, std::f64::consts::SQRT_2),
                _ => (1, 0.0),
            };
            let std = gain / (fan_in as f64).sqrt();
            let values: Vec<f32> = (0..shape.0 * shape.1)
                .map(|_| (rng.normal() * std) as f32)
                .collect();
            params.push((name, Var::from_vec(values, shape, &Device::Cpu)?));
        }
        Ok(PolicyNet {
            architecture,
            params,
        })
    }

    /// The trainable variables with their names, in a fixed order.
    pub fn params(&self) -> &[(&'static str, Var)] {
        &self.params
    }

    fn param(&self, index: usize) -> &Tensor {
        self.params[index].1.as_tensor()
    }

    /// Log-probabilities of each action column for each state; unavailable
    /// actions get about -1e9.
    ///
    /// `states` is (N, state_dim), `action_features` (A, action_dim) and
    /// `mask` (N, A) with 0 for available and -1e9 for unavailable actions.
    pub fn action_log_probs(
        &self,
        states: &Tensor,
        action_features: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let hidden = states
            .matmul(self.param(0))?
            .broadcast_add(self.param(1))?
            .tanh()?;
        let hidden = hidden
            .matmul(self.param(2))?
            .broadcast_add(self.param(3))?
            .tanh()?;
        let embeddings = action_features.matmul(self.param(4))?; // (A, H)
        let bias = action_features.matmul(self.param(5))?.t()?; // (1, A)
        let logits = hidden
            .matmul(&embeddings.t()?)?
            .broadcast_add(&bias)?
            .add(mask)?;
        Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?)
    }

    /// V(s) for each state: shape (N).
    pub fn values(&self, states: &Tensor) -> Result<Tensor> {
        let hidden = states
            .matmul(self.param(6))?
            .broadcast_add(self.param(7))?
            .tanh()?;
        let hidden = hidden
            .matmul(self.param(8))?
            .broadcast_add(self.param(9))?
            .tanh()?;
        Ok(hidden
            .matmul(self.param(10))?
            .broadcast_add(self.param(11))?
            .squeeze(1)?)
    }

    /// A detached copy (for a policy snapshot that must not move).
    pub fn snapshot(&self) -> Result<PolicyNet> {
        let params = self
            .params
            .iter()
            .map(|(name, var)| Ok((*name, Var::from_tensor(&var.as_tensor().copy()?.detach())?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(PolicyNet {
            architecture: self.architecture,
            params,
        })
    }

    /// The parameters as named tensors (for safetensors files).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .map(|(name, var)| (name.to_string(), var.as_tensor().clone()))
            .collect()
    }

    /// Writes the parameters to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        candle_core::safetensors::save(&self.tensors(), path)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Reads parameters of `architecture` from a safetensors file, checking
    /// every tensor is present with the expected shape.
    pub fn load(architecture: Architecture, path: &Path) -> Result<Self> {
        let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("reading policy weights {}", path.display()))?;
        let mut params = Vec::with_capacity(NAMES.len());
        for name in NAMES {
            let Some(tensor) = tensors.remove(name) else {
                bail!("{}: tensor {name} is missing", path.display());
            };
            let want = shape_of(architecture, name);
            if tensor.dims() != [want.0, want.1] || tensor.dtype() != DType::F32 {
                bail!(
                    "{}: tensor {name} has shape {:?} ({:?}), expected [{}, {}] (f32): \
                     the checkpoint was trained with other rl.hidden_dim / hash dimensions",
                    path.display(),
                    tensor.dims(),
                    tensor.dtype(),
                    want.0,
                    want.1
                );
            }
            params.push((name, Var::from_tensor(&tensor)?));
        }
        Ok(PolicyNet {
            architecture,
            params,
        })
    }
}

/// Shape of a named parameter; biases are rows so they broadcast over a batch.
fn shape_of(architecture: Architecture, name: &str) -> (usize, usize) {
    let state = architecture.features.state_dim();
    let action = architecture.features.action_dim();
    let hidden = architecture.hidden_dim;
    match name {
        "actor.l1.weight" | "critic.l1.weight" => (state, hidden),
        "actor.l2.weight" | "critic.l2.weight" => (hidden, hidden),
        "actor.action_embedding" => (action, hidden),
        "actor.action_bias" => (action, 1),
        "critic.out.weight" => (hidden, 1),
        "critic.out.bias" => (1, 1),
        _ => (1, hidden),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn architecture() -> Architecture {
        Architecture {
            features: FeatureSpec {
                text_hash_dim: 8,
                action_hash_dim: 4,
            },
            hidden_dim: 6,
        }
    }

    #[test]
    fn fresh_policy_is_uniform_over_available_actions_and_round_trips() {
        let net = PolicyNet::init(architecture(), &mut Rng::new(1)).unwrap();
        let state_dim = architecture().features.state_dim();
        let states = Tensor::ones((2, state_dim), DType::F32, &Device::Cpu).unwrap();
        let actions = Tensor::eye(5, DType::F32, &Device::Cpu).unwrap();
        let mask = Tensor::new(
            &[[0f32, 0., 0., -1e9, -1e9], [0., 0., 0., 0., 0.]],
            &Device::Cpu,
        )
        .unwrap();
        let probs = net
            .action_log_probs(&states, &actions, &mask)
            .unwrap()
            .exp()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (p, want) in probs[0].iter().zip([1. / 3., 1. / 3., 1. / 3., 0., 0.]) {
            assert!((p - want).abs() < 1e-6, "{probs:?}");
        }
        assert!(probs[1].iter().all(|p| (p - 0.2).abs() < 1e-6));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        net.save(&path).unwrap();
        let back = PolicyNet::load(architecture(), &path).unwrap();
        let v1 = net.values(&states).unwrap().to_vec1::<f32>().unwrap();
        let v2 = back.values(&states).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v1, v2);
        let bigger = Architecture {
            hidden_dim: 7,
            ..architecture()
        };
        let err = PolicyNet::load(bigger, &path).err().unwrap().to_string();
        assert!(
            err.contains("actor.l1.weight") && err.contains("hidden_dim"),
            "{err}"
        );
    }
}
