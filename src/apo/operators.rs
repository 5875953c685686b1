//! Mutation operators that ask the rewriter model for a new prompt.
//!
//! - critique-then-edit: a textual gradient. The rewriter first critiques the
//!   prompt given episodes where it scored low (input, response, reference),
//!   then a second call applies that critique (ProTeGi; agent-lightning's APO).
//! - paraphrase: same instructions, new wording.
//! - crossover: combine two parents (EvoPrompt).
//!
//! The meta-prompts and the judge rubric are embedded in the binary (the
//! files in `prompts/`); `apo.meta_prompt_dir` and `apo.scorer.rubric_file`
//! may point to overrides. Placeholders are written `{{name}}` so they never
//! clash with the target prompt's own `{placeholders}`. The rewriter is asked
//! to wrap its prompt in `<prompt>...</prompt>`; a reply without the tags
//! (when the meta-prompt asks for them), empty, looping or echoing the
//! request is no candidate, and is counted by [`super::replies`]. Every
//! request carries an output limit from there. Replies are cached in the
//! store by request, output limit, model and sampling settings.

use std::cell::Cell;
use std::path::Path;

use anyhow::Context;
use rusqlite::Connection;

use super::budget::{Budget, CallError};
use super::cache;
use super::replies::{self, ReplyMonitor};
use crate::llm::{ChatRequest, LlmClient, Role};
use crate::trace::Message;

/// One template the engine fills in: an operator's meta-prompt or the rubric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaPrompt {
    Critique,
    Edit,
    Paraphrase,
    Crossover,
    Rubric,
}

impl MetaPrompt {
    /// The operators' meta-prompts, the files `apo.meta_prompt_dir` holds.
    pub const OPERATORS: [MetaPrompt; 4] = [
        MetaPrompt::Critique,
        MetaPrompt::Edit,
        MetaPrompt::Paraphrase,
        MetaPrompt::Crossover,
    ];

    /// File name of the template, in `prompts/` and in override folders.
    pub fn file_name(self) -> &'static str {
        match self {
            MetaPrompt::Critique => "apo_critique.txt",
            MetaPrompt::Edit => "apo_edit.txt",
            MetaPrompt::Paraphrase => "apo_paraphrase.txt",
            MetaPrompt::Crossover => "apo_crossover.txt",
            MetaPrompt::Rubric => "apo_judge.txt",
        }
    }

    /// The text embedded in the binary.
    pub fn embedded(self) -> &'static str {
        match self {
            MetaPrompt::Critique => include_str!("../../prompts/apo_critique.txt"),
            MetaPrompt::Edit => include_str!("../../prompts/apo_edit.txt"),
            MetaPrompt::Paraphrase => include_str!("../../prompts/apo_paraphrase.txt"),
            MetaPrompt::Crossover => include_str!("../../prompts/apo_crossover.txt"),
            MetaPrompt::Rubric => include_str!("../../prompts/apo_judge.txt"),
        }
    }

    /// Placeholders the template must hold.
    fn required(self) -> &'static [&'static str] {
        match self {
            MetaPrompt::Critique => &["{{prompt}}", "{{failures}}"],
            MetaPrompt::Edit => &["{{prompt}}", "{{critique}}"],
            MetaPrompt::Paraphrase => &["{{prompt}}"],
            MetaPrompt::Crossover => &["{{prompt_a}}", "{{prompt_b}}"],
            MetaPrompt::Rubric => &["{{input}}", "{{reference}}", "{{response}}"],
        }
    }

    /// The required placeholders `text` lacks.
    pub fn missing_placeholders(self, text: &str) -> Vec<&'static str> {
        self.required()
            .iter()
            .copied()
            .filter(|placeholder| !text.contains(placeholder))
            .collect()
    }

    /// The override in `file` if given, else the embedded text.
    pub fn load(self, file: Option<&Path>) -> anyhow::Result<String> {
        let Some(path) = file else {
            return Ok(self.embedded().to_string());
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let missing = self.missing_placeholders(&text);
        if !missing.is_empty() {
            anyhow::bail!(
                "{} lacks the placeholder(s) {}",
                path.display(),
                missing.join(", ")
            );
        }
        Ok(text)
    }
}

/// The operators' meta-prompt templates.
#[derive(Debug, Clone, PartialEq)]
pub struct MetaPrompts {
    pub critique: String,
    pub edit: String,
    pub paraphrase: String,
    pub crossover: String,
}

