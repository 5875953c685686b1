//! Reading agent traces: format detection, one reader per format, and
//! assembly of spans into the normalized [`Episode`] model.
//!
//! Readers never fail on bad input as a whole: each line (or document) either
//! yields a [`Record`] or a [`Diagnostic`] naming the file, line and reason.
//! Formats are detected per line, so a file that mixes formats, or has a
//! garbage line between good ones, loses only the bad lines.

mod diagnostic;
mod episode;
mod span;

pub use diagnostic::{Diagnostic, Reason};
pub use episode::*;
pub use span::{Span, SpanEvent};

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
pub fn parse_line(line: &[u8], source: &Source) -> Result<Record, Diagnostic> {
    let _ = (line, source);
    todo!()
}

/// Whether a file holds one multi-line JSON document (e.g. a pretty-printed
/// protobuf `MessageToJson` request) rather than one record per line.
///
/// `head` is the start of the file; it is a document when its first non-blank
/// line is not a complete JSON value on its own but opens a JSON object.
pub fn is_document(head: &[u8]) -> bool {
    let _ = head;
    todo!()
}

/// Parses a whole file as one JSON document (an OTLP export request).
pub fn parse_document(bytes: &[u8], file: &str) -> Result<Record, Diagnostic> {
    let _ = (bytes, file);
    todo!()
}

/// Builds one episode from all spans of one trace (any order).
///
/// The root span (no parent) gives the episode's status, timing and, where
/// present, its prompt identity and rewards; LLM and tool spans become steps
/// ordered by start time. Fails when no span is recognizable as an LLM call,
/// tool execution or agent run.
pub fn assemble(spans: Vec<Span>) -> Result<Episode, Diagnostic> {
    let _ = spans;
    todo!()
}
