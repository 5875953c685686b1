//! Evaluation by replay: how well would the agent have done with this prompt?
//!
//! For each (candidate, example) pair the task model gets the candidate as
//! its system prompt followed by the task messages recorded in the episode,
//! and its response is scored: by the judge model against the reference
//! answer, or by exact match / token F1 when a reference is known. Every
//! scored pair goes into the store's cache first and is looked up there
//! before any call, so nothing is paid for twice. All uncached pairs of a
//! batch run concurrently, bounded by the client's concurrency limit.

use std::cell::RefCell;

use futures::future::join_all;
use rusqlite::Connection;

use super::budget::{Budget, CallError};
use super::cache::{self, CachedEval, EvalKey};
use super::dataset::Example;
use super::plugins::{PluginScorer, Replay};
use super::replies::{self, ReplyMonitor};
use crate::llm::{ChatRequest, LlmClient, Role};
use crate::trace::{Message, TokenUsage};

/// How responses are scored, with the judge rubric loaded.
#[derive(Debug, Clone, PartialEq)]
pub enum Scorer {
    /// Judge model with a rubric template holding `{{input}}`,
    /// `{{reference}}` and `{{response}}`; it must answer `SCORE: <0-10>`.
    LlmJudge {
        rubric: String,
    },
    ExactMatch,
    F1,
    /// Reward plugins alone score the response (`apo.plugin_score_weight`
    /// 1): the replay is not scored here.
    PluginsOnly,
}

/// The score of one replayed example.
#[derive(Debug, Clone, PartialEq)]
pub struct ExampleScore {
    pub example_id: String,
    /// In `[0, 1]`.
    pub score: f64,
    /// The task model's response.
    pub response: String,
    /// The judge's reply, when a judge scored the response.
    pub feedback: Option<String>,
    /// Calls (HTTP attempts) paid for this score; 0 when it came from the cache.
    pub paid_calls: u64,
}

/// Per candidate, the scores of the examples it could be scored on.
pub type Scores = Vec<Vec<ExampleScore>>;

/// Mean of the scores, `None` when there are none.
pub fn mean(scores: &[ExampleScore]) -> Option<f64> {
    (!scores.is_empty())
        .then(|| scores.iter().map(|score| score.score).sum::<f64>() / scores.len() as f64)
}

/// Evaluates every prompt on every example, concurrently; per prompt, the
/// scores it got (failed or unpaid pairs are missing).
pub async fn evaluate_all(
    evaluator: &Evaluator<'_>,
    prompts: &[&str],
    examples: &[&Example],
) -> Scores {
    let pairs: Vec<(&str, &Example)> = prompts
        .iter()
        .flat_map(|prompt| examples.iter().map(move |example| (*prompt, *example)))
        .collect();
    let results = evaluator.evaluate(&pairs).await;
    let mut scores = vec![Vec::new(); prompts.len()];
    for (idx, result) in results.into_iter().enumerate() {
        if let Some(score) = result {
            scores[idx / examples.len().max(1)].push(score);
        }
    }
    scores
}

/// Counters over all evaluations of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalStats {
    /// Pairs served from the cache.
    pub cache_hits: u64,
    /// Task-model requests sent.
    pub task_calls: u64,
    /// Judge requests sent.
    pub judge_calls: u64,
    /// Pairs left unscored because a call failed, the judge's reply had no
    /// score or a reward plugin failed.
    pub failures: u64,
    /// Pairs left unscored because the budget ran out.
    pub skipped_by_budget: u64,
}

/// Replays and scores candidates; one per run.
pub struct Evaluator<'a> {
    pub llm: &'a LlmClient,
    pub budget: &'a Budget,
    pub conn: &'a Connection,
    pub scorer: Scorer,
    pub max_response_tokens: u32,
    params_hash: String,
    plugins: Option<PluginScorer>,
    replies: Option<&'a ReplyMonitor<'a>>,
    stats: RefCell<EvalStats>,
}

/// A judge's verdict limit when no [`ReplyMonitor`] sets one.
const JUDGE_MAX_TOKENS: u32 = 256;

enum PairResult {
    Scored(ExampleScore, TokenUsage),
    Failed(String),
    Budget,
}

