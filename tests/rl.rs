//! Integration tests of the RL policy learner (`whetstone::rl`).

#[path = "rl/synthetic.rs"]
mod synthetic;

// Shared with benches/rl_vs_bandit.rs, which uses the parts tests do not.
#[allow(dead_code)]
#[path = "rl/world.rs"]
mod world;

#[path = "rl/learning.rs"]
mod learning;

#[path = "rl/checkpoint.rs"]
mod checkpoint;

#[path = "rl/cli.rs"]
mod cli;

#[path = "rl/samples.rs"]
mod samples;
