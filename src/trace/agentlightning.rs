//! agent-lightning v0.x span dumps: one span JSON per line, as its `Span`
//! model serializes (`model_dump_json`): flat `attributes`, `status`
//! `{status_code, description}`, times as float seconds, ids as hex.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::diagnostic::{Diagnostic, decode_json};
use super::episode::{Source, TraceFormat};
use super::span::{Span, SpanEvent};

#[derive(Deserialize)]
struct RawSpan {
    trace_id: String,
    span_id: String,
    #[serde(default)]
    parent_id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    status: Option<RawStatus>,
    #[serde(default)]
    attributes: Map<String, Value>,
    #[serde(default)]
    events: Vec<RawEvent>,
    #[serde(default)]
    start_time: Option<f64>,
    #[serde(default)]
    end_time: Option<f64>,
}

#[derive(Deserialize)]
struct RawStatus {
    #[serde(default)]
    status_code: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(default)]
    name: String,
    #[serde(default)]
    attributes: Map<String, Value>,
    #[serde(default)]
    timestamp: Option<f64>,
}

fn seconds_to_nanos(seconds: Option<f64>) -> u64 {
    seconds
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(0, |s| (s * 1e9) as u64)
}

/// Parses one span line.
pub(super) fn parse_span(line: &str, source: &Source) -> Result<Span, Diagnostic> {
    let raw: RawSpan = decode_json(line, source, "agent-lightning span")?;
    let normalize = |id: &str| id.trim_start_matches("0x").to_ascii_lowercase();
    let (error, status_message) = match raw.status {
        Some(status) => (
            status.status_code.as_deref() == Some("ERROR"),
            status.description.filter(|d| !d.is_empty()),
        ),
        None => (false, None),
    };
    let start = seconds_to_nanos(raw.start_time);
    Ok(Span {
        trace_id: normalize(&raw.trace_id),
        span_id: normalize(&raw.span_id),
        format: TraceFormat::AgentLightning,
        parent_span_id: raw
            .parent_id
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(normalize),
        name: raw.name,
        start_time_unix_nano: start,
        end_time_unix_nano: seconds_to_nanos(raw.end_time).max(start),
        error,
        status_message,
        attributes: raw.attributes,
        events: raw
            .events
            .into_iter()
            .map(|e| SpanEvent {
                name: e.name,
                time_unix_nano: seconds_to_nanos(e.timestamp),
                attributes: e.attributes,
            })
            .collect(),
        source: source.clone(),
    })
}
