//! Spans of one trace to one [`Episode`], across span vocabularies.
//!
//! Each span is classified by its attributes, not by which library wrote it,
//! so mixed instrumentation in one trace works: OpenTelemetry GenAI semantic
//! conventions (current `gen_ai.input.messages` JSON and legacy flat
//! `gen_ai.prompt.N.*`), OpenInference (`llm.input_messages.N.message.*`),
//! agent-lightning (`agentlightning.annotation` reward spans, `tool_call.<name>`
//! spans), and Whetstone's own `whetstone.*` attributes for prompt identity,
//! rewards and policy choices (documented in `docs/TRACE_FORMAT.md`).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value};

use super::diagnostic::{Diagnostic, Reason};
use super::episode::*;
use super::span::Span;

/// What a span is, as far as episodes are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Llm,
    Tool,
    /// A tool call the model asked for, as its own span (agent-lightning's
    /// AgentOps tracer writes `tool_call.<name>` children of the LLM span).
    ToolRequest,
    Agent,
    Reward,
    Other,
}

fn classify(span: &Span) -> Role {
    let operation = span.str_attr("gen_ai.operation.name");
    let oi_kind = span
        .str_attr("openinference.span.kind")
        .map(str::to_ascii_uppercase);
    let traceloop_kind = span.str_attr("traceloop.span.kind");
    if span.name.starts_with("tool_call.") {
        return Role::ToolRequest;
    }
    if operation == Some("execute_tool")
        || span.name.starts_with("execute_tool ")
        || oi_kind.as_deref() == Some("TOOL")
        || span.name == "agentlightning.operation"
        || traceloop_kind == Some("tool")
    {
        return Role::Tool;
    }
    if span.name == "agentlightning.annotation"
        || span.name == "agentlightning.reward"
        || span
            .attributes
            .keys()
            .any(|k| k.starts_with("agentlightning.reward"))
    {
        return Role::Reward;
    }
    let has_llm_attrs = span.attributes.keys().any(|k| {
        k == "gen_ai.input.messages"
            || k == "gen_ai.output.messages"
            || k.starts_with("gen_ai.prompt.")
            || k.starts_with("gen_ai.completion.")
            || k.starts_with("llm.input_messages.")
            || k.starts_with("llm.output_messages.")
    });
    if has_llm_attrs
        || oi_kind.as_deref() == Some("LLM")
        || matches!(
            operation,
            Some("chat" | "text_completion" | "generate_content")
        )
    {
        return Role::Llm;
    }
    if matches!(operation, Some("invoke_agent" | "create_agent"))
        || span.name == "invoke_agent"
        || span.name.starts_with("invoke_agent ")
        || matches!(oi_kind.as_deref(), Some("AGENT" | "CHAIN"))
        || matches!(traceloop_kind, Some("workflow" | "agent"))
        || matches!(
            span.str_attr("agentops.span.kind"),
            Some("session" | "agent")
        )
    {
        return Role::Agent;
    }
    Role::Other
}

