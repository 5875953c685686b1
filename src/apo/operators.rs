//! Mutation operators that ask the rewriter model for a new prompt.
//!
//! - critique-then-edit: a textual gradient. The rewriter first critiques the
//!   prompt given episodes where it scored low (input, response, reference),
//!   then a second call applies that critique (ProTeGi; agent-lightning's APO).
//! - paraphrase: same instructions, new wording.
//! - crossover: combine two parents (EvoPrompt).
//!
//! The meta-prompts are editable files in `prompts/`; placeholders are
//! written `{{name}}` so they never clash with the target prompt's own
//! `{placeholders}`. The rewriter is asked to wrap its prompt in
//! `<prompt>...</prompt>`; without the tags the whole reply is taken.
//! Replies are cached in the store by request, model and sampling settings.

use std::cell::Cell;
use std::path::Path;

use anyhow::Context;
use rusqlite::Connection;

use super::budget::{Budget, CallError};
use super::cache;
use crate::llm::{ChatRequest, LlmClient, Role};
use crate::trace::Message;

/// The meta-prompt templates, loaded from disk.
#[derive(Debug, Clone, PartialEq)]
pub struct MetaPrompts {
    pub critique: String,
    pub edit: String,
    pub paraphrase: String,
    pub crossover: String,
}

impl MetaPrompts {
    /// Loads `apo_critique.txt`, `apo_edit.txt`, `apo_paraphrase.txt` and
    /// `apo_crossover.txt` from `dir`, checking each has its placeholders.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let read = |file: &str, required: &[&str]| -> anyhow::Result<String> {
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading meta-prompt {}", path.display()))?;
            for placeholder in required {
                if !text.contains(placeholder) {
                    anyhow::bail!(
                        "meta-prompt {} lacks the placeholder {placeholder}",
                        path.display()
                    );
                }
            }
            Ok(text)
        };
        Ok(MetaPrompts {
            critique: read("apo_critique.txt", &["{{prompt}}", "{{failures}}"])?,
            edit: read("apo_edit.txt", &["{{prompt}}", "{{critique}}"])?,
            paraphrase: read("apo_paraphrase.txt", &["{{prompt}}"])?,
            crossover: read("apo_crossover.txt", &["{{prompt_a}}", "{{prompt_b}}"])?,
        })
    }
}

/// A low-scoring replay shown to the critic.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub input: String,
    pub response: String,
    pub reference: Option<String>,
    pub score: f64,
}

/// Runs the LLM operators through the budget and the reply cache.
pub struct Rewriter<'a> {
    llm: &'a LlmClient,
    budget: &'a Budget,
    conn: &'a Connection,
    meta: &'a MetaPrompts,
    params_hash: String,
    cache_hits: Cell<u64>,
}

impl<'a> Rewriter<'a> {
    /// A rewriter for one run.
    pub fn new(
        llm: &'a LlmClient,
        budget: &'a Budget,
        conn: &'a Connection,
        meta: &'a MetaPrompts,
    ) -> Self {
        let settings = llm.config();
        let params_hash = cache::hash_text(&format!(
            "temperature={}|seed={:?}",
            settings.temperature, settings.seed
        ));
        Rewriter {
            llm,
            budget,
            conn,
            meta,
            params_hash,
            cache_hits: Cell::new(0),
        }
    }

    /// Replies served from the cache so far.
    pub fn cache_hits(&self) -> u64 {
        self.cache_hits.get()
    }

    async fn ask(&self, content: String) -> Result<String, CallError> {
        let model = self.llm.model(Role::Rewriter);
        let request_hash = cache::hash_text(&content);
        match cache::get_rewrite(self.conn, &request_hash, model, &self.params_hash) {
            Ok(Some(reply)) => {
                self.cache_hits.set(self.cache_hits.get() + 1);
                return Ok(reply);
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "APO rewrite cache lookup failed"),
        }
        let request = ChatRequest {
            role: Role::Rewriter,
            messages: vec![Message {
                role: "user".to_string(),
                content,
            }],
            max_tokens: None,
        };
        let reply = self.budget.chat(self.llm, &request).await?.text;
        if let Err(err) =
            cache::put_rewrite(self.conn, &request_hash, model, &self.params_hash, &reply)
        {
            tracing::warn!(error = %err, "APO rewrite cache write failed");
        }
        Ok(reply)
    }

    /// Critiques `prompt` from its failures, then applies the critique.
    pub async fn critique_edit(
        &self,
        prompt: &str,
        failures: &[Failure],
    ) -> Result<String, CallError> {
        let failures_text = failures
            .iter()
            .enumerate()
            .map(|(idx, failure)| {
                format!(
                    "### Case {}\nInput: {}\nAgent response: {}\nReference answer: {}\nScore: {:.2}",
                    idx + 1,
                    failure.input,
                    failure.response,
                    failure.reference.as_deref().unwrap_or("(none)"),
                    failure.score
                )
            })
            .collect::<Vec<_>>()
            .join("\n\n");
        let critique = self
            .ask(
                self.meta
                    .critique
                    .replace("{{prompt}}", prompt)
                    .replace("{{failures}}", &failures_text),
            )
            .await?;
        let edited = self
            .ask(
                self.meta
                    .edit
                    .replace("{{prompt}}", prompt)
                    .replace("{{critique}}", critique.trim()),
            )
            .await?;
        Ok(extract_prompt(&edited))
    }

    /// Rewords `prompt` keeping its instructions.
    pub async fn paraphrase(&self, prompt: &str) -> Result<String, CallError> {
        let reply = self
            .ask(self.meta.paraphrase.replace("{{prompt}}", prompt))
            .await?;
        Ok(extract_prompt(&reply))
    }

    /// Combines two parents into one child.
    pub async fn crossover(&self, prompt_a: &str, prompt_b: &str) -> Result<String, CallError> {
        let reply = self
            .ask(
                self.meta
                    .crossover
                    .replace("{{prompt_a}}", prompt_a)
                    .replace("{{prompt_b}}", prompt_b),
            )
            .await?;
        Ok(extract_prompt(&reply))
    }
}

/// The text between the last `<prompt>` and the following `</prompt>`, or
/// the whole reply (trimmed) when it has no such tags.
pub fn extract_prompt(reply: &str) -> String {
    if let Some(start) = reply.rfind("<prompt>") {
        let body = &reply[start + "<prompt>".len()..];
        let end = body.find("</prompt>").unwrap_or(body.len());
        return body[..end].trim().to_string();
    }
    reply.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_tagged_prompt_or_whole_reply() {
        assert_eq!(
            extract_prompt("Here it is:\n<prompt>\nBe brief.\n</prompt>\nDone."),
            "Be brief."
        );
        assert_eq!(extract_prompt("  Be brief.  "), "Be brief.");
    }

    #[test]
    fn shipped_meta_prompts_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
        let meta = MetaPrompts::load(&dir).unwrap();
        assert!(meta.critique.contains("{{failures}}"));
    }

    #[test]
    fn missing_placeholder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "apo_critique.txt",
            "apo_edit.txt",
            "apo_paraphrase.txt",
            "apo_crossover.txt",
        ] {
            std::fs::write(
                dir.path().join(file),
                "{{prompt}} {{failures}} {{critique}}",
            )
            .unwrap();
        }
        let err = MetaPrompts::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("apo_crossover.txt") && err.contains("{{prompt_a}}"),
            "{err}"
        );
    }
}
