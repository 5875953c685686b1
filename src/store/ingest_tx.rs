//! The write side of ingestion: one transaction per batch.
//!
//! Everything a batch of trace input produces (new episodes, pending spans,
//! rejects, assembled traces) and the file cursor that says the batch was
//! read are committed together. A crash before `commit` loses the whole batch
//! and the cursor with it, so the batch is simply read again; every insert is
//! idempotent (episodes by trace id, spans by trace and span id, rejects by
//! their key), so a batch read twice is stored once.

use std::collections::BTreeMap;

use rusqlite::{Transaction, params};

use super::StoreError;
use super::cursor::{self, FileCursor};
use crate::trace::{Episode, Span, Status, StepKind};

/// A write transaction for one ingestion batch; dropped without
/// [`IngestTx::commit`], it rolls back.
pub struct IngestTx<'c> {
    tx: Transaction<'c>,
}

/// One rejected piece of input, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectRow {
    pub file: String,
    pub line: u64,
    /// Byte offset of the rejected line, when the reject is about one line.
    pub offset: Option<u64>,
    /// Stable reason code ([`crate::trace::Reason::as_str`]).
    pub reason: &'static str,
    pub detail: String,
    /// Identifies the rejected content, so re-reading it does not record the
    /// same reject twice.
    pub key: String,
}

/// What the store already holds of a trace, looked up once per batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TraceState {
    /// The trace is an episode already, or was rejected as a whole.
    pub finalized: bool,
    /// Spans of it waiting in `pending_spans`.
    pub pending_spans: u64,
    /// Whether its root span is among them.
    pub pending_root: bool,
}

impl<'c> IngestTx<'c> {
    pub(super) fn new(tx: Transaction<'c>) -> IngestTx<'c> {
        IngestTx { tx }
    }

    /// Inserts an episode, stored as `body` (from [`super::BodyEncoder`]),
    /// unless one with the same trace id exists, with the ids of the spans it
    /// was assembled from. Returns whether it was new.
    pub fn insert_episode(
        &self,
        episode: &Episode,
        body: &[u8],
        span_ids: &[String],
        now_unix_ms: i64,
    ) -> Result<bool, StoreError> {
        let status = match episode.status {
            Status::Ok => "ok",
            Status::Error => "error",
        };
        let inserted = self
            .tx
            .prepare_cached(
                "INSERT INTO episodes
                     (trace_id, format, prompt_name, prompt_version, status,
                      start_time_unix_nano, n_steps, source_file, source_line,
                      ingested_at_unix_ms, body, span_ids)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (trace_id) DO NOTHING",
            )?
            .execute(params![
                episode.trace_id,
                episode.format.as_str(),
                episode.prompt.name,
                episode.prompt.version,
                status,
                episode.start_time_unix_nano.map(|t| t as i64),
                episode.steps.len() as i64,
                episode.source.file,
                episode.source.line as i64,
                now_unix_ms,
                body,
                span_ids.join(" "),
            ])?;
        if inserted == 0 {
            return Ok(false);
        }
        let episode_id = self.tx.last_insert_rowid();
        let mut insert_reward = self.tx.prepare_cached(
            "INSERT OR REPLACE INTO episode_rewards (episode_id, name, value) VALUES (?1, ?2, ?3)",
        )?;
        for (name, value) in &episode.rewards {
            insert_reward.execute(params![episode_id, name, value])?;
        }
        let mut tools: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for step in episode.steps.iter().filter(|s| s.kind == StepKind::Tool) {
            let counts = tools.entry(step.name.as_str()).or_default();
            counts.0 += 1;
            counts.1 += i64::from(step.error);
        }
        let mut insert_tool = self.tx.prepare_cached(
            "INSERT INTO episode_tools (episode_id, tool_name, n_calls, n_errors)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (name, (n_calls, n_errors)) in tools {
            insert_tool.execute(params![episode_id, name, n_calls, n_errors])?;
        }
        let mut step_rewards: BTreeMap<&str, (i64, f64)> = BTreeMap::new();
        for (name, value) in episode.steps.iter().flat_map(|s| &s.rewards) {
            let entry = step_rewards.entry(name.as_str()).or_default();
            entry.0 += 1;
            entry.1 += value;
        }
        let mut insert_step_reward = self.tx.prepare_cached(
            "INSERT OR REPLACE INTO episode_step_rewards (episode_id, name, n, total)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (name, (n, total)) in step_rewards {
            insert_step_reward.execute(params![episode_id, name, n, total])?;
        }
        Ok(true)
    }

    /// Records that attribute `name`, which no reader uses, was seen at
    /// `file:line` (once per name and place).
    pub fn insert_unknown_attribute(
        &self,
        name: &str,
        file: &str,
        line: u64,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT OR IGNORE INTO unknown_attributes (name, file, line) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![name, file, line as i64])?;
        Ok(())
    }

