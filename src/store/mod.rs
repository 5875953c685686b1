//! Whetstone's embedded state: one SQLite database, `<data_dir>/whetstone.db`.
//!
//! Everything that must survive a restart lives here: ingested episodes,
//! how far each trace file has been read, spans waiting for the rest of their
//! trace, and rejected input. Ingestion writes through [`IngestTx`], one
//! transaction per batch, which is what makes it exactly-once; APO and RL read
//! episodes back with [`Store::visit_episodes`].
//!
//! The schema is versioned in code ([`migrations::MIGRATIONS`]); opening a
//! database brings it up to date, and refuses one written by a newer binary.

mod body;
mod cursor;
mod episodes;
mod ingest_tx;
pub mod migrations;
mod registry;
mod rounds;
mod stats;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, TransactionBehavior};

pub use body::BodyEncoder;
pub use cursor::{FileCursor, FileIdentity, Layout};
pub use episodes::{EpisodeFilter, StoredEpisode};
pub use ingest_tx::{IngestTx, RejectRow, TraceState};
pub use registry::{AbTestRow, AuditEntry, Change, PromptVersion};
pub use rounds::{Arrivals, NewRound, Round, RoundStatus};
pub use stats::{
    PromptCount, RewardSummary, Stats, StepRewardSummary, StoredReject, ToolUsage, UnknownAttribute,
};

/// File name of the database inside the data directory.
pub const DB_FILE_NAME: &str = "whetstone.db";

