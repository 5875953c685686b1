//! What APO keeps in the store: scored evaluations and the call ledger.
//!
//! The evaluation cache is keyed by (prompt hash, example id, model,
//! parameters hash), so a repeated run, or a later daemon round over the same
//! episodes, never pays twice for the same replay. The parameters hash covers
//! everything else that changes the score: temperature, seed, token cap and
//! the scorer with its judge model and rubric. The judge's reply (its
//! feedback, which reflective mutation shows the rewriter) is kept beside the
//! score in a table of its own, so databases made before it still work. Rewriter replies are cached
//! too, keyed by the full request text, so a rerun with the same seed makes
//! the same edits even when the rewriter samples at a temperature above 0:
//! same seed plus same cached responses, same result. The ledger keeps one row per
//! HTTP attempt of every LLM call: role, model, tokens, latency, outcome.

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::llm::CallRecord;

/// Lays out APO's tables (the store's migrations 2 and 6) in `conn`, for a
/// database that is not a store: a scratch file in tests and benches.
/// Idempotent.
pub fn create_tables(conn: &Connection) -> rusqlite::Result<()> {
    for sql in crate::store::migrations::APO_TABLES {
        conn.execute_batch(sql)?;
    }
    Ok(())
}

/// Hex SHA-256 of `text`: the cache's prompt and parameter keys.
pub fn hash_text(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Cache key of one evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EvalKey {
    pub prompt_hash: String,
    pub example_id: String,
    pub model: String,
    pub params_hash: String,
}

/// A cached evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedEval {
    pub response: String,
    pub score: f64,
    /// The judge's reply, when a judge scored the response.
    pub feedback: Option<String>,
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Looks up one evaluation.
pub fn get(conn: &Connection, key: &EvalKey) -> rusqlite::Result<Option<CachedEval>> {
    conn.query_row(
        "SELECT response, score, feedback FROM apo_eval_cache
         LEFT JOIN apo_eval_feedback USING (prompt_hash, example_id, model, params_hash)
         WHERE prompt_hash = ?1 AND example_id = ?2 AND model = ?3 AND params_hash = ?4",
        params![key.prompt_hash, key.example_id, key.model, key.params_hash],
        |row| {
            Ok(CachedEval {
                response: row.get(0)?,
                score: row.get(1)?,
                feedback: row.get(2)?,
            })
        },
    )
    .optional()
}

/// Stores one evaluation (replacing an older one under the same key).
pub fn put(
    conn: &Connection,
    key: &EvalKey,
    eval: &CachedEval,
    input_tokens: u64,
    output_tokens: u64,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO apo_eval_cache
         (prompt_hash, example_id, model, params_hash, response, score,
          input_tokens, output_tokens, created_unix_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            key.prompt_hash,
            key.example_id,
            key.model,
            key.params_hash,
            eval.response,
            eval.score,
            input_tokens as i64,
            output_tokens as i64,
            now_unix_ms()
        ],
    )?;
    if let Some(feedback) = &eval.feedback {
        conn.execute(
            "INSERT OR REPLACE INTO apo_eval_feedback
             (prompt_hash, example_id, model, params_hash, feedback)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                key.prompt_hash,
                key.example_id,
                key.model,
                key.params_hash,
                feedback
            ],
        )?;
    }
    Ok(())
}

/// Looks up a cached rewriter reply.
pub fn get_rewrite(
    conn: &Connection,
    request_hash: &str,
    model: &str,
    params_hash: &str,
) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT response FROM apo_rewrite_cache
         WHERE request_hash = ?1 AND model = ?2 AND params_hash = ?3",
        params![request_hash, model, params_hash],
        |row| row.get(0),
    )
    .optional()
}

/// Stores a rewriter reply.
pub fn put_rewrite(
    conn: &Connection,
    request_hash: &str,
    model: &str,
    params_hash: &str,
    response: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO apo_rewrite_cache
         (request_hash, model, params_hash, response, created_unix_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![request_hash, model, params_hash, response, now_unix_ms()],
    )?;
    Ok(())
}

/// Appends call records to the ledger under `run_id`, in one transaction.
pub fn append_ledger(
    conn: &Connection,
    run_id: &str,
    records: &[CallRecord],
) -> rusqlite::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO llm_call_ledger
             (run_id, role, model, input_tokens, output_tokens, latency_ms, outcome, attempt,
              created_unix_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let now = now_unix_ms();
        for record in records {
            stmt.execute(params![
                run_id,
                record.role.as_str(),
                record.model,
                record.usage.input_tokens as i64,
                record.usage.output_tokens as i64,
                record.latency_ms,
                record.outcome.as_str(),
                record.attempt,
                now
            ])?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{Outcome, Role};
    use crate::trace::TokenUsage;

    #[test]
    fn cache_round_trip_and_ledger_rows() {
        let conn = Connection::open_in_memory().unwrap();
        create_tables(&conn).unwrap();
        create_tables(&conn).unwrap();
        let key = EvalKey {
            prompt_hash: hash_text("prompt"),
            example_id: "t1".into(),
            model: "m".into(),
            params_hash: hash_text("p"),
        };
        assert_eq!(get(&conn, &key).unwrap(), None);
        let eval = CachedEval {
            response: "r".into(),
            score: 0.75,
            feedback: None,
        };
        put(&conn, &key, &eval, 10, 2).unwrap();
        assert_eq!(get(&conn, &key).unwrap(), Some(eval));
        let judged = EvalKey {
            example_id: "t2".into(),
            ..key.clone()
        };
        let eval = CachedEval {
            response: "r".into(),
            score: 0.5,
            feedback: Some("Too long.\nSCORE: 5".into()),
        };
        put(&conn, &judged, &eval, 10, 2).unwrap();
        assert_eq!(get(&conn, &judged).unwrap(), Some(eval));
        let other = EvalKey {
            model: "other".into(),
            ..key
        };
        assert_eq!(get(&conn, &other).unwrap(), None);

        assert_eq!(get_rewrite(&conn, "h", "m", "p").unwrap(), None);
        put_rewrite(&conn, "h", "m", "p", "new prompt").unwrap();
        assert_eq!(
            get_rewrite(&conn, "h", "m", "p").unwrap().as_deref(),
            Some("new prompt")
        );
        assert_eq!(get_rewrite(&conn, "h", "m2", "p").unwrap(), None);

        let record = CallRecord {
            role: Role::Judge,
            model: "j".into(),
            usage: TokenUsage {
                input_tokens: 5,
                output_tokens: 1,
            },
            latency_ms: 3.5,
            outcome: Outcome::RateLimited,
            attempt: 2,
        };
        append_ledger(&conn, "run1", &[record.clone(), record]).unwrap();
        let (n, outcome): (i64, String) = conn
            .query_row(
                "SELECT COUNT(*), MAX(outcome) FROM llm_call_ledger WHERE run_id = 'run1' AND role = 'judge'",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!((n, outcome.as_str()), (2, "rate_limited"));
    }
}
