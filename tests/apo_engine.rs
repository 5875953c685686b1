//! APO end to end against the local OpenAI-compatible test server.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;
use support::{Fault, TestServer, episodes};
use whetstone::apo::{
    self, ApoConfig, ApoSummary, Budget, Evaluator, ProgressEvent, Scorer, ScorerConfig,
};
use whetstone::llm::{Backoff, LlmClient};

fn prompts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts")
}

fn config() -> ApoConfig {
    ApoConfig {
        baseline_prompt_file: prompts_dir().join("controller.txt"),
        meta_prompt_dir: prompts_dir(),
        generations: 4,
        population_size: 6,
        patience: 0,
        scorer: ScorerConfig::F1,
        ..ApoConfig::default()
    }
}

fn client(server: &TestServer) -> LlmClient {
    LlmClient::new(server.settings())
        .unwrap()
        .with_backoff(Backoff {
            base: Duration::from_millis(5),
            max: Duration::from_millis(50),
        })
}

async fn run_apo(
    server: &TestServer,
    cfg: &ApoConfig,
    conn: &Connection,
    out: &Path,
) -> ApoSummary {
    let llm = client(server);
    apo::run(&episodes(24), cfg, &llm, conn, out, |_| {})
        .await
        .unwrap()
}

#[tokio::test]
async fn apo_raises_validation_score_above_baseline_and_writes_outputs() {
    let server = TestServer::start().await;
    let conn = Connection::open_in_memory().unwrap();
    let out = tempfile::tempdir().unwrap();
    let llm = client(&server);
    let events = std::cell::RefCell::new(Vec::new());
    let summary = apo::run(&episodes(24), &config(), &llm, &conn, out.path(), |event| {
        events.borrow_mut().push(event)
    })
    .await
    .unwrap();

    assert!(summary.baseline_reward < 0.6, "{summary:?}");
    assert!(
        summary.optimized_reward > summary.baseline_reward + 0.3,
        "baseline {} optimized {}",
        summary.baseline_reward,
        summary.optimized_reward
    );
    let best = std::fs::read_to_string(out.path().join("best_prompt.txt")).unwrap();
    let lower = best.to_lowercase();
    assert!(
        lower.contains(support::CITE) && lower.contains(support::ONE_SENTENCE),
        "{best}"
    );
    assert!(best.contains("{user_name}"));

    let variants: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("all_variants.json")).unwrap())
            .unwrap();
    let variants = variants.as_array().unwrap();
    assert_eq!(variants[0]["operator"], "baseline");
    let child = variants.iter().find(|v| v["generation"] == 1).unwrap();
    assert_eq!(child["parent_ids"][0], "v0");
    assert!(child["scores"].as_object().is_some());

    let written: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.path().join("optimization_summary.json")).unwrap(),
    )
    .unwrap();
    for key in [
        "baseline_reward",
        "optimized_reward",
        "improvement_pct",
        "generations",
        "population_size",
        "llm_calls",
        "tokens_in",
        "tokens_out",
        "cache_hits",
        "wall_time_secs",
        "operators",
    ] {
        assert!(written.get(key).is_some(), "summary lacks {key}");
    }
    assert!(summary.improvement_pct > 50.0);
    assert_eq!(written["operators"].as_array().unwrap().len(), 8);
    let svg = std::fs::read_to_string(out.path().join("progress.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("polyline"),
        "{svg:.200}"
    );

    let events = events.into_inner();
    assert!(matches!(events[0], ProgressEvent::DatasetReady { .. }));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ProgressEvent::GenerationFinished { .. }))
    );

    // Every call is in the ledger.
    let ledger: i64 = conn
        .query_row("SELECT COUNT(*) FROM llm_call_ledger", [], |row| row.get(0))
        .unwrap();
    assert_eq!(ledger as u64, server.requests());
}

#[tokio::test]
async fn second_run_is_served_from_cache_and_same_seed_gives_same_result() {
    let server = TestServer::start().await;
    let conn = Connection::open_in_memory().unwrap();
    let out = tempfile::tempdir().unwrap();
    let first = run_apo(&server, &config(), &conn, out.path()).await;
    assert!(first.task_calls > 0);
    assert!(first.rewriter_calls > 0);
    let requests = server.requests();

    // Evaluations and rewrites both come from the store: no new call at all.
    let second = run_apo(&server, &config(), &conn, out.path()).await;
    assert_eq!(second.task_calls, 0, "{second:?}");
    assert_eq!(second.llm_calls, 0, "{second:?}");
    assert_eq!(server.requests(), requests);
    assert!(second.cache_hits > 0);
    assert_eq!(second.best_prompt, first.best_prompt);

    // A fresh store and the same seed: the same search, step for step.
    let fresh = Connection::open_in_memory().unwrap();
    let third = run_apo(&server, &config(), &fresh, out.path()).await;
    let texts = |s: &ApoSummary| -> Vec<(String, String, Option<f64>)> {
        s.all_variants
            .iter()
            .map(|v| (v.id.clone(), v.text.clone(), v.mean))
            .collect()
    };
    assert_eq!(texts(&third), texts(&first));
    assert_eq!(third.optimized_reward, first.optimized_reward);
}

