//! Reading agent traces: format detection, one reader per format, and
//! assembly of spans into the normalized [`Episode`] model.
//!
//! Readers never fail on bad input as a whole: each line (or document) either
//! yields a [`Record`] or a [`Diagnostic`] naming the file, line and reason.
//! Formats are detected per line, so a file that mixes formats, or has a
//! garbage line between good ones, loses only the bad lines.

mod agentlightning;
mod assemble;
mod diagnostic;
mod episode;
mod genai_fast;
mod jsonl;
mod otlp;
mod span;

pub use diagnostic::{Diagnostic, Reason};
pub use episode::*;
pub use span::{Span, SpanEvent};

use std::collections::BTreeMap;

use serde::de::IgnoredAny;

/// What one line (or one whole-file document) of a trace file holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A complete episode (Whetstone JSONL).
    Episode(Box<Episode>),
    /// Spans, possibly of several traces, to be grouped by trace id and
    /// assembled with [`assemble`] once each trace is complete.
    Spans(Vec<Span>),
}

/// Parses one line of a trace file, detecting its format from its keys.
///
/// `line` excludes the line terminator; `source` names the file and 1-based
/// line number for diagnostics and for the records produced.
///
/// ```
/// use whetstone::trace::{Reason, Record, Source, parse_line};
///
/// let source = Source { file: "agent.jsonl".into(), line: 3 };
/// let line = br#"{"id": "ep-1", "steps": [{"kind": "tool", "name": "search"}], "rewards": {"success": 1.0}}"#;
/// let Ok(Record::Episode(episode)) = parse_line(line, &source) else { panic!() };
/// assert_eq!(episode.steps[0].name, "search");
///
/// let err = parse_line(b"{\"steps\": [", &source).unwrap_err();
/// assert_eq!(err.reason, Reason::InvalidJson);
/// assert!(err.to_string().starts_with("agent.jsonl:3: invalid_json"));
/// ```
pub fn parse_line(line: &[u8], source: &Source) -> Result<Record, Diagnostic> {
    let fail = |reason, detail: String| Diagnostic::new(&source.file, source.line, reason, detail);
    let line = strip_bom(line);
    // UTF-8 is validated here once; the readers parse from `str`, which
    // spares serde_json validating every string again.
    let text = diagnostic::check_utf8(line, source)?;
    // The common case, an OTLP request, is recognized from its first key
    // without a second parse; otherwise sniff the top-level keys (values are
    // skipped, not built).
    if matches!(first_key(line), Some(b"resourceSpans" | b"resource_spans")) {
        return otlp::parse_request(text, source).map(Record::Spans);
    }
    let keys: BTreeMap<String, IgnoredAny> = match serde_json::from_str(text) {
        Ok(keys) => keys,
        Err(err) if err.is_data() => {
            return Err(fail(
                Reason::UnknownFormat,
                "expected a JSON object per line".into(),
            ));
        }
        Err(err) => return Err(fail(Reason::InvalidJson, err.to_string())),
    };
    let has = |key: &str| keys.contains_key(key);
    if has("resourceSpans") || has("resource_spans") {
        return otlp::parse_request(text, source).map(Record::Spans);
    }
    if has("whetstone") || has("steps") {
        return jsonl::parse_episode(text, source).map(|e| Record::Episode(Box::new(e)));
    }
    if has("span_id") && has("trace_id") {
        return agentlightning::parse_span(text, source).map(|s| Record::Spans(vec![s]));
    }
    let mut names: Vec<&str> = keys.keys().map(String::as_str).take(6).collect();
    names.sort_unstable();
    Err(fail(
        Reason::UnknownFormat,
        format!(
            "JSON object with keys [{}] is not OTLP (resourceSpans), a Whetstone episode (steps) or an agent-lightning span (span_id, trace_id)",
            names.join(", ")
        ),
    ))
}

/// `bytes` without a leading UTF-8 byte-order mark, which some Windows tools
/// write at the start of a file and JSON parsers refuse.
pub fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// The first key of a JSON object, when it is a plain (unescaped) string.
fn first_key(line: &[u8]) -> Option<&[u8]> {
    let rest = line
        .trim_ascii_start()
        .strip_prefix(b"{")?
        .trim_ascii_start()
        .strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    (rest[end] == b'"').then(|| &rest[..end])
}

/// Whether a file holds one multi-line JSON document (e.g. a pretty-printed
/// protobuf `MessageToJson` request) rather than one record per line.
///
/// `head` is the start of the file; it is a document when its first non-blank
/// line opens a JSON object but is not a complete JSON value on its own.
pub fn is_document(head: &[u8]) -> bool {
    let Some(first) = strip_bom(head)
        .split(|&b| b == b'\n')
        .find(|l| !l.trim_ascii().is_empty())
    else {
        return false;
    };
    let first = first.trim_ascii();
    first.starts_with(b"{") && serde_json::from_slice::<serde::de::IgnoredAny>(first).is_err() && {
        // A single long line that was cut by `head` is not a document.
        head.contains(&b'\n')
    }
}

/// Whether some line after the first is a complete, unindented JSON object:
/// then a file that [`is_document`] took for a document is JSON lines with a
/// broken first line (whose other lines are still to be read), not a document
/// (whose nested objects are indented, when on one line at all).
pub fn holds_json_lines(bytes: &[u8]) -> bool {
    bytes
        .split(|&b| b == b'\n')
        .skip(1)
        .any(|line| line.starts_with(b"{") && serde_json::from_slice::<IgnoredAny>(line).is_ok())
}

/// Parses a whole file as one JSON document (an OTLP export request).
pub fn parse_document(bytes: &[u8], file: &str) -> Result<Record, Diagnostic> {
    let line = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map_or(1, |pos| {
            1 + bytes[..pos].iter().filter(|&&b| b == b'\n').count() as u64
        });
    parse_line(
        bytes,
        &Source {
            file: file.to_string(),
            line,
        },
    )
}

/// The `whetstone.*` attribute names on `span` that no reader uses: most
/// likely misspelled, reported by `traces stats` as warnings.
pub fn unknown_whetstone_attributes(span: &Span) -> impl Iterator<Item = &str> {
    assemble::unknown_whetstone_attributes(span)
}

/// Builds one episode from all spans of one trace (any order).
///
/// The root span (no parent) gives the episode's status, timing and, where
/// present, its prompt identity and rewards; LLM and tool spans become steps
/// ordered by start time. Fails with [`Reason::NoEpisode`] when no span is
/// recognizable as an LLM call, tool execution, agent run or reward.
pub fn assemble(spans: &[Span]) -> Result<Episode, Diagnostic> {
    assemble::assemble(spans)
}
