//! The run report: `summary.json`, `report.md` and its plots (SVG).

use std::path::Path;

use anyhow::{Context, Result};
use coconut_eval::{
    thoughts_report, EvalMetrics, Prediction, SampleThoughts, ThoughtDiagnostics, ThoughtStats,
};
use coconut_trainer::{EpochEval, MetricLine, RunConfig};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::run::write_file;

/// The figures of one stage: its last epoch's validation evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRow {
    /// Curriculum stage.
    pub stage: usize,
    /// The last epoch of the stage.
    pub epoch: usize,
    /// Validation accuracy at the end of the stage.
    pub accuracy: Option<f64>,
    /// Mean generated tokens (thoughts included) at the end of the stage.
    pub mean_tokens: Option<f64>,
    /// Teacher-forced validation loss at the end of the stage.
    pub valid_loss: f64,
    /// The thoughts' diagnostics on the validation questions at the end of the stage (none
    /// at stage 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thoughts: Option<ThoughtDiagnostics>,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Run name.
    pub name: String,
    /// Per-stage validation figures.
    pub per_stage: Vec<StageRow>,
    /// Split of the final evaluation.
    pub final_split: String,
    /// Final evaluation figures.
    pub final_metrics: EvalMetrics,
    /// Final accuracy (the same as `final_metrics.accuracy`, for scripts).
    pub final_accuracy: f64,
    /// The final model's thought diagnostics on the final split (none without thoughts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_thoughts: Option<ThoughtDiagnostics>,
    /// Seconds of training and evaluation over all sessions of the run.
    pub wall_seconds: f64,
}

/// The figures of an epoch's evaluation as `metrics.jsonl` records them: the accuracy, every
/// figure of `metrics` as the extra (read back by `evaluated_metrics`), and the thoughts'
/// diagnostics under `thoughts` where there are thoughts.
pub fn epoch_eval(metrics: &EvalMetrics, thoughts: Option<&ThoughtDiagnostics>) -> EpochEval {
    let serde_json::Value::Object(mut extra) =
        serde_json::to_value(metrics).expect("metrics serialise")
    else {
        unreachable!("a struct serialises to an object")
    };
    if let Some(thoughts) = thoughts {
        let value = serde_json::to_value(thoughts).expect("diagnostics serialise");
        extra.insert(THOUGHTS_KEY.to_string(), value);
    }
    EpochEval { accuracy: Some(metrics.accuracy), extra }
}

/// Where [`epoch_eval`] puts the thoughts' diagnostics.
const THOUGHTS_KEY: &str = "thoughts";

/// The figures [`epoch_eval`] recorded; `None` for an epoch that was not evaluated.
fn evaluated_metrics(eval: &EpochEval) -> Option<EvalMetrics> {
    serde_json::from_value(serde_json::Value::Object(eval.extra.clone())).ok()
}

/// The thoughts' diagnostics [`epoch_eval`] recorded, if any.
fn evaluated_thoughts(eval: &EpochEval) -> Option<ThoughtDiagnostics> {
    serde_json::from_value(eval.extra.get(THOUGHTS_KEY)?.clone()).ok()
}

/// A `step` line of `metrics.jsonl`, as the loss plot reads it.
struct StepPoint {
    global_step: u64,
    loss: f64,
    stage: usize,
}

/// An `epoch` line of `metrics.jsonl`, as the report reads it.
struct EpochPoint {
    epoch: usize,
    stage: usize,
    valid_loss: f64,
    accuracy: Option<f64>,
    /// Mean generated tokens (thoughts included), when the epoch was evaluated.
    mean_tokens: Option<f64>,
    /// The thoughts' diagnostics, when the epoch was evaluated and has thoughts.
    thoughts: Option<ThoughtDiagnostics>,
    seconds: f64,
}

/// What `metrics.jsonl` holds, in order, each step and epoch once.
struct Curves {
    steps: Vec<StepPoint>,
    epochs: Vec<EpochPoint>,
}

