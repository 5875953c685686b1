//! Configuration: `config.toml`, its embedded defaults, and checking it.
//!
//! Every setting has a default (its section's `Default` impl), and the
//! repository's `config.toml` documents each one with exactly that value; a
//! test keeps the two identical, so the binary runs with no file at all and
//! the file is an accurate manual.
//!
//! A file is read in three steps, each reporting `file:line:col: key: message`:
//! 1. parse the TOML into a spanned tree (syntax errors);
//! 2. deserialize with `deny_unknown_fields` (typos, wrong types: serde stops
//!    at the first one, so the offending key is taken out and the rest
//!    deserialized again, until every such problem is found);
//! 3. [`Config::validate`] (out-of-range values: all of them are listed).
//!
//! [`load`] then checks every file the configuration names (APO's baseline,
//! meta-prompt overrides, rubric, validation ids), listing every problem.
//!
//! Relative paths (`data_dir`, `traces.dir`, the `apo` prompt files) resolve against the directory of
//! the config file, or against the current directory when running on the
//! embedded defaults; [`load`] returns them absolute.
//!
//! Adding a section means adding a field to [`Config`], a struct with
//! `#[serde(default, deny_unknown_fields)]` and a `Default` impl, one line in
//! [`Config::validate`], and its documented keys in `config.toml`.

mod daemon;
mod error;
mod llm;
mod locate;
mod traces;
mod validate;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::apo::ApoConfig;
pub use daemon::{ApiConfig, DaemonConfig};
pub use error::{ConfigError, Location, Problem};
pub use llm::LlmConfig;
pub use traces::TracesConfig;
pub use validate::{Checker, Invalid};

use crate::otlp::OtlpConfig;
use crate::plugin::PluginsConfig;
use crate::registry::RegistryConfig;
use crate::rl::RlConfig;

/// The whole configuration. Defaults are documented in `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the SQLite store and output files live.
    pub data_dir: PathBuf,
    /// Trace ingestion.
    pub traces: TracesConfig,
    /// The OpenAI-compatible LLM endpoint.
    pub llm: LlmConfig,
    /// Tool-selection policy learning (PPO).
    pub rl: RlConfig,
    /// Automatic prompt optimization.
    pub apo: ApoConfig,
    /// The always-on daemon: triggers, schedule, outputs.
    pub daemon: DaemonConfig,
    /// The daemon's local HTTP API.
    pub api: ApiConfig,
    /// The prompt registry: A/B statistics, guardrails, rollout.
    pub registry: RegistryConfig,
    /// Sandboxed WebAssembly plugins.
    pub plugins: PluginsConfig,
    /// The daemon's OTLP/HTTP and OTLP/gRPC trace receivers.
    pub otlp: OtlpConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(".whetstone"),
            traces: TracesConfig::default(),
            llm: LlmConfig::default(),
            rl: RlConfig::default(),
            apo: ApoConfig::default(),
            daemon: DaemonConfig::default(),
            api: ApiConfig::default(),
            registry: RegistryConfig::default(),
            plugins: PluginsConfig::default(),
            otlp: OtlpConfig::default(),
        }
    }
}

impl Config {
    /// Every out-of-range or malformed value, by full key path; empty when
    /// the configuration is usable.
    pub fn validate(&self) -> Vec<Invalid> {
        let mut check = Checker::default();
        check.not_empty_path("data_dir", &self.data_dir);
        check.section("traces", |check| self.traces.validate(check));
        check.section("llm", |check| self.llm.validate(check));
        check.section("rl", |check| self.rl.validate(check));
        check.section("apo", |check| self.apo.check(check));
        check.section("daemon", |check| self.daemon.validate(check));
        check.section("api", |check| self.api.validate(check));
        check.section("registry", |check| self.registry.validate(check));
        check.section("plugins", |check| self.plugins.validate(check));
        check.section("otlp", |check| self.otlp.validate(check));
        check.finish()
    }

