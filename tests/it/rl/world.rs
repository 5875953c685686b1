//! A synthetic tool-using agent with a known optimum, shared by the RL tests
//! and `benches/rl_vs_bandit.rs` (issue 9).
//!
//! **Tasks.** Seven intents, each solved by a plan of 0 to 3 tools in order:
//! weather (`get_weather`), arithmetic (`calculator`), lookup (`search`),
//! small talk (answer without a tool), weather in Fahrenheit (`get_weather`,
//! `unit_convert`), a fact translated (`search`, `translate`) and a distance in
//! miles (`search`, `calculator`, `unit_convert`). Each intent has several
//! phrasings; some use another intent's keywords ("Thanks, I will look up
//! the rest myself" is small talk), which fools a keyword router but not a
//! reader of the whole text. The text determines the intent.
//!
//! **Dynamics.** At each decision the agent calls one of five tools or
//! answers. The next tool of the plan advances it unless it fails (each tool
//! fails with its own probability; retrying is then right). Any other tool
//! derails the run: it is aborted with success 0. Answering ends the run with
//! success 1 if the plan is complete, else 0. At most [`MAX_DECISIONS`]
//! decisions; a tool call at the last one ends the run unanswered (0).
//! Rewards: every tool call costs 0.05 (step reward `cost`), a failed one
//! 0.1 more (`tool_error`), and the run's `success` is its final reward.
//!
//! Because the intent is a function of the text and the plan's progress a
//! function of (intent, previous tool, its error), the state the learner sees
//! — (task text, previous tool, previous error, step) — is Markov, and
//! [`q_star`] is exact dynamic programming over it.
//!
//! **Logging policy.** ε-greedy over a keyword router ([`router`]) with
//! ε = [`EPSILON`]; the probability of each decision is logged on its chat
//! span. Episodes are exported as OTLP/JSON ([`otlp_line`]: a root
//! `invoke_agent` span with the final reward, a `chat` span per decision, an
//! `execute_tool` span per call with step rewards and errors) and read back
//! through the real ingestion path ([`ingest`]).

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value, json};
use whetstone::ingest::{IngestOptions, ingest_paths};
use whetstone::rl::{ActRequest, NO_TOOL, ServedPolicy};
use whetstone::rng::Rng;
use whetstone::store::{EpisodeFilter, Store};
use whetstone::trace::Episode;

/// Every action, in a fixed order: five tools, then answering without one.
pub const ACTIONS: [&str; 6] = [
    "calculator",
    "get_weather",
    "search",
    "translate",
    "unit_convert",
    NO_TOOL,
];
const CALCULATOR: usize = 0;
const WEATHER: usize = 1;
const SEARCH: usize = 2;
const TRANSLATE: usize = 3;
const CONVERT: usize = 4;
/// Index of "answer without a tool" in [`ACTIONS`].
pub const ANSWER: usize = 5;

/// Most decisions in one run.
pub const MAX_DECISIONS: usize = 6;
/// Step reward of every tool call.
pub const CALL_COST: f64 = -0.05;
/// Extra step reward of a failed tool call.
pub const ERROR_COST: f64 = -0.1;
/// Exploration rate of the logging policy.
pub const EPSILON: f64 = 0.3;

/// Failure probability of each tool (by index in [`ACTIONS`]).
fn error_probability(tool: usize) -> f64 {
    [0.05, 0.2, 0.3, 0.25, 0.1][tool]
}

/// What the user wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Intent {
    Weather,
    Arithmetic,
    Lookup,
    SmallTalk,
    WeatherFahrenheit,
    TranslatedFact,
    Distance,
}

impl Intent {
    const ALL: [Intent; 7] = [
        Intent::Weather,
        Intent::Arithmetic,
        Intent::Lookup,
        Intent::SmallTalk,
        Intent::WeatherFahrenheit,
        Intent::TranslatedFact,
        Intent::Distance,
    ];

