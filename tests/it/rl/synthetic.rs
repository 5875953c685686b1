//! Synthetic logged episodes where the best tool depends on the task text.
//!
//! Weather questions need `get_weather`, arithmetic needs `calculator`,
//! lookups need `search`, and greetings need an answer without a tool. The
//! logging agent chose uniformly at random among the four and recorded the
//! probability on its tool calls and on the LLM call that answered without a
//! tool; the reward is 1 for the right action, else 0.
//! Shared by the RL tests and the PPO benchmark.

use std::collections::BTreeMap;

use whetstone::rl::NO_TOOL;
use whetstone::rng::Rng;
use whetstone::trace::{Episode, LlmCall, PolicyChoice, RequestedToolCall, Source, Step, ToolCall};

/// The tools the synthetic agent has.
pub const TOOLS: [&str; 3] = ["calculator", "get_weather", "search"];

/// Slot values; `held_out` draws from a disjoint set.
struct Slots {
    cities: &'static [&'static str],
    topics: &'static [&'static str],
    names: &'static [&'static str],
    numbers: std::ops::Range<u32>,
}

const TRAINING_SLOTS: Slots = Slots {
    cities: &[
        "Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Denver", "Madrid", "Seoul",
    ],
    topics: &[
        "the Roman empire",
        "photosynthesis",
        "Ada Lovelace",
        "the Nile",
        "quantum computing",
        "jazz",
    ],
    names: &["Sam", "Alex", "Maria", "Kenji"],
    numbers: 1..500,
};

const HELD_OUT_SLOTS: Slots = Slots {
    cities: &["Berlin", "Nairobi", "Sydney", "Toronto", "Mumbai", "Quito"],
    topics: &[
        "black holes",
        "the printing press",
        "Marie Curie",
        "volcanoes",
        "the Silk Road",
    ],
    names: &["Priya", "Tom", "Lena"],
    numbers: 500..1000,
};

/// A task text and the action that solves it.
pub fn task(rng: &mut Rng, held_out: bool) -> (String, &'static str) {
    let slots = if held_out {
        &HELD_OUT_SLOTS
    } else {
        &TRAINING_SLOTS
    };
    let pick = |rng: &mut Rng, xs: &[&'static str]| xs[rng.below(xs.len())];
    let span = (slots.numbers.end - slots.numbers.start) as usize;
    let number = |rng: &mut Rng| slots.numbers.start + rng.below(span) as u32;
    match rng.below(4) {
        0 => {
            let city = pick(rng, slots.cities);
            let templates = [
                format!("What's the weather in {city}?"),
                format!("Will it rain in {city} tomorrow?"),
                format!("How hot is it in {city} today"),
                format!("weather forecast for {city} please"),
                format!("Is it sunny or cloudy in {city} right now?"),
            ];
            (templates[rng.below(templates.len())].clone(), "get_weather")
        }
        1 => {
            let (a, b) = (number(rng), number(rng));
            let templates = [
                format!("What is {a} plus {b}?"),
                format!("Compute {a} * {b}"),
                format!("How much is {a} divided by {b}?"),
                format!("Calculate {a} minus {b}"),
                format!("what's {a} times {b}"),
            ];
            (templates[rng.below(templates.len())].clone(), "calculator")
        }
        2 => {
            let topic = pick(rng, slots.topics);
            let templates = [
                format!("Look up {topic} for me"),
                format!("Find information about {topic}"),
                format!("Search the web for {topic}"),
                format!("Who discovered {topic}? Look it up"),
                format!("Find articles on {topic}"),
            ];
            (templates[rng.below(templates.len())].clone(), "search")
        }
        _ => {
            let name = pick(rng, slots.names);
            let templates = [
                format!("Hello, I'm {name}!"),
                "Hi there, how are you?".to_string(),
                "Good morning!".to_string(),
                format!("Hey, nice to meet you, my name is {name}"),
                "Thanks a lot, bye!".to_string(),
            ];
            (templates[rng.below(templates.len())].clone(), NO_TOOL)
        }
    }
}

/// `n` logged episodes from a uniformly random logging policy.
pub fn episodes(n: usize, seed: u64) -> Vec<Episode> {
    let mut rng = Rng::new(seed);
    let actions: Vec<&str> = TOOLS.iter().copied().chain([NO_TOOL]).collect();
    let probability = 1.0 / actions.len() as f64;
    (0..n)
        .map(|i| {
            let (input, best) = task(&mut rng, false);
            let chosen = actions[rng.below(actions.len())];
            let mut call = LlmCall {
                tools_available: TOOLS.iter().map(|t| t.to_string()).collect(),
                ..LlmCall::default()
            };
            let mut steps = Vec::new();
            if chosen == NO_TOOL {
                call.output_text = Some("Hello! How can I help?".into());
                call.policy = Some(PolicyChoice {
                    version: Some("logging".into()),
                    probability,
                    decision_id: None,
                });
                steps.push(Step::llm("gpt-test", call));
            } else {
                call.tool_calls = vec![RequestedToolCall {
                    id: Some("c1".into()),
                    name: chosen.into(),
                    arguments: serde_json::json!({}),
                }];
                steps.push(Step::llm("gpt-test", call));
                let tool = ToolCall {
                    call_id: Some("c1".into()),
                    arguments: serde_json::json!({}),
                    result: Some("ok".into()),
                    policy: Some(PolicyChoice {
                        version: Some("logging".into()),
                        probability,
                        decision_id: None,
                    }),
                };
                steps.push(Step::tool(chosen, tool));
            }
            let reward = if chosen == best { 1.0 } else { 0.0 };
            let source = Source {
                file: "synthetic.jsonl".into(),
                line: i as u64 + 1,
            };
            Episode {
                input: Some(input),
                rewards: BTreeMap::from([("correct".to_string(), reward)]),
                ..Episode::new(format!("{seed:x}-{i:08x}"), steps, source)
            }
        })
        .collect()
}
