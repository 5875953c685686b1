//! Whetstone: an always-on optimizer that learns from an LLM agent's traces.

pub mod apo;
pub mod llm;
pub mod trace;