    /// The tools that solve it, in order.
    pub fn plan(self) -> &'static [usize] {
        match self {
            Intent::Weather => &[WEATHER],
            Intent::Arithmetic => &[CALCULATOR],
            Intent::Lookup => &[SEARCH],
            Intent::SmallTalk => &[],
            Intent::WeatherFahrenheit => &[WEATHER, CONVERT],
            Intent::TranslatedFact => &[SEARCH, TRANSLATE],
            Intent::Distance => &[SEARCH, CALCULATOR, CONVERT],
        }
    }
}

/// One task: its text and (hidden from the learner) intent.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub text: String,
    pub intent: Intent,
}

struct Slots {
    cities: &'static [&'static str],
    topics: &'static [&'static str],
    names: &'static [&'static str],
    languages: &'static [&'static str],
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
    languages: &["French", "Spanish", "German"],
    numbers: 1..500,
};

/// Slot values the learner never sees: evaluation states are new. (The
/// languages are part of the request's meaning, so both sets share them.)
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
    languages: &["French", "Spanish", "German"],
    numbers: 500..1000,
};

/// A random task; `held_out` draws slot values from the evaluation set.
pub fn task(rng: &mut Rng, held_out: bool) -> Task {
    let slots = if held_out {
        &HELD_OUT_SLOTS
    } else {
        &TRAINING_SLOTS
    };
    let pick = |rng: &mut Rng, xs: &[&'static str]| xs[rng.below(xs.len())];
    let intent = Intent::ALL[rng.below(Intent::ALL.len())];
    let city = pick(rng, slots.cities);
    let other = pick(rng, slots.cities);
    let topic = pick(rng, slots.topics);
    let name = pick(rng, slots.names);
    let language = pick(rng, slots.languages);
    let span = (slots.numbers.end - slots.numbers.start) as usize;
    let a = slots.numbers.start + rng.below(span) as u32;
    let b = slots.numbers.start + rng.below(span) as u32;
    let templates: Vec<String> = match intent {
        Intent::Weather => vec![
            format!("What's the weather in {city}?"),
            format!("Will it rain in {city} tomorrow?"),
            format!("Is it sunny in {city} right now?"),
            format!("Do I need an umbrella in {city} today?"),
            format!("How cold does {city} get tonight?"),
        ],
        Intent::Arithmetic => vec![
            format!("What is {a} plus {b}?"),
            format!("Compute {a} times {b}"),
            format!("How much is {a} minus {b}?"),
            format!("Split {a} dollars between {b} people"),
            format!("If I have {a} apples and eat {b}, how many are left?"),
        ],
        Intent::Lookup => vec![
            format!("Look up {topic} for me"),
            format!("Who discovered {topic}?"),
            format!("Find facts about {topic}"),
            format!("Tell me the history of {topic}"),
            format!("Give me a summary of {topic}"),
        ],
        Intent::SmallTalk => vec![
            format!("Hello, I'm {name}!"),
            format!("Good morning {name} here, how are you?"),
            "Thanks, I will look up the rest myself".to_string(),
            format!("Nice weather for a chat, {name} says hi"),
            "You were great, bye!".to_string(),
        ],
        Intent::WeatherFahrenheit => vec![
            format!("What's the temperature in {city} in Fahrenheit?"),
            format!("How hot is {city} today, in Fahrenheit"),
            format!("Weather in {city} please, degrees Fahrenheit"),
            format!("Is {city} warm right now? Answer in Fahrenheit"),
        ],
        Intent::TranslatedFact => vec![
            format!("Translate a fact about {topic} into {language}"),
            format!("Tell me about {topic} in {language}"),
            format!("Find a fact about {topic} and say it in {language}"),
            format!("Look up {topic} and tell me about it in {language}"),
        ],
        Intent::Distance => vec![
            format!("Look up how far {city} is from {other}, in miles"),
            format!("Find the distance between {city} and {other} in miles"),
            format!("How many miles from {city} to {other}?"),
            format!("Search the driving distance from {city} to {other} in miles"),
        ],
    };
    Task {
        text: templates[rng.below(templates.len())].clone(),
        intent,
    }
}

/// What the learner sees of a run besides the task text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Obs {
    /// The previous tool and whether it failed.
    pub previous: Option<(usize, bool)>,
    /// Decisions made so far.
    pub step: usize,
}

