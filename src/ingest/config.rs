//! `[traces]`: where traces arrive and the bounds that keep bad ones cheap.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::section::{Checker, Section};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Trace ingestion settings. Defaults are documented in `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracesConfig {
    /// Directory watched for trace files; relative to the config file's
    /// directory.
    pub dir: PathBuf,
    /// A trace whose root span never arrives is finalized after this many
    /// seconds without a new span.
    pub quiet_period_secs: u64,
    /// Longest accepted line of a JSONL trace file.
    pub max_line_bytes: u64,
    /// Largest accepted whole-file JSON document (one request per file).
    pub max_document_bytes: u64,
    /// Spans kept per trace; further spans of it are rejected as `too_large`.
    pub max_spans_per_trace: usize,
    /// Most lines committed per store transaction during import.
    pub batch_lines: usize,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            dir: PathBuf::from("traces"),
            quiet_period_secs: 30,
            max_line_bytes: 16 * MIB,
            max_document_bytes: 64 * MIB,
            max_spans_per_trace: 10_000,
            batch_lines: 5_000,
        }
    }
}

impl TracesConfig {
    pub(crate) fn validate(&self, check: &mut Checker) {
        check.not_empty_path("dir", &self.dir);
        check.at_least("quiet_period_secs", self.quiet_period_secs, 1);
        check.in_range("max_line_bytes", self.max_line_bytes, KIB..=GIB);
        check.in_range("max_document_bytes", self.max_document_bytes, KIB..=4 * GIB);
        check.in_range(
            "max_spans_per_trace",
            self.max_spans_per_trace,
            1..=10_000_000,
        );
        check.in_range("batch_lines", self.batch_lines, 1..=1_000_000);
    }

    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        self.dir = base.join(&self.dir);
    }
}

impl Section for TracesConfig {
    /// The watched folder is set up when the daemon starts.
    const RESTART_ONLY: &'static [&'static str] = &["dir"];

    fn check(&self, check: &mut Checker) {
        self.validate(check);
    }

    fn resolve_paths(&mut self, base: &Path) {
        TracesConfig::resolve_paths(self, base);
    }
}
