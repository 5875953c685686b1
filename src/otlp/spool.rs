//! The append-only spool: where received spans become durable before the
//! client hears 200, and where ingestion reads them, exactly once, as it
//! reads any trace file.
//!
//! The spool is a folder of JSON-lines files, `spool-NNNNNNNNNNNN.jsonl`,
//! in `<data_dir>/otlp-spool/`. One writer thread appends: it takes every
//! request waiting, writes their lines with one `write`, calls `fdatasync`
//! once and only then acknowledges them all (group commit: a flood of small
//! requests costs one sync per batch, not one per request). A file that
//! reaches its size is closed and a new one begun, its creation made
//! durable by syncing the folder.
//!
//! Ingestion's file cursors say how far each spool file was read. Once a
//! closed file was read to its end, [`remove_ingested`] deletes its cursor
//! and then the file (that order: a new file reusing the inode must never
//! find a cursor to resume from). What the spool holds on disk is the
//! backlog; above `otlp.max_spool_bytes` appends are refused until
//! ingestion catches up, and the client is told to retry.
//!
//! A crash can leave the newest file ending in part of a line that was never
//! acknowledged; opening the spool cuts it off, so no reader waits on it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::store::{Store, StoreError};

/// Most bytes written (and synced) in one group commit.
const GROUP_MAX_BYTES: usize = 16 * 1024 * 1024;

/// The spool folder of a data folder.
pub fn spool_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("otlp-spool")
}

/// Why an append was refused.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(
        "{backlog} bytes of received spans wait for ingestion (otlp.max_spool_bytes = {max}); retry later"
    )]
    Full { backlog: u64, max: u64 },
    #[error("the receiver is shutting down")]
    Closed,
    #[error("writing the spool failed: {0}")]
    Io(String),
}

struct Job {
    lines: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The writing end of the spool.
pub struct Spool {
    dir: PathBuf,
    jobs: mpsc::Sender<Job>,
    /// Bytes in the spool's files, as last counted.
    backlog: Arc<AtomicU64>,
    max_backlog: u64,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Spool {
    /// Opens (creating) the spool in `dir` and starts its writer thread.
    /// At most `queue` appends wait for the writer; `appended` is called
    /// after each group commit (to start an ingestion pass).
    pub fn open(
        dir: &Path,
        max_backlog: u64,
        queue: usize,
        appended: Box<dyn Fn() + Send>,
    ) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let dir = fs::canonicalize(dir)?;
        let files = spool_files(&dir)?;
        let mut writer = Writer {
            dir: dir.clone(),
            // A file holds an eighth of the backlog allowed, so deleting
            // read files frees space in steps much smaller than the limit.
            rotate_bytes: (max_backlog / 8).clamp(64 * 1024, 64 * 1024 * 1024),
            next_seq: files.last().map_or(1, |(seq, _)| seq + 1),
            file: None,
            size: 0,
        };
        if let Some((_, newest)) = files.last() {
            writer.reopen(newest)?;
        }
        let backlog = Arc::new(AtomicU64::new(backlog_bytes(&dir)?));
        let (jobs, rx) = mpsc::channel(queue.max(1));
        let counted = Arc::clone(&backlog);
        let thread = std::thread::Builder::new()
            .name("otlp-spool".into())
            .spawn(move || writer.run(rx, &counted, appended))?;
        Ok(Spool {
            dir,
            jobs,
            backlog,
            max_backlog,
            writer: Some(thread),
        })
    }

    /// Appends `lines` (complete, newline-terminated) and returns once they
    /// are on disk.
    pub async fn append(&self, lines: Vec<u8>) -> Result<(), AppendError> {
        self.check_backlog()?;
        let (done, acked) = oneshot::channel();
        self.jobs
            .send(Job { lines, done })
            .await
            .map_err(|_| AppendError::Closed)?;
        match acked.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(AppendError::Io(err)),
            Err(_) => Err(AppendError::Closed),
        }
    }

    /// Refuses when the spool holds more than its limit, counting again
    /// first (ingestion may have removed files since the last count).
    fn check_backlog(&self) -> Result<(), AppendError> {
        if self.backlog.load(Ordering::Relaxed) <= self.max_backlog {
            return Ok(());
        }
        let backlog = backlog_bytes(&self.dir).map_err(|err| AppendError::Io(err.to_string()))?;
        self.backlog.store(backlog, Ordering::Relaxed);
        if backlog > self.max_backlog {
            return Err(AppendError::Full {
                backlog,
                max: self.max_backlog,
            });
        }
        Ok(())
    }

