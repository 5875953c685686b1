//! The prompt registry's tables (migration 5): versions, labels, A/B tests
//! and the audit log. Every change is one immediate transaction together
//! with its audit row, so the daemon and a CLI writing at once lose nothing.
//!
//! The statistics and the rollout rules live in `crate::registry`; this
//! module only stores what they decide.

use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};

use super::{Store, StoreError, now_unix_ms};

/// One immutable version of a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptVersion {
    pub prompt: String,
    pub version: String,
    pub text: String,
    /// The version it was derived from.
    pub parent_version: Option<String>,
    /// The operator that made it (APO mutation), or `manual`.
    pub operator: Option<String>,
    /// The APO round that produced it.
    pub round_id: Option<i64>,
    /// Scores known when it was registered (JSON object).
    pub scores: Option<String>,
    pub created_at_unix_ms: i64,
    pub created_by: String,
}

/// Who changes the registry and why, for the audit log.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    /// `cli`, `daemon`, `api`, or a user name.
    pub actor: &'a str,
    pub why: &'a str,
}

/// A/B test state as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AbTestRow {
    pub id: i64,
    pub prompt: String,
    pub control: String,
    pub treatment: String,
    /// The treatment's share of traffic now.
    pub split: f64,
    /// The rollout plan: shares of traffic, the last one 1.0.
    pub stages: Vec<f64>,
    /// Index into `stages`.
    pub stage: usize,
    /// `running` or `stopped`.
    pub status: String,
    pub winner: Option<String>,
    pub reason: Option<String>,
    pub start_episode_id: i64,
    pub stage_episode_id: i64,
    pub started_at_unix_ms: i64,
    pub stopped_at_unix_ms: Option<i64>,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub at_unix_ms: i64,
    pub actor: String,
    pub action: String,
    pub prompt: String,
    pub detail: String,
}

const VERSION_COLUMNS: &str = "prompt, version, text, parent_version, operator, round_id, scores, \
     created_at_unix_ms, created_by";

fn version_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PromptVersion> {
    Ok(PromptVersion {
        prompt: row.get(0)?,
        version: row.get(1)?,
        text: row.get(2)?,
        parent_version: row.get(3)?,
        operator: row.get(4)?,
        round_id: row.get(5)?,
        scores: row.get(6)?,
        created_at_unix_ms: row.get(7)?,
        created_by: row.get(8)?,
    })
}

const TEST_COLUMNS: &str = "id, prompt, control, treatment, split, stages, stage, status, winner, \
     reason, start_episode_id, stage_episode_id, started_at_unix_ms, stopped_at_unix_ms";

fn test_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AbTestRow> {
    let stages: String = row.get(5)?;
    Ok(AbTestRow {
        id: row.get(0)?,
        prompt: row.get(1)?,
        control: row.get(2)?,
        treatment: row.get(3)?,
        split: row.get(4)?,
        stages: serde_json::from_str(&stages).unwrap_or_default(),
        stage: row.get::<_, i64>(6)? as usize,
        status: row.get(7)?,
        winner: row.get(8)?,
        reason: row.get(9)?,
        start_episode_id: row.get(10)?,
        stage_episode_id: row.get(11)?,
        started_at_unix_ms: row.get(12)?,
        stopped_at_unix_ms: row.get(13)?,
    })
}

fn audit(
    tx: &Transaction<'_>,
    change: Change<'_>,
    action: &str,
    prompt: &str,
    detail: &str,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO registry_audit (at_unix_ms, actor, action, prompt, detail)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![now_unix_ms(), change.actor, action, prompt, detail],
    )?;
    Ok(())
}

fn upsert_label(
    tx: &Transaction<'_>,
    prompt: &str,
    label: &str,
    version: &str,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO prompt_labels (prompt, label, version) VALUES (?1, ?2, ?3)
         ON CONFLICT (prompt, label) DO UPDATE SET version = excluded.version",
        params![prompt, label, version],
    )?;
    Ok(())
}

fn test_prompt(tx: &Transaction<'_>, id: i64) -> rusqlite::Result<String> {
    tx.query_row("SELECT prompt FROM ab_tests WHERE id = ?1", [id], |row| {
        row.get(0)
    })
}

