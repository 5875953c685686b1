//! Whetstone: an always-on optimizer that learns from an LLM agent's traces.

pub mod api;
pub mod apo;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod ingest;
pub mod llm;
pub mod otlp;
pub mod plugin;
pub mod registry;
pub mod rl;
pub mod rng;
pub mod store;
pub mod trace;