impl MetaPrompts {
    /// The templates in `dir` (all four files must be there, each with its
    /// placeholders), or the embedded ones when `dir` is `None`.
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Self> {
        let read = |meta: MetaPrompt| -> anyhow::Result<String> {
            let path = dir.map(|dir| dir.join(meta.file_name()));
            meta.load(path.as_deref())
                .context("loading a meta-prompt (apo.meta_prompt_dir)")
        };
        Ok(MetaPrompts {
            critique: read(MetaPrompt::Critique)?,
            edit: read(MetaPrompt::Edit)?,
            paraphrase: read(MetaPrompt::Paraphrase)?,
            crossover: read(MetaPrompt::Crossover)?,
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
    /// What the judge said about the response, when a judge scored it.
    pub feedback: Option<String>,
}

/// A rewriter's reply and the calls paid for it (cache hits are free).
#[derive(Debug, Clone, PartialEq)]
pub struct Rewrite {
    /// The new prompt; empty when the reply was unusable (the
    /// [`ReplyMonitor`] has counted why).
    pub text: String,
    pub paid_calls: u64,
}

/// Runs the LLM operators through the budget and the reply cache.
pub struct Rewriter<'a> {
    llm: &'a LlmClient,
    budget: &'a Budget,
    conn: &'a Connection,
    meta: &'a MetaPrompts,
    replies: &'a ReplyMonitor<'a>,
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
        replies: &'a ReplyMonitor<'a>,
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
            replies,
            params_hash,
            cache_hits: Cell::new(0),
        }
    }

    /// Replies served from the cache so far.
    pub fn cache_hits(&self) -> u64 {
        self.cache_hits.get()
    }

