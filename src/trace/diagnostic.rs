//! Problems found in trace input, reported with file, line and a stable reason.

use std::fmt;

use serde::de::DeserializeOwned;

use super::episode::Source;

/// Why a line, document or trace was rejected. The `as_str` codes are stable:
/// they appear in `traces stats`, the rejects table and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not valid JSON (includes truncated JSON).
    InvalidJson,
    /// Not UTF-8 text (binary garbage).
    NotUtf8,
    /// Valid JSON, but no known trace format matches its keys.
    UnknownFormat,
    /// A known format, but a field has the wrong type or value.
    InvalidField,
    /// A line longer than `traces.max_line_bytes`.
    LineTooLong,
    /// A document or trace larger than the configured bounds.
    TooLarge,
    /// A multi-line JSON document that never became complete.
    IncompleteDocument,
    /// The spans of a trace hold no LLM call, tool execution or agent run.
    NoEpisode,
    /// A span arrived for a trace that was already finalized.
    LateSpan,
}

impl Reason {
    /// The stable code of this reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidJson => "invalid_json",
            Reason::NotUtf8 => "not_utf8",
            Reason::UnknownFormat => "unknown_format",
            Reason::InvalidField => "invalid_field",
            Reason::LineTooLong => "line_too_long",
            Reason::TooLarge => "too_large",
            Reason::IncompleteDocument => "incomplete_document",
            Reason::NoEpisode => "no_episode",
            Reason::LateSpan => "late_span",
        }
    }
}

/// A rejected piece of input: where it was and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based line number (the first line of the record).
    pub line: u64,
    pub reason: Reason,
    /// Human-readable detail, bounded to [`Diagnostic::MAX_DETAIL`] bytes.
    pub detail: String,
}

impl Diagnostic {
    /// Longest detail kept, so a hostile input cannot flood logs or the store.
    pub const MAX_DETAIL: usize = 240;

    /// Creates a diagnostic, truncating `detail` on a char boundary.
    pub fn new(file: &str, line: u64, reason: Reason, detail: impl Into<String>) -> Diagnostic {
        let mut detail = detail.into();
        if detail.len() > Self::MAX_DETAIL {
            let mut cut = Self::MAX_DETAIL;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
            detail.push('…');
        }
        Diagnostic {
            file: file.to_string(),
            line,
            reason,
            detail,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file,
            self.line,
            self.reason.as_str(),
            self.detail
        )
    }
}

/// Deserializes one record, turning a failure into a diagnostic that names
/// the field path (`steps[2].kind`) for wrong types and says `invalid_json`
/// for syntax errors such as truncation.
pub(super) fn decode_json<T: DeserializeOwned>(
    text: &str,
    source: &Source,
    what: &str,
) -> Result<T, Diagnostic> {
    // The fast path tracks no field path; only a failure is parsed again,
    // with path tracking, to say which field was wrong.
    if let Ok(value) = serde_json::from_str(text) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let reason = if inner.is_data() {
            Reason::InvalidField
        } else {
            Reason::InvalidJson
        };
        Diagnostic::new(
            &source.file,
            source.line,
            reason,
            format!("{what} field `{path}`: {inner}"),
        )
    })
}

/// The input as text; input that is not UTF-8 is rejected, naming the
/// first bad byte.
pub(super) fn check_utf8<'a>(bytes: &'a [u8], source: &Source) -> Result<&'a str, Diagnostic> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(err) => Err(Diagnostic::new(
            &source.file,
            source.line,
            Reason::NotUtf8,
            format!(
                "not UTF-8 text: invalid byte at offset {}",
                err.valid_up_to()
            ),
        )),
    }
}
