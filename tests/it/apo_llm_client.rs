//! The LLM client against the local test server: retries, faults, keys.

use crate::support;

use std::time::{Duration, Instant};

use crate::support::{Fault, TestServer};
use whetstone::config::LlmConfig;
use whetstone::llm::{Backoff, ChatRequest, LlmClient, Outcome, Role};
use whetstone::trace::Message;

fn request(role: Role) -> ChatRequest {
    ChatRequest {
        role,
        messages: vec![
            Message {
                role: "system".into(),
                content: "Cite the tool result. Answer in one sentence.".into(),
            },
            Message {
                role: "user".into(),
                content: "Weather in Oslo?".into(),
            },
            Message {
                role: "tool".into(),
                content: "it is 3 degrees in Oslo".into(),
            },
        ],
        max_tokens: Some(64),
    }
}

fn fast(settings: LlmConfig) -> LlmClient {
    LlmClient::new(settings).unwrap().with_backoff(Backoff {
        base: Duration::from_millis(5),
        max: Duration::from_secs(5),
    })
}

#[tokio::test]
async fn retries_every_transient_fault_and_records_each_attempt() {
    let server = TestServer::start().await;
    let mut settings = server.settings();
    settings.timeout_secs = 1;
    settings.max_retries = 4;
    let llm = fast(settings);
    server.fault_on(
        1,
        Fault::RateLimit {
            retry_after_secs: 1,
        },
    );
    server.fault_on(2, Fault::ServerError);
    server.fault_on(3, Fault::Hang(Duration::from_secs(3)));
    server.fault_on(4, Fault::Malformed);

    let reply = llm.chat(&request(Role::Task)).await.unwrap();
    assert_eq!(reply.text, support::good_answer("it is 3 degrees in Oslo"));
    assert_eq!(reply.attempts, 5);
    assert!(reply.usage.input_tokens > 0 && reply.usage.output_tokens > 0);

    let outcomes: Vec<Outcome> = llm.take_records().iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::RateLimited,
            Outcome::ServerError,
            Outcome::Timeout,
            Outcome::Malformed,
            Outcome::Ok
        ]
    );
    let stats = llm.stats();
    assert_eq!((stats.attempts, stats.failed_attempts), (5, 4));
    assert_eq!(stats.failed_requests, 0);
    assert_eq!(stats.requests, [1, 0, 0]);
}

#[tokio::test]
async fn honors_retry_after_on_429() {
    let server = TestServer::start().await;
    let llm = fast(server.settings());
    server.fault_on(
        1,
        Fault::RateLimit {
            retry_after_secs: 1,
        },
    );
    let started = Instant::now();
    let reply = llm.chat(&request(Role::Rewriter)).await.unwrap();
    assert_eq!(reply.attempts, 2);
    // The backoff alone would have waited 5 ms.
    assert!(started.elapsed() >= Duration::from_millis(950));
}

#[tokio::test]
async fn gives_up_after_max_retries_with_a_clear_error() {
    let server = TestServer::start().await;
    let mut settings = server.settings();
    settings.max_retries = 1;
    let llm = fast(settings);
    server.fault_on(1, Fault::ServerError);
    server.fault_on(2, Fault::ServerError);
    let err = llm.chat(&request(Role::Judge)).await.unwrap_err();
    assert_eq!(err.attempts, 2);
    assert_eq!(err.outcome, Outcome::ServerError);
    let message = err.to_string();
    assert!(message.contains("judge call to model `judge-model` failed after 2 attempt(s)"));
    assert!(message.contains("HTTP 500"), "{message}");
    assert_eq!(llm.stats().failed_requests, 1);
    // The next call works again.
    assert!(llm.chat(&request(Role::Judge)).await.is_ok());
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let server = TestServer::start().await;
    let mut settings = server.settings();
    settings.task_model = "no-such-model".into();
    let llm = fast(settings);
    let err = llm.chat(&request(Role::Task)).await.unwrap_err();
    assert_eq!((err.attempts, err.outcome), (1, Outcome::Rejected));
    assert_eq!(server.requests(), 1);
}

/// Regression test for issue 8 (item 10): an endpoint nobody listens on is
/// given up after a few connection failures in a row, whatever
/// `max_retries` says, and every later call fails at once naming the URL
/// and the cause.
#[tokio::test]
async fn unreachable_endpoint_fails_fast_naming_url_and_cause() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let settings = LlmConfig {
        base_url: format!("http://{addr}/v1"),
        max_retries: 10,
        ..LlmConfig::default()
    };
    let llm = fast(settings);
    let err = llm.chat(&request(Role::Task)).await.unwrap_err();
    assert_eq!(
        (err.attempts, err.outcome),
        (whetstone::llm::MAX_CONNECTION_FAILURES, Outcome::Transport)
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!("cannot reach the LLM endpoint http://{addr}/v1")),
        "{message}"
    );
    assert!(
        message.to_lowercase().contains("connection refused"),
        "{message}"
    );
    let again = llm.chat(&request(Role::Judge)).await.unwrap_err();
    assert_eq!(again.attempts, 0);
    assert_eq!(llm.stats().attempts, 3);
}

#[tokio::test]
async fn api_key_comes_from_the_named_env_var_and_is_never_printed() {
    let server = TestServer::start().await;
    let mut settings = server.settings();
    settings.api_key_env = "WHETSTONE_APO_TEST_KEY".into();
    // SAFETY: this test binary sets no other environment variable and this
    // one is read only by this test.
    unsafe { std::env::set_var("WHETSTONE_APO_TEST_KEY", "sk-secret-123") };
    let llm = LlmClient::new(settings).unwrap();
    let debug = format!("{llm:?}");
    assert!(!debug.contains("sk-secret-123"), "{debug}");
    assert!(debug.contains("<redacted>"));
    assert!(llm.chat(&request(Role::Task)).await.is_ok());
    assert_eq!(
        server.last_authorization().as_deref(),
        Some("Bearer sk-secret-123")
    );

    // Settings naming an unset variable send no key at all.
    let unset = LlmClient::new(server.settings()).unwrap();
    assert!(unset.chat(&request(Role::Task)).await.is_ok());
    assert_eq!(server.last_authorization(), None);
}