    /// The reply to `content` (at most `max_tokens` long), the calls paid
    /// for it, and whether the server cut it at that limit.
    async fn ask(&self, content: String, max_tokens: u32) -> Result<Asked, CallError> {
        let model = self.llm.model(Role::Rewriter);
        let request_hash = cache::hash_text(&format!("{content}\0max_tokens={max_tokens}"));
        match cache::get_rewrite(self.conn, &request_hash, model, &self.params_hash) {
            Ok(Some(text)) => {
                self.cache_hits.set(self.cache_hits.get() + 1);
                return Ok(Asked {
                    text,
                    paid_calls: 0,
                    cut_at_limit: false,
                });
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
            max_tokens: Some(max_tokens),
        };
        let reply = self.budget.chat(self.llm, &request).await?;
        if let Err(err) = cache::put_rewrite(
            self.conn,
            &request_hash,
            model,
            &self.params_hash,
            &reply.text,
        ) {
            tracing::warn!(error = %err, "APO rewrite cache write failed");
        }
        Ok(Asked {
            text: reply.text,
            paid_calls: u64::from(reply.attempts),
            cut_at_limit: reply.cut_at_limit,
        })
    }

    /// Asks for a rewrite made from `template` and checks the reply.
    async fn rewrite(
        &self,
        template: &str,
        content: String,
        prompt_chars: usize,
    ) -> Result<Rewrite, CallError> {
        let asked = self
            .ask(content, self.replies.rewrite_max_tokens(prompt_chars))
            .await?;
        let checked = replies::check_rewrite(&asked.text, template, asked.cut_at_limit);
        self.replies.record(
            Role::Rewriter,
            self.llm.model(Role::Rewriter),
            &asked.text,
            asked.cut_at_limit,
            checked.as_ref().map(|_| ()).map_err(|kind| *kind),
        );
        Ok(Rewrite {
            text: checked.unwrap_or_default(),
            paid_calls: asked.paid_calls,
        })
    }

    /// Critiques `prompt` from its failures (responses, references and the
    /// judge's feedback), then applies the critique: two calls.
    pub async fn critique_edit(
        &self,
        prompt: &str,
        failures: &[Failure],
    ) -> Result<Rewrite, CallError> {
        let failures_text = failures
            .iter()
            .enumerate()
            .map(|(idx, failure)| {
                let mut case = format!(
                    "### Case {}\nInput: {}\nAgent response: {}\nReference answer: {}\nScore: {:.2}",
                    idx + 1,
                    failure.input,
                    failure.response,
                    failure.reference.as_deref().unwrap_or("(none)"),
                    failure.score
                );
                if let Some(feedback) = &failure.feedback {
                    case.push_str("\nGrader's feedback: ");
                    case.push_str(feedback.trim());
                }
                case
            })
            .collect::<Vec<_>>()
            .join("\n\n");
        let critique = self
            .ask(
                self.meta
                    .critique
                    .replace("{{prompt}}", prompt)
                    .replace("{{failures}}", &failures_text),
                self.replies.critique_max_tokens(),
            )
            .await?;
        // A critique cut at its limit still says something; an empty,
        // looping or echoed one is not worth paying an edit for.
        let checked = replies::check_text(&critique.text, &self.meta.critique);
        self.replies.record(
            Role::Rewriter,
            self.llm.model(Role::Rewriter),
            &critique.text,
            critique.cut_at_limit,
            checked,
        );
        if checked.is_err() {
            return Ok(Rewrite {
                text: String::new(),
                paid_calls: critique.paid_calls,
            });
        }
        let edited = self
            .rewrite(
                &self.meta.edit,
                self.meta
                    .edit
                    .replace("{{prompt}}", prompt)
                    .replace("{{critique}}", critique.text.trim()),
                prompt.chars().count(),
            )
            .await?;
        Ok(Rewrite {
            text: edited.text,
            paid_calls: critique.paid_calls + edited.paid_calls,
        })
    }

    /// Rewords `prompt` keeping every instruction.
    pub async fn paraphrase(&self, prompt: &str) -> Result<Rewrite, CallError> {
        self.rewrite(
            &self.meta.paraphrase,
            self.meta.paraphrase.replace("{{prompt}}", prompt),
            prompt.chars().count(),
        )
        .await
    }

    /// Combines two parents into one child; `strengths` says what each got
    /// right that the other did not.
    pub async fn crossover(
        &self,
        prompt_a: &str,
        prompt_b: &str,
        strengths: &str,
    ) -> Result<Rewrite, CallError> {
        self.rewrite(
            &self.meta.crossover,
            self.meta
                .crossover
                .replace("{{prompt_a}}", prompt_a)
                .replace("{{prompt_b}}", prompt_b)
                .replace("{{strengths}}", strengths),
            prompt_a.chars().count().max(prompt_b.chars().count()),
        )
        .await
    }
}

/// A reply as it came back.
struct Asked {
    text: String,
    paid_calls: u64,
    cut_at_limit: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression test for issue 8: the defaults need no file on disk.
    #[test]
    fn embedded_meta_prompts_are_the_shipped_files_and_complete() {
        let embedded = MetaPrompts::load(None).unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
        assert_eq!(MetaPrompts::load(Some(&dir)).unwrap(), embedded);
        for meta in MetaPrompt::OPERATORS
            .into_iter()
            .chain([MetaPrompt::Rubric])
        {
            assert_eq!(
                meta.missing_placeholders(meta.embedded()),
                Vec::<&str>::new()
            );
        }
    }

    /// Regression test for issue 8: each meta-prompt asks for exactly its
    /// operator and says how to return the prompt.
    #[test]
    fn each_meta_prompt_asks_for_its_operator_and_the_reply_format() {
        let critique = MetaPrompt::Critique.embedded();
        assert!(
            critique.contains("Write a critique") && critique.contains("Do not rewrite the prompt")
        );
        assert!(MetaPrompt::Edit.embedded().contains("Apply the critique"));
        let paraphrase = MetaPrompt::Paraphrase.embedded();
        assert!(paraphrase.starts_with("Paraphrase"));
        assert!(paraphrase.contains("not an edit") && paraphrase.contains("drop none"));
        assert!(MetaPrompt::Crossover.embedded().contains("Combine them"));
        for meta in [
            MetaPrompt::Edit,
            MetaPrompt::Paraphrase,
            MetaPrompt::Crossover,
        ] {
            assert!(
                meta.embedded()
                    .contains("between <prompt> and </prompt>, and nothing else"),
                "{meta:?}"
            );
        }
    }

    #[test]
    fn missing_placeholder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        for meta in MetaPrompt::OPERATORS {
            std::fs::write(
                dir.path().join(meta.file_name()),
                "{{prompt}} {{failures}} {{critique}}",
            )
            .unwrap();
        }
        let err = format!("{:#}", MetaPrompts::load(Some(dir.path())).unwrap_err());
        assert!(
            err.contains("apo_crossover.txt") && err.contains("{{prompt_a}}"),
            "{err}"
        );
    }
}
