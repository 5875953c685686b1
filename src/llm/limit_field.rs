//! Which request field carries the output-token limit.
//!
//! OpenAI deprecated `max_tokens` for `max_completion_tokens`, and its
//! reasoning models reject the old name; llama.cpp's and llama-cpp-python's
//! servers, Ollama and older vLLM read only `max_tokens` (and silently
//! generate until the context is full when sent the new one); strict servers
//! answer 400 to a field they do not know. So the field is a setting,
//! `[llm] max_tokens_field`, whose `auto` picks by host and then learns: a
//! 400 whose body names the field we sent is retried once with the other
//! field, and the field that worked is remembered for the endpoint for the
//! rest of the process (logged once, shown by `/v1/status`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// `[llm] max_tokens_field`: which field the limit is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    /// `max_completion_tokens` for OpenAI and Azure OpenAI hosts,
    /// `max_tokens` elsewhere; switched once when the server refuses it.
    #[default]
    Auto,
    /// Always `max_tokens`.
    MaxTokens,
    /// Always `max_completion_tokens`.
    MaxCompletionTokens,
}

/// A field the limit can travel in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LimitField {
    MaxTokens,
    MaxCompletionTokens,
}

impl LimitField {
    /// The JSON field name.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitField::MaxTokens => "max_tokens",
            LimitField::MaxCompletionTokens => "max_completion_tokens",
        }
    }

    /// The field tried when this one is refused.
    pub fn other(self) -> LimitField {
        match self {
            LimitField::MaxTokens => LimitField::MaxCompletionTokens,
            LimitField::MaxCompletionTokens => LimitField::MaxTokens,
        }
    }
}

/// Hosts whose API reads `max_completion_tokens` (and whose reasoning models
/// refuse `max_tokens`): OpenAI's and Azure OpenAI's.
fn is_openai_host(base_url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(base_url) else {
        return false;
    };
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    host == "api.openai.com"
        || host.ends_with(".openai.com")
        || host.ends_with(".openai.azure.com")
        || host.ends_with(".cognitiveservices.azure.com")
}

/// Fields learned by `auto` fallbacks, by base URL, for the whole process:
/// the daemon builds a client per round and must not relearn each time.
static LEARNED: Mutex<BTreeMap<String, LimitField>> = Mutex::new(BTreeMap::new());

/// The field to send first for `base_url` under `setting`.
pub fn initial(setting: MaxTokensField, base_url: &str) -> LimitField {
    match setting {
        MaxTokensField::MaxTokens => LimitField::MaxTokens,
        MaxTokensField::MaxCompletionTokens => LimitField::MaxCompletionTokens,
        MaxTokensField::Auto => {
            if let Some(learned) = LEARNED.lock().unwrap().get(base_url) {
                return *learned;
            }
            if is_openai_host(base_url) {
                LimitField::MaxCompletionTokens
            } else {
                LimitField::MaxTokens
            }
        }
    }
}

/// Remembers that `base_url` takes `field` after refusing the other one,
/// logging it the first time.
pub fn learn(base_url: &str, field: LimitField, refusal: &str) {
    let mut learned = LEARNED.lock().unwrap();
    if learned.insert(base_url.to_string(), field) != Some(field) {
        tracing::warn!(
            endpoint = base_url,
            field = field.as_str(),
            "the LLM endpoint refused `{}` ({refusal}); sending the output limit as `{}` from now on (llm.max_tokens_field = \"auto\")",
            field.other().as_str(),
            field.as_str()
        );
    }
}

/// Every field learned so far, as `endpoint -> field`.
pub fn learned() -> BTreeMap<String, &'static str> {
    LEARNED
        .lock()
        .unwrap()
        .iter()
        .map(|(url, field)| (url.clone(), field.as_str()))
        .collect()
}

/// Whether an HTTP 400/422 body says `field` is not accepted. Servers say it
/// in many ways ("Unsupported parameter: 'max_tokens'", "extra fields not
/// permitted", "unknown field `max_completion_tokens`"); all name the field.
pub fn refuses(status: u16, body: &str, field: LimitField) -> bool {
    if !matches!(status, 400 | 422) {
        return false;
    }
    let body = body.to_ascii_lowercase();
    let name = field.as_str();
    // Whole words only, so that a body naming `max_tokens_per_minute` (a
    // rate limit) is not taken for a refusal of `max_tokens`.
    body.match_indices(name).any(|(at, _)| {
        let before = body[..at].chars().next_back();
        let after = body[at + name.len()..].chars().next();
        let is_word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        !is_word(before) && !is_word(after)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_by_host() {
        let auto = MaxTokensField::Auto;
        for url in [
            "https://api.openai.com/v1",
            "https://myres.openai.azure.com/openai/deployments/gpt/",
            "https://x.cognitiveservices.azure.com/openai/v1",
        ] {
            assert_eq!(initial(auto, url), LimitField::MaxCompletionTokens, "{url}");
        }
        for url in [
            "http://127.0.0.1:11434/v1",
            "http://localhost:8080/v1",
            "https://openai.example.com/v1",
            "not a url",
        ] {
            assert_eq!(initial(auto, url), LimitField::MaxTokens, "{url}");
        }
        assert_eq!(
            initial(MaxTokensField::MaxCompletionTokens, "http://127.0.0.1:1/v1"),
            LimitField::MaxCompletionTokens
        );
        assert_eq!(
            initial(MaxTokensField::MaxTokens, "https://api.openai.com/v1"),
            LimitField::MaxTokens
        );
    }

    #[test]
    fn a_refusal_must_name_the_field_sent() {
        let openai = r#"{"error":{"message":"Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.","param":"max_tokens"}}"#;
        assert!(refuses(400, openai, LimitField::MaxTokens));
        let pydantic = r#"{"detail":[{"type":"extra_forbidden","loc":["body","max_completion_tokens"],"msg":"Extra inputs are not permitted"}]}"#;
        assert!(refuses(422, pydantic, LimitField::MaxCompletionTokens));
        assert!(!refuses(422, pydantic, LimitField::MaxTokens));
        assert!(!refuses(400, "model not found", LimitField::MaxTokens));
        assert!(!refuses(500, openai, LimitField::MaxTokens));
    }

    #[test]
    fn a_learned_field_is_used_next_time() {
        let url = "http://127.0.0.1:9/learned-field-test/v1";
        assert_eq!(initial(MaxTokensField::Auto, url), LimitField::MaxTokens);
        learn(url, LimitField::MaxCompletionTokens, "HTTP 400");
        assert_eq!(
            initial(MaxTokensField::Auto, url),
            LimitField::MaxCompletionTokens
        );
        assert_eq!(learned().get(url), Some(&"max_completion_tokens"));
        // An explicit setting is never overridden by what `auto` learned.
        assert_eq!(
            initial(MaxTokensField::MaxTokens, url),
            LimitField::MaxTokens
        );
    }
}
