//! APO with weak models (issue 28): every role's request is bounded,
//! unusable replies are named and counted by role and model, and a role that
//! keeps sending them stops the run before it spends more.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{TestServer, episodes};
use rusqlite::Connection;
use whetstone::apo::{self, ApoConfig, ApoSummary, ReplyConfig, RoleReplies, ScorerConfig};
use whetstone::config::LlmConfig;
use whetstone::llm::{Backoff, LlmClient};
use whetstone::plugin::Plugins;

fn baseline_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts/controller.txt")
}

/// One generation of `children` children by the named operators.
fn config(operators: &[&str], children: usize) -> ApoConfig {
    let mut cfg = ApoConfig {
        baseline_prompt_file: Some(baseline_file()),
        generations: Some(1),
        children_per_generation: children,
        scorer: ScorerConfig::F1,
        ..ApoConfig::default()
    };
    for (name, weight) in cfg.operator_weights.iter_mut() {
        *weight = if operators.contains(&name.as_str()) {
            1.0
        } else {
            0.0
        };
    }
    cfg
}

async fn run(settings: LlmConfig, cfg: &ApoConfig) -> anyhow::Result<ApoSummary> {
    let llm = LlmClient::new(settings).unwrap().with_backoff(Backoff {
        base: Duration::from_millis(5),
        max: Duration::from_millis(20),
    });
    let conn = Connection::open_in_memory().unwrap();
    let out = tempfile::tempdir().unwrap();
    apo::run(
        &episodes(24),
        cfg,
        &llm,
        &Plugins::none(),
        &conn,
        out.path(),
        |_| {},
    )
    .await
}

fn role<'a>(summary: &'a ApoSummary, name: &str) -> &'a RoleReplies {
    summary
        .replies
        .roles
        .iter()
        .find(|role| role.role == name)
        .unwrap_or_else(|| panic!("no {name} replies in {:?}", summary.replies))
}

#[tokio::test]
async fn every_roles_request_carries_its_limit() {
    let server = TestServer::start().await;
    let mut cfg = config(&["critique_edit", "paraphrase"], 4);
    cfg.scorer = ScorerConfig::LlmJudge { rubric_file: None };
    cfg.max_response_tokens = 200;
    cfg.replies = ReplyConfig {
        critique_max_tokens: 300,
        judge_max_tokens: 100,
        rewrite_margin_tokens: 64,
        ..ReplyConfig::default()
    };
    let summary = run(server.settings(), &cfg).await.unwrap();

    let baseline_chars = std::fs::read_to_string(baseline_file())
        .unwrap()
        .trim_end()
        .chars()
        .count();
    let rewrite_limit = 2 * baseline_chars.div_ceil(3) as u64 + 64;
    let bodies = server.bodies();
    let (mut critiques, mut rewrites) = (0, 0);
    for body in &bodies {
        // A loopback server is not OpenAI: `auto` sends `max_tokens`.
        assert!(body.get("max_completion_tokens").is_none(), "{body}");
        let limit = body["max_tokens"].as_u64();
        let content = body["messages"][0]["content"].as_str().unwrap();
        let expected = match body["model"].as_str().unwrap() {
            "task-model" => 200,
            "judge-model" => 100,
            "rewriter-model" if content.contains("Write a critique") => {
                critiques += 1;
                300
            }
            "rewriter-model" => {
                rewrites += 1;
                rewrite_limit
            }
            other => panic!("unexpected model {other}"),
        };
        assert_eq!(limit, Some(expected), "{body}");
    }
    assert!(critiques >= 1 && rewrites >= 2, "{critiques} {rewrites}");
    assert_eq!(summary.replies.max_tokens_field, "max_tokens");
    for name in ["task", "rewriter", "judge"] {
        let replies = role(&summary, name);
        assert!(replies.replies > 0, "{replies:?}");
        assert_eq!(replies.unusable, 0, "{replies:?}");
    }
    assert_eq!(summary.replies.max_tokens["judge"], 100);
}

