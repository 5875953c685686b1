//! The daemon's rounds: one row per APO round or PPO update, written when it
//! starts and again when it ends, so the API can list them and a restart can
//! resume one that was interrupted.
//!
//! The store knows no engine: a round's kind, subject (the prompt name, or
//! `policy`), settings and summary are opaque text to it.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, now_unix_ms};

/// Where a round is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundStatus {
    /// Started and not finished; after a crash, to be resumed.
    Running,
    Succeeded,
    Failed,
}

impl RoundStatus {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            RoundStatus::Running => "running",
            RoundStatus::Succeeded => "succeeded",
            RoundStatus::Failed => "failed",
        }
    }

    fn parse(text: &str) -> RoundStatus {
        match text {
            "succeeded" => RoundStatus::Succeeded,
            "failed" => RoundStatus::Failed,
            _ => RoundStatus::Running,
        }
    }
}

/// A round about to start.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRound<'a> {
    pub kind: &'a str,
    pub subject: &'a str,
    /// Why it started, for people (`50 new episodes`, `resumed`).
    pub trigger: &'a str,
    /// It covers the episodes with a store id up to this one.
    pub upto_episode_id: i64,
    /// The settings it runs with (JSON).
    pub settings: &'a str,
    pub output_dir: &'a str,
}

/// One stored round.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub id: i64,
    pub kind: String,
    pub subject: String,
    pub status: RoundStatus,
    pub trigger: String,
    pub upto_episode_id: i64,
    pub settings: String,
    pub output_dir: String,
    /// 1, plus one per resumption after an interruption.
    pub attempts: i64,
    pub started_at_unix_ms: i64,
    pub finished_at_unix_ms: Option<i64>,
    /// What the round produced (JSON), once it succeeded.
    pub summary: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

const ROUND_COLUMNS: &str = "id, kind, subject, status, trigger, upto_episode_id, settings, \
     output_dir, attempts, started_at_unix_ms, finished_at_unix_ms, summary, error";

fn round_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Round> {
    Ok(Round {
        id: row.get(0)?,
        kind: row.get(1)?,
        subject: row.get(2)?,
        status: RoundStatus::parse(&row.get::<_, String>(3)?),
        trigger: row.get(4)?,
        upto_episode_id: row.get(5)?,
        settings: row.get(6)?,
        output_dir: row.get(7)?,
        attempts: row.get(8)?,
        started_at_unix_ms: row.get(9)?,
        finished_at_unix_ms: row.get(10)?,
        summary: row.get(11)?,
        error: row.get(12)?,
    })
}

impl Store {
    /// Records a round as running and returns its id.
    pub fn start_round(&mut self, round: &NewRound<'_>) -> Result<i64, StoreError> {
        self.conn.execute(
            "INSERT INTO rounds (kind, subject, status, trigger, upto_episode_id, settings,
                                 output_dir, started_at_unix_ms)
             VALUES (?1, ?2, 'running', ?3, ?4, ?5, ?6, ?7)",
            params![
                round.kind,
                round.subject,
                round.trigger,
                round.upto_episode_id,
                round.settings,
                round.output_dir,
                now_unix_ms()
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Sets where a round writes its outputs (known once its id is).
    pub fn set_round_output_dir(&mut self, id: i64, output_dir: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE rounds SET output_dir = ?2 WHERE id = ?1",
            params![id, output_dir],
        )?;
        Ok(())
    }

    /// Counts one more attempt of an interrupted round being resumed.
    pub fn resume_round(&mut self, id: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE rounds SET attempts = attempts + 1 WHERE id = ?1",
            [id],
        )?;
        Ok(())
    }

    /// Records how a round ended: its summary (JSON) or its error.
    pub fn finish_round(&mut self, id: i64, outcome: Result<&str, &str>) -> Result<(), StoreError> {
        let (status, summary, error) = match outcome {
            Ok(summary) => (RoundStatus::Succeeded, Some(summary), None),
            Err(error) => (RoundStatus::Failed, None, Some(error)),
        };
        self.conn.execute(
            "UPDATE rounds SET status = ?2, summary = ?3, error = ?4, finished_at_unix_ms = ?5
             WHERE id = ?1",
            params![id, status.as_str(), summary, error, now_unix_ms()],
        )?;
        Ok(())
    }

