//! Readers and assembly on hand-written records of each vocabulary: what a
//! user's agent emits must come out as the same normalized episode.

use serde_json::{Value, json};
use whetstone::trace::{
    Episode, Reason, Record, Source, Span, Status, StepKind, TraceFormat, assemble, parse_line,
};

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

fn source(line: u64) -> Source {
    Source {
        file: "fixture.jsonl".into(),
        line,
    }
}

fn attr(key: &str, value: Value) -> Value {
    let any = match value {
        Value::String(s) => json!({"stringValue": s}),
        Value::Bool(b) => json!({"boolValue": b}),
        Value::Number(n) if n.is_i64() => json!({"intValue": n.to_string()}),
        Value::Number(n) => json!({"doubleValue": n}),
        other => panic!("unsupported attribute {other}"),
    };
    json!({"key": key, "value": any})
}

/// An OTLP/JSON spec-encoded span.
fn span(
    id: &str,
    parent: &str,
    name: &str,
    start: u64,
    attrs: &[(&str, Value)],
    error: bool,
) -> Value {
    json!({
        "traceId": TRACE, "spanId": id, "parentSpanId": parent, "name": name, "kind": 1,
        "startTimeUnixNano": (1_700_000_000_000_000_000u64 + start * 1_000_000).to_string(),
        "endTimeUnixNano": (1_700_000_000_000_000_000u64 + (start + 5) * 1_000_000).to_string(),
        "attributes": attrs.iter().map(|(k, v)| attr(k, v.clone())).collect::<Vec<_>>(),
        "status": {"code": if error { 2 } else { 0 }, "message": if error { "boom" } else { "" }},
    })
}

fn request(spans: Vec<Value>) -> String {
    json!({"resourceSpans": [{"resource": {"attributes": [attr("service.name", json!("agent"))]},
        "scopeSpans": [{"scope": {"name": "test"}, "spans": spans}]}]})
    .to_string()
}

/// Parses lines, groups spans by trace and assembles, as the importer does.
fn episodes(lines: &[String]) -> Vec<Episode> {
    let mut spans: Vec<Span> = Vec::new();
    let mut out = Vec::new();
    for (idx, line) in lines.iter().enumerate() {
        match parse_line(line.as_bytes(), &source(idx as u64 + 1)).unwrap() {
            Record::Episode(e) => out.push(*e),
            Record::Spans(s) => spans.extend(s),
        }
    }
    if !spans.is_empty() {
        out.push(assemble(&spans).unwrap());
    }
    out
}