/// Regression test for issue 28: a judge that never writes `SCORE:` failed
/// the round as "apo.budget.max_llm_calls reached" after paying for every
/// baseline replay.
#[tokio::test]
async fn a_judge_without_scores_stops_the_run_and_is_named() {
    let server = TestServer::start().await;
    let mut cfg = config(&["paraphrase"], 1);
    cfg.scorer = ScorerConfig::LlmJudge { rubric_file: None };
    cfg.budget.max_llm_calls = 75;
    let settings = LlmConfig {
        judge_model: "vague-judge".to_string(),
        max_concurrency: 1,
        ..server.settings()
    };
    let err = format!("{:#}", run(settings, &cfg).await.unwrap_err());
    assert!(
        err.contains(
            "judge model `vague-judge` gave no readable `SCORE: <0-10>` in 5 replies in a row"
        ),
        "{err}"
    );
    assert!(
        err.contains("\"The answer looks reasonable to me overall.\""),
        "{err}"
    );
    assert!(!err.contains("max_llm_calls reached"), "{err}");
    // Five judge replies, and not one call after the fifth: the 17 task
    // replays were queued ahead of the first verdict, the 12 other verdicts
    // are never asked for.
    assert_eq!(server.requests_for("vague-judge"), 5);
    assert_eq!(server.requests(), 17 + 5);
}

#[tokio::test]
async fn an_echoing_rewriter_is_counted_in_the_summary_not_scored() {
    let server = TestServer::start().await;
    let cfg = config(&["critique_edit"], 4);
    let settings = LlmConfig {
        rewriter_model: "echo-model".to_string(),
        ..server.settings()
    };
    let summary = run(settings, &cfg).await.unwrap();
    let rewriter = role(&summary, "rewriter");
    assert_eq!(rewriter.model, "echo-model");
    // A critique that echoes is not paid an edit: one call per child.
    assert_eq!(server.requests_for("echo-model"), 4);
    assert_eq!((rewriter.replies, rewriter.unusable), (4, 4));
    assert_eq!(rewriter.unusable_by_kind["echo"], 4);
    let example = rewriter.example.as_deref().unwrap();
    assert!(
        example.starts_with("You are reviewing the system prompt")
            && example.chars().count() <= 161,
        "{rewriter:?}"
    );
    assert_eq!(summary.variants, 1, "no echo became a candidate");
    assert!(
        summary
            .warnings
            .iter()
            .any(|w| w.starts_with("rewriter model `echo-model`: 4 of 4 replies unusable (echo 4)")),
        "{:?}",
        summary.warnings
    );
    assert!(summary.decision.starts_with("kept the baseline"));
}

#[tokio::test]
async fn a_rewriter_that_keeps_failing_stops_the_run() {
    let server = TestServer::start().await;
    let mut cfg = config(&["critique_edit"], 4);
    cfg.generations = Some(5);
    cfg.replies.max_unusable_in_a_row = 3;
    let settings = LlmConfig {
        rewriter_model: "mute-model".to_string(),
        max_concurrency: 1,
        ..server.settings()
    };
    let err = format!("{:#}", run(settings, &cfg).await.unwrap_err());
    assert!(
        err.contains("rewriter model `mute-model` gave an empty reply in 3 replies in a row"),
        "{err}"
    );
    assert!(err.contains("llm.rewriter_model"), "{err}");
    assert_eq!(server.requests_for("mute-model"), 3);
}

/// Each kind of unusable rewrite, from a model that gives only that kind (a
/// paraphrase: one call, one reply).
#[tokio::test]
async fn unusable_rewrites_are_classified() {
    let server = TestServer::start().await;
    // llama-cpp-python reads only `max_tokens`: the loop is cut there.
    server.read_limit_from("max_tokens");
    for (model, kind) in [
        ("loop-model", "loop"),
        ("bare-model", "no_wrapper"),
        ("mute-model", "empty"),
    ] {
        let settings = LlmConfig {
            rewriter_model: model.to_string(),
            ..server.settings()
        };
        let summary = run(settings, &config(&["paraphrase"], 2)).await.unwrap();
        let rewriter = role(&summary, "rewriter");
        assert_eq!(
            (rewriter.unusable, rewriter.unusable_by_kind.get(kind)),
            (rewriter.replies, Some(&rewriter.replies)),
            "{model}: {rewriter:?}"
        );
        assert!(rewriter.replies >= 1, "{model}");
        if model == "loop-model" {
            assert_eq!(rewriter.cut_at_limit, rewriter.replies, "{rewriter:?}");
        }
    }
}
