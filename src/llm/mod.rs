//! A chat client for any OpenAI-compatible endpoint, built to survive a flaky
//! one.
//!
//! Request and response bodies are async-openai's chat types, so whatever the
//! OpenAI spec says is what we send and accept. The transport is our own
//! reqwest call rather than async-openai's client because every attempt must
//! be visible: each one is counted and recorded in the ledger with its
//! latency and outcome, `Retry-After` on 429 is honored, and a 200 with a body
//! that is not a chat completion is retried like a 5xx. async-openai's client
//! retries internally and reports only the final outcome.
//!
//! Retries use exponential backoff with jitter; a `Retry-After` given in
//! seconds replaces the backoff (capped by `Backoff::max`; an HTTP-date form
//! falls back to the backoff). The number of calls in flight
//! is bounded by a semaphore shared by all roles. The API key is read once
//! from the environment variable `[llm] api_key_env` names and is never
//! printed.
//!
//! An endpoint that cannot be reached at all fails fast: after
//! [`MAX_CONNECTION_FAILURES`] connection failures in a row (no response of
//! any kind in between), every call fails at once with an error naming the
//! URL and the cause, instead of retrying each request with backoff.
//!
//! The output limit travels in the field the server reads (see
//! [`limit_field`]); a reply the server cut at that limit says so
//! ([`ChatReply::cut_at_limit`]).

pub mod limit_field;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    CreateChatCompletionRequest, CreateChatCompletionResponse,
};
use tokio::sync::Semaphore;

use self::limit_field::{LimitField, MaxTokensField};
use crate::config::LlmConfig;
use crate::trace::{Message, TokenUsage};

/// Connection failures in a row (across all requests) after which the
/// endpoint is deemed unreachable and every further call fails at once.
pub const MAX_CONNECTION_FAILURES: u32 = 3;

/// Which job a call does; each role has its own model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Runs the agent's task with a candidate prompt (evaluation by replay).
    Task,
    /// Critiques, edits, paraphrases and crosses prompts.
    Rewriter,
    /// Scores a task response against a reference.
    Judge,
}

impl Role {
    /// The name used in the ledger and in summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Task => "task",
            Role::Rewriter => "rewriter",
            Role::Judge => "judge",
        }
    }
}

/// One chat request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub role: Role,
    /// Messages in order; roles `system`, `user`, `assistant` and `tool`.
    pub messages: Vec<Message>,
    /// Upper bound on generated tokens, if any.
    pub max_tokens: Option<u32>,
}

/// A successful chat response.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatReply {
    /// The text of the first choice (empty when the model returned none).
    pub text: String,
    /// Tokens the endpoint reported for the successful attempt.
    pub usage: TokenUsage,
    /// Attempts made, 1 when the first one succeeded.
    pub attempts: u32,
    /// The server stopped generating at the output limit
    /// (`finish_reason: length`): the text is cut short.
    pub cut_at_limit: bool,
}

/// How one HTTP attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    /// HTTP 429.
    RateLimited,
    /// HTTP 5xx or 408.
    ServerError,
    /// No response within `timeout_secs`.
    Timeout,
    /// A 2xx whose body is not a chat completion.
    Malformed,
    /// A 4xx other than 408/429: not retried.
    Rejected,
    /// Connection refused, reset, DNS and the like.
    Transport,
}

impl Outcome {
    /// The name used in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::RateLimited => "rate_limited",
            Outcome::ServerError => "server_error",
            Outcome::Timeout => "timeout",
            Outcome::Malformed => "malformed",
            Outcome::Rejected => "rejected",
            Outcome::Transport => "transport_error",
        }
    }

    fn is_retryable(self) -> bool {
        !matches!(self, Outcome::Ok | Outcome::Rejected)
    }
}

/// One HTTP attempt, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRecord {
    pub role: Role,
    pub model: String,
    pub usage: TokenUsage,
    pub latency_ms: f64,
    pub outcome: Outcome,
    /// 1-based attempt number within its request.
    pub attempt: u32,
}

/// A request that failed for good: retries exhausted or not retryable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{role} call to model `{model}` failed after {attempts} attempt(s): {last_error}")]
pub struct LlmError {
    pub role: &'static str,
    pub model: String,
    pub attempts: u32,
    pub outcome: Outcome,
    pub last_error: String,
}