/// Builds one episode from all spans of one trace. See [`super::assemble`].
pub(super) fn assemble(spans: &[Span]) -> Result<Episode, Diagnostic> {
    let mut spans: Vec<&Span> = spans.iter().collect();
    let Some(first) = spans.first() else {
        return Err(Diagnostic::new("", 0, Reason::NoEpisode, "no spans"));
    };
    let trace_id = first.trace_id.clone();
    spans.sort_by(|a, b| {
        (a.start_time_unix_nano, a.end_time_unix_nano)
            .cmp(&(b.start_time_unix_nano, b.end_time_unix_nano))
    });
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let root_idx = spans
        .iter()
        .position(|s| s.is_root())
        .or_else(|| {
            spans
                .iter()
                .position(|s| !s.parent_span_id.as_deref().is_some_and(|p| ids.contains(p)))
        })
        .unwrap_or(0);
    let roles: Vec<Role> = spans.iter().map(|span| classify(span)).collect();
    let index_of: HashMap<&str, usize> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| (s.span_id.as_str(), i))
        .collect();
    let parent_of = |i: usize| {
        spans[i]
            .parent_span_id
            .as_deref()
            .and_then(|p| index_of.get(p).copied())
    };

    // A wrapper LLM span (e.g. a framework's) around the client library's own
    // LLM span would count one call twice: keep the innermost.
    let mut wraps_llm = vec![false; spans.len()];
    for (i, role) in roles.iter().enumerate() {
        if *role != Role::Llm {
            continue;
        }
        let mut cursor = parent_of(i);
        let mut hops = 0;
        while let Some(p) = cursor {
            if hops > spans.len() {
                break; // a parent cycle in hostile input
            }
            wraps_llm[p] = true;
            cursor = parent_of(p);
            hops += 1;
        }
    }

    // Requested tool calls written as spans: attached to their LLM step, and
    // a tool step of their own when no execution span answers them.
    let executed_ids: HashSet<&str> = spans
        .iter()
        .zip(&roles)
        .filter(|(_, role)| **role == Role::Tool)
        .filter_map(|(span, _)| call_id(span))
        .collect();
    let mut steps: Vec<Step> = Vec::new();
    let mut step_of_span: HashMap<usize, usize> = HashMap::new();
    for (i, span) in spans.iter().enumerate() {
        let step = match roles[i] {
            Role::Llm if !wraps_llm[i] => llm_step(span),
            Role::Tool => tool_step(span),
            Role::ToolRequest => {
                let request = requested_call(span);
                let parent_step = parent_of(i).and_then(|p| step_of_span.get(&p).copied());
                if let Some(llm) = parent_step.and_then(|idx| steps[idx].llm.as_mut()) {
                    llm.tool_calls.push(request);
                }
                if call_id(span).is_some_and(|id| executed_ids.contains(id)) {
                    continue;
                }
                tool_step(span)
            }
            _ => continue,
        };
        step_of_span.insert(i, steps.len());
        steps.push(step);
    }

    let mut rewards = BTreeMap::new();
    for (i, span) in spans.iter().enumerate() {
        let found = span_rewards(span, roles[i] == Role::Reward);
        if found.is_empty() {
            continue;
        }
        // A reward belongs to a step when its span is the step, or is an
        // annotation whose parent is the step; otherwise it is final.
        let owner = if step_of_span.contains_key(&i) {
            Some(i)
        } else if roles[i] == Role::Reward {
            parent_of(i).filter(|p| step_of_span.contains_key(p))
        } else {
            None
        };
        let target = match owner {
            Some(owner) => &mut steps[step_of_span[&owner]].rewards,
            None => &mut rewards,
        };
        target.extend(found);
    }

    let has_agent = roles.contains(&Role::Agent);
    if steps.is_empty() && !has_agent && rewards.is_empty() {
        let mut names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        names.dedup();
        names.truncate(5);
        let root = &spans[root_idx];
        return Err(Diagnostic::new(
            &root.source.file,
            root.source.line,
            Reason::NoEpisode,
            format!(
                "trace {trace_id}: none of its {} spans is an LLM call, tool execution or agent run (span names: {})",
                spans.len(),
                names.join(", ")
            ),
        ));
    }

    let root = &spans[root_idx];
    let find_attr = |key: &str| -> Option<String> {
        std::iter::once(root)
            .chain(spans.iter())
            .find_map(|s| s.str_attr(key))
            .map(str::to_string)
    };
    let first_llm = steps.iter().find_map(|s| s.llm.as_ref());
    let prompt = PromptRef {
        name: [
            "whetstone.prompt.name",
            "gen_ai.agent.name",
            "agent.name",
            "traceloop.workflow.name",
        ]
        .iter()
        .find_map(|key| find_attr(key)),
        version: find_attr("whetstone.prompt.version")
            .or_else(|| find_attr("llm.prompt_template.version")),
        text: first_llm
            .and_then(|llm| llm.input_messages.iter().find(|m| m.role == "system"))
            .map(|m| m.content.clone())
            .or_else(|| find_attr("llm.prompt_template.template")),
    };
    let input = first_llm
        .and_then(|llm| llm.input_messages.iter().find(|m| m.role == "user"))
        .map(|m| m.content.clone())
        .or_else(|| root.str_attr("input.value").map(str::to_string));
    let mut usage = TokenUsage::default();
    for llm in steps.iter().filter_map(|s| s.llm.as_ref()) {
        usage.add(llm.usage);
    }
    let start = spans
        .iter()
        .map(|s| s.start_time_unix_nano)
        .filter(|&t| t > 0)
        .min();
    let end = spans.iter().map(|s| s.end_time_unix_nano).max();
    let policy_version = find_attr("whetstone.policy.version").or_else(|| {
        steps.iter().find_map(|s| {
            let tool = s.tool.as_ref().and_then(|t| t.policy.as_ref());
            let llm = s.llm.as_ref().and_then(|l| l.policy.as_ref());
            tool.or(llm)?.version.clone()
        })
    });
    Ok(Episode {
        trace_id,
        format: root.format,
        prompt,
        input,
        steps,
        rewards,
        // The outermost agent span (the earliest to start) speaks for the
        // run: an agent that failed under a wrapper that did not (as
        // agent-lightning's rollout spans do) is an error.
        status: match roles.iter().position(|role| *role == Role::Agent) {
            _ if root.error => Status::Error,
            Some(agent) if spans[agent].error => Status::Error,
            _ => Status::Ok,
        },
        start_time_unix_nano: start,
        duration_ms: start
            .zip(end)
            .map(|(s, e)| e.saturating_sub(s) as f64 / 1e6),
        usage,
        policy_version,
        source: root.source.clone(),
    })
}