impl Obs {
    /// The first decision of a run.
    pub const START: Obs = Obs {
        previous: None,
        step: 0,
    };
}

/// Tools of the plan done in a non-derailed run at `obs`.
fn progress(intent: Intent, obs: Obs) -> usize {
    let position = |tool| intent.plan().iter().position(|t| *t == tool);
    match obs.previous {
        None => 0,
        Some((tool, error)) => {
            position(tool).expect("runs that call an off-plan tool end") + usize::from(!error)
        }
    }
}

/// One possible result of an action.
struct Outcome {
    probability: f64,
    error: bool,
    /// Step rewards plus the final reward when the run ends.
    reward: f64,
    /// The next state, `None` when the run ends.
    next: Option<Obs>,
}

fn outcomes(intent: Intent, obs: Obs, action: usize) -> Vec<Outcome> {
    let done = progress(intent, obs);
    if action == ANSWER {
        return vec![Outcome {
            probability: 1.0,
            error: false,
            reward: f64::from(u8::from(done == intent.plan().len())),
            next: None,
        }];
    }
    let on_plan = intent.plan().get(done) == Some(&action);
    let p_error = error_probability(action);
    [(false, 1.0 - p_error), (true, p_error)]
        .into_iter()
        .map(|(error, probability)| Outcome {
            probability,
            error,
            reward: CALL_COST + if error { ERROR_COST } else { 0.0 },
            next: (on_plan && obs.step + 1 < MAX_DECISIONS).then_some(Obs {
                previous: Some((action, error)),
                step: obs.step + 1,
            }),
        })
        .collect()
}

/// Optimal action values at `obs` (exact, by dynamic programming).
pub fn q_star(intent: Intent, obs: Obs) -> [f64; 6] {
    std::array::from_fn(|action| {
        outcomes(intent, obs, action)
            .iter()
            .map(|o| {
                let future = o.next.map_or(0.0, |next| {
                    q_star(intent, next).into_iter().fold(f64::MIN, f64::max)
                });
                o.probability * (o.reward + future)
            })
            .sum()
    })
}

/// Optimal value of a task: the ceiling any policy over (text, previous
/// tool, previous error, step) can reach.
pub fn optimal_value(intent: Intent) -> f64 {
    q_star(intent, Obs::START)
        .into_iter()
        .fold(f64::MIN, f64::max)
}

/// Exact expected return of `policy` (action probabilities per state).
pub fn value(intent: Intent, obs: Obs, policy: &dyn Fn(Obs) -> [f64; 6]) -> f64 {
    let probabilities = policy(obs);
    (0..ACTIONS.len())
        .filter(|&action| probabilities[action] > 0.0)
        .map(|action| {
            let q: f64 = outcomes(intent, obs, action)
                .iter()
                .map(|o| {
                    o.probability
                        * (o.reward + o.next.map_or(0.0, |next| value(intent, next, policy)))
                })
                .sum();
            probabilities[action] * q
        })
        .sum()
}

/// Every state a run of `intent` can reach (runs that derail end).
pub fn reachable(intent: Intent) -> Vec<Obs> {
    let mut out = vec![Obs::START];
    let mut idx = 0;
    while idx < out.len() {
        let obs = out[idx];
        idx += 1;
        for action in 0..ANSWER {
            for outcome in outcomes(intent, obs, action) {
                if let Some(next) = outcome.next.filter(|n| !out.contains(n)) {
                    out.push(next);
                }
            }
        }
    }
    out
}

/// States the optimal policy visits (both outcomes of each call).
pub fn optimal_path(intent: Intent) -> Vec<Obs> {
    let mut out = vec![Obs::START];
    let mut idx = 0;
    while idx < out.len() {
        let obs = out[idx];
        idx += 1;
        let best = argmax(&q_star(intent, obs));
        for outcome in outcomes(intent, obs, best) {
            if let Some(next) = outcome.next.filter(|n| !out.contains(n)) {
                out.push(next);
            }
        }
    }
    out
}

