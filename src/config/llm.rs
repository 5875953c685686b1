//! `[llm]`: the OpenAI-compatible endpoint Whetstone calls, and its models.
//!
//! The API key is deliberately not a setting: the config names the
//! environment variable that holds it, so the key never lands in a file,
//! in `config check` output or in logs.

use serde::{Deserialize, Serialize};

use super::validate::Checker;
use crate::llm::limit_field::MaxTokensField;

/// LLM endpoint settings. Defaults are documented in `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// Base URL of an OpenAI-compatible API, up to and including `/v1`.
    pub base_url: String,
    /// Name of the environment variable holding the API key.
    pub api_key_env: String,
    /// Per-request timeout.
    pub timeout_secs: u64,
    /// Retries of a failed request (rate limits, 5xx, timeouts).
    pub max_retries: u32,
    /// Requests in flight at once.
    pub max_concurrency: usize,
    /// Model that plays the agent when a candidate prompt is evaluated.
    pub task_model: String,
    /// Model that critiques and rewrites prompts.
    pub rewriter_model: String,
    /// Model that scores answers against what the traces expect.
    pub judge_model: String,
    /// Sampling temperature for every call.
    pub temperature: f64,
    /// Sampling seed passed to endpoints that support one.
    pub seed: Option<u64>,
    /// Which request field carries the output-token limit.
    pub max_tokens_field: MaxTokensField,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            base_url: "http://127.0.0.1:8000/v1".to_owned(),
            api_key_env: "OPENAI_API_KEY".to_owned(),
            timeout_secs: 60,
            max_retries: 4,
            max_concurrency: 4,
            task_model: "gpt-4o-mini".to_owned(),
            rewriter_model: "gpt-4o-mini".to_owned(),
            judge_model: "gpt-4o-mini".to_owned(),
            temperature: 0.0,
            seed: None,
            max_tokens_field: MaxTokensField::Auto,
        }
    }
}

impl LlmConfig {
    /// The API key from the environment variable named by `api_key_env`;
    /// `None` when it is unset, empty or not Unicode (local servers such as
    /// vLLM or Ollama need no key).
    pub fn api_key(&self) -> Option<String> {
        std::env::var(&self.api_key_env)
            .ok()
            .filter(|key| !key.is_empty())
    }

    pub(super) fn validate(&self, check: &mut Checker) {
        check.http_url("base_url", &self.base_url);
        if self.api_key_env.is_empty() || self.api_key_env.contains(['=', '\0']) {
            check.fail(
                "api_key_env",
                format!(
                    "must be an environment variable name (non-empty, no '=' or NUL), got {:?}",
                    self.api_key_env
                ),
            );
        }
        check.in_range("timeout_secs", self.timeout_secs, 1..=3600);
        check.in_range("max_retries", self.max_retries, 0..=100);
        check.in_range("max_concurrency", self.max_concurrency, 1..=1024);
        check.not_empty("task_model", &self.task_model);
        check.not_empty("rewriter_model", &self.rewriter_model);
        check.not_empty("judge_model", &self.judge_model);
        check.in_range("temperature", self.temperature, 0.0..=2.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_is_read_from_the_named_variable() {
        // PATH is set in every test environment; reading an existing variable
        // avoids `set_var`, which races with other test threads.
        let path = std::env::var("PATH").unwrap();
        let named_path = LlmConfig {
            api_key_env: "PATH".to_owned(),
            ..LlmConfig::default()
        };
        assert_eq!(named_path.api_key(), Some(path));

        let unset = LlmConfig {
            api_key_env: "WHETSTONE_TEST_VARIABLE_THAT_IS_NEVER_SET".to_owned(),
            ..LlmConfig::default()
        };
        assert_eq!(unset.api_key(), None);
    }

    #[test]
    fn debug_output_cannot_contain_the_key() {
        // The struct holds only the variable's name; this pins that no field
        // holding the key value is added later.
        let config = LlmConfig {
            api_key_env: "PATH".to_owned(),
            ..LlmConfig::default()
        };
        let path = std::env::var("PATH").unwrap();
        assert!(!format!("{config:?}").contains(&path));
    }
}
