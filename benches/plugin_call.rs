//! Cost of one reward-plugin call against the same logic compiled natively,
//! measured in one run.
//!
//! The plugin is the reward example (`plugins/examples/tool-errors-reward`);
//! the baseline is that crate linked into this binary. Both parse the same
//! 10 KB episode JSON and score it. A plugin call includes everything the
//! host does per call: a fresh store and WASI context, instantiation from
//! the pooling allocator, copying the episode in, the call, and reading the
//! scores out. One thread, calls back to back.
//! Targets: plugin ≤ 20 × native per call, ≥ 20,000 calls/s.
//!
//! Run: `cargo bench --bench plugin_call` (WHETSTONE_BENCH_CALLS, default
//! 20000). Record the output in docs/BENCHMARKS.md.

#[path = "../tests/it/plugins/guests.rs"]
mod guests;

use std::time::Instant;

use serde_json::json;
use whetstone::plugin::{HostOptions, Limits, LoadOptions, PluginHost};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An episode of about `target_bytes` of JSON: tool calls (some failed)
/// and LLM calls with text, ending in an answer.
fn episode_json(target_bytes: usize) -> String {
    let mut steps = Vec::new();
    let mut episode = json!({});
    for step_idx in 0.. {
        steps.push(json!({"kind": "tool", "name": "search", "error": step_idx % 3 == 0,
            "tool": {"call_id": format!("c{step_idx}"), "arguments": {"query": "weather in Paris tomorrow"},
                     "result": "Sunny, 21C, light wind from the west, no rain expected."}}));
        steps.push(json!({"kind": "llm", "name": "gpt-4o-mini", "error": false,
            "llm": {"input_messages": [{"role": "user", "content": "What is the weather in Paris tomorrow?"}],
                    "output_text": "Tomorrow Paris will be sunny at 21C with a light westerly wind.",
                    "tool_calls": [], "tools_available": ["search", "calculator"],
                    "usage": {"input_tokens": 52, "output_tokens": 11}}}));
        episode = json!({"trace_id": "bench", "format": "whetstone_jsonl",
            "prompt": {"name": "Controller", "version": "3", "text": "You are Controller."},
            "input": "What is the weather in Paris tomorrow?", "steps": steps,
            "rewards": {"success": 1.0}, "status": "ok", "usage": {"input_tokens": 0, "output_tokens": 0},
            "source": {"file": "bench.jsonl", "line": 1}});
        if episode.to_string().len() >= target_bytes {
            break;
        }
    }
    episode.to_string()
}

fn main() {
    let n_calls: usize = std::env::var("WHETSTONE_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let episode = episode_json(10_000);
    let host = PluginHost::new(&HostOptions {
        cache_dir: None,
        max_concurrent_calls: 1,
    })
    .unwrap();
    let bytes = std::fs::read(guests::wasm("tool_errors_reward")).unwrap();
    let options = LoadOptions {
        limits: Limits::default(),
        weight: 1.0,
        settings_json: "{}".to_owned(),
    };
    let plugin = host.load("tool_errors_reward", &bytes, options).unwrap();

    let native_scores = whetstone_plugin::score_json(&episode, tool_errors_reward::score).unwrap();
    let plugin_scores = host.score(&plugin, &episode).unwrap();
    assert_eq!(native_scores.len(), plugin_scores.len());
    for (native, wasm) in native_scores.iter().zip(&plugin_scores) {
        assert_eq!(
            (native.name.as_str(), native.value),
            (wasm.name.as_str(), wasm.value)
        );
    }

    // Warm-up, then alternate rounds and keep the best of each side.
    let rounds = 3;
    let (mut native_best, mut plugin_best) = (f64::MAX, f64::MAX);
    for _ in 0..rounds {
        let started = Instant::now();
        for _ in 0..n_calls {
            std::hint::black_box(
                whetstone_plugin::score_json(
                    std::hint::black_box(&episode),
                    tool_errors_reward::score,
                )
                .unwrap(),
            );
        }
        native_best = native_best.min(started.elapsed().as_secs_f64() / n_calls as f64);
        let started = Instant::now();
        for _ in 0..n_calls {
            std::hint::black_box(host.score(&plugin, std::hint::black_box(&episode)).unwrap());
        }
        plugin_best = plugin_best.min(started.elapsed().as_secs_f64() / n_calls as f64);
    }
    println!(
        "episode: {} bytes, {} calls x {rounds} rounds, best round",
        episode.len(),
        n_calls
    );
    println!(
        "native: {:.2} us/call, {:.0} calls/s",
        native_best * 1e6,
        1.0 / native_best
    );
    println!(
        "plugin: {:.2} us/call, {:.0} calls/s (instantiate + call)",
        plugin_best * 1e6,
        1.0 / plugin_best
    );
    println!(
        "ratio plugin/native: {:.2}x (target <= 20x; target >= 20000 calls/s)",
        plugin_best / native_best
    );
}