#[tokio::test]
async fn racing_picks_the_same_winner_with_fewer_task_calls() {
    let server = TestServer::start().await;
    let llm = client(&server);
    let data = support::controller_dataset(32);
    let train: Vec<&apo::Example> = data.train.iter().take(16).collect();
    let prompts = support::RACE_PROMPTS;
    let winner = |outcome: &apo::RaceOutcome| {
        (0..prompts.len())
            .filter(|idx| outcome.complete[*idx])
            .max_by(|a, b| {
                apo::mean(&outcome.scores[*a])
                    .partial_cmp(&apo::mean(&outcome.scores[*b]))
                    .unwrap()
            })
            .unwrap()
    };

    let full_conn = Connection::open_in_memory().unwrap();
    full_conn.execute_batch(apo::cache::SCHEMA).unwrap();
    let budget = Budget::new(10_000, u64::MAX, 8);
    let full_eval = Evaluator::new(&llm, &budget, &full_conn, Scorer::F1, 256);
    let full = apo::evaluate_all(&full_eval, &prompts, &train).await;

    let race_conn = Connection::open_in_memory().unwrap();
    race_conn.execute_batch(apo::cache::SCHEMA).unwrap();
    let race_eval = Evaluator::new(&llm, &budget, &race_conn, Scorer::F1, 256);
    let raced = apo::race(&race_eval, &prompts, &train, 2, 2).await;

    assert_eq!(winner(&full), 3);
    assert_eq!(winner(&raced), winner(&full));
    let (full_calls, race_calls) = (full_eval.stats().task_calls, race_eval.stats().task_calls);
    assert_eq!(full_calls, 8 * 16);
    // 8×2, then 4 more ×2, 2 more ×4, 1 more ×8 = 16 + 8 + 8 + 8.
    assert_eq!(race_calls, 40);
    assert!((race_calls as f64) / (full_calls as f64) < 0.35);
}

#[tokio::test]
async fn faults_are_retried_or_counted_and_the_run_completes() {
    let server = TestServer::start().await;
    let mut settings = server.settings();
    settings.timeout_secs = 1;
    settings.max_retries = 2;
    let llm = LlmClient::new(settings).unwrap().with_backoff(Backoff {
        base: Duration::from_millis(5),
        max: Duration::from_millis(50),
    });
    server.fault_on(
        1,
        Fault::RateLimit {
            retry_after_secs: 0,
        },
    );
    server.fault_on(2, Fault::ServerError);
    server.fault_on(4, Fault::Hang(Duration::from_secs(3)));
    server.fault_on(6, Fault::Malformed);
    // Three failures in a row for one request: it fails for good.
    for number in 30..=60 {
        server.fault_on(number, Fault::ServerError);
    }
    let conn = Connection::open_in_memory().unwrap();
    let out = tempfile::tempdir().unwrap();
    let summary = apo::run(&episodes(24), &config(), &llm, &conn, out.path(), |_| {})
        .await
        .unwrap();
    assert!(summary.failed_attempts >= 34, "{summary:?}");
    assert!(summary.failed_calls >= 1, "{summary:?}");
    assert!(summary.optimized_reward >= summary.baseline_reward);
    let outcomes: Vec<String> = conn
        .prepare("SELECT DISTINCT outcome FROM llm_call_ledger ORDER BY outcome")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for outcome in ["malformed", "ok", "rate_limited", "server_error", "timeout"] {
        assert!(outcomes.iter().any(|o| o == outcome), "{outcomes:?}");
    }
}