    /// Makes relative paths absolute by joining them onto `base`.
    fn resolve_paths(&mut self, base: &Path) {
        self.data_dir = base.join(&self.data_dir);
        self.traces.resolve_paths(base);
        self.apo.resolve_paths(base);
        self.plugins.resolve_paths(base);
        self.daemon.resolve_paths(base);
    }

    /// Where rounds write their outputs: `daemon.output_dir`, else
    /// `<data_dir>/output`.
    pub fn output_dir(&self) -> PathBuf {
        self.daemon
            .output_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("output"))
    }
}

/// Loads the configuration from `path`, or the embedded defaults when `None`,
/// with relative paths made absolute (see the module docs).
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let Some(path) = path else {
        let mut config = Config::default();
        let cwd = std::env::current_dir().map_err(|err| {
            let problem = Problem::whole_file(
                Path::new("<embedded defaults>"),
                format_args!("cannot resolve relative paths: current directory: {err}"),
            );
            ConfigError::new(vec![problem])
        })?;
        config.resolve_paths(&cwd);
        return Ok(config);
    };
    let whole_file = |message: String| ConfigError::new(vec![Problem::whole_file(path, message)]);
    let text =
        std::fs::read_to_string(path).map_err(|err| whole_file(format!("cannot read: {err}")))?;
    let mut config = parse(&text, path)?;
    let absolute = std::path::absolute(path)
        .map_err(|err| whole_file(format!("cannot resolve its directory: {err}")))?;
    config.resolve_paths(absolute.parent().unwrap_or(Path::new("/")));
    // The files the configuration names, all checked now rather than one
    // per failed run.
    let missing = config.apo.check_files();
    if !missing.is_empty() {
        let doc = toml::de::DeTable::parse(&text).ok();
        let problems = missing
            .into_iter()
            .map(|invalid| Problem {
                file: path.to_path_buf(),
                location: doc
                    .as_ref()
                    .and_then(|doc| locate::span_of_key(doc.get_ref(), &invalid.key))
                    .map(|span| Location::of_offset(&text, span.start)),
                key: Some(invalid.key),
                message: invalid.message,
            })
            .collect();
        return Err(ConfigError::new(problems));
    }
    tracing::debug!(file = %path.display(), "configuration loaded");
    Ok(config)
}

