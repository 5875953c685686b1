//! The integration tests: one binary (each links the whole crate), a module
//! per area. `support` is the local OpenAI-compatible test server and the
//! episode builders they share.

mod support;

mod apo_cli;
mod apo_engine;
mod apo_llm_client;
mod apo_replies;
mod cli_config;
mod daemon;
mod first_run;
mod ingest;
mod llm_limits;
mod otlp;
mod plugins;
mod registry;
mod rl;
mod trace_fixtures;
mod trace_readers;
