//! Endpoint, models and limits for the LLM client.
//!
//! Mirrors the `[llm]` table of the configuration field for field, so the
//! config loader can map its section onto it one to one.

use serde::{Deserialize, Serialize};

/// Where and how to call the LLM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmSettings {
    /// Base URL of the OpenAI-compatible API, up to and including `/v1`.
    pub base_url: String,
    /// Name of the environment variable holding the API key.
    pub api_key_env: String,
    /// Per-attempt timeout.
    pub timeout_secs: f64,
    /// Retries after the first attempt for 429, 5xx, timeouts and malformed replies.
    pub max_retries: u32,
    /// Calls in flight at once, across all roles.
    pub max_concurrency: usize,
    /// Model that runs the agent's task during evaluation.
    pub task_model: String,
    /// Model that critiques and rewrites prompts.
    pub rewriter_model: String,
    /// Model that scores responses.
    pub judge_model: String,
    /// Sampling temperature for every role.
    pub temperature: f64,
    /// Sampling seed passed to endpoints that support one.
    pub seed: Option<u64>,
}

impl Default for LlmSettings {
    fn default() -> Self {
        LlmSettings {
            base_url: "https://api.openai.com/v1".to_string(),
            api_key_env: "OPENAI_API_KEY".to_string(),
            timeout_secs: 60.0,
            max_retries: 4,
            max_concurrency: 8,
            task_model: "gpt-4o-mini".to_string(),
            rewriter_model: "gpt-4o-mini".to_string(),
            judge_model: "gpt-4o-mini".to_string(),
            temperature: 0.0,
            seed: None,
        }
    }
}

impl LlmSettings {
    /// Every out-of-range value, named by key path under `prefix`.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            errors.push(format!(
                "{prefix}.base_url: must start with http:// or https://, got `{}`",
                self.base_url
            ));
        }
        if self.api_key_env.trim().is_empty() {
            errors.push(format!("{prefix}.api_key_env: must not be empty"));
        }
        if !(self.timeout_secs.is_finite() && self.timeout_secs > 0.0) {
            errors.push(format!(
                "{prefix}.timeout_secs: must be > 0, got {}",
                self.timeout_secs
            ));
        }
        if self.max_concurrency == 0 {
            errors.push(format!("{prefix}.max_concurrency: must be >= 1"));
        }
        for (key, model) in [
            ("task_model", &self.task_model),
            ("rewriter_model", &self.rewriter_model),
            ("judge_model", &self.judge_model),
        ] {
            if model.trim().is_empty() {
                errors.push(format!("{prefix}.{key}: must not be empty"));
            }
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            errors.push(format!(
                "{prefix}.temperature: must be within 0..=2, got {}",
                self.temperature
            ));
        }
        errors
    }
}