/// Parses and validates configuration `text`; `file` names it in problems.
/// Paths are returned as written.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let problem_from_toml = |err: toml::de::Error, doc: Option<&toml::de::DeTable<'_>>| {
        let offset = err.span().map(|span| span.start);
        Problem {
            file: file.to_path_buf(),
            location: offset.map(|offset| Location::of_offset(text, offset)),
            key: doc
                .zip(offset)
                .and_then(|(doc, offset)| locate::key_path_at(doc, offset)),
            message: err.message().to_owned(),
        }
    };

    let doc = toml::de::DeTable::parse(text)
        .map_err(|err| ConfigError::new(vec![problem_from_toml(err, None)]))?;
    // serde stops at the first unknown key or wrong type: take that key out
    // and deserialize again, until the rest deserializes, so every such
    // problem is reported at once (and the rest is still validated).
    let mut problems = Vec::new();
    let mut remaining = doc.clone();
    let config = loop {
        match Config::deserialize(toml::de::Deserializer::from(remaining.clone())) {
            Ok(config) => break Some(config),
            Err(err) => {
                let problem = problem_from_toml(err, Some(doc.get_ref()));
                let removed = problem
                    .key
                    .as_deref()
                    .is_some_and(|key| locate::remove_key_path(remaining.get_mut(), key));
                problems.push(problem);
                if !removed {
                    break None;
                }
            }
        }
    };
    if let Some(config) = &config {
        problems.extend(config.validate().into_iter().map(|invalid| {
            Problem {
                file: file.to_path_buf(),
                location: locate::span_of_key(doc.get_ref(), &invalid.key)
                    .map(|span| Location::of_offset(text, span.start)),
                key: Some(invalid.key),
                message: invalid.message,
            }
        }));
    }
    if !problems.is_empty() {
        // File order reads best; keys left at their defaults have no
        // location and go last.
        problems.sort_by_key(|problem| {
            problem
                .location
                .map_or((usize::MAX, 0), |l| (l.line, l.column))
        });
        return Err(ConfigError::new(problems));
    }
    Ok(config.expect("a configuration that did not deserialize has a problem"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const DOCUMENTED: &str = include_str!("../../config.toml");

    /// Parses `text` as `config.toml` and returns the error's lines.
    fn errors(text: &str) -> Vec<String> {
        let err = parse(text, Path::new("config.toml")).expect_err("config should be rejected");
        err.to_string().lines().map(str::to_owned).collect()
    }

    #[test]
    fn documented_file_is_exactly_the_embedded_defaults() {
        let parsed =
            parse(DOCUMENTED, Path::new("config.toml")).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(parsed, Config::default());
        assert_eq!(Config::default().validate(), []);
    }

    /// Dotted paths of every leaf value in a JSON tree, with whether the
    /// leaf is null (an unset optional setting).
    fn json_leaves(value: &serde_json::Value, prefix: &str, out: &mut BTreeSet<(String, bool)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map {
                    json_leaves(child, &format!("{prefix}{key}."), out);
                }
            }
            leaf => {
                out.insert((prefix.trim_end_matches('.').to_owned(), leaf.is_null()));
            }
        }
    }

    fn toml_leaves(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
        for (key, value) in table {
            match value {
                toml::Value::Table(child) => toml_leaves(child, &format!("{prefix}{key}."), out),
                _ => {
                    out.insert(format!("{prefix}{key}"));
                }
            }
        }
    }

    /// Settings shown commented out (`# seed = 42`) in the documented file,
    /// as dotted paths with the line that would set them.
    fn commented_settings(text: &str) -> Vec<(String, String)> {
        let mut section = String::new();
        let mut found = Vec::new();
        for line in text.lines() {
            if let Some(header) = line
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
            {
                section = format!("{header}.");
            }
            let Some(body) = line.strip_prefix("# ") else {
                continue;
            };
            // Prose rarely parses as a one-key TOML document; settings do.
            if let Ok(table) = body.parse::<toml::Table>()
                && let [(key, value)] = table.iter().collect::<Vec<_>>()[..]
                && !value.is_table()
            {
                found.push((format!("{section}{key}"), body.to_owned()));
            }
        }
        found
    }

    #[test]
    fn every_setting_is_documented_and_every_documented_setting_exists() {
        let mut all = BTreeSet::new();
        json_leaves(
            &serde_json::to_value(Config::default()).unwrap(),
            "",
            &mut all,
        );
        let set_by_default: BTreeSet<String> = all
            .iter()
            .filter(|(_, null)| !null)
            .map(|(key, _)| key.clone())
            .collect();
        let unset_by_default: BTreeSet<String> = all
            .iter()
            .filter(|(_, null)| *null)
            .map(|(key, _)| key.clone())
            .collect();

        let mut written = BTreeSet::new();
        toml_leaves(
            &DOCUMENTED.parse::<toml::Table>().unwrap(),
            "",
            &mut written,
        );
        assert_eq!(
            written, set_by_default,
            "keys written in config.toml vs Config::default()"
        );

        let commented = commented_settings(DOCUMENTED);
        let commented_keys: BTreeSet<String> =
            commented.iter().map(|(key, _)| key.clone()).collect();
        assert_eq!(
            commented_keys, unset_by_default,
            "optional keys shown commented out in config.toml"
        );

        // Uncommenting an example must give a valid, different configuration.
        for (key, line) in &commented {
            let uncommented = DOCUMENTED.replacen(&format!("# {line}"), line, 1);
            let config = parse(&uncommented, Path::new("config.toml"))
                .unwrap_or_else(|err| panic!("uncommenting {key}: {err}"));
            assert_ne!(
                config,
                Config::default(),
                "uncommenting {key} changed nothing"
            );
        }
    }

    #[test]
    fn missing_keys_and_sections_take_their_defaults() {
        assert_eq!(parse("", Path::new("c.toml")).unwrap(), Config::default());
        let config = parse("[llm]\nseed = 7\n", Path::new("c.toml")).unwrap();
        assert_eq!(config.llm.seed, Some(7));
        assert_eq!(config.traces, TracesConfig::default());
    }

    #[test]
    fn unknown_keys_are_reported_with_location_and_key_path() {
        let found = errors("[traces]\nquiet_period = 5\n");
        assert_eq!(found.len(), 1);
        assert!(
            found[0]
                .starts_with("config.toml:2:1: traces.quiet_period: unknown field `quiet_period`"),
            "{found:?}"
        );
        let found = errors("colour = 1\n");
        assert!(
            found[0].starts_with("config.toml:1:1: colour: unknown field `colour`"),
            "{found:?}"
        );
    }

    #[test]
    fn wrong_types_are_reported_at_the_value() {
        let found = errors("[llm]\n\ntimeout_secs = \"sixty\"\n");
        assert_eq!(found.len(), 1);
        assert!(
            found[0]
                .starts_with("config.toml:3:16: llm.timeout_secs: invalid type: string \"sixty\""),
            "{found:?}"
        );
        let found = errors("traces = 5\n");
        assert!(
            found[0].starts_with("config.toml:1:10: traces: invalid type: integer"),
            "{found:?}"
        );
    }

    #[test]
    fn unknown_keys_wrong_types_and_bad_values_are_all_reported_at_once() {
        // Issue 11: serde stopped at the first of these six.
        let found = errors(
            "colour = 1\n\
             [traces]\nquiet_period = 5\nbatch_lines = \"many\"\n\
             [llm]\ntimeout_secs = \"sixty\"\nmax_concurrency = 0\n\
             [rl]\ngamma = \"high\"\n",
        );
        let keys: Vec<&str> = found
            .iter()
            .map(|line| line.split(": ").nth(1).unwrap_or_default())
            .collect();
        assert_eq!(
            keys,
            [
                "colour",
                "traces.quiet_period",
                "traces.batch_lines",
                "llm.timeout_secs",
                "llm.max_concurrency",
                "rl.gamma"
            ],
            "{found:#?}"
        );
        assert!(found[0].starts_with("config.toml:1:1: "), "{found:?}");
        assert!(found[4].starts_with("config.toml:7:1: "), "{found:?}");
    }

    #[test]
    fn syntax_errors_are_reported_with_location() {
        let found = errors("[traces]\ndir = \"unterminated\n");
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("config.toml:2:"), "{found:?}");
    }

    #[test]
    fn every_out_of_range_value_is_listed_in_file_order() {
        let found = errors(
            "[llm]\nmax_concurrency = 0\nbase_url = \"ftp://x\"\n\
             [traces]\nmax_line_bytes = 5\nquiet_period_secs = 0\n",
        );
        assert_eq!(
            found,
            [
                "config.toml:2:1: llm.max_concurrency: must be between 1 and 1024, got 0",
                "config.toml:3:1: llm.base_url: must be an http(s) URL, got scheme \"ftp\" in \"ftp://x\"",
                "config.toml:5:1: traces.max_line_bytes: must be between 1024 and 1073741824, got 5",
                "config.toml:6:1: traces.quiet_period_secs: must be at least 1, got 0",
            ]
        );
    }

    #[test]
    fn load_resolves_relative_paths_against_the_file_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("whetstone.toml");
        std::fs::write(
            &file,
            "data_dir = \"state\"\n[traces]\ndir = \"/abs/traces\"\n",
        )
        .unwrap();
        let config = load(Some(&file)).unwrap();
        assert_eq!(config.data_dir, dir.path().join("state"));
        assert_eq!(config.traces.dir, Path::new("/abs/traces"));

        let defaults = load(None).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(defaults.data_dir, cwd.join(".whetstone"));
        assert_eq!(defaults.traces.dir, cwd.join("traces"));
    }

    #[test]
    fn unreadable_files_are_one_problem_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let err = load(Some(&missing)).unwrap_err();
        assert_eq!(err.problems().len(), 1);
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("{}: cannot read: ", missing.display())),
            "{shown}"
        );
    }
}
