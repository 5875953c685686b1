//! Integration tests of the RL policy learner (`whetstone::rl`).

#[path = "rl/synthetic.rs"]
mod synthetic;

#[path = "rl/learning.rs"]
mod learning;

#[path = "rl/checkpoint.rs"]
mod checkpoint;

#[path = "rl/cli.rs"]
mod cli;
