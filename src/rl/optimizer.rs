//! Adam with checkpointable state, and global gradient-norm clipping.
//!
//! candle-nn's `AdamW` keeps its moment estimates private, so a restarted
//! daemon could not resume it; this is the same update (PyTorch's Adam, which
//! is AdamW with zero weight decay) with its state exposed for the checkpoint.

use std::collections::HashMap;

use anyhow::{Result, bail};
use candle_core::Tensor;
use candle_core::backprop::GradStore;

use super::policy::PolicyNet;

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;

/// Adam optimizer state for one [`PolicyNet`].
pub struct Adam {
    pub learning_rate: f64,
    pub eps: f64,
    /// Updates applied so far (for bias correction).
    pub step: u64,
    /// First and second moment per parameter, in the net's parameter order.
    moments: Vec<(Tensor, Tensor)>,
}

impl Adam {
    /// Fresh state (zero moments) for `net`.
    pub fn new(net: &PolicyNet, learning_rate: f64, eps: f64) -> Result<Self> {
        let moments = net
            .params()
            .iter()
            .map(|(_, var)| Ok((var.zeros_like()?, var.zeros_like()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Adam {
            learning_rate,
            eps,
            step: 0,
            moments,
        })
    }

    /// Applies one update from `grads`, each multiplied by `grad_scale`
    /// (the gradient clipping coefficient).
    pub fn step(&mut self, net: &PolicyNet, grads: &GradStore, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let correction1 = 1.0 - BETA1.powf(self.step as f64);
        let correction2 = 1.0 - BETA2.powf(self.step as f64);
        for ((_, var), (m, v)) in net.params().iter().zip(self.moments.iter_mut()) {
            let Some(grad) = grads.get(var) else { continue };
            // A leaf's gradient in the GradStore still carries the autograd
            // graph of the minibatch it came from (candle detaches only the
            // gradients it propagates further). Moments built from it would
            // chain every update's graph to the next: ~150 MB per iteration
            // (issue 9). Moments hold values only.
            let grad = (grad.detach() * grad_scale)?;
            *m = ((&*m * BETA1)? + (&grad * (1.0 - BETA1))?)?.detach();
            *v = ((&*v * BETA2)? + (grad.sqr()? * (1.0 - BETA2))?)?.detach();
            let denominator = ((&*v / correction2)?.sqrt()? + self.eps)?;
            let update = ((&*m / correction1)? / denominator)?;
            var.set(&(var.as_tensor() - (update * self.learning_rate)?)?)?;
        }
        Ok(())
    }

    /// Moments as named tensors (`m.<param>`, `v.<param>`).
    pub fn tensors(&self, net: &PolicyNet) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for ((name, _), (m, v)) in net.params().iter().zip(&self.moments) {
            out.insert(format!("m.{name}"), m.clone());
            out.insert(format!("v.{name}"), v.clone());
        }
        out
    }

    /// Restores state saved by [`Adam::tensors`] for `net`.
    pub fn restore(
        net: &PolicyNet,
        mut tensors: HashMap<String, Tensor>,
        step: u64,
        learning_rate: f64,
        eps: f64,
    ) -> Result<Self> {
        let mut moments = Vec::new();
        for (name, var) in net.params() {
            let (Some(m), Some(v)) = (
                tensors.remove(&format!("m.{name}")),
                tensors.remove(&format!("v.{name}")),
            ) else {
                bail!("optimizer state for {name} is missing");
            };
            if m.dims() != var.dims() || v.dims() != var.dims() {
                bail!(
                    "optimizer state for {name} has shape {:?}, expected {:?}",
                    m.dims(),
                    var.dims()
                );
            }
            moments.push((m, v));
        }
        Ok(Adam {
            learning_rate,
            eps,
            step,
            moments,
        })
    }
}

/// The global L2 norm of all gradients of `net` and the factor that scales
/// it down to at most `max_norm` (PyTorch's `clip_grad_norm_`).
pub fn clip_coefficient(net: &PolicyNet, grads: &GradStore, max_norm: f64) -> Result<(f64, f64)> {
    let mut sum_sq = 0.0f64;
    for (_, var) in net.params() {
        if let Some(grad) = grads.get(var) {
            sum_sq += f64::from(grad.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
    }
    let norm = sum_sq.sqrt();
    Ok((norm, (max_norm / (norm + 1e-6)).min(1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rl::features::FeatureSpec;
    use crate::rl::policy::Architecture;
    use crate::rng::Rng;

    #[test]
    fn first_adam_step_moves_each_weight_by_lr_against_the_gradient_sign() {
        let architecture = Architecture {
            features: FeatureSpec {
                text_hash_dim: 4,
                action_hash_dim: 2,
            },
            hidden_dim: 3,
        };
        let net = PolicyNet::init(architecture, &mut Rng::new(3)).unwrap();
        let states = Tensor::ones(
            (2, architecture.features.state_dim()),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let before = net.params()[10].1.as_tensor().to_vec2::<f32>().unwrap();
        let loss = net.values(&states).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let (norm, coef) = clip_coefficient(&net, &grads, 1e-3).unwrap();
        assert!(norm > 0.0 && coef < 1.0 && (coef * norm - 1e-3).abs() < 1e-6);
        let grad = grads
            .get(&net.params()[10].1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let mut adam = Adam::new(&net, 0.01, 1e-8).unwrap();
        adam.step(&net, &grads, coef).unwrap();
        let after = net.params()[10].1.as_tensor().to_vec2::<f32>().unwrap();
        for ((b, a), g) in before
            .iter()
            .flatten()
            .zip(after.iter().flatten())
            .zip(grad.iter().flatten())
        {
            if g.abs() > 1e-4 {
                assert!((b - a - 0.01 * g.signum()).abs() < 1e-4, "{b} {a} {g}");
            }
        }
        // Issue 9, item 5: nothing the optimizer keeps tracks an autograd
        // graph, so memory cannot grow with the number of updates.
        for (name, moment) in adam.tensors(&net) {
            assert!(!moment.track_op(), "{name} keeps an autograd graph");
        }
        let restored = Adam::restore(&net, adam.tensors(&net), adam.step, 0.01, 1e-8).unwrap();
        assert_eq!(restored.step, 1);
    }
}
