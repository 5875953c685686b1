//! A generated OTLP/JSON corpus shaped like what an instrumented tool-using
//! agent exports: per trace an `invoke_agent` root, two `chat` spans carrying
//! current GenAI message JSON, and an `execute_tool` span, split over two
//! export requests (children first, as batching exporters write them).

use std::io::{self, Write};

use serde_json::{Value, json};

/// Deterministic xorshift generator, so corpora are identical across runs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const CITIES: &[&str] = &[
    "Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Austin", "Perth", "Quito",
];
const WORDS: &[&str] = &[
    "please",
    "check",
    "the",
    "current",
    "forecast",
    "and",
    "report",
    "temperature",
    "humidity",
    "wind",
    "before",
    "answering",
    "concisely",
    "with",
    "units",
    "for",
    "tomorrow",
    "morning",
];
const SYSTEM: &str = "You are Controller, a careful assistant that uses tools.\n1. Read the user's request.\n2. Call get_weather for weather questions and calculator for arithmetic.\n3. Cite the tool result in one sentence.";

fn attr(key: &str, value: Value) -> Value {
    let any = match value {
        Value::String(s) => json!({ "stringValue": s }),
        Value::Number(n) if n.is_u64() => json!({ "intValue": n.to_string() }),
        Value::Number(n) => json!({ "doubleValue": n }),
        other => json!({ "stringValue": other.to_string() }),
    };
    json!({ "key": key, "value": any })
}

fn span(
    trace: &str,
    id: u64,
    parent: Option<u64>,
    name: &str,
    start: u64,
    attrs: Vec<Value>,
) -> Value {
    json!({
        "traceId": trace, "spanId": format!("{id:016x}"),
        "parentSpanId": parent.map(|p| format!("{p:016x}")).unwrap_or_default(),
        "name": name, "kind": 3,
        "startTimeUnixNano": start.to_string(), "endTimeUnixNano": (start + 40_000_000).to_string(),
        "attributes": attrs, "status": { "code": 0 },
    })
}

fn request(spans: Vec<Value>) -> String {
    json!({ "resourceSpans": [{
        "resource": { "attributes": [attr("service.name", json!("weather-agent"))] },
        "scopeSpans": [{ "scope": { "name": "opentelemetry.instrumentation.openai_v2", "version": "2.1b0" }, "spans": spans }]
    }]})
    .to_string()
}

/// Writes traces until `target_bytes` have been written; returns the number
/// of traces. Each trace is two lines.
pub fn write_otlp_corpus(out: &mut impl Write, target_bytes: u64, seed: u64) -> io::Result<u64> {
    let mut rng = Rng(seed | 1);
    let (mut written, mut n_traces) = (0u64, 0u64);
    while written < target_bytes {
        let trace = format!("{:016x}{:016x}", rng.next(), rng.next());
        let base = 1_700_000_000_000_000_000 + n_traces * 1_000_000_000;
        let city = rng.pick(CITIES);
        let mut question = format!("What is the weather in {city}?");
        for _ in 0..(rng.next() % 40) {
            question.push(' ');
            question.push_str(rng.pick(WORDS));
        }
        let root_id = rng.next() | 1;
        let input = json!([{ "role": "user", "parts": [{ "type": "text", "content": question }] }])
            .to_string();
        let call = json!([{ "role": "assistant", "parts": [{ "type": "tool_call", "id": "call_1", "name": "get_weather",
            "arguments": { "city": city } }], "finish_reason": "tool_call" }])
        .to_string();
        let answer = json!([{ "role": "assistant", "parts": [{ "type": "text",
            "content": format!("It is sunny in {city}, 21C, according to get_weather.") }], "finish_reason": "stop" }])
        .to_string();
        let chat = |id: u64, start: u64, output: &str, tokens: u64| {
            span(
                &trace,
                id,
                Some(root_id),
                "chat gpt-4o-mini",
                start,
                vec![
                    attr("gen_ai.operation.name", json!("chat")),
                    attr("gen_ai.request.model", json!("gpt-4o-mini")),
                    attr(
                        "gen_ai.system_instructions",
                        json!(json!([{ "type": "text", "content": SYSTEM }]).to_string()),
                    ),
                    attr("gen_ai.input.messages", json!(input)),
                    attr("gen_ai.output.messages", json!(output)),
                    attr("gen_ai.usage.input_tokens", json!(tokens)),
                    attr("gen_ai.usage.output_tokens", json!(12)),
                ],
            )
        };
        let first = request(vec![
            chat(rng.next() | 1, base + 1_000, &call, 120),
            span(
                &trace,
                rng.next() | 1,
                Some(root_id),
                "execute_tool get_weather",
                base + 50_000_000,
                vec![
                    attr("gen_ai.operation.name", json!("execute_tool")),
                    attr("gen_ai.tool.name", json!("get_weather")),
                    attr(
                        "gen_ai.tool.call.arguments",
                        json!(json!({ "city": city }).to_string()),
                    ),
                    attr(
                        "gen_ai.tool.call.result",
                        json!(format!("sunny, 21C in {city}")),
                    ),
                ],
            ),
        ]);
        let second = request(vec![
            chat(rng.next() | 1, base + 100_000_000, &answer, 180),
            span(
                &trace,
                root_id,
                None,
                "invoke_agent Controller",
                base,
                vec![
                    attr("gen_ai.operation.name", json!("invoke_agent")),
                    attr("gen_ai.agent.name", json!("Controller")),
                    attr(
                        "whetstone.reward.success",
                        json!(((rng.next() % 100) as f64) / 100.0),
                    ),
                ],
            ),
        ]);
        for line in [first, second] {
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
            written += line.len() as u64 + 1;
        }
        n_traces += 1;
    }
    Ok(n_traces)
}
