//! Files written by the real instrumentation packages (see
//! tests/fixtures/README.md) read into the episodes their agent runs were.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use whetstone::trace::{
    Episode, Record, Source, Span, StepKind, TraceFormat, assemble, is_document, parse_document,
    parse_line,
};

/// Reads a whole fixture the way the importer does: line by line, or as one
/// document; spans grouped by trace; episodes in start-time order.
fn read_fixture(name: &str) -> Vec<Episode> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/traces")
        .join(name);
    let bytes = std::fs::read(&path).unwrap();
    let records = if is_document(&bytes) {
        vec![parse_document(&bytes, name).unwrap()]
    } else {
        bytes
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.is_empty())
            .map(|(idx, line)| {
                let source = Source {
                    file: name.into(),
                    line: idx as u64 + 1,
                };
                parse_line(line, &source).unwrap_or_else(|d| panic!("{d}"))
            })
            .collect()
    };
    let mut traces: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    let mut episodes = Vec::new();
    for record in records {
        match record {
            Record::Episode(e) => episodes.push(*e),
            Record::Spans(spans) => {
                for span in spans {
                    traces.entry(span.trace_id.clone()).or_default().push(span);
                }
            }
        }
    }
    episodes.extend(
        traces
            .into_values()
            .map(|spans| assemble(&spans).unwrap_or_else(|d| panic!("{d}"))),
    );
    episodes.sort_by_key(|e| e.start_time_unix_nano);
    episodes
}

fn expected(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/expected_counts.json");
    let all: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == name)
        .unwrap()
        .clone()
}

const QUESTIONS: [&str; 4] = [
    "weather in Paris?",
    "12 * (3 + 4)?",
    "10 / 0?",
    "weather in Tokyo and in Oslo?",
];

