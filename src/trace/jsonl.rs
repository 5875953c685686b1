//! Whetstone JSONL reader: one episode per line, for agents without
//! OpenTelemetry. The schema (see `docs/TRACE_FORMAT.md`) is the normalized
//! [`Episode`] JSON with every field but `steps` optional, `id` accepted for
//! `trace_id`, and an `error` that may be a message instead of a bool.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use sha2::{Digest, Sha256};

use super::diagnostic::{Diagnostic, Reason, decode_json};
use super::episode::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEpisode {
    #[serde(default, alias = "id")]
    trace_id: Option<String>,
    /// Marker (`"whetstone": 1`) and schema version; only 1 exists.
    #[serde(default)]
    whetstone: Option<u32>,
    /// Accepted so `traces parse` output reads back; the real format and
    /// source always come from the reader.
    #[serde(default, rename = "format")]
    _format: IgnoredAny,
    #[serde(default, rename = "source")]
    _source: IgnoredAny,
    #[serde(default)]
    prompt: PromptRef,
    #[serde(default)]
    input: Option<String>,
    steps: Vec<RawStep>,
    #[serde(default)]
    rewards: BTreeMap<String, f64>,
    #[serde(default)]
    status: Option<Status>,
    #[serde(default)]
    start_time_unix_nano: Option<u64>,
    #[serde(default)]
    duration_ms: Option<f64>,
    #[serde(default)]
    usage: Option<TokenUsage>,
    #[serde(default)]
    policy_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    kind: StepKind,
    name: String,
    #[serde(default)]
    error: RawError,
    #[serde(default)]
    error_message: Option<String>,
    #[serde(default)]
    start_time_unix_nano: Option<u64>,
    #[serde(default)]
    duration_ms: Option<f64>,
    #[serde(default)]
    rewards: BTreeMap<String, f64>,
    #[serde(default)]
    llm: Option<LlmCall>,
    #[serde(default)]
    tool: Option<ToolCall>,
}

/// `error` is a bool, or the error message itself (which implies `true`).
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum RawError {
    #[default]
    Absent,
    Flag(bool),
    Message(String),
}

/// Parses one JSONL line into an episode. An episode without an id gets one
/// derived from the line's bytes, so re-reading the same line dedups.
pub(super) fn parse_episode(line: &str, source: &Source) -> Result<Episode, Diagnostic> {
    let fail = |reason, detail: String| Diagnostic::new(&source.file, source.line, reason, detail);
    let raw: RawEpisode = decode_json(line, source, "episode")?;
    if let Some(version) = raw.whetstone.filter(|&v| v != 1) {
        return Err(fail(
            Reason::InvalidField,
            format!("episode field `whetstone`: unsupported schema version {version}, expected 1"),
        ));
    }
    for (step_idx, step) in raw.steps.iter().enumerate() {
        let policies = [
            (
                "tool",
                step.tool.as_ref().and_then(|tool| tool.policy.as_ref()),
            ),
            ("llm", step.llm.as_ref().and_then(|llm| llm.policy.as_ref())),
        ];
        for (part, policy) in policies {
            if let Some(policy) = policy.filter(|p| !(p.probability > 0.0 && p.probability <= 1.0))
            {
                return Err(fail(
                    Reason::InvalidField,
                    format!(
                        "episode field `steps[{step_idx}].{part}.policy.probability`: must be in (0, 1], got {}",
                        policy.probability
                    ),
                ));
            }
        }
    }
    let trace_id = match raw.trace_id {
        Some(id) if !id.trim().is_empty() => id,
        Some(_) => {
            return Err(fail(
                Reason::InvalidField,
                "episode field `id`: empty".into(),
            ));
        }
        None => format!("sha256:{}", &hex::encode(Sha256::digest(line))[..32]),
    };
    let steps: Vec<Step> = raw.steps.into_iter().map(convert_step).collect();
    let usage = raw.usage.unwrap_or_else(|| {
        let mut total = TokenUsage::default();
        for llm in steps.iter().filter_map(|s| s.llm.as_ref()) {
            total.add(llm.usage);
        }
        total
    });
    let input = raw.input.or_else(|| first_user_message(&steps));
    let status = raw.status.unwrap_or(Status::Ok);
    Ok(Episode {
        trace_id,
        format: TraceFormat::WhetstoneJsonl,
        prompt: raw.prompt,
        input,
        steps,
        rewards: raw.rewards,
        status,
        start_time_unix_nano: raw.start_time_unix_nano,
        duration_ms: raw.duration_ms,
        usage,
        policy_version: raw.policy_version,
        source: source.clone(),
    })
}

fn convert_step(raw: RawStep) -> Step {
    let (error, error_message) = match raw.error {
        RawError::Absent => (raw.error_message.is_some(), raw.error_message),
        RawError::Flag(flag) => (flag, raw.error_message),
        RawError::Message(message) => (true, Some(message)),
    };
    Step {
        kind: raw.kind,
        name: raw.name,
        error,
        error_message,
        start_time_unix_nano: raw.start_time_unix_nano,
        duration_ms: raw.duration_ms,
        rewards: raw.rewards,
        llm: raw.llm,
        tool: raw.tool,
    }
}

fn first_user_message(steps: &[Step]) -> Option<String> {
    steps
        .iter()
        .filter_map(|s| s.llm.as_ref())
        .flat_map(|llm| &llm.input_messages)
        .find(|m| m.role == "user")
        .map(|m| m.content.clone())
}