/// Index of the largest value (the first on ties).
pub fn argmax(values: &[f64]) -> usize {
    (0..values.len()).fold(0, |best, i| if values[i] > values[best] { i } else { best })
}

fn has_any(text: &str, words: &[&str]) -> bool {
    words.iter().any(|w| text.contains(w))
}

/// The logging agent's keyword router: retry a failed tool; first decision
/// by keywords; then compute a distance found by a search, convert units or
/// translate a search result if the text asks for it, else answer.
pub fn router(text: &str, obs: Obs) -> usize {
    let text = text.to_lowercase();
    let units = ["fahrenheit", "miles"];
    let languages = ["translate", "french", "spanish", "german", "italian"];
    match obs.previous {
        Some((tool, true)) => tool,
        None if has_any(&text, &["weather", "rain", "sunny", "temperature", "hot"]) => WEATHER,
        None if has_any(&text, &["plus", "minus", "times", "compute"]) => CALCULATOR,
        None if has_any(&text, &["look up", "find", "search", "who ", "history"]) => SEARCH,
        None if has_any(&text, &languages) => TRANSLATE,
        None if has_any(&text, &units) => CONVERT,
        None => ANSWER,
        Some((SEARCH, false)) if has_any(&text, &["miles"]) => CALCULATOR,
        Some((tool, false)) if tool != CONVERT && has_any(&text, &units) => CONVERT,
        Some((SEARCH, false)) if has_any(&text, &languages) => TRANSLATE,
        Some(_) => ANSWER,
    }
}

/// The logging policy: ε-greedy over [`router`].
pub fn logging_policy(text: &str, obs: Obs) -> [f64; 6] {
    let mut probabilities = [EPSILON / ACTIONS.len() as f64; 6];
    probabilities[router(text, obs)] += 1.0 - EPSILON;
    probabilities
}

/// One logged decision.
#[derive(Debug, Clone)]
pub struct LoggedDecision {
    pub obs: Obs,
    pub action: usize,
    /// μ(action | state), as logged.
    pub probability: f64,
    /// Whether the tool call failed.
    pub error: bool,
    /// Set when Whetstone's served policy made the decision.
    pub served: Option<Served>,
}

/// An agent's decision rule: action probabilities in a state, and what the
/// served policy said when it decided.
pub type AgentPolicy<'a> = dyn Fn(&str, Obs) -> ([f64; 6], Option<Served>) + 'a;

/// What `/v1/policy/act` (or `rl::ServedPolicy`) said about a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub policy_version: u64,
    pub decision_id: String,
}

/// One logged run.
#[derive(Debug, Clone)]
pub struct LoggedEpisode {
    pub task: Task,
    pub decisions: Vec<LoggedDecision>,
    /// Final reward: 1 when answered with the plan complete.
    pub success: f64,
    /// Noise added to the logged final reward.
    pub reward_noise: f64,
    /// An off-plan tool derailed the run.
    pub aborted: bool,
}

/// Runs the logging policy on a training task.
pub fn simulate(rng: &mut Rng) -> LoggedEpisode {
    simulate_with(rng, &|text, obs| (logging_policy(text, obs), None), 0.0)
}