impl<'a> Evaluator<'a> {
    /// An evaluator whose cache key covers the scorer, the judge model and
    /// the sampling parameters.
    pub fn new(
        llm: &'a LlmClient,
        budget: &'a Budget,
        conn: &'a Connection,
        scorer: Scorer,
        max_response_tokens: u32,
    ) -> Self {
        let settings = llm.config();
        let scorer_key = match &scorer {
            Scorer::LlmJudge { rubric } => format!(
                "llm_judge|{}|{}",
                settings.judge_model,
                cache::hash_text(rubric)
            ),
            Scorer::ExactMatch => "exact_match".to_string(),
            Scorer::F1 => "f1".to_string(),
            Scorer::PluginsOnly => "plugins_only".to_string(),
        };
        let params = format!(
            "temperature={}|seed={:?}|max_tokens={}|scorer={}",
            settings.temperature, settings.seed, max_response_tokens, scorer_key
        );
        Evaluator {
            llm,
            budget,
            conn,
            scorer,
            max_response_tokens,
            params_hash: cache::hash_text(&params),
            plugins: None,
            replies: None,
            stats: RefCell::new(EvalStats::default()),
        }
    }

    /// Counts the task's and the judge's replies in `replies` and takes the
    /// judge's output limit from it.
    pub fn with_replies(mut self, replies: &'a ReplyMonitor<'a>) -> Self {
        self.params_hash = cache::hash_text(&format!(
            "{}|judge_max_tokens={}",
            self.params_hash,
            replies.judge_max_tokens()
        ));
        self.replies = Some(replies);
        self
    }

    /// Blends the reward plugins' score into every score (see
    /// [`super::plugins`]). The cache keeps the scorer's part only, so a
    /// changed plugin never serves stale scores.
    pub fn with_plugins(mut self, plugins: Option<PluginScorer>) -> Self {
        self.plugins = plugins;
        self
    }

    /// Counters so far.
    pub fn stats(&self) -> EvalStats {
        self.stats.borrow().clone()
    }

    /// Scores each `(prompt, example)` pair; `None` where it could not be
    /// scored (a failed call, or the budget ran out).
    pub async fn evaluate(&self, pairs: &[(&str, &Example)]) -> Vec<Option<ExampleScore>> {
        let model = self.llm.model(Role::Task).to_string();
        let keys: Vec<EvalKey> = pairs
            .iter()
            .map(|(prompt, example)| EvalKey {
                prompt_hash: cache::hash_text(prompt),
                example_id: example.id.clone(),
                model: model.clone(),
                params_hash: self.params_hash.clone(),
            })
            .collect();
        let mut results: Vec<Option<ExampleScore>> = vec![None; pairs.len()];
        let mut misses = Vec::new();
        for (idx, key) in keys.iter().enumerate() {
            match cache::get(self.conn, key) {
                Ok(Some(hit)) => {
                    self.stats.borrow_mut().cache_hits += 1;
                    results[idx] = Some(ExampleScore {
                        example_id: key.example_id.clone(),
                        score: hit.score,
                        response: hit.response,
                        feedback: hit.feedback,
                        paid_calls: 0,
                    });
                }
                Ok(None) => misses.push(idx),
                Err(err) => {
                    tracing::warn!(error = %err, "APO cache lookup failed; evaluating anew");
                    misses.push(idx);
                }
            }
        }
        // The same pair can appear twice in one batch; pay for it once.
        let mut unique: Vec<usize> = Vec::new();
        for idx in &misses {
            if !unique.iter().any(|other| keys[*other] == keys[*idx]) {
                unique.push(*idx);
            }
        }
        // Each score is cached as soon as it is paid for, so a run killed
        // mid-batch loses only the calls still in flight.
        let outcomes = join_all(unique.iter().map(|idx| async {
            let outcome = self.replay(pairs[*idx].0, pairs[*idx].1).await;
            if let PairResult::Scored(score, usage) = &outcome {
                let cached = CachedEval {
                    response: score.response.clone(),
                    score: score.score,
                    feedback: score.feedback.clone(),
                };
                if let Err(err) = cache::put(
                    self.conn,
                    &keys[*idx],
                    &cached,
                    usage.input_tokens,
                    usage.output_tokens,
                ) {
                    tracing::warn!(error = %err, "APO cache write failed");
                }
            }
            outcome
        }))
        .await;
        for (idx, outcome) in unique.iter().zip(outcomes) {
            match outcome {
                PairResult::Scored(score, _) => results[*idx] = Some(score),
                PairResult::Failed(reason) => {
                    tracing::warn!(example = %pairs[*idx].1.id, %reason, "replay failed");
                    self.stats.borrow_mut().failures += 1;
                }
                PairResult::Budget => self.stats.borrow_mut().skipped_by_budget += 1,
            }
        }
        for idx in misses {
            if results[idx].is_none()
                && let Some(first) = unique.iter().find(|other| keys[**other] == keys[idx])
            {
                results[idx] = results[*first].clone().map(|score| ExampleScore {
                    paid_calls: 0,
                    ..score
                });
            }
        }
        if let Some(plugins) = &self.plugins {
            self.blend(plugins, pairs, &mut results).await;
        }
        results
    }

