//! File cursors: how far each trace file has been read, and how to tell that
//! the file at that path is still the one that was read.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};

/// Which file a path pointed to: device and inode on Unix (0 elsewhere, where
/// only the fingerprint detects a replaced file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    pub device: u64,
    pub inode: u64,
}

impl FileIdentity {
    /// The identity of an open file.
    pub fn of(metadata: &std::fs::Metadata) -> FileIdentity {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            FileIdentity {
                device: metadata.dev(),
                inode: metadata.ino(),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = metadata;
            FileIdentity {
                device: 0,
                inode: 0,
            }
        }
    }
}

/// How a file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One record per line; read incrementally.
    Lines,
    /// One JSON document per file; read whole once complete.
    Document,
}

impl Layout {
    fn as_str(self) -> &'static str {
        match self {
            Layout::Lines => "lines",
            Layout::Document => "document",
        }
    }
}

/// The committed read position of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCursor {
    /// Canonical path of the file.
    pub path: String,
    pub identity: FileIdentity,
    /// End of the last fully processed line; for a document, its size once
    /// processed and 0 while it is still incomplete.
    pub offset: u64,
    /// Number of lines before `offset`, so line numbers stay right on resume.
    pub line: u64,
    /// Hash (128 bits of SHA-256, hex) of the first `fingerprint_len` bytes.
    pub fingerprint: String,
    pub fingerprint_len: u64,
    pub layout: Layout,
    /// When this cursor last changed.
    pub updated_at_unix_ms: i64,
}

impl Store {
    /// The committed cursor of `path`, if the file was read before.
    pub fn cursor(&self, path: &str) -> Result<Option<FileCursor>, StoreError> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {CURSOR_COLUMNS} FROM file_cursors WHERE path = ?1"),
                [path],
                cursor_from_row,
            )
            .optional()?;
        Ok(row)
    }

    /// Every committed cursor.
    pub fn cursors(&self) -> Result<Vec<FileCursor>, StoreError> {
        self.query_rows(
            &format!("SELECT {CURSOR_COLUMNS} FROM file_cursors"),
            [],
            cursor_from_row,
        )
    }

    /// Forgets the cursor of `path` (a file about to be deleted, so that a
    /// new file there, or one reusing its inode, is read from the start).
    pub fn forget_cursor(&mut self, path: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM file_cursors WHERE path = ?1", [path])?;
        Ok(())
    }

    /// Moves cursors to the paths their files were renamed to, all in one
    /// transaction: each `(cursor, new_path)` leaves `cursor.path` (a file
    /// found there later is a new one) and is stored under `new_path`.
    pub fn move_cursors(&mut self, moves: &[(FileCursor, String)]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for (cursor, _) in moves {
            tx.execute("DELETE FROM file_cursors WHERE path = ?1", [&cursor.path])?;
        }
        for (cursor, new_path) in moves {
            let moved = FileCursor {
                path: new_path.clone(),
                ..cursor.clone()
            };
            upsert(&tx, &moved)?;
        }
        tx.commit()?;
        Ok(())
    }
}

const CURSOR_COLUMNS: &str =
    "path, device, inode, offset, line, fingerprint, fingerprint_len, layout, updated_at_unix_ms";

fn cursor_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<FileCursor> {
    let layout: String = row.get(7)?;
    Ok(FileCursor {
        path: row.get(0)?,
        identity: FileIdentity {
            device: row.get::<_, i64>(1)? as u64,
            inode: row.get::<_, i64>(2)? as u64,
        },
        offset: row.get::<_, i64>(3)? as u64,
        line: row.get::<_, i64>(4)? as u64,
        fingerprint: row.get(5)?,
        fingerprint_len: row.get::<_, i64>(6)? as u64,
        layout: if layout == "document" {
            Layout::Document
        } else {
            Layout::Lines
        },
        updated_at_unix_ms: row.get(8)?,
    })
}

/// Writes `cursor` (insert or replace) inside a transaction.
pub(super) fn upsert(conn: &rusqlite::Connection, cursor: &FileCursor) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO file_cursors
             (path, device, inode, offset, line, fingerprint, fingerprint_len, layout,
              updated_at_unix_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (path) DO UPDATE SET
             device = excluded.device, inode = excluded.inode, offset = excluded.offset,
             line = excluded.line, fingerprint = excluded.fingerprint,
             fingerprint_len = excluded.fingerprint_len, layout = excluded.layout,
             updated_at_unix_ms = excluded.updated_at_unix_ms",
    )?
    .execute(params![
        cursor.path,
        cursor.identity.device as i64,
        cursor.identity.inode as i64,
        cursor.offset as i64,
        cursor.line as i64,
        cursor.fingerprint,
        cursor.fingerprint_len as i64,
        cursor.layout.as_str(),
        cursor.updated_at_unix_ms,
    ])?;
    Ok(())
}
