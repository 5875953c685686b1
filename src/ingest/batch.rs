//! One ingestion batch: records go straight into an open store transaction,
//! and the batch commits together with the cursor that says it was read.
//!
//! Writing records as they are parsed (instead of collecting them first)
//! keeps memory at one line, whatever the batch size.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use super::IngestReport;
use crate::store::{
    FileCursor, IngestTx, RejectRow, SpanAdmission, Store, StoreError, now_unix_ms,
};
use crate::trace::{self, Diagnostic, Reason, Record, Span};

/// Where a record came from, for rejects.
pub struct Origin<'a> {
    pub file: &'a str,
    pub line: u64,
    /// Byte offset of the line (or document) start.
    pub offset: u64,
    /// Identifies the content, so re-reading it does not duplicate rejects.
    pub key: &'a str,
}

/// An open batch.
pub struct Batch<'s> {
    tx: IngestTx<'s>,
    /// Traces that received a new span in this batch; assembled before commit
    /// when their root is present.
    touched: BTreeSet<String>,
    now_unix_ms: i64,
    max_spans_per_trace: u64,
}

impl<'s> Batch<'s> {
    pub fn begin(store: &'s mut Store, max_spans_per_trace: u64) -> Result<Batch<'s>, StoreError> {
        Ok(Batch {
            tx: store.begin_ingest()?,
            touched: BTreeSet::new(),
            now_unix_ms: now_unix_ms(),
            max_spans_per_trace,
        })
    }

    /// Stores what one line or document yielded.
    pub fn add(
        &mut self,
        parsed: Result<Record, Diagnostic>,
        origin: &Origin<'_>,
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        match parsed {
            Ok(Record::Episode(episode)) => self.insert_episode(&episode, report),
            Ok(Record::Spans(spans)) => {
                for span in spans {
                    self.admit_span(span, origin, report)?;
                }
                Ok(())
            }
            Err(diagnostic) => self.reject(
                RejectRow {
                    file: origin.file.to_string(),
                    line: diagnostic.line,
                    offset: Some(origin.offset),
                    reason: diagnostic.reason.as_str(),
                    detail: diagnostic.detail.clone(),
                    key: origin.key.to_string(),
                },
                diagnostic,
                report,
            ),
        }
    }

    /// Records a reject found by the reader itself (not by a parser).
    pub fn reject_input(
        &mut self,
        reason: Reason,
        detail: String,
        origin: &Origin<'_>,
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        let diagnostic = Diagnostic::new(origin.file, origin.line, reason, detail);
        let row = RejectRow {
            file: origin.file.to_string(),
            line: origin.line,
            offset: Some(origin.offset),
            reason: reason.as_str(),
            detail: diagnostic.detail.clone(),
            key: origin.key.to_string(),
        };
        self.reject(row, diagnostic, report)
    }

    fn insert_episode(
        &mut self,
        episode: &trace::Episode,
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        if self.tx.insert_episode(episode, self.now_unix_ms)? {
            report.episodes_new += 1;
        } else {
            report.episodes_duplicate += 1;
        }
        Ok(())
    }

    fn admit_span(
        &mut self,
        span: Span,
        origin: &Origin<'_>,
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        let admission = self
            .tx
            .admit_span(&span, self.max_spans_per_trace, self.now_unix_ms)?;
        let (reason, detail) = match admission {
            SpanAdmission::Pending => {
                report.spans_new += 1;
                self.touched.insert(span.trace_id);
                return Ok(());
            }
            SpanAdmission::AlreadyPending | SpanAdmission::AlreadyConsumed => {
                report.spans_duplicate += 1;
                return Ok(());
            }
            SpanAdmission::Late => (
                Reason::LateSpan,
                format!(
                    "span {} of trace {} arrived after the trace was finalized",
                    span.span_id, span.trace_id
                ),
            ),
            SpanAdmission::TraceFull => (
                Reason::TooLarge,
                format!(
                    "trace {} already holds traces.max_spans_per_trace = {} spans; span {} dropped",
                    span.trace_id, self.max_spans_per_trace, span.span_id
                ),
            ),
        };
        let diagnostic = Diagnostic::new(origin.file, span.source.line, reason, detail);
        let row = RejectRow {
            file: origin.file.to_string(),
            line: span.source.line,
            offset: Some(origin.offset),
            reason: reason.as_str(),
            detail: diagnostic.detail.clone(),
            key: content_key(&[
                b"span:",
                span.trace_id.as_bytes(),
                b":",
                span.span_id.as_bytes(),
            ]),
        };
        self.reject(row, diagnostic, report)
    }

    fn reject(
        &mut self,
        row: RejectRow,
        diagnostic: Diagnostic,
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        if self.tx.insert_reject(&row, self.now_unix_ms)? {
            report.record_reject(diagnostic);
        }
        Ok(())
    }

    /// Assembles a pending trace into an episode (or a reject), removing its
    /// pending spans.
    pub fn finalize_trace(
        &mut self,
        trace_id: &str,
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        let spans = self.tx.take_pending(trace_id)?;
        if spans.is_empty() {
            return Ok(());
        }
        match trace::assemble(spans) {
            Ok(episode) => self.insert_episode(&episode, report),
            Err(diagnostic) => {
                let row = RejectRow {
                    file: diagnostic.file.clone(),
                    line: diagnostic.line,
                    offset: None,
                    reason: diagnostic.reason.as_str(),
                    detail: diagnostic.detail.clone(),
                    key: content_key(&[b"trace:", trace_id.as_bytes()]),
                };
                self.reject(row, diagnostic, report)
            }
        }
    }

    /// Pending traces quiet since before `arrived_before_unix_ms` (all when
    /// `None`), at most `limit`.
    pub fn quiet_traces(
        &self,
        arrived_before_unix_ms: Option<i64>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.tx.quiet_traces(arrived_before_unix_ms, limit)
    }

    /// Assembles every touched trace whose root arrived, writes the cursor
    /// (if any) and commits.
    pub fn commit(
        mut self,
        cursor: Option<&FileCursor>,
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        for trace_id in std::mem::take(&mut self.touched) {
            if self.tx.has_pending_root(&trace_id)? {
                self.finalize_trace(&trace_id, report)?;
            }
        }
        if let Some(cursor) = cursor {
            self.tx.set_cursor(cursor)?;
        }
        self.tx.commit()
    }
}

/// A short hex hash identifying some content (the start of a rejected line,
/// a span id, a document), for reject deduplication and fingerprints.
pub fn content_key(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hex::encode(&hasher.finalize()[..16])
}