fn read_curves(path: &Path) -> Result<Curves> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut curves = Curves { steps: Vec::new(), epochs: Vec::new() };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // A line cut short by a killed process is skipped, not fatal.
        let Ok(line) = serde_json::from_str::<MetricLine>(line) else {
            tracing::warn!("{}: skipping an unreadable line", path.display());
            continue;
        };
        match line {
            MetricLine::Step { global_step, loss, stage, .. } => {
                curves.steps.push(StepPoint { global_step, loss, stage })
            }
            MetricLine::Epoch { epoch, stage, valid_loss, eval, seconds, .. } => {
                // A resumed run repeats epochs it had not finished: keep the newest line.
                curves.epochs.retain(|e| e.epoch != epoch);
                curves.epochs.push(EpochPoint {
                    epoch,
                    stage,
                    valid_loss,
                    accuracy: eval.accuracy,
                    mean_tokens: evaluated_metrics(&eval).map(|m| m.mean_tokens),
                    thoughts: evaluated_thoughts(&eval),
                    seconds,
                });
            }
        }
    }
    curves.steps.sort_by_key(|s| s.global_step);
    curves.steps.dedup_by_key(|s| s.global_step);
    curves.epochs.sort_by_key(|e| e.epoch);
    Ok(curves)
}

/// The final evaluation's outcome, as the report shows it.
pub struct FinalEvaluation<'a> {
    /// The split evaluated (`test`, or `valid` without one).
    pub split: &'a str,
    /// Its figures.
    pub metrics: &'a EvalMetrics,
    /// Every answer.
    pub predictions: &'a [Prediction],
    /// The thoughts of the first questions.
    pub thoughts: &'a [SampleThoughts],
    /// The thoughts' diagnostics over the split, where there are thoughts.
    pub diagnostics: Option<&'a ThoughtDiagnostics>,
}

