//! A span normalized from OTLP/JSON (either encoding) or an agent-lightning dump.
//!
//! Readers turn raw span records into [`Span`]s; [`super::assemble`] turns all
//! spans of one trace into an [`super::Episode`]. Spans are serializable
//! because the store keeps the spans of traces whose root has not arrived yet.

use serde::{Deserialize, Serialize};

use super::episode::{Source, TraceFormat};

/// One span, with ids as lowercase hex and attributes flattened to JSON values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    /// The format (and for OTLP, the encoding) the span was read from.
    pub format: TraceFormat,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    pub name: String,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    /// True when the span's status code is ERROR.
    pub error: bool,
    pub status_message: Option<String>,
    /// Attributes; OTLP `AnyValue`s become plain JSON (int64 as numbers,
    /// arrays as arrays, kvlists as objects).
    pub attributes: serde_json::Map<String, serde_json::Value>,
    pub events: Vec<SpanEvent>,
    /// Where the span was read from.
    pub source: Source,
}

/// A span event (e.g. `gen_ai.content.prompt`, `exception`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanEvent {
    pub name: String,
    pub time_unix_nano: u64,
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

impl Span {
    /// A string attribute, if present and a string.
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(|v| v.as_str())
    }

    /// Whether this span has no parent.
    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_none()
    }
}
