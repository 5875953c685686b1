//! Per-run caps on LLM calls and tokens.
//!
//! A call is admitted only while both caps have room, and the call count is
//! reserved before the request goes out, so concurrent calls can never push
//! the count past `max_llm_calls`. Tokens are known only after a response, so
//! the token cap stops new calls once reached. The token check happens once a
//! call holds one of `max_in_flight` slots, so at most that many calls can
//! overshoot the token cap.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Semaphore;

use crate::llm::{ChatReply, ChatRequest, LlmClient, LlmError};

/// Spending so far against the caps.
#[derive(Debug)]
pub struct Budget {
    max_calls: u64,
    max_tokens: u64,
    calls: AtomicU64,
    tokens: AtomicU64,
    in_flight: Semaphore,
}

/// Why a budgeted call produced no reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("budget exhausted: {0}")]
    Budget(&'static str),
    #[error(transparent)]
    Llm(#[from] LlmError),
}

impl Budget {
    /// Caps for one run; `max_in_flight` is the client's concurrency limit.
    pub fn new(max_calls: u64, max_tokens: u64, max_in_flight: usize) -> Self {
        Budget {
            max_calls,
            max_tokens,
            calls: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            in_flight: Semaphore::new(max_in_flight.max(1)),
        }
    }

    /// Which cap is reached, if any.
    pub fn exhausted(&self) -> Option<&'static str> {
        if self.calls.load(Ordering::SeqCst) >= self.max_calls {
            Some("apo.budget.max_llm_calls reached")
        } else if self.tokens.load(Ordering::SeqCst) >= self.max_tokens {
            Some("apo.budget.max_tokens reached")
        } else {
            None
        }
    }

    /// Requests admitted so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Tokens spent so far.
    pub fn tokens(&self) -> u64 {
        self.tokens.load(Ordering::SeqCst)
    }

    /// Sends `req` if the caps allow, charging its call and tokens.
    pub async fn chat(&self, llm: &LlmClient, req: &ChatRequest) -> Result<ChatReply, CallError> {
        let _slot = self
            .in_flight
            .acquire()
            .await
            .expect("semaphore never closed");
        if self.tokens.load(Ordering::SeqCst) >= self.max_tokens {
            return Err(CallError::Budget("apo.budget.max_tokens reached"));
        }
        let admitted = self
            .calls
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |calls| {
                (calls < self.max_calls).then_some(calls + 1)
            })
            .is_ok();
        if !admitted {
            return Err(CallError::Budget("apo.budget.max_llm_calls reached"));
        }
        let reply = llm.chat(req).await?;
        self.tokens.fetch_add(
            reply.usage.input_tokens + reply.usage.output_tokens,
            Ordering::SeqCst,
        );
        Ok(reply)
    }
}