    /// Stops the writer once every append already queued is written.
    pub fn close(mut self) {
        let Some(thread) = self.writer.take() else {
            return;
        };
        drop(self.jobs);
        if thread.join().is_err() {
            tracing::error!("the OTLP spool writer panicked");
        }
    }
}

struct Writer {
    dir: PathBuf,
    rotate_bytes: u64,
    next_seq: u64,
    file: Option<File>,
    size: u64,
}

impl Writer {
    fn run(
        mut self,
        mut jobs: mpsc::Receiver<Job>,
        backlog: &AtomicU64,
        appended: Box<dyn Fn() + Send>,
    ) {
        let mut group: Vec<Job> = Vec::new();
        let mut buffer: Vec<u8> = Vec::new();
        while let Some(job) = jobs.blocking_recv() {
            group.push(job);
            let mut bytes = group[0].lines.len();
            while bytes < GROUP_MAX_BYTES {
                match jobs.try_recv() {
                    Ok(job) => {
                        bytes += job.lines.len();
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            let result = self.write_group(&mut group, &mut buffer);
            if result.is_ok() {
                backlog.fetch_add(bytes as u64, Ordering::Relaxed);
            }
            let result = result.map_err(|err| {
                tracing::error!(error = %err, dir = %self.dir.display(), "cannot write the OTLP spool");
                err.to_string()
            });
            for job in group.drain(..) {
                let _ = job.done.send(result.clone());
            }
            if result.is_ok() {
                appended();
            }
        }
    }

    fn write_group(&mut self, group: &mut [Job], buffer: &mut Vec<u8>) -> io::Result<()> {
        if self.file.is_none() || self.size >= self.rotate_bytes {
            self.begin_file()?;
        }
        let file = self.file.as_mut().expect("a spool file is open");
        buffer.clear();
        for job in group.iter() {
            buffer.extend_from_slice(&job.lines);
        }
        if let Err(err) = file.write_all(buffer).and_then(|()| file.sync_data()) {
            // What a failed write left is cut off where the file ended, so
            // the next append starts on a line of its own.
            let _ = file.set_len(self.size);
            return Err(err);
        }
        self.size += buffer.len() as u64;
        Ok(())
    }

    fn begin_file(&mut self) -> io::Result<()> {
        let path = self.dir.join(format!("spool-{:012}.jsonl", self.next_seq));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        File::open(&self.dir)?.sync_all()?;
        self.next_seq += 1;
        self.file = Some(file);
        self.size = 0;
        Ok(())
    }

    /// Continues the newest file, cut back to its last complete line.
    fn reopen(&mut self, path: &Path) -> io::Result<()> {
        let bytes = fs::read(path)?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let file = OpenOptions::new().append(true).open(path)?;
        if complete < bytes.len() {
            tracing::warn!(
                file = %path.display(), bytes = bytes.len() - complete,
                "cutting off a spool line that was never acknowledged"
            );
            file.set_len(complete as u64)?;
            file.sync_all()?;
        }
        self.size = complete as u64;
        self.file = Some(file);
        Ok(())
    }
}

/// The spool's files, oldest first, with their sequence numbers.
fn spool_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|name| name.strip_prefix("spool-")?.strip_suffix(".jsonl"))
            .and_then(|seq| seq.parse().ok())
        else {
            continue;
        };
        files.push((seq, entry.path()));
    }
    files.sort();
    Ok(files)
}

fn backlog_bytes(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for (_, path) in spool_files(dir)? {
        total += fs::metadata(&path).map_or(0, |m| m.len());
    }
    Ok(total)
}

/// Deletes the spool files that are closed (a newer one exists) and that
/// ingestion read to their end, cursor first. Returns the bytes freed.
pub fn remove_ingested(store: &mut Store, spool_dir: &Path) -> Result<u64, StoreError> {
    let Ok(dir) = fs::canonicalize(spool_dir) else {
        return Ok(0);
    };
    let Ok(mut files) = spool_files(&dir) else {
        return Ok(0);
    };
    files.pop();
    let mut freed = 0;
    for (_, path) in files {
        let Ok(metadata) = fs::metadata(&path) else {
            continue;
        };
        let key = path.to_string_lossy();
        if metadata.len() == 0 {
            let _ = fs::remove_file(&path);
            continue;
        }
        let Some(cursor) = store.cursor(&key)? else {
            continue;
        };
        let read_to_end = cursor.identity == crate::store::FileIdentity::of(&metadata)
            && cursor.offset == metadata.len();
        if !read_to_end {
            continue;
        }
        store.forget_cursor(&key)?;
        match fs::remove_file(&path) {
            Ok(()) => freed += metadata.len(),
            Err(err) => {
                tracing::warn!(file = %path.display(), error = %err, "cannot remove a read spool file")
            }
        }
    }
    Ok(freed)
}
