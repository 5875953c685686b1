//! The normalized episode model every trace format is read into.
//!
//! An [`Episode`] is one run of the agent on one task: which prompt it used,
//! what it was asked, the ordered LLM calls and tool executions it made, and
//! the rewards it earned. APO, RL and the registry only ever see this model,
//! never a raw trace format. It is also the JSON shape that
//! `whetstone traces parse` prints and the store keeps, so field names are
//! part of the public contract (documented in `docs/TRACE_FORMAT.md`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One agent run on one task, normalized from any supported trace format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// Stable identity: the OTLP trace id as lowercase hex, or the `id` field
    /// of a Whetstone JSONL episode. Used to ingest each episode exactly once.
    pub trace_id: String,
    /// Which reader produced the episode.
    pub format: TraceFormat,
    /// The prompt the agent ran with.
    pub prompt: PromptRef,
    /// The task input: the first user message.
    pub input: Option<String>,
    /// LLM calls and tool executions, in the order they started.
    pub steps: Vec<Step>,
    /// Final (episode-level) rewards by name.
    pub rewards: BTreeMap<String, f64>,
    /// Whether the run as a whole succeeded.
    pub status: Status,
    /// Start of the run, nanoseconds since the Unix epoch.
    pub start_time_unix_nano: Option<u64>,
    /// Wall time of the run in milliseconds.
    pub duration_ms: Option<f64>,
    /// Token usage summed over all LLM calls.
    pub usage: TokenUsage,
    /// Version of Whetstone's tool-selection policy the agent followed, if any.
    pub policy_version: Option<String>,
    /// Where the episode was read from.
    pub source: Source,
}

impl Episode {
    /// A successful Whetstone JSONL episode of `steps` read from `source`,
    /// with nothing else known; set the other fields with struct update.
    pub fn new(trace_id: impl Into<String>, steps: Vec<Step>, source: Source) -> Episode {
        Episode {
            trace_id: trace_id.into(),
            format: TraceFormat::WhetstoneJsonl,
            prompt: PromptRef::default(),
            input: None,
            steps,
            rewards: BTreeMap::new(),
            status: Status::Ok,
            start_time_unix_nano: None,
            duration_ms: None,
            usage: TokenUsage::default(),
            policy_version: None,
            source,
        }
    }
}

/// The trace format an episode was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceFormat {
    /// OTLP/JSON in the spec encoding (hex ids, integer enums).
    OtlpJson,
    /// OTLP/JSON in the protobuf `MessageToJson` encoding (base64 ids, enum names).
    OtlpProtoJson,
    /// agent-lightning v0.x span dump, one span JSON per line.
    AgentLightning,
    /// Whetstone's own JSONL, one episode per line.
    WhetstoneJsonl,
}

impl TraceFormat {
    /// The name used in output and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            TraceFormat::OtlpJson => "otlp_json",
            TraceFormat::OtlpProtoJson => "otlp_proto_json",
            TraceFormat::AgentLightning => "agent_lightning",
            TraceFormat::WhetstoneJsonl => "whetstone_jsonl",
        }
    }
}

/// Which prompt the agent used. Any part may be unknown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptRef {
    pub name: Option<String>,
    pub version: Option<String>,
    /// The system prompt text as sent to the model.
    pub text: Option<String>,
}

/// Outcome of an episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Error,
}

/// One step of an episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// `llm` or `tool`.
    pub kind: StepKind,
    /// Model name for LLM calls, tool name for tool executions.
    pub name: String,
    /// Whether the step failed.
    pub error: bool,
    /// The error message, when the step failed and the trace says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Start, nanoseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time_unix_nano: Option<u64>,
    /// Duration in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// Rewards the trace ties to this step.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rewards: BTreeMap<String, f64>,
    /// LLM call details (present when `kind` is `llm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmCall>,
    /// Tool execution details (present when `kind` is `tool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<ToolCall>,
}

impl Step {
    /// A successful LLM call to `model`.
    pub fn llm(model: impl Into<String>, call: LlmCall) -> Step {
        Step {
            llm: Some(call),
            ..Step::bare(StepKind::Llm, model.into())
        }
    }

    /// A successful execution of tool `name`.
    pub fn tool(name: impl Into<String>, call: ToolCall) -> Step {
        Step {
            tool: Some(call),
            ..Step::bare(StepKind::Tool, name.into())
        }
    }

    fn bare(kind: StepKind, name: String) -> Step {
        Step {
            kind,
            name,
            error: false,
            error_message: None,
            start_time_unix_nano: None,
            duration_ms: None,
            rewards: BTreeMap::new(),
            llm: None,
            tool: None,
        }
    }
}

/// Kind of a [`Step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Llm,
    Tool,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text content; parts are joined with newlines.
    pub content: String,
}

/// A tool call the model asked for in its response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestedToolCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    /// Arguments as the model wrote them (usually a JSON object).
    #[serde(default)]
    pub arguments: serde_json::Value,
}

/// Details of an LLM call step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmCall {
    pub input_messages: Vec<Message>,
    pub output_text: Option<String>,
    pub tool_calls: Vec<RequestedToolCall>,
    /// Names of the tools declared to the model for this call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools_available: Vec<String>,
    pub usage: TokenUsage,
    /// Present when the agent made this call's decision (the tool it asked
    /// for, or answering without one) by following Whetstone's policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyChoice>,
}

/// Details of a tool execution step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    pub arguments: serde_json::Value,
    pub result: Option<String>,
    /// Present when the agent chose this tool by following Whetstone's policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyChoice>,
}

/// How the agent made a decision (a tool, or answering without one) when it
/// followed Whetstone's policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyChoice {
    /// Version of the policy that made the choice.
    pub version: Option<String>,
    /// Probability the policy gave the chosen action (behavior probability).
    pub probability: f64,
    /// The id `/v1/policy/act` gave the decision
    /// (`whetstone.policy.decision_id`, `<policy version>-<16 hex digits>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<String>,
}

impl PolicyChoice {
    /// The policy version a decision id names (its part before the first `-`).
    pub fn version_of_decision_id(decision_id: &str) -> Option<&str> {
        decision_id
            .split_once('-')
            .map(|(version, _)| version)
            .filter(|version| !version.is_empty())
    }
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl TokenUsage {
    /// Adds another usage into this one.
    pub fn add(&mut self, other: TokenUsage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
    }
}

/// Where an episode came from: file and 1-based line of its first record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub file: String,
    pub line: u64,
}