fn step_timing(span: &Span) -> (Option<u64>, Option<f64>) {
    let start = (span.start_time_unix_nano > 0).then_some(span.start_time_unix_nano);
    let duration = span
        .end_time_unix_nano
        .saturating_sub(span.start_time_unix_nano) as f64
        / 1e6;
    (start, Some(duration))
}

fn error_message(span: &Span) -> Option<String> {
    span.status_message
        .clone()
        .or_else(|| {
            span.events
                .iter()
                .find(|e| e.name == "exception")
                .and_then(|e| e.attributes.get("exception.message"))
                .map(text_of)
        })
        .or_else(|| span.str_attr("error.type").map(str::to_string))
}

fn llm_step(span: &Span) -> Step {
    let a = &span.attributes;
    let (input_messages, output_text, tool_calls) = read_messages(a);
    let model = [
        "gen_ai.response.model",
        "gen_ai.request.model",
        "llm.model_name",
    ]
    .iter()
    .find_map(|k| span.str_attr(k))
    .unwrap_or("unknown")
    .to_string();
    let count = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| a.get(*k).and_then(as_u64))
            .unwrap_or(0)
    };
    let usage = TokenUsage {
        input_tokens: count(&[
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.prompt_tokens",
            "llm.token_count.prompt",
        ]),
        output_tokens: count(&[
            "gen_ai.usage.output_tokens",
            "gen_ai.usage.completion_tokens",
            "llm.token_count.completion",
        ]),
    };
    let (start, duration) = step_timing(span);
    let error = span.error;
    Step {
        kind: StepKind::Llm,
        name: model,
        error,
        error_message: error.then(|| error_message(span)).flatten(),
        start_time_unix_nano: start,
        duration_ms: duration,
        rewards: BTreeMap::new(),
        llm: Some(LlmCall {
            input_messages,
            output_text,
            tool_calls,
            tools_available: declared_tools(a),
            usage,
            policy: policy_choice(span),
        }),
        tool: None,
    }
}

/// The id tying a tool execution to the model's request for it.
fn call_id(span: &Span) -> Option<&str> {
    [
        "gen_ai.tool.call.id",
        "tool.call.id",
        "tool_call.id",
        "tool.id",
    ]
    .iter()
    .find_map(|k| span.str_attr(k))
}

fn requested_call(span: &Span) -> RequestedToolCall {
    let tool = tool_step(span);
    RequestedToolCall {
        id: call_id(span).map(str::to_string),
        name: tool.name,
        arguments: tool.tool.map(|t| t.arguments).unwrap_or(Value::Null),
    }
}

fn tool_step(span: &Span) -> Step {
    let a = &span.attributes;
    let name = [
        "gen_ai.tool.name",
        "tool.name",
        "agentlightning.operation.name",
        "traceloop.entity.name",
    ]
    .iter()
    .find_map(|k| span.str_attr(k))
    .map(str::to_string)
    .or_else(|| span.name.strip_prefix("execute_tool ").map(str::to_string))
    .or_else(|| span.name.strip_prefix("tool_call.").map(str::to_string))
    .unwrap_or_else(|| span.name.clone());
    let first = |keys: &[&str]| keys.iter().find_map(|k| a.get(*k)).cloned();
    let operation_input = unflatten(a, "agentlightning.operation.input.");
    let arguments = first(&[
        "gen_ai.tool.call.arguments",
        "tool.parameters",
        "input.value",
        "traceloop.entity.input",
    ])
    .map(parse_json_string)
    .map(traceloop_kwargs)
    .or_else(|| (!operation_input.is_empty()).then_some(Value::Object(operation_input)))
    .unwrap_or(Value::Null);
    let result = first(&[
        "gen_ai.tool.call.result",
        "output.value",
        "traceloop.entity.output",
        "agentlightning.operation.output",
    ])
    .map(|v| text_of(&unquote(v)));
    let policy = policy_choice(span);
    let error = span.error || a.contains_key("error.type");
    let (start, duration) = step_timing(span);
    Step {
        kind: StepKind::Tool,
        name,
        error,
        error_message: error.then(|| error_message(span)).flatten(),
        start_time_unix_nano: start,
        duration_ms: duration,
        rewards: BTreeMap::new(),
        llm: None,
        tool: Some(ToolCall {
            call_id: call_id(span).map(str::to_string),
            arguments,
            result,
            policy,
        }),
    }
}