/// Backoff timing; the defaults suit real endpoints, tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry; doubled on each further retry.
    pub base: Duration,
    /// Ceiling for any delay, including one asked for by `Retry-After`.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// Totals over every attempt made through one client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientStats {
    /// Requests (logical calls) per role, in `Role` order: task, rewriter, judge.
    pub requests: [u64; 3],
    /// HTTP attempts, including retries.
    pub attempts: u64,
    /// HTTP attempts per role, in `Role` order.
    pub attempts_by_role: [u64; 3],
    /// Attempts that did not succeed.
    pub failed_attempts: u64,
    /// Requests that failed for good.
    pub failed_requests: u64,
    pub usage: TokenUsage,
}

/// An OpenAI-compatible chat client with retries, a concurrency limit and a
/// record of every attempt. Share it by reference; it is `Sync`.
pub struct LlmClient {
    http: reqwest::Client,
    config: LlmConfig,
    api_key: Option<String>,
    backoff: Backoff,
    permits: Semaphore,
    stats: Mutex<ClientStats>,
    records: Mutex<Vec<CallRecord>>,
    /// Connection failures since the last attempt that got any response.
    connection_failures: AtomicU32,
    /// Set once the endpoint is deemed unreachable: why, for every later call.
    unreachable: Mutex<Option<String>>,
    /// The field the output limit is sent in (`auto` may switch it once).
    limit_field: Mutex<LimitField>,
}

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClient")
            .field("base_url", &self.config.base_url)
            .field("api_key_env", &self.config.api_key_env)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl LlmClient {
    /// Builds a client for a validated `[llm]` section, reading the API key
    /// from the environment variable it names. A missing or empty variable
    /// means no `Authorization` header (local servers such as Ollama need none).
    pub fn new(config: LlmConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs.max(1)))
            .build()?;
        Ok(LlmClient {
            http,
            permits: Semaphore::new(config.max_concurrency.max(1)),
            api_key: config.api_key(),
            backoff: Backoff::default(),
            stats: Mutex::new(ClientStats::default()),
            records: Mutex::new(Vec::new()),
            connection_failures: AtomicU32::new(0),
            unreachable: Mutex::new(None),
            limit_field: Mutex::new(limit_field::initial(
                config.max_tokens_field,
                &config.base_url,
            )),
            config,
        })
    }

    /// Replaces the backoff timing.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The `[llm]` section the client runs with.
    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// The model configured for a role.
    pub fn model(&self, role: Role) -> &str {
        match role {
            Role::Task => &self.config.task_model,
            Role::Rewriter => &self.config.rewriter_model,
            Role::Judge => &self.config.judge_model,
        }
    }

    /// Totals so far.
    pub fn stats(&self) -> ClientStats {
        self.stats.lock().unwrap().clone()
    }

    /// Removes and returns the attempts recorded since the last call.
    pub fn take_records(&self) -> Vec<CallRecord> {
        std::mem::take(&mut *self.records.lock().unwrap())
    }

    /// The field the output limit is sent in now.
    pub fn limit_field(&self) -> LimitField {
        *self.limit_field.lock().unwrap()
    }

    /// Why the endpoint is deemed unreachable, once it is (see the module docs).
    pub fn unreachable(&self) -> Option<String> {
        self.unreachable.lock().unwrap().clone()
    }

    /// Sends one chat request, retrying 429, 5xx, timeouts, transport errors
    /// and malformed bodies up to `max_retries` times. Under
    /// `max_tokens_field = "auto"`, a 400 refusing the limit's field is
    /// retried once with the other field, which is kept from then on.
    pub async fn chat(&self, req: &ChatRequest) -> Result<ChatReply, LlmError> {
        self.chat_gated(req, || true).await
    }

    /// [`chat`](Self::chat), asking `may_retry` before each retry; a retry it
    /// refuses ends the request with the last attempt's error. Budgets that
    /// count attempts admit retries through it.
    pub async fn chat_gated(
        &self,
        req: &ChatRequest,
        may_retry: impl Fn() -> bool,
    ) -> Result<ChatReply, LlmError> {
        let model = self.model(req.role).to_string();
        let mut body = self.request_body(req, &model);
        self.stats.lock().unwrap().requests[req.role as usize] += 1;
        let mut attempt = 0u32;
        let mut switched_field = false;
        loop {
            let sent_field = req.max_tokens.map(|limit| {
                let field = self.limit_field();
                set_limit(&mut body, field, limit);
                field
            });
            attempt += 1;
            if let Some(reason) = self.unreachable() {
                self.stats.lock().unwrap().failed_requests += 1;
                return Err(LlmError {
                    role: req.role.as_str(),
                    model,
                    attempts: attempt - 1,
                    outcome: Outcome::Transport,
                    last_error: reason,
                });
            }
            let permit = self
                .permits
                .acquire()
                .await
                .expect("semaphore never closed");
            let started = Instant::now();
            let res = self.attempt(&body, sent_field).await;
            drop(permit);
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            let (outcome, usage) = match &res {
                Ok(done) => (Outcome::Ok, done.usage),
                Err(failure) => (failure.outcome, TokenUsage::default()),
            };
            if let Err(failure) = &res
                && failure.outcome == Outcome::Transport
            {
                let in_a_row = self.connection_failures.fetch_add(1, Ordering::SeqCst) + 1;
                if in_a_row >= MAX_CONNECTION_FAILURES {
                    let mut unreachable = self.unreachable.lock().unwrap();
                    if unreachable.is_none() {
                        *unreachable = Some(format!(
                            "cannot reach the LLM endpoint {} ({in_a_row} connection failures in a row, llm.base_url): {}",
                            self.config.base_url, failure.message
                        ));
                    }
                }
            } else {
                self.connection_failures.store(0, Ordering::SeqCst);
            }
            self.record(CallRecord {
                role: req.role,
                model: model.clone(),
                usage,
                latency_ms,
                outcome,
                attempt,
            });
            let failure = match res {
                Ok(done) => {
                    return Ok(ChatReply {
                        text: done.text,
                        usage: done.usage,
                        attempts: attempt,
                        cut_at_limit: done.cut_at_limit,
                    });
                }
                Err(failure) => failure,
            };
            if let Some(field) = sent_field
                && failure.refuses_limit_field
                && self.config.max_tokens_field == MaxTokensField::Auto
                && !switched_field
                && may_retry()
            {
                switched_field = true;
                let mut current = self.limit_field.lock().unwrap();
                if *current == field {
                    *current = field.other();
                    limit_field::learn(&self.config.base_url, field.other(), &failure.message);
                }
                continue;
            }
            if !failure.outcome.is_retryable() || attempt > self.config.max_retries || !may_retry()
            {
                self.stats.lock().unwrap().failed_requests += 1;
                return Err(LlmError {
                    role: req.role.as_str(),
                    model,
                    attempts: attempt,
                    outcome: failure.outcome,
                    last_error: failure.message,
                });
            }
            let delay = match failure.retry_after {
                Some(asked) => asked.min(self.backoff.max),
                None => self.backoff_delay(attempt),
            };
            tracing::debug!(
                role = req.role.as_str(),
                attempt,
                outcome = failure.outcome.as_str(),
                delay_ms = delay.as_millis() as u64,
                "retrying LLM call"
            );
            tokio::time::sleep(delay).await;
        }
    }

    // `seed` is deprecated by OpenAI but honored by vLLM, llama.cpp and
    // Ollama, which is where reproducible replays matter most.
    #[allow(deprecated)]
    fn request_body(&self, req: &ChatRequest, model: &str) -> CreateChatCompletionRequest {
        let messages = req
            .messages
            .iter()
            .map(|message| match message.role.as_str() {
                "system" | "developer" => ChatCompletionRequestMessage::System(
                    ChatCompletionRequestSystemMessage::from(message.content.as_str()),
                ),
                "assistant" => ChatCompletionRequestMessage::Assistant(
                    ChatCompletionRequestAssistantMessage::from(message.content.as_str()),
                ),
                // The episode model keeps tool results without the call ids an
                // OpenAI `tool` message needs, so replay hands them over as a
                // user turn that says what it is.
                "tool" => {
                    ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage::from(
                        format!("Tool result:\n{}", message.content),
                    ))
                }
                _ => ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage::from(
                    message.content.as_str(),
                )),
            })
            .collect();
        CreateChatCompletionRequest {
            messages,
            model: model.to_string(),
            temperature: Some(self.config.temperature as f32),
            seed: self.config.seed.map(|seed| seed as i64),
            ..Default::default()
        }
    }

    async fn attempt(
        &self,
        body: &CreateChatCompletionRequest,
        sent_field: Option<LimitField>,
    ) -> Result<Completion, AttemptFailure> {
        let url = format!(
            "{}/chat/completions",
            self.config.base_url.trim_end_matches('/')
        );
        let mut request = self.http.post(url).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(AttemptFailure::from_reqwest)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<f64>().ok())
            .filter(|secs| secs.is_finite() && *secs >= 0.0)
            .map(Duration::from_secs_f64);
        let bytes = response
            .bytes()
            .await
            .map_err(AttemptFailure::from_reqwest)?;
        if !status.is_success() {
            let outcome = match status.as_u16() {
                429 => Outcome::RateLimited,
                408 | 500..=599 => Outcome::ServerError,
                _ => Outcome::Rejected,
            };
            let text = String::from_utf8_lossy(&bytes);
            let snippet: String = text.chars().take(300).collect();
            return Err(AttemptFailure {
                outcome,
                message: format!("HTTP {status}: {snippet}"),
                retry_after,
                refuses_limit_field: sent_field
                    .is_some_and(|field| limit_field::refuses(status.as_u16(), &text, field)),
            });
        }
        let parsed: CreateChatCompletionResponse =
            serde_json::from_slice(&bytes).map_err(|err| AttemptFailure {
                outcome: Outcome::Malformed,
                message: format!("response is not a chat completion: {err}"),
                retry_after: None,
                refuses_limit_field: false,
            })?;
        let first = parsed.choices.first();
        let text = first
            .and_then(|choice| choice.message.content.clone())
            .unwrap_or_default();
        let cut_at_limit = first.is_some_and(|choice| {
            choice.finish_reason == Some(async_openai::types::chat::FinishReason::Length)
        });
        let usage = parsed
            .usage
            .map(|usage| TokenUsage {
                input_tokens: u64::from(usage.prompt_tokens),
                output_tokens: u64::from(usage.completion_tokens),
            })
            .unwrap_or_default();
        Ok(Completion {
            text,
            usage,
            cut_at_limit,
        })
    }

    fn record(&self, record: CallRecord) {
        {
            let mut stats = self.stats.lock().unwrap();
            stats.attempts += 1;
            stats.attempts_by_role[record.role as usize] += 1;
            if record.outcome != Outcome::Ok {
                stats.failed_attempts += 1;
            }
            stats.usage.add(record.usage);
        }
        self.records.lock().unwrap().push(record);
    }

    /// Exponential backoff with "equal jitter": half the delay is fixed, the
    /// other half random, so retries of concurrent calls spread out.
    fn backoff_delay(&self, attempt: u32) -> Duration {
        let exp = self
            .backoff
            .base
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(self.backoff.max);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
        let mut x = nanos ^ (u64::from(attempt) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        let fraction = (x >> 11) as f64 / (1u64 << 53) as f64;
        exp.mul_f64(0.5 + 0.5 * fraction)
    }
}

