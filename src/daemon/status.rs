//! What the daemon is doing, shared with the HTTP API: ingestion counters,
//! rounds, budget spent, configuration problems.
//!
//! One `Mutex<Status>` that the daemon's parts update and the API copies
//! out; it is never held across an `.await`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::apo::ReplyReport;
use crate::ingest::IngestReport;

/// A snapshot of the daemon's state, as `/v1/status` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// When the daemon started (Unix milliseconds).
    pub started_at_unix_ms: i64,
    /// The configuration file in use, or `embedded defaults`.
    pub config_source: String,
    /// Problems of the last configuration edit that was refused (the
    /// running configuration stayed), each `file:line:col: key: message`.
    pub config_errors: Vec<String>,
    /// Keys changed in the file that only take effect after a restart.
    pub restart_required: Vec<String>,
    /// Configuration reloads applied, and refused.
    pub config_reloads: u64,
    pub config_reload_errors: u64,
    pub ingest: IngestStatus,
    /// Rounds running now, by kind (`apo`, `rl`).
    pub running: BTreeMap<String, RunningRound>,
    /// Rounds ended since start, by kind and outcome.
    pub rounds_succeeded: BTreeMap<String, u64>,
    pub rounds_failed: BTreeMap<String, u64>,
    /// Rounds waiting for a retry after failing, by kind: when (Unix ms).
    pub retry_at_unix_ms: BTreeMap<String, i64>,
    /// LLM calls and tokens spent by APO rounds since start.
    pub llm_calls: u64,
    pub llm_tokens: u64,
    /// Version of the promoted policy, once one exists.
    pub policy_version: Option<u64>,
    /// What the models of the last successful APO round sent back: output
    /// limits, replies cut at them, unusable replies by role and model.
    pub apo_replies: Option<ReplyReport>,
    /// The output-limit field `llm.max_tokens_field = "auto"` settled on
    /// after an endpoint refused the other one, by endpoint.
    pub llm_max_tokens_fields: BTreeMap<String, String>,
    /// Why APO does not run, when it does not (e.g. no reachable endpoint).
    pub apo_disabled: Option<String>,
    /// Plugins loaded from `[plugins] dir`, as `name (world, WIT version)`.
    pub plugins: Vec<String>,
    /// Why plugins failed to load at the last reload (a previous version,
    /// if any, stays loaded).
    pub plugin_errors: Vec<String>,
}

/// Ingestion counters since start.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestStatus {
    pub passes: u64,
    pub episodes_new: u64,
    pub episodes_duplicate: u64,
    pub lines: u64,
    pub bytes: u64,
    pub rejects: BTreeMap<String, u64>,
    pub pending_spans: u64,
    pub pending_traces: u64,
    /// Paths skipped or unreadable in the last pass, with why.
    pub path_problems: Vec<String>,
    pub last_pass_at_unix_ms: Option<i64>,
    /// The last pass's failure (a store error), if it failed.
    pub last_error: Option<String>,
}

/// A round in progress.
#[derive(Debug, Clone, Serialize)]
pub struct RunningRound {
    pub id: i64,
    pub subject: String,
    pub started_at_unix_ms: i64,
    /// The engine's last progress message.
    pub progress: String,
}

impl IngestStatus {
    /// Adds one pass's report.
    pub fn add(&mut self, report: &IngestReport, at_unix_ms: i64) {
        self.passes += 1;
        self.episodes_new += report.episodes_new;
        self.episodes_duplicate += report.episodes_duplicate;
        self.lines += report.lines;
        self.bytes += report.bytes;
        for (reason, n) in &report.rejects {
            *self.rejects.entry(reason.as_str().to_string()).or_default() += n;
        }
        self.pending_spans = report.pending_spans;
        self.pending_traces = report.pending_traces;
        self.path_problems = report
            .file_errors
            .iter()
            .map(|e| format!("cannot read {}: {}", e.path.display(), e.error))
            .chain(
                report
                    .skipped
                    .iter()
                    .map(|e| format!("skipped {}: {}", e.path.display(), e.error)),
            )
            .collect();
        self.last_pass_at_unix_ms = Some(at_unix_ms);
        self.last_error = None;
    }
}

impl Status {
    /// The Prometheus text exposition of the counters.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, value) in samples {
                out.push_str(&format!("{name}{labels} {value}\n"));
            }
        };
        let one = |value: u64| vec![(String::new(), value as f64)];
        let by = |label: &str, map: &BTreeMap<String, u64>| {
            map.iter()
                .map(|(key, n)| (format!("{{{label}=\"{key}\"}}"), *n as f64))
                .collect()
        };
        let ingest = &self.ingest;
        metric(
            "whetstone_ingest_passes_total",
            "counter",
            "Ingestion passes over the trace folder.",
            one(ingest.passes),
        );
        metric(
            "whetstone_ingest_episodes_total",
            "counter",
            "Episodes stored for the first time.",
            one(ingest.episodes_new),
        );
        metric(
            "whetstone_ingest_bytes_total",
            "counter",
            "Trace bytes read and committed.",
            one(ingest.bytes),
        );
        metric(
            "whetstone_ingest_rejects_total",
            "counter",
            "Rejected lines, documents and traces, by reason.",
            by("reason", &ingest.rejects),
        );
        metric(
            "whetstone_ingest_pending_spans",
            "gauge",
            "Spans waiting for their trace to complete.",
            one(ingest.pending_spans),
        );
        let mut rounds: Vec<(String, f64)> = Vec::new();
        for (outcome, map) in [
            ("succeeded", &self.rounds_succeeded),
            ("failed", &self.rounds_failed),
        ] {
            for (kind, n) in map {
                rounds.push((
                    format!("{{kind=\"{kind}\",outcome=\"{outcome}\"}}"),
                    *n as f64,
                ));
            }
        }
        metric(
            "whetstone_rounds_total",
            "counter",
            "Rounds ended since start, by kind and outcome.",
            rounds,
        );
        metric(
            "whetstone_rounds_running",
            "gauge",
            "Rounds running now.",
            one(self.running.len() as u64),
        );
        metric(
            "whetstone_llm_calls_total",
            "counter",
            "LLM calls made by APO rounds since start.",
            one(self.llm_calls),
        );
        metric(
            "whetstone_llm_tokens_total",
            "counter",
            "LLM tokens (in and out) spent by APO rounds since start.",
            one(self.llm_tokens),
        );
        metric(
            "whetstone_config_reload_errors_total",
            "counter",
            "Configuration edits refused (the running configuration stayed).",
            one(self.config_reload_errors),
        );
        out
    }
}
