//! Integration tests of the WebAssembly plugin host (`whetstone::plugin`),
//! on the real components built from `plugins/` (issue 10).

mod cli;

pub(crate) mod engines;

pub(crate) mod guests;

mod hostile;

mod loading;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use whetstone::plugin::{HostOptions, Limits, LoadOptions, Plugin, PluginError, PluginHost};

/// A compile cache shared by the tests (and kept between runs), so each
/// component is compiled once.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

fn host(max_concurrent_calls: u32) -> Arc<PluginHost> {
    PluginHost::new(&HostOptions {
        cache_dir: Some(cache_dir()),
        max_concurrent_calls,
    })
    .unwrap()
}

/// Loads the built guest crate `crate_name` with `limits` and `settings`.
fn load(
    host: &PluginHost,
    crate_name: &str,
    limits: Limits,
    settings: serde_json::Value,
) -> Result<Plugin, PluginError> {
    let bytes = std::fs::read(guests::wasm(crate_name)).unwrap();
    let options = LoadOptions {
        limits,
        weight: 1.0,
        settings_json: settings.to_string(),
    };
    host.load(crate_name, &bytes, options)
}

/// An episode with two tool calls (one failed) and a 15-character answer.
fn episode_json() -> String {
    json!({
        "trace_id": "ep-1", "format": "whetstone_jsonl",
        "prompt": {"name": "Controller", "version": "3", "text": "You are Controller."},
        "input": "What is the weather in Paris?",
        "steps": [
            {"kind": "tool", "name": "get_weather", "error": true, "error_message": "timeout",
             "tool": {"call_id": "c1", "arguments": {"city": "Paris"}, "result": null}},
            {"kind": "tool", "name": "get_weather", "error": false,
             "tool": {"call_id": "c2", "arguments": {"city": "Paris"}, "result": "sunny"}},
            {"kind": "llm", "name": "gpt-4o-mini", "error": false,
             "llm": {"input_messages": [], "output_text": "Sunny in Paris.", "tool_calls": [],
                     "tools_available": ["get_weather"], "usage": {"input_tokens": 5, "output_tokens": 4}}}
        ],
        "rewards": {"success": 1.0}, "status": "ok",
        "start_time_unix_nano": null, "duration_ms": null,
        "usage": {"input_tokens": 5, "output_tokens": 4}, "policy_version": null,
        "source": {"file": "t.jsonl", "line": 1}
    })
    .to_string()
}

/// The reward example's scores for [`episode_json`], as (name, value).
fn example_scores(host: &PluginHost, plugin: &Plugin) -> Vec<(String, f64)> {
    host.score(plugin, &episode_json())
        .unwrap()
        .into_iter()
        .map(|score| (score.name, score.value))
        .collect()
}

#[test]
fn reward_example_scores_tool_errors_and_answer_length_from_its_settings() {
    let host = host(2);
    let plugin = load(
        &host,
        "tool_errors_reward",
        Limits::default(),
        json!({"max_answer_chars": 10}),
    )
    .unwrap();
    assert_eq!(plugin.display_name, "tool-errors");
    assert_eq!(plugin.world, whetstone::plugin::World::Reward);
    // One of two tool calls failed; 15 characters against a budget of 10.
    assert_eq!(
        example_scores(&host, &plugin),
        [
            ("tool_success".to_owned(), 0.5),
            ("answer_length".to_owned(), 0.5)
        ]
    );

    let lenient = load(&host, "tool_errors_reward", Limits::default(), json!({})).unwrap();
    assert_eq!(
        example_scores(&host, &lenient)[1],
        ("answer_length".to_owned(), 1.0)
    );

    let err = host.score(&plugin, "{not json").unwrap_err();
    assert!(
        matches!(err.kind, whetstone::plugin::ErrorKind::Returned(_)),
        "{err}"
    );
}

#[test]
fn mutator_example_adds_a_constraint_chosen_by_the_seed() {
    use whetstone::plugin::{Example, MutationContext};
    let host = host(2);
    let plugin = load(&host, "constraint_mutator", Limits::default(), json!({})).unwrap();
    assert_eq!(plugin.world, whetstone::plugin::World::Mutator);
    let weak = |feedback: &str| Example {
        input: "q".to_owned(),
        output: "a".to_owned(),
        score: 0.1,
        feedback: feedback.to_owned(),
    };
    let context = MutationContext {
        weakest: vec![weak("did not cite the tool"), weak("answer too long")],
        strongest: Vec::new(),
    };
    let first = host.mutate(&plugin, "Be helpful.", 0, &context).unwrap();
    let second = host.mutate(&plugin, "Be helpful.", 1, &context).unwrap();
    assert_eq!(
        first,
        "Be helpful.\n\nConstraint: avoid this mistake: did not cite the tool"
    );
    assert!(second.ends_with("answer too long"), "{second}");

    let err = host
        .mutate(&plugin, "Be helpful.", 0, &MutationContext::default())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "plugin `constraint_mutator` (whetstone:plugin@0.1.0): returned an error: no new feedback on the weakest examples"
    );
    // A mutator cannot score.
    assert!(host.score(&plugin, &episode_json()).is_err());
}
