//! Ingesting one trace file from where the last pass stopped.
//!
//! A file is read either as lines (resuming at the committed offset) or, when
//! it holds one multi-line JSON document, whole once the document is
//! complete. Before resuming, the cursor is checked against the file: a
//! different device/inode, a size below the offset, or a changed prefix means
//! the file was truncated or replaced, and it is read again from the start —
//! safe, because every insert deduplicates.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use serde::de::IgnoredAny;

use super::batch::{Batch, Origin, content_key};
use super::pipeline::{self, ReadBatch};
use super::stage::Staging;
use super::{IngestOptions, IngestReport};
use crate::store::{FileCursor, FileIdentity, Layout, Store, StoreError, now_unix_ms};
use crate::trace::{self, Reason};

/// Bytes of the file start covered by a cursor's fingerprint.
const FINGERPRINT_BYTES: usize = 4096;

/// A transaction takes more staged batches only while it holds fewer bytes
/// of lines than this (and never more than `batch_lines` lines).
const TRANSACTION_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Read buffer size, for lines and for hashing documents.
pub(super) const READ_BUFFER_BYTES: usize = 256 * 1024;

/// A file opened for this pass.
pub struct OpenFile {
    /// Canonical path, the cursor key and the `source.file` of its records.
    pub path: String,
    pub file: File,
    pub identity: FileIdentity,
    pub size: u64,
}

/// Fatal (store) errors end the pass; I/O errors end only this file.
pub enum FileError {
    Store(StoreError),
    Io(io::Error),
}

impl From<StoreError> for FileError {
    fn from(err: StoreError) -> FileError {
        FileError::Store(err)
    }
}

impl From<io::Error> for FileError {
    fn from(err: io::Error) -> FileError {
        FileError::Io(err)
    }
}

/// How many bytes this pass would read from `file` given its cursor (for
/// the progress total).
pub fn bytes_to_read(file: &OpenFile, cursor: Option<&FileCursor>) -> u64 {
    match cursor {
        Some(c) if c.identity == file.identity && c.offset <= file.size => file.size - c.offset,
        _ => file.size,
    }
}

/// Reads what is new in `file` into the store.
pub fn ingest_file(
    store: &mut Store,
    open: OpenFile,
    options: &IngestOptions,
    report: &mut IngestReport,
    progress: &mut dyn FnMut(u64),
) -> Result<(), FileError> {
    let cursor = store.cursor(&open.path)?;
    let head = read_head(&open.file, open.size)?;
    if let Some(cursor) = cursor
        .as_ref()
        .filter(|c| c.layout == Layout::Lines && c.offset > 0)
    {
        let prefix = head.get(..cursor.fingerprint_len as usize);
        let same_file = cursor.identity == open.identity
            && open.size >= cursor.offset
            && prefix.is_some_and(|prefix| content_key(&[prefix]) == cursor.fingerprint);
        if same_file {
            let resume = (cursor.offset, cursor.line);
            return ingest_lines(store, &open, &head, resume, options, report, progress);
        }
        tracing::info!(
            file = %open.path,
            "trace file was truncated or replaced since it was last read; reading it again from the start"
        );
        report.files_reread += 1;
    }
    if open.size == 0 {
        return Ok(());
    }
    if trace::is_document(&head) {
        let cursor = cursor.filter(|c| c.layout == Layout::Document);
        match ingest_document(store, &open, cursor, options, report, progress)? {
            DocumentOutcome::Done => return Ok(()),
            DocumentOutcome::ReadAsLines => {}
        }
    }
    ingest_lines(store, &open, &head, (0, 0), options, report, progress)
}

