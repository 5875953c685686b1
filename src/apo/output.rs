//! What a run reports, and the files it leaves behind: `best_prompt.txt`,
//! `all_variants.json`, `optimization_summary.json` and `progress.svg`.
//!
//! The serializable types of a run ([`ApoSummary`], [`Variant`], ...) live
//! here, at the boundary, and the engine fills them in; nothing here knows
//! the engine.
//!
//! Each file is written to a temporary name and renamed, so a reader (or a
//! crash mid-write) never sees half a file.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;

use super::replies::ReplyReport;

/// What a run reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum ProgressEvent {
    /// The dataset is built.
    DatasetReady { train: usize, validation: usize },
    /// A generation is about to make `candidates` children.
    GenerationStarted { generation: u32, candidates: usize },
    /// A generation is done.
    GenerationFinished {
        generation: u32,
        best: f64,
        mean: f64,
        llm_calls: u64,
    },
    /// The search stopped, and why.
    Stopped { reason: String },
    /// The finalists and the baseline are being scored on validation.
    ValidationStarted { candidates: usize },
}

/// Where a variant ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VariantStatus {
    /// Scored on every training example.
    Evaluated,
    /// Did not beat its parent(s) on its minibatch; not scored further.
    RejectedByMinibatch,
    /// Some training examples could not be scored (failed calls); never
    /// selected.
    PartiallyScored,
    /// Broke a guardrail; never evaluated.
    RejectedByGuardrail,
    /// Every evaluation of it failed.
    Unscored,
}

/// One prompt variant and everything known about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Variant {
    pub id: String,
    pub parent_ids: Vec<String>,
    /// `baseline` or the operator that made it.
    pub operator: String,
    pub generation: u32,
    pub text: String,
    pub status: VariantStatus,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<String>,
    /// Prohibitions of the baseline the rewrite dropped and the engine put back.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restored: Vec<String>,
    /// The examples its acceptance test was run on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub minibatch: Vec<String>,
    /// Training score per example id.
    pub scores: BTreeMap<String, f64>,
    /// Mean training score over the examples it was scored on.
    pub mean: Option<f64>,
    /// Validation score per example id (finalists and baseline only).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub validation_scores: BTreeMap<String, f64>,
    pub validation_mean: Option<f64>,
    #[serde(skip)]
    responses: BTreeMap<String, String>,
    #[serde(skip)]
    feedback: BTreeMap<String, String>,
}

impl Variant {
    /// Variant number `id` (`v{id}`), unscored.
    pub(in crate::apo) fn new(id: usize, text: String, operator: &str, generation: u32) -> Variant {
        Variant {
            id: format!("v{id}"),
            parent_ids: Vec::new(),
            operator: operator.to_string(),
            generation,
            text,
            status: VariantStatus::Unscored,
            violations: Vec::new(),
            restored: Vec::new(),
            minibatch: Vec::new(),
            scores: BTreeMap::new(),
            mean: None,
            validation_scores: BTreeMap::new(),
            validation_mean: None,
            responses: BTreeMap::new(),
            feedback: BTreeMap::new(),
        }
    }

    /// Records a training score on `example_id` with the response and the
    /// scorer's feedback, and refreshes the mean.
    pub(in crate::apo) fn add_score(
        &mut self,
        example_id: String,
        score: f64,
        response: String,
        feedback: Option<String>,
    ) {
        self.responses.insert(example_id.clone(), response);
        if let Some(feedback) = feedback {
            self.feedback.insert(example_id.clone(), feedback);
        }
        self.scores.insert(example_id, score);
        self.mean = Some(self.scores.values().sum::<f64>() / self.scores.len() as f64);
    }

    /// Its response on the training example `id`, once scored there.
    pub fn response(&self, id: &str) -> Option<&str> {
        self.responses.get(id).map(String::as_str)
    }

    /// The feedback on its response to `id`, when the scorer gave some.
    pub fn feedback_on(&self, id: &str) -> Option<&str> {
        self.feedback.get(id).map(String::as_str)
    }

    /// Sum of its scores on `examples` it was scored on.
    pub(in crate::apo) fn sum_on(&self, examples: &[String]) -> f64 {
        examples.iter().filter_map(|id| self.scores.get(id)).sum()
    }
}