/// Writes `summary.json`, `report.md`, `loss.svg`, `accuracy.svg` and, with thoughts,
/// `thoughts.svg` into the run folder.
pub fn write_report(run_dir: &Path, config: &RunConfig, last: &FinalEvaluation) -> Result<()> {
    let FinalEvaluation { split, metrics, predictions, thoughts, diagnostics } = *last;
    let curves = read_curves(&run_dir.join("metrics.jsonl"))?;
    let wall_seconds = curves.epochs.iter().map(|e| e.seconds).sum::<f64>() + metrics.seconds;
    let summary = Summary {
        name: config.name.clone(),
        per_stage: per_stage(&curves),
        final_split: split.to_string(),
        final_metrics: metrics.clone(),
        final_accuracy: metrics.accuracy,
        final_thoughts: diagnostics.cloned(),
        wall_seconds,
    };
    write_file(&run_dir.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    plot_loss(&run_dir.join("loss.svg"), &curves)?;
    plot_accuracy(&run_dir.join("accuracy.svg"), &curves)?;
    let diagnosed = curves.epochs.iter().any(|e| e.thoughts.is_some());
    if diagnosed {
        plot_thoughts(&run_dir.join("thoughts.svg"), &curves)?;
    }
    let mut md = report_markdown(config, &summary, predictions, thoughts);
    md.push_str(&diagnostics_markdown(&summary, diagnosed));
    write_file(&run_dir.join("report.md"), md)?;
    Ok(())
}

/// Each stage's figures: those of its last epoch.
fn per_stage(curves: &Curves) -> Vec<StageRow> {
    let mut per_stage: Vec<StageRow> = Vec::new();
    for e in &curves.epochs {
        let row = StageRow {
            stage: e.stage,
            epoch: e.epoch,
            accuracy: e.accuracy,
            mean_tokens: e.mean_tokens,
            valid_loss: e.valid_loss,
            thoughts: e.thoughts.clone(),
        };
        match per_stage.last_mut() {
            Some(last) if last.stage == e.stage => *last = row,
            _ => per_stage.push(row),
        }
    }
    per_stage
}

/// `report.md`: the settings, the figures per stage and at the end, sample outputs and the
/// thoughts of the first samples.
fn report_markdown(
    config: &RunConfig,
    summary: &Summary,
    predictions: &[Prediction],
    thoughts: &[SampleThoughts],
) -> String {
    let (split, metrics) = (&summary.final_split, &summary.final_metrics);
    let (per_stage, wall_seconds) = (&summary.per_stage, summary.wall_seconds);
    let mut md = format!(
        "# Run `{}`\n\nMode `{:?}`, c = {}, {} epochs ({} per stage, max latent stage {}), batch {} x {} accumulation, lr {}, {} thread(s).\n\n",
        config.name,
        config.curriculum.mode,
        config.curriculum.c_thought,
        config.train.num_epochs,
        config.curriculum.epochs_per_stage,
        config.curriculum.max_latent_stage,
        config.train.batch_size,
        config.train.grad_accum,
        config.train.lr,
        if config.train.threads == 0 { "default".to_string() } else { config.train.threads.to_string() },
    );
    md.push_str("## Validation after each stage\n\n| stage | last epoch | accuracy % | # tokens (with thoughts) | valid loss |\n|---|---|---|---|---|\n");
    for r in per_stage {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.4} |\n",
            r.stage,
            r.epoch,
            r.accuracy.map_or("-".into(), |a| format!("{:.1}", 100.0 * a)),
            r.mean_tokens.map_or("-".into(), |t| format!("{t:.1}")),
            r.valid_loss
        ));
    }
    md.push_str(&format!(
        "\n## Final ({split} split, stage {})\n\nAccuracy **{:.1}%** on {} samples; {:.1} tokens per answer with thoughts, {:.1} without; CoT exact match {:.1}%. Total time {:.0} s.\n\n",
        metrics.stage,
        100.0 * metrics.accuracy,
        metrics.samples,
        metrics.mean_tokens,
        metrics.mean_tokens_without_thoughts,
        100.0 * metrics.cot_exact_match,
        wall_seconds
    ));
    md.push_str("![training loss](loss.svg)\n\n![validation accuracy and tokens](accuracy.svg)\n\n## Sample outputs\n\n");
    for p in predictions.iter().take(5) {
        md.push_str(&format!(
            "- sample {} ({}): `{}` → answer `{}`, reference `{}`\n",
            p.index,
            if p.correct { "correct" } else { "wrong" },
            p.generated.replace('\n', "\\n"),
            p.prediction,
            p.answer
        ));
    }
    md.push('\n');
    md.push_str(&thoughts_report(thoughts).replacen(
        "# Continuous thoughts",
        "## Continuous thoughts",
        1,
    ));
    md
}

/// Appends the latent-search section (`coconut analyze` on the final checkpoint) to
/// `report.md`.
pub fn append_latent_search(run_dir: &Path, table: &str) -> Result<()> {
    let path = run_dir.join("report.md");
    let mut md = std::fs::read_to_string(&path)?;
    md.push_str(&format!(
        "\n## Latent search (the paper's section 5)\n\nThe model's probability of each node of the \
         question's graph after k thoughts (`coconut analyze`; definitions in \
         `coconut_eval::latent_search`): the frontier is the set of nodes the reasoning can have \
         reached, the path leads to the answer.\n\n{table}\n\
         ![node values](analysis/latent_values.svg)\n\n![value against height](analysis/value_by_height.svg)\n"
    ));
    write_file(&path, md)?;
    Ok(())
}

