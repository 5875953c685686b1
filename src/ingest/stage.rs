//! The CPU-bound half of an ingestion batch, which needs no store: group the
//! records of a batch's lines, assemble the traces whose root span arrived,
//! and serialize episodes. It runs on the reader thread while the store
//! thread commits the previous batch (see `file.rs`), so parsing and SQLite
//! work overlap on two cores.
//!
//! Assembly here is optimistic: it assumes the store holds nothing of the
//! trace yet, which is the common case (exporters write a trace's spans close
//! together). The store side checks, and assembles again from all spans when
//! the store did hold some (see `batch.rs`).

use std::collections::BTreeMap;

use super::batch::{Origin, content_key};
use crate::store::{BodyEncoder, RejectRow, StoreError};
use crate::trace::{self, Diagnostic, Episode, Reason, Record, Span};

/// A batch's records, ready for the store.
#[derive(Default)]
pub struct Staging {
    /// Episodes and rejects, in input order.
    pub items: Vec<Item>,
    /// Spans by trace, for traces with spans in this batch.
    pub traces: BTreeMap<String, StagedTrace>,
    max_spans_per_trace: usize,
    encoder: BodyEncoder,
}

/// A record ready to be written.
pub enum Item {
    /// A complete episode and its serialized body.
    Episode(Box<Episode>, Vec<u8>),
    Reject(RejectRow, Diagnostic),
}

/// The spans of one trace read in this batch.
#[derive(Default)]
pub struct StagedTrace {
    pub spans: Vec<Span>,
    pub has_root: bool,
    /// Spans read again within this batch.
    pub duplicates: u64,
    /// The trace assembled from `spans` alone, when its root is among them.
    pub assembled: Option<Result<(Episode, Vec<u8>), Diagnostic>>,
}

impl Staging {
    /// An empty batch.
    pub fn new(max_spans_per_trace: usize) -> Staging {
        Staging {
            max_spans_per_trace,
            ..Staging::default()
        }
    }

    /// Adds what one line or document yielded.
    pub fn add(
        &mut self,
        parsed: Result<Record, Diagnostic>,
        origin: &Origin<'_>,
    ) -> Result<(), StoreError> {
        match parsed {
            Ok(Record::Episode(episode)) => {
                let body = self.encoder.encode(&episode)?;
                self.items.push(Item::Episode(episode, body));
            }
            Ok(Record::Spans(spans)) => {
                for span in spans {
                    self.add_span(span);
                }
            }
            Err(diagnostic) => {
                let row = RejectRow {
                    file: origin.file.to_string(),
                    line: diagnostic.line,
                    offset: Some(origin.offset),
                    reason: diagnostic.reason.as_str(),
                    detail: diagnostic.detail.clone(),
                    key: origin.key.to_string(),
                };
                self.items.push(Item::Reject(row, diagnostic));
            }
        }
        Ok(())
    }

    /// Records a reject found by the reader itself (not by a parser).
    pub fn reject_input(&mut self, reason: Reason, detail: String, origin: &Origin<'_>) {
        let diagnostic = Diagnostic::new(origin.file, origin.line, reason, detail);
        let row = RejectRow {
            file: origin.file.to_string(),
            line: origin.line,
            offset: Some(origin.offset),
            reason: reason.as_str(),
            detail: diagnostic.detail.clone(),
            key: origin.key.to_string(),
        };
        self.items.push(Item::Reject(row, diagnostic));
    }

    fn add_span(&mut self, span: Span) {
        let staged = self.traces.entry(span.trace_id.clone()).or_default();
        // Traces hold a handful of spans: a scan beats hashing here.
        if staged.spans.iter().any(|s| s.span_id == span.span_id) {
            staged.duplicates += 1;
            return;
        }
        if staged.spans.len() >= self.max_spans_per_trace {
            let diagnostic = too_many_spans(&span, self.max_spans_per_trace as u64);
            self.items.push(Item::Reject(
                span_reject_row(&span, &diagnostic),
                diagnostic,
            ));
            return;
        }
        staged.has_root |= span.is_root();
        staged.spans.push(span);
    }

    /// Assembles and serializes every trace whose root arrived in this batch.
    pub fn seal(mut self) -> Result<Staging, StoreError> {
        for staged in self.traces.values_mut().filter(|t| t.has_root) {
            staged.assembled = Some(match trace::assemble(&staged.spans) {
                Ok(episode) => {
                    let body = self.encoder.encode(&episode)?;
                    Ok((episode, body))
                }
                Err(diagnostic) => Err(diagnostic),
            });
        }
        Ok(self)
    }
}

/// The reject for a span over `traces.max_spans_per_trace`.
pub fn too_many_spans(span: &Span, max_spans_per_trace: u64) -> Diagnostic {
    let detail = format!(
        "trace {} already holds traces.max_spans_per_trace = {} spans; span {} dropped",
        span.trace_id, max_spans_per_trace, span.span_id
    );
    Diagnostic::new(
        &span.source.file,
        span.source.line,
        Reason::TooLarge,
        detail,
    )
}

/// The stored form of a reject about one span.
pub fn span_reject_row(span: &Span, diagnostic: &Diagnostic) -> RejectRow {
    RejectRow {
        file: span.source.file.clone(),
        line: span.source.line,
        offset: None,
        reason: diagnostic.reason.as_str(),
        detail: diagnostic.detail.clone(),
        key: content_key(&[
            b"span:",
            span.trace_id.as_bytes(),
            b":",
            span.span_id.as_bytes(),
        ]),
    }
}
