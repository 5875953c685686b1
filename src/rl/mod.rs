//! Learning the agent's tool-selection policy with PPO from trace rewards.
//!
//! The pipeline of one training run ([`train`]):
//! 1. [`transitions`] turns episodes into decisions (each tool call, and
//!    "answer without a tool"), with rewards (the trace's, plus what the
//!    reward plugins give, [`plugin_rewards`]) and a skip reason for bad ones;
//! 2. [`features`] and [`batch`] hash states and actions into tensors;
//! 3. behavior probabilities come from the trace, or else from the promoted
//!    policy snapshot, and each source is counted;
//! 4. [`ppo`] runs PPO for logged data (clipped against the policy at the
//!    start of each iteration, importance-weighted by truncated ratios to the
//!    logging policy) with [`vtrace`] targets on the [`policy`] networks with
//!    the [`optimizer`];
//! 5. [`ope`] estimates the trained and the promoted policy's value on
//!    held-out episodes from their logged probabilities, and the trained one
//!    is promoted only when its lower confidence bound beats the promoted
//!    one's estimate on enough data;
//! 6. [`checkpoint`] saves weights, optimizer state and counters so the next
//!    run continues; [`report`] writes `learned_policy.json`.
//!
//! [`serve`] serves the promoted policy's action probabilities, once a
//! trained policy has passed the gate.

pub mod batch;
pub mod behavior;
pub mod checkpoint;
pub mod config;
pub mod features;
pub mod ope;
pub mod optimizer;
pub mod plugin_rewards;
pub mod policy;
pub mod ppo;
pub mod report;
pub mod sample;
pub mod serve;
pub mod train;
pub mod transitions;
pub mod vtrace;

pub use config::{PromotionEstimator, RlConfig};
pub use report::TrainReport;
pub use serve::{ActRequest, ServedPolicy, act};
pub use train::{TrainProgress, train, train_until};
pub use transitions::NO_TOOL;
