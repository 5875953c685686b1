//! The read side of episodes, for APO, RL and the CLI.
//!
//! Episodes are streamed row by row ([`Store::visit_episodes`]) so a consumer
//! can go over a large history without holding it all in memory; ids grow
//! with ingestion order, so `after_id` lets a consumer pick up only what was
//! ingested since it last looked.

use std::ops::ControlFlow;

use rusqlite::params;
use rusqlite::types::ValueRef;

use super::body::decode_episode;
use super::{Store, StoreError};
use crate::trace::Episode;

/// Which episodes to read. The default reads all of them, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpisodeFilter {
    /// Only episodes run with this prompt name.
    pub prompt_name: Option<String>,
    /// Only episodes run with this prompt version.
    pub prompt_version: Option<String>,
    /// Only episodes with a store id greater than this.
    pub after_id: Option<i64>,
    /// Only episodes with a store id at most this.
    pub upto_id: Option<i64>,
    /// At most this many episodes.
    pub limit: Option<u64>,
    /// Newest (highest id) first instead of oldest first.
    pub newest_first: bool,
}

/// An episode with its store id and ingestion time.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEpisode {
    /// Store id; increases with ingestion order.
    pub id: i64,
    pub ingested_at_unix_ms: i64,
    pub episode: Episode,
}

impl Store {
    /// Calls `visit` with each matching episode in ingestion order (or
    /// newest first), until it returns `ControlFlow::Break`. Reads go by
    /// the id index: a bounded range costs what it holds, not the store.
    pub fn visit_episodes(
        &self,
        filter: &EpisodeFilter,
        mut visit: impl FnMut(StoredEpisode) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        const SELECT: &str = "SELECT id, ingested_at_unix_ms, body FROM episodes
             WHERE (?1 IS NULL OR prompt_name = ?1)
               AND (?2 IS NULL OR prompt_version = ?2)
               AND id > ?3 AND id <= ?4";
        let mut select = if filter.newest_first {
            self.conn
                .prepare_cached(&format!("{SELECT} ORDER BY id DESC LIMIT ?5"))?
        } else {
            self.conn
                .prepare_cached(&format!("{SELECT} ORDER BY id LIMIT ?5"))?
        };
        let limit = filter.limit.map_or(-1, |l| l.min(i64::MAX as u64) as i64);
        let mut rows = select.query(params![
            filter.prompt_name,
            filter.prompt_version,
            filter.after_id.unwrap_or(i64::MIN),
            filter.upto_id.unwrap_or(i64::MAX),
            limit,
        ])?;
        while let Some(row) = rows.next()? {
            let stored = stored_episode(row.get(0)?, row.get(1)?, row.get_ref(2)?)?;
            if visit(stored).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// All matching episodes, in ingestion order.
    pub fn load_episodes(&self, filter: &EpisodeFilter) -> Result<Vec<StoredEpisode>, StoreError> {
        let mut episodes = Vec::new();
        self.visit_episodes(filter, |stored| {
            episodes.push(stored);
            ControlFlow::Continue(())
        })?;
        Ok(episodes)
    }

    /// The episode with this trace id, if ingested.
    pub fn episode(&self, trace_id: &str) -> Result<Option<StoredEpisode>, StoreError> {
        let mut select = self.conn.prepare_cached(
            "SELECT id, ingested_at_unix_ms, body FROM episodes WHERE trace_id = ?1",
        )?;
        let mut rows = select.query([trace_id])?;
        rows.next()?
            .map(|row| stored_episode(row.get(0)?, row.get(1)?, row.get_ref(2)?))
            .transpose()
    }

    /// The lowest and highest episode id stored, `None` when there is none.
    pub fn episode_id_range(&self) -> Result<Option<(i64, i64)>, StoreError> {
        let range: (Option<i64>, Option<i64>) =
            self.conn
                .query_row("SELECT MIN(id), MAX(id) FROM episodes", [], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
        Ok(range.0.zip(range.1))
    }

    /// Number of episodes with an id in `from..=to` (by the id index).
    pub fn episode_count_between(&self, from: i64, to: i64) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM episodes WHERE id BETWEEN ?1 AND ?2",
            params![from, to],
            |row| row.get(0),
        )?;
        Ok(n as u64)
    }

    /// Number of episodes stored.
    pub fn episode_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM episodes", [], |row| row.get(0))?;
        Ok(n as u64)
    }
}

fn stored_episode(
    id: i64,
    ingested_at_unix_ms: i64,
    body: ValueRef<'_>,
) -> Result<StoredEpisode, StoreError> {
    Ok(StoredEpisode {
        id,
        ingested_at_unix_ms,
        episode: decode_episode(id, body)?,
    })
}