/// Statistics of one operator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperatorReport {
    pub name: String,
    pub uses: u64,
    pub improvements: u64,
    /// Calls charged to it: its rewrites and its children's evaluations.
    pub calls: u64,
    pub gain_per_call: f64,
    pub failures: u64,
}

/// Best and mean training score of the candidates kept after one generation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationReport {
    pub generation: u32,
    pub best: f64,
    pub mean: f64,
    /// Calls spent so far.
    pub llm_calls: u64,
}

/// The outcome of a run (also `optimization_summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApoSummary {
    pub run_id: String,
    pub target_prompt: String,
    /// Where the baseline text came from (traces and version, or a file).
    pub baseline_source: String,
    pub best_variant_id: String,
    /// Mean validation score of the baseline; `None` when not measured.
    pub baseline_reward: Option<f64>,
    /// Mean validation score of the returned prompt; `None` when not measured.
    pub optimized_reward: Option<f64>,
    pub improvement_pct: Option<f64>,
    /// `measured on N examples`, or `not measured: <why>`.
    pub validation: String,
    /// Why the returned prompt was chosen.
    pub decision: String,
    /// How the examples were split.
    pub split: String,
    /// How each replay was scored: the scorer, and the reward plugins' share.
    pub scorer: String,
    pub generations: u32,
    /// Candidates scored on every training example (the baseline included).
    pub population_size: usize,
    pub train_examples: usize,
    pub validation_examples: usize,
    pub variants: usize,
    pub rejected_by_guardrail: usize,
    pub rejected_by_minibatch: usize,
    /// Children dropped before evaluation as copies of an earlier variant.
    pub duplicates: u64,
    /// HTTP attempts, all roles (what `apo.budget.max_llm_calls` caps).
    pub llm_calls: u64,
    pub task_calls: u64,
    pub judge_calls: u64,
    pub rewriter_calls: u64,
    /// Calls kept back for validation while searching.
    pub reserved_calls: u64,
    pub failed_attempts: u64,
    pub failed_calls: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// What the models sent back: output limits, replies cut at them and
    /// unusable replies, by role and model.
    pub replies: ReplyReport,
    pub cache_hits: u64,
    pub wall_time_secs: f64,
    pub stop_reason: String,
    pub warnings: Vec<String>,
    pub history: Vec<GenerationReport>,
    pub operators: Vec<OperatorReport>,
    #[serde(skip)]
    pub best_prompt: String,
    #[serde(skip)]
    pub all_variants: Vec<Variant>,
}

/// Writes all outputs of `summary` into `dir`, creating it if needed.
pub fn write_all(dir: &Path, summary: &ApoSummary) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(dir, "best_prompt.txt", format!("{}\n", summary.best_prompt))?;
    write_atomic(
        dir,
        "all_variants.json",
        serde_json::to_string_pretty(&summary.all_variants)?,
    )?;
    write_atomic(
        dir,
        "optimization_summary.json",
        serde_json::to_string_pretty(summary)?,
    )?;
    write_atomic(dir, "progress.svg", progress_svg(summary)?)?;
    Ok(())
}

fn write_atomic(dir: &Path, name: &str, contents: String) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Best and mean training score per generation, generation 0 being the baseline.
fn progress_svg(summary: &ApoSummary) -> anyhow::Result<String> {
    let baseline_train = summary
        .all_variants
        .first()
        .and_then(|variant| variant.mean)
        .unwrap_or(0.0);
    let mut best = vec![(0u32, baseline_train)];
    let mut mean = vec![(0u32, baseline_train)];
    for generation in &summary.history {
        best.push((generation.generation, generation.best));
        mean.push((generation.generation, generation.mean));
    }
    let last_generation = best
        .last()
        .map(|(generation, _)| *generation)
        .unwrap_or(0)
        .max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("APO progress: {}", summary.target_prompt),
                ("sans-serif", 22),
            )
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0u32..last_generation, 0f64..1.05f64)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("generation")
            .y_desc("training score")
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(LineSeries::new(best, BLUE.stroke_width(2)))
            .map_err(plot_error)?
            .label("best")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(mean, RED.stroke_width(2)))
            .map_err(plot_error)?
            .label("mean")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

fn plot_error<E: std::fmt::Display>(err: E) -> anyhow::Error {
    anyhow::anyhow!("drawing progress.svg: {err}")
}