impl Store {
    fn registry_tx(&mut self) -> Result<Transaction<'_>, StoreError> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// Adds a version; an empty `new.version` takes the next free number
    /// (`1`, `2`, ...). When it is the prompt's first version, `first_label`
    /// (if any) points at it, in the same transaction. Returns the version
    /// as stored. Fails if the version exists.
    pub fn insert_prompt_version(
        &mut self,
        new: &PromptVersion,
        first_label: Option<&str>,
        change: Change<'_>,
    ) -> Result<PromptVersion, StoreError> {
        let tx = self.registry_tx()?;
        let version = if new.version.is_empty() {
            let max: i64 = tx.query_row(
                "SELECT COALESCE(MAX(CAST(version AS INTEGER)), 0) FROM prompt_versions
                 WHERE prompt = ?1 AND version GLOB '[0-9]*'",
                [&new.prompt],
                |row| row.get(0),
            )?;
            (max + 1).to_string()
        } else {
            new.version.clone()
        };
        let stored = PromptVersion {
            version,
            created_at_unix_ms: now_unix_ms(),
            ..new.clone()
        };
        tx.execute(
            &format!("INSERT INTO prompt_versions ({VERSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
            params![
                stored.prompt,
                stored.version,
                stored.text,
                stored.parent_version,
                stored.operator,
                stored.round_id,
                stored.scores,
                stored.created_at_unix_ms,
                stored.created_by
            ],
        )?;
        audit(
            &tx,
            change,
            "register",
            &stored.prompt,
            &format!("version {}: {}", stored.version, change.why),
        )?;
        let versions: i64 = tx.query_row(
            "SELECT COUNT(*) FROM prompt_versions WHERE prompt = ?1",
            [&stored.prompt],
            |row| row.get(0),
        )?;
        if let Some(label) = first_label.filter(|_| versions == 1) {
            upsert_label(&tx, &stored.prompt, label, &stored.version)?;
            let detail = format!("{label} -> {}: first version of the prompt", stored.version);
            audit(&tx, change, "label", &stored.prompt, &detail)?;
        }
        tx.commit()?;
        Ok(stored)
    }

    /// One version of a prompt.
    pub fn prompt_version(
        &self,
        prompt: &str,
        version: &str,
    ) -> Result<Option<PromptVersion>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {VERSION_COLUMNS} FROM prompt_versions WHERE prompt = ?1 AND version = ?2"),
                [prompt, version],
                version_from_row,
            )
            .optional()?)
    }

    /// A version with exactly this text, if one is registered.
    pub fn prompt_version_with_text(
        &self,
        prompt: &str,
        text: &str,
    ) -> Result<Option<PromptVersion>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM prompt_versions WHERE prompt = ?1 AND text = ?2
                     ORDER BY id LIMIT 1"
                ),
                [prompt, text],
                version_from_row,
            )
            .optional()?)
    }

    /// Every version of a prompt, oldest first.
    pub fn prompt_versions(&self, prompt: &str) -> Result<Vec<PromptVersion>, StoreError> {
        self.query_rows(
            &format!("SELECT {VERSION_COLUMNS} FROM prompt_versions WHERE prompt = ?1 ORDER BY id"),
            [prompt],
            version_from_row,
        )
    }

    /// Registered prompt names with their number of versions.
    pub fn registered_prompts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.query_rows(
            "SELECT prompt, COUNT(*) FROM prompt_versions GROUP BY prompt ORDER BY prompt",
            [],
            |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)),
        )
    }

    /// Points `label` of `prompt` at `version`.
    pub fn set_prompt_label(
        &mut self,
        prompt: &str,
        label: &str,
        version: &str,
        change: Change<'_>,
    ) -> Result<(), StoreError> {
        let tx = self.registry_tx()?;
        upsert_label(&tx, prompt, label, version)?;
        audit(
            &tx,
            change,
            "label",
            prompt,
            &format!("{label} -> {version}: {}", change.why),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The labels of a prompt: (label, version).
    pub fn prompt_labels(&self, prompt: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.query_rows(
            "SELECT label, version FROM prompt_labels WHERE prompt = ?1 ORDER BY label",
            [prompt],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
    }

    /// Starts an A/B test (at most one runs per prompt); returns its id.
    pub fn insert_ab_test(
        &mut self,
        test: &AbTestRow,
        change: Change<'_>,
    ) -> Result<i64, StoreError> {
        let tx = self.registry_tx()?;
        tx.execute(
            "INSERT INTO ab_tests (prompt, control, treatment, split, stages, stage, status,
                                   start_episode_id, stage_episode_id, started_at_unix_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', ?7, ?7, ?8)",
            params![
                test.prompt,
                test.control,
                test.treatment,
                test.split,
                serde_json::to_string(&test.stages).unwrap_or_else(|_| "[]".into()),
                test.stage as i64,
                test.start_episode_id,
                now_unix_ms()
            ],
        )?;
        let id = tx.last_insert_rowid();
        audit(
            &tx,
            change,
            "ab_start",
            &test.prompt,
            &format!(
                "test {id}: {} vs {} at {:.0}% treatment: {}",
                test.control,
                test.treatment,
                test.split * 100.0,
                change.why
            ),
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// The running A/B test of a prompt.
    pub fn running_ab_test(&self, prompt: &str) -> Result<Option<AbTestRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {TEST_COLUMNS} FROM ab_tests WHERE prompt = ?1 AND status = 'running'"
                ),
                [prompt],
                test_from_row,
            )
            .optional()?)
    }

    /// Every running A/B test.
    pub fn running_ab_tests(&self) -> Result<Vec<AbTestRow>, StoreError> {
        self.query_rows(
            &format!("SELECT {TEST_COLUMNS} FROM ab_tests WHERE status = 'running' ORDER BY id"),
            [],
            test_from_row,
        )
    }

    /// Moves a running test to rollout `stage` (traffic `split`), counting
    /// the stage's outcomes from episodes after `stage_episode_id`.
    pub fn set_ab_stage(
        &mut self,
        id: i64,
        stage: usize,
        split: f64,
        stage_episode_id: i64,
        change: Change<'_>,
    ) -> Result<(), StoreError> {
        let tx = self.registry_tx()?;
        let prompt = test_prompt(&tx, id)?;
        tx.execute(
            "UPDATE ab_tests SET stage = ?2, split = ?3, stage_episode_id = ?4
             WHERE id = ?1 AND status = 'running'",
            params![id, stage as i64, split, stage_episode_id],
        )?;
        audit(
            &tx,
            change,
            "rollout",
            &prompt,
            &format!(
                "test {id}: stage {stage}, {:.0}% treatment: {}",
                split * 100.0,
                change.why
            ),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Stops a running test with `winner` (or none) and the reason; the
    /// `production` label moves to the winner in the same transaction.
    pub fn stop_ab_test(
        &mut self,
        id: i64,
        winner: Option<&str>,
        change: Change<'_>,
    ) -> Result<(), StoreError> {
        let tx = self.registry_tx()?;
        let prompt = test_prompt(&tx, id)?;
        tx.execute(
            "UPDATE ab_tests SET status = 'stopped', winner = ?2, reason = ?3, stopped_at_unix_ms = ?4
             WHERE id = ?1",
            params![id, winner, change.why, now_unix_ms()],
        )?;
        if let Some(winner) = winner {
            upsert_label(&tx, &prompt, "production", winner)?;
        }
        audit(
            &tx,
            change,
            "ab_stop",
            &prompt,
            &format!(
                "test {id}: winner {}: {}",
                winner.unwrap_or("none"),
                change.why
            ),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The newest audit entries of a prompt, newest first.
    pub fn registry_audit(&self, prompt: &str, limit: u64) -> Result<Vec<AuditEntry>, StoreError> {
        self.query_rows(
            "SELECT at_unix_ms, actor, action, prompt, detail FROM registry_audit
             WHERE prompt = ?1 ORDER BY id DESC LIMIT ?2",
            params![prompt, limit as i64],
            |row| {
                Ok(AuditEntry {
                    at_unix_ms: row.get(0)?,
                    actor: row.get(1)?,
                    action: row.get(2)?,
                    prompt: row.get(3)?,
                    detail: row.get(4)?,
                })
            },
        )
    }
}
