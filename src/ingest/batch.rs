//! The store half of an ingestion batch: one transaction that writes what a
//! sealed [`Staging`] holds, and the cursor that says it was read.
//!
//! Episodes and rejects are written as staged. Each staged trace is checked
//! against what the store already holds of it: a trace already finalized
//! takes no new span (a re-read span is ignored, a new one is late); a trace
//! with spans pending from earlier batches is assembled from all of them once
//! its root is in; a trace the store knows nothing of takes the assembly the
//! reader thread already made. Spans of traces still without a root wait in
//! `pending_spans`.

use sha2::{Digest, Sha256};

use super::IngestReport;
use super::stage::{Item, StagedTrace, Staging, span_reject_row, too_many_spans};
use crate::store::{BodyEncoder, FileCursor, IngestTx, RejectRow, Store, StoreError, now_unix_ms};
use crate::trace::{self, Diagnostic, Episode, Reason, Span};

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
    now_unix_ms: i64,
    max_spans_per_trace: u64,
    /// For episodes assembled here rather than on the reader thread.
    encoder: Option<BodyEncoder>,
}

impl<'s> Batch<'s> {
    pub fn begin(store: &'s mut Store, max_spans_per_trace: u64) -> Result<Batch<'s>, StoreError> {
        Ok(Batch {
            tx: store.begin_ingest()?,
            now_unix_ms: now_unix_ms(),
            max_spans_per_trace,
            encoder: None,
        })
    }

    /// Writes a sealed staging: its episodes, rejects and traces.
    pub fn apply(&mut self, staging: Staging, report: &mut IngestReport) -> Result<(), StoreError> {
        for item in staging.items {
            match item {
                Item::Episode(episode, body) => {
                    self.insert_episode(&episode, &body, &[], report)?
                }
                Item::Reject(row, diagnostic) => self.reject(row, diagnostic, report)?,
            }
        }
        for (trace_id, staged) in staging.traces {
            self.apply_trace(&trace_id, staged, report)?;
        }
        Ok(())
    }

    fn apply_trace(
        &mut self,
        trace_id: &str,
        staged: StagedTrace,
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        report.spans_duplicate += staged.duplicates;
        for span in &staged.spans {
            for name in trace::unknown_whetstone_attributes(span) {
                self.tx
                    .insert_unknown_attribute(name, &span.source.file, span.source.line)?;
            }
        }
        let stored = self.tx.trace_state(trace_id)?;
        if stored.finalized {
            for span in &staged.spans {
                if self.tx.span_consumed(trace_id, &span.span_id)? {
                    report.spans_duplicate += 1;
                    continue;
                }
                let detail = format!(
                    "span {} of trace {} arrived after the trace was finalized",
                    span.span_id, span.trace_id
                );
                let diagnostic = Diagnostic::new(
                    &span.source.file,
                    span.source.line,
                    Reason::LateSpan,
                    detail,
                );
                self.reject(span_reject_row(span, &diagnostic), diagnostic, report)?;
            }
            return Ok(());
        }
        if stored.pending_spans == 0 {
            report.spans_new += staged.spans.len() as u64;
            return match staged.assembled {
                Some(assembled) => {
                    let span_ids: Vec<String> =
                        staged.spans.iter().map(|s| s.span_id.clone()).collect();
                    self.store_assembled(trace_id, assembled, &span_ids, report)
                }
                None => self.keep_pending(&staged.spans),
            };
        }
        // The store holds earlier spans of this trace: add the new ones
        // within the trace's limit, then assemble once the root is in.
        let mut new_spans = Vec::with_capacity(staged.spans.len());
        let mut held = stored.pending_spans;
        for span in staged.spans {
            if self.tx.span_pending(trace_id, &span.span_id)? {
                report.spans_duplicate += 1;
            } else if held >= self.max_spans_per_trace {
                let diagnostic = too_many_spans(&span, self.max_spans_per_trace);
                self.reject(span_reject_row(&span, &diagnostic), diagnostic, report)?;
            } else {
                held += 1;
                new_spans.push(span);
            }
        }
        report.spans_new += new_spans.len() as u64;
        if staged.has_root || stored.pending_root {
            let mut spans = self.tx.take_pending(trace_id)?;
            spans.extend(new_spans);
            return self.finish_trace(trace_id, spans, report);
        }
        self.keep_pending(&new_spans)
    }

    fn keep_pending(&mut self, spans: &[Span]) -> Result<(), StoreError> {
        for span in spans {
            self.tx.insert_pending(span, self.now_unix_ms)?;
        }
        Ok(())
    }

    fn insert_episode(
        &mut self,
        episode: &Episode,
        body: &[u8],
        span_ids: &[String],
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        if self
            .tx
            .insert_episode(episode, body, span_ids, self.now_unix_ms)?
        {
            report.episodes_new += 1;
        } else {
            report.episodes_duplicate += 1;
        }
        Ok(())
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
        let assembled = match trace::assemble(&spans) {
            Ok(episode) => {
                let encoder = self.encoder.get_or_insert_with(BodyEncoder::new);
                let body = encoder.encode(&episode)?;
                Ok((episode, body))
            }
            Err(diagnostic) => Err(diagnostic),
        };
        self.store_assembled(trace_id, assembled, &span_ids, report)
    }

    fn store_assembled(
        &mut self,
        trace_id: &str,
        assembled: Result<(Episode, Vec<u8>), Diagnostic>,
        span_ids: &[String],
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        match assembled {
            Ok((episode, body)) => self.insert_episode(&episode, &body, span_ids, report),
            Err(diagnostic) => {
                self.tx.mark_consumed(trace_id, span_ids)?;
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

    /// Writes the cursor (if any) and commits.
    pub fn commit(self, cursor: Option<&FileCursor>) -> Result<(), StoreError> {
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