/// The decision's behavior probability (`whetstone.policy.probability`),
/// policy version and decision id, on the chat span that decided or the
/// tool span it ran. Without `whetstone.policy.version`, the version is the
/// one the decision id names.
fn policy_choice(span: &Span) -> Option<PolicyChoice> {
    let probability = span
        .attributes
        .get("whetstone.policy.probability")
        .and_then(as_f64)?;
    let decision_id = span
        .str_attr("whetstone.policy.decision_id")
        .map(str::to_string);
    let version = span
        .str_attr("whetstone.policy.version")
        .or_else(|| {
            decision_id
                .as_deref()
                .and_then(PolicyChoice::version_of_decision_id)
        })
        .map(str::to_string);
    Some(PolicyChoice {
        version,
        probability,
        decision_id,
    })
}

/// Rewards a span carries: agent-lightning annotations
/// (`agentlightning.reward.N.name` / `.value`, or a bare
/// `agentlightning.reward` / `reward` value), `whetstone.reward.<name>`
/// attributes, and GenAI `gen_ai.evaluation.result` events.
fn span_rewards(span: &Span, is_reward_span: bool) -> BTreeMap<String, f64> {
    let a = &span.attributes;
    let mut found = BTreeMap::new();
    if is_reward_span {
        let tree = unflatten(a, "agentlightning.reward.");
        for entry in indexed(&tree) {
            let value = entry.get("value").and_then(as_f64);
            let name = entry
                .get("name")
                .map(text_of)
                .unwrap_or_else(|| "reward".to_string());
            if let Some(value) = value {
                found.insert(name, value);
            }
        }
        for key in ["agentlightning.reward", "reward"] {
            if let Some(value) = a.get(key).and_then(as_f64) {
                found.insert("reward".to_string(), value);
            }
        }
    }
    for (key, value) in a {
        if let (Some(name), Some(value)) = (key.strip_prefix("whetstone.reward."), as_f64(value)) {
            found.insert(name.to_string(), value);
        }
    }
    for event in span
        .events
        .iter()
        .filter(|e| e.name == "gen_ai.evaluation.result")
    {
        let name = event.attributes.get("gen_ai.evaluation.name").map(text_of);
        let value = event
            .attributes
            .get("gen_ai.evaluation.score.value")
            .and_then(as_f64);
        if let (Some(name), Some(value)) = (name, value) {
            found.insert(name, value);
        }
    }
    found.retain(|_, v| v.is_finite());
    found
}

/// Input messages, output text and requested tool calls of an LLM span, from
/// whichever vocabulary the span uses.
fn read_messages(a: &Map<String, Value>) -> (Vec<Message>, Option<String>, Vec<RequestedToolCall>) {
    if a.contains_key("gen_ai.input.messages") || a.contains_key("gen_ai.output.messages") {
        return read_genai_json(a);
    }
    let (prompt_prefix, completion_prefix, nested) =
        if a.keys().any(|k| k.starts_with("llm.input_messages.")) {
            ("llm.input_messages.", "llm.output_messages.", true)
        } else {
            ("gen_ai.prompt.", "gen_ai.completion.", false)
        };
    // OpenInference nests each message under `message.`; legacy GenAI does not.
    let body = |entry: &Map<String, Value>| -> Map<String, Value> {
        if nested {
            entry
                .get("message")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        } else {
            entry.clone()
        }
    };
    let inputs = unflatten(a, prompt_prefix);
    let input_messages = indexed(&inputs)
        .into_iter()
        .map(|entry| {
            let m = body(entry);
            Message {
                role: m.get("role").map(text_of).unwrap_or_else(|| "user".into()),
                content: flat_content(&m),
            }
        })
        .collect();
    let outputs = unflatten(a, completion_prefix);
    let mut output_text = None;
    let mut tool_calls = Vec::new();
    for entry in indexed(&outputs) {
        let m = body(entry);
        let content = flat_content(&m);
        if !content.is_empty() && output_text.is_none() {
            output_text = Some(content);
        }
        if let Some(calls) = m.get("tool_calls").and_then(Value::as_object) {
            for call in indexed(calls) {
                // OpenInference: tool_call.function.{name,arguments}, tool_call.id.
                let call = call
                    .get("tool_call")
                    .and_then(Value::as_object)
                    .unwrap_or(call);
                let function = call
                    .get("function")
                    .and_then(Value::as_object)
                    .unwrap_or(call);
                if let Some(name) = function.get("name") {
                    tool_calls.push(RequestedToolCall {
                        id: call.get("id").map(text_of),
                        name: text_of(name),
                        arguments: function
                            .get("arguments")
                            .cloned()
                            .map(parse_json_string)
                            .unwrap_or(Value::Null),
                    });
                }
            }
        }
        if let Some(function) = m.get("function_call").and_then(Value::as_object)
            && let Some(name) = function.get("name")
        {
            tool_calls.push(RequestedToolCall {
                id: None,
                name: text_of(name),
                arguments: function
                    .get("arguments")
                    .cloned()
                    .map(parse_json_string)
                    .unwrap_or(Value::Null),
            });
        }
    }
    (input_messages, output_text, tool_calls)
}

