//! `whetstone status`: what the running daemon is doing, from its HTTP API;
//! without a daemon, what the store holds (read-only if need be).

use std::io::{self, Write};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use crate::config::Config;
use crate::store::Store;

/// Flags of `whetstone status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the daemon's status as JSON (as `/v1/status` gives it).
    #[arg(long)]
    pub json: bool,
}

/// Asks the daemon at `api.listen`; falls back to the store.
pub fn run(args: &StatusArgs, config: &Config) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match daemon_status(config) {
        Ok(status) if args.json => writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?,
        Ok(status) => write_status(&mut out, &status)?,
        Err(err) => {
            writeln!(
                out,
                "no daemon answers at {} ({})",
                config.api.listen,
                err.root_cause()
            )?;
            let store = Store::open_for_reading(&config.data_dir)?;
            let stats = store.stats()?;
            writeln!(
                out,
                "store {}: {} episodes",
                config.data_dir.display(),
                stats.episodes
            )?;
            for round in store.rounds(5)? {
                writeln!(
                    out,
                    "  round {} {} on {}: {}{}",
                    round.id,
                    round.kind,
                    round.subject,
                    round.status.as_str(),
                    round
                        .error
                        .map(|err| format!(" ({err})"))
                        .unwrap_or_default()
                )?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn daemon_status(config: &Config) -> anyhow::Result<Value> {
    let url = format!("http://{}/v1/status", config.api.listen);
    let token = std::env::var(&config.api.token_env)
        .ok()
        .filter(|t| !t.is_empty());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let mut request = client.get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.context("connecting")?;
        let response = response.error_for_status()?;
        Ok(response.json().await?)
    })
}

fn write_status(out: &mut impl Write, status: &Value) -> io::Result<()> {
    let ingest = &status["ingest"];
    writeln!(
        out,
        "daemon running, configuration: {}",
        status["config_source"]
    )?;
    writeln!(
        out,
        "ingested: {} episodes ({} duplicates), {} bytes in {} passes; pending spans: {}",
        ingest["episodes_new"],
        ingest["episodes_duplicate"],
        ingest["bytes"],
        ingest["passes"],
        ingest["pending_spans"]
    )?;
    if let Some(rejects) = ingest["rejects"].as_object().filter(|r| !r.is_empty()) {
        let by_reason: Vec<String> = rejects.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(out, "rejected: {}", by_reason.join(", "))?;
    }
    for (kind, round) in status["running"].as_object().into_iter().flatten() {
        writeln!(
            out,
            "running: {kind} round {} on {}: {}",
            round["id"], round["subject"], round["progress"]
        )?;
    }
    writeln!(
        out,
        "rounds: succeeded {}, failed {}; LLM calls {}, tokens {}; policy version {}",
        status["rounds_succeeded"],
        status["rounds_failed"],
        status["llm_calls"],
        status["llm_tokens"],
        status["policy_version"]
    )?;
    if let Some(why) = status["apo_disabled"].as_str() {
        writeln!(out, "APO not running: {why}")?;
    }
    for problem in status["config_errors"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "config edit refused: {}",
            problem.as_str().unwrap_or_default()
        )?;
    }
    for key in status["restart_required"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "needs a restart to apply: {}",
            key.as_str().unwrap_or_default()
        )?;
    }
    Ok(())
}