/// How long a writer waits for another process holding the write lock (the
/// daemon and a CLI import may share the database) before failing, unless
/// the opener says otherwise ([`Store::open_with_busy_timeout`]).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "database {path} has schema version {found}, but this whetstone supports at most \
         version {supported}; use a newer whetstone or another data directory"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "database {path} has schema version {found} and needs migrating to {supported}, \
         which cannot be done read-only; run whetstone once where it is writable"
    )]
    ReadOnlyOld {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("migrating database to schema version {version}: {source}")]
    Migrate {
        version: usize,
        source: rusqlite::Error,
    },
    #[error("stored {what} is not valid JSON: {source}")]
    CorruptBody {
        what: String,
        source: serde_json::Error,
    },
    #[error("stored form of {what}: {source}")]
    Body {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

impl StoreError {
    /// Whether another connection held a lock past the busy timeout: the
    /// same request may well succeed later.
    pub fn is_busy(&self) -> bool {
        let sqlite = match self {
            StoreError::Sqlite(err)
            | StoreError::Open { source: err, .. }
            | StoreError::Migrate { source: err, .. } => err,
            _ => return false,
        };
        matches!(
            sqlite.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }
}

/// An open Whetstone database.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/whetstone.db` and migrates it
    /// to the current schema.
    ///
    /// Durability: the database runs in WAL mode with `synchronous=NORMAL`.
    /// A killed process loses nothing that was committed (the WAL is written
    /// before `COMMIT` returns). On power loss or an OS crash, the last few
    /// committed transactions may be rolled back, but the database is never
    /// corrupted; for ingestion that only means the affected lines are read
    /// again from the older cursor, and dedup keeps that exactly-once.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_with_busy_timeout(data_dir, BUSY_TIMEOUT)
    }

    /// [`Store::open`], waiting at most `busy_timeout` for another
    /// connection's lock before a statement fails with "database is locked".
    pub fn open_with_busy_timeout(
        data_dir: &Path,
        busy_timeout: Duration,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DB_FILE_NAME);
        let conn = Connection::open(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        let configure = || -> rusqlite::Result<()> {
            conn.busy_timeout(busy_timeout)?;
            // Episode rows are a few KB: with 16 KiB pages (for a new
            // database; an existing one keeps its size) several share a
            // page instead of each taking most of a 4 KiB one.
            conn.pragma_update(None, "page_size", 16384)?;
            let mode: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(%mode, "SQLite refused WAL mode; using its journal mode instead");
            }
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            // 32 MiB of page cache (SQLite's default is 2 MiB): the random
            // trace-id index stays in memory while a large import grows it.
            conn.pragma_update(None, "cache_size", -32768)?;
            // Foreign keys stay unenforced (SQLite's default): the child
            // rows of an episode are written only right after it, in its
            // transaction, and enforcing would cost every insert a
            // statement journal. Nothing deletes episodes yet; what will must
            // delete their rewards and tools too.
            conn.pragma_update(None, "foreign_keys", false)?;
            Ok(())
        };
        configure().map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        let mut store = Store { conn };
        store.migrate(&path)?;
        Ok(store)
    }

    /// Opens `<data_dir>/whetstone.db` for reading only, for commands that
    /// only look (`traces stats`, `status`) where the data folder is not
    /// writable (a read-only mount, another user's folder). Nothing is
    /// created or migrated: the database must exist at this binary's schema.
    pub fn open_read_only(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join(DB_FILE_NAME);
        let open_error = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        if !path.is_file() {
            return Err(open_error(rusqlite::Error::InvalidPath(path.clone())));
        }
        // A WAL database needs its -shm file; where that cannot be created,
        // `immutable=1` reads the file as it is (no writer can be running).
        let mut url = url::Url::from_file_path(&path)
            .map_err(|()| open_error(rusqlite::Error::InvalidPath(path.clone())))?;
        url.set_query(Some("mode=ro"));
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI;
        let readable = |conn: Connection| -> rusqlite::Result<Connection> {
            conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |_| Ok(()))?;
            Ok(conn)
        };
        let conn = match Connection::open_with_flags(url.as_str(), flags).and_then(readable) {
            Ok(conn) => conn,
            Err(_) => {
                url.set_query(Some("mode=ro&immutable=1"));
                Connection::open_with_flags(url.as_str(), flags)
                    .and_then(readable)
                    .map_err(open_error)?
            }
        };
        let store = Store { conn };
        let found = store.schema_version()?;
        let supported = migrations::MIGRATIONS.len() as i64;
        if found > supported {
            return Err(StoreError::TooNew {
                path,
                found,
                supported,
            });
        }
        if found < supported {
            return Err(StoreError::ReadOnlyOld {
                path,
                found,
                supported,
            });
        }
        Ok(store)
    }

    /// Opens the store for writing, or where that fails (a read-only data
    /// folder), for reading only, saying so.
    pub fn open_for_reading(data_dir: &Path) -> Result<Store, StoreError> {
        match Store::open(data_dir) {
            Ok(store) => Ok(store),
            Err(err @ StoreError::TooNew { .. }) => Err(err),
            Err(err) => {
                let store = Store::open_read_only(data_dir).map_err(|_| err)?;
                tracing::info!(data_dir = %data_dir.display(), "data folder not writable; reading the store read-only");
                Ok(store)
            }
        }
    }

    /// Every row `sql` selects with `params`, each made by `map`.
    fn query_rows<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut statement = self.conn.prepare(sql)?;
        let rows = statement.query_map(params, map)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))?)
    }

    fn migrate(&mut self, path: &Path) -> Result<(), StoreError> {
        let supported = migrations::MIGRATIONS.len() as i64;
        let found = self.schema_version()?;
        if found > supported {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found,
                supported,
            });
        }
        for (idx, sql) in migrations::MIGRATIONS
            .iter()
            .enumerate()
            .skip(found as usize)
        {
            let version = idx + 1;
            let apply = |conn: &mut Connection| -> rusqlite::Result<()> {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                // Another process may have migrated while we waited for the lock.
                let current: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
                if current >= version as i64 {
                    return Ok(());
                }
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", version as i64)?;
                tx.commit()
            };
            apply(&mut self.conn).map_err(|source| StoreError::Migrate { version, source })?;
        }
        Ok(())
    }

    /// Starts one ingestion batch: a write transaction that commits episodes,
    /// spans, rejects and the file cursor together, or none of them.
    pub fn begin_ingest(&mut self) -> Result<IngestTx<'_>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        Ok(IngestTx::new(tx))
    }
}