/// Runs an agent on a training task: at each decision `policy` gives the
/// action probabilities and, when they came from Whetstone's served policy,
/// its version and decision id (logged with the decision). The final
/// reward gets uniform noise in ±`reward_noise` (its mean is unchanged, so
/// the true values are too).
pub fn simulate_with(rng: &mut Rng, policy: &AgentPolicy<'_>, reward_noise: f64) -> LoggedEpisode {
    let task = task(rng, false);
    let mut obs = Obs::START;
    let mut decisions = Vec::new();
    loop {
        let (probabilities, served) = policy(&task.text, obs);
        let mut draw = rng.next_f64();
        let action = (0..ANSWER)
            .find(|&a| {
                draw -= probabilities[a];
                draw < 0.0
            })
            .unwrap_or(ANSWER);
        let outcomes = outcomes(task.intent, obs, action);
        let outcome = if outcomes.len() == 1 || rng.next_f64() >= outcomes[1].probability {
            &outcomes[0]
        } else {
            &outcomes[1]
        };
        decisions.push(LoggedDecision {
            obs,
            action,
            probability: probabilities[action],
            error: outcome.error,
            served,
        });
        match outcome.next {
            Some(next) => obs = next,
            None => {
                let complete = progress(task.intent, obs) == task.intent.plan().len();
                let off_plan = action != ANSWER
                    && task.intent.plan().get(progress(task.intent, obs)) != Some(&action);
                let noise = if reward_noise > 0.0 {
                    (rng.next_f64() * 2.0 - 1.0) * reward_noise
                } else {
                    0.0
                };
                return LoggedEpisode {
                    success: f64::from(u8::from(action == ANSWER && complete)),
                    reward_noise: noise,
                    aborted: off_plan,
                    task,
                    decisions,
                };
            }
        }
    }
}

/// `n` logged runs.
pub fn logged_episodes(n: usize, seed: u64) -> Vec<LoggedEpisode> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| simulate(&mut rng)).collect()
}

fn attribute(key: &str, value: Value) -> Value {
    let value = match value {
        Value::String(s) => json!({ "stringValue": s }),
        Value::Number(n) => json!({ "doubleValue": n }),
        other => panic!("no OTLP encoding for {other}"),
    };
    json!({ "key": key, "value": value })
}

/// One OTLP/JSON export request holding all spans of run `index`.
pub fn otlp_line(episode: &LoggedEpisode, seed: u64, index: usize) -> String {
    let trace_id = format!("{seed:016x}{index:016x}");
    let span_id = |n: usize| format!("{:08x}{n:08x}", index as u32);
    let time = |n: usize| {
        (1_700_000_000_000_000_000u64 + index as u64 * 1_000_000_000 + n as u64 * 1_000_000)
            .to_string()
    };
    let tools = json!(
        ACTIONS[..ANSWER]
            .iter()
            .map(|name| json!({"type": "function", "name": name}))
            .collect::<Vec<_>>()
    )
    .to_string();
    let input =
        json!([{"role": "user", "parts": [{"type": "text", "content": episode.task.text}]}])
            .to_string();
    let mut spans = Vec::new();
    let mut n = 1;
    for (idx, decision) in episode.decisions.iter().enumerate() {
        let call_id = format!("call_{idx}");
        let output = if decision.action == ANSWER {
            json!([{"role": "assistant", "parts": [{"type": "text", "content": "Here is my answer."}], "finish_reason": "stop"}])
        } else {
            json!([{"role": "assistant", "parts": [{"type": "tool_call", "id": call_id, "name": ACTIONS[decision.action], "arguments": {}}], "finish_reason": "tool_calls"}])
        };
        spans.push(json!({
            "traceId": trace_id, "spanId": span_id(n), "parentSpanId": span_id(0),
            "name": "chat sim-model", "kind": 3,
            "startTimeUnixNano": time(n), "endTimeUnixNano": time(n + 1),
            "attributes": [
                attribute("gen_ai.operation.name", json!("chat")),
                attribute("gen_ai.request.model", json!("sim-model")),
                attribute("gen_ai.tool.definitions", json!(tools)),
                attribute("gen_ai.input.messages", json!(input)),
                attribute("gen_ai.output.messages", json!(output.to_string())),
                attribute("whetstone.policy.probability", json!(decision.probability)),
            ],
            "status": {}
        }));
        if let Some(served) = &decision.served {
            let attributes = spans.last_mut().unwrap()["attributes"]
                .as_array_mut()
                .unwrap();
            attributes.push(attribute(
                "whetstone.policy.version",
                json!(served.policy_version.to_string()),
            ));
            attributes.push(attribute(
                "whetstone.policy.decision_id",
                json!(served.decision_id),
            ));
        }
        n += 2;
        if decision.action == ANSWER {
            continue;
        }
        let mut attributes = vec![
            attribute("gen_ai.operation.name", json!("execute_tool")),
            attribute("gen_ai.tool.name", json!(ACTIONS[decision.action])),
            attribute("gen_ai.tool.call.id", json!(call_id)),
            attribute("whetstone.reward.cost", json!(CALL_COST)),
        ];
        let mut status = json!({});
        if decision.error {
            attributes.push(attribute("error.type", json!("ToolError")));
            attributes.push(attribute("whetstone.reward.tool_error", json!(ERROR_COST)));
            status = json!({"code": 2, "message": "tool failed, try again"});
        }
        spans.push(json!({
            "traceId": trace_id, "spanId": span_id(n), "parentSpanId": span_id(0),
            "name": format!("execute_tool {}", ACTIONS[decision.action]), "kind": 1,
            "startTimeUnixNano": time(n), "endTimeUnixNano": time(n + 1),
            "attributes": attributes, "status": status
        }));
        n += 2;
    }
    spans.push(json!({
        "traceId": trace_id, "spanId": span_id(0),
        "name": "invoke_agent sim-agent", "kind": 1,
        "startTimeUnixNano": time(0), "endTimeUnixNano": time(n),
        "attributes": [
            attribute("gen_ai.operation.name", json!("invoke_agent")),
            attribute("whetstone.policy.version", json!("keyword-router-eps0.3")),
            attribute("whetstone.reward.success", json!(episode.success + episode.reward_noise)),
        ],
        "status": if episode.aborted { json!({"code": 2, "message": "off-plan tool"}) } else { json!({}) }
    }));
    json!({"resourceSpans": [{
        "resource": {"attributes": [attribute("service.name", json!("sim-agent"))]},
        "scopeSpans": [{"scope": {"name": "whetstone-world"}, "spans": spans}]
    }]})
    .to_string()
}