#[tokio::test]
async fn budget_caps_hold() {
    let server = TestServer::start().await;
    let conn = Connection::open_in_memory().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.budget.max_llm_calls = 40;
    let summary = run_apo(&server, &cfg, &conn, out.path()).await;
    assert!(summary.llm_calls <= 40, "{summary:?}");
    assert_eq!(server.requests(), summary.llm_calls);
    assert!(
        summary.stop_reason.contains("max_llm_calls"),
        "{}",
        summary.stop_reason
    );

    let server = TestServer::start().await;
    let conn = Connection::open_in_memory().unwrap();
    let mut cfg = config();
    cfg.budget.max_tokens = 8_000;
    let summary = run_apo(&server, &cfg, &conn, out.path()).await;
    // Calls in flight when the cap is reached may finish: at most
    // max_concurrency (8) calls of ~300 tokens each past it.
    assert!(
        summary.tokens_in + summary.tokens_out <= 8_000 + 8 * 400,
        "{summary:?}"
    );
    assert!(
        summary.stop_reason.contains("max_tokens"),
        "{}",
        summary.stop_reason
    );
}

#[tokio::test]
async fn guardrail_violators_are_rejected_without_spending_calls() {
    let server = TestServer::start().await;
    let conn = Connection::open_in_memory().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config();
    // The test rewriter's paraphrases drop the `{user_name}` placeholder.
    for (name, weight) in cfg.operator_weights.iter_mut() {
        *weight = if name == "paraphrase" || name == "add_emphasis" {
            1.0
        } else {
            0.0
        };
    }
    cfg.generations = 2;
    let summary = run_apo(&server, &cfg, &conn, out.path()).await;
    let rejected: Vec<_> = summary
        .all_variants
        .iter()
        .filter(|v| v.status == apo::VariantStatus::RejectedByGuardrail)
        .collect();
    assert!(!rejected.is_empty(), "{summary:?}");
    assert_eq!(summary.rejected_by_guardrail, rejected.len());
    let evaluated = server.task_prompts();
    for variant in &rejected {
        assert!(variant.violations.iter().any(|v| v.contains("{user_name}")));
        assert!(variant.scores.is_empty());
        assert!(
            !evaluated.contains(&variant.text),
            "rejected variant was evaluated"
        );
    }
    let written = std::fs::read_to_string(out.path().join("all_variants.json")).unwrap();
    assert!(written.contains("\"rejected_by_guardrail\""));
}

#[tokio::test]
async fn llm_judge_scorer_also_finds_the_better_prompt() {
    let server = TestServer::start().await;
    let conn = Connection::open_in_memory().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.scorer = ScorerConfig::LlmJudge {
        rubric_file: prompts_dir().join("apo_judge.txt"),
    };
    cfg.generations = 3;
    let summary = run_apo(&server, &cfg, &conn, out.path()).await;
    assert!(summary.judge_calls > 0);
    assert!(
        summary.optimized_reward > summary.baseline_reward + 0.2,
        "{summary:?}"
    );
}

#[tokio::test]
async fn too_little_data_is_a_clear_error() {
    let server = TestServer::start().await;
    let conn = Connection::open_in_memory().unwrap();
    let out = tempfile::tempdir().unwrap();
    let llm = client(&server);
    let err = apo::run(&episodes(2), &config(), &llm, &conn, out.path(), |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("too little data for prompt `Controller`"),
        "{err}"
    );
    assert!(err.contains("apo.min_train_examples"), "{err}");
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn stops_early_on_target_score_and_on_patience() {
    let server = TestServer::start().await;
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.generations = 20;
    cfg.target_score = Some(0.99);
    let conn = Connection::open_in_memory().unwrap();
    let summary = run_apo(&server, &cfg, &conn, out.path()).await;
    assert!(
        summary.stop_reason.contains("apo.target_score"),
        "{}",
        summary.stop_reason
    );
    assert!(summary.generations < 20);

    let mut cfg = config();
    cfg.generations = 20;
    cfg.patience = 2;
    let conn = Connection::open_in_memory().unwrap();
    let summary = run_apo(&server, &cfg, &conn, out.path()).await;
    assert!(
        summary.stop_reason.contains("apo.patience"),
        "{}",
        summary.stop_reason
    );
    let history = &summary.history;
    let last = history.len();
    assert!(last < 20);
    // The last `patience` generations did not beat the best before them.
    assert_eq!(history[last - 1].best, history[last - 3].best);
}

#[tokio::test]
async fn pareto_selection_also_improves() {
    let server = TestServer::start().await;
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.pareto = true;
    let conn = Connection::open_in_memory().unwrap();
    let summary = run_apo(&server, &cfg, &conn, out.path()).await;
    assert!(
        summary.optimized_reward > summary.baseline_reward + 0.3,
        "{summary:?}"
    );
}