/// Content of a flat message: `content`, or OpenInference `contents.N.message_content.text`.
fn flat_content(m: &Map<String, Value>) -> String {
    if let Some(content) = m.get("content") {
        return text_of(content);
    }
    let Some(contents) = m.get("contents").and_then(Value::as_object) else {
        return String::new();
    };
    indexed(contents)
        .into_iter()
        .filter_map(|c| c.get("message_content")?.get("text").map(text_of))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Current GenAI conventions: `gen_ai.system_instructions`,
/// `gen_ai.input.messages` and `gen_ai.output.messages` hold JSON with parts.
fn read_genai_json(
    a: &Map<String, Value>,
) -> (Vec<Message>, Option<String>, Vec<RequestedToolCall>) {
    super::genai_fast::read(a).unwrap_or_else(|| read_genai_values(a))
}

/// [`read_genai_json`] through `Value` trees: handles any shape.
pub(super) fn read_genai_values(
    a: &Map<String, Value>,
) -> (Vec<Message>, Option<String>, Vec<RequestedToolCall>) {
    let mut input_messages = Vec::new();
    if let Some(parts) = a.get("gen_ai.system_instructions").map(json_of) {
        let content = parts_text(&parts);
        if !content.is_empty() {
            input_messages.push(Message {
                role: "system".into(),
                content,
            });
        }
    }
    let inputs = a.get("gen_ai.input.messages").map(json_of);
    for m in inputs
        .as_ref()
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        input_messages.push(Message {
            role: m.get("role").map(text_of).unwrap_or_else(|| "user".into()),
            content: m
                .get("parts")
                .map(parts_text)
                .or_else(|| m.get("content").map(text_of))
                .unwrap_or_default(),
        });
    }
    let mut output_text = None;
    let mut tool_calls = Vec::new();
    let outputs = a.get("gen_ai.output.messages").map(json_of);
    for m in outputs
        .as_ref()
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = m
            .get("parts")
            .map(parts_text)
            .or_else(|| m.get("content").map(text_of))
            .unwrap_or_default();
        if !text.is_empty() && output_text.is_none() {
            output_text = Some(text);
        }
        for part in m
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if part.get("type").and_then(Value::as_str) == Some("tool_call") {
                tool_calls.push(RequestedToolCall {
                    id: part.get("id").filter(|v| !v.is_null()).map(text_of),
                    name: part.get("name").map(text_of).unwrap_or_default(),
                    arguments: part
                        .get("arguments")
                        .cloned()
                        .map(parse_json_string)
                        .unwrap_or(Value::Null),
                });
            }
        }
    }
    (input_messages, output_text, tool_calls)
}

