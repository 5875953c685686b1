//! Reading a lines file on several threads.
//!
//! A reader thread splits the file into raw batches of complete lines (every
//! `batch_lines` lines or [`BATCH_MAX_BYTES`] bytes); parse workers, one per
//! core up to [`MAX_PARSE_WORKERS`], parse and stage them (see `stage.rs`);
//! the calling thread takes the staged batches in file order ([`Staged`]) and
//! commits them. Channels are bounded: at most about three batches per
//! worker are in memory, whatever the file size.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::Builder;

use super::IngestOptions;
use super::batch::{Origin, content_key};
use super::file::{FileError, OpenFile, READ_BUFFER_BYTES};
use super::lines::{LineReader, NextLine, too_long_detail, too_long_tail_detail};
use super::stage::Staging;
use crate::store::StoreError;
use crate::trace::{self, Reason, Source};

/// A batch also ends after this many bytes of lines, so a batch of long
/// lines keeps transactions short.
const BATCH_MAX_BYTES: u64 = 1024 * 1024;

/// Parse workers at most; the store thread is the bottleneck well before.
const MAX_PARSE_WORKERS: usize = 4;

/// A staged batch and where in the file it ends.
pub struct ReadBatch {
    pub staging: Staging,
    /// Offset just past the batch's last line.
    pub end_offset: u64,
    /// Lines in the file up to `end_offset`.
    pub end_line: u64,
    /// Lines in the batch, blank ones included.
    pub lines: u64,
}

/// Complete lines as read, before parsing.
struct RawBatch {
    /// The non-blank lines, back to back, terminators removed.
    bytes: Vec<u8>,
    lines: Vec<RawLine>,
    end_offset: u64,
    end_line: u64,
    n_lines: u64,
}

/// One non-blank line of a [`RawBatch`].
struct RawLine {
    /// End of the line in [`RawBatch::bytes`] (it starts where the previous
    /// one ends).
    end: usize,
    /// 1-based line number in the file.
    line_no: u64,
    /// Byte offset of the line start in the file.
    offset: u64,
    /// Set when the line exceeded `max_line_bytes`; `bytes` then holds only
    /// its prefix.
    too_long: Option<TooLong>,
}

/// A line over `max_line_bytes`, rejected without being kept.
struct TooLong {
    /// Its length so far (all of it, unless it is an unterminated tail).
    len: u64,
    /// The reject's detail.
    detail: String,
}

/// Reads the complete lines of `open` from `resume` = (byte offset, lines
/// before it) and runs `store` on the staged batches, which it takes in file
/// order from [`Staged`]. Returns the first error, from `store` or reading.
pub fn read_lines(
    open: &OpenFile,
    resume: (u64, u64),
    options: &IngestOptions,
    store: impl FnOnce(&mut Staged) -> Result<(), FileError>,
) -> Result<(), FileError> {
    let n_workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_PARSE_WORKERS);
    std::thread::scope(|scope| {
        let mut to_workers = Vec::with_capacity(n_workers);
        let mut from_workers = Vec::with_capacity(n_workers);
        let mut workers = Vec::with_capacity(n_workers);
        for i in 0..n_workers {
            // A rendezvous: the reader runs at most one batch ahead of a
            // worker.
            let (job_sender, jobs) = sync_channel::<RawBatch>(0);
            let (result_sender, results) = sync_channel(1);
            let worker = Builder::new()
                .name(format!("trace-parse-{i}"))
                .spawn_scoped(scope, move || {
                    parse_worker(open, options, jobs, result_sender)
                })?;
            to_workers.push(job_sender);
            from_workers.push(results);
            workers.push(worker);
        }
        let reader = Builder::new()
            .name("trace-reader".into())
            .spawn_scoped(scope, move || {
                read_raw_batches(open, resume, options, to_workers)
            })?;
        let mut staged = Staged {
            workers: from_workers,
            next: 0,
            done: false,
            held: None,
        };
        let stored = store(&mut staged);
        // Dropping the receivers stops workers and reader still sending.
        drop(staged);
        let read = reader.join().expect("trace reader thread panicked");
        for worker in workers {
            worker.join().expect("trace parse worker panicked");
        }
        stored.and(read)
    })
}

/// The staged batches of a file, in file order.
///
/// Batches go to the workers in turn and are taken back in the same turn, so
/// order needs no bookkeeping: a worker without a next result has no next
/// batch, and the file is done.
pub struct Staged {
    workers: Vec<Receiver<Result<ReadBatch, StoreError>>>,
    next: usize,
    done: bool,
    /// A batch taken by [`Staged::next_ready_if`] that did not fit.
    held: Option<ReadBatch>,
}

impl Staged {
    /// The next batch, waiting for it; `None` once the file is done.
    pub fn next(&mut self) -> Result<Option<ReadBatch>, FileError> {
        if let Some(held) = self.held.take() {
            return Ok(Some(held));
        }
        if self.done {
            return Ok(None);
        }
        match self.workers[self.next].recv() {
            Ok(staged) => self.advance(staged),
            Err(_) => {
                self.done = true;
                Ok(None)
            }
        }
    }

    /// The next batch if it is staged already and `fits`, without waiting;
    /// a staged batch that does not fit is kept for [`Staged::next`].
    pub fn next_ready_if(
        &mut self,
        fits: impl FnOnce(&ReadBatch) -> bool,
    ) -> Result<Option<ReadBatch>, FileError> {
        let ready = match self.held.take() {
            Some(held) => Some(held),
            None if self.done => None,
            None => match self.workers[self.next].try_recv() {
                Ok(staged) => self.advance(staged)?,
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => {
                    self.done = true;
                    None
                }
            },
        };
        match ready {
            Some(batch) if fits(&batch) => Ok(Some(batch)),
            other => {
                self.held = other;
                Ok(None)
            }
        }
    }

