//! The output limit reaches the server in the field it reads (issue 28).

use std::time::Duration;

use crate::support::TestServer;
use whetstone::config::LlmConfig;
use whetstone::llm::limit_field::{self, LimitField, MaxTokensField};
use whetstone::llm::{Backoff, ChatRequest, LlmClient, Outcome, Role};
use whetstone::trace::Message;

fn client(settings: LlmConfig) -> LlmClient {
    LlmClient::new(settings).unwrap().with_backoff(Backoff {
        base: Duration::from_millis(5),
        max: Duration::from_millis(20),
    })
}

fn request(role: Role, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        role,
        messages: vec![Message {
            role: "user".to_string(),
            content: "Paraphrase this prompt: <prompt>Be brief.</prompt>".to_string(),
        }],
        max_tokens: Some(max_tokens),
    }
}

fn limit_fields(body: &serde_json::Value) -> (Option<u64>, Option<u64>) {
    (
        body["max_tokens"].as_u64(),
        body["max_completion_tokens"].as_u64(),
    )
}

#[tokio::test]
async fn the_configured_field_is_sent() {
    let server = TestServer::start().await;
    for (setting, expected) in [
        (MaxTokensField::MaxTokens, (Some(40), None)),
        (MaxTokensField::MaxCompletionTokens, (None, Some(40))),
        // A loopback server is not OpenAI: `auto` starts with `max_tokens`.
        (MaxTokensField::Auto, (Some(40), None)),
    ] {
        let llm = client(LlmConfig {
            max_tokens_field: setting,
            ..server.settings()
        });
        llm.chat(&request(Role::Rewriter, 40)).await.unwrap();
        let bodies = server.bodies();
        assert_eq!(
            limit_fields(bodies.last().unwrap()),
            expected,
            "{setting:?}"
        );
    }
}

/// A server reading only `max_tokens` (llama-cpp-python) ignores
/// `max_completion_tokens` and generates until its context is full; sent in
/// its field, the limit holds and the cut is reported.
#[tokio::test]
async fn a_limit_in_the_field_the_server_reads_cuts_the_reply() {
    let server = TestServer::start().await;
    server.read_limit_from("max_tokens");
    let settings = LlmConfig {
        rewriter_model: "loop-model".to_string(),
        ..server.settings()
    };
    let wrong = client(LlmConfig {
        max_tokens_field: MaxTokensField::MaxCompletionTokens,
        ..settings.clone()
    });
    let reply = wrong.chat(&request(Role::Rewriter, 50)).await.unwrap();
    assert!(!reply.cut_at_limit);
    assert!(reply.usage.output_tokens > 1000, "{:?}", reply.usage);

    let right = client(LlmConfig {
        max_tokens_field: MaxTokensField::MaxTokens,
        ..settings
    });
    let reply = right.chat(&request(Role::Rewriter, 50)).await.unwrap();
    assert!(reply.cut_at_limit);
    assert_eq!(reply.usage.output_tokens, 50);
}

#[tokio::test]
async fn auto_falls_back_once_on_a_400_naming_the_field_and_remembers() {
    let server = TestServer::start().await;
    server.refuse_field("max_tokens");
    let settings = server.settings();
    let llm = client(settings.clone());
    assert_eq!(llm.limit_field(), LimitField::MaxTokens);

    let reply = llm.chat(&request(Role::Judge, 30)).await.unwrap();
    assert_eq!(reply.attempts, 2);
    let bodies = server.bodies();
    assert_eq!(
        bodies.iter().map(limit_fields).collect::<Vec<_>>(),
        [(Some(30), None), (None, Some(30))]
    );
    assert_eq!(llm.limit_field(), LimitField::MaxCompletionTokens);
    assert_eq!(
        limit_field::learned().get(&settings.base_url),
        Some(&"max_completion_tokens")
    );
    // Every attempt is counted, the refused one too.
    assert_eq!(llm.stats().attempts, 2);
    let outcomes: Vec<Outcome> = llm.take_records().iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, [Outcome::Rejected, Outcome::Ok]);

    // Remembered: the next request, and a new client for the same endpoint
    // (the daemon makes one per round), go straight to the field that works.
    llm.chat(&request(Role::Task, 30)).await.unwrap();
    let again = client(settings);
    assert_eq!(again.limit_field(), LimitField::MaxCompletionTokens);
    again.chat(&request(Role::Task, 30)).await.unwrap();
    assert_eq!(server.requests(), 4);
    assert!(
        server.bodies()[2..]
            .iter()
            .all(|body| limit_fields(body) == (None, Some(30)))
    );
}

#[tokio::test]
async fn a_chosen_field_is_not_switched_and_the_400_is_reported() {
    let server = TestServer::start().await;
    server.refuse_field("max_completion_tokens");
    let llm = client(LlmConfig {
        max_tokens_field: MaxTokensField::MaxCompletionTokens,
        ..server.settings()
    });
    let err = llm.chat(&request(Role::Task, 30)).await.unwrap_err();
    assert_eq!((err.attempts, err.outcome), (1, Outcome::Rejected));
    assert!(
        err.to_string()
            .contains("Unsupported parameter: 'max_completion_tokens'"),
        "{err}"
    );
    assert_eq!(server.requests(), 1);
}

/// Both fields refused: one fallback, then the 400 stands (no ping-pong).
#[tokio::test]
async fn auto_falls_back_only_once_per_request() {
    let server = TestServer::start().await;
    server.refuse_field("max_tokens");
    let llm = client(server.settings());
    // The first request switches to `max_completion_tokens`; now refuse it.
    llm.chat(&request(Role::Task, 30)).await.unwrap();
    server.refuse_field("max_completion_tokens");
    let err = llm.chat(&request(Role::Task, 30)).await.unwrap_err();
    assert_eq!((err.attempts, err.outcome), (2, Outcome::Rejected));
    assert_eq!(server.requests(), 4);
}

#[tokio::test]
async fn a_budget_gate_refusing_the_fallback_ends_the_request() {
    let server = TestServer::start().await;
    server.refuse_field("max_tokens");
    let llm = client(server.settings());
    let err = llm
        .chat_gated(&request(Role::Task, 30), || false)
        .await
        .unwrap_err();
    assert_eq!((err.attempts, err.outcome), (1, Outcome::Rejected));
    assert_eq!(server.requests(), 1);
}