/// Text of a `parts` array: text parts joined by newlines, tool results as text.
fn parts_text(parts: &Value) -> String {
    let Some(parts) = parts.as_array() else {
        return parts.as_str().unwrap_or_default().to_string();
    };
    parts
        .iter()
        .filter_map(|p| match p.get("type").and_then(Value::as_str) {
            Some("text") | None => p.get("content").map(text_of),
            Some("tool_call_response") => {
                p.get("response").or_else(|| p.get("result")).map(text_of)
            }
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Names of tools declared to the model: `gen_ai.tool.definitions` (JSON),
/// legacy `llm.request.functions.N.name` (AgentOps: `gen_ai.request.functions`), OpenInference `llm.tools.N.tool.json_schema`.
fn declared_tools(a: &Map<String, Value>) -> Vec<String> {
    let mut names = Vec::new();
    let definition_name = |d: &Value| -> Option<String> {
        d.get("name")
            .or_else(|| d.get("function")?.get("name"))
            .map(text_of)
    };
    if let Some(defs) = a.get("gen_ai.tool.definitions").map(json_of) {
        names.extend(
            defs.as_array()
                .into_iter()
                .flatten()
                .filter_map(definition_name),
        );
    }
    for prefix in ["llm.request.functions.", "gen_ai.request.functions."] {
        let functions = unflatten(a, prefix);
        names.extend(
            indexed(&functions)
                .into_iter()
                .filter_map(|f| f.get("name").map(text_of)),
        );
    }
    let tools = unflatten(a, "llm.tools.");
    for tool in indexed(&tools) {
        let schema = tool
            .get("tool")
            .and_then(|t| t.get("json_schema"))
            .map(json_of);
        names.extend(schema.as_ref().and_then(definition_name));
    }
    names.dedup();
    names
}

/// Turns flat attributes under `prefix` (`a.0.b`) into a tree (`{"0":{"b":..}}`).
fn unflatten(a: &Map<String, Value>, prefix: &str) -> Map<String, Value> {
    let mut root = Map::new();
    for (key, value) in a {
        let Some(rest) = key.strip_prefix(prefix) else {
            continue;
        };
        let mut node = &mut root;
        let mut parts = rest.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                node.entry(part.to_string())
                    .or_insert_with(|| value.clone());
                break;
            }
            let child = node
                .entry(part.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !child.is_object() {
                break; // a leaf and a subtree under one key: keep the leaf
            }
            node = child.as_object_mut().expect("checked above");
        }
    }
    root
}

/// Entries of a tree level whose keys are indexes, in index order.
fn indexed(tree: &Map<String, Value>) -> Vec<&Map<String, Value>> {
    let mut entries: Vec<(usize, &Map<String, Value>)> = tree
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_object()?)))
        .collect();
    entries.sort_by_key(|(i, _)| *i);
    entries.into_iter().map(|(_, v)| v).collect()
}

/// Traceloop records a tool's input as `{"args": [...], "kwargs": {...}}`:
/// the keyword arguments are the tool's arguments.
fn traceloop_kwargs(value: Value) -> Value {
    match value {
        Value::Object(mut map)
            if map.len() == 2
                && map
                    .get("args")
                    .is_some_and(|a| a.as_array().is_some_and(Vec::is_empty))
                && map.contains_key("kwargs") =>
        {
            map.remove("kwargs").unwrap_or(Value::Null)
        }
        other => other,
    }
}

/// A string that is itself a JSON-encoded string (Traceloop's outputs) is
/// decoded once.
fn unquote(value: Value) -> Value {
    match &value {
        Value::String(s) if s.starts_with('"') => {
            serde_json::from_str::<String>(s).map_or(value, Value::String)
        }
        _ => value,
    }
}

/// Like [`parse_json_string`], from a borrowed value: the attribute's text
/// is parsed in place, not copied first.
fn json_of(value: &Value) -> Value {
    match value {
        Value::String(s) if s.starts_with(['{', '[']) => {
            serde_json::from_str(s).unwrap_or_else(|_| value.clone())
        }
        _ => value.clone(),
    }
}

/// A JSON string holding JSON becomes that JSON; anything else is kept.
pub(super) fn parse_json_string(value: Value) -> Value {
    match &value {
        Value::String(s) if s.starts_with(['{', '[']) => serde_json::from_str(s).unwrap_or(value),
        _ => value,
    }
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn as_f64(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The `whetstone.*` attributes of `span` that Whetstone does not read (a
/// misspelling such as `whetstone.step.reward` for `whetstone.reward.<name>`),
/// so they can be reported instead of vanishing.
pub(super) fn unknown_whetstone_attributes(span: &Span) -> impl Iterator<Item = &str> {
    span.attributes.keys().map(String::as_str).filter(|key| {
        key.starts_with("whetstone.")
            && !matches!(
                *key,
                "whetstone.prompt.name"
                    | "whetstone.prompt.version"
                    | "whetstone.policy.version"
                    | "whetstone.policy.probability"
                    | "whetstone.policy.decision_id"
            )
            && key
                .strip_prefix("whetstone.reward.")
                .is_none_or(str::is_empty)
    })
}
