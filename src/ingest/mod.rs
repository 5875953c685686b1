//! Exactly-once, incremental ingestion of trace files into the store.
//!
//! A pass reads what is new in each file since the last pass and commits it
//! in batches; each batch is one store transaction holding the records it
//! produced *and* the file cursor after its last line. Killed at any moment,
//! ingestion resumes from the last committed cursor, and every insert is
//! idempotent (episodes by trace id, spans by trace and span id, rejects by
//! their content key), so a file read twice — after a crash, a truncation,
//! or a rotation — is stored once.
//!
//! Spans are kept pending until their trace is complete: when its root span
//! arrives, or when no span of it arrived for `quiet_period_secs`.
//!
//! Memory stays bounded whatever the input: a few batches in flight between
//! the reader, the parse workers and the store (see `pipeline.rs`), lines of
//! at most `max_line_bytes` (longer lines are skipped, not buffered), one
//! document of at most `max_document_bytes`, one trace of at most
//! `max_spans_per_trace` spans.

mod batch;
mod config;
mod file;
mod lines;
mod pipeline;
mod scan;
mod stage;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::store::{FileCursor, FileIdentity, Store, StoreError, now_unix_ms};
use crate::trace::{Diagnostic, Reason};
pub use config::TracesConfig;

pub use scan::{ScanReport, scan_paths};

use batch::Batch;
use file::{FileError, OpenFile};

/// File extensions read when importing a directory, also with a rotation
/// suffix (`.1`, `-20261201`). Files named explicitly are read whatever their
/// extension.
pub const TRACE_EXTENSIONS: &[&str] = &["json", "jsonl", "ndjson", "log", "txt"];

/// How many rejects an [`IngestReport`] keeps in full (the rest are counted).
pub const REPORT_FIRST_REJECTS: usize = 10;

/// Pending traces finalized per transaction.
const FINALIZE_BATCH_TRACES: usize = 500;

/// Bounds and batching of ingestion, from the `[traces]` section of the
/// configuration (its defaults are the defaults here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestOptions {
    /// Most lines committed per store transaction.
    pub batch_lines: usize,
    /// Longest accepted line; longer ones are rejected as `line_too_long`.
    pub max_line_bytes: u64,
    /// Largest accepted whole-file document; larger ones are `too_large`.
    pub max_document_bytes: u64,
    /// Spans kept per pending trace; more are rejected as `too_large`.
    pub max_spans_per_trace: usize,
    /// A trace whose root span never arrives is finalized this long after
    /// its newest span arrived; an incomplete document is rejected this long
    /// after it last changed.
    pub quiet_period_secs: u64,
    /// Finalize every pending trace (and incomplete document) at the end of
    /// this pass, without waiting for the quiet period.
    pub finalize: bool,
}

impl From<&TracesConfig> for IngestOptions {
    fn from(config: &TracesConfig) -> Self {
        IngestOptions {
            batch_lines: config.batch_lines,
            max_line_bytes: config.max_line_bytes,
            max_document_bytes: config.max_document_bytes,
            max_spans_per_trace: config.max_spans_per_trace,
            quiet_period_secs: config.quiet_period_secs,
            finalize: false,
        }
    }
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions::from(&TracesConfig::default())
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestReport {
    /// Trace files examined.
    pub files: u64,
    /// Files read again from the start because they were truncated or replaced.
    pub files_reread: u64,
    /// Complete lines read.
    pub lines: u64,
    /// Bytes read and committed.
    pub bytes: u64,
    /// Episodes stored for the first time.
    pub episodes_new: u64,
    /// Episodes already stored (same trace id), not stored again.
    pub episodes_duplicate: u64,
    /// Spans newly stored as pending.
    pub spans_new: u64,
    /// Spans already known (pending or finalized), not stored again.
    pub spans_duplicate: u64,
    /// Spans still pending after the pass, and their traces.
    pub pending_spans: u64,
    pub pending_traces: u64,
    /// New rejects by reason (rejects recorded before are not counted again).
    pub rejects: BTreeMap<Reason, u64>,
    /// The first [`REPORT_FIRST_REJECTS`] new rejects.
    pub first_rejects: Vec<Diagnostic>,
    /// Files or paths that could not be read at all.
    pub file_errors: Vec<PathError>,
    /// Entries of walked directories left out, with why: dangling symlinks,
    /// symlink loops, symlinks to directories (not followed), FIFOs, sockets
    /// and devices.
    pub skipped: Vec<PathError>,
}

/// A path that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError {
    pub path: PathBuf,
    pub error: String,
}

