//! Whetstone: an always-on optimizer that learns from an LLM agent's traces.

pub mod store;
pub mod trace;