/// Writes `episodes` as OTLP/JSON lines to `path`.
pub fn write_otlp(path: &Path, episodes: &[LoggedEpisode], seed: u64) {
    let text: String = episodes
        .iter()
        .enumerate()
        .map(|(idx, e)| otlp_line(e, seed, idx) + "\n")
        .collect();
    std::fs::write(path, text).unwrap();
}

/// Imports `traces` into a store in `data_dir` the way `whetstone traces
/// import` does, and returns every episode in it.
pub fn ingest(data_dir: &Path, traces: &Path) -> Vec<Episode> {
    let mut store = Store::open(data_dir).unwrap();
    let options = IngestOptions {
        finalize: true,
        ..IngestOptions::default()
    };
    let report = ingest_paths(&mut store, &[traces.to_path_buf()], &options, &mut |_| {}).unwrap();
    assert_eq!(report.rejects_total(), 0, "{report:?}");
    store
        .load_episodes(&EpisodeFilter::default())
        .unwrap()
        .into_iter()
        .map(|stored| stored.episode)
        .collect()
}

/// Logs `n` runs as OTLP/JSON in `dir` and ingests them: the training data.
pub fn logged_otlp_episodes(dir: &Path, n: usize, seed: u64) -> Vec<Episode> {
    let traces = dir.join("traces");
    std::fs::create_dir_all(&traces).unwrap();
    write_otlp(&traces.join("agent.jsonl"), &logged_episodes(n, seed), seed);
    ingest(&dir.join("store"), &traces)
}

/// Evaluation states: new tasks (held-out slot values) with every state
/// their runs can reach.
pub struct HeldOut {
    pub tasks: Vec<Task>,
    /// Per task, its reachable states.
    pub states: Vec<Vec<Obs>>,
}

impl HeldOut {
    /// `n` held-out tasks.
    pub fn new(n: usize, seed: u64) -> HeldOut {
        let mut rng = Rng::new(seed);
        let tasks: Vec<Task> = (0..n).map(|_| task(&mut rng, true)).collect();
        let states = tasks.iter().map(|t| reachable(t.intent)).collect();
        HeldOut { tasks, states }
    }