    /// Mixes the plugins' score into each scored pair; a pair a plugin
    /// fails on is left unscored.
    async fn blend(
        &self,
        plugins: &PluginScorer,
        pairs: &[(&str, &Example)],
        results: &mut [Option<ExampleScore>],
    ) {
        let model = self.llm.model(Role::Task).to_string();
        let scored: Vec<usize> = (0..results.len())
            .filter(|idx| results[*idx].is_some())
            .collect();
        let replays: Vec<Replay<'_>> = scored
            .iter()
            .filter_map(|idx| {
                let result = results[*idx].as_ref()?;
                Some(Replay {
                    prompt: pairs[*idx].0,
                    example: pairs[*idx].1,
                    response: &result.response,
                    model: &model,
                })
            })
            .collect();
        let outcomes = plugins.score_all(&replays).await;
        for (idx, outcome) in scored.into_iter().zip(outcomes) {
            let Some(result) = results[idx].as_mut() else {
                continue;
            };
            match outcome {
                Ok((score, feedback)) => {
                    result.score = if matches!(self.scorer, Scorer::PluginsOnly) {
                        score
                    } else {
                        (1.0 - plugins.weight) * result.score + plugins.weight * score
                    };
                    result.feedback = Some(match result.feedback.take() {
                        Some(judge) => format!("{judge}\n{feedback}"),
                        None => feedback,
                    });
                }
                Err(err) => {
                    tracing::warn!(example = %pairs[idx].1.id, error = %err, "reward plugin failed");
                    self.stats.borrow_mut().failures += 1;
                    results[idx] = None;
                }
            }
        }
    }

