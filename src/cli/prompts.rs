//! `whetstone prompts ...`: the prompt registry from the command line.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::config::Config;
use crate::registry::{Lineage, PromptRegistry, TestStatus, VersionStats};
use crate::store::PromptVersion;

/// Registry commands. Every change is written to the audit log with `--why`.
#[derive(Debug, Subcommand)]
pub enum PromptsCommand {
    /// List registered prompts, or the versions of one.
    List {
        /// A prompt name: list its versions.
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one version: text, lineage, labels, outcomes.
    Show {
        name: String,
        version: String,
        #[arg(long)]
        json: bool,
    },
    /// Register a new version from a file (or `-` for stdin).
    Register {
        name: String,
        file: PathBuf,
        /// Version name [default: the next number]
        #[arg(long)]
        version: Option<String>,
        /// The version it derives from.
        #[arg(long)]
        parent: Option<String>,
        /// Label to point at it (e.g. candidate).
        #[arg(long)]
        label: Option<String>,
    },
    /// Line diff of two versions.
    Diff {
        name: String,
        from: String,
        to: String,
    },
    /// A/B tests.
    #[command(subcommand)]
    Ab(AbCommand),
    /// Start a staged rollout of a version against production (or move a
    /// running one to a stage with --stage).
    Rollout {
        name: String,
        #[arg(required_unless_present = "stage")]
        version: Option<String>,
        /// The control [default: the production version]
        #[arg(long)]
        control: Option<String>,
        /// Instead: move the running rollout to this stage (index) by hand.
        #[arg(long, conflicts_with_all = ["control", "version"])]
        stage: Option<usize>,
        #[arg(long, default_value = "manual rollout")]
        why: String,
    },
    /// Stop the running test with its control as winner, or move production
    /// back to its parent version.
    Rollback {
        name: String,
        #[arg(long, default_value = "manual rollback")]
        why: String,
    },
}

/// A/B test commands.
#[derive(Debug, Subcommand)]
pub enum AbCommand {
    /// Start a test: `split` of traffic to the treatment.
    Start {
        name: String,
        control: String,
        treatment: String,
        #[arg(long, default_value_t = 0.1)]
        split: f64,
    },
    /// Both arms' outcomes and the always-valid comparison.
    Status {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop the running test, optionally naming the winner.
    Stop {
        name: String,
        #[arg(long)]
        winner: Option<String>,
        #[arg(long, default_value = "stopped by hand")]
        why: String,
    },
}

/// Runs one registry command.
pub fn run(command: &PromptsCommand, config: &Config) -> anyhow::Result<()> {
    let mut registry = PromptRegistry::open(&config.data_dir, config.registry.clone(), "cli")?;
    let mut out = io::stdout().lock();
    match command {
        PromptsCommand::List { name: None, json } => {
            let prompts = registry.store().registered_prompts()?;
            if *json {
                let list: Vec<Value> = prompts
                    .iter()
                    .map(|(name, n)| json!({"prompt": name, "versions": n}))
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                writeln!(out, "{:<32} {:>8}  production", "PROMPT", "VERSIONS")?;
                for (name, n) in prompts {
                    let production = registry.labelled(&name, crate::registry::PRODUCTION)?;
                    writeln!(out, "{name:<32} {n:>8}  {}", production.unwrap_or_default())?;
                }
            }
        }
        PromptsCommand::List {
            name: Some(name),
            json,
        } => {
            let versions = registry.store().prompt_versions(name)?;
            let labels = registry.store().prompt_labels(name)?;
            let labels_of = |version: &str| -> Vec<String> {
                labels
                    .iter()
                    .filter(|(_, v)| v == version)
                    .map(|(l, _)| l.clone())
                    .collect()
            };
            if *json {
                let list: Vec<Value> = versions
                    .iter()
                    .map(|v| {
                        let mut value = version_json(v);
                        value["labels"] = json!(labels_of(&v.version));
                        value
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                writeln!(
                    out,
                    "{:<10} {:<10} {:<16} {:<7} {:<24} TEXT",
                    "VERSION", "PARENT", "OPERATOR", "ROUND", "LABELS"
                )?;
                for v in &versions {
                    writeln!(
                        out,
                        "{:<10} {:<10} {:<16} {:<7} {:<24} {}",
                        v.version,
                        v.parent_version.as_deref().unwrap_or("-"),
                        v.operator.as_deref().unwrap_or("-"),
                        v.round_id.map_or("-".into(), |r| r.to_string()),
                        labels_of(&v.version).join(","),
                        first_line(&v.text, 48)
                    )?;
                }
            }
        }
        PromptsCommand::Show {
            name,
            version,
            json,
        } => {
            let v = registry.version(name, version)?;
            let stats = registry.version_stats(name, version, 0)?;
            if *json {
                let mut value = version_json(&v);
                value["stats"] = serde_json::to_value(&stats)?;
                writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            } else {
                writeln!(out, "{name} version {version}")?;
                writeln!(
                    out,
                    "parent {}, operator {}, round {}, by {}",
                    v.parent_version.as_deref().unwrap_or("-"),
                    v.operator.as_deref().unwrap_or("-"),
                    v.round_id.map_or("-".into(), |r| r.to_string()),
                    v.created_by
                )?;
                if let Some(scores) = &v.scores {
                    writeln!(out, "scores {scores}")?;
                }
                write_stats(&mut out, &stats)?;
                writeln!(out, "---\n{}", v.text)?;
            }
        }
        PromptsCommand::Register {
            name,
            file,
            version,
            parent,
            label,
        } => {
            let text = if file.as_os_str() == "-" {
                io::read_to_string(io::stdin())?
            } else {
                std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let lineage = Lineage {
                parent_version: parent.clone(),
                operator: Some("manual".into()),
                ..Lineage::default()
            };
            let stored =
                registry.register_prompt(version.as_deref(), name, text.trim_end(), lineage)?;
            if let Some(label) = label {
                registry.set_label(name, label, &stored.version, "registered from the CLI")?;
            }
            writeln!(out, "{name} version {}", stored.version)?;
        }
        PromptsCommand::Diff { name, from, to } => {
            let a = registry.version(name, from)?.text;
            let b = registry.version(name, to)?.text;
            write_diff(&mut out, &a, &b)?;
        }
        PromptsCommand::Ab(AbCommand::Start {
            name,
            control,
            treatment,
            split,
        }) => {
            let id = registry.start_ab_test(name, control, treatment, *split)?;
            writeln!(
                out,
                "test {id}: {control} vs {treatment}, {:.0}% of traffic to {treatment}",
                split * 100.0
            )?;
        }
        PromptsCommand::Ab(AbCommand::Status { name, json }) => match registry.test_status(name)? {
            None => writeln!(out, "no test running for `{name}`")?,
            Some(status) if *json => writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?,
            Some(status) => write_test(&mut out, &status)?,
        },
        PromptsCommand::Ab(AbCommand::Stop { name, winner, why }) => {
            registry.stop_ab_test(name, winner.as_deref(), why)?;
            writeln!(
                out,
                "stopped; winner: {}",
                winner.as_deref().unwrap_or("none")
            )?;
        }
        PromptsCommand::Rollout {
            name,
            stage: Some(stage),
            why,
            ..
        } => {
            let split = registry.set_stage(name, *stage, why)?;
            writeln!(
                out,
                "stage {stage}: {:.0}% of traffic to the treatment",
                split * 100.0
            )?;
        }
        PromptsCommand::Rollout {
            name,
            version,
            control,
            stage: None,
            ..
        } => {
            let version = version.as_deref().context("name the version to roll out")?;
            let control = match control {
                Some(control) => control.clone(),
                None => registry
                    .labelled(name, crate::registry::PRODUCTION)?
                    .with_context(|| {
                        format!("`{name}` has no production version; pass --control")
                    })?,
            };
            let id = registry.start_rollout(name, &control, version)?;
            writeln!(
                out,
                "rollout {id}: {version} against {control}, stages {:?}",
                config.registry.rollout_stages
            )?;
        }
        PromptsCommand::Rollback { name, why } => {
            let version = registry.rollback(name, why)?;
            writeln!(out, "rolled back: production is {name} version {version}")?;
        }
    }
    out.flush()?;
    Ok(())
}

fn version_json(v: &PromptVersion) -> Value {
    json!({
        "prompt": v.prompt,
        "version": v.version,
        "parent_version": v.parent_version,
        "operator": v.operator,
        "round_id": v.round_id,
        "scores": v.scores.as_deref().and_then(|s| serde_json::from_str::<Value>(s).ok()),
        "created_at_unix_ms": v.created_at_unix_ms,
        "created_by": v.created_by,
        "text": v.text,
    })
}

fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > max {
        format!("{}...", line.chars().take(max).collect::<String>())
    } else {
        line.to_string()
    }
}

fn write_stats(out: &mut impl Write, stats: &VersionStats) -> io::Result<()> {
    let m = &stats.metric;
    writeln!(
        out,
        "{} episodes; metric {:.3} [{:.3}, {:.3}] (n {}); tool error rate {:.3}; latency {:.0} ms; tokens {:.0}",
        stats.episodes,
        m.mean,
        m.low,
        m.high,
        m.n,
        stats.tool_error_rate.mean,
        stats.latency_ms.mean,
        stats.tokens.mean
    )?;
    for (name, reward) in &stats.rewards {
        writeln!(
            out,
            "  reward {name}: {:.3} [{:.3}, {:.3}] (n {})",
            reward.mean, reward.low, reward.high, reward.n
        )?;
    }
    Ok(())
}

fn write_test(out: &mut impl Write, status: &TestStatus) -> io::Result<()> {
    writeln!(
        out,
        "test {} on `{}`: stage {} of {:?}, {:.0}% of traffic to the treatment",
        status.id,
        status.prompt,
        status.stage,
        status.stages,
        status.split * 100.0
    )?;
    for (arm, stats) in [
        ("control", &status.control),
        ("treatment", &status.treatment),
    ] {
        write!(out, "{arm} {}: ", stats.version)?;
        write_stats(out, stats)?;
    }
    match &status.comparison {
        Some(c) => writeln!(
            out,
            "difference {:+.3}, always-valid interval [{:+.3}, {:+.3}], p {:.4}: {}",
            c.difference,
            c.low,
            c.high,
            c.p_value,
            if c.significant {
                "significant"
            } else {
                "not decided"
            }
        )?,
        None => writeln!(out, "not enough episodes per arm yet")?,
    }
    for breach in &status.breaches {
        writeln!(out, "{breach}")?;
    }
    Ok(())
}

/// A minimal line diff (longest common subsequence), `-`/`+`/` ` prefixed.
fn write_diff(out: &mut impl Write, a: &str, b: &str) -> io::Result<()> {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            writeln!(out, "  {}", a[i])?;
            (i, j) = (i + 1, j + 1);
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            writeln!(out, "+ {}", b[j])?;
            j += 1;
        } else {
            writeln!(out, "- {}", a[i])?;
            i += 1;
        }
    }
    Ok(())
}