    /// Every (task text, state) pair, in order.
    pub fn queries(&self) -> Vec<(&str, Obs)> {
        self.tasks
            .iter()
            .zip(&self.states)
            .flat_map(|(task, states)| states.iter().map(|obs| (task.text.as_str(), *obs)))
            .collect()
    }

    /// Mean true value and best-action accuracy of a policy given as action
    /// probabilities for each of [`HeldOut::queries`], in order, scored as
    /// is (`greedy` false) or by its most likely action.
    pub fn score(&self, probabilities: &[[f64; 6]], greedy: bool) -> Score {
        let mut row = 0;
        let (mut total_value, mut correct, mut judged) = (0.0, 0usize, 0usize);
        for (task, states) in self.tasks.iter().zip(&self.states) {
            let table: HashMap<Obs, [f64; 6]> = states
                .iter()
                .map(|obs| {
                    let mut p = probabilities[row];
                    row += 1;
                    if greedy {
                        let best = argmax(&p);
                        p = [0.0; 6];
                        p[best] = 1.0;
                    }
                    (*obs, p)
                })
                .collect();
            total_value += value(task.intent, Obs::START, &|obs| table[&obs]);
            for obs in optimal_path(task.intent) {
                let q = q_star(task.intent, obs);
                let best = q.into_iter().fold(f64::MIN, f64::max);
                correct += usize::from(q[argmax(&table[&obs])] >= best - 1e-9);
                judged += 1;
            }
        }
        Score {
            value: total_value / self.tasks.len() as f64,
            best_action_accuracy: correct as f64 / judged as f64,
        }
    }

    /// Scores a policy that only depends on the task text and state.
    pub fn score_fn(&self, policy: impl Fn(&str, Obs) -> [f64; 6], greedy: bool) -> Score {
        let probabilities: Vec<[f64; 6]> = self
            .queries()
            .into_iter()
            .map(|(text, obs)| policy(text, obs))
            .collect();
        self.score(&probabilities, greedy)
    }

    /// Mean optimal value: the ceiling.
    pub fn ceiling(&self) -> f64 {
        self.tasks
            .iter()
            .map(|t| optimal_value(t.intent))
            .sum::<f64>()
            / self.tasks.len() as f64
    }
}

/// True value and best-action accuracy of a policy on [`HeldOut`] tasks.
#[derive(Debug, Clone, Copy)]
pub struct Score {
    pub value: f64,
    pub best_action_accuracy: f64,
}

/// The promoted policy's action probabilities (in [`ACTIONS`] order) for
/// every query of `held_out`, asked through `whetstone::rl::act`.
pub fn learned_probabilities(checkpoint_dir: &Path, held_out: &HeldOut) -> Vec<[f64; 6]> {
    served_probabilities(&ServedPolicy::load(checkpoint_dir).unwrap(), held_out)
}

/// `policy`'s action probabilities (in [`ACTIONS`] order) for every query
/// of `held_out`.
pub fn served_probabilities(policy: &ServedPolicy, held_out: &HeldOut) -> Vec<[f64; 6]> {
    let requests: Vec<ActRequest> = held_out
        .queries()
        .into_iter()
        .map(|(text, obs)| request(text, obs))
        .collect();
    policy
        .act(&requests)
        .unwrap()
        .into_iter()
        .map(|ranked| in_action_order(&ranked))
        .collect()
}

/// The state `act` scores for `obs` of a run on `text`.
pub fn request(text: &str, obs: Obs) -> ActRequest {
    ActRequest {
        input: text.to_string(),
        previous_tool: obs.previous.map(|(tool, _)| ACTIONS[tool].to_string()),
        previous_tool_error: obs.previous.is_some_and(|(_, error)| error),
        step_index: obs.step,
        tools: Vec::new(),
    }
}

/// Ranked (action, probability) pairs as probabilities in [`ACTIONS`] order.
pub fn in_action_order(ranked: &[(String, f64)]) -> [f64; 6] {
    let mut probabilities = [0.0; 6];
    for (name, p) in ranked {
        let idx = ACTIONS.iter().position(|a| a == name).unwrap();
        probabilities[idx] = *p;
    }
    probabilities
}