fn plot_loss(path: &Path, curves: &Curves) -> Result<()> {
    let root = SVGBackend::new(path, (800, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_step = curves.steps.last().map_or(1.0, |s| s.global_step as f64).max(1.0);
    let max_loss =
        curves.steps.iter().map(|s| s.loss).filter(|l| l.is_finite()).fold(0.1, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("training loss (dashes: stage boundaries)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_step, 0.0..max_loss * 1.05)?;
    chart.configure_mesh().x_desc("optimizer step").y_desc("loss per token").draw()?;
    chart.draw_series(LineSeries::new(
        curves.steps.iter().map(|s| (s.global_step as f64, s.loss)),
        BLUE.stroke_width(2),
    ))?;
    for pair in curves.steps.windows(2) {
        if pair[0].stage != pair[1].stage {
            let x = pair[1].global_step as f64;
            chart.draw_series(DashedLineSeries::new(
                [(x, 0.0), (x, max_loss * 1.05)],
                4,
                4,
                BLACK.mix(0.5).into(),
            ))?;
        }
    }
    root.present()?;
    Ok(())
}

/// The thoughts' diagnostics section of `report.md`: each thought at the end of each stage
/// and for the final model, and the plot of every evaluated epoch.
fn diagnostics_markdown(summary: &Summary, plotted: bool) -> String {
    let mut rows: Vec<(String, &ThoughtDiagnostics)> = summary
        .per_stage
        .iter()
        .filter_map(|r| {
            Some((format!("stage {} (epoch {})", r.stage, r.epoch), r.thoughts.as_ref()?))
        })
        .collect();
    if let Some(d) = &summary.final_thoughts {
        rows.push((format!("final ({})", summary.final_split), d));
    }
    if rows.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n## Thought diagnostics\n\nFor each thought over the validation questions (the final \
         row: the final split): its norm against the mean norm of the questions' token \
         embeddings, the mean cosine similarity of that thought between two questions (near 1: \
         every question's thought alike, a collapse), the mean cosine similarity with the next \
         thought of the same question, and the entropy (nats) of the LM head's distribution \
         read from it.\n\n| when | thought | norm / embedding norm (mean, max) | cosine across questions | cosine to the next | entropy |\n|---|---|---|---|---|---|\n",
    );
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    for (when, d) in rows {
        for t in &d.thoughts {
            md.push_str(&format!(
                "| {when} | {} | {:.2}, {:.2} | {} | {} | {:.2} |\n",
                t.index,
                t.norm_mean / d.embedding_norm,
                t.norm_max / d.embedding_norm,
                cell(t.cosine_across_questions),
                cell(t.cosine_to_next),
                t.entropy
            ));
        }
    }
    if plotted {
        md.push_str("\n![thought diagnostics by epoch](thoughts.svg)\n");
    }
    md
}

/// `thoughts.svg`: the diagnostics of each thought index over the evaluated epochs, one
/// panel per figure.
fn plot_thoughts(path: &Path, curves: &Curves) -> Result<()> {
    let root = SVGBackend::new(path, (1200, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let last_epoch = curves.epochs.last().map_or(1, |e| e.epoch).max(1) as f64;
    let most = curves
        .epochs
        .iter()
        .filter_map(|e| e.thoughts.as_ref())
        .map(|d| d.thoughts.len())
        .max()
        .unwrap_or(0);
    type Figure = fn(&ThoughtDiagnostics, &ThoughtStats) -> Option<f64>;
    let figures: [(&str, Figure); 3] = [
        ("thought norm / embedding norm", |d, t| Some(t.norm_mean / d.embedding_norm)),
        ("cosine across questions", |_, t| t.cosine_across_questions),
        ("LM-head entropy (nats)", |_, t| Some(t.entropy)),
    ];
    for (panel, (caption, figure)) in panels.iter().zip(figures) {
        let series: Vec<Vec<(f64, f64)>> = (0..most)
            .map(|k| {
                let point = |e: &EpochPoint| {
                    let d = e.thoughts.as_ref()?;
                    Some((e.epoch as f64, figure(d, d.thoughts.get(k)?)?))
                };
                curves.epochs.iter().filter_map(point).collect()
            })
            .collect();
        let values = series.iter().flatten().map(|p| p.1).filter(|v| v.is_finite());
        let (low, high) = values.fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let high = if high > low { high * 1.1 } else { low + 1.0 };
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(0.0..last_epoch, low..high)?;
        chart.configure_mesh().x_desc("epoch").draw()?;
        for (k, points) in series.into_iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(format!("thought {k}"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], color));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).draw()?;
    }
    root.present()?;
    Ok(())
}

fn plot_accuracy(path: &Path, curves: &Curves) -> Result<()> {
    let root = SVGBackend::new(path, (800, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(400);
    let last_epoch = curves.epochs.last().map_or(1, |e| e.epoch).max(1) as f64;
    let acc: Vec<(f64, f64)> = curves
        .epochs
        .iter()
        .filter_map(|e| e.accuracy.map(|a| (e.epoch as f64, 100.0 * a)))
        .collect();
    let tokens: Vec<(f64, f64)> =
        curves.epochs.iter().filter_map(|e| e.mean_tokens.map(|t| (e.epoch as f64, t))).collect();
    let mut chart = ChartBuilder::on(&left)
        .caption("validation accuracy %", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(40)
        .build_cartesian_2d(0.0..last_epoch, 0.0..100.0)?;
    chart.configure_mesh().x_desc("epoch").draw()?;
    chart.draw_series(LineSeries::new(acc.iter().copied(), RED.stroke_width(2)))?;
    chart.draw_series(acc.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
    let max_tokens = tokens.iter().map(|t| t.1).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&right)
        .caption("generated tokens (with thoughts)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(40)
        .build_cartesian_2d(0.0..last_epoch, 0.0..max_tokens * 1.1)?;
    chart.configure_mesh().x_desc("epoch").draw()?;
    chart.draw_series(LineSeries::new(tokens.iter().copied(), GREEN.stroke_width(2)))?;
    chart.draw_series(tokens.iter().map(|&p| Circle::new(p, 3, GREEN.filled())))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_lines_read_back_typed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let metrics = EvalMetrics {
            samples: 4,
            stage: 1,
            accuracy: 0.5,
            mean_tokens: 12.5,
            mean_tokens_without_thoughts: 10.5,
            cot_exact_match: 0.25,
            seconds: 1.0,
        };
        let diagnostics = ThoughtDiagnostics {
            questions: 4,
            embedding_norm: 2.0,
            thoughts: vec![ThoughtStats {
                index: 0,
                questions: 4,
                norm_mean: 3.0,
                norm_max: 5.0,
                cosine_across_questions: Some(0.5),
                cosine_to_next: None,
                entropy: 1.25,
            }],
        };
        let step = |global_step, stage| MetricLine::Step {
            epoch: 0,
            stage,
            global_step,
            loss: 1.5,
            tokens_per_s: 100.0,
        };
        let epoch = |epoch, eval| MetricLine::Epoch {
            epoch,
            stage: 1,
            global_step: 4,
            train_loss: 1.0,
            valid_loss: 2.0,
            eval,
            seconds: 3.0,
        };
        let lines = [
            step(2, 0),
            step(4, 1),
            epoch(1, EpochEval::default()),
            // A resumed run repeats the step and the epoch it had not finished.
            step(4, 1),
            epoch(1, epoch_eval(&metrics, Some(&diagnostics))),
        ];
        let mut text: String =
            lines.iter().map(|l| serde_json::to_string(l).unwrap() + "\n").collect();
        text.push_str("{\"kind\":\"epo"); // cut short by a killed process
        std::fs::write(&path, text).unwrap();

        let curves = read_curves(&path).unwrap();
        let steps: Vec<(u64, usize)> =
            curves.steps.iter().map(|s| (s.global_step, s.stage)).collect();
        assert_eq!(steps, [(2, 0), (4, 1)]);
        assert_eq!(curves.epochs.len(), 1);
        let e = &curves.epochs[0];
        assert_eq!(
            (e.epoch, e.accuracy, e.mean_tokens, e.seconds),
            (1, Some(0.5), Some(12.5), 3.0)
        );
        assert_eq!(e.thoughts.as_ref(), Some(&diagnostics));
    }
}
