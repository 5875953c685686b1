//! Reading agent traces: format detection, one reader per format, and
//! assembly of spans into the normalized [`Episode`] model.
//!
//! Readers never fail on bad input as a whole: each line (or document) either
//! yields a [`Record`] or a [`Diagnostic`] naming the file, line and reason.

mod episode;
mod span;

pub use episode::*;
pub use span::{Span, SpanEvent};