/// Puts `limit` in `field` and clears the other one.
#[allow(deprecated)] // `max_tokens` is deprecated by OpenAI, read by everyone else.
fn set_limit(body: &mut CreateChatCompletionRequest, field: LimitField, limit: u32) {
    let (max_tokens, max_completion_tokens) = match field {
        LimitField::MaxTokens => (Some(limit), None),
        LimitField::MaxCompletionTokens => (None, Some(limit)),
    };
    body.max_tokens = max_tokens;
    body.max_completion_tokens = max_completion_tokens;
}

/// A successful attempt.
struct Completion {
    text: String,
    usage: TokenUsage,
    cut_at_limit: bool,
}

struct AttemptFailure {
    outcome: Outcome,
    message: String,
    retry_after: Option<Duration>,
    /// A 400/422 whose body names the field the limit was sent in.
    refuses_limit_field: bool,
}

impl AttemptFailure {
    fn from_reqwest(err: reqwest::Error) -> Self {
        let outcome = if err.is_timeout() {
            Outcome::Timeout
        } else if err.is_decode() {
            Outcome::Malformed
        } else {
            Outcome::Transport
        };
        // reqwest's own message is only "error sending request"; the cause
        // (connection refused, DNS failure, ...) is further down the chain.
        let err = err.without_url();
        let mut message = err.to_string();
        let mut cause = std::error::Error::source(&err);
        while let Some(inner) = cause {
            let text = inner.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            cause = inner.source();
        }
        AttemptFailure {
            outcome,
            message,
            retry_after: None,
            refuses_limit_field: false,
        }
    }
}
