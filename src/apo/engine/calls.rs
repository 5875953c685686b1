//! The LLM-facing parts of a run (replays and rewrites), and what follows
//! every batch of their calls.

use anyhow::Context;
use rusqlite::Connection;

use crate::apo::cache;
use crate::apo::evaluate::Evaluator;
use crate::apo::operators::Rewriter;
use crate::apo::replies::ReplyMonitor;
use crate::llm::LlmClient;

/// The LLM-facing parts of a run and what follows each batch of calls.
pub(super) struct Calls<'a> {
    pub llm: &'a LlmClient,
    pub conn: &'a Connection,
    pub run_id: &'a str,
    pub evaluator: Evaluator<'a>,
    pub rewriter: Rewriter<'a>,
    pub replies: &'a ReplyMonitor<'a>,
}

impl Calls<'_> {
    /// After each batch of calls: the ledger gets them, and an endpoint
    /// deemed unreachable ends the run.
    pub fn settle(&self) -> anyhow::Result<()> {
        cache::append_ledger(self.conn, self.run_id, &self.llm.take_records())
            .context("writing the LLM call ledger")?;
        match self.llm.unreachable().or_else(|| self.replies.stop_error()) {
            Some(reason) => Err(anyhow::anyhow!(reason)),
            None => Ok(()),
        }
    }
}
