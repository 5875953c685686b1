//! Aggregate counts over everything ingested, for `whetstone traces stats`.

use super::{Store, StoreError};

/// What the store holds, in aggregate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub episodes: u64,
    /// Episodes per trace format (`otlp_json`, `whetstone_jsonl`, ...).
    pub episodes_by_format: Vec<(String, u64)>,
    /// Episodes per status (`ok`, `error`).
    pub episodes_by_status: Vec<(String, u64)>,
    /// Episodes per prompt name and version, most frequent first.
    pub episodes_by_prompt: Vec<PromptCount>,
    /// Tool executions per tool name, most used first.
    pub tools: Vec<ToolUsage>,
    /// Final rewards per reward name.
    pub rewards: Vec<RewardSummary>,
    /// Step rewards per reward name (`min` and `max` are per episode sums).
    pub step_rewards: Vec<StepRewardSummary>,
    /// `whetstone.*` attributes no reader uses (likely misspelled): name,
    /// places seen, and the first place.
    pub unknown_attributes: Vec<UnknownAttribute>,
    /// Spans waiting for the rest of their trace.
    pub pending_spans: u64,
    /// Traces those spans belong to.
    pub pending_traces: u64,
    /// Rejected input per reason code.
    pub rejects_by_reason: Vec<(String, u64)>,
    /// Trace files with a cursor.
    pub files: u64,
}

/// Number of episodes run with one prompt name and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptCount {
    pub name: Option<String>,
    pub version: Option<String>,
    pub episodes: u64,
}

/// How often a tool was executed, and how often it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolUsage {
    pub name: String,
    pub calls: u64,
    pub errors: u64,
    /// Episodes that executed the tool at least once.
    pub episodes: u64,
}

/// A recorded reject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReject {
    pub file: String,
    pub line: u64,
    /// Stable reason code, e.g. `invalid_json`.
    pub reason: String,
    pub detail: String,
}

/// Summary of one final reward over all episodes that have it.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardSummary {
    pub name: String,
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// Step rewards of one name over all episodes.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRewardSummary {
    pub name: String,
    /// Steps that carried it.
    pub count: u64,
    /// Mean value per step.
    pub mean: f64,
}

/// A `whetstone.*` attribute no reader uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownAttribute {
    pub name: String,
    /// Spans (file and line) it was seen on.
    pub places: u64,
    /// One of them, as `file:line`.
    pub example: String,
}

impl Store {
    /// Aggregate counts over the whole store.
    pub fn stats(&self) -> Result<Stats, StoreError> {
        let count = |sql: &str| -> rusqlite::Result<u64> {
            self.conn
                .query_row(sql, [], |row| row.get::<_, i64>(0))
                .map(|n| n as u64)
        };
        let pairs = |sql: &str| -> Result<Vec<(String, u64)>, StoreError> {
            self.query_rows(sql, [], |row| {
                Ok((row.get(0)?, row.get::<_, i64>(1)? as u64))
            })
        };
        let episodes_by_prompt = self.query_rows(
            "SELECT prompt_name, prompt_version, COUNT(*) AS n FROM episodes
                 GROUP BY prompt_name, prompt_version ORDER BY n DESC, prompt_name, prompt_version",
            [],
            |row| {
                Ok(PromptCount {
                    name: row.get(0)?,
                    version: row.get(1)?,
                    episodes: row.get::<_, i64>(2)? as u64,
                })
            },
        )?;
        let tools = self.query_rows(
            "SELECT tool_name, SUM(n_calls) AS calls, SUM(n_errors), COUNT(*)
                 FROM episode_tools GROUP BY tool_name ORDER BY calls DESC, tool_name",
            [],
            |row| {
                Ok(ToolUsage {
                    name: row.get(0)?,
                    calls: row.get::<_, i64>(1)? as u64,
                    errors: row.get::<_, i64>(2)? as u64,
                    episodes: row.get::<_, i64>(3)? as u64,
                })
            },
        )?;
        let rewards = self.query_rows(
            "SELECT name, COUNT(*), AVG(value), MIN(value), MAX(value)
                 FROM episode_rewards GROUP BY name ORDER BY name",
            [],
            |row| {
                Ok(RewardSummary {
                    name: row.get(0)?,
                    count: row.get::<_, i64>(1)? as u64,
                    mean: row.get(2)?,
                    min: row.get(3)?,
                    max: row.get(4)?,
                })
            },
        )?;
        let step_rewards = self.query_rows(
            "SELECT name, SUM(n), SUM(total) / SUM(n)
                 FROM episode_step_rewards GROUP BY name ORDER BY name",
            [],
            |row| {
                Ok(StepRewardSummary {
                    name: row.get(0)?,
                    count: row.get::<_, i64>(1)? as u64,
                    mean: row.get(2)?,
                })
            },
        )?;
        let unknown_attributes = self.query_rows(
            "SELECT name, COUNT(*), MIN(file || ':' || line)
                 FROM unknown_attributes GROUP BY name ORDER BY name",
            [],
            |row| {
                Ok(UnknownAttribute {
                    name: row.get(0)?,
                    places: row.get::<_, i64>(1)? as u64,
                    example: row.get(2)?,
                })
            },
        )?;
        let (pending_spans, pending_traces) = self.pending_counts()?;
        Ok(Stats {
            episodes: count("SELECT COUNT(*) FROM episodes")?,
            episodes_by_format: pairs(
                "SELECT format, COUNT(*) FROM episodes GROUP BY format ORDER BY format",
            )?,
            episodes_by_status: pairs(
                "SELECT status, COUNT(*) FROM episodes GROUP BY status ORDER BY status",
            )?,
            episodes_by_prompt,
            tools,
            rewards,
            step_rewards,
            unknown_attributes,
            pending_spans,
            pending_traces,
            rejects_by_reason: pairs(
                "SELECT reason, COUNT(*) FROM rejects GROUP BY reason ORDER BY reason",
            )?,
            files: count("SELECT COUNT(*) FROM file_cursors")?,
        })
    }

    /// Spans waiting for the rest of their trace, and how many traces.
    pub fn pending_counts(&self) -> Result<(u64, u64), StoreError> {
        let (spans, traces): (i64, i64) = self.conn.query_row(
            "SELECT COUNT(*), COUNT(DISTINCT trace_id) FROM pending_spans",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        Ok((spans as u64, traces as u64))
    }

    /// The first `limit` rejects recorded, oldest first.
    pub fn rejects(&self, limit: u64) -> Result<Vec<StoredReject>, StoreError> {
        let mut select = self.conn.prepare_cached(
            "SELECT file, line, reason, detail FROM rejects ORDER BY id LIMIT ?1",
        )?;
        let rows = select
            .query_map([limit.min(i64::MAX as u64) as i64], |row| {
                Ok(StoredReject {
                    file: row.get(0)?,
                    line: row.get::<_, i64>(1)? as u64,
                    reason: row.get(2)?,
                    detail: row.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}
