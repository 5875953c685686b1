//! `whetstone config check`, run as the real binary on temporary files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary directory to write config files into and run the binary in.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes `text` to `name` in the sandbox and returns its path.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `whetstone ARGS` with the sandbox as current directory.
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_whetstone"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// Asserts the run failed as a configuration error, printed nothing on
/// stdout, and returns its problem lines (the summary line removed).
fn config_problems(output: &Output) -> Vec<String> {
    assert_eq!(output.status.code(), Some(78), "stderr: {}", stderr(output));
    assert_eq!(stdout(output), "");
    let stderr = stderr(output);
    let mut lines: Vec<String> = stderr.lines().map(str::to_owned).collect();
    let summary = lines.pop().unwrap();
    assert!(
        summary.starts_with("whetstone: invalid configuration ("),
        "{stderr}"
    );
    lines
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn valid_file_prints_the_effective_configuration() {
    let sandbox = Sandbox::new();
    let file = sandbox.file(
        "whetstone.toml",
        "data_dir = \"state\"\n[llm]\nmax_concurrency = 9\n",
    );
    let output = sandbox.run(&["config", "check", path_str(&file)]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));

    let effective: toml::Table = stdout(&output).parse().unwrap();
    let data_dir = sandbox.dir.path().join("state");
    assert_eq!(effective["data_dir"].as_str(), Some(path_str(&data_dir)));
    assert_eq!(effective["llm"]["max_concurrency"].as_integer(), Some(9));
    // Unset keys show their defaults, relative paths made absolute.
    assert_eq!(effective["llm"]["timeout_secs"].as_integer(), Some(60));
    let traces_dir = sandbox.dir.path().join("traces");
    assert_eq!(
        effective["traces"]["dir"].as_str(),
        Some(path_str(&traces_dir))
    );
}

#[test]
fn without_a_file_the_defaults_are_checked() {
    let sandbox = Sandbox::new();
    let output = sandbox.run(&["config", "check"]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let effective: toml::Table = stdout(&output).parse().unwrap();
    assert_eq!(
        effective["llm"]["base_url"].as_str(),
        Some("http://127.0.0.1:8000/v1")
    );
    assert_eq!(
        effective["traces"]["quiet_period_secs"].as_integer(),
        Some(30)
    );
}

#[test]
fn the_documented_config_file_checks_clean() {
    let sandbox = Sandbox::new();
    let documented = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let output = sandbox.run(&["config", "check", path_str(&documented)]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
}

#[test]
fn a_typo_names_file_line_column_and_key() {
    let sandbox = Sandbox::new();
    let file = sandbox.file("c.toml", "[traces]\ndir = \"t\"\nquiet_period = 5\n");
    let problems = config_problems(&sandbox.run(&["config", "check", path_str(&file)]));
    assert_eq!(problems.len(), 1, "{problems:?}");
    let expected = format!(
        "{}:3:1: traces.quiet_period: unknown field `quiet_period`",
        file.display()
    );
    assert!(problems[0].starts_with(&expected), "{problems:?}");
}

#[test]
fn a_wrong_type_names_the_value_position_and_key() {
    let sandbox = Sandbox::new();
    let file = sandbox.file("c.toml", "[llm]\ntemperature = \"warm\"\n");
    let problems = config_problems(&sandbox.run(&["config", "check", path_str(&file)]));
    assert_eq!(problems.len(), 1, "{problems:?}");
    let expected = format!(
        "{}:2:15: llm.temperature: invalid type: string \"warm\"",
        file.display()
    );
    assert!(problems[0].starts_with(&expected), "{problems:?}");
}

#[test]
fn every_out_of_range_value_is_listed() {
    let sandbox = Sandbox::new();
    let file = sandbox.file(
        "c.toml",
        "[traces]\nmax_line_bytes = 5\n\n[llm]\nmax_concurrency = 0\n",
    );
    let problems = config_problems(&sandbox.run(&["config", "check", path_str(&file)]));
    let file = file.display();
    assert_eq!(
        problems,
        [
            format!(
                "{file}:2:1: traces.max_line_bytes: must be between 1024 and 1073741824, got 5"
            ),
            format!("{file}:5:1: llm.max_concurrency: must be between 1 and 1024, got 0"),
        ]
    );
}

#[test]
fn a_missing_file_is_a_configuration_error() {
    let sandbox = Sandbox::new();
    let problems = config_problems(&sandbox.run(&["config", "check", "absent.toml"]));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("absent.toml: cannot read: "),
        "{problems:?}"
    );
}

#[test]
fn global_config_flag_works_before_and_after_the_subcommand() {
    let sandbox = Sandbox::new();
    let file = sandbox.file("c.toml", "[llm]\nmax_retries = 7\n");
    for args in [
        ["--config", path_str(&file), "config", "check"],
        ["config", "--config", path_str(&file), "check"],
        ["config", "check", "--config", path_str(&file)],
    ] {
        let output = sandbox.run(&args);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {}",
            stderr(&output)
        );
        let effective: toml::Table = stdout(&output).parse().unwrap();
        assert_eq!(
            effective["llm"]["max_retries"].as_integer(),
            Some(7),
            "{args:?}"
        );
    }
}

#[test]
fn file_argument_overrides_the_config_flag() {
    let sandbox = Sandbox::new();
    let flagged = sandbox.file("flagged.toml", "[llm]\nmax_retries = 7\n");
    let argument = sandbox.file("argument.toml", "[llm]\nmax_retries = 8\n");
    let output = sandbox.run(&[
        "--config",
        path_str(&flagged),
        "config",
        "check",
        path_str(&argument),
    ]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let effective: toml::Table = stdout(&output).parse().unwrap();
    assert_eq!(effective["llm"]["max_retries"].as_integer(), Some(8));
}

#[test]
fn usage_errors_exit_with_status_2() {
    let sandbox = Sandbox::new();
    let output = sandbox.run(&["config", "frobnicate"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("frobnicate"),
        "{}",
        stderr(&output)
    );
}
