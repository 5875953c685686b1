//! Automatic prompt optimization (APO): an evolutionary search over variants
//! of one of the agent's prompts, each scored by replaying recorded episodes
//! against an OpenAI-compatible endpoint.
//!
//! [`run`] is the entry point; the CLI and the daemon both call it.

mod bandit;
mod budget;
pub mod cache;
mod config;
mod dataset;
mod engine;
mod evaluate;
mod guardrails;
mod mutate;
mod operators;
mod output;
mod plugins;
mod replies;
mod select;

pub use crate::rng::Rng;
pub use bandit::{ArmStats, Bandit};
pub use budget::{Budget, CallError};
pub use config::{ApoConfig, BudgetConfig, OPERATOR_NAMES, ScorerConfig};
pub use dataset::{Dataset, DatasetSpec, Example};
pub use engine::{
    ApoSummary, GenerationReport, OperatorReport, ProgressEvent, Variant, VariantStatus, run,
};
pub use evaluate::{
    EvalStats, Evaluator, ExampleScore, Scorer, Scores, evaluate_all, exact_match, mean, token_f1,
};
pub use guardrails::Guardrails;
pub use mutate::{add_constraint, add_emphasis, add_example, reorder_instructions, simplify};
pub use operators::{MetaPrompt, MetaPrompts, Rewrite, Rewriter};
pub use plugins::{OPERATOR_PREFIX, PluginScorer};
pub use replies::{
    ReplyConfig, ReplyMonitor, ReplyReport, RoleReplies, Unusable, check_rewrite, check_verdict,
};
pub use select::{Paired, ScoreMap, dominates, frontier};