/// The first (up to) [`FINGERPRINT_BYTES`] bytes of the file.
fn read_head(mut file: &File, size: u64) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(FINGERPRINT_BYTES.min(size as usize));
    file.seek(SeekFrom::Start(0))?;
    file.take(FINGERPRINT_BYTES as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// Reads complete lines from `resume` = (byte offset, lines before it),
/// parsed on other threads (see `pipeline.rs`) while this one commits them,
/// each transaction with the cursor after its last line.
fn ingest_lines(
    store: &mut Store,
    open: &OpenFile,
    head: &[u8],
    resume: (u64, u64),
    options: &IngestOptions,
    report: &mut IngestReport,
    progress: &mut dyn FnMut(u64),
) -> Result<(), FileError> {
    if resume.0 == open.size {
        return Ok(());
    }
    let cursor_at = |offset: u64, line: u64| {
        let fingerprint_len = head.len().min(offset as usize);
        FileCursor {
            path: open.path.clone(),
            identity: open.identity,
            offset,
            line,
            fingerprint: content_key(&[&head[..fingerprint_len]]),
            fingerprint_len: fingerprint_len as u64,
            layout: Layout::Lines,
            updated_at_unix_ms: now_unix_ms(),
        }
    };
    let max_spans = options.max_spans_per_trace as u64;
    let mut batch_start = resume.0;
    pipeline::read_lines(open, resume, options, |staged| {
        while let Some(mut read) = staged.next()? {
            // Batches staged while the previous transaction committed join
            // this one: fewer commits write each index page fewer times.
            let mut batch = Batch::begin(store, max_spans)?;
            let mut lines = 0;
            loop {
                batch.apply(read.staging, report)?;
                lines += read.lines;
                if read.end_offset - batch_start >= TRANSACTION_MAX_BYTES {
                    break;
                }
                // A ready batch that would take the transaction past
                // `batch_lines` starts the next one instead.
                let fits = |more: &ReadBatch| lines + more.lines <= options.batch_lines as u64;
                match staged.next_ready_if(fits)? {
                    Some(more) => read = more,
                    None => break,
                }
            }
            batch.commit(Some(&cursor_at(read.end_offset, read.end_line)))?;
            report.lines += lines;
            report.bytes += read.end_offset - batch_start;
            progress(read.end_offset - batch_start);
            batch_start = read.end_offset;
        }
        Ok(())
    })
}

/// What became of a file that looked like a document.
enum DocumentOutcome {
    /// Processed, rejected, or waiting for the rest of it.
    Done,
    /// Not a document after all, but JSON lines whose first line is broken:
    /// read it as lines, so the good lines are not lost with the bad one.
    ReadAsLines,
}

/// A whole-file JSON document: processed once complete, again only when its
/// content changes; rejected when it stays incomplete for the quiet period.
fn ingest_document(
    store: &mut Store,
    open: &OpenFile,
    cursor: Option<FileCursor>,
    options: &IngestOptions,
    report: &mut IngestReport,
    progress: &mut dyn FnMut(u64),
) -> Result<DocumentOutcome, FileError> {
    let now = now_unix_ms();
    let mut file = &open.file;
    file.seek(SeekFrom::Start(0))?;
    // Read the document if it is within bounds; otherwise only hash it, in
    // bounded chunks, to recognize it next time.
    let within_bounds = open.size <= options.max_document_bytes;
    let mut bytes = Vec::new();
    let fingerprint = if within_bounds {
        file.take(options.max_document_bytes)
            .read_to_end(&mut bytes)?;
        content_key(&[&bytes])
    } else {
        hash_stream(&mut file)?
    };
    let size = if within_bounds {
        bytes.len() as u64
    } else {
        open.size
    };
    let cursor_with = |offset: u64, updated_at_unix_ms: i64| FileCursor {
        path: open.path.clone(),
        identity: open.identity,
        offset,
        line: 0,
        fingerprint: fingerprint.clone(),
        fingerprint_len: size,
        layout: Layout::Document,
        updated_at_unix_ms,
    };
    let origin = Origin {
        file: &open.path,
        line: 1,
        offset: 0,
        key: &fingerprint,
    };
    let max_spans = options.max_spans_per_trace as u64;
    let unchanged = cursor
        .as_ref()
        .is_some_and(|c| c.identity == open.identity && c.fingerprint == fingerprint);
    if let Some(cursor) = cursor.as_ref().filter(|_| unchanged) {
        if cursor.offset > 0 {
            return Ok(DocumentOutcome::Done); // Already processed.
        }
        // Still incomplete, and unchanged since `updated_at`.
        let quiet_for_ms = now - cursor.updated_at_unix_ms;
        if !options.finalize && quiet_for_ms < options.quiet_period_secs as i64 * 1000 {
            return Ok(DocumentOutcome::Done);
        }
        let detail = format!(
            "multi-line JSON document still incomplete after {}s without change",
            quiet_for_ms / 1000
        );
        let mut staging = Staging::new(options.max_spans_per_trace);
        staging.reject_input(Reason::IncompleteDocument, detail, &origin);
        let mut batch = Batch::begin(store, max_spans)?;
        batch.apply(staging, report)?;
        batch.commit(Some(&cursor_with(size, now)))?;
        return Ok(DocumentOutcome::Done);
    }
    if cursor.as_ref().is_some_and(|c| c.offset > 0) {
        tracing::info!(file = %open.path, "trace document changed since it was last read; reading it again");
        report.files_reread += 1;
    }
    let complete =
        within_bounds.then(|| serde_json::from_slice::<IgnoredAny>(trace::strip_bom(&bytes)));
    if matches!(complete, Some(Err(_))) && trace::holds_json_lines(&bytes) {
        return Ok(DocumentOutcome::ReadAsLines);
    }
    let mut staging = Staging::new(options.max_spans_per_trace);
    if !within_bounds {
        let detail = format!(
            "document of {} bytes exceeds traces.max_document_bytes = {}",
            open.size, options.max_document_bytes
        );
        staging.reject_input(Reason::TooLarge, detail, &origin);
    } else if complete.is_some_and(|res| res.is_err_and(|err| err.is_eof())) {
        // Being written: wait for the rest, remembering since when it is
        // unchanged.
        Batch::begin(store, max_spans)?.commit(Some(&cursor_with(0, now)))?;
        return Ok(DocumentOutcome::Done);
    } else {
        staging.add(trace::parse_document(&bytes, &open.path), &origin)?;
    }
    let mut batch = Batch::begin(store, max_spans)?;
    batch.apply(staging.seal()?, report)?;
    batch.commit(Some(&cursor_with(size, now)))?;
    report.bytes += size;
    progress(size);
    Ok(DocumentOutcome::Done)
}

/// Hash of a whole stream, read in bounded chunks.
fn hash_stream(reader: &mut impl Read) -> io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; READ_BUFFER_BYTES];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        hasher.update(&chunk[..n]);
    }
    Ok(hex::encode(&hasher.finalize()[..16]))
}