#[test]
fn genai_current_conventions_split_across_lines() {
    let system = json!([{"type": "text", "content": "You are Controller."}]).to_string();
    let input =
        json!([{"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]}])
            .to_string();
    let output = json!([{"role": "assistant", "parts": [{"type": "tool_call", "id": "c1", "name": "get_weather",
        "arguments": {"city": "Paris"}}], "finish_reason": "tool_call"}])
    .to_string();
    let final_out =
        json!([{"role": "assistant", "parts": [{"type": "text", "content": "Sunny."}], "finish_reason": "stop"}]).to_string();
    let tools = json!([{"type": "function", "name": "get_weather"}, {"type": "function", "name": "calculator"}]).to_string();
    let chat1 = span(
        "1000000000000001",
        "00000000000000aa",
        "chat gpt-4o",
        1,
        &[
            ("gen_ai.operation.name", json!("chat")),
            ("gen_ai.request.model", json!("gpt-4o")),
            ("gen_ai.system_instructions", json!(system)),
            ("gen_ai.input.messages", json!(input)),
            ("gen_ai.output.messages", json!(output)),
            ("gen_ai.tool.definitions", json!(tools)),
            ("gen_ai.usage.input_tokens", json!(20)),
            ("gen_ai.usage.output_tokens", json!(5)),
        ],
        false,
    );
    let tool = span(
        "1000000000000002",
        "00000000000000aa",
        "execute_tool get_weather",
        10,
        &[
            ("gen_ai.operation.name", json!("execute_tool")),
            ("gen_ai.tool.name", json!("get_weather")),
            ("gen_ai.tool.call.id", json!("c1")),
            ("gen_ai.tool.call.arguments", json!("{\"city\":\"Paris\"}")),
            ("gen_ai.tool.call.result", json!("sunny, 21C")),
            ("whetstone.reward.tool_ok", json!(0.5)),
        ],
        false,
    );
    let chat2 = span(
        "1000000000000003",
        "00000000000000aa",
        "chat gpt-4o",
        20,
        &[
            ("gen_ai.operation.name", json!("chat")),
            ("gen_ai.response.model", json!("gpt-4o-2024")),
            ("gen_ai.output.messages", json!(final_out)),
            ("gen_ai.usage.input_tokens", json!(30)),
            ("gen_ai.usage.output_tokens", json!(3)),
        ],
        false,
    );
    let root = span(
        "00000000000000aa",
        "",
        "invoke_agent Controller",
        0,
        &[
            ("gen_ai.operation.name", json!("invoke_agent")),
            ("gen_ai.agent.name", json!("Controller")),
            ("whetstone.prompt.version", json!("v3")),
            ("whetstone.reward.success", json!(1.0)),
        ],
        false,
    );
    // Children arrive before the root, in two batches, as exporters do.
    let got = episodes(&[request(vec![tool, chat1]), request(vec![chat2, root])]);
    assert_eq!(got.len(), 1);
    let e = &got[0];
    assert_eq!(e.trace_id, TRACE);
    assert_eq!(e.format, TraceFormat::OtlpJson);
    assert_eq!(e.prompt.name.as_deref(), Some("Controller"));
    assert_eq!(e.prompt.version.as_deref(), Some("v3"));
    assert_eq!(e.prompt.text.as_deref(), Some("You are Controller."));
    assert_eq!(e.input.as_deref(), Some("Weather in Paris?"));
    let kinds: Vec<(StepKind, &str)> = e.steps.iter().map(|s| (s.kind, s.name.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (StepKind::Llm, "gpt-4o"),
            (StepKind::Tool, "get_weather"),
            (StepKind::Llm, "gpt-4o-2024")
        ]
    );
    let llm = e.steps[0].llm.as_ref().unwrap();
    assert_eq!(llm.tool_calls[0].name, "get_weather");
    assert_eq!(llm.tool_calls[0].arguments, json!({"city": "Paris"}));
    assert_eq!(llm.tools_available, ["get_weather", "calculator"]);
    let tool = e.steps[1].tool.as_ref().unwrap();
    assert_eq!(tool.arguments, json!({"city": "Paris"}));
    assert_eq!(tool.result.as_deref(), Some("sunny, 21C"));
    assert_eq!(e.steps[1].rewards["tool_ok"], 0.5);
    assert_eq!(
        e.steps[2].llm.as_ref().unwrap().output_text.as_deref(),
        Some("Sunny.")
    );
    assert_eq!(e.rewards["success"], 1.0);
    assert_eq!((e.usage.input_tokens, e.usage.output_tokens), (50, 8));
    assert_eq!(e.status, Status::Ok);
    assert_eq!(e.duration_ms, Some(25.0));
    assert_eq!(e.source.line, 2, "the root span's line");
}

#[test]
fn legacy_flat_genai_attributes_with_a_failing_tool() {
    let chat = span(
        "00000000000000bb",
        "",
        "openai.chat",
        0,
        &[
            ("llm.request.type", json!("chat")),
            ("gen_ai.request.model", json!("gpt-4o-mini")),
            ("gen_ai.prompt.0.role", json!("system")),
            (
                "gen_ai.prompt.0.content",
                json!("You are a calculator agent."),
            ),
            ("gen_ai.prompt.1.role", json!("user")),
            ("gen_ai.prompt.1.content", json!("What is 1/0?")),
            ("gen_ai.completion.0.role", json!("assistant")),
            ("gen_ai.completion.0.tool_calls.0.name", json!("calculator")),
            (
                "gen_ai.completion.0.tool_calls.0.arguments",
                json!("{\"expression\": \"1/0\"}"),
            ),
            ("llm.request.functions.0.name", json!("calculator")),
            ("gen_ai.usage.prompt_tokens", json!(12)),
        ],
        false,
    );
    let tool = span(
        "00000000000000cc",
        "00000000000000bb",
        "calculator.tool",
        6,
        &[
            ("traceloop.span.kind", json!("tool")),
            ("traceloop.entity.input", json!("{\"expression\": \"1/0\"}")),
        ],
        true,
    );
    let e = &episodes(&[request(vec![chat, tool])])[0];
    assert_eq!(
        e.prompt.text.as_deref(),
        Some("You are a calculator agent.")
    );
    assert_eq!(e.input.as_deref(), Some("What is 1/0?"));
    let llm = e.steps[0].llm.as_ref().unwrap();
    assert_eq!(llm.tool_calls[0].arguments, json!({"expression": "1/0"}));
    assert_eq!(llm.tools_available, ["calculator"]);
    assert_eq!(llm.usage.input_tokens, 12);
    assert!(e.steps[1].error);
    assert_eq!(e.steps[1].error_message.as_deref(), Some("boom"));
    assert_eq!(
        e.status,
        Status::Ok,
        "the root succeeded although a tool failed"
    );
}

#[test]
fn openinference_attributes_and_prompt_template() {
    let llm = span(
        "00000000000000d2",
        "00000000000000d1",
        "ChatCompletion",
        1,
        &[
            ("openinference.span.kind", json!("LLM")),
            ("llm.model_name", json!("gpt-4o-mini")),
            ("llm.input_messages.0.message.role", json!("system")),
            (
                "llm.input_messages.0.message.content",
                json!("You are Controller."),
            ),
            ("llm.input_messages.1.message.role", json!("user")),
            (
                "llm.input_messages.1.message.contents.0.message_content.text",
                json!("2+2?"),
            ),
            ("llm.output_messages.0.message.role", json!("assistant")),
            (
                "llm.output_messages.0.message.tool_calls.0.tool_call.id",
                json!("call_1"),
            ),
            (
                "llm.output_messages.0.message.tool_calls.0.tool_call.function.name",
                json!("calculator"),
            ),
            (
                "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments",
                json!("{\"expression\":\"2+2\"}"),
            ),
            (
                "llm.tools.0.tool.json_schema",
                json!("{\"type\":\"function\",\"function\":{\"name\":\"calculator\"}}"),
            ),
            ("llm.token_count.prompt", json!(9)),
            ("llm.token_count.completion", json!(4)),
            ("llm.prompt_template.version", json!("7")),
        ],
        false,
    );
    let tool = span(
        "00000000000000d3",
        "00000000000000d1",
        "calculator",
        8,
        &[
            ("openinference.span.kind", json!("TOOL")),
            ("tool.name", json!("calculator")),
            ("tool.parameters", json!("{\"expression\":\"2+2\"}")),
            ("output.value", json!("4")),
            ("whetstone.policy.probability", json!(0.25)),
            ("whetstone.policy.version", json!("p1")),
        ],
        false,
    );
    let root = span(
        "00000000000000d1",
        "",
        "agent",
        0,
        &[("openinference.span.kind", json!("AGENT"))],
        true,
    );
    let e = &episodes(&[request(vec![llm, tool, root])])[0];
    assert_eq!(e.input.as_deref(), Some("2+2?"));
    assert_eq!(e.prompt.version.as_deref(), Some("7"));
    let call = e.steps[0].llm.as_ref().unwrap();
    assert_eq!(call.tool_calls[0].id.as_deref(), Some("call_1"));
    assert_eq!(call.tools_available, ["calculator"]);
    assert_eq!((e.usage.input_tokens, e.usage.output_tokens), (9, 4));
    let tool = e.steps[1].tool.as_ref().unwrap();
    assert_eq!(tool.result.as_deref(), Some("4"));
    assert_eq!(tool.policy.as_ref().unwrap().probability, 0.25);
    assert_eq!(e.policy_version.as_deref(), Some("p1"));
    assert_eq!(e.status, Status::Error, "root span failed");
}

#[test]
fn agent_lightning_annotation_rewards() {
    let line = |v: Value| v.to_string();
    let base = |id: &str, parent: Value, name: &str, attrs: Value| {
        json!({"rollout_id": "ro-1", "attempt_id": "at-1", "sequence_id": 1, "trace_id": TRACE, "span_id": id,
            "parent_id": parent, "name": name, "status": {"status_code": "OK", "description": null},
            "attributes": attrs, "events": [], "links": [], "start_time": 1700000000.5, "end_time": 1700000001.0,
            "context": {}, "parent": null, "resource": {"attributes": {}, "schema_url": ""}})
    };
    let lines = [
        line(base(
            "00000000000000e2",
            json!("00000000000000e1"),
            "openai.chat.completion",
            json!({
            "gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "hi",
            "gen_ai.completion.0.content": "hello", "gen_ai.response.model": "m"}),
        )),
        line(base(
            "00000000000000e3",
            json!("00000000000000e1"),
            "agentlightning.annotation",
            json!({
            "agentlightning.reward.0.name": "primary", "agentlightning.reward.0.value": 0.75}),
        )),
        line(base("00000000000000e1", Value::Null, "rollout", json!({}))),
    ];
    let e = &episodes(&lines)[0];
    assert_eq!(e.format, TraceFormat::AgentLightning);
    assert_eq!(e.rewards["primary"], 0.75);
    assert_eq!(e.steps.len(), 1);
    assert_eq!(e.input.as_deref(), Some("hi"));
}

/// `gen_ai.evaluation.result` events (GenAI conventions) are rewards: final
/// on the agent span, a step's on the step's span; one without a numeric
/// score is none. The bundled sample relies on this.
#[test]
fn genai_evaluation_result_events_are_rewards() {
    let event = |name: &str, score: Option<Value>| {
        let mut attributes = vec![
            attr("gen_ai.evaluation.name", json!(name)),
            attr("gen_ai.evaluation.score.label", json!("pass")),
            attr(
                "gen_ai.evaluation.explanation",
                json!("Uses the tool result."),
            ),
        ];
        attributes.extend(score.map(|s| attr("gen_ai.evaluation.score.value", s)));
        json!({"timeUnixNano": "1700000000900000000", "name": "gen_ai.evaluation.result",
            "attributes": attributes})
    };
    let mut root = span(
        "00000000000000a1",
        "",
        "invoke_agent Controller",
        0,
        &[("gen_ai.operation.name", json!("invoke_agent"))],
        false,
    );
    root["events"] = json!([
        event("answer_quality", Some(json!(0.85))),
        event("tone", None),
        event("relevance", Some(json!("0.5"))),
    ]);
    let mut tool = span(
        "00000000000000a2",
        "00000000000000a1",
        "execute_tool search",
        1,
        &[("gen_ai.operation.name", json!("execute_tool"))],
        false,
    );
    tool["events"] = json!([event("tool_relevance", Some(json!(1)))]);
    let e = &episodes(&[request(vec![tool, root])])[0];
    assert_eq!(
        e.rewards,
        [
            ("answer_quality".to_string(), 0.85),
            ("relevance".to_string(), 0.5)
        ]
        .into()
    );
    assert_eq!(
        e.steps[0].rewards,
        [("tool_relevance".to_string(), 1.0)].into()
    );
}

#[test]
fn agent_span_that_failed_under_an_ok_wrapper_makes_an_error_episode() {
    // Issue 11: agent-lightning wraps the agent's `invoke_agent` span in its
    // own rollout span, which stays OK when the agent fails.
    let base = |id: &str, parent: Value, name: &str, status: &str, attrs: Value, start: f64| {
        json!({"rollout_id": "ro-1", "attempt_id": "at-1", "sequence_id": 1, "trace_id": TRACE, "span_id": id,
            "parent_id": parent, "name": name, "status": {"status_code": status, "description": null},
            "attributes": attrs, "events": [], "links": [], "start_time": start, "end_time": start + 1.0,
            "context": {}, "parent": null, "resource": {"attributes": {}, "schema_url": ""}})
        .to_string()
    };
    let lines = |agent_status: &str| {
        [
            base(
                "00000000000000e1",
                Value::Null,
                "rollout",
                "OK",
                json!({}),
                1.7e9,
            ),
            base(
                "00000000000000e2",
                json!("00000000000000e1"),
                "invoke_agent controller",
                agent_status,
                json!({"gen_ai.operation.name": "invoke_agent"}),
                1.7e9 + 0.1,
            ),
            base(
                "00000000000000e3",
                json!("00000000000000e2"),
                "openai.chat.completion",
                "OK",
                json!({"gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "hi",
                    "gen_ai.completion.0.content": "hello", "gen_ai.response.model": "m"}),
                1.7e9 + 0.2,
            ),
        ]
    };
    assert_eq!(episodes(&lines("ERROR"))[0].status, Status::Error);
    assert_eq!(episodes(&lines("OK"))[0].status, Status::Ok);
    assert_eq!(episodes(&lines("UNSET"))[0].status, Status::Ok);
}

#[test]
fn whetstone_jsonl_minimal_and_full() {
    let minimal =
        json!({"id": "ep-1", "steps": [{"kind": "tool", "name": "search", "error": "timeout"}],
        "rewards": {"success": 0.0}})
        .to_string();
    let e = &episodes(&[minimal])[0];
    assert_eq!(e.trace_id, "ep-1");
    assert_eq!(e.format, TraceFormat::WhetstoneJsonl);
    assert!(e.steps[0].error);
    assert_eq!(e.steps[0].error_message.as_deref(), Some("timeout"));

    // `traces parse` output reads back as the same episode.
    let printed = serde_json::to_string(e).unwrap();
    assert_eq!(&episodes(&[printed])[0], e);
}

#[test]
fn bad_lines_are_rejected_with_line_and_reason() {
    let cases: &[(&[u8], Reason, &str)] = &[
        (br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0af7"#, Reason::InvalidJson, "EOF"),
        (b"\x00\x9f\xff garbage", Reason::NotUtf8, "UTF-8"),
        (br#"{"hello":"world"}"#, Reason::UnknownFormat, "hello"),
        (b"[1,2,3]", Reason::UnknownFormat, "JSON object"),
        (br#"{"id":"x","steps":[{"kind":"robot","name":"a"}]}"#, Reason::InvalidField, "steps[0].kind"),
        (br#"{"id":"x","steps":[],"rewards":{"r":"high"}}"#, Reason::InvalidField, "rewards.r"),
        (br#"{"id":"x","steps":[{"kind":"tool","name":"t","tool":{"policy":{"probability":1.5}}}]}"#, Reason::InvalidField, "probability"),
        (br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","spanId":"eee19b7ec3c1b174"}]}]}]}"#, Reason::InvalidField, "traceId"),
        (br#"{"resourceSpans":"many"}"#, Reason::InvalidField, "resourceSpans"),
        (b"", Reason::InvalidJson, "EOF"),
    ];
    for (line, reason, needle) in cases {
        let err = parse_line(line, &source(42)).unwrap_err();
        assert_eq!((err.reason, err.line), (*reason, 42), "{err}");
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle}"
        );
        assert!(err.to_string().starts_with("fixture.jsonl:42: "), "{err}");
    }
}

#[test]
fn unknown_span_vocabulary_is_no_episode() {
    let s = span(
        "00000000000000f1",
        "",
        "db.query",
        0,
        &[("db.system", json!("postgres"))],
        false,
    );
    let Record::Spans(spans) = parse_line(request(vec![s]).as_bytes(), &source(3)).unwrap() else {
        panic!()
    };
    let err = assemble(&spans).unwrap_err();
    assert_eq!(err.reason, Reason::NoEpisode);
    assert!(err.detail.contains("db.query"), "{err}");
}