/// Milliseconds since the Unix epoch, for `*_unix_ms` columns.
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_store_has_every_table_apo_lays_out_for_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tables = |conn: &Connection| -> Vec<String> {
            let mut statement = conn
                .prepare("SELECT name FROM sqlite_master WHERE name LIKE 'apo%' OR name LIKE 'llm%' ORDER BY name")
                .unwrap();
            statement
                .query_map([], |row| row.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let scratch = Connection::open_in_memory().unwrap();
        crate::apo::cache::create_tables(&scratch).unwrap();
        assert_eq!(tables(&store.conn), tables(&scratch));
        assert!(tables(&scratch).contains(&"apo_eval_feedback".to_string()));
    }

    #[test]
    fn read_only_open_reads_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            Store::open_read_only(dir.path()).is_err(),
            "no database yet"
        );
        drop(Store::open(dir.path()).unwrap());
        let store = Store::open_read_only(dir.path()).unwrap();
        assert_eq!(store.stats().unwrap().episodes, 0);
        let write = store.conn.execute("DELETE FROM episodes", []);
        assert!(write.is_err(), "a read-only store must not write");
    }

    #[test]
    fn open_creates_db_in_wal_mode_at_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        assert!(dir.path().join("data").join(DB_FILE_NAME).exists());
        assert_eq!(
            store.schema_version().unwrap(),
            migrations::MIGRATIONS.len() as i64
        );
        let mode: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = store
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "synchronous=NORMAL");
    }

    #[test]
    fn reopen_keeps_data_and_version() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .conn
                .execute(
                    "INSERT INTO rejects (file, line, reason, detail, key, rejected_at_unix_ms)
                     VALUES ('f', 1, 'invalid_json', 'd', 'k', 0)",
                    [],
                )
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let n: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM rejects", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn json_text_bodies_of_a_version_2_database_read_after_migrating() {
        let dir = tempfile::tempdir().unwrap();
        let body = r#"{"trace_id":"t1","format":"whetstone_jsonl","prompt":{"name":"p","version":"1","text":null},"input":"hi","steps":[],"rewards":{},"status":"ok","start_time_unix_nano":null,"duration_ms":null,"usage":{"input_tokens":0,"output_tokens":0},"policy_version":null,"source":{"file":"a.jsonl","line":1}}"#;
        {
            let conn = Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
            for migration in &migrations::MIGRATIONS[..2] {
                conn.execute_batch(migration).unwrap();
            }
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute(
                "INSERT INTO episodes (trace_id, format, status, n_steps, source_file,
                     source_line, ingested_at_unix_ms, body)
                 VALUES ('t1', 'whetstone_jsonl', 'ok', 0, 'a.jsonl', 1, 0, ?1)",
                [body],
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.schema_version().unwrap(),
            migrations::MIGRATIONS.len() as i64
        );
        let episode = store.episode("t1").unwrap().unwrap().episode;
        assert_eq!(episode.input.as_deref(), Some("hi"));
    }

    #[test]
    fn newer_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let too_new = migrations::MIGRATIONS.len() as i64 + 1;
        let conn = Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
        conn.pragma_update(None, "user_version", too_new).unwrap();
        drop(conn);
        let err = Store::open(dir.path())
            .err()
            .expect("must refuse a newer db");
        assert!(matches!(err, StoreError::TooNew { found, .. } if found == too_new));
        assert!(err.to_string().contains("newer whetstone"), "{err}");
    }

    #[test]
    fn migrations_apply_in_order_from_an_older_version() {
        // A database at version 0 with foreign data gets every migration.
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
        conn.execute_batch("CREATE TABLE unrelated (x)").unwrap();
        drop(conn);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.schema_version().unwrap(),
            migrations::MIGRATIONS.len() as i64
        );
        let n: i64 = store
            .conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('episodes', 'unrelated')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 2);
    }
}