impl IngestReport {
    /// Total new rejects.
    pub fn rejects_total(&self) -> u64 {
        self.rejects.values().sum()
    }

    fn record_reject(&mut self, diagnostic: Diagnostic) {
        *self.rejects.entry(diagnostic.reason).or_default() += 1;
        if self.first_rejects.len() < REPORT_FIRST_REJECTS {
            self.first_rejects.push(diagnostic);
        }
    }

    fn skip(&mut self, path: &Path, why: impl std::fmt::Display) {
        tracing::warn!(path = %path.display(), %why, "skipping entry of a trace directory");
        self.skipped.push(PathError {
            path: path.to_path_buf(),
            error: why.to_string(),
        });
    }

    fn path_error(&mut self, path: &Path, error: impl std::fmt::Display) {
        tracing::warn!(path = %path.display(), %error, "cannot read trace path");
        self.file_errors.push(PathError {
            path: path.to_path_buf(),
            error: error.to_string(),
        });
    }
}

/// Progress of a pass, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Sent once, before reading: bytes this pass expects to read.
    Total(u64),
    /// Bytes just read and committed.
    Advanced(u64),
}

/// Reads everything new in `paths` (files, or directories walked
/// recursively) into the store, then finalizes pending traces that are
/// quiet (all of them with `options.finalize`).
///
/// Unreadable paths are reported in [`IngestReport::file_errors`] and do not
/// stop the pass; only store errors do.
pub fn ingest_paths(
    store: &mut Store,
    paths: &[PathBuf],
    options: &IngestOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<IngestReport, StoreError> {
    let mut report = IngestReport::default();
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, true, &mut files, &mut report);
    }
    files.sort();
    files.dedup();

    let mut opened = Vec::with_capacity(files.len());
    let mut total = 0;
    for path in files {
        match open_file(&path) {
            Ok(open) => {
                let cursor = store.cursor(&open.path)?;
                total += file::bytes_to_read(&open, cursor.as_ref());
                opened.push(open);
            }
            Err(err) => report.path_error(&path, err),
        }
    }
    follow_renamed_files(store, &mut opened, &mut total)?;
    progress(Progress::Total(total));

    for open in opened {
        report.files += 1;
        let path = PathBuf::from(&open.path);
        let mut advanced = |bytes| progress(Progress::Advanced(bytes));
        match file::ingest_file(store, open, options, &mut report, &mut advanced) {
            Ok(()) => {}
            Err(FileError::Io(err)) => report.path_error(&path, err),
            Err(FileError::Store(err)) => return Err(err),
        }
    }

    finalize_quiet_traces(store, options, &mut report)?;
    (report.pending_spans, report.pending_traces) = store.pending_counts()?;
    Ok(report)
}

/// Carries the cursors of renamed files over to their new paths, the way log
/// shippers follow rotation: a file whose path has no cursor for it, but whose
/// identity (device, inode) has a cursor under a path that no longer holds it,
/// was renamed (`x.jsonl` → `x.jsonl.1`, or moved within the folder), and its
/// unread tail is read from where the old path stopped. `total` is corrected
/// for the bytes no longer to be read.
fn follow_renamed_files(
    store: &mut Store,
    opened: &mut [OpenFile],
    total: &mut u64,
) -> Result<(), StoreError> {
    let cursors = store.cursors()?;
    let by_path: HashMap<&str, &FileCursor> =
        cursors.iter().map(|c| (c.path.as_str(), c)).collect();
    let by_identity: HashMap<FileIdentity, &FileCursor> = cursors
        .iter()
        .filter(|c| c.identity != FileIdentity::default())
        .map(|c| (c.identity, c))
        .collect();
    let mut moves = Vec::new();
    for open in opened.iter() {
        let here = by_path.get(open.path.as_str());
        if here.is_some_and(|c| c.identity == open.identity) {
            continue;
        }
        let Some(&moved) = by_identity.get(&open.identity) else {
            continue;
        };
        let still_there = fs::metadata(&moved.path)
            .is_ok_and(|metadata| FileIdentity::of(&metadata) == open.identity);
        if moved.path == open.path || still_there || moved.offset > open.size {
            continue;
        }
        tracing::info!(
            from = %moved.path, to = %open.path, offset = moved.offset,
            "trace file was renamed; reading on from where it was left"
        );
        *total -= file::bytes_to_read(open, here.copied());
        *total += open.size - moved.offset;
        moves.push((moved.clone(), open.path.clone()));
    }
    if !moves.is_empty() {
        store.move_cursors(&moves)?;
    }
    Ok(())
}