/// Checks the four episodes every fixture holds against expected_counts.json.
fn check(name: &str, format: TraceFormat) -> Vec<Episode> {
    let episodes = read_fixture(name);
    let expected = expected(name);
    let per_trace = expected["per_trace"].as_array().unwrap();
    assert_eq!(episodes.len(), per_trace.len(), "{name}: episodes");
    for ((episode, want), question) in episodes.iter().zip(per_trace).zip(QUESTIONS) {
        let label = format!("{name} trace {}", episode.trace_id);
        assert_eq!(
            episode.trace_id,
            want["trace_id"].as_str().unwrap(),
            "{label}"
        );
        assert_eq!(episode.format, format, "{label}");
        let tools: Vec<String> = episode
            .steps
            .iter()
            .filter(|s| s.kind == StepKind::Tool)
            .map(|s| format!("{}:{}", s.name, if s.error { "error" } else { "ok" }))
            .collect();
        assert_eq!(
            tools,
            want["tools"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect::<Vec<_>>(),
            "{label}"
        );
        let llm_steps: Vec<_> = episode
            .steps
            .iter()
            .filter_map(|s| s.llm.as_ref())
            .collect();
        assert_eq!(
            llm_steps.len() as u64,
            want["llm_spans"].as_u64().unwrap(),
            "{label}"
        );
        assert!(
            episode
                .input
                .as_deref()
                .unwrap_or_default()
                .contains(question),
            "{label}: input {:?}",
            episode.input
        );
        let system = episode.prompt.text.as_deref().unwrap_or_default();
        assert!(
            system.starts_with("You are Controller"),
            "{label}: prompt {system:?}"
        );
        // The first call asked for the tools that were then executed.
        let requested: Vec<&str> = llm_steps[0]
            .tool_calls
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let executed: Vec<&str> = tools.iter().map(|t| t.split(':').next().unwrap()).collect();
        assert_eq!(requested, executed, "{label}: requested tool calls");
        assert!(
            llm_steps[1]
                .output_text
                .as_deref()
                .is_some_and(|t| !t.is_empty()),
            "{label}: final answer"
        );
        assert!(
            episode.usage.input_tokens > 0 && episode.usage.output_tokens > 0,
            "{label}: usage {:?}",
            episode.usage
        );
        if let Some(error_step) = episode.steps.iter().find(|s| s.error) {
            let message = error_step.error_message.as_deref().unwrap_or_default();
            assert!(
                message.contains("division by zero"),
                "{label}: error message {message:?}"
            );
        }
        if let Some(reward) = want["reward"].as_f64() {
            assert_eq!(
                episode.rewards.values().copied().collect::<Vec<_>>(),
                [reward],
                "{label}"
            );
        }
    }
    episodes
}

#[test]
fn openllmetry_legacy_flat_attributes() {
    let episodes = check("otlp_openllmetry_spec.jsonl", TraceFormat::OtlpJson);
    assert_eq!(
        episodes[0].prompt.name.as_deref(),
        Some("Controller"),
        "traceloop.workflow.name"
    );
    let tool = episodes[0]
        .steps
        .iter()
        .find_map(|s| s.tool.as_ref())
        .unwrap();
    assert_eq!(
        tool.arguments,
        serde_json::json!({"city": "Paris"}),
        "traceloop kwargs"
    );
    assert!(
        tool.result.as_deref().unwrap().starts_with("{\"city\""),
        "{:?}",
        tool.result
    );
    assert!(
        episodes[0].steps[0]
            .llm
            .as_ref()
            .unwrap()
            .tools_available
            .contains(&"calculator".to_string())
    );
}

#[test]
fn openllmetry_protobuf_json_document_matches_the_spec_encoding() {
    let proto = check(
        "otlp_openllmetry_protojson.json",
        TraceFormat::OtlpProtoJson,
    );
    let spec = read_fixture("otlp_openllmetry_spec.jsonl");
    for (mut p, s) in proto.into_iter().zip(spec) {
        p.format = s.format;
        p.source = s.source.clone();
        assert_eq!(p, s, "same run, two encodings, one episode");
    }
}

#[test]
fn openllmetry_current_genai_json_messages() {
    check("otlp_openllmetry_latest_spec.jsonl", TraceFormat::OtlpJson);
}

#[test]
fn otel_genai_contrib_invoke_agent_and_execute_tool() {
    let episodes = check("otlp_genai_current.jsonl", TraceFormat::OtlpJson);
    assert_eq!(episodes[0].prompt.name.as_deref(), Some("Controller"));
    let tools = &episodes[0].steps[0].llm.as_ref().unwrap().tools_available;
    assert_eq!(tools, &["get_weather", "calculator"]);
}

#[test]
fn openinference_with_prompt_template() {
    let episodes = check("otlp_openinference.jsonl", TraceFormat::OtlpJson);
    assert!(
        episodes[0].prompt.version.is_some(),
        "llm.prompt_template.version"
    );
}

#[test]
fn agent_lightning_spans_with_rewards() {
    let episodes = check("agentlightning_spans.jsonl", TraceFormat::AgentLightning);
    let tool = episodes[0]
        .steps
        .iter()
        .find_map(|s| s.tool.as_ref())
        .unwrap();
    assert_eq!(tool.arguments, serde_json::json!({"city": "Paris"}));
    assert!(tool.result.as_deref().unwrap().contains("partly cloudy"));
}

/// `whetstone traces parse` prints one episode per line with the documented
/// fields, reports bad lines on stderr with file:line, and fails only when a
/// file cannot be read.
#[test]
fn traces_parse_command() {
    let bin = env!("CARGO_BIN_EXE_whetstone");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/traces");
    let out = std::process::Command::new(bin)
        .args(["traces", "parse"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let episodes: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        episodes.len(),
        24,
        "6 files of 4 episodes (two files hold the same run)"
    );
    for episode in &episodes {
        for key in [
            "trace_id", "format", "prompt", "input", "steps", "rewards", "status",
        ] {
            assert!(episode.get(key).is_some(), "missing {key} in {episode}");
        }
        for step in episode["steps"].as_array().unwrap() {
            assert!(
                matches!(step["kind"].as_str(), Some("llm" | "tool")),
                "{step}"
            );
            assert!(
                step["name"].is_string() && step["error"].is_boolean(),
                "{step}"
            );
        }
    }

    let tmp = tempfile::tempdir().unwrap();
    let mixed = tmp.path().join("mixed.jsonl");
    std::fs::write(
        &mixed,
        "{\"id\":\"a\",\"steps\":[]}\nnot json\n\u{0}\u{1}binary\n{\"id\":\"b\",\"steps\":[]}",
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["traces", "parse"])
        .arg(&mixed)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        2,
        "the unterminated last line counts"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mixed.jsonl:2: invalid_json"), "{stderr}");
    assert!(stderr.contains("mixed.jsonl:3: invalid_json"), "{stderr}");

    // An unterminated last line over the limit is too long, not broken JSON
    // (only its start is kept while reading).
    let config = tmp.path().join("small-lines.toml");
    std::fs::write(&config, "[traces]\nmax_line_bytes = 8192\n").unwrap();
    let long_tail = tmp.path().join("long-tail.jsonl");
    let tail = format!(
        "{{\"id\":\"c\",\"input\":\"{}\",\"steps\":[]}}",
        "x".repeat(20_000)
    );
    std::fs::write(&long_tail, format!("{{\"id\":\"a\",\"steps\":[]}}\n{tail}")).unwrap();
    let out = std::process::Command::new(bin)
        .args(["traces", "parse", "--config"])
        .arg(&config)
        .arg(&long_tail)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("long-tail.jsonl:2: line_too_long"),
        "{stderr}"
    );

    let missing = tmp.path().join("missing.jsonl");
    let out = std::process::Command::new(bin)
        .args(["traces", "parse"])
        .arg(&mixed)
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "an unreadable file is an error");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        2,
        "the readable file still printed"
    );
}
