//! A local OpenAI-compatible server for APO tests, plus episode builders.
//!
//! Three models behave like small, predictable LLMs:
//! - `task-model` answers well only when its system prompt says both
//!   "cite the tool result" and "answer in one sentence";
//! - `rewriter-model` critiques (naming the missing instructions), edits
//!   (adding what the critique names), paraphrases (and, like a careless LLM,
//!   replaces the `{user_name}` placeholder) and crosses two prompts;
//! - `judge-model` grades by word overlap with the reference.
//!
//! Weak models answer like a small base model would (see [`WEAK_MODELS`]).
//!
//! Faults (429 with Retry-After, 500, a hang past the client timeout,
//! malformed JSON) can be injected on chosen request numbers, and a fixed
//! latency can be added to every request. Like real servers, it may read the
//! output limit from one field only (llama-cpp-python reads `max_tokens`),
//! cutting a reply there with `finish_reason: length`, and may refuse a
//! field with a 400 (as OpenAI's reasoning models refuse `max_tokens`).

#![allow(dead_code)]

pub mod apo_world;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use whetstone::config::LlmConfig;
use whetstone::trace::{Episode, LlmCall, Message, PromptRef, Source, Step};

pub const CITE: &str = "cite the tool result";
pub const ONE_SENTENCE: &str = "answer in one sentence";

/// A fault to inject on one request.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    RateLimit {
        retry_after_secs: u64,
    },
    ServerError,
    /// Sleep this long before answering (past the client timeout).
    Hang(Duration),
    Malformed,
}

#[derive(Default)]
pub struct ServerState {
    /// Faults by 1-based request number.
    faults: Mutex<BTreeMap<u64, Fault>>,
    latency: Mutex<Duration>,
    requests: Mutex<u64>,
    /// (model, system prompt or first message) of every request, in order.
    log: Mutex<Vec<(String, String)>>,
    /// The body of every request, in order.
    bodies: Mutex<Vec<String>>,
    /// `Authorization` header of the last request, if any.
    authorization: Mutex<Option<String>>,
    /// The one field the output limit is read from; `None` reads both.
    limit_field: Mutex<Option<&'static str>>,
    /// Fields answered with a 400 naming them.
    refused_fields: Mutex<Vec<&'static str>>,
}

/// Models that answer like a weak model: `echo-model` sends the request
/// back, `mute-model` says nothing, `loop-model` repeats a phrase until the
/// limit, `bare-model` gives a prompt without the `<prompt>` wrapper, and
/// `vague-judge` grades without a `SCORE:` line.
pub const WEAK_MODELS: [&str; 5] = [
    "echo-model",
    "mute-model",
    "loop-model",
    "bare-model",
    "vague-judge",
];

pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
}

/// Serves `app` on a free loopback port until the test's runtime ends.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

