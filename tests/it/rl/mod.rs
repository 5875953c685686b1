//! Integration tests of the RL policy learner (`whetstone::rl`).

mod synthetic;

// Shared with benches/rl_vs_bandit.rs, which uses the parts tests do not.
#[allow(dead_code)]
mod world;

mod learning;

mod checkpoint;

mod cli;

mod samples;