    fn advance(
        &mut self,
        staged: Result<ReadBatch, StoreError>,
    ) -> Result<Option<ReadBatch>, FileError> {
        self.next = (self.next + 1) % self.workers.len();
        Ok(Some(staged?))
    }
}

/// Parses and stages the raw batches it is given, until the reader is done
/// or the committing side stopped.
fn parse_worker(
    open: &OpenFile,
    options: &IngestOptions,
    jobs: Receiver<RawBatch>,
    results: SyncSender<Result<ReadBatch, StoreError>>,
) {
    for raw in jobs {
        if results.send(stage_raw_batch(open, options, raw)).is_err() {
            return;
        }
    }
}

/// Parses each line of `raw` and stages what it yields.
fn stage_raw_batch(
    open: &OpenFile,
    options: &IngestOptions,
    raw: RawBatch,
) -> Result<ReadBatch, StoreError> {
    let mut staging = Staging::new(options.max_spans_per_trace);
    let mut start = 0;
    for line in &raw.lines {
        let bytes = &raw.bytes[start..line.end];
        start = line.end;
        if let Some(too_long) = &line.too_long {
            let key = content_key(&[bytes, &too_long.len.to_le_bytes()]);
            let detail = too_long.detail.clone();
            staging.reject_input(Reason::LineTooLong, detail, &origin(open, line, &key));
            continue;
        }
        let source = Source {
            file: open.path.clone(),
            line: line.line_no,
        };
        let parsed = trace::parse_line(bytes, &source);
        let key = if parsed.is_err() {
            content_key(&[bytes, &(bytes.len() as u64).to_le_bytes()])
        } else {
            String::new()
        };
        staging.add(parsed, &origin(open, line, &key))?;
    }
    Ok(ReadBatch {
        staging: staging.seal()?,
        end_offset: raw.end_offset,
        end_line: raw.end_line,
        lines: raw.n_lines,
    })
}

fn origin<'a>(open: &'a OpenFile, line: &RawLine, key: &'a str) -> Origin<'a> {
    Origin {
        file: &open.path,
        line: line.line_no,
        offset: line.offset,
        key,
    }
}

/// The reader thread: splits complete lines into raw batches and deals them
/// to the workers in turn.
fn read_raw_batches(
    open: &OpenFile,
    (start_offset, start_line): (u64, u64),
    options: &IngestOptions,
    workers: Vec<SyncSender<RawBatch>>,
) -> Result<(), FileError> {
    let mut file: &File = &open.file;
    file.seek(SeekFrom::Start(start_offset))?;
    let reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
    let max_line_bytes = usize::try_from(options.max_line_bytes).unwrap_or(usize::MAX);
    let mut lines = LineReader::new(reader, start_offset, max_line_bytes);
    let mut line = Vec::new();
    let mut line_no = start_line;
    let new_batch = |offset: u64, line: u64| RawBatch {
        bytes: Vec::with_capacity(BATCH_MAX_BYTES as usize),
        lines: Vec::new(),
        end_offset: offset,
        end_line: line,
        n_lines: 0,
    };
    let (mut batch, mut batch_start) = (new_batch(start_offset, start_line), start_offset);
    let mut turn = workers.iter().cycle();
    let mut send = |batch: RawBatch| {
        let worker = turn.next().expect("at least one parse worker");
        // An error means the committing side stopped; it reports why.
        worker.send(batch).is_ok()
    };
    let mut read_error = None;
    loop {
        let offset = lines.offset();
        let too_long = match lines.next_line(&mut line) {
            Err(err) => {
                read_error = Some(err);
                break;
            }
            Ok(NextLine::End { tail }) => {
                // An unterminated tail over the limit is reported once the
                // file has stopped growing; the cursor stays before it, and
                // the reject is stored once however often it is read.
                if tail > options.max_line_bytes && file_is_settled(open, options) {
                    batch.bytes.extend_from_slice(&line);
                    batch.lines.push(RawLine {
                        end: batch.bytes.len(),
                        line_no: line_no + 1,
                        offset,
                        too_long: Some(TooLong {
                            len: tail,
                            detail: too_long_tail_detail(tail, options.max_line_bytes),
                        }),
                    });
                }
                break;
            }
            Ok(NextLine::Line) => None,
            Ok(NextLine::TooLong { len }) => Some(TooLong {
                len,
                detail: too_long_detail(len, options.max_line_bytes),
            }),
        };
        line_no += 1;
        batch.n_lines += 1;
        if too_long.is_some() || !line.trim_ascii().is_empty() {
            batch.bytes.extend_from_slice(&line);
            batch.lines.push(RawLine {
                end: batch.bytes.len(),
                line_no,
                offset,
                too_long,
            });
        }
        (batch.end_offset, batch.end_line) = (lines.offset(), line_no);
        if batch.n_lines >= options.batch_lines as u64
            || lines.offset() - batch_start >= BATCH_MAX_BYTES
        {
            batch_start = lines.offset();
            let full = std::mem::replace(&mut batch, new_batch(batch_start, line_no));
            if !send(full) {
                return Ok(());
            }
        }
    }
    // Sent even when empty: its cursor records that the pass got here.
    send(batch);
    read_error.map_or(Ok(()), |err| Err(FileError::Io(err)))
}

/// Whether `open` is done being written: the pass finalizes everything, or
/// the file has not changed for the quiet period.
fn file_is_settled(open: &OpenFile, options: &IngestOptions) -> bool {
    options.finalize
        || open
            .file
            .metadata()
            .and_then(|metadata| metadata.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|quiet| quiet.as_secs() >= options.quiet_period_secs)
}