impl TestServer {
    pub async fn start() -> TestServer {
        let state = Arc::new(ServerState::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .with_state(state.clone());
        TestServer {
            addr: serve(app).await,
            state,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// An `[llm]` section pointing at this server.
    pub fn settings(&self) -> LlmConfig {
        LlmConfig {
            base_url: self.base_url(),
            api_key_env: "WHETSTONE_TEST_KEY_UNSET".to_string(),
            timeout_secs: 5,
            max_retries: 3,
            max_concurrency: 8,
            task_model: "task-model".to_string(),
            rewriter_model: "rewriter-model".to_string(),
            judge_model: "judge-model".to_string(),
            temperature: 0.0,
            seed: Some(7),
            max_tokens_field: Default::default(),
        }
    }

    pub fn fault_on(&self, request_number: u64, fault: Fault) {
        self.state
            .faults
            .lock()
            .unwrap()
            .insert(request_number, fault);
    }

    pub fn set_latency(&self, latency: Duration) {
        *self.state.latency.lock().unwrap() = latency;
    }

    /// HTTP requests received so far (retries included).
    pub fn requests(&self) -> u64 {
        *self.state.requests.lock().unwrap()
    }

    /// Requests received for `model`.
    pub fn requests_for(&self, model: &str) -> usize {
        self.log().iter().filter(|(m, _)| m == model).count()
    }

    /// System prompts the task model was called with.
    pub fn task_prompts(&self) -> BTreeSet<String> {
        self.log()
            .into_iter()
            .filter(|(model, _)| model == "task-model")
            .map(|(_, system)| system)
            .collect()
    }

    pub fn last_authorization(&self) -> Option<String> {
        self.state.authorization.lock().unwrap().clone()
    }

    pub fn log(&self) -> Vec<(String, String)> {
        self.state.log.lock().unwrap().clone()
    }

    /// Reads the output limit from `field` only (`max_tokens` or
    /// `max_completion_tokens`), as many servers do.
    pub fn read_limit_from(&self, field: &'static str) {
        *self.state.limit_field.lock().unwrap() = Some(field);
    }

    /// Answers 400 to any request carrying `field`, naming it.
    pub fn refuse_field(&self, field: &'static str) {
        self.state.refused_fields.lock().unwrap().push(field);
    }

    /// The JSON body of every request that got past the injected faults
    /// (refused ones included), in order.
    pub fn bodies(&self) -> Vec<Value> {
        self.state
            .bodies
            .lock()
            .unwrap()
            .iter()
            .map(|body| serde_json::from_str(body).unwrap())
            .collect()
    }

    /// Requests whose body was sent before (a paid call made twice).
    pub fn repeated_requests(&self) -> usize {
        let bodies = self.state.bodies.lock().unwrap();
        bodies.len() - bodies.iter().collect::<BTreeSet<_>>().len()
    }
}

fn tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

async fn chat(
    State(state): State<Arc<ServerState>>,
    headers: axum::http::HeaderMap,
    body: String,
) -> Response {
    *state.authorization.lock().unwrap() = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let number = {
        let mut requests = state.requests.lock().unwrap();
        *requests += 1;
        *requests
    };
    let latency = *state.latency.lock().unwrap();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fault = state.faults.lock().unwrap().get(&number).copied();
    match fault {
        Some(Fault::RateLimit { retry_after_secs }) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, retry_after_secs.to_string())],
                r#"{"error":{"message":"rate limited","type":"rate_limit_error"}}"#,
            )
                .into_response();
        }
        Some(Fault::ServerError) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response();
        }
        Some(Fault::Hang(duration)) => tokio::time::sleep(duration).await,
        Some(Fault::Malformed) => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"id": "x", "choices": [ {"#,
            )
                .into_response();
        }
        None => {}
    }
    state.bodies.lock().unwrap().push(body.clone());
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad json").into_response();
    };
    let refused = state
        .refused_fields
        .lock()
        .unwrap()
        .iter()
        .copied()
        .find(|field| request.get(*field).is_some());
    if let Some(field) = refused {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            json!({"error": {
                "message": format!("Unsupported parameter: '{field}' is not supported with this model."),
                "type": "invalid_request_error",
                "param": field,
                "code": "unsupported_parameter"
            }})
            .to_string(),
        )
            .into_response();
    }
    let read_from = *state.limit_field.lock().unwrap();
    let limit = ["max_tokens", "max_completion_tokens"]
        .into_iter()
        .filter(|field| read_from.is_none_or(|only| only == *field))
        .find_map(|field| request[field].as_u64());
    let model = request["model"].as_str().unwrap_or_default().to_string();
    let messages: Vec<(String, String)> = request["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|message| {
            (
                message["role"].as_str().unwrap_or_default().to_string(),
                message["content"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let first = messages.first().map(|m| m.1.clone()).unwrap_or_default();
    state.log.lock().unwrap().push((model.clone(), first));
    let last = messages.last().map(|m| m.1.clone()).unwrap_or_default();
    let text = match model.as_str() {
        "task-model" => task_answer(&messages),
        "rewriter-model" => rewrite(&last),
        "judge-model" => judge(&last),
        "echo-model" => last,
        "mute-model" => String::new(),
        // Like a base model left without a limit: the phrase again and again,
        // until the server's context (here 4096 tokens) is full.
        "loop-model" => "and the agent should answer the user. ".repeat(400),
        "bare-model" => "A better prompt would tell the agent to cite the tool result.".to_string(),
        "vague-judge" => "The answer looks reasonable to me overall.".to_string(),
        other => {
            return (StatusCode::NOT_FOUND, format!("no model {other}")).into_response();
        }
    };
    // Tokens are 4 characters here; a reply longer than the limit is cut.
    let (text, finish_reason) = match limit {
        Some(limit) if tokens(&text) > limit => {
            (text.chars().take(limit as usize * 4).collect(), "length")
        }
        _ => (text, "stop"),
    };
    let prompt_tokens: u64 = messages.iter().map(|m| tokens(&m.1)).sum();
    let completion_tokens = tokens(&text);
    let reply = json!({
        "id": format!("chatcmpl-{number}"),
        "object": "chat.completion",
        "created": 1_700_000_000u32,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens
        }
    });
    axum::Json(reply).into_response()
}

/// The answer a good agent gives for a tool result.
pub fn good_answer(tool_result: &str) -> String {
    format!("According to the tool result, {tool_result}.")
}

fn task_answer(messages: &[(String, String)]) -> String {
    let system = messages
        .iter()
        .find(|m| m.0 == "system")
        .map(|m| m.1.to_lowercase())
        .unwrap_or_default();
    let tool_result = messages
        .iter()
        .find_map(|m| m.1.strip_prefix("Tool result:\n"))
        .unwrap_or("nothing came back")
        .to_string();
    match (system.contains(CITE), system.contains(ONE_SENTENCE)) {
        (true, true) => good_answer(&tool_result),
        (true, false) => format!(
            "According to the tool result, {tool_result}. There is more background I could add, \
             such as how these numbers are usually gathered and why they can change over the day."
        ),
        (false, true) => format!("I think {tool_result}."),
        (false, false) => format!(
            "Well, I looked into it and I think {tool_result}, although I would like to double \
             check a few things before being completely sure about any of it."
        ),
    }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(text[from..to].trim())
}

fn rewrite(request: &str) -> String {
    const REQUIRED: [&str; 2] = [
        "Cite the tool result you relied on.",
        "Answer in one sentence.",
    ];
    if request.contains("Write a critique") {
        let prompt = between(request, "<prompt>", "</prompt>").unwrap_or_default();
        let missing: Vec<String> = REQUIRED
            .iter()
            .filter(|req| !prompt.to_lowercase().contains(&req.to_lowercase()[..18]))
            .map(|req| format!("- The prompt should tell the agent: {req}"))
            .collect();
        return if missing.is_empty() {
            "- The prompt is fine.".to_string()
        } else {
            missing.join("\n")
        };
    }
    if request.contains("Apply the critique") {
        let mut prompt = between(request, "<prompt>", "</prompt>")
            .unwrap_or_default()
            .to_string();
        for line in request.lines() {
            if let Some((_, instruction)) = line.split_once("tell the agent: ") {
                prompt.push('\n');
                prompt.push_str(instruction);
            }
        }
        return format!("Here you go.\n<prompt>\n{prompt}\n</prompt>");
    }
    if request.contains("same thing in different words") {
        let prompt = between(request, "<prompt>", "</prompt>").unwrap_or_default();
        let reworded = prompt
            .replace("Rules:", "Guidelines:")
            .replace("{user_name}", "the user");
        return format!("<prompt>\n{reworded}\n</prompt>");
    }
    if request.contains("Combine them") {
        let a = between(request, "Prompt A:\n<prompt>", "</prompt>").unwrap_or_default();
        let b = between(request, "Prompt B:\n<prompt>", "</prompt>").unwrap_or_default();
        let mut lines: Vec<&str> = a.lines().collect();
        for line in b.lines() {
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
        return format!("<prompt>\n{}\n</prompt>", lines.join("\n"));
    }
    "I do not understand the request.".to_string()
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn judge(request: &str) -> String {
    let reference = between(request, "word for word):\n", "\n\nAgent's answer:").unwrap_or("");
    let response = between(request, "Agent's answer:\n", "\n\nGrade the agent").unwrap_or("");
    let (response, mut reference) = (words(response), words(reference));
    let total_reference = reference.len();
    let mut common = 0;
    for word in &response {
        if let Some(pos) = reference.iter().position(|w| w == word) {
            reference.swap_remove(pos);
            common += 1;
        }
    }
    let f1 = if common == 0 {
        0.0
    } else {
        let p = common as f64 / response.len() as f64;
        let r = common as f64 / total_reference as f64;
        2.0 * p * r / (p + r)
    };
    format!(
        "The answer overlaps the reference.\nSCORE: {}",
        (f1 * 10.0).round()
    )
}

/// `episode` as a Whetstone JSONL line (with its newline), as an agent
/// would write it: without the fields ingestion fills in.
pub fn jsonl_line(episode: &Episode) -> String {
    let mut value = serde_json::to_value(episode).unwrap();
    let object = value.as_object_mut().unwrap();
    object.remove("format");
    object.remove("source");
    value.to_string() + "\n"
}

/// Appends `text` to `path`, creating it.
pub fn append(path: &std::path::Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Controller episode: the user asks, a tool answered `tool_result`, the
/// agent answered well (reward 1) or poorly (reward 0.1).
pub fn episode(id: &str, question: &str, tool_result: &str, good: bool) -> Episode {
    let answer = if good {
        good_answer(tool_result)
    } else {
        format!("Not sure, maybe {tool_result}?")
    };
    let reward = if good { 1.0 } else { 0.1 };
    let step = Step::llm(
        "gpt-test".to_string(),
        LlmCall {
            input_messages: vec![
                Message {
                    role: "system".to_string(),
                    content: "You are the Controller.".to_string(),
                },
                Message {
                    role: "user".to_string(),
                    content: question.to_string(),
                },
                Message {
                    role: "tool".to_string(),
                    content: tool_result.to_string(),
                },
            ],
            output_text: Some(answer),
            ..LlmCall::default()
        },
    );
    let source = Source {
        file: "test.jsonl".to_string(),
        line: 1,
    };
    Episode {
        prompt: PromptRef {
            name: Some("Controller".to_string()),
            version: Some("1".to_string()),
            text: Some("You are the Controller.".to_string()),
        },
        input: Some(question.to_string()),
        rewards: BTreeMap::from([("task_success".to_string(), reward)]),
        ..Episode::new(id, vec![step], source)
    }
}

/// Eight candidate prompts: exactly one ("Cite the tool result. Answer in
/// one sentence.") makes `task-model` answer well.
pub const RACE_PROMPTS: [&str; 8] = [
    "Be helpful.",
    "Be helpful. Cite the tool result.",
    "Be helpful. Answer in one sentence.",
    "Cite the tool result. Answer in one sentence.",
    "Be brief.",
    "Be kind. Cite the tool result.",
    "Think step by step.",
    "Be polite. Answer in one sentence.",
];

/// The APO dataset of [`episodes`]`(n)` for prompt "Controller", a tenth
/// held out for validation, and its first 16 training examples are what the
/// APO round bench evaluates.
pub fn controller_dataset(n: usize) -> whetstone::apo::Dataset {
    whetstone::apo::Dataset::build(
        &episodes(n),
        &whetstone::apo::DatasetSpec {
            prompt_name: "Controller",
            validation_fraction: 0.1,
            min_train: 16,
            min_validation: 1,
            pinned: None,
            reference_min_reward: 0.5,
            require_reference: true,
            max_examples: usize::MAX,
        },
    )
    .unwrap()
}

/// `n` good episodes about different cities.
pub fn episodes(n: usize) -> Vec<Episode> {
    const CITIES: [&str; 8] = [
        "Paris", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Perth", "Dakar",
    ];
    (0..n)
        .map(|idx| {
            let city = CITIES[idx % CITIES.len()];
            episode(
                &format!("trace-{idx:03}"),
                &format!("What is the weather in {city} right now? (#{idx})"),
                &format!("it is {} degrees and clear in {city}", 10 + idx),
                true,
            )
        })
        .collect()
}
