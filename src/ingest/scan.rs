//! Reading trace files into episodes without a store, for
//! `whetstone traces parse`: the same line reading, format detection and
//! assembly as an import, but nothing is remembered between runs.
//!
//! A trace is emitted as soon as its root span has been read; traces whose
//! root never arrives are emitted at the end. Spans of unfinished traces are
//! the only thing held in memory besides one line.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;

use super::lines::{LineReader, NextLine, too_long_detail, too_long_tail_detail};
use super::{IngestOptions, IngestReport, collect_files};
use crate::trace::{self, Diagnostic, Episode, Reason, Record, Source, Span};

/// What a scan found, besides the episodes handed to the callback.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Episodes produced.
    pub episodes: u64,
    /// Rejected lines, documents and traces, in the order found.
    pub rejects: Vec<Diagnostic>,
    /// Paths that could not be read at all.
    pub unreadable: Vec<(PathBuf, String)>,
    /// Entries of walked directories left out, with why (as in
    /// [`IngestReport::skipped`]).
    pub skipped: Vec<(PathBuf, String)>,
}

/// Reads `paths` (files, or directories walked as an import walks them) and
/// calls `emit` with each episode as soon as it is complete.
pub fn scan_paths(
    paths: &[PathBuf],
    options: &IngestOptions,
    emit: &mut dyn FnMut(Episode) -> io::Result<()>,
) -> io::Result<ScanReport> {
    let mut files = Vec::new();
    let mut walk = IngestReport::default();
    for path in paths {
        collect_files(path, true, &mut files, &mut walk);
    }
    let mut report = ScanReport {
        unreadable: walk
            .file_errors
            .into_iter()
            .map(|e| (e.path, e.error))
            .collect(),
        skipped: walk
            .skipped
            .into_iter()
            .map(|e| (e.path, e.error))
            .collect(),
        ..ScanReport::default()
    };
    let mut pending: HashMap<String, Vec<Span>> = HashMap::new();
    for path in files {
        if let Err(err) = scan_file(&path, options, &mut pending, &mut report, emit) {
            if err.kind() == io::ErrorKind::BrokenPipe {
                return Err(err);
            }
            report.unreadable.push((path, err.to_string()));
        }
    }
    let mut rest: Vec<Vec<Span>> = pending.into_values().collect();
    rest.sort_by_key(|spans| spans.iter().map(|s| s.start_time_unix_nano).min());
    for spans in rest {
        finish_trace(spans, &mut report, emit)?;
    }
    Ok(report)
}

fn scan_file(
    path: &Path,
    options: &IngestOptions,
    pending: &mut HashMap<String, Vec<Span>>,
    report: &mut ScanReport,
    emit: &mut dyn FnMut(Episode) -> io::Result<()>,
) -> io::Result<()> {
    let name = path.display().to_string();
    let mut file = File::open(path)?;
    let mut head = Vec::new();
    (&mut file).take(4096).read_to_end(&mut head)?;
    if trace::is_document(&head) {
        let mut bytes = head;
        (&mut file)
            .take(options.max_document_bytes)
            .read_to_end(&mut bytes)?;
        if file.read(&mut [0u8])? > 0 {
            let detail = format!(
                "document exceeds traces.max_document_bytes = {}",
                options.max_document_bytes
            );
            report
                .rejects
                .push(Diagnostic::new(&name, 1, Reason::TooLarge, detail));
            return Ok(());
        }
        // Like an import: a file whose broken first line only looked like
        // the start of a document is read line by line.
        let complete = serde_json::from_slice::<IgnoredAny>(trace::strip_bom(&bytes)).is_ok();
        if complete || !trace::holds_json_lines(&bytes) {
            let record = trace::parse_document(&bytes, &name);
            return take_record(record, pending, options, report, emit);
        }
    }
    let file = File::open(path)?;
    let max_line_bytes = usize::try_from(options.max_line_bytes).unwrap_or(usize::MAX);
    let mut lines = LineReader::new(
        BufReader::with_capacity(256 * 1024, file),
        0,
        max_line_bytes,
    );
    let mut line = Vec::new();
    let mut line_no = 0;
    loop {
        let next = lines.next_line(&mut line)?;
        line_no += 1;
        match next {
            NextLine::TooLong { len } => {
                let detail = too_long_detail(len, options.max_line_bytes);
                report
                    .rejects
                    .push(Diagnostic::new(&name, line_no, Reason::LineTooLong, detail));
                continue;
            }
            // A file being parsed is taken as it is: its last line counts
            // even without a newline (an import would wait for one).
            NextLine::End { tail } if tail > options.max_line_bytes => {
                let detail = too_long_tail_detail(tail, options.max_line_bytes);
                report
                    .rejects
                    .push(Diagnostic::new(&name, line_no, Reason::LineTooLong, detail));
                return Ok(());
            }
            NextLine::Line | NextLine::End { .. } => {}
        }
        if !line.trim_ascii().is_empty() {
            let source = Source {
                file: name.clone(),
                line: line_no,
            };
            take_record(
                trace::parse_line(&line, &source),
                pending,
                options,
                report,
                emit,
            )?;
        }
        if let NextLine::End { .. } = next {
            return Ok(());
        }
    }
}

fn take_record(
    record: Result<Record, Diagnostic>,
    pending: &mut HashMap<String, Vec<Span>>,
    options: &IngestOptions,
    report: &mut ScanReport,
    emit: &mut dyn FnMut(Episode) -> io::Result<()>,
) -> io::Result<()> {
    let spans = match record {
        Ok(Record::Episode(episode)) => {
            report.episodes += 1;
            return emit(*episode);
        }
        Ok(Record::Spans(spans)) => spans,
        Err(diagnostic) => {
            report.rejects.push(diagnostic);
            return Ok(());
        }
    };
    let mut rooted = Vec::new();
    for span in spans {
        let trace_spans = pending.entry(span.trace_id.clone()).or_default();
        if trace_spans.len() >= options.max_spans_per_trace {
            let detail = format!(
                "trace {} has more than traces.max_spans_per_trace = {} spans",
                span.trace_id, options.max_spans_per_trace
            );
            report.rejects.push(Diagnostic::new(
                &span.source.file,
                span.source.line,
                Reason::TooLarge,
                detail,
            ));
            continue;
        }
        if span.is_root() {
            rooted.push(span.trace_id.clone());
        }
        trace_spans.push(span);
    }
    for trace_id in rooted {
        if let Some(spans) = pending.remove(&trace_id) {
            finish_trace(spans, report, emit)?;
        }
    }
    Ok(())
}

fn finish_trace(
    spans: Vec<Span>,
    report: &mut ScanReport,
    emit: &mut dyn FnMut(Episode) -> io::Result<()>,
) -> io::Result<()> {
    match trace::assemble(&spans) {
        Ok(episode) => {
            report.episodes += 1;
            emit(episode)
        }
        Err(diagnostic) => {
            report.rejects.push(diagnostic);
            Ok(())
        }
    }
}