/// Whether `path` names a trace file by its extension, also when rotation
/// added a numeric suffix (`agent.jsonl.1`, `agent.jsonl-20261201`).
fn has_trace_extension(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
        return false;
    };
    let unrotated = name
        .rsplit_once(['.', '-'])
        .filter(|(_, suffix)| !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
        .map_or(name, |(stem, _)| stem);
    Path::new(unrotated)
        .extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| TRACE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

/// Assembles pending traces whose newest span arrived more than
/// `quiet_period_secs` ago (all of them with `options.finalize`).
pub fn finalize_quiet_traces(
    store: &mut Store,
    options: &IngestOptions,
    report: &mut IngestReport,
) -> Result<(), StoreError> {
    let arrived_before = (!options.finalize)
        .then(|| now_unix_ms() - (options.quiet_period_secs as i64).saturating_mul(1000));
    loop {
        let mut batch = Batch::begin(store, options.max_spans_per_trace as u64)?;
        let trace_ids = batch.quiet_traces(arrived_before, FINALIZE_BATCH_TRACES)?;
        if trace_ids.is_empty() {
            return Ok(());
        }
        for trace_id in &trace_ids {
            batch.finalize_trace(trace_id, report)?;
        }
        batch.commit(None)?;
    }
}

/// Adds `path` to `files`: a file as is (when named explicitly, or when it
/// has a trace extension), a directory recursively. Hidden entries (name
/// starting with `.`) inside directories are skipped silently; symlinked
/// directories are not followed, to avoid cycles, and they, broken symlinks
/// and special files are reported in [`IngestReport::skipped`].
fn collect_files(path: &Path, explicit: bool, files: &mut Vec<PathBuf>, report: &mut IngestReport) {
    let metadata = match if explicit {
        fs::metadata(path)
    } else {
        fs::symlink_metadata(path)
    } {
        Ok(metadata) => metadata,
        Err(err) => return report.path_error(path, err),
    };
    if metadata.is_dir() {
        let entries = match fs::read_dir(path) {
            Ok(entries) => entries,
            Err(err) => return report.path_error(path, err),
        };
        let mut children: Vec<PathBuf> = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) if !entry.file_name().to_string_lossy().starts_with('.') => {
                    children.push(entry.path())
                }
                Ok(_) => {}
                Err(err) => report.path_error(path, err),
            }
        }
        children.sort();
        for child in children {
            collect_files(&child, false, files, report);
        }
        return;
    }
    let mut is_file = metadata.is_file();
    if !explicit && metadata.is_symlink() {
        match fs::metadata(path) {
            Ok(target) if target.is_dir() => {
                return report.skip(path, "symlink to a directory, not followed");
            }
            Ok(target) => is_file = target.is_file(),
            Err(err) => {
                return report.skip(
                    path,
                    format_args!("broken symlink (dangling or a loop): {err}"),
                );
            }
        }
    }
    if !explicit && !is_file && !metadata.is_symlink() {
        return report.skip(path, special_file_kind(&metadata));
    }
    if is_file && (explicit || has_trace_extension(path)) {
        files.push(path.to_path_buf());
    } else if explicit {
        report.path_error(path, "not a regular file or directory");
    }
}

/// What a directory entry that is neither a file, a directory nor a symlink
/// is, for the message that says it was skipped.
fn special_file_kind(metadata: &fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let kind = metadata.file_type();
        if kind.is_fifo() {
            return "a FIFO (named pipe), not a regular file";
        }
        if kind.is_socket() {
            return "a socket, not a regular file";
        }
        if kind.is_block_device() || kind.is_char_device() {
            return "a device, not a regular file";
        }
    }
    let _ = metadata;
    "not a regular file"
}

fn open_file(path: &Path) -> std::io::Result<OpenFile> {
    let canonical = fs::canonicalize(path)?;
    let file = File::open(&canonical)?;
    let metadata = file.metadata()?;
    Ok(OpenFile {
        path: canonical.to_string_lossy().into_owned(),
        identity: FileIdentity::of(&metadata),
        size: metadata.len(),
        file,
    })
}