    /// The newest rounds first, at most `limit`.
    pub fn rounds(&self, limit: u64) -> Result<Vec<Round>, StoreError> {
        self.query_rows(
            &format!("SELECT {ROUND_COLUMNS} FROM rounds ORDER BY id DESC LIMIT ?1"),
            [limit as i64],
            round_from_row,
        )
    }

    /// One round by id.
    pub fn round(&self, id: i64) -> Result<Option<Round>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {ROUND_COLUMNS} FROM rounds WHERE id = ?1"),
                [id],
                round_from_row,
            )
            .optional()?)
    }

    /// Rounds still marked running: interrupted by a crash when no daemon
    /// runs them, oldest first.
    pub fn running_rounds(&self) -> Result<Vec<Round>, StoreError> {
        self.query_rows(
            &format!("SELECT {ROUND_COLUMNS} FROM rounds WHERE status = 'running' ORDER BY id"),
            [],
            round_from_row,
        )
    }

    /// The newest succeeded round of `kind` on `subject`.
    pub fn last_succeeded_round(
        &self,
        kind: &str,
        subject: &str,
    ) -> Result<Option<Round>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {ROUND_COLUMNS} FROM rounds
                     WHERE kind = ?1 AND subject = ?2 AND status = 'succeeded'
                     ORDER BY id DESC LIMIT 1"
                ),
                [kind, subject],
                round_from_row,
            )
            .optional()?)
    }

    /// The highest episode id stored (0 for none).
    pub fn max_episode_id(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM episodes", [], |row| {
                row.get(0)
            })?)
    }

    /// Episodes with an id above `after_id` (of `prompt_name` when given), and
    /// the decisions they hold: every tool call, plus the final answer of each.
    pub fn arrivals_since(
        &self,
        after_id: i64,
        prompt_name: Option<&str>,
    ) -> Result<Arrivals, StoreError> {
        let episodes: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM episodes WHERE id > ?1 AND (?2 IS NULL OR prompt_name = ?2)",
            params![after_id, prompt_name],
            |row| row.get(0),
        )?;
        let tool_calls: i64 = self.conn.query_row(
            "SELECT COALESCE(SUM(t.n_calls), 0) FROM episode_tools t
             JOIN episodes e ON e.id = t.episode_id
             WHERE t.episode_id > ?1 AND (?2 IS NULL OR e.prompt_name = ?2)",
            params![after_id, prompt_name],
            |row| row.get(0),
        )?;
        Ok(Arrivals {
            episodes: episodes as u64,
            decisions: (episodes + tool_calls) as u64,
        })
    }
}

/// What arrived since some episode id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Arrivals {
    pub episodes: u64,
    pub decisions: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_is_started_resumed_finished_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let new = NewRound {
            kind: "apo",
            subject: "Controller",
            trigger: "60 new episodes",
            upto_episode_id: 60,
            settings: "{}",
            output_dir: "/out/rounds/1-apo",
        };
        let id = store.start_round(&new).unwrap();
        assert_eq!(store.running_rounds().unwrap().len(), 1);
        store.resume_round(id).unwrap();
        store.finish_round(id, Ok("{\"ok\":true}")).unwrap();
        let round = store.round(id).unwrap().unwrap();
        assert_eq!(round.status, RoundStatus::Succeeded);
        assert_eq!(round.attempts, 2);
        assert!(store.running_rounds().unwrap().is_empty());
        let last = store.last_succeeded_round("apo", "Controller").unwrap();
        assert_eq!(last.map(|r| r.id), Some(id));
        let failed = store.start_round(&new).unwrap();
        store.finish_round(failed, Err("endpoint down")).unwrap();
        let listed = store.rounds(10).unwrap();
        assert_eq!(
            listed.iter().map(|r| r.id).collect::<Vec<_>>(),
            [failed, id]
        );
        assert_eq!(listed[0].error.as_deref(), Some("endpoint down"));
    }
}
