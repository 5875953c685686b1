//! `whetstone plugins ...`: the plugins folder and checking one plugin.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Subcommand;

use super::write_stdout;
use crate::config::Config;
use crate::plugin::manifest::Manifest;
use crate::plugin::{Example, LoadOptions, MutationContext, Plugin, World};

/// Plugin commands.
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// List the plugins in `[plugins] dir`, and why any failed to load.
    List,
    /// Load one component (and the NAME.toml beside it), print its world,
    /// interface version and limits, and time a smoke call.
    Check {
        /// The plugin's `.wasm` component.
        file: PathBuf,
    },
    /// Create a plugin crate in ./NAME that builds with `cargo build
    /// --release` (SDK and WIT included).
    New {
        /// What the plugin provides.
        #[arg(value_parser = ["reward", "mutator"])]
        world: String,
        /// Crate name (letters, digits, `-`, `_`).
        name: String,
    },
}

/// Writes the crate `name` of `world` into `dir` (which must not exist).
fn scaffold(dir: &std::path::Path, world: &str, name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    anyhow::ensure!(
        valid,
        "invalid plugin name {name:?}: use letters, digits, `-` and `_`, starting with a letter"
    );
    anyhow::ensure!(!dir.exists(), "{} already exists", dir.display());
    let lib = name.replace('-', "_");
    let template = if world == "reward" {
        include_str!("scaffold/reward.rs.in")
    } else {
        include_str!("scaffold/mutator.rs.in")
    };
    let files: [(&str, String); 6] = [
        (
            "Cargo.toml",
            include_str!("scaffold/Cargo.toml.in").replace("{name}", name),
        ),
        (
            ".cargo/config.toml",
            "[build]\ntarget = \"wasm32-wasip2\"\n".to_owned(),
        ),
        (
            "src/lib.rs",
            template.replace("{name}", name).replace("{lib}", &lib),
        ),
        (
            "sdk/Cargo.toml",
            include_str!("scaffold/sdk_Cargo.toml").to_owned(),
        ),
        (
            "sdk/src/lib.rs",
            include_str!("../../plugins/sdk/src/lib.rs").to_owned(),
        ),
        (
            "wit/since_v0.1.0/plugin.wit",
            include_str!("../../plugins/wit/since_v0.1.0/plugin.wit").to_owned(),
        ),
    ];
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap_or(dir))
            .with_context(|| format!("cannot create {}", path.display()))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// An episode for the smoke call of a reward plugin.
const SMOKE_EPISODE: &str = r#"{"trace_id":"smoke","format":"whetstone_jsonl","prompt":{"name":"Controller","version":"1","text":"You are Controller."},"input":"What is 17*3?","steps":[{"kind":"tool","name":"calculator","error":false,"tool":{"call_id":"c1","arguments":{"expression":"17*3"},"result":"51"}},{"kind":"llm","name":"gpt-4o-mini","error":false,"llm":{"input_messages":[],"output_text":"51","tool_calls":[],"tools_available":["calculator"],"usage":{"input_tokens":10,"output_tokens":1}}}],"rewards":{"success":1.0},"status":"ok","start_time_unix_nano":null,"duration_ms":null,"usage":{"input_tokens":10,"output_tokens":1},"policy_version":null,"source":{"file":"smoke.jsonl","line":1}}"#;

/// Runs one plugins command.
pub fn run(command: &PluginsCommand, config: &Config) -> anyhow::Result<()> {
    if let PluginsCommand::New { world, name } = command {
        let dir = PathBuf::from(name);
        scaffold(&dir, world, name)?;
        let lib = name.replace('-', "_");
        return Ok(write_stdout(&format!(
            "created {world} plugin {name}: cd {name} && cargo build --release \
             (needs `rustup target add wasm32-wasip2`) → target/wasm32-wasip2/release/{lib}.wasm\n"
        ))?);
    }
    let set = config.plugins.open(&config.data_dir)?;
    match command {
        PluginsCommand::List => {
            let report = set.reload();
            if let Some(err) = report.dir_error {
                anyhow::bail!("cannot list plugins: {err}");
            }
            let mut out = String::new();
            for plugin in set.plugins() {
                writeln!(out, "{}", describe(&plugin))?;
            }
            for err in &report.failed {
                writeln!(out, "failed: {err}")?;
            }
            if out.is_empty() {
                writeln!(out, "no plugins in {}", config.plugins.dir.display())?;
            }
            write_stdout(&out)?;
            Ok(())
        }
        PluginsCommand::New { .. } => unreachable!("handled above"),
        PluginsCommand::Check { file } => {
            let host = set.host();
            let bytes =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let name = file
                .file_stem()
                .and_then(|stem| stem.to_str())
                .unwrap_or("plugin");
            let (manifest, limits) =
                Manifest::read(&file.with_extension("toml"), config.plugins.limits)
                    .map_err(anyhow::Error::msg)?;
            let options = LoadOptions {
                limits,
                weight: manifest.weight,
                settings_json: manifest.settings_json(),
            };
            let started = Instant::now();
            let plugin = host.load(name, &bytes, options)?;
            let load_ms = started.elapsed().as_secs_f64() * 1e3;
            let started = Instant::now();
            let smoke = match plugin.world {
                World::Reward => {
                    let scores = host.score(&plugin, SMOKE_EPISODE)?;
                    let shown: Vec<String> = scores
                        .iter()
                        .map(|score| format!("{}={}", score.name, score.value))
                        .collect();
                    format!("score(sample episode) = [{}]", shown.join(", "))
                }
                World::Mutator => {
                    let context = MutationContext {
                        weakest: vec![Example {
                            input: "What is 17*3?".to_owned(),
                            output: "I think it is 41.".to_owned(),
                            score: 0.0,
                            feedback: "did not use the calculator".to_owned(),
                        }],
                        strongest: Vec::new(),
                    };
                    match host.mutate(&plugin, "You are a careful assistant.", 0, &context) {
                        Ok(mutated) => format!("mutate(sample prompt) = {} chars", mutated.len()),
                        // A mutator may decline an input; that is not a
                        // broken plugin, a trap or limit is.
                        Err(err) if matches!(err.kind, crate::plugin::ErrorKind::Returned(_)) => {
                            format!("mutate(sample prompt) declined: {err}")
                        }
                        Err(err) => return Err(err.into()),
                    }
                }
            };
            let call_ms = started.elapsed().as_secs_f64() * 1e3;
            let out = format!(
                "{}\nsmoke call: {smoke}\ntiming: load (compile or cache, link, describe) {load_ms:.1} ms, \
                 smoke call (instantiate + call) {call_ms:.2} ms\n",
                describe(&plugin)
            );
            write_stdout(&out)?;
            Ok(())
        }
    }
}

/// One line about a loaded plugin: what it is and its limits.
fn describe(plugin: &Plugin) -> String {
    let limits = &plugin.limits;
    format!(
        "{}: world {} (whetstone:plugin@{}), \"{}\": {}; weight {}; limits: memory_bytes={} fuel={} timeout_ms={} output_bytes={} log_bytes={}",
        plugin.name,
        plugin.world.as_str(),
        plugin.version.as_str(),
        plugin.display_name,
        plugin.description,
        plugin.weight,
        limits.memory_bytes,
        limits.fuel,
        limits.timeout_ms,
        limits.output_bytes,
        limits.log_bytes,
    )
}
