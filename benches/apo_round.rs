//! Wall time of one APO evaluation round against the local test server.
//!
//! Every request to the server takes a fixed added latency L and the client
//! runs at most C requests at once, so a round of N calls cannot finish
//! faster than N × L / C. The claim measured here: the round takes at most
//! 1.2 × that bound, i.e. the evaluator keeps all C slots busy and adds
//! little overhead of its own. Each repetition uses a fresh cache, so every
//! pair is really replayed.
//!
//! Run with `cargo bench --bench apo_round`; results go to stdout as CSV.

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use rusqlite::Connection;
use support::TestServer;
use whetstone::apo::{self, Budget, Evaluator, Scorer};
use whetstone::llm::LlmClient;

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let server = TestServer::start().await;
    let data = support::controller_dataset(40);
    let train: Vec<&apo::Example> = data.train.iter().take(16).collect();
    println!(
        "scorer,latency_ms,concurrency,calls,bound_ms,wall_ms_min,wall_ms_median,ratio_median"
    );
    for (latency_ms, concurrency) in [(50u64, 4usize), (50, 8), (50, 16), (20, 32)] {
        server.set_latency(Duration::from_millis(latency_ms));
        for judged in [false, true] {
            let mut walls = Vec::new();
            let mut calls = 0;
            for _ in 0..5 {
                let mut settings = server.settings();
                settings.max_concurrency = concurrency;
                let llm = LlmClient::new(settings).unwrap();
                let conn = Connection::open_in_memory().unwrap();
                apo::cache::create_tables(&conn).unwrap();
                let budget = Budget::new(u64::MAX, u64::MAX, concurrency);
                let scorer = if judged {
                    Scorer::LlmJudge {
                        rubric: std::fs::read_to_string(concat!(
                            env!("CARGO_MANIFEST_DIR"),
                            "/prompts/apo_judge.txt"
                        ))
                        .unwrap(),
                    }
                } else {
                    Scorer::F1
                };
                let evaluator = Evaluator::new(&llm, &budget, &conn, scorer, 256);
                let started = Instant::now();
                let outcome = apo::evaluate_all(&evaluator, &support::RACE_PROMPTS, &train).await;
                walls.push(started.elapsed());
                assert!(outcome.iter().all(|s| s.len() == train.len()));
                let stats = evaluator.stats();
                calls = stats.task_calls + stats.judge_calls;
            }
            walls.sort();
            // A judged pair is two calls in sequence on its slot.
            let bound = Duration::from_millis(latency_ms) * calls as u32 / concurrency as u32;
            let median = walls[walls.len() / 2];
            println!(
                "{},{latency_ms},{concurrency},{calls},{},{},{},{:.3}",
                if judged { "llm_judge" } else { "f1" },
                bound.as_millis(),
                walls[0].as_millis(),
                median.as_millis(),
                median.as_secs_f64() / bound.as_secs_f64()
            );
        }
    }
}
