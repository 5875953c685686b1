//! Per-run caps on LLM calls and tokens, with a share kept back for the end.
//!
//! A call is every HTTP attempt: the first attempt of a request is admitted
//! before it goes out, and each retry is admitted again, so a flaky endpoint
//! cannot push the count past `max_llm_calls` and concurrent calls cannot
//! either. Tokens are known only after a response, so the token cap stops new
//! calls once reached. The token check happens once a call holds one of
//! `max_in_flight` slots, so at most that many calls can overshoot the token
//! cap.
//!
//! Part of both caps can be **reserved** (the final validation's share):
//! while it is, the search sees the caps lowered by the reserve, and
//! [`Budget::release_reserve`] hands it back for the phase it was kept for.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Semaphore;

use crate::llm::{ChatReply, ChatRequest, LlmClient, LlmError};

/// Spending so far against the caps.
#[derive(Debug)]
pub struct Budget {
    max_calls: u64,
    max_tokens: u64,
    calls: AtomicU64,
    tokens: AtomicU64,
    reserved_calls: AtomicU64,
    reserved_tokens: AtomicU64,
    in_flight: Semaphore,
    /// Set by [`stop`](Self::stop): no further call or retry is admitted.
    stopped: AtomicBool,
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
            reserved_calls: AtomicU64::new(0),
            reserved_tokens: AtomicU64::new(0),
            in_flight: Semaphore::new(max_in_flight.max(1)),
            stopped: AtomicBool::new(false),
        }
    }

    /// Keeps `calls` and `tokens` back from everything spent until
    /// [`release_reserve`](Self::release_reserve).
    pub fn reserve(&self, calls: u64, tokens: u64) {
        self.reserved_calls.store(calls, Ordering::SeqCst);
        self.reserved_tokens.store(tokens, Ordering::SeqCst);
    }

    /// Makes the reserve spendable.
    pub fn release_reserve(&self) {
        self.reserve(0, 0);
    }

    fn call_cap(&self) -> u64 {
        self.max_calls
            .saturating_sub(self.reserved_calls.load(Ordering::SeqCst))
    }

    fn token_cap(&self) -> u64 {
        self.max_tokens
            .saturating_sub(self.reserved_tokens.load(Ordering::SeqCst))
    }

    /// Which cap is reached (the reserve excluded), if any.
    pub fn exhausted(&self) -> Option<&'static str> {
        if self.calls.load(Ordering::SeqCst) >= self.call_cap() {
            Some("apo.budget.max_llm_calls reached")
        } else if self.tokens.load(Ordering::SeqCst) >= self.token_cap() {
            Some("apo.budget.max_tokens reached")
        } else {
            None
        }
    }

    /// Calls that can still be made before the cap (the reserve excluded).
    pub fn calls_left(&self) -> u64 {
        self.call_cap()
            .saturating_sub(self.calls.load(Ordering::SeqCst))
    }

    /// Calls (HTTP attempts) admitted so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Tokens spent so far.
    pub fn tokens(&self) -> u64 {
        self.tokens.load(Ordering::SeqCst)
    }

    /// Admits no further call or retry, whatever the caps; calls waiting
    /// for a slot are refused when they get one.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Counts one attempt if the call cap has room.
    fn admit(&self) -> bool {
        if self.stopped.load(Ordering::SeqCst) {
            return false;
        }
        let cap = self.call_cap();
        self.calls
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |calls| {
                (calls < cap).then_some(calls + 1)
            })
            .is_ok()
    }

    /// Sends `req` if the caps allow, charging each attempt and the tokens.
    pub async fn chat(&self, llm: &LlmClient, req: &ChatRequest) -> Result<ChatReply, CallError> {
        let _slot = self
            .in_flight
            .acquire()
            .await
            .expect("semaphore never closed");
        if self.stopped.load(Ordering::SeqCst) {
            return Err(CallError::Budget("the run stopped spending"));
        }
        if self.tokens.load(Ordering::SeqCst) >= self.token_cap() {
            return Err(CallError::Budget("apo.budget.max_tokens reached"));
        }
        if !self.admit() {
            return Err(CallError::Budget("apo.budget.max_llm_calls reached"));
        }
        let reply = llm.chat_gated(req, || self.admit()).await?;
        self.tokens.fetch_add(
            reply.usage.input_tokens + reply.usage.output_tokens,
            Ordering::SeqCst,
        );
        Ok(reply)
    }
}
