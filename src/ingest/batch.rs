//! One ingestion batch: records go into an open store transaction, and the
//! batch commits together with the cursor that says it was read.
//!
//! Episodes and rejects are written as they are parsed. Spans are staged in
//! memory by trace until the batch commits: a trace whose root arrived is
//! then assembled directly, and only the spans of unfinished traces are
//! written to `pending_spans`. Exporters write a trace's spans close
//! together, so most traces never touch that table. A batch is bounded in
//! lines and bytes, so staged spans are bounded too.

use std::collections::{BTreeMap, HashSet};

use sha2::{Digest, Sha256};

use super::IngestReport;
use crate::store::{FileCursor, IngestTx, RejectRow, Store, StoreError, TraceState, now_unix_ms};
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
    /// Spans read in this batch, by trace, with what the store held of each
    /// trace when its first span of the batch arrived.
    staged: BTreeMap<String, StagedTrace>,
    now_unix_ms: i64,
    max_spans_per_trace: u64,
}

/// The spans of one trace read in the current batch.
struct StagedTrace {
    stored: TraceState,
    spans: Vec<Span>,
    span_ids: HashSet<String>,
    has_root: bool,
}

impl<'s> Batch<'s> {
    pub fn begin(store: &'s mut Store, max_spans_per_trace: u64) -> Result<Batch<'s>, StoreError> {
        Ok(Batch {
            tx: store.begin_ingest()?,
            staged: BTreeMap::new(),
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
            Ok(Record::Episode(episode)) => self.insert_episode(&episode, &[], report),
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
        span_ids: &[String],
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        if self
            .tx
            .insert_episode(episode, span_ids, self.now_unix_ms)?
        {
            report.episodes_new += 1;
        } else {
            report.episodes_duplicate += 1;
        }
        Ok(())
    }

    /// Stages a span, unless it is known already, late, or over its trace's
    /// span limit (the last two are rejects).
    fn admit_span(
        &mut self,
        span: Span,
        origin: &Origin<'_>,
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        if !self.staged.contains_key(&span.trace_id) {
            let stored = self.tx.trace_state(&span.trace_id)?;
            let staged = StagedTrace {
                stored,
                spans: Vec::new(),
                span_ids: HashSet::new(),
                has_root: false,
            };
            self.staged.insert(span.trace_id.clone(), staged);
        }
        let staged = self.staged.get_mut(&span.trace_id).expect("inserted above");
        let (reason, detail) = if staged.stored.finalized {
            if self.tx.span_consumed(&span.trace_id, &span.span_id)? {
                report.spans_duplicate += 1;
                return Ok(());
            }
            let detail = format!(
                "span {} of trace {} arrived after the trace was finalized",
                span.span_id, span.trace_id
            );
            (Reason::LateSpan, detail)
        } else if staged.span_ids.contains(&span.span_id)
            || (staged.stored.pending_spans > 0
                && self.tx.span_pending(&span.trace_id, &span.span_id)?)
        {
            report.spans_duplicate += 1;
            return Ok(());
        } else if staged.stored.pending_spans + staged.spans.len() as u64
            >= self.max_spans_per_trace
        {
            let detail = format!(
                "trace {} already holds traces.max_spans_per_trace = {} spans; span {} dropped",
                span.trace_id, self.max_spans_per_trace, span.span_id
            );
            (Reason::TooLarge, detail)
        } else {
            report.spans_new += 1;
            staged.has_root |= span.is_root();
            staged.span_ids.insert(span.span_id.clone());
            staged.spans.push(span);
            return Ok(());
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
        self.finish_trace(trace_id, spans, report)
    }

    /// Stores the episode the spans of a complete trace make, or rejects the
    /// trace; either way the trace is finalized.
    fn finish_trace(
        &mut self,
        trace_id: &str,
        spans: Vec<Span>,
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        if spans.is_empty() {
            return Ok(());
        }
        let span_ids: Vec<String> = spans.iter().map(|s| s.span_id.clone()).collect();
        match trace::assemble(spans) {
            Ok(episode) => self.insert_episode(&episode, &span_ids, report),
            Err(diagnostic) => {
                self.tx.mark_consumed(trace_id, &span_ids)?;
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

    /// Assembles every staged trace whose root has arrived, keeps the spans
    /// of the others pending, writes the cursor (if any) and commits.
    pub fn commit(
        mut self,
        cursor: Option<&FileCursor>,
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        for (trace_id, staged) in std::mem::take(&mut self.staged) {
            if staged.stored.finalized || staged.spans.is_empty() {
                continue;
            }
            if staged.has_root || staged.stored.pending_root {
                let mut spans = if staged.stored.pending_spans > 0 {
                    self.tx.take_pending(&trace_id)?
                } else {
                    Vec::new()
                };
                spans.extend(staged.spans);
                self.finish_trace(&trace_id, spans, report)?;
            } else {
                for span in &staged.spans {
                    self.tx.insert_pending(span, self.now_unix_ms)?;
                }
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
