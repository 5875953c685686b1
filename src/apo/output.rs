//! The files a run leaves behind: `best_prompt.txt`, `all_variants.json`,
//! `optimization_summary.json` and `progress.svg`.
//!
//! Each file is written to a temporary name and renamed, so a reader (or a
//! crash mid-write) never sees half a file.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::engine::ApoSummary;

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