    async fn replay(&self, prompt: &str, example: &Example) -> PairResult {
        let mut messages = vec![Message {
            role: "system".to_string(),
            content: prompt.to_string(),
        }];
        messages.extend(example.messages.iter().cloned());
        let request = ChatRequest {
            role: Role::Task,
            messages,
            max_tokens: Some(self.max_response_tokens),
        };
        self.stats.borrow_mut().task_calls += 1;
        let reply = match self.budget.chat(self.llm, &request).await {
            Ok(reply) => reply,
            Err(CallError::Budget(_)) => {
                self.stats.borrow_mut().task_calls -= 1;
                return PairResult::Budget;
            }
            Err(CallError::Llm(err)) => return PairResult::Failed(err.to_string()),
        };
        if let Some(replies) = self.replies {
            // The task's replies are what is being scored, never unusable;
            // they are counted for their cuts at the limit.
            let model = self.llm.model(Role::Task);
            replies.record(Role::Task, model, &reply.text, reply.cut_at_limit, Ok(()));
        }
        let mut usage = reply.usage;
        let mut paid_calls = u64::from(reply.attempts);
        let mut feedback = None;
        let reference = example.reference.as_deref();
        let score = match &self.scorer {
            Scorer::PluginsOnly => 0.0,
            Scorer::ExactMatch => match reference {
                Some(reference) => exact_match(&reply.text, reference),
                None => return PairResult::Failed("no reference answer".into()),
            },
            Scorer::F1 => match reference {
                Some(reference) => token_f1(&reply.text, reference),
                None => return PairResult::Failed("no reference answer".into()),
            },
            Scorer::LlmJudge { rubric } => {
                let text = rubric
                    .replace("{{input}}", &example.input)
                    .replace(
                        "{{reference}}",
                        reference.unwrap_or("(no reference answer is available)"),
                    )
                    .replace("{{response}}", &reply.text);
                let judge_request = ChatRequest {
                    role: Role::Judge,
                    messages: vec![Message {
                        role: "user".to_string(),
                        content: text,
                    }],
                    max_tokens: Some(
                        self.replies
                            .map_or(JUDGE_MAX_TOKENS, ReplyMonitor::judge_max_tokens),
                    ),
                };
                self.stats.borrow_mut().judge_calls += 1;
                let verdict = match self.budget.chat(self.llm, &judge_request).await {
                    Ok(verdict) => verdict,
                    Err(CallError::Budget(_)) => {
                        self.stats.borrow_mut().judge_calls -= 1;
                        return PairResult::Budget;
                    }
                    Err(CallError::Llm(err)) => return PairResult::Failed(err.to_string()),
                };
                usage.add(verdict.usage);
                paid_calls += u64::from(verdict.attempts);
                let checked = replies::check_verdict(&verdict.text, verdict.cut_at_limit);
                if let Some(replies) = self.replies {
                    replies.record(
                        Role::Judge,
                        self.llm.model(Role::Judge),
                        &verdict.text,
                        verdict.cut_at_limit,
                        checked.map(|_| ()),
                    );
                }
                match checked {
                    Ok(score) => {
                        feedback = Some(verdict.text);
                        score
                    }
                    Err(kind) => {
                        return PairResult::Failed(format!(
                            "judge reply is unusable ({}): {:.120}",
                            kind.as_str(),
                            verdict.text
                        ));
                    }
                }
            }
        };
        PairResult::Scored(
            ExampleScore {
                example_id: example.id.clone(),
                score,
                response: reply.text,
                feedback,
                paid_calls,
            },
            usage,
        )
    }
}

/// Lowercase words of `text`, punctuation removed.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// 1 when response and reference have the same words in the same order.
pub fn exact_match(response: &str, reference: &str) -> f64 {
    if words(response) == words(reference) {
        1.0
    } else {
        0.0
    }
}

/// Token-level F1 between response and reference (bag of words).
pub fn token_f1(response: &str, reference: &str) -> f64 {
    let response = words(response);
    let mut reference = words(reference);
    if response.is_empty() || reference.is_empty() {
        return if response.is_empty() && reference.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let mut common = 0usize;
    for word in &response {
        if let Some(pos) = reference.iter().position(|other| other == word) {
            reference.swap_remove(pos);
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / response.len() as f64;
    let recall = common as f64 / (common + reference.len()) as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Reads `SCORE: n` (0–10, the last one wins) and maps it to `[0, 1]`.
pub fn parse_judge_score(text: &str) -> Option<f64> {
    let lower = text.to_lowercase();
    let at = lower.rfind("score")?;
    let rest = lower[at + "score".len()..].trim_start_matches([':', ' ', '*', '=', '\t']);
    let number: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let value: f64 = number.trim_end_matches('.').parse().ok()?;
    (0.0..=10.0).contains(&value).then_some(value / 10.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_match_ignores_case_and_punctuation() {
        assert_eq!(
            exact_match("It is 18C in Paris.", "it is 18c in paris"),
            1.0
        );
        assert_eq!(exact_match("It is 18C.", "It is 19C."), 0.0);
    }

    #[test]
    fn f1_gives_partial_credit() {
        assert_eq!(token_f1("a b c", "a b c"), 1.0);
        let partial = token_f1("a b x y", "a b c d");
        assert!((partial - 0.5).abs() < 1e-9, "{partial}");
        assert_eq!(token_f1("x", "a"), 0.0);
    }

    #[test]
    fn judge_score_parsing() {
        assert_eq!(parse_judge_score("Reasoning...\nSCORE: 7"), Some(0.7));
        assert_eq!(parse_judge_score("**Score**: 10."), Some(1.0));
        assert_eq!(parse_judge_score("score 11"), None);
        assert_eq!(parse_judge_score("no number here"), None);
    }
}