    /// Records a reject unless the same one is already recorded. Returns
    /// whether it was new.
    pub fn insert_reject(&self, reject: &RejectRow, now_unix_ms: i64) -> Result<bool, StoreError> {
        let inserted = self
            .tx
            .prepare_cached(
                "INSERT INTO rejects (file, line, offset, reason, detail, key, rejected_at_unix_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (file, line, reason, key) DO NOTHING",
            )?
            .execute(params![
                reject.file,
                reject.line as i64,
                reject.offset.map(|o| o as i64),
                reject.reason,
                reject.detail,
                reject.key,
                now_unix_ms,
            ])?;
        Ok(inserted > 0)
    }

    /// What the store holds of `trace_id`.
    pub fn trace_state(&self, trace_id: &str) -> Result<TraceState, StoreError> {
        let mut select = self.tx.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM episodes WHERE trace_id = ?1)
                    OR EXISTS (SELECT 1 FROM consumed_spans WHERE trace_id = ?1),
                    (SELECT COUNT(*) FROM pending_spans WHERE trace_id = ?1),
                    EXISTS (SELECT 1 FROM pending_spans WHERE trace_id = ?1 AND is_root)",
        )?;
        Ok(select.query_row([trace_id], |row| {
            Ok(TraceState {
                finalized: row.get(0)?,
                pending_spans: row.get::<_, i64>(1)? as u64,
                pending_root: row.get(2)?,
            })
        })?)
    }

    /// Whether a span of a finalized trace is one it was built from (a
    /// re-read) rather than a new one (late).
    pub fn span_consumed(&self, trace_id: &str, span_id: &str) -> Result<bool, StoreError> {
        let mut select = self.tx.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM consumed_spans WHERE trace_id = ?1 AND span_id = ?2)
                 OR EXISTS (SELECT 1 FROM episodes WHERE trace_id = ?1
                            AND instr(' ' || span_ids || ' ', ' ' || ?2 || ' ') > 0)",
        )?;
        Ok(select.query_row(params![trace_id, span_id], |row| row.get(0))?)
    }

    /// Whether a span is already pending.
    pub fn span_pending(&self, trace_id: &str, span_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .tx
            .prepare_cached("SELECT 1 FROM pending_spans WHERE trace_id = ?1 AND span_id = ?2")?
            .exists(params![trace_id, span_id])?)
    }

    /// Keeps a span of an unfinished trace until the trace completes.
    pub fn insert_pending(&self, span: &Span, now_unix_ms: i64) -> Result<(), StoreError> {
        let body = serde_json::to_string(span).map_err(|source| StoreError::CorruptBody {
            what: format!("span {}/{}", span.trace_id, span.span_id),
            source,
        })?;
        self.tx
            .prepare_cached(
                "INSERT OR IGNORE INTO pending_spans
                     (trace_id, span_id, is_root, arrived_at_unix_ms, body)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                span.trace_id,
                span.span_id,
                span.is_root(),
                now_unix_ms,
                body
            ])?;
        Ok(())
    }

    /// Removes all pending spans of `trace_id` and returns them.
    pub fn take_pending(&self, trace_id: &str) -> Result<Vec<Span>, StoreError> {
        let mut spans = Vec::new();
        {
            let mut select = self
                .tx
                .prepare_cached("SELECT span_id, body FROM pending_spans WHERE trace_id = ?1")?;
            let mut rows = select.query([trace_id])?;
            while let Some(row) = rows.next()? {
                let span_id: String = row.get(0)?;
                let body: String = row.get(1)?;
                let span =
                    serde_json::from_str(&body).map_err(|source| StoreError::CorruptBody {
                        what: format!("pending span {trace_id}/{span_id}"),
                        source,
                    })?;
                spans.push(span);
            }
        }
        self.tx
            .prepare_cached("DELETE FROM pending_spans WHERE trace_id = ?1")?
            .execute([trace_id])?;
        Ok(spans)
    }

    /// Marks the spans of a trace that was rejected as a whole as consumed,
    /// so the trace counts as finalized (episodes record their own span ids).
    pub fn mark_consumed(&self, trace_id: &str, span_ids: &[String]) -> Result<(), StoreError> {
        let mut insert = self.tx.prepare_cached(
            "INSERT OR IGNORE INTO consumed_spans (trace_id, span_id) VALUES (?1, ?2)",
        )?;
        for span_id in span_ids {
            insert.execute(params![trace_id, span_id])?;
        }
        Ok(())
    }

    /// Trace ids with pending spans whose newest span arrived before
    /// `arrived_before_unix_ms` (all pending traces when `None`), oldest
    /// first, at most `limit`.
    pub fn quiet_traces(
        &self,
        arrived_before_unix_ms: Option<i64>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut select = self.tx.prepare_cached(
            "SELECT trace_id, MAX(arrived_at_unix_ms) AS newest FROM pending_spans
             GROUP BY trace_id HAVING ?1 IS NULL OR newest < ?1
             ORDER BY newest, trace_id LIMIT ?2",
        )?;
        let ids = select
            .query_map(params![arrived_before_unix_ms, limit as i64], |row| {
                row.get(0)
            })?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    /// Writes the cursor of the file this batch was read from.
    pub fn set_cursor(&self, cursor: &FileCursor) -> Result<(), StoreError> {
        cursor::upsert(&self.tx, cursor)?;
        Ok(())
    }

    /// Commits the batch.
    pub fn commit(self) -> Result<(), StoreError> {
        self.tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EpisodeFilter, Store};
    use crate::trace::{PromptRef, Source, Step, TokenUsage, ToolCall, TraceFormat};

    fn episode(trace_id: &str, prompt: &str, reward: f64) -> Episode {
        let tool = |name: &str, error: bool| Step {
            error,
            ..Step::tool(name, ToolCall::default())
        };
        Episode {
            trace_id: trace_id.to_string(),
            format: TraceFormat::WhetstoneJsonl,
            prompt: PromptRef {
                name: Some(prompt.to_string()),
                version: Some("v1".to_string()),
                text: None,
            },
            input: Some("task".to_string()),
            steps: vec![
                tool("search", false),
                tool("search", true),
                tool("calc", false),
            ],
            rewards: BTreeMap::from([("success".to_string(), reward)]),
            status: Status::Ok,
            start_time_unix_nano: Some(1),
            duration_ms: None,
            usage: TokenUsage::default(),
            policy_version: None,
            source: Source {
                file: "f.jsonl".to_string(),
                line: 1,
            },
        }
    }

    fn insert(tx: &IngestTx<'_>, e: &Episode) -> Result<bool, StoreError> {
        tx.insert_episode(
            e,
            &crate::store::BodyEncoder::new().encode(e).unwrap(),
            &[],
            5,
        )
    }

    fn span(trace_id: &str, span_id: &str, parent: Option<&str>) -> Span {
        Span {
            trace_id: trace_id.to_string(),
            span_id: span_id.to_string(),
            format: TraceFormat::OtlpJson,
            parent_span_id: parent.map(str::to_string),
            name: "s".to_string(),
            start_time_unix_nano: 0,
            end_time_unix_nano: 1,
            error: false,
            status_message: None,
            attributes: serde_json::Map::new(),
            events: Vec::new(),
            source: Source::default(),
        }
    }

    #[test]
    fn episodes_insert_once_and_feed_stats() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let tx = store.begin_ingest().unwrap();
        assert!(insert(&tx, &episode("a", "p", 1.0)).unwrap());
        assert!(!insert(&tx, &episode("a", "p", 0.0)).unwrap());
        assert!(insert(&tx, &episode("b", "q", 0.0)).unwrap());
        tx.commit().unwrap();

        let stats = store.stats().unwrap();
        assert_eq!(stats.episodes, 2);
        assert_eq!(
            stats.episodes_by_format,
            vec![("whetstone_jsonl".to_string(), 2)]
        );
        let search = stats.tools.iter().find(|t| t.name == "search").unwrap();
        assert_eq!((search.calls, search.errors, search.episodes), (4, 2, 2));
        assert_eq!(stats.rewards.len(), 1);
        let success = &stats.rewards[0];
        assert_eq!(
            (success.count, success.mean, success.min, success.max),
            (2, 0.5, 0.0, 1.0)
        );

        let only_q = store
            .load_episodes(&EpisodeFilter {
                prompt_name: Some("q".to_string()),
                ..EpisodeFilter::default()
            })
            .unwrap();
        assert_eq!(only_q.len(), 1);
        assert_eq!(only_q[0].episode, episode("b", "q", 0.0));
        let after_first = store
            .load_episodes(&EpisodeFilter {
                after_id: Some(only_q[0].id - 1),
                ..EpisodeFilter::default()
            })
            .unwrap();
        assert_eq!(after_first.len(), 1);
        // The duplicate did not overwrite the first body.
        assert_eq!(
            store.episode("a").unwrap().unwrap().episode.rewards["success"],
            1.0
        );
    }

    #[test]
    fn uncommitted_batch_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let tx = store.begin_ingest().unwrap();
        insert(&tx, &episode("a", "p", 1.0)).unwrap();
        drop(tx);
        assert_eq!(store.episode_count().unwrap(), 0);
    }

    #[test]
    fn spans_pend_until_taken_and_episodes_remember_their_spans() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let tx = store.begin_ingest().unwrap();
        let child = span("t", "c", Some("r"));
        tx.insert_pending(&child, 1).unwrap();
        tx.insert_pending(&child, 1).unwrap();
        let state = tx.trace_state("t").unwrap();
        assert_eq!(
            state,
            TraceState {
                finalized: false,
                pending_spans: 1,
                pending_root: false
            }
        );
        assert!(tx.span_pending("t", "c").unwrap());
        let root = span("t", "r", None);
        tx.insert_pending(&root, 2).unwrap();
        assert!(tx.trace_state("t").unwrap().pending_root);
        assert_eq!(tx.quiet_traces(Some(2), 10).unwrap(), Vec::<String>::new());
        assert_eq!(tx.quiet_traces(Some(3), 10).unwrap(), vec!["t".to_string()]);

        let mut taken = tx.take_pending("t").unwrap();
        taken.sort_by(|a, b| a.span_id.cmp(&b.span_id));
        assert_eq!(taken, vec![child.clone(), root.clone()]);
        assert_eq!(tx.quiet_traces(None, 10).unwrap(), Vec::<String>::new());
        assert_eq!(tx.trace_state("t").unwrap(), TraceState::default());

        let ids = vec!["c".to_string(), "r".to_string()];
        let e = episode("t", "p", 1.0);
        tx.insert_episode(
            &e,
            &crate::store::BodyEncoder::new().encode(&e).unwrap(),
            &ids,
            3,
        )
        .unwrap();
        assert!(tx.trace_state("t").unwrap().finalized);
        assert!(tx.span_consumed("t", "c").unwrap());
        assert!(!tx.span_consumed("t", "new").unwrap());
        assert!(!tx.span_consumed("t", "").unwrap());

        tx.mark_consumed("rejected", &["x".to_string()]).unwrap();
        assert!(tx.trace_state("rejected").unwrap().finalized);
        assert!(tx.span_consumed("rejected", "x").unwrap());
        tx.commit().unwrap();
    }

    #[test]
    fn rejects_dedup_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let reject = RejectRow {
            file: "f".to_string(),
            line: 3,
            offset: Some(10),
            reason: "invalid_json",
            detail: "bad".to_string(),
            key: "k1".to_string(),
        };
        let tx = store.begin_ingest().unwrap();
        assert!(tx.insert_reject(&reject, 1).unwrap());
        assert!(!tx.insert_reject(&reject, 2).unwrap());
        let other = RejectRow {
            key: "k2".to_string(),
            ..reject.clone()
        };
        assert!(tx.insert_reject(&other, 2).unwrap());
        tx.commit().unwrap();
        assert_eq!(
            store.stats().unwrap().rejects_by_reason,
            vec![("invalid_json".to_string(), 2)]
        );
        assert_eq!(store.rejects(1).unwrap()[0].line, 3);
    }
}
